//! `sluice shell`: SQL against a running server over its HTTP API.
//!
//! Scripts (`-c`, `-f`, or standard input when it is not a terminal) are
//! split into statements; each goes to `POST /v1/sql`, or to `POST
//! /v1/query` when it is continuous (its rows are printed as they arrive).
//! The first statement that fails stops the script, and the exit code says
//! so: 0 all ran, 1 a statement failed, 2 the server could not be reached.
//!
//! On a terminal, without `-c`/`-f`, the shell is interactive: a prompt,
//! statements over several lines up to their `;`, backslash commands
//! (`\help`), Ctrl-C to cancel the running statement. Lines are edited with
//! rustyline (arrow keys, Emacs bindings, Ctrl-R search); each statement
//! is one history entry, kept in `~/.sluice_history` (or `$SLUICE_HISTORY`).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
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
        (None, None) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let client = Client::new(&args)?;
            return runtime.block_on(interactive(&client, args.format.clone()));
        }
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

const HELP: &str = "\
Statements end with ';' and may span lines. A SELECT with EMIT is a push
query: its rows print as they arrive, until Ctrl-C (or its LIMIT).
  \\help               this text
  \\timing             show how long each statement takes (on/off)
  \\format table|json|csv
                      how results print
  \\q, \\quit, exit    leave (or Ctrl-D)
Ctrl-C cancels the running statement, or clears the one being typed.
Up/Down recall earlier statements, Ctrl-R searches them (kept in
~/.sluice_history, or $SLUICE_HISTORY).
SQL reference: docs/sql.md.";

/// The interactive shell: a prompt, statements over as many lines as they
/// need, backslash commands, Ctrl-C to cancel.
async fn interactive(client: &Client, mut format: String) -> anyhow::Result<Outcome> {
    let mut editor = LineEditor::start()?;
    let mut timing = false;
    let mut buffer = String::new();
    println!(
        "sluice shell, connected to {} (\\help for help, \\q to leave)",
        client.api.url()
    );
    loop {
        let prompt = if buffer.is_empty() {
            "sluice> "
        } else {
            "   ...> "
        };
        let line = match editor.read_line(prompt).await? {
            Line::Text(line) => line,
            Line::Interrupted => {
                // Ctrl-C at the prompt drops what was typed, as psql does.
                buffer.clear();
                continue;
            }
            Line::Eof => {
                println!();
                break;
            }
        };
        let trimmed = line.trim();
        if buffer.is_empty() {
            if trimmed.is_empty() {
                continue;
            }
            if let Some(command) = trimmed.strip_prefix('\\') {
                match backslash(command, &mut timing, &mut format) {
                    Backslash::Quit => break,
                    Backslash::Done => continue,
                }
            }
            if matches!(trimmed.to_ascii_lowercase().as_str(), "exit" | "quit") {
                break;
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let script = std::mem::take(&mut buffer);
        editor.add_history(script.trim_end());
        let statements = match split_statements(&script) {
            Ok(statements) => statements,
            Err(error) => {
                eprintln!("error: {error}");
                continue;
            }
        };
        for statement in statements {
            let started = std::time::Instant::now();
            let run = async {
                if statement.continuous {
                    client.push_query(&statement.text, &format).await
                } else {
                    client.statement(&statement.text, &format).await
                }
            };
            let ok = tokio::select! {
                outcome = run => match outcome {
                    Ok(ok) => ok,
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        false
                    }
                },
                _ = tokio::signal::ctrl_c() => {
                    // Dropping the request closes its connection: the
                    // server cancels the query.
                    eprintln!("cancelled");
                    false
                }
            };
            if timing {
                println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            if !ok {
                break;
            }
        }
    }
    // As psql: a session's errors were shown as they happened; only
    // scripts report them in the exit code.
    Ok(Outcome::Ok)
}

enum Backslash {
    Done,
    Quit,
}

fn backslash(command: &str, timing: &mut bool, format: &mut String) -> Backslash {
    let mut words = command.split_whitespace();
    match (words.next().unwrap_or_default(), words.next()) {
        ("q" | "quit", _) => return Backslash::Quit,
        ("help" | "h" | "?", _) => println!("{HELP}"),
        ("timing", None) => {
            *timing = !*timing;
            println!("Timing is {}.", if *timing { "on" } else { "off" });
        }
        ("timing", Some(value @ ("on" | "off"))) => {
            *timing = value == "on";
            println!("Timing is {value}.");
        }
        ("format", None) => println!("The format is {format}."),
        ("format", Some(value @ ("table" | "json" | "csv"))) => {
            *format = value.to_string();
            println!("The format is {value}.");
        }
        ("format", Some(other)) => {
            eprintln!("error: unknown format \"{other}\": use table, json or csv");
        }
        (other, _) => eprintln!("error: unknown command \\{other}; \\help lists the commands"),
    }
    Backslash::Done
}

/// What the prompt read.
enum Line {
    Text(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D on an empty line, or the terminal went away.
    Eof,
}

enum EditorRequest {
    ReadLine {
        prompt: &'static str,
        reply: tokio::sync::oneshot::Sender<rustyline::Result<String>>,
    },
    AddHistory(String),
}

/// rustyline on its own thread, so that the async loop can await a line.
/// The terminal is in raw mode only while a prompt waits for input: Ctrl-C
/// at the prompt is a key (`Interrupted`), while a statement runs it is
/// SIGINT, which cancels the statement.
struct LineEditor {
    requests: std::sync::mpsc::Sender<EditorRequest>,
}

impl LineEditor {
    fn start() -> anyhow::Result<Self> {
        let config = rustyline::Config::builder()
            .max_history_size(10_000)
            .context("configuring the line editor")?
            .history_ignore_dups(true)
            .context("configuring the line editor")?
            .auto_add_history(false)
            .build();
        let mut editor =
            rustyline::DefaultEditor::with_config(config).context("starting the line editor")?;
        let history = history_path();
        if let Some(path) = &history {
            // A missing file is a first session; an unreadable one is not
            // worth refusing to start for.
            let _ = editor.load_history(path);
        }
        let (requests, receiver) = std::sync::mpsc::channel::<EditorRequest>();
        std::thread::Builder::new()
            .name("sluice-line-editor".into())
            .spawn(move || {
                for request in receiver {
                    match request {
                        EditorRequest::ReadLine { prompt, reply } => {
                            let _ = reply.send(editor.readline(prompt));
                        }
                        EditorRequest::AddHistory(entry) => {
                            if matches!(editor.add_history_entry(entry), Ok(true))
                                && let Some(path) = &history
                            {
                                let _ = editor.append_history(path);
                            }
                        }
                    }
                }
            })
            .context("starting the line editor")?;
        Ok(LineEditor { requests })
    }

    async fn read_line(&mut self, prompt: &'static str) -> anyhow::Result<Line> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send(EditorRequest::ReadLine { prompt, reply })
            .context("the line editor stopped")?;
        match answer.await.context("the line editor stopped")? {
            Ok(line) => Ok(Line::Text(line)),
            Err(rustyline::error::ReadlineError::Interrupted) => Ok(Line::Interrupted),
            Err(rustyline::error::ReadlineError::Eof) => Ok(Line::Eof),
            Err(error) => Err(error).context("reading the terminal"),
        }
    }

    fn add_history(&mut self, entry: &str) {
        let _ = self
            .requests
            .send(EditorRequest::AddHistory(entry.to_string()));
    }
}

/// `$SLUICE_HISTORY`, else `~/.sluice_history`; none when there is no home.
fn history_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_HISTORY") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".sluice_history"))
}

struct Client {
    api: Api,
}

impl Client {
    fn new(args: &ShellArgs) -> anyhow::Result<Self> {
        Ok(Client {
            api: Api::new(&args.server)?,
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
            .with_context(|| format!("cannot reach the server at {}", self.api.url()))?;
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
            .with_context(|| format!("cannot reach the server at {}", self.api.url()))?;
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
                    match format {
                        "csv" => print_rows(&mut stdout, &columns, &[], format)?,
                        "table" => writeln!(stdout, "{}", column_names(&columns).join("\t"))?,
                        _ => {}
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
            if let Some(width) = terminal_width() {
                // Wide results wrap their cells to fit the terminal.
                table
                    .set_width(width)
                    .set_content_arrangement(ContentArrangement::Dynamic);
            }
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

/// The width of the terminal standard output is, if it is one.
fn terminal_width() -> Option<u16> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct passed.
    let answered = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (answered == 0 && size.ws_col > 0).then_some(size.ws_col)
}
