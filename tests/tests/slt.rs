//! The sqllogictest runner: runs every `tests/slt/*.slt` file against a
//! fresh engine on a temporary data directory, through the library API.
//!
//! `SLT_FILTER=windows cargo test -p sluice-tests --test slt` runs only
//! the files whose name contains `windows`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::{Durability, Engine, Output};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

struct SluiceDb {
    engine: Engine,
}

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

#[async_trait]
impl AsyncDB for SluiceDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        // `AWAIT QUERY <name>`: a directive of this runner, not SQL. It waits
        // until the persistent query has committed every record its source
        // holds, so the next statement sees what those records emitted.
        let words: Vec<&str> = sql
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        if let [first, second, name] = words.as_slice()
            && first.eq_ignore_ascii_case("await")
            && second.eq_ignore_ascii_case("query")
        {
            self.engine
                .query_handle(name)
                .map_err(|e| SltError(e.to_string()))?
                .wait_caught_up(std::time::Duration::from_secs(60))
                .await
                .map_err(|e| SltError(e.to_string()))?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let outputs = self
            .engine
            .execute(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        match outputs.into_iter().last() {
            Some(Output::Rows(result)) => {
                let types = result
                    .schema
                    .fields()
                    .iter()
                    .map(|f| column_type(f.data_type()))
                    .collect();
                let options = FormatOptions::default().with_null("NULL");
                let mut rows = Vec::new();
                for batch in &result.batches {
                    let formatters = batch
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| SltError(e.to_string()))?;
                    for row in 0..batch.num_rows() {
                        let cells: Vec<String> = formatters
                            .iter()
                            .map(|f| match f.value(row).to_string() {
                                s if s.is_empty() => "(empty)".to_string(),
                                s => s,
                            })
                            .collect();
                        rows.extend(split_lines(cells));
                    }
                }
                Ok(DBOutput::Rows { types, rows })
            }
            _ => Ok(DBOutput::StatementComplete(0)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A row whose cells hold several lines (an EXPLAIN plan) as one row per
/// line, the single-line cells repeated, so .slt files can show plans.
fn split_lines(cells: Vec<String>) -> Vec<Vec<String>> {
    let height = cells.iter().map(|c| c.lines().count()).max().unwrap_or(1);
    if height <= 1 {
        return vec![cells];
    }
    (0..height)
        .map(|line| {
            cells
                .iter()
                .map(|cell| {
                    if cell.lines().count() <= 1 {
                        cell.clone()
                    } else {
                        cell.lines().nth(line).unwrap_or("").trim_end().to_string()
                    }
                })
                .collect()
        })
        .collect()
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

async fn run_file(path: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = Engine::builder(dir.path())
        .durability(Durability::Os)
        // Fixed, so that EXPLAIN snapshots do not depend on the machine.
        .target_partitions(2)
        .open()
        .await
        .map_err(|e| e.to_string())?;
    let mut runner = Runner::new(|| {
        let engine = engine.clone();
        async move { Ok::<_, SltError>(SluiceDb { engine }) }
    });
    let result = runner
        .run_file_async(path)
        .await
        .map_err(|e| e.display(true).to_string());
    engine.shutdown().await.map_err(|e| e.to_string())?;
    result
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let filter = std::env::var("SLT_FILTER").unwrap_or_default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "slt"))
                .filter(|p| p.to_string_lossy().contains(&filter))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = slt_files();
    if files.is_empty() {
        eprintln!("no .slt files found");
        return ExitCode::FAILURE;
    }
    let mut failed = 0;
    for file in &files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        match runtime.block_on(run_file(file)) {
            Ok(()) => println!("slt {name} ... ok"),
            Err(error) => {
                failed += 1;
                println!("slt {name} ... FAILED\n{error}");
            }
        }
    }
    println!("slt: {} passed, {failed} failed", files.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
