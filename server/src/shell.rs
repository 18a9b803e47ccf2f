//! `sluice shell`: SQL against a running server over its HTTP API.
//!
//! Scripts (`-c`, `-f`, or standard input when it is not a terminal) are
//! split into statements; each goes to `POST /v1/sql`, or to `POST
//! /v1/query` when it is continuous (its rows are printed as they arrive).
//! The first statement that fails stops the script, and the exit code says
//! so: 0 all ran, 1 a statement failed, 2 the server could not be reached.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;
use serde_json::Value;
use sluice_engine::split_statements;

use crate::client::{Api, ServerAddress};

/// Arguments of `sluice shell`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShellArgs {
    /// Run these statements and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    command: Option<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    format: String,
    #[command(flatten)]
    server: ServerAddress,
}

/// How a script ended.
pub(crate) enum Outcome {
    Ok,
    StatementFailed,
}

pub(crate) fn run(args: ShellArgs) -> anyhow::Result<Outcome> {
    let script = match (&args.command, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut sql = String::new();
            std::io::stdin()
                .read_to_string(&mut sql)
                .context("reading standard input")?;
            sql
        }
        (None, None) => bail!(
            "the interactive shell is not built yet; run statements with -c '...', -f FILE, \
             or pipe them on standard input"
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(&args)?;
    runtime.block_on(run_script(&client, &script, &args.format))
}

async fn run_script(client: &Client, script: &str, format: &str) -> anyhow::Result<Outcome> {
    let statements = match split_statements(script) {
        Ok(statements) => statements,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(Outcome::StatementFailed);
        }
    };
    for statement in statements {
        let ok = if statement.continuous {
            client.push_query(&statement.text, format).await?
        } else {
            client.statement(&statement.text, format).await?
        };
        if !ok {
            return Ok(Outcome::StatementFailed);
        }
    }
    Ok(Outcome::Ok)
}

struct Client {
    api: Api,
    url: String,
}

impl Client {
    fn new(args: &ShellArgs) -> anyhow::Result<Self> {
        let api = Api::new(&args.server)?;
        Ok(Client {
            url: api.url().to_string(),
            api,
        })
    }

    fn post(&self, path: &str, sql: &str) -> reqwest::RequestBuilder {
        self.api
            .request(reqwest::Method::POST, path)
            .json(&serde_json::json!({ "sql": sql }))
    }

    /// Runs one statement; false when it failed (the error is printed).
    async fn statement(&self, sql: &str, format: &str) -> anyhow::Result<bool> {
        let response = self
            .post("/v1/sql", sql)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.context("reading the answer")?;
        if !status.is_success() {
            print_error(&body);
            return Ok(false);
        }
        let mut stdout = std::io::stdout().lock();
        for result in body["results"].as_array().into_iter().flatten() {
            if let Some(columns) = result.get("columns") {
                let rows = result["rows"].as_array().cloned().unwrap_or_default();
                print_rows(&mut stdout, columns, &rows, format)?;
                if let Some(message) = result["message"].as_str() {
                    writeln!(stdout, "{message}")?;
                }
                for warning in result["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", warning.as_str().unwrap_or_default());
                }
            } else if let Some(message) = result["message"].as_str() {
                writeln!(stdout, "{message}")?;
            }
        }
        Ok(true)
    }

    /// Runs a push query, printing rows as they arrive, until it ends.
    async fn push_query(&self, sql: &str, format: &str) -> anyhow::Result<bool> {
        let response = self
            .post("/v1/query", sql)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        if !response.status().is_success() {
            let body: Value = response.json().await.context("reading the answer")?;
            print_error(&body);
            return Ok(false);
        }
        let mut lines = response.bytes_stream();
        let mut pending = Vec::new();
        let mut columns = Value::Null;
        let mut stdout = std::io::stdout().lock();
        while let Some(chunk) = lines.next().await {
            pending.extend_from_slice(&chunk.context("reading rows")?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let value: Value = serde_json::from_slice(&line).context("a malformed row")?;
                if let Some(header) = value.get("header") {
                    columns = header["columns"].clone();
                    if format == "csv" {
                        print_rows(&mut stdout, &columns, &[], format)?;
                    }
                } else if value.get("error").is_some() {
                    print_error(&value);
                    return Ok(false);
                } else {
                    // Rows as they arrive: one line each (a table per row
                    // would scroll the header away).
                    let row = [value];
                    let shown = if format == "table" { "tsv" } else { format };
                    print_rows_without_header(&mut stdout, &columns, &row, shown)?;
                    stdout.flush()?;
                }
            }
        }
        Ok(true)
    }
}

fn print_error(body: &Value) {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    eprintln!("error: {message}");
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn csv_cell(value: &Value) -> String {
    let text = match value {
        Value::Null => return String::new(),
        other => cell(other),
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn column_names(columns: &Value) -> Vec<String> {
    columns
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn print_rows(
    out: &mut impl Write,
    columns: &Value,
    rows: &[Value],
    format: &str,
) -> anyhow::Result<()> {
    let names = column_names(columns);
    match format {
        "json" => print_rows_without_header(out, columns, rows, format)?,
        "csv" => {
            writeln!(out, "{}", names.join(","))?;
            print_rows_without_header(out, columns, rows, format)?;
        }
        _ => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED).set_header(names);
            for row in rows {
                table.add_row(row.as_array().into_iter().flatten().map(cell));
            }
            writeln!(out, "{table}")?;
            writeln!(
                out,
                "({} row{})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            )?;
        }
    }
    Ok(())
}

fn print_rows_without_header(
    out: &mut impl Write,
    columns: &Value,
    rows: &[Value],
    format: &str,
) -> anyhow::Result<()> {
    let names = column_names(columns);
    for row in rows {
        let values: Vec<&Value> = row.as_array().into_iter().flatten().collect();
        match format {
            "json" => {
                let object: serde_json::Map<String, Value> = names
                    .iter()
                    .cloned()
                    .zip(values.iter().map(|v| (*v).clone()))
                    .collect();
                writeln!(out, "{}", Value::Object(object))?;
            }
            "csv" => {
                let cells: Vec<String> = values.iter().map(|v| csv_cell(v)).collect();
                writeln!(out, "{}", cells.join(","))?;
            }
            _ => {
                let cells: Vec<String> = values.iter().map(|v| cell(v)).collect();
                writeln!(out, "{}", cells.join("\t"))?;
            }
        }
    }
    Ok(())
}
