//! The small value types every part of the agent speaks in: who holds what, under which lease,
//! with which fencing token, and why a run starts.

use std::fmt;
use std::num::NonZeroI64;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// An etcd lease id. etcd never grants lease 0, and 0 means "no lease" in its API, so the type
/// cannot hold it: "no session" is `Option<LeaseId>::None`, never a magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(NonZeroI64);

impl LeaseId {
    /// The lease `raw`, or `None` for 0 (etcd's "no lease").
    pub fn new(raw: i64) -> Option<Self> {
        NonZeroI64::new(raw).map(Self)
    }

    /// The id as etcd's API takes it.
    pub fn get(self) -> i64 {
        self.0.get()
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0.get())
    }
}

/// A fencing token: the create revision of a shard's owner key. It rises with every change of
/// owner, so a store that keeps the highest token it saw per shard rejects a stale writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub i64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Names one execution, so a late report of an execution the engine already gave up on (it
/// was aborted, the shard moved on) cannot be taken for a later one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecId(pub u64);

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// A scheduled fire, on time.
    Scheduled,
    /// A scheduled fire that came while the shard's previous run went on, run right after it.
    Misfire,
    /// The most recent fire a hand-off missed, run once by the new owner.
    CatchUp,
    /// A fire whose previous owner was cut short mid-execution (it left a running marker).
    Failover,
    /// Asked for through `triggers/<job>`.
    Trigger,
    /// A resident job's run: it lasts as long as the shard is held.
    Resident,
}

impl RunKind {
    /// True for the kinds that stand for a fire of the job's schedule (as opposed to a trigger,
    /// whose fire time is when it was asked for, or a resident run, whose is when it started).
    pub fn is_scheduled(self) -> bool {
        !matches!(self, RunKind::Trigger | RunKind::Resident)
    }
}

/// The present, as the runtime read it: both clocks at once. The monotonic one measures the
/// lease's proof; the wall clock names fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}
