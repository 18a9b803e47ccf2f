//! Streaming analysis: can a `SELECT ... EMIT ...` run continuously, as
//! what kind of query, with which emit mode? Anything Sluice cannot run
//! incrementally is refused here, saying why and what would work, so that
//! nothing is ever computed wrongly.

use std::fmt;
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast::{Query, SetExpr, TableFactor, TableWithJoins};

use crate::error::{Error, Result};
use crate::parser::{EmitMode, StreamingQuery};
use crate::window::{WINDOW_START, WindowFunction, WindowKind, window_function};

/// The default trigger interval.
pub const DEFAULT_TRIGGER: Duration = Duration::from_secs(1);

/// What one trigger reads at most unless the query says otherwise: a
/// query catching up on a backlog works through it a million records at a
/// time, so windows close (and their state is freed) as it goes, instead
/// of holding every window of the backlog at once.
pub const DEFAULT_MAX_RECORDS_PER_TRIGGER: u64 = 1_000_000;

/// The kinds of continuous query Sluice runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryShape {
    /// Projections and filters: each input row gives at most one output row.
    Stateless,
    /// `GROUP BY window_start, ...` over a window table function.
    WindowedAggregate,
    /// `GROUP BY` without windows (or a global aggregate).
    Aggregate,
}

impl fmt::Display for QueryShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueryShape::Stateless => "stateless",
            QueryShape::WindowedAggregate => "windowed aggregate",
            QueryShape::Aggregate => "aggregate",
        })
    }
}

/// Where a continuous query starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    /// The first records at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// What the analysis decided.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingPlan {
    pub shape: QueryShape,
    /// The window table function the query reads, if any.
    pub window: Option<WindowFunction>,
    pub emit: EmitMode,
    pub trigger_interval: Duration,
    /// The streams it reads.
    pub sources: Vec<String>,
    pub start: StartPosition,
    pub idle_timeout: Option<Duration>,
    pub late_topic: Option<String>,
    /// Records one trigger reads at most, over all partitions.
    pub max_records_per_trigger: u64,
    /// A stateless query's `LIMIT`: the push query ends after that many rows.
    pub limit: Option<usize>,
}

impl fmt::Display for StreamingPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shape)?;
        if let Some(window) = &self.window {
            write!(
                f,
                " over {} on {}.{}",
                window.kind.describe(),
                window.table,
                window.time_column
            )?;
        }
        let emit = match self.emit {
            EmitMode::OnWindowClose => "ON WINDOW CLOSE",
            EmitMode::Changes => "CHANGES",
            EmitMode::Complete => "COMPLETE",
        };
        write!(
            f,
            ", emit {emit} every {}ms, sources [{}], start {}",
            self.trigger_interval.as_millis(),
            self.sources.join(", "),
            match &self.start {
                StartPosition::Earliest => "earliest".to_string(),
                StartPosition::Latest => "latest".to_string(),
                StartPosition::Timestamp(ms) => format!("at {ms}ms"),
            }
        )
    }
}

/// Every window table function in a query's `FROM` clauses.
pub fn window_functions(query: &Query) -> Result<Vec<WindowFunction>> {
    let mut found = Vec::new();
    collect_windows_in_set_expr(&query.body, &mut found)?;
    Ok(found)
}

fn collect_windows_in_set_expr(body: &SetExpr, found: &mut Vec<WindowFunction>) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for table in &select.from {
                collect_windows_in_table(table, found)?;
            }
        }
        SetExpr::Query(query) => collect_windows_in_set_expr(&query.body, found)?,
        SetExpr::SetOperation { left, right, .. } => {
            collect_windows_in_set_expr(left, found)?;
            collect_windows_in_set_expr(right, found)?;
        }
        _ => {}
    }
    Ok(())
}

fn collect_windows_in_table(table: &TableWithJoins, found: &mut Vec<WindowFunction>) -> Result<()> {
    for factor in std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation)) {
        match factor {
            TableFactor::Derived { subquery, .. } => {
                collect_windows_in_set_expr(&subquery.body, found)?;
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => collect_windows_in_table(table_with_joins, found)?,
            other => {
                if let Some(window) = window_function(other) {
                    found.push(window?);
                }
            }
        }
    }
    Ok(())
}

/// Decides how `query` (which has an `EMIT` clause) runs continuously;
/// `plan` is its DataFusion logical plan, unoptimised.
pub fn analyze(query: &StreamingQuery, plan: &LogicalPlan) -> Result<StreamingPlan> {
    let emit = query
        .emit
        .as_ref()
        .ok_or_else(|| Error::Internal("streaming analysis of a query without EMIT".into()))?;
    let windows = window_functions(&query.query)?;
    if windows.len() > 1 {
        return Err(Error::Unsupported(
            "a continuous query may read one window table function; joins of windowed \
             streams are not supported yet"
                .to_string(),
        ));
    }
    let window = windows.into_iter().next();

    let mut aggregates = Vec::new();
    let mut sources = Vec::new();
    let mut refusal: Option<String> = None;
    let mut has_limit = false;
    let mut limit: Option<usize> = None;
    plan.apply_with_subqueries(|node| {
        let refuse = |why: &str| Some(why.to_string());
        let problem = match node {
            LogicalPlan::Aggregate(aggregate) => {
                aggregates.push(aggregate.group_expr.clone());
                None
            }
            LogicalPlan::Distinct(_) => {
                aggregates.push(Vec::new());
                None
            }
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table().to_string();
                if !sources.contains(&name) {
                    sources.push(name);
                }
                None
            }
            LogicalPlan::Join(_) => refuse(
                "joins are not supported in continuous queries yet; run the join as a bounded \
                 query (without EMIT)",
            ),
            LogicalPlan::Window(window) => {
                let internal = window.window_expr.iter().all(
                    |e| matches!(e, Expr::Alias(alias) if alias.name.starts_with("__sluice_")),
                );
                if internal {
                    None
                } else {
                    refuse(
                        "window functions (OVER) are not supported in continuous queries; use a \
                         window table function (TUMBLE, HOP, SESSION) with GROUP BY, or a \
                         bounded query",
                    )
                }
            }
            LogicalPlan::Sort(_) => refuse(
                "ORDER BY has no end over an unbounded stream; sort the emitted rows in the \
                 client, or run a bounded query (without EMIT)",
            ),
            LogicalPlan::Limit(node) => {
                has_limit = true;
                let skip = matches!(
                    node.get_skip_type(),
                    Ok(datafusion::logical_expr::SkipType::Literal(n)) if n > 0
                );
                match node.get_fetch_type() {
                    _ if skip => refuse("OFFSET has no meaning over an unbounded stream"),
                    Ok(datafusion::logical_expr::FetchType::Literal(fetch)) => {
                        limit = fetch;
                        None
                    }
                    _ => refuse("LIMIT must be a constant in a continuous query"),
                }
            }
            LogicalPlan::Union(_) => {
                refuse("UNION is not supported in continuous queries yet; run one query per input")
            }
            LogicalPlan::Subquery(_) | LogicalPlan::RecursiveQuery(_) => {
                refuse("subqueries are not supported in continuous queries yet")
            }
            LogicalPlan::Values(_) => refuse(
                "a continuous query must read a stream; VALUES is finite (run it without EMIT)",
            ),
            _ => None,
        };
        if let Some(problem) = problem {
            refusal = Some(problem);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| Error::Internal(format!("walking the plan: {e}")))?;
    if let Some(refusal) = refusal {
        return Err(Error::Unsupported(refusal));
    }
    if sources.is_empty() {
        return Err(Error::Unsupported(
            "a continuous query must read a stream (FROM <stream>)".to_string(),
        ));
    }
    if aggregates.len() > 1 {
        return Err(Error::Unsupported(
            "aggregates of aggregates (nested GROUP BY or DISTINCT) are not supported in \
             continuous queries"
                .to_string(),
        ));
    }

    let shape = match (aggregates.first(), &window) {
        (None, Some(w)) if matches!(w.kind, WindowKind::Session { .. }) => {
            return Err(Error::Unsupported(
                "SESSION windows need an aggregate: GROUP BY window_start, window_end (and the \
                 session key)"
                    .to_string(),
            ));
        }
        (None, _) => QueryShape::Stateless,
        (Some(groups), Some(w)) if groups.iter().any(groups_by_window_start) => {
            let _ = w;
            QueryShape::WindowedAggregate
        }
        (Some(_), Some(w)) if matches!(w.kind, WindowKind::Session { .. }) => {
            return Err(Error::Unsupported(
                "a SESSION window must be grouped by: GROUP BY window_start, window_end"
                    .to_string(),
            ));
        }
        (Some(_), _) => QueryShape::Aggregate,
    };
    if has_limit && shape != QueryShape::Stateless {
        return Err(Error::Unsupported(
            "LIMIT on a continuous aggregate has no stable meaning; use LIMIT on a bounded query, \
             or on a stateless push query"
                .to_string(),
        ));
    }

    match (emit.mode, shape) {
        (EmitMode::OnWindowClose, QueryShape::WindowedAggregate) => {}
        (EmitMode::OnWindowClose, QueryShape::Stateless) => {
            return Err(Error::Unsupported(
                "EMIT ON WINDOW CLOSE needs a windowed aggregate (GROUP BY window_start, \
                 window_end over TUMBLE, HOP or SESSION); a stateless query emits each row once: \
                 use EMIT CHANGES"
                    .to_string(),
            ));
        }
        (EmitMode::OnWindowClose, QueryShape::Aggregate) => {
            return Err(Error::Unsupported(
                "EMIT ON WINDOW CLOSE needs a window: GROUP BY window_start, window_end over \
                 TUMBLE, HOP or SESSION; without a window, use EMIT CHANGES or EMIT COMPLETE"
                    .to_string(),
            ));
        }
        (EmitMode::Complete, QueryShape::Stateless) => {
            return Err(Error::Unsupported(
                "EMIT COMPLETE needs an aggregate: the complete result of a stateless query is \
                 every row ever read; use EMIT CHANGES"
                    .to_string(),
            ));
        }
        _ => {}
    }

    let mut options = emit.options.clone();
    let start = match options.take_string("start")? {
        None => StartPosition::Earliest,
        Some(text) => parse_start(&text)?,
    };
    let idle_timeout = options.take_duration("idle_timeout")?;
    let late_topic = options.take_string("late_topic")?;
    let max_records_per_trigger = options
        .take_u64("max_records_per_trigger")?
        .unwrap_or(DEFAULT_MAX_RECORDS_PER_TRIGGER);
    if max_records_per_trigger == 0 {
        return Err(Error::invalid("max_records_per_trigger must be at least 1"));
    }
    options.finish(
        "a continuous query",
        &[
            "start",
            "idle_timeout",
            "late_topic",
            "max_records_per_trigger",
        ],
    )?;
    let trigger_interval = emit.every.unwrap_or(DEFAULT_TRIGGER);
    if trigger_interval.is_zero() {
        return Err(Error::invalid(
            "EMIT ... EVERY needs an interval of at least 1 ms",
        ));
    }
    Ok(StreamingPlan {
        shape,
        window,
        emit: emit.mode,
        trigger_interval,
        sources,
        start,
        idle_timeout,
        late_topic,
        max_records_per_trigger,
        limit,
    })
}

fn groups_by_window_start(expr: &Expr) -> bool {
    match expr {
        Expr::Column(column) => column.name == WINDOW_START,
        Expr::Alias(alias) => groups_by_window_start(&alias.expr),
        _ => false,
    }
}

/// `start = 'earliest' | 'latest' | '<RFC 3339 timestamp>'`.
fn parse_start(text: &str) -> Result<StartPosition> {
    match text.to_ascii_lowercase().as_str() {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ => {
            use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
            string_to_timestamp_nanos(text)
                .map(|ns| StartPosition::Timestamp(ns.div_euclid(1_000_000)))
                .map_err(|_| {
                    Error::invalid(format!(
                        "start = '{text}': expected 'earliest', 'latest' or an RFC 3339 \
                         timestamp like '2026-01-01T00:00:00Z'"
                    ))
                })
        }
    }
}
