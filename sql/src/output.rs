//! What a statement answers: rows (a query, `SHOW`, `DESCRIBE`, `EXPLAIN`,
//! the positions an `INSERT` wrote) or a message (DDL).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};

/// The answer to one statement.
#[derive(Debug, Clone)]
pub enum Output {
    /// A result set.
    Rows(QueryOutput),
    /// A statement that changed something, with what it did.
    Done(String),
}

/// A finite result set, with what the query met on the way.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Its columns.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// A note about the whole result (for `DESCRIBE`: the stream's topic and format).
    pub message: Option<String>,
    /// Records skipped because they did not decode.
    pub decode_errors: u64,
    /// The first decode errors, naming each record, and other warnings.
    pub warnings: Vec<String>,
}

impl QueryOutput {
    /// A result of `batches`, with nothing to report.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        QueryOutput {
            schema,
            batches,
            message: None,
            decode_errors: 0,
            warnings: Vec::new(),
        }
    }

    /// The number of rows.
    pub fn row_count(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A table of text columns, for `SHOW` and `DESCRIBE`.
pub(crate) fn text_table(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Result<QueryOutput> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|c| {
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| r.get(c).cloned().flatten())
                    .collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::Internal(format!("cannot build a result: {e}")))?;
    Ok(QueryOutput::new(schema, vec![batch]))
}
