//! Reading a stream as a DataFusion table: [`StreamProvider`] plans a
//! [`LogScanExec`] over a snapshot of the topic's partitions, with the
//! filters on `_partition`, `_offset` and `_timestamp` turned into offset
//! ranges, and the projection pushed into the value decoder.
//!
//! Each output partition reads one range of one topic partition, a chunk of
//! records at a time, where its stream is polled (DataFusion polls
//! partitions in tasks of their own, so they decode in parallel); a
//! consumer that stops early (`LIMIT`) drops the reader.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMillisecondArray, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use sluice_storage::{PayloadKind, ReadLimits, ScanOutcome, Storage};

use crate::catalog::{
    Format, OFFSET_COLUMN, OnError, PARTITION_COLUMN, StreamDef, TIMESTAMP_COLUMN, metadata_fields,
};
use crate::columnar::{MAX_BATCH_ROWS, read_columns};
use crate::deadletter::{BadRecord, DeadLetters};
use crate::decode::ValueDecoder;
use crate::error::Error;

/// Records decoded per chunk: big enough to amortise per-chunk costs,
/// small enough that a `LIMIT` stops soon and memory stays low.
const CHUNK_RECORDS: usize = 8192;
/// Bytes read per chunk.
const CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// Errors kept word for word per query; the rest are only counted.
const MAX_REPORTED_ERRORS: usize = 10;

/// `(log start, end)` offsets of each partition of a topic, by partition.
pub type TopicOffsets = Arc<Vec<(u64, u64)>>;

/// The offsets of every topic a query reads, taken the first time the
/// query names the topic and then fixed.
#[derive(Debug, Default)]
pub struct Snapshot {
    topics: Mutex<HashMap<String, TopicOffsets>>,
}

impl Snapshot {
    /// Fixes the `(start, end)` offsets a query reads of each partition of
    /// `topic`: a continuous query's trigger reads only what is new.
    pub fn fix(&self, topic: &str, offsets: Vec<(u64, u64)>) -> crate::Result<()> {
        self.topics
            .lock()
            .map_err(|_| Error::Internal("snapshot lock poisoned".to_string()))?
            .insert(topic.to_string(), Arc::new(offsets));
        Ok(())
    }

    /// The offsets of `topic`, fixed at the first call.
    pub fn offsets(&self, storage: &Storage, topic: &str) -> crate::Result<TopicOffsets> {
        let mut topics = self
            .topics
            .lock()
            .map_err(|_| Error::Internal("snapshot lock poisoned".to_string()))?;
        if let Some(offsets) = topics.get(topic) {
            return Ok(offsets.clone());
        }
        let partitions = storage.partition_count(topic)?;
        let offsets = (0..partitions)
            .map(|p| storage.offsets(topic, p))
            .collect::<sluice_storage::Result<Vec<_>>>()?;
        let offsets = Arc::new(offsets);
        topics.insert(topic.to_string(), offsets.clone());
        Ok(offsets)
    }
}

/// Where the scans of a plan made once for every trigger of a continuous
/// query ([`crate::SqlContext::plan_for_triggers`]) find the trigger they
/// run for: before each run the query sets the snapshot it reads and the
/// report its scans fill, and each scan takes them when it executes.
#[derive(Debug, Default)]
pub struct TriggerInputs {
    current: Mutex<Option<(Arc<Snapshot>, Arc<ScanReport>)>>,
}

impl TriggerInputs {
    /// The next run reads `snapshot` and reports to `report`.
    pub fn set(&self, snapshot: Arc<Snapshot>, report: Arc<ScanReport>) -> crate::Result<()> {
        *self
            .current
            .lock()
            .map_err(|_| Error::Internal("trigger inputs lock poisoned".to_string()))? =
            Some((snapshot, report));
        Ok(())
    }

    fn get(&self) -> datafusion::common::Result<(Arc<Snapshot>, Arc<ScanReport>)> {
        self.current
            .lock()
            .map_err(|_| DataFusionError::Internal("trigger inputs lock poisoned".to_string()))?
            .clone()
            .ok_or_else(|| {
                DataFusionError::Internal(
                    "a plan for triggers ran before its inputs were set".to_string(),
                )
            })
    }
}

/// What the scans of one query met: records read and records that did
/// not decode (counted, with the first errors word for word).
#[derive(Debug, Default)]
pub struct ScanReport {
    records_read: AtomicU64,
    batches_read: AtomicU64,
    decode_errors: AtomicU64,
    read_nanos: AtomicU64,
    decode_nanos: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    event_time: Option<EventTimeFilter>,
    /// The largest event time read, per partition of the tracked stream.
    max_event_time: Mutex<HashMap<u32, i64>>,
    /// Rows dropped as late, as `(partition, offset)`.
    late: Mutex<Vec<(u32, u64)>>,
}

/// What a continuous query asks of its scans: track the event time of one
/// stream per partition, and drop the rows older than a bound (late rows:
/// every window they belong to has closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeFilter {
    /// The stream whose event time is tracked.
    pub stream: String,
    /// Its event-time column.
    pub column: String,
    /// Rows whose event time is below this (ms) are late: dropped, and
    /// their positions kept for [`ScanReport::late_rows`].
    pub late_before_ms: Option<i64>,
}

impl ScanReport {
    /// A report whose scans track event time as `filter` says.
    pub fn with_event_time(filter: EventTimeFilter) -> Self {
        ScanReport {
            event_time: Some(filter),
            ..ScanReport::default()
        }
    }

    /// The largest event time read in each partition of the tracked stream.
    pub fn max_event_times(&self) -> HashMap<u32, i64> {
        self.max_event_time
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The positions `(partition, offset)` of the rows dropped as late.
    pub fn late_rows(&self) -> Vec<(u32, u64)> {
        self.late.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Records read from the log.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    /// Stored batches read from the log.
    pub fn batches_read(&self) -> u64 {
        self.batches_read.load(Ordering::Relaxed)
    }

    /// CPU time spent reading from the log (all scan threads together).
    pub fn read_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.read_nanos.load(Ordering::Relaxed))
    }

    /// CPU time spent decoding values and building batches (all scan threads).
    pub fn decode_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.decode_nanos.load(Ordering::Relaxed))
    }

    /// Records that did not decode.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// The first few decode errors, naming each record.
    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors
            .lock()
            .map(|errors| errors.clone())
            .unwrap_or_default()
    }

    /// Books a scan's CPU time as reading: the thread's time since
    /// `started` less `visiting` (the time its visitor spent decoding).
    /// Returns now, where decoding time starts.
    fn add_read_time(&self, started: u64, visiting: u64) -> u64 {
        let now = thread_cpu_nanos();
        self.read_nanos.fetch_add(
            now.saturating_sub(started).saturating_sub(visiting),
            Ordering::Relaxed,
        );
        now
    }

    fn count_read(&self, records: u64, batches: u64) {
        self.records_read.fetch_add(records, Ordering::Relaxed);
        self.batches_read.fetch_add(batches, Ordering::Relaxed);
    }

    fn add_errors(&self, errors: impl Iterator<Item = String>) {
        if let Ok(mut first) = self.first_errors.lock() {
            for error in errors {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                if first.len() < MAX_REPORTED_ERRORS {
                    first.push(error);
                }
            }
        }
    }
}

/// What every scan of a query shares.
#[derive(Debug, Clone)]
pub struct ScanContext {
    pub storage: Storage,
    pub snapshot: Arc<Snapshot>,
    pub report: Arc<ScanReport>,
    pub dead_letters: Arc<DeadLetters>,
    /// Set for a plan made once for every trigger: its scans take the
    /// snapshot and report from here when they execute, and `snapshot`
    /// and `report` above are not read.
    pub trigger: Option<Arc<TriggerInputs>>,
}

/// A stream as a DataFusion table, over a snapshot of its topic.
#[derive(Debug)]
pub struct StreamProvider {
    def: Arc<StreamDef>,
    schema: SchemaRef,
    /// `None` in a plan for triggers: each run takes its trigger's.
    offsets: Option<TopicOffsets>,
    context: ScanContext,
}

impl StreamProvider {
    /// The table for `def`, its topic's offsets fixed in the snapshot
    /// (unless the plan is made for every trigger of a continuous query).
    pub fn try_new(def: Arc<StreamDef>, context: ScanContext) -> crate::Result<Self> {
        let offsets = match context.trigger {
            Some(_) => None,
            None => Some(context.snapshot.offsets(&context.storage, &def.topic)?),
        };
        Ok(StreamProvider {
            schema: def.table_schema(),
            def,
            offsets,
            context,
        })
    }

    /// The stream it reads.
    pub fn stream(&self) -> &Arc<StreamDef> {
        &self.def
    }
}

#[async_trait]
impl TableProvider for StreamProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                let mut bounds = LogBounds::default();
                if bounds.narrow(filter) {
                    // DataFusion still applies the filter: the bounds only skip
                    // what cannot match.
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let mut bounds = LogBounds::default();
        for filter in filters {
            bounds.narrow(filter);
        }
        let target = state.config().target_partitions();
        let ranges = match (&self.context.trigger, &self.offsets) {
            (None, Some(offsets)) => {
                let storage = self.context.storage.clone();
                let topic = self.def.topic.clone();
                let offsets = offsets.clone();
                // Time index seeks are RocksDB reads: off the async runtime.
                let ranges = tokio::task::spawn_blocking(move || {
                    bounded_ranges(&storage, &topic, &offsets, &bounds)
                })
                .await
                .map_err(|e| {
                    DataFusionError::Internal(format!("scan planning task failed: {e}"))
                })??;
                ScanRanges::Fixed(split_ranges(ranges, target).into())
            }
            (None, None) => {
                return Err(DataFusionError::Internal(format!(
                    "stream {} has neither offsets nor trigger inputs",
                    self.def.name
                )));
            }
            (Some(inputs), _) => {
                // As many outputs as ranges a trigger can have: one per
                // partition, or `target` when splitting makes more.
                let partitions = self
                    .context
                    .storage
                    .partition_count(&self.def.topic)
                    .map_err(external)? as usize;
                ScanRanges::PerTrigger(Arc::new(PerTrigger {
                    inputs: inputs.clone(),
                    bounds,
                    target,
                    outputs: partitions.max(target),
                    taken: Mutex::new(None),
                }))
            }
        };
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        Ok(Arc::new(LogScanExec::try_new(
            self.def.clone(),
            self.schema.clone(),
            projection,
            ranges,
            limit,
            self.context.clone(),
        )?))
    }
}

/// The ranges of `offsets` (a topic's, by partition) that `bounds` keep;
/// seeks the time index for a `_timestamp` bound, so it blocks.
fn bounded_ranges(
    storage: &Storage,
    topic: &str,
    offsets: &[(u64, u64)],
    bounds: &LogBounds,
) -> datafusion::common::Result<Vec<PartitionRange>> {
    let mut ranges = Vec::new();
    for (partition, &(start, end)) in offsets.iter().enumerate() {
        let partition = partition as u32;
        if !bounds.keeps_partition(partition) {
            continue;
        }
        let mut start = start.max(bounds.offset_from);
        let end = bounds.offset_until.map_or(end, |until| until.min(end));
        if let Some(timestamp_ms) = bounds.timestamp_from_ms
            && start < end
        {
            let from = storage
                .offset_for_timestamp(topic, partition, timestamp_ms)
                .map_err(external)?;
            start = start.max(from.unwrap_or(end));
        }
        if start < end {
            ranges.push(PartitionRange {
                partition,
                start,
                end,
            });
        }
    }
    Ok(ranges)
}

/// What a [`LogScanExec`] reads.
#[derive(Debug, Clone)]
enum ScanRanges {
    /// Ranges fixed when the query was planned.
    Fixed(Arc<[PartitionRange]>),
    /// A plan for every trigger: each run takes its ranges from the
    /// snapshot of its trigger.
    PerTrigger(Arc<PerTrigger>),
}

/// The ranges of a scan in a plan for every trigger.
#[derive(Debug)]
struct PerTrigger {
    /// Where each run finds its trigger's snapshot and report.
    inputs: Arc<TriggerInputs>,
    /// The pushed-down filters, applied to each trigger's offsets.
    bounds: LogBounds,
    /// Ranges are split until there are this many (`target_partitions`).
    target: usize,
    /// The scan's output partitions: no trigger has more ranges.
    outputs: usize,
    /// The ranges taken for the current trigger's snapshot, so that every
    /// output partition of one run splits the same way.
    taken: Mutex<Option<TakenRanges>>,
}

/// A trigger's snapshot and the ranges a scan took from it.
type TakenRanges = (Arc<Snapshot>, Arc<[PartitionRange]>);

impl PerTrigger {
    /// The ranges of the trigger run now, and a scan context reporting
    /// to it. Blocks (time index seeks).
    fn ranges(
        &self,
        def: &StreamDef,
        context: &ScanContext,
    ) -> datafusion::common::Result<(Arc<[PartitionRange]>, ScanContext)> {
        let (snapshot, report) = self.inputs.get()?;
        let context = ScanContext {
            snapshot: snapshot.clone(),
            report,
            trigger: None,
            ..context.clone()
        };
        let mut taken = self
            .taken
            .lock()
            .map_err(|_| DataFusionError::Internal("scan ranges lock poisoned".to_string()))?;
        if let Some((of, ranges)) = &*taken
            && Arc::ptr_eq(of, &snapshot)
        {
            return Ok((ranges.clone(), context));
        }
        let offsets = snapshot
            .offsets(&context.storage, &def.topic)
            .map_err(external)?;
        let ranges = bounded_ranges(&context.storage, &def.topic, &offsets, &self.bounds)?;
        let ranges: Arc<[PartitionRange]> = split_ranges(ranges, self.target).into();
        if ranges.len() > self.outputs {
            return Err(DataFusionError::Internal(format!(
                "topic {} has {} ranges to read, more than the {} its plan was made for",
                def.topic,
                ranges.len(),
                self.outputs
            )));
        }
        *taken = Some((snapshot, ranges.clone()));
        Ok((ranges, context))
    }
}

/// How a batch of `rows` rows goes out: slices of [`CHUNK_RECORDS`],
/// the last one longer rather than followed by one under half of that
/// (see `read_columnar_chunk` for why short batches cost).
fn chunk_spans(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= rows {
            return None;
        }
        let left = rows - start;
        let len = if left < CHUNK_RECORDS * 3 / 2 {
            left
        } else {
            CHUNK_RECORDS
        };
        let span = (start, len);
        start += len;
        Some(span)
    })
}

/// One offset range of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: u32,
    pub start: u64,
    pub end: u64,
}

/// Splits the largest ranges until there are `target` of them, so that a
/// topic with fewer partitions than cores still decodes on every core.
fn split_ranges(mut ranges: Vec<PartitionRange>, target: usize) -> Vec<PartitionRange> {
    const MIN_SPLIT: u64 = 2 * CHUNK_RECORDS as u64;
    while ranges.len() < target {
        let Some((index, largest)) = ranges
            .iter()
            .enumerate()
            .max_by_key(|(_, r)| r.end - r.start)
            .map(|(i, r)| (i, *r))
        else {
            break;
        };
        if largest.end - largest.start < MIN_SPLIT {
            break;
        }
        let middle = largest.start + (largest.end - largest.start) / 2;
        ranges[index].end = middle;
        ranges.insert(
            index + 1,
            PartitionRange {
                start: middle,
                ..largest
            },
        );
    }
    ranges
}

/// What filters on the metadata columns say about where rows can be.
#[derive(Debug, Default)]
struct LogBounds {
    partitions: Option<BTreeSet<u32>>,
    offset_from: u64,
    offset_until: Option<u64>,
    timestamp_from_ms: Option<i64>,
}

impl LogBounds {
    fn keeps_partition(&self, partition: u32) -> bool {
        self.partitions
            .as_ref()
            .is_none_or(|set| set.contains(&partition))
    }

    /// Narrows the bounds by `filter`; false when the filter says nothing
    /// the log can use.
    fn narrow(&mut self, filter: &Expr) -> bool {
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    let l = self.narrow(left);
                    let r = self.narrow(right);
                    return l || r;
                }
                if let (Some(column), Some(value)) = (column_name(left), literal_i64(right)) {
                    self.compare(&column, *op, value)
                } else if let (Some(value), Some(column)) = (literal_i64(left), column_name(right))
                {
                    match op.swap() {
                        Some(op) => self.compare(&column, op, value),
                        None => false,
                    }
                } else {
                    false
                }
            }
            Expr::Between(between) if !between.negated => {
                match (
                    column_name(&between.expr),
                    literal_i64(&between.low),
                    literal_i64(&between.high),
                ) {
                    (Some(column), Some(low), Some(high)) => {
                        let l = self.compare(&column, Operator::GtEq, low);
                        let h = self.compare(&column, Operator::LtEq, high);
                        l || h
                    }
                    _ => false,
                }
            }
            Expr::InList(in_list) if !in_list.negated => {
                if column_name(&in_list.expr).as_deref() != Some(PARTITION_COLUMN) {
                    return false;
                }
                let values: Option<Vec<i64>> = in_list.list.iter().map(literal_i64).collect();
                match values {
                    Some(values) => {
                        let set: BTreeSet<u32> = values
                            .into_iter()
                            .filter_map(|v| u32::try_from(v).ok())
                            .collect();
                        self.keep_partitions(|p| set.contains(&p));
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn keep_partitions(&mut self, keep: impl Fn(u32) -> bool) {
        let current = self
            .partitions
            .take()
            .unwrap_or_else(|| (0..sluice_storage::MAX_PARTITIONS).collect());
        self.partitions = Some(current.into_iter().filter(|p| keep(*p)).collect());
    }

    fn compare(&mut self, column: &str, op: Operator, value: i64) -> bool {
        match column {
            PARTITION_COLUMN => {
                let keep: Box<dyn Fn(i64) -> bool> = match op {
                    Operator::Eq => Box::new(move |p| p == value),
                    Operator::Lt => Box::new(move |p| p < value),
                    Operator::LtEq => Box::new(move |p| p <= value),
                    Operator::Gt => Box::new(move |p| p > value),
                    Operator::GtEq => Box::new(move |p| p >= value),
                    _ => return false,
                };
                self.keep_partitions(|p| keep(i64::from(p)));
                true
            }
            OFFSET_COLUMN => {
                let (from, until) = match op {
                    Operator::Eq => (Some(value), value.checked_add(1)),
                    Operator::Gt => (value.checked_add(1), None),
                    Operator::GtEq => (Some(value), None),
                    Operator::Lt => (None, Some(value)),
                    Operator::LtEq => (None, value.checked_add(1)),
                    _ => return false,
                };
                if let Some(from) = from {
                    self.offset_from = self.offset_from.max(from.max(0) as u64);
                }
                if let Some(until) = until {
                    let until = until.max(0) as u64;
                    self.offset_until = Some(self.offset_until.map_or(until, |u| u.min(until)));
                }
                true
            }
            // Timestamps are not ordered by offset, so only a lower bound
            // maps to an offset (the first one at or after it, from the
            // log's time index); an upper bound must still read to the end.
            TIMESTAMP_COLUMN => match op {
                Operator::Eq | Operator::Gt | Operator::GtEq => {
                    self.timestamp_from_ms =
                        Some(self.timestamp_from_ms.map_or(value, |t| t.max(value)));
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// The metadata column an expression reads, looking through casts (a
/// `_timestamp` compared with a nanosecond literal is cast, not changed).
fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(column) => Some(column.name.clone()),
        Expr::Cast(cast) => column_name(&cast.expr),
        Expr::TryCast(cast) => column_name(&cast.expr),
        _ => None,
    }
}

/// An integer literal, or a timestamp literal in milliseconds.
fn literal_i64(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(*v),
        // Rounded down: the bound stays a lower bound.
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(v.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1_000_000)),
        _ => None,
    }
}

/// Reads offset ranges of a topic and decodes them into record batches.
#[derive(Debug)]
pub struct LogScanExec {
    def: Arc<StreamDef>,
    /// The stream's full table schema.
    table_schema: SchemaRef,
    /// Columns of `table_schema` produced, in order.
    projection: Vec<usize>,
    schema: SchemaRef,
    ranges: ScanRanges,
    limit: Option<usize>,
    context: ScanContext,
    properties: Arc<PlanProperties>,
}

impl LogScanExec {
    /// A scan of `ranges`, producing the `projection` of `table_schema`.
    fn try_new(
        def: Arc<StreamDef>,
        table_schema: SchemaRef,
        projection: Vec<usize>,
        ranges: ScanRanges,
        limit: Option<usize>,
        context: ScanContext,
    ) -> datafusion::common::Result<Self> {
        let schema = Arc::new(table_schema.project(&projection)?);
        let outputs = match &ranges {
            ScanRanges::Fixed(ranges) => ranges.len(),
            ScanRanges::PerTrigger(per_trigger) => per_trigger.outputs,
        };
        // Zero ranges still need one (empty) output partition.
        let partitions = outputs.max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(LogScanExec {
            def,
            table_schema,
            projection,
            schema,
            ranges,
            limit,
            context,
            properties: Arc::new(properties),
        })
    }
}

impl LogScanExec {
    fn reader_spec(&self) -> ReaderSpec {
        ReaderSpec {
            def: self.def.clone(),
            table_schema: self.table_schema.clone(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            limit: self.limit,
            context: self.context.clone(),
        }
    }
}

/// What a [`RangeReader`] of a scan is made from, owned, so that the
/// partition's stream makes the reader when it is first polled.
struct ReaderSpec {
    def: Arc<StreamDef>,
    table_schema: SchemaRef,
    projection: Vec<usize>,
    schema: SchemaRef,
    limit: Option<usize>,
    context: ScanContext,
}

impl ReaderSpec {
    fn reader(
        &self,
        range: PartitionRange,
        context: ScanContext,
    ) -> datafusion::common::Result<RangeReader> {
        RangeReader::try_new(
            self.def.clone(),
            &self.table_schema,
            &self.projection,
            self.schema.clone(),
            range,
            self.limit,
            context,
        )
    }
}

impl DisplayAs for LogScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                // Ranges as partition:start..end, so EXPLAIN shows what the
                // pushed-down filters left to read.
                let (ranges, more) = match &self.ranges {
                    ScanRanges::Fixed(ranges) => (
                        ranges
                            .iter()
                            .take(8)
                            .map(|r| format!("{}:{}..{}", r.partition, r.start, r.end))
                            .collect(),
                        ranges.len().saturating_sub(8),
                    ),
                    ScanRanges::PerTrigger(_) => (vec!["each trigger's".to_string()], 0),
                };
                write!(
                    f,
                    "LogScanExec: stream={}, topic={}, format={}, projection=[{}], ranges=[{}{}]",
                    self.def.name,
                    self.def.topic,
                    self.def.format.as_str(),
                    columns.join(", "),
                    ranges.join(", "),
                    if more > 0 {
                        format!(", {more} more")
                    } else {
                        String::new()
                    },
                )?;
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "stream={}", self.def.name),
        }
    }
}

impl ExecutionPlan for LogScanExec {
    fn name(&self) -> &'static str {
        "LogScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "LogScanExec has no children".to_string(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        // The reader runs where the stream is polled, on the runtime's
        // worker threads (where a plan joins partitions, DataFusion polls
        // each in a task of its own): its reads are of memory-mapped table
        // files, mostly in the page cache, and its decoding is CPU work
        // like any operator's. A batch then goes into the plan on the
        // thread that read it, with no thread woken for it (ARCHITECTURE.md,
        // "Invariants", says what this trades away).
        let mut unopened = Some((self.ranges.clone(), self.reader_spec()));
        let mut reader: Option<RangeReader> = None;
        let batches = std::iter::from_fn(move || {
            if let Some((ranges, spec)) = unopened.take() {
                match open_reader(&ranges, &spec, partition) {
                    Ok(opened) => reader = opened,
                    Err(error) => return Some(Err(error)),
                }
            }
            let next = reader.as_mut()?.next_batch().transpose();
            if !matches!(next, Some(Ok(_))) {
                // The range is done, or failed: read nothing more.
                reader = None;
            }
            next
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        )))
    }
}

/// The reader of `partition`'s range; `None` when the scan has no range
/// for it. A plan for triggers learns the run's ranges only now (taking
/// them may seek the time index).
fn open_reader(
    ranges: &ScanRanges,
    spec: &ReaderSpec,
    partition: usize,
) -> datafusion::common::Result<Option<RangeReader>> {
    let (range, context) = match ranges {
        ScanRanges::Fixed(ranges) => (ranges.get(partition).copied(), spec.context.clone()),
        ScanRanges::PerTrigger(per_trigger) => {
            let (ranges, context) = per_trigger.ranges(&spec.def, &spec.context)?;
            (ranges.get(partition).copied(), context)
        }
    };
    range.map(|range| spec.reader(range, context)).transpose()
}

/// Where each output column comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The decoded value column at this position.
    Value(usize),
    Key,
    Partition,
    Offset,
    Timestamp,
}

/// Reads one range, chunk by chunk, into batches of the projected schema.
struct RangeReader {
    def: Arc<StreamDef>,
    schema: SchemaRef,
    sources: Vec<Source>,
    decoder: ValueDecoder,
    /// Columnar streams: the value columns read from each IPC batch (the
    /// wanted ones in schema order, then the key column when `_key` is
    /// wanted), and where the key column lands among them.
    ipc_projection: Vec<usize>,
    ipc_key: Option<usize>,
    /// Columnar batches read but not yet returned.
    pending: VecDeque<RecordBatch>,
    range: PartitionRange,
    next_offset: u64,
    remaining: Option<usize>,
    context: ScanContext,
    /// The output column holding the event time, when the query tracks it.
    event_time_column: Option<usize>,
}

impl RangeReader {
    fn try_new(
        def: Arc<StreamDef>,
        table_schema: &Schema,
        projection: &[usize],
        schema: SchemaRef,
        range: PartitionRange,
        limit: Option<usize>,
        context: ScanContext,
    ) -> datafusion::common::Result<Self> {
        let value_count = def.value_schema.fields().len();
        // Value columns are decoded in schema order (CSV needs it), then
        // placed where the projection wants them.
        let mut value_columns: Vec<usize> = projection
            .iter()
            .copied()
            .filter(|i| *i < value_count)
            .collect();
        value_columns.sort_unstable();
        value_columns.dedup();
        let metadata: Vec<String> = metadata_fields().iter().map(|f| f.name().clone()).collect();
        let sources = projection
            .iter()
            .map(|&i| {
                if i < value_count {
                    let position = value_columns.iter().position(|c| *c == i).unwrap_or(0);
                    Ok(Source::Value(position))
                } else {
                    let name = table_schema.field(i).name();
                    Ok(match metadata.iter().position(|m| m == name) {
                        Some(0) => Source::Key,
                        Some(1) => Source::Partition,
                        Some(2) => Source::Offset,
                        Some(3) => Source::Timestamp,
                        _ => {
                            return Err(DataFusionError::Internal(format!(
                                "column {i} of stream {} does not exist",
                                def.name
                            )));
                        }
                    })
                }
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let mut ipc_projection = value_columns.clone();
        let mut ipc_key = None;
        if sources.iter().any(|s| matches!(s, Source::Key))
            && let Some(key) = &def.key_column
            && let Ok(index) = def.value_schema.index_of(key)
        {
            ipc_key = Some(match ipc_projection.iter().position(|c| *c == index) {
                Some(position) => position,
                None => {
                    ipc_projection.push(index);
                    ipc_projection.len() - 1
                }
            });
        }
        let decoder = ValueDecoder::new(&def, value_columns)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let event_time_column = match &context.report.event_time {
            Some(filter) if filter.stream == def.name => schema.index_of(&filter.column).ok(),
            _ => None,
        };
        Ok(RangeReader {
            event_time_column,
            def,
            schema,
            sources,
            decoder,
            ipc_projection,
            ipc_key,
            pending: VecDeque::new(),
            next_offset: range.start,
            range,
            remaining: limit,
            context,
        })
    }

    fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            let batch = match self.pending.pop_front() {
                Some(batch) => Some(batch),
                None if self.next_offset >= self.range.end => return Ok(None),
                None => self.read_chunk()?,
            };
            if let Some(batch) = batch
                && batch.num_rows() > 0
            {
                let batch = match &mut self.remaining {
                    Some(remaining) => {
                        let keep = batch.num_rows().min(*remaining);
                        *remaining -= keep;
                        batch.slice(0, keep)
                    }
                    None => batch,
                };
                return Ok(Some(batch));
            }
        }
    }

    /// Reads and decodes one chunk; `None` when the range is done.
    ///
    /// JSON values are fed to the decoder straight from RocksDB's blocks
    /// ([`Storage::scan`]); a chunk with a bad value is read again, copied,
    /// to find which records are bad.
    fn read_chunk(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        if self.def.format == Format::Arrow {
            return self.read_columnar_chunk();
        }
        if !self.decoder.can_feed() {
            return self.read_chunk_copying(self.range.end);
        }
        let topic = self.def.topic.clone();
        let partition = self.range.partition;
        let chunk_start = self.next_offset;
        let limits = ReadLimits::records(CHUNK_RECORDS)
            .with_max_bytes(CHUNK_BYTES)
            .until(self.range.end);
        let want_keys = self.sources.iter().any(|s| matches!(s, Source::Key));
        let mut offsets: Vec<i64> = Vec::with_capacity(CHUNK_RECORDS);
        let mut timestamps: Vec<i64> = Vec::with_capacity(CHUNK_RECORDS);
        let mut keys: Vec<Option<Vec<u8>>> = Vec::new();
        let mut columnar_at = None;
        let mut feed = self.decoder.json_feed();
        let mut inside_nanos = 0u64;
        let started = thread_cpu_nanos();
        let scanned = self
            .context
            .storage
            .scan(&topic, partition, chunk_start, limits, |batch| {
                let entered = thread_cpu_nanos();
                if batch.kind() != PayloadKind::Rows {
                    columnar_at.get_or_insert(batch.offsets().start);
                    return Ok(());
                }
                for record in batch.records()? {
                    let record = record?;
                    offsets.push(record.offset as i64);
                    timestamps.push(record.timestamp_ms);
                    if want_keys {
                        keys.push(record.key.map(<[u8]>::to_vec));
                    }
                    feed.push(record.value);
                }
                inside_nanos += thread_cpu_nanos().saturating_sub(entered);
                Ok(())
            });
        let Some(scanned) = self.scanned(scanned, chunk_start)? else {
            return Ok(None);
        };
        if let Some(offset) = columnar_at {
            return Err(external(Error::Unsupported(format!(
                "topic {topic} partition {partition} offset {offset}: a columnar batch in the row stream {}",
                self.def.name
            ))));
        }
        let report = self.context.report.clone();
        // Time inside the visitor is framing and feeding the decoder:
        // decode work; the rest of the scan is RocksDB's.
        let decode_started = report.add_read_time(started, inside_nanos);
        let Some(decoded) = self.decoder.finish_feed(feed) else {
            // A bad value somewhere: read the same records again, copied,
            // and decode them one by one (that read counts them).
            self.next_offset = chunk_start;
            return self.read_chunk_copying(scanned.next_offset);
        };
        report.count_read(scanned.record_count as u64, scanned.batch_count as u64);
        self.next_offset = scanned.next_offset.min(self.range.end);
        let keys: Vec<Option<&[u8]>> = keys.iter().map(|k| k.as_deref()).collect();
        let batch = self.assemble(&decoded, None, &keys, &offsets, &timestamps)?;
        report.decode_nanos.fetch_add(
            inside_nanos + thread_cpu_nanos().saturating_sub(decode_started),
            Ordering::Relaxed,
        );
        Ok(Some(batch))
    }

    /// Reads a chunk of a columnar stream: each stored IPC batch becomes a
    /// record batch (no per-row decoding), cut to the offsets wanted, with
    /// the metadata columns added. The batches queue in `pending`.
    fn read_columnar_chunk(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let topic = self.def.topic.clone();
        let partition = self.range.partition;
        let chunk_start = self.next_offset;
        // Whole stored batches (up to MAX_BATCH_ROWS rows): a batch's
        // columns are read whole, so reading it in pieces would read it
        // again for each piece. The rows go out in CHUNK_RECORDS slices.
        let limits = ReadLimits::records(MAX_BATCH_ROWS.max(CHUNK_RECORDS))
            .with_max_bytes(CHUNK_BYTES)
            .until(self.range.end);
        // (value columns of the wanted rows, their offsets, their
        // timestamps if `_timestamp` is wanted)
        let mut parts: Vec<(Vec<ArrayRef>, Range<u64>, Vec<i64>)> = Vec::new();
        let wants_timestamps = self.sources.iter().any(|s| matches!(s, Source::Timestamp));
        // The visitor fetches the projected column parts from RocksDB, so
        // the whole scan counts as reading; building the output batches
        // after it counts as decoding. (Timing each visit would cost two
        // system calls per stored batch.)
        let started = thread_cpu_nanos();
        let (def, projection) = (&self.def, &self.ipc_projection);
        let scanned = self
            .context
            .storage
            .scan(&topic, partition, chunk_start, limits, |batch| {
                let Some(slice) = batch.columnar()? else {
                    return Err(sluice_storage::Error::Corrupt {
                        topic: topic.clone(),
                        partition,
                        offset: batch.offsets().start,
                        reason: format!("a row batch in the columnar stream {}", def.name),
                    });
                };
                let (start, end) = slice.rows;
                let first = slice.base_offset + start as u64;
                // Only the projected columns are read out of RocksDB.
                let columns = read_columns(def, &slice, projection)?
                    .into_iter()
                    .map(|column| column.slice(start, end - start))
                    .collect();
                let mut times = Vec::new();
                if wants_timestamps {
                    times = slice.timestamps()?;
                    times.truncate(end);
                    times.drain(..start);
                }
                parts.push((columns, first..first + (end - start) as u64, times));
                Ok(())
            });
        let Some(scanned) = self.scanned(scanned, chunk_start)? else {
            return Ok(None);
        };
        let report = self.context.report.clone();
        let assemble_started = report.add_read_time(started, 0);
        report.count_read(scanned.record_count as u64, scanned.batch_count as u64);
        self.next_offset = scanned.next_offset.min(self.range.end);
        let mut batches = parts
            .into_iter()
            .map(|(values, offsets, timestamps)| {
                self.assemble_columnar(&values, offsets, &timestamps)
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        // A range that starts inside a stored batch begins with a short
        // one: it goes out joined to the next chunk. DataFusion's
        // coalescers (after a filter) pass batches over half their target
        // size through, but once they hold a short one they copy every
        // batch after it.
        let mut head = None;
        if batches.len() > 1 && batches[0].num_rows() < CHUNK_RECORDS / 2 {
            head = Some(batches.remove(0));
        }
        for batch in batches {
            for (start, len) in chunk_spans(batch.num_rows()) {
                let chunk = batch.slice(start, len);
                self.pending.push_back(match head.take() {
                    Some(short) => concat_batches(&self.schema, [&short, &chunk])?,
                    None => chunk,
                });
            }
        }
        report.decode_nanos.fetch_add(
            thread_cpu_nanos().saturating_sub(assemble_started),
            Ordering::Relaxed,
        );
        Ok(self.pending.pop_front())
    }

    /// The output batch of the rows at `offsets` read from a columnar
    /// batch: `values` holds the columns of `ipc_projection`, `timestamps`
    /// the rows' timestamps when `_timestamp` is wanted.
    fn assemble_columnar(
        &self,
        values: &[ArrayRef],
        offsets: Range<u64>,
        timestamps: &[i64],
    ) -> datafusion::common::Result<RecordBatch> {
        let rows = (offsets.end - offsets.start) as usize;
        let first = offsets.start;
        let partition = self.range.partition;
        let columns: Vec<ArrayRef> = self
            .sources
            .iter()
            .map(|source| -> datafusion::common::Result<ArrayRef> {
                Ok(match source {
                    Source::Value(position) => values[*position].clone(),
                    Source::Key => match self.ipc_key {
                        Some(key) => cast(&values[key], &DataType::Utf8)?,
                        None => new_null_array(&DataType::Utf8, rows),
                    },
                    Source::Partition => Arc::new(Int32Array::from(vec![partition as i32; rows])),
                    Source::Offset => Arc::new(Int64Array::from_iter_values(
                        (0..rows).map(|i| (first + i as u64) as i64),
                    )),
                    Source::Timestamp => Arc::new(TimestampMillisecondArray::from_iter_values(
                        timestamps.iter().copied(),
                    )),
                })
            })
            .collect::<datafusion::common::Result<_>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        match self.event_time_column {
            Some(column) => self.track_event_time(batch, column, |i| (first + i as u64) as i64),
            None => Ok(batch),
        }
    }

    /// What a chunk's scan read; `None` when the range is done (nothing
    /// was left, or retention removed what was).
    fn scanned(
        &mut self,
        scanned: sluice_storage::Result<ScanOutcome>,
        chunk_start: u64,
    ) -> datafusion::common::Result<Option<ScanOutcome>> {
        match scanned {
            Ok(scanned) if scanned.batch_count == 0 => {
                self.next_offset = self.range.end;
                Ok(None)
            }
            Ok(scanned) => Ok(Some(scanned)),
            Err(sluice_storage::Error::OffsetOutOfRange { .. }) => {
                self.skip_deleted(chunk_start).map(|()| None)
            }
            Err(e) => Err(external(e)),
        }
    }

    /// Retention removed the start of the range while the query ran: those
    /// records are gone; go on from the new log start.
    fn skip_deleted(&mut self, from: u64) -> datafusion::common::Result<()> {
        let (log_start, _) = self
            .context
            .storage
            .offsets(&self.def.topic, self.range.partition)
            .map_err(external)?;
        self.next_offset = if log_start > from {
            log_start
        } else {
            self.range.end
        };
        Ok(())
    }

    /// Reads a chunk (up to `until`) as copies and decodes it record by
    /// record where needed: the path for CSV, raw, and chunks with bad values.
    fn read_chunk_copying(
        &mut self,
        until: u64,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        let storage = &self.context.storage;
        let topic = &self.def.topic;
        let partition = self.range.partition;
        let limits = ReadLimits::records(CHUNK_RECORDS)
            .with_max_bytes(CHUNK_BYTES)
            .until(until.min(self.range.end));
        let read_started = thread_cpu_nanos();
        let fetch = match storage.read(topic, partition, self.next_offset, limits) {
            Ok(fetch) => fetch,
            Err(sluice_storage::Error::OffsetOutOfRange { .. }) => {
                let from = self.next_offset;
                return self.skip_deleted(from).map(|()| None);
            }
            Err(e) => return Err(external(e)),
        };
        if fetch.batches.is_empty() {
            self.next_offset = self.range.end;
            return Ok(None);
        }
        let report = &self.context.report;
        let decode_started = report.add_read_time(read_started, 0);
        self.next_offset = fetch.next_offset.min(self.range.end);
        let count = fetch.record_count();
        let mut values: Vec<&[u8]> = Vec::with_capacity(count);
        let mut keys: Vec<Option<&[u8]>> = Vec::with_capacity(count);
        let mut offsets: Vec<i64> = Vec::with_capacity(count);
        let mut timestamps: Vec<i64> = Vec::with_capacity(count);
        for stored in &fetch.batches {
            if stored.kind() != PayloadKind::Rows {
                return Err(external(Error::Unsupported(format!(
                    "topic {topic} partition {partition} offset {}: a columnar batch in the row stream {}",
                    stored.offsets().start,
                    self.def.name
                ))));
            }
            for record in stored.records().map_err(external)? {
                let record = record.map_err(external)?;
                values.push(record.value);
                keys.push(record.key);
                offsets.push(record.offset as i64);
                timestamps.push(record.timestamp_ms);
            }
        }
        let report = &self.context.report;
        report.count_read(count as u64, fetch.batches.len() as u64);
        let decoded = self.decoder.decode(&values).map_err(external)?;
        let good: Option<Vec<usize>> = if decoded.bad.is_empty() {
            None
        } else {
            self.handle_bad(&decoded.bad, &values, &keys, &offsets, &timestamps)?;
            let bad: BTreeSet<usize> = decoded.bad.iter().map(|(i, _)| *i).collect();
            Some((0..values.len()).filter(|i| !bad.contains(i)).collect())
        };
        let keys: Vec<Option<&[u8]>> = keys;
        let batch = self.assemble(
            &decoded.batch,
            good.as_deref(),
            &keys,
            &offsets,
            &timestamps,
        )?;
        report.decode_nanos.fetch_add(
            thread_cpu_nanos().saturating_sub(decode_started),
            Ordering::Relaxed,
        );
        Ok(Some(batch))
    }

    /// The output batch: decoded value columns and metadata columns of the
    /// good records (`good` indexes them, `None` when all are good).
    fn assemble(
        &self,
        decoded: &RecordBatch,
        good: Option<&[usize]>,
        keys: &[Option<&[u8]>],
        offsets: &[i64],
        timestamps: &[i64],
    ) -> datafusion::common::Result<RecordBatch> {
        let rows = decoded.num_rows();
        let partition = self.range.partition;
        let pick = |i: usize| good.map_or(i, |g| g[i]);
        let columns: Vec<ArrayRef> = self
            .sources
            .iter()
            .map(|source| -> ArrayRef {
                match source {
                    Source::Value(position) => decoded.column(*position).clone(),
                    Source::Key => {
                        Arc::new(StringArray::from_iter((0..rows).map(|i| {
                            keys[pick(i)].map(|k| String::from_utf8_lossy(k).into_owned())
                        })))
                    }
                    Source::Partition => Arc::new(Int32Array::from(vec![partition as i32; rows])),
                    Source::Offset => Arc::new(Int64Array::from_iter_values(
                        (0..rows).map(|i| offsets[pick(i)]),
                    )),
                    Source::Timestamp => Arc::new(TimestampMillisecondArray::from_iter_values(
                        (0..rows).map(|i| timestamps[pick(i)]),
                    )),
                }
            })
            .collect();
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        match self.event_time_column {
            Some(column) => self.track_event_time(batch, column, |i| offsets[pick(i)]),
            None => Ok(batch),
        }
    }

    /// Notes the largest event time of `batch` and drops its late rows.
    fn track_event_time(
        &self,
        batch: RecordBatch,
        column: usize,
        offset_of: impl Fn(usize) -> i64,
    ) -> datafusion::common::Result<RecordBatch> {
        let report = &self.context.report;
        let Some(times) = batch
            .column(column)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
        else {
            return Err(DataFusionError::Internal(format!(
                "the event-time column of {} is not a TIMESTAMP(ms)",
                self.def.name
            )));
        };
        // Without NULLs, one pass over the values gives both ends.
        let (min, max) = if times.null_count() == 0 {
            min_max(times.values()).unzip()
        } else {
            (
                datafusion::arrow::compute::min(times),
                datafusion::arrow::compute::max(times),
            )
        };
        if let Some(max) = max
            && let Ok(mut seen) = report.max_event_time.lock()
        {
            let entry = seen.entry(self.range.partition).or_insert(max);
            *entry = (*entry).max(max);
        }
        let Some(bound) = report.event_time.as_ref().and_then(|f| f.late_before_ms) else {
            return Ok(batch);
        };
        if min.is_none_or(|min| min >= bound) {
            return Ok(batch);
        }
        let late: Vec<usize> = (0..times.len())
            .filter(|&i| times.is_valid(i) && times.value(i) < bound)
            .collect();
        if late.is_empty() {
            return Ok(batch);
        }
        if let Ok(mut positions) = report.late.lock() {
            positions.extend(
                late.iter()
                    .map(|&i| (self.range.partition, offset_of(i) as u64)),
            );
        }
        let keep = datafusion::arrow::array::BooleanArray::from_iter(
            (0..times.len()).map(|i| Some(!(times.is_valid(i) && times.value(i) < bound))),
        );
        Ok(datafusion::arrow::compute::filter_record_batch(
            &batch, &keep,
        )?)
    }

    /// Counts, reports and dead-letters bad records; fails the query
    /// instead when the stream says `on_error = 'fail'`.
    fn handle_bad(
        &self,
        bad: &[(usize, String)],
        values: &[&[u8]],
        keys: &[Option<&[u8]>],
        offsets: &[i64],
        timestamps: &[i64],
    ) -> datafusion::common::Result<()> {
        let topic = &self.def.topic;
        let partition = self.range.partition;
        let describe = |(i, error): &(usize, String)| {
            format!(
                "stream {} (topic {topic}, partition {partition}, offset {}): {error}",
                self.def.name, offsets[*i]
            )
        };
        if self.def.on_error == OnError::Fail {
            return Err(external(Error::InvalidInput(format!(
                "{} (the stream has on_error = 'fail')",
                describe(&bad[0])
            ))));
        }
        self.context.report.add_errors(bad.iter().map(describe));
        let records: Vec<BadRecord> = bad
            .iter()
            .map(|(i, error)| BadRecord {
                partition,
                offset: offsets[*i] as u64,
                timestamp_ms: timestamps[*i],
                key: keys[*i].map(<[u8]>::to_vec),
                value: values[*i].to_vec(),
                error: error.clone(),
            })
            .collect();
        self.context
            .dead_letters
            .record(&self.def, &records)
            .map_err(external)
    }
}

/// CPU time of the calling thread, in nanoseconds: scan threads share
/// cores, so wall time would charge one thread for another's work.
pub fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if ok {
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    } else {
        0
    }
}

fn external(error: impl Into<Error>) -> DataFusionError {
    DataFusionError::External(Box::new(error.into()))
}

/// The least and greatest of `values`, in one pass (`None` when empty).
fn min_max(values: &[i64]) -> Option<(i64, i64)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { min_max_avx2(values) };
    }
    min_max_portable(values)
}

/// [`min_max`] compiled for AVX2, which compares four `i64`s at a time
/// (the baseline x86-64 has no 64-bit compare).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn min_max_avx2(values: &[i64]) -> Option<(i64, i64)> {
    min_max_portable(values)
}

#[inline(always)]
fn min_max_portable(values: &[i64]) -> Option<(i64, i64)> {
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(low, high), &v| (low.min(v), high.max(v))),
    )
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// The one-pass bounds are the slice's least and greatest values.
        #[test]
        fn min_max_is_the_least_and_greatest(values in proptest::collection::vec(proptest::num::i64::ANY, 0..100)) {
            let expected = values.iter().min().copied().zip(values.iter().max().copied());
            proptest::prop_assert_eq!(super::min_max(&values), expected);
        }

        /// The spans cover the rows once, in order, and none is short
        /// unless it is the whole batch.
        #[test]
        fn chunk_spans_cover_the_rows_without_a_short_one(rows in 0usize..100_000) {
            let spans: Vec<_> = super::chunk_spans(rows).collect();
            let mut next = 0;
            for &(start, len) in &spans {
                proptest::prop_assert_eq!(start, next);
                proptest::prop_assert!(len > 0);
                proptest::prop_assert!(len < super::CHUNK_RECORDS * 3 / 2);
                proptest::prop_assert!(len >= super::CHUNK_RECORDS / 2 || spans.len() == 1);
                next = start + len;
            }
            proptest::prop_assert_eq!(next, rows);
        }
    }
}
