//! The dead-letter topics: where a record that does not decode is copied,
//! with its origin and error, once, however many queries read it.
//!
//! "Once" is kept by a marker per bad record in the checkpoint state space,
//! written in the same atomic write as the copy; a mutex makes the
//! check-then-write of concurrent queries one at a time. Bad records are
//! rare, so a marker each is cheaper than any cleverer bookkeeping.

use std::sync::Mutex;

use base64::Engine as _;
use sluice_storage::{AtomicWrite, Record, StateSpace, Storage, TopicConfig};

use crate::catalog::StreamDef;
use crate::error::{Error, Result};

const MARKER_PREFIX: &[u8] = b"dead-letter/";

/// A record that did not decode.
#[derive(Debug, Clone)]
pub(crate) struct BadRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub error: String,
}

/// Copies bad records to dead-letter topics.
#[derive(Debug)]
pub struct DeadLetters {
    storage: Storage,
    lock: Mutex<()>,
}

impl DeadLetters {
    /// Dead letters over `storage`.
    pub fn new(storage: Storage) -> Self {
        DeadLetters {
            storage,
            lock: Mutex::new(()),
        }
    }

    /// Copies the records not copied before to the stream's dead-letter
    /// topic (created on first use, one partition).
    pub(crate) fn record(&self, stream: &StreamDef, bad: &[BadRecord]) -> Result<()> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| Error::Internal("dead-letter lock poisoned".to_string()))?;
        let mut fresh = Vec::new();
        for record in bad {
            let marker = marker_key(&stream.name, record.partition, record.offset);
            if self
                .storage
                .state_get(StateSpace::Checkpoints, &marker)?
                .is_none()
            {
                fresh.push((marker, record));
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let topic = stream.dead_letter_topic();
        if !self.storage.topic_exists(&topic) {
            match self
                .storage
                .create_topic(TopicConfig::new(topic.clone(), 1))
            {
                Ok(_) => {}
                // Someone else (another process's query) made it first.
                Err(_) if self.storage.topic_exists(&topic) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut write = AtomicWrite::new();
        let mut records = Vec::with_capacity(fresh.len());
        for (marker, record) in fresh {
            records.push(dead_letter_record(stream, record));
            write.put(StateSpace::Checkpoints, marker, Vec::new());
        }
        write.append(topic, 0, records);
        self.storage.commit_blocking(write)?;
        Ok(())
    }

    /// Forgets which records of `stream` were copied (when it is dropped).
    pub(crate) fn forget(&self, stream: &str) -> Result<()> {
        let prefix = stream_prefix(stream);
        for (key, _) in self.storage.state_scan(StateSpace::Checkpoints, &prefix)? {
            self.storage.state_delete(StateSpace::Checkpoints, key)?;
        }
        Ok(())
    }
}

fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = MARKER_PREFIX.to_vec();
    key.extend_from_slice(stream.as_bytes());
    key.push(b'/');
    key
}

fn marker_key(stream: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// The dead-letter copy: a JSON object naming the origin and the error,
/// keyed and timestamped like the original.
fn dead_letter_record(stream: &StreamDef, bad: &BadRecord) -> Record {
    let (value, encoding) = match std::str::from_utf8(&bad.value) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&bad.value),
            "base64",
        ),
    };
    let body = serde_json::json!({
        "stream": stream.name,
        "topic": stream.topic,
        "partition": bad.partition,
        "offset": bad.offset,
        "timestamp": bad.timestamp_ms,
        "error": bad.error,
        "value": value,
        "encoding": encoding,
    });
    let mut record = Record::new(body.to_string()).with_timestamp(bad.timestamp_ms);
    if let Some(key) = &bad.key {
        record = record.with_key(key.clone());
    }
    record
}
