//! Registration files: Synapse's YAML format, read and checked field by field so every mistake is
//! one line naming the file and the key.

use std::path::{Path, PathBuf};

use figment::providers::Format as _;
use regex::Regex;
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value};

/// One namespace entry: a regex and whether the application service claims it alone.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Whether only this application service may create or use what matches.
    pub exclusive: bool,
    /// The regex as written in the file.
    pub source: String,
    /// The regex, anchored at the start as Synapse matches it (Python's `re.match`).
    regex: Regex,
}

impl Namespace {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

/// A registered application service.
#[derive(Debug, Clone)]
pub struct Registration {
    /// `id`: unique among the registrations.
    pub id: String,
    /// `url`: where transactions and queries go; `None` for a service that only uses the
    /// Client-Server API.
    pub url: Option<String>,
    /// `as_token`: what the service presents to us.
    pub as_token: String,
    /// `hs_token`: what we present to the service.
    pub hs_token: String,
    /// `sender_localpart`: the service's own user.
    pub sender: OwnedUserId,
    /// `namespaces.users`.
    pub users: Vec<Namespace>,
    /// `namespaces.aliases`.
    pub aliases: Vec<Namespace>,
    /// `namespaces.rooms`.
    pub rooms: Vec<Namespace>,
    /// `rate_limited` (default true): whether the service's requests are rate limited.
    pub rate_limited: bool,
    /// `protocols`: third-party protocols the service answers lookups for.
    pub protocols: Vec<String>,
    /// `receive_ephemeral` or `de.sorunome.msc2409.push_ephemeral`: typing, receipts and presence
    /// in transactions (MSC2409).
    pub receive_ephemeral: bool,
    /// `org.matrix.msc3202`: device list changes and one-time key counts in transactions, and
    /// device masquerading.
    pub msc3202: bool,
    /// `io.element.msc4190`: the service manages its users' devices through `/devices`.
    pub msc4190: bool,
    /// Where it was read from, for logs.
    pub path: PathBuf,
}

impl Registration {
    /// Whether `user_id` is in the user namespace (or is the service's own user).
    pub fn is_interested_in_user(&self, user_id: &str) -> bool {
        user_id == self.sender.as_str() || self.users.iter().any(|n| n.matches(user_id))
    }

    /// Whether `user_id` is in an exclusive user namespace of the service.
    pub fn is_exclusive_user(&self, user_id: &str) -> bool {
        user_id == self.sender.as_str() || self.users.iter().any(|n| n.exclusive && n.matches(user_id))
    }

    /// Whether `alias` is in the alias namespace.
    pub fn is_interested_in_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.matches(alias))
    }

    /// Whether `alias` is in an exclusive alias namespace.
    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|n| n.exclusive && n.matches(alias))
    }

    /// Whether `room_id` is in the room namespace.
    pub fn is_interested_in_room(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|n| n.matches(room_id))
    }
}

/// Reads one registration file. Each problem is one line: `path: key: what is wrong`.
pub(crate) fn read(path: &Path, server_name: &str) -> Result<Registration, Vec<String>> {
    let at = |key: &str, msg: &str| format!("{}: {key}: {msg}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    // figment parses YAML (the config loader already uses it); its values come back as JSON.
    let value: Value = figment::Figment::from(figment::providers::Yaml::string(&text))
        .extract()
        .map_err(|e| vec![format!("{}: not a YAML mapping: {}", path.display(), one_line(&e.to_string()))])?;
    let Value::Object(map) = value else {
        return Err(vec![format!("{}: not a YAML mapping", path.display())]);
    };

    let mut problems = Vec::new();
    let mut string = |key: &str| -> String {
        match map.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) => {
                problems.push(at(key, "must not be empty"));
                String::new()
            }
            None => {
                problems.push(at(key, "is required"));
                String::new()
            }
            Some(other) => {
                problems.push(at(key, &format!("must be a string, found {}", kind(other))));
                String::new()
            }
        }
    };
    let id = string("id");
    let as_token = string("as_token");
    let hs_token = string("hs_token");
    let sender_localpart = string("sender_localpart");
    if !as_token.is_empty() && as_token == hs_token {
        problems.push(at("hs_token", "must differ from as_token"));
    }

    let url = match map.get("url") {
        Some(Value::Null) => None,
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.trim_end_matches('/').to_owned())
        }
        Some(Value::String(u)) => {
            problems.push(at("url", &format!("{u:?} must start with http:// or https:// (or be null)")));
            None
        }
        Some(other) => {
            problems.push(at("url", &format!("must be a URL or null, found {}", kind(other))));
            None
        }
        None => {
            problems.push(at("url", "is required (null for a service that receives nothing)"));
            None
        }
    };

    let strict = sender_localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    let sender = match UserId::parse(format!("@{sender_localpart}:{server_name}")) {
        Ok(u) if strict => Some(u),
        Ok(_) => {
            problems.push(at(
                "sender_localpart",
                &format!("{sender_localpart:?} is not a valid localpart: only a-z, 0-9 and ._=-/+"),
            ));
            None
        }
        Err(e) if !sender_localpart.is_empty() => {
            problems.push(at("sender_localpart", &format!("{sender_localpart:?} is not a valid localpart: {e}")));
            None
        }
        Err(_) => None,
    };

    let (mut users, mut aliases, mut rooms) = (Vec::new(), Vec::new(), Vec::new());
    match map.get("namespaces") {
        Some(Value::Object(ns)) => {
            for (name, out) in [("users", &mut users), ("aliases", &mut aliases), ("rooms", &mut rooms)] {
                *out = namespaces(ns, name, &mut |k, m| problems.push(at(&format!("namespaces.{name}{k}"), m)));
            }
            for key in ns.keys().filter(|k| !["users", "aliases", "rooms"].contains(&k.as_str())) {
                problems.push(at(&format!("namespaces.{key}"), "unknown namespace (expected users, aliases, rooms)"));
            }
        }
        Some(Value::Null) | None => problems.push(at("namespaces", "is required")),
        Some(other) => problems.push(at("namespaces", &format!("must be a mapping, found {}", kind(other)))),
    }

    let mut flag = |key: &str, default: bool| match map.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            problems.push(at(key, &format!("must be true or false, found {}", kind(other))));
            default
        }
    };
    let rate_limited = flag("rate_limited", true);
    let receive_ephemeral = flag("receive_ephemeral", false) | flag("de.sorunome.msc2409.push_ephemeral", false);
    let msc3202 = flag("org.matrix.msc3202", false);
    let msc4190 = flag("io.element.msc4190", false);

    let protocols = match map.get("protocols") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                other => {
                    problems.push(at(&format!("protocols[{i}]"), &format!("must be a string, found {}", kind(other))));
                    None
                }
            })
            .collect(),
        Some(other) => {
            problems.push(at("protocols", &format!("must be a list, found {}", kind(other))));
            Vec::new()
        }
    };

    match sender {
        Some(sender) if problems.is_empty() => Ok(Registration {
            id,
            url,
            as_token,
            hs_token,
            sender,
            users,
            aliases,
            rooms,
            rate_limited,
            protocols,
            receive_ephemeral,
            msc3202,
            msc4190,
            path: path.to_owned(),
        }),
        _ => Err(problems),
    }
}

fn namespaces(ns: &Map<String, Value>, name: &str, problem: &mut dyn FnMut(&str, &str)) -> Vec<Namespace> {
    let list = match ns.get(name) {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            problem("", &format!("must be a list, found {}", kind(other)));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(entry) = entry else {
            problem(&format!("[{i}]"), "must be a mapping with exclusive and regex");
            continue;
        };
        let exclusive = match entry.get("exclusive") {
            Some(Value::Bool(b)) => *b,
            None => {
                problem(&format!("[{i}].exclusive"), "is required (true or false)");
                continue;
            }
            Some(other) => {
                problem(&format!("[{i}].exclusive"), &format!("must be true or false, found {}", kind(other)));
                continue;
            }
        };
        let source = match entry.get("regex") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                problem(&format!("[{i}].regex"), "is required (a non-empty string)");
                continue;
            }
        };
        match Regex::new(&format!("^(?:{source})")) {
            Ok(regex) => out.push(Namespace { exclusive, source, regex }),
            Err(e) => problem(
                &format!("[{i}].regex"),
                &format!("{source:?} is not a valid regex: {}", one_line(&e.to_string())),
            ),
        }
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
