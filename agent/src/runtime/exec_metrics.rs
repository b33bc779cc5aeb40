//! [`ExecMetrics`]: the handles an execution's end is recorded with, registered once per job
//! (once for all jobs without the `job` label) at its first launch, not at every end.
//!
//! A `metrics::counter!` with labels builds its key (a label vector, the job's name copied in,
//! a hash) and asks the recorder for the series at every call: at an aligned burst of 10k
//! fires that was done 20k times at the instant, by the executions themselves. A handle asks
//! once. Only the common end is pre-registered (`outcome="ok"` and the duration): the rarer
//! outcomes still register at their end, so no zero-valued series appear for them.
//!
//! Handles are taken from the recorder installed when a job first launches here; a recorder
//! installed after that does not see that job's execution metrics (install it before starting
//! the agent, as the `prometheus` example does).

use std::sync::Arc;

use metrics::{Counter, Histogram};

use crate::execlog::Outcome;
use crate::hash::FastMap;

/// The handles of one job (or of every job, without the `job` label).
pub(crate) struct JobMetrics {
    ok: Counter,
    seconds: Histogram,
    /// Registered with the `job` label (the rarer outcomes get it too).
    labelled: bool,
}

impl JobMetrics {
    fn register(job: Option<&str>) -> Self {
        match job {
            Some(job) => Self {
                ok: metrics::counter!("shardjob_executions_total", "outcome" => Outcome::Ok.as_str(), "job" => job.to_owned()),
                seconds: metrics::histogram!("shardjob_execution_seconds", "job" => job.to_owned()),
                labelled: true,
            },
            None => Self {
                ok: metrics::counter!("shardjob_executions_total", "outcome" => Outcome::Ok.as_str()),
                seconds: metrics::histogram!("shardjob_execution_seconds"),
                labelled: false,
            },
        }
    }

    /// Records the end of an execution of `job` that took `seconds`.
    pub(crate) fn record(&self, job: &str, outcome: Outcome, seconds: f64) {
        self.seconds.record(seconds);
        match (outcome, self.labelled) {
            (Outcome::Ok, _) => self.ok.increment(1),
            (other, true) => metrics::counter!("shardjob_executions_total", "outcome" => other.as_str(), "job" => job.to_owned())
                .increment(1),
            (other, false) => {
                metrics::counter!("shardjob_executions_total", "outcome" => other.as_str())
                    .increment(1);
            }
        }
    }
}

/// The handles of every job that launched here, or one set for all.
pub(crate) struct ExecMetrics {
    shared: Option<Arc<JobMetrics>>,
    per_job: FastMap<String, Arc<JobMetrics>>,
    /// `per_job` is pruned of deleted jobs when it grows past this.
    prune_at: usize,
}

/// The least `prune_at` (a handful of jobs never prune).
const PRUNE_MIN: usize = 64;

impl ExecMetrics {
    /// Handles per job (`job_labels`) or one set for all jobs.
    pub(crate) fn new(job_labels: bool) -> Self {
        Self {
            shared: (!job_labels).then(|| Arc::new(JobMetrics::register(None))),
            per_job: FastMap::default(),
            prune_at: PRUNE_MIN,
        }
    }

    /// The handles for `job`, registered at its first launch. When the table has doubled since
    /// it was last pruned, the jobs for which `exists` says no are dropped from it first (so a
    /// namespace whose jobs come and go does not keep every name it ever ran).
    pub(crate) fn for_job(&mut self, job: &str, exists: impl Fn(&str) -> bool) -> Arc<JobMetrics> {
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        if let Some(m) = self.per_job.get(job) {
            return m.clone();
        }
        if self.per_job.len() >= self.prune_at {
            self.per_job.retain(|name, _| exists(name));
            self.prune_at = (self.per_job.len() * 2).max(PRUNE_MIN);
        }
        let m = Arc::new(JobMetrics::register(Some(job)));
        self.per_job.insert(job.to_owned(), m.clone());
        m
    }

    /// Jobs with handles of their own.
    #[cfg(test)]
    fn jobs(&self) -> usize {
        self.per_job.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_for_all_without_the_label() {
        let mut m = ExecMetrics::new(false);
        let a = m.for_job("a", |_| true);
        let b = m.for_job("b", |_| true);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!a.labelled);
        assert_eq!(m.jobs(), 0);
    }

    #[test]
    fn a_set_per_job_kept_and_pruned_of_deleted_jobs_as_it_grows() {
        let mut m = ExecMetrics::new(true);
        let first = m.for_job("j0", |_| true);
        assert!(first.labelled);
        assert!(
            Arc::ptr_eq(&first, &m.for_job("j0", |_| true)),
            "registered once"
        );
        for i in 1..PRUNE_MIN {
            m.for_job(&format!("j{i}"), |_| true);
        }
        assert_eq!(m.jobs(), PRUNE_MIN, "not pruned below the threshold");
        // Only even jobs still exist: the next new job prunes the odd ones first.
        let even = |name: &str| name[1..].parse::<usize>().is_ok_and(|i| i % 2 == 0);
        m.for_job("new", even);
        assert_eq!(m.jobs(), PRUNE_MIN / 2 + 1);
        assert!(m.per_job.contains_key("new"));
        assert!(!m.per_job.contains_key("j1"));
        assert!(
            Arc::ptr_eq(&first, &m.for_job("j0", even)),
            "kept ones keep their handles"
        );
    }
}
