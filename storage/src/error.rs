//! The storage error type: every failure of the log and the state store.
//!
//! Variants say whose fault a failure is: the caller's (`InvalidInput`,
//! `NotFound`, `AlreadyExists`, `OffsetOutOfRange`, `RecordTooLarge`), the
//! environment's (`Io`, `Rocks`), the data's (`Corrupt`), or ours
//! (`Internal`). Higher layers map that to HTTP statuses and exit codes.

use std::fmt;

/// Result of every fallible storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the log or the state store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something malformed: a bad name, a bad setting,
    /// an empty batch, a partition count that would shrink.
    #[error("{0}")]
    InvalidInput(String),

    /// A topic (or other named object) does not exist.
    #[error("unknown {kind} \"{name}\"")]
    NotFound { kind: &'static str, name: String },

    /// A topic with this name exists already.
    #[error("topic \"{0}\" already exists")]
    AlreadyExists(String),

    /// The partition does not exist in the topic.
    #[error("topic \"{topic}\" has no partition {partition} (it has {partitions})")]
    NoSuchPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },

    /// A read or commit named an offset outside `[log_start_offset, end_offset]`.
    #[error(
        "offset {offset} is out of range for {topic}/{partition}: \
         the log holds offsets {log_start_offset}..{end_offset}"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        log_start_offset: u64,
        end_offset: u64,
    },

    /// One record (key, value and headers) is larger than the configured limit.
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },

    /// A stored value could not be decoded.
    #[error("corrupt batch in {topic}/{partition} at offset {offset}: {reason}")]
    Corrupt {
        topic: String,
        partition: u32,
        offset: u64,
        reason: String,
    },

    /// The storage has been shut down.
    #[error("storage is closed")]
    Closed,

    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),

    /// An I/O error outside RocksDB (the data directory, the lock file).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    /// A broken invariant: a bug in Sluice.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(message: impl fmt::Display) -> Self {
        Error::InvalidInput(message.to_string())
    }

    pub(crate) fn unknown_topic(name: &str) -> Self {
        Error::NotFound {
            kind: "topic",
            name: name.to_string(),
        }
    }

    /// True when the failure is the caller's mistake rather than the
    /// environment's or a bug.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_)
                | Error::NotFound { .. }
                | Error::AlreadyExists(_)
                | Error::NoSuchPartition { .. }
                | Error::OffsetOutOfRange { .. }
                | Error::RecordTooLarge { .. }
        )
    }
}
