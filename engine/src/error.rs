//! The one error type of the library: it says whose fault a failure is.

/// Result of the library API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the library API. The first four variants are the caller's
/// mistakes; the others are the environment's or Sluice's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL does not parse; `line` and `column` are 1-based.
    #[error("{message} at line {line}, column {column}")]
    Sql {
        message: String,
        line: u64,
        column: u64,
    },
    /// A valid statement that asks for something invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// An unknown stream, topic, column or query.
    #[error("{0}")]
    NotFound(String),
    /// Something Sluice does not do (yet), with what would work.
    #[error("{0}")]
    Unsupported(String),
    /// The disk or the log failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A broken invariant: a bug in Sluice.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True for the caller's mistakes (fix the request), false for failures
    /// of the environment or of Sluice (retry or report).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Sql { .. } | Error::InvalidInput(_) | Error::NotFound(_) | Error::Unsupported(_)
        )
    }
}

impl From<sluice_sql::Error> for Error {
    fn from(error: sluice_sql::Error) -> Self {
        use sluice_sql::Error as E;
        match error {
            E::Syntax {
                message,
                line,
                column,
            } => Error::Sql {
                message,
                line,
                column,
            },
            E::InvalidInput(message) => Error::InvalidInput(message),
            e @ E::NotFound { .. } => Error::NotFound(e.to_string()),
            E::Unsupported(message) => Error::Unsupported(message),
            E::Storage(e) => e.into(),
            E::Internal(message) => Error::Internal(message),
        }
    }
}

impl From<sluice_storage::Error> for Error {
    fn from(error: sluice_storage::Error) -> Self {
        use sluice_storage::Error as E;
        match error {
            e @ E::NotFound { .. } => Error::NotFound(e.to_string()),
            e if e.is_user_error() => Error::InvalidInput(e.to_string()),
            e => Error::Storage(e.to_string()),
        }
    }
}
