//! `INSERT INTO stream VALUES ...` and `INSERT INTO stream SELECT ...`
//! (bounded): rows are cast to the stream's columns (so they are checked
//! against its schema), encoded in its format, and appended in one batch.
//! The answer lists where each record landed.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::sql::sqlparser::ast::Expr;
use sluice_storage::{ProduceRecord, Record, RecordPosition};

use crate::catalog::{Format, StreamDef, not_found};
use crate::columnar::{json_rows, key_strings};
use crate::context::{SqlContext, from_datafusion};
use crate::error::{Error, Result};
use crate::output::{Output, QueryOutput};
use crate::parser::StreamingQuery;

impl SqlContext {
    pub(crate) async fn insert_values(
        &self,
        stream: &str,
        columns: &[String],
        rows: Vec<Vec<Expr>>,
    ) -> Result<Output> {
        let def = self.catalog().require_stream(stream)?;
        let targets = target_columns(&def, columns)?;
        for (n, row) in rows.iter().enumerate() {
            if row.len() != targets.len() {
                return Err(Error::invalid(format!(
                    "INSERT INTO {stream}: row {} has {} values, expected {} ({})",
                    n + 1,
                    row.len(),
                    targets.len(),
                    targets.join(", ")
                )));
            }
        }
        // Each value is cast to its column's type where it stands, so rows
        // may mix spellings (an RFC 3339 string and epoch ms, say).
        let types: Vec<String> = targets
            .iter()
            .map(|t| {
                def.value_schema
                    .field_with_name(t)
                    .map(|f| f.data_type().to_string())
                    .map_err(|e| Error::Internal(format!("target column: {e}")))
            })
            .collect::<Result<_>>()?;
        let values = rows
            .iter()
            .map(|row| {
                let exprs: Vec<String> = row
                    .iter()
                    .zip(&types)
                    .map(|(expr, data_type)| format!("arrow_cast({expr}, '{data_type}')"))
                    .collect();
                format!("({})", exprs.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut state = self.base_state().clone();
        state.mark_start_execution();
        let evaluate = async {
            let logical_plan = state
                .create_logical_plan(&format!("VALUES {values}"))
                .await?;
            let physical = state.create_physical_plan(&logical_plan).await?;
            datafusion::physical_plan::collect(physical, state.task_ctx()).await
        };
        let batches = evaluate.await.map_err(|e| match from_datafusion(e) {
            Error::InvalidInput(message) => {
                Error::InvalidInput(format!("INSERT INTO {stream}: {message}"))
            }
            other => other,
        })?;
        self.append_rows(&def, &targets, batches).await
    }

    pub(crate) async fn insert_query(
        &self,
        stream: &str,
        columns: &[String],
        query: &StreamingQuery,
    ) -> Result<Output> {
        let def = self.catalog().require_stream(stream)?;
        let targets = target_columns(&def, columns)?;
        let result = self.run_query(query).await?;
        if result.schema.fields().len() != targets.len() {
            return Err(Error::invalid(format!(
                "INSERT INTO {stream}: the query gives {} columns, expected {} ({})",
                result.schema.fields().len(),
                targets.len(),
                targets.join(", ")
            )));
        }
        let warnings = result.warnings.clone();
        let decode_errors = result.decode_errors;
        let mut output = self.append_rows(&def, &targets, result.batches).await?;
        if let Output::Rows(rows) = &mut output {
            rows.warnings = warnings;
            rows.decode_errors = decode_errors;
        }
        Ok(output)
    }

    /// Casts `batches` (columns in `targets` order) to the stream's value
    /// columns, encodes and appends them.
    async fn append_rows(
        &self,
        def: &StreamDef,
        targets: &[String],
        batches: Vec<RecordBatch>,
    ) -> Result<Output> {
        let rows = conform(def, targets, &batches)?;
        let positions = if rows.num_rows() == 0 {
            Vec::new()
        } else if def.format == Format::Arrow {
            self.send_batch_to(def, &rows)
                .await?
                .into_iter()
                .flat_map(|range| {
                    range.offsets.map(move |offset| RecordPosition {
                        partition: range.partition,
                        offset,
                    })
                })
                .collect()
        } else {
            self.storage()
                .produce(&def.topic, encode(def, &rows)?)
                .await?
        };
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from_iter_values(
                    positions.iter().map(|p| p.partition as i32),
                )),
                Arc::new(Int64Array::from_iter_values(
                    positions.iter().map(|p| p.offset as i64),
                )),
            ],
        )
        .map_err(|e| Error::Internal(format!("cannot build the INSERT answer: {e}")))?;
        let mut output = QueryOutput::new(schema, vec![batch]);
        output.message = Some(format!(
            "inserted {} record{} into {}",
            positions.len(),
            if positions.len() == 1 { "" } else { "s" },
            def.name
        ));
        Ok(Output::Rows(output))
    }
}

/// What rows of a continuous query become in a stream.
#[derive(Debug)]
pub enum SinkRows {
    /// One record per row (row formats).
    Records(Vec<Record>),
    /// The rows as the stream's value columns, for a columnar stream
    /// ([`crate::columnar_batches`] cuts them into stored batches).
    Columnar(RecordBatch),
}

/// The records that rows of a continuous query become in the stream
/// `def` (`columns` as an `INSERT` names them, all when empty): matched by
/// position, cast and checked as `INSERT` does, encoded in its format,
/// keyed by its key column.
pub fn encode_for_stream(
    def: &StreamDef,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<SinkRows> {
    let targets = target_columns(def, columns)?;
    if let Some(batch) = batches.first()
        && batch.num_columns() != targets.len()
    {
        return Err(Error::invalid(format!(
            "INSERT INTO {}: the query gives {} columns, expected {} ({})",
            def.name,
            batch.num_columns(),
            targets.len(),
            targets.join(", ")
        )));
    }
    let rows = conform(def, &targets, batches)?;
    if def.format == Format::Arrow {
        return Ok(SinkRows::Columnar(rows));
    }
    Ok(SinkRows::Records(
        encode(def, &rows)?
            .into_iter()
            .map(|produce| produce.record)
            .collect(),
    ))
}

/// Checks that a query giving `columns` can be inserted into `def`.
pub fn check_insert_columns(def: &StreamDef, columns: &[String], given: usize) -> Result<()> {
    let targets = target_columns(def, columns)?;
    if given != targets.len() {
        return Err(Error::invalid(format!(
            "INSERT INTO {}: the query gives {given} columns, expected {} ({})",
            def.name,
            targets.len(),
            targets.join(", ")
        )));
    }
    Ok(())
}

/// The stream columns an `INSERT` names (all value columns when it names none).
pub(crate) fn target_columns(def: &StreamDef, columns: &[String]) -> Result<Vec<String>> {
    let known: Vec<String> = def
        .value_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if columns.is_empty() {
        return Ok(known);
    }
    let mut targets = Vec::with_capacity(columns.len());
    for column in columns {
        let column = column.to_ascii_lowercase();
        if !known.contains(&column) {
            return Err(not_found("column", &column, &known));
        }
        if targets.contains(&column) {
            return Err(Error::invalid(format!(
                "INSERT INTO {}: column \"{column}\" is named twice",
                def.name
            )));
        }
        targets.push(column);
    }
    Ok(targets)
}

/// One batch with exactly the stream's value columns: named columns cast to
/// their type, the others NULL; NOT NULL columns checked.
pub(crate) fn conform(
    def: &StreamDef,
    targets: &[String],
    batches: &[RecordBatch],
) -> Result<RecordBatch> {
    let input_schema = match batches.first() {
        Some(batch) => batch.schema(),
        None => return Ok(RecordBatch::new_empty(def.value_schema.clone())),
    };
    let input = concat_batches(&input_schema, batches)
        .map_err(|e| Error::Internal(format!("cannot join rows: {e}")))?;
    let options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(def.value_schema.fields().len());
    for field in def.value_schema.fields() {
        let column = match targets.iter().position(|t| t == field.name()) {
            Some(index) => cast_with_options(input.column(index), field.data_type(), &options)
                .map_err(|e| {
                    Error::invalid(format!(
                        "column \"{}\" ({}): {e}",
                        field.name(),
                        field.data_type()
                    ))
                })?,
            None => new_null_array(field.data_type(), input.num_rows()),
        };
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..column.len()).find(|i| column.is_null(*i)).unwrap_or(0);
            return Err(Error::invalid(format!(
                "column \"{}\" is NOT NULL, but row {} has no value for it",
                field.name(),
                row + 1
            )));
        }
        columns.push(column);
    }
    RecordBatch::try_new(def.value_schema.clone(), columns)
        .map_err(|e| Error::invalid(format!("rows do not fit stream {}: {e}", def.name)))
}

/// Encodes each row as one record in the stream's format.
fn encode(def: &StreamDef, rows: &RecordBatch) -> Result<Vec<ProduceRecord>> {
    let count = rows.num_rows();
    let values: Vec<Vec<u8>> = match def.format {
        Format::Json => json_rows(rows)?,
        Format::Arrow => {
            return Err(Error::Internal(
                "columnar rows are stored as batches, not records".to_string(),
            ));
        }
        Format::Csv => (0..count)
            .map(|i| {
                let mut buffer = Vec::new();
                {
                    let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .build(&mut buffer);
                    writer
                        .write(&rows.slice(i, 1))
                        .map_err(|e| Error::invalid(format!("cannot encode as CSV: {e}")))?;
                }
                if buffer.last() == Some(&b'\n') {
                    buffer.pop();
                }
                Ok(buffer)
            })
            .collect::<Result<_>>()?,
        Format::Raw => {
            let column = rows.column(0);
            (0..count)
                .map(|i| {
                    if column.is_null(i) {
                        Vec::new()
                    } else if let Some(strings) = column.as_string_opt::<i32>() {
                        strings.value(i).as_bytes().to_vec()
                    } else {
                        column.as_binary::<i32>().value(i).to_vec()
                    }
                })
                .collect()
        }
    };
    if values.len() != count {
        return Err(Error::Internal(format!(
            "encoded {} values for {count} rows",
            values.len()
        )));
    }
    let keys = key_strings(def, rows)?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let mut record = Record::new(value);
            if let Some(keys) = &keys
                && keys.is_valid(i)
            {
                record = record.with_key(keys.as_string::<i32>().value(i).as_bytes().to_vec());
            }
            ProduceRecord::from(record)
        })
        .collect())
}
