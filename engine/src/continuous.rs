//! Continuous queries, first slice: stateless push queries (projections and
//! filters, `EMIT CHANGES`) run as a loop of triggers. Each trigger fixes
//! the end offsets of its sources, plans the query over exactly the records
//! that arrived since the last trigger (a `Snapshot` whose ranges start where
//! the previous one ended), runs it with DataFusion and sends the rows.
//!
//! Aggregates (windowed or not) need operator state and checkpoints; they
//! are analysed and refused until that lands.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::Stream;
use sluice_sql::analysis::{QueryShape, StartPosition, StreamingPlan};
use sluice_sql::{Snapshot, SqlContext, Statement, StreamingQuery, parse_sql};
use sluice_storage::Storage;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// The rows of a push query, as they are emitted. Dropping it cancels the
/// query.
#[derive(Debug)]
pub struct Subscription {
    schema: SchemaRef,
    rows: mpsc::Receiver<Result<RecordBatch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The columns of the rows it emits.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl Stream for Subscription {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rows.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
    if plan.shape != QueryShape::Stateless {
        return Err(Error::Unsupported(format!(
            "continuous {} queries are not available in this build yet; stateless push \
             queries (projections and filters, EMIT CHANGES) run now",
            plan.shape
        )));
    }
    let mut topics = Vec::with_capacity(plan.sources.len());
    for source in &plan.sources {
        let stream = sql_context.catalog().require_stream(source)?;
        if !topics.contains(&stream.topic) {
            topics.push(stream.topic.clone());
        }
    }
    let storage = sql_context.storage().clone();
    let positions = start_positions(&storage, &topics, &plan.start)?;
    let (sender, rows) = mpsc::channel(4);
    let trigger = Trigger {
        sql: sql_context.clone(),
        storage,
        query,
        plan,
        positions,
        sender,
    };
    let task = tokio::spawn(trigger.run());
    Ok(Subscription { schema, rows, task })
}

/// Where each source partition starts.
fn start_positions(
    storage: &Storage,
    topics: &[String],
    start: &StartPosition,
) -> Result<HashMap<String, Vec<u64>>> {
    let mut positions = HashMap::new();
    for topic in topics {
        let partitions = storage.partition_count(topic)?;
        let mut offsets = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let (log_start, end) = storage.offsets(topic, partition)?;
            offsets.push(match start {
                StartPosition::Earliest => log_start,
                StartPosition::Latest => end,
                StartPosition::Timestamp(ms) => storage
                    .offset_for_timestamp(topic, partition, *ms)?
                    .unwrap_or(end),
            });
        }
        positions.insert(topic.clone(), offsets);
    }
    Ok(positions)
}

struct Trigger {
    sql: SqlContext,
    storage: Storage,
    query: StreamingQuery,
    plan: StreamingPlan,
    positions: HashMap<String, Vec<u64>>,
    sender: mpsc::Sender<Result<RecordBatch>>,
}

impl Trigger {
    async fn run(mut self) {
        let mut interval = tokio::time::interval(self.plan.trigger_interval);
        let mut remaining = self.plan.limit;
        loop {
            interval.tick().await;
            match self.trigger(&mut remaining).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    let _ = self.sender.send(Err(error)).await;
                    return;
                }
            }
        }
    }

    /// One trigger; false when the query is done (its LIMIT was reached or
    /// the subscriber is gone).
    async fn trigger(&mut self, remaining: &mut Option<usize>) -> Result<bool> {
        let snapshot = Arc::new(Snapshot::default());
        let mut ends = HashMap::new();
        let mut new_records = false;
        for (topic, starts) in &self.positions {
            let partitions = self.storage.partition_count(topic)? as usize;
            let mut ranges = Vec::with_capacity(partitions);
            for partition in 0..partitions {
                let (log_start, end) = self.storage.offsets(topic, partition as u32)?;
                // A partition added since the start is read from its beginning.
                let start = starts.get(partition).copied().unwrap_or(log_start);
                new_records |= end > start;
                ranges.push((start, end));
            }
            ends.insert(
                topic.clone(),
                ranges.iter().map(|(_, end)| *end).collect::<Vec<_>>(),
            );
            snapshot.fix(topic, ranges)?;
        }
        if !new_records {
            return Ok(!self.sender.is_closed());
        }
        let planned = self.sql.plan_query_in(&self.query, snapshot).await?;
        let output = self.sql.collect_planned(planned).await?;
        self.positions = ends;
        for batch in output.batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = match remaining {
                Some(left) => {
                    let keep = batch.num_rows().min(*left);
                    *left -= keep;
                    batch.slice(0, keep)
                }
                None => batch,
            };
            if batch.num_rows() > 0 && self.sender.send(Ok(batch)).await.is_err() {
                return Ok(false);
            }
            if *remaining == Some(0) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
