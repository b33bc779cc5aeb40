//! What the engine asks the runtime to do. The runtime carries each out and reports the result
//! back as an [`super::Input`]; it decides nothing itself.

use chrono::{DateTime, Utc};

use super::types::{ExecId, LeaseId, RunKind, Token};

/// One command from [`super::Engine::step`], carried out in order. A step's publication
/// (`PublishOwned` or `PublishAll`, at most one) comes first, so the status never lags a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Claim these shards under `lease`, guarded by the mod revision of my page that lists the
    /// job (a stale view of the assignment can never claim). Answered by `Input::Claimed`.
    Claim {
        lease: LeaseId,
        job: String,
        shards: Vec<u32>,
        assignment_revision: i64,
        generation: u64,
    },
    /// Delete my owner key of the shard (guarded by `token`) and write its cursor. Answered by
    /// `Input::Released`.
    Release {
        lease: LeaseId,
        job: String,
        shard: u32,
        token: Token,
        last_fire: Option<DateTime<Utc>>,
    },
    /// Start an execution of the shard for `fire`. `replay` marks a run the engine cut short
    /// (a lapse) and now starts again. Answered by `Input::ExecDone` when it ends by itself.
    Launch {
        exec: ExecId,
        job: String,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        kind: RunKind,
        replay: bool,
        /// Launched ahead of its instant: the execution waits until then before it starts.
        start_at: Option<std::time::Instant>,
    },
    /// Cancel the execution's token and abort it: the engine no longer counts on it (no
    /// `ExecDone` is expected).
    Abort {
        exec: ExecId,
        job: String,
        shard: u32,
    },
    /// Ask a resident run to stop: cancel its token and let it end (the runtime aborts it after
    /// the job's stop grace). Answered by `Input::ExecDone`.
    Stop {
        exec: ExecId,
        job: String,
        shard: u32,
    },
    /// A one-shot's shard ran its fire to the end: record it in `done/<job>/<shard>`, guarded
    /// by `token` (the leader then assigns the shard to nobody, and the release follows).
    RecordDone {
        job: String,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        outcome: crate::execlog::Outcome,
    },
    /// The shards this agent may fire changed for these jobs: publish them.
    PublishOwned(Vec<String>),
    /// Publish the whole status (a re-list, a new or lost session, shutdown).
    PublishAll,
    /// The lease's proof ran out: executions stopped until etcd answers (status, metric).
    Lapsed,
    /// Watch the deletes of owner keys from revision `from` (`None`: list them first, then
    /// watch from the listing), replacing a watch already running; answered by
    /// `Input::OwnerDeleted` and, for a listing, `Input::Relisted` (`engine/waits.rs`).
    WatchOwners { from: Option<i64> },
    /// Stop watching owner deletes: nothing waits for one.
    UnwatchOwners,
}
