//! The bounded-query benchmark: how close a bounded query over JSON in the
//! log comes to the cost of decoding the same JSON from memory, and how
//! little a `_timestamp` predicate reads.
//!
//! One run: generates Nexmark bids (fixed base time, so runs compare),
//! measures arrow-json decoding them from memory on one core (the limit
//! of any JSON-fed engine), loads them into a topic, then times
//! `SELECT count(*), max(price) FROM bid` and a query on the newest 1% by
//! `_timestamp`, in wall and CPU seconds.

use std::sync::Arc;
use std::time::Instant;

use ::nexmark::config::NexmarkConfig;
use ::nexmark::event::{Event, EventType};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use sluice_sql::{Compression, Format, Output, SqlOptions, columnar_batches};
use sluice_storage::{Durability, LogCompression, Record, Storage};

use crate::engine::Engine;
use crate::error::{Error, Result};

mod latency;

pub use latency::{LatencyBenchOptions, LatencyBenchReport, run_latency_bench};

/// Options of [`run_query_bench`].
#[derive(Debug, Clone)]
pub struct QueryBenchOptions {
    /// Bids to generate and load.
    pub events: usize,
    /// Partitions of the `bids` topic.
    pub partitions: u32,
    /// Records per appended batch.
    pub batch: usize,
    /// DataFusion target partitions (default: cores).
    pub target_partitions: usize,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct QueryBenchReport {
    pub events: usize,
    pub partitions: u32,
    pub bytes: usize,
    /// arrow-json decoding the bids from memory, one core.
    pub decode_limit_rows_per_s: f64,
    /// The same on as many threads as the query uses, per CPU-second.
    pub decode_limit_parallel_rows_per_cpu_s: f64,
    pub query_wall_s: f64,
    pub query_cpu_s: f64,
    pub query_rows_per_s: f64,
    pub query_rows_per_cpu_s: f64,
    /// `query_rows_per_cpu_s / decode_limit_rows_per_s`.
    pub fraction_of_decode_limit: f64,
    /// `query_rows_per_cpu_s / decode_limit_parallel_rows_per_cpu_s`.
    pub fraction_of_parallel_decode_limit: f64,
    pub count: i64,
    pub max_price: i64,
    /// Time the scan threads spent reading the log, and decoding.
    pub read_s: f64,
    pub decode_s: f64,
    /// The newest-1% query: rows matched, batches read of all, wall time.
    pub recent_rows: i64,
    pub recent_batches_read: u64,
    pub total_batches: u64,
    pub recent_wall_s: f64,
}

const BASE_TIME_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Generates `events` Nexmark bids as JSON values, with their event times.
fn generate_bids(events: usize) -> Vec<(i64, Vec<u8>)> {
    let config = NexmarkConfig {
        base_time: BASE_TIME_MS,
        ..NexmarkConfig::default()
    };
    ::nexmark::EventGenerator::new(config)
        .with_type_filter(EventType::Bid)
        .take(events)
        .filter_map(|event| match event {
            Event::Bid(bid) => {
                let value = serde_json::json!({
                    "auction": bid.auction,
                    "bidder": bid.bidder,
                    "price": bid.price,
                    "channel": bid.channel,
                    "url": bid.url,
                    "date_time": bid.date_time,
                    "extra": bid.extra,
                });
                Some((bid.date_time as i64, value.to_string().into_bytes()))
            }
            _ => None,
        })
        .collect()
}

fn bid_schema() -> Schema {
    Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("extra", DataType::Utf8, true),
    ])
}

/// Decodes every value with arrow-json on this thread, as arrow-json's own
/// reader does (one decoder, a batch flushed every 8192 rows); rows per
/// CPU-second of this thread, so that other load on the machine (which
/// stretches wall-clock time) does not lower the limit.
fn decode_limit(bids: &[(i64, Vec<u8>)]) -> Result<f64> {
    let schema = Arc::new(bid_schema());
    let started = sluice_sql::thread_cpu_nanos();
    let mut decoder = ReaderBuilder::new(schema)
        .with_batch_size(8192)
        .build_decoder()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mut rows = 0;
    for chunk in bids.chunks(8192) {
        for (_, value) in chunk {
            decoder
                .decode(value)
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        if let Some(batch) = decoder
            .flush()
            .map_err(|e| Error::Internal(e.to_string()))?
        {
            rows += batch.num_rows();
        }
    }
    let cpu_s = sluice_sql::thread_cpu_nanos().saturating_sub(started) as f64 / 1e9;
    Ok(rows as f64 / cpu_s.max(1e-9))
}

/// The bid columns a query reads (what a scan of a JSON stream decodes),
/// for the queries over bids.
fn bid_columns(query: &str) -> Option<&'static [&'static str]> {
    Some(match query {
        "q0" | "q1" => &["auction", "bidder", "price", "date_time"],
        "q2" => &["auction", "price"],
        "q5-core" => &["auction", "date_time"],
        "q7-core" => &["price", "date_time"],
        "q12" => &["bidder", "date_time"],
        _ => return None,
    })
}

/// Decodes the `columns` of every value with the projecting decoder that
/// scans of JSON streams use (`sluice_sql::decode_json_projected`), on this
/// thread, in chunks of 8192; rows per CPU-second of this thread. The
/// decoder's own cost, beside [`decode_limit`]'s full decode.
fn projected_decode_rate(bids: &[(i64, Vec<u8>)], columns: &[&str]) -> Result<f64> {
    let full = bid_schema();
    let fields = columns
        .iter()
        .map(|name| {
            full.field_with_name(name)
                .cloned()
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = Arc::new(Schema::new(fields));
    let started = sluice_sql::thread_cpu_nanos();
    let mut rows = 0;
    for chunk in bids.chunks(8192) {
        let batch =
            sluice_sql::decode_json_projected(&schema, chunk.iter().map(|(_, v)| v.as_slice()))
                .ok_or_else(|| Error::Internal("the projecting decoder refused a bid".into()))?;
        rows += batch.num_rows();
    }
    let cpu_s = sluice_sql::thread_cpu_nanos().saturating_sub(started) as f64 / 1e9;
    Ok(rows as f64 / cpu_s.max(1e-9))
}

/// The median of five measurements: the machine's speed wanders from run
/// to run (a virtual machine).
fn median_of_five(mut measure: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut figures = (0..5).map(|_| measure()).collect::<Result<Vec<f64>>>()?;
    figures.sort_by(f64::total_cmp);
    Ok(figures[2])
}

/// Decodes every value with arrow-json on `threads` threads at once;
/// rows per CPU-second. On a machine whose cores share execution units,
/// this is the per-core limit under the same load a parallel query sees.
fn decode_limit_parallel(bids: &[(i64, Vec<u8>)], threads: usize) -> Result<f64> {
    let threads = threads.max(1);
    let part = bids.len().div_ceil(threads).max(1);
    let cpu_before = process_cpu_s();
    let rows_per_s: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bids
            .chunks(part)
            .map(|slice| scope.spawn(move || decode_limit(slice)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("decode thread panicked".into())))
            })
            .collect()
    });
    for rate in rows_per_s {
        rate?;
    }
    let cpu_s = process_cpu_s() - cpu_before;
    Ok(bids.len() as f64 / cpu_s.max(1e-9))
}

/// CPU seconds used by this process so far.
fn process_cpu_s() -> f64 {
    let Some(usage) = process_usage() else {
        return 0.0;
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The page faults the process has taken (minor and major).
fn process_page_faults() -> u64 {
    process_usage().map_or(0, |usage| (usage.ru_minflt + usage.ru_majflt) as u64)
}

fn process_usage() -> Option<libc::rusage> {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    ok.then_some(usage)
}

fn single_i64(output: &Output, column: usize) -> Result<i64> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let Output::Rows(rows) = output else {
        return Err(Error::Internal("the bench query returned no rows".into()));
    };
    let batch = rows
        .batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::Internal("empty bench result".into()))?;
    let array = batch
        .column(column)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::Internal("bench result is not BIGINT".into()))?;
    Ok(array.value(0))
}

/// Runs the bench in `dir` (which should be empty).
pub async fn run_query_bench(
    dir: &std::path::Path,
    options: &QueryBenchOptions,
) -> Result<QueryBenchReport> {
    let bids = generate_bids(options.events);
    let bytes: usize = bids.iter().map(|(_, v)| v.len()).sum();
    // The first pass warms the allocator; the limit is the steady state.
    let decode_limit_rows_per_s = decode_limit(&bids)?.max(decode_limit(&bids)?);
    let decode_limit_parallel_rows_per_cpu_s =
        decode_limit_parallel(&bids, options.target_partitions)?;

    let engine = Engine::builder(dir)
        .durability(Durability::Os)
        .target_partitions(options.target_partitions)
        .open()
        .await?;
    engine
        .execute(&format!(
            "CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
             url VARCHAR, date_time TIMESTAMP, extra VARCHAR, \
             WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) \
             WITH (topic = 'bids', format = 'json', partitions = {})",
            options.partitions
        ))
        .await?;
    let storage: Storage = engine.storage().clone();
    let partitions = options.partitions.max(1);
    let batch = options.batch.max(1);
    let mut total_batches = 0u64;
    let load = {
        let storage = storage.clone();
        move || -> sluice_storage::Result<u64> {
            let mut batches = 0;
            for (n, chunk) in bids.chunks(batch).enumerate() {
                let records: Vec<Record> = chunk
                    .iter()
                    .map(|(time, value)| Record::new(value.clone()).with_timestamp(*time))
                    .collect();
                storage.append_blocking("bids", n as u32 % partitions, &records)?;
                batches += 1;
            }
            Ok(batches)
        }
    };
    total_batches += tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    // Queries read table files, with no compaction competing for the CPU.
    let settling = storage.clone();
    tokio::task::spawn_blocking(move || settling.settle())
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;

    let sql = engine.sql().clone();
    let parse = |text: &str| -> Result<sluice_sql::StreamingQuery> {
        match sluice_sql::parse_sql(text)?.remove(0) {
            sluice_sql::Statement::Query(query) => Ok(query),
            _ => Err(Error::Internal("not a query".into())),
        }
    };
    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let planned = sql
        .plan_query(&parse("SELECT count(*), max(price) FROM bid")?)
        .await?;
    let scan = planned.report.clone();
    let output = Output::Rows(sql.collect_planned(planned).await?);
    let query_wall_s = started.elapsed().as_secs_f64();
    let query_cpu_s = process_cpu_s() - cpu_before;
    let count = single_i64(&output, 0)?;
    let max_price = single_i64(&output, 1)?;

    // The newest 1% by record timestamp.
    let range = engine
        .query(
            "SELECT arrow_cast(min(_timestamp), 'Int64'), arrow_cast(max(_timestamp), 'Int64') \
             FROM bid",
        )
        .await?;
    let (first_ms, last_ms) = {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let batch = range
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::Internal("no timestamp range".into()))?;
        let column = |i: usize| {
            batch
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0))
                .ok_or_else(|| Error::Internal("timestamp range is not BIGINT".into()))
        };
        (column(0)?, column(1)?)
    };
    let threshold = last_ms - (last_ms - first_ms) / 100;
    let query = parse(&format!(
        "SELECT count(*) FROM bid WHERE _timestamp >= arrow_cast({threshold}, 'Timestamp(ms)')"
    ))?;
    let started = Instant::now();
    let planned = sql.plan_query(&query).await?;
    let report = planned.report.clone();
    let recent = sql.collect_planned(planned).await?;
    let recent_wall_s = started.elapsed().as_secs_f64();
    let recent_rows = single_i64(&Output::Rows(recent), 0)?;
    engine.shutdown().await?;

    let query_rows_per_cpu_s = count as f64 / query_cpu_s.max(1e-9);
    Ok(QueryBenchReport {
        events: options.events,
        partitions,
        bytes,
        decode_limit_rows_per_s,
        decode_limit_parallel_rows_per_cpu_s,
        query_wall_s,
        query_cpu_s,
        query_rows_per_s: count as f64 / query_wall_s.max(1e-9),
        query_rows_per_cpu_s,
        fraction_of_decode_limit: query_rows_per_cpu_s / decode_limit_rows_per_s,
        fraction_of_parallel_decode_limit: query_rows_per_cpu_s
            / decode_limit_parallel_rows_per_cpu_s,
        count,
        max_price,
        read_s: scan.read_time().as_secs_f64(),
        decode_s: scan.decode_time().as_secs_f64(),
        recent_rows,
        recent_batches_read: report.batches_read(),
        total_batches,
        recent_wall_s,
    })
}

impl QueryBenchOptions {
    /// Defaults: 2M bids, 4 partitions, 1000 per batch, all cores.
    pub fn new(events: usize) -> Self {
        QueryBenchOptions {
            events,
            partitions: 4,
            batch: 1000,
            target_partitions: SqlOptions::default().target_partitions,
        }
    }
}

/// Options of [`run_nexmark_bench`].
#[derive(Debug, Clone)]
pub struct NexmarkBenchOptions {
    /// The query: a name of [`crate::nexmark::QUERIES`].
    pub query: String,
    /// Events to generate (persons, auctions and bids together).
    pub events: usize,
    /// Partitions of each topic.
    pub partitions: u32,
    /// DataFusion target partitions (default: cores).
    pub target_partitions: usize,
    /// The query's `max_records_per_trigger` (none: the query's default,
    /// [`sluice_sql::analysis::DEFAULT_MAX_RECORDS_PER_TRIGGER`]).
    pub max_records_per_trigger: Option<u64>,
    /// The streams' format: `json` (decoded by every query) or `arrow`
    /// (decoded once, when loaded).
    pub format: Format,
    /// Arrow streams: the IPC compression of their columns.
    pub compression: Compression,
    /// How the log's table files are compressed.
    pub log_compression: LogCompression,
    /// Records per append while loading (one stored batch per partition
    /// and append); `None`: 8,192 rows for arrow streams, 1,000 records
    /// for JSON.
    pub batch_rows: Option<usize>,
    /// Whether reads verify RocksDB's block checksums (the default).
    pub verify_checksums: bool,
}

/// What one Nexmark run measured.
#[derive(Debug, Clone)]
pub struct NexmarkBenchReport {
    pub query: String,
    pub events: usize,
    pub partitions: u32,
    /// Events in the topics the query reads.
    pub events_read: u64,
    pub wall_s: f64,
    pub cpu_s: f64,
    pub events_per_s: f64,
    pub events_per_cpu_s: f64,
    /// arrow-json decoding the bids from memory on one core, same run.
    pub decode_limit_events_per_s: f64,
    /// `arrow` streams: DataFusion running the query's shape as one batch
    /// query over the same bids as in-memory Arrow batches, per CPU-second
    /// (none for queries without a batch form here).
    pub batch_events_per_cpu_s: Option<f64>,
    /// `json` streams: the projecting decoder alone decoding the columns
    /// the query reads from the same bids in memory, on one core (median of
    /// five), so the decoder's share of the query is visible.
    pub projected_decode_events_per_s: Option<f64>,
    pub output_rows: u64,
    /// Peak resident memory while the query ran (the load excluded).
    pub peak_rss_bytes: u64,
    /// Resident memory after the query caught up.
    pub end_rss_bytes: u64,
    /// Page faults the process took while the query ran (minor and
    /// major): fresh memory touched, and table-file pages mapped.
    pub page_faults: u64,
    pub triggers: u64,
    pub load_s: f64,
    /// The table files of the loaded data, in bytes, once flushed and
    /// compacted (what `log_compression` changes).
    pub table_file_bytes: u64,
}

/// Generates `options.events` Nexmark events (fixed base time), loads them
/// into `person`, `auction` and `bid`, closes every window with one
/// far-future event per partition, then runs the query as persistent
/// queries from `earliest` until they have read everything, and measures
/// that run alone.
pub async fn run_nexmark_bench(
    dir: &std::path::Path,
    options: &NexmarkBenchOptions,
) -> Result<NexmarkBenchReport> {
    let sql_text = crate::nexmark::query(&options.query)?;
    let partitions = options.partitions.max(1);
    let mut settings = format!("format = '{}'", options.format.as_str());
    if options.format == Format::Arrow {
        settings.push_str(&format!(
            ", compression = '{}'",
            options.compression.as_str()
        ));
    }
    let engine = nexmark_engine(
        dir,
        options.target_partitions,
        options.log_compression,
        options.verify_checksums,
        partitions,
        &settings,
    )
    .await?;
    let sql = engine.sql().clone();
    let load_started = Instant::now();
    let (events, batch_rows) = (options.events, options.batch_rows);
    let (counts, sample) =
        tokio::task::spawn_blocking(move || load_nexmark(&sql, events, partitions, batch_rows))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
    let settling = engine.storage().clone();
    tokio::task::spawn_blocking(move || settling.settle())
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let load_s = load_started.elapsed().as_secs_f64();
    let table_file_bytes = engine.storage().table_file_bytes()?;
    let decode_limit_events_per_s = median_of_five(|| decode_limit(&sample))?;
    let batch_events_per_cpu_s = match options.format {
        Format::Arrow => batch_figure(&options.query, &sample, options.target_partitions).await?,
        _ => None,
    };
    let projected_decode_events_per_s = match (options.format, bid_columns(&options.query)) {
        (Format::Json, Some(columns)) => {
            Some(median_of_five(|| projected_decode_rate(&sample, columns))?)
        }
        _ => None,
    };
    drop(sample);

    let statements: Vec<String> = sluice_sql::split_statements(sql_text)?
        .into_iter()
        .map(|s| s.text)
        .filter(|s| s.to_ascii_uppercase().contains("SELECT"))
        .collect();
    reset_peak_rss();
    let cpu_before = process_cpu_s();
    let faults_before = process_page_faults();
    let started = Instant::now();
    // Push queries, as Nexmark runs elsewhere use a blackhole sink: the
    // rows are counted and dropped.
    let mut subscriptions = Vec::new();
    for statement in &statements {
        let statement = match options.max_records_per_trigger {
            Some(max) => format!("{statement} WITH (max_records_per_trigger = {max})"),
            None => statement.clone(),
        };
        subscriptions.push(engine.subscribe(&statement).await?);
    }
    let mut events_read = 0;
    let mut output_rows = 0u64;
    let mut triggers = 0;
    for subscription in &mut subscriptions {
        let (rows, last) = drain_subscription(&engine, subscription).await?;
        output_rows += rows;
        triggers += last.batch_id + 1;
        if let Some(source) = last.sources.first() {
            events_read += counts.get(&source.topic).copied().unwrap_or(0);
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu_before;
    let page_faults = process_page_faults() - faults_before;
    let peak_rss_bytes = peak_rss();
    let end_rss_bytes = current_rss();
    drop(subscriptions);
    engine.shutdown().await?;
    Ok(NexmarkBenchReport {
        query: options.query.clone(),
        events: options.events,
        partitions,
        events_read,
        wall_s,
        cpu_s,
        events_per_s: events_read as f64 / wall_s.max(1e-9),
        events_per_cpu_s: events_read as f64 / cpu_s.max(1e-9),
        decode_limit_events_per_s,
        batch_events_per_cpu_s,
        projected_decode_events_per_s,
        output_rows,
        peak_rss_bytes,
        end_rss_bytes,
        page_faults,
        triggers,
        load_s,
        table_file_bytes,
    })
}

/// An engine in `dir` (`os` durability, `log_compression`, block checksums
/// verified or not) with the Nexmark streams on topics of `partitions`
/// partitions, with `settings` (format and compression) in their `WITH`.
async fn nexmark_engine(
    dir: &std::path::Path,
    target_partitions: usize,
    log_compression: LogCompression,
    verify_checksums: bool,
    partitions: u32,
    settings: &str,
) -> Result<Engine> {
    let engine = Engine::builder(dir)
        .durability(Durability::Os)
        .target_partitions(target_partitions)
        .log_compression(log_compression)
        .verify_checksums(verify_checksums)
        .open()
        .await?;
    engine
        .execute(&crate::nexmark::ddl_with(partitions, settings))
        .await?;
    Ok(engine)
}

/// The shape of a Nexmark query as a batch query in plain DataFusion SQL
/// over a table `bid` (windows by integer arithmetic on epoch ms).
fn batch_sql(query: &str) -> Option<&'static str> {
    Some(match query {
        "q0" => "SELECT auction, bidder, price, date_time FROM bid",
        "q1" => "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
        "q2" => {
            "SELECT auction, price FROM bid WHERE auction = 1007 OR auction = 1020 \
             OR auction = 2001 OR auction = 2019 OR auction = 2087"
        }
        "q7-core" => {
            "SELECT max(price) AS maxprice, t - t % 10000 + 10000 AS date_time \
             FROM (SELECT price, CAST(date_time AS BIGINT) AS t FROM bid) GROUP BY 2"
        }
        "q12" => {
            "SELECT bidder, count(*) AS bid_count, t - t % 10000 AS window_start \
             FROM (SELECT bidder, CAST(date_time AS BIGINT) AS t FROM bid) GROUP BY 1, 3"
        }
        "q5-core" => {
            "SELECT auction, count(*) AS num, p - k * 2000 AS starttime \
             FROM (SELECT auction, CAST(date_time AS BIGINT) - CAST(date_time AS BIGINT) % 2000 \
                   AS p FROM bid) CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS hops(k) \
             GROUP BY 1, 3"
        }
        _ => return None,
    })
}

/// DataFusion running [`batch_sql`] over `bids` decoded once into Arrow
/// batches held in memory: bids per CPU-second (the decoding excluded).
async fn batch_figure(query: &str, bids: &[TimedValue], threads: usize) -> Result<Option<f64>> {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    let Some(sql) = batch_sql(query) else {
        return Ok(None);
    };
    let schema = Arc::new(bid_schema());
    let mut batches = Vec::new();
    for chunk in bids.chunks(8192) {
        let values: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_slice()).collect();
        batches.push(decode_json(&schema, &values)?);
    }
    let threads = threads.max(1);
    let per_partition = batches.len().div_ceil(threads).max(1);
    let partitions: Vec<Vec<_>> = batches.chunks(per_partition).map(<[_]>::to_vec).collect();
    let internal = |e: datafusion::error::DataFusionError| Error::Internal(e.to_string());
    let table = MemTable::try_new(schema, partitions).map_err(internal)?;
    let context =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    context
        .register_table("bid", Arc::new(table))
        .map_err(internal)?;
    let cpu_before = process_cpu_s();
    let frame = context.sql(sql).await.map_err(internal)?;
    let rows: usize = frame
        .collect()
        .await
        .map_err(internal)?
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let cpu_s = process_cpu_s() - cpu_before;
    if rows == 0 {
        return Err(Error::Internal(format!(
            "the batch form of {query} gave no rows"
        )));
    }
    Ok(Some(bids.len() as f64 / cpu_s.max(1e-9)))
}

/// JSON values decoded by arrow-json into one batch of `schema`.
fn decode_json(
    schema: &Arc<Schema>,
    values: &[&[u8]],
) -> Result<datafusion::arrow::record_batch::RecordBatch> {
    let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(e.to_string());
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(values.len().max(1))
        .build_decoder()
        .map_err(internal)?;
    for value in values {
        decoder.decode(value).map_err(internal)?;
    }
    Ok(decoder
        .flush()
        .map_err(internal)?
        .unwrap_or_else(|| datafusion::arrow::record_batch::RecordBatch::new_empty(schema.clone())))
}

/// Counts a push query's rows until it has read everything its source
/// holds; returns the rows and its last progress.
async fn drain_subscription(
    engine: &Engine,
    subscription: &mut crate::Subscription,
) -> Result<(u64, crate::Progress)> {
    use futures::StreamExt;
    let mut rows = 0u64;
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(5), subscription.next()).await {
            Ok(Some(batch)) => rows += batch?.num_rows() as u64,
            Ok(None) => {
                return Err(Error::Internal("the push query ended early".into()));
            }
            Err(_) => {
                // No rows for a moment: done if the last trigger read to
                // the end (its rows come before its progress).
                if let Some(progress) = subscription.progress() {
                    let mut done = !progress.sources.is_empty();
                    for source in &progress.sources {
                        let (_, end) = engine.storage().offsets(&source.topic, source.partition)?;
                        done &= source.end_offset == end;
                    }
                    if done {
                        // Its rows reached the channel before its progress.
                        while let Some(Some(batch)) =
                            futures::FutureExt::now_or_never(subscription.next())
                        {
                            rows += batch?.num_rows() as u64;
                        }
                        return Ok((rows, progress));
                    }
                }
            }
        }
    }
}

/// Records per topic.
type RecordCounts = std::collections::HashMap<String, u64>;
/// A record's timestamp and value.
type TimedValue = (i64, Vec<u8>);

/// Loads the events straight into the partitions, round robin, 1,000
/// records per append (JSON streams) or 8,192 rows per columnar batch,
/// decoded once here (`arrow` streams); returns the records per topic and
/// up to 1M bids (value bytes) to measure the decode limit on.
fn load_nexmark(
    sql: &sluice_sql::SqlContext,
    events: usize,
    partitions: u32,
    batch_rows: Option<usize>,
) -> Result<(RecordCounts, Vec<TimedValue>)> {
    use std::collections::HashMap;
    const SAMPLE: usize = 1_000_000;
    let storage = sql.storage();
    let columnar = |topic: &str| sql.catalog().columnar_stream_for_topic(topic);
    let batch = match batch_rows {
        Some(rows) => rows.max(1),
        None if columnar("bid").is_some() => 8192,
        None => 1000,
    };
    let mut pending: HashMap<&'static str, Vec<Record>> = HashMap::new();
    let mut next_partition: HashMap<&'static str, u32> = HashMap::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut sample = Vec::new();
    let append = |topic: &str, partition: u32, records: &[Record]| -> Result<()> {
        let Some(def) = columnar(topic) else {
            storage.append_blocking(topic, partition, records)?;
            return Ok(());
        };
        let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
        let rows = decode_json(&def.value_schema, &values)?;
        let mut write = sluice_storage::AtomicWrite::new();
        // Without a key column the batches are the rows in order.
        let mut first = 0;
        for (partition, count, columns) in columnar_batches(&def, &rows, partitions, partition)? {
            let timestamps = records[first..first + count]
                .iter()
                .map(|r| r.timestamp_ms)
                .collect();
            first += count;
            write.append_columnar(topic.to_string(), partition, timestamps, columns);
        }
        storage.commit_blocking(write)?;
        Ok(())
    };
    let flush =
        |topic: &'static str, records: Vec<Record>, next: &mut HashMap<&'static str, u32>| {
            let partition = next.entry(topic).or_insert(0);
            let result = append(topic, *partition % partitions, &records);
            *partition += 1;
            result
        };
    let generated = crate::nexmark::Events::stream(events, 10_000, 1);
    for (topic, record) in generated {
        *counts.entry(topic.to_string()).or_insert(0) += 1;
        if topic == "bid" && sample.len() < SAMPLE {
            sample.push((record.timestamp_ms, record.value.clone()));
        }
        let buffer = pending.entry(topic).or_default();
        buffer.push(record);
        if buffer.len() == batch {
            let records = std::mem::take(buffer);
            flush(topic, records, &mut next_partition)?;
        }
    }
    for (topic, records) in pending.drain() {
        if !records.is_empty() {
            flush(topic, records, &mut next_partition)?;
        }
    }
    // One far-future event per partition closes every window.
    let far = crate::nexmark::BASE_TIME_MS as i64 + 365 * 24 * 3_600_000;
    for partition in 0..partitions {
        for (topic, value) in [
            (
                "bid",
                format!(r#"{{"auction": -1, "bidder": -1, "price": 0, "date_time": {far}}}"#),
            ),
            (
                "person",
                format!(r#"{{"id": -1, "name": "", "date_time": {far}}}"#),
            ),
            (
                "auction",
                format!(r#"{{"id": -1, "seller": -1, "date_time": {far}}}"#),
            ),
        ] {
            append(topic, partition, &[Record::new(value).with_timestamp(far)])?;
            *counts.entry(topic.to_string()).or_insert(0) += 1;
        }
    }
    Ok((counts, sample))
}

/// Linux: the peak resident set since the last [`reset_peak_rss`].
fn peak_rss() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

fn current_rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// Linux: restarts the peak resident set count (`clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
