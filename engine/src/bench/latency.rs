//! The window-close latency benchmark: how long after the record that
//! closes a window is appended its result is in the output topic.
//!
//! A producer appends Nexmark events in real time (every 10 ms, spread over
//! every partition), with event time running `compression` times faster
//! than the wall clock, so that windows close often. After each append it
//! computes the watermark the way the engine does (the minimum over the
//! source's partitions of their highest event time, minus the delay) and
//! notes when each window end is passed: that append closed the window. A
//! consumer long-polls the query's output topic and notes when each
//! window's first row arrives. The latency of a window is the difference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_storage::{ReadLimits, Record};

use crate::error::{Error, Result};

/// Options of [`run_latency_bench`].
#[derive(Debug, Clone)]
pub struct LatencyBenchOptions {
    /// The query: `q5-core`, `q7-core` or `q12`.
    pub query: String,
    /// Partitions of each topic.
    pub partitions: u32,
    /// Events appended per wall-clock second.
    pub rate: usize,
    /// How long to produce.
    pub seconds: f64,
    /// The query's trigger interval.
    pub trigger_ms: u64,
    /// DataFusion target partitions.
    pub target_partitions: usize,
}

/// What one latency run measured.
#[derive(Debug, Clone)]
pub struct LatencyBenchReport {
    /// Windows whose close and first output row were both seen.
    pub windows: usize,
    /// Windows closed during the run whose result never arrived (windows
    /// with no rows have no result).
    pub missing: usize,
    /// Latencies in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// Event-time seconds per wall-clock second.
    pub compression: f64,
    pub events: usize,
}

impl LatencyBenchReport {
    /// The `q`-quantile latency (nearest rank), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let rank = (q * self.latencies_ms.len() as f64).ceil() as usize;
        self.latencies_ms[rank.clamp(1, self.latencies_ms.len()) - 1]
    }
}

/// Event-time seconds of Nexmark events at the generator's rate: 10,000
/// events per second of event time.
const EVENT_RATE: usize = 10_000;
/// The watermark delay of the Nexmark streams (see [`crate::nexmark::ddl`]).
const DELAY_MS: i64 = 4_000;
const TICK: Duration = Duration::from_millis(10);

/// Where a query's output rows say which window they are of: a column
/// holding the window's end, or its start and the window size.
fn window_end_column(query: &str) -> Option<(&'static str, i64, i64)> {
    // (column, added to it to make the end, the slide: window ends are its multiples)
    match query {
        "q5-core" => Some(("starttime", 10_000, 2_000)),
        "q7-core" => Some(("date_time", 0, 10_000)),
        "q12" => Some(("window_end", 0, 10_000)),
        _ => None,
    }
}

/// Runs `options.query` as a persistent query with an `EVERY
/// trigger_ms` trigger while events are produced in real time, and
/// measures each window's close-to-output latency.
pub async fn run_latency_bench(
    dir: &std::path::Path,
    options: &LatencyBenchOptions,
) -> Result<LatencyBenchReport> {
    let (column, end_offset, slide) = window_end_column(&options.query).ok_or_else(|| {
        Error::InvalidInput(format!(
            "the latency bench runs the windowed queries q5-core, q7-core and q12, not {}",
            options.query
        ))
    })?;
    let sql_text = crate::nexmark::query(&options.query)?;
    let statement = sluice_sql::split_statements(sql_text)?
        .into_iter()
        .map(|s| s.text)
        .find(|s| s.to_ascii_uppercase().contains("SELECT"))
        .ok_or_else(|| Error::Internal(format!("{} has no SELECT", options.query)))?;
    let partitions = options.partitions.max(1);
    let engine = super::nexmark_engine(
        dir,
        options.target_partitions,
        sluice_storage::LogCompression::default(),
        true, // block checksums verified, as by default
        partitions,
        "format = 'json'",
    )
    .await?;
    let handle = engine
        .start_query(&format!(
            "CREATE STREAM latency_out AS {} EVERY INTERVAL '{}' MILLISECOND",
            statement.trim().trim_end_matches(';'),
            options.trigger_ms
        ))
        .await?;
    let sink = handle.sink();
    let output_topic = engine.sql().catalog().require_stream(&sink)?.topic.clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumers = Vec::new();
    for partition in 0..engine.storage().partition_count(&output_topic)? {
        let storage = engine.storage().clone();
        let topic = output_topic.clone();
        let stop = stop.clone();
        consumers.push(tokio::spawn(async move {
            let mut arrivals: HashMap<i64, Instant> = HashMap::new();
            let mut offset = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let fetch = storage
                    .fetch(
                        &topic,
                        partition,
                        offset,
                        ReadLimits::records(10_000),
                        Duration::from_millis(200),
                    )
                    .await?;
                let now = Instant::now();
                offset = fetch.next_offset;
                for record in fetch.records()? {
                    let end = window_end(&record.record.value, column)? + end_offset;
                    arrivals.entry(end).or_insert(now);
                }
            }
            Ok::<_, Error>(arrivals)
        }));
    }

    let storage = engine.storage().clone();
    let produce = options.clone();
    let (closes, events) = tokio::task::spawn_blocking(move || {
        produce_in_real_time(&storage, &produce, partitions, slide)
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    // The last windows' results: a few triggers.
    tokio::time::sleep(Duration::from_millis(20 * options.trigger_ms).max(Duration::from_secs(2)))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // A window's rows may span partitions: its first row counts.
    let mut arrivals: HashMap<i64, Instant> = HashMap::new();
    for consumer in consumers {
        let seen = consumer
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        for (end, arrived) in seen {
            let first = arrivals.entry(end).or_insert(arrived);
            *first = (*first).min(arrived);
        }
    }
    handle.stop().await?;
    engine.shutdown().await?;

    let mut latencies_ms = Vec::new();
    let mut missing = 0;
    for (end, closed) in &closes {
        match arrivals.get(end) {
            Some(arrived) => {
                latencies_ms.push(arrived.saturating_duration_since(*closed).as_secs_f64() * 1e3)
            }
            None => missing += 1,
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    Ok(LatencyBenchReport {
        windows: latencies_ms.len(),
        missing,
        latencies_ms,
        compression: options.rate as f64 / EVENT_RATE as f64,
        events,
    })
}

/// Appends events every [`TICK`] at `options.rate` per second for
/// `options.seconds`; returns when each window end (a multiple of `slide`)
/// was passed by the bid stream's watermark, and how many events went in.
fn produce_in_real_time(
    storage: &sluice_storage::Storage,
    options: &LatencyBenchOptions,
    partitions: u32,
    slide: i64,
) -> Result<(HashMap<i64, Instant>, usize)> {
    let total = (options.rate as f64 * options.seconds) as usize;
    let per_tick = (options.rate as f64 * TICK.as_secs_f64()).ceil().max(1.0) as usize;
    let mut events = crate::nexmark::Events::stream(total, EVENT_RATE, 1);
    let mut bid_max = vec![i64::MIN; partitions as usize];
    let mut watermark = i64::MIN;
    // Windows ending before the first bid have no rows and no result.
    let mut first_bid = i64::MAX;
    let mut closes = HashMap::new();
    let started = Instant::now();
    let mut produced = 0;
    for tick in 0u32.. {
        let mut by_topic: HashMap<&'static str, Vec<Record>> = HashMap::new();
        for (topic, record) in events.by_ref().take(per_tick) {
            by_topic.entry(topic).or_default().push(record);
        }
        if by_topic.is_empty() {
            break;
        }
        for (topic, records) in by_topic {
            produced += records.len();
            let chunk = records.len().div_ceil(partitions as usize);
            for (partition, part) in records.chunks(chunk).enumerate() {
                if topic == "bid" {
                    let newest = part
                        .iter()
                        .map(|r| r.timestamp_ms)
                        .max()
                        .unwrap_or(i64::MIN);
                    bid_max[partition] = bid_max[partition].max(newest);
                    let oldest = part
                        .iter()
                        .map(|r| r.timestamp_ms)
                        .min()
                        .unwrap_or(i64::MAX);
                    first_bid = first_bid.min(oldest);
                }
                storage.append_blocking(topic, partition as u32, part)?;
            }
        }
        let now = Instant::now();
        let low = bid_max.iter().copied().min().unwrap_or(i64::MIN);
        if low != i64::MIN {
            let passed = low - DELAY_MS;
            if watermark != i64::MIN {
                let mut end = watermark.div_euclid(slide) * slide + slide;
                while end <= passed {
                    if end > first_bid {
                        closes.insert(end, now);
                    }
                    end += slide;
                }
            }
            watermark = watermark.max(passed);
        }
        let next = started + TICK * (tick + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok((closes, produced))
}

/// The window time of an output record: `column` of its JSON value.
fn window_end(value: &[u8], column: &str) -> Result<i64> {
    let row: serde_json::Value = serde_json::from_slice(value)
        .map_err(|e| Error::Internal(format!("an output record is not JSON: {e}")))?;
    let text = match row.get(column) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(serde_json::Value::Number(n)) => {
            return n
                .as_i64()
                .ok_or_else(|| Error::Internal(format!("{column}: {n} is not a time")));
        }
        other => {
            return Err(Error::Internal(format!(
                "an output record has no time in {column}: {other:?}"
            )));
        }
    };
    let nanos = datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(&text)
        .map_err(|e| Error::Internal(format!("{column}: {text}: {e}")))?;
    Ok(nanos.div_euclid(1_000_000))
}
