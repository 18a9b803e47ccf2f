//! Records and the byte layout of a stored batch.
//!
//! One appended batch is one RocksDB log value. Its header says how many records
//! it holds and their time range, so retention and the time index never
//! decode records. Two payloads share the header:
//!
//! - **rows** (Kafka-like): per record an offset delta, a timestamp, an
//!   optional key, a value and headers. The offset delta survives compaction,
//!   which removes records but never renumbers them.
//! - **columnar**: a batch of rows whose row *i* is the record at
//!   `base_offset + i`, stored by column. The log value is only the header
//!   and the byte length of each part; the parts themselves (the rows'
//!   timestamps, then one part per column) are separate values of the
//!   `columns` column family, keyed by the batch key and the part's number,
//!   so a reader fetches only the columns it reads. Storage treats the
//!   column bytes as opaque; the layers above encode them (Arrow IPC).
//!
//! All integers are little-endian and fixed-width: decoding a record is a
//! few bounds checks and slices, with no allocation.

/// A header of a record: a name and a byte value, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// The header's value.
    pub value: Vec<u8>,
}

/// One record: an optional key, a value, a timestamp and headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// The key; keyed records are partitioned by `murmur2(key)`.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// The record's timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

impl Record {
    /// A keyless record with the given value, timestamped now.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record {
            key: None,
            value: value.into(),
            timestamp_ms: now_ms(),
            headers: Vec::new(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The record's size as the record size limit counts it: key, value and
    /// headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const KIND_ROWS: u8 = 1;
/// Columnar batches of development builds before the by-column layout: the
/// whole IPC stream inline. Refused as unreadable, by name.
const KIND_COLUMNAR_INLINE: u8 = 2;
const KIND_COLUMNAR: u8 = 3;
/// kind u8, record_count u32, last_offset_delta u32, max_ts i64, min_ts i64.
pub(crate) const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 8;
const ROW_FIXED_LEN: usize = 4 + 8 + 4 + 4 + 2;

/// A batch encoded for storage, with the facts the writer needs from its
/// header.
#[derive(Debug, Clone)]
pub(crate) struct EncodedBatch {
    /// The log value.
    pub(crate) bytes: Vec<u8>,
    /// Columnar batches: the values stored beside it, part `i` under
    /// [`crate::keys::column_key`]`(.., i)`; empty for rows.
    pub(crate) parts: Vec<Vec<u8>>,
    pub(crate) record_count: u32,
    pub(crate) max_timestamp_ms: i64,
}

impl EncodedBatch {
    /// Encodes rows; offset deltas are `0..records.len()`.
    pub(crate) fn rows(records: &[Record]) -> Self {
        let capacity = HEADER_LEN
            + records
                .iter()
                .map(|r| {
                    ROW_FIXED_LEN
                        + r.key.as_ref().map_or(0, Vec::len)
                        + r.value.len()
                        + r.headers
                            .iter()
                            .map(|h| 6 + h.name.len() + h.value.len())
                            .sum::<usize>()
                })
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(capacity);
        let (min_ts, max_ts) = time_range(records.iter().map(|r| r.timestamp_ms));
        let count = records.len() as u32;
        write_header(
            &mut bytes,
            KIND_ROWS,
            count,
            count.saturating_sub(1),
            max_ts,
            min_ts,
        );
        for (delta, record) in records.iter().enumerate() {
            encode_row(
                &mut bytes,
                delta as u32,
                record.timestamp_ms,
                record.key.as_deref(),
                &record.value,
                record
                    .headers
                    .iter()
                    .map(|h| (h.name.as_str(), h.value.as_slice())),
            );
        }
        debug_assert_eq!(bytes.len(), capacity);
        EncodedBatch {
            bytes,
            parts: Vec::new(),
            record_count: count,
            max_timestamp_ms: max_ts,
        }
    }

    /// Re-encodes the surviving rows of a compacted batch, keeping their
    /// offset deltas and the batch's original last offset delta.
    pub(crate) fn compacted(view: &BatchView<'_>, keep: &[bool]) -> Result<Self, String> {
        let mut bytes = Vec::with_capacity(view.bytes.len());
        write_header(
            &mut bytes,
            KIND_ROWS,
            0,
            view.last_offset_delta,
            i64::MIN,
            i64::MAX,
        );
        let mut count = 0u32;
        let mut stamps = Vec::new();
        for (index, row) in view.rows()?.enumerate() {
            let row = row?;
            if keep.get(index).copied().unwrap_or(true) {
                encode_row(
                    &mut bytes,
                    row.offset_delta,
                    row.timestamp_ms,
                    row.key,
                    row.value,
                    row.headers(),
                );
                stamps.push(row.timestamp_ms);
                count += 1;
            }
        }
        let (min_ts, max_ts) = time_range(stamps.into_iter());
        bytes[1..5].copy_from_slice(&count.to_le_bytes());
        bytes[9..17].copy_from_slice(&max_ts.to_le_bytes());
        bytes[17..25].copy_from_slice(&min_ts.to_le_bytes());
        Ok(EncodedBatch {
            bytes,
            parts: Vec::new(),
            record_count: count,
            max_timestamp_ms: max_ts,
        })
    }

    /// Encodes a columnar batch: part 0 holds one timestamp per row
    /// (8 bytes each), part `1 + i` column `i`'s bytes.
    pub(crate) fn columnar(timestamps: &[i64], columns: Vec<Vec<u8>>) -> Self {
        let count = timestamps.len() as u32;
        let (min_ts, max_ts) = time_range(timestamps.iter().copied());
        let mut parts = Vec::with_capacity(1 + columns.len());
        parts.push(timestamps.iter().flat_map(|t| t.to_le_bytes()).collect());
        parts.extend(columns);
        let mut bytes = Vec::with_capacity(HEADER_LEN + 2 + 4 * parts.len());
        write_header(
            &mut bytes,
            KIND_COLUMNAR,
            count,
            count.saturating_sub(1),
            max_ts,
            min_ts,
        );
        bytes.extend_from_slice(&(parts.len() as u16).to_le_bytes());
        for part in &parts {
            bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        EncodedBatch {
            bytes,
            parts,
            record_count: count,
            max_timestamp_ms: max_ts,
        }
    }

    /// The bytes it stores, log value and parts.
    pub(crate) fn stored_len(&self) -> usize {
        self.bytes.len() + self.parts.iter().map(Vec::len).sum::<usize>()
    }
}

fn time_range(stamps: impl Iterator<Item = i64>) -> (i64, i64) {
    stamps.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)))
}

fn write_header(
    bytes: &mut Vec<u8>,
    kind: u8,
    count: u32,
    last_delta: u32,
    max_ts: i64,
    min_ts: i64,
) {
    bytes.push(kind);
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&last_delta.to_le_bytes());
    bytes.extend_from_slice(&max_ts.to_le_bytes());
    bytes.extend_from_slice(&min_ts.to_le_bytes());
}

fn encode_row<'a>(
    bytes: &mut Vec<u8>,
    offset_delta: u32,
    timestamp_ms: i64,
    key: Option<&[u8]>,
    value: &[u8],
    headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
) {
    bytes.extend_from_slice(&offset_delta.to_le_bytes());
    bytes.extend_from_slice(&timestamp_ms.to_le_bytes());
    match key {
        Some(key) => {
            bytes.extend_from_slice(&(key.len() as i32).to_le_bytes());
            bytes.extend_from_slice(key);
        }
        None => bytes.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    bytes.extend_from_slice(value);
    bytes.extend_from_slice(&(headers.clone().count() as u16).to_le_bytes());
    for (name, value) in headers {
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(value);
    }
}

/// What a stored batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Kafka-like records.
    Rows,
    /// One Arrow IPC record batch.
    Columnar,
}

/// A parsed view of a stored batch's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchView<'a> {
    pub(crate) kind: PayloadKind,
    pub(crate) record_count: u32,
    pub(crate) last_offset_delta: u32,
    pub(crate) max_timestamp_ms: i64,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "batch of {} bytes is shorter than its header",
                bytes.len()
            ));
        }
        let kind = match bytes[0] {
            KIND_ROWS => PayloadKind::Rows,
            KIND_COLUMNAR => PayloadKind::Columnar,
            KIND_COLUMNAR_INLINE => {
                return Err(
                    "a columnar batch in the inline layout of a development build \
                     before the by-column layout; this build cannot read it"
                        .to_string(),
                );
            }
            other => return Err(format!("unknown batch kind {other}")),
        };
        let record_count = read_u32(bytes, 1);
        let last_offset_delta = read_u32(bytes, 5);
        let max_timestamp_ms = read_i64(bytes, 9);
        if kind == PayloadKind::Columnar {
            let parts = bytes
                .get(HEADER_LEN..HEADER_LEN + 2)
                .map(|raw| usize::from(u16::from_le_bytes([raw[0], raw[1]])));
            let complete = parts.is_some_and(|n| n >= 1 && bytes.len() == HEADER_LEN + 2 + 4 * n);
            if !complete || last_offset_delta.checked_add(1) != Some(record_count) {
                return Err("columnar batch header is truncated".to_string());
            }
        }
        Ok(BatchView {
            kind,
            record_count,
            last_offset_delta,
            max_timestamp_ms,
            bytes,
        })
    }

    /// One past the last offset delta: the batch covers
    /// `base..base + offset_span()`.
    pub(crate) fn offset_span(&self) -> u64 {
        u64::from(self.last_offset_delta) + 1
    }

    pub(crate) fn rows(&self) -> Result<RowIter<'a>, String> {
        if self.kind != PayloadKind::Rows {
            return Err("not a row batch".to_string());
        }
        Ok(RowIter {
            bytes: self.bytes,
            position: HEADER_LEN,
            remaining: self.record_count,
        })
    }

    /// For a columnar batch: the byte length of each stored part (part 0
    /// the timestamps, `1 + i` column `i`).
    pub(crate) fn part_lengths(&self) -> impl Iterator<Item = usize> + 'a {
        let bytes = self.bytes;
        let count = match self.kind {
            PayloadKind::Columnar => usize::from(u16::from_le_bytes([
                bytes[HEADER_LEN],
                bytes[HEADER_LEN + 1],
            ])),
            PayloadKind::Rows => 0,
        };
        (0..count).map(move |i| read_u32(bytes, HEADER_LEN + 2 + 4 * i) as usize)
    }

    /// The bytes the batch stores: its log value and, for a columnar
    /// batch, its parts.
    pub(crate) fn stored_len(&self) -> usize {
        self.bytes.len() + self.part_lengths().sum::<usize>()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_le_bytes(raw)
}

/// One row of a stored batch, borrowed from the batch's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRow<'a> {
    pub(crate) offset_delta: u32,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    header_count: u16,
    header_bytes: &'a [u8],
}

impl<'a> RawRow<'a> {
    pub(crate) fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            bytes: self.header_bytes,
            remaining: self.header_count,
        }
    }
}

/// Iterates the rows of a row batch, checking every length against the
/// bytes so that a corrupt value is an error, never a panic.
#[derive(Debug, Clone)]
pub(crate) struct RowIter<'a> {
    bytes: &'a [u8],
    position: usize,
    remaining: u32,
}

impl<'a> RowIter<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "record runs past the end of the batch at byte {}",
                    self.position
                )
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn next_row(&mut self) -> Result<RawRow<'a>, String> {
        let fixed = self.take(4 + 8 + 4)?;
        let offset_delta = read_u32(fixed, 0);
        let timestamp_ms = read_i64(fixed, 4);
        let key_len = read_u32(fixed, 12) as i32;
        let key = if key_len < 0 {
            None
        } else {
            Some(self.take(key_len as usize)?)
        };
        let value_len = read_u32(self.take(4)?, 0) as usize;
        let value = self.take(value_len)?;
        let raw_count = self.take(2)?;
        let header_count = u16::from_le_bytes([raw_count[0], raw_count[1]]);
        let header_start = self.position;
        for _ in 0..header_count {
            let name_len = self.take(2)?;
            let name_len = usize::from(u16::from_le_bytes([name_len[0], name_len[1]]));
            let name = self.take(name_len)?;
            if std::str::from_utf8(name).is_err() {
                return Err("header name is not UTF-8".to_string());
            }
            let value_len = read_u32(self.take(4)?, 0) as usize;
            self.take(value_len)?;
        }
        Ok(RawRow {
            offset_delta,
            timestamp_ms,
            key,
            value,
            header_count,
            header_bytes: &self.bytes[header_start..self.position],
        })
    }
}

impl<'a> Iterator for RowIter<'a> {
    type Item = Result<RawRow<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let row = self.next_row();
        if row.is_err() {
            self.remaining = 0;
        }
        Some(row)
    }
}

/// The headers of a record, borrowed from its batch. Lengths were checked
/// when the row was read.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let name_len = usize::from(u16::from_le_bytes([self.bytes[0], self.bytes[1]]));
        let name = std::str::from_utf8(&self.bytes[2..2 + name_len]).unwrap_or_default();
        let at = 2 + name_len;
        let value_len = read_u32(self.bytes, at) as usize;
        let value = &self.bytes[at + 4..at + 4 + value_len];
        self.bytes = &self.bytes[at + 4 + value_len..];
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::new("v0").with_timestamp(10),
            Record::new(Vec::new()).with_key("k").with_timestamp(-3),
            Record::new("v2")
                .with_key(Vec::new())
                .with_timestamp(7)
                .with_header("h1", "x")
                .with_header("", Vec::new()),
        ]
    }

    #[test]
    fn rows_round_trip() {
        let records = sample();
        let encoded = EncodedBatch::rows(&records);
        assert_eq!(encoded.record_count, 3);
        assert_eq!(encoded.max_timestamp_ms, 10);
        let view = BatchView::parse(&encoded.bytes).unwrap();
        assert_eq!(view.offset_span(), 3);
        let decoded: Vec<Record> = view
            .rows()
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                Record {
                    key: row.key.map(<[u8]>::to_vec),
                    value: row.value.to_vec(),
                    timestamp_ms: row.timestamp_ms,
                    headers: row
                        .headers()
                        .map(|(n, v)| Header {
                            name: n.to_string(),
                            value: v.to_vec(),
                        })
                        .collect(),
                }
            })
            .collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn compaction_keeps_offset_deltas_and_span() {
        let encoded = EncodedBatch::rows(&sample());
        let view = BatchView::parse(&encoded.bytes).unwrap();
        let compacted = EncodedBatch::compacted(&view, &[false, true, false]).unwrap();
        let view = BatchView::parse(&compacted.bytes).unwrap();
        assert_eq!(view.record_count, 1);
        assert_eq!(view.offset_span(), 3);
        let rows: Vec<_> = view.rows().unwrap().map(Result::unwrap).collect();
        assert_eq!(rows[0].offset_delta, 1);
        assert_eq!(compacted.max_timestamp_ms, -3);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let encoded = EncodedBatch::rows(&sample());
        for len in 0..encoded.bytes.len() {
            let truncated = &encoded.bytes[..len];
            let outcome = BatchView::parse(truncated)
                .and_then(|view| view.rows()?.collect::<Result<Vec<_>, _>>().map(|_| ()));
            assert!(outcome.is_err(), "truncated to {len} bytes decoded fine");
        }
    }

    #[test]
    fn columnar_headers_list_their_parts() {
        let encoded = EncodedBatch::columnar(&[5, 9], vec![b"a".to_vec(), b"bcd".to_vec()]);
        assert_eq!(encoded.parts.len(), 3);
        assert_eq!(
            encoded.parts[0],
            [5i64.to_le_bytes(), 9i64.to_le_bytes()].concat()
        );
        let view = BatchView::parse(&encoded.bytes).unwrap();
        assert_eq!(view.kind, PayloadKind::Columnar);
        assert_eq!(view.part_lengths().collect::<Vec<_>>(), [16, 1, 3]);
        assert_eq!(view.stored_len(), encoded.stored_len());
        for len in 0..encoded.bytes.len() {
            assert!(BatchView::parse(&encoded.bytes[..len]).is_err());
        }
        let mut inline = encoded.bytes.clone();
        inline[0] = KIND_COLUMNAR_INLINE;
        let refused = BatchView::parse(&inline).unwrap_err();
        assert!(refused.contains("inline layout"), "{refused}");
    }
}
