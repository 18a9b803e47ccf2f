//! Byte layouts of RocksDB keys.
//!
//! Every integer is big-endian so that RocksDB's bytewise order is numeric
//! order: batches of a partition sort by offset, partitions of a topic by
//! number. Topics are keyed by a numeric id, not their name, so a dropped
//! topic's leftovers can never be read by a new topic of the same name.

/// `topic_id | partition | base_offset`: the key of a stored batch.
pub(crate) fn batch_key(topic_id: u32, partition: u32, base_offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[0..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..8].copy_from_slice(&partition.to_be_bytes());
    key[8..16].copy_from_slice(&base_offset.to_be_bytes());
    key
}

/// `batch key | part`: a stored part of a columnar batch (see
/// [`crate::batch`]). Under the batch key's bytes, so a range of batch keys
/// also spans their parts.
pub(crate) fn column_key(topic_id: u32, partition: u32, base_offset: u64, part: u16) -> [u8; 18] {
    let mut key = [0u8; 18];
    key[0..16].copy_from_slice(&batch_key(topic_id, partition, base_offset));
    key[16..18].copy_from_slice(&part.to_be_bytes());
    key
}

/// Splits a column key into its batch key and its part.
pub(crate) fn parse_column_key(key: &[u8]) -> Option<(&[u8], u16)> {
    let key: &[u8; 18] = key.try_into().ok()?;
    Some((&key[..16], u16::from_be_bytes([key[16], key[17]])))
}

/// Splits a batch key into `(topic_id, partition, base_offset)`.
pub(crate) fn parse_batch_key(key: &[u8]) -> Option<(u32, u32, u64)> {
    if key.len() != 16 {
        return None;
    }
    let topic_id = u32::from_be_bytes(key[0..4].try_into().ok()?);
    let partition = u32::from_be_bytes(key[4..8].try_into().ok()?);
    let base_offset = u64::from_be_bytes(key[8..16].try_into().ok()?);
    Some((topic_id, partition, base_offset))
}

/// `topic_id | partition`: the key of a partition's metadata, and the
/// prefix of its batches and time index entries.
pub(crate) fn partition_key(topic_id: u32, partition: u32) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[0..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..8].copy_from_slice(&partition.to_be_bytes());
    key
}

/// `topic_id`: the prefix of everything a topic stores.
pub(crate) fn topic_prefix(topic_id: u32) -> [u8; 4] {
    topic_id.to_be_bytes()
}

/// An `i64` mapped to a `u64` whose unsigned order is the signed order.
pub(crate) fn ordered_i64(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

/// The inverse of [`ordered_i64`].
#[cfg(test)]
pub(crate) fn from_ordered_i64(value: u64) -> i64 {
    (value ^ (1 << 63)) as i64
}

/// `topic_id | partition | max_timestamp`: a time index entry, written when
/// a batch raises the partition's running maximum timestamp. Its value is
/// the batch's base offset.
pub(crate) fn time_index_key(topic_id: u32, partition: u32, timestamp_ms: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[0..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..8].copy_from_slice(&partition.to_be_bytes());
    key[8..16].copy_from_slice(&ordered_i64(timestamp_ms).to_be_bytes());
    key
}

/// `len(group) | group | topic_id | partition`: a committed consumer offset.
pub(crate) fn group_offset_key(group: &str, topic_id: u32, partition: u32) -> Vec<u8> {
    let mut key = group_prefix(group);
    key.extend_from_slice(&topic_id.to_be_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// `len(group) | group`: the prefix of one group's offsets.
pub(crate) fn group_prefix(group: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + group.len() + 8);
    key.extend_from_slice(&(group.len() as u16).to_be_bytes());
    key.extend_from_slice(group.as_bytes());
    key
}

/// Splits a group offset key into `(group, topic_id, partition)`.
pub(crate) fn parse_group_offset_key(key: &[u8]) -> Option<(String, u32, u32)> {
    let len = usize::from(u16::from_be_bytes(key.get(0..2)?.try_into().ok()?));
    let group = std::str::from_utf8(key.get(2..2 + len)?).ok()?.to_string();
    let rest = key.get(2 + len..)?;
    if rest.len() != 8 {
        return None;
    }
    let topic_id = u32::from_be_bytes(rest[0..4].try_into().ok()?);
    let partition = u32::from_be_bytes(rest[4..8].try_into().ok()?);
    Some((group, topic_id, partition))
}

/// The smallest key greater than every key that starts with `prefix`, for
/// range deletes and iterator upper bounds. `None` when no such key exists
/// (the prefix is all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_sort_by_partition_then_offset() {
        let mut keys = [
            batch_key(1, 1, 0),
            batch_key(1, 0, 300),
            batch_key(1, 0, 2),
            batch_key(0, 7, u64::MAX),
            batch_key(1, 0, 256),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_batch_key(k).unwrap()).collect();
        assert_eq!(
            parsed,
            vec![
                (0, 7, u64::MAX),
                (1, 0, 2),
                (1, 0, 256),
                (1, 0, 300),
                (1, 1, 0)
            ]
        );
    }

    #[test]
    fn timestamps_sort_numerically_including_negative() {
        let stamps = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let keys: Vec<_> = stamps.iter().map(|t| time_index_key(3, 2, *t)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for t in stamps {
            assert_eq!(from_ordered_i64(ordered_i64(t)), t);
        }
    }

    #[test]
    fn group_keys_round_trip_and_do_not_collide() {
        let key = group_offset_key("g", 5, 9);
        assert_eq!(parse_group_offset_key(&key), Some(("g".into(), 5, 9)));
        // "g" + topic bytes must not look like group "g\0..." of another length.
        assert!(!group_offset_key("g\0", 0, 0).starts_with(&group_prefix("g")));
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(&[0, 1]), Some(vec![0, 2]));
        assert_eq!(prefix_end(&[0, 0xff]), Some(vec![1]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
