//! The catalog of streams: what a stream binds together (a topic, a format,
//! a schema, an event-time column and its watermark delay, options),
//! persisted in the storage state store so it survives restarts.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use sluice_storage::{StateSpace, Storage};

use crate::error::{Error, Result};

/// The metadata columns every stream has, after its own columns.
pub const KEY_COLUMN: &str = "_key";
/// The partition of a record.
pub const PARTITION_COLUMN: &str = "_partition";
/// The offset of a record.
pub const OFFSET_COLUMN: &str = "_offset";
/// The record timestamp (ms).
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
/// The suffix of a stream's dead-letter topic.
pub const DEAD_LETTER_SUFFIX: &str = "_errors";
/// The longest stream name: its dead-letter topic must be a valid topic name.
pub(crate) const MAX_STREAM_NAME_LEN: usize = 200;

const STREAM_PREFIX: &[u8] = b"stream/";

/// How record values of a stream are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per record value.
    Json,
    /// One CSV line per record value, columns in schema order.
    Csv,
    /// The value itself, as one column named `value`.
    Raw,
    /// Columnar: each stored batch is one Arrow IPC record batch of the
    /// stream's value columns, decoded once when written.
    Arrow,
}

impl Format {
    /// Parses a `format = '...'` option.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "raw" => Ok(Format::Raw),
            "arrow" => Ok(Format::Arrow),
            "avro" => Err(Error::Unsupported(
                "format 'avro' is not supported; use 'json', 'csv', 'raw' or 'arrow'".to_string(),
            )),
            other => Err(Error::invalid(format!(
                "unknown format '{other}' (expected 'json', 'csv', 'raw' or 'arrow')"
            ))),
        }
    }

    /// The option spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Raw => "raw",
            Format::Arrow => "arrow",
        }
    }
}

/// How the Arrow IPC buffers of a columnar stream are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed: reads take the stored column bytes as they are.
    #[default]
    None,
    /// LZ4 frames: fast, about half the size for typical event data.
    Lz4,
    /// Zstandard: smaller than LZ4, slower to write and read.
    Zstd,
}

impl Compression {
    /// Parses a `compression = '...'` option.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::invalid(format!(
                "compression = '{other}': expected 'none', 'lz4' or 'zstd'"
            ))),
        }
    }

    /// The option spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// What a query does with a record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Skip it, count it and copy it to the dead-letter topic (the default).
    Skip,
    /// Fail the query, naming the record.
    Fail,
}

impl OnError {
    /// Parses an `on_error = '...'` option.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "skip" => Ok(OnError::Skip),
            "fail" => Ok(OnError::Fail),
            other => Err(Error::invalid(format!(
                "on_error = '{other}': expected 'skip' or 'fail'"
            ))),
        }
    }

    /// The option spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Skip => "skip",
            OnError::Fail => "fail",
        }
    }
}

/// A stream: a schema and a format bound to a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDef {
    /// Its name (the SQL table name).
    pub name: String,
    /// The topic holding its records.
    pub topic: String,
    /// How record values are encoded.
    pub format: Format,
    /// The columns decoded from record values (without metadata columns).
    pub value_schema: SchemaRef,
    /// The event-time column; `_timestamp` when the stream has no `WATERMARK FOR`.
    pub event_time: String,
    /// How far the watermark trails the largest event time seen.
    pub watermark_delay_ms: u64,
    /// What to do with records that do not decode.
    pub on_error: OnError,
    /// The column whose value becomes the record key on `INSERT`.
    pub key_column: Option<String>,
    /// How a columnar (`arrow`) stream compresses its stored batches.
    pub compression: Compression,
}

impl StreamDef {
    /// The full schema queries see: value columns, then the metadata columns.
    pub fn table_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .value_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(metadata_fields());
        Arc::new(Schema::new(fields))
    }

    /// The name of its dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.name)
    }
}

/// The metadata columns, in order.
pub fn metadata_fields() -> [Field; 4] {
    [
        Field::new(KEY_COLUMN, DataType::Utf8, true),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]
}

/// True for the name of a metadata column.
pub fn is_metadata_column(name: &str) -> bool {
    matches!(
        name,
        KEY_COLUMN | PARTITION_COLUMN | OFFSET_COLUMN | TIMESTAMP_COLUMN
    )
}

/// Checks a stream name: it is a SQL table name and prefixes a topic name.
pub(crate) fn validate_stream_name(name: &str) -> Result<()> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN || !valid_chars || !starts_well {
        return Err(Error::invalid(format!(
            "invalid stream name \"{name}\": use 1 to {MAX_STREAM_NAME_LEN} letters, digits \
             and underscores, starting with a letter or underscore"
        )));
    }
    Ok(())
}

/// The persisted form. Types are stored as arrow's own `DataType` text,
/// which parses back (`DataType: FromStr`); Arrow schemas have no serde here.
#[derive(Debug, Serialize, Deserialize)]
struct StoredStream {
    name: String,
    topic: String,
    format: Format,
    columns: Vec<StoredColumn>,
    event_time: String,
    watermark_delay_ms: u64,
    on_error: OnError,
    key_column: Option<String>,
    #[serde(default)]
    compression: Compression,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredColumn {
    name: String,
    data_type: String,
    nullable: bool,
}

impl StoredStream {
    fn from_def(def: &StreamDef) -> Self {
        StoredStream {
            name: def.name.clone(),
            topic: def.topic.clone(),
            format: def.format,
            columns: def
                .value_schema
                .fields()
                .iter()
                .map(|f| StoredColumn {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                })
                .collect(),
            event_time: def.event_time.clone(),
            watermark_delay_ms: def.watermark_delay_ms,
            on_error: def.on_error,
            key_column: def.key_column.clone(),
            compression: def.compression,
        }
    }

    fn into_def(self) -> Result<StreamDef> {
        let fields = self
            .columns
            .into_iter()
            .map(|c| {
                let data_type = DataType::from_str(&c.data_type).map_err(|e| {
                    Error::Internal(format!(
                        "catalog entry of stream \"{}\": column {} has type {}: {e}",
                        self.name, c.name, c.data_type
                    ))
                })?;
                Ok(Field::new(c.name, data_type, c.nullable))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StreamDef {
            name: self.name,
            topic: self.topic,
            format: self.format,
            value_schema: Arc::new(Schema::new(fields)),
            event_time: self.event_time,
            watermark_delay_ms: self.watermark_delay_ms,
            on_error: self.on_error,
            key_column: self.key_column,
            compression: self.compression,
        })
    }
}

/// The streams, cached in memory and written through to the state store.
#[derive(Debug)]
pub struct Catalog {
    storage: Storage,
    streams: RwLock<BTreeMap<String, Arc<StreamDef>>>,
}

impl Catalog {
    /// Loads the catalog from the state store.
    pub fn open(storage: Storage) -> Result<Self> {
        let mut streams = BTreeMap::new();
        for (_, value) in storage.state_scan(StateSpace::Catalog, STREAM_PREFIX)? {
            let stored: StoredStream = serde_json::from_slice(&value)
                .map_err(|e| Error::Internal(format!("unreadable catalog entry: {e}")))?;
            let def = stored.into_def()?;
            streams.insert(def.name.clone(), Arc::new(def));
        }
        Ok(Catalog {
            storage,
            streams: RwLock::new(streams),
        })
    }

    /// The stream called `name`, if any.
    pub fn stream(&self, name: &str) -> Option<Arc<StreamDef>> {
        self.read().get(name).cloned()
    }

    /// The stream called `name`, or an error that suggests a close name.
    pub fn require_stream(&self, name: &str) -> Result<Arc<StreamDef>> {
        self.stream(name).ok_or_else(|| {
            let names: Vec<String> = self.read().keys().cloned().collect();
            not_found("stream", name, &names)
        })
    }

    /// Every stream, by name.
    pub fn streams(&self) -> Vec<Arc<StreamDef>> {
        self.read().values().cloned().collect()
    }

    /// The columnar (`arrow`) stream bound to `topic`, if any: its
    /// schema is the one the topic's stored batches have.
    pub fn columnar_stream_for_topic(&self, topic: &str) -> Option<Arc<StreamDef>> {
        self.read()
            .values()
            .find(|def| def.topic == topic && def.format == Format::Arrow)
            .cloned()
    }

    /// Stores a new stream. Fails if the name is taken.
    pub fn insert(&self, def: StreamDef) -> Result<Arc<StreamDef>> {
        let mut streams = self
            .streams
            .write()
            .map_err(|_| Error::Internal("catalog lock poisoned".to_string()))?;
        if streams.contains_key(&def.name) {
            return Err(Error::invalid(format!(
                "stream \"{}\" already exists",
                def.name
            )));
        }
        let value = serde_json::to_vec(&StoredStream::from_def(&def))
            .map_err(|e| Error::Internal(format!("cannot encode catalog entry: {e}")))?;
        self.storage
            .state_put(StateSpace::Catalog, stream_key(&def.name), value)?;
        let def = Arc::new(def);
        streams.insert(def.name.clone(), def.clone());
        Ok(def)
    }

    /// Removes a stream from the catalog (its topic stays).
    pub fn remove(&self, name: &str) -> Result<Option<Arc<StreamDef>>> {
        let mut streams = self
            .streams
            .write()
            .map_err(|_| Error::Internal("catalog lock poisoned".to_string()))?;
        if !streams.contains_key(name) {
            return Ok(None);
        }
        self.storage
            .state_delete(StateSpace::Catalog, stream_key(name))?;
        Ok(streams.remove(name))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StreamDef>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // map itself is always consistent (inserts are single operations).
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn stream_key(name: &str) -> Vec<u8> {
    let mut key = STREAM_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// An unknown-name error, with a suggestion when a known name is close.
pub(crate) fn not_found(kind: &'static str, name: &str, known: &[String]) -> Error {
    let suggestion = known
        .iter()
        .map(|k| {
            (
                edit_distance(&k.to_ascii_lowercase(), &name.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone());
    Error::NotFound {
        kind,
        name: name.to_string(),
        hint: suggestion
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
