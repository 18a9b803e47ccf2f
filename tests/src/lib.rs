//! `sluice-tests`: cross-crate integration tests (the SQL logic tests, the
//! continuous-query differential and crash tests) and what they share; the
//! log's own tests live in `storage/tests`.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Each row as its cells' text, in order.
pub fn row_cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("a formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    rows
}

/// Each row as one line of text (`a | b | c`), in order.
pub fn row_lines(batches: &[RecordBatch]) -> Vec<String> {
    row_cells(batches)
        .into_iter()
        .map(|cells| cells.join(" | "))
        .collect()
}

/// Equal multisets of rows, or a panic naming the first differences.
pub fn same_rows(what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
    let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
    panic!(
        "{what}: {} rows, expected {}; missing (first 5) {missing:?}; unexpected (first 5) {extra:?}",
        got.len(),
        want.len()
    );
}

/// A record key that lands in `partition` of a 4-partition topic.
pub fn partition_key(partition: u32) -> Vec<u8> {
    (0u32..)
        .map(|n| format!("flush-{n}").into_bytes())
        .find(|key| sluice_engine::storage::partitioner::partition_for_key(key, 4) == partition)
        .expect("some key lands in each partition")
}

/// Appends one far-future event (at `time_ms`, event time and record
/// timestamp alike) to every partition of the three Nexmark topics (4
/// partitions each): it moves every partition's watermark past the data,
/// so every window of the data closes.
pub async fn flush_nexmark(engine: &sluice_engine::Engine, time_ms: u64) {
    for partition in 0..4 {
        let bid = format!(
            r#"{{"auction": -1, "bidder": -1, "price": 0, "channel": "", "url": "", "date_time": {time_ms}, "extra": ""}}"#
        );
        let person = format!(r#"{{"id": -1, "name": "", "date_time": {time_ms}}}"#);
        let auction = format!(r#"{{"id": -1, "seller": -1, "date_time": {time_ms}}}"#);
        for (topic, value) in [("bid", bid), ("person", person), ("auction", auction)] {
            engine
                .producer(topic)
                .expect("producer")
                .send(
                    sluice_engine::Record::new(value)
                        .with_key(partition_key(partition))
                        .with_timestamp(time_ms as i64),
                )
                .await
                .expect("flush record");
        }
    }
}

/// An engine on `dir` (`os` durability) that plans queries over two
/// partitions.
pub async fn open_engine(dir: &std::path::Path) -> sluice_engine::Engine {
    sluice_engine::Engine::builder(dir)
        .durability(sluice_engine::Durability::Os)
        .target_partitions(2)
        .open()
        .await
        .expect("engine opens")
}
