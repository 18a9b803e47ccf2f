//! One continuous query as a loop of triggers. A trigger fixes the end
//! offsets of the source's partitions (at most `max_records_per_trigger`
//! records past where the last one ended), runs the query over exactly
//! those records (through the incremental aggregate when it has one),
//! advances the watermark and picks the rows to emit. The query is planned
//! once and its plan run again by each trigger, unless optimizing it folds
//! `now()` or the like (then each trigger plans it anew). Committing
//! them is the caller's: a push query sends them, a persistent query writes
//! them atomically with [`Runner::checkpoint`].

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use serde::{Deserialize, Serialize};
use sluice_sql::analysis::{QueryShape, StartPosition, StreamingPlan};
use sluice_sql::{
    EmitMode, EventTimeFilter, Panes, ScanReport, Snapshot, SqlContext, StreamDef, StreamingQuery,
    TriggerPlan, WindowKind, from_datafusion,
};
use sluice_storage::Storage;

use super::aggregate::{AggregateStages, AggregateState, Pick, WindowClose};
use super::collect_all;
use super::watermark::{WatermarkState, Watermarks};
use crate::error::{Error, Result};
use crate::progress::{Durations, Progress, SourceProgress};

/// The version of the checkpoint layout.
const CHECKPOINT_VERSION: u32 = 1;

/// Where a query stands after its last commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) version: u32,
    /// What the query's plan was; a query whose plan changed is refused.
    pub(crate) fingerprint: String,
    /// The next trigger's number.
    pub(crate) batch_id: u64,
    /// The next offset to read, per source partition.
    pub(crate) positions: Vec<u64>,
    pub(crate) watermarks: WatermarkState,
    /// Round-robin position for unkeyed output records.
    pub(crate) next_output_partition: u64,
    /// How many state chunks the checkpoint has.
    pub(crate) state_chunks: usize,
}

/// What one trigger produced.
#[derive(Debug)]
pub(crate) struct TriggerOutput {
    pub(crate) rows: Vec<RecordBatch>,
    /// Positions of the rows dropped as late.
    pub(crate) late: Vec<(u32, u64)>,
    pub(crate) progress: Progress,
    /// The query's `LIMIT` is reached.
    pub(crate) done: bool,
}

pub(crate) struct Runner {
    id: String,
    sql: SqlContext,
    storage: Storage,
    query: StreamingQuery,
    plan: StreamingPlan,
    source: Arc<StreamDef>,
    positions: Vec<u64>,
    watermarks: Watermarks,
    /// Operator state, for aggregates.
    aggregate: Option<AggregateState>,
    window_close: Option<WindowClose>,
    batch_id: u64,
    fingerprint: String,
    last_start: Option<Instant>,
    /// Rows a stateless query may still emit (its `LIMIT`).
    remaining: Option<usize>,
    /// For a `HOP` aggregate computed over panes: the pane form of the
    /// query, which reads the micro-batch, and the panes.
    panes: Option<(StreamingQuery, Panes)>,
    /// The query's own physical plan, when `panes` reads the micro-batch:
    /// its aggregate and the operators above it (planned once; its scan is
    /// never run).
    window_plan: Option<Arc<dyn ExecutionPlan>>,
    /// The plan each trigger runs again, with what it was made for.
    reused: Option<ReusedPlan>,
    /// False once planning showed that each trigger must plan anew.
    reusable: bool,
}

/// A plan made once for the triggers of a query, and what it was made
/// for: when the topic's partition count or the stream changes, it is
/// made again.
struct ReusedPlan {
    plan: TriggerPlan,
    partitions: usize,
    stream: Arc<StreamDef>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.id)
            .field("batch_id", &self.batch_id)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner for an analysed query, from its checkpoint when it has one.
    pub(crate) fn new(
        id: String,
        sql: SqlContext,
        query: StreamingQuery,
        plan: StreamingPlan,
        output_columns: &str,
        restored: Option<(Checkpoint, Option<AggregateState>)>,
    ) -> Result<Self> {
        let [source] = plan.sources.as_slice() else {
            return Err(Error::Unsupported(
                "a continuous query reads one stream; joins and unions are not supported yet"
                    .to_string(),
            ));
        };
        let source = sql.catalog().require_stream(source)?;
        let window_close = match (&plan.shape, &plan.window) {
            (QueryShape::WindowedAggregate, Some(window)) => {
                if !window.time_column.eq_ignore_ascii_case(&source.event_time) {
                    return Err(Error::Unsupported(format!(
                        "the window's time column {} is not the event time of stream {} ({}): \
                         windows of a continuous query close with the watermark, which follows \
                         the event time; declare WATERMARK FOR {} in the stream",
                        window.time_column, source.name, source.event_time, window.time_column
                    )));
                }
                match window.kind {
                    WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => {
                        Some(WindowClose::Fixed { size_ms })
                    }
                    WindowKind::Session { .. } => {
                        if plan.emit == EmitMode::Changes {
                            return Err(Error::Unsupported(
                                "EMIT CHANGES does not fit SESSION windows: sessions merge, so \
                                 a session emitted as changed may later be replaced by a longer \
                                 one under another window_start; use EMIT ON WINDOW CLOSE (or \
                                 COMPLETE)"
                                    .to_string(),
                            ));
                        }
                        Some(WindowClose::Session)
                    }
                }
            }
            _ => None,
        };
        let fingerprint = format!(
            "{} | {} | {}:{}-{}ms | {output_columns}",
            plan.shape,
            plan.window
                .as_ref()
                .map(|w| w.kind.describe())
                .unwrap_or_default(),
            source.topic,
            source.event_time,
            source.watermark_delay_ms
        );
        let storage = sql.storage().clone();
        let stateful = plan.shape != QueryShape::Stateless;
        let (positions, watermark_state, batch_id, aggregate) = match restored {
            Some((checkpoint, state)) => {
                if checkpoint.version != CHECKPOINT_VERSION || checkpoint.fingerprint != fingerprint
                {
                    return Err(Error::InvalidInput(format!(
                        "query {id} cannot resume: its plan changed since its last checkpoint \
                         (was \"{}\", now \"{fingerprint}\"); drop it and start a new query",
                        checkpoint.fingerprint
                    )));
                }
                (
                    checkpoint.positions,
                    checkpoint.watermarks,
                    checkpoint.batch_id,
                    stateful.then(|| state.unwrap_or_default()),
                )
            }
            None => (
                start_positions(&storage, &source.topic, &plan.start)?,
                WatermarkState::default(),
                0,
                stateful.then(AggregateState::default),
            ),
        };
        let panes = match (&plan.shape, &plan.window) {
            (QueryShape::WindowedAggregate, Some(window))
                if matches!(window.kind, WindowKind::Hop { .. }) =>
            {
                sluice_sql::pane_query(&query)
            }
            _ => None,
        };
        let watermarks = Watermarks::new(
            watermark_state,
            source.watermark_delay_ms,
            plan.idle_timeout,
        );
        Ok(Runner {
            id,
            sql,
            storage,
            remaining: plan.limit,
            query,
            plan,
            source,
            positions,
            watermarks,
            aggregate,
            window_close,
            batch_id,
            fingerprint,
            last_start: None,
            panes,
            window_plan: None,
            reused: None,
            reusable: true,
        })
    }

    pub(crate) fn plan(&self) -> &StreamingPlan {
        &self.plan
    }

    /// The next offset to read, per source partition.
    pub(crate) fn positions(&self) -> &[u64] {
        &self.positions
    }

    pub(crate) fn source(&self) -> &Arc<StreamDef> {
        &self.source
    }

    /// Where the query stands, to be written with the trigger's output.
    pub(crate) fn checkpoint(&self, next_output_partition: u64, state_chunks: usize) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            fingerprint: self.fingerprint.clone(),
            batch_id: self.batch_id,
            positions: self.positions.clone(),
            watermarks: self.watermarks.state.clone(),
            next_output_partition,
            state_chunks,
        }
    }

    pub(crate) fn state(&self) -> Option<&AggregateState> {
        self.aggregate.as_ref()
    }

    /// Runs one trigger; `None` when there was nothing to do (no new
    /// records, and the watermark did not move).
    pub(crate) async fn trigger(&mut self) -> Result<Option<TriggerOutput>> {
        let started = Instant::now();
        let started_ms = sluice_storage::now_ms();
        let topic = self.source.topic.clone();
        let partitions = self.storage.partition_count(&topic)? as usize;
        let budget = self
            .plan
            .max_records_per_trigger
            .div_ceil(partitions.max(1) as u64)
            .max(1);
        let mut ranges = Vec::with_capacity(partitions);
        let mut sources = Vec::with_capacity(partitions);
        let mut input_rows = 0u64;
        for partition in 0..partitions {
            let (log_start, end) = self.storage.offsets(&topic, partition as u32)?;
            if self.positions.len() <= partition {
                // A partition added since the query started: from its start.
                self.positions.push(log_start);
            }
            // Retention may have removed records the query had not read.
            let start = self.positions[partition].max(log_start).min(end);
            let stop = end.min(start.saturating_add(budget));
            input_rows += stop - start;
            ranges.push((start, stop));
            sources.push(SourceProgress {
                stream: self.source.name.clone(),
                topic: topic.clone(),
                partition: partition as u32,
                start_offset: start,
                end_offset: stop,
                latest_offset: end,
            });
        }
        let watermark_before = self.watermarks.current();
        let moved = self.watermarks.advance(partitions, started);
        let closes_windows = self.window_close.is_some() && moved;
        if input_rows == 0 && !closes_windows {
            return Ok(None);
        }

        let snapshot = Arc::new(Snapshot::default());
        snapshot.fix(&topic, ranges.clone())?;
        let late_before_ms = match (watermark_before, &self.plan.window) {
            (Some(watermark), Some(window)) if self.window_close.is_some() => {
                Some(late_bound(watermark, &window.kind))
            }
            _ => None,
        };
        let report = Arc::new(ScanReport::with_event_time(EventTimeFilter {
            stream: self.source.name.clone(),
            column: self.source.event_time.clone(),
            late_before_ms,
        }));
        if self.panes.is_some() && self.window_plan.is_none() {
            let window = self
                .sql
                .plan_trigger(&self.query, snapshot.clone(), report.clone())
                .await?;
            self.window_plan = Some(
                window
                    .state
                    .create_physical_plan(&window.logical_plan)
                    .await
                    .map_err(from_datafusion)?,
            );
        }
        self.refresh_reused_plan(partitions).await?;
        let (physical, context) = match &self.reused {
            Some(reused) => {
                reused.plan.inputs.set(snapshot, report.clone())?;
                let physical =
                    reset_plan_states(reused.plan.physical.clone()).map_err(from_datafusion)?;
                (physical, reused.plan.state.task_ctx())
            }
            None => {
                let executed = self
                    .panes
                    .as_ref()
                    .map_or(&self.query, |(pane_query, _)| pane_query);
                let planned = self
                    .sql
                    .plan_trigger(executed, snapshot, report.clone())
                    .await?;
                let physical = planned
                    .state
                    .create_physical_plan(&planned.logical_plan)
                    .await
                    .map_err(from_datafusion)?;
                (physical, planned.state.task_ctx())
            }
        };
        let execute_started = Instant::now();

        let mut rows = match self.aggregate.take() {
            None => {
                let batches = collect_all(physical, context)
                    .await
                    .map_err(from_datafusion)?;
                self.note_event_times(&report, &ranges, started);
                self.watermarks.advance(partitions, started);
                batches
            }
            Some(mut state) => {
                let emitted = self
                    .aggregate_trigger(
                        &mut state,
                        &physical,
                        context,
                        &report,
                        &ranges,
                        watermark_before,
                        started,
                    )
                    .await;
                self.aggregate = Some(state);
                emitted?
            }
        };
        rows.retain(|b| b.num_rows() > 0);
        let mut done = false;
        if let Some(left) = self.remaining.as_mut() {
            let mut kept = Vec::new();
            for batch in rows {
                let keep = batch.num_rows().min(*left);
                *left -= keep;
                if keep > 0 {
                    kept.push(batch.slice(0, keep));
                }
            }
            rows = kept;
            done = *left == 0;
        }
        for (partition, (_, stop)) in ranges.iter().enumerate() {
            self.positions[partition] = *stop;
        }
        let execute = execute_started.elapsed();
        let late = report.late_rows();
        let elapsed = started.elapsed().as_secs_f64();
        let since_last = self
            .last_start
            .map_or(elapsed, |last| started.duration_since(last).as_secs_f64());
        self.last_start = Some(started);
        let emitted_rows: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let (state_rows, state_bytes) = self
            .aggregate
            .as_ref()
            .map_or((0, 0), |s| (s.rows() as u64, s.bytes() as u64));
        let progress = Progress {
            query_id: self.id.clone(),
            batch_id: self.batch_id,
            timestamp_ms: started_ms,
            num_input_rows: input_rows,
            input_rows_per_second: rate(input_rows, since_last),
            processed_rows_per_second: rate(input_rows, elapsed),
            trigger_duration_ms: elapsed * 1e3,
            durations_ms: Durations {
                read: report.read_time().as_secs_f64() * 1e3,
                decode: report.decode_time().as_secs_f64() * 1e3,
                execute: execute.as_secs_f64() * 1e3,
                commit: 0.0,
            },
            watermark: self.watermarks.current(),
            state_rows,
            state_bytes,
            late_rows_dropped: late.len() as u64,
            decode_errors: report.decode_errors(),
            emitted_rows: emitted_rows as u64,
            sources,
        };
        self.batch_id += 1;
        Ok(Some(TriggerOutput {
            rows,
            late,
            progress,
            done,
        }))
    }

    /// Makes the plan the triggers run again, or makes it anew when the
    /// topic no longer has the `partitions` it was made for or the stream
    /// was created again; leaves none when the query must plan each
    /// trigger (see [`SqlContext::plan_for_triggers`]).
    async fn refresh_reused_plan(&mut self, partitions: usize) -> Result<()> {
        if !self.reusable {
            return Ok(());
        }
        let stream = self.sql.catalog().stream(&self.source.name);
        if let (Some(reused), Some(stream)) = (&self.reused, &stream)
            && reused.partitions == partitions
            && Arc::ptr_eq(&reused.stream, stream)
        {
            return Ok(());
        }
        self.reused = None;
        // A dropped stream: the trigger's own planning says so.
        let Some(stream) = stream else {
            return Ok(());
        };
        let executed = self
            .panes
            .as_ref()
            .map_or(&self.query, |(pane_query, _)| pane_query);
        match self.sql.plan_for_triggers(executed).await? {
            Some(plan) => {
                self.reused = Some(ReusedPlan {
                    plan,
                    partitions,
                    stream,
                })
            }
            None => self.reusable = false,
        }
        Ok(())
    }

    /// Folds the micro-batch into the aggregate state, moves the watermark
    /// with its event times, and finalizes the groups the emit mode picks.
    #[allow(clippy::too_many_arguments)]
    async fn aggregate_trigger(
        &mut self,
        state: &mut AggregateState,
        physical: &Arc<dyn ExecutionPlan>,
        context: Arc<datafusion::execution::TaskContext>,
        report: &ScanReport,
        ranges: &[(u64, u64)],
        watermark_before: Option<i64>,
        now: Instant,
    ) -> Result<Vec<RecordBatch>> {
        // With panes, `physical` is the pane plan: it reads the micro-batch,
        // and the query's own plan aggregates and emits the windows.
        let (plan, pane_stages) = match (&self.panes, &self.window_plan) {
            (Some((_, panes)), Some(window_plan)) => (
                window_plan.clone(),
                Some((AggregateStages::find(physical)?, *panes)),
            ),
            _ => (physical.clone(), None),
        };
        let stages = AggregateStages::find(&plan)?;
        if matches!(self.window_close, Some(WindowClose::Session))
            && stages.window_end_group().is_none()
        {
            return Err(Error::Unsupported(
                "a continuous SESSION query must group by window_end too: GROUP BY key, \
                 window_start, window_end"
                    .to_string(),
            ));
        }
        let update = state
            .update(
                &stages,
                pane_stages.as_ref().map(|(s, panes)| (s, *panes)),
                self.window_close,
                watermark_before,
                context.clone(),
                self.plan.emit == EmitMode::Changes,
            )
            .await?;
        // Windows the watermark passes with this micro-batch close now.
        self.note_event_times(report, ranges, now);
        self.watermarks.advance(ranges.len(), now);
        let closing = self.watermarks.current().zip(self.window_close);
        let pick = match self.plan.emit {
            EmitMode::OnWindowClose => Pick::Closed,
            EmitMode::Changes => Pick::Touched(&update),
            EmitMode::Complete => Pick::All,
        };
        let picked = state.take(&stages, pick, closing)?;
        let Some(schema) = state.schema().cloned() else {
            return Ok(Vec::new());
        };
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let (finals, final_schema) =
            AggregateState::finalize(&stages, picked, schema, self.window_close, context.clone())
                .await?;
        stages.run_upper(&plan, finals, final_schema, context).await
    }

    fn note_event_times(&mut self, report: &ScanReport, ranges: &[(u64, u64)], now: Instant) {
        let max_times = report.max_event_times();
        for (partition, (start, stop)) in ranges.iter().enumerate() {
            if stop > start {
                self.watermarks.observe(
                    partition,
                    max_times.get(&(partition as u32)).copied(),
                    now,
                );
            }
        }
    }
}

/// Rows with an event time below this are late: every window they belong
/// to ended at or before `watermark`. A row's last window starts at its
/// time rounded down to the slide.
fn late_bound(watermark: i64, kind: &WindowKind) -> i64 {
    let (slide, size) = match *kind {
        WindowKind::Tumble { size_ms } => (size_ms, size_ms),
        WindowKind::Hop { slide_ms, size_ms } => (slide_ms, size_ms),
        WindowKind::Session { .. } => return watermark,
    };
    let edge = watermark - size;
    edge - edge.rem_euclid(slide) + slide
}

fn rate(rows: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    }
}

/// Where each partition of `topic` starts.
pub(crate) fn start_positions(
    storage: &Storage,
    topic: &str,
    start: &StartPosition,
) -> Result<Vec<u64>> {
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
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_rows_are_those_whose_last_window_closed() {
        let tumble = WindowKind::Tumble { size_ms: 10 };
        // Windows [0,10) closed at watermark 10; [10,20) still open at 15.
        assert_eq!(late_bound(10, &tumble), 10);
        assert_eq!(late_bound(15, &tumble), 10);
        assert_eq!(late_bound(9, &tumble), 0);
        let hop = WindowKind::Hop {
            slide_ms: 2,
            size_ms: 10,
        };
        // A row at 3 is in [-6,4) .. [2,12): all closed once the watermark is 12.
        assert_eq!(late_bound(12, &hop), 4);
        assert_eq!(late_bound(11, &hop), 2);
    }
}
