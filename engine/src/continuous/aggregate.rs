//! Incremental aggregation, built from DataFusion's own aggregate stages.
//!
//! Each trigger's plan holds one aggregate. The runtime takes it apart:
//! the micro-batch goes through a `Partial` stage (in parallel, one
//! partition per source range), giving one row of accumulator *states* per
//! group; those rows and the stored state go through a `PartialReduce`
//! stage, merging them into one state row per group: the new stored state.
//! Rows are never kept, only states. To emit, the chosen groups' states go
//! through a `Final` stage, and the operators above the aggregate in the
//! plan (the `SELECT` list, `HAVING`) run over its output.
//!
//! Every DataFusion aggregate function works this way, because every one
//! has a state and a merge: `count(DISTINCT)` keeps its distinct values,
//! `approx_percentile_cont` its digest, `avg` its sum and count.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{EmitTo, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use sluice_sql::{Panes, WINDOW_END, WINDOW_START, from_datafusion};

use super::collect_all;
use super::runs::{KeyIndex, RunPartialExec, is_i64_like, plain_aggregates};
use crate::error::{Error, Result};

/// The aggregate of one trigger's plan, taken apart into its stages.
pub(crate) struct AggregateStages {
    /// The plan's topmost aggregate node (final or single).
    node: Arc<dyn ExecutionPlan>,
    group_by: PhysicalGroupBy,
    aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    filter_expr: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// What the aggregate reads: the rows of the micro-batch.
    input: Arc<dyn ExecutionPlan>,
}

impl AggregateStages {
    /// Finds the aggregate in `plan`; a plan with none, or with an aggregate
    /// over another, is not an incremental aggregate.
    pub(crate) fn find(plan: &Arc<dyn ExecutionPlan>) -> Result<Self> {
        let mut aggregates: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        plan.apply(|node| {
            if node.is::<AggregateExec>() {
                aggregates.push(node.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(from_datafusion)?;
        let node = aggregates
            .first()
            .cloned()
            .ok_or_else(|| Error::Internal("the plan of an aggregate has no aggregate".into()))?;
        let top = as_aggregate(&node)?;
        let (partial, expected) = match top.mode() {
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                let partial = aggregates.get(1).ok_or_else(|| {
                    Error::Internal("a final aggregate without its partial".into())
                })?;
                (as_aggregate(partial)?, 2)
            }
            AggregateMode::Single | AggregateMode::SinglePartitioned => (top, 1),
            other => {
                return Err(Error::Internal(format!(
                    "unexpected aggregate stage {other:?} at the top of the plan"
                )));
            }
        };
        if aggregates.len() != expected {
            return Err(Error::Unsupported(
                "this query plans as an aggregate over another aggregate, which continuous \
                 queries cannot update incrementally"
                    .to_string(),
            ));
        }
        if partial.group_expr().has_grouping_set() {
            return Err(Error::Unsupported(
                "GROUPING SETS, CUBE and ROLLUP are not supported in continuous queries".into(),
            ));
        }
        Ok(AggregateStages {
            node: node.clone(),
            group_by: partial.group_expr().clone(),
            aggr_expr: partial.aggr_expr().to_vec(),
            filter_expr: partial.filter_expr().to_vec(),
            input: partial.input().clone(),
        })
    }

    fn group_count(&self) -> usize {
        self.group_by.expr().len()
    }

    /// The position of `window_start` among the group columns.
    pub(crate) fn window_start_group(&self) -> Option<usize> {
        self.group_position(WINDOW_START)
    }

    /// The position of `window_end` among the group columns.
    pub(crate) fn window_end_group(&self) -> Option<usize> {
        self.group_position(WINDOW_END)
    }

    fn group_position(&self, column: &str) -> Option<usize> {
        let qualified = format!(".{column}");
        self.group_by
            .expr()
            .iter()
            .position(|(_, name)| name == column || name.ends_with(&qualified))
    }

    /// The `Partial` stage over `input`, leaving out the rows of windows
    /// that start at or before `open_after` (those closed already).
    ///
    /// When the aggregate groups by both `window_start` and `window_end`
    /// and the end is computed from the start plus a constant (TUMBLE and
    /// HOP), the stage groups by the start alone, one key column fewer to
    /// hash and compare per row, and adds the end to its output after: the
    /// same layout as the plain stage. When the start is then the only key,
    /// or one more 64-bit key is, the stage groups rows by runs of equal
    /// starts and looks the other key up in a table of that window's keys
    /// ([`RunPartialExec`]).
    fn partial(
        &self,
        input: Arc<dyn ExecutionPlan>,
        open_after: Option<i64>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let filtered = self.open_rows(input.clone(), open_after)?;
        let plain = self.stage(AggregateMode::Partial, filtered.clone())?;
        let Some((start, end, size)) = self.derived_window_end() else {
            return Ok(plain);
        };
        let mut keys = self.group_by.expr().to_vec();
        keys.remove(end);
        let mut narrow: Arc<dyn ExecutionPlan> = Arc::new(
            AggregateExec::try_new(
                AggregateMode::Partial,
                PhysicalGroupBy::new_single(keys.clone()),
                self.aggr_expr.clone(),
                self.filter_expr.clone(),
                filtered,
                self.input.schema(),
            )
            .map_err(from_datafusion)?,
        );
        // The window start among the narrow stage's keys (one place down
        // when it came after the end). It leads: its values come in runs.
        let start = if start > end { start - 1 } else { start };
        if let Some(runs) = RunPartialExec::try_new(
            input,
            keys.iter().map(|(key, _)| key.clone()).collect(),
            start,
            self.aggr_expr.clone(),
            self.filter_expr.clone(),
            open_after,
            narrow.schema(),
        )
        .map_err(from_datafusion)?
        {
            narrow = Arc::new(runs);
        }
        let narrow_schema = narrow.schema();
        let column = |index: usize| -> Arc<dyn PhysicalExpr> {
            Arc::new(Column::new(narrow_schema.field(index).name(), index))
        };
        // The narrow stage's columns: the keys without the end, then the
        // states.
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
        for (index, field) in plain.schema().fields().iter().enumerate() {
            let expr: Arc<dyn PhysicalExpr> = match index.cmp(&end) {
                std::cmp::Ordering::Less => column(index),
                std::cmp::Ordering::Equal => {
                    Arc::new(BinaryExpr::new(column(start), Operator::Plus, size.clone()))
                }
                std::cmp::Ordering::Greater => column(index - 1),
            };
            exprs.push((expr, field.name().clone()));
        }
        let widened: Arc<dyn ExecutionPlan> =
            Arc::new(ProjectionExec::try_new(exprs, narrow).map_err(from_datafusion)?);
        // Anything unexpected (a type that does not add up the same way)
        // keeps the plain stage.
        Ok(if same_layout(&widened.schema(), &plain.schema()) {
            widened
        } else {
            plain
        })
    }

    /// `input` without the rows of windows that start at or before
    /// `open_after`, when the aggregate groups by `window_start`.
    fn open_rows(
        &self,
        input: Arc<dyn ExecutionPlan>,
        open_after: Option<i64>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(bound), Some(index)) = (open_after, self.window_start_group()) else {
            return Ok(input);
        };
        let start = self.group_by.expr()[index].0.clone();
        let bound = ScalarValue::TimestampMillisecond(Some(bound), None);
        let open = Arc::new(BinaryExpr::new(
            start,
            Operator::Gt,
            Arc::new(Literal::new(bound)),
        ));
        Ok(Arc::new(
            FilterExec::try_new(open, input).map_err(from_datafusion)?,
        ))
    }

    /// When `window_end` is grouped and computed as `window_start` plus a
    /// constant in the projection under the aggregate: the positions of
    /// the two among the group columns, and the constant.
    fn derived_window_end(&self) -> Option<(usize, usize, Arc<dyn PhysicalExpr>)> {
        let (start, end) = (self.window_start_group()?, self.window_end_group()?);
        let keys = self.group_by.expr();
        let column_of =
            |position: usize| keys[position].0.downcast_ref::<Column>().map(Column::index);
        let (start_column, end_column) = (column_of(start)?, column_of(end)?);
        // Down through operators that pass their input's columns on as
        // they are, to the projection that computes the two.
        let mut node = self.input.clone();
        let projection = loop {
            if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
                break projection.expr().to_vec();
            }
            let children = node.children();
            if children.len() != 1 || children[0].schema() != node.schema() {
                return None;
            }
            let child = children[0].clone();
            node = child;
        };
        let start_expr = &projection.get(start_column)?.expr;
        let end_expr = projection
            .get(end_column)?
            .expr
            .downcast_ref::<BinaryExpr>()?;
        let constant = end_expr.right().downcast_ref::<Literal>()?;
        let is_duration = matches!(constant.value(), ScalarValue::DurationMillisecond(Some(_)));
        (is_duration && *end_expr.op() == Operator::Plus && end_expr.left() == start_expr)
            .then(|| (start, end, end_expr.right().clone()))
    }

    fn stage(
        &self,
        mode: AggregateMode,
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let group_by = match mode {
            AggregateMode::Partial => self.group_by.clone(),
            _ => self.group_by.as_final(),
        };
        Ok(Arc::new(
            AggregateExec::try_new(
                mode,
                group_by,
                self.aggr_expr.clone(),
                self.filter_expr.clone(),
                input,
                self.input.schema(),
            )
            .map_err(from_datafusion)?,
        ))
    }

    /// Runs the operators above the aggregate over `rows` (the aggregate's
    /// output), in one partition so that their order is kept.
    pub(crate) async fn run_upper(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        rows: Vec<RecordBatch>,
        schema: SchemaRef,
        context: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[rows], schema, None).map_err(from_datafusion)?;
        let target = self.node.clone();
        let replaced = plan
            .clone()
            .transform_down(|node| {
                if Arc::ptr_eq(&node, &target) {
                    Ok(Transformed::new(
                        source.clone(),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                } else {
                    Ok(Transformed::no(node))
                }
            })
            .map_err(from_datafusion)?
            .data;
        let single = replaced
            .transform_up(|node| {
                if node.is::<RepartitionExec>() || node.is::<CoalescePartitionsExec>() {
                    Ok(Transformed::yes(node.children()[0].clone()))
                } else {
                    Ok(Transformed::no(node))
                }
            })
            .map_err(from_datafusion)?
            .data;
        Ok(collect(single, context).await.map_err(from_datafusion)?)
    }
}

fn as_aggregate(node: &Arc<dyn ExecutionPlan>) -> Result<&AggregateExec> {
    node.downcast_ref::<AggregateExec>()
        .ok_or_else(|| Error::Internal("expected an aggregate".into()))
}

/// How a windowed aggregate's groups close.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WindowClose {
    /// `TUMBLE` and `HOP`: a group closes when the watermark reaches
    /// `window_start + size`.
    Fixed { size_ms: i64 },
    /// `SESSION`: sessions of a key that overlap merge; a session closes
    /// when the watermark reaches its `window_end`.
    Session,
}

/// The stored state of an incremental aggregate: one row of accumulator
/// states per group, as the `Partial` stage lays them out.
#[derive(Debug, Default)]
pub(crate) struct AggregateState {
    batches: Vec<RecordBatch>,
    schema: Option<SchemaRef>,
}

/// What one update changed.
pub(crate) struct Update {
    /// The keys of the groups the micro-batch touched (row-encoded group
    /// columns); `None` when the aggregate has no group columns.
    touched: Option<HashSet<Vec<u8>>>,
    /// Whether `touched` was recorded (only `EMIT CHANGES` needs it).
    tracked: bool,
    /// Whether any row reached the aggregate.
    pub(crate) any_rows: bool,
}

impl AggregateState {
    /// State restored from a checkpoint.
    pub(crate) fn restore(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        AggregateState {
            batches,
            schema: Some(schema),
        }
    }

    pub(crate) fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    pub(crate) fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    pub(crate) fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    /// Folds the micro-batch that `stages.input` reads into the state.
    /// Window rows of windows that closed at or before `closed_before` (the
    /// watermark of the previous trigger) are left out.
    ///
    /// With `panes`, the micro-batch is read through the pane form of the
    /// query (its own stages): rows are aggregated once per pane, and each
    /// pane's states then go into every window that holds the pane.
    pub(crate) async fn update(
        &mut self,
        stages: &AggregateStages,
        panes: Option<(&AggregateStages, Panes)>,
        window: Option<WindowClose>,
        closed_before: Option<i64>,
        context: Arc<TaskContext>,
        track_touched: bool,
    ) -> Result<Update> {
        let (partials, schema) = match panes {
            Some((pane_stages, panes)) => {
                let schema = stages
                    .stage(AggregateMode::Partial, stages.input.clone())?
                    .schema();
                let partial = pane_stages.partial(pane_stages.input.clone(), None)?;
                if !same_layout(&partial.schema(), &schema) {
                    return Err(Error::Internal(format!(
                        "the pane plan's states ({:?}) differ from the query's ({schema:?})",
                        partial.schema()
                    )));
                }
                let start = pane_stages.window_start_group().ok_or_else(|| {
                    Error::Internal("the pane plan does not group by window_start".into())
                })?;
                let end = pane_stages.window_end_group();
                let pane_schema = partial.schema();
                let pane_states = collect_all(partial, context.clone())
                    .await
                    .map_err(from_datafusion)?;
                // The partitions' pane states together, so that each
                // window's rows come out of the expansion in one piece.
                let pane_states = concat_batches(&pane_schema, &pane_states)
                    .map_err(|e| Error::Internal(format!("joining pane states: {e}")))?;
                let expanded =
                    expand_panes(&pane_states, &schema, start, end, panes, closed_before)?;
                let windows = if expanded.num_rows() > 0 {
                    vec![expanded]
                } else {
                    Vec::new()
                };
                (windows, schema)
            }
            None => {
                let open_after = match (closed_before, window) {
                    (Some(watermark), Some(WindowClose::Fixed { size_ms })) => {
                        Some(watermark - size_ms)
                    }
                    _ => None,
                };
                let partial = stages.partial(stages.input.clone(), open_after)?;
                let schema = partial.schema();
                let partials: Vec<RecordBatch> = collect_all(partial, context.clone())
                    .await
                    .map_err(from_datafusion)?
                    .into_iter()
                    .filter(|b| b.num_rows() > 0)
                    .collect();
                (partials, schema)
            }
        };
        match &self.schema {
            Some(stored) if !same_layout(stored, &schema) => {
                return Err(Error::InvalidInput(format!(
                    "the query's aggregate state no longer matches its stored state \
                     (stored {stored:?}, now {schema:?}): the stream or the query changed; \
                     start a new query"
                )));
            }
            Some(_) => {}
            None => self.schema = Some(schema.clone()),
        }
        if partials.is_empty() {
            return Ok(Update {
                touched: Some(HashSet::new()),
                tracked: track_touched,
                any_rows: false,
            });
        }
        let groups = stages.group_count();
        let touched = if groups == 0 || !track_touched {
            None
        } else {
            Some(row_keys(&partials, groups)?)
        };
        let mut all = std::mem::take(&mut self.batches);
        all.extend(partials);
        if let (Some(WindowClose::Session), Some(start), Some(end)) = (
            window,
            stages.window_start_group(),
            stages.window_end_group(),
        ) {
            all = vec![merge_sessions(&schema, &all, groups, start, end)?];
        }
        let merged = match stages.reduce_by_keys(&schema, &all, stages.dependent_end(window))? {
            Some(batch) => vec![batch],
            None => {
                let source: Arc<dyn ExecutionPlan> =
                    MemorySourceConfig::try_new_exec(&[all], schema.clone(), None)
                        .map_err(from_datafusion)?;
                let reduce = stages.stage(AggregateMode::PartialReduce, source)?;
                collect(reduce, context).await.map_err(from_datafusion)?
            }
        };
        self.batches = compact(&schema, merged)?;
        Ok(Update {
            touched,
            tracked: track_touched,
            any_rows: true,
        })
    }

    /// The state rows to emit and what stays.
    ///
    /// `closing`: the watermark, for windowed aggregates: groups whose
    /// window ends at or before it are closed, emitted (`all` or not) and
    /// dropped from the state.
    pub(crate) fn take(
        &mut self,
        stages: &AggregateStages,
        pick: Pick<'_>,
        closing: Option<(i64, WindowClose)>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(schema) = self.schema.clone() else {
            return Ok(Vec::new());
        };
        if self.batches.is_empty() {
            return Ok(Vec::new());
        }
        let state = concat_batches(&schema, &self.batches)
            .map_err(|e| Error::Internal(format!("joining state: {e}")))?;
        let closed: Option<BooleanArray> = match closing {
            Some((watermark, WindowClose::Fixed { size_ms })) => {
                let starts = timestamps(&state, stages.window_start_group())?;
                Some(BooleanArray::from_iter((0..starts.len()).map(|i| {
                    Some(starts.is_valid(i) && starts.value(i) + size_ms <= watermark)
                })))
            }
            Some((watermark, WindowClose::Session)) => {
                let ends = timestamps(&state, stages.window_end_group())?;
                Some(BooleanArray::from_iter((0..ends.len()).map(|i| {
                    Some(ends.is_valid(i) && ends.value(i) <= watermark)
                })))
            }
            None => None,
        };
        let emit_mask: BooleanArray = match pick {
            Pick::Closed => match &closed {
                Some(closed) => closed.clone(),
                None => BooleanArray::from(vec![false; state.num_rows()]),
            },
            Pick::All => BooleanArray::from(vec![true; state.num_rows()]),
            Pick::Touched(update) if !update.tracked => {
                return Err(Error::Internal(
                    "picking touched groups of an update that did not track them".into(),
                ));
            }
            Pick::Touched(update) => match &update.touched {
                None => BooleanArray::from(vec![update.any_rows; state.num_rows()]),
                Some(keys) => {
                    let converter = converter(&state, stages.group_count())?;
                    let rows = converter
                        .convert_columns(&state.columns()[..stages.group_count()])
                        .map_err(|e| Error::Internal(format!("group keys: {e}")))?;
                    BooleanArray::from_iter(
                        (0..state.num_rows()).map(|i| Some(keys.contains(rows.row(i).as_ref()))),
                    )
                }
            },
        };
        let emit = filter_record_batch(&state, &emit_mask)
            .map_err(|e| Error::Internal(format!("picking groups: {e}")))?;
        if let Some(closed) = closed {
            let open = datafusion::arrow::compute::not(&closed)
                .map_err(|e| Error::Internal(format!("open groups: {e}")))?;
            let kept = filter_record_batch(&state, &open)
                .map_err(|e| Error::Internal(format!("dropping closed groups: {e}")))?;
            self.batches = if kept.num_rows() == 0 {
                Vec::new()
            } else {
                vec![kept]
            };
        }
        Ok(if emit.num_rows() == 0 {
            Vec::new()
        } else {
            vec![emit]
        })
    }

    /// The final values of state rows, sorted by their group columns
    /// (window first), so emitted rows come out in a deterministic order.
    /// `window` tells whether the window end follows from its start
    /// ([`AggregateStages::dependent_end`]).
    ///
    /// State rows are sorted first. When no two of them share a group (as
    /// the state keeps them), each row is its own group: every accumulator
    /// merges the state columns with row `i` as group `i` and evaluates,
    /// with no hash table and the order kept. Otherwise (or for an
    /// aggregate without a groups accumulator) DataFusion's `Final` stage
    /// runs and its output is sorted.
    pub(crate) async fn finalize(
        stages: &AggregateStages,
        rows: Vec<RecordBatch>,
        state_schema: SchemaRef,
        window: Option<WindowClose>,
        context: Arc<TaskContext>,
    ) -> Result<(Vec<RecordBatch>, SchemaRef)> {
        let mut order: Vec<usize> = (0..stages.group_count()).collect();
        if let Some(start) = stages.window_start_group() {
            order.retain(|i| *i != start);
            order.insert(0, start);
        }
        // An end that follows from the start orders nothing the start
        // has not, and rows that differ only in it do not exist.
        if let Some(end) = stages.dependent_end(window) {
            order.retain(|i| *i != end);
        }
        let state = concat_batches(&state_schema, &rows)
            .map_err(|e| Error::Internal(format!("joining state rows: {e}")))?;
        let sorted = sort_indices(&state, &order);
        let unique = sorted.as_ref().is_some_and(|(_, unique)| *unique);
        let state = match &sorted {
            Some((indices, _)) => take_record_batch(&state, indices)
                .map_err(|e| Error::Internal(format!("ordering state rows: {e}")))?,
            None => state,
        };
        let source: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![state.clone()]], state_schema, None)
                .map_err(from_datafusion)?;
        let finals = stages.stage(AggregateMode::Final, source)?;
        let schema = finals.schema();
        if unique && let Some(batch) = stages.finalize_unique(&state, &schema)? {
            return Ok((vec![batch], schema));
        }
        let batches = collect(finals, context).await.map_err(from_datafusion)?;
        let all = concat_batches(&schema, &batches)
            .map_err(|e| Error::Internal(format!("joining results: {e}")))?;
        let sorted = match sort_indices(&all, &order) {
            Some((indices, _)) => take_record_batch(&all, &indices)
                .map_err(|e| Error::Internal(format!("ordering results: {e}")))?,
            // Group columns of a type without an order: leave them as they are.
            None => all,
        };
        Ok((vec![sorted], schema))
    }
}

impl AggregateStages {
    /// The position of `window_end` among the group columns when it follows
    /// from `window_start`, which is grouped too: in a TUMBLE or HOP
    /// window (`window`), the end is the start plus the size. Such an end
    /// needs no hashing or comparing, only carrying along.
    pub(crate) fn dependent_end(&self, window: Option<WindowClose>) -> Option<usize> {
        match window {
            Some(WindowClose::Fixed { .. }) => {
                self.window_start_group()?;
                self.window_end_group()
            }
            _ => None,
        }
    }

    /// State rows of `schema` merged into one row per group, as the
    /// `PartialReduce` stage would, with groups numbered by a
    /// [`KeyIndex`] rather than DataFusion's hash table: for one or two
    /// 64-bit group keys besides `dependent_end` (a column whose value
    /// follows from the keys, taken from each group's first row), one of
    /// them `window_start`, and aggregates that merge through groups
    /// accumulators. `None` for anything else, which takes DataFusion's
    /// stage.
    fn reduce_by_keys(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        dependent_end: Option<usize>,
    ) -> Result<Option<RecordBatch>> {
        let internal = |e: datafusion::error::DataFusionError| {
            Error::Internal(format!("merging aggregate states: {e}"))
        };
        let groups = self.group_count();
        let keys: Vec<usize> = (0..groups).filter(|&i| Some(i) != dependent_end).collect();
        let i64_like = |i: &usize| is_i64_like(schema.field(*i).data_type());
        if keys.is_empty()
            || keys.len() > 2
            || !keys.iter().chain(dependent_end.iter()).all(i64_like)
            || !plain_aggregates(&self.aggr_expr)
        {
            return Ok(None);
        }
        // The window start leads: it comes in runs. Without one, rows
        // would each look up a table of their own, so DataFusion's one
        // table is the better choice.
        let Some(leading) = self
            .window_start_group()
            .filter(|start| keys.contains(start))
        else {
            return Ok(None);
        };
        let trailing = keys.iter().copied().find(|&k| k != leading);
        let mut widths = Vec::with_capacity(self.aggr_expr.len());
        for aggregate in &self.aggr_expr {
            widths.push(aggregate.state_fields().map_err(internal)?.len());
        }
        if groups + widths.iter().sum::<usize>() != schema.fields().len() {
            return Ok(None);
        }
        let mut accumulators = self
            .aggr_expr
            .iter()
            .map(|aggregate| aggregate.create_groups_accumulator())
            .collect::<datafusion::common::Result<Vec<_>>>()
            .map_err(internal)?;
        let mut index = KeyIndex::default();
        let mut indices = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            indices.clear();
            index
                .assign(
                    batch.column(leading),
                    trailing.map(|k| batch.column(k)),
                    dependent_end.map(|e| batch.column(e)),
                    &mut indices,
                )
                .map_err(internal)?;
            let total = index.len();
            let mut at = groups;
            for (accumulator, width) in accumulators.iter_mut().zip(&widths) {
                accumulator
                    .merge_batch(&batch.columns()[at..at + width], &indices, total)
                    .map_err(internal)?;
                at += width;
            }
        }
        let data_type = |i: usize| schema.field(i).data_type();
        let (first, second, carried) = index
            .finish(
                data_type(leading),
                trailing.map(data_type),
                dependent_end.map(data_type),
            )
            .map_err(internal)?;
        let mut key_columns: Vec<Option<ArrayRef>> = vec![None; groups];
        key_columns[leading] = Some(first);
        if let Some(trailing) = trailing {
            key_columns[trailing] = second;
        }
        if let Some(end) = dependent_end {
            key_columns[end] = carried;
        }
        let mut columns = key_columns
            .into_iter()
            .collect::<Option<Vec<ArrayRef>>>()
            .ok_or_else(|| {
                Error::Internal("merging aggregate states: a key went missing".into())
            })?;
        for accumulator in &mut accumulators {
            columns.extend(accumulator.state(EmitTo::All).map_err(internal)?);
        }
        RecordBatch::try_new(schema.clone(), columns)
            .map(Some)
            .map_err(|e| Error::Internal(format!("merged aggregate states: {e}")))
    }

    /// The final values of `state`, whose rows are each a different group:
    /// row `i` is group `i` of every accumulator. `None` when an aggregate
    /// has no groups accumulator or the result does not fit `schema`.
    fn finalize_unique(
        &self,
        state: &RecordBatch,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let internal = |e: datafusion::error::DataFusionError| {
            Error::Internal(format!("final aggregate values: {e}"))
        };
        let groups = self.group_count();
        let rows = state.num_rows();
        let identity: Vec<usize> = (0..rows).collect();
        let mut columns: Vec<ArrayRef> = state.columns()[..groups].to_vec();
        let mut at = groups;
        for aggregate in &self.aggr_expr {
            if !aggregate.groups_accumulator_supported() {
                return Ok(None);
            }
            let width = aggregate.state_fields().map_err(internal)?.len();
            let Some(values) = state.columns().get(at..at + width) else {
                return Ok(None);
            };
            let mut accumulator = aggregate.create_groups_accumulator().map_err(internal)?;
            accumulator
                .merge_batch(values, &identity, rows)
                .map_err(internal)?;
            columns.push(accumulator.evaluate(EmitTo::All).map_err(internal)?);
            at += width;
        }
        if at != state.num_columns() {
            return Ok(None);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns).ok())
    }
}

/// The order of `batch`'s rows by the columns `order` (ascending, NULLs
/// first) and whether no two rows are equal in those columns; `None` when
/// a column's type has no order. One or two integer columns without NULLs
/// are read straight from their arrays; other columns are encoded once in
/// arrow's row format and rows compared as bytes. Either way costs a
/// fraction of `lexsort`'s comparator per column and row.
fn sort_indices(batch: &RecordBatch, order: &[usize]) -> Option<(UInt32Array, bool)> {
    let columns: Vec<ArrayRef> = order.iter().map(|&i| batch.column(i).clone()).collect();
    if let Some(keys) = integer_keys(&columns) {
        return Some(sorted_keys(keys));
    }
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields)
        .ok()?
        .convert_columns(&columns)
        .ok()?;
    // Group columns of fixed width (times, numbers) give rows of one width:
    // up to 32 bytes, each row is two big-endian integers, compared
    // without a call per comparison.
    let width = rows.iter().next().map_or(0, |row| row.as_ref().len());
    if width <= 32 {
        let mut keys: Vec<(u128, u128, u32)> = Vec::with_capacity(rows.num_rows());
        for (index, row) in rows.iter().enumerate() {
            let bytes = row.as_ref();
            if bytes.len() != width {
                break;
            }
            let mut padded = [0u8; 32];
            padded[..width].copy_from_slice(bytes);
            let (high, low) = padded.split_at(16);
            keys.push((
                u128::from_be_bytes(high.try_into().ok()?),
                u128::from_be_bytes(low.try_into().ok()?),
                index as u32,
            ));
        }
        if keys.len() == rows.num_rows() {
            return Some(sorted_keys(keys));
        }
    }
    let mut indices: Vec<u32> = (0..rows.num_rows() as u32).collect();
    indices.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    let unique = indices
        .windows(2)
        .all(|w| rows.row(w[0] as usize) != rows.row(w[1] as usize));
    Some((UInt32Array::from(indices), unique))
}

/// Sorts rows given as `(high, low, row index)` and tells whether no two
/// rows have the same `(high, low)`: the row order, and its uniqueness.
fn sorted_keys<K: Ord + Copy>(mut keys: Vec<(K, K, u32)>) -> (UInt32Array, bool) {
    keys.sort_unstable();
    let unique = keys
        .windows(2)
        .all(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1));
    let indices: Vec<u32> = keys.into_iter().map(|(_, _, index)| index).collect();
    (UInt32Array::from(indices), unique)
}

/// One or two columns of signed integers (or times) with no NULLs as
/// `(first, second, row index)`, each value mapped to a `u64` of the same
/// order (the sign bit flipped); `None` for any other columns.
fn integer_keys(columns: &[ArrayRef]) -> Option<Vec<(u64, u64, u32)>> {
    fn ordered(column: &ArrayRef) -> Option<Vec<u64>> {
        if column.null_count() > 0 {
            return None;
        }
        let data = column.to_data();
        let values = || data.buffers()[0].clone();
        let flip = |v: i64| (v as u64) ^ (1 << 63);
        Some(match data.data_type() {
            DataType::Int64
            | DataType::Timestamp(..)
            | DataType::Date64
            | DataType::Time64(_)
            | DataType::Duration(_) => {
                ScalarBuffer::<i64>::new(values(), data.offset(), data.len())
                    .iter()
                    .map(|&v| flip(v))
                    .collect()
            }
            DataType::Int32 | DataType::Date32 | DataType::Time32(_) => {
                ScalarBuffer::<i32>::new(values(), data.offset(), data.len())
                    .iter()
                    .map(|&v| flip(i64::from(v)))
                    .collect()
            }
            _ => return None,
        })
    }
    let (first, second) = match columns {
        [first] => (ordered(first)?, vec![0; first.len()]),
        [first, second] => (ordered(first)?, ordered(second)?),
        _ => return None,
    };
    Some(
        first
            .into_iter()
            .zip(second)
            .enumerate()
            .map(|(index, (first, second))| (first, second, index as u32))
            .collect(),
    )
}

/// Which groups to emit.
pub(crate) enum Pick<'a> {
    /// Groups whose window has closed (`ON WINDOW CLOSE`).
    Closed,
    /// Every group (`COMPLETE`).
    All,
    /// The groups one update touched (`CHANGES`).
    Touched(&'a Update),
}

/// Partial states per pane (`window_start`/`window_end` the pane's bounds)
/// as partial states per window: each row once for every window holding
/// its pane, with that window's bounds, leaving out windows that closed at
/// or before `closed_before`.
///
/// The rows come out window by window (the panes of a window in order), so
/// that the merge of the states builds each window's groups in one piece,
/// while its table is in cache.
fn expand_panes(
    batch: &RecordBatch,
    schema: &SchemaRef,
    start: usize,
    end: Option<usize>,
    panes: Panes,
    closed_before: Option<i64>,
) -> Result<RecordBatch> {
    let pane_starts = timestamps(batch, Some(start))?;
    // The rows by pane (rows of a pane in their order), and each pane's
    // range of them.
    let mut by_pane: Vec<u32> = (0..batch.num_rows())
        .filter(|&row| pane_starts.is_valid(row))
        .map(|row| row as u32)
        .collect();
    by_pane.sort_by_key(|&row| pane_starts.value(row as usize));
    let mut ranges: Vec<(i64, std::ops::Range<usize>)> = Vec::new();
    for (at, &row) in by_pane.iter().enumerate() {
        let pane = pane_starts.value(row as usize);
        match ranges.last_mut() {
            Some((last, range)) if *last == pane => range.end = at + 1,
            _ => ranges.push((pane, at..at + 1)),
        }
    }
    // Each open window with each of its panes, window by window.
    let mut pieces: Vec<(i64, usize)> = Vec::new();
    for (index, (pane, _)) in ranges.iter().enumerate() {
        for window in panes.window_starts(*pane) {
            if closed_before.is_none_or(|watermark| window + panes.size_ms > watermark) {
                pieces.push((window, index));
            }
        }
    }
    pieces.sort_unstable();
    let total: usize = pieces.iter().map(|(_, i)| ranges[*i].1.len()).sum();
    let mut rows: Vec<u32> = Vec::with_capacity(total);
    let mut window_starts: Vec<i64> = Vec::with_capacity(total);
    for (window, index) in pieces {
        let range = ranges[index].1.clone();
        rows.extend_from_slice(&by_pane[range.clone()]);
        window_starts.extend(std::iter::repeat_n(window, range.len()));
    }
    let taken = take_record_batch(batch, &UInt32Array::from(rows))
        .map_err(|e| Error::Internal(format!("expanding panes: {e}")))?;
    let mut columns = taken.columns().to_vec();
    let bounds = |index: usize, values: Vec<i64>| -> ArrayRef {
        let time_zone = match schema.field(index).data_type() {
            DataType::Timestamp(_, time_zone) => time_zone.clone(),
            _ => None,
        };
        Arc::new(TimestampMillisecondArray::from(values).with_timezone_opt(time_zone))
    };
    if let Some(end) = end {
        let ends = window_starts.iter().map(|w| w + panes.size_ms).collect();
        columns[end] = bounds(end, ends);
    }
    columns[start] = bounds(start, window_starts);
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("expanded panes: {e}")))
}

/// A window column of the state.
fn timestamps(state: &RecordBatch, index: Option<usize>) -> Result<&TimestampMillisecondArray> {
    index
        .and_then(|i| {
            state
                .column(i)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
        })
        .ok_or_else(|| Error::Internal("the window columns are not TIMESTAMP(ms) groups".into()))
}

/// Session windows of the stored state and of a micro-batch, merged: rows
/// of one key whose `[window_start, window_end)` overlap get the merged
/// session's bounds, so the reduce stage then merges their states. (A row
/// at a session's very end starts a new one, as in bounded queries.)
fn merge_sessions(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    groups: usize,
    start: usize,
    end: usize,
) -> Result<RecordBatch> {
    let batch = concat_batches(schema, batches)
        .map_err(|e| Error::Internal(format!("joining sessions: {e}")))?;
    let rows = batch.num_rows();
    let key_columns: Vec<ArrayRef> = (0..groups)
        .filter(|i| *i != start && *i != end)
        .map(|i| batch.column(i).clone())
        .collect();
    let keys = if key_columns.is_empty() {
        None
    } else {
        let converter = RowConverter::new(
            key_columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::Internal(format!("session keys: {e}")))?;
        Some(
            converter
                .convert_columns(&key_columns)
                .map_err(|e| Error::Internal(format!("session keys: {e}")))?,
        )
    };
    let key = |i: usize| keys.as_ref().map(|k| k.row(i));
    let starts = timestamps(&batch, Some(start))?;
    let ends = timestamps(&batch, Some(end))?;
    let mut order: Vec<usize> = (0..rows).collect();
    order.sort_by(|&a, &b| {
        key(a)
            .cmp(&key(b))
            .then(starts.value(a).cmp(&starts.value(b)))
    });
    let mut new_starts = vec![0i64; rows];
    let mut new_ends = vec![0i64; rows];
    let mut run: Vec<usize> = Vec::new();
    let (mut run_start, mut run_end) = (0i64, 0i64);
    let mut close = |run: &mut Vec<usize>, s: i64, e: i64| {
        for &i in run.iter() {
            new_starts[i] = s;
            new_ends[i] = e;
        }
        run.clear();
    };
    for &i in &order {
        let joins = run
            .first()
            .is_some_and(|&first| key(first) == key(i) && starts.value(i) < run_end);
        if joins {
            run_end = run_end.max(ends.value(i));
        } else {
            close(&mut run, run_start, run_end);
            run_start = starts.value(i);
            run_end = ends.value(i);
        }
        run.push(i);
    }
    close(&mut run, run_start, run_end);
    let mut columns = batch.columns().to_vec();
    let data_type = batch.column(start).data_type().clone();
    let rebuilt = |values: Vec<i64>| -> Result<ArrayRef> {
        datafusion::arrow::compute::cast(&TimestampMillisecondArray::from(values), &data_type)
            .map_err(|e| Error::Internal(format!("session bounds: {e}")))
    };
    columns[start] = rebuilt(new_starts)?;
    columns[end] = rebuilt(new_ends)?;
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::Internal(format!("merged sessions: {e}")))
}

fn converter(batch: &RecordBatch, groups: usize) -> Result<RowConverter> {
    RowConverter::new(
        batch.columns()[..groups]
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(|e| Error::Internal(format!("group keys: {e}")))
}

fn row_keys(batches: &[RecordBatch], groups: usize) -> Result<HashSet<Vec<u8>>> {
    let mut keys = HashSet::new();
    let Some(first) = batches.first() else {
        return Ok(keys);
    };
    let converter = converter(first, groups)?;
    for batch in batches {
        let columns: Vec<ArrayRef> = batch.columns()[..groups].to_vec();
        let rows = converter
            .convert_columns(&columns)
            .map_err(|e| Error::Internal(format!("group keys: {e}")))?;
        for row in rows.iter() {
            keys.insert(row.as_ref().to_vec());
        }
    }
    Ok(keys)
}

/// Few big batches: the state is re-read at every trigger.
fn compact(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if batches.len() <= 1 {
        return Ok(batches);
    }
    Ok(vec![concat_batches(schema, &batches).map_err(|e| {
        Error::Internal(format!("joining state: {e}"))
    })?])
}

/// Same columns and types (names of internal state fields aside).
fn same_layout(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::aggregates::AggregateMode;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::AggregateStages;

    /// The state rows of `plan`, sorted, as text.
    async fn sorted_rows(plan: Arc<dyn ExecutionPlan>, context: &SessionContext) -> String {
        sorted_text(&collect(plan, context.task_ctx()).await.unwrap())
    }

    /// The lines of `batches` as a table, sorted.
    fn sorted_text(batches: &[RecordBatch]) -> String {
        let mut lines: Vec<String> = pretty_format_batches(batches)
            .unwrap()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines.join("\n")
    }

    /// A two-partition session holding `batch` as table `t`, and the
    /// physical plan of `sql` over it.
    async fn physical_plan(
        batch: RecordBatch,
        sql: &str,
    ) -> (SessionContext, Arc<dyn ExecutionPlan>) {
        let context =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        context.register_batch("t", batch).unwrap();
        let plan = context
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        (context, plan)
    }

    /// A `window_end` computed as `window_start` plus a constant is left out
    /// of the partial stage's keys and added back after: the same state
    /// rows as the plain stage, on both sides of zero and across window
    /// boundaries.
    #[tokio::test]
    async fn a_derived_window_end_is_not_a_group_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        let times: [i64; 8] = [0, 9_999, 10_000, 25_000, -1, -10_000, 10_000, 0];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(1..=times.len() as i64)),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    times.iter().map(|t| t - t.rem_euclid(10_000)),
                )),
            ],
        )
        .unwrap();
        let (context, plan) = physical_plan(
            batch,
            "SELECT max(price) AS top, count(*) AS n, window_end FROM (SELECT price, ts AS \
                 window_start, ts + arrow_cast(10000, 'Duration(Millisecond)') AS window_end \
                 FROM t) GROUP BY window_start, window_end",
        )
        .await;
        let stages = AggregateStages::find(&plan).unwrap();
        let derived = stages.partial(stages.input.clone(), None).unwrap();
        let projection = derived
            .downcast_ref::<ProjectionExec>()
            .expect("the partial stage adds the window end after aggregating");
        assert!(
            projection.input().is::<super::RunPartialExec>(),
            "grouped by the window alone: rows are grouped by runs"
        );
        let plain = stages
            .stage(AggregateMode::Partial, stages.input.clone())
            .unwrap();
        assert_eq!(
            sorted_rows(derived, &context).await,
            sorted_rows(plain, &context).await
        );
    }

    /// Rows of (price, window in tens of seconds, name) for the run stage:
    /// NULLs, windows out of order, and runs of one window.
    fn window_rows()
    -> impl proptest::strategy::Strategy<Value = Vec<(Option<i64>, Option<i64>, Option<String>)>>
    {
        use proptest::prelude::*;
        let row = (
            proptest::option::weighted(0.9, -50i64..50),
            proptest::option::weighted(0.95, -2i64..4),
            proptest::option::weighted(0.8, "[a-c]{0,2}"),
        );
        proptest::collection::vec((row, 1usize..20), 0..12).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(row, repeat)| std::iter::repeat_n(row, repeat))
                .collect()
        })
    }

    /// [`window_rows`] as a batch `t(price, ts, name)`, windows ten
    /// seconds apart.
    fn window_batch(rows: &[(Option<i64>, Option<i64>, Option<String>)]) -> RecordBatch {
        use datafusion::arrow::array::StringArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter()
                        .map(|r| r.1.map(|w| w * 10_000))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// The run stage gives the plain `Partial` stage's state rows (the
    /// window end added back), with or without closed windows left out,
    /// grouped by the window alone or with a second integer key (NULLs
    /// included) on either side of it; an aggregate it cannot take (one
    /// with an `ORDER BY`) or a key of another type keeps DataFusion's stage.
    #[test]
    fn the_run_stage_gives_the_plain_stages_states() {
        use proptest::test_runner::{Config, TestRunner};

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let strategy = (window_rows(), proptest::option::of(-3i64..4));
        TestRunner::new(Config::with_cases(64))
            .run(&strategy, |(rows, open_after)| {
                let batch = window_batch(&rows);
                let open_after = open_after.map(|w| w * 10_000);
                let all = "max(price) AS top, count(*) AS n, sum(price) FILTER (WHERE price > 0) \
                           AS up, avg(price) AS mean, min(name) AS first, count(name) AS names";
                for (aggregates, keys, runs) in [
                    (all, "window_start, window_end", true),
                    (
                        "first_value(price ORDER BY name) AS first_price",
                        "window_start, window_end",
                        false,
                    ),
                    // A second key, after the window and before it.
                    (all, "window_start, window_end, price", true),
                    (all, "price, window_start, window_end", true),
                    // A key that is not a 64-bit integer.
                    (all, "window_start, window_end, name", false),
                ] {
                    let sql = format!(
                        "SELECT {aggregates}, window_end FROM (SELECT price, name, ts AS \
                         window_start, ts + arrow_cast(10000, 'Duration(Millisecond)') AS \
                         window_end FROM t) GROUP BY {keys}"
                    );
                    let (got, want, used_runs) = runtime.block_on(async {
                        let (context, plan) = physical_plan(batch.clone(), &sql).await;
                        let stages = AggregateStages::find(&plan).unwrap();
                        let derived = stages.partial(stages.input.clone(), open_after).unwrap();
                        let used_runs = derived
                            .downcast_ref::<ProjectionExec>()
                            .is_some_and(|p| p.input().is::<super::RunPartialExec>());
                        let filtered = stages.open_rows(stages.input.clone(), open_after).unwrap();
                        let plain = stages.stage(AggregateMode::Partial, filtered).unwrap();
                        (
                            sorted_rows(derived, &context).await,
                            sorted_rows(plain, &context).await,
                            used_runs,
                        )
                    });
                    proptest::prop_assert_eq!(used_runs, runs);
                    proptest::prop_assert_eq!(got, want);
                }
                Ok(())
            })
            .unwrap();
    }

    /// Merging state rows by their integer keys (the window end carried
    /// from each group's first row) gives what DataFusion's
    /// `PartialReduce` stage gives: states from several partitions and
    /// repeated batches, NULL keys, the key on either side of the window.
    #[test]
    fn merging_states_by_integer_keys_matches_the_reduce_stage() {
        use datafusion::datasource::memory::MemorySourceConfig;
        use proptest::test_runner::{Config, TestRunner};

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        TestRunner::new(Config::with_cases(48))
            .run(&window_rows(), |rows| {
                let batch = window_batch(&rows);
                for (keys, merged_by_keys) in [
                    ("window_start, window_end", true),
                    ("window_start, window_end, price", true),
                    ("price, window_start, window_end", true),
                    ("window_start, window_end, name", false),
                    // No window: no runs to look keys up by.
                    ("price", false),
                ] {
                    let sql = format!(
                        "SELECT count(*) AS n, max(price) AS top, avg(price) AS mean, \
                         min(name) AS first FROM (SELECT price, name, ts AS window_start, ts + \
                         arrow_cast(10000, 'Duration(Millisecond)') AS window_end FROM t) \
                         GROUP BY {keys}"
                    );
                    let (got, want) = runtime.block_on(async {
                        let (context, plan) = physical_plan(batch.clone(), &sql).await;
                        let stages = AggregateStages::find(&plan).unwrap();
                        let partial = stages
                            .stage(AggregateMode::Partial, stages.input.clone())
                            .unwrap();
                        let state_schema = partial.schema();
                        let mut states = collect(partial, context.task_ctx()).await.unwrap();
                        states.extend(states.clone());
                        let source = MemorySourceConfig::try_new_exec(
                            std::slice::from_ref(&states),
                            state_schema.clone(),
                            None,
                        )
                        .unwrap();
                        let reduce = stages.stage(AggregateMode::PartialReduce, source).unwrap();
                        let want = sorted_rows(reduce, &context).await;
                        let end = stages
                            .dependent_end(Some(super::WindowClose::Fixed { size_ms: 10_000 }));
                        assert_eq!(end.is_some(), keys.contains("window_end"));
                        let got = stages
                            .reduce_by_keys(&state_schema, &states, end)
                            .unwrap()
                            // No groups: no rows, as the stage gives none.
                            .map(|batch| {
                                let batches: Vec<RecordBatch> = std::iter::once(batch)
                                    .filter(|b| b.num_rows() > 0)
                                    .collect();
                                sorted_text(&batches)
                            });
                        (got, want)
                    });
                    proptest::prop_assert_eq!(got.is_some(), merged_by_keys, "{}", keys);
                    if let Some(got) = got {
                        proptest::prop_assert_eq!(got, want, "{}", keys);
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    /// Final values computed row by row from unique state rows equal
    /// DataFusion's `Final` stage, for aggregates of several state shapes;
    /// state rows that repeat a group take the `Final` stage and are still
    /// merged.
    #[tokio::test]
    async fn final_values_of_unique_state_rows_match_the_final_stage() {
        use datafusion::arrow::array::{Float64Array, StringArray};

        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(3),
                    Some(1),
                    None,
                    Some(3),
                    Some(-2),
                    Some(1),
                    None,
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    None,
                    Some(-2.0),
                    Some(4.0),
                    Some(0.0),
                    Some(7.25),
                    None,
                ])),
                Arc::new(StringArray::from(vec![
                    Some("b"),
                    Some("a"),
                    None,
                    Some("c"),
                    Some("a"),
                    None,
                    Some("z"),
                ])),
            ],
        )
        .unwrap();
        let (context, plan) = physical_plan(
            batch,
            "SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS total, avg(v) AS mean, \
                 min(s) AS low, max(v) AS high FROM t GROUP BY k",
        )
        .await;
        let stages = AggregateStages::find(&plan).unwrap();
        let partial = stages
            .stage(AggregateMode::Partial, stages.input.clone())
            .unwrap();
        let state_schema = partial.schema();
        let state = collect(partial, context.task_ctx()).await.unwrap();
        let run = |mode: AggregateMode, state: Vec<RecordBatch>| {
            let source = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[state],
                state_schema.clone(),
                None,
            )
            .unwrap();
            stages.stage(mode, source).unwrap()
        };
        // The partial stage may give a group several rows: merge them into
        // one row per group first, as the state keeps them.
        let unique = collect(run(AggregateMode::PartialReduce, state), context.task_ctx())
            .await
            .unwrap();
        let merged = concat_batches(&state_schema, &unique).unwrap();
        let (_, was_unique) = super::sort_indices(&merged, &[0]).unwrap();
        assert!(was_unique);
        // Then each group in one state row (the row-by-row path), and in
        // two (the Final stage merges them).
        for state in [vec![merged.clone()], vec![merged.clone(), merged.clone()]] {
            let expected = sorted_rows(run(AggregateMode::Final, state.clone()), &context).await;
            let (finals, schema) = super::AggregateState::finalize(
                &stages,
                state.clone(),
                state_schema.clone(),
                None,
                context.task_ctx(),
            )
            .await
            .unwrap();
            if state.len() == 1 {
                assert!(stages.finalize_unique(&merged, &schema).unwrap().is_some());
            }
            assert_eq!(finals[0].num_rows(), 4);
            assert_eq!(sorted_text(&finals), expected);
        }
    }

    type GroupRow = (Option<i64>, Option<i64>, Option<String>);

    /// Rows of (window start, key, optional text) with negative numbers
    /// and, unless `nulls` is false, NULLs (integer columns without NULLs
    /// take their own path); and which columns to order by: the window
    /// start alone, then the key, then the text (rows of varying width,
    /// which take the comparator path).
    fn group_rows() -> impl proptest::strategy::Strategy<Value = (Vec<GroupRow>, usize)> {
        use proptest::prelude::*;
        let row = (
            proptest::option::weighted(0.9, -3i64..3),
            proptest::option::weighted(0.9, prop_oneof![-2i64..2, Just(i64::MIN), Just(i64::MAX)]),
            proptest::option::weighted(0.8, "[a-c]{0,3}"),
        );
        (
            proptest::collection::vec(row, 0..60),
            any::<bool>(),
            1usize..=3,
        )
            .prop_map(|(mut rows, nulls, columns)| {
                if !nulls {
                    for row in &mut rows {
                        row.0.get_or_insert(1);
                        row.1.get_or_insert(-1);
                    }
                }
                (rows, columns)
            })
    }

    proptest::proptest! {
        /// The emit order is the order of arrow's `lexsort` by the same
        /// columns, whichever way the rows are compared.
        #[test]
        fn emitted_rows_sort_as_lexsort_does((rows, order_columns) in group_rows()) {
            use datafusion::arrow::array::{ArrayRef, StringArray};
            use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};

            let start: ArrayRef = Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.0.map(|w| w * 2000)).collect::<Vec<_>>(),
            ));
            let key: ArrayRef = Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()));
            let mut fields = vec![
                Field::new("key", DataType::Int64, true),
                Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            ];
            let mut columns = vec![key, start];
            let with_text = order_columns == 3;
            if with_text {
                fields.push(Field::new("text", DataType::Utf8, true));
                columns.push(Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
                )));
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
            let order = [1, 0, 2][..order_columns].to_vec();
            let (got, unique) = super::sort_indices(&batch, &order).unwrap();
            let distinct: std::collections::HashSet<_> = rows
                .iter()
                .map(|r| {
                    let key = (order_columns > 1).then_some(r.1);
                    (r.0, key, if with_text { r.2.clone() } else { None })
                })
                .collect();
            proptest::prop_assert_eq!(unique, distinct.len() == rows.len());
            let sort_columns: Vec<SortColumn> = order
                .iter()
                .map(|&i| SortColumn { values: batch.column(i).clone(), options: None })
                .collect();
            let want = lexsort_to_indices(&sort_columns, None).unwrap();
            // Rows equal in the ordered columns may come in any order.
            let ordered = batch.project(&order).unwrap();
            proptest::prop_assert_eq!(
                take_record_batch(&ordered, &got).unwrap(),
                take_record_batch(&ordered, &want).unwrap()
            );
        }
    }
}
