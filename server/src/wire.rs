//! JSON shapes of the HTTP API. The server owns them: storage types are
//! converted here, never serialized directly.

use serde::{Deserialize, Serialize};
use sluice_engine::storage::{TopicDescription, TopicSettings};

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
