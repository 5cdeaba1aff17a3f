//! [`ConfigError`]: every way loading or validating the configuration can fail, each displayed as one
//! line that names the offending key and, when known, where its value came from.

use std::fmt;
use std::path::PathBuf;

/// Why the configuration could not be loaded. `Display` is always one line starting with `config:`
/// and naming the key (or file) at fault; the binary prints it and exits with [`ConfigError::exit_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config: cannot read {}: {source}", path.display())]
    Read {
        /// The file given.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The config file's extension names no format we read.
    #[error(
        "config: {}: unsupported config file type (expected .yaml, .yml or .toml)",
        path.display()
    )]
    UnsupportedFormat {
        /// The file given.
        path: PathBuf,
    },
    /// The config file is not well-formed YAML or TOML.
    #[error("config: {origin}: syntax error: {message}")]
    Syntax {
        /// The file, as given.
        origin: String,
        /// The parser's complaint, folded onto one line.
        message: String,
    },
    /// A key that no part of the configuration defines.
    #[error("config: unknown key '{key}' in {origin} (expected one of: {})", expected.join(", "))]
    UnknownKey {
        /// Dotted path of the unknown key, e.g. `database.urll` or `listeners[0].prot`.
        key: String,
        /// Where it was set: a file path or `environment variable GANGLION_…`.
        origin: String,
        /// The keys valid at that level.
        expected: Vec<String>,
    },
    /// One or more values have the wrong type or fail validation.
    #[error("config: {}", DisplayProblems(problems))]
    Invalid {
        /// Every problem found, in key order; never empty.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The process exit code for any configuration error: 2, as for a usage error.
    pub fn exit_code(&self) -> i32 {
        2
    }

    /// Builds [`ConfigError::Invalid`] from a single problem.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { problems: vec![Problem::new(key, message)] }
    }

    /// The individual problems: those of [`ConfigError::Invalid`], else empty.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// One bad value: its key path, what is wrong with it and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, with list indices in brackets: `server_name`, `listeners[1].port`.
    pub key: String,
    /// What is wrong, e.g. `"not a name!" is not a valid server name`.
    pub message: String,
    /// Where the value came from (a file path or `GANGLION_…` variable), when it did not come
    /// from the defaults.
    pub origin: Option<String>,
}

impl Problem {
    /// A problem with no known origin.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into(), origin: None }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        match &self.origin {
            Some(origin) => write!(f, " (in {origin})"),
            None => Ok(()),
        }
    }
}

/// Joins problems on one line.
struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Folds a multi-line parser message onto one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
