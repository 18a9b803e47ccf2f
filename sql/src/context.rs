//! [`SqlContext`]: runs Sluice SQL statements once — DDL, `SHOW`,
//! `DESCRIBE`, `EXPLAIN`, `INSERT`, and bounded queries planned and run by
//! DataFusion over a snapshot of the topics. Continuous execution (a query
//! with `EMIT`) belongs to the engine, which reuses the planning here.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    SchemaProvider, TableProvider,
};
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionConfig;
use datafusion::sql::sqlparser::ast;
use sluice_storage::Storage;

use crate::analysis::{StreamingPlan, analyze};
use crate::catalog::Catalog;
use crate::deadletter::DeadLetters;
use crate::error::{Error, Result};
use crate::output::{Output, QueryOutput, text_table};
use crate::parser::{Statement, StreamingQuery, parse_sql};
use crate::scan::{ScanContext, ScanReport, Snapshot, StreamProvider, TriggerInputs};
use crate::window::{WindowRelationPlanner, prepare_query};

/// Settings of a [`SqlContext`].
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// DataFusion's `target_partitions`: how many partitions plans run in
    /// parallel. Defaults to the number of cores.
    pub target_partitions: usize,
    /// Rows per batch inside DataFusion plans.
    pub batch_size: usize,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            batch_size: 8192,
        }
    }
}

/// Runs Sluice SQL over one storage.
#[derive(Debug, Clone)]
pub struct SqlContext {
    storage: Storage,
    catalog: Arc<Catalog>,
    dead_letters: Arc<DeadLetters>,
    base_state: Arc<SessionState>,
    /// `base_state` for continuous queries: without the rewrites that
    /// would split one aggregate into two (`count(DISTINCT)` into a nested
    /// `GROUP BY`) or fuse the partial and final stages, so the runtime
    /// finds one aggregate and takes it apart into its stages.
    streaming_state: Arc<SessionState>,
}

/// A continuous query's plan, made once for all its triggers: before each
/// run, set the trigger's snapshot and report in `inputs`, and run
/// `physical` through [`reset_plan_states`] (DataFusion's way to run a
/// plan again: operators start with fresh state).
///
/// [`reset_plan_states`]: datafusion::physical_plan::execution_plan::reset_plan_states
#[derive(Debug)]
pub struct TriggerPlan {
    /// The optimized physical plan.
    pub physical: Arc<dyn ExecutionPlan>,
    /// The session state it was planned in, for the task context.
    pub state: SessionState,
    /// Where its scans take each trigger's snapshot and report.
    pub inputs: Arc<TriggerInputs>,
}

/// A query planned over a fixed snapshot, ready to run.
#[derive(Debug)]
pub struct PlannedQuery {
    /// DataFusion's logical plan (unoptimised).
    pub logical_plan: LogicalPlan,
    /// The session state it was planned in (it holds the snapshot).
    pub state: SessionState,
    /// Decode errors and records read, filled in as it runs.
    pub report: Arc<ScanReport>,
}

impl SqlContext {
    /// A context over `storage`, loading the catalog from it.
    pub fn open(storage: Storage, options: SqlOptions) -> Result<Self> {
        let catalog = Arc::new(Catalog::open(storage.clone())?);
        let dead_letters = Arc::new(DeadLetters::new(storage.clone()));
        let mut config = SessionConfig::new()
            .with_target_partitions(options.target_partitions.max(1))
            .with_batch_size(options.batch_size.max(1))
            .with_information_schema(false);
        // VARCHAR is Utf8, the type arrow's JSON and CSV decoders produce.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        let base_state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_relation_planners(vec![Arc::new(WindowRelationPlanner)])
            .build();
        let logical_rules = base_state
            .optimizers()
            .iter()
            .filter(|rule| rule.name() != "single_distinct_aggregation_to_group_by")
            .cloned()
            .collect();
        let physical_rules = base_state
            .physical_optimizers()
            .iter()
            .filter(|rule| rule.name() != "CombinePartialFinalAggregate")
            .cloned()
            .collect();
        let streaming_state = SessionStateBuilder::new_from_existing(base_state.clone())
            .with_optimizer_rules(logical_rules)
            .with_physical_optimizer_rules(physical_rules)
            .build();
        Ok(SqlContext {
            storage,
            catalog,
            dead_letters,
            base_state: Arc::new(base_state),
            streaming_state: Arc::new(streaming_state),
        })
    }

    /// The storage it runs over.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The catalog of streams.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub(crate) fn base_state(&self) -> &SessionState {
        &self.base_state
    }

    pub(crate) fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead_letters
    }

    /// Parses and runs `sql`, statement after statement; stops at the first
    /// statement that fails (those before it have taken effect).
    pub async fn execute(&self, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for statement in parse_sql(sql)? {
            outputs.push(self.execute_statement(statement).await?);
        }
        Ok(outputs)
    }

    /// Runs one parsed statement.
    pub async fn execute_statement(&self, statement: Statement) -> Result<Output> {
        match statement {
            Statement::CreateTopic {
                name,
                if_not_exists,
                options,
            } => {
                self.blocking(move |sql| sql.create_topic(&name, if_not_exists, options))
                    .await
            }
            Statement::DropTopic { name, if_exists } => {
                self.blocking(move |sql| sql.drop_topic(&name, if_exists))
                    .await
            }
            Statement::CreateStream(create) => self.create_stream(*create).await,
            Statement::DropStream { name, if_exists } => {
                self.blocking(move |sql| sql.drop_stream(&name, if_exists, &[]))
                    .await
            }
            Statement::Show(object) => self.blocking(move |sql| sql.show(object)).await,
            Statement::Describe { name } => self.blocking(move |sql| sql.describe(&name)).await,
            Statement::Explain(query) => self.explain(&query).await,
            Statement::StopQuery { id } => Err(Error::NotFound {
                kind: "query",
                name: id,
                hint: String::new(),
            }),
            Statement::InsertValues {
                stream,
                columns,
                rows,
            } => self.insert_values(&stream, &columns, rows).await,
            Statement::InsertQuery {
                stream,
                columns,
                query,
            } => {
                if query.emit.is_some() {
                    let planned = self.plan_query(&query).await?;
                    analyze(&query, &planned.logical_plan)?;
                    return Err(continuous_not_here());
                }
                self.insert_query(&stream, &columns, &query).await
            }
            Statement::Query(query) => {
                if query.emit.is_some() {
                    let planned = self.plan_query(&query).await?;
                    analyze(&query, &planned.logical_plan)?;
                    return Err(continuous_not_here());
                }
                Ok(Output::Rows(self.run_query(&query).await?))
            }
        }
    }

    /// DataFusion's "table '...' not found" as our unknown-stream error,
    /// with a suggestion when a stream's name is close.
    fn unknown_table(&self, error: Error) -> Error {
        let Error::InvalidInput(message) = &error else {
            return error;
        };
        let Some(rest) = message.split("table '").nth(1) else {
            return error;
        };
        let Some((name, tail)) = rest.split_once('\'') else {
            return error;
        };
        if tail.trim() != "not found" {
            return error;
        }
        let name = name.rsplit('.').next().unwrap_or(name);
        let known: Vec<String> = self
            .catalog
            .streams()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        crate::catalog::not_found("stream", name, &known)
    }

    /// Runs storage work off the async runtime (RocksDB writes fsync).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SqlContext) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let sql = self.clone();
        tokio::task::spawn_blocking(move || work(&sql))
            .await
            .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
    }

    /// Plans a query (its `EMIT` clause aside) over a new snapshot.
    pub async fn plan_query(&self, query: &StreamingQuery) -> Result<PlannedQuery> {
        self.plan_query_in(query, Arc::new(Snapshot::default()))
            .await
    }

    /// Plans a query over `snapshot`: the offsets it fixes are read, the
    /// other topics' are taken when the query names them.
    pub async fn plan_query_in(
        &self,
        query: &StreamingQuery,
        snapshot: Arc<Snapshot>,
    ) -> Result<PlannedQuery> {
        let report = Arc::new(ScanReport::default());
        self.plan_with(query, snapshot, report, &self.base_state)
            .await
    }

    /// Plans one trigger of a continuous query over `snapshot`, its scans
    /// reporting to `report`, in the session state made for continuous
    /// queries (one aggregate, partial and final stages apart).
    pub async fn plan_trigger(
        &self,
        query: &StreamingQuery,
        snapshot: Arc<Snapshot>,
        report: Arc<ScanReport>,
    ) -> Result<PlannedQuery> {
        self.plan_with(query, snapshot, report, &self.streaming_state)
            .await
    }

    /// Plans a continuous query once for all its triggers, in the same
    /// session state as [`SqlContext::plan_trigger`]; its scans read the
    /// ranges each trigger sets. `None` when the plan cannot be run again:
    /// optimizing it folds a function of the time it is planned (`now()`,
    /// `current_date`) into a constant, so each trigger must plan anew.
    pub async fn plan_for_triggers(&self, query: &StreamingQuery) -> Result<Option<TriggerPlan>> {
        let inputs = Arc::new(TriggerInputs::default());
        let scan = ScanContext {
            storage: self.storage.clone(),
            snapshot: Arc::new(Snapshot::default()),
            report: Arc::new(ScanReport::default()),
            dead_letters: self.dead_letters.clone(),
            trigger: Some(inputs.clone()),
        };
        let mut state = self.query_state(scan, &self.streaming_state)?;
        let logical_plan = self.logical_plan(query, &mut state).await?;
        if folds_time_when_planned(&logical_plan) {
            return Ok(None);
        }
        let physical = state
            .create_physical_plan(&logical_plan)
            .await
            .map_err(from_datafusion)?;
        Ok(Some(TriggerPlan {
            physical,
            state,
            inputs,
        }))
    }

    async fn plan_with(
        &self,
        query: &StreamingQuery,
        snapshot: Arc<Snapshot>,
        report: Arc<ScanReport>,
        base: &SessionState,
    ) -> Result<PlannedQuery> {
        let scan = ScanContext {
            storage: self.storage.clone(),
            snapshot,
            report: report.clone(),
            dead_letters: self.dead_letters.clone(),
            trigger: None,
        };
        let mut state = self.query_state(scan, base)?;
        let logical_plan = self.logical_plan(query, &mut state).await?;
        Ok(PlannedQuery {
            logical_plan,
            state,
            report,
        })
    }

    /// The logical plan of `query` (unoptimized), in `state`.
    async fn logical_plan(
        &self,
        query: &StreamingQuery,
        state: &mut SessionState,
    ) -> Result<LogicalPlan> {
        // Fixes now() for the whole query, as SessionContext::sql does.
        state.mark_start_execution();
        let mut ast_query = query.query.as_ref().clone();
        prepare_query(&mut ast_query);
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(
            ast::Statement::Query(Box::new(ast_query)),
        ));
        state
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.unknown_table(from_datafusion(e)))
    }

    /// Plans a continuous query and checks that it can run continuously.
    pub async fn analyze(&self, query: &StreamingQuery) -> Result<(PlannedQuery, StreamingPlan)> {
        let planned = self.plan_query(query).await?;
        let plan = analyze(query, &planned.logical_plan)?;
        Ok((planned, plan))
    }

    /// Runs a bounded query to the end.
    pub async fn run_query(&self, query: &StreamingQuery) -> Result<QueryOutput> {
        let planned = self.plan_query(query).await?;
        self.collect_planned(planned).await
    }

    /// Runs a planned query and gathers its result and what it met.
    pub async fn collect_planned(&self, planned: PlannedQuery) -> Result<QueryOutput> {
        let physical = create_physical_plan(&planned).await?;
        let schema = physical.schema();
        let batches: Vec<RecordBatch> = collect(physical, planned.state.task_ctx())
            .await
            .map_err(from_datafusion)?;
        let mut output = QueryOutput::new(schema, batches);
        output.decode_errors = planned.report.decode_errors();
        output.warnings = planned.report.first_errors();
        if output.decode_errors > output.warnings.len() as u64 {
            output.warnings.push(format!(
                "{} more records did not decode",
                output.decode_errors - output.warnings.len() as u64
            ));
        }
        Ok(output)
    }

    async fn explain(&self, query: &StreamingQuery) -> Result<Output> {
        let planned = self.plan_query(query).await?;
        let mut rows = Vec::new();
        if query.emit.is_some() {
            let streaming = analyze(query, &planned.logical_plan)?;
            rows.push(vec![
                Some("streaming_plan".to_string()),
                Some(streaming.to_string()),
            ]);
        }
        let optimized = planned
            .state
            .optimize(&planned.logical_plan)
            .map_err(from_datafusion)?;
        rows.push(vec![
            Some("logical_plan".to_string()),
            Some(optimized.display_indent().to_string()),
        ]);
        let physical = planned
            .state
            .create_physical_plan(&planned.logical_plan)
            .await
            .map_err(from_datafusion)?;
        rows.push(vec![
            Some("physical_plan".to_string()),
            Some(displayable(physical.as_ref()).indent(false).to_string()),
        ]);
        Ok(Output::Rows(text_table(&["plan_type", "plan"], rows)?))
    }

    /// A session state whose catalog resolves streams through `scan`.
    fn query_state(&self, scan: ScanContext, base: &SessionState) -> Result<SessionState> {
        let schema = Arc::new(StreamSchema {
            catalog: self.catalog.clone(),
            scan,
        });
        let catalog = MemoryCatalogProvider::new();
        catalog
            .register_schema("public", schema)
            .map_err(from_datafusion)?;
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog("datafusion".to_string(), Arc::new(catalog));
        Ok(SessionStateBuilder::new_from_existing(base.clone())
            .with_catalog_list(Arc::new(catalogs))
            .build())
    }
}

/// Whether optimizing `plan` folds a function of the time it is planned
/// into a constant: a function DataFusion calls stable (`now()`,
/// `current_date`, ...) is evaluated once per query, when simplified.
fn folds_time_when_planned(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(function) = e
                    && function.func.signature().volatility == Volatility::Stable
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

/// The physical plan of a planned query.
pub(crate) async fn create_physical_plan(planned: &PlannedQuery) -> Result<Arc<dyn ExecutionPlan>> {
    planned
        .state
        .create_physical_plan(&planned.logical_plan)
        .await
        .map_err(from_datafusion)
}

fn continuous_not_here() -> Error {
    Error::Unsupported(
        "this is a continuous query (it has EMIT): run it as a push query \
         (Engine::subscribe; stateless queries run today), not as a statement; persistent \
         queries and continuous aggregates are not available in this build yet"
            .to_string(),
    )
}

/// The schema `public`: every stream of the catalog, read over one snapshot.
#[derive(Debug)]
struct StreamSchema {
    catalog: Arc<Catalog>,
    scan: ScanContext,
}

#[async_trait]
impl SchemaProvider for StreamSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog
            .streams()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(def) = self.catalog.stream(name) else {
            return Ok(None);
        };
        let provider = StreamProvider::try_new(def, self.scan.clone())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(provider)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.stream(name).is_some()
    }
}

/// A DataFusion error as a Sluice error: ours come back out; planning
/// errors are the caller's; the rest are internal.
pub fn from_datafusion(error: DataFusionError) -> Error {
    match error {
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::InvalidInput(other.to_string()),
        },
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            from_datafusion(*inner)
        }
        DataFusionError::Shared(shared) => match Arc::try_unwrap(shared) {
            Ok(inner) => from_datafusion(inner),
            Err(shared) => Error::InvalidInput(shared.to_string()),
        },
        DataFusionError::Collection(mut errors) if !errors.is_empty() => {
            from_datafusion(errors.remove(0))
        }
        DataFusionError::NotImplemented(message) => Error::Unsupported(message),
        DataFusionError::Internal(message) => Error::Internal(message),
        DataFusionError::ResourcesExhausted(message) => Error::Internal(message),
        DataFusionError::IoError(e) => Error::Internal(e.to_string()),
        other => Error::InvalidInput(other.strip_backtrace()),
    }
}
