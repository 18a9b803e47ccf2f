//! [`Engine`]: the storage, the catalog and the SQL context of one data
//! directory, behind a small async API.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use sluice_sql::{
    AppendedRange, Output, ShowObject, SqlContext, SqlOptions, Statement, parse_sql,
    split_statements,
};
use sluice_storage::{
    Durability, LogCompression, ProduceRecord, Record, RecordPosition, Storage, StorageOptions,
};

use crate::error::{Error, Result};
use crate::queries::{Queries, QueryHandle, QueryInfo, QueryStatus};

/// Options for opening an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    path: PathBuf,
    storage: StorageOptions,
    sql: SqlOptions,
}

impl EngineBuilder {
    /// When appends are acknowledged (default: after an fsync).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.storage = self.storage.with_durability(durability);
        self
    }

    /// How table files of the log are compressed (default: none; see
    /// [`LogCompression`]).
    pub fn log_compression(mut self, compression: LogCompression) -> Self {
        self.storage = self.storage.with_log_compression(compression);
        self
    }

    /// Whether reads of the log verify RocksDB's block checksums (default:
    /// yes; see [`StorageOptions::verify_checksums`]).
    pub fn verify_checksums(mut self, verify: bool) -> Self {
        self.storage = self.storage.with_verify_checksums(verify);
        self
    }

    /// How many partitions DataFusion plans run in parallel (default: the
    /// number of cores).
    pub fn target_partitions(mut self, partitions: usize) -> Self {
        self.sql.target_partitions = partitions.max(1);
        self
    }

    /// Opens the data directory (creating it when missing) and resumes the
    /// persistent queries that were running, each from its last commit.
    pub async fn open(self) -> Result<Engine> {
        let EngineBuilder { path, storage, sql } = self;
        let storage = tokio::task::spawn_blocking(move || Storage::open(path, storage))
            .await
            .map_err(|e| Error::Internal(format!("open task failed: {e}")))??;
        let sql = SqlContext::open(storage.clone(), sql)?;
        let queries = Arc::new(Queries::new(sql.clone()));
        queries.resume_all().await?;
        Ok(Engine {
            storage,
            sql,
            queries,
        })
    }
}

/// An open Sluice data directory: the log, the catalog, and SQL over them.
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    storage: Storage,
    sql: SqlContext,
    queries: Arc<Queries>,
}

impl Engine {
    /// Opens `path` with default options.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Engine> {
        Engine::builder(path).open().await
    }

    /// Options for opening `path`.
    pub fn builder(path: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder {
            path: path.into(),
            storage: StorageOptions::default(),
            sql: SqlOptions::default(),
        }
    }

    /// Runs one or more `;`-separated statements, in order, and returns
    /// what each answered. Stops at the first that fails: the statements
    /// before it have taken effect.
    ///
    /// `CREATE STREAM ... AS SELECT ... EMIT ...` and `INSERT INTO ...
    /// SELECT ... EMIT ...` start persistent queries (see
    /// [`Engine::start_query`]); `STOP QUERY` stops one.
    pub async fn execute(&self, sql: &str) -> Result<Vec<Output>> {
        // Parsed whole, so that errors point into the script; split for
        // the text a persistent query keeps.
        let statements = parse_sql(sql)?;
        let pieces = split_statements(sql)?;
        if pieces.len() != statements.len() {
            return Err(Error::Internal(format!(
                "{} statements parsed but {} split",
                statements.len(),
                pieces.len()
            )));
        }
        let mut outputs = Vec::new();
        for (piece, statement) in pieces.iter().zip(statements) {
            outputs.push(self.execute_one(&piece.text, statement).await?);
        }
        Ok(outputs)
    }

    async fn execute_one(&self, text: &str, statement: Statement) -> Result<Output> {
        match statement {
            Statement::CreateStream(create) if create.query.is_some() => {
                let handle = self
                    .queries
                    .start(text, Statement::CreateStream(create))
                    .await?;
                Ok(Output::Done(started_message(&handle)))
            }
            Statement::InsertQuery {
                stream,
                columns,
                query,
            } if query.emit.is_some() => {
                let statement = Statement::InsertQuery {
                    stream,
                    columns,
                    query,
                };
                let handle = self.queries.start(text, statement).await?;
                Ok(Output::Done(started_message(&handle)))
            }
            Statement::Query(query) if query.emit.is_some() => {
                // Checks it, so a bad query gets its own error.
                self.sql.analyze(&query).await?;
                Err(Error::InvalidInput(
                    "a SELECT ... EMIT is a push query: it streams rows until cancelled. Run it \
                     with Engine::subscribe (POST /v1/query over HTTP, or the shell), or make it \
                     persistent with CREATE STREAM <name> AS SELECT ... EMIT ..."
                        .to_string(),
                ))
            }
            Statement::StopQuery { id } => {
                let handle = self.queries.stop(&id).await?;
                Ok(Output::Done(format!(
                    "stopped query {} ({}); stream {} keeps its rows",
                    handle.id(),
                    handle.name(),
                    handle.sink()
                )))
            }
            Statement::Show(ShowObject::Queries) => {
                let rows = self
                    .queries
                    .list()
                    .into_iter()
                    .map(|q| {
                        let info = q.info();
                        vec![
                            Some(info.id),
                            Some(info.name),
                            Some(match info.error {
                                Some(error) => format!("{}: {error}", info.status.as_str()),
                                None => info.status.as_str().to_string(),
                            }),
                            Some(info.sink),
                            Some(info.sql),
                        ]
                    })
                    .collect();
                Ok(self.sql.show_with_queries(ShowObject::Queries, rows)?)
            }
            Statement::DropStream { name, if_exists } => {
                // Dropping a query's output stream stops the query first.
                for handle in self.queries.list() {
                    if handle.status() == QueryStatus::Running
                        && handle.sink().eq_ignore_ascii_case(&name)
                    {
                        handle.stop().await?;
                    }
                }
                let readers = self.queries.readers();
                let sql = self.sql.clone();
                Ok(
                    tokio::task::spawn_blocking(move || {
                        sql.drop_stream(&name, if_exists, &readers)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("drop task failed: {e}")))??,
                )
            }
            other => Ok(self.sql.execute_statement(other).await?),
        }
    }

    /// Starts a persistent query: `CREATE STREAM name [WITH (...)] AS
    /// SELECT ... EMIT ...` (creating the stream) or `INSERT INTO stream
    /// SELECT ... EMIT ...`. It runs until stopped, across restarts, and
    /// writes each trigger's rows to the stream exactly once.
    ///
    /// ```no_run
    /// # async fn demo(engine: &sluice_engine::Engine) -> sluice_engine::Result<()> {
    /// let query = engine
    ///     .start_query(
    ///         "CREATE STREAM bids_per_auction AS \
    ///          SELECT auction, window_start, window_end, count(*) AS bids \
    ///          FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) \
    ///          GROUP BY auction, window_start, window_end \
    ///          EMIT ON WINDOW CLOSE",
    ///     )
    ///     .await?;
    /// println!("{:?}", query.progress());
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_query(&self, sql: &str) -> Result<QueryHandle> {
        let mut pieces = split_statements(sql)?;
        let (Some(piece), true) = (pieces.pop(), pieces.is_empty()) else {
            return Err(Error::InvalidInput(
                "start_query takes one statement".to_string(),
            ));
        };
        let mut statements = parse_sql(&piece.text)?;
        let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
            return Err(Error::InvalidInput(
                "start_query takes one statement".to_string(),
            ));
        };
        self.queries.start(&piece.text, statement).await
    }

    /// The persistent queries, running or not.
    pub fn queries(&self) -> Vec<QueryInfo> {
        self.queries.list().iter().map(QueryHandle::info).collect()
    }

    /// One persistent query, by id or name.
    pub fn query_handle(&self, id: &str) -> Result<QueryHandle> {
        self.queries.get(id)
    }

    /// Runs one bounded query and returns its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let mut statements = parse_sql(sql)?;
        if statements.len() != 1 {
            return Err(Error::InvalidInput(format!(
                "query takes one statement, got {}",
                statements.len()
            )));
        }
        match self.sql.execute_statement(statements.remove(0)).await? {
            Output::Rows(rows) => Ok(rows.batches),
            Output::Done(message) => Err(Error::InvalidInput(format!(
                "not a query (it answered: {message}); use execute"
            ))),
        }
    }

    /// Runs a push query (`SELECT ... EMIT ...`): a stream of the rows it
    /// emits, trigger after trigger, until its `LIMIT` is reached or the
    /// stream is dropped (which cancels it).
    ///
    /// Projections and filters emit each new row; aggregates emit as their
    /// `EMIT` mode says (`ON WINDOW CLOSE`, `CHANGES`, `COMPLETE`).
    pub async fn subscribe(&self, sql: &str) -> Result<crate::Subscription> {
        crate::continuous::subscribe(&self.sql, sql).await
    }

    /// A producer of records to a topic, named itself or by a stream on it.
    pub fn producer(&self, topic: &str) -> Result<Producer> {
        let topic = if self.storage.topic_exists(topic) {
            topic.to_string()
        } else if let Some(def) = self.sql.catalog().stream(topic) {
            def.topic.clone()
        } else {
            return Err(Error::NotFound(format!("unknown topic \"{topic}\"")));
        };
        Ok(Producer {
            sql: self.sql.clone(),
            topic,
        })
    }

    /// The log under the engine, for what SQL does not cover.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The SQL context, for embedders that plan queries themselves.
    pub fn sql(&self) -> &SqlContext {
        &self.sql
    }

    /// Stops the persistent queries (each finishes its running trigger
    /// and commits; they resume when the data directory is opened again),
    /// then flushes and closes the storage. Other clones of this engine
    /// must not be used afterwards.
    pub async fn shutdown(&self) -> Result<()> {
        self.queries.shutdown().await;
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || storage.close())
            .await
            .map_err(|e| Error::Internal(format!("shutdown task failed: {e}")))??;
        Ok(())
    }
}

fn started_message(handle: &QueryHandle) -> String {
    format!(
        "started query {} ({}) writing to stream {}",
        handle.id(),
        handle.name(),
        handle.sink()
    )
}

/// Appends records to one topic.
///
/// On the topic of a columnar stream (`format = 'arrow'`), record values
/// are JSON objects decoded once, here, into the stream's columns (a value
/// that does not fit fails the call and nothing is written), and
/// [`Producer::send_batch`] appends Arrow batches directly.
#[derive(Debug, Clone)]
pub struct Producer {
    sql: SqlContext,
    topic: String,
}

impl Producer {
    /// Appends one record (partitioned by its key, else round-robin) and
    /// returns where it landed, once it is durable.
    pub async fn send(&self, record: Record) -> Result<RecordPosition> {
        let mut positions = self
            .sql
            .produce(&self.topic, vec![ProduceRecord::from(record)])
            .await?;
        positions
            .pop()
            .ok_or_else(|| Error::Internal("produce returned no position".to_string()))
    }

    /// Appends records in one atomic write; returns each one's position.
    pub async fn send_all(&self, records: Vec<Record>) -> Result<Vec<RecordPosition>> {
        let records = records.into_iter().map(ProduceRecord::from).collect();
        Ok(self.sql.produce(&self.topic, records).await?)
    }

    /// Appends the rows of `batch` to the topic's columnar stream, durably
    /// and atomically. Columns are matched to the stream's by name and cast
    /// to their types; a column the stream lacks is an error, one the batch
    /// lacks is NULL (an error when NOT NULL). Rows go to partitions by the
    /// stream's key column, else all to one partition picked round-robin;
    /// each row gets the current time as its timestamp. Returns the offsets
    /// written, per partition (rows keep their order within a partition).
    pub async fn send_batch(&self, batch: RecordBatch) -> Result<Vec<AppendedRange>> {
        Ok(self.sql.send_batch(&self.topic, &batch).await?)
    }
}
