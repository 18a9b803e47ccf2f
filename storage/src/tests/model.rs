//! Model test: random sequences of topic operations, appends, reads,
//! lookups by time, group commits, retention, compaction and reopen,
//! checked step by step against an in-memory model of the log.
//!
//! `SLUICE_MODEL_CASES` sets the number of cases (default 24).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use crate::batch::EncodedBatch;
use crate::{
    CleanupPolicy, Error, ReadLimits, Record, Storage, StorageOptions, TopicConfig, TopicSettings,
};

const TOPICS: usize = 4;
const GROUPS: usize = 2;

/// Topic `i` always has the same settings, so each cleaner path is covered.
fn settings(topic: usize) -> TopicSettings {
    match topic {
        1 => TopicSettings {
            retention_ms: Some(1_000),
            ..TopicSettings::default()
        },
        2 => TopicSettings {
            retention_bytes: Some(600),
            ..TopicSettings::default()
        },
        3 => TopicSettings {
            cleanup: CleanupPolicy::Compact,
            ..TopicSettings::default()
        },
        _ => TopicSettings::default(),
    }
}

fn name(topic: usize) -> String {
    format!("t{topic}")
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        topic: usize,
        partitions: u32,
    },
    Drop {
        topic: usize,
    },
    AddPartition {
        topic: usize,
    },
    Append {
        topic: usize,
        partition: u32,
        records: Vec<(Option<u8>, u8, i64)>,
    },
    Read {
        topic: usize,
        partition: u32,
        offset: u64,
        max_records: usize,
    },
    ReadByTime {
        topic: usize,
        partition: u32,
        timestamp_ms: i64,
    },
    Commit {
        group: usize,
        topic: usize,
        partition: u32,
        offset: u64,
    },
    Retention {
        now_ms: i64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let topic = 0..TOPICS;
    let partition = 0u32..4;
    let record = (
        proptest::option::weighted(0.85, 0u8..6),
        0u8..40,
        0i64..10_000,
    );
    prop_oneof![
        2 => (topic.clone(), 1u32..4).prop_map(|(topic, partitions)| Op::Create { topic, partitions }),
        1 => topic.clone().prop_map(|topic| Op::Drop { topic }),
        1 => topic.clone().prop_map(|topic| Op::AddPartition { topic }),
        8 => (topic.clone(), partition.clone(), prop::collection::vec(record, 1..8))
            .prop_map(|(topic, partition, records)| Op::Append { topic, partition, records }),
        4 => (topic.clone(), partition.clone(), 0u64..40, 1usize..12)
            .prop_map(|(topic, partition, offset, max_records)| Op::Read { topic, partition, offset, max_records }),
        2 => (topic.clone(), partition.clone(), -10i64..11_000)
            .prop_map(|(topic, partition, timestamp_ms)| Op::ReadByTime { topic, partition, timestamp_ms }),
        2 => (0..GROUPS, topic.clone(), partition.clone(), 0u64..40)
            .prop_map(|(group, topic, partition, offset)| Op::Commit { group, topic, partition, offset }),
        2 => (0i64..12_000).prop_map(|now_ms| Op::Retention { now_ms }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base: u64,
    span: u64,
    /// Surviving records with their offsets.
    records: Vec<(u64, Record)>,
    encoded_len: u64,
    max_timestamp_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct ModelPartition {
    batches: Vec<ModelBatch>,
    log_start: u64,
    end: u64,
}

impl ModelPartition {
    fn size(&self) -> u64 {
        self.batches.iter().map(|b| b.encoded_len).sum()
    }

    fn records_from(&self, offset: u64) -> impl Iterator<Item = &(u64, Record)> {
        self.batches
            .iter()
            .flat_map(|b| b.records.iter())
            .filter(move |(o, _)| *o >= offset)
    }
}

#[derive(Debug, Default)]
struct Model {
    topics: BTreeMap<usize, Vec<ModelPartition>>,
    /// (group, topic) -> partition -> offset
    committed: HashMap<(usize, usize), HashMap<u32, u64>>,
}

fn record(key: Option<u8>, value_len: u8, timestamp_ms: i64) -> Record {
    let mut record = Record::new(vec![b'v'; value_len as usize]).with_timestamp(timestamp_ms);
    if let Some(key) = key {
        record = record.with_key(vec![b'k', key]);
    }
    if value_len.is_multiple_of(5) {
        record = record.with_header("h", vec![value_len]);
    }
    record
}

fn open(dir: &std::path::Path) -> Storage {
    let options = StorageOptions::default()
        .with_retention_check_interval(None)
        .with_durability(crate::Durability::Os);
    Storage::open(dir, options).expect("open storage")
}

fn check_all_topics(storage: &Storage, model: &Model) {
    let names: Vec<String> = model.topics.keys().map(|t| name(*t)).collect();
    assert_eq!(storage.list_topics(), names);
    for (topic, partitions) in &model.topics {
        let description = storage.describe_topic(&name(*topic)).expect("describe");
        assert_eq!(description.settings, settings(*topic));
        assert_eq!(description.partitions.len(), partitions.len());
        for (info, model) in description.partitions.iter().zip(partitions) {
            assert_eq!(
                info.log_start_offset, model.log_start,
                "log start of t{topic}/{}",
                info.partition
            );
            assert_eq!(
                info.end_offset, model.end,
                "end of t{topic}/{}",
                info.partition
            );
            if settings(*topic).cleanup == CleanupPolicy::Delete {
                assert_eq!(
                    info.size_bytes,
                    model.size(),
                    "size of t{topic}/{}",
                    info.partition
                );
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut storage = Some(open(dir.path()));
    let mut model = Model::default();
    for op in ops {
        let s = storage.as_ref().expect("storage is open");
        match op {
            Op::Create { topic, partitions } => {
                let result = s.create_topic(
                    TopicConfig::new(name(topic), partitions).with_settings(settings(topic)),
                );
                match model.topics.entry(topic) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert!(matches!(result, Err(Error::AlreadyExists(_))), "{result:?}");
                    }
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        result.expect("create");
                        entry.insert(vec![ModelPartition::default(); partitions as usize]);
                    }
                }
            }
            Op::Drop { topic } => {
                let result = s.drop_topic(&name(topic));
                if model.topics.remove(&topic).is_some() {
                    result.expect("drop");
                    model.committed.retain(|(_, t), _| *t != topic);
                } else {
                    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
                }
            }
            Op::AddPartition { topic } => {
                let current = model.topics.get(&topic).map_or(1, |p| p.len() as u32);
                let result = s.set_partitions(&name(topic), current + 1);
                match model.topics.get_mut(&topic) {
                    Some(partitions) => {
                        result.expect("add partition");
                        partitions.push(ModelPartition::default());
                    }
                    None => assert!(result.is_err()),
                }
            }
            Op::Append {
                topic,
                partition,
                records,
            } => {
                let records: Vec<Record> = records
                    .into_iter()
                    .map(|(k, v, t)| record(k, v, t))
                    .collect();
                let result = s.append_blocking(&name(topic), partition, &records);
                let Some(partitions) = model.topics.get_mut(&topic) else {
                    assert!(matches!(result, Err(Error::NotFound { .. })), "{result:?}");
                    continue;
                };
                let Some(model_partition) = partitions.get_mut(partition as usize) else {
                    assert!(
                        matches!(result, Err(Error::NoSuchPartition { .. })),
                        "{result:?}"
                    );
                    continue;
                };
                if settings(topic).cleanup == CleanupPolicy::Compact
                    && records.iter().any(|r| r.key.is_none())
                {
                    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
                    continue;
                }
                let outcome = result.expect("append");
                assert_eq!(outcome.base_offset, model_partition.end);
                assert_eq!(outcome.record_count as usize, records.len());
                let base = model_partition.end;
                model_partition.batches.push(ModelBatch {
                    base,
                    span: records.len() as u64,
                    encoded_len: EncodedBatch::rows(&records).bytes.len() as u64,
                    max_timestamp_ms: records
                        .iter()
                        .map(|r| r.timestamp_ms)
                        .max()
                        .unwrap_or(i64::MIN),
                    records: records
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (base + i as u64, r))
                        .collect(),
                });
                model_partition.end += outcome.record_count as u64;
            }
            Op::Read {
                topic,
                partition,
                offset,
                max_records,
            } => {
                let result = s.read(
                    &name(topic),
                    partition,
                    offset,
                    ReadLimits::records(max_records),
                );
                let Some(p) = model
                    .topics
                    .get(&topic)
                    .and_then(|t| t.get(partition as usize))
                else {
                    assert!(result.is_err());
                    continue;
                };
                if offset < p.log_start || offset > p.end {
                    assert!(
                        matches!(result, Err(Error::OffsetOutOfRange { .. })),
                        "{result:?}"
                    );
                    continue;
                }
                let fetch = result.expect("read");
                let got: Vec<(u64, Record)> = fetch
                    .records()
                    .expect("decode")
                    .into_iter()
                    .map(|r| (r.offset, r.record))
                    .collect();
                let want: Vec<(u64, Record)> =
                    p.records_from(offset).take(max_records).cloned().collect();
                assert_eq!(got, want, "read t{topic}/{partition} from {offset}");
                assert_eq!(fetch.end_offset, p.end);
                if want.len() < max_records {
                    assert_eq!(
                        fetch.next_offset, p.end,
                        "a read to the end resumes at the end"
                    );
                }
            }
            Op::ReadByTime {
                topic,
                partition,
                timestamp_ms,
            } => {
                let result = s.offset_for_timestamp(&name(topic), partition, timestamp_ms);
                let Some(p) = model
                    .topics
                    .get(&topic)
                    .and_then(|t| t.get(partition as usize))
                else {
                    assert!(result.is_err());
                    continue;
                };
                let want = p
                    .records_from(p.log_start)
                    .find(|(_, r)| r.timestamp_ms >= timestamp_ms)
                    .map(|(o, _)| *o);
                assert_eq!(
                    result.expect("lookup"),
                    want,
                    "t{topic}/{partition} at {timestamp_ms}"
                );
            }
            Op::Commit {
                group,
                topic,
                partition,
                offset,
            } => {
                let group_name = format!("g{group}");
                let result = s.commit_offset(&group_name, &name(topic), partition, offset);
                let Some(p) = model
                    .topics
                    .get(&topic)
                    .and_then(|t| t.get(partition as usize))
                else {
                    assert!(result.is_err());
                    continue;
                };
                if offset > p.end {
                    assert!(
                        matches!(result, Err(Error::OffsetOutOfRange { .. })),
                        "{result:?}"
                    );
                } else {
                    result.expect("commit");
                    model
                        .committed
                        .entry((group, topic))
                        .or_default()
                        .insert(partition, offset);
                }
                let lag = s.group_lag(&group_name, &name(topic)).expect("lag");
                let committed = model.committed.get(&(group, topic));
                for (entry, p) in lag.iter().zip(&model.topics[&topic]) {
                    let want = committed.and_then(|c| c.get(&entry.partition)).copied();
                    assert_eq!(entry.committed_offset, want);
                    assert_eq!(
                        entry.lag,
                        p.end - want.unwrap_or(p.log_start).max(p.log_start)
                    );
                }
            }
            Op::Retention { now_ms } => {
                s.apply_retention(now_ms).expect("retention");
                for (topic, partitions) in model.topics.iter_mut() {
                    let settings = settings(*topic);
                    for p in partitions.iter_mut() {
                        match settings.cleanup {
                            CleanupPolicy::Delete => apply_delete(p, &settings, now_ms),
                            CleanupPolicy::Compact => apply_compact(p),
                        }
                    }
                }
                check_all_topics(s, &model);
            }
            Op::Reopen => {
                drop(storage.take());
                let reopened = open(dir.path());
                check_all_topics(&reopened, &model);
                for ((group, topic), offsets) in &model.committed {
                    for (partition, offset) in offsets {
                        let got = reopened
                            .committed_offset(&format!("g{group}"), &name(*topic), *partition)
                            .expect("committed offset");
                        assert_eq!(got, Some(*offset));
                    }
                }
                storage = Some(reopened);
            }
        }
    }
    check_all_topics(storage.as_ref().expect("open"), &model);
}

fn apply_delete(p: &mut ModelPartition, settings: &TopicSettings, now_ms: i64) {
    let cutoff = settings.retention_ms.map(|ms| now_ms - ms);
    let mut remaining = p.size();
    while let Some(first) = p.batches.first() {
        let expired = cutoff.is_some_and(|c| first.max_timestamp_ms < c);
        let oversized = settings
            .retention_bytes
            .is_some_and(|limit| remaining.saturating_sub(first.encoded_len) >= limit);
        if !(expired || oversized) {
            break;
        }
        remaining -= first.encoded_len;
        p.log_start = first.base + first.span;
        p.batches.remove(0);
    }
}

fn apply_compact(p: &mut ModelPartition) {
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for (offset, record) in p.records_from(0) {
        if let Some(key) = &record.key {
            latest.insert(key.clone(), *offset);
        }
    }
    for batch in &mut p.batches {
        batch.records.retain(|(offset, record)| {
            record
                .key
                .as_ref()
                .is_none_or(|k| latest.get(k) == Some(offset))
        });
    }
    p.batches.retain(|b| !b.records.is_empty());
}

fn cases() -> u32 {
    std::env::var("SLUICE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn storage_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

#[test]
fn model_catches_a_reopen_after_every_kind_of_write() {
    // A fixed sequence that exercises each path once, so a regression shows
    // up even when the random cases happen to miss it.
    run(vec![
        Op::Create {
            topic: 0,
            partitions: 2,
        },
        Op::Create {
            topic: 1,
            partitions: 1,
        },
        Op::Create {
            topic: 2,
            partitions: 1,
        },
        Op::Create {
            topic: 3,
            partitions: 1,
        },
        Op::Append {
            topic: 0,
            partition: 1,
            records: vec![(Some(1), 3, 5), (None, 0, 2)],
        },
        Op::Append {
            topic: 1,
            partition: 0,
            records: vec![(None, 3, 100)],
        },
        Op::Append {
            topic: 1,
            partition: 0,
            records: vec![(None, 3, 5_000)],
        },
        Op::Append {
            topic: 2,
            partition: 0,
            records: vec![(None, 39, 1); 5],
        },
        Op::Append {
            topic: 2,
            partition: 0,
            records: vec![(None, 39, 2); 5],
        },
        Op::Append {
            topic: 2,
            partition: 0,
            records: vec![(None, 39, 3); 5],
        },
        Op::Append {
            topic: 3,
            partition: 0,
            records: vec![(Some(1), 1, 1), (Some(2), 1, 2)],
        },
        Op::Append {
            topic: 3,
            partition: 0,
            records: vec![(Some(1), 2, 3)],
        },
        Op::Append {
            topic: 3,
            partition: 0,
            records: vec![(None, 2, 3)],
        },
        Op::Commit {
            group: 0,
            topic: 0,
            partition: 1,
            offset: 1,
        },
        Op::Retention { now_ms: 2_000 },
        Op::Read {
            topic: 1,
            partition: 0,
            offset: 1,
            max_records: 10,
        },
        Op::Read {
            topic: 3,
            partition: 0,
            offset: 0,
            max_records: 10,
        },
        Op::ReadByTime {
            topic: 3,
            partition: 0,
            timestamp_ms: 0,
        },
        Op::ReadByTime {
            topic: 1,
            partition: 0,
            timestamp_ms: 0,
        },
        Op::Reopen,
        Op::Read {
            topic: 2,
            partition: 0,
            offset: 5,
            max_records: 3,
        },
        Op::AddPartition { topic: 0 },
        Op::Drop { topic: 0 },
        Op::Reopen,
        Op::Create {
            topic: 0,
            partitions: 1,
        },
        Op::Read {
            topic: 0,
            partition: 0,
            offset: 0,
            max_records: 3,
        },
    ]);
}
