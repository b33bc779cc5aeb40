//! A small driver for table rows: one agent "me" (lease 7), jobs firing every second from
//! 10:00:00, and helpers to feed inputs and read the commands back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shardjob_coordinator::model::{
    AssignmentRecord, Cursor, HumanDuration, JobConfig, PageEntry, Running, Schedule, Trigger,
};
use shardjob_sharding::{Assignment, InstanceId};

use crate::engine::{
    ClaimResult, Command, Engine, EngineConfig, ExecId, Input, LeaseId, Now, RunKind, SeenOwner,
    Token,
};
use crate::execlog::Outcome;

pub const ME: &str = "me";
pub const TTL: Duration = Duration::from_secs(10);
/// The revision [`Harness::answer`]'s refusals read their keys at.
pub const READ_AT: i64 = 45;

pub fn lease() -> LeaseId {
    LeaseId::new(7).unwrap()
}

/// 10:00:00 plus `secs` on the wall clock.
pub fn wall(secs: f64) -> DateTime<Utc> {
    let base: DateTime<Utc> = "2026-11-21T10:00:00Z".parse().unwrap();
    base + chrono::Duration::microseconds((secs * 1e6).round() as i64)
}

/// A job of `total` shards every second.
pub fn every_second(total: u32) -> JobConfig {
    every(1, total)
}

/// A job of `total` shards every `secs` seconds.
pub fn every(secs: u64, total: u32) -> JobConfig {
    JobConfig::new(
        Schedule::Every(HumanDuration(Duration::from_secs(secs))),
        total,
    )
}

pub fn failover(mut c: JobConfig) -> JobConfig {
    c.failover = true;
    c
}

/// An assignment of shard i to `owners[i]` ("-" for none).
pub fn assignment(owners: &[&str]) -> AssignmentRecord {
    let a = Assignment::from_owners(
        owners
            .iter()
            .map(|o| (*o != "-").then(|| InstanceId::new(*o).unwrap()))
            .collect(),
    );
    AssignmentRecord::from_assignment(3, &a)
}

pub fn released_cursor(last_fire: f64) -> Option<Cursor> {
    Some(Cursor {
        last_fire: Some(wall(last_fire)),
        released: true,
    })
}

pub fn marker(fire: f64, token: i64) -> Option<Running> {
    Some(Running {
        instance: InstanceId::new("dead").unwrap(),
        fire_time: wall(fire),
        token,
    })
}

/// A launch as rows compare it: shard, fire (seconds after 10:00:00), kind.
pub type L = (u32, f64, RunKind);

pub struct Harness {
    pub engine: Engine,
    base: Instant,
    /// Seconds since 10:00:00 on both clocks.
    pub t: f64,
    /// The monotonic clock, exact (a deadline is hit to the nanosecond, not through `t`).
    mono_now: Option<Instant>,
}

impl Harness {
    /// An engine with the handler `h` and no session yet, at 10:00:00.5.
    pub fn new() -> Self {
        Self::with_lead(Duration::ZERO)
    }

    /// [`Harness::new`], launching scheduled fires up to `lead` ahead of their instant.
    pub fn with_lead(lead: Duration) -> Self {
        let engine = Engine::new(EngineConfig {
            id: ME.into(),
            handlers: BTreeSet::from(["h".to_owned()]),
            margin: TTL / 10,
            job_labels: true,
            lead,
            lead_crowd: 1,
        });
        Self {
            engine,
            base: Instant::now(),
            t: 0.5,
            mono_now: None,
        }
    }

    pub fn now(&self) -> Now {
        Now {
            mono: self.mono_now.unwrap_or_else(|| self.mono(self.t)),
            wall: wall(self.t),
        }
    }

    /// Sets both clocks to `secs`.
    pub fn set(&mut self, secs: f64) {
        self.t = secs;
        self.mono_now = None;
    }

    /// Ticks once at the next deadline if it is at or before `secs`.
    pub fn tick_until(&mut self, secs: f64) -> Option<Vec<Command>> {
        let w = self.engine.next_wake().filter(|w| *w <= self.mono(secs))?;
        let w = w.max(self.now().mono);
        self.t = (w - self.base).as_secs_f64();
        self.mono_now = Some(w);
        Some(self.step(Input::Tick))
    }

    pub fn mono(&self, secs: f64) -> Instant {
        self.base + Duration::from_secs_f64(secs)
    }

    pub fn step(&mut self, input: Input) -> Vec<Command> {
        let now = self.now();
        self.engine.step(input, now)
    }

    /// Moves both clocks to `secs`, ticking at every deadline on the way (as the runtime's
    /// timer would), and returns every command.
    pub fn at(&mut self, secs: f64) -> Vec<Command> {
        let mut out = Vec::new();
        while let Some(commands) = self.tick_until(secs) {
            out.extend(commands);
        }
        self.set(secs);
        out
    }

    /// A session (lease 7) proven for a whole TTL from now.
    pub fn open(&mut self) -> Vec<Command> {
        self.open_with(lease())
    }

    pub fn open_with(&mut self, lease: LeaseId) -> Vec<Command> {
        let valid_until = self.mono(self.t) + TTL;
        self.step(Input::SessionOpened { lease, valid_until })
    }

    pub fn prove_until(&mut self, secs: f64) -> Vec<Command> {
        let valid_until = self.mono(secs);
        self.step(Input::Proof { valid_until })
    }

    /// The liveness stream guards until `secs` (`None`: only the lease binds).
    pub fn guard_until(&mut self, secs: Option<f64>) -> Vec<Command> {
        let until = secs.map(|s| self.mono(s));
        self.step(Input::Guard { until })
    }

    pub fn job(&mut self, job: &str, mut config: JobConfig) -> Vec<Command> {
        config.handler = Some("h".into());
        self.step(Input::JobPut {
            job: job.into(),
            config: Box::new(config),
        })
    }

    /// The leader assigns `job` to `owners` (one per shard, `-` for nobody): what my page says
    /// of it, read at `revision` (nothing of it, when no shard is mine).
    pub fn assign(&mut self, job: &str, owners: &[&str], revision: i64) -> Vec<Command> {
        let me = InstanceId::new(ME).unwrap();
        self.step(match PageEntry::of(&assignment(owners), &me) {
            Some(entry) => Input::AssignmentPut {
                job: job.into(),
                entry,
                revision,
            },
            None => Input::AssignmentDeleted { job: job.into() },
        })
    }

    /// The answer to a claim of `job` under the assignment read at `revision`.
    pub fn answer(
        &mut self,
        job: &str,
        revision: i64,
        results: Vec<(u32, ClaimResult)>,
    ) -> Vec<Command> {
        self.step(Input::Claimed {
            job: job.into(),
            lease: lease(),
            revision,
            read_at: READ_AT,
            results,
        })
    }

    /// A claim of `shard` refused: the key `instance` made at `token` under `lease` holds it.
    pub fn held(
        &mut self,
        job: &str,
        shard: u32,
        instance: &str,
        token: i64,
        lease: i64,
    ) -> Vec<Command> {
        let holder = SeenOwner {
            instance: instance.into(),
            token: Token(token),
            lease,
        };
        self.answer(job, 40, vec![(shard, ClaimResult::Held(holder))])
    }

    pub fn owner_gone(&mut self, job: &str, shard: u32, revision: i64) -> Vec<Command> {
        self.step(Input::OwnerDeleted {
            job: job.into(),
            shard,
            revision,
        })
    }

    pub fn won(
        &mut self,
        job: &str,
        shard: u32,
        token: i64,
        cursor: Option<Cursor>,
        running: Option<Running>,
    ) -> Vec<Command> {
        let won = ClaimResult::Won {
            token: Token(token),
            cursor,
            running,
        };
        self.answer(job, 40, vec![(shard, won)])
    }

    pub fn done(&mut self, job: &str, shard: u32, exec: ExecId) -> Vec<Command> {
        self.step(Input::ExecDone {
            job: job.into(),
            shard,
            exec,
            outcome: Outcome::Ok,
        })
    }

    pub fn trigger(&mut self, job: &str, id: &str, at: f64) -> Vec<Command> {
        self.step(Input::TriggerPut {
            job: job.into(),
            trigger: Trigger {
                id: id.into(),
                requested_at: wall(at),
            },
        })
    }

    /// A job `j` of `total` shards all assigned to me, with a session, shard 0..total claimed
    /// with token 100 + shard and no cursor: the usual start of a row.
    pub fn holding(total: u32, config: JobConfig) -> Self {
        Self::holding_with_lead(total, config, Duration::ZERO)
    }

    /// [`Harness::holding`] with [`Harness::with_lead`].
    pub fn holding_with_lead(total: u32, config: JobConfig, lead: Duration) -> Self {
        let mut h = Self::with_lead(lead);
        h.open();
        h.job("j", config);
        let owners = vec![ME; total as usize];
        h.assign("j", &owners, 40);
        for s in 0..total {
            h.won("j", s, 100 + i64::from(s), None, None);
        }
        h
    }
}

/// The launches among `commands`.
pub fn launches(commands: &[Command]) -> Vec<L> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch {
                shard, fire, kind, ..
            } => Some((*shard, secs_of(*fire), *kind)),
            _ => None,
        })
        .collect()
}

/// The exec id of the launch of `shard` among `commands`.
pub fn exec_of(commands: &[Command], shard: u32) -> ExecId {
    commands
        .iter()
        .find_map(|c| match c {
            Command::Launch { exec, shard: s, .. } if *s == shard => Some(*exec),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no launch of shard {shard} in {commands:?}"))
}

pub fn aborts(commands: &[Command]) -> Vec<u32> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Abort { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect()
}

pub fn claims(commands: &[Command]) -> Vec<(Vec<u32>, i64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Claim {
                shards,
                assignment_revision,
                ..
            } => Some((shards.clone(), *assignment_revision)),
            _ => None,
        })
        .collect()
}

/// Releases: shard, token, last_fire in seconds after 10:00:00.
pub fn releases(commands: &[Command]) -> Vec<(u32, i64, Option<f64>)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Release {
                shard,
                token,
                last_fire,
                ..
            } => Some((*shard, token.0, last_fire.map(secs_of))),
            _ => None,
        })
        .collect()
}

pub fn secs_of(t: DateTime<Utc>) -> f64 {
    (t - wall(0.0)).num_microseconds().unwrap_or_default() as f64 / 1e6
}

/// The owner-watch commands among `commands`: `Some(from)` to watch, `None` to stop.
pub fn owner_watch(commands: &[Command]) -> Vec<Option<Option<i64>>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::WatchOwners { from } => Some(Some(*from)),
            Command::UnwatchOwners => Some(None),
            _ => None,
        })
        .collect()
}
