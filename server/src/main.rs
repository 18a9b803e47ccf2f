//! `sluice`: the command line of Sluice. Parses arguments and hands off to
//! the server, the benchmarks, and (as they land) the shell and the
//! producer/consumer tools.

mod allocator;
mod bench;
mod client;
mod config;
mod http;
mod metrics;
mod shell;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_engine::Engine;
use sluice_engine::storage::{Durability, LogCompression};

/// Sluice: a streaming database. A durable, partitioned log of topics on
/// RocksDB, and continuous SQL over it.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: open the data directory and serve the HTTP API.
    Server(ServerArgs),
    /// Run SQL against a server (-c, -f, or statements on standard input).
    Shell(shell::ShellArgs),
    /// Append NDJSON or CSV lines (from a file or standard input) to a topic.
    Produce(client::ProduceArgs),
    /// Print a topic's records (from the end, the beginning or an offset).
    Consume(client::ConsumeArgs),
    /// Measure Sluice on this machine; prints one JSON object per run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Settings come from, last winning: the defaults, the --config \
file (TOML; keys are the flags' names with '_', e.g. data_dir = \"/var/lib/sluice\", \
listen = \"127.0.0.1:7878\"), the SLUICE_* environment variables, then the flags."
)]
struct ServerArgs {
    /// A TOML file of settings (see below).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Where topics and state live.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Address to serve HTTP on. Loopback by default.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// When appends are acknowledged: `fsync` (survives power loss) or `os`
    /// (survives a process crash).
    #[arg(long, env = "SLUICE_DURABILITY", default_value = "fsync", value_parser = parse_durability)]
    durability: Durability,
    /// How RocksDB compresses the log's table files: `none` (queries read
    /// stored records in place), `lz4` (about half the disk for JSON, a
    /// fifth slower queries over it) or `zstd` (smaller, slower still).
    /// Files already written keep theirs.
    #[arg(long, env = "SLUICE_LOG_COMPRESSION", default_value = "none", value_parser = parse_log_compression)]
    log_compression: LogCompression,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
    /// Longest a `POST /v1/sql` request may run, in seconds; longer ones
    /// are cancelled and answered 408.
    #[arg(long, env = "SLUICE_QUERY_TIMEOUT", default_value_t = 60)]
    query_timeout: u64,
    /// Require `Authorization: Bearer <TOKEN>` on every endpoint but
    /// `/v1/health`.
    #[arg(long, env = "SLUICE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Push queries (`POST /v1/query`) served at once; more are answered 429.
    #[arg(long, env = "SLUICE_MAX_PUSH_QUERIES", default_value_t = 64)]
    max_push_queries: usize,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Append throughput of the log beside a raw-RocksDB baseline.
    Ingest(bench::IngestArgs),
    /// A bounded query over Nexmark bids stored as JSON, beside arrow-json's
    /// decode rate of the same bytes.
    Query(bench::QueryArgs),
    /// A Nexmark query run as a continuous query over loaded events, beside
    /// arrow-json's decode rate of the same bids.
    Nexmark(bench::NexmarkArgs),
    /// Produce-to-push-query-client latency over HTTP.
    Push(bench::PushArgs),
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    Durability::parse(text).map_err(|e| e.to_string())
}

fn parse_log_compression(text: &str) -> Result<LogCompression, String> {
    LogCompression::parse(text).map_err(|e| e.to_string())
}

/// Whether this CPU has the instruction sets RocksDB's C++ was compiled
/// for (the flags `.cargo/config.toml` passes, seen here at compile time),
/// so that a binary built for a newer CPU stops with a message instead of
/// an illegal instruction; `Err` names the first one missing.
fn cpu_has_rocksdb_features() -> Result<(), &'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let flags = option_env!("CXXFLAGS_x86_64_unknown_linux_gnu").unwrap_or_default();
        let wanted = [
            (
                "-msse4.2",
                "SSE4.2",
                std::arch::is_x86_feature_detected!("sse4.2"),
            ),
            (
                "-mpclmul",
                "PCLMULQDQ",
                std::arch::is_x86_feature_detected!("pclmulqdq"),
            ),
            (
                "-mavx2",
                "AVX2",
                std::arch::is_x86_feature_detected!("avx2"),
            ),
            ("-mbmi", "BMI1", std::arch::is_x86_feature_detected!("bmi1")),
            (
                "-mlzcnt",
                "LZCNT",
                std::arch::is_x86_feature_detected!("lzcnt"),
            ),
        ];
        for (flag, name, present) in wanted {
            if !present && flags.split_whitespace().any(|f| f == flag) {
                return Err(name);
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    use std::process::ExitCode;
    allocator::configure();
    if let Err(missing) = cpu_has_rocksdb_features() {
        eprintln!(
            "error: this sluice binary was built for CPUs with {missing} (see .cargo/config.toml); \
             this CPU lacks it. Rebuild with `CXXFLAGS_x86_64_unknown_linux_gnu= make build`."
        );
        return ExitCode::from(2);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Server(mut args) => {
            let configured = match (args.config.clone(), matches.subcommand_matches("server")) {
                (Some(path), Some(server)) => config::apply(&mut args, server, &path),
                _ => Ok(()),
            };
            configured.and_then(|()| run_server(args))
        }
        // Exit codes for scripts: 1 a statement failed, 2 no server.
        Command::Shell(args) => {
            return match shell::run(args) {
                Ok(shell::Outcome::Ok) => ExitCode::SUCCESS,
                Ok(shell::Outcome::StatementFailed) => ExitCode::from(1),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Produce(args) => client::produce(args),
        Command::Consume(args) => client::consume(args),
        Command::Bench(BenchCommand::Ingest(args)) => bench::ingest(args),
        Command::Bench(BenchCommand::Query(args)) => bench::query(args),
        Command::Bench(BenchCommand::Nexmark(args)) => bench::nexmark(args),
        Command::Bench(BenchCommand::Push(args)) => bench::push(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // SQL and continuous queries run on their own runtime, so long queries
    // never hold the workers that serve HTTP.
    let sql_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-sql")
        .enable_all()
        .build()
        .context("starting the SQL runtime")?;
    // Opening resumes the persistent queries, on the SQL runtime.
    let engine = sql_runtime
        .block_on(
            Engine::builder(&args.data_dir)
                .durability(args.durability)
                .log_compression(args.log_compression)
                .open(),
        )
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        durability = args.durability.as_str(),
        log_compression = args.log_compression.as_str(),
        queries = engine.queries().len(),
        "engine open"
    );
    let result = runtime.block_on(http::serve(
        engine.clone(),
        http::ServeOptions {
            listen: args.listen,
            max_body_bytes: args.max_body_bytes,
            query_timeout: std::time::Duration::from_secs(args.query_timeout.max(1)),
            sql_runtime: sql_runtime.handle().clone(),
            auth_token: args.auth_token.clone().filter(|t| !t.is_empty()),
            max_push_queries: args.max_push_queries.max(1),
        },
    ));
    // Persistent queries finish their running trigger and commit; then
    // the storage closes.
    sql_runtime
        .block_on(engine.shutdown())
        .context("closing storage")?;
    sql_runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    tracing::info!("storage closed; bye");
    result
}
