//! Columnar streams (`format = 'arrow'`): rows are decoded once, when they
//! are written, and stored by column: each column of a stored log batch
//! (row `i` has offset `base + i`) is one Arrow IPC stream of a one-column
//! record batch, a RocksDB value of its own. Queries fetch only the columns
//! they read and decode nothing per row: each column's bytes are copied
//! once out of RocksDB into a buffer the arrays point into. Readers that
//! want records (the HTTP API, `sluice consume`) get each row as a JSON
//! object.
//!
//! Writers: [`SqlContext::send_batch`] (the library's `send_batch`),
//! `INSERT`, and [`SqlContext::produce`] for JSON values produced to the
//! topic of a columnar stream (over HTTP, or `Producer::send`).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::reader::StreamDecoder;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::json::LineDelimitedWriter;
use sluice_storage::partitioner::partition_for_key;
use sluice_storage::{AtomicWrite, ColumnarSlice, ProduceRecord, RecordPosition};

use crate::catalog::{Compression, Format, StreamDef, not_found};
use crate::context::SqlContext;
use crate::decode::ValueDecoder;
use crate::error::{Error, Result};
use crate::insert::{conform, target_columns};

/// The most rows one stored batch holds: a bigger input is split, so that
/// one RocksDB value stays a few megabytes.
pub const MAX_BATCH_ROWS: usize = 64 * 1024;

/// Rows appended to one partition: offsets `offsets` (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedRange {
    /// The partition written.
    pub partition: u32,
    /// The offsets the rows got.
    pub offsets: Range<u64>,
}

/// One stored batch to write.
struct Part {
    partition: u32,
    /// Row indexes of the input, in order.
    rows: Vec<u32>,
}

impl SqlContext {
    /// Appends `batch` to the columnar stream bound to the topic `name`
    /// (or the columnar stream called `name`): its columns are matched to the
    /// stream's by name and cast to their types (columns it lacks are NULL;
    /// a NOT NULL one missing or NULL is an error). Rows are partitioned by
    /// the stream's key column, else all go to one partition picked
    /// round-robin; every row gets the current time as its timestamp. All
    /// of it is durable, atomically, when this returns.
    pub async fn send_batch(&self, name: &str, batch: &RecordBatch) -> Result<Vec<AppendedRange>> {
        let def = self.columnar_stream(name)?;
        self.send_batch_to(&def, batch).await
    }

    /// [`SqlContext::send_batch`] to the columnar stream `def`.
    pub(crate) async fn send_batch_to(
        &self,
        def: &StreamDef,
        batch: &RecordBatch,
    ) -> Result<Vec<AppendedRange>> {
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let targets = target_columns(def, &names)?;
        let rows = conform(def, &targets, std::slice::from_ref(batch))?;
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let partitions = self.storage().partition_count(&def.topic)?;
        let fallback = self.storage().next_partition(&def.topic)?;
        let placement = placement(def, &rows, partitions, fallback)?;
        let timestamps = vec![sluice_storage::now_ms(); rows.num_rows()];
        let (parts, outcomes) = self
            .append_parts(def, &rows, &placement, &timestamps)
            .await?;
        Ok(parts
            .iter()
            .zip(outcomes)
            .map(|(part, base)| AppendedRange {
                partition: part.partition,
                offsets: base..base + part.rows.len() as u64,
            })
            .collect())
    }

    /// Produces records to `topic`. For the topic of a columnar stream the
    /// values are JSON objects, decoded here, once, into the stream's
    /// columns: a value that does not decode fails the whole call, naming
    /// it, and nothing is written. A record's key picks its partition (as
    /// Kafka's) but is not stored: a columnar stream's `_key` is its key
    /// column. Records with headers are refused there (columnar batches
    /// have no place for them). Other topics store the records as they are.
    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        let Some(def) = self.catalog().columnar_stream_for_topic(topic) else {
            return Ok(self.storage().produce(topic, records).await?);
        };
        if records.is_empty() {
            return Err(Error::invalid("cannot produce an empty list of records"));
        }
        if let Some(at) = records.iter().position(|r| !r.record.headers.is_empty()) {
            return Err(Error::invalid(format!(
                "record {}: topic \"{topic}\" holds the columnar stream {}, which stores no \
                 headers",
                at + 1,
                def.name
            )));
        }
        // Decoding is CPU work: off the async runtime, as encoding is.
        let decoding = def.clone();
        let (records, rows) = blocking(move || {
            let values: Vec<&[u8]> = records.iter().map(|r| r.record.value.as_slice()).collect();
            let decoded = decode_json(&decoding, &values)?;
            let rows = conform(
                &decoding,
                &column_names(&decoding),
                std::slice::from_ref(&decoded),
            )?;
            Ok((records, rows))
        })
        .await?;
        let partitions = self.storage().partition_count(topic)?;
        let sticky = self.storage().next_partition(topic)?;
        let mut placement = Vec::with_capacity(records.len());
        for record in &records {
            let partition = match (record.partition, &record.record.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => partition_for_key(key, partitions),
                (None, None) => sticky,
            };
            if partition >= partitions {
                return Err(Error::Storage(sluice_storage::Error::NoSuchPartition {
                    topic: topic.to_string(),
                    partition,
                    partitions,
                }));
            }
            placement.push(partition);
        }
        let timestamps: Vec<i64> = records.iter().map(|r| r.record.timestamp_ms).collect();
        let (parts, bases) = self
            .append_parts(&def, &rows, &placement, &timestamps)
            .await?;
        let mut positions = vec![
            RecordPosition {
                partition: 0,
                offset: 0
            };
            records.len()
        ];
        for (part, base) in parts.iter().zip(bases) {
            for (n, row) in part.rows.iter().enumerate() {
                positions[*row as usize] = RecordPosition {
                    partition: part.partition,
                    offset: base + n as u64,
                };
            }
        }
        Ok(positions)
    }

    /// The columnar stream bound to the topic `name`, or called `name`.
    pub(crate) fn columnar_stream(&self, name: &str) -> Result<Arc<StreamDef>> {
        if let Some(def) = self.catalog().columnar_stream_for_topic(name) {
            return Ok(def);
        }
        if let Some(def) = self.catalog().stream(name) {
            if def.format != Format::Arrow {
                return Err(Error::invalid(format!(
                    "stream {} has format '{}': send_batch writes columnar streams (format = \
                     'arrow'); send its records as values",
                    def.name,
                    def.format.as_str()
                )));
            }
            return Ok(def);
        }
        if self.storage().topic_exists(name) {
            return Err(Error::invalid(format!(
                "topic \"{name}\" has no columnar stream (format = 'arrow'): send_batch needs \
                 one to know the columns"
            )));
        }
        let names: Vec<String> = self
            .catalog()
            .streams()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        Err(not_found("stream", name, &names))
    }

    /// Writes `rows` (the stream's value columns) as columnar batches,
    /// `placement[i]` the partition of row `i`, in one atomic write. The
    /// parts written and the base offset each got. The encoding (IPC per
    /// column, compression) runs on a blocking thread, off the caller's
    /// async runtime.
    async fn append_parts(
        &self,
        def: &StreamDef,
        rows: &RecordBatch,
        placement: &[u32],
        timestamps: &[i64],
    ) -> Result<(Vec<Part>, Vec<u64>)> {
        let (def, rows) = (def.clone(), rows.clone());
        let (placement, timestamps) = (placement.to_vec(), timestamps.to_vec());
        let (parts, write) = blocking(move || {
            let parts = split(&placement);
            let mut write = AtomicWrite::new();
            for part in &parts {
                let columns = encode_part(&def, &rows, part)?;
                let times = part.rows.iter().map(|&r| timestamps[r as usize]).collect();
                write.append_columnar(def.topic.clone(), part.partition, times, columns);
            }
            Ok((parts, write))
        })
        .await?;
        let outcomes = self.storage().commit(write).await?;
        Ok((parts, outcomes.into_iter().map(|o| o.base_offset).collect()))
    }
}

/// Runs CPU-bound work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("a blocking task failed: {e}")))?
}

/// A stored batch to append: its partition, row count and column bytes.
pub type ColumnarBatch = (u32, usize, Vec<Vec<u8>>);

/// Rows of a columnar stream (its value columns, as
/// [`crate::SinkRows::Columnar`] gives them) cut into stored batches
/// to append. Rows go by the stream's key
/// column, else all to `fallback`.
pub fn columnar_batches(
    def: &StreamDef,
    rows: &RecordBatch,
    partitions: u32,
    fallback: u32,
) -> Result<Vec<ColumnarBatch>> {
    split(&placement(def, rows, partitions, fallback)?)
        .iter()
        .map(|part| {
            Ok((
                part.partition,
                part.rows.len(),
                encode_part(def, rows, part)?,
            ))
        })
        .collect()
}

fn encode_part(def: &StreamDef, rows: &RecordBatch, part: &Part) -> Result<Vec<Vec<u8>>> {
    let picked = if part.rows.len() == rows.num_rows() {
        rows.clone()
    } else if part.rows.windows(2).all(|w| w[1] == w[0] + 1) {
        rows.slice(part.rows[0] as usize, part.rows.len())
    } else {
        take_record_batch(rows, &UInt32Array::from(part.rows.clone()))
            .map_err(|e| Error::Internal(format!("cannot split rows: {e}")))?
    };
    encode_columns(&picked, def.compression)
}

/// Row indexes grouped by partition (in order of first appearance, rows in
/// input order), each group cut into batches of at most [`MAX_BATCH_ROWS`].
fn split(placement: &[u32]) -> Vec<Part> {
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for (row, &partition) in placement.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, rows)) => rows.push(row as u32),
            None => groups.push((partition, vec![row as u32])),
        }
    }
    groups
        .into_iter()
        .flat_map(|(partition, rows)| {
            rows.chunks(MAX_BATCH_ROWS)
                .map(|chunk| Part {
                    partition,
                    rows: chunk.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The partition of each row: by the stream's key column (its value as
/// text, hashed as Kafka hashes keys), else — no key column, or a NULL
/// key, as a keyless record — `fallback`.
fn placement(
    def: &StreamDef,
    rows: &RecordBatch,
    partitions: u32,
    fallback: u32,
) -> Result<Vec<u32>> {
    let Some(keys) = key_strings(def, rows)? else {
        return Ok(vec![fallback; rows.num_rows()]);
    };
    let keys = keys.as_string::<i32>();
    Ok((0..keys.len())
        .map(|i| {
            if keys.is_valid(i) {
                partition_for_key(keys.value(i).as_bytes(), partitions)
            } else {
                fallback
            }
        })
        .collect())
}

/// The key column of `rows` as text (how `INSERT` makes record keys).
pub(crate) fn key_strings(def: &StreamDef, rows: &RecordBatch) -> Result<Option<ArrayRef>> {
    let Some(key) = &def.key_column else {
        return Ok(None);
    };
    let index = rows
        .schema()
        .index_of(key)
        .map_err(|e| Error::Internal(format!("key column: {e}")))?;
    cast_with_options(rows.column(index), &DataType::Utf8, &CastOptions::default())
        .map(Some)
        .map_err(|e| Error::invalid(format!("key column {key}: {e}")))
}

fn column_names(def: &StreamDef) -> Vec<String> {
    def.value_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// JSON values decoded into all of `def`'s value columns; the first bad
/// values are named in the error.
fn decode_json(def: &StreamDef, values: &[&[u8]]) -> Result<RecordBatch> {
    let all: Vec<usize> = (0..def.value_schema.fields().len()).collect();
    let mut decoder = ValueDecoder::new(def, all)?;
    let decoded = decoder.decode(values)?;
    if decoded.bad.is_empty() {
        return Ok(decoded.batch);
    }
    let shown: Vec<String> = decoded
        .bad
        .iter()
        .take(3)
        .map(|(index, message)| format!("record {}: {message}", index + 1))
        .collect();
    let more = decoded.bad.len().saturating_sub(shown.len());
    Err(Error::invalid(format!(
        "{} of {} records do not fit the columnar stream {} and nothing was written: {}{}",
        decoded.bad.len(),
        values.len(),
        def.name,
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )))
}

/// Each column of `batch` as the bytes of one Arrow IPC stream (its field
/// and a one-column record batch), with the stream's IPC compression.
pub(crate) fn encode_columns(
    batch: &RecordBatch,
    compression: Compression,
) -> Result<Vec<Vec<u8>>> {
    let codec = match compression {
        Compression::None => None,
        Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
        Compression::Zstd => Some(CompressionType::ZSTD),
    };
    let schema = batch.schema();
    let encode = |field: &Arc<Field>, column: &ArrayRef| {
        let one = RecordBatch::try_new(
            Arc::new(Schema::new(vec![field.clone()])),
            vec![column.clone()],
        )?;
        let options = IpcWriteOptions::default().try_with_compression(codec)?;
        let mut writer = StreamWriter::try_new_with_options(Vec::new(), &one.schema(), options)?;
        writer.write(&one)?;
        writer.finish()?;
        writer.into_inner()
    };
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            encode(field, column)
                .map_err(|e| Error::Internal(format!("cannot encode an Arrow IPC batch: {e}")))
        })
        .collect()
}

/// Columns `columns` of the stream's value schema read from a stored
/// columnar batch, every row of it, each checked against the stream's
/// definition. Only those columns are read from storage.
pub fn read_columns(
    def: &StreamDef,
    slice: &ColumnarSlice<'_>,
    columns: &[usize],
) -> sluice_storage::Result<Vec<ArrayRef>> {
    columns
        .iter()
        .map(|&index| {
            let (field, array) = stored_column(slice, index)?;
            let expected = def.value_schema.field(index);
            if field.name() != expected.name() || field.data_type() != expected.data_type() {
                return Err(slice.corrupt(format!(
                    "the stored batch has column {} {} where stream {} has {} {}",
                    field.name(),
                    field.data_type(),
                    def.name,
                    expected.name(),
                    expected.data_type()
                )));
            }
            Ok(array)
        })
        .collect()
}

/// Column `index` of a stored columnar batch, read and decoded: its field
/// and its array; a column that does not decode is a corrupt batch.
fn stored_column(
    slice: &ColumnarSlice<'_>,
    index: usize,
) -> sluice_storage::Result<(Arc<Field>, ArrayRef)> {
    decode_column(slice.column(index)?, slice.stored_rows)
        .map_err(|reason| slice.corrupt(format!("column {index}: {reason}")))
}

/// One column's IPC stream: its field and its array of `rows` rows. The
/// array points into the bytes (taken over when owned, copied once when
/// borrowed); arrow realigns a buffer only if it must.
fn decode_column(
    bytes: Cow<'_, [u8]>,
    rows: usize,
) -> std::result::Result<(Arc<Field>, ArrayRef), String> {
    let unreadable = |e: datafusion::arrow::error::ArrowError| format!("unreadable Arrow IPC: {e}");
    let mut buffer = Buffer::from_vec(bytes.into_owned());
    let mut decoder = StreamDecoder::new();
    let mut batch = None;
    while !buffer.is_empty() && batch.is_none() {
        batch = decoder.decode(&mut buffer).map_err(unreadable)?;
    }
    let batch = batch.ok_or("the Arrow IPC value holds no record batch")?;
    if batch.num_columns() != 1 || batch.num_rows() != rows {
        return Err(format!(
            "the Arrow IPC batch has {} columns and {} rows, the log says 1 and {rows}",
            batch.num_columns(),
            batch.num_rows()
        ));
    }
    Ok((
        batch.schema().field(0).clone().into(),
        batch.column(0).clone(),
    ))
}

/// Each row of `batch` as one JSON object (arrow's JSON writer; NULLs
/// left out).
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let mut buffer = Vec::new();
    {
        let mut writer = LineDelimitedWriter::new(&mut buffer);
        writer
            .write(batch)
            .and_then(|()| writer.finish())
            .map_err(|e| Error::invalid(format!("cannot encode as JSON: {e}")))?;
    }
    // JSON escapes newlines inside strings, so lines are rows.
    let rows: Vec<Vec<u8>> = buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if rows.len() != batch.num_rows() {
        return Err(Error::Internal(format!(
            "encoded {} JSON rows for {} rows",
            rows.len(),
            batch.num_rows()
        )));
    }
    Ok(rows)
}

/// The rows a read asked for of a stored columnar batch, as JSON
/// objects, for readers that want records. Each column's IPC stream says
/// what it is, so no stream definition is needed.
pub fn columnar_json_rows(slice: &ColumnarSlice<'_>) -> sluice_storage::Result<Vec<Vec<u8>>> {
    let mut fields = Vec::with_capacity(slice.column_count());
    let mut arrays = Vec::with_capacity(slice.column_count());
    for index in 0..slice.column_count() {
        let (field, array) = stored_column(slice, index)?;
        fields.push(field);
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| slice.corrupt(format!("columns do not form a batch: {e}")))?;
    let (start, end) = slice.rows;
    json_rows(&batch.slice(start, end - start)).map_err(|e| slice.corrupt(e.to_string()))
}
