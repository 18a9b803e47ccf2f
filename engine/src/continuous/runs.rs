//! A `Partial` aggregate stage for aggregates grouped by a window and at
//! most one more 64-bit key, and the key index it shares with the merge
//! of stored states.
//!
//! A TUMBLE or HOP aggregate groups by `window_start` (the end is derived,
//! see `AggregateStages::partial`), alone or with a key such as an auction
//! id. Rows of a log batch come mostly in time order, so the window start
//! repeats over long runs of rows. [`KeyIndex`] looks a start up only where
//! a run begins, and the second key in a small table of that window's own
//! keys, which stays in cache, where DataFusion's `Partial` stage hashes
//! every row's keys into one table of all groups. The rows then go to
//! DataFusion's own groups accumulators, as in that stage, and the output
//! is that stage's: one row of states per group.
//!
//! When the stage reads a projection, it evaluates its keys and arguments
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
    DataType, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
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
use rustc_hash::FxBuildHasher;

type DfResult<T> = datafusion::common::Result<T>;

/// The `Partial` stage of an aggregate grouped by one or two 64-bit
/// columns, the first (the window start) coming in runs; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct RunPartialExec {
    /// What it reads: the stage's input, or the input of the projection
    /// the stage's input was.
    input: Arc<dyn ExecutionPlan>,
    /// The group keys, over `input`, in the output's order.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Which of `keys` is looked up first: the one that comes in runs.
    leading: usize,
    /// Each aggregate's arguments and `FILTER`, over `input`.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
    /// Rows whose leading key is at or below this (windows already
    /// closed) are left out, as a filter `key > open_after` under the
    /// stage would.
    open_after: Option<i64>,
    /// The plain `Partial` stage's output: the keys, then the states.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl RunPartialExec {
    /// The run stage for `aggr_expr` grouped by `keys` over `input`, with
    /// `keys[leading]` the key whose values come in runs, giving `schema`
    /// (the plain `Partial` stage's). `None` when it does not apply: more
    /// than two keys, a key that is not a 64-bit integer or timestamp, or
    /// an aggregate that [`plain_aggregates`] turns down.
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        leading: usize,
        aggr_expr: Vec<Arc<AggregateFunctionExpr>>,
        filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
        open_after: Option<i64>,
        schema: SchemaRef,
    ) -> DfResult<Option<Self>> {
        if keys.is_empty() || keys.len() > 2 || leading >= keys.len() {
            return Ok(None);
        }
        for (position, key) in keys.iter().enumerate() {
            let key_type = key.data_type(&input.schema())?;
            if !is_i64_like(&key_type)
                || schema.fields().get(position).map(|f| f.data_type()) != Some(&key_type)
            {
                return Ok(None);
            }
        }
        if !plain_aggregates(&aggr_expr) || filters.len() != aggr_expr.len() {
            return Ok(None);
        }
        // `open_after` is a window start, in milliseconds.
        let leading_type = keys[leading].data_type(&input.schema())?;
        if open_after.is_some()
            && !matches!(leading_type, DataType::Timestamp(TimeUnit::Millisecond, _))
        {
            return Ok(None);
        }
        let mut arguments: Vec<Vec<Arc<dyn PhysicalExpr>>> =
            aggr_expr.iter().map(|expr| expr.expressions()).collect();
        let (mut input, mut keys, mut filters) = (input, keys, filters);
        // Read under a projection: its unused columns are never computed.
        if let Some(projection) = input.downcast_ref::<ProjectionExec>() {
            let inline = |expr: &Arc<dyn PhysicalExpr>| {
                update_expr(expr, projection.expr(), true)?.ok_or_else(|| {
                    internal_datafusion_err!("{expr} does not read through the projection")
                })
            };
            for key in keys.iter_mut() {
                *key = inline(key)?;
            }
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
            keys,
            leading,
            arguments,
            filters,
            aggr_expr,
            open_after,
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// Whether every aggregate merges through a groups accumulator with rows
/// numbered by group: none is `DISTINCT` or ordered (`first_value(x ORDER
/// BY y)`), and each has a groups accumulator.
pub(crate) fn plain_aggregates(aggr_expr: &[Arc<AggregateFunctionExpr>]) -> bool {
    aggr_expr.iter().all(|expr| {
        !expr.is_distinct() && expr.order_bys().is_empty() && expr.groups_accumulator_supported()
    })
}

/// Whether values of `data_type` are 64-bit integers in memory, which
/// [`KeyIndex`] takes as keys.
pub(crate) fn is_i64_like(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Int64 | DataType::Timestamp(..))
}

impl DisplayAs for RunPartialExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.aggr_expr.iter().map(|e| e.name()).collect();
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        write!(
            f,
            "RunPartialExec: keys=[{}], aggr=[{}]",
            keys.join(", "),
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
        let mut recursion = TreeNodeRecursion::Continue;
        for expr in self
            .keys
            .iter()
            .chain(self.arguments.iter().flatten())
            .chain(self.filters.iter().flatten())
        {
            recursion = f(expr)?;
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
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
            keys: self.keys.clone(),
            leading: self.leading,
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
            keys: self.keys.clone(),
            leading: self.leading,
            arguments: self.arguments.clone(),
            filters: self.filters.clone(),
            open_after: self.open_after,
            schema: self.schema.clone(),
            index: KeyIndex::default(),
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
    keys: Vec<Arc<dyn PhysicalExpr>>,
    leading: usize,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    open_after: Option<i64>,
    schema: SchemaRef,
    index: KeyIndex,
    /// The group of each row of the batch at hand.
    indices: Vec<usize>,
}

impl RunGroups {
    fn update(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let keys = self
            .keys
            .iter()
            .map(|key| key.evaluate(batch)?.into_array(rows))
            .collect::<DfResult<Vec<ArrayRef>>>()?;
        let trailing = (self.keys.len() == 2).then(|| &keys[1 - self.leading]);
        self.indices.clear();
        self.index
            .assign(&keys[self.leading], trailing, None, &mut self.indices)?;
        let total_groups = self.index.len();
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

    /// The state rows of the groups kept. Rows of windows that closed
    /// (leading key at or below `open_after`, or NULL) are left out, as
    /// the filter `key > open_after` would leave them out: a group's rows
    /// all have its key, so leaving out the group leaves out its rows.
    fn emit(mut self) -> DfResult<RecordBatch> {
        let open: Option<Vec<bool>> = self.open_after.map(|bound| {
            self.index.keys[0]
                .iter()
                .map(|key| key.is_some_and(|value| value > bound))
                .collect()
        });
        let index = std::mem::take(&mut self.index);
        let leading_type = self.schema.field(self.leading).data_type();
        let mut columns: Vec<ArrayRef> = match self.keys.len() {
            1 => vec![index.finish(leading_type, None, None)?.0],
            _ => {
                let trailing = 1 - self.leading;
                let trailing_type = self.schema.field(trailing).data_type();
                let (first, second, _) = index.finish(leading_type, Some(trailing_type), None)?;
                let second = second.ok_or_else(|| internal_datafusion_err!("no second keys"))?;
                if self.leading == 0 {
                    vec![first, second]
                } else {
                    vec![second, first]
                }
            }
        };
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        match open {
            Some(open) if !open.iter().all(|&open| open) => {
                let open = BooleanArray::from(open);
                let columns = columns
                    .iter()
                    .map(|column| filter(column, &open))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
            }
            _ => Ok(RecordBatch::try_new(self.schema.clone(), columns)?),
        }
    }
}

/// A map from keys to their table, with a fast hash for integer keys.
type FxHashMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// Group numbers of rows keyed by one 64-bit column, the leading key, and
/// optionally a second one (`None` stands for NULL).
///
/// The leading key is looked up only where its value changes from the
/// row before: it is meant to be a window start, which repeats over long
/// runs of rows. Each leading value has its own small table of second
/// keys, so the table a row is looked up in holds one window's keys and
/// stays in cache, where one table of every group would not.
///
/// A group's number is its place in order of first appearance, and each
/// group keeps its key values (and optionally one more column's value at
/// its first row, for a column that follows from the keys).
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// Each leading value's table of second keys, by position in `tables`.
    leading: FxHashMap<Option<i64>, usize>,
    tables: Vec<FxHashMap<Option<i64>, usize>>,
    /// Each group's leading key, second key and carried value.
    keys: [Vec<Option<i64>>; 3],
}

impl KeyIndex {
    /// The number of groups.
    pub(crate) fn len(&self) -> usize {
        self.keys[0].len()
    }

    /// Appends the group of each row of `leading` (with `trailing`, the
    /// second key, when there is one) to `groups`, making new groups for
    /// keys not seen before. A new group keeps the value `carried` has at
    /// the row that made it.
    pub(crate) fn assign(
        &mut self,
        leading: &ArrayRef,
        trailing: Option<&ArrayRef>,
        carried: Option<&ArrayRef>,
        groups: &mut Vec<usize>,
    ) -> DfResult<()> {
        let rows = leading.len();
        let leading = Keys::new(leading)?;
        let trailing = trailing.map(Keys::new).transpose()?;
        let carried = carried.map(Keys::new).transpose()?;
        groups.reserve(rows);
        let mut row = 0;
        while row < rows {
            // A run of one leading value: its table is looked up once.
            let value = leading.at(row);
            let end = match &leading.nulls {
                None => {
                    let rest = &leading.values[row + 1..];
                    row + 1
                        + rest
                            .iter()
                            .take_while(|&&v| v == leading.values[row])
                            .count()
                }
                Some(_) => {
                    let mut end = row + 1;
                    while end < rows && leading.at(end) == value {
                        end += 1;
                    }
                    end
                }
            };
            let next_table = self.tables.len();
            let table = *self.leading.entry(value).or_insert(next_table);
            if table == next_table {
                self.tables.push(FxHashMap::default());
            }
            match &trailing {
                None => {
                    let group = self.group_in(table, value, None, &carried, row);
                    groups.resize(groups.len() + end - row, group);
                }
                Some(trailing) => {
                    for at in row..end {
                        let group = self.group_in(table, value, trailing.at(at), &carried, at);
                        groups.push(group);
                    }
                }
            }
            row = end;
        }
        Ok(())
    }

    /// The group of `(first, second)` in `table`, made at `row` if new.
    fn group_in(
        &mut self,
        table: usize,
        first: Option<i64>,
        second: Option<i64>,
        carried: &Option<Keys<'_>>,
        row: usize,
    ) -> usize {
        let next = self.keys[0].len();
        let group = *self.tables[table].entry(second).or_insert(next);
        if group == next {
            self.keys[0].push(first);
            self.keys[1].push(second);
            if let Some(carried) = carried {
                self.keys[2].push(carried.at(row));
            }
        }
        group
    }

    /// The groups' leading keys as an array of `leading`, and their second
    /// keys and carried values as arrays of `trailing` and `carried` when
    /// given.
    pub(crate) fn finish(
        self,
        leading: &DataType,
        trailing: Option<&DataType>,
        carried: Option<&DataType>,
    ) -> DfResult<(ArrayRef, Option<ArrayRef>, Option<ArrayRef>)> {
        let groups = self.len();
        let [first, second, third] = self.keys;
        let array = |values: Vec<Option<i64>>, data_type: &DataType| -> DfResult<ArrayRef> {
            if values.len() != groups {
                return internal_err!("{} key values for {groups} groups", values.len());
            }
            let data = Int64Array::from(values)
                .into_data()
                .into_builder()
                .data_type(data_type.clone())
                .build()?;
            Ok(make_array(data))
        };
        Ok((
            array(first, leading)?,
            trailing.map(|t| array(second, t)).transpose()?,
            carried.map(|t| array(third, t)).transpose()?,
        ))
    }
}

/// The values of a 64-bit key column and its NULLs.
struct Keys<'a> {
    values: &'a [i64],
    nulls: Option<datafusion::arrow::buffer::NullBuffer>,
}

impl<'a> Keys<'a> {
    fn new(array: &'a ArrayRef) -> DfResult<Self> {
        Ok(Keys {
            values: i64_values(array)?,
            nulls: array.logical_nulls(),
        })
    }

    fn at(&self, row: usize) -> Option<i64> {
        match &self.nulls {
            Some(nulls) if nulls.is_null(row) => None,
            _ => Some(self.values[row]),
        }
    }
}

/// The values of an `Int64` or timestamp array as `i64`s.
fn i64_values(array: &ArrayRef) -> DfResult<&[i64]> {
    match array.data_type() {
        DataType::Int64 => Ok(array.as_primitive::<Int64Type>().values()),
        DataType::Timestamp(TimeUnit::Second, _) => {
            Ok(array.as_primitive::<TimestampSecondType>().values())
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Ok(array.as_primitive::<TimestampMillisecondType>().values())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(array.as_primitive::<TimestampMicrosecondType>().values())
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Ok(array.as_primitive::<TimestampNanosecondType>().values())
        }
        other => internal_err!("a 64-bit key of type {other}"),
    }
}
