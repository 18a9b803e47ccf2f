//! The continuous query runtime: every `SELECT ... EMIT ...` runs as a loop
//! of triggers ([`runner`]); aggregates keep DataFusion's partial states
//! per group between triggers ([`aggregate`]); the watermark follows the
//! event time per source partition ([`watermark`]).
//!
//! A push query ([`Subscription`]) sends each trigger's rows to its one
//! subscriber and keeps nothing; a persistent query (`crate::queries`)
//! commits them, with its offsets and state, to the log.

pub(crate) mod aggregate;
pub(crate) mod runner;
pub(crate) mod runs;
pub(crate) mod watermark;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use futures::Stream;
use sluice_sql::{SqlContext, Statement, parse_sql};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::progress::Progress;
use runner::Runner;

/// The rows of a push query, as they are emitted. Dropping it cancels the
/// query.
#[derive(Debug)]
pub struct Subscription {
    id: String,
    schema: SchemaRef,
    /// Each trigger's rows in one message: one hand-off per trigger, not
    /// one per batch.
    rows: mpsc::Receiver<Result<Vec<RecordBatch>>>,
    /// The rest of the trigger being read.
    pending: std::collections::VecDeque<RecordBatch>,
    progress: Arc<std::sync::Mutex<Option<Progress>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The push query's id (it is not kept after the subscription ends).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The columns of the rows it emits.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The last trigger's progress.
    pub fn progress(&self) -> Option<Progress> {
        self.progress.lock().ok().and_then(|p| p.clone())
    }
}

impl Stream for Subscription {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(batch)));
            }
            match self.rows.poll_recv(cx) {
                Poll::Ready(Some(Ok(batches))) => self.pending.extend(batches),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs each partition of `plan` in its own task and gathers their
/// batches, partition by partition. DataFusion's `collect` merges the
/// partitions through a channel, a hand-off between threads for every
/// batch; here each partition gathers its own and hands them over once.
pub(crate) async fn collect_all(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> datafusion::common::Result<Vec<RecordBatch>> {
    Ok(collect_partitioned(plan, context)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

static PUSH_QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Starts a push query for `sql` (one `SELECT ... EMIT ...`).
pub(crate) async fn subscribe(sql_context: &SqlContext, sql: &str) -> Result<Subscription> {
    let mut statements = parse_sql(sql)?;
    let query = match (statements.len(), statements.pop()) {
        (1, Some(Statement::Query(query))) if query.emit.is_some() => query,
        _ => {
            return Err(Error::InvalidInput(
                "subscribe takes one SELECT ... EMIT ... statement; run other statements with \
                 execute"
                    .to_string(),
            ));
        }
    };
    let (planned, plan) = sql_context.analyze(&query).await?;
    let schema: SchemaRef = Arc::new(planned.logical_plan.schema().as_arrow().clone());
    let id = format!(
        "push{}",
        PUSH_QUERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let runner = Runner::new(id.clone(), sql_context.clone(), query, plan, "", None)?;
    let (sender, rows) = mpsc::channel(1);
    let progress = Arc::new(std::sync::Mutex::new(None));
    let task = tokio::spawn(push(runner, sender, progress.clone()));
    Ok(Subscription {
        id,
        schema,
        rows,
        pending: std::collections::VecDeque::new(),
        progress,
        task,
    })
}

/// The trigger loop of a push query: rows go to the subscriber, nothing is
/// committed. A full channel (a slow subscriber) holds the next trigger.
async fn push(
    mut runner: Runner,
    sender: mpsc::Sender<Result<Vec<RecordBatch>>>,
    progress: Arc<std::sync::Mutex<Option<Progress>>>,
) {
    let interval = runner.plan().trigger_interval;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + interval;
        let output = match runner.trigger().await {
            Ok(Some(output)) => output,
            Ok(None) => continue,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        if !output.rows.is_empty() && sender.send(Ok(output.rows)).await.is_err() {
            return;
        }
        if output.progress.has_backlog() {
            // The trigger stopped at its budget: go on at once.
            next = tokio::time::Instant::now();
        }
        // After the rows: a subscriber that sees this trigger's progress
        // has its rows in the channel.
        if let Ok(mut last) = progress.lock() {
            *last = Some(output.progress);
        }
        if output.done {
            return;
        }
    }
}
