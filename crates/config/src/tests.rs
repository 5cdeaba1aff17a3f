use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;
use crate::generate::render_yaml;
use crate::keys::{self, KEYS};

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write test config");
    path
}

fn load_err(file: Option<&Path>, vars: &[(&str, &str)]) -> ConfigError {
    let error = load(file, env(vars)).expect_err("config should be rejected");
    let line = error.to_string();
    assert!(!line.contains('\n'), "error is not one line: {line}");
    assert!(line.starts_with("config: "), "{line}");
    error
}

#[test]
fn defaults_load_and_validate() {
    let config = load(None, no_env()).unwrap();
    assert_eq!(config, Config::default());
    Config::default().validate().unwrap();
    assert_eq!(config.server_name, "localhost");
    assert_eq!(config.database_url(), "sqlite://./ganglion-data/ganglion.db");
    assert_eq!(config.owned_server_name().unwrap().as_str(), "localhost");
    assert_eq!(config.listeners_serving(Resource::Client).count(), 1);
}

#[test]
fn yaml_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "ganglion.yml",
        r#"
server_name: example.org
public_baseurl: https://matrix.example.org/
listeners:
  - bind: 0.0.0.0
    port: 8448
    resources: [federation]
    tls:
      certificate_path: /etc/tls/cert.pem
      key_path: /etc/tls/key.pem
  - port: 8008
database:
  url: postgres://ganglion@db/ganglion
telemetry:
  log_format: json
rooms:
  default_version: "10"
"#,
    );
    let config = load(Some(&path), no_env()).unwrap();
    assert_eq!(config.server_name, "example.org");
    assert_eq!(config.public_baseurl.as_deref(), Some("https://matrix.example.org/"));
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[0].bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(config.listeners[0].resources, vec![Resource::Federation]);
    assert_eq!(
        config.listeners[0].tls,
        Some(TlsConfig { certificate_path: "/etc/tls/cert.pem".into(), key_path: "/etc/tls/key.pem".into() })
    );
    // Omitted listener fields take the listener defaults.
    assert_eq!(config.listeners[1], ListenerConfig::default());
    assert_eq!(config.database_url(), "postgres://ganglion@db/ganglion");
    assert_eq!(config.database.max_connections, 10);
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
    assert_eq!(config.rooms.default_version, "10");
}

#[test]
fn toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "ganglion.toml",
        r#"
server_name = "example.org"
data_dir = "/var/lib/ganglion"

[[listeners]]
bind = "::1"
port = 9000
resources = ["client", "health"]

[redis]
url = "redis://127.0.0.1:6379/0"

[password_hashing]
memory_kib = 65536
"#,
    );
    let config = load(Some(&path), no_env()).unwrap();
    assert_eq!(config.server_name, "example.org");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/ganglion"));
    assert_eq!(config.database_url(), "sqlite:///var/lib/ganglion/ganglion.db");
    assert_eq!(config.listeners[0].bind, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(config.listeners[0].port, 9000);
    assert_eq!(config.redis.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
    assert_eq!(config.redis.key_prefix, "ganglion");
    assert_eq!(config.password_hashing.memory_kib, 65536);
    assert_eq!(config.password_hashing.iterations, 2);
}

#[test]
fn env_overrides_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "ganglion.yaml",
        "server_name: file.example\ndatabase:\n  max_connections: 3\n  migrate_on_start: true\n",
    );
    let config = load(
        Some(&path),
        env(&[
            ("GANGLION_SERVER_NAME", "example.org"),
            ("GANGLION_DATABASE__URL", "postgresql://u@h:5432/db"),
            ("GANGLION_DATABASE__MIGRATE_ON_START", "false"),
            ("GANGLION_REDIS__URL", "rediss://redis:6380"),
            ("GANGLION_RPC__MAIN_URL", "http://main:9093"),
            ("GANGLION_RPC__LISTEN", "0.0.0.0:9093"),
            ("ganglion_limits__max_sync_timeout_ms", "1000"),
            ("GANGLION_ROOMS__DEFAULT_VERSION", "10"),
            ("GANGLION_REGISTRATION__ENABLED", "true"),
            ("GANGLION_CONFIG", "/etc/ganglion.yaml"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(config.server_name, "example.org");
    assert_eq!(config.database.url.as_deref(), Some("postgresql://u@h:5432/db"));
    // A sibling the environment did not touch keeps the file's value.
    assert_eq!(config.database.max_connections, 3);
    assert!(!config.database.migrate_on_start);
    assert_eq!(config.redis.url.as_deref(), Some("rediss://redis:6380"));
    assert_eq!(config.rpc.main_url, "http://main:9093");
    assert_eq!(config.rpc.listen, "0.0.0.0:9093".parse().unwrap());
    assert_eq!(config.limits.max_sync_timeout_ms, 1000);
    assert_eq!(config.rooms.default_version, "10");
    assert_eq!(config.registration.enabled, Some(true));
}

#[test]
fn env_listeners_as_json_or_inline_toml() {
    let json = r#"[{"bind": "0.0.0.0", "port": 8448, "resources": ["federation"]}, {"port": 0}]"#;
    let config = load(None, env(&[("GANGLION_LISTENERS", json)])).unwrap();
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners[0].port, 8448);
    assert_eq!(config.listeners[0].resources, vec![Resource::Federation]);
    assert_eq!(config.listeners[1].port, 0);

    let inline = r#"[{bind="::", port=8008, resources=["client", "media"]}]"#;
    let config = load(None, env(&[("GANGLION_LISTENERS", inline)])).unwrap();
    assert_eq!(config.listeners[0].bind, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!(config.listeners[0].resources, vec![Resource::Client, Resource::Media]);
}

#[test]
fn env_numeric_port_and_bad_number() {
    let config = load(None, env(&[("GANGLION_DATABASE__MAX_CONNECTIONS", "42")])).unwrap();
    assert_eq!(config.database.max_connections, 42);

    let error = load_err(None, &[("GANGLION_DATABASE__MAX_CONNECTIONS", "lots")]);
    assert_eq!(
        error.to_string(),
        "config: database.max_connections: invalid value \"lots\": expected a number from 0 to \
         4294967295 (in environment variable GANGLION_DATABASE__MAX_CONNECTIONS)"
    );
}

#[test]
fn unknown_key_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "ganglion.yaml", "databse:\n  url: sqlite://x.db\n");
    let error = load_err(Some(&path), &[]);
    let line = error.to_string();
    assert!(
        line.starts_with(&format!(
            "config: unknown key 'databse' in {} (expected one of: server_name, public_baseurl, \
             data_dir, listeners, database,",
            path.display()
        )),
        "{line}"
    );
    assert!(matches!(error, ConfigError::UnknownKey { ref key, .. } if key == "databse"));

    let path = write(&dir, "nested.toml", "[database]\nurll = \"sqlite://x.db\"\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert_eq!(
        line,
        format!(
            "config: unknown key 'database.urll' in {} (expected one of: url, max_connections, \
             migrate_on_start)",
            path.display()
        )
    );

    let path = write(&dir, "listener.yaml", "listeners:\n  - prot: 8008\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with("config: unknown key 'listeners[0].prot' in "), "{line}");
    assert!(line.ends_with("(expected one of: bind, port, tls, resources)"), "{line}");
}

#[test]
fn unknown_env_key_names_the_variable() {
    let line = load_err(None, &[("GANGLION_DATABSE__URL", "sqlite://x.db")]).to_string();
    assert!(
        line.starts_with("config: unknown key 'databse' in environment variable GANGLION_DATABSE__URL (expected"),
        "{line}"
    );
}

#[test]
fn bad_type_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "ganglion.yaml", "listeners:\n  - port: abc\n");
    let error = load_err(Some(&path), &[]);
    assert_eq!(
        error.to_string(),
        format!(
            "config: listeners[0].port: invalid value \"abc\": expected a number from 0 to 65535 \
             (in {})",
            path.display()
        )
    );
    assert_eq!(error.problems()[0].key, "listeners[0].port");

    let path = write(&dir, "bind.yaml", "listeners:\n  - bind: localhost\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with("config: listeners[0].bind: invalid value \"localhost\": "), "{line}");

    let path = write(&dir, "enum.yaml", "telemetry:\n  log_format: xml\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(
        line.starts_with("config: telemetry.log_format: invalid value \"xml\": expected one of: text, json"),
        "{line}"
    );

    let path = write(&dir, "table.yaml", "database: 5\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with("config: database: invalid value 5: expected a table"), "{line}");

    let path = write(&dir, "tls.yaml", "listeners:\n  - tls:\n      key_path: /k.pem\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with("config: listeners[0].tls.certificate_path: required key is missing"), "{line}");
}

#[test]
fn invalid_server_name() {
    let error = load_err(None, &[("GANGLION_SERVER_NAME", "not a name!")]);
    assert_eq!(
        error.to_string(),
        "config: server_name: \"not a name!\" is not a valid server name \
         (in environment variable GANGLION_SERVER_NAME)"
    );
    let config = Config { server_name: "not a name!".to_owned(), ..Config::default() };
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "config: server_name: \"not a name!\" is not a valid server name"
    );
    assert!(config.owned_server_name().is_err());
}

#[test]
fn duplicate_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "ganglion.yaml",
        "listeners:\n  - port: 8008\n  - port: 8448\n  - port: 8008\n    resources: [metrics]\n",
    );
    let line = load_err(Some(&path), &[]).to_string();
    assert_eq!(
        line,
        format!("config: listeners[2]: 127.0.0.1:8008 is already used by listeners[0] (in {})", path.display())
    );

    // Port 0 means "any free port", so it never collides.
    let path = write(&dir, "zero.yaml", "listeners:\n  - port: 0\n  - port: 0\n");
    load(Some(&path), no_env()).unwrap();
    // Same port on different addresses is fine.
    let path = write(&dir, "addrs.yaml", "listeners:\n  - port: 8008\n  - bind: ::1\n    port: 8008\n");
    load(Some(&path), no_env()).unwrap();
}

#[test]
fn validation_reports_every_problem() {
    let config = Config {
        public_baseurl: Some("matrix.example.org".to_owned()),
        listeners: Vec::new(),
        database: DatabaseConfig { url: Some("mysql://x".to_owned()), ..DatabaseConfig::default() },
        redis: RedisConfig { url: Some("http://redis".to_owned()), ..RedisConfig::default() },
        password_hashing: PasswordHashingConfig { memory_kib: 15, iterations: 0, parallelism: 2 },
        rooms: RoomsConfig { default_version: "13".to_owned() },
        telemetry: TelemetryConfig { log_level: "info,[".to_owned(), ..TelemetryConfig::default() },
        limits: LimitsConfig { max_request_body_bytes: 0, max_sync_timeout_ms: 0 },
        sessions: SessionsConfig { refreshable_access_token_lifetime_secs: 0, login_token_lifetime_secs: 0 },
        ..Config::default()
    };
    let error = config.validate().unwrap_err();
    let keys: Vec<_> = error.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "public_baseurl",
            "listeners",
            "database.url",
            "redis.url",
            "password_hashing.iterations",
            "password_hashing.memory_kib",
            "rooms.default_version",
            "telemetry.log_level",
            "limits.max_request_body_bytes",
            "limits.max_sync_timeout_ms",
            "sessions.refreshable_access_token_lifetime_secs",
            "sessions.login_token_lifetime_secs",
        ]
    );
    assert!(!error.to_string().contains('\n'));

    for version in ["1", "12"] {
        let config = Config { rooms: RoomsConfig { default_version: version.to_owned() }, ..Config::default() };
        config.validate().unwrap();
    }
    for version in ["0", "01", "v11", ""] {
        let config = Config { rooms: RoomsConfig { default_version: version.to_owned() }, ..Config::default() };
        assert!(config.validate().is_err(), "{version:?} accepted");
    }

    let config = Config {
        listeners: vec![ListenerConfig { resources: Vec::new(), ..ListenerConfig::default() }],
        ..Config::default()
    };
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "config: listeners[0].resources: must list at least one resource"
    );
}

#[test]
fn registration_open_rules() {
    let listener =
        |bind: IpAddr, resources: Vec<Resource>| ListenerConfig { bind, resources, ..ListenerConfig::default() };
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let loop4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let loop6 = IpAddr::V6(Ipv6Addr::LOCALHOST);

    assert!(Config::default().registration_open());

    let exposed = Config {
        listeners: vec![listener(loop4, vec![Resource::Client]), listener(any4, vec![Resource::Client])],
        ..Config::default()
    };
    assert!(!exposed.registration_open());

    // Only client listeners count: federation on 0.0.0.0 with a loopback client API stays open.
    let federation_exposed = Config {
        listeners: vec![listener(loop6, vec![Resource::Client]), listener(any4, vec![Resource::Federation])],
        ..Config::default()
    };
    assert!(federation_exposed.registration_open());

    let forced_open =
        Config { registration: RegistrationConfig { enabled: Some(true), ..RegistrationConfig::default() }, ..exposed };
    assert!(forced_open.registration_open());
    let forced_closed = Config {
        registration: RegistrationConfig { enabled: Some(false), ..RegistrationConfig::default() },
        ..Config::default()
    };
    assert!(!forced_closed.registration_open());

    // The same through load(): an env override of the listeners closes registration.
    let config = load(None, env(&[("GANGLION_LISTENERS", r#"[{"bind": "0.0.0.0", "port": 8008}]"#)])).unwrap();
    assert!(!config.registration_open());
}

#[test]
fn file_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "ganglion.ini", "server_name = x\n");
    assert!(matches!(load_err(Some(&path), &[]), ConfigError::UnsupportedFormat { .. }));

    let missing = dir.path().join("missing.yaml");
    let error = load_err(Some(&missing), &[]);
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().starts_with(&format!("config: cannot read {}: ", missing.display())));

    let path = write(&dir, "bad.toml", "server_name = \n[database\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with(&format!("config: {}: syntax error: ", path.display())), "{line}");
    assert!(line.contains("line 1"), "{line}");

    let path = write(&dir, "bad.yaml", "server_name: [unclosed\n  - x: : y\n");
    let line = load_err(Some(&path), &[]).to_string();
    assert!(line.starts_with(&format!("config: {}: syntax error: ", path.display())), "{line}");

    // A file of only comments is an empty configuration.
    let path = write(&dir, "empty.yaml", "# nothing here\n\n");
    assert_eq!(load(Some(&path), no_env()).unwrap(), Config::default());
}

#[test]
fn exit_code_is_two() {
    let error = Config { server_name: String::new(), ..Config::default() }.validate().unwrap_err();
    assert_eq!(error.exit_code(), 2);
}

#[test]
fn generated_yaml_loads_back_to_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = generate_yaml();
    let path = write(&dir, "ganglion.yaml", &yaml);
    assert_eq!(load(Some(&path), no_env()).unwrap(), Config::default(), "{yaml}");
    for key in KEYS {
        assert!(yaml.contains(&format!("{}:", key.name())), "{} missing from the example", key.path);
    }
}

/// With the commented-out examples switched on, the file still loads and validates, and sets every
/// optional key.
fn full_config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let yaml = render_yaml(true);
    let path = write(&dir, "full.yaml", &yaml);
    let config = load(Some(&path), no_env()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert!(config.public_baseurl.is_some());
    assert!(config.listeners[0].tls.is_some());
    assert!(config.database.url.is_some());
    assert!(config.redis.url.is_some());
    assert!(config.registration.enabled.is_some());
    assert!(config.telemetry.otlp_endpoint.is_some());
    assert!(config.well_known.server.is_some());
    config
}

#[test]
fn examples_of_optional_keys_are_valid() {
    full_config();
}

/// Leaf key paths of a serialised config, list items written `name[]`.
fn leaf_paths(value: &Json, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Json::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(v, &path, out);
            }
        }
        Json::Array(items) if items.iter().any(Json::is_object) => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn key_table_covers_every_field() {
    let mut from_struct = BTreeSet::new();
    leaf_paths(&serde_json::to_value(full_config()).unwrap(), "", &mut from_struct);
    leaf_paths(&serde_json::to_value(Config::default()).unwrap(), "", &mut from_struct);
    // An optional table that is unset (`listeners[].tls: null`) shows as a leaf; its keys come from
    // the full config.
    from_struct.retain(|path| keys::lookup(path).is_none_or(|k| !k.kind.is_container()));
    let from_table: BTreeSet<String> =
        KEYS.iter().filter(|k| !k.kind.is_container()).map(|k| k.path.to_owned()).collect();
    assert_eq!(from_struct, from_table, "keys.rs and the Config structs disagree");

    for key in KEYS {
        let parent = key.parent();
        assert!(
            parent.is_empty() || KEYS.iter().any(|k| k.path == parent || format!("{}[]", k.path) == parent),
            "{} has no parent entry",
            key.path
        );
        assert!(!key.doc.contains('\n'), "{}: doc must be one line", key.path);
    }
}

const DOCS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");

#[test]
fn configuration_md_is_up_to_date() {
    let on_disk = std::fs::read_to_string(DOCS_PATH).unwrap_or_default();
    assert!(
        on_disk == render_markdown_reference(),
        "docs/configuration.md is stale; regenerate it with \
         `cargo test -p ganglion-config -- --ignored write_configuration_md`"
    );
}

#[test]
#[ignore = "writes docs/configuration.md"]
fn write_configuration_md() {
    std::fs::write(DOCS_PATH, render_markdown_reference()).unwrap();
}

#[test]
#[ignore = "prints the example file"]
fn print_example() {
    println!("{}", generate_yaml());
}
