//! Columnar batches keep their parts beside the log: retention and dropping
//! a topic must take the parts with the batches, and sizes count them.

use crate::storage::CF_COLUMNS;
use crate::{AtomicWrite, Storage, StorageOptions, TopicConfig, TopicSettings};

fn open(dir: &std::path::Path) -> Storage {
    let options = StorageOptions::default()
        .with_retention_check_interval(None)
        .with_durability(crate::Durability::Os);
    Storage::open(dir, options).expect("open storage")
}

/// Every key of the `columns` column family.
fn part_keys(storage: &Storage) -> Vec<Vec<u8>> {
    let shared = &storage.inner.shared;
    let cf = shared.cf(CF_COLUMNS).expect("columns cf");
    shared
        .db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.expect("iterate").0.to_vec())
        .collect()
}

fn append(storage: &Storage, topic: &str, timestamps: Vec<i64>, columns: Vec<Vec<u8>>) {
    let mut write = AtomicWrite::new();
    write.append_columnar(topic, 0, timestamps, columns);
    storage.commit_blocking(write).expect("append columnar");
}

#[test]
fn retention_and_drops_take_the_parts_with_their_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(dir.path());
    let settings = TopicSettings {
        retention_ms: Some(100),
        ..TopicSettings::default()
    };
    storage
        .create_topic(TopicConfig::new("cols", 1).with_settings(settings))
        .expect("create");
    storage
        .create_topic(TopicConfig::new("other", 1))
        .expect("create");
    append(
        &storage,
        "cols",
        vec![10, 20],
        vec![b"a0".to_vec(), b"b0".to_vec()],
    );
    append(
        &storage,
        "cols",
        vec![5_000],
        vec![b"a1".to_vec(), b"b1".to_vec()],
    );
    append(&storage, "other", vec![1], vec![b"x".to_vec()]);
    // Three parts (timestamps and two columns) per `cols` batch, two for `other`.
    assert_eq!(part_keys(&storage).len(), 3 + 3 + 2);
    let size = storage.describe_topic("cols").expect("describe").partitions[0].size_bytes;
    assert!(size >= 16 + 4 + 8 + 4, "size {size} leaves out the parts");

    let report = storage.apply_retention(1_000).expect("retention");
    assert_eq!(report.batches_deleted, 1);
    assert_eq!(part_keys(&storage).len(), 3 + 2);
    let fetch = storage
        .read("cols", 0, 2, crate::ReadLimits::default())
        .expect("read the rest");
    let slice = fetch.batches[0]
        .columnar()
        .expect("parse")
        .expect("columnar");
    assert_eq!(&*slice.column(1).expect("column"), b"b1");
    assert_eq!(slice.timestamps().expect("timestamps"), [5_000]);

    storage.drop_topic("cols").expect("drop");
    assert_eq!(part_keys(&storage).len(), 2, "the other topic's parts stay");
}

/// Flips one byte of `needle` where a table file under `dir` holds it.
fn flip_stored_byte(dir: &std::path::Path, needle: &[u8]) {
    for entry in std::fs::read_dir(dir).expect("list the data directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "sst") {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read a table file");
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + needle.len() / 2] ^= 0x01;
            std::fs::write(&path, bytes).expect("write the table file back");
            return;
        }
    }
    panic!("no table file holds the column's bytes");
}

#[test]
fn a_flipped_bit_in_a_table_file_fails_reads_unless_checksums_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let column: Vec<u8> = b"a column part, stored once; "
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    {
        let storage = open(dir.path());
        storage
            .create_topic(TopicConfig::new("cols", 1))
            .expect("create");
        append(&storage, "cols", vec![1, 2], vec![column.clone()]);
        storage.settle().expect("flush to table files");
    }
    flip_stored_byte(dir.path(), &column);

    let read_column = |options: StorageOptions| {
        let storage = Storage::open(dir.path(), options).expect("reopen");
        let fetch = storage.read("cols", 0, 0, crate::ReadLimits::default())?;
        let slice = fetch.batches[0]
            .columnar()
            .expect("parse")
            .expect("columnar");
        Ok::<_, crate::Error>(slice.column(0).expect("column").into_owned())
    };
    let defaults = StorageOptions::default().with_retention_check_interval(None);
    let refused = read_column(defaults.clone()).expect_err("the checksum catches the flip");
    assert!(
        refused.to_string().contains("checksum"),
        "not a checksum error: {refused}"
    );
    let unchecked = read_column(defaults.with_verify_checksums(false))
        .expect("without verification the read goes through");
    assert_eq!(unchecked.len(), column.len());
    assert_ne!(unchecked, column, "the flipped byte is read as stored");
}
