//! Configuration: the only room that knows YAML.
//!
//! `load` reads the main file and its includes, `compile` turns the merged specs into a typed
//! [`Runtime`](crate::runtime::Runtime), collecting every error with its file and YAML path.
//! Imports: routing, upstream (to build typed values), runtime.

mod compile;
mod compile_policy;
mod compile_tls;
mod compile_upstream;
mod load;
pub mod schema;

pub use compile::{compile, duration};
pub use load::{load, Loaded, Sourced};

use std::fmt;
use std::path::Path;

/// Where in the configuration a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A YAML syntax or shape error: 1-based line and column.
    Line { line: usize, column: usize },
    /// A YAML path like `ingresses[0].rules[1].paths[0].service`.
    Path(String),
    /// The file as a whole (unreadable, empty glob).
    File,
}

/// One configuration error: the file, where in it, and what is wrong (with the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub location: Location,
    pub message: String,
}

impl ConfigError {
    pub fn at(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            location: Location::Path(path.into()),
            message: message.into(),
        }
    }

    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            location: Location::File,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Line { line, column } => {
                write!(f, "{}:{}:{}: {}", self.file, line, column, self.message)
            }
            Location::Path(p) => write!(f, "{}: {}: {}", self.file, p, self.message),
            Location::File => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every error found in one attempt to load a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Load and compile in one step: what `run`, `check` and a reload do.
pub fn load_runtime(
    path: &Path,
    previous: Option<&crate::runtime::Runtime>,
) -> Result<crate::runtime::Runtime, ConfigErrors> {
    let loaded = load(path)?;
    compile(&loaded, previous)
}
