//! Appending: records to a partition, records to a topic through the
//! partitioner, columnar batches, and atomic writes that combine appends to
//! several topics with state store entries.

use std::sync::atomic::Ordering;

use crate::batch::{EncodedBatch, Record};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::state::StateSpace;
use crate::storage::{Shared, Storage, TopicState};
use crate::topic::CleanupPolicy;
use crate::writer::{AppendOutcome, PendingAppend, StateOp, WriteRequest};

/// A record to produce to a topic, with an optional explicit partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRecord {
    /// Where to put the record; `None` lets the partitioner choose.
    pub partition: Option<u32>,
    /// The record.
    pub record: Record,
}

impl From<Record> for ProduceRecord {
    fn from(record: Record) -> Self {
        ProduceRecord {
            partition: None,
            record,
        }
    }
}

/// Where one produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// Appends to several topics and state store changes, written in one
/// atomic RocksDB write: after a crash either all of it is there or none.
///
/// ```no_run
/// # fn demo(storage: &sluice_storage::Storage) -> sluice_storage::Result<()> {
/// use sluice_storage::{AtomicWrite, Record, StateSpace};
/// let mut write = AtomicWrite::new();
/// write.append("top_auctions", 0, vec![Record::new(r#"{"auction":1}"#)]);
/// write.put(StateSpace::Checkpoints, b"q1/offsets".to_vec(), b"...".to_vec());
/// let outcomes = storage.commit_blocking(write)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
pub struct AtomicWrite {
    appends: Vec<AtomicAppend>,
    state: Vec<(StateSpace, Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Debug, Clone)]
enum AtomicAppend {
    Rows {
        topic: String,
        partition: u32,
        records: Vec<Record>,
    },
    Columnar {
        topic: String,
        partition: u32,
        timestamps: Vec<i64>,
        columns: Vec<Vec<u8>>,
    },
}

impl AtomicWrite {
    /// An empty write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch of records for one partition.
    pub fn append(
        &mut self,
        topic: impl Into<String>,
        partition: u32,
        records: Vec<Record>,
    ) -> &mut Self {
        self.appends.push(AtomicAppend::Rows {
            topic: topic.into(),
            partition,
            records,
        });
        self
    }

    /// Adds a columnar batch for one partition: the row timestamps and each
    /// column's bytes (see [`Storage::append_columnar`]).
    pub fn append_columnar(
        &mut self,
        topic: impl Into<String>,
        partition: u32,
        timestamps: Vec<i64>,
        columns: Vec<Vec<u8>>,
    ) -> &mut Self {
        self.appends.push(AtomicAppend::Columnar {
            topic: topic.into(),
            partition,
            timestamps,
            columns,
        });
        self
    }

    /// Sets a state store key.
    pub fn put(&mut self, space: StateSpace, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.state.push((space, key, Some(value)));
        self
    }

    /// Deletes a state store key.
    pub fn delete(&mut self, space: StateSpace, key: Vec<u8>) -> &mut Self {
        self.state.push((space, key, None));
        self
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.state.is_empty()
    }
}

impl Shared {
    /// Checks records against the topic and the limits, and encodes them.
    pub(crate) fn encode_rows(
        &self,
        topic: &TopicState,
        records: &[Record],
    ) -> Result<EncodedBatch> {
        if records.is_empty() {
            return Err(Error::invalid("cannot append an empty batch"));
        }
        let compact = topic.settings().cleanup == CleanupPolicy::Compact;
        let max = self.options.max_record_bytes;
        let mut total = 0usize;
        for record in records {
            let size = record.size();
            if size > max {
                return Err(Error::RecordTooLarge { size, max });
            }
            if compact && record.key.is_none() {
                return Err(Error::invalid(format!(
                    "topic \"{}\" is compacted: every record needs a key",
                    topic.name
                )));
            }
            total += size;
        }
        self.check_batch_size(records.len(), total)?;
        Ok(EncodedBatch::rows(records))
    }

    fn encode_columnar(
        &self,
        topic: &TopicState,
        timestamps: &[i64],
        columns: Vec<Vec<u8>>,
    ) -> Result<EncodedBatch> {
        if timestamps.is_empty() {
            return Err(Error::invalid("cannot append an empty batch"));
        }
        if topic.settings().cleanup == CleanupPolicy::Compact {
            return Err(Error::invalid(format!(
                "topic \"{}\" is compacted: columnar batches have no keys to compact by",
                topic.name
            )));
        }
        if columns.len() >= usize::from(u16::MAX) {
            return Err(Error::invalid(format!(
                "a columnar batch of {} columns is too many",
                columns.len()
            )));
        }
        let bytes = columns.iter().map(Vec::len).sum::<usize>() + 8 * timestamps.len();
        self.check_batch_size(timestamps.len(), bytes)?;
        Ok(EncodedBatch::columnar(timestamps, columns))
    }

    fn check_batch_size(&self, records: usize, bytes: usize) -> Result<()> {
        if records > u32::MAX as usize / 2 {
            return Err(Error::invalid(format!(
                "a batch of {records} records is too many"
            )));
        }
        if bytes > self.options.max_batch_bytes {
            return Err(Error::invalid(format!(
                "a batch of {bytes} bytes exceeds the maximum batch size of {} bytes",
                self.options.max_batch_bytes
            )));
        }
        Ok(())
    }

    fn pending(
        &self,
        topic: &str,
        partition: u32,
        encode: impl FnOnce(&TopicState) -> Result<EncodedBatch>,
    ) -> Result<PendingAppend> {
        let topic = self.topic(topic)?;
        self.partition(&topic, partition)?;
        let batch = encode(&topic)?;
        Ok(PendingAppend {
            topic,
            partition,
            batch,
        })
    }
}

impl Storage {
    /// Appends records to one partition as one batch; resolves when they
    /// are durable. The records get consecutive offsets.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<AppendOutcome> {
        let request = self.append_request(topic, partition, records)?;
        single(self.inner.writer.write(request).await?)
    }

    /// [`Storage::append`] for blocking callers.
    pub fn append_blocking(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<AppendOutcome> {
        let request = self.append_request(topic, partition, records)?;
        single(self.inner.writer.write_blocking(request)?)
    }

    fn append_request(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<WriteRequest> {
        let shared = &self.inner.shared;
        let append = shared.pending(topic, partition, |t| shared.encode_rows(t, records))?;
        Ok(WriteRequest::append(append))
    }

    /// Appends one columnar batch: `timestamps[i]` is the timestamp of row
    /// `i`, `columns[c]` the bytes of column `c` (opaque here; the SQL layer
    /// stores each as an Arrow IPC stream). Each column is a value of its
    /// own, so a reader fetches only the columns it wants
    /// ([`ColumnarSlice::column`](crate::ColumnarSlice::column)).
    pub async fn append_columnar(
        &self,
        topic: &str,
        partition: u32,
        timestamps: &[i64],
        columns: Vec<Vec<u8>>,
    ) -> Result<AppendOutcome> {
        let shared = &self.inner.shared;
        let append = shared.pending(topic, partition, |t| {
            shared.encode_columnar(t, timestamps, columns)
        })?;
        let request = WriteRequest::append(append);
        single(self.inner.writer.write(request).await?)
    }

    /// Produces records to a topic: each goes to its explicit partition,
    /// else to `murmur2(key) % partitions`, else (keyless) to one partition
    /// picked round-robin for this call. All partitions' batches are written
    /// atomically. Returns each record's position, in input order.
    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        let (request, placement) = self.produce_request(topic, records)?;
        let outcomes = self.inner.writer.write(request).await?;
        Ok(positions(&outcomes, &placement))
    }

    /// [`Storage::produce`] for blocking callers.
    pub fn produce_blocking(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        let (request, placement) = self.produce_request(topic, records)?;
        let outcomes = self.inner.writer.write_blocking(request)?;
        Ok(positions(&outcomes, &placement))
    }

    /// Splits records by partition. `placement[i]` is `(append index, index
    /// within that batch)` of input record `i`.
    fn produce_request(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<(WriteRequest, Vec<(usize, usize)>)> {
        let shared = &self.inner.shared;
        let topic_state = shared.topic(topic)?;
        let partitions = topic_state.partition_count();
        let sticky = topic_state.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1);
        let mut by_partition: Vec<(u32, Vec<Record>)> = Vec::new();
        let mut placement = Vec::with_capacity(records.len());
        for produce in records {
            let partition = match (produce.partition, &produce.record.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => sticky,
            };
            if partition >= partitions {
                return Err(Error::NoSuchPartition {
                    topic: topic.to_string(),
                    partition,
                    partitions,
                });
            }
            let slot = match by_partition.iter().position(|(p, _)| *p == partition) {
                Some(slot) => slot,
                None => {
                    by_partition.push((partition, Vec::new()));
                    by_partition.len() - 1
                }
            };
            placement.push((slot, by_partition[slot].1.len()));
            by_partition[slot].1.push(produce.record);
        }
        let mut appends = Vec::with_capacity(by_partition.len());
        for (partition, records) in &by_partition {
            appends.push(PendingAppend {
                topic: topic_state.clone(),
                partition: *partition,
                batch: shared.encode_rows(&topic_state, records)?,
            });
        }
        if appends.is_empty() {
            return Err(Error::invalid("cannot produce an empty list of records"));
        }
        Ok((
            WriteRequest {
                appends,
                state: Vec::new(),
            },
            placement,
        ))
    }

    /// Writes an [`AtomicWrite`] and resolves when it is durable; returns
    /// one outcome per append, in order.
    pub async fn commit(&self, write: AtomicWrite) -> Result<Vec<AppendOutcome>> {
        let request = self.commit_request(write)?;
        self.inner.writer.write(request).await
    }

    /// [`Storage::commit`] for blocking callers.
    pub fn commit_blocking(&self, write: AtomicWrite) -> Result<Vec<AppendOutcome>> {
        let request = self.commit_request(write)?;
        self.inner.writer.write_blocking(request)
    }

    fn commit_request(&self, write: AtomicWrite) -> Result<WriteRequest> {
        let shared = &self.inner.shared;
        if write.is_empty() {
            return Err(Error::invalid(
                "an atomic write needs at least one append or state change",
            ));
        }
        let mut appends = Vec::with_capacity(write.appends.len());
        for append in write.appends {
            appends.push(match append {
                AtomicAppend::Rows {
                    topic,
                    partition,
                    records,
                } => shared.pending(&topic, partition, |t| shared.encode_rows(t, &records))?,
                AtomicAppend::Columnar {
                    topic,
                    partition,
                    timestamps,
                    columns,
                } => shared.pending(&topic, partition, |t| {
                    shared.encode_columnar(t, &timestamps, columns)
                })?,
            });
        }
        let state = write
            .state
            .into_iter()
            .map(|(space, key, value)| StateOp {
                column_family: space.column_family(),
                key,
                value,
            })
            .collect();
        Ok(WriteRequest { appends, state })
    }
}

fn single(mut outcomes: Vec<AppendOutcome>) -> Result<AppendOutcome> {
    match outcomes.len() {
        1 => outcomes
            .pop()
            .ok_or_else(|| Error::Internal("missing append outcome".into())),
        n => Err(Error::Internal(format!(
            "expected one append outcome, got {n}"
        ))),
    }
}

fn positions(outcomes: &[AppendOutcome], placement: &[(usize, usize)]) -> Vec<RecordPosition> {
    placement
        .iter()
        .map(|(slot, index)| {
            let outcome = &outcomes[*slot];
            RecordPosition {
                partition: outcome.partition,
                offset: outcome.base_offset + *index as u64,
            }
        })
        .collect()
}
