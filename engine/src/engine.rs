//! [`Engine`]: the storage, the catalog and the SQL context of one data
//! directory, behind a small async API.

use std::path::PathBuf;

use datafusion::arrow::record_batch::RecordBatch;
use sluice_sql::{Output, SqlContext, SqlOptions, parse_sql};
use sluice_storage::{Durability, ProduceRecord, Record, RecordPosition, Storage, StorageOptions};

use crate::error::{Error, Result};

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

    /// How many partitions DataFusion plans run in parallel (default: the
    /// number of cores).
    pub fn target_partitions(mut self, partitions: usize) -> Self {
        self.sql.target_partitions = partitions.max(1);
        self
    }

    /// Opens the data directory (creating it when missing).
    pub async fn open(self) -> Result<Engine> {
        let EngineBuilder { path, storage, sql } = self;
        let storage = tokio::task::spawn_blocking(move || Storage::open(path, storage))
            .await
            .map_err(|e| Error::Internal(format!("open task failed: {e}")))??;
        let sql = SqlContext::open(storage.clone(), sql)?;
        Ok(Engine { storage, sql })
    }
}

/// An open Sluice data directory: the log, the catalog, and SQL over them.
/// Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    storage: Storage,
    sql: SqlContext,
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
    pub async fn execute(&self, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for statement in parse_sql(sql)? {
            outputs.push(self.sql.execute_statement(statement).await?);
        }
        Ok(outputs)
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
    /// Stateless queries (projections and filters, `EMIT CHANGES`) run
    /// now; aggregates are refused with [`Error::Unsupported`] until the
    /// stateful runtime lands.
    pub async fn subscribe(&self, sql: &str) -> Result<crate::Subscription> {
        crate::continuous::subscribe(&self.sql, sql).await
    }

    /// A producer of records to `topic`.
    pub fn producer(&self, topic: &str) -> Result<Producer> {
        if !self.storage.topic_exists(topic) {
            return Err(Error::NotFound(format!("unknown topic \"{topic}\"")));
        }
        Ok(Producer {
            storage: self.storage.clone(),
            topic: topic.to_string(),
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

    /// Flushes and closes the storage. Other clones of this engine must
    /// not be used afterwards.
    pub async fn shutdown(&self) -> Result<()> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || storage.close())
            .await
            .map_err(|e| Error::Internal(format!("shutdown task failed: {e}")))??;
        Ok(())
    }
}

/// Appends records to one topic.
#[derive(Debug, Clone)]
pub struct Producer {
    storage: Storage,
    topic: String,
}

impl Producer {
    /// Appends one record (partitioned by its key, else round-robin) and
    /// returns where it landed, once it is durable.
    pub async fn send(&self, record: Record) -> Result<RecordPosition> {
        let mut positions = self
            .storage
            .produce(&self.topic, vec![ProduceRecord::from(record)])
            .await?;
        positions
            .pop()
            .ok_or_else(|| Error::Internal("produce returned no position".to_string()))
    }

    /// Appends records in one atomic write; returns each one's position.
    pub async fn send_all(&self, records: Vec<Record>) -> Result<Vec<RecordPosition>> {
        let records = records.into_iter().map(ProduceRecord::from).collect();
        Ok(self.storage.produce(&self.topic, records).await?)
    }
}
