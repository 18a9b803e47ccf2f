//! A columnar stream: Arrow batches in with `send_batch`, decoded never
//! again, a windowed query out.
//!
//! ```sh
//! cargo run --release -p sluice-engine --example columnar
//! ```

use std::sync::Arc;

use sluice_engine::Engine;
use sluice_engine::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use sluice_engine::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("sluice-columnar-{}", std::process::id()));
    let engine = Engine::open(&dir).await?;
    engine
        .execute(
            "CREATE STREAM bid (auction BIGINT, price BIGINT, date_time TIMESTAMP,
                 WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
             WITH (topic = 'bids_columnar', format = 'arrow', partitions = 4, key = 'auction')",
        )
        .await?;

    // Columns are matched by name: the batch may order them as it likes.
    let schema = Arc::new(Schema::new(vec![
        Field::new("price", DataType::Int64, false),
        Field::new("auction", DataType::Int64, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let base = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![550, 90, 700, 120])),
            Arc::new(Int64Array::from(vec![1, 2, 1, 2])),
            Arc::new(TimestampMillisecondArray::from(vec![
                base,
                base + 3_000,
                base + 5_000,
                base + 12_000,
            ])),
        ],
    )?;
    // Split by the key column's partition, durable when this returns.
    let written = engine.producer("bids_columnar")?.send_batch(batch).await?;
    println!("written: {written:?}");

    let batches = engine
        .query(
            "SELECT auction, window_start, count(*) AS bids, max(price) AS top
             FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
             GROUP BY auction, window_start ORDER BY auction, window_start",
        )
        .await?;
    println!(
        "{}",
        sluice_engine::arrow::util::pretty::pretty_format_batches(&batches)?
    );
    engine.shutdown().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
