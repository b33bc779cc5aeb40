//! The one timer of the agent: a min-heap of next fires over all jobs (never a task per job).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use std::time::Instant;

/// A scheduled fire of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub at: Instant,
    pub seq: u64,
    pub job: String,
    /// The job entry's version when scheduled; a changed schedule makes older fires stale.
    pub version: u64,
    pub fire_time: DateTime<Utc>,
}

impl Ord for Fire {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Fire {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Next fires, earliest first.
#[derive(Debug, Default)]
pub struct FireHeap {
    heap: BinaryHeap<Reverse<Fire>>,
    seq: u64,
}

impl FireHeap {
    /// Schedules `job`'s fire at `fire_time`, due at `at` on the monotonic clock.
    pub fn push(&mut self, at: Instant, job: &str, version: u64, fire_time: DateTime<Utc>) {
        self.seq += 1;
        self.heap.push(Reverse(Fire {
            at,
            seq: self.seq,
            job: job.to_owned(),
            version,
            fire_time,
        }));
    }

    /// When the earliest fire is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|f| f.0.at)
    }

    /// The earliest fire if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Fire> {
        if self.next_due()? <= now {
            self.heap.pop().map(|f| f.0)
        } else {
            None
        }
    }

    /// Puts a popped fire back as it was.
    pub fn push_fire(&mut self, f: Fire) {
        self.heap.push(Reverse(f));
    }

    /// Drops every scheduled fire.
    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

/// The monotonic instant at which the wall-clock `fire_time` arrives, seen from `now`.
pub fn instant_of(fire_time: DateTime<Utc>, now: Instant, now_utc: DateTime<Utc>) -> Instant {
    match (fire_time - now_utc).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now, // in the past: due now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_order_and_only_when_due() {
        let now = Instant::now();
        let t: DateTime<Utc> = "2026-11-21T10:00:00Z".parse().unwrap();
        let mut h = FireHeap::default();
        h.push(now + Duration::from_secs(2), "b", 1, t);
        h.push(now + Duration::from_secs(1), "a", 1, t);
        h.push(now + Duration::from_secs(1), "c", 1, t);
        assert_eq!(h.next_due(), Some(now + Duration::from_secs(1)));
        assert!(h.pop_due(now).is_none());
        let later = now + Duration::from_secs(1);
        let due: Vec<String> = std::iter::from_fn(|| h.pop_due(later))
            .map(|f| f.job)
            .collect();
        assert_eq!(due, ["a", "c"], "same instant: insertion order");
        assert_eq!(h.pop_due(later + Duration::from_secs(1)).unwrap().job, "b");
    }

    #[test]
    fn instant_of_maps_wall_time_onto_the_monotonic_clock() {
        let now = Instant::now();
        let utc: DateTime<Utc> = "2026-11-21T10:00:00Z".parse().unwrap();
        let later = utc + chrono::Duration::milliseconds(1500);
        assert_eq!(
            instant_of(later, now, utc),
            now + Duration::from_millis(1500)
        );
        assert_eq!(
            instant_of(utc - chrono::Duration::seconds(5), now, utc),
            now
        );
    }
}
