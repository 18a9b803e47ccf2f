//! Decoding record values into Arrow batches with arrow's own decoders
//! (`arrow-json`, `arrow-csv`), a chunk of records at a time.
//!
//! The fast path feeds a whole chunk to one decoder. Only when that fails
//! does the chunk go through the slow path, one record at a time, to find
//! which records are bad: the good ones are kept and the bad ones returned
//! with their error, so a bad record never takes its neighbours down with it.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, RecordBatch, RecordBatchOptions, StringArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::csv;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json;

use crate::catalog::{Format, StreamDef};
use crate::error::{Error, Result};
use crate::fastjson::ProjectedJson;

/// Rows the reused JSON decoder takes per chunk; bigger chunks get a
/// decoder of their own.
const FAST_PATH_ROWS: usize = 16 * 1024;

/// Chunks of good values that the projecting decoder may leave to
/// arrow-json before it is no longer tried.
const MAX_PROJECTED_MISSES: u32 = 3;

/// The rows decoded from a chunk of values, and the values that failed.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// One row per good value, in order.
    pub batch: RecordBatch,
    /// `(index in the chunk, error text)` of each bad value, ascending.
    pub bad: Vec<(usize, String)>,
}

/// Decodes values of one stream into its projected value columns.
pub(crate) struct ValueDecoder {
    /// The fast path's JSON decoder, kept across chunks so its buffers are
    /// allocated once; dropped after an error (its state is then unknown).
    json: Option<json::reader::Decoder>,
    /// The projecting decoder fed values ahead of arrow-json, while the
    /// stream's values stay inside what it handles.
    projected: Option<ProjectedJson>,
    /// The last fed chunk left the projecting decoder's path.
    projected_missed: bool,
    /// Chunks it left that arrow-json then decoded whole: after a few, the
    /// values are not its kind and it is no longer tried.
    projected_misses: u32,
    format: Format,
    /// The stream's value columns (all of them, for CSV's positions).
    full_schema: SchemaRef,
    /// The columns wanted, as indexes into `full_schema`.
    projection: Vec<usize>,
    /// The schema of the decoded batches.
    schema: SchemaRef,
}

/// JSON values fed one at a time straight from the log (no copy), decoded
/// together at [`ValueDecoder::finish_feed`]. Any value that is not exactly
/// one JSON value marks the feed failed; the caller then re-reads the
/// chunk and takes the record-by-record path.
pub(crate) struct JsonFeed {
    decoder: Option<json::reader::Decoder>,
    projected: Option<ProjectedJson>,
    rows: usize,
    failed: bool,
}

impl JsonFeed {
    /// Feeds one value.
    pub(crate) fn push(&mut self, value: &[u8]) {
        if self.failed {
            return;
        }
        if let Some(projected) = &mut self.projected {
            if projected.push(value) {
                self.rows += 1;
            } else {
                self.failed = true;
            }
            return;
        }
        let Some(decoder) = &mut self.decoder else {
            self.failed = true;
            return;
        };
        let before = decoder.len();
        match decoder.decode(value) {
            Ok(read)
                if read == value.len()
                    && !decoder.has_partial_record()
                    && decoder.len() == before + 1 =>
            {
                self.rows += 1;
            }
            _ => self.failed = true,
        }
    }
}

impl std::fmt::Debug for ValueDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueDecoder")
            .field("format", &self.format)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ValueDecoder {
    /// A decoder of `def`'s values into the value columns at `projection`.
    pub(crate) fn new(def: &StreamDef, projection: Vec<usize>) -> Result<Self> {
        let full_schema = def.value_schema.clone();
        let schema = Arc::new(
            full_schema
                .project(&projection)
                .map_err(|e| Error::Internal(format!("bad projection: {e}")))?,
        );
        // Values written to a columnar stream's topic are JSON; they are
        // decoded once, on write.
        let format = match def.format {
            Format::Arrow => Format::Json,
            other => other,
        };
        let projected = match format {
            Format::Json => ProjectedJson::try_new(&schema),
            _ => None,
        };
        Ok(ValueDecoder {
            json: None,
            projected,
            projected_missed: false,
            projected_misses: 0,
            format,
            full_schema,
            projection,
            schema,
        })
    }

    /// True when values can be fed one at a time ([`ValueDecoder::json_feed`]).
    pub(crate) fn can_feed(&self) -> bool {
        self.format == Format::Json
    }

    /// Starts feeding a chunk of JSON values.
    pub(crate) fn json_feed(&mut self) -> JsonFeed {
        if let Some(projected) = self.projected.take() {
            return JsonFeed {
                decoder: None,
                projected: Some(projected),
                rows: 0,
                failed: false,
            };
        }
        let decoder = match self.json.take() {
            Some(decoder) => Some(decoder),
            None => self.json_decoder(FAST_PATH_ROWS).ok(),
        };
        JsonFeed {
            decoder,
            projected: None,
            rows: 0,
            failed: false,
        }
    }

    /// The rows of a fed chunk; `None` if any value was bad (or the chunk
    /// outgrew the decoder), for the caller to take the slow path.
    pub(crate) fn finish_feed(&mut self, feed: JsonFeed) -> Option<RecordBatch> {
        if let Some(mut projected) = feed.projected {
            let batch = if feed.failed {
                projected.reset();
                self.projected_missed = true;
                None
            } else {
                projected.finish()
            };
            self.projected = Some(projected);
            return batch;
        }
        if feed.failed || feed.rows >= FAST_PATH_ROWS {
            return None;
        }
        let mut decoder = feed.decoder?;
        let batch = match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == feed.rows => batch,
            Ok(None) if feed.rows == 0 => RecordBatch::new_empty(self.schema.clone()),
            _ => return None,
        };
        self.json = Some(decoder);
        if self.schema.fields().is_empty() {
            return empty_columns(&self.schema, feed.rows).ok();
        }
        Some(batch)
    }

    /// Decodes a chunk of values.
    pub(crate) fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        if values.is_empty() {
            return Ok(Decoded {
                batch: RecordBatch::new_empty(self.schema.clone()),
                bad: Vec::new(),
            });
        }
        let missed = std::mem::take(&mut self.projected_missed);
        if let Some(batch) = self.decode_all(values) {
            if missed {
                // Good values the projecting decoder would not take.
                self.projected_misses += 1;
                if self.projected_misses >= MAX_PROJECTED_MISSES {
                    self.projected = None;
                }
            }
            return Ok(Decoded {
                batch,
                bad: Vec::new(),
            });
        }
        let mut good = Vec::with_capacity(values.len());
        let mut bad = Vec::new();
        for (index, value) in values.iter().enumerate() {
            match self.decode_one(value) {
                Ok(batch) => good.push(batch),
                Err(message) => bad.push((index, message)),
            }
        }
        let batch = if self.schema.fields().is_empty() {
            empty_columns(&self.schema, good.len())?
        } else {
            concat_batches(&self.schema, &good)
                .map_err(|e| Error::Internal(format!("cannot join decoded rows: {e}")))?
        };
        Ok(Decoded { batch, bad })
    }

    /// The fast path: the whole chunk at once, `None` if any value is bad.
    fn decode_all(&mut self, values: &[&[u8]]) -> Option<RecordBatch> {
        let batch = match self.format {
            Format::Json if values.len() >= FAST_PATH_ROWS => self.decode_json(values).ok()?,
            Format::Json => {
                let mut decoder = match self.json.take() {
                    Some(decoder) => decoder,
                    None => self.json_decoder(FAST_PATH_ROWS).ok()?,
                };
                // On error the decoder is dropped with its unknown state.
                let batch = Self::feed_json(&mut decoder, &self.schema, values).ok()?;
                self.json = Some(decoder);
                batch
            }
            Format::Csv => self.decode_csv(values).ok()?,
            Format::Raw => self.decode_raw(values).ok()?,
            Format::Arrow => return None,
        };
        (batch.num_rows() == values.len()).then_some(batch)
    }

    /// The slow path: one value, with the reason it is bad.
    fn decode_one(&self, value: &[u8]) -> std::result::Result<RecordBatch, String> {
        let batch = match self.format {
            Format::Json => self.decode_json(&[value]),
            Format::Csv => self.decode_csv(&[value]),
            Format::Raw => self.decode_raw(&[value]),
            Format::Arrow => Err(ArrowError::InvalidArgumentError(
                "columnar values are not decoded one by one".to_string(),
            )),
        }
        .map_err(|e| describe(self.format, e))?;
        match batch.num_rows() {
            1 => Ok(batch),
            0 => Err(format!("{}: the value is empty", self.format.as_str())),
            n => Err(format!(
                "{}: the value holds {n} records, expected one",
                self.format.as_str()
            )),
        }
    }

    fn json_decoder(&self, rows: usize) -> std::result::Result<json::reader::Decoder, ArrowError> {
        json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows)
            .build_decoder()
    }

    fn decode_json(&self, values: &[&[u8]]) -> std::result::Result<RecordBatch, ArrowError> {
        let mut decoder = self.json_decoder(values.len() + 1)?;
        Self::feed_json(&mut decoder, &self.schema, values)
    }

    /// Feeds each value to `decoder`, checking that each is exactly one
    /// JSON value, and flushes.
    fn feed_json(
        decoder: &mut json::reader::Decoder,
        schema: &SchemaRef,
        values: &[&[u8]],
    ) -> std::result::Result<RecordBatch, ArrowError> {
        for value in values {
            let before = decoder.len();
            let read = decoder.decode(value)?;
            // Each value must be exactly one JSON value: anything else would
            // shift rows against their offsets.
            if read != value.len() || decoder.has_partial_record() || decoder.len() != before + 1 {
                return Err(ArrowError::JsonError(match decoder.len() - before {
                    0 => "the value is not a complete JSON object".to_string(),
                    n => format!("the value holds {n} JSON values, expected one"),
                }));
            }
        }
        match decoder.flush()? {
            Some(batch) if schema.fields().is_empty() => empty_columns(schema, batch.num_rows())
                .map_err(|e| ArrowError::JsonError(e.to_string())),
            Some(batch) => Ok(batch),
            None => Ok(RecordBatch::new_empty(schema.clone())),
        }
    }

    fn decode_csv(&self, values: &[&[u8]]) -> std::result::Result<RecordBatch, ArrowError> {
        let mut decoder = csv::ReaderBuilder::new(self.full_schema.clone())
            .with_header(false)
            .with_projection(self.projection.clone())
            .with_batch_size(values.len() + 1)
            .build_decoder();
        let mut buffer = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum());
        for value in values {
            buffer.extend_from_slice(value);
            if !value.ends_with(b"\n") {
                buffer.push(b'\n');
            }
        }
        let mut rest = buffer.as_slice();
        while !rest.is_empty() {
            let read = decoder.decode(rest)?;
            if read == 0 {
                break;
            }
            rest = &rest[read..];
        }
        // Flush with an empty input so the last line is terminated.
        decoder.decode(&[])?;
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        if self.schema.fields().is_empty() {
            return empty_columns(&self.schema, batch.num_rows())
                .map_err(|e| ArrowError::CsvError(e.to_string()));
        }
        Ok(batch)
    }

    fn decode_raw(&self, values: &[&[u8]]) -> std::result::Result<RecordBatch, ArrowError> {
        let Some(field) = self.schema.fields().first() else {
            return empty_columns(&self.schema, values.len())
                .map_err(|e| ArrowError::InvalidArgumentError(e.to_string()));
        };
        let column: ArrayRef = match field.data_type() {
            DataType::Utf8 => {
                let strings = values
                    .iter()
                    .map(|v| std::str::from_utf8(v).map(Some))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ArrowError::InvalidArgumentError(format!("the value is not UTF-8: {e}"))
                    })?;
                Arc::new(StringArray::from(strings))
            }
            _ => Arc::new(BinaryArray::from_iter_values(values.iter())),
        };
        RecordBatch::try_new(self.schema.clone(), vec![column])
    }
}

/// A batch without columns that still counts its rows.
fn empty_columns(schema: &SchemaRef, rows: usize) -> Result<RecordBatch> {
    RecordBatch::try_new_with_options(
        schema.clone(),
        Vec::new(),
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::Internal(format!("cannot build an empty batch: {e}")))
}

/// An arrow error as the one line a user reads.
fn describe(format: Format, error: ArrowError) -> String {
    let text = match error {
        ArrowError::JsonError(m)
        | ArrowError::CsvError(m)
        | ArrowError::ParseError(m)
        | ArrowError::InvalidArgumentError(m)
        | ArrowError::CastError(m) => m,
        other => other.to_string(),
    };
    format!("invalid {} value: {text}", format.as_str())
}
