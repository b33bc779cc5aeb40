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

use metrics::{Counter, Histogram};

use crate::execlog::Outcome;

/// The handles of one job (or of every job, without the `job` label): kept inline in the
/// job's `JobRun` (a handle is a pointer to its series).
#[derive(Clone)]
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

/// Makes the handles of a job: its own (with the `job` label), or one set shared by all.
/// A job's are kept with what its executions share (`job_runs.rs`), made at its first launch.
pub(crate) struct ExecMetrics {
    shared: Option<JobMetrics>,
}

impl ExecMetrics {
    /// Handles per job (`job_labels`) or one set for all jobs.
    pub(crate) fn new(job_labels: bool) -> Self {
        Self {
            shared: (!job_labels).then(|| JobMetrics::register(None)),
        }
    }

    /// The handles for `job`: registered now, or the shared set.
    pub(crate) fn for_job(&self, job: &str) -> JobMetrics {
        match &self.shared {
            Some(shared) => shared.clone(),
            None => JobMetrics::register(Some(job)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_for_all_without_the_label_and_a_set_per_job_with_it() {
        let m = ExecMetrics::new(false);
        assert!(!m.for_job("a").labelled && !m.for_job("b").labelled);
        let m = ExecMetrics::new(true);
        assert!(m.for_job("a").labelled && m.for_job("b").labelled);
    }
}
