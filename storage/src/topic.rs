//! Topic names, settings and descriptions: the plain data of the log's
//! catalog.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The longest topic name Kafka accepts, and so do we.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name against Kafka's rule: 1 to 249 characters of
/// `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("topic name must not be empty"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(Error::invalid(format!(
            "topic name is {} characters long; the limit is {MAX_TOPIC_NAME_LEN}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(format!(
            "topic name \"{name}\" is not allowed"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "invalid topic name \"{name}\": character {bad:?} is not allowed \
             (use letters, digits, '.', '_' and '-')"
        )));
    }
    Ok(())
}

/// Checks a partition count: 1 to [`MAX_PARTITIONS`].
pub fn validate_partition_count(partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(Error::invalid(format!(
            "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
        )));
    }
    Ok(())
}

/// What the background cleaner does with old records of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete whole batches older than `retention_ms` or beyond
    /// `retention_bytes` (Kafka's `cleanup.policy=delete`).
    #[default]
    Delete,
    /// Keep at least the latest record of every key (Kafka's
    /// `cleanup.policy=compact`). Records must have keys.
    Compact,
}

impl CleanupPolicy {
    /// Parses `delete` or `compact`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "delete" => Ok(CleanupPolicy::Delete),
            "compact" => Ok(CleanupPolicy::Compact),
            other => Err(Error::invalid(format!(
                "unknown cleanup policy \"{other}\" (expected \"delete\" or \"compact\")"
            ))),
        }
    }

    /// The policy's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// Per-topic settings.
///
/// Retention is off by default: unlike Kafka's seven days, Sluice keeps a
/// topic's records until a limit is set, because continuous queries start
/// from `earliest` by default and silently losing their input would be
/// worse than using disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicSettings {
    /// Delete batches whose newest record is older than this (by record
    /// timestamp). `None` keeps them forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest batches of a partition while it holds more than
    /// this many bytes. `None` means no limit.
    pub retention_bytes: Option<u64>,
    /// `delete` or `compact`.
    pub cleanup: CleanupPolicy,
}

impl TopicSettings {
    /// Checks the settings' values.
    pub fn validate(&self) -> Result<()> {
        if let Some(ms) = self.retention_ms
            && ms <= 0
        {
            return Err(Error::invalid(format!(
                "retention_ms must be positive, got {ms}"
            )));
        }
        if self.retention_bytes == Some(0) {
            return Err(Error::invalid("retention_bytes must be positive"));
        }
        Ok(())
    }
}

/// What is needed to create a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// The topic's name.
    pub name: String,
    /// Its partition count (1..=1024).
    pub partitions: u32,
    /// Retention and cleanup.
    pub settings: TopicSettings,
}

impl TopicConfig {
    /// A topic with `partitions` partitions and default settings.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        TopicConfig {
            name: name.into(),
            partitions,
            settings: TopicSettings::default(),
        }
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: TopicSettings) -> Self {
        self.settings = settings;
        self
    }
}

/// The offsets and size of one partition at the moment it was described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition number.
    pub partition: u32,
    /// The first offset still held (records below it were deleted by retention).
    pub log_start_offset: u64,
    /// One past the last offset written: the high watermark.
    pub end_offset: u64,
    /// Bytes of stored batches.
    pub size_bytes: u64,
}

/// A topic as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The topic's name.
    pub name: String,
    /// Its settings.
    pub settings: TopicSettings,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// The persisted form of a topic in the `topics` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) partitions: u32,
    pub(crate) settings: TopicSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        for ok in ["bids", "a", "A-b_c.d", "0", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_counts_are_bounded() {
        assert!(validate_partition_count(0).is_err());
        assert!(validate_partition_count(1).is_ok());
        assert!(validate_partition_count(1024).is_ok());
        assert!(validate_partition_count(1025).is_err());
    }
}
