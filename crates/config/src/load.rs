//! [`load`]: defaults < file < `GANGLION_*` environment, then unknown-key detection, deserialisation
//! and [`Config::validate`], with every failure mapped to a one-line [`ConfigError`].
//!
//! The environment is a parameter, not read here, so tests never touch process state and the binary
//! stays the only place that reads `std::env`.

use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind as FigmentKind};
use figment::providers::{Format, Serialized, Toml, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use crate::Config;
use crate::error::{ConfigError, Problem, one_line};
use crate::keys::{self, Kind};

/// Prefix of the environment variables that override the file: `GANGLION_SERVER_NAME`,
/// `GANGLION_DATABASE__URL` (`__` separates nesting levels).
pub const ENV_PREFIX: &str = "GANGLION_";

/// Reserved for the binary's `--config` path; never read as a key.
const CONFIG_PATH_VAR: &str = "GANGLION_CONFIG";

/// Name of the environment layer's figment metadata, used to recognise it in errors.
const ENV_LAYER_NAME: &str = "GANGLION_* environment variables";

/// Loads the configuration: [`Config::default`], overlaid by `file` (YAML if it ends in `.yaml` or
/// `.yml`, TOML if `.toml`), overlaid by the `GANGLION_*` pairs in `env`, then validated.
///
/// `env` is normally `std::env::vars()` (see [`load_from_process_env`]); pairs without the prefix are
/// ignored, as is `GANGLION_CONFIG`, which the binary reserves for the config file path. Keys are
/// case-insensitive, `__` separates nesting (`GANGLION_RPC__MAIN_URL`). String-typed keys take the
/// value verbatim; numbers and booleans parse; a list or table (`GANGLION_LISTENERS`) may be given
/// as a JSON array/object or an inline TOML-style value such as
/// `[{bind="0.0.0.0", port=8008, resources=["client"]}]`.
///
/// # Errors
///
/// [`ConfigError`] when the file cannot be read or parsed, a key is unknown, a value has the wrong
/// type, or [`Config::validate`] fails. Its `Display` is one line naming the key.
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        figment = figment.merge(FileLayer::read(path)?);
    }
    figment = figment.merge(EnvLayer::new(env));

    let merged = figment.find_value("").map_err(|e| figment_error(&figment, &Value::from(Dict::new()), e))?;
    check_unknown_keys(&figment, &merged, "", &mut Vec::new())?;

    let config: Config = figment.extract().map_err(|e| figment_error(&figment, &merged, e))?;
    if let Err(mut error) = config.validate() {
        if let ConfigError::Invalid { problems } = &mut error {
            for problem in problems {
                problem.origin = origin_of_key(&figment, &merged, &problem.key);
            }
        }
        return Err(error);
    }
    Ok(config)
}

/// [`load`] with the process environment. Variables whose name or value is not UTF-8 are skipped.
///
/// # Errors
///
/// As [`load`].
pub fn load_from_process_env(file: Option<&Path>) -> Result<Config, ConfigError> {
    load(file, std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
}

/// The config file, read and parsed up front so syntax errors name the file on one line.
struct FileLayer {
    path: PathBuf,
    dict: Dict,
}

impl FileLayer {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let is_toml = match extension.as_deref() {
            Some("yaml" | "yml") => false,
            Some("toml") => true,
            _ => {
                return Err(ConfigError::UnsupportedFormat { path: path.to_owned() });
            }
        };
        let contents =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let syntax =
            |message: String| ConfigError::Syntax { origin: path.display().to_string(), message: one_line(&message) };

        let data = if is_toml {
            // Parse once with `toml` directly: its own error renders a multi-line snippet.
            if let Err(e) = toml::from_str::<toml::Table>(&contents) {
                let at = e.span().map(|span| line_column(&contents, span.start));
                let message = match at {
                    Some((line, column)) => {
                        format!("{} at line {line} column {column}", e.message())
                    }
                    None => e.message().to_owned(),
                };
                return Err(syntax(message));
            }
            Toml::string(&contents).data()
        } else if is_blank_yaml(&contents) {
            Ok(Profile::Default.collect(Dict::new()))
        } else {
            Yaml::string(&contents).data()
        };
        let mut data = data.map_err(|e| syntax(e.kind.to_string()))?;
        let dict = data.remove(&Profile::Default).unwrap_or_default();
        Ok(Self { path: path.to_owned(), dict })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from(self.path.display().to_string(), Source::File(self.path.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// A YAML file with nothing but comments and blank lines is an empty configuration, not an error.
fn is_blank_yaml(contents: &str) -> bool {
    contents.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `GANGLION_*` variables, as `(key path, raw value)`.
struct EnvLayer {
    vars: Vec<(String, String)>,
}

impl EnvLayer {
    fn new(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = env
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.trim().to_ascii_uppercase();
                if name == CONFIG_PATH_VAR {
                    return None;
                }
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let segments: Vec<_> = rest.to_ascii_lowercase().split("__").map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return None;
                }
                Some((segments.join("."), value))
            })
            .collect();
        Self { vars }
    }
}

/// Parses an environment value by the kind of key it sets.
fn env_value(path: &str, raw: &str) -> Value {
    match keys::lookup(path).map(|k| k.kind) {
        Some(kind) if kind.is_textual() => Value::from(raw.to_owned()),
        Some(Kind::Section | Kind::SectionList | Kind::EnumList(_)) => {
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| parse_scalar(raw))
        }
        _ => parse_scalar(raw),
    }
}

fn parse_scalar(raw: &str) -> Value {
    match raw.parse::<Value>() {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER_NAME).interpolater(|_: &Profile, keys: &[&str]| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (path, raw) in &self.vars {
            let value = figment::util::nest(path, env_value(path, raw));
            if let Value::Dict(_, nested) = value {
                merge_into(&mut dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Recursively merges `new` into `dict`; later scalars win.
fn merge_into(dict: &mut Dict, new: Dict) {
    for (key, value) in new {
        match (dict.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => merge_into(existing, nested),
            (_, value) => {
                dict.insert(key, value);
            }
        }
    }
}

/// `["database", "url"]` → `GANGLION_DATABASE__URL`; list indices and what follows them belong to
/// the variable that set the whole list.
fn env_var_name<S: AsRef<str>>(keys: &[S]) -> String {
    let parts: Vec<_> = keys
        .iter()
        .map(AsRef::as_ref)
        .take_while(|k| !k.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_ascii_uppercase)
        .collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// Where a value came from: the file path, the environment variable, or `None` for the defaults.
fn origin(metadata: &Metadata, keys: &[String]) -> Option<String> {
    if let Some(path) = metadata.source.as_ref().and_then(Source::file_path) {
        Some(path.display().to_string())
    } else if metadata.name == ENV_LAYER_NAME {
        Some(format!("environment variable {}", env_var_name(keys)))
    } else {
        None
    }
}

/// Walks the merged tree and rejects the first key the table does not define, naming the layer that
/// set it. (serde's `deny_unknown_fields` would catch it too, but cannot say which layer.)
fn check_unknown_keys(
    figment: &Figment,
    value: &Value,
    table_path: &str,
    keys_so_far: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some(dict) = value.as_dict() else {
        return Ok(());
    };
    for (name, child) in dict {
        let child_table_path = if table_path.is_empty() { name.clone() } else { format!("{table_path}.{name}") };
        keys_so_far.push(name.clone());
        match keys::lookup(&child_table_path).map(|k| k.kind) {
            None => {
                // Name the whole variable (`GANGLION_DATABSE__URL`), not just its first segment.
                let mut leaf_keys = keys_so_far.clone();
                let mut leaf = child;
                while let Some((name, next)) = leaf.as_dict().and_then(|d| d.iter().next()) {
                    leaf_keys.push(name.clone());
                    leaf = next;
                }
                let origin = figment
                    .get_metadata(leaf.tag())
                    .and_then(|md| origin(md, &leaf_keys))
                    .unwrap_or_else(|| "the defaults".to_owned());
                return Err(ConfigError::UnknownKey {
                    key: display_path(keys_so_far),
                    origin,
                    expected: keys::children(table_path).map(|k| k.name().to_owned()).collect(),
                });
            }
            Some(Kind::Section) => check_unknown_keys(figment, child, &child_table_path, keys_so_far)?,
            Some(Kind::SectionList) => {
                for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                    keys_so_far.push(i.to_string());
                    check_unknown_keys(figment, item, &format!("{child_table_path}[]"), keys_so_far)?;
                    keys_so_far.pop();
                }
            }
            Some(_) => {}
        }
        keys_so_far.pop();
    }
    Ok(())
}

/// `["listeners", "0", "port"]` → `listeners[0].port`.
pub(crate) fn display_path<S: AsRef<str>>(keys: &[S]) -> String {
    let mut out = String::new();
    for key in keys {
        let key = key.as_ref();
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(key);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
    }
    out
}

/// `listeners[0].port` → `["listeners", "0", "port"]`.
fn split_path(key: &str) -> Vec<String> {
    key.replace('[', ".").replace(']', "").split('.').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The value at `keys` in the merged tree, or the deepest one that exists.
fn find<'v>(merged: &'v Value, keys: &[String]) -> (&'v Value, usize) {
    let mut value = merged;
    for (depth, key) in keys.iter().enumerate() {
        let next = match value {
            Value::Dict(_, dict) => dict.get(key),
            Value::Array(_, items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return (value, depth),
        }
    }
    (value, keys.len())
}

fn origin_of_key(figment: &Figment, merged: &Value, key: &str) -> Option<String> {
    let keys = split_path(key);
    let (value, depth) = find(merged, &keys);
    if depth == 0 {
        return None;
    }
    origin(figment.get_metadata(value.tag())?, &keys[..depth])
}

/// Maps figment's extraction error (possibly several chained) to one [`ConfigError`].
fn figment_error(figment: &Figment, merged: &Value, error: figment::Error) -> ConfigError {
    let mut problems = Vec::new();
    for e in error {
        let keys = e.path.clone();
        let origin = e.metadata.as_ref().and_then(|md| origin(md, &keys)).or_else(|| {
            let (value, depth) = find(merged, &keys);
            (depth > 0).then(|| figment.get_metadata(value.tag())).flatten().and_then(|md| origin(md, &keys[..depth]))
        });
        match &e.kind {
            FigmentKind::UnknownField(field, expected) => {
                let mut full = keys.clone();
                full.push(field.clone());
                return ConfigError::UnknownKey {
                    key: display_path(&full),
                    origin: origin.unwrap_or_else(|| "the configuration".to_owned()),
                    expected: expected.iter().map(|s| (*s).to_owned()).collect(),
                };
            }
            FigmentKind::MissingField(field) => {
                let mut full = keys.clone();
                full.push(field.to_string());
                problems.push(Problem {
                    key: display_path(&full),
                    message: "required key is missing".to_owned(),
                    origin,
                });
            }
            kind => {
                let (value, depth) = find(merged, &keys);
                let found = (depth == keys.len() && !keys.is_empty()).then_some(value);
                problems.push(Problem {
                    key: if keys.is_empty() { "(top level)".to_owned() } else { display_path(&keys) },
                    message: describe(kind, found),
                    origin,
                });
            }
        }
    }
    ConfigError::Invalid { problems }
}

/// One readable clause for a serde error kind.
fn describe(kind: &FigmentKind, found: Option<&Value>) -> String {
    match kind {
        FigmentKind::InvalidType(actual, expected) | FigmentKind::InvalidValue(actual, expected) => {
            match describe_actual(actual) {
                Ok(scalar) => format!("invalid value {scalar}: expected {}", friendly_expected(expected)),
                Err(shape) => format!("expected {}, found {shape}", friendly_expected(expected)),
            }
        }
        FigmentKind::UnknownVariant(variant, expected) => {
            format!("invalid value {variant:?}: expected one of: {}", expected.join(", "))
        }
        FigmentKind::Message(message) => match found.map(Value::to_actual).map(|a| describe_actual(&a)) {
            Some(Ok(scalar)) => format!("invalid value {scalar}: {}", one_line(message)),
            _ => one_line(message),
        },
        other => one_line(&other.to_string()),
    }
}

/// A scalar as written (`"abc"`, `70000`), or the shape of a compound value (`a list`).
fn describe_actual(actual: &Actual) -> Result<String, &'static str> {
    match actual {
        Actual::Str(s) => Ok(format!("{s:?}")),
        Actual::Char(c) => Ok(format!("{:?}", c.to_string())),
        Actual::Bool(b) => Ok(b.to_string()),
        Actual::Unsigned(n) => Ok(n.to_string()),
        Actual::Signed(n) => Ok(n.to_string()),
        Actual::Float(n) => Ok(n.to_string()),
        Actual::Seq => Err("a list"),
        Actual::Map => Err("a table"),
        Actual::Unit | Actual::Option => Err("nothing (null)"),
        _ => Err("a value of another type"),
    }
}

/// serde's "expected" phrases, reworded for operators.
fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" => "a number from 0 to 255".to_owned(),
        "u16" => "a number from 0 to 65535".to_owned(),
        "u32" => "a number from 0 to 4294967295".to_owned(),
        "u64" | "usize" | "u128" => "a non-negative number".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "IP address" => "an IP address".to_owned(),
        "socket address" => "an address such as 127.0.0.1:9093".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}
