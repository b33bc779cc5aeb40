//! [`JobSpec`]: a job defined in code, published to etcd when the agent starts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_coordinator::model::{ConfigError, HumanDuration, JobConfig, Schedule};
use shardjob_sharding::{Selector, StrategyKind, validate_name};

/// A job defined in code. Setters never fail; [`JobSpec::validate`] (called by the agent's
/// `start`) checks everything and names the field at fault.
///
/// ```
/// use shardjob_agent::JobSpec;
/// let spec = JobSpec::new("orders-sync", "*/5 * * * * *").unwrap().shards(8).failover(true);
/// assert!(spec.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub(crate) name: String,
    pub(crate) config: JobConfig,
    pub(crate) selector_text: Option<String>,
    pub(crate) max_concurrency: Option<usize>,
}

impl JobSpec {
    /// A job firing on `cron` (6 or 7 fields, seconds first), one shard, UTC.
    pub fn new(name: impl Into<String>, cron: &str) -> Result<Self, ConfigError> {
        Self::with_schedule(name, Schedule::Cron(cron.to_owned()))
    }

    /// A job firing every `interval` (aligned to the Unix epoch).
    pub fn every(name: impl Into<String>, interval: Duration) -> Result<Self, ConfigError> {
        Self::with_schedule(name, Schedule::Every(HumanDuration(interval)))
    }

    /// A job that runs once at `at` (a delayed task).
    pub fn at(name: impl Into<String>, at: DateTime<Utc>) -> Result<Self, ConfigError> {
        Self::with_schedule(name, Schedule::At(at))
    }

    /// A resident job: no fires; each shard's handler runs for as long as this agent holds the
    /// shard (started with the shard's token when it is claimed, its `cancel` fired before the
    /// release and at a self-fence, started again a second after it ends by itself). Like a
    /// Kafka consumer's partitions assigned / revoked. [`JobSpec::timeout`] is how long a stop
    /// may take (default 10 s) before the run is aborted.
    ///
    /// ```
    /// use shardjob_agent::JobSpec;
    /// let spec = JobSpec::resident("segments").unwrap().shards(64);
    /// assert!(spec.validate().is_ok());
    /// ```
    pub fn resident(name: impl Into<String>) -> Result<Self, ConfigError> {
        Self::with_schedule(name, Schedule::Resident)
    }

    fn with_schedule(name: impl Into<String>, schedule: Schedule) -> Result<Self, ConfigError> {
        let spec = Self {
            name: name.into(),
            config: JobConfig::new(schedule, 1),
            selector_text: None,
            max_concurrency: None,
        };
        validate_name("job name", &spec.name).map_err(|e| ConfigError {
            job: spec.name.clone(),
            field: "name",
            reason: e.to_string(),
        })?;
        // The schedule is checked now, so a typo fails where it is written.
        spec.config.validate(&spec.name)?;
        Ok(spec)
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config that will be published.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Number of shards (1..=10000).
    pub fn shards(mut self, total: u32) -> Self {
        self.config.total = total;
        self
    }

    /// The parameter of one shard.
    pub fn shard_param(mut self, shard: u32, param: impl Into<String>) -> Self {
        self.config.shard_params.insert(shard, param.into());
        self
    }

    /// One parameter for every shard.
    pub fn job_param(mut self, param: impl Into<String>) -> Self {
        self.config.job_param = param.into();
        self
    }

    /// The handler to run (default: the handler registered with this spec, named like the job).
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.config.handler = Some(handler.into());
        self
    }

    /// Interval schedules: fire at this offset past each aligned interval (e.g. every 1 min at
    /// :15), to spread jobs of the same interval. Must be shorter than the interval.
    pub fn offset(mut self, offset: Duration) -> Self {
        self.config.offset = Some(HumanDuration(offset));
        self
    }

    /// IANA time zone of the cron schedule.
    pub fn time_zone(mut self, tz: impl Into<String>) -> Self {
        self.config.time_zone = tz.into();
        self
    }

    /// Sharding strategy (default `sticky`).
    pub fn strategy(mut self, strategy: StrategyKind) -> Self {
        self.config.strategy = strategy;
        self
    }

    /// Required instance labels, `key=value,key=value`.
    pub fn selector(mut self, selector: impl Into<String>) -> Self {
        self.selector_text = Some(selector.into());
        self
    }

    /// Re-run a fire whose owner died mid-execution.
    pub fn failover(mut self, on: bool) -> Self {
        self.config.failover = on;
        self
    }

    /// Coalesce a fire that arrives while the previous run goes into one run after it (default
    /// on); off: skip it.
    pub fn misfire(mut self, on: bool) -> Self {
        self.config.misfire = on;
        self
    }

    /// Cancel (then abort) a run after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(HumanDuration(timeout));
        self
    }

    /// Retries of a failed run, with exponential backoff and jitter.
    pub fn retries(mut self, retries: u32) -> Self {
        self.config.max_retries = retries;
        self
    }

    /// Retry runs that timed out too, not only runs that failed (default false).
    pub fn retry_timeouts(mut self, on: bool) -> Self {
        self.config.retry_timeouts = on;
        self
    }

    /// At most this many runs of this job at once on one agent.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Replace the config stored in etcd (by default etcd's copy wins: operators may have
    /// changed it).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.config.overwrite = on;
        self
    }

    /// Publish the job disabled.
    pub fn disabled(mut self, on: bool) -> Self {
        self.config.disabled = on;
        self
    }

    /// A description for operators.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.config.description = text.into();
        self
    }

    /// Checks every field; the error names the job and the field.
    pub fn validate(&self) -> Result<JobConfig, ConfigError> {
        let mut config = self.config.clone();
        if let Some(text) = &self.selector_text {
            config.selector = text.parse::<Selector>().map_err(|e| ConfigError {
                job: self.name.clone(),
                field: "selector",
                reason: e.to_string(),
            })?;
        }
        if self.max_concurrency == Some(0) {
            return Err(ConfigError {
                job: self.name.clone(),
                field: "max_concurrency",
                reason: "0 would never run; use disabled(true) to stop a job".into(),
            });
        }
        config.validate(&self.name)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_name_the_field() {
        let e = JobSpec::new("bad name", "* * * * * *").unwrap_err();
        assert_eq!(e.field, "name");
        let e = JobSpec::new("j", "* * *").unwrap_err();
        assert_eq!(e.field, "schedule.cron");
        let e = JobSpec::every("j", Duration::from_millis(5)).unwrap_err();
        assert_eq!(e.field, "schedule.every");
        let table: Vec<(JobSpec, &str)> = vec![
            (JobSpec::new("j", "* * * * * *").unwrap().shards(0), "total"),
            (
                JobSpec::new("j", "* * * * * *")
                    .unwrap()
                    .shards(2)
                    .shard_param(5, "x"),
                "shard_params",
            ),
            (
                JobSpec::new("j", "* * * * * *").unwrap().selector("zone"),
                "selector",
            ),
            (
                JobSpec::new("j", "* * * * * *")
                    .unwrap()
                    .time_zone("Moon/Base"),
                "time_zone",
            ),
            (
                JobSpec::new("j", "* * * * * *").unwrap().max_concurrency(0),
                "max_concurrency",
            ),
        ];
        for (spec, field) in table {
            let e = spec.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("job \"j\""), "{e}");
        }
    }

    #[test]
    fn a_good_spec_becomes_its_config() {
        let c = JobSpec::new("orders", "*/5 * * * * *")
            .unwrap()
            .shards(8)
            .selector("zone=eu")
            .failover(true)
            .timeout(Duration::from_secs(30))
            .validate()
            .unwrap();
        assert_eq!((c.total, c.failover, c.misfire), (8, true, true));
        assert_eq!(c.selector.to_string(), "zone=eu");
    }
}
