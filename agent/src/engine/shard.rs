//! One shard's state on this agent, as one state machine: what it holds, what runs, what is
//! owed. Impossible combinations (a run on a shard not held, a release with a run) cannot be
//! written.
//!
//! ```text
//!            claim sent          Won                 no longer assigned, idle
//!   Idle ─────────────▶ Claiming ────▶ Held{run?,owed?} ───────────────▶ Releasing
//!    ▲                     │ Held/Stale/     │ key gone / self-fence        │ Ok
//!    │                     │ Failed          │                              │
//!    └─────────────────────┴─────────────────┴──────────────────────────────┘
//!                                   (Releasing ─Err─▶ Held again)
//! ```

use chrono::{DateTime, Utc};

use super::input::SeenOwner;
use super::types::{ExecId, LeaseId, RunKind, Token};
use crate::schedule::FireSchedule;

/// An execution in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub exec: ExecId,
    pub fire: DateTime<Utc>,
    pub kind: RunKind,
    /// A resident run asked to stop (the shard is to be released): it ends by itself, or is
    /// aborted by the runtime after the job's stop grace.
    pub stopping: bool,
}

/// A run this owner owes: it could not start yet (the previous run goes on, or the lease is
/// not proven). One per shard: the latest fire wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    pub fire: DateTime<Utc>,
    pub kind: RunKind,
    /// A run the engine cut short (a lapse), to start again.
    pub replay: bool,
}

/// What an owner knows of a shard it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub token: Token,
    pub run: Option<Run>,
    pub owed: Option<Owed>,
    /// The latest fire of the schedule this owner launched or owes: a scheduled fire at or
    /// before it is already taken care of and never starts again (the heap and a catch-up can
    /// both arrive at one fire).
    pub covered: Option<DateTime<Utc>>,
    /// The latest fire that ran to its end here.
    pub last_run: Option<DateTime<Utc>>,
    /// The previous owner's `last_fire`, when it released cleanly.
    pub floor: Option<DateTime<Utc>>,
    /// When this agent claimed the shard (unknown for a key adopted from a watch).
    pub claimed_at: Option<DateTime<Utc>>,
}

impl Held {
    /// A shard just claimed at `at` with `token`, inheriting `floor`: the previous owner ran
    /// every fire up to it, so those count as covered.
    pub fn claimed(token: Token, at: DateTime<Utc>, floor: Option<DateTime<Utc>>) -> Self {
        Self {
            token,
            run: None,
            owed: None,
            covered: floor,
            last_run: None,
            floor,
            claimed_at: Some(at),
        }
    }

    /// A key of mine found in a watch without a claim result (the claim's answer was lost).
    pub fn adopted(token: Token) -> Self {
        Self {
            claimed_at: None,
            ..Self::claimed(token, DateTime::<Utc>::MIN_UTC, None)
        }
    }

    /// Raises `covered` to `fire`.
    pub fn cover(&mut self, fire: DateTime<Utc>) {
        self.covered = self.covered.max(Some(fire));
    }

    /// The `last_fire` to record when releasing: every fire up to it is accounted for. This
    /// owner ran (or coalesced) every fire after its claim; the fire just before its claim it
    /// caught up, or it lies in a documented gap (a crash before). So the value is the latest
    /// of: its last run, the cursor it inherited, and the last fire at or before its claim.
    /// (Recording only runs would leave `null` after a short tenure without a fire, and the
    /// next owner could then not catch up a fire missed during the following hand-off.)
    pub fn cursor_value(&self, schedule: Option<&FireSchedule>) -> Option<DateTime<Utc>> {
        let at_claim = self
            .claimed_at
            .zip(schedule)
            .and_then(|(t, s)| s.latest_at_or_before(t));
        [self.last_run, self.floor, at_claim]
            .into_iter()
            .flatten()
            .max()
    }
}

/// This agent's part in a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Local {
    #[default]
    Idle,
    Claiming,
    /// Boxed: most shards an agent sees are someone else's, and those need only the key.
    Held(Box<Held>),
    /// A release is in flight; what was held comes back if it fails.
    Releasing(Box<Held>),
}

impl Local {
    /// What is held, in `Held` or `Releasing`.
    pub fn held(&self) -> Option<&Held> {
        match self {
            Local::Held(h) | Local::Releasing(h) => Some(h),
            _ => None,
        }
    }
}

/// A shard as this agent sees it: the owner key in etcd, and its own part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    pub seen: Option<SeenOwner>,
    pub local: Local,
}

impl Shard {
    /// True when the owner key as seen is mine: my id and my current lease. After a self-fence
    /// the keys of the old lease are someone else's until they vanish with it.
    pub fn seen_mine(&self, me: &str, lease: Option<LeaseId>) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|o| &*o.instance == me && lease.is_some_and(|l| l.get() == o.lease))
    }

    /// Nothing known and nothing held: the entry can go.
    pub fn is_empty(&self) -> bool {
        self.seen.is_none() && self.local == Local::Idle
    }

    /// The running execution, if any.
    pub fn run(&self) -> Option<Run> {
        match &self.local {
            Local::Held(h) => h.run,
            _ => None,
        }
    }

    /// Checks the state machine's invariants (debug builds, after every step).
    pub fn check(&self, me: &str, lease: Option<LeaseId>) -> Result<(), String> {
        match &self.local {
            Local::Idle => Ok(()),
            _ if lease.is_none() => Err(format!("{:?} without a session", self.local)),
            Local::Claiming => Ok(()),
            Local::Held(h) | Local::Releasing(h) => {
                if !self.seen_mine(me, lease)
                    || self.seen.as_ref().map(|o| o.token) != Some(h.token)
                {
                    return Err(format!(
                        "held with {} but the key seen is {:?}",
                        h.token, self.seen
                    ));
                }
                if matches!(self.local, Local::Releasing(_))
                    && (h.run.is_some() || h.owed.is_some())
                {
                    return Err("releasing with a run or a run owed".into());
                }
                Ok(())
            }
        }
    }
}
