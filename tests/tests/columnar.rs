//! Columnar streams (`format = 'arrow'`) against JSON streams holding the
//! same data: the same answers, bounded and continuous, before and after a
//! restart; `send_batch`; a corrupted stored batch.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice_engine::nexmark::{self, Events};
use sluice_engine::{Engine, QueryHandle, Record};

const FLUSH_TIME_MS: u64 = nexmark::BASE_TIME_MS + 3_600_000;

fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines = sluice_tests::row_lines(batches);
    lines.sort();
    lines
}

/// Loads `events[range]` of each topic, in batches of 200.
async fn load(engine: &Engine, events: &Events, part: std::ops::Range<usize>) {
    for (topic, records) in [
        ("person", &events.person),
        ("auction", &events.auction),
        ("bid", &events.bid),
    ] {
        let from = records.len() * part.start / 2;
        let to = records.len() * part.end / 2;
        for chunk in records[from..to].chunks(200) {
            engine
                .producer(topic)
                .expect("producer")
                .send_all(chunk.to_vec())
                .await
                .expect("load");
        }
    }
}

const CONTINUOUS: &[(&str, &str)] = &[
    (
        "hop",
        "SELECT auction, count(*) AS num, window_start AS starttime \
         FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, auction EMIT ON WINDOW CLOSE \
         EVERY INTERVAL '50' MILLISECOND",
    ),
    (
        "tumble",
        "SELECT bidder, count(*) AS bids, max(price) AS top, window_start \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
         GROUP BY bidder, window_start, window_end EMIT ON WINDOW CLOSE \
         EVERY INTERVAL '50' MILLISECOND",
    ),
    (
        "projection",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, _partition AS p, \
         _offset AS o FROM bid WHERE price > 1000 EMIT CHANGES EVERY INTERVAL '50' MILLISECOND",
    ),
];

const BOUNDED: &[&str] = &[
    "SELECT auction, bidder, price, channel, url, date_time, extra, _partition, _offset, \
     _timestamp FROM bid",
    "SELECT channel, count(*), sum(price), count(DISTINCT bidder) FROM bid GROUP BY channel",
    "SELECT id, name, city, state, date_time FROM person WHERE id % 3 = 0",
    "SELECT seller, count(*), max(reserve) FROM auction GROUP BY seller",
    "SELECT window_start, max(price) FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
     GROUP BY window_start, window_end",
    "SELECT count(*) FROM bid WHERE _partition = 2 AND _offset >= 100",
];

async fn start_queries(engine: &Engine, format: &str) -> Vec<QueryHandle> {
    let mut handles = Vec::new();
    for (name, sql) in CONTINUOUS {
        let handle = engine
            .start_query(&format!(
                "CREATE STREAM out_{name} WITH (format = '{format}') AS {sql}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        handles.push(handle);
    }
    handles
}

async fn outputs(engine: &Engine) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for (name, _) in CONTINUOUS {
        let def = engine
            .sql()
            .catalog()
            .require_stream(&format!("out_{name}"))
            .expect("output stream");
        let columns: Vec<String> = def
            .value_schema
            .fields()
            .iter()
            .map(|f| format!("\"{}\"", f.name()))
            .collect();
        let batches = engine
            .query(&format!("SELECT {} FROM out_{name}", columns.join(", ")))
            .await
            .expect("output");
        all.push(rows(&batches));
    }
    all
}

async fn caught_up(handles: &[QueryHandle]) {
    for handle in handles {
        handle
            .wait_caught_up(Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_and_json_streams_answer_alike_across_a_restart() {
    let events = Events::generate(6_000, 100, 50);
    let json_dir = tempfile::tempdir().expect("temp dir");
    let arrow_dir = tempfile::tempdir().expect("temp dir");
    let mut json = sluice_tests::open_engine(json_dir.path()).await;
    json.execute(&nexmark::ddl(4)).await.expect("json DDL");
    let mut arrow = sluice_tests::open_engine(arrow_dir.path()).await;
    arrow
        .execute(&nexmark::ddl_as(4, "arrow"))
        .await
        .expect("arrow DDL");

    let json_queries = start_queries(&json, "json").await;
    let arrow_queries = start_queries(&arrow, "arrow").await;
    load(&json, &events, 0..1).await;
    load(&arrow, &events, 0..1).await;
    caught_up(&arrow_queries).await;
    caught_up(&json_queries).await;

    // Both engines restart halfway (alike, so that keyless batches go to
    // the same partitions): queries resume from their checkpoints, the
    // columnar topics read back as before.
    drop((json_queries, arrow_queries));
    json.shutdown().await.expect("shutdown");
    drop(json);
    json = sluice_tests::open_engine(json_dir.path()).await;
    arrow.shutdown().await.expect("shutdown");
    drop(arrow);
    arrow = sluice_tests::open_engine(arrow_dir.path()).await;
    load(&json, &events, 1..2).await;
    load(&arrow, &events, 1..2).await;
    sluice_tests::flush_nexmark(&json, FLUSH_TIME_MS).await;
    sluice_tests::flush_nexmark(&arrow, FLUSH_TIME_MS).await;
    for engine in [&json, &arrow] {
        let resumed: Vec<QueryHandle> = engine
            .queries()
            .iter()
            .map(|info| engine.query_handle(&info.id).expect("resumed query"))
            .collect();
        assert_eq!(resumed.len(), CONTINUOUS.len(), "every query resumed");
        caught_up(&resumed).await;
    }

    for sql in BOUNDED {
        let want = rows(&json.query(sql).await.expect("json query"));
        let got = rows(&arrow.query(sql).await.expect("arrow query"));
        assert!(!want.is_empty(), "{sql}: has rows");
        sluice_tests::same_rows(sql, &got, &want);
    }
    let want = outputs(&json).await;
    let got = outputs(&arrow).await;
    for ((name, _), (got, want)) in CONTINUOUS.iter().zip(got.iter().zip(&want)) {
        assert!(!want.is_empty(), "{name}: has rows");
        sluice_tests::same_rows(name, got, want);
    }
    json.shutdown().await.expect("shutdown");
    arrow.shutdown().await.expect("shutdown");
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, array)| array).collect(),
    )
    .expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_matches_columns_by_name_and_partitions_by_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = sluice_tests::open_engine(dir.path()).await;
    engine
        .execute(
            "CREATE STREAM trades (symbol VARCHAR NOT NULL, qty BIGINT, note VARCHAR) \
             WITH (format = 'arrow', key = 'symbol', partitions = 3, compression = 'lz4'); \
             CREATE STREAM twins (symbol VARCHAR NOT NULL, qty BIGINT, note VARCHAR) \
             WITH (format = 'json', key = 'symbol', partitions = 3)",
        )
        .await
        .expect("DDL");
    let producer = engine.producer("trades").expect("producer");
    // Columns in another order, an INT column for a BIGINT one, no `note`.
    let symbols = ["A", "B", "C", "A", "D", "B", "E"];
    let input = batch(vec![
        (
            "qty",
            Arc::new(Int32Array::from_iter_values(1..=7)) as ArrayRef,
        ),
        ("symbol", Arc::new(StringArray::from(symbols.to_vec()))),
    ]);
    let ranges = producer.send_batch(input).await.expect("send_batch");
    assert_eq!(
        ranges
            .iter()
            .map(|r| r.offsets.end - r.offsets.start)
            .sum::<u64>(),
        7
    );
    // The same rows into a JSON stream keyed the same way land alike.
    engine
        .execute(
            "INSERT INTO twins (qty, symbol) VALUES (1, 'A'), (2, 'B'), (3, 'C'), (4, 'A'), \
             (5, 'D'), (6, 'B'), (7, 'E')",
        )
        .await
        .expect("insert");
    let query = |stream: &str| {
        format!("SELECT symbol, qty, note, _partition, _key FROM {stream} ORDER BY qty")
    };
    let got = sluice_tests::row_lines(&engine.query(&query("trades")).await.expect("query"));
    let want = sluice_tests::row_lines(&engine.query(&query("twins")).await.expect("query"));
    assert_eq!(
        got, want,
        "a columnar stream partitions and keys rows as INSERT does"
    );

    // INSERT into the columnar stream appends columnar batches too.
    engine
        .execute("INSERT INTO trades VALUES ('F', 8, 'last')")
        .await
        .expect("insert");
    let count = engine
        .query("SELECT count(*), sum(qty) FROM trades WHERE note IS NULL")
        .await
        .expect("count");
    assert_eq!(sluice_tests::row_lines(&count), vec!["7 | 28".to_string()]);

    // Mistakes are refused and write nothing.
    let bad = [
        batch(vec![(
            "price",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )]),
        batch(vec![(
            "qty",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )]),
        batch(vec![
            ("symbol", Arc::new(StringArray::from(vec!["A"])) as ArrayRef),
            ("qty", Arc::new(StringArray::from(vec!["many"]))),
        ]),
    ];
    for (input, needle) in bad.into_iter().zip(["price", "NOT NULL", "qty"]) {
        let error = producer.send_batch(input).await.expect_err("refused");
        assert!(error.is_user_error(), "{error}");
        assert!(error.to_string().contains(needle), "{error}");
    }
    let error = engine
        .producer("twins")
        .expect("producer")
        .send_batch(batch(vec![(
            "symbol",
            Arc::new(StringArray::from(vec!["A"])) as ArrayRef,
        )]))
        .await
        .expect_err("a JSON stream takes records");
    assert!(error.to_string().contains("format 'json'"), "{error}");
    let count = engine
        .query("SELECT count(*) FROM trades")
        .await
        .expect("count");
    assert_eq!(sluice_tests::row_lines(&count), vec!["8".to_string()]);

    // JSON records produced to the topic are decoded on write; one that
    // does not fit fails the call and nothing of it is written.
    let producer = engine.producer("trades").expect("producer");
    producer
        .send_all(vec![
            Record::new(r#"{"symbol": "G", "qty": 9}"#),
            Record::new(r#"{"symbol": "H", "qty": 10, "note": "ok"}"#),
        ])
        .await
        .expect("JSON into a columnar topic");
    let error = producer
        .send_all(vec![
            Record::new(r#"{"symbol": "I", "qty": 11}"#),
            Record::new(r#"{"symbol": "J", "qty": "eleven"}"#),
        ])
        .await
        .expect_err("a bad value");
    assert!(error.to_string().contains("record 2"), "{error}");
    let count = engine
        .query("SELECT count(*), max(qty) FROM trades")
        .await
        .expect("count");
    assert_eq!(sluice_tests::row_lines(&count), vec!["10 | 10".to_string()]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_columnar_batch_is_an_error_naming_its_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = sluice_tests::open_engine(dir.path()).await;
    engine
        .execute(
            "CREATE STREAM cols (n BIGINT) WITH (format = 'arrow'); \
             CREATE STREAM rows_s (n BIGINT) WITH (format = 'json'); \
             INSERT INTO cols VALUES (1), (2); INSERT INTO rows_s VALUES (1)",
        )
        .await
        .expect("setup");
    engine
        .storage()
        .append_columnar(
            "cols",
            0,
            &[1, 2, 3],
            vec![b"not an arrow ipc stream".to_vec()],
        )
        .await
        .expect("a raw append");
    let error = engine
        .query("SELECT sum(n) FROM cols")
        .await
        .expect_err("the corrupt batch is an error");
    let message = error.to_string();
    assert!(
        message.contains("cols/0") && message.contains("offset 2"),
        "{message}"
    );
    // Rows before it still read, and other streams are unaffected.
    let before = engine
        .query("SELECT sum(n) FROM cols WHERE _offset < 2")
        .await
        .expect("the rows before");
    assert_eq!(sluice_tests::row_lines(&before), vec!["3".to_string()]);
    let other = engine
        .query("SELECT count(*) FROM rows_s")
        .await
        .expect("other stream");
    assert_eq!(sluice_tests::row_lines(&other), vec!["1".to_string()]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columnar_streams_bind_only_fitting_topics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = sluice_tests::open_engine(dir.path()).await;
    engine
        .execute(
            "CREATE STREAM j (n BIGINT) WITH (topic = 't_rows'); INSERT INTO j VALUES (1); \
             CREATE STREAM a (n BIGINT) WITH (topic = 't_cols', format = 'arrow')",
        )
        .await
        .expect("setup");
    let cases = [
        (
            "CREATE STREAM a2 (n BIGINT) WITH (topic = 't_rows', format = 'arrow')",
            "already holds records",
        ),
        (
            "CREATE STREAM j2 (n BIGINT) WITH (topic = 't_cols')",
            "columnar batches of stream a",
        ),
        (
            "CREATE STREAM a3 (m BIGINT) WITH (topic = 't_cols', format = 'arrow')",
            "columns differ",
        ),
        (
            "CREATE STREAM j3 (n BIGINT) WITH (compression = 'lz4')",
            "compression",
        ),
        (
            "CREATE STREAM a4 (n BIGINT) WITH (format = 'arrow', compression = 'snappy')",
            "snappy",
        ),
    ];
    for (sql, needle) in cases {
        let error = engine.execute(sql).await.expect_err(sql);
        assert!(error.to_string().contains(needle), "{sql}: {error}");
    }
    // A second columnar stream with the same columns shares the topic.
    engine
        .execute("CREATE STREAM a5 (n BIGINT) WITH (topic = 't_cols', format = 'arrow')")
        .await
        .expect("same columns");
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let rows =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![4, 5]))]).expect("batch");
    engine
        .producer("t_cols")
        .expect("producer")
        .send_batch(rows)
        .await
        .expect("send_batch by topic");
    let got = engine.query("SELECT sum(n) FROM a5").await.expect("query");
    assert_eq!(sluice_tests::row_lines(&got), vec!["9".to_string()]);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_stored_batches_read_whole_and_from_inside() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = sluice_tests::open_engine(dir.path()).await;
    engine
        .execute("CREATE STREAM big (n BIGINT, s VARCHAR) WITH (format = 'arrow', partitions = 1)")
        .await
        .expect("create");
    // More rows than one stored batch holds: two batches, 64Ki + the rest.
    let total = sluice_engine::sql::MAX_BATCH_ROWS as i64 + 34_000;
    let input = batch(vec![
        (
            "n",
            Arc::new(Int64Array::from_iter_values(0..total)) as ArrayRef,
        ),
        (
            "s",
            Arc::new(StringArray::from_iter_values(
                (0..total).map(|i| format!("v{}", i % 7)),
            )) as ArrayRef,
        ),
    ]);
    let ranges = engine
        .producer("big")
        .expect("producer")
        .send_batch(input)
        .await
        .expect("send_batch");
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    let head = sluice_engine::sql::MAX_BATCH_ROWS as i64 - 1000;
    let cases = [
        (
            "SELECT count(*), sum(n), min(_offset), max(_offset) FROM big",
            format!("{total} | {} | 0 | {}", total * (total - 1) / 2, total - 1),
        ),
        // Offsets that start and end inside the stored batches.
        (
            "SELECT count(*), min(n), max(n) FROM big WHERE _offset >= 10000 AND _offset < 70000",
            "60000 | 10000 | 69999".to_string(),
        ),
        // A range that starts 1,000 rows before the first batch ends: its
        // short head goes out joined to the next chunk, no row lost or
        // doubled, each value beside its own offset.
        (
            &*format!(
                "SELECT count(*), min(n), max(n), sum(_offset - n) FROM big WHERE _offset >= {head}"
            ),
            format!("{} | {head} | {} | 0", total - head, total - 1),
        ),
        (
            "SELECT count(*) FROM big WHERE s = 'v3'",
            ((0..total).filter(|i| i % 7 == 3).count()).to_string(),
        ),
    ];
    for (sql, expected) in cases {
        let output = engine.query(sql).await.expect(sql);
        assert_eq!(sluice_tests::row_lines(&output), vec![expected], "{sql}");
    }
    let limited = engine
        .query("SELECT n FROM big LIMIT 3")
        .await
        .expect("limit");
    assert_eq!(sluice_tests::row_lines(&limited).len(), 3);
    engine.shutdown().await.expect("shutdown");
}
