//! Nexmark data for tests and benchmarks: the `person`, `auction` and
//! `bid` streams in the RisingWave schema, events generated
//! deterministically by the `nexmark` crate from a fixed base time, and the
//! queries under `tests/nexmark/`.

use ::nexmark::config::NexmarkConfig;
use ::nexmark::event::Event;
use sluice_storage::Record;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// 2026-01-01T00:00:00Z: events are generated from here, every run alike.
pub const BASE_TIME_MS: u64 = 1_767_225_600_000;

/// The queries of `tests/nexmark/`, by name, in the RisingWave spelling.
pub const QUERIES: &[(&str, &str)] = &[
    ("q0", include_str!("../../tests/nexmark/q0.sql")),
    ("q1", include_str!("../../tests/nexmark/q1.sql")),
    ("q2", include_str!("../../tests/nexmark/q2.sql")),
    ("q5-core", include_str!("../../tests/nexmark/q5-core.sql")),
    ("q7-core", include_str!("../../tests/nexmark/q7-core.sql")),
    ("q8-core", include_str!("../../tests/nexmark/q8-core.sql")),
    ("q12", include_str!("../../tests/nexmark/q12.sql")),
];

/// The SQL of a query by name (`q5-core`, ...).
pub fn query(name: &str) -> Result<&'static str> {
    QUERIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sql)| *sql)
        .ok_or_else(|| {
            let known: Vec<&str> = QUERIES.iter().map(|(n, _)| *n).collect();
            Error::NotFound(format!(
                "unknown Nexmark query \"{name}\" (known: {})",
                known.join(", ")
            ))
        })
}

/// The three streams, on topics of `partitions` partitions, with a
/// 4-second watermark delay as in RisingWave's Nexmark.
pub fn ddl(partitions: u32) -> String {
    ddl_as(partitions, "json")
}

/// [`ddl`] with streams of `format` (`json` or `arrow`).
pub fn ddl_as(partitions: u32, format: &str) -> String {
    ddl_with(partitions, &format!("format = '{format}'"))
}

/// [`ddl`] with `settings` (say `format = 'arrow', compression = 'lz4'`)
/// in each stream's `WITH`.
pub fn ddl_with(partitions: u32, settings: &str) -> String {
    format!(
        "CREATE STREAM IF NOT EXISTS person (id BIGINT, name VARCHAR, email_address VARCHAR, \
           credit_card VARCHAR, city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR, \
           WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
         WITH (topic = 'person', {settings}, partitions = {partitions});
         CREATE STREAM IF NOT EXISTS auction (id BIGINT, item_name VARCHAR, description VARCHAR, \
           initial_bid BIGINT, reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, \
           seller BIGINT, category BIGINT, extra VARCHAR, \
           WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
         WITH (topic = 'auction', {settings}, partitions = {partitions});
         CREATE STREAM IF NOT EXISTS bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
           url VARCHAR, date_time TIMESTAMP, extra VARCHAR, \
           WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
         WITH (topic = 'bid', {settings}, partitions = {partitions});"
    )
}

/// Generated events, as JSON record values per topic.
#[derive(Debug, Default)]
pub struct Events {
    pub person: Vec<Record>,
    pub auction: Vec<Record>,
    pub bid: Vec<Record>,
}

impl Events {
    /// `count` events at `rate` events per second of event time, emitted in
    /// groups of `disorder` events in shuffled order (1: in order).
    pub fn generate(count: usize, rate: usize, disorder: usize) -> Events {
        let mut events = Events::default();
        for (topic, record) in Events::stream(count, rate, disorder) {
            match topic {
                "person" => events.person.push(record),
                "auction" => events.auction.push(record),
                _ => events.bid.push(record),
            }
        }
        events
    }

    /// `count` events as `(topic, record)`, generated as they are taken,
    /// so that millions need not be held at once.
    pub fn stream(
        count: usize,
        rate: usize,
        disorder: usize,
    ) -> impl Iterator<Item = (&'static str, Record)> {
        ::nexmark::EventGenerator::new(config(rate, disorder))
            .take(count)
            .map(to_record)
    }

    /// Every event.
    pub fn len(&self) -> usize {
        self.person.len() + self.auction.len() + self.bid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the events to their topics, `batch` records per write,
    /// spread round-robin over the partitions.
    pub async fn load(&self, engine: &Engine, batch: usize) -> Result<()> {
        for (topic, records) in [
            ("person", &self.person),
            ("auction", &self.auction),
            ("bid", &self.bid),
        ] {
            let producer = engine.producer(topic)?;
            for chunk in records.chunks(batch.max(1)) {
                producer.send_all(chunk.to_vec()).await?;
            }
        }
        Ok(())
    }
}

fn config(rate: usize, disorder: usize) -> NexmarkConfig {
    NexmarkConfig {
        base_time: BASE_TIME_MS,
        first_rate: rate.max(1),
        next_rate: rate.max(1),
        out_of_order_group_size: disorder.max(1),
        ..NexmarkConfig::default()
    }
}

/// An event as a JSON record of its topic, timestamped with its event time.
fn to_record(event: Event) -> (&'static str, Record) {
    match event {
        Event::Person(p) => (
            "person",
            record(
                p.date_time,
                serde_json::json!({
                    "id": p.id, "name": p.name, "email_address": p.email_address,
                    "credit_card": p.credit_card, "city": p.city, "state": p.state,
                    "date_time": p.date_time, "extra": p.extra,
                }),
            ),
        ),
        Event::Auction(a) => (
            "auction",
            record(
                a.date_time,
                serde_json::json!({
                    "id": a.id, "item_name": a.item_name, "description": a.description,
                    "initial_bid": a.initial_bid, "reserve": a.reserve,
                    "date_time": a.date_time, "expires": a.expires, "seller": a.seller,
                    "category": a.category, "extra": a.extra,
                }),
            ),
        ),
        Event::Bid(b) => (
            "bid",
            record(
                b.date_time,
                serde_json::json!({
                    "auction": b.auction, "bidder": b.bidder, "price": b.price,
                    "channel": b.channel, "url": b.url, "date_time": b.date_time,
                    "extra": b.extra,
                }),
            ),
        ),
    }
}

fn record(date_time: u64, value: serde_json::Value) -> Record {
    Record::new(value.to_string().into_bytes()).with_timestamp(date_time as i64)
}
