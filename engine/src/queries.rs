//! Persistent queries (`CREATE STREAM ... AS SELECT ... EMIT`, `INSERT INTO
//! ... SELECT ... EMIT`): each runs as its own task, trigger after trigger,
//! and commits every trigger's output records, source offsets, watermark
//! and operator state in one atomic write, so that after a crash it resumes
//! from its last commit with no duplicate and no gap in its output.
//!
//! Catalog space: `query/<id>` → [`QueryRecord`] (JSON).
//! Checkpoint space: `query/<id>/checkpoint` → [`Checkpoint`] (JSON) and
//! `query/<id>/state/<n>` → chunks of operator state (Arrow IPC streams).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sluice_sql::{
    CreateStream, SinkRows, SqlContext, Statement, StreamDef, check_insert_columns,
    columnar_batches, encode_for_stream, parse_sql,
};
use sluice_storage::partitioner::partition_for_key;
use sluice_storage::{AtomicWrite, ReadLimits, Record, StateSpace, Storage, TopicConfig};
use tokio::sync::watch;

use crate::continuous::aggregate::AggregateState;
use crate::continuous::runner::{Checkpoint, Runner, TriggerOutput};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// How many triggers' progress a query keeps.
const PROGRESS_KEPT: usize = 100;
/// Rows per stored state chunk.
const STATE_CHUNK_ROWS: usize = 65_536;

/// Whether a persistent query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryStatus {
    Running,
    Stopped,
    Failed,
}

impl QueryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryStatus::Running => "running",
            QueryStatus::Stopped => "stopped",
            QueryStatus::Failed => "failed",
        }
    }
}

/// A persistent query as the catalog keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QueryRecord {
    id: String,
    name: String,
    /// The statement that started it.
    sql: String,
    /// The stream it writes.
    sink: String,
    status: QueryStatus,
    error: Option<String>,
    created_ms: i64,
}

/// What a persistent query is and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct QueryInfo {
    pub id: String,
    pub name: String,
    pub sql: String,
    /// The stream it writes.
    pub sink: String,
    /// The streams it reads.
    pub sources: Vec<String>,
    pub status: QueryStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Its last trigger.
    pub progress: Option<Progress>,
}

/// A running (or finished) persistent query.
#[derive(Debug, Clone)]
pub struct QueryHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    record: Mutex<QueryRecord>,
    sources: Vec<String>,
    progress: Mutex<VecDeque<Progress>>,
    /// The source offsets of the last commit (where it starts, before
    /// the first), per partition.
    committed: Mutex<Option<Vec<u64>>>,
    source_topic: Mutex<Option<String>>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    storage: Storage,
}

impl QueryHandle {
    /// The query's id (`STOP QUERY <id>`).
    pub fn id(&self) -> String {
        self.record().id
    }

    /// Its name: the stream it writes, for `CREATE STREAM ... AS`.
    pub fn name(&self) -> String {
        self.record().name
    }

    /// The stream it writes.
    pub fn sink(&self) -> String {
        self.record().sink
    }

    /// Running, stopped or failed.
    pub fn status(&self) -> QueryStatus {
        self.record().status
    }

    /// Why it failed.
    pub fn error(&self) -> Option<String> {
        self.record().error
    }

    /// The last trigger's progress.
    pub fn progress(&self) -> Option<Progress> {
        self.shared
            .progress
            .lock()
            .ok()
            .and_then(|p| p.back().cloned())
    }

    /// The progress of the last triggers (up to 100), oldest first.
    pub fn recent_progress(&self) -> Vec<Progress> {
        self.shared
            .progress
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Where its last commit left each source partition: the next offset
    /// it reads; `None` for a query that never ran.
    pub fn committed_positions(&self) -> Option<Vec<u64>> {
        self.shared.committed.lock().ok().and_then(|c| c.clone())
    }

    /// Waits until the query has read and committed every record that its
    /// source holds now (and so emitted what those records close), or
    /// fails when the query stops or `timeout` passes first.
    pub async fn wait_caught_up(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let topic = self.shared.source_topic.lock().ok().and_then(|t| t.clone());
        let storage = self.shared.storage.clone();
        let ends = match topic {
            None => Vec::new(),
            Some(topic) => {
                let mut ends = Vec::new();
                for partition in 0..storage.partition_count(&topic)? {
                    ends.push(storage.offsets(&topic, partition)?.1);
                }
                ends
            }
        };
        loop {
            match self.status() {
                QueryStatus::Running => {}
                status => {
                    return Err(Error::InvalidInput(format!(
                        "query {} is {}{}",
                        self.id(),
                        status.as_str(),
                        self.error().map(|e| format!(": {e}")).unwrap_or_default()
                    )));
                }
            }
            let committed = self.committed_positions().unwrap_or_default();
            let done = ends
                .iter()
                .enumerate()
                .all(|(p, end)| committed.get(p).is_some_and(|c| c >= end));
            if done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "query {} did not catch up within {timeout:?}: at {committed:?}, source ends \
                     at {ends:?}",
                    self.id()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Everything about it.
    pub fn info(&self) -> QueryInfo {
        let record = self.record();
        QueryInfo {
            id: record.id,
            name: record.name,
            sql: record.sql,
            sink: record.sink,
            sources: self.shared.sources.clone(),
            status: record.status,
            error: record.error,
            progress: self.progress(),
        }
    }

    /// Stops it: the running trigger finishes and commits, then the query
    /// ends and is marked stopped. Its output stream stays.
    pub async fn stop(&self) -> Result<()> {
        self.halt().await;
        if self.status() == QueryStatus::Running {
            self.set_status(QueryStatus::Stopped, None)?;
        }
        Ok(())
    }

    /// Ends the task without changing the recorded status (shutdown: the
    /// query resumes when the engine opens again).
    async fn halt(&self) {
        let _ = self.shared.stop.send(true);
        let task = self.shared.task.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn record(&self) -> QueryRecord {
        self.shared
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn set_status(&self, status: QueryStatus, error: Option<String>) -> Result<()> {
        let record = {
            let mut record = self
                .shared
                .record
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            record.status = status;
            record.error = error;
            record.clone()
        };
        save_record(&self.shared.storage, &record)
    }

    fn set_committed(&self, positions: Vec<u64>) {
        if let Ok(mut committed) = self.shared.committed.lock() {
            *committed = Some(positions);
        }
    }

    fn push_progress(&self, progress: Progress) {
        if let Ok(mut kept) = self.shared.progress.lock() {
            if kept.len() == PROGRESS_KEPT {
                kept.pop_front();
            }
            kept.push_back(progress);
        }
    }
}

/// The persistent queries of one engine.
#[derive(Debug)]
pub(crate) struct Queries {
    sql: SqlContext,
    queries: Mutex<BTreeMap<String, QueryHandle>>,
}

impl Queries {
    pub(crate) fn new(sql: SqlContext) -> Self {
        Queries {
            sql,
            queries: Mutex::new(BTreeMap::new()),
        }
    }

    fn storage(&self) -> &Storage {
        self.sql.storage()
    }

    /// Loads the catalog's queries and resumes those that were running.
    pub(crate) async fn resume_all(&self) -> Result<()> {
        let storage = self.storage().clone();
        let records = tokio::task::spawn_blocking(move || load_records(&storage))
            .await
            .map_err(|e| Error::Internal(format!("loading queries: {e}")))??;
        for record in records {
            if record.status != QueryStatus::Running {
                let handle = self.handle(record, Vec::new());
                self.insert(handle);
                continue;
            }
            if let Err(error) = self.resume(record.clone()).await {
                let handle = self.handle(record, Vec::new());
                handle.set_status(QueryStatus::Failed, Some(error.to_string()))?;
                self.insert(handle);
            }
        }
        Ok(())
    }

    async fn resume(&self, record: QueryRecord) -> Result<()> {
        let (query, columns) = match parse_sql(&record.sql)?.pop() {
            Some(Statement::CreateStream(create)) => match create.query {
                Some(query) => (query, Vec::new()),
                None => return Err(Error::Internal("a query record without a query".into())),
            },
            Some(Statement::InsertQuery { query, columns, .. }) => (query, columns),
            _ => return Err(Error::Internal("a query record without a query".into())),
        };
        let sink = self.sql.catalog().require_stream(&record.sink)?;
        let (planned, plan) = self.sql.analyze(&query).await?;
        let schema = planned.logical_plan.schema().as_arrow().clone();
        check_insert_columns(&sink, &columns, schema.fields().len())?;
        let storage = self.storage().clone();
        let id = record.id.clone();
        let (checkpoint, state) =
            tokio::task::spawn_blocking(move || load_checkpoint(&storage, &id))
                .await
                .map_err(|e| Error::Internal(format!("loading checkpoint: {e}")))??;
        let resume_at = checkpoint
            .as_ref()
            .map_or((0, 0), |c| (c.next_output_partition, c.state_chunks));
        let runner = Runner::new(
            record.id.clone(),
            self.sql.clone(),
            query,
            plan,
            &columns_text(&schema),
            checkpoint.map(|c| (c, state)),
        )?;
        self.launch(record, runner, sink, columns, resume_at);
        Ok(())
    }

    /// Starts a persistent query from its statement (`text` is what is
    /// kept in the catalog and re-planned on restart).
    pub(crate) async fn start(&self, text: &str, statement: Statement) -> Result<QueryHandle> {
        let (query, sink, columns, create) = match statement {
            Statement::CreateStream(create) => {
                let mut create = *create;
                let query = create
                    .query
                    .take()
                    .ok_or_else(|| Error::Internal("CREATE STREAM without AS".into()))?;
                (query, create.name.clone(), Vec::new(), Some(create))
            }
            Statement::InsertQuery {
                stream,
                columns,
                query,
            } => (query, stream, columns, None),
            _ => {
                return Err(Error::InvalidInput(
                    "a persistent query is CREATE STREAM ... AS SELECT ... EMIT ... or INSERT \
                     INTO ... SELECT ... EMIT ..."
                        .to_string(),
                ));
            }
        };
        if query.emit.is_none() {
            return Err(Error::InvalidInput(
                "a persistent query needs an EMIT clause (EMIT CHANGES, EMIT ON WINDOW CLOSE, \
                 EMIT COMPLETE)"
                    .to_string(),
            ));
        }
        let (planned, plan) = self.sql.analyze(&query).await?;
        if plan.limit.is_some() {
            return Err(Error::Unsupported(
                "LIMIT ends a push query; a persistent query runs until it is stopped".into(),
            ));
        }
        if plan.sources.iter().any(|s| s.eq_ignore_ascii_case(&sink)) {
            return Err(Error::InvalidInput(format!(
                "query reads the stream it writes ({sink}): that loop never ends"
            )));
        }
        let schema = planned.logical_plan.schema().as_arrow().clone();
        let id = self.next_id();
        // Built (and so checked) before anything is created.
        let runner = Runner::new(
            id.clone(),
            self.sql.clone(),
            query,
            plan.clone(),
            &columns_text(&schema),
            None,
        )?;
        let sink_def = match create {
            Some(create) => {
                self.create_sink(create, &schema).await?;
                self.sql.catalog().require_stream(&sink)?
            }
            None => {
                let def = self.sql.catalog().require_stream(&sink)?;
                check_insert_columns(&def, &columns, schema.fields().len())?;
                def
            }
        };
        if let Some(late) = &plan.late_topic {
            let storage = self.storage().clone();
            let late = late.clone();
            tokio::task::spawn_blocking(move || {
                if !storage.topic_exists(&late) {
                    storage.create_topic(TopicConfig::new(late, 1))?;
                }
                Ok::<_, Error>(())
            })
            .await
            .map_err(|e| Error::Internal(format!("creating the late topic: {e}")))??;
        }
        let record = QueryRecord {
            name: if self.by_name(&sink).is_some() {
                format!("{sink}_{id}")
            } else {
                sink.clone()
            },
            id,
            sql: text.trim().to_string(),
            sink: sink_def.name.clone(),
            status: QueryStatus::Running,
            error: None,
            created_ms: sluice_storage::now_ms(),
        };
        let storage = self.storage().clone();
        let saved = record.clone();
        tokio::task::spawn_blocking(move || save_record(&storage, &saved))
            .await
            .map_err(|e| Error::Internal(format!("saving the query: {e}")))??;
        let id = record.id.clone();
        let handle = self.launch(record, runner, sink_def, columns, (0, 0));
        debug_assert_eq!(handle.id(), id);
        Ok(handle)
    }

    async fn create_sink(
        &self,
        create: CreateStream,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<()> {
        self.sql.create_output_stream(create, schema).await?;
        Ok(())
    }

    fn next_id(&self) -> String {
        let queries = self.queries.lock().unwrap_or_else(|p| p.into_inner());
        let next = queries
            .keys()
            .filter_map(|id| id.strip_prefix('q').and_then(|n| n.parse::<u64>().ok()))
            .max()
            .unwrap_or(0)
            + 1;
        format!("q{next}")
    }

    fn handle(&self, record: QueryRecord, sources: Vec<String>) -> QueryHandle {
        let (stop, _) = watch::channel(false);
        QueryHandle {
            shared: Arc::new(Shared {
                record: Mutex::new(record),
                sources,
                progress: Mutex::new(VecDeque::new()),
                committed: Mutex::new(None),
                source_topic: Mutex::new(None),
                stop,
                task: tokio::sync::Mutex::new(None),
                storage: self.storage().clone(),
            }),
        }
    }

    fn insert(&self, handle: QueryHandle) {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handle.id(), handle);
    }

    fn launch(
        &self,
        record: QueryRecord,
        runner: Runner,
        sink: Arc<StreamDef>,
        columns: Vec<String>,
        (next_partition, state_chunks): (u64, usize),
    ) -> QueryHandle {
        let handle = self.handle(record, runner.plan().sources.clone());
        handle.set_committed(runner.positions().to_vec());
        if let Ok(mut topic) = handle.shared.source_topic.lock() {
            *topic = Some(runner.source().topic.clone());
        }
        let stop = handle.shared.stop.subscribe();
        let task = tokio::spawn(run(
            handle.clone(),
            runner,
            Sink {
                def: sink,
                columns,
                next_partition,
                state_chunks,
            },
            stop,
        ));
        // The task is stored before anyone can stop it: try_lock cannot fail
        // on a handle nobody else has seen.
        if let Ok(mut slot) = handle.shared.task.try_lock() {
            *slot = Some(task);
        }
        self.insert(handle.clone());
        handle
    }

    /// A query by id or name.
    pub(crate) fn get(&self, id: &str) -> Result<QueryHandle> {
        let queries = self.queries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = queries.get(id) {
            return Ok(handle.clone());
        }
        if let Some(handle) = queries.values().find(|h| h.name().eq_ignore_ascii_case(id)) {
            return Ok(handle.clone());
        }
        let known: Vec<String> = queries.keys().cloned().collect();
        Err(Error::NotFound(if known.is_empty() {
            format!("unknown query \"{id}\" (no persistent queries exist)")
        } else {
            format!("unknown query \"{id}\" (queries: {})", known.join(", "))
        }))
    }

    fn by_name(&self, name: &str) -> Option<QueryHandle> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .cloned()
    }

    /// Every query, by id.
    pub(crate) fn list(&self) -> Vec<QueryHandle> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The running queries as `(id, streams read)`.
    pub(crate) fn readers(&self) -> Vec<(String, Vec<String>)> {
        self.list()
            .into_iter()
            .filter(|q| q.status() == QueryStatus::Running)
            .map(|q| (q.id(), q.shared.sources.clone()))
            .collect()
    }

    /// Stops a query (by id or name); it stays listed as stopped.
    pub(crate) async fn stop(&self, id: &str) -> Result<QueryHandle> {
        let handle = self.get(id)?;
        handle.stop().await?;
        Ok(handle)
    }

    /// Ends every task; their records stay running, so they resume.
    pub(crate) async fn shutdown(&self) {
        for handle in self.list() {
            handle.halt().await;
        }
    }
}

fn columns_text(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a query's rows go.
struct Sink {
    def: Arc<StreamDef>,
    columns: Vec<String>,
    next_partition: u64,
    /// State chunks the last commit wrote (the stale ones are deleted).
    state_chunks: usize,
}

/// The trigger loop of one persistent query.
async fn run(
    handle: QueryHandle,
    mut runner: Runner,
    mut sink: Sink,
    mut stop: watch::Receiver<bool>,
) {
    let interval = runner.plan().trigger_interval;
    let late_topic = runner.plan().late_topic.clone();
    let storage = handle.shared.storage.clone();
    let id = handle.id();
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        next = started + interval;
        let outcome = match runner.trigger().await {
            Ok(None) => continue,
            Ok(Some(output)) => {
                commit(
                    &storage,
                    &id,
                    &runner,
                    &mut sink,
                    late_topic.as_deref(),
                    output,
                )
                .await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(progress) => {
                if progress.has_backlog() {
                    // The trigger stopped at its budget: go on at once.
                    next = tokio::time::Instant::now();
                }
                handle.set_committed(progress.sources.iter().map(|s| s.end_offset).collect());
                handle.push_progress(progress);
            }
            Err(error) => {
                let _ = handle.set_status(QueryStatus::Failed, Some(error.to_string()));
                return;
            }
        }
    }
}

/// Writes one trigger's output records, late records, checkpoint and state
/// in one atomic write.
async fn commit(
    storage: &Storage,
    id: &str,
    runner: &Runner,
    sink: &mut Sink,
    late_topic: Option<&str>,
    output: TriggerOutput,
) -> Result<Progress> {
    let TriggerOutput {
        rows,
        late,
        mut progress,
        done: _,
    } = output;
    let commit_started = Instant::now();
    let mut write = AtomicWrite::new();
    let records = match encode_for_stream(&sink.def, &sink.columns, &rows)? {
        SinkRows::Records(records) => records,
        SinkRows::Columnar(rows) => {
            if rows.num_rows() > 0 {
                let partitions = storage.partition_count(&sink.def.topic)?;
                let fallback = (sink.next_partition % u64::from(partitions.max(1))) as u32;
                sink.next_partition += 1;
                let now = sluice_storage::now_ms();
                for (partition, count, columns) in
                    columnar_batches(&sink.def, &rows, partitions, fallback)?
                {
                    let times = vec![now; count];
                    write.append_columnar(sink.def.topic.clone(), partition, times, columns);
                }
            }
            Vec::new()
        }
    };
    if !records.is_empty() {
        let partitions = storage.partition_count(&sink.def.topic)?;
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for record in records {
            let partition = match &record.key {
                Some(key) => partition_for_key(key, partitions),
                None => {
                    let p = (sink.next_partition % u64::from(partitions)) as u32;
                    sink.next_partition += 1;
                    p
                }
            };
            by_partition.entry(partition).or_default().push(record);
        }
        for (partition, records) in by_partition {
            write.append(sink.def.topic.clone(), partition, records);
        }
    }
    if let Some(late_topic) = late_topic
        && !late.is_empty()
    {
        let (reader, topic) = (storage.clone(), runner.source().topic.clone());
        let copies = tokio::task::spawn_blocking(move || copy_records(&reader, &topic, &late))
            .await
            .map_err(|e| Error::Internal(format!("copying late rows: {e}")))??;
        if !copies.is_empty() {
            write.append(late_topic.to_string(), 0, copies);
        }
    }
    let chunks = match runner.state() {
        Some(state) => state_chunks(state.batches())?,
        None => Vec::new(),
    };
    for (n, chunk) in chunks.iter().enumerate() {
        write.put(
            StateSpace::Checkpoints,
            state_key(id, n).into_bytes(),
            chunk.clone(),
        );
    }
    for n in chunks.len()..sink.state_chunks {
        write.delete(StateSpace::Checkpoints, state_key(id, n).into_bytes());
    }
    let checkpoint = runner.checkpoint(sink.next_partition, chunks.len());
    let bytes = serde_json::to_vec(&checkpoint)
        .map_err(|e| Error::Internal(format!("encoding the checkpoint: {e}")))?;
    write.put(
        StateSpace::Checkpoints,
        checkpoint_key(id).into_bytes(),
        bytes,
    );
    storage.commit(write).await?;
    sink.state_chunks = chunks.len();
    progress.durations_ms.commit = commit_started.elapsed().as_secs_f64() * 1e3;
    progress.trigger_duration_ms += progress.durations_ms.commit;
    Ok(progress)
}

/// The records at `positions` of `topic`, copied (for the late topic).
fn copy_records(storage: &Storage, topic: &str, positions: &[(u32, u64)]) -> Result<Vec<Record>> {
    let mut copies = Vec::with_capacity(positions.len());
    for &(partition, offset) in positions {
        let fetch = storage.read(
            topic,
            partition,
            offset,
            ReadLimits::records(1).until(offset + 1),
        )?;
        for owned in fetch.records()? {
            let copy = owned
                .record
                .with_header("sluice.origin.topic", topic.as_bytes().to_vec())
                .with_header(
                    "sluice.origin.partition",
                    partition.to_string().into_bytes(),
                )
                .with_header("sluice.origin.offset", offset.to_string().into_bytes());
            copies.push(copy);
        }
    }
    Ok(copies)
}

fn record_key(id: &str) -> String {
    format!("query/{id}")
}

fn checkpoint_key(id: &str) -> String {
    format!("query/{id}/checkpoint")
}

fn state_key(id: &str, chunk: usize) -> String {
    format!("query/{id}/state/{chunk:08}")
}

fn save_record(storage: &Storage, record: &QueryRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| Error::Internal(format!("encoding a query record: {e}")))?;
    storage.state_put(
        StateSpace::Catalog,
        record_key(&record.id).into_bytes(),
        bytes,
    )?;
    Ok(())
}

fn load_records(storage: &Storage) -> Result<Vec<QueryRecord>> {
    let mut records = Vec::new();
    for (key, value) in storage.state_scan(StateSpace::Catalog, b"query/")? {
        let record: QueryRecord = serde_json::from_slice(&value).map_err(|e| {
            Error::Internal(format!(
                "query record {} is corrupt: {e}",
                String::from_utf8_lossy(&key)
            ))
        })?;
        records.push(record);
    }
    Ok(records)
}

fn load_checkpoint(
    storage: &Storage,
    id: &str,
) -> Result<(Option<Checkpoint>, Option<AggregateState>)> {
    let Some(bytes) = storage.state_get(StateSpace::Checkpoints, checkpoint_key(id).as_bytes())?
    else {
        return Ok((None, None));
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Internal(format!("checkpoint of query {id} is corrupt: {e}")))?;
    let mut schema = None;
    let mut batches = Vec::new();
    for n in 0..checkpoint.state_chunks {
        let bytes = storage
            .state_get(StateSpace::Checkpoints, state_key(id, n).as_bytes())?
            .ok_or_else(|| Error::Internal(format!("state chunk {n} of query {id} is missing")))?;
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::Internal(format!("state of query {id}: {e}")))?;
        schema.get_or_insert(reader.schema());
        for batch in reader {
            batches.push(batch.map_err(|e| Error::Internal(format!("state of query {id}: {e}")))?);
        }
    }
    let state = schema.map(|schema| AggregateState::restore(schema, batches));
    Ok((Some(checkpoint), state))
}

/// Operator state as Arrow IPC streams of at most [`STATE_CHUNK_ROWS`] rows.
fn state_chunks(batches: &[RecordBatch]) -> Result<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let length = STATE_CHUNK_ROWS.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, length);
            let mut bytes = Vec::new();
            {
                let mut writer = StreamWriter::try_new(&mut bytes, &batch.schema())
                    .map_err(|e| Error::Internal(format!("encoding state: {e}")))?;
                writer
                    .write(&slice)
                    .and_then(|()| writer.finish())
                    .map_err(|e| Error::Internal(format!("encoding state: {e}")))?;
            }
            chunks.push(bytes);
            offset += length;
        }
    }
    Ok(chunks)
}
