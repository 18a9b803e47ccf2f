//! `sluice-engine`: the public library API of Sluice — open an [`Engine`]
//! on a data directory, run SQL on it, produce records.
//!
//! ```no_run
//! use sluice_engine::{Engine, Record};
//!
//! # async fn demo() -> sluice_engine::Result<()> {
//! let engine = Engine::open("./sluice-data").await?;
//! engine
//!     .execute("CREATE STREAM bid (auction BIGINT, price BIGINT, date_time TIMESTAMP) \
//!               WITH (topic = 'bids', format = 'json', partitions = 4)")
//!     .await?;
//! engine
//!     .producer("bids")?
//!     .send(Record::new(r#"{"auction": 1, "price": 5, "date_time": "2026-01-01T00:00:00Z"}"#))
//!     .await?;
//! let batches = engine.query("SELECT count(*), max(price) FROM bid").await?;
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Bounded queries run with [`Engine::query`] / [`Engine::execute`];
//! continuous queries (`SELECT ... EMIT ...`) run as push queries with
//! [`Engine::subscribe`], or persistently with [`Engine::start_query`]
//! (`CREATE STREAM ... AS SELECT ... EMIT ...`), writing to a stream
//! exactly once and resuming after restarts.

pub mod bench;
mod continuous;
mod engine;
mod error;
pub mod nexmark;
mod progress;
mod queries;

pub use continuous::Subscription;
/// The arrow that Sluice uses (DataFusion's), so embedders need no other.
pub use datafusion::arrow;
pub use datafusion::arrow::record_batch::RecordBatch;
pub use engine::{Engine, EngineBuilder, Producer};
pub use error::{Error, Result};
pub use progress::{Durations, Progress, SourceProgress};
pub use queries::{QueryHandle, QueryInfo, QueryStatus};
pub use sluice_sql as sql;
pub use sluice_sql::analysis::DEFAULT_MAX_RECORDS_PER_TRIGGER;
pub use sluice_sql::{
    AppendedRange, Compression, Format, Output, QueryOutput, StatementText, columnar_json_rows,
    split_statements,
};
pub use sluice_storage as storage;
pub use sluice_storage::{Durability, Record, RecordPosition};
