//! The library API end to end: the catalog survives a restart, bounded
//! queries report records that did not decode, and a stream that a running
//! query reads cannot be dropped.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use sluice_engine::{Durability, Engine, Error, Output, Record};

async fn open(dir: &std::path::Path) -> Engine {
    Engine::builder(dir)
        .durability(Durability::Os)
        .open()
        .await
        .expect("engine opens")
}

fn single_i64(batches: &[RecordBatch]) -> i64 {
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn catalog_and_records_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let engine = open(dir.path()).await;
        engine
            .execute(
                "CREATE STREAM bid (auction BIGINT, price BIGINT, date_time TIMESTAMP, \
                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
                 WITH (topic = 'bids', partitions = 3, key = 'auction');
                 INSERT INTO bid VALUES (1, 10, '2026-01-01T00:00:00Z'), (2, 20, '2026-01-01T00:00:01Z');",
            )
            .await
            .expect("DDL and INSERT");
        engine
            .producer("bids")
            .expect("producer")
            .send(Record::new(
                r#"{"auction": 3, "price": 30, "date_time": 1767225602000}"#,
            ))
            .await
            .expect("send");
        engine.shutdown().await.expect("shutdown");
    }
    let engine = open(dir.path()).await;
    let outputs = engine.execute("DESCRIBE bid").await.expect("describe");
    let Output::Rows(describe) = &outputs[0] else {
        panic!("DESCRIBE answers rows");
    };
    let message = describe.message.clone().unwrap_or_default();
    assert!(message.contains("topic bids (3 partitions)"), "{message}");
    assert!(message.contains("event time date_time"), "{message}");
    assert!(message.contains("watermark delay 4000 ms"), "{message}");
    let batches = engine
        .query("SELECT sum(price) FROM bid")
        .await
        .expect("query");
    assert_eq!(single_i64(&batches), 60);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bounded_queries_report_records_that_do_not_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(dir.path()).await;
    engine
        .execute("CREATE STREAM s (id BIGINT, v BIGINT) WITH (topic = 't')")
        .await
        .expect("create");
    let producer = engine.producer("t").expect("producer");
    for value in [
        r#"{"id": 1, "v": 1}"#,
        "{oops",
        r#"{"id": 2, "v": "x"}"#,
        r#"{"id": 3, "v": 3}"#,
    ] {
        producer.send(Record::new(value)).await.expect("send");
    }
    let outputs = engine
        .execute("SELECT id, v FROM s ORDER BY id")
        .await
        .expect("query");
    let Output::Rows(result) = &outputs[0] else {
        panic!("a query answers rows");
    };
    assert_eq!(result.row_count(), 2);
    assert_eq!(result.decode_errors, 2);
    assert_eq!(result.warnings.len(), 2);
    assert!(
        result.warnings[0].contains("stream s (topic t, partition 0, offset 1)"),
        "{:?}",
        result.warnings
    );
    // Each bad record is in the dead-letter topic once, however often read.
    engine.query("SELECT v FROM s").await.expect("again");
    let (_, end) = engine
        .storage()
        .offsets("s_errors", 0)
        .expect("dead letters");
    assert_eq!(end, 2);
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_stream_that_a_running_query_reads_is_not_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(dir.path()).await;
    engine
        .execute("CREATE STREAM s (id BIGINT) WITH (topic = 't')")
        .await
        .expect("create");
    let readers = vec![("q7".to_string(), vec!["s".to_string()])];
    let error = engine
        .sql()
        .drop_stream("s", false, &readers)
        .expect_err("refused");
    assert!(error.to_string().contains("STOP QUERY q7"), "{error}");
    engine.sql().drop_stream("s", false, &[]).expect("dropped");
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn errors_tell_the_callers_mistakes_from_failures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(dir.path()).await;
    let syntax = engine.execute("SELEC 1").await.expect_err("bad SQL");
    assert!(syntax.is_user_error(), "{syntax}");
    let unknown = engine
        .query("SELECT * FROM nope")
        .await
        .expect_err("unknown");
    assert!(unknown.is_user_error(), "{unknown}");
    let continuous = engine
        .execute("CREATE STREAM s (id BIGINT); SELECT id FROM s EMIT ON WINDOW CLOSE")
        .await
        .expect_err("refused");
    assert!(matches!(continuous, Error::Unsupported(_)), "{continuous}");
    // The statement before the failing one took effect.
    assert!(engine.query("SELECT count(*) FROM s").await.is_ok());
    engine.shutdown().await.expect("shutdown");
}
