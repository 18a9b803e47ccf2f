//! The window table functions `TUMBLE`, `HOP` and `SESSION`, planned by a
//! DataFusion `RelationPlanner` into ordinary logical plans that add
//! `window_start` and `window_end` to each row, so that everything
//! DataFusion does with rows works on windowed rows too.
//!
//! - `TUMBLE(t, ts, size)`: `tumble_start(ts, size)`, the epoch-aligned
//!   window holding `ts` (what `date_bin(size, ts)` gives).
//! - `HOP(t, ts, slide, size)`: [`HopStarts`] lists the `size / slide`
//!   windows of a row, then `unnest` makes one row per window.
//! - `SESSION(t, ts, gap, keys...)`: window functions over each key ordered
//!   by time: a row starts a session when it is at least `gap` after the
//!   previous row; a running sum numbers sessions; `min`/`max` of the
//!   session give its bounds. The keys are the `GROUP BY` keys of the query
//!   around it, added by [`prepare_query`] before planning.
//!
//! Rows whose time is NULL belong to no window and are left out.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, Int64Builder, ListArray, PrimitiveArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit, TimestampMillisecondType};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue, plan_err};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, cast, col, lit,
};
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, GroupByExpr, ObjectName, Query, SetExpr, TableAlias,
    TableFactor, TableWithJoins,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::duration::expr_to_duration;
use crate::parser::ident_name;

/// The column a window table function adds for the window's start.
pub const WINDOW_START: &str = "window_start";
/// The column a window table function adds for the window's end (exclusive).
pub const WINDOW_END: &str = "window_end";

/// A window table function, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble { size_ms: i64 },
    Hop { slide_ms: i64, size_ms: i64 },
    Session { gap_ms: i64 },
}

impl WindowKind {
    /// `TUMBLE(10s)` and so on, for plans and messages.
    pub fn describe(&self) -> String {
        match self {
            WindowKind::Tumble { size_ms } => format!("TUMBLE(size {})", ms_text(*size_ms)),
            WindowKind::Hop { slide_ms, size_ms } => format!(
                "HOP(slide {}, size {})",
                ms_text(*slide_ms),
                ms_text(*size_ms)
            ),
            WindowKind::Session { gap_ms } => format!("SESSION(gap {})", ms_text(*gap_ms)),
        }
    }
}

fn ms_text(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A window table function found in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowFunction {
    pub kind: WindowKind,
    /// The table it reads.
    pub table: String,
    /// The time column.
    pub time_column: String,
}

/// Recognises `TUMBLE`/`HOP`/`SESSION(table, column, intervals...)` and
/// reads its arguments; `None` for any other relation.
pub fn window_function(factor: &TableFactor) -> Option<crate::Result<WindowFunction>> {
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = factor
    else {
        return None;
    };
    let function = name.0.last()?.as_ident()?.value.to_ascii_uppercase();
    if !matches!(function.as_str(), "TUMBLE" | "HOP" | "SESSION") {
        return None;
    }
    Some(read_window_args(&function, &args.args))
}

fn read_window_args(function: &str, args: &[FunctionArg]) -> crate::Result<WindowFunction> {
    let usage = match function {
        "TUMBLE" => "TUMBLE(<stream>, <time column>, INTERVAL '<size>' <unit>)",
        "HOP" => {
            "HOP(<stream>, <time column>, INTERVAL '<slide>' <unit>, INTERVAL '<size>' <unit>)"
        }
        _ => "SESSION(<stream>, <time column>, INTERVAL '<gap>' <unit>)",
    };
    let wrong = |what: &str| crate::Error::invalid(format!("{function}: {what}; usage: {usage}"));
    let exprs: Vec<&ast::Expr> = args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Ok(expr),
            _ => Err(wrong("arguments must be plain (no names, no *)")),
        })
        .collect::<crate::Result<_>>()?;
    let intervals = match function {
        "HOP" => 2,
        _ => 1,
    };
    // SESSION may carry its partition keys after the gap (see prepare_query).
    let too_many = function != "SESSION" && exprs.len() > 2 + intervals;
    if exprs.len() < 2 + intervals || too_many {
        return Err(wrong(&format!(
            "expected {} arguments, found {}",
            2 + intervals,
            exprs.len()
        )));
    }
    let table = match exprs[0] {
        ast::Expr::Identifier(ident) => ident_name(ident),
        ast::Expr::CompoundIdentifier(parts) => {
            parts.iter().map(ident_name).collect::<Vec<_>>().join(".")
        }
        // After prepare_query: `(SELECT * FROM name)`.
        ast::Expr::Subquery(query) => {
            subquery_source(query).unwrap_or_else(|| "subquery".to_string())
        }
        other => {
            return Err(wrong(&format!(
                "the first argument must name a stream, found {other}"
            )));
        }
    };
    let time_column = match exprs[1] {
        ast::Expr::Identifier(ident) => ident_name(ident),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        other => {
            return Err(wrong(&format!(
                "the second argument must name the time column, found {other}"
            )));
        }
    };
    let positive_ms = |expr: &ast::Expr, what: &str| -> crate::Result<i64> {
        let duration = expr_to_duration(expr)
            .map_err(|e| wrong(&format!("the {what} must be an interval: {e}")))?;
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        if ms <= 0 {
            return Err(wrong(&format!("the {what} must be at least 1 ms")));
        }
        Ok(ms)
    };
    let kind = match function {
        "TUMBLE" => WindowKind::Tumble {
            size_ms: positive_ms(exprs[2], "size")?,
        },
        "HOP" => {
            let slide_ms = positive_ms(exprs[2], "slide")?;
            let size_ms = positive_ms(exprs[3], "size")?;
            if slide_ms > size_ms {
                return Err(wrong(&format!(
                    "the slide ({}) is larger than the size ({}): rows between windows would \
                     belong to none; use TUMBLE for non-overlapping windows",
                    ms_text(slide_ms),
                    ms_text(size_ms)
                )));
            }
            WindowKind::Hop { slide_ms, size_ms }
        }
        _ => WindowKind::Session {
            gap_ms: positive_ms(exprs[2], "gap")?,
        },
    };
    Ok(WindowFunction {
        kind,
        table,
        time_column,
    })
}

/// Readies a query's window table functions for planning:
///
/// - the stream a function reads becomes `(SELECT * FROM stream)`, so that
///   DataFusion, which collects the tables a statement names before
///   planning it, sees it;
/// - every `SESSION(...)` gets the `GROUP BY` keys of the select around it
///   (other than the window columns) as extra arguments: sessions are kept
///   per key.
pub(crate) fn prepare_query(query: &mut Query) {
    add_session_keys_to_set_expr(&mut query.body);
}

/// `name` for a subquery that is exactly `SELECT * FROM name`.
fn subquery_source(query: &Query) -> Option<String> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    match select.from.as_slice() {
        [
            TableWithJoins {
                relation: TableFactor::Table { name, .. },
                joins,
            },
        ] if joins.is_empty() => name.0.last().and_then(|p| p.as_ident()).map(ident_name),
        _ => None,
    }
}

/// `(SELECT * FROM name)` for the identifier `name`.
fn source_subquery(expr: &ast::Expr) -> Option<ast::Expr> {
    let name = match expr {
        ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_) => expr.to_string(),
        _ => return None,
    };
    let query = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("SELECT * FROM {name}"))
        .and_then(|mut p| p.parse_query())
        .ok()?;
    Some(ast::Expr::Subquery(query))
}

fn add_session_keys_to_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let keys: Vec<ast::Expr> = match &select.group_by {
                GroupByExpr::Expressions(exprs, _) => exprs
                    .iter()
                    .filter(|e| !is_window_column(e))
                    .map(unqualified)
                    .collect(),
                GroupByExpr::All(_) => Vec::new(),
            };
            for table in &mut select.from {
                add_keys_to_table(table, &keys);
            }
        }
        SetExpr::Query(query) => prepare_query(query),
        SetExpr::SetOperation { left, right, .. } => {
            add_session_keys_to_set_expr(left);
            add_session_keys_to_set_expr(right);
        }
        _ => {}
    }
}

fn add_keys_to_table(table: &mut TableWithJoins, keys: &[ast::Expr]) {
    add_keys_to_factor(&mut table.relation, keys);
    for join in &mut table.joins {
        add_keys_to_factor(&mut join.relation, keys);
    }
}

fn add_keys_to_factor(factor: &mut TableFactor, keys: &[ast::Expr]) {
    let is_window = window_function(factor).is_some();
    match factor {
        TableFactor::Table {
            name,
            args: Some(args),
            ..
        } if is_window => {
            if let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(source))) = args.args.first_mut()
                && let Some(subquery) = source_subquery(source)
            {
                *source = subquery;
            }
            let is_session = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("SESSION"));
            if is_session && args.args.len() == 3 {
                args.args.extend(
                    keys.iter()
                        .map(|k| FunctionArg::Unnamed(FunctionArgExpr::Expr(k.clone()))),
                );
            }
        }
        TableFactor::Derived { subquery, .. } => prepare_query(subquery),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => add_keys_to_table(table_with_joins, keys),
        _ => {}
    }
}

fn is_window_column(expr: &ast::Expr) -> bool {
    let name = match expr {
        ast::Expr::Identifier(ident) => ident_name(ident),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        _ => return false,
    };
    name == WINDOW_START || name == WINDOW_END
}

/// `t.col` as `col`: keys are resolved inside the window function, where
/// the query's table aliases do not exist yet.
fn unqualified(expr: &ast::Expr) -> ast::Expr {
    match expr {
        ast::Expr::CompoundIdentifier(parts) if !parts.is_empty() => {
            ast::Expr::Identifier(parts[parts.len() - 1].clone())
        }
        other => other.clone(),
    }
}

/// Plans the window table functions.
#[derive(Debug, Default)]
pub struct WindowRelationPlanner;

impl RelationPlanner for WindowRelationPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> datafusion::common::Result<RelationPlanning> {
        let window = match window_function(&relation) {
            None => return Ok(RelationPlanning::Original(Box::new(relation))),
            Some(window) => window.map_err(|e| DataFusionError::Plan(e.to_string()))?,
        };
        let TableFactor::Table {
            name,
            alias,
            args: Some(args),
            ..
        } = relation
        else {
            return plan_err!("not a window table function");
        };
        let source = match args.args.first() {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Identifier(i)))) => {
                table_factor(ObjectName::from(vec![i.clone()]))
            }
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::CompoundIdentifier(
                parts,
            )))) => table_factor(ObjectName::from(parts.clone())),
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(ast::Expr::Subquery(query)))) => {
                TableFactor::Derived {
                    lateral: false,
                    subquery: query.clone(),
                    alias: None,
                    sample: None,
                }
            }
            _ => return plan_err!("{name}: the first argument must name a stream"),
        };
        let input = context.plan(source)?;
        let time = col(input
            .schema()
            .qualified_field_with_unqualified_name(&window.time_column)
            .map(|(q, f)| datafusion::common::Column::new(q.cloned(), f.name()))
            .map_err(|_| {
                DataFusionError::Plan(format!(
                    "{name}: {} has no column \"{}\"",
                    window.table, window.time_column
                ))
            })?);
        let time_type = input
            .schema()
            .field_with_unqualified_name(&window.time_column)?
            .data_type()
            .clone();
        let DataType::Timestamp(_, time_zone) = &time_type else {
            return plan_err!(
                "{name}: the time column \"{}\" must be a TIMESTAMP, it is {time_type}",
                window.time_column
            );
        };
        let window_type = DataType::Timestamp(TimeUnit::Millisecond, time_zone.clone());
        let time_ms = cast(time.clone(), window_type.clone());
        let columns: Vec<Expr> = input
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let builder = LogicalPlanBuilder::from(input).filter(time.clone().is_not_null())?;
        let plan = match window.kind {
            WindowKind::Tumble { size_ms } => {
                // Integer arithmetic on the milliseconds (what date_bin with
                // origin 0 computes, without its calendar machinery).
                let start =
                    ScalarUDF::new_from_impl(TumbleStart::new()).call(vec![time_ms, lit(size_ms)]);
                let mut exprs = columns;
                exprs.push(start.clone().alias(WINDOW_START));
                exprs.push((start + duration_ms(size_ms)).alias(WINDOW_END));
                builder.project(exprs)?.build()?
            }
            WindowKind::Hop { slide_ms, size_ms } => {
                let starts = ScalarUDF::new_from_impl(HopStarts::new()).call(vec![
                    time_ms,
                    lit(slide_ms),
                    lit(size_ms),
                ]);
                let mut exprs = columns.clone();
                exprs.push(starts.alias(WINDOW_START));
                let unnested = builder.project(exprs)?.unnest_column(WINDOW_START)?;
                let mut exprs = columns;
                exprs.push(col(WINDOW_START));
                exprs.push((col(WINDOW_START) + duration_ms(size_ms)).alias(WINDOW_END));
                unnested.project(exprs)?.build()?
            }
            WindowKind::Session { gap_ms } => {
                let keys: Vec<String> = args.args[3..].iter().map(ToString::to_string).collect();
                plan_sessions(
                    builder,
                    context,
                    &columns,
                    &window.time_column,
                    &keys,
                    gap_ms,
                    &window_type,
                )?
            }
        };
        // Without an alias, the windowed rows keep the stream's name.
        let alias = alias.or_else(|| {
            Some(TableAlias {
                explicit: false,
                name: ast::Ident::new(window.table.rsplit('.').next().unwrap_or_default()),
                columns: Vec::new(),
                at: None,
            })
        });
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            plan, alias,
        ))))
    }
}

/// Sessions through window functions, as described in the module docs.
fn plan_sessions(
    builder: LogicalPlanBuilder,
    context: &mut dyn RelationPlannerContext,
    columns: &[Expr],
    time_column: &str,
    keys: &[String],
    gap_ms: i64,
    window_type: &DataType,
) -> datafusion::common::Result<datafusion::logical_expr::LogicalPlan> {
    let time = quote(time_column);
    let partition = if keys.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {}", keys.join(", "))
    };
    let gap = format!("INTERVAL '{gap_ms} milliseconds'");
    let sql_expr = |context: &mut dyn RelationPlannerContext,
                    schema: &DFSchema,
                    text: &str|
     -> datafusion::common::Result<Expr> {
        let expr = Parser::new(&GenericDialect {})
            .try_with_sql(text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| DataFusionError::Internal(format!("session window plan: {e}")))?;
        context.sql_to_expr(expr, schema)
    };
    let previous = sql_expr(
        context,
        builder.schema(),
        &format!("lag({time}) OVER ({partition} ORDER BY {time})"),
    )?;
    let with_previous = builder.window(vec![previous.alias("__sluice_previous")])?;
    let starts = sql_expr(
        context,
        with_previous.schema(),
        &format!(
            "CASE WHEN __sluice_previous IS NULL OR {time} >= __sluice_previous + {gap} THEN 1 ELSE 0 END"
        ),
    )?;
    let mut exprs = columns.to_vec();
    exprs.push(starts.alias("__sluice_starts"));
    let flagged = with_previous.project(exprs)?;
    // The default frame (RANGE ... CURRENT ROW) counts rows tied on time
    // together, so ties always share a session.
    let number = sql_expr(
        context,
        flagged.schema(),
        &format!("sum(__sluice_starts) OVER ({partition} ORDER BY {time})"),
    )?;
    let numbered = flagged.window(vec![number.alias("__sluice_session")])?;
    let session_partition = if keys.is_empty() {
        "PARTITION BY __sluice_session".to_string()
    } else {
        format!("{partition}, __sluice_session")
    };
    let first = sql_expr(
        context,
        numbered.schema(),
        &format!("min({time}) OVER ({session_partition})"),
    )?;
    let last = sql_expr(
        context,
        numbered.schema(),
        &format!("max({time}) OVER ({session_partition})"),
    )?;
    let bounded = numbered.window(vec![
        first.alias("__sluice_first"),
        last.alias("__sluice_last"),
    ])?;
    let mut exprs = columns.to_vec();
    exprs.push(cast(col("__sluice_first"), window_type.clone()).alias(WINDOW_START));
    exprs.push(
        (cast(col("__sluice_last"), window_type.clone()) + duration_ms(gap_ms)).alias(WINDOW_END),
    );
    bounded.project(exprs)?.build()
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A duration literal: added to a millisecond timestamp it is one integer
/// addition per row (an interval goes through calendar arithmetic).
fn duration_ms(ms: i64) -> Expr {
    lit(ScalarValue::DurationMillisecond(Some(ms)))
}

fn table_factor(name: ObjectName) -> TableFactor {
    TableFactor::Table {
        name,
        alias: None,
        args: None,
        with_hints: Vec::new(),
        version: None,
        with_ordinality: false,
        partitions: Vec::new(),
        json_path: None,
        sample: None,
        index_hints: Vec::new(),
    }
}

/// `tumble_start(time_ms, size_ms)`: the start of the tumbling window of
/// `size_ms` holding `time` — `floor(time / size) * size`, windows aligned
/// to the epoch.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TumbleStart {
    signature: Signature,
}

impl TumbleStart {
    fn new() -> Self {
        TumbleStart {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TumbleStart {
    fn name(&self) -> &str {
        "tumble_start"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let [time, ColumnarValue::Scalar(ScalarValue::Int64(Some(size)))] = args.args.as_slice()
        else {
            return plan_err!("tumble_start takes a timestamp and constant BIGINT milliseconds");
        };
        let size = *size;
        if size <= 0 {
            return plan_err!("tumble_start: the size must be positive");
        }
        let times = time.to_array(args.number_rows)?;
        let DataType::Timestamp(TimeUnit::Millisecond, time_zone) = times.data_type().clone()
        else {
            return plan_err!("tumble_start: expected a millisecond timestamp");
        };
        let times = times.as_primitive::<TimestampMillisecondType>();
        let starts = PrimitiveArray::<TimestampMillisecondType>::new(
            window_starts(times.values(), size).into(),
            times.nulls().cloned(),
        )
        .with_timezone_opt(time_zone);
        Ok(ColumnarValue::Array(Arc::new(starts)))
    }
}

/// The start of the `size`-wide window holding each of `times`. Rows of a
/// log batch come mostly in time order, so most fall in the window of the
/// row before: one comparison instead of a division.
fn window_starts(times: &[i64], size: i64) -> Vec<i64> {
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    times
        .iter()
        .map(|&t| {
            if t < start || t >= end {
                start = t.div_euclid(size) * size;
                end = start.saturating_add(size);
            }
            start
        })
        .collect()
}

/// `hop_starts(time_ms, slide_ms, size_ms)`: the starts of the hopping
/// windows holding `time`, oldest first — the windows `[k * slide, k *
/// slide + size)` with `k * slide <= time < k * slide + size`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HopStarts {
    signature: Signature,
}

impl HopStarts {
    fn new() -> Self {
        HopStarts {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        "hop_starts"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            arg_types.first().cloned().unwrap_or(DataType::Null),
            true,
        ))))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let [time, slide, size] = args.args.as_slice() else {
            return plan_err!("hop_starts takes 3 arguments");
        };
        let (
            ColumnarValue::Scalar(ScalarValue::Int64(Some(slide))),
            ColumnarValue::Scalar(ScalarValue::Int64(Some(size))),
        ) = (slide, size)
        else {
            return plan_err!("hop_starts: slide and size must be constant BIGINT milliseconds");
        };
        let (slide, size) = (*slide, *size);
        let times = time.to_array(args.number_rows)?;
        let DataType::Timestamp(TimeUnit::Millisecond, time_zone) = times.data_type().clone()
        else {
            return plan_err!("hop_starts: expected a millisecond timestamp");
        };
        let times = times.as_primitive::<TimestampMillisecondType>();
        let per_row = (size + slide - 1) / slide;
        let mut starts = Int64Builder::with_capacity(times.len() * per_row as usize);
        let mut offsets = Vec::with_capacity(times.len() + 1);
        offsets.push(0i32);
        for row in 0..times.len() {
            if times.is_valid(row) {
                let t = times.value(row);
                let last = t.div_euclid(slide) * slide;
                let first = (t - size).div_euclid(slide) * slide + slide;
                let mut start = first;
                while start <= last {
                    starts.append_value(start);
                    start += slide;
                }
            }
            let len = i32::try_from(starts.len())
                .map_err(|_| DataFusionError::Execution("hop_starts: too many windows".into()))?;
            offsets.push(len);
        }
        let values = starts
            .finish()
            .reinterpret_cast::<TimestampMillisecondType>()
            .with_timezone_opt(time_zone.clone());
        let field = Arc::new(Field::new_list_field(
            DataType::Timestamp(TimeUnit::Millisecond, time_zone),
            true,
        ));
        let list = ListArray::try_new(
            field,
            OffsetBuffer::new(offsets.into()),
            Arc::new(values) as ArrayRef,
            times.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// How a `HOP` aggregate is computed over panes: rows are aggregated once
/// into tumbling panes of `pane_ms` (the greatest common divisor of slide
/// and size, so that every pane lies wholly inside or outside each window),
/// and each pane's partial state is then counted in the `size / slide`
/// windows that hold it — instead of copying every row into each of its
/// windows before aggregating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panes {
    pub pane_ms: i64,
    pub slide_ms: i64,
    pub size_ms: i64,
}

impl Panes {
    /// The starts of the windows that hold the pane starting at `pane_start`,
    /// oldest first.
    pub fn window_starts(&self, pane_start: i64) -> impl Iterator<Item = i64> + use<> {
        let slide = self.slide_ms;
        // Windows [w, w + size) with w <= pane_start and pane_end <= w + size.
        let lowest = pane_start + self.pane_ms - self.size_ms;
        let first = lowest.div_euclid(slide) * slide
            + if lowest.rem_euclid(slide) == 0 {
                0
            } else {
                slide
            };
        let last = pane_start.div_euclid(slide) * slide;
        (0..)
            .map(move |k| first + k * slide)
            .take_while(move |w| *w <= last)
    }
}

/// The pane form of a `HOP` aggregate, when the query allows it: the same
/// query over `TUMBLE(<stream>, <time>, <pane>)`, and the panes.
///
/// The rewrite is exact only when the window columns are used as the
/// windows themselves: grouped by (`window_start` must be a `GROUP BY`
/// column) and read above the aggregate. A query that filters on them
/// (`WHERE`), or passes them to a function (an aggregate's argument, or an
/// expression the planner might push below the aggregate), keeps the
/// row-copying plan.
pub fn pane_query(query: &crate::StreamingQuery) -> Option<(crate::StreamingQuery, Panes)> {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::visit_expressions;

    let SetExpr::Select(select) = query.query.body.as_ref() else {
        return None;
    };
    let [
        TableWithJoins {
            relation: factor,
            joins,
        },
    ] = select.from.as_slice()
    else {
        return None;
    };
    if !joins.is_empty() {
        return None;
    }
    let window = window_function(factor)?.ok()?;
    let WindowKind::Hop { slide_ms, size_ms } = window.kind else {
        return None;
    };
    if slide_ms == size_ms {
        return None;
    }
    let panes = Panes {
        pane_ms: gcd(slide_ms, size_ms),
        slide_ms,
        size_ms,
    };
    let names_window = |expr: &ast::Expr| {
        visit_expressions(expr, |e| {
            if is_window_column(e) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
    };
    if select.selection.as_ref().is_some_and(names_window) {
        return None;
    }
    let GroupByExpr::Expressions(groups, modifiers) = &select.group_by else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    let grouped_by_start = groups.iter().any(|g| {
        is_window_column(g)
            && unqualified(g)
                .to_string()
                .eq_ignore_ascii_case(WINDOW_START)
    });
    // A group expression over a window column other than the column itself.
    let computed_group = groups
        .iter()
        .any(|g| !is_window_column(g) && names_window(g));
    if !grouped_by_start || computed_group {
        return None;
    }
    // Inside a function call, a window column may be an aggregate argument.
    let in_function = |expr: &ast::Expr| {
        visit_expressions(expr, |e| match e {
            ast::Expr::Function(_) if names_window(e) => ControlFlow::Break(()),
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    };
    let in_items = select.projection.iter().any(|item| match item {
        ast::SelectItem::UnnamedExpr(expr) | ast::SelectItem::ExprWithAlias { expr, .. } => {
            in_function(expr)
        }
        _ => false,
    });
    if in_items || select.having.as_ref().is_some_and(in_function) || select.qualify.is_some() {
        return None;
    }

    let mut rewritten = query.clone();
    let SetExpr::Select(select) = rewritten.query.body.as_mut() else {
        return None;
    };
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = &mut select.from[0].relation
    else {
        return None;
    };
    let interval = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("INTERVAL '{} milliseconds'", panes.pane_ms))
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    args.args.truncate(2);
    args.args
        .push(FunctionArg::Unnamed(FunctionArgExpr::Expr(interval)));
    let last = name.0.len() - 1;
    name.0[last] = ast::ObjectNamePart::Identifier(ast::Ident::new("TUMBLE"));
    Some((rewritten, panes))
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::window_starts;

    proptest! {
        /// The shortcut for rows in the window of the row before gives
        /// what the division gives, in any order, on both sides of zero and
        /// on window boundaries.
        #[test]
        fn window_starts_are_floors(
            size in 1i64..100_000,
            times in proptest::collection::vec(
                prop_oneof![
                    -1_000_000_000_000i64..1_000_000_000_000,
                    (-1_000i64..1_000).prop_map(|k| k * 7_000),
                    -20i64..20,
                ],
                0..200,
            ),
        ) {
            let expected: Vec<i64> = times.iter().map(|t| t.div_euclid(size) * size).collect();
            prop_assert_eq!(window_starts(&times, size), expected);
        }
    }
}
