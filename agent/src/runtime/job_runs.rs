//! [`JobRun`]: what every execution of one job shares, made once per job (and again when its
//! config changes), not once per fire.
//!
//! An execution needs its job's handler, limits, timeout, retries, parameters, owner-key
//! prefix, metrics handles, log and this agent's id. Each fire used to copy all of it into its
//! own request (~300 bytes inline, several strings, a vector of permits) when it was
//! launched, and a burst launched ahead of its instant (10k cron jobs `* * * * * *`) held ten
//! thousand such copies until then. Now a launch finds its job's `Arc<JobRun>` (one lookup),
//! an execution waiting for its instant holds that and what is its own (shard, token, fire,
//! token to cancel it), and its [`ShardContext`] is made when it starts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use shardjob_coordinator::keys::Keys;

use super::exec_metrics::JobMetrics;
use super::txn::Writes;
use crate::engine::run_config::RunConfig;
use crate::engine::{RunKind, Token};
use crate::execlog::ExecLog;
use crate::hash::FastMap;
use crate::job::{DynJob, ShardContext};

/// What every execution of this agent shares, whatever its job.
pub(crate) struct Common {
    /// This agent's id.
    pub instance: Arc<str>,
    pub log: Option<Arc<ExecLog>>,
    /// The namespace's keys (a run's context names its owner key).
    pub keys: Keys,
}

/// What the executions of one job share; see the module docs. (One per job that launched
/// here, kept as long as its config is the same one: 112 bytes with the metrics handles
/// inline, and the name.)
pub(crate) struct JobRun {
    /// The job's name.
    pub name: Arc<str>,
    /// The engine's config of the job: a launch under another one makes a new `JobRun`.
    pub config: Arc<RunConfig>,
    pub handler: Arc<dyn DynJob>,
    /// The concurrency limits a (non-resident) run takes a permit of: the agent's, the job's.
    pub permits: Box<[Arc<Semaphore>]>,
    pub common: Arc<Common>,
    /// Where an execution's end is counted and timed.
    pub metrics: JobMetrics,
    /// Set for failover jobs: where the running marker is written (an etcd client is ~4 KB:
    /// shared).
    pub marker: Option<Arc<Writes>>,
}

impl JobRun {
    /// The context of a run of `shard` at `fire`, its first attempt's.
    pub fn context(
        &self,
        shard: u32,
        token: Token,
        fire: DateTime<Utc>,
        kind: RunKind,
        cancel: CancellationToken,
    ) -> ShardContext {
        ShardContext {
            job: self.name.to_string(),
            shard,
            total: self.config.total,
            shard_param: self.config.shard_param(shard).to_owned(),
            job_param: self.config.job_param.to_string(),
            fire_time: fire,
            token: token.0,
            attempt: 1,
            is_failover: kind == RunKind::Failover,
            is_misfire: matches!(kind, RunKind::Misfire | RunKind::CatchUp),
            cancel,
            instance: self.common.instance.to_string(),
            owner_key: self.common.keys.owner(&self.name, shard),
        }
    }

    /// How long an attempt may take: the job's `timeout`, none for a resident run (its
    /// timeout is how long a stop may take).
    pub fn timeout(&self, resident: bool) -> Option<Duration> {
        self.config.timeout.filter(|_| !resident)
    }

    /// How long a cancelled resident run may take to return; `None` for other runs (dropped
    /// at once).
    pub fn stop_grace(&self, resident: bool) -> Option<Duration> {
        resident.then(|| {
            self.config
                .timeout
                .unwrap_or(super::carry::RESIDENT_STOP_GRACE)
        })
    }

    /// The limits a run takes a permit of: none for a resident run (it would keep one for
    /// good).
    pub fn permits(&self, resident: bool) -> &[Arc<Semaphore>] {
        if resident { &[] } else { &self.permits }
    }
}

/// The [`JobRun`] of every job that launched here.
pub(super) struct JobRuns {
    by_job: FastMap<Arc<str>, Arc<JobRun>>,
    /// `by_job` is pruned of deleted jobs when it grows past this.
    prune_at: usize,
}

/// The least `prune_at` (a handful of jobs never prune).
const PRUNE_MIN: usize = 64;

impl Default for JobRuns {
    fn default() -> Self {
        Self {
            by_job: FastMap::default(),
            prune_at: PRUNE_MIN,
        }
    }
}

impl JobRuns {
    /// The `JobRun` of `job` under `config`: the one kept when it was made with this config
    /// (the same one, not an equal one: the engine makes a new one when it changes), else the one `make` builds from the name (`None`: the job cannot run here, and
    /// nothing is kept). When the table has doubled since it was last pruned, the jobs for
    /// which `exists` says no are dropped from it first (a namespace whose jobs come and go
    /// does not keep every job it ever ran).
    pub fn get(
        &mut self,
        job: &str,
        config: &Arc<RunConfig>,
        exists: impl Fn(&str) -> bool,
        make: impl FnOnce(Arc<str>) -> Option<JobRun>,
    ) -> Option<Arc<JobRun>> {
        if let Some(run) = self
            .by_job
            .get(job)
            .filter(|r| Arc::ptr_eq(&r.config, config))
        {
            return Some(run.clone());
        }
        let name = match self.by_job.get_key_value(job) {
            Some((name, _)) => name.clone(),
            None => {
                if self.by_job.len() >= self.prune_at {
                    self.by_job.retain(|name, _| exists(name));
                    self.prune_at = (self.by_job.len() * 2).max(PRUNE_MIN);
                }
                Arc::from(job)
            }
        };
        let Some(run) = make(name.clone()) else {
            self.by_job.remove(job);
            return None;
        };
        let run = Arc::new(run);
        self.by_job.insert(name, run.clone());
        Some(run)
    }

    /// Jobs kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_job.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shardjob_coordinator::model::{HumanDuration, JobConfig, Schedule};

    /// The config of a one-shard job every second, with `edit` applied.
    pub(crate) fn config(edit: impl FnOnce(&mut JobConfig)) -> Arc<RunConfig> {
        let mut c = JobConfig::new(Schedule::Every(HumanDuration(Duration::from_secs(1))), 1);
        edit(&mut c);
        Arc::new(RunConfig::of("j", c, &[]))
    }

    /// A `JobRun` of `name` under `config` that runs `handler`, with no limits, marker or log.
    pub(crate) fn job_run(
        name: impl Into<Arc<str>>,
        config: Arc<RunConfig>,
        handler: Arc<dyn DynJob>,
    ) -> JobRun {
        let name = name.into();
        JobRun {
            metrics: super::super::exec_metrics::ExecMetrics::new(true).for_job(&name),
            name,
            config,
            handler,
            permits: Box::default(),
            common: Arc::new(Common {
                instance: Arc::from("me"),
                log: None,
                keys: keys(),
            }),
            marker: None,
        }
    }

    fn keys() -> Keys {
        Keys::new("ns").expect("a valid namespace")
    }

    fn noop() -> Arc<dyn DynJob> {
        Arc::new(crate::job_fn(|_| async { Ok(()) }))
    }

    #[test]
    fn a_context_carries_the_job_shard_and_fire() {
        let run = job_run(
            "j",
            config(|c| {
                c.total = 4;
                c.job_param = "jp".into();
                c.shard_params.insert(2, "two".into());
            }),
            noop(),
        );
        let fire = Utc::now();
        let ctx = run.context(
            2,
            Token(9),
            fire,
            RunKind::Misfire,
            CancellationToken::new(),
        );
        assert_eq!(
            (
                &*ctx.job,
                ctx.shard,
                ctx.total,
                &*ctx.shard_param,
                &*ctx.job_param
            ),
            ("j", 2, 4, "two", "jp")
        );
        assert_eq!((ctx.fire_time, ctx.token, ctx.attempt), (fire, 9, 1));
        assert!(ctx.is_misfire && !ctx.is_failover);
        assert_eq!(ctx.instance, "me");
        assert_eq!(ctx.owner_key, keys().owner("j", 2));
        let ctx = run.context(
            1,
            Token(9),
            fire,
            RunKind::Failover,
            CancellationToken::new(),
        );
        assert!(ctx.is_failover && !ctx.is_misfire);
        assert_eq!(ctx.shard_param, "", "no parameter for shard 1");
    }

    #[test]
    fn a_resident_run_has_no_deadline_and_no_permit_but_its_timeout_is_its_grace() {
        let mut run = job_run("j", config(|_| {}), noop());
        run.permits = vec![Arc::new(Semaphore::new(1))].into_boxed_slice();
        assert_eq!(
            (run.timeout(true), run.stop_grace(true)),
            (None, Some(super::super::carry::RESIDENT_STOP_GRACE))
        );
        assert_eq!((run.timeout(false), run.stop_grace(false)), (None, None));
        assert_eq!((run.permits(true).len(), run.permits(false).len()), (0, 1));
        let secs = |s| Some(Duration::from_secs(s));
        let run = job_run(
            "j",
            config(|c| c.timeout = Some(HumanDuration(Duration::from_secs(3)))),
            noop(),
        );
        assert_eq!((run.timeout(true), run.stop_grace(true)), (None, secs(3)));
        assert_eq!((run.timeout(false), run.stop_grace(false)), (secs(3), None));
    }

    #[test]
    fn a_job_run_is_at_most_112_bytes() {
        // One per job that launched here (10k, 100k): its metrics handles inline, not behind
        // an `Arc` of their own (an allocation per job).
        let size = std::mem::size_of::<JobRun>();
        assert!(size <= 112, "a JobRun is {size} bytes");
    }

    #[test]
    fn made_once_per_config_and_again_when_it_changes() {
        let mut runs = JobRuns::default();
        let mut made = 0;
        let mut get = |runs: &mut JobRuns, c: &Arc<RunConfig>| {
            runs.get(
                "j",
                c,
                |_| true,
                |name| {
                    made += 1;
                    Some(job_run(name, c.clone(), noop()))
                },
            )
        };
        let one = config(|_| {});
        let first = get(&mut runs, &one).expect("made");
        let again = get(&mut runs, &one).expect("kept");
        assert!(Arc::ptr_eq(&first, &again), "the same config: the same run");
        // Another config, even an equal one, is a change (the engine makes one per change).
        let equal = Arc::new((*one).clone());
        let remade = get(&mut runs, &equal).expect("made anew");
        assert!(!Arc::ptr_eq(&first, &remade));
        let two = config(|c| c.max_retries = 3);
        let changed = get(&mut runs, &two).expect("made anew");
        assert_eq!(changed.config.max_retries, 3);
        assert!(Arc::ptr_eq(&first.name, &changed.name), "the name is kept");
        assert_eq!(made, 3);
        assert_eq!(runs.len(), 1);
        // A job that cannot run here (its handler is gone) keeps nothing.
        assert!(runs.get("j", &one, |_| true, |_| None).is_none());
        assert_eq!(runs.len(), 0);
    }

    #[test]
    fn pruned_of_deleted_jobs_as_it_grows() {
        let mut runs = JobRuns::default();
        let c = config(|_| {});
        let make = |name: Arc<str>| Some(job_run(name, c.clone(), noop()));
        let first = runs.get("j0", &c, |_| true, make).expect("made");
        for i in 1..PRUNE_MIN {
            runs.get(&format!("j{i}"), &c, |_| true, make);
        }
        assert_eq!(runs.len(), PRUNE_MIN, "not pruned below the threshold");
        // Only even jobs still exist: the next new job prunes the odd ones first.
        let even = |name: &str| name[1..].parse::<usize>().is_ok_and(|i| i % 2 == 0);
        runs.get("new", &c, even, make);
        assert_eq!(runs.len(), PRUNE_MIN / 2 + 1);
        assert!(runs.by_job.contains_key("new") && !runs.by_job.contains_key("j1"));
        let kept = runs.get("j0", &c, even, make).expect("kept");
        assert!(Arc::ptr_eq(&first, &kept), "kept ones are not made again");
    }
}
