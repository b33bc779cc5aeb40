//! The owner's window: the pending tasks of one segment due before `loaded_until`, in memory,
//! earliest first. Pure; the worker fills it from the store and from notifications.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One segment's tasks due soon.
#[derive(Debug, Default)]
pub struct Window {
    heap: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>>,
    ids: HashSet<Uuid>,
    /// Every pending task due before this instant was in the store's answer at the last refill
    /// (later ones arrive by notification or the next refill).
    loaded_until: Option<DateTime<Utc>>,
}

impl Window {
    /// Adds a task unless it is there already; true when added.
    pub fn insert(&mut self, id: Uuid, due: DateTime<Utc>) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.heap.push(Reverse((due, id)));
        true
    }

    /// The tasks due at `now`, earliest first, at most `max`; they leave the window.
    pub fn pop_due(&mut self, now: DateTime<Utc>, max: usize) -> Vec<(Uuid, DateTime<Utc>)> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.heap.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            if let Some(Reverse((at, id))) = self.heap.pop() {
                self.ids.remove(&id);
                due.push((id, at));
            }
        }
        due
    }

    /// When the earliest task is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Records a refill: every pending task due before `until` was loaded.
    pub fn loaded(&mut self, until: DateTime<Utc>) {
        self.loaded_until = Some(until);
    }

    /// True when a task due at `due` belongs in memory now (a notification of it is worth a
    /// look); false when the refill that reaches its time will load it.
    pub fn covers(&self, due: DateTime<Utc>) -> bool {
        self.loaded_until.is_some_and(|u| due < u)
    }

    /// Tasks in memory.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is in memory.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> DateTime<Utc> {
        let base: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        base + chrono::Duration::milliseconds((s * 1000.0) as i64)
    }

    #[test]
    fn pops_due_tasks_earliest_first_in_bounded_batches_once_each() {
        let mut w = Window::default();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        assert!(w.insert(b, t(2.0)));
        assert!(w.insert(a, t(1.0)));
        assert!(w.insert(c, t(3.0)));
        assert!(!w.insert(a, t(1.0)), "a refill's copy of a task in memory");
        assert_eq!(w.next_due(), Some(t(1.0)));
        assert_eq!(w.pop_due(t(0.5), 10), []);
        assert_eq!(w.pop_due(t(2.5), 1), [(a, t(1.0))]);
        assert_eq!(w.pop_due(t(2.5), 10), [(b, t(2.0))]);
        assert_eq!(w.len(), 1);
        assert!(
            w.insert(a, t(4.0)),
            "gone from memory: a retry may come back"
        );
    }

    #[test]
    fn covers_only_what_the_last_refill_reached() {
        let mut w = Window::default();
        assert!(!w.covers(t(0.0)), "nothing loaded yet");
        w.loaded(t(30.0));
        assert!(w.covers(t(29.9)));
        assert!(!w.covers(t(30.0)));
    }
}
