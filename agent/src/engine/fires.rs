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

/// Next fires, earliest first, with how many fall in each millisecond (a crowd of fires at one
/// instant is what is worth launching ahead).
#[derive(Debug, Default)]
pub struct FireHeap {
    heap: BinaryHeap<Reverse<Fire>>,
    seq: u64,
    /// Fires per millisecond of their wall-clock fire time.
    per_ms: crate::hash::FastMap<i64, u32>,
}

impl FireHeap {
    /// Schedules `job`'s fire at `fire_time`, due at `at` on the monotonic clock. (A name
    /// passed owned is moved in: the fire that schedules the next one gives its own.)
    pub fn push(
        &mut self,
        at: Instant,
        job: impl Into<String>,
        version: u64,
        fire_time: DateTime<Utc>,
    ) {
        self.seq += 1;
        self.push_fire(Fire {
            at,
            seq: self.seq,
            job: job.into(),
            version,
            fire_time,
        });
    }

    /// How many fires share the millisecond of the earliest one (by fire time), and which
    /// millisecond it is.
    pub fn crowd_at_top(&self) -> Option<(i64, u32)> {
        let b = self.heap.peek()?.0.fire_time.timestamp_millis();
        Some((b, self.per_ms.get(&b).copied().unwrap_or(0)))
    }

    /// When the earliest fire is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|f| f.0.at)
    }

    /// Fires scheduled.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No fire scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest fire if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Fire> {
        if self.next_due()? > now {
            return None;
        }
        let f = self.heap.pop()?.0;
        let b = f.fire_time.timestamp_millis();
        if let Some(n) = self.per_ms.get_mut(&b) {
            *n -= 1;
            if *n == 0 {
                self.per_ms.remove(&b);
            }
        }
        Some(f)
    }

    /// Puts a popped fire back as it was.
    pub fn push_fire(&mut self, f: Fire) {
        *self
            .per_ms
            .entry(f.fire_time.timestamp_millis())
            .or_default() += 1;
        self.heap.push(Reverse(f));
    }

    /// Drops every scheduled fire.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.per_ms.clear();
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
    fn counts_the_crowd_of_fires_sharing_the_earliest_millisecond() {
        let now = Instant::now();
        let t: DateTime<Utc> = "2026-11-21T10:00:00Z".parse().unwrap();
        let mut h = FireHeap::default();
        assert_eq!(h.crowd_at_top(), None);
        for job in ["a", "b", "c"] {
            h.push(now, job, 1, t);
        }
        h.push(now, "d", 1, t + chrono::Duration::milliseconds(1));
        let ms = t.timestamp_millis();
        assert_eq!(h.crowd_at_top(), Some((ms, 3)));
        let f = h.pop_due(now).unwrap();
        assert_eq!(h.crowd_at_top(), Some((ms, 2)));
        h.push_fire(f);
        assert_eq!(h.crowd_at_top(), Some((ms, 3)), "put back, counted again");
        for _ in 0..3 {
            h.pop_due(now);
        }
        assert_eq!(h.crowd_at_top(), Some((ms + 1, 1)));
        h.clear();
        assert_eq!(h.crowd_at_top(), None);
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
