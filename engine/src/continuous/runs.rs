//! A `Partial` aggregate stage for aggregates grouped by the window alone.
//!
//! A TUMBLE or HOP aggregate with no other key groups by `window_start`
//! (the end is derived, see `AggregateStages::partial`). Rows of a log
//! batch come mostly in time order, so the window start repeats over long
//! runs of rows: this stage finds each row's group by comparing its start
//! with the row before, and looks a start up only where a run begins,
//! where DataFusion's `Partial` stage hashes every row. The rows then go
//! to DataFusion's own groups accumulators, as in that stage, and the
//! output is that stage's: one row of states per window.
//!
//! When the stage reads a projection, it evaluates its key and arguments
//! over the projection's input, through the projection's expressions, so
//! the columns it does not use (the window end) are never computed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, make_array,
};
use datafusion::arrow::compute::filter;
use datafusion::arrow::datatypes::{
    DataType, Int64Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, internal_datafusion_err, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::{ProjectionExec, update_expr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

type DfResult<T> = datafusion::common::Result<T>;

/// The `Partial` stage of an aggregate grouped by one 64-bit column whose
/// values come in runs; see the module documentation.
#[derive(Debug)]
pub(crate) struct RunPartialExec {
    /// What it reads: the stage's input, or the input of the projection
    /// the stage's input was.
    input: Arc<dyn ExecutionPlan>,
    /// The group key, over `input`.
    key: Arc<dyn PhysicalExpr>,
    /// Each aggregate's arguments and `FILTER`, over `input`.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    /// Rows whose key is at or below this (windows already closed) are
    /// left out, as a filter `key > open_after` under the stage would.
    open_after: Option<i64>,
    /// The plain `Partial` stage's output: the key, then the states.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl RunPartialExec {
    /// The run stage for `aggr_expr` grouped by `key` over `input`, giving
    /// `schema` (the plain `Partial` stage's). `None` when it does not
    /// apply: a key that is not a 64-bit integer or millisecond timestamp,
    /// or an aggregate that is `DISTINCT`, ordered (`first_value(x ORDER
    /// BY y)`), or has no groups accumulator.
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        key: Arc<dyn PhysicalExpr>,
        aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        open_after: Option<i64>,
        schema: SchemaRef,
    ) -> DfResult<Option<Self>> {
        let key_type = key.data_type(&input.schema())?;
        if !is_i64_like(&key_type)
            || schema.fields().first().map(|f| f.data_type()) != Some(&key_type)
        {
            return Ok(None);
        }
        let plain = aggr_expr.iter().all(|expr| {
            !expr.is_distinct()
                && expr.order_bys().is_empty()
                && expr.groups_accumulator_supported()
        });
        if !plain || filters.len() != aggr_expr.len() {
            return Ok(None);
        }
        let mut arguments: Vec<Vec<Arc<dyn PhysicalExpr>>> =
            aggr_expr.iter().map(|expr| expr.expressions()).collect();
        let (mut input, mut key, mut filters) = (input, key, filters);
        // Read under a projection: its unused columns are never computed.
        if let Some(projection) = input.downcast_ref::<ProjectionExec>() {
            let inline = |expr: &Arc<dyn PhysicalExpr>| {
                update_expr(expr, projection.expr(), true)?.ok_or_else(|| {
                    internal_datafusion_err!("{expr} does not read through the projection")
                })
            };
            key = inline(&key)?;
            for expressions in &mut arguments {
                for expr in expressions.iter_mut() {
                    *expr = inline(expr)?;
                }
            }
            for expr in filters.iter_mut().flatten() {
                *expr = inline(expr)?;
            }
            input = projection.input().clone();
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Some(RunPartialExec {
            input,
            key,
            arguments,
            filters,
            aggr_expr,
            open_after,
            schema,
            properties: Arc::new(properties),
        }))
    }
}

fn is_i64_like(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int64 | DataType::Timestamp(TimeUnit::Millisecond, _)
    )
}

impl DisplayAs for RunPartialExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.aggr_expr.iter().map(|e| e.name()).collect();
        write!(
            f,
            "RunPartialExec: key={}, aggr=[{}]",
            self.key,
            names.join(", ")
        )?;
        if let Some(bound) = self.open_after {
            write!(f, ", open_after={bound}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RunPartialExec {
    fn name(&self) -> &'static str {
        "RunPartialExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        let mut recursion = f(&self.key)?;
        for expr in self
            .arguments
            .iter()
            .flatten()
            .chain(self.filters.iter().flatten())
        {
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
            recursion = f(expr)?;
        }
        Ok(recursion)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("RunPartialExec has one child".into()))?;
        Ok(Arc::new(RunPartialExec {
            input,
            key: self.key.clone(),
            arguments: self.arguments.clone(),
            filters: self.filters.clone(),
            aggr_expr: self.aggr_expr.clone(),
            open_after: self.open_after,
            schema: self.schema.clone(),
            properties: self.properties.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let mut input = self.input.execute(partition, context)?;
        let mut groups = RunGroups {
            accumulators: self
                .aggr_expr
                .iter()
                .map(|expr| expr.create_groups_accumulator())
                .collect::<DfResult<_>>()?,
            key: self.key.clone(),
            arguments: self.arguments.clone(),
            filters: self.filters.clone(),
            open_after: self.open_after,
            schema: self.schema.clone(),
            keys: Vec::new(),
            index: HashMap::new(),
            indices: Vec::new(),
        };
        let output = async move {
            while let Some(batch) = input.next().await {
                groups.update(&batch?)?;
            }
            groups.emit()
        };
        // No groups, no batch, as DataFusion's stage.
        let output = futures::stream::once(output)
            .filter(|batch| std::future::ready(!matches!(batch, Ok(b) if b.num_rows() == 0)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            output,
        )))
    }
}

/// One partition's groups and their accumulators.
struct RunGroups {
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    key: Arc<dyn PhysicalExpr>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    open_after: Option<i64>,
    schema: SchemaRef,
    /// Each group's key (`None`: the NULL group).
    keys: Vec<Option<i64>>,
    index: HashMap<Option<i64>, usize>,
    /// The group of each row of the batch at hand.
    indices: Vec<usize>,
}

impl RunGroups {
    fn update(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let key = self.key.evaluate(batch)?.into_array(rows)?;
        let values = i64_values(&key)?;
        let nulls = key.logical_nulls();
        let key_at = |row: usize| match &nulls {
            Some(nulls) if nulls.is_null(row) => None,
            _ => Some(values[row]),
        };
        self.indices.clear();
        self.indices.reserve(rows);
        let mut row = 0;
        while row < rows {
            let value = key_at(row);
            let mut end = row + 1;
            match &nulls {
                None => {
                    end += values[end..]
                        .iter()
                        .take_while(|&&v| v == values[row])
                        .count()
                }
                Some(_) => {
                    while end < rows && key_at(end) == value {
                        end += 1;
                    }
                }
            }
            let group = self.group_of(value);
            self.indices.resize(end, group);
            row = end;
        }
        let total_groups = self.keys.len();
        for ((accumulator, arguments), filter) in self
            .accumulators
            .iter_mut()
            .zip(&self.arguments)
            .zip(&self.filters)
        {
            let arguments = arguments
                .iter()
                .map(|expr| expr.evaluate(batch)?.into_array(rows))
                .collect::<DfResult<Vec<ArrayRef>>>()?;
            let filter = match filter {
                Some(expr) => Some(expr.evaluate(batch)?.into_array(rows)?),
                None => None,
            };
            let filter = filter.as_ref().map(|f| f.as_boolean());
            accumulator.update_batch(&arguments, &self.indices, filter, total_groups)?;
        }
        Ok(())
    }

    /// The group of key `value`, a new one the first time.
    fn group_of(&mut self, value: Option<i64>) -> usize {
        *self.index.entry(value).or_insert_with(|| {
            self.keys.push(value);
            self.keys.len() - 1
        })
    }

    /// Whether rows with group key `value` are kept: those of a window
    /// that closed are left out, as the filter `key > open_after` would
    /// (which `NULL` does not pass either).
    fn is_open(&self, value: Option<i64>) -> bool {
        match (self.open_after, value) {
            (None, _) => true,
            (Some(bound), Some(value)) => value > bound,
            (Some(_), None) => false,
        }
    }

    /// The state rows of the groups kept. A group's rows all have its key,
    /// so leaving out a closed window's group leaves out its rows.
    fn emit(mut self) -> DfResult<RecordBatch> {
        let open: Vec<bool> = self.keys.iter().map(|&key| self.is_open(key)).collect();
        let key_type = self.schema.field(0).data_type().clone();
        let keys = Int64Array::from(std::mem::take(&mut self.keys))
            .into_data()
            .into_builder()
            .data_type(key_type)
            .build()?;
        let mut columns: Vec<ArrayRef> = vec![make_array(keys)];
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        if open.iter().all(|&open| open) {
            return Ok(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        let open = BooleanArray::from(open);
        let columns = columns
            .iter()
            .map(|column| filter(column, &open))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The values of an `Int64` or millisecond timestamp array as `i64`s.
fn i64_values(array: &ArrayRef) -> DfResult<&[i64]> {
    match array.data_type() {
        DataType::Int64 => Ok(array.as_primitive::<Int64Type>().values()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Ok(array.as_primitive::<TimestampMillisecondType>().values())
        }
        other => internal_err!("RunPartialExec: a key of type {other}"),
    }
}
