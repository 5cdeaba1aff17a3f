//! The binary's commands: config checking (exit code 2 on a bad key), config generation,
//! migrate, register-user, routes, and a TLS listener.

use std::process::Command;
use std::time::Duration;

use ganglion_e2e::{free_port, ganglion_bin, wait_ready};
use serde_json::json;

fn run(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(ganglion_bin())
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env_remove("GANGLION_CONFIG")
        .output()
        .expect("run ganglion");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_config_key_or_value_is_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "server_name: example.org\ndatabse:\n  url: sqlite://x.db\n").unwrap();
    let (code, _, err) = run(&["--config", "bad.yaml", "config", "check"], dir.path(), &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("databse"), "names the key: {err}");

    let (code, _, err) = run(&["config", "check"], dir.path(), &[("GANGLION_LISTENERS", "[{\"port\": \"abc\"}]")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("listeners[0].port"), "names the path: {err}");

    let (code, _, err) = run(&["serve"], dir.path(), &[("GANGLION_SERVER_NAME", "not a name!")]);
    assert_eq!(code, 2, "serve refuses too: {err}");
    assert!(err.contains("server_name"), "{err}");
}

#[test]
fn generated_config_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (code, yaml, err) = run(&["config", "generate"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.path().join("ganglion.yaml"), yaml).unwrap();
    let (code, out, err) = run(&["--config", "ganglion.yaml", "config", "check"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("server_name: localhost"), "{out}");
}

#[test]
fn routes_generate_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (code, nginx, _) =
        run(&["routes", "--format", "nginx", "--upstream", "sync=127.0.0.1:9001,127.0.0.1:9002"], dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(nginx.contains("127.0.0.1:9001") && nginx.contains("127.0.0.1:9002"));
    assert!(nginx.contains("sync"), "{nginx}");
    let (code, haproxy, _) = run(&["routes", "--format", "haproxy"], dir.path(), &[]);
    assert_eq!(code, 0);
    assert!(haproxy.contains("default_backend"), "{haproxy}");
    let (code, md, _) = run(&["routes", "--format", "markdown"], dir.path(), &[]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/workers.md")).unwrap();
    assert_eq!(md, committed, "docs/workers.md is what `ganglion routes --format markdown` prints");
    let (code, _, err) = run(&["routes", "--format", "nginx", "--upstream", "nonsense"], dir.path(), &[]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_register_user_and_log_in_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let have = |tool: &str| Command::new(tool).arg("version").output().is_ok();
    let port = free_port();
    let mut cfg = json!({
        "data_dir": dir.path().join("data"),
        "password_hashing": { "memory_kib": 64, "iterations": 1 },
        "listeners": [{ "bind": "127.0.0.1", "port": port, "resources": ["client", "health"] }],
    });
    let tls = have("openssl") && Command::new("curl").arg("--version").output().is_ok();
    if tls {
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        cfg["listeners"][0]["tls"] =
            json!({ "certificate_path": dir.path().join("cert.pem"), "key_path": dir.path().join("key.pem") });
        cfg["listeners"] =
            json!([cfg["listeners"][0].clone(), { "bind": "127.0.0.1", "port": free_port(), "resources": ["health"] }]);
    } else {
        eprintln!("openssl or curl missing: testing the plain listener only");
    }
    std::fs::write(dir.path().join("g.yaml"), cfg.to_string()).unwrap();
    let (code, out, err) = run(&["--config", "g.yaml", "migrate"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied migrations"), "{out}");
    let (code, out, err) =
        run(&["--config", "g.yaml", "register-user", "admin", "--password", "s3cret", "--admin"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("@admin:localhost"), "{out}");
    let (code, _, err) = run(&["--config", "g.yaml", "register-user", "admin", "--password", "x"], dir.path(), &[]);
    assert_ne!(code, 0, "a second registration of the same user fails: {err}");
    let (code, out, err) = run(&["--config", "g.yaml", "rotate-signing-key"], dir.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now signing with ed25519:"), "{out}");

    let mut cmd = tokio::process::Command::new(ganglion_bin());
    cmd.args(["--config", "g.yaml", "serve"]).current_dir(dir.path()).kill_on_drop(true);
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let child = cmd.spawn().unwrap();
    let proc_name = ganglion_e2e::Proc::from_child("serve", child, dir.path().join("serve.log"));
    let login =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"}, "password": "s3cret"});
    if tls {
        let health_port = cfg["listeners"][1]["port"].as_u64().unwrap();
        wait_ready(&format!("http://127.0.0.1:{health_port}/health/ready"), Duration::from_secs(30), &proc_name)
            .await
            .unwrap();
        let out = Command::new("curl")
            .args([
                "-sk",
                "-X",
                "POST",
                "-d",
                &login.to_string(),
                &format!("https://localhost:{port}/_matrix/client/v3/login"),
            ])
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(body["user_id"], "@admin:localhost", "login over TLS: {}", String::from_utf8_lossy(&out.stdout));
    } else {
        wait_ready(&format!("http://127.0.0.1:{port}/health/ready"), Duration::from_secs(30), &proc_name)
            .await
            .unwrap();
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/_matrix/client/v3/login"))
            .json(&login)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
