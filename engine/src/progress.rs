//! What a continuous query reports after every trigger (SPEC §6),
//! modelled on Spark's `StreamingQueryProgress`.

use serde::Serialize;

/// One trigger of a continuous query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// The query's id.
    pub query_id: String,
    /// The trigger's number, counted from 0 over the query's whole life.
    pub batch_id: u64,
    /// When the trigger started (ms since the epoch).
    pub timestamp_ms: i64,
    /// Records read from the sources.
    pub num_input_rows: u64,
    /// Records read per second of wall-clock time since the previous trigger.
    pub input_rows_per_second: f64,
    /// Records read per second of this trigger's duration.
    pub processed_rows_per_second: f64,
    /// The trigger's wall-clock duration.
    pub trigger_duration_ms: f64,
    /// Its parts.
    pub durations_ms: Durations,
    /// The query's watermark after the trigger (ms since the epoch).
    pub watermark: Option<i64>,
    /// Groups held in operator state after the trigger.
    pub state_rows: u64,
    /// Memory they take.
    pub state_bytes: u64,
    /// Rows dropped as late in this trigger (their windows had closed).
    pub late_rows_dropped: u64,
    /// Records that did not decode in this trigger.
    pub decode_errors: u64,
    /// Rows emitted by this trigger.
    pub emitted_rows: u64,
    /// Per source partition: where the trigger started and ended reading,
    /// and the partition's end offset when it started.
    pub sources: Vec<SourceProgress>,
}

impl Progress {
    /// True when the trigger stopped at its `max_records_per_trigger`
    /// budget with records left to read: the next trigger starts at once
    /// rather than at the next interval.
    pub fn has_backlog(&self) -> bool {
        self.sources.iter().any(|s| s.end_offset < s.latest_offset)
    }
}

/// The parts of a trigger's duration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Durations {
    /// Reading from the log (CPU time of all reader threads).
    pub read: f64,
    /// Decoding values into Arrow (CPU time of all reader threads).
    pub decode: f64,
    /// Planning and running the query, wall-clock (includes read and decode).
    pub execute: f64,
    /// The atomic write of output, offsets and state (persistent queries).
    pub commit: f64,
}

/// One source partition in one trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceProgress {
    pub stream: String,
    pub topic: String,
    pub partition: u32,
    /// The first offset the trigger read.
    pub start_offset: u64,
    /// One past the last offset it read.
    pub end_offset: u64,
    /// The partition's end offset when the trigger started.
    pub latest_offset: u64,
}
