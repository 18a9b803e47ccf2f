//! Integration tests of the log through its public API.

use std::time::Duration;

use sluice_storage::{
    AtomicWrite, CleanupPolicy, Durability, Error, LogCompression, PayloadKind, ProduceRecord,
    ReadLimits, Record, StateSpace, Storage, StorageOptions, TopicConfig, TopicSettings,
    partitioner,
};

fn open(dir: &tempfile::TempDir) -> Storage {
    let options = StorageOptions::default()
        .with_durability(Durability::Os)
        .with_retention_check_interval(None);
    Storage::open(dir.path(), options).expect("open")
}

fn values(fetch: &sluice_storage::Fetch) -> Vec<(u64, String)> {
    fetch
        .records()
        .expect("decode")
        .into_iter()
        .map(|r| (r.offset, String::from_utf8(r.record.value).expect("utf8")))
        .collect()
}

fn records(prefix: &str, count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record::new(format!("{prefix}{i}")).with_timestamp(i as i64))
        .collect()
}

#[tokio::test]
async fn keyed_records_land_where_kafka_puts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("keyed", 50))
        .expect("create");
    let keys = ["foobar", "21", "abc", "a-little-bit-long-string"];
    let produced: Vec<ProduceRecord> = keys
        .iter()
        .map(|k| Record::new("v").with_key(*k).into())
        .collect();
    let positions = storage.produce("keyed", produced).await.expect("produce");
    assert_eq!(positions[0].partition, 16);
    for (key, position) in keys.iter().zip(&positions) {
        assert_eq!(
            position.partition,
            partitioner::partition_for_key(key.as_bytes(), 50)
        );
    }

    // Keyless records of one call share a partition; the next call moves on.
    let first = storage
        .produce(
            "keyed",
            vec![Record::new("a").into(), Record::new("b").into()],
        )
        .await
        .expect("produce");
    let second = storage
        .produce("keyed", vec![Record::new("c").into()])
        .await
        .expect("produce");
    assert_eq!(first[0].partition, first[1].partition);
    assert_eq!(first[1].offset, first[0].offset + 1);
    assert_ne!(first[0].partition, second[0].partition);

    // An explicit partition wins, and must exist.
    let explicit = ProduceRecord {
        partition: Some(7),
        record: Record::new("x").with_key("foobar"),
    };
    let placed = storage
        .produce("keyed", vec![explicit])
        .await
        .expect("produce");
    assert_eq!(placed[0].partition, 7);
    let missing = ProduceRecord {
        partition: Some(50),
        record: Record::new("x"),
    };
    let error = storage
        .produce("keyed", vec![missing])
        .await
        .expect_err("no partition 50");
    assert!(
        matches!(
            error,
            Error::NoSuchPartition {
                partition: 50,
                partitions: 50,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn bad_input_is_refused_with_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(
        dir.path(),
        StorageOptions::default()
            .with_max_record_bytes(64)
            .with_retention_check_interval(None),
    )
    .expect("open");
    for bad in ["", "a b", "..", "ü", &"x".repeat(250)] {
        let error = storage
            .create_topic(TopicConfig::new(bad, 1))
            .expect_err(bad);
        assert!(matches!(error, Error::InvalidInput(_)), "{bad}: {error}");
    }
    assert!(matches!(
        storage.create_topic(TopicConfig::new("t", 0)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        storage.create_topic(TopicConfig::new("t", 1025)),
        Err(Error::InvalidInput(_))
    ));
    storage
        .create_topic(TopicConfig::new("t", 2))
        .expect("create");
    assert!(matches!(
        storage.create_topic(TopicConfig::new("t", 2)),
        Err(Error::AlreadyExists(_))
    ));
    let error = storage.set_partitions("t", 1).expect_err("shrinking");
    assert!(error.to_string().contains("never removed"), "{error}");

    let error = storage
        .append_blocking("nope", 0, &records("v", 1))
        .expect_err("unknown topic");
    assert_eq!(error.to_string(), "unknown topic \"nope\"");
    assert!(matches!(
        storage.append_blocking("t", 2, &records("v", 1)),
        Err(Error::NoSuchPartition { .. })
    ));
    assert!(matches!(
        storage.append_blocking("t", 0, &[]),
        Err(Error::InvalidInput(_))
    ));

    // One oversized record fails the whole batch.
    let mut batch = records("ok", 3);
    batch.push(Record::new(vec![0u8; 65]));
    let error = storage
        .append_blocking("t", 0, &batch)
        .expect_err("too large");
    assert!(
        matches!(error, Error::RecordTooLarge { size: 65, max: 64 }),
        "{error}"
    );
    assert_eq!(storage.offsets("t", 0).expect("offsets"), (0, 0));

    storage
        .append_blocking("t", 0, &records("v", 2))
        .expect("append");
    let error = storage
        .read("t", 0, 3, ReadLimits::default())
        .expect_err("past the end");
    assert!(
        matches!(
            error,
            Error::OffsetOutOfRange {
                offset: 3,
                end_offset: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.is_user_error());

    // An atomic write with one bad part writes none of it.
    let mut write = AtomicWrite::new();
    write.append("t", 0, records("a", 1));
    write.put(StateSpace::Checkpoints, b"k".to_vec(), b"v".to_vec());
    write.append("t", 9, records("b", 1));
    assert!(storage.commit_blocking(write).is_err());
    assert_eq!(storage.offsets("t", 0).expect("offsets"), (0, 2));
    assert_eq!(
        storage
            .state_get(StateSpace::Checkpoints, b"k")
            .expect("get"),
        None
    );

    // Compacted topics need keys.
    let compact = TopicSettings {
        cleanup: CleanupPolicy::Compact,
        ..TopicSettings::default()
    };
    storage
        .create_topic(TopicConfig::new("c", 1).with_settings(compact))
        .expect("create");
    let error = storage
        .append_blocking("c", 0, &records("v", 1))
        .expect_err("keyless");
    assert!(error.to_string().contains("needs a key"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_dense_unique_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Storage::open(
        dir.path(),
        StorageOptions::default().with_retention_check_interval(None),
    )
    .expect("open");
    storage
        .create_topic(TopicConfig::new("c", 2))
        .expect("create");
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for batch in 0..20 {
                let records = records(&format!("w{writer}b{batch}r"), 1 + batch % 5);
                outcomes.push(
                    storage
                        .append("c", (writer % 2) as u32, &records)
                        .await
                        .expect("append"),
                );
            }
            outcomes
        }));
    }
    let mut ranges: Vec<Vec<(u64, u64)>> = vec![Vec::new(), Vec::new()];
    for task in tasks {
        for outcome in task.await.expect("task") {
            let base = outcome.base_offset;
            ranges[outcome.partition as usize].push((base, base + u64::from(outcome.record_count)));
        }
    }
    for (partition, mut ranges) in ranges.into_iter().enumerate() {
        ranges.sort();
        let mut next = 0;
        for (start, end) in &ranges {
            assert_eq!(*start, next, "partition {partition} has a gap or overlap");
            next = *end;
        }
        let fetch = storage
            .read("c", partition as u32, 0, ReadLimits::records(100_000))
            .expect("read");
        assert_eq!(fetch.record_count() as u64, next);
    }
}

#[tokio::test]
async fn a_long_poll_wakes_when_records_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("p", 1))
        .expect("create");

    // Nothing arrives: the wait ends empty-handed at its timeout.
    let fetch = storage
        .fetch("p", 0, 0, ReadLimits::default(), Duration::from_millis(20))
        .await
        .expect("fetch");
    assert!(fetch.batches.is_empty());

    let waiter = {
        let storage = storage.clone();
        tokio::spawn(async move {
            storage
                .fetch("p", 0, 0, ReadLimits::default(), Duration::from_secs(60))
                .await
        })
    };
    tokio::task::yield_now().await;
    storage
        .append("p", 0, &records("late", 2))
        .await
        .expect("append");
    let fetch = waiter.await.expect("join").expect("fetch");
    assert_eq!(
        values(&fetch),
        vec![(0, "late0".to_string()), (1, "late1".to_string())]
    );
}

#[test]
fn reads_start_inside_batches_and_respect_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("r", 1))
        .expect("create");
    storage
        .append_blocking("r", 0, &records("a", 4))
        .expect("append");
    storage
        .append_blocking("r", 0, &records("b", 4))
        .expect("append");

    let fetch = storage
        .read("r", 0, 2, ReadLimits::records(3))
        .expect("read");
    assert_eq!(
        values(&fetch),
        vec![(2, "a2".into()), (3, "a3".into()), (4, "b0".into())]
    );
    assert_eq!(fetch.next_offset, 5);

    let fetch = storage
        .read("r", 0, 1, ReadLimits::records(100).until(6))
        .expect("read");
    assert_eq!(fetch.record_count(), 5);
    assert_eq!(fetch.next_offset, 6);

    // The byte limit stops after the first batch, but never returns nothing.
    let fetch = storage
        .read("r", 0, 0, ReadLimits::records(100).with_max_bytes(1))
        .expect("read");
    assert_eq!(fetch.batches.len(), 1);
    assert_eq!(fetch.record_count(), 4);

    let fetch = storage
        .read("r", 0, 8, ReadLimits::default())
        .expect("read at end");
    assert!(fetch.batches.is_empty());
    assert_eq!(fetch.next_offset, 8);
}

#[test]
fn offsets_are_found_by_timestamp_with_out_of_order_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("t", 1))
        .expect("create");
    let stamps = [[10, 30, 20], [5, 25, 40], [35, 50, 45]];
    for batch in stamps {
        let records: Vec<Record> = batch
            .iter()
            .map(|t| Record::new("v").with_timestamp(*t))
            .collect();
        storage.append_blocking("t", 0, &records).expect("append");
    }
    let flat: Vec<i64> = stamps.iter().flatten().copied().collect();
    for target in [0, 10, 11, 26, 30, 31, 40, 41, 46, 50, 51] {
        let want = flat.iter().position(|t| *t >= target).map(|p| p as u64);
        assert_eq!(
            storage
                .offset_for_timestamp("t", 0, target)
                .expect("lookup"),
            want,
            "target {target}"
        );
    }
}

#[test]
fn retention_deletes_old_batches_and_moves_the_log_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    let settings = TopicSettings {
        retention_ms: Some(100),
        ..TopicSettings::default()
    };
    storage
        .create_topic(TopicConfig::new("old", 1).with_settings(settings))
        .expect("create");
    for base in [0, 1_000, 2_000] {
        let batch: Vec<Record> = (0..3)
            .map(|i| Record::new("v").with_timestamp(base + i))
            .collect();
        storage.append_blocking("old", 0, &batch).expect("append");
    }
    let report = storage.apply_retention(1_050).expect("retention");
    assert_eq!((report.batches_deleted, report.records_deleted), (1, 3));
    assert_eq!(storage.offsets("old", 0).expect("offsets"), (3, 9));
    assert!(matches!(
        storage.read("old", 0, 2, ReadLimits::default()),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        storage
            .read("old", 0, 3, ReadLimits::default())
            .expect("read")
            .record_count(),
        6
    );
    assert_eq!(
        storage.offset_for_timestamp("old", 0, 0).expect("lookup"),
        Some(3)
    );
    // Appends go on at the end; offsets are never reused.
    storage.apply_retention(10_000).expect("retention");
    assert_eq!(storage.offsets("old", 0).expect("offsets"), (9, 9));
    let outcome = storage
        .append_blocking("old", 0, &records("new", 1))
        .expect("append");
    assert_eq!(outcome.base_offset, 9);
}

#[test]
fn the_background_cleaner_applies_retention_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StorageOptions::default()
        .with_durability(Durability::Os)
        .with_retention_check_interval(Some(Duration::from_millis(10)));
    let storage = Storage::open(dir.path(), options).expect("open");
    let settings = TopicSettings {
        retention_ms: Some(1),
        ..TopicSettings::default()
    };
    storage
        .create_topic(TopicConfig::new("gone", 1).with_settings(settings))
        .expect("create");
    storage
        .append_blocking("gone", 0, &[Record::new("v").with_timestamp(0)])
        .expect("append");
    let mut start = 0;
    for _ in 0..1_000 {
        start = storage.offsets("gone", 0).expect("offsets").0;
        if start == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(start, 1, "the cleaner never deleted the expired batch");
}

#[test]
fn columnar_batches_round_trip_with_offsets_per_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("col", 1))
        .expect("create");
    storage
        .append_blocking("col", 0, &records("row", 2))
        .expect("append rows");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime
        .block_on(storage.append_columnar(
            "col",
            0,
            &[100, 300, 200],
            vec![b"first column".to_vec(), b"second".to_vec()],
        ))
        .expect("append columnar");
    assert_eq!((outcome.base_offset, outcome.record_count), (2, 3));
    let fetch = storage
        .read("col", 0, 3, ReadLimits::default())
        .expect("read");
    let batch = &fetch.batches[0];
    assert_eq!(batch.kind(), PayloadKind::Columnar);
    let slice = batch.columnar().expect("parse").expect("columnar");
    assert_eq!(slice.column_count(), 2);
    assert_eq!(&*slice.column(1).expect("column"), b"second");
    assert!(slice.column(2).is_err());
    assert_eq!(slice.rows, (1, 3));
    assert_eq!(slice.timestamps().expect("timestamps"), [100, 300, 200]);
    // A scan fetches only the columns its visitor asks for.
    let mut scanned = Vec::new();
    storage
        .scan("col", 0, 2, ReadLimits::default(), |batch| {
            let slice = batch.columnar()?.expect("columnar");
            scanned.push(slice.column(0)?.into_owned());
            Ok(())
        })
        .expect("scan");
    assert_eq!(scanned, [b"first column".to_vec()]);
    assert_eq!(
        storage.offset_for_timestamp("col", 0, 250).expect("lookup"),
        Some(3)
    );
}

#[test]
fn consumer_groups_commit_offsets_and_report_lag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("g", 2))
        .expect("create");
    storage
        .append_blocking("g", 0, &records("v", 5))
        .expect("append");
    storage
        .append_blocking("g", 1, &records("v", 3))
        .expect("append");
    storage.commit_offset("readers", "g", 0, 2).expect("commit");
    assert_eq!(
        storage.committed_offset("readers", "g", 0).expect("fetch"),
        Some(2)
    );
    assert_eq!(
        storage.committed_offset("readers", "g", 1).expect("fetch"),
        None
    );
    let lag = storage.group_lag("readers", "g").expect("lag");
    assert_eq!(lag.iter().map(|l| l.lag).collect::<Vec<_>>(), vec![3, 3]);
    assert!(matches!(
        storage.commit_offset("readers", "g", 0, 6),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        storage.commit_offset("", "g", 0, 1),
        Err(Error::InvalidInput(_))
    ));
    storage.commit_offset("others", "g", 1, 3).expect("commit");
    assert_eq!(
        storage.list_groups().expect("groups"),
        vec!["others".to_string(), "readers".to_string()]
    );
    storage.drop_topic("g").expect("drop");
    storage
        .create_topic(TopicConfig::new("g", 2))
        .expect("recreate");
    assert_eq!(
        storage.committed_offset("readers", "g", 0).expect("fetch"),
        None,
        "offsets die with their topic"
    );
}

#[test]
fn state_entries_survive_reopen_and_scan_by_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let storage = open(&dir);
        storage
            .state_put(StateSpace::Catalog, b"stream/a".to_vec(), b"1".to_vec())
            .expect("put");
        storage
            .state_put(StateSpace::Catalog, b"stream/b".to_vec(), b"2".to_vec())
            .expect("put");
        storage
            .state_put(StateSpace::Catalog, b"query/x".to_vec(), b"3".to_vec())
            .expect("put");
        storage
            .state_delete(StateSpace::Catalog, b"stream/a".to_vec())
            .expect("delete");
        storage.close().expect("close");
    }
    let storage = open(&dir);
    let streams = storage
        .state_scan(StateSpace::Catalog, b"stream/")
        .expect("scan");
    assert_eq!(streams, vec![(b"stream/b".to_vec(), b"2".to_vec())]);
    assert_eq!(
        storage
            .state_get(StateSpace::Checkpoints, b"query/x")
            .expect("get"),
        None
    );
}

#[test]
fn a_scan_visits_what_a_read_returns_without_copying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&dir);
    storage
        .create_topic(TopicConfig::new("t", 1))
        .expect("create");
    for batch in 0..5 {
        storage
            .append_blocking("t", 0, &records(&format!("b{batch}-"), 10))
            .expect("append");
    }
    // From inside the second batch, at most 25 records, stopping before 40.
    let limits = ReadLimits::records(25).until(40);
    let fetch = storage.read("t", 0, 13, limits).expect("read");
    let mut scanned = Vec::new();
    let outcome = storage
        .scan("t", 0, 13, limits, |batch| {
            assert_eq!(batch.kind(), PayloadKind::Rows);
            for record in batch.records()? {
                let record = record?;
                scanned.push((
                    record.offset,
                    String::from_utf8(record.value.to_vec()).expect("utf8"),
                ));
            }
            Ok(())
        })
        .expect("scan");
    assert_eq!(scanned, values(&fetch));
    assert_eq!(outcome.next_offset, fetch.next_offset);
    assert_eq!(outcome.record_count, 25);
    assert_eq!(outcome.batch_count, fetch.batches.len());
    // A visitor's error stops the scan and comes back.
    let error = storage
        .scan("t", 0, 0, ReadLimits::records(100), |_| {
            Err(Error::InvalidInput("stop".to_string()))
        })
        .expect_err("the visitor's error");
    assert!(error.to_string().contains("stop"), "{error}");
}

#[test]
fn the_log_codec_can_change_between_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open_with = |codec: LogCompression| {
        let options = StorageOptions::default()
            .with_durability(Durability::Os)
            .with_retention_check_interval(None)
            .with_log_compression(codec);
        Storage::open(dir.path(), options).expect("open")
    };
    let codecs = [
        LogCompression::Lz4,
        LogCompression::None,
        LogCompression::Zstd,
        LogCompression::None,
    ];
    let mut expected = Vec::new();
    for (round, codec) in codecs.into_iter().enumerate() {
        let storage = open_with(codec);
        if round == 0 {
            storage
                .create_topic(TopicConfig::new("t", 1))
                .expect("create");
        }
        // Each round's records reach a table file of that round's codec.
        let batch = records(&format!("{}-", codec.as_str()), 200);
        let base = expected.len() as u64;
        storage.append_blocking("t", 0, &batch).expect("append");
        storage.settle().expect("flush");
        for (i, record) in batch.iter().enumerate() {
            let value = String::from_utf8(record.value.clone()).expect("utf8");
            expected.push((base + i as u64, value));
        }
        let fetch = storage
            .read("t", 0, 0, ReadLimits::records(10_000))
            .expect("read");
        assert_eq!(values(&fetch), expected, "after opening with {codec:?}");
        storage.close().expect("close");
    }
    assert_eq!(
        LogCompression::parse("LZ4").expect("parse"),
        LogCompression::Lz4
    );
    let refused = LogCompression::parse("snappy").expect_err("unknown codec");
    assert!(refused.to_string().contains("snappy"), "{refused}");
}
