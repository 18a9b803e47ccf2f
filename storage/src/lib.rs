//! `sluice-storage`: the partitioned, durable topic log of Sluice, and the
//! state store beside it, on RocksDB.
//!
//! A topic has partitions; a partition is a sequence of records with dense
//! offsets from 0. Appends are stored one RocksDB value per batch, keyed by
//! `(topic, partition, base offset)`, so appends and scans cost one RocksDB
//! operation per batch. One write path assigns offsets and groups
//! concurrent appends into one write and one fsync. The same RocksDB
//! instance holds the catalog and query checkpoints, so one atomic write
//! can carry output records, source offsets and operator state together.
//!
//! This is the only crate that knows RocksDB.
//!
//! ```no_run
//! use sluice_storage::{ReadLimits, Record, Storage, StorageOptions, TopicConfig};
//!
//! # fn main() -> sluice_storage::Result<()> {
//! let storage = Storage::open("./sluice-data", StorageOptions::default())?;
//! storage.create_topic(TopicConfig::new("bids", 4))?;
//! let outcome = storage.append_blocking("bids", 0, &[Record::new(r#"{"price":5}"#)])?;
//! let fetch = storage.read("bids", 0, outcome.base_offset, ReadLimits::records(100))?;
//! for record in fetch.records()? {
//!     println!("{} {:?}", record.offset, record.record.value);
//! }
//! # Ok(()) }
//! ```

mod append;
mod batch;
pub mod bench;
mod error;
mod groups;
mod keys;
mod options;
pub mod partitioner;
mod read;
mod retention;
mod state;
mod storage;
mod topic;
mod writer;

#[cfg(test)]
mod tests;

pub use append::{AtomicWrite, ProduceRecord, RecordPosition};
pub use batch::{Header, HeaderIter, PayloadKind, Record, now_ms};
pub use error::{Error, Result};
pub use groups::{MAX_GROUP_NAME_LEN, PartitionLag};
pub use options::{Durability, LogCompression, StorageOptions};
pub use read::{
    BatchRef, ColumnarSlice, Fetch, FetchedBatch, OwnedRecord, ReadLimits, RecordView, ScanOutcome,
};
pub use retention::RetentionReport;
pub use state::StateSpace;
pub use storage::Storage;
pub use topic::{
    CleanupPolicy, MAX_PARTITIONS, MAX_TOPIC_NAME_LEN, PartitionInfo, TopicConfig,
    TopicDescription, TopicSettings, validate_partition_count, validate_topic_name,
};
pub use writer::AppendOutcome;
