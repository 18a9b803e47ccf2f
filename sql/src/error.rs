//! The error type of the SQL layer.

use std::fmt;

/// Result of the SQL layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of parsing, cataloguing or planning SQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not valid Sluice SQL. Carries where (1-based).
    #[error("{message} at line {line}, column {column}")]
    Syntax {
        message: String,
        line: u64,
        column: u64,
    },
    /// The statement parses but asks for something invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// The statement names an object that does not exist.
    #[error("unknown {kind} \"{name}\"{hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        /// Empty, or ` (did you mean "x"?)`.
        hint: String,
    },
    /// The statement is valid SQL that Sluice does not support (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The log or state store failed.
    #[error(transparent)]
    Storage(#[from] sluice_storage::Error),
    /// A broken invariant: a bug in Sluice.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(message: impl fmt::Display) -> Self {
        Error::InvalidInput(message.to_string())
    }
}
