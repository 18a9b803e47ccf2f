//! Statements about objects: `CREATE`/`DROP` `TOPIC`/`STREAM`, `SHOW`,
//! `DESCRIBE`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{ColumnDef, ColumnOption};
use sluice_storage::{CleanupPolicy, TopicConfig, TopicSettings};

use crate::catalog::{
    Compression, Format, OnError, StreamDef, TIMESTAMP_COLUMN, is_metadata_column, metadata_fields,
    not_found, validate_stream_name,
};
use crate::context::{SqlContext, from_datafusion};
use crate::error::{Error, Result};
use crate::output::{Output, text_table};
use crate::parser::{CreateStream, ShowObject, WithOptions, ident_name};

const TOPIC_OPTIONS: &[&str] = &[
    "partitions",
    "retention",
    "retention_ms",
    "retention_bytes",
    "cleanup",
];
const STREAM_OPTIONS: &[&str] = &[
    "topic",
    "format",
    "partitions",
    "key",
    "on_error",
    "compression",
];

impl SqlContext {
    pub(crate) fn create_topic(
        &self,
        name: &str,
        if_not_exists: bool,
        mut options: WithOptions,
    ) -> Result<Output> {
        let partitions = options.take_u64("partitions")?.unwrap_or(1);
        let retention = options.take_duration("retention")?;
        let retention_ms = options.take_duration("retention_ms")?;
        let retention_bytes = options.take_u64("retention_bytes")?;
        let cleanup = options
            .take_string("cleanup")?
            .map(|c| CleanupPolicy::parse(&c))
            .transpose()?
            .unwrap_or_default();
        options.finish("CREATE TOPIC", TOPIC_OPTIONS)?;
        if retention.is_some() && retention_ms.is_some() {
            return Err(Error::invalid(
                "give either retention or retention_ms, not both",
            ));
        }
        if self.storage().topic_exists(name) {
            if if_not_exists {
                return Ok(Output::Done(format!("topic {name} already exists")));
            }
            return Err(Error::invalid(format!("topic \"{name}\" already exists")));
        }
        let partitions = u32::try_from(partitions)
            .map_err(|_| Error::invalid(format!("partitions = {partitions} is too many")))?;
        let settings = TopicSettings {
            retention_ms: retention
                .or(retention_ms)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            retention_bytes,
            cleanup,
        };
        self.storage()
            .create_topic(TopicConfig::new(name, partitions).with_settings(settings))?;
        Ok(Output::Done(format!(
            "created topic {name} with {partitions} partition{}",
            if partitions == 1 { "" } else { "s" }
        )))
    }

    pub(crate) fn drop_topic(&self, name: &str, if_exists: bool) -> Result<Output> {
        if !self.storage().topic_exists(name) {
            if if_exists {
                return Ok(Output::Done(format!("topic {name} does not exist")));
            }
            return Err(not_found("topic", name, &self.storage().list_topics()));
        }
        let users: Vec<String> = self
            .catalog()
            .streams()
            .iter()
            .filter(|s| s.topic == name)
            .map(|s| s.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(Error::invalid(format!(
                "topic \"{name}\" holds stream {}: drop the stream first (DROP STREAM {})",
                users.join(", "),
                users[0]
            )));
        }
        self.storage().drop_topic(name)?;
        Ok(Output::Done(format!("dropped topic {name}")))
    }

    pub(crate) async fn create_stream(&self, create: CreateStream) -> Result<Output> {
        if create.query.is_some() {
            return Err(Error::Unsupported(
                "CREATE STREAM ... AS SELECT starts a persistent continuous query: run it through \
                 the engine (Engine::execute or start_query, POST /v1/sql or /v1/queries)"
                    .to_string(),
            ));
        }
        self.create_stream_with(create, None).await
    }

    /// `CREATE STREAM name [WITH (...)] AS <query>`: the stream that a
    /// persistent query writes, its columns those of the query's rows.
    pub async fn create_output_stream(
        &self,
        mut create: CreateStream,
        columns: &Schema,
    ) -> Result<Output> {
        if !create.columns.is_empty() {
            return Err(Error::invalid(format!(
                "CREATE STREAM {} AS SELECT takes its columns from the query; leave out the \
                 column list",
                create.name
            )));
        }
        let mut fields = Vec::with_capacity(columns.fields().len());
        for field in columns.fields() {
            let name = field.name().to_ascii_lowercase();
            if crate::catalog::is_metadata_column(&name) {
                return Err(Error::invalid(format!(
                    "the query's column \"{name}\" would hide the stream's metadata column; \
                     name it with AS"
                )));
            }
            if fields.iter().any(|f: &Field| f.name() == &name) {
                return Err(Error::invalid(format!(
                    "the query has two columns named \"{name}\"; name them apart with AS"
                )));
            }
            let data_type = match field.data_type() {
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Millisecond, None),
                other => other.clone(),
            };
            fields.push(Field::new(name, data_type, true));
        }
        create.query = None;
        self.create_stream_with(create, Some(Schema::new(fields)))
            .await
    }

    async fn create_stream_with(
        &self,
        create: CreateStream,
        given_schema: Option<Schema>,
    ) -> Result<Output> {
        let CreateStream {
            name,
            if_not_exists,
            columns,
            watermark,
            mut options,
            query: _,
        } = create;
        validate_stream_name(&name)?;
        if self.catalog().stream(&name).is_some() {
            if if_not_exists {
                return Ok(Output::Done(format!("stream {name} already exists")));
            }
            return Err(Error::invalid(format!("stream \"{name}\" already exists")));
        }
        let topic = options
            .take_string("topic")?
            .unwrap_or_else(|| name.clone());
        let format = match options.take_string("format")? {
            Some(text) => Format::parse(&text)?,
            None => Format::Json,
        };
        let partitions = options.take_u64("partitions")?;
        let key_column = options.take_string("key")?.map(|k| k.to_ascii_lowercase());
        let on_error = match options.take_string("on_error")? {
            Some(_) if format == Format::Arrow => {
                return Err(Error::invalid(
                    "on_error does not apply to a columnar stream (format = 'arrow'): it \
                     refuses bad values when they are written",
                ));
            }
            Some(text) => OnError::parse(&text)?,
            None => OnError::Skip,
        };
        let compression = match options.take_string("compression")? {
            Some(_) if format != Format::Arrow => {
                return Err(Error::invalid(
                    "compression is a setting of columnar streams (format = 'arrow')",
                ));
            }
            Some(text) => Compression::parse(&text)?,
            None => Compression::None,
        };
        options.finish("CREATE STREAM", STREAM_OPTIONS)?;

        let value_schema = match given_schema {
            Some(schema) => schema,
            None => self.value_schema(&columns, format).await?,
        };
        if let Some(key) = &key_column
            && value_schema.field_with_name(key).is_err()
        {
            return Err(Error::invalid(format!(
                "key = '{key}': the stream has no column \"{key}\""
            )));
        }
        let (event_time, watermark_delay_ms) = match &watermark {
            None => (TIMESTAMP_COLUMN.to_string(), 0),
            Some(watermark) => {
                let column = ident_name(&watermark.column);
                let data_type = if column == TIMESTAMP_COLUMN {
                    DataType::Timestamp(TimeUnit::Millisecond, None)
                } else {
                    value_schema
                        .field_with_name(&column)
                        .map_err(|_| {
                            Error::invalid(format!(
                                "WATERMARK FOR {column}: the stream has no column \"{column}\""
                            ))
                        })?
                        .data_type()
                        .clone()
                };
                if !matches!(data_type, DataType::Timestamp(..)) {
                    return Err(Error::invalid(format!(
                        "WATERMARK FOR {column}: the event-time column must be a TIMESTAMP, it is {data_type}"
                    )));
                }
                let delay = watermark.delay()?;
                (column, u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            }
        };

        let def = StreamDef {
            name: name.clone(),
            topic: topic.clone(),
            format,
            value_schema: Arc::new(value_schema),
            event_time,
            watermark_delay_ms,
            on_error,
            key_column,
            compression,
        };
        self.blocking(move |sql| sql.create_stream_storage(def, partitions))
            .await
    }

    /// The storage side of `CREATE STREAM`: the topic when missing, then
    /// the catalog entry.
    fn create_stream_storage(&self, def: StreamDef, partitions: Option<u64>) -> Result<Output> {
        let (name, topic, format) = (def.name.clone(), def.topic.clone(), def.format);
        let storage = self.storage();
        if storage.topic_exists(&topic) {
            self.check_topic_binding(&def)?;
            let existing = storage.partition_count(&topic)?;
            if let Some(wanted) = partitions
                && wanted != u64::from(existing)
            {
                return Err(Error::invalid(format!(
                    "topic \"{topic}\" exists with {existing} partitions, not {wanted}; leave \
                     out partitions to use it as it is"
                )));
            }
        } else {
            let partitions = u32::try_from(partitions.unwrap_or(1))
                .map_err(|_| Error::invalid("partitions is too large"))?;
            storage.create_topic(TopicConfig::new(topic.clone(), partitions))?;
        }
        self.catalog().insert(def)?;
        Ok(Output::Done(format!(
            "created stream {name} on topic {topic} (format {})",
            format.as_str()
        )))
    }

    /// A topic holds either row records or the columnar batches of one
    /// schema: a columnar stream binds only an empty topic or one whose
    /// columnar streams have its columns, and a row stream binds no topic
    /// of a columnar stream.
    fn check_topic_binding(&self, def: &StreamDef) -> Result<()> {
        let topic = &def.topic;
        let columnar = self.catalog().columnar_stream_for_topic(topic);
        match (def.format, columnar) {
            (Format::Arrow, Some(other)) => {
                let same = other.value_schema.fields().len() == def.value_schema.fields().len()
                    && other
                        .value_schema
                        .fields()
                        .iter()
                        .zip(def.value_schema.fields())
                        .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
                if !same {
                    return Err(Error::invalid(format!(
                        "topic \"{topic}\" holds the columnar batches of stream {}, whose \
                         columns differ; a columnar stream on it needs the same columns",
                        other.name
                    )));
                }
                Ok(())
            }
            (Format::Arrow, None) => {
                let partitions = self.storage().partition_count(topic)?;
                for partition in 0..partitions {
                    let (_, end) = self.storage().offsets(topic, partition)?;
                    if end > 0 {
                        return Err(Error::invalid(format!(
                            "topic \"{topic}\" already holds records; a columnar stream \
                             (format = 'arrow') needs a new or empty topic"
                        )));
                    }
                }
                Ok(())
            }
            (_, Some(other)) => Err(Error::invalid(format!(
                "topic \"{topic}\" holds the columnar batches of stream {}; a {} stream cannot \
                 read it (use format = 'arrow')",
                other.name,
                def.format.as_str()
            ))),
            (_, None) => Ok(()),
        }
    }

    /// The value columns of a new stream, typed by DataFusion's own SQL
    /// type mapping (timestamps in milliseconds, the log's unit).
    async fn value_schema(&self, columns: &[ColumnDef], format: Format) -> Result<Schema> {
        if columns.is_empty() {
            return match format {
                Format::Raw => Ok(Schema::new(vec![Field::new(
                    "value",
                    DataType::Binary,
                    true,
                )])),
                _ => Err(Error::invalid(format!(
                    "{} {} stream needs columns: CREATE STREAM name (column TYPE, ...) WITH (...)",
                    if format == Format::Arrow { "an" } else { "a" },
                    format.as_str()
                ))),
            };
        }
        let mut select = Vec::with_capacity(columns.len());
        let mut nullable = Vec::with_capacity(columns.len());
        let mut names: Vec<String> = Vec::with_capacity(columns.len());
        for column in columns {
            let name = ident_name(&column.name);
            if is_metadata_column(&name) {
                return Err(Error::invalid(format!(
                    "column \"{name}\" is a metadata column every stream has; pick another name"
                )));
            }
            if names.contains(&name) {
                return Err(Error::invalid(format!(
                    "column \"{name}\" is declared twice"
                )));
            }
            let mut not_null = false;
            for option in &column.options {
                match &option.option {
                    ColumnOption::NotNull => not_null = true,
                    ColumnOption::Null => not_null = false,
                    other => {
                        return Err(Error::Unsupported(format!(
                            "column \"{name}\": {other} is not supported on stream columns \
                             (only NULL / NOT NULL)"
                        )));
                    }
                }
            }
            select.push(format!(
                "CAST(NULL AS {}) AS \"{}\"",
                column.data_type,
                name.replace('"', "\"\"")
            ));
            nullable.push(!not_null);
            names.push(name);
        }
        let plan = self
            .base_state()
            .create_logical_plan(&format!("SELECT {}", select.join(", ")))
            .await
            .map_err(from_datafusion)?;
        let fields: Vec<Field> = plan
            .schema()
            .fields()
            .iter()
            .zip(names.iter().zip(nullable))
            .map(|(field, (name, nullable))| {
                let data_type = match field.data_type() {
                    DataType::Timestamp(_, tz) => {
                        DataType::Timestamp(TimeUnit::Millisecond, tz.clone())
                    }
                    other => other.clone(),
                };
                Field::new(name, data_type, nullable)
            })
            .collect();
        if format == Format::Raw {
            let ok = fields.len() == 1
                && fields[0].name() == "value"
                && matches!(fields[0].data_type(), DataType::Binary | DataType::Utf8);
            if !ok {
                return Err(Error::invalid(
                    "a raw stream has one column, value BYTEA or value VARCHAR (or none: BYTEA)",
                ));
            }
        }
        Ok(Schema::new(fields))
    }

    /// Drops a stream (its topic stays). `readers` are the running queries
    /// as `(id, streams read)`: a stream one of them reads is not dropped.
    pub fn drop_stream(
        &self,
        name: &str,
        if_exists: bool,
        readers: &[(String, Vec<String>)],
    ) -> Result<Output> {
        if self.catalog().stream(name).is_none() {
            if if_exists {
                return Ok(Output::Done(format!("stream {name} does not exist")));
            }
            return Err(self
                .catalog()
                .require_stream(name)
                .err()
                .unwrap_or_else(|| Error::Internal(format!("stream {name} vanished"))));
        }
        if let Some((query, _)) = readers
            .iter()
            .find(|(_, streams)| streams.iter().any(|s| s == name))
        {
            return Err(Error::invalid(format!(
                "stream \"{name}\" is read by running query {query}: STOP QUERY {query} first"
            )));
        }
        self.catalog().remove(name)?;
        self.dead_letters().forget(name)?;
        Ok(Output::Done(format!(
            "dropped stream {name} (its topic is kept; DROP TOPIC deletes the records)"
        )))
    }

    pub(crate) fn show(&self, object: ShowObject) -> Result<Output> {
        self.show_with_queries(object, Vec::new())
    }

    /// `SHOW ...`, with `queries` as the rows of `SHOW QUERIES`: id, name,
    /// status, sink, SQL.
    pub fn show_with_queries(
        &self,
        object: ShowObject,
        queries: Vec<Vec<Option<String>>>,
    ) -> Result<Output> {
        let table = match object {
            ShowObject::Topics => {
                let mut rows = Vec::new();
                for topic in self.storage().describe_topics()? {
                    let name = topic.name.clone();
                    let records: u64 = topic
                        .partitions
                        .iter()
                        .map(|p| p.end_offset - p.log_start_offset)
                        .sum();
                    rows.push(vec![
                        Some(name),
                        Some(topic.partitions.len().to_string()),
                        Some(records.to_string()),
                        topic.settings.retention_ms.map(|ms| ms.to_string()),
                        topic.settings.retention_bytes.map(|b| b.to_string()),
                        Some(topic.settings.cleanup.as_str().to_string()),
                    ]);
                }
                text_table(
                    &[
                        "name",
                        "partitions",
                        "records",
                        "retention_ms",
                        "retention_bytes",
                        "cleanup",
                    ],
                    rows,
                )?
            }
            ShowObject::Streams => {
                let rows = self
                    .catalog()
                    .streams()
                    .iter()
                    .map(|s| {
                        vec![
                            Some(s.name.clone()),
                            Some(s.topic.clone()),
                            Some(s.format.as_str().to_string()),
                            Some(s.event_time.clone()),
                            Some(s.watermark_delay_ms.to_string()),
                            Some(s.on_error.as_str().to_string()),
                        ]
                    })
                    .collect();
                text_table(
                    &[
                        "name",
                        "topic",
                        "format",
                        "event_time",
                        "watermark_delay_ms",
                        "on_error",
                    ],
                    rows,
                )?
            }
            ShowObject::Queries => text_table(&["id", "name", "status", "sink", "sql"], queries)?,
        };
        Ok(Output::Rows(table))
    }

    pub(crate) fn describe(&self, name: &str) -> Result<Output> {
        let Some(stream) = self.catalog().stream(name) else {
            if self.storage().topic_exists(name) {
                return self.describe_topic(name);
            }
            return Err(self
                .catalog()
                .require_stream(name)
                .err()
                .unwrap_or_else(|| Error::Internal(format!("stream {name} vanished"))));
        };
        let mut rows = Vec::new();
        for field in stream.value_schema.fields() {
            let note = if *field.name() == stream.event_time {
                Some(watermark_note(&stream))
            } else if stream.key_column.as_deref() == Some(field.name().as_str()) {
                Some("record key".to_string())
            } else {
                None
            };
            rows.push(vec![
                Some(field.name().clone()),
                Some(field.data_type().to_string()),
                Some(if field.is_nullable() { "YES" } else { "NO" }.to_string()),
                note,
            ]);
        }
        for field in metadata_fields() {
            let mut note = "metadata".to_string();
            if *field.name() == stream.event_time {
                note = format!("metadata; {}", watermark_note(&stream));
            }
            rows.push(vec![
                Some(field.name().clone()),
                Some(field.data_type().to_string()),
                Some(if field.is_nullable() { "YES" } else { "NO" }.to_string()),
                Some(note),
            ]);
        }
        let mut table = text_table(&["column_name", "data_type", "is_nullable", "note"], rows)?;
        let partitions = self.storage().partition_count(&stream.topic).unwrap_or(0);
        // Columnar streams refuse bad values on write: no skipping, no
        // dead letters.
        let errors = match stream.format {
            Format::Arrow => "bad values refused on write".to_string(),
            _ => format!(
                "on_error {}, dead-letter topic {}",
                stream.on_error.as_str(),
                stream.dead_letter_topic()
            ),
        };
        table.message = Some(format!(
            "stream {}: topic {} ({partitions} partition{}), format {}, event time {}, \
             watermark delay {} ms, {errors}",
            stream.name,
            stream.topic,
            if partitions == 1 { "" } else { "s" },
            match (stream.format, stream.compression) {
                (Format::Arrow, Compression::None) => "arrow".to_string(),
                (Format::Arrow, compression) =>
                    format!("arrow ({} compression)", compression.as_str()),
                (format, _) => format.as_str().to_string(),
            },
            stream.event_time,
            stream.watermark_delay_ms,
        ));
        Ok(Output::Rows(table))
    }

    fn describe_topic(&self, name: &str) -> Result<Output> {
        let topic = self.storage().describe_topic(name)?;
        let rows = topic
            .partitions
            .iter()
            .map(|p| {
                vec![
                    Some(p.partition.to_string()),
                    Some(p.log_start_offset.to_string()),
                    Some(p.end_offset.to_string()),
                    Some(p.size_bytes.to_string()),
                ]
            })
            .collect();
        let mut table = text_table(
            &["partition", "start_offset", "end_offset", "size_bytes"],
            rows,
        )?;
        table.message = Some(format!(
            "topic {name}: retention_ms {}, retention_bytes {}, cleanup {}",
            topic
                .settings
                .retention_ms
                .map_or("none".to_string(), |v| v.to_string()),
            topic
                .settings
                .retention_bytes
                .map_or("none".to_string(), |v| v.to_string()),
            topic.settings.cleanup.as_str()
        ));
        Ok(Output::Rows(table))
    }
}

fn watermark_note(stream: &StreamDef) -> String {
    format!(
        "event time; watermark = {} - {} ms",
        stream.event_time, stream.watermark_delay_ms
    )
}
