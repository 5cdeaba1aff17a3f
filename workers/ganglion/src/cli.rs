//! Command-line parsing and dispatch. Configuration errors exit with code 2 after one clear line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ganglion_config::Config;
use ganglion_routing::{Role, Upstreams};

#[derive(Debug, Parser)]
#[command(name = "ganglion", version, about = "A Matrix homeserver with a worker model")]
struct Cli {
    /// Configuration file (YAML or TOML). Without one, defaults and GANGLION_* variables apply.
    #[arg(long, short, global = true, env = "GANGLION_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every role in one process (the embedded default: SQLite, in-process bus).
    Serve,
    /// Run one role. Needs PostgreSQL and Redis.
    Worker {
        /// main, sync, federation-reader, federation-sender, media or pusher.
        role: Role,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Write or check configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Start signing with a new server key; the old one stays published (with its expiry) for
    /// checking what it signed. Restart every role afterwards.
    RotateSigningKey,
    /// Create a user account.
    RegisterUser {
        /// The localpart (`alice` for `@alice:server`).
        username: String,
        /// The password. Read from GANGLION_PASSWORD when absent.
        #[arg(long, env = "GANGLION_PASSWORD", hide_env_values = true)]
        password: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
    },
    /// Print reverse-proxy configuration or the routing document, from the routing table in code.
    Routes {
        /// Output format.
        #[arg(long, value_enum)]
        format: RouteFormat,
        /// `ROLE=HOST:PORT[,HOST:PORT…]`; repeatable. Roles without backends fall back to main's.
        #[arg(long = "upstream")]
        upstreams: Vec<String>,
        /// Port the proxy listens on.
        #[arg(long, default_value_t = 8080)]
        listen: u16,
        /// With nginx: put pid, logs and temp files under this directory (absolute paths).
        #[arg(long)]
        prefix: Option<PathBuf>,
        /// With nginx: the largest request body, in bytes. Default: `media.max_upload_bytes` of
        /// the `--config` file, else that key's default.
        #[arg(long)]
        max_body_bytes: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print a commented configuration file with every key and its default.
    Generate,
    /// Load and validate the configuration, then print the effective values.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RouteFormat {
    Nginx,
    Haproxy,
    Markdown,
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    let cfg = ganglion_config::load_from_process_env(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(e.exit_code() as u8)
    })?;
    // Registration files are checked before anything starts, one line per mistake.
    if let Err(e) = ganglion_appservice::load(&cfg.app_service_config_files, &cfg.server_name) {
        for p in &e.problems {
            eprintln!("config: app_service_config_files: {p}");
        }
        return Err(ExitCode::from(2));
    }
    Ok(cfg)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime starts")
}

/// Parses the command line and runs the command.
pub(crate) fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { action: ConfigAction::Generate } => {
            print!("{}", ganglion_config::generate_yaml());
            ExitCode::SUCCESS
        }
        Command::Config { action: ConfigAction::Check } => match load_config(cli.config.as_deref()) {
            Ok(cfg) => {
                println!("configuration is valid");
                println!("server_name: {}", cfg.server_name);
                println!("database: {}", if cfg.database_url().starts_with("sqlite") { "sqlite" } else { "postgres" });
                println!("registration open: {}", cfg.registration_open());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Routes { format, upstreams, listen, prefix, max_body_bytes } => {
            let mut ups = if upstreams.is_empty() {
                Upstreams::default_kubernetes()
            } else {
                Upstreams::single("127.0.0.1:8008")
            };
            for spec in &upstreams {
                if let Err(e) = ups.apply_spec(spec) {
                    eprintln!("routes: {e}");
                    return ExitCode::from(2);
                }
            }
            let out = match format {
                RouteFormat::Nginx => {
                    let mut opts = match &prefix {
                        Some(dir) => ganglion_routing::NginxOptions::in_prefix(listen, dir),
                        None => ganglion_routing::NginxOptions::new(listen),
                    };
                    opts.max_body_bytes = match (max_body_bytes, cli.config.as_deref()) {
                        (Some(n), _) => n,
                        (None, Some(path)) => match load_config(Some(path)) {
                            Ok(cfg) => cfg.media.max_upload_bytes,
                            Err(code) => return code,
                        },
                        (None, None) => ganglion_routing::DEFAULT_MAX_BODY_BYTES,
                    };
                    ganglion_routing::nginx_with_options(&ups, &opts)
                }
                RouteFormat::Haproxy => ganglion_routing::haproxy(&ups, listen),
                RouteFormat::Markdown => ganglion_routing::markdown(),
            };
            print!("{out}");
            ExitCode::SUCCESS
        }
        command => {
            let cfg = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let role_name = match &command {
                Command::Worker { role } => role.as_str(),
                _ => "serve",
            };
            let rt = runtime();
            let result = rt.block_on(async move {
                let _telemetry = ganglion_telemetry::init(&cfg.telemetry, role_name)
                    .map_err(|e| crate::roles::Fatal::Config(e.to_string()))?;
                match command {
                    Command::Serve => crate::roles::serve(cfg).await,
                    Command::Worker { role } => crate::roles::worker(cfg, role).await,
                    Command::Migrate => crate::roles::migrate(cfg).await,
                    Command::RotateSigningKey => crate::roles::rotate_signing_key(cfg).await,
                    Command::RegisterUser { username, password, admin } => {
                        crate::roles::register_user(cfg, &username, &password, admin).await
                    }
                    _ => unreachable!("handled above"),
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
