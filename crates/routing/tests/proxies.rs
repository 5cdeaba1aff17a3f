//! The generated configs against the real proxies.
//!
//! If `nginx` (or `haproxy`) is on `PATH`, its config check runs on the generated config, and a
//! real proxy is started in front of fake role backends to prove that the proxy routes every
//! sample path to the role [`role_for_path`] names, skips a dead backend, keeps one source on one
//! federation reader and passes the forwarding headers. Without the binary these tests print a
//! note and pass: that is the only skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ganglion_routing::{NginxOptions, ROUTES, Role, Upstreams, haproxy, nginx_with_options, role_for_path};

/// Representative paths: at least one per route, plus paths that must fall through to main.
const SAMPLE_PATHS: &[&str] = &[
    "/_matrix/client/v3/sync",
    "/_matrix/client/r0/sync?since=s1_2&timeout=0",
    "/_matrix/client/v3/events",
    "/_matrix/client/api/v1/events?from=s1",
    "/_matrix/client/r0/initialSync",
    "/_matrix/client/v3/rooms/!room:example.org/initialSync",
    "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
    "/_matrix/media/v3/download/example.org/abcDEF",
    "/_matrix/media/v3/upload",
    "/_matrix/client/v1/media/download/example.org/abcDEF",
    "/_matrix/client/v1/media/thumbnail/example.org/abc?width=32&height=32",
    "/_matrix/federation/v1/media/download/abcDEF",
    "/_synapse/admin/v1/media/quarantine/example.org/abcDEF",
    "/_synapse/admin/v1/users/@alice:example.org/media",
    "/_synapse/admin/v1/room/!room:example.org/media/quarantine",
    "/_synapse/admin/v1/registration_tokens",
    "/_matrix/federation/v1/send/1700000000000",
    "/_matrix/federation/v1/event/$event",
    "/_matrix/federation/v2/send_join/!room:example.org/$event",
    "/_matrix/federation/v1/version",
    "/_matrix/key/v2/query",
    "/_matrix/key/v2/server",
    "/_matrix/client/v3/createRoom",
    "/_matrix/client/v3/login",
    "/_matrix/client/versions",
    "/_matrix/client/v3/sync/extra",
    "/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/txn1",
    "/health/ready",
    "/",
    "/unknown/path",
];

#[test]
fn sample_paths_cover_every_route() {
    for (index, route) in ROUTES.iter().enumerate() {
        assert!(
            SAMPLE_PATHS.iter().any(|p| ganglion_routing::route_for_path(p) == Some(route)),
            "no sample path for route {} ({})",
            index + 1,
            route.pattern
        );
    }
}

#[test]
fn nginx_accepts_generated_config() {
    let Some(nginx) = find_binary("nginx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for upstreams in [
        Upstreams::default(),
        Upstreams::new(["127.0.0.1:18008"])
            .with(Role::Sync, ["127.0.0.1:18009", "127.0.0.2:18009"])
            .with(Role::FederationReader, ["127.0.0.1:18010", "[::1]:18010"])
            .with(Role::Media, ["localhost:18011"]),
    ] {
        let options = nginx_options(dir.path(), 18080);
        let conf = write_nginx_conf(dir.path(), &upstreams, &options);
        let output = Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(prefix_arg(dir.path()))
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "nginx -t failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&conf).unwrap()
        );
    }
}

#[test]
fn haproxy_accepts_generated_config() {
    let Some(haproxy_bin) = find_binary("haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for upstreams in [Upstreams::default(), Upstreams::default_kubernetes(), Upstreams::docker_compose()] {
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy(&upstreams, 18080)).unwrap();
        let output = Command::new(&haproxy_bin).arg("-c").arg("-f").arg(&cfg).output().unwrap();
        assert!(
            output.status.success(),
            "haproxy -c failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn nginx_routes_like_the_table() {
    let Some(nginx) = find_binary("nginx") else {
        return;
    };
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let options = nginx_options(dir.path(), port);
    let conf = write_nginx_conf(dir.path(), &cluster.upstreams, &options);
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(prefix_arg(dir.path()))
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr", "-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _proxy = Proxy { child };
    wait_for_port(port);
    cluster.check_routing(port);
}

#[test]
fn haproxy_routes_like_the_table() {
    let Some(haproxy_bin) = find_binary("haproxy") else {
        return;
    };
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy(&cluster.upstreams, port)).unwrap();
    let child = Command::new(&haproxy_bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _proxy = Proxy { child };
    wait_for_port(port);
    cluster.check_routing(port);
}

// --- helpers ---------------------------------------------------------------------------------

/// `bin` from `PATH`, or `None` with a printed note.
fn find_binary(bin: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(bin)).find(|candidate| candidate.is_file()));
    if found.is_none() {
        eprintln!("note: `{bin}` is not on PATH; skipping the real-{bin} test");
    }
    found
}

fn nginx_options(dir: &Path, port: u16) -> NginxOptions {
    NginxOptions { worker_processes: Some(1), worker_connections: 256, ..NginxOptions::in_prefix(port, dir) }
}

fn write_nginx_conf(dir: &Path, upstreams: &Upstreams, options: &NginxOptions) -> PathBuf {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_with_options(upstreams, options)).unwrap();
    conf
}

/// nginx wants the prefix with a trailing slash.
fn prefix_arg(dir: &Path) -> String {
    format!("{}/", dir.display())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy never listened on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A proxy process we started; stopped with SIGTERM (its own clean shutdown, which also ends
/// nginx's worker processes) when dropped.
struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a fake backend saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    instance: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Fake backends for every HTTP role: two sync instances of which one is dead (its port
/// refuses connections), two federation readers, one main and one media.
struct Cluster {
    upstreams: Upstreams,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Cluster {
    fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut spawn = |instance: &str| -> String {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let (instance, seen, stop) = (instance.to_owned(), seen.clone(), stop.clone());
            threads.push(thread::spawn(move || serve(&listener, &instance, &seen, &stop)));
            addr
        };
        let upstreams = Upstreams::new([spawn("main")])
            .with(Role::Sync, [format!("127.0.0.1:{}", free_port()), spawn("sync-2")])
            .with(Role::FederationReader, [spawn("federation-reader-1"), spawn("federation-reader-2")])
            .with(Role::Media, [spawn("media")]);
        Cluster { upstreams, seen, stop, threads }
    }

    /// Sends `path` through the proxy; returns the backend that answered and the response's
    /// `X-Request-Id`.
    fn request(&self, port: u16, path: &str, request_id: Option<&str>) -> (Seen, String) {
        let before = self.seen.lock().unwrap().len();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n");
        if let Some(id) = request_id {
            request.push_str(&format!("X-Request-Id: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: unexpected response\n{response}");
        let response_id = response
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-request-id").then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let seen = self.seen.lock().unwrap();
        let new: Vec<&Seen> = seen[before..].iter().filter(|s| s.header("x-test-path") != Some("health")).collect();
        assert_eq!(new.len(), 1, "{path}: expected one backend request");
        (new[0].clone(), response_id)
    }

    fn check_routing(&self, port: u16) {
        for path in SAMPLE_PATHS {
            let expected = role_for_path(path);
            let (seen, _) = self.request(port, path, None);
            assert!(
                seen.instance.starts_with(expected.as_str()),
                "{path}: expected {expected}, answered by {}",
                seen.instance
            );
        }

        // sync-1 is dead: every sync request is still answered, by sync-2.
        for _ in 0..6 {
            let (seen, _) = self.request(port, "/_matrix/client/v3/sync", None);
            assert_eq!(seen.instance, "sync-2");
        }

        // One source address stays on one federation reader for /send/.
        let (first, _) = self.request(port, "/_matrix/federation/v1/send/1", None);
        for txn in 2..8 {
            let (seen, _) = self.request(port, &format!("/_matrix/federation/v1/send/{txn}"), None);
            assert_eq!(seen.instance, first.instance);
        }

        // Forwarding headers and one request id end to end.
        let (seen, response_id) = self.request(port, "/_matrix/client/v3/createRoom", Some("req-abc"));
        assert_eq!(seen.header("x-request-id"), Some("req-abc"));
        assert_eq!(response_id, "req-abc");
        assert_eq!(seen.header("host"), Some("example.org"));
        assert!(seen.header("x-forwarded-for").is_some_and(|v| v.contains("127.0.0.1")), "{seen:?}");
        let (seen, response_id) = self.request(port, "/_matrix/client/v3/sync", None);
        let generated = seen.header("x-request-id").unwrap_or_default();
        assert!(!generated.is_empty(), "{seen:?}");
        assert_eq!(response_id, generated);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Accepts until `stop`; answers every request with 200 and records what it saw. HAProxy's health
/// checks are recorded with a marker so tests can ignore them.
fn serve(listener: &TcpListener, instance: &str, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            continue;
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                break;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        // HAProxy's own health checks do not carry the tests' `Host: example.org`.
        let is_check = !headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("host") && v == "example.org");
        if is_check {
            headers.push(("x-test-path".to_owned(), "health".to_owned()));
        }
        seen.lock().unwrap().push(Seen { instance: instance.to_owned(), headers });
        let body = format!("{instance}\n");
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
