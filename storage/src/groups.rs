//! Consumer groups: committed offsets per `(group, topic, partition)` and
//! the lag behind each partition's end offset.

use crate::error::{Error, Result};
use crate::keys;
use crate::storage::{CF_GROUPS, Shared, Storage};
use crate::writer::{StateOp, WriteRequest};

/// The longest consumer group name accepted.
pub const MAX_GROUP_NAME_LEN: usize = 255;

/// A group's position in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: u32,
    /// The committed offset, if the group committed one.
    pub committed_offset: Option<u64>,
    /// The partition's end offset.
    pub end_offset: u64,
    /// Records between the group's position and the end: `end_offset -
    /// committed_offset`, or from the log start when nothing is committed.
    pub lag: u64,
}

fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME_LEN {
        return Err(Error::invalid(format!(
            "consumer group name must be 1 to {MAX_GROUP_NAME_LEN} bytes long"
        )));
    }
    Ok(())
}

impl Storage {
    /// Commits a group's offset for a partition: the offset of the next
    /// record the group will read. It may not pass the end offset.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        validate_group(group)?;
        let shared = &self.inner.shared;
        let topic_state = shared.topic(topic)?;
        let state = shared.partition(&topic_state, partition)?;
        let meta = state.meta();
        if offset > meta.end_offset {
            return Err(Error::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                offset,
                log_start_offset: meta.log_start_offset,
                end_offset: meta.end_offset,
            });
        }
        let request = WriteRequest {
            appends: Vec::new(),
            state: vec![StateOp {
                column_family: CF_GROUPS,
                key: keys::group_offset_key(group, topic_state.id, partition),
                value: Some(offset.to_le_bytes().to_vec()),
            }],
        };
        self.inner.writer.write_blocking(request).map(|_| ())
    }

    /// A group's committed offset for a partition, if any.
    pub fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>> {
        validate_group(group)?;
        let shared = &self.inner.shared;
        let topic_state = shared.topic(topic)?;
        shared.partition(&topic_state, partition)?;
        let raw = shared.db.get_cf(
            shared.cf(CF_GROUPS)?,
            keys::group_offset_key(group, topic_state.id, partition),
        )?;
        raw.map(|raw| decode_offset(&raw)).transpose()
    }

    /// A group's lag on every partition of a topic.
    pub fn group_lag(&self, group: &str, topic: &str) -> Result<Vec<PartitionLag>> {
        let description = self.describe_topic(topic)?;
        description
            .partitions
            .iter()
            .map(|info| {
                let committed = self.committed_offset(group, topic, info.partition)?;
                let position = committed
                    .unwrap_or(info.log_start_offset)
                    .max(info.log_start_offset);
                Ok(PartitionLag {
                    partition: info.partition,
                    committed_offset: committed,
                    end_offset: info.end_offset,
                    lag: info.end_offset.saturating_sub(position),
                })
            })
            .collect()
    }

    /// The names of all groups that committed an offset, sorted.
    pub fn list_groups(&self) -> Result<Vec<String>> {
        let shared = &self.inner.shared;
        let mut groups: Vec<String> = Vec::new();
        for entry in shared
            .db
            .iterator_cf(shared.cf(CF_GROUPS)?, rocksdb::IteratorMode::Start)
        {
            let (key, _) = entry?;
            if let Some((group, _, _)) = keys::parse_group_offset_key(&key)
                && groups.last() != Some(&group)
            {
                groups.push(group);
            }
        }
        Ok(groups)
    }
}

fn decode_offset(raw: &[u8]) -> Result<u64> {
    let raw: [u8; 8] = raw
        .try_into()
        .map_err(|_| Error::Internal("malformed committed offset".to_string()))?;
    Ok(u64::from_le_bytes(raw))
}

/// Keys of every committed offset of a topic (to delete when it is dropped).
pub(crate) fn offset_keys_of_topic(shared: &Shared, topic_id: u32) -> Result<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    for entry in shared
        .db
        .iterator_cf(shared.cf(CF_GROUPS)?, rocksdb::IteratorMode::Start)
    {
        let (key, _) = entry?;
        if let Some((_, id, _)) = keys::parse_group_offset_key(&key)
            && id == topic_id
        {
            found.push(key.to_vec());
        }
    }
    Ok(found)
}
