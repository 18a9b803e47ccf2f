//! Event time and watermarks (SPEC §3.5): per source partition, the
//! largest event time seen minus the stream's delay; for the query, the
//! minimum over the partitions that are active. It never goes backwards.
//!
//! A partition that has never held a record is not active (it would hold
//! the watermark forever); with `idle_timeout`, neither is a partition that
//! received nothing for that long, and when every partition is idle the
//! watermark moves on with wall-clock time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WatermarkState {
    /// The largest event time seen, per source partition (ms).
    pub(crate) max_event_time: Vec<Option<i64>>,
    /// The query's watermark (ms).
    pub(crate) watermark: Option<i64>,
}

#[derive(Debug)]
pub(crate) struct Watermarks {
    pub(crate) state: WatermarkState,
    delay_ms: i64,
    idle_timeout: Option<Duration>,
    /// When each partition last received records (this run only).
    last_active: Vec<Option<Instant>>,
    /// When any partition last received records.
    last_input: Instant,
}

impl Watermarks {
    pub(crate) fn new(
        state: WatermarkState,
        delay_ms: u64,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        let last_active = state
            .max_event_time
            .iter()
            .map(|m| m.map(|_| now))
            .collect();
        Watermarks {
            state,
            delay_ms: i64::try_from(delay_ms).unwrap_or(i64::MAX),
            idle_timeout,
            last_active,
            last_input: now,
        }
    }

    pub(crate) fn current(&self) -> Option<i64> {
        self.state.watermark
    }

    fn grow(&mut self, partitions: usize) {
        if self.state.max_event_time.len() < partitions {
            self.state.max_event_time.resize(partitions, None);
        }
        if self.last_active.len() < partitions {
            self.last_active.resize(partitions, None);
        }
    }

    /// Partition `partition` received records now, the latest at `max_ms`
    /// (`None` when none of them carried an event time).
    pub(crate) fn observe(&mut self, partition: usize, max_ms: Option<i64>, now: Instant) {
        self.grow(partition + 1);
        self.last_active[partition] = Some(now);
        self.last_input = now;
        if let Some(max) = max_ms {
            let seen = &mut self.state.max_event_time[partition];
            *seen = Some(seen.map_or(max, |s| s.max(max)));
        }
    }

    /// Recomputes the query watermark; true when it moved.
    pub(crate) fn advance(&mut self, partitions: usize, now: Instant) -> bool {
        self.grow(partitions);
        let idle = |last: Option<Instant>| match (self.idle_timeout, last) {
            (Some(timeout), Some(last)) => now.duration_since(last) >= timeout,
            _ => false,
        };
        let active: Vec<i64> = self
            .state
            .max_event_time
            .iter()
            .zip(&self.last_active)
            .filter(|(max, last)| max.is_some() && !idle(**last))
            .filter_map(|(max, _)| *max)
            .collect();
        let candidate = if let Some(min) = active.iter().min() {
            Some(min.saturating_sub(self.delay_ms))
        } else if let Some(timeout) = self.idle_timeout
            && now.duration_since(self.last_input) >= timeout
        {
            // Every partition is idle: time moves on without records.
            let elapsed =
                i64::try_from(now.duration_since(self.last_input).as_millis()).unwrap_or(i64::MAX);
            self.state
                .max_event_time
                .iter()
                .flatten()
                .max()
                .map(|max| max.saturating_sub(self.delay_ms).saturating_add(elapsed))
        } else {
            None
        };
        match (candidate, self.state.watermark) {
            (Some(new), Some(old)) if new > old => {
                self.state.watermark = Some(new);
                true
            }
            (Some(new), None) => {
                self.state.watermark = Some(new);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions_and_never_backwards() {
        let now = Instant::now();
        let mut marks = Watermarks::new(WatermarkState::default(), 5, None);
        marks.observe(0, Some(100), now);
        assert!(marks.advance(2, now));
        assert_eq!(marks.current(), Some(95), "partition 1 never had records");
        marks.observe(1, Some(50), now);
        assert!(
            !marks.advance(2, now),
            "the minimum fell, the watermark stays"
        );
        assert_eq!(marks.current(), Some(95));
        marks.observe(1, Some(200), now);
        assert!(!marks.advance(2, now), "partition 0 still holds it");
        assert_eq!(marks.current(), Some(95));
        marks.observe(0, Some(300), now);
        assert!(marks.advance(2, now));
        assert_eq!(marks.current(), Some(195));
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark() {
        let start = Instant::now();
        let mut marks =
            Watermarks::new(WatermarkState::default(), 0, Some(Duration::from_secs(10)));
        marks.observe(0, Some(1_000), start);
        marks.observe(1, Some(500), start);
        marks.advance(2, start);
        assert_eq!(marks.current(), Some(500));
        let later = start + Duration::from_secs(11);
        marks.observe(0, Some(2_000), later);
        marks.advance(2, later);
        assert_eq!(marks.current(), Some(2_000), "partition 1 is idle");
        let much_later = later + Duration::from_secs(15);
        marks.advance(2, much_later);
        assert_eq!(marks.current(), Some(17_000), "all idle: wall-clock time");
    }
}
