//! `sluice-tests`: cross-crate integration tests (the SQL logic tests, the
//! continuous-query differential and crash tests) and what they share; the
//! log's own tests live in `storage/tests`.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Each row as its cells' text, in order.
pub fn row_cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("a formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    rows
}

/// Each row as one line of text (`a | b | c`), in order.
pub fn row_lines(batches: &[RecordBatch]) -> Vec<String> {
    row_cells(batches)
        .into_iter()
        .map(|cells| cells.join(" | "))
        .collect()
}
