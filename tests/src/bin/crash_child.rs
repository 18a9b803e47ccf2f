//! The child process of `tests/crash_resume.rs`: opens the data directory
//! given as its argument (resuming its persistent queries), starts the
//! queries that are not there yet, loads the Nexmark events that the log
//! does not hold yet in small keyed batches, appends the flush events, waits
//! until every query has read everything, and exits. The test kills it with
//! SIGKILL at random moments and starts it again.

use std::time::Duration;

use sluice_engine::nexmark::{self, Events};
use sluice_engine::{Durability, Engine, Record};

/// The queries, each emitting every 50 ms so that a kill lands between,
/// or inside, triggers.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "crash_q0",
        "SELECT auction, bidder, price, date_time FROM bid WHERE auction >= 0 \
         EMIT CHANGES EVERY INTERVAL '50' MILLISECOND",
    ),
    (
        "crash_q5",
        "SELECT auction, count(*) AS num, window_start AS starttime \
         FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end, auction \
         EMIT ON WINDOW CLOSE EVERY INTERVAL '50' MILLISECOND",
    ),
    (
        "crash_q7",
        "SELECT max(price) AS maxprice, window_end AS date_time \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
         GROUP BY window_start, window_end \
         EMIT ON WINDOW CLOSE EVERY INTERVAL '50' MILLISECOND",
    ),
    (
        "crash_q12",
        "SELECT bidder, count(*) AS bid_count, avg(price) AS mean, \
           count(DISTINCT auction) AS auctions, window_start, window_end \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
         GROUP BY bidder, window_start, window_end \
         EMIT ON WINDOW CLOSE EVERY INTERVAL '50' MILLISECOND",
    ),
];

/// Events loaded; the flush event goes after them.
pub const EVENTS: usize = 4_000;
const FLUSH_TIME_MS: u64 = nexmark::BASE_TIME_MS + 3_600_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: crash_child DATA_DIR")?;
    let engine = Engine::builder(&dir)
        .durability(Durability::Os)
        .target_partitions(2)
        .open()
        .await?;
    engine.execute(&nexmark::ddl(4)).await?;
    for (name, sql) in QUERIES {
        if engine.query_handle(name).is_ok() {
            continue;
        }
        // A kill between creating the stream and recording the query
        // leaves the stream alone: start again.
        engine
            .execute(&format!("DROP STREAM IF EXISTS {name}"))
            .await?;
        engine
            .start_query(&format!("CREATE STREAM {name} AS {sql}"))
            .await?;
    }

    let events = Events::generate(EVENTS, 100, 50);
    let bid = engine.producer("bid")?;
    let loaded = records_in(&engine, "bid")?;
    for (n, chunk) in events.bid.chunks(40).enumerate() {
        let first = n * 40;
        if first + chunk.len() <= loaded {
            continue;
        }
        // Keyed by position: every run puts each record in the same partition.
        let keyed = chunk
            .iter()
            .enumerate()
            .map(|(i, record)| record.clone().with_key(format!("{}", first + i)))
            .collect();
        bid.send_all(keyed).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if records_in(&engine, "bid")? == events.bid.len() {
        let mut flush = Vec::new();
        for partition in 0..4 {
            let key = (0u32..)
                .map(|n| format!("flush-{n}"))
                .find(|key| {
                    sluice_engine::storage::partitioner::partition_for_key(key.as_bytes(), 4)
                        == partition
                })
                .ok_or("no key for a partition")?;
            flush.push(
                Record::new(format!(
                    r#"{{"auction": -1, "bidder": -1, "price": 0, "date_time": {FLUSH_TIME_MS}}}"#
                ))
                .with_key(key),
            );
        }
        bid.send_all(flush).await?;
    }

    // Wait until every query has read the whole topic.
    for (name, _) in QUERIES {
        engine
            .query_handle(name)?
            .wait_caught_up(Duration::from_secs(120))
            .await?;
    }
    engine.shutdown().await?;
    println!("DONE");
    Ok(())
}

fn records_in(engine: &Engine, topic: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let mut total = 0;
    for partition in 0..engine.storage().partition_count(topic)? {
        let (start, end) = engine.storage().offsets(topic, partition)?;
        total += (end - start) as usize;
    }
    Ok(total)
}
