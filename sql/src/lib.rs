//! `sluice-sql`: the Sluice SQL dialect, the catalog of streams, decoding
//! records into Arrow, the window table functions, and running statements
//! once (DDL, `INSERT`, bounded queries) through DataFusion.
//!
//! - [`parse_sql`] parses the dialect into [`Statement`]s.
//! - [`Catalog`] holds the streams, persisted in the storage state store.
//! - [`StreamProvider`] is a stream as a DataFusion table: it reads a
//!   snapshot of the topic and decodes values with arrow's decoders.
//! - [`WindowRelationPlanner`] plans `TUMBLE`, `HOP` and `SESSION`.
//! - [`SqlContext`] runs statements; [`analysis`] decides how a
//!   `SELECT ... EMIT` can run continuously.

pub mod analysis;
mod catalog;
mod columnar;
mod context;
mod ddl;
mod deadletter;
mod decode;
mod duration;
mod error;
mod fastjson;
mod insert;
mod output;
mod parser;
mod scan;
mod window;

#[cfg(test)]
mod tests;

pub use catalog::{
    Catalog, Compression, DEAD_LETTER_SUFFIX, Format, KEY_COLUMN, OFFSET_COLUMN, OnError,
    PARTITION_COLUMN, StreamDef, TIMESTAMP_COLUMN, is_metadata_column, metadata_fields,
};
pub use columnar::{
    AppendedRange, ColumnarBatch, MAX_BATCH_ROWS, columnar_batches, columnar_json_rows, json_rows,
    read_columns,
};
pub use context::{PlannedQuery, SqlContext, SqlOptions, TriggerPlan, from_datafusion};
pub use deadletter::DeadLetters;
pub use duration::{expr_to_duration, parse_duration};
pub use error::{Error, Result};
pub use fastjson::decode_json_projected;
pub use insert::{SinkRows, check_insert_columns, encode_for_stream};
pub use output::{Output, QueryOutput};
pub use parser::{
    CreateStream, Emit, EmitMode, ShowObject, Statement, StatementText, StreamingQuery,
    WatermarkDef, WithOptions, ident_name, parse_sql, split_statements,
};
pub use scan::{
    EventTimeFilter, LogScanExec, PartitionRange, ScanContext, ScanReport, Snapshot,
    StreamProvider, TopicOffsets, TriggerInputs, thread_cpu_nanos,
};
pub use window::{
    HopStarts, Panes, WINDOW_END, WINDOW_START, WindowFunction, WindowKind, WindowRelationPlanner,
    pane_query, window_function,
};
