//! `GET /metrics`: the log's figures and the persistent queries' progress
//! (SPEC §6) in Prometheus text format (version 0.0.4). End offsets are
//! counters, so `rate()` of them is a partition's append rate; a query's
//! figures are those of its last trigger.

use std::fmt::Write as _;

use sluice_engine::storage::{self, PartitionInfo, Storage};

/// A per-partition metric: name, type, help, and how to read it.
type PartitionFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PartitionInfo) -> u64,
);

/// Renders the metrics. Blocking: reads partition metadata and the
/// consumer group offsets.
pub(crate) fn render(
    storage: &Storage,
    queries: &[sluice_engine::QueryInfo],
) -> storage::Result<String> {
    let mut out = String::new();
    let partitions = storage.describe_topics()?;
    let families: [PartitionFamily; 3] = [
        (
            "sluice_partition_end_offset",
            "counter",
            "One past the last offset written to the partition (its high watermark).",
            |p| p.end_offset,
        ),
        (
            "sluice_partition_start_offset",
            "gauge",
            "The first offset the partition still holds (retention moves it).",
            |p| p.log_start_offset,
        ),
        (
            "sluice_partition_size_bytes",
            "gauge",
            "Bytes of stored batches in the partition.",
            |p| p.size_bytes,
        ),
    ];
    for (name, kind, help, value) in families {
        family(&mut out, name, kind, help);
        for topic in &partitions {
            for p in &topic.partitions {
                let partition = p.partition.to_string();
                sample(
                    &mut out,
                    name,
                    &[("topic", &topic.name), ("partition", &partition)],
                    value(p),
                );
            }
        }
    }
    family(
        &mut out,
        "sluice_consumer_group_lag",
        "gauge",
        "Records between a consumer group's committed offset and the partition's end.",
    );
    for group in storage.list_groups()? {
        for topic in &partitions {
            let lags = storage.group_lag(&group, &topic.name)?;
            if lags.iter().all(|lag| lag.committed_offset.is_none()) {
                continue;
            }
            for lag in lags {
                sample(
                    &mut out,
                    "sluice_consumer_group_lag",
                    &[
                        ("group", &group),
                        ("topic", &topic.name),
                        ("partition", &lag.partition.to_string()),
                    ],
                    lag.lag,
                );
            }
        }
    }
    render_queries(&mut out, queries);
    Ok(out)
}

/// A query's figure from its last trigger.
type QueryFamily = (
    &'static str,
    &'static str,
    fn(&sluice_engine::Progress) -> f64,
);

fn render_queries(out: &mut String, queries: &[sluice_engine::QueryInfo]) {
    family(
        out,
        "sluice_query_running",
        "gauge",
        "1 while a persistent query runs, 0 when it is stopped or failed.",
    );
    for query in queries {
        let running = u64::from(query.status == sluice_engine::QueryStatus::Running);
        sample(
            out,
            "sluice_query_running",
            &[("query", &query.id), ("name", &query.name)],
            running,
        );
    }
    let families: [QueryFamily; 11] = [
        ("sluice_query_batch_id", "The last trigger's number.", |p| {
            p.batch_id as f64
        }),
        (
            "sluice_query_input_rows",
            "Records the last trigger read.",
            |p| p.num_input_rows as f64,
        ),
        (
            "sluice_query_input_rows_per_second",
            "Records read per second since the trigger before.",
            |p| p.input_rows_per_second,
        ),
        (
            "sluice_query_processed_rows_per_second",
            "Records read per second of the last trigger's duration.",
            |p| p.processed_rows_per_second,
        ),
        (
            "sluice_query_trigger_duration_ms",
            "The last trigger's duration, commit included.",
            |p| p.trigger_duration_ms,
        ),
        (
            "sluice_query_watermark_ms",
            "The query's watermark, ms since the epoch.",
            |p| p.watermark.unwrap_or(0) as f64,
        ),
        (
            "sluice_query_state_rows",
            "Groups held in operator state.",
            |p| p.state_rows as f64,
        ),
        (
            "sluice_query_state_bytes",
            "Memory of the operator state.",
            |p| p.state_bytes as f64,
        ),
        (
            "sluice_query_late_rows_dropped",
            "Rows the last trigger dropped as late.",
            |p| p.late_rows_dropped as f64,
        ),
        (
            "sluice_query_decode_errors",
            "Records the last trigger could not decode.",
            |p| p.decode_errors as f64,
        ),
        (
            "sluice_query_emitted_rows",
            "Rows the last trigger emitted.",
            |p| p.emitted_rows as f64,
        ),
    ];
    for (name, help, value) in families {
        family(out, name, "gauge", help);
        for query in queries {
            if let Some(progress) = &query.progress {
                let labels = [("query", query.id.as_str()), ("name", query.name.as_str())];
                sample(out, name, &labels, value(progress));
            }
        }
    }
    family(
        out,
        "sluice_query_source_lag",
        "gauge",
        "Records of a source partition the query had not read at its last trigger's end.",
    );
    for query in queries {
        if let Some(progress) = &query.progress {
            for source in &progress.sources {
                sample(
                    out,
                    "sluice_query_source_lag",
                    &[
                        ("query", &query.id),
                        ("topic", &source.topic),
                        ("partition", &source.partition.to_string()),
                    ],
                    source.latest_offset.saturating_sub(source.end_offset),
                );
            }
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
        .collect();
    let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
