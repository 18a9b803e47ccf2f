//! `sluice-sql`: the Sluice SQL dialect, the catalog of streams, and
//! planning to DataFusion.
//!
//! So far this crate parses the dialect ([`parse_sql`]); the catalog,
//! decoding and planning follow. Nothing else in Sluice uses it yet.

mod duration;
mod error;
mod parser;

#[cfg(test)]
mod tests;

pub use duration::{expr_to_duration, parse_duration};
pub use error::{Error, Result};
pub use parser::{
    CreateStream, Emit, EmitMode, ShowObject, Statement, StreamingQuery, WatermarkDef, WithOptions,
    ident_name, parse_sql,
};
