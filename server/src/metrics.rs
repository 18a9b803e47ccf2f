//! `GET /metrics`: the log's figures in Prometheus text format (version
//! 0.0.4). End offsets are counters, so `rate()` of them is a partition's
//! append rate. Continuous queries' progress joins them when the stateful
//! runtime exists.

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
pub(crate) fn render(storage: &Storage) -> storage::Result<String> {
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
    Ok(out)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
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
