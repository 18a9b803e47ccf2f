//! `sluice produce` and `sluice consume`: moving records between files (or
//! standard input and output) and a topic, through a running server's HTTP
//! API, like Kafka's console producer and consumer.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

/// Where the server is, for the commands that talk to it.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerAddress {
    /// The server's base URL.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:7878")]
    pub(crate) url: String,
    /// Bearer token, for a server started with --auth-token.
    #[arg(long, env = "SLUICE_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,
}

/// An HTTP client of one server.
#[derive(Debug)]
pub(crate) struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(address: &ServerAddress) -> anyhow::Result<Self> {
        Ok(Api {
            http: reqwest::Client::builder()
                .build()
                .context("building the HTTP client")?,
            url: address.url.trim_end_matches('/').to_string(),
            token: address.auth_token.clone().filter(|t| !t.is_empty()),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A request to `path` (from `/v1/...`), with the token when there is one.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; a 4xx/5xx becomes an error with the server's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_string);
        bail!("{message} (HTTP {status})")
    }
}

/// `topic` as one path segment, percent-encoded by the `url` crate.
fn segment(topic: &str) -> String {
    let mut url = reqwest::Url::parse("http://localhost/").expect("a constant URL");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .push(topic);
    url.path()[1..].to_string()
}

/// Arguments of `sluice produce`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The topic to append to.
    topic: String,
    /// Read records from this file instead of standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// `ndjson` (one JSON value a line) or `csv` (one record a line);
    /// default: `csv` for a `.csv` file, else `ndjson`.
    #[arg(long, value_parser = ["ndjson", "csv"])]
    format: Option<String>,
    /// CSV: the first line names the columns (it is not produced).
    #[arg(long)]
    header: bool,
    /// Key each record by this field (NDJSON) or column (CSV, needs
    /// --header): records with the same key go to the same partition.
    #[arg(long)]
    key_field: Option<String>,
    /// Records per request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    #[command(flatten)]
    server: ServerAddress,
}

/// What a produce run did.
#[derive(Debug, Default)]
struct Produced {
    records: u64,
    bytes: u64,
    /// NDJSON lines that are not JSON: produced as they are, and counted
    /// by the queries that read them as decode errors.
    not_json: u64,
    first_not_json: Option<String>,
    /// Records without the key field (produced without a key).
    without_key: u64,
}

/// `sluice produce`: appends each line of the input as a record, in
/// batches, each batch acknowledged (durable) before the next is sent.
pub(crate) fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let csv = match args.format.as_deref() {
        Some(format) => format == "csv",
        None => args
            .file
            .as_ref()
            .and_then(|f| f.extension())
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
    };
    if args.header && !csv {
        bail!("--header is for CSV input (--format csv)");
    }
    if csv && args.key_field.is_some() && !args.header {
        bail!("--key-field with CSV needs --header, to know which column it names");
    }
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        Some(path) => {
            let file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        }
        None => (Box::new(std::io::stdin()), None),
    };
    let progress = progress_bar(total_bytes);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let api = Api::new(&args.server)?;
    let started = Instant::now();
    let mut produced = Produced::default();
    let result = runtime.block_on(produce_lines(
        &api,
        &args,
        csv,
        BufReader::with_capacity(1 << 20, input),
        &progress,
        &mut produced,
    ));
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if result.is_err() && produced.records == 0 {
        return result;
    }
    eprintln!(
        "{} {} records ({}) to {} in {:.2} s: {:.0} records/s",
        if result.is_ok() {
            "produced"
        } else {
            "acknowledged"
        },
        produced.records,
        human_bytes(produced.bytes),
        args.topic,
        seconds,
        produced.records as f64 / seconds.max(1e-9)
    );
    if produced.not_json > 0 {
        eprintln!(
            "warning: {} lines were not JSON (the first: {}); they were produced as they are, \
             and queries over the topic count them as decode errors",
            produced.not_json,
            produced.first_not_json.as_deref().unwrap_or_default()
        );
    }
    if produced.without_key > 0 {
        eprintln!(
            "warning: {} records had no \"{}\" and were produced without a key",
            produced.without_key,
            args.key_field.as_deref().unwrap_or_default()
        );
    }
    result
}

fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    let bar = match total_bytes {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {msg} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

async fn produce_lines(
    api: &Api,
    args: &ProduceArgs,
    csv: bool,
    mut input: impl BufRead,
    progress: &ProgressBar,
    produced: &mut Produced,
) -> anyhow::Result<()> {
    let path = format!("/v1/topics/{}/records", segment(&args.topic));
    let started = Instant::now();
    let mut key_column: Option<usize> = None;
    let mut batch: Vec<Value> = Vec::with_capacity(args.batch);
    let mut batch_bytes = 0u64;
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = input.read_line(&mut line).context("reading the input")?;
        if read > 0 {
            number += 1;
            progress.inc(read as u64);
            let text = line.trim_end_matches(['\n', '\r']);
            if csv && args.header && number == 1 {
                if let Some(field) = &args.key_field {
                    let names = csv_fields(text)?;
                    key_column =
                        Some(names.iter().position(|n| n == field).with_context(|| {
                            format!("--key-field {field}: the header has no such column ({text})")
                        })?);
                }
                continue;
            }
            if text.trim().is_empty() {
                continue;
            }
            let key = if csv {
                match key_column {
                    Some(column) => csv_fields(text)
                        .with_context(|| format!("line {number}"))?
                        .get(column)
                        .cloned(),
                    None => None,
                }
            } else {
                match serde_json::from_str::<Value>(text) {
                    Ok(value) => args.key_field.as_ref().and_then(|field| {
                        value.get(field).filter(|v| !v.is_null()).map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    }),
                    Err(error) => {
                        produced.not_json += 1;
                        produced
                            .first_not_json
                            .get_or_insert_with(|| format!("line {number}: {error}"));
                        None
                    }
                }
            };
            if args.key_field.is_some() && key.is_none() {
                produced.without_key += 1;
            }
            batch_bytes += text.len() as u64;
            // The line's text is the record's value, byte for byte.
            batch.push(match key {
                Some(key) => json!({ "key": key, "value": text }),
                None => json!({ "value": text }),
            });
        }
        let full = batch.len() >= args.batch || batch_bytes >= 4 << 20;
        if (read == 0 || full) && !batch.is_empty() {
            let count = batch.len() as u64;
            let body = json!({ "records": std::mem::take(&mut batch) });
            api.send(api.request(reqwest::Method::POST, &path).json(&body))
                .await
                .with_context(|| {
                    format!(
                        "producing to {} (after {} records were acknowledged)",
                        args.topic, produced.records
                    )
                })?;
            produced.records += count;
            produced.bytes += batch_bytes;
            batch_bytes = 0;
            let rate = produced.records as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.set_message(format!("{} records, {rate:.0} records/s", produced.records));
        }
        if read == 0 {
            return Ok(());
        }
    }
}

fn csv_fields(line: &str) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(line.as_bytes());
    let record = reader
        .records()
        .next()
        .transpose()
        .context("not a CSV line")?
        .unwrap_or_default();
    Ok(record.iter().map(str::to_string).collect())
}

fn human_bytes(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MB {
        format!("{:.1} MiB", bytes as f64 / MB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Arguments of `sluice consume`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsumeArgs {
    /// The topic to read.
    topic: String,
    /// Start at each partition's first record (default: at its end, so
    /// only new records are read, as Kafka's console consumer does).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Keep reading new records as they are appended (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition")]
    offset: Option<u64>,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// `value`: each record's value on a line; `json`: each record as the
    /// HTTP API gives it (partition, offset, timestamp, key, value, headers).
    #[arg(long, default_value = "value", value_parser = ["value", "json"])]
    format: String,
    #[command(flatten)]
    server: ServerAddress,
}

/// `sluice consume`: prints a topic's records.
pub(crate) fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let api = Api::new(&args.server)?;
    runtime.block_on(async {
        tokio::select! {
            result = consume_records(&api, &args) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

async fn consume_records(api: &Api, args: &ConsumeArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return Ok(());
    }
    let topic_path = format!("/v1/topics/{}", segment(&args.topic));
    let description: Value = api
        .send(api.request(reqwest::Method::GET, &topic_path))
        .await?
        .json()
        .await
        .context("reading the topic's description")?;
    let partitions: Vec<(u32, u64, u64)> = description["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                u32::try_from(p["partition"].as_u64()?).ok()?,
                p["start_offset"].as_u64()?,
                p["end_offset"].as_u64()?,
            ))
        })
        .filter(|(p, _, _)| args.partition.is_none_or(|want| want == *p))
        .collect();
    if partitions.is_empty() {
        bail!(
            "{} has no partition {}",
            args.topic,
            args.partition.unwrap_or_default()
        );
    }
    let mut out = Printer {
        stdout: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        json: args.format == "json",
        left: args.limit.unwrap_or(u64::MAX),
    };
    if !args.follow {
        // Each partition up to its end as it was when we started.
        let mut nothing_to_read = true;
        for (partition, start, end) in partitions {
            let mut offset = match (args.offset, args.from_beginning) {
                (Some(offset), _) => offset,
                (None, true) => start,
                (None, false) => end,
            };
            while offset < end {
                nothing_to_read = false;
                let limit = (end - offset).min(100_000);
                let body = api
                    .send(api.request(
                        reqwest::Method::GET,
                        &format!(
                            "{topic_path}/records?partition={partition}&offset={offset}&limit={limit}"
                        ),
                    ))
                    .await?
                    .bytes()
                    .await
                    .context("reading records")?;
                let mut last = None;
                for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    match out.print(line)? {
                        Printed::Record(at) => last = Some(at),
                        Printed::Done => return Ok(()),
                    }
                }
                // Compaction may leave gaps: go on after the last record.
                match last {
                    Some(at) => offset = at + 1,
                    None => break,
                }
            }
        }
        out.flush();
        if nothing_to_read && !args.from_beginning && args.offset.is_none() {
            eprintln!(
                "nothing new in {}: the consumer starts at the end of the topic; add \
                 --from-beginning to read what it holds, or --follow to wait for new records",
                args.topic
            );
        }
        return Ok(());
    }
    // Following: one stream per partition, printed as records arrive.
    let mut reads = futures::stream::SelectAll::new();
    for (index, (partition, start, end)) in partitions.iter().enumerate() {
        let from = match (args.offset, args.from_beginning) {
            (Some(offset), _) => offset,
            (None, true) => *start,
            (None, false) => *end,
        };
        let response = api
            .send(api.request(
                reqwest::Method::GET,
                &format!("{topic_path}/records?partition={partition}&offset={from}&follow=true"),
            ))
            .await?;
        reads.push(
            response
                .bytes_stream()
                .map(move |chunk| (index, chunk))
                .boxed(),
        );
    }
    // A partial line waits for the rest of its own partition's stream.
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); partitions.len()];
    while let Some((index, chunk)) = reads.next().await {
        let buffer = &mut pending[index];
        buffer.extend_from_slice(&chunk.context("reading records")?);
        let mut consumed = 0;
        while let Some(end) = buffer[consumed..].iter().position(|b| *b == b'\n') {
            let line = &buffer[consumed..consumed + end];
            consumed += end + 1;
            if line.is_empty() {
                continue;
            }
            if let Printed::Done = out.print(line)? {
                return Ok(());
            }
        }
        buffer.drain(..consumed);
        out.flush();
    }
    Ok(())
}

/// Prints records, up to a limit.
struct Printer<'a> {
    stdout: std::io::BufWriter<std::io::StdoutLock<'a>>,
    json: bool,
    left: u64,
}

enum Printed {
    /// Printed the record at this offset.
    Record(u64),
    /// The limit is reached, or the reader went away (`| head`).
    Done,
}

impl Printer<'_> {
    fn flush(&mut self) {
        // A reader that went away is not an error of ours.
        let _ = self.stdout.flush();
    }

    fn print(&mut self, line: &[u8]) -> anyhow::Result<Printed> {
        let record: Value = serde_json::from_slice(line).context("a malformed record")?;
        let written = if self.json {
            self.stdout
                .write_all(line)
                .and_then(|()| self.stdout.write_all(b"\n"))
        } else {
            writeln!(
                self.stdout,
                "{}",
                record["value"].as_str().unwrap_or_default()
            )
        };
        self.left -= 1;
        if written.is_err() || self.left == 0 {
            self.flush();
            return Ok(Printed::Done);
        }
        Ok(Printed::Record(
            record["offset"].as_u64().unwrap_or_default(),
        ))
    }
}
