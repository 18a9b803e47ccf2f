//! A first Sluice program: a stream over a topic, records in, a windowed
//! bounded query out.
//!
//! ```sh
//! cargo run --release -p sluice-engine --example bounded
//! ```

use sluice_engine::{Engine, Record};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("sluice-example-{}", std::process::id()));
    let engine = Engine::open(&dir).await?;
    engine
        .execute(
            "CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH (topic = 'bids', format = 'json', partitions = 4, key = 'auction');
             INSERT INTO bid VALUES (1, 7, 550, '2026-01-01T00:00:00Z'), (2, 8, 90, '2026-01-01T00:00:03Z');",
        )
        .await?;
    engine
        .producer("bids")?
        .send(Record::new(
            r#"{"auction": 1, "bidder": 9, "price": 700, "date_time": 1767225605000}"#,
        ))
        .await?;

    // A bounded query: runs once over a snapshot of the topic.
    let batches = engine
        .query(
            "SELECT auction, window_start, count(*) AS bids, max(price) AS top
             FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
             GROUP BY auction, window_start ORDER BY auction",
        )
        .await?;
    println!(
        "{}",
        sluice_engine::arrow::util::pretty::pretty_format_batches(&batches)?
    );
    engine.shutdown().await?;
    drop(engine);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
