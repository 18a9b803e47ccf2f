//! Reading the log: batches from an offset, long polls for new records, and
//! the offset lookup by timestamp.
//!
//! A read copies each stored batch once out of RocksDB and hands it back
//! whole; records are decoded lazily from those bytes, without allocating.
//! A read that starts inside a batch gets the rest of it. A scan
//! ([`Storage::scan`]) borrows the batches instead, and fetches a columnar
//! batch's columns only when the visitor asks for them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rocksdb::{DBRawIterator, ReadOptions};

use crate::batch::{BatchView, Header, HeaderIter, PayloadKind, RawRow, Record};
use crate::error::{Error, Result};
use crate::keys;
use crate::storage::{
    CF_COLUMNS, CF_LOG, CF_TIME_INDEX, PartitionState, Shared, Storage, TopicState,
};

/// Bounds of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Stop after this many records.
    pub max_records: usize,
    /// Stop after batches of this many bytes; the first batch is returned
    /// whatever its size, so a read always makes progress.
    pub max_bytes: usize,
    /// Read nothing at or past this offset (a snapshot's end offset).
    pub until_offset: Option<u64>,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_records: 10_000,
            max_bytes: 8 * 1024 * 1024,
            until_offset: None,
        }
    }
}

impl ReadLimits {
    /// At most `max_records` records (and the default byte limit).
    pub fn records(max_records: usize) -> Self {
        ReadLimits {
            max_records,
            ..Self::default()
        }
    }

    /// Sets the offset to stop before.
    pub fn until(mut self, offset: u64) -> Self {
        self.until_offset = Some(offset);
        self
    }

    /// Sets the byte limit.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The batches read, in offset order.
    pub batches: Vec<FetchedBatch>,
    /// The offset to read from next.
    pub next_offset: u64,
    /// The partition's log start offset when the read began.
    pub log_start_offset: u64,
    /// The partition's end offset (high watermark) when the read began.
    pub end_offset: u64,
}

impl Fetch {
    /// The number of records read.
    pub fn record_count(&self) -> usize {
        self.batches.iter().map(|b| b.record_count).sum()
    }

    /// Every record read, owned: convenient, but allocates per record.
    pub fn records(&self) -> Result<Vec<OwnedRecord>> {
        let mut out = Vec::with_capacity(self.record_count());
        for batch in &self.batches {
            for record in batch.records()? {
                out.push(record?.to_owned_record());
            }
        }
        Ok(out)
    }
}

/// One stored batch, or the part of it a read asked for.
#[derive(Debug, Clone)]
pub struct FetchedBatch {
    topic: Arc<str>,
    partition: u32,
    base_offset: u64,
    offsets: Range<u64>,
    record_count: usize,
    kind: PayloadKind,
    bytes: Vec<u8>,
    /// A columnar batch's parts (timestamps, then columns); empty for rows.
    parts: Vec<Vec<u8>>,
}

/// A stored batch borrowed from RocksDB during [`Storage::scan`]: the same
/// accessors as [`FetchedBatch`], without the copy.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    topic: &'a Arc<str>,
    partition: u32,
    base_offset: u64,
    start: u64,
    end: u64,
    record_count: usize,
    kind: PayloadKind,
    bytes: &'a [u8],
    parts: Parts<'a>,
}

/// Where a columnar batch's parts are.
#[derive(Clone, Copy)]
enum Parts<'a> {
    /// Copied out with the batch ([`FetchedBatch`]).
    Fetched(&'a [Vec<u8>]),
    /// Still in RocksDB: fetched when asked for (a scan), through an
    /// iterator that sees the database as it was when the first part was
    /// asked for; no snapshot is taken (releasing one makes RocksDB rewrite
    /// fresh bottommost files). A part that retention deleted before then
    /// reads as the offset being out of range, as the scan would have
    /// found it.
    Stored {
        columns: &'a dyn PartSource,
        state: &'a PartitionState,
        topic_id: u32,
    },
}

/// Where a scan's column parts come from ([`ColumnReader`]); a trait
/// object so that [`BatchRef`] keeps one lifetime while the reader's
/// iterator borrows the database for longer.
trait PartSource {
    /// The value stored under `key`, copied out; `None` when there is none.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// Reads column parts of one partition for a scan, through one RocksDB
/// iterator made at the first part asked for. An iterator's value points
/// into the block it read, so a part is copied once, into the caller's
/// buffer; `Get` on a block that is not cached (column reads keep out of
/// the block cache) copies the value out of the block first, then the
/// caller copies it again. The next part of the same batch is the
/// iterator's next key, reached by `next`; other parts by `seek`.
struct ColumnReader<'a> {
    shared: &'a Shared,
    /// The partition's part keys: from `lower` up to, not including, `upper`.
    lower: [u8; 16],
    upper: [u8; 16],
    iter: RefCell<Option<DBRawIterator<'a>>>,
}

impl<'a> ColumnReader<'a> {
    fn new(shared: &'a Shared, topic_id: u32, partition: u32, upper_offset: u64) -> Self {
        ColumnReader {
            shared,
            lower: keys::batch_key(topic_id, partition, 0),
            upper: keys::batch_key(topic_id, partition, upper_offset),
            iter: RefCell::new(None),
        }
    }
}

impl PartSource for ColumnReader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut slot = self.iter.borrow_mut();
        let iter = match &mut *slot {
            Some(iter) => iter,
            empty => {
                let mut options = ReadOptions::default();
                // Large and read once per query: keep them out of the
                // block cache (the OS page cache still holds them).
                options.fill_cache(false);
                options.set_verify_checksums(self.shared.options.verify_checksums);
                options.set_iterate_lower_bound(self.lower.to_vec());
                options.set_iterate_upper_bound(self.upper.to_vec());
                let cf = self.shared.cf(CF_COLUMNS)?;
                empty.insert(self.shared.db.raw_iterator_cf_opt(cf, options))
            }
        };
        // The part after the one the iterator is on (the next column of
        // the same batch) is its next key: step to it, where a seek would
        // search every level of the tree again.
        if iter.valid() && iter.key().is_some_and(|at| follows(at, key)) {
            iter.next();
        } else {
            iter.seek(key);
        }
        if iter.valid() && iter.key() == Some(key) {
            return Ok(iter.value().map(<[u8]>::to_vec));
        }
        iter.status()?;
        Ok(None)
    }
}

/// Whether the column key `next` names the part right after the one `at`
/// names, in the same batch.
fn follows(at: &[u8], next: &[u8]) -> bool {
    match (keys::parse_column_key(at), keys::parse_column_key(next)) {
        (Some((batch, part)), Some((next_batch, next_part))) => {
            batch == next_batch && part.checked_add(1) == Some(next_part)
        }
        _ => false,
    }
}

impl std::fmt::Debug for Parts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parts::Fetched(parts) => f.debug_tuple("Fetched").field(&parts.len()).finish(),
            Parts::Stored { topic_id, .. } => f
                .debug_struct("Stored")
                .field("topic_id", topic_id)
                .finish(),
        }
    }
}

/// Where a [`Storage::scan`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// The offset to read from next.
    pub next_offset: u64,
    /// Records handed to the visitor.
    pub record_count: usize,
    /// Batches handed to the visitor.
    pub batch_count: usize,
}

/// A record with its position, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Its offset.
    pub offset: u64,
    /// The record.
    pub record: Record,
}

/// A record borrowed from a [`FetchedBatch`].
#[derive(Debug, Clone)]
pub struct RecordView<'a> {
    /// Its offset.
    pub offset: u64,
    /// Its timestamp, in ms since the epoch.
    pub timestamp_ms: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: &'a [u8],
    headers: HeaderIter<'a>,
}

impl<'a> RecordView<'a> {
    /// Its headers.
    pub fn headers(&self) -> HeaderIter<'a> {
        self.headers.clone()
    }

    /// Copies it into an [`OwnedRecord`].
    pub fn to_owned_record(&self) -> OwnedRecord {
        OwnedRecord {
            offset: self.offset,
            record: Record {
                key: self.key.map(<[u8]>::to_vec),
                value: self.value.to_vec(),
                timestamp_ms: self.timestamp_ms,
                headers: self
                    .headers()
                    .map(|(name, value)| Header {
                        name: name.to_string(),
                        value: value.to_vec(),
                    })
                    .collect(),
            },
        }
    }
}

/// The rows of a columnar batch that a read asked for, and access to its
/// columns.
#[derive(Debug, Clone, Copy)]
pub struct ColumnarSlice<'a> {
    /// The rows wanted: row `i` has offset `base_offset + i`.
    pub rows: (usize, usize),
    /// The offset of the stored batch's row 0.
    pub base_offset: u64,
    /// The rows the stored batch holds.
    pub stored_rows: usize,
    batch: BatchRef<'a>,
    view: BatchView<'a>,
}

impl<'a> ColumnarSlice<'a> {
    /// How many columns the batch stores.
    pub fn column_count(&self) -> usize {
        self.view.part_lengths().count() - 1
    }

    /// The bytes of column `column` as appended. A scan reads them from
    /// RocksDB now, so a reader pays only for the columns it asks for.
    pub fn column(&self, column: usize) -> Result<Cow<'a, [u8]>> {
        if column >= self.column_count() {
            return Err(self.batch.corrupt(format!(
                "column {column} asked of a batch of {} columns",
                self.column_count()
            )));
        }
        self.part(1 + column)
    }

    /// The timestamp of every row of the stored batch, in row order.
    pub fn timestamps(&self) -> Result<Vec<i64>> {
        let bytes = self.part(0)?;
        if bytes.len() != 8 * self.stored_rows {
            return Err(self.batch.corrupt(format!(
                "{} bytes of timestamps for {} rows",
                bytes.len(),
                self.stored_rows
            )));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|raw| i64::from_le_bytes(raw.try_into().unwrap_or_default()))
            .collect())
    }

    /// An [`Error::Corrupt`] about this batch: for a column whose bytes do
    /// not decode.
    pub fn corrupt(&self, reason: String) -> Error {
        self.batch.corrupt(reason)
    }

    fn part(&self, part: usize) -> Result<Cow<'a, [u8]>> {
        let expected = self.view.part_lengths().nth(part);
        let bytes = match self.batch.parts {
            Parts::Fetched(parts) => parts.get(part).map(|p| Cow::Borrowed(p.as_slice())),
            Parts::Stored {
                columns,
                state,
                topic_id,
            } => {
                let key = keys::column_key(
                    topic_id,
                    self.batch.partition,
                    self.base_offset,
                    part as u16,
                );
                let value = columns.get(&key)?.map(Cow::Owned);
                let log_start_offset = state.log_start_offset.load(Ordering::Acquire);
                if value.is_none() && log_start_offset > self.base_offset {
                    return Err(Error::OffsetOutOfRange {
                        topic: self.batch.topic.to_string(),
                        partition: self.batch.partition,
                        offset: self.base_offset,
                        log_start_offset,
                        end_offset: state.end_offset.load(Ordering::Acquire),
                    });
                }
                value
            }
        };
        match bytes {
            Some(bytes) if Some(bytes.len()) == expected => Ok(bytes),
            Some(bytes) => Err(self.batch.corrupt(format!(
                "part {part} holds {} bytes, the header says {}",
                bytes.len(),
                expected.unwrap_or(0)
            ))),
            None => Err(self.batch.corrupt(format!("part {part} is missing"))),
        }
    }
}

impl FetchedBatch {
    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset of the stored batch's first record.
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// The offsets this read covers (records may be missing from a
    /// compacted range).
    pub fn offsets(&self) -> Range<u64> {
        self.offsets.clone()
    }

    /// How many records this read returns from the batch.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Rows or columnar.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The stored batch's size in bytes.
    pub fn byte_len(&self) -> usize {
        self.as_batch_ref().byte_len()
    }

    /// The batch as a borrowed [`BatchRef`].
    pub fn as_batch_ref(&self) -> BatchRef<'_> {
        BatchRef {
            topic: &self.topic,
            partition: self.partition,
            base_offset: self.base_offset,
            start: self.offsets.start,
            end: self.offsets.end,
            record_count: self.record_count,
            kind: self.kind,
            bytes: &self.bytes,
            parts: Parts::Fetched(&self.parts),
        }
    }

    /// The records of a row batch within [`FetchedBatch::offsets`]; an
    /// error for a columnar batch: use [`FetchedBatch::columnar`].
    pub fn records(&self) -> Result<impl Iterator<Item = Result<RecordView<'_>>> + '_> {
        self.as_batch_ref().records()
    }

    /// For a columnar batch: the rows wanted and its columns.
    pub fn columnar(&self) -> Result<Option<ColumnarSlice<'_>>> {
        self.as_batch_ref().columnar()
    }
}

impl<'a> BatchRef<'a> {
    /// The offsets covered (records may be missing from a compacted range).
    pub fn offsets(&self) -> Range<u64> {
        self.start..self.end
    }

    /// How many records the scan hands over from this batch.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Rows or columnar.
    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    /// The stored batch's size in bytes.
    pub fn byte_len(&self) -> usize {
        BatchView::parse(self.bytes).map_or(self.bytes.len(), |view| view.stored_len())
    }

    /// Copies it into a [`FetchedBatch`], a columnar batch with all its
    /// parts.
    pub fn to_fetched(&self) -> Result<FetchedBatch> {
        let parts = match self.columnar()? {
            Some(slice) => (0..=slice.column_count())
                .map(|part| slice.part(part).map(Cow::into_owned))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(FetchedBatch {
            topic: self.topic.clone(),
            partition: self.partition,
            base_offset: self.base_offset,
            offsets: self.offsets(),
            record_count: self.record_count,
            kind: self.kind,
            bytes: self.bytes.to_vec(),
            parts,
        })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.base_offset,
            reason,
        }
    }

    fn view(&self) -> Result<BatchView<'a>> {
        BatchView::parse(self.bytes).map_err(|reason| self.corrupt(reason))
    }

    /// The records of a row batch within [`BatchRef::offsets`].
    pub fn records(self) -> Result<impl Iterator<Item = Result<RecordView<'a>>> + 'a> {
        let view = self.view()?;
        let rows = view.rows().map_err(|reason| self.corrupt(reason))?;
        let offsets = self.offsets();
        let base = self.base_offset;
        Ok(rows
            .map(move |row| {
                row.map(|row: RawRow<'a>| RecordView {
                    offset: base + u64::from(row.offset_delta),
                    timestamp_ms: row.timestamp_ms,
                    key: row.key,
                    value: row.value,
                    headers: row.headers(),
                })
                .map_err(|reason| self.corrupt(reason))
            })
            .filter(move |record| match record {
                Ok(record) => offsets.contains(&record.offset),
                Err(_) => true,
            }))
    }

    /// For a columnar batch: the rows wanted and its columns.
    pub fn columnar(self) -> Result<Option<ColumnarSlice<'a>>> {
        let view = self.view()?;
        if view.kind != PayloadKind::Columnar {
            return Ok(None);
        }
        Ok(Some(ColumnarSlice {
            rows: (
                (self.start - self.base_offset) as usize,
                (self.end - self.base_offset) as usize,
            ),
            base_offset: self.base_offset,
            stored_rows: view.record_count as usize,
            batch: self,
            view,
        }))
    }
}

impl Storage {
    /// Reads from `offset` of a partition, up to the limits. Blocking.
    ///
    /// Reading at the end offset returns no batches. An offset below the
    /// log start offset or above the end offset is an
    /// [`Error::OffsetOutOfRange`].
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Fetch> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let state = shared.partition(&topic, partition)?;
        read_partition(shared, &topic, partition, &state, offset, limits)
    }

    /// Reads like [`Storage::read`], but hands each batch to `visit` as it
    /// lies in RocksDB's blocks, without copying it: for scans that decode
    /// every record once (bounded queries). Blocking.
    pub fn scan(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        mut visit: impl FnMut(BatchRef<'_>) -> Result<()>,
    ) -> Result<ScanOutcome> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let state = shared.partition(&topic, partition)?;
        let mut outcome = ScanOutcome {
            next_offset: offset,
            record_count: 0,
            batch_count: 0,
        };
        let (next_offset, _, _) =
            visit_partition(shared, &topic, partition, &state, offset, limits, |batch| {
                outcome.record_count += batch.record_count;
                outcome.batch_count += 1;
                visit(batch)
            })?;
        outcome.next_offset = next_offset;
        Ok(outcome)
    }

    /// Reads like [`Storage::read`], off the async runtime; when nothing is
    /// there yet, waits up to `wait` for records to arrive (a long poll).
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        wait: Duration,
    ) -> Result<Fetch> {
        if !wait.is_zero() {
            self.wait_for_records(topic, partition, offset, wait)
                .await?;
        }
        let storage = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || storage.read(&topic, partition, offset, limits))
            .await
            .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }

    /// Waits until the partition's end offset passes `offset` or `timeout`
    /// elapses. Returns the end offset then. Does not poll: appends wake it.
    pub async fn wait_for_records(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let shared = &self.inner.shared;
        let topic = shared.topic(topic)?;
        let state = shared.partition(&topic, partition)?;
        let mut receiver = state.appended.subscribe();
        // A timeout is an answer too: the caller reads the end offset.
        let _ = tokio::time::timeout(timeout, receiver.wait_for(|end| *end > offset)).await;
        Ok(state.end_offset.load(Ordering::Acquire))
    }

    /// The first offset whose record timestamp is `>= timestamp_ms`, like
    /// Kafka's `ListOffsets` by timestamp; `None` when every record is
    /// older. Costs one index seek and a read of the batches from there to
    /// the answer.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<Option<u64>> {
        let shared = &self.inner.shared;
        let topic_state = shared.topic(topic)?;
        let state = shared.partition(&topic_state, partition)?;
        let meta = state.meta();
        let index = shared.cf(CF_TIME_INDEX)?;
        let mut options = ReadOptions::default();
        options
            .set_iterate_upper_bound(keys::partition_key(topic_state.id, partition + 1).to_vec());
        let mut iter = shared.db.raw_iterator_cf_opt(index, options);
        iter.seek(keys::time_index_key(
            topic_state.id,
            partition,
            timestamp_ms,
        ));
        let candidate = if iter.valid() {
            let key = iter.key().unwrap_or_default();
            if !key.starts_with(&keys::partition_key(topic_state.id, partition)) {
                return Ok(None);
            }
            let raw = iter.value().unwrap_or_default();
            let raw: [u8; 8] = raw
                .try_into()
                .map_err(|_| Error::Internal("malformed time index entry".to_string()))?;
            u64::from_le_bytes(raw)
        } else {
            iter.status()?;
            return Ok(None);
        };
        // Every batch before `candidate` holds only older records; the
        // answer is the first record from there (or from the log start, if
        // retention removed `candidate`) that is new enough.
        let mut offset = candidate.max(meta.log_start_offset);
        while offset < meta.end_offset {
            let fetch = read_partition(
                shared,
                &topic_state,
                partition,
                &state,
                offset,
                ReadLimits::default().until(meta.end_offset),
            )?;
            for batch in &fetch.batches {
                if let Some(slice) = batch.columnar()? {
                    let stamps = slice.timestamps()?;
                    let (start, end) = slice.rows;
                    if let Some(row) = (start..end).find(|&row| stamps[row] >= timestamp_ms) {
                        return Ok(Some(slice.base_offset + row as u64));
                    }
                } else {
                    for record in batch.records()? {
                        let record = record?;
                        if record.timestamp_ms >= timestamp_ms {
                            return Ok(Some(record.offset));
                        }
                    }
                }
            }
            if fetch.next_offset <= offset {
                break;
            }
            offset = fetch.next_offset;
        }
        Ok(None)
    }
}

/// Positions `iter` on the batch that holds `offset`, or the first one after.
fn seek_batch(iter: &mut DBRawIterator<'_>, topic_id: u32, partition: u32, offset: u64) {
    iter.seek_for_prev(keys::batch_key(topic_id, partition, offset));
    if !iter.valid() {
        iter.seek(keys::batch_key(topic_id, partition, offset));
    }
}

pub(crate) fn read_partition(
    shared: &Shared,
    topic: &TopicState,
    partition: u32,
    state: &PartitionState,
    offset: u64,
    limits: ReadLimits,
) -> Result<Fetch> {
    let mut batches = Vec::new();
    let (next_offset, log_start_offset, end_offset) =
        visit_partition(shared, topic, partition, state, offset, limits, |batch| {
            batches.push(batch.to_fetched()?);
            Ok(())
        })?;
    Ok(Fetch {
        batches,
        next_offset,
        log_start_offset,
        end_offset,
    })
}

/// The read loop: hands each batch in range to `visit`, borrowed from the
/// iterator. Returns `(next offset, log start offset, end offset)`.
fn visit_partition(
    shared: &Shared,
    topic: &TopicState,
    partition: u32,
    state: &PartitionState,
    offset: u64,
    limits: ReadLimits,
    mut visit: impl FnMut(BatchRef<'_>) -> Result<()>,
) -> Result<(u64, u64, u64)> {
    let meta = state.meta();
    if offset < meta.log_start_offset || offset > meta.end_offset {
        return Err(Error::OffsetOutOfRange {
            topic: topic.name.clone(),
            partition,
            offset,
            log_start_offset: meta.log_start_offset,
            end_offset: meta.end_offset,
        });
    }
    let upper = limits
        .until_offset
        .map_or(meta.end_offset, |u| u.min(meta.end_offset));
    let mut next_offset = offset;
    if offset >= upper || limits.max_records == 0 {
        return Ok((next_offset, meta.log_start_offset, meta.end_offset));
    }
    let mut options = ReadOptions::default();
    options.set_verify_checksums(shared.options.verify_checksums);
    options.set_iterate_lower_bound(keys::batch_key(topic.id, partition, 0).to_vec());
    options.set_iterate_upper_bound(keys::batch_key(topic.id, partition, upper).to_vec());
    let mut iter = shared.db.raw_iterator_cf_opt(shared.cf(CF_LOG)?, options);
    seek_batch(&mut iter, topic.id, partition, offset);
    // Made after the log's iterator, so it sees the parts of every batch
    // that one sees (a batch's header and parts are one write).
    let columns = ColumnReader::new(shared, topic.id, partition, upper);
    let topic_name: Arc<str> = Arc::from(topic.name.as_str());
    let mut records = 0usize;
    let mut bytes = 0usize;
    let mut visited = 0usize;
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let Some((_, _, base_offset)) = keys::parse_batch_key(key) else {
            return Err(Error::Internal("malformed batch key".to_string()));
        };
        let corrupt = |reason: String| Error::Corrupt {
            topic: topic.name.clone(),
            partition,
            offset: base_offset,
            reason,
        };
        let view = BatchView::parse(value).map_err(corrupt)?;
        let batch_end = (base_offset + view.offset_span()).min(upper);
        let start = offset.max(base_offset);
        if batch_end <= start {
            // The batch before `offset` ends before it (a compacted gap).
            iter.next();
            continue;
        }
        let wanted = limits.max_records - records;
        let (end, count) = if view.kind == PayloadKind::Columnar
            || u64::from(view.record_count) == view.offset_span()
        {
            let available = (batch_end - start) as usize;
            let count = available.min(wanted);
            (start + count as u64, count)
        } else {
            // Compacted: count the surviving records in range.
            let mut count = 0usize;
            let mut end = batch_end;
            for row in view.rows().map_err(corrupt)? {
                let row = row.map_err(corrupt)?;
                let row_offset = base_offset + u64::from(row.offset_delta);
                if row_offset < start || row_offset >= batch_end {
                    continue;
                }
                if count == wanted {
                    end = row_offset;
                    break;
                }
                count += 1;
            }
            (end, count)
        };
        visit(BatchRef {
            topic: &topic_name,
            partition,
            base_offset,
            start,
            end,
            record_count: count,
            kind: view.kind,
            bytes: value,
            parts: Parts::Stored {
                columns: &columns,
                state,
                topic_id: topic.id,
            },
        })?;
        visited += 1;
        next_offset = end;
        records += count;
        bytes += view.stored_len();
        if records >= limits.max_records || bytes >= limits.max_bytes || end >= upper {
            break;
        }
        iter.next();
    }
    iter.status()?;
    // Retention may have deleted the head while we read: it raises the log
    // start before deleting, so a read that raced it fails like one that
    // came late, instead of silently skipping to later records.
    let log_start_offset = state.log_start_offset.load(Ordering::Acquire);
    if log_start_offset > offset {
        return Err(Error::OffsetOutOfRange {
            topic: topic.name.clone(),
            partition,
            offset,
            log_start_offset,
            end_offset: meta.end_offset,
        });
    }
    if visited == 0 {
        // Everything from `offset` to `upper` was compacted away.
        next_offset = upper;
    }
    Ok((next_offset, meta.log_start_offset, meta.end_offset))
}

#[cfg(test)]
mod tests {
    use super::follows;
    use crate::keys::column_key;

    #[test]
    fn only_the_next_part_of_the_same_batch_follows() {
        let at = column_key(1, 0, 8192, 2);
        assert!(follows(&at, &column_key(1, 0, 8192, 3)));
        assert!(!follows(&at, &column_key(1, 0, 8192, 4)), "a part skipped");
        assert!(!follows(&at, &column_key(1, 0, 8192, 2)), "the same part");
        assert!(!follows(&at, &column_key(1, 0, 16384, 3)), "another batch");
        assert!(
            !follows(&at, &column_key(1, 1, 8192, 3)),
            "another partition"
        );
        assert!(!follows(
            &column_key(1, 0, 0, u16::MAX),
            &column_key(1, 0, 1, 0)
        ));
        assert!(
            !follows(&at[..16], &column_key(1, 0, 8192, 3)),
            "a batch key"
        );
    }
}
