//! What the engine is told: every change the agent sees in etcd, the results of its own writes
//! and executions, the lease's proof, and the operator's word (shutdown). Values arrive decoded;
//! a value that does not decode never becomes an input (the runtime logs it with its key).

use std::sync::Arc;
use std::time::Instant;

use shardjob_coordinator::model::{Cursor, JobConfig, PageEntry, Running, Trigger};

use super::types::{ExecId, LeaseId, Token};
use crate::execlog::Outcome;

/// An owner key as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenOwner {
    /// The instance the value names (`""` when the value does not decode: the key still holds
    /// the shard, for an unknown owner). Shared: the runtime hands every key of one owner the
    /// same name.
    pub instance: Arc<str>,
    /// The key's create revision.
    pub token: Token,
    /// The lease the key is bound to (0: none).
    pub lease: i64,
}

/// Why a write failed, as text: the engine only logs it and tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailed(pub String);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How claiming one shard went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// Mine, with this token; the cursor as it was before the claim, and the running marker a
    /// previous owner left (it was cut short mid-execution).
    Won {
        token: Token,
        cursor: Option<Cursor>,
        running: Option<Running>,
    },
    /// The owner key exists (read by the claim's txn): wait for its delete. It may be mine,
    /// from a claim whose answer was lost.
    Held(SeenOwner),
    /// My page that lists the job changed since it was read (for this job or another of the
    /// page): wait for the page's next event.
    Stale,
    /// etcd did not answer: try again later.
    Failed(WriteFailed),
}

/// A whole prefix as listed (at the start of a watch, and after a compaction).
#[derive(Debug, Clone)]
pub enum Listing {
    Jobs(Vec<(String, JobConfig)>),
    /// My part of every job assigned to me, each with its page's mod revision.
    Assignments(Vec<(String, PageEntry, i64)>),
    /// Owner keys, listed at `revision`.
    Owners {
        revision: i64,
        owners: Vec<(String, u32, SeenOwner)>,
    },
    /// Triggers present at (re)start are history: their ids are remembered, nothing runs.
    Triggers(Vec<(String, Trigger)>),
}

/// One input to [`super::Engine::step`].
#[derive(Debug, Clone)]
pub enum Input {
    JobPut {
        job: String,
        config: Box<JobConfig>,
    },
    JobDeleted {
        job: String,
    },
    /// My part of a job's assignment (from one of my `assigned/` pages), and the page's mod
    /// revision: what a claim is guarded by.
    AssignmentPut {
        job: String,
        entry: PageEntry,
        revision: i64,
    },
    /// The job is on none of my pages any more (nothing of it is assigned to me).
    AssignmentDeleted {
        job: String,
    },
    /// The owner key was deleted at `revision`.
    OwnerDeleted {
        job: String,
        shard: u32,
        revision: i64,
    },
    TriggerPut {
        job: String,
        trigger: Trigger,
    },
    Relisted(Listing),
    /// Results of a claim made under `lease` with the assignment read at `revision`.
    Claimed {
        job: String,
        lease: LeaseId,
        revision: i64,
        /// The etcd revision the refusals among `results` read their keys at (the earliest,
        /// when they came from several txns; 0 when none was refused by a key): a key's
        /// delete comes after it.
        read_at: i64,
        results: Vec<(u32, ClaimResult)>,
    },
    /// A release made under `lease` ended: `Ok` when the key is gone (released, or its lease
    /// expired first), `Err` when etcd did not answer (the key may still be held).
    Released {
        job: String,
        shard: u32,
        lease: LeaseId,
        token: Token,
        result: Result<(), WriteFailed>,
    },
    /// An execution ended by itself.
    ExecDone {
        /// Shared with the job's other executions (`runtime/job_runs.rs`).
        job: std::sync::Arc<str>,
        shard: u32,
        exec: ExecId,
        outcome: Outcome,
    },
    /// A keep-alive was acknowledged: the lease is proven until `valid_until`.
    Proof {
        valid_until: Instant,
    },
    /// The liveness stream's guard moved: nothing may run at or past `until` (`None`: only
    /// the lease binds). See `shardjob_coordinator::liveness`.
    Guard {
        until: Option<Instant>,
    },
    /// A new lease, registered and proven until `valid_until`.
    SessionOpened {
        lease: LeaseId,
        valid_until: Instant,
    },
    /// etcd says the lease is gone: self-fence.
    SessionLost,
    /// A deadline from [`super::Engine::next_wake`] passed: fires due, the proof's end, the
    /// re-check of decisions that could not be carried out.
    Tick,
    /// Graceful shutdown begins: start nothing more, claim nothing more, hand shards over.
    ShutdownBegun,
    /// Graceful shutdown ends: cut short what still runs, release everything still held.
    Finish,
}
