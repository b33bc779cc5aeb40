//! What happens after an attempt: done, retried at a backoff, failed for good (a dead
//! letter), cancelled, or put back for the next owner. Pure; the worker writes the result.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_sharding::hash::fnv1a64;
use uuid::Uuid;

/// A queue's retry policy: `base · 2^(attempt-1)`, capped, times a jitter in [0.5, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts a task gets unless its submitter says otherwise (1 = no retry).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10 * 60),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` of task `id`. The jitter is a hash of the id and
    /// attempt: spread over tasks, the same for one task whoever computes it.
    pub fn backoff(&self, id: Uuid, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let h = fnv1a64(&[id.as_bytes(), &attempt.to_le_bytes()]);
        exp.mul_f64(0.5 + (h % 1000) as f64 / 2000.0)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    Ok,
    /// Failed; a retry may help.
    Failed(String),
    /// Failed in a way no retry fixes.
    Permanent(String),
    /// Ran past the queue's timeout and was cancelled (a failed attempt).
    TimedOut,
    /// Stopped by a hand-off (the segment moves): the next owner runs it again.
    Interrupted,
}

impl Attempted {
    /// The attempt row's `outcome`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Attempted::Ok => "ok",
            Attempted::Failed(_) | Attempted::Permanent(_) => "failed",
            Attempted::TimedOut => "timeout",
            Attempted::Interrupted => "interrupted",
        }
    }

    /// The attempt row's `error`.
    pub fn error(&self) -> Option<String> {
        match self {
            Attempted::Ok => None,
            Attempted::Failed(e) => Some(e.clone()),
            Attempted::Permanent(e) => Some(format!("{e} (permanent)")),
            Attempted::TimedOut => Some("timed out".into()),
            Attempted::Interrupted => Some("interrupted by a hand-off of its segment".into()),
        }
    }
}

/// The task's next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Pending again, due at this instant.
    Retry(DateTime<Utc>),
    /// Failed for good: a dead letter.
    Failed,
    /// Pending again at its old due time, for the segment's next owner.
    Requeued,
}

impl Next {
    /// The task row's `status`.
    pub fn status(self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::Retry(_) | Next::Requeued => "pending",
            Next::Failed => "failed",
        }
    }
}

/// The next state of task `id` after attempt `attempt` ended at `now`; `counted` of its
/// attempts count against `max_attempts` (lost and interrupted ones do not).
pub fn next(
    policy: &RetryPolicy,
    id: Uuid,
    (attempt, counted): (u32, u32),
    max_attempts: u32,
    result: &Attempted,
    now: DateTime<Utc>,
) -> Next {
    let attempt_spent = counted;
    match result {
        Attempted::Ok => Next::Done,
        Attempted::Interrupted => Next::Requeued,
        Attempted::Permanent(_) => Next::Failed,
        Attempted::Failed(_) | Attempted::TimedOut if attempt_spent >= max_attempts => Next::Failed,
        Attempted::Failed(_) | Attempted::TimedOut => {
            let wait = chrono::Duration::from_std(policy.backoff(id, attempt))
                .unwrap_or(chrono::Duration::MAX);
            Next::Retry(now.checked_add_signed(wait).unwrap_or(now))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_state_after_each_kind_of_end() {
        let p = RetryPolicy {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            max_attempts: 3,
        };
        let id = Uuid::nil();
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let fail = Attempted::Failed("boom".into());
        let table = [
            (1, Attempted::Ok, "done"),
            (1, fail.clone(), "pending"),
            (2, Attempted::TimedOut, "pending"),
            (3, fail.clone(), "failed"),
            (3, Attempted::TimedOut, "failed"),
            (1, Attempted::Permanent("bad input".into()), "failed"),
            (3, Attempted::Interrupted, "pending"),
        ];
        for (attempt, result, status) in table {
            assert_eq!(
                next(&p, id, (attempt, attempt), 3, &result, now).status(),
                status,
                "attempt {attempt}: {result:?}"
            );
        }
        assert_eq!(
            next(&p, id, (3, 3), 3, &Attempted::Interrupted, now),
            Next::Requeued,
            "a hand-off does not spend the budget"
        );
        assert_eq!(
            next(&p, id, (4, 2), 3, &fail, now).status(),
            "pending",
            "two of four attempts were lost: one failure left in the budget"
        );
        let Next::Retry(at) = next(&p, id, (2, 2), 3, &fail, now) else {
            panic!("a retry")
        };
        let wait = (at - now).to_std().unwrap();
        assert!(
            wait >= Duration::from_secs(2) && wait < Duration::from_secs(4),
            "{wait:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_one() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 10,
        };
        for attempt in 1..=12u32 {
            for n in 0..50u128 {
                let id = Uuid::from_u128(n);
                let exp = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                    .min(Duration::from_secs(1));
                let b = p.backoff(id, attempt);
                assert!(
                    b >= exp / 2 && b < exp,
                    "attempt {attempt}: {b:?} vs {exp:?}"
                );
            }
        }
        let spread: std::collections::BTreeSet<Duration> = (0..50u128)
            .map(|n| p.backoff(Uuid::from_u128(n), 3))
            .collect();
        assert!(spread.len() > 10, "jitter spreads tasks: {spread:?}");
    }
}
