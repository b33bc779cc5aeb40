//! [`RunConfig`]: what the agent uses of a job's config, and nothing else.
//!
//! An agent keeps one per job it can run (10k jobs, 100k). The full `JobConfig` was 216 bytes
//! and two allocations per job (the handler's name and the time zone, `"UTC"` for nearly
//! every job): the schedule's source, its time zone and offset are compiled into the job's
//! `FireSchedule` (which is what "the schedule changed" compares), the planner's fields
//! (strategy, selector) and the description are the leader's and the CLI's business, and the
//! handler's name is shared with the agent's list of handlers.

use std::sync::Arc;
use std::time::Duration;

use shardjob_coordinator::model::JobConfig;

/// What running a job's shards here takes of its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// The handler, when it is not the one named like the job: one of the agent's own names.
    handler: Option<Arc<str>>,
    /// The job's parameter.
    pub job_param: Box<str>,
    /// Parameters by shard, sorted by shard (most jobs have none).
    shard_params: Box<[(u32, Box<str>)]>,
    /// Per attempt.
    pub timeout: Option<Duration>,
    /// Number of shards.
    pub total: u32,
    pub max_retries: u32,
    /// Re-run a fire whose owner died mid-execution.
    pub failover: bool,
    /// Coalesce a fire that arrives while the previous run goes on into one run after it.
    pub misfire: bool,
    pub disabled: bool,
    /// A timed-out attempt is retried too.
    pub retry_timeouts: bool,
}

impl RunConfig {
    /// What the agent keeps of `config`, the config of `job`; the handler's name is taken from
    /// `handlers` (the agent's own, sorted) when it is there.
    pub fn of(job: &str, config: JobConfig, handlers: &[Arc<str>]) -> Self {
        let handler = config.handler.filter(|h| h != job).map(|h| {
            match handlers.binary_search_by(|n| (**n).cmp(h.as_str())) {
                Ok(i) => handlers[i].clone(),
                Err(_) => Arc::from(h),
            }
        });
        Self {
            handler,
            job_param: config.job_param.into_boxed_str(),
            shard_params: config
                .shard_params
                .into_iter()
                .map(|(s, p)| (s, p.into_boxed_str()))
                .collect(),
            timeout: config.timeout.map(|t| t.0),
            total: config.total,
            max_retries: config.max_retries,
            failover: config.failover,
            misfire: config.misfire,
            disabled: config.disabled,
            retry_timeouts: config.retry_timeouts,
        }
    }

    /// The handler that runs `job`.
    pub fn handler_name<'a>(&'a self, job: &'a str) -> &'a str {
        self.handler.as_deref().unwrap_or(job)
    }

    /// `shard`'s parameter (`""` when none is set).
    pub fn shard_param(&self, shard: u32) -> &str {
        self.shard_params
            .binary_search_by_key(&shard, |(s, _)| *s)
            .map_or("", |i| &self.shard_params[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_coordinator::model::{HumanDuration, Schedule};

    fn config() -> JobConfig {
        JobConfig::new(Schedule::Every(HumanDuration(Duration::from_secs(1))), 4)
    }

    #[test]
    fn keeps_what_running_needs() {
        let mut c = config();
        c.handler = Some("tick".into());
        c.job_param = "jp".into();
        c.shard_params.insert(2, "two".into());
        c.shard_params.insert(0, "zero".into());
        c.timeout = Some(HumanDuration(Duration::from_secs(3)));
        c.max_retries = 2;
        c.failover = true;
        c.misfire = false;
        c.retry_timeouts = true;
        let names: Vec<Arc<str>> = vec!["a".into(), "tick".into()];
        let r = RunConfig::of("j", c, &names);
        assert_eq!(r.handler_name("j"), "tick");
        assert!(
            Arc::ptr_eq(r.handler.as_ref().unwrap(), &names[1]),
            "the name is the agent's, not a copy"
        );
        assert_eq!(
            (r.shard_param(0), r.shard_param(1), r.shard_param(2)),
            ("zero", "", "two")
        );
        assert_eq!(&*r.job_param, "jp");
        assert_eq!(r.timeout, Some(Duration::from_secs(3)));
        assert_eq!((r.total, r.max_retries), (4, 2));
        assert!(r.failover && !r.misfire && !r.disabled && r.retry_timeouts);
    }

    #[test]
    fn a_handler_named_like_the_job_or_none_is_the_job() {
        let mut c = config();
        assert_eq!(RunConfig::of("j", c.clone(), &[]).handler_name("j"), "j");
        c.handler = Some("j".into());
        let r = RunConfig::of("j", c.clone(), &[]);
        assert!(r.handler.is_none());
        c.handler = Some("other".into());
        assert_eq!(RunConfig::of("j", c, &[]).handler_name("j"), "other");
    }
}
