//! `sluice bench`: measurements printed as one JSON object per run (SPEC §7).

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use sluice_engine::bench::{
    LatencyBenchOptions, NexmarkBenchOptions, QueryBenchOptions, run_latency_bench,
    run_nexmark_bench, run_query_bench,
};
use sluice_engine::storage::Durability;
use sluice_engine::storage::bench::{IngestBenchOptions, run_ingest};

/// Arguments of `sluice bench ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Records to append in all.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records per appended batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// `os` or `fsync`.
    #[arg(long, default_value = "fsync", value_parser = crate::parse_durability)]
    durability: Durability,
    /// Run through the HTTP API of a server the bench starts.
    #[arg(long)]
    http: bool,
    /// Directory for the bench's data (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub(crate) fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    if args.http {
        return ingest_http(&args);
    }
    let options = IngestBenchOptions {
        records: args.records,
        record_bytes: args.size,
        partitions: args.partitions,
        batch: args.batch,
        writers: args.writers,
        durability: args.durability,
    };
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let report = run_ingest(&dir, &options).context("running the ingest bench")?;
    let output = json!({
        "bench": "ingest",
        "durability": options.durability.as_str(),
        "records": options.records,
        "record_bytes": options.record_bytes,
        "partitions": options.partitions,
        "batch": options.batch,
        "writers": options.writers,
        "http": false,
        "wall_s": report.elapsed.as_secs_f64(),
        "records_per_s": report.records_per_s.round(),
        "mb_per_s": (report.mb_per_s * 10.0).round() / 10.0,
        "baseline_records_per_s": report.baseline_records_per_s.round(),
        "ratio_to_baseline": (report.records_per_s / report.baseline_records_per_s * 1000.0).round() / 1000.0,
        "read_records_per_s": report.read_records_per_s.round(),
    });
    println!("{output}");
    Ok(())
}

/// `sluice bench ingest --http`: the library figure first, then the same
/// records through `POST /v1/topics/bench/records` of a `sluice server`
/// the bench starts (a child process on a free loopback port), from
/// `writers` concurrent clients, each request `batch` NDJSON values.
fn ingest_http(args: &IngestArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    if args.records == 0 || args.batch == 0 || args.writers == 0 || args.partitions == 0 {
        bail!("--records, --batch, --writers and --partitions must all be positive");
    }
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let options = IngestBenchOptions {
        records: args.records,
        record_bytes: args.size,
        partitions: args.partitions,
        batch: args.batch,
        writers: args.writers,
        durability: args.durability,
    };
    let library = run_ingest(&dir.join("library"), &options).context("the library run")?;

    // A JSON value of `size` bytes: {"pad":"..."}.
    let padding = args.size.saturating_sub(r#"{"pad":""}"#.len()).max(1);
    let pad: String = (0..padding)
        .map(|i| (b'a' + ((i * 7 + i / 26) % 26) as u8) as char)
        .collect();
    let line = format!("{{\"pad\":\"{pad}\"}}\n");
    let body = bytes::Bytes::from(line.repeat(args.batch));

    let (mut server, url) = start_server(
        &dir.join("server"),
        args.durability,
        (body.len() * 2).max(1 << 20),
    )?;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let client = reqwest::Client::new();
        let created = client
            .post(format!("{url}/v1/topics"))
            .json(&json!({ "name": "bench", "partitions": args.partitions }))
            .send()
            .await
            .context("creating the topic")?;
        if !created.status().is_success() {
            bail!(
                "creating the topic: {}",
                created.text().await.unwrap_or_default()
            );
        }
        let requests = args.records.div_ceil(args.batch as u64);
        let next = Arc::new(AtomicU64::new(0));
        let started = std::time::Instant::now();
        let mut writers = Vec::new();
        for _ in 0..args.writers {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            let path = format!("{url}/v1/topics/bench/records");
            writers.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let response = client
                        .post(&path)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await?;
                    if !response.status().is_success() {
                        bail!("a produce request failed: {}", response.text().await?);
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        Ok((started.elapsed(), requests * args.batch as u64))
    });
    let _ = server.kill();
    let _ = server.wait();
    let (elapsed, records) = result?;
    let records_per_s = records as f64 / elapsed.as_secs_f64();
    let output = json!({
        "bench": "ingest",
        "durability": args.durability.as_str(),
        "records": records,
        "record_bytes": line.len() - 1,
        "partitions": args.partitions,
        "batch": args.batch,
        "writers": args.writers,
        "http": true,
        "wall_s": elapsed.as_secs_f64(),
        "records_per_s": records_per_s.round(),
        "mb_per_s": (records_per_s * (line.len() - 1) as f64 / 1e6 * 10.0).round() / 10.0,
        "library_records_per_s": library.records_per_s.round(),
        "ratio_to_library": (records_per_s / library.records_per_s * 1000.0).round() / 1000.0,
    });
    println!("{output}");
    Ok(())
}

/// Starts `sluice server` (this binary) on a free loopback port over
/// `data_dir`; the child and its base URL.
fn start_server(
    data_dir: &std::path::Path,
    durability: Durability,
    max_body_bytes: usize,
) -> anyhow::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut server = std::process::Command::new(exe)
        .args(["server", "--listen", "127.0.0.1:0", "--durability"])
        .arg(durability.as_str())
        .args(["--max-body-bytes", &max_body_bytes.to_string()])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env_remove("SLUICE_AUTH_TOKEN")
        .env_remove("SLUICE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting sluice server")?;
    let mut log = std::io::BufReader::new(server.stderr.take().context("server log")?);
    let mut text = String::new();
    let address = loop {
        text.clear();
        if log
            .read_line(&mut text)
            .context("reading the server's log")?
            == 0
        {
            bail!("the server exited before listening");
        }
        if let Some(at) = text.find("address=") {
            break text[at + "address=".len()..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in log.lines() {});
    Ok((server, format!("http://{address}")))
}

/// Arguments of `sluice bench push`.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// How long to produce.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Records produced per second, one per request.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// The push query's trigger interval in milliseconds.
    #[arg(long, default_value_t = 10)]
    trigger_ms: u64,
    /// Directory for the bench's data (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `sluice bench push`: how long a record takes from the moment its
/// produce request is sent to the moment a push query's HTTP client reads
/// it as a row. Each record carries its send time; a push query
/// (`SELECT sent FROM pings EMIT CHANGES EVERY <trigger>`) streams it back
/// over `POST /v1/query` of a server the bench starts. The figure bounds
/// the trigger-to-client delay from above: it also holds the produce
/// request, the append, and the wait for the next trigger.
pub(crate) fn push(args: PushArgs) -> anyhow::Result<()> {
    use futures::StreamExt;
    if !args.seconds.is_finite() || args.seconds <= 0.0 || args.rate == 0 || args.trigger_ms == 0 {
        bail!("--seconds, --rate and --trigger-ms must be positive");
    }
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let (mut server, url) = start_server(&dir.join("server"), Durability::Os, 1 << 20)?;
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let client = reqwest::Client::new();
        let created = client
            .post(format!("{url}/v1/sql"))
            .json(&json!({ "sql": "CREATE STREAM pings (sent BIGINT) WITH (topic = 'pings')" }))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!(
                "creating the stream: {}",
                created.text().await.unwrap_or_default()
            );
        }
        let sql = format!(
            "SELECT sent FROM pings EMIT CHANGES EVERY INTERVAL '{}' MILLISECOND",
            args.trigger_ms
        );
        let response = client
            .post(format!("{url}/v1/query"))
            .json(&json!({ "sql": sql }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "the push query: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let expected = (args.seconds * f64::from(args.rate)) as usize;
        let reader = tokio::spawn(async move {
            let mut latencies_ms = Vec::with_capacity(expected);
            let mut pending = Vec::new();
            let mut body = response.bytes_stream();
            while latencies_ms.len() < expected {
                let Some(chunk) = body.next().await else {
                    break;
                };
                let received = now_us();
                pending.extend_from_slice(&chunk?);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let row: serde_json::Value = serde_json::from_slice(&line)?;
                    if let Some(sent) = row.get(0).and_then(serde_json::Value::as_i64) {
                        latencies_ms.push((received - sent) as f64 / 1e3);
                    }
                }
            }
            Ok::<_, anyhow::Error>(latencies_ms)
        });
        let period = std::time::Duration::from_secs_f64(1.0 / f64::from(args.rate));
        let mut ticker = tokio::time::interval(period);
        for _ in 0..expected {
            ticker.tick().await;
            let sent = client
                .post(format!("{url}/v1/topics/pings/records"))
                .header("content-type", "application/x-ndjson")
                .body(format!("{{\"sent\": {}}}\n", now_us()))
                .send()
                .await?;
            if !sent.status().is_success() {
                bail!("producing: {}", sent.text().await.unwrap_or_default());
            }
        }
        let latencies = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .context("the push query's rows stopped coming")???;
        Ok(latencies)
    });
    let _ = server.kill();
    let _ = server.wait();
    let mut latencies = result?;
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let rank = (q * latencies.len() as f64).ceil() as usize;
        latencies
            .get(rank.clamp(1, latencies.len().max(1)) - 1)
            .map_or(f64::NAN, |ms| (ms * 10.0).round() / 10.0)
    };
    let output = json!({
        "bench": "push-latency",
        "trigger_ms": args.trigger_ms,
        "rate": args.rate,
        "seconds": args.seconds,
        "rows": latencies.len(),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "max_ms": quantile(1.0),
    });
    println!("{output}");
    Ok(())
}

/// Arguments of `sluice bench query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Nexmark bids to load.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Partitions of the `bids` topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records per appended batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Threads the query uses (DataFusion's target partitions; default:
    /// the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Directory for the bench's data (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `sluice bench query`: a bounded `count(*), max(price)` over Nexmark bids
/// stored as JSON beside arrow-json's decode rate of the same bytes, and a
/// `_timestamp` predicate's share of batches read.
pub(crate) fn query(args: QueryArgs) -> anyhow::Result<()> {
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let mut options = QueryBenchOptions::new(args.events);
    options.partitions = args.partitions;
    options.batch = args.batch;
    if let Some(threads) = args.threads {
        options.target_partitions = threads.max(1);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(run_query_bench(&dir, &options))
        .context("running the query bench")?;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let output = json!({
        "bench": "query",
        "query": "SELECT count(*), max(price) FROM bid",
        "events": report.events,
        "partitions": report.partitions,
        "json_bytes": report.bytes,
        "decode_limit_rows_per_s": report.decode_limit_rows_per_s.round(),
        "decode_limit_parallel_rows_per_cpu_s": report.decode_limit_parallel_rows_per_cpu_s.round(),
        "threads": options.target_partitions,
        "wall_s": round(report.query_wall_s),
        "cpu_s": round(report.query_cpu_s),
        "scan_read_s": round(report.read_s),
        "scan_decode_s": round(report.decode_s),
        "rows_per_s": report.query_rows_per_s.round(),
        "rows_per_cpu_s": report.query_rows_per_cpu_s.round(),
        "fraction_of_decode_limit": round(report.fraction_of_decode_limit),
        "fraction_of_parallel_decode_limit": round(report.fraction_of_parallel_decode_limit),
        "count": report.count,
        "max_price": report.max_price,
        "recent_1pct": {
            "rows": report.recent_rows,
            "batches_read": report.recent_batches_read,
            "batches_total": report.total_batches,
            "wall_s": round(report.recent_wall_s),
        },
    });
    println!("{output}");
    Ok(())
}

/// Arguments of `sluice bench nexmark`.
#[derive(Debug, clap::Args)]
pub(crate) struct NexmarkArgs {
    /// The query: q0, q1, q2, q5-core, q7-core, q8-core or q12 (the files
    /// of tests/nexmark/).
    #[arg(long, default_value = "q5-core")]
    query: String,
    /// Events to generate (persons, auctions and bids together).
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// The streams' format: `json` (every query decodes the records) or
    /// `arrow` (columnar: decoded once, when loaded).
    #[arg(long, default_value = "json", value_parser = ["json", "arrow"])]
    format: String,
    /// Arrow streams: the IPC compression of their stored columns.
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    compression: String,
    /// Records per append while loading, one stored batch each (default:
    /// 8,192 rows for arrow streams, 1,000 records for json).
    #[arg(long)]
    batch_rows: Option<usize>,
    /// How the log's table files are compressed: none, lz4 or zstd (the
    /// server's `--log-compression`).
    #[arg(long, default_value = "none", value_parser = crate::parse_log_compression)]
    log_compression: sluice_engine::storage::LogCompression,
    /// Reads skip RocksDB's block checksums (verified by default): shows
    /// what verifying costs the query.
    #[arg(long)]
    skip_checksums: bool,
    /// Threads the query uses (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Records each trigger reads at most (default: the queries' default,
    /// 1,000,000).
    #[arg(long)]
    max_records_per_trigger: Option<u64>,
    /// Directory for the bench's data (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Measure window-close latency instead of throughput: produce events
    /// in real time for this many seconds while the query runs as a
    /// persistent query (q5-core, q7-core, q12).
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// Latency mode: events produced per wall-clock second (event time runs
    /// rate / 10,000 times faster than the clock).
    #[arg(long, default_value_t = 100_000)]
    rate: usize,
    /// Latency mode: the query's trigger interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    trigger_ms: u64,
}

/// `sluice bench nexmark --latency-seconds S`: window-close latency.
fn nexmark_latency(args: &NexmarkArgs, seconds: f64, threads: usize) -> anyhow::Result<()> {
    if !seconds.is_finite() || seconds <= 0.0 || args.rate == 0 || args.trigger_ms == 0 {
        bail!("--latency-seconds, --rate and --trigger-ms must be positive");
    }
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let options = LatencyBenchOptions {
        query: args.query.clone(),
        partitions: args.partitions,
        rate: args.rate,
        seconds,
        trigger_ms: args.trigger_ms,
        target_partitions: threads,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(run_latency_bench(&dir, &options))
        .context("running the latency bench")?;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let output = json!({
        "bench": "nexmark-latency",
        "query": options.query,
        "partitions": options.partitions,
        "threads": threads,
        "rate": options.rate,
        "seconds": seconds,
        "events": report.events,
        "event_time_compression": report.compression,
        "trigger_ms": options.trigger_ms,
        "windows": report.windows,
        "missing_windows": report.missing,
        "p50_ms": round(report.quantile_ms(0.5)),
        "p99_ms": round(report.quantile_ms(0.99)),
        "max_ms": round(report.quantile_ms(1.0)),
    });
    println!("{output}");
    Ok(())
}

/// `sluice bench nexmark`: loads Nexmark events, then runs one query as a
/// continuous query from `earliest` until every window has closed.
pub(crate) fn nexmark(args: NexmarkArgs) -> anyhow::Result<()> {
    sluice_engine::nexmark::query(&args.query)?;
    let format = sluice_engine::Format::parse(&args.format)?;
    let compression = sluice_engine::Compression::parse(&args.compression)?;
    if compression != sluice_engine::Compression::None && format != sluice_engine::Format::Arrow {
        bail!("--compression is a setting of arrow streams: add --format arrow");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if let Some(seconds) = args.latency_seconds {
        if format != sluice_engine::Format::Json {
            bail!("--latency-seconds measures json streams; leave out --format");
        }
        return nexmark_latency(&args, seconds, threads);
    }
    let (dir, _temporary) = bench_dir(args.dir.as_ref())?;
    let options = NexmarkBenchOptions {
        query: args.query,
        events: args.events,
        partitions: args.partitions,
        target_partitions: threads,
        max_records_per_trigger: args.max_records_per_trigger,
        format,
        compression,
        log_compression: args.log_compression,
        batch_rows: args.batch_rows,
        verify_checksums: !args.skip_checksums,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime
        .block_on(run_nexmark_bench(&dir, &options))
        .context("running the nexmark bench")?;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let output = json!({
        "bench": "nexmark",
        "query": report.query,
        "format": format.as_str(),
        "compression": compression.as_str(),
        "log_compression": args.log_compression.as_str(),
        "verify_checksums": options.verify_checksums,
        "table_file_bytes": report.table_file_bytes,
        "events": report.events,
        "events_read": report.events_read,
        "partitions": report.partitions,
        "threads": options.target_partitions,
        "load_s": round(report.load_s),
        "wall_s": round(report.wall_s),
        "cpu_s": round(report.cpu_s),
        "events_per_s": report.events_per_s.round(),
        "events_per_cpu_s": report.events_per_cpu_s.round(),
        "decode_limit_events_per_s": report.decode_limit_events_per_s.round(),
        "fraction_of_decode_limit": round(report.events_per_cpu_s / report.decode_limit_events_per_s),
        "batch_events_per_cpu_s": report.batch_events_per_cpu_s.map(f64::round),
        "projected_decode_events_per_s": report.projected_decode_events_per_s.map(f64::round),
        "fraction_of_batch": report
            .batch_events_per_cpu_s
            .map(|batch| round(report.events_per_cpu_s / batch)),
        "output_rows": report.output_rows,
        "triggers": report.triggers,
        "max_records_per_trigger": options
            .max_records_per_trigger
            .unwrap_or(sluice_engine::DEFAULT_MAX_RECORDS_PER_TRIGGER),
        "peak_rss_bytes": report.peak_rss_bytes,
        "end_rss_bytes": report.end_rss_bytes,
        "page_faults": report.page_faults,
    });
    println!("{output}");
    Ok(())
}

/// The bench's data directory: the one given, or a temporary one that is
/// removed when the returned guard drops.
fn bench_dir(dir: Option<&PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(dir) => Ok((dir.clone(), None)),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("sluice-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            Ok((temporary.path().to_path_buf(), Some(temporary)))
        }
    }
}
