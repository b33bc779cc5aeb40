//! [`PlannedJob`]: what the leader keeps of a job's config — only what planning reads. The
//! agents keep the whole config for the jobs they run; the leader plans every job of the
//! namespace, and a full copy of each (schedule, time zone, parameters, description) was most
//! of its memory at 10k jobs.

use shardjob_sharding::{Selector, StrategyKind};

use crate::model::{JobConfig, Schedule};

/// A job as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    /// The handler an eligible instance registered; `None`: the one named like the job.
    handler: Option<Box<str>>,
    /// Number of shards.
    pub total: u32,
    pub strategy: StrategyKind,
    /// Required instance labels.
    pub selector: Selector,
    /// A one-shot (`at`) job: its done shards are nobody's, and it retires when all are done.
    pub one_shot: bool,
}

impl PlannedJob {
    /// What planning needs of `config`.
    pub fn of(config: &JobConfig) -> Self {
        Self {
            handler: config.handler.as_deref().map(Box::from),
            total: config.total,
            strategy: config.strategy,
            selector: config.selector.clone(),
            one_shot: matches!(config.schedule, Schedule::At(_)),
        }
    }

    /// The handler an instance must have registered to run `job`.
    pub fn handler_name<'a>(&'a self, job: &'a str) -> &'a str {
        self.handler.as_deref().unwrap_or(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HumanDuration;

    #[test]
    fn keeps_what_planning_reads() {
        let mut c = JobConfig::new(
            Schedule::Every(HumanDuration(std::time::Duration::from_secs(5))),
            8,
        );
        c.description = "not planned".into();
        let p = PlannedJob::of(&c);
        assert_eq!(
            (p.total, p.one_shot, p.handler_name("orders")),
            (8, false, "orders")
        );
        c.handler = Some("h".into());
        c.schedule = Schedule::At(chrono::DateTime::UNIX_EPOCH);
        let p = PlannedJob::of(&c);
        assert_eq!((p.one_shot, p.handler_name("orders")), (true, "h"));
        let mut d = c.clone();
        d.description = "another text".into();
        assert_eq!(
            PlannedJob::of(&d),
            p,
            "a change planning does not read is no change"
        );
    }
}
