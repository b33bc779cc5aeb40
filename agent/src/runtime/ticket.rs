//! One execution's identity, shared by the execution and the loop's entry for it: which fire
//! of which shard it is, and whether its log line is written yet (one line per execution:
//! its own end, or the agent's abort, whichever comes first).
//!
//! One allocation per fire, and the loop's `execs` map holds a pointer to it instead of the
//! fields themselves: a burst of 10k fires keeps 10k entries in flight, and the map's table
//! (which never shrinks, and doubles when deleted slots pile up) was ~3.2 MB of 96-byte
//! entries at 10k aligned jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use crate::engine::Token;

/// An execution's identity and its logged flag.
#[derive(Debug)]
pub(crate) struct Ticket {
    logged: AtomicBool,
    pub job: Arc<str>,
    pub shard: u32,
    pub token: Token,
    pub fire: DateTime<Utc>,
    /// When it started, or starts (one launched ahead of its instant starts at the instant).
    pub launched: DateTime<Utc>,
}

impl Ticket {
    /// The ticket of `job`'s `shard`, run for `fire` under `token`, not logged yet.
    pub(crate) fn new(
        job: Arc<str>,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        launched: DateTime<Utc>,
    ) -> Self {
        Self {
            logged: AtomicBool::new(false),
            job,
            shard,
            token,
            fire,
            launched,
        }
    }

    /// True for the first caller only: the one that writes the execution's log line.
    pub(crate) fn log_first(&self) -> bool {
        !self.logged.swap(true, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_to_ask_logs() {
        let t = Ticket::new("j".into(), 0, Token(1), Utc::now(), Utc::now());
        assert!(t.log_first());
        assert!(!t.log_first());
        assert!(!t.log_first());
    }
}
