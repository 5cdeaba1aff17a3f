//! The single table describing every configuration key. The example file, the Markdown reference and
//! the environment-variable parser read it; a unit test checks it covers every field of
//! [`Config`](crate::Config), and defaults are always read from `Config::default()`, never written here.

/// What a key holds; drives the type column, the environment parser and unknown-key detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A nested table of keys.
    Section,
    /// A list of tables, each with the keys under `<path>[]`.
    SectionList,
    /// Free text.
    Str,
    /// A filesystem path.
    Path,
    /// An IPv4 or IPv6 address.
    Ip,
    /// `ip:port`.
    SocketAddr,
    /// `true` or `false`.
    Bool,
    /// An unsigned integer with the given maximum.
    Uint(u64),
    /// One of a fixed set of words.
    Enum(&'static [&'static str]),
    /// A list drawn from a fixed set of words.
    EnumList(&'static [&'static str]),
    /// A list of free-text strings.
    StrList,
}

impl Kind {
    /// Whether an environment value for this key is taken verbatim rather than parsed as a
    /// TOML-ish scalar (so `GANGLION_ROOMS__DEFAULT_VERSION=10` stays the string `"10"`).
    pub(crate) fn is_textual(self) -> bool {
        matches!(self, Kind::Str | Kind::Path | Kind::Ip | Kind::SocketAddr | Kind::Enum(_))
    }

    /// Whether keys nest under this one.
    #[cfg(test)]
    pub(crate) fn is_container(self) -> bool {
        matches!(self, Kind::Section | Kind::SectionList)
    }

    /// The type as written in the reference.
    pub(crate) fn describe(self) -> String {
        match self {
            Kind::Section => "table".to_owned(),
            Kind::SectionList => "list of tables".to_owned(),
            Kind::Str => "string".to_owned(),
            Kind::Path => "path".to_owned(),
            Kind::Ip => "IP address".to_owned(),
            Kind::SocketAddr => "`ip:port`".to_owned(),
            Kind::Bool => "boolean".to_owned(),
            Kind::Uint(max) if max <= u64::from(u16::MAX) => format!("integer, 0 to {max}"),
            Kind::Uint(_) => "integer".to_owned(),
            Kind::Enum(words) => format!("one of {}", backticked(words)),
            Kind::EnumList(words) => format!("list of {}", backticked(words)),
            Kind::StrList => "list of strings".to_owned(),
        }
    }
}

fn backticked(words: &[&str]) -> String {
    words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
}

/// One key of the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyDoc {
    /// Dotted path; keys inside list items use `list[]`, e.g. `listeners[].port`.
    pub(crate) path: &'static str,
    /// What it holds.
    pub(crate) kind: Kind,
    /// One line of meaning.
    pub(crate) doc: &'static str,
    /// For keys unset by default: a YAML value shown commented out in the example file.
    pub(crate) example: Option<&'static str>,
    /// What an unset value means, or a summary for defaults too long to print in a table.
    pub(crate) default_note: Option<&'static str>,
}

impl KeyDoc {
    /// The parent path (`""` at top level; `listeners[]` for keys inside a listener).
    pub(crate) fn parent(&self) -> &'static str {
        self.path.rsplit_once('.').map_or("", |(parent, _)| parent)
    }

    /// The last segment of the path.
    pub(crate) fn name(&self) -> &'static str {
        self.path.rsplit_once('.').map_or(self.path, |(_, name)| name)
    }

    /// The `GANGLION_*` variable that sets this key, unless it lives inside a list item.
    pub(crate) fn env_var(&self) -> Option<String> {
        (!self.path.contains("[]"))
            .then(|| format!("{}{}", crate::ENV_PREFIX, self.path.replace('.', "__").to_ascii_uppercase()))
    }
}

const RESOURCES: &[&str] = &["client", "federation", "media", "metrics", "health"];

const fn key(path: &'static str, kind: Kind, doc: &'static str) -> KeyDoc {
    KeyDoc { path, kind, doc, example: None, default_note: None }
}

const fn optional(
    path: &'static str,
    kind: Kind,
    doc: &'static str,
    example: &'static str,
    unset: &'static str,
) -> KeyDoc {
    KeyDoc { path, kind, doc, example: Some(example), default_note: Some(unset) }
}

/// Every key, parents before children, in the order the example file lists them.
pub(crate) const KEYS: &[KeyDoc] = &[
    key(
        "server_name",
        Kind::Str,
        "The server name: the part after the colon in user IDs. Cannot change once users exist.",
    ),
    optional(
        "public_baseurl",
        Kind::Str,
        "Base URL clients reach the client API on, advertised in /.well-known/matrix/client.",
        "\"https://matrix.example.org/\"",
        "derived from the first client listener (`http://<bind>:<port>/`)",
    ),
    key("data_dir", Kind::Path, "Directory for the signing key and, by default, the SQLite database."),
    KeyDoc {
        default_note: Some("one listener on `127.0.0.1:8008` serving every resource"),
        ..key("listeners", Kind::SectionList, "HTTP listeners; each serves the resources it lists.")
    },
    key("listeners[].bind", Kind::Ip, "Address to bind."),
    key("listeners[].port", Kind::Uint(u16::MAX as u64), "Port to bind; 0 picks a free port."),
    KeyDoc {
        default_note: Some("plain HTTP"),
        ..key("listeners[].tls", Kind::Section, "Terminate TLS on this listener with rustls.")
    },
    optional(
        "listeners[].tls.certificate_path",
        Kind::Path,
        "PEM certificate chain; read when the listener starts.",
        "\"/etc/ganglion/tls/fullchain.pem\"",
        "required when `tls` is set",
    ),
    optional(
        "listeners[].tls.key_path",
        Kind::Path,
        "PEM private key (PKCS#8, PKCS#1 or SEC1); read when the listener starts.",
        "\"/etc/ganglion/tls/privkey.pem\"",
        "required when `tls` is set",
    ),
    key("listeners[].resources", Kind::EnumList(RESOURCES), "What this listener serves; at least one."),
    key("database", Kind::Section, "The database."),
    optional(
        "database.url",
        Kind::Str,
        "`sqlite://path/to/file.db` or `postgres://user@host:port/db`.",
        "\"postgres://ganglion@localhost:5432/ganglion\"",
        "`sqlite://<data_dir>/ganglion.db`",
    ),
    key("database.max_connections", Kind::Uint(u32::MAX as u64), "Connection pool size."),
    key("database.migrate_on_start", Kind::Bool, "Apply schema migrations when `main` starts."),
    key("redis", Kind::Section, "Redis, which carries the replication stream between processes."),
    optional(
        "redis.url",
        Kind::Str,
        "`redis://host:port/db` or `rediss://…`; required when running separate worker processes.",
        "\"redis://127.0.0.1:6379/0\"",
        "the in-process bus (only valid for `ganglion serve`)",
    ),
    key(
        "redis.key_prefix",
        Kind::Str,
        "Prefix for every Redis key Ganglion writes, so deployments can share one Redis.",
    ),
    key(
        "redis.stream_max_len",
        Kind::Uint(u64::MAX),
        "Approximate rows each Redis stream keeps; older rows are read from the database.",
    ),
    key("rpc", Kind::Section, "The internal gRPC write API that `main` serves and workers call."),
    key("rpc.listen", Kind::SocketAddr, "Where `main` listens for the write API."),
    key("rpc.main_url", Kind::Str, "Where workers reach `main`'s write API."),
    key("registration", Kind::Section, "Who may register."),
    optional(
        "registration.enabled",
        Kind::Bool,
        "Open (`true`) or close (`false`) registration.",
        "true",
        "open only while every client listener is bound to loopback",
    ),
    key(
        "registration.require_token",
        Kind::Bool,
        "Require a registration token (created by an admin through /_synapse/admin/v1/registration_tokens/new).",
    ),
    key(
        "registration.guest_access",
        Kind::Bool,
        "Allow guest accounts (`register?kind=guest`), limited to the endpoints the spec lists for guests.",
    ),
    key("sessions", Kind::Section, "Login sessions: refresh tokens and login tokens."),
    key(
        "sessions.refreshable_access_token_lifetime_secs",
        Kind::Uint(u32::MAX as u64),
        "Seconds (at least 1) an access token issued with a refresh token lives; tokens without one never expire.",
    ),
    key(
        "sessions.login_token_lifetime_secs",
        Kind::Uint(u32::MAX as u64),
        "Seconds (at least 1) a login token from /login/get_token stays usable (once).",
    ),
    key("password_hashing", Kind::Section, "Argon2id password hashing cost."),
    key(
        "password_hashing.memory_kib",
        Kind::Uint(u32::MAX as u64),
        "Memory per hash in KiB; at least 8 × parallelism.",
    ),
    key("password_hashing.iterations", Kind::Uint(u32::MAX as u64), "Passes; at least 1."),
    key("password_hashing.parallelism", Kind::Uint(u32::MAX as u64), "Lanes; at least 1."),
    key("rooms", Kind::Section, "Room defaults."),
    key("rooms.default_version", Kind::Str, "Room version for new rooms, `1` to `12`."),
    key("user_directory", Kind::Section, "Whom `/user_directory/search` finds."),
    key(
        "user_directory.search_all_users",
        Kind::Bool,
        "Find every active local user; otherwise only users who share a joined room with the searcher or are joined to a public room (join rule `public` or history visibility `world_readable`), as Synapse does by default.",
    ),
    key("telemetry", Kind::Section, "Logs, traces and metrics."),
    key(
        "telemetry.log_level",
        Kind::Str,
        "A `tracing` filter directive, e.g. `info` or `info,ganglion_storage=debug`.",
    ),
    key("telemetry.log_format", Kind::Enum(&["text", "json"]), "Log line format on stderr."),
    optional(
        "telemetry.otlp_endpoint",
        Kind::Str,
        "OTLP/gRPC collector to export traces to.",
        "\"http://127.0.0.1:4317\"",
        "no trace export",
    ),
    key("limits", Kind::Section, "Request limits."),
    key(
        "limits.max_request_body_bytes",
        Kind::Uint(u64::MAX),
        "Largest request body accepted on the client API, in bytes.",
    ),
    key(
        "limits.max_sync_timeout_ms",
        Kind::Uint(u64::MAX),
        "Longest `/sync` long-poll a client may ask for, in milliseconds.",
    ),
    key("rate_limits", Kind::Section, "Rate limits: token buckets of `burst` actions refilled at `per_minute`."),
    key("rate_limits.enabled", Kind::Bool, "Apply rate limits at all."),
    key("rate_limits.messages", Kind::Section, "Events sent by one user (messages, state, redactions)."),
    key("rate_limits.messages.per_minute", Kind::Uint(u32::MAX as u64), "Sustained events per minute."),
    key("rate_limits.messages.burst", Kind::Uint(u32::MAX as u64), "Events allowed at once."),
    key("rate_limits.rooms", Kind::Section, "Room creations, joins, invites and knocks by one user."),
    key("rate_limits.rooms.per_minute", Kind::Uint(u32::MAX as u64), "Sustained room actions per minute."),
    key("rate_limits.rooms.burst", Kind::Uint(u32::MAX as u64), "Room actions allowed at once."),
    key("rate_limits.login", Kind::Section, "Login attempts from one client address."),
    key("rate_limits.login.per_minute", Kind::Uint(u32::MAX as u64), "Sustained logins per minute."),
    key("rate_limits.login.burst", Kind::Uint(u32::MAX as u64), "Logins allowed at once."),
    key("rate_limits.registration", Kind::Section, "Registration attempts from one client address."),
    key("rate_limits.registration.per_minute", Kind::Uint(u32::MAX as u64), "Sustained registrations per minute."),
    key("rate_limits.registration.burst", Kind::Uint(u32::MAX as u64), "Registrations allowed at once."),
    key("federation", Kind::Section, "Outbound federation requests (signed with the server key)."),
    key(
        "federation.verify_tls",
        Kind::Bool,
        "Check other servers' TLS certificates; turn off only for test servers with self-signed ones.",
    ),
    key(
        "federation.request_timeout_ms",
        Kind::Uint(u64::MAX),
        "Longest one outbound federation request may take, in milliseconds.",
    ),
    key(
        "federation.extra_ca_paths",
        Kind::StrList,
        "PEM files of certificate authorities trusted for other servers' certificates, beside the system roots.",
    ),
    key(
        "federation.ip_range_allowlist",
        Kind::StrList,
        "CIDR ranges other servers may be reached at although private or loopback, e.g. `127.0.0.0/8`.",
    ),
    key(
        "federation.trusted_key_servers",
        Kind::StrList,
        "Server names of key notaries asked for a server's keys when it cannot be asked itself (their own keys are fetched from them).",
    ),
    key("push", Kind::Section, "Pushes to push gateways (the `pusher` role)."),
    key(
        "push.include_content",
        Kind::Bool,
        "Send the event's content to the gateway (unless the pusher asked for `event_id_only`); off, message text never leaves the server through a gateway.",
    ),
    key(
        "push.group_unread_count_by_room",
        Kind::Bool,
        "The app badge counts rooms with unread notifications; off, it counts the notifications.",
    ),
    key(
        "push.request_timeout_ms",
        Kind::Uint(u64::MAX),
        "Longest one request to a push gateway may take, in milliseconds.",
    ),
    key(
        "push.max_retry_interval_ms",
        Kind::Uint(u64::MAX),
        "Longest wait between retries of a failing gateway, in milliseconds (retries start after 1 s and double).",
    ),
    key(
        "push.give_up_after_ms",
        Kind::Uint(u64::MAX),
        "A notification a gateway has refused for this long is dropped, in milliseconds.",
    ),
    KeyDoc {
        default_note: Some("no email: addresses cannot be added and email pushers are refused"),
        ..key(
            "email",
            Kind::Section,
            "Outgoing email over SMTP: validating addresses (`/account/3pid/email/requestToken`) and email notifications.",
        )
    },
    optional("email.smtp_host", Kind::Str, "The SMTP server.", "\"smtp.example.org\"", "`localhost`"),
    optional("email.smtp_port", Kind::Uint(65535), "Its port.", "587", "`25`"),
    optional(
        "email.security",
        Kind::Enum(&["tls", "starttls", "none"]),
        "`tls` from the first byte (465), `starttls` that must succeed (587), or `none` for a relay on the same host or network.",
        "\"starttls\"",
        "`starttls`",
    ),
    optional("email.smtp_user", Kind::Str, "SMTP user name.", "\"ganglion\"", "none"),
    optional("email.smtp_pass", Kind::Str, "SMTP password; prefer the environment.", "\"secret\"", "none"),
    optional(
        "email.notif_from",
        Kind::Str,
        "The `From` of every message.",
        "\"Example Chat <noreply@example.org>\"",
        "required when `email` is set",
    ),
    optional("email.app_name", Kind::Str, "The service's name in emails.", "\"Example Chat\"", "`Matrix`"),
    optional(
        "email.client_base_url",
        Kind::Str,
        "Links in notification emails point here, followed by the room ID.",
        "\"https://app.element.io/#/room/\"",
        "`https://matrix.to/#/`",
    ),
    optional(
        "email.notif_delay_ms",
        Kind::Uint(u64::MAX),
        "How long an email about a message waits, so that reading it elsewhere first spares the email, in milliseconds.",
        "600000",
        "`600000` (10 min)",
    ),
    optional(
        "email.throttle_ms",
        Kind::Uint(u64::MAX),
        "At most one email per room per this long, in milliseconds.",
        "600000",
        "`600000` (10 min)",
    ),
    optional(
        "email.validation_token_lifetime_ms",
        Kind::Uint(u64::MAX),
        "How long an address validation link stays valid, in milliseconds.",
        "3600000",
        "`3600000` (1 h)",
    ),
    optional(
        "email.templates_dir",
        Kind::Path,
        "A directory with `notif_mail.txt` and `notif_mail.html` replacing the built-in notification templates (placeholders `{app_name}`, `{user_id}`, `{summary}`, `{messages}`, `{link}`).",
        "\"/etc/ganglion/templates\"",
        "built-in templates",
    ),
    key("well_known", Kind::Section, "The /.well-known/matrix/* answers."),
    optional(
        "well_known.server",
        Kind::Str,
        "`m.server` in /.well-known/matrix/server (`host:port`).",
        "\"matrix.example.org:443\"",
        "answer 404, so other servers fall back to SRV and port 8448",
    ),
    KeyDoc {
        example: Some("[\"/etc/ganglion/appservices/irc.yaml\"]"),
        default_note: Some("none"),
        ..key(
            "app_service_config_files",
            Kind::StrList,
            "Application service registration files (Synapse's YAML format), one per bridge or bot; every process must list the same files. See docs/appservices.md.",
        )
    },
    key("media", Kind::Section, "The media repository (the `media` role)."),
    optional(
        "media.path",
        Kind::Path,
        "Directory of the filesystem media store (with `s3`, only uploads in progress); shared by media workers.",
        "\"/var/lib/ganglion/media\"",
        "`<data_dir>/media`",
    ),
    KeyDoc {
        default_note: Some("the filesystem store under `media.path`"),
        ..key("media.s3", Kind::Section, "Keep media in an S3-compatible bucket (path-style requests, SigV4).")
    },
    optional(
        "media.s3.endpoint",
        Kind::Str,
        "Base URL of the S3 service.",
        "\"https://s3.eu-west-1.amazonaws.com\"",
        "required when `s3` is set",
    ),
    optional(
        "media.s3.bucket",
        Kind::Str,
        "The bucket; it must exist.",
        "\"ganglion-media\"",
        "required when `s3` is set",
    ),
    optional("media.s3.region", Kind::Str, "Region used in request signatures.", "\"eu-west-1\"", "`us-east-1`"),
    optional(
        "media.s3.access_key_id",
        Kind::Str,
        "Access key ID.",
        "\"AKIAIOSFODNN7EXAMPLE\"",
        "required when `s3` is set",
    ),
    optional(
        "media.s3.secret_access_key",
        Kind::Str,
        "Secret access key; prefer setting it through the environment.",
        "\"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"",
        "required when `s3` is set",
    ),
    optional("media.s3.key_prefix", Kind::Str, "Prefix of every object key.", "\"ganglion/\"", "empty"),
    key("media.max_upload_bytes", Kind::Uint(u64::MAX), "Largest upload accepted, in bytes (`m.upload.size`)."),
    optional(
        "media.user_quota_bytes",
        Kind::Uint(u64::MAX),
        "Total bytes of media a user may have uploaded.",
        "10737418240",
        "no quota",
    ),
    key("media.max_pending_uploads", Kind::Uint(u64::MAX), "Unused `create` reservations a user may hold at once."),
    key(
        "media.pending_upload_expiry_ms",
        Kind::Uint(u64::MAX),
        "How long a `create` reservation waits for its upload, in milliseconds.",
    ),
    key(
        "media.max_download_wait_ms",
        Kind::Uint(u64::MAX),
        "Longest a download may wait (`timeout_ms`) for a pending upload, in milliseconds.",
    ),
    key(
        "media.unauthenticated",
        Kind::Enum(&["serve", "frozen"]),
        "Legacy unauthenticated downloads: `serve` everything, or `frozen` to serve only media uploaded before.",
    ),
    key("media.dynamic_thumbnails", Kind::Bool, "Generate thumbnails of other sizes on request."),
    key("media.max_image_pixels", Kind::Uint(u64::MAX), "Largest image (width × height) that is thumbnailed."),
    key(
        "media.thumbnail_concurrency",
        Kind::Uint(u32::MAX as u64),
        "Thumbnails generated at once per process, on the blocking pool.",
    ),
    KeyDoc {
        default_note: Some("32×32 crop, 96×96 crop, 320×240, 640×480 and 800×600 scale"),
        ..key("media.thumbnail_sizes", Kind::SectionList, "Thumbnail sizes generated on upload.")
    },
    key("media.thumbnail_sizes[].width", Kind::Uint(u32::MAX as u64), "Width in pixels."),
    key("media.thumbnail_sizes[].height", Kind::Uint(u32::MAX as u64), "Height in pixels."),
    key("media.thumbnail_sizes[].method", Kind::Enum(&["scale", "crop"]), "`scale` to fit inside, `crop` to fill."),
    key("media.url_preview", Kind::Section, "URL previews (`preview_url`)."),
    key("media.url_preview.enabled", Kind::Bool, "Serve `preview_url`: the server fetches pages for clients."),
    key(
        "media.url_preview.ip_range_allowlist",
        Kind::StrList,
        "CIDR ranges previews may reach although private, loopback or reserved, e.g. `192.168.1.0/24`.",
    ),
    key("media.url_preview.max_redirects", Kind::Uint(u32::MAX as u64), "Redirects followed per preview."),
    key("media.url_preview.max_bytes", Kind::Uint(u64::MAX), "Bytes of a page read at most."),
    key("media.url_preview.timeout_ms", Kind::Uint(u64::MAX), "Time allowed for the whole fetch, in milliseconds."),
];

/// The entry for a table path (`listeners[].port`), if any.
pub(crate) fn lookup(path: &str) -> Option<&'static KeyDoc> {
    KEYS.iter().find(|k| k.path == path)
}

/// The keys directly under `parent` (`""` for the top level).
pub(crate) fn children(parent: &str) -> impl Iterator<Item = &'static KeyDoc> {
    let parent = parent.to_owned();
    KEYS.iter().filter(move |k| k.parent() == parent)
}
