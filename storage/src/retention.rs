//! Retention and compaction: the background cleaner.
//!
//! The cleaner reads from RocksDB on its own thread and decides what to
//! remove; only the final, small change (a range delete and new partition
//! metadata, or a rewritten batch) goes through the write path. So
//! appends never wait for a scan, and the writer re-checks each change
//! against the partition as it is then.
//!
//! - `delete` topics drop whole batches from the head of each partition:
//!   those whose newest record is older than `retention_ms`, and, while the
//!   partition would still hold at least `retention_bytes` without it, the
//!   oldest batch (Kafka's rule for segments).
//! - `compact` topics keep, for every key, at least its latest record;
//!   older records of the key are removed from their batches, which keep
//!   their offsets (so offsets are never reused, as in Kafka).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::ReadOptions;

use crate::batch::{BatchView, EncodedBatch, now_ms};
use crate::error::{Error, Result};
use crate::keys;
use crate::storage::{
    CF_COLUMNS, CF_LOG, CF_TIME_INDEX, PartitionState, Shared, Storage, TopicState, poisoned,
    put_partition_meta,
};
use crate::topic::CleanupPolicy;
use crate::writer::{Publish, WriterHandle};

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Whole batches deleted from partition heads.
    pub batches_deleted: u64,
    /// Records in those batches.
    pub records_deleted: u64,
    /// Bytes in those batches.
    pub bytes_deleted: u64,
    /// Records removed by compaction.
    pub records_compacted: u64,
}

impl Storage {
    /// Applies retention and compaction to every topic now, as if the clock
    /// read `now_ms`. The background cleaner calls this periodically.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        apply(&self.inner.shared, &self.inner.writer, now_ms)
    }
}

fn apply(shared: &Arc<Shared>, writer: &WriterHandle, now_ms: i64) -> Result<RetentionReport> {
    let _cleaning = shared.cleaning.lock().map_err(|_| poisoned())?;
    let topics: Vec<Arc<TopicState>> = shared
        .topics
        .read()
        .map_err(|_| poisoned())?
        .values()
        .cloned()
        .collect();
    let mut report = RetentionReport::default();
    for topic in topics {
        let settings = topic.settings();
        let partitions = topic.partitions.read().map_err(|_| poisoned())?.clone();
        for (partition, state) in partitions.iter().enumerate() {
            let partition = partition as u32;
            match settings.cleanup {
                CleanupPolicy::Delete => {
                    if settings.retention_ms.is_some() || settings.retention_bytes.is_some() {
                        delete_head(
                            shared,
                            writer,
                            &topic,
                            partition,
                            state,
                            now_ms,
                            &mut report,
                        )?;
                    }
                }
                CleanupPolicy::Compact => {
                    compact(shared, writer, &topic, partition, state, &mut report)?
                }
            }
        }
    }
    Ok(report)
}

fn delete_head(
    shared: &Shared,
    writer: &WriterHandle,
    topic: &Arc<TopicState>,
    partition: u32,
    state: &PartitionState,
    now_ms: i64,
    report: &mut RetentionReport,
) -> Result<()> {
    let settings = topic.settings();
    let meta = state.meta();
    let cutoff = settings.retention_ms.map(|ms| now_ms.saturating_sub(ms));
    let mut remaining = meta.size_bytes;
    let mut new_start = meta.log_start_offset;
    let (mut batches, mut records, mut bytes) = (0u64, 0u64, 0u64);

    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::batch_key(topic.id, partition, meta.end_offset).to_vec());
    let mut iter = shared.db.raw_iterator_cf_opt(shared.cf(CF_LOG)?, options);
    iter.seek(keys::batch_key(topic.id, partition, meta.log_start_offset));
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let Some((_, _, base_offset)) = keys::parse_batch_key(key) else {
            break;
        };
        let view = BatchView::parse(value).map_err(|reason| Error::Corrupt {
            topic: topic.name.clone(),
            partition,
            offset: base_offset,
            reason,
        })?;
        let size = view.stored_len() as u64;
        let expired = cutoff.is_some_and(|cutoff| view.max_timestamp_ms < cutoff);
        let oversized = settings
            .retention_bytes
            .is_some_and(|limit| remaining.saturating_sub(size) >= limit);
        if !(expired || oversized) {
            break;
        }
        remaining -= size.min(remaining);
        new_start = base_offset + view.offset_span();
        batches += 1;
        records += u64::from(view.record_count);
        bytes += size;
        iter.next();
    }
    iter.status()?;
    if new_start == meta.log_start_offset {
        return Ok(());
    }
    let topic = topic.clone();
    writer.admin(move |shared, batch| {
        let state = shared.partition(&topic, partition)?;
        let mut meta = state.meta();
        if topic.dropped.load(Ordering::Acquire) || meta.log_start_offset > new_start {
            return Ok(Box::new(|_: &Shared| {}) as Publish);
        }
        // Column keys start with their batch's key: one range covers both.
        for cf in [CF_LOG, CF_COLUMNS] {
            batch.delete_range_cf(
                shared.cf(cf)?,
                keys::batch_key(topic.id, partition, 0),
                keys::batch_key(topic.id, partition, new_start),
            );
        }
        for key in stale_time_index_keys(shared, topic.id, partition, new_start)? {
            batch.delete_cf(shared.cf(CF_TIME_INDEX)?, key);
        }
        meta.log_start_offset = new_start;
        meta.size_bytes = meta.size_bytes.saturating_sub(bytes);
        put_partition_meta(shared, batch, topic.id, partition, &meta)?;
        // Raise the log start before the delete is written, so that a
        // reader never sees the records gone while the start is still low.
        state
            .log_start_offset
            .store(meta.log_start_offset, Ordering::Release);
        Ok(Box::new(move |_: &Shared| {
            state.size_bytes.store(meta.size_bytes, Ordering::Release);
        }) as Publish)
    })?;
    report.batches_deleted += batches;
    report.records_deleted += records;
    report.bytes_deleted += bytes;
    Ok(())
}

/// Time index entries that point below `log_start`, except the newest of
/// them: it still answers lookups for timestamps it covers (by sending them
/// to the log start), while the older ones can never be the answer.
fn stale_time_index_keys(
    shared: &Shared,
    topic_id: u32,
    partition: u32,
    log_start: u64,
) -> Result<Vec<Vec<u8>>> {
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::partition_key(topic_id, partition + 1).to_vec());
    let mut iter = shared
        .db
        .raw_iterator_cf_opt(shared.cf(CF_TIME_INDEX)?, options);
    iter.seek(keys::partition_key(topic_id, partition));
    let mut below = Vec::new();
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        if !key.starts_with(&keys::partition_key(topic_id, partition)) {
            break;
        }
        let base: [u8; 8] = value.try_into().unwrap_or([0xff; 8]);
        if u64::from_le_bytes(base) >= log_start {
            break;
        }
        below.push(key.to_vec());
        iter.next();
    }
    iter.status()?;
    below.pop();
    Ok(below)
}

fn compact(
    shared: &Shared,
    writer: &WriterHandle,
    topic: &Arc<TopicState>,
    partition: u32,
    state: &PartitionState,
    report: &mut RetentionReport,
) -> Result<()> {
    let meta = state.meta();
    if state.compacted_until.load(Ordering::Acquire) >= meta.end_offset {
        return Ok(());
    }
    let corrupt = |offset: u64| {
        move |reason: String| Error::Corrupt {
            topic: topic.name.clone(),
            partition,
            offset,
            reason,
        }
    };
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::batch_key(topic.id, partition, meta.end_offset).to_vec());
    let mut iter = shared.db.raw_iterator_cf_opt(shared.cf(CF_LOG)?, options);

    // Pass 1: the latest offset of every key.
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    iter.seek(keys::batch_key(topic.id, partition, meta.log_start_offset));
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let Some((_, _, base)) = keys::parse_batch_key(key) else {
            break;
        };
        let view = BatchView::parse(value).map_err(corrupt(base))?;
        for row in view.rows().map_err(corrupt(base))? {
            let row = row.map_err(corrupt(base))?;
            if let Some(record_key) = row.key {
                latest.insert(record_key.to_vec(), base + u64::from(row.offset_delta));
            }
        }
        iter.next();
    }
    iter.status()?;

    // Pass 2: rewrite batches that hold superseded records.
    let mut rewrites: Vec<(u64, Option<EncodedBatch>, u64, u64)> = Vec::new();
    iter.seek(keys::batch_key(topic.id, partition, meta.log_start_offset));
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let Some((_, _, base)) = keys::parse_batch_key(key) else {
            break;
        };
        let view = BatchView::parse(value).map_err(corrupt(base))?;
        let mut keep = Vec::with_capacity(view.record_count as usize);
        for row in view.rows().map_err(corrupt(base))? {
            let row = row.map_err(corrupt(base))?;
            let offset = base + u64::from(row.offset_delta);
            keep.push(
                row.key
                    .is_none_or(|k| latest.get(k).is_none_or(|last| *last == offset)),
            );
        }
        let removed = keep.iter().filter(|k| !**k).count() as u64;
        if removed > 0 {
            let replacement = if removed == keep.len() as u64 {
                None
            } else {
                Some(EncodedBatch::compacted(&view, &keep).map_err(corrupt(base))?)
            };
            rewrites.push((base, replacement, value.len() as u64, removed));
        }
        iter.next();
    }
    iter.status()?;
    drop(iter);

    let removed: u64 = rewrites.iter().map(|r| r.3).sum();
    let topic = topic.clone();
    let end = meta.end_offset;
    writer.admin(move |shared, batch| {
        let state = shared.partition(&topic, partition)?;
        let mut meta = state.meta();
        if topic.dropped.load(Ordering::Acquire) {
            return Ok(Box::new(|_: &Shared| {}) as Publish);
        }
        for (base, replacement, old_len, _) in rewrites {
            if base < meta.log_start_offset {
                continue;
            }
            let key = keys::batch_key(topic.id, partition, base);
            meta.size_bytes = meta.size_bytes.saturating_sub(old_len);
            match replacement {
                Some(encoded) => {
                    meta.size_bytes += encoded.bytes.len() as u64;
                    batch.put_cf(shared.cf(CF_LOG)?, key, encoded.bytes);
                }
                None => batch.delete_cf(shared.cf(CF_LOG)?, key),
            }
        }
        put_partition_meta(shared, batch, topic.id, partition, &meta)?;
        Ok(Box::new(move |_: &Shared| {
            state.size_bytes.store(meta.size_bytes, Ordering::Release);
            state.compacted_until.store(end, Ordering::Release);
        }) as Publish)
    })?;
    report.records_compacted += removed;
    Ok(())
}

/// The background cleaner's thread and its stop signal.
#[derive(Debug)]
pub(crate) struct CleanerHandle {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl CleanerHandle {
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

pub(crate) fn spawn_cleaner(
    shared: Arc<Shared>,
    writer: WriterHandle,
    interval: Duration,
) -> Result<CleanerHandle> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sluice-cleaner".to_string())
        .spawn(move || {
            loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(error) = apply(&shared, &writer, now_ms()) {
                            tracing::warn!(%error, "retention pass failed");
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(CleanerHandle { stop, thread })
}
