//! A continuous query from Rust: a persistent windowed aggregate that
//! writes to a stream exactly once, and a push query that prints the rows
//! as they come.
//!
//! ```text
//! cargo run -p sluice-engine --example continuous
//! ```

use std::time::Duration;

use futures::StreamExt;
use sluice_engine::arrow::util::pretty::pretty_format_batches;
use sluice_engine::{Engine, Record};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path()).await?;
    engine
        .execute(
            "CREATE STREAM bid (auction BIGINT, price BIGINT, date_time TIMESTAMP, \
               WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) \
             WITH (topic = 'bids', partitions = 1)",
        )
        .await?;

    // A persistent query: each 10-second window's bids per auction, written
    // to the stream `auction_counts` once the watermark closes the window.
    let query = engine
        .start_query(
            "CREATE STREAM auction_counts AS \
             SELECT auction, window_start, count(*) AS bids, max(price) AS top \
             FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
             GROUP BY auction, window_start, window_end \
             EMIT ON WINDOW CLOSE EVERY INTERVAL '100' MILLISECOND",
        )
        .await?;

    // A push query: every bid over 50, as it arrives.
    let mut big = engine
        .subscribe("SELECT auction, price FROM bid WHERE price > 50 EMIT CHANGES EVERY INTERVAL '100' MILLISECOND")
        .await?;

    let producer = engine.producer("bids")?;
    for (second, auction, price) in [(1, 1, 10), (3, 1, 70), (4, 2, 20), (9, 2, 55), (12, 1, 5)] {
        let value = format!(
            r#"{{"auction": {auction}, "price": {price}, "date_time": "2026-01-01T00:00:{second:02}Z"}}"#
        );
        producer.send(Record::new(value)).await?;
    }

    // The bid at 00:00:12 moved the watermark to 00:00:11: [00:00, 00:10) closed.
    query.wait_caught_up(Duration::from_secs(10)).await?;
    let closed = engine
        .query("SELECT * FROM auction_counts ORDER BY auction")
        .await?;
    println!("closed windows:\n{}", pretty_format_batches(&closed)?);
    println!("progress: {:?}", query.progress());

    let mut seen = 0;
    while seen < 2 {
        if let Some(batch) = big.next().await {
            let batch = batch?;
            seen += batch.num_rows();
            println!("push query rows:\n{}", pretty_format_batches(&[batch])?);
        }
    }
    drop(big);
    query.stop().await?;
    engine.shutdown().await?;
    Ok(())
}
