//! Continuous queries against their bounded twins (the differential rule
//! of SPEC §3.5): on Nexmark data with out-of-order events spread over four
//! partitions, once every window is closed, what a continuous query emitted
//! equals what the same SELECT returns as a bounded query.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use sluice_engine::nexmark::{self, Events};
use sluice_engine::{Engine, QueryHandle, Subscription};

/// Bids far in the future, one per partition: they move every partition's
/// watermark past the data, so every window of the data closes.
const FLUSH_TIME_MS: u64 = nexmark::BASE_TIME_MS + 3_600_000;

async fn nexmark_engine(dir: &std::path::Path) -> (Engine, Events) {
    let engine = sluice_tests::open_engine(dir).await;
    engine.execute(&nexmark::ddl(4)).await.expect("nexmark DDL");
    // 6,000 events at 100 per second: a minute of event time, shuffled in
    // groups of 50 (half a second, within the 4-second watermark delay).
    let events = Events::generate(6_000, 100, 50);
    (engine, events)
}

/// Loads the events in 30 steps, each topic a little at a time with
/// pauses between, so that queries read them over many triggers.
async fn load_slowly(engine: &Engine, events: &Events) {
    const STEPS: usize = 30;
    let topics = [
        ("person", &events.person),
        ("auction", &events.auction),
        ("bid", &events.bid),
    ];
    for step in 0..STEPS {
        for (topic, records) in topics {
            let size = records.len().div_ceil(STEPS);
            let part =
                &records[(step * size).min(records.len())..((step + 1) * size).min(records.len())];
            if !part.is_empty() {
                engine
                    .producer(topic)
                    .expect("producer")
                    .send_all(part.to_vec())
                    .await
                    .expect("load");
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Rows as sorted text lines: a multiset.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines = rows_in_order(batches);
    lines.sort();
    lines
}

/// Rows as text lines, in order.
fn rows_in_order(batches: &[RecordBatch]) -> Vec<String> {
    sluice_tests::row_lines(batches)
}

/// The value columns of a stream (`SELECT *` adds the metadata columns).
fn value_columns(engine: &Engine, stream: &str) -> String {
    let def = engine
        .sql()
        .catalog()
        .require_stream(stream)
        .expect("the output stream exists");
    def.value_schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bounded twin of a continuous query: the same text without `EMIT`.
fn bounded(sql: &str) -> String {
    let at = sql.rfind("EMIT").expect("a continuous query");
    sql[..at].to_string()
}

/// The statements of a query file.
fn statements(sql: &str) -> Vec<String> {
    sluice_engine::split_statements(sql)
        .expect("query file splits")
        .into_iter()
        .map(|s| s.text)
        .filter(|s| s.contains("SELECT"))
        .collect()
}

/// Waits until `query` has read every record its source holds now.
async fn caught_up(query: &QueryHandle) {
    query
        .wait_caught_up(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn late_rows(query: &QueryHandle) -> u64 {
    query
        .recent_progress()
        .iter()
        .map(|p| p.late_rows_dropped)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_their_bounded_results() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, events) = nexmark_engine(dir.path()).await;
    // Queries start before the data arrives and read it as it is loaded.
    let mut queries = Vec::new();
    // Beyond Nexmark: sessions (merging across triggers and partitions),
    // HAVING, aggregates whose states are not plain values, and hopping
    // windows whose slide does not divide their size, both over panes (of
    // 1 s) and over copied rows (a window column as an aggregate argument).
    let extra = [
        (
            "hop-panes",
            "SELECT auction, window_start, window_end, count(DISTINCT bidder) AS bidders, \
               sum(price) AS total, min(price) AS low \
             FROM HOP(bid, date_time, INTERVAL '3' SECOND, INTERVAL '7' SECOND) \
             GROUP BY auction, window_start, window_end EMIT ON WINDOW CLOSE",
        ),
        (
            "hop-copies",
            "SELECT window_start, max(window_end) AS last_end, count(*) AS bids \
             FROM HOP(bid, date_time, INTERVAL '3' SECOND, INTERVAL '7' SECOND) \
             GROUP BY window_start EMIT ON WINDOW CLOSE",
        ),
        (
            "session",
            "SELECT bidder, window_start, window_end, count(*) AS bids, max(price) AS top \
             FROM SESSION(bid, date_time, INTERVAL '2' SECOND) \
             GROUP BY bidder, window_start, window_end EMIT ON WINDOW CLOSE",
        ),
        (
            "having",
            "SELECT channel, window_start, count(DISTINCT bidder) AS bidders, \
               avg(price) AS mean, bit_xor(price) AS mix \
             FROM TUMBLE(bid, date_time, INTERVAL '5' SECOND) \
             GROUP BY channel, window_start, window_end HAVING count(*) > 3 \
             EMIT FINAL EVERY INTERVAL '100' MILLISECOND",
        ),
    ];
    for (name, sql) in nexmark::QUERIES.iter().chain(extra.iter()) {
        for (n, statement) in statements(sql).into_iter().enumerate() {
            // Short triggers, so the data arrives over many of them.
            let statement = if statement.contains("EVERY") {
                statement
            } else {
                format!("{statement} EVERY INTERVAL '50' MILLISECOND")
            };
            let sink = format!("out_{}_{n}", name.replace('-', "_"));
            let handle = engine
                .start_query(&format!("CREATE STREAM {sink} AS {statement}"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            queries.push((name.to_string(), statement, sink, handle));
        }
    }
    load_slowly(&engine, &events).await;
    let mut expected = HashMap::new();
    for (name, statement, sink, _) in &queries {
        if statement.contains("window_start") {
            // Windowed: the flush rows' windows never close, so the answer
            // is the bounded query over the data before them.
            let batches = engine.query(&bounded(statement)).await.expect("bounded");
            expected.insert(sink.clone(), (name.clone(), rows(&batches)));
        }
    }
    sluice_tests::flush_nexmark(&engine, FLUSH_TIME_MS).await;
    for (name, statement, sink, _) in &queries {
        if !expected.contains_key(sink) {
            let batches = engine.query(&bounded(statement)).await.expect("bounded");
            expected.insert(sink.clone(), (name.clone(), rows(&batches)));
        }
    }
    for (name, _, sink, handle) in &queries {
        caught_up(handle).await;
        assert_eq!(late_rows(handle), 0, "{name}: no row is late in this data");
        let triggers = handle.progress().map_or(0, |p| p.batch_id + 1);
        assert!(
            triggers >= 3,
            "{name}: the data came over several triggers ({triggers})"
        );
        let output = engine
            .query(&format!(
                "SELECT {} FROM {sink}",
                value_columns(&engine, sink)
            ))
            .await
            .expect("output stream");
        let (_, want) = &expected[sink];
        let got = rows(&output);
        assert!(!want.is_empty(), "{name}: the bounded query has rows");
        sluice_tests::same_rows(name, &got, want);
    }
    engine.shutdown().await.expect("shutdown");
}

/// Collects a push query's rows until it has read everything its source
/// holds; returns them in order, and how many the last trigger emitted.
async fn drain(engine: &Engine, subscription: &mut Subscription) -> (Vec<RecordBatch>, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut batches = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(50), subscription.next()).await;
        if let Ok(item) = next {
            batches.push(item.expect("stream open").expect("rows"));
            continue;
        }
        // Nothing came for a while: done if the last trigger read everything
        // (its rows reached the channel before its progress was set).
        if let Some(progress) = subscription.progress() {
            let done = progress.sources.iter().all(|source| {
                let (_, end) = engine
                    .storage()
                    .offsets(&source.topic, source.partition)
                    .expect("offsets");
                source.end_offset == end
            });
            if done {
                // Its rows reached the channel before its progress was set.
                while let Some(Some(item)) = futures::FutureExt::now_or_never(subscription.next()) {
                    batches.push(item.expect("rows"));
                }
                return (batches, progress.emitted_rows as usize);
            }
        }
        assert!(Instant::now() < deadline, "push query did not catch up");
    }
}

/// The last row per key (the first `keys` columns) of CHANGES output.
fn last_per_key(batches: &[RecordBatch], keys: usize) -> Vec<String> {
    let mut last: HashMap<String, String> = HashMap::new();
    for values in sluice_tests::row_cells(batches) {
        last.insert(values[..keys].join(" | "), values.join(" | "));
    }
    let mut rows: Vec<String> = last.into_values().collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_changes_and_complete_end_at_the_bounded_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (engine, events) = nexmark_engine(dir.path()).await;
    let aggregates = "count(*) AS bids, sum(price) AS total, min(price) AS low, \
                      max(price) AS high, avg(price) AS mean, count(DISTINCT auction) AS auctions, \
                      bool_or(price > 10000000) AS big";
    let cases = [
        // Non-windowed aggregate, update mode.
        (
            format!("SELECT bidder, {aggregates} FROM bid WHERE auction >= 0 GROUP BY bidder"),
            "EMIT CHANGES EVERY INTERVAL '50' MILLISECOND",
            1,
        ),
        // Windowed aggregate, update mode: the last update of each window.
        (
            format!(
                "SELECT auction, window_start, window_end, {aggregates} \
                 FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
                 WHERE auction >= 0 GROUP BY auction, window_start, window_end"
            ),
            "EMIT CHANGES EVERY INTERVAL '50' MILLISECOND",
            3,
        ),
        // Non-windowed, complete mode: the last trigger is the whole result.
        (
            format!(
                "SELECT channel, {aggregates} FROM bid WHERE auction >= 0 GROUP BY channel HAVING count(*) > 10"
            ),
            "EMIT COMPLETE EVERY INTERVAL '50' MILLISECOND",
            0,
        ),
    ];
    let mut subscriptions = Vec::new();
    for (select, emit, _) in &cases {
        subscriptions.push(
            engine
                .subscribe(&format!("{select} {emit}"))
                .await
                .unwrap_or_else(|e| panic!("{select}: {e}")),
        );
    }
    load_slowly(&engine, &events).await;
    sluice_tests::flush_nexmark(&engine, FLUSH_TIME_MS).await;
    for ((select, emit, keys), subscription) in cases.iter().zip(&mut subscriptions) {
        let (batches, last_trigger) = drain(&engine, subscription).await;
        let want = rows(&engine.query(select).await.expect("bounded"));
        let got = if emit.starts_with("EMIT COMPLETE") {
            let all = rows_in_order(&batches);
            all[all.len() - last_trigger..].to_vec()
        } else {
            last_per_key(&batches, *keys)
        };
        let got = {
            let mut got = got;
            got.sort();
            got
        };
        assert!(!want.is_empty(), "{select}: the bounded query has rows");
        sluice_tests::same_rows(&format!("{select} {emit}"), &got, &want);
    }
}

async fn small_engine(dir: &std::path::Path) -> Engine {
    let engine = sluice_tests::open_engine(dir).await;
    engine
        .execute(
            "CREATE STREAM s (id BIGINT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) \
             WITH (topic = 'events', partitions = 2)",
        )
        .await
        .expect("stream");
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_records_per_trigger_bounds_every_trigger() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = small_engine(dir.path()).await;
    let values: Vec<String> = (0..20)
        .map(|i| format!("({i}, '2026-01-01T00:00:{i:02}Z')"))
        .collect();
    engine
        .execute(&format!("INSERT INTO s VALUES {}", values.join(", ")))
        .await
        .expect("rows");
    let query = engine
        .start_query(
            "CREATE STREAM copied AS SELECT id FROM s \
             EMIT CHANGES EVERY INTERVAL '10' MILLISECOND WITH (max_records_per_trigger = 4)",
        )
        .await
        .expect("query");
    caught_up(&query).await;
    let triggers = query.recent_progress();
    assert!(
        triggers.iter().all(|p| p.num_input_rows <= 4),
        "{triggers:?}"
    );
    let read: u64 = triggers.iter().map(|p| p.num_input_rows).sum();
    assert_eq!(read, 20, "every record read once");
    let copied = engine
        .query("SELECT count(*) FROM copied")
        .await
        .expect("count");
    assert_eq!(rows(&copied), vec!["20".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_the_last_window_when_input_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = small_engine(dir.path()).await;
    let query = engine
        .start_query(
            "CREATE STREAM per_window AS \
             SELECT window_start, count(*) AS n FROM TUMBLE(s, t, INTERVAL '10' SECOND) \
             GROUP BY window_start, window_end \
             EMIT ON WINDOW CLOSE EVERY INTERVAL '20' MILLISECOND \
             WITH (idle_timeout = '300 ms')",
        )
        .await
        .expect("query");
    engine
        .execute(
            "INSERT INTO s VALUES (1, '2026-01-01T00:00:07Z'), (2, '2026-01-01T00:00:08Z'); \
             INSERT INTO s VALUES (3, '2026-01-01T00:00:09Z');",
        )
        .await
        .expect("rows");
    // No record will ever pass 00:00:11; only the idle timeout can close
    // [00:00, 00:10): once both partitions are silent for 300 ms, the
    // watermark (00:00:08) moves on with wall-clock time. The deadline only
    // keeps a broken build from hanging.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = engine
            .query("SELECT window_start, n FROM per_window")
            .await
            .expect("output");
        if !output.iter().all(|b| b.num_rows() == 0) {
            assert_eq!(rows(&output), vec!["2026-01-01T00:00:00 | 3".to_string()]);
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", query.progress());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `select` as a push query of changes, from the earliest record, with
/// a trigger every 10 ms.
async fn changes(engine: &Engine, select: &str) -> Subscription {
    engine
        .subscribe(&format!(
            "{select} EMIT CHANGES EVERY INTERVAL '10' MILLISECOND WITH (start = 'earliest')"
        ))
        .await
        .expect("push query")
}

/// The next `count` rows a push query emits.
async fn next_rows(subscription: &mut Subscription, count: usize) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let mut rows = 0;
    while rows < count {
        let next = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("the push query emitted nothing for a minute")
            .expect("stream open")
            .expect("rows");
        rows += next.num_rows();
        batches.push(next);
    }
    assert_eq!(rows, count, "more rows than were appended");
    batches
}

/// A continuous query is planned once and each trigger runs that plan
/// again, but `now()` is each trigger's own: a query whose optimized plan
/// would hold the time it was planned is planned by each trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_is_each_triggers_own() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampNanosecondType;

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = small_engine(dir.path()).await;
    let mut subscription = changes(&engine, "SELECT id, now() AS at FROM s").await;
    let mut times = Vec::new();
    for id in 0..2 {
        engine
            .execute(&format!(
                "INSERT INTO s VALUES ({id}, '2026-01-01T00:00:0{id}Z')"
            ))
            .await
            .expect("row");
        let batches = next_rows(&mut subscription, 1).await;
        let at = batches[0]
            .column(1)
            .as_primitive::<TimestampNanosecondType>();
        times.push(at.value(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        times[1] > times[0],
        "the second trigger's now() is later than the first's: {times:?}"
    );
}

/// A plan made once for the triggers knows how many partitions the topic
/// had; a partition added while the query runs makes it plan again, and
/// the new partition is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_while_a_query_runs_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = small_engine(dir.path()).await;
    let mut subscription = changes(&engine, "SELECT id FROM s").await;
    let insert = |ids: std::ops::Range<i64>| {
        let values: Vec<String> = ids
            .map(|i| format!("({i}, '2026-01-01T00:00:00Z')"))
            .collect();
        format!("INSERT INTO s VALUES {}", values.join(", "))
    };
    engine.execute(&insert(0..4)).await.expect("rows");
    let mut batches = next_rows(&mut subscription, 4).await;
    engine
        .storage()
        .set_partitions("events", 3)
        .expect("a third partition");
    // One row per insert: unkeyed rows go round-robin over the partitions.
    for id in 4..10 {
        engine.execute(&insert(id..id + 1)).await.expect("row");
    }
    let (_, end) = engine.storage().offsets("events", 2).expect("offsets");
    assert!(end > 0, "some rows went to the new partition");
    batches.extend(next_rows(&mut subscription, 6).await);
    let mut ids: Vec<i64> = sluice_tests::row_cells(&batches)
        .iter()
        .map(|row| row[0].parse().expect("an id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
}
