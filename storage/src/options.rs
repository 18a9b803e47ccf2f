//! How a [`crate::Storage`] is opened: durability, limits, background work.

use std::time::Duration;

use crate::error::{Error, Result};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After the RocksDB WAL is fsynced. Concurrent appends share one fsync
    /// (group commit). Survives power loss.
    #[default]
    Fsync,
    /// After the WAL write reaches the operating system. Survives a crash
    /// of the process (`kill -9`), not of the machine.
    Os,
}

impl Durability {
    /// Parses `fsync` or `os`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            other => Err(Error::invalid(format!(
                "unknown durability \"{other}\" (expected \"fsync\" or \"os\")"
            ))),
        }
    }

    /// The mode's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
        }
    }
}

/// How RocksDB compresses the table files of the log: the records of
/// every topic and the headers of columnar batches. (A columnar stream's
/// column values are never block-compressed; the stream's `compression`
/// setting compresses their Arrow buffers instead.)
///
/// The default is none, as a Kafka producer's `compression.type`: a
/// query then reads the stored bytes in place, where LZ4 would
/// decompress every block first (measured: LZ4 cost a continuous query
/// over JSON about a fifth of its throughput, and halved the disk the
/// Nexmark bench's JSON topics take; `BENCHMARKS.md`). zstd stores less
/// than LZ4, at several times its decompression cost. The setting
/// applies to files written from then on; files already written keep
/// theirs and stay readable, so it can be changed at any restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogCompression {
    /// Blocks stored as written.
    #[default]
    None,
    /// LZ4: cheap to decompress.
    Lz4,
    /// Zstandard: smaller, several times LZ4's cost to decompress.
    Zstd,
}

impl LogCompression {
    /// Parses `none`, `lz4` or `zstd`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(LogCompression::None),
            "lz4" => Ok(LogCompression::Lz4),
            "zstd" => Ok(LogCompression::Zstd),
            other => Err(Error::invalid(format!(
                "unknown log compression \"{other}\" (expected \"none\", \"lz4\" or \"zstd\")"
            ))),
        }
    }

    /// The codec's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogCompression::None => "none",
            LogCompression::Lz4 => "lz4",
            LogCompression::Zstd => "zstd",
        }
    }
}

/// Options of [`crate::Storage::open`].
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// When appends are acknowledged. Default: [`Durability::Fsync`].
    pub durability: Durability,
    /// The largest record (key + value + headers) accepted, in bytes.
    /// Default: 1 MiB, Kafka's `message.max.bytes`.
    pub max_record_bytes: usize,
    /// The largest appended batch, in bytes. Default: 64 MiB.
    pub max_batch_bytes: usize,
    /// How often the background cleaner applies retention and compaction.
    /// `None` disables the background cleaner (retention then runs only
    /// when [`crate::Storage::apply_retention`] is called). Default: 30 s.
    pub retention_check_interval: Option<Duration>,
    /// RocksDB block cache, in bytes. Default: 128 MiB.
    pub block_cache_bytes: usize,
    /// RocksDB memtable size of the log column family, in bytes.
    /// Default: 64 MiB.
    pub write_buffer_bytes: usize,
    /// How table files of the log are compressed. Default: none.
    pub log_compression: LogCompression,
    /// Whether reads of the log (its batches and their column parts)
    /// verify the checksum of each table block they load (RocksDB's own
    /// default). Default: true. Off, a scan of data that is not in the
    /// block cache skips the checksum, which is its first pass over the
    /// bytes; flushes and compactions verify regardless, and so do reads
    /// of the time index, state and metadata.
    pub verify_checksums: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            durability: Durability::Fsync,
            max_record_bytes: 1024 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
            retention_check_interval: Some(Duration::from_secs(30)),
            block_cache_bytes: 128 * 1024 * 1024,
            write_buffer_bytes: 64 * 1024 * 1024,
            log_compression: LogCompression::None,
            verify_checksums: true,
        }
    }
}

impl StorageOptions {
    /// Sets the durability mode.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets how table files of the log are compressed.
    pub fn with_log_compression(mut self, compression: LogCompression) -> Self {
        self.log_compression = compression;
        self
    }

    /// Sets whether reads verify table block checksums.
    pub fn with_verify_checksums(mut self, verify: bool) -> Self {
        self.verify_checksums = verify;
        self
    }

    /// Sets the maximum record size.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    /// Sets (or with `None` disables) the background cleaner's interval.
    pub fn with_retention_check_interval(mut self, interval: Option<Duration>) -> Self {
        self.retention_check_interval = interval;
        self
    }
}
