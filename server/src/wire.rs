//! JSON shapes of the HTTP API. The server owns them: storage types are
//! converted here, never serialized directly.

use serde::{Deserialize, Serialize};
use sluice_engine::arrow::array::RecordBatch;
use sluice_engine::arrow::datatypes::{Field, Schema};
use sluice_engine::arrow::json::writer::LineDelimited;
use sluice_engine::storage::{TopicDescription, TopicSettings};
use sluice_engine::{Output, QueryOutput};

/// `POST /v1/sql` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlRequest {
    pub(crate) sql: String,
}

/// `POST /v1/sql` answer.
#[derive(Debug, Serialize)]
pub(crate) struct SqlResults {
    pub(crate) results: Vec<serde_json::Value>,
}

/// One statement's answer: `{"columns","rows",...}` for rows,
/// `{"status":"ok","message"}` otherwise.
pub(crate) fn sql_result(output: Output) -> Result<serde_json::Value, String> {
    match output {
        Output::Done(message) => Ok(serde_json::json!({"status": "ok", "message": message})),
        Output::Rows(rows) => rows_json(rows),
    }
}

/// The columns of a result, as `[{"name","type"}]`.
pub(crate) fn columns_json(schema: &Schema) -> Vec<serde_json::Value> {
    schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect()
}

/// A batch's rows as JSON arrays, values as arrow's JSON writer renders them.
pub(crate) fn batch_rows(batch: &RecordBatch) -> Result<Vec<Vec<serde_json::Value>>, String> {
    let mut rows: Vec<Vec<serde_json::Value>> = (0..batch.num_rows())
        .map(|_| Vec::with_capacity(batch.num_columns()))
        .collect();
    // One column at a time under a fixed name: arrow's JSON writer keys
    // rows by column name, and result columns may share a name.
    for column in batch.columns() {
        let field = Field::new("v", column.data_type().clone(), true);
        let single = RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(vec![field])),
            vec![column.clone()],
        )
        .map_err(|e| e.to_string())?;
        let mut buffer = Vec::new();
        {
            let mut writer = sluice_engine::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut buffer);
            writer.write(&single).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
        }
        for (row, line) in buffer
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(line).map_err(|e| e.to_string())?;
            rows[row].push(object.remove("v").unwrap_or(serde_json::Value::Null));
        }
    }
    Ok(rows)
}

fn rows_json(output: QueryOutput) -> Result<serde_json::Value, String> {
    let columns = columns_json(&output.schema);
    let mut rows: Vec<Vec<serde_json::Value>> = Vec::with_capacity(output.row_count());
    for batch in &output.batches {
        rows.extend(batch_rows(batch)?);
    }
    let mut answer = serde_json::json!({"columns": columns, "rows": rows});
    if let Some(message) = output.message {
        answer["message"] = message.into();
    }
    if output.decode_errors > 0 {
        answer["decode_errors"] = output.decode_errors.into();
        answer["warnings"] = output.warnings.into();
    }
    Ok(answer)
}

#[derive(Debug, Serialize)]
pub(crate) struct Health {
    pub(crate) status: &'static str,
    pub(crate) version: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) partitions: Vec<Partition>,
    pub(crate) settings: Settings,
}

#[derive(Debug, Serialize)]
pub(crate) struct Partition {
    pub(crate) partition: u32,
    pub(crate) start_offset: u64,
    pub(crate) end_offset: u64,
    pub(crate) size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Settings {
    pub(crate) retention_ms: Option<i64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) cleanup: &'static str,
}

impl From<&TopicSettings> for Settings {
    fn from(settings: &TopicSettings) -> Self {
        Settings {
            retention_ms: settings.retention_ms,
            retention_bytes: settings.retention_bytes,
            cleanup: settings.cleanup.as_str(),
        }
    }
}

impl From<TopicDescription> for Topic {
    fn from(description: TopicDescription) -> Self {
        Topic {
            settings: Settings::from(&description.settings),
            name: description.name,
            partitions: description
                .partitions
                .into_iter()
                .map(|p| Partition {
                    partition: p.partition,
                    start_offset: p.log_start_offset,
                    end_offset: p.end_offset,
                    size_bytes: p.size_bytes,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct TopicList {
    pub(crate) topics: Vec<Topic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopic {
    pub(crate) name: String,
    #[serde(default = "one")]
    pub(crate) partitions: u32,
    pub(crate) retention_ms: Option<i64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) cleanup: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProduceRequest {
    pub(crate) records: Vec<ProduceRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProduceRecord {
    pub(crate) key: Option<serde_json::Value>,
    pub(crate) value: serde_json::Value,
    pub(crate) timestamp: Option<i64>,
    pub(crate) partition: Option<u32>,
    #[serde(default)]
    pub(crate) headers: Vec<HeaderIn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderIn {
    pub(crate) name: String,
    pub(crate) value: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct ProduceResponse {
    pub(crate) offsets: Vec<Position>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Position {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct RecordOut<'a> {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<String>,
    pub(crate) value: String,
    pub(crate) headers: Vec<HeaderOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HeaderOut {
    pub(crate) name: String,
    pub(crate) value: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorDetail {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) status: &'static str,
    pub(crate) message: String,
}

/// A persistent query as the API shows it.
pub(crate) fn query_json(info: sluice_engine::QueryInfo) -> serde_json::Value {
    serde_json::json!({
        "id": info.id,
        "name": info.name,
        "status": info.status.as_str(),
        "error": info.error,
        "sink": info.sink,
        "sources": info.sources,
        "sql": info.sql,
        "progress": info.progress,
    })
}
