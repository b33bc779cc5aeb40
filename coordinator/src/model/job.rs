//! `jobs/<job>`: a job's configuration, as users define it in code and operators edit it.
//!
//! ```json
//! {"handler":"orders-sync","schedule":{"cron":"*/5 * * * * *"},"time_zone":"Europe/Berlin",
//!  "total":8,"shard_params":{"0":"eu-west"},"job_param":"batch=500","strategy":"sticky",
//!  "selector":{"zone":"eu"},"failover":true,"misfire":true,"disabled":false,
//!  "timeout":"30s","max_retries":3,"description":"sync orders"}
//! ```
//! Every field but `schedule` and `total` has a default; unknown fields are ignored (configs
//! written by newer versions still load).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shardjob_sharding::{Selector, StrategyKind, validate_name};

use super::HumanDuration;

/// Most shards a job may have.
pub const MAX_TOTAL: u32 = 10_000;
/// Largest `job_param`, in bytes.
pub const MAX_JOB_PARAM: usize = 64 * 1024;
/// Largest single shard parameter, in bytes.
pub const MAX_SHARD_PARAM: usize = 4 * 1024;
/// Largest description, in bytes.
pub const MAX_DESCRIPTION: usize = 4 * 1024;
/// Longest execution timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Shortest fixed interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest fixed interval (and so the longest offset): 366 days. Beyond it fire arithmetic in
/// milliseconds would have nothing to gain and everything to overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most retries of one execution.
pub const MAX_RETRIES: u32 = 100;

/// When a job fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// A cron expression with seconds: `sec min hour day-of-month month day-of-week [year]`,
    /// evaluated in the job's time zone.
    Cron(String),
    /// A fixed interval, e.g. `"30s"`.
    Every(HumanDuration),
    /// Once at this instant, then the job is finished (a delayed task).
    At(DateTime<Utc>),
    /// No fires: each shard's handler runs for as long as the shard is held (started when it
    /// is claimed, cancelled before it is released and at a self-fence; started again a
    /// second after it ends by itself). Its `timeout` is how long a stop may take before the
    /// run is aborted. A delayed-task queue's segment worker is one. Written `"resident"`.
    Resident,
}

/// A job's configuration (the value of `jobs/<job>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    /// The handler that runs it; `None` means the handler named like the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    pub schedule: Schedule,
    /// Interval schedules only: fire at `offset` past each aligned interval (every 1m with offset
    /// 15s fires at :15 of every minute), to spread jobs with the same interval over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<HumanDuration>,
    /// IANA time zone of a cron schedule, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Number of shards, `1..=10000`.
    pub total: u32,
    /// A parameter per shard number (shards without one get `""`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shard_params: BTreeMap<u32, String>,
    /// One parameter for every shard.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_param: String,
    #[serde(default)]
    pub strategy: StrategyKind,
    /// Required instance labels.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub selector: Selector,
    /// Re-run a fire whose owner died mid-execution on the new owner.
    #[serde(default)]
    pub failover: bool,
    /// Coalesce a fire that arrives while the previous run still goes into one run after it.
    #[serde(default = "yes")]
    pub misfire: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub max_retries: u32,
    /// Retry a run that timed out too (default false: a timeout is counted as a failed attempt
    /// but not retried, since a handler that hangs once often hangs again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_timeouts: bool,
    /// When publishing from code: replace the stored config (otherwise etcd's copy wins).
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The cron crate's errors point at the input with a caret on a second line; keep one line.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^'))
        .collect();
    parts.join(" ")
}

fn utc() -> String {
    "UTC".to_owned()
}

fn yes() -> bool {
    true
}

/// A job config that breaks a rule; names the job and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job:?}: {field}: {reason}")]
pub struct ConfigError {
    pub job: String,
    pub field: &'static str,
    pub reason: String,
}

impl JobConfig {
    /// A config with defaults for everything but the schedule and the shard count.
    pub fn new(schedule: Schedule, total: u32) -> Self {
        Self {
            handler: None,
            schedule,
            offset: None,
            time_zone: utc(),
            total,
            shard_params: BTreeMap::new(),
            job_param: String::new(),
            strategy: StrategyKind::default(),
            selector: Selector::default(),
            failover: false,
            misfire: true,
            disabled: false,
            timeout: None,
            max_retries: 0,
            retry_timeouts: false,
            overwrite: false,
            description: String::new(),
        }
    }

    /// The handler name: `handler`, or the job's own name.
    pub fn handler_name<'a>(&'a self, job: &'a str) -> &'a str {
        self.handler.as_deref().unwrap_or(job)
    }

    /// The time zone, parsed (validated configs always parse; UTC otherwise).
    pub fn tz(&self) -> chrono_tz::Tz {
        chrono_tz::Tz::from_str(&self.time_zone).unwrap_or(chrono_tz::UTC)
    }

    /// The parameter of `shard` (`""` when none is set).
    pub fn shard_param(&self, shard: u32) -> &str {
        self.shard_params.get(&shard).map_or("", String::as_str)
    }

    /// [`Self::validate`], plus what only holds for a job created at `now`: a one-shot `at` in
    /// the future, a cron expression that still fires after `now` (its years not all past).
    /// A stored config is not held to it: a one-shot stays valid after it ran.
    pub fn validate_new(&self, job: &str, now: DateTime<Utc>) -> Result<(), ConfigError> {
        self.validate(job)?;
        let err = |field, reason: String| ConfigError {
            job: job.to_owned(),
            field,
            reason,
        };
        match &self.schedule {
            Schedule::At(t) if *t <= now => Err(err(
                "schedule.at",
                format!("{} is in the past", t.to_rfc3339()),
            )),
            Schedule::Cron(expr) => {
                let tz = chrono_tz::Tz::from_str(&self.time_zone).unwrap_or(chrono_tz::UTC);
                let fires = cron::Schedule::from_str(expr)
                    .is_ok_and(|s| s.after(&now.with_timezone(&tz)).next().is_some());
                if fires {
                    Ok(())
                } else {
                    Err(err(
                        "schedule.cron",
                        format!("{expr:?} never fires after {}", now.to_rfc3339()),
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// Checks every rule; the error names the job and the field.
    pub fn validate(&self, job: &str) -> Result<(), ConfigError> {
        let err = |field, reason: String| ConfigError {
            job: job.to_owned(),
            field,
            reason,
        };
        validate_name("job name", job).map_err(|e| err("name", e.to_string()))?;
        if let Some(h) = &self.handler {
            validate_name("handler name", h).map_err(|e| err("handler", e.to_string()))?;
        }
        if !(1..=MAX_TOTAL).contains(&self.total) {
            return Err(err(
                "total",
                format!("{} is outside 1..={MAX_TOTAL}", self.total),
            ));
        }
        let tz = chrono_tz::Tz::from_str(&self.time_zone).map_err(|_| {
            err(
                "time_zone",
                format!(
                    "{:?} is not an IANA time zone (e.g. UTC, Europe/Berlin)",
                    self.time_zone
                ),
            )
        })?;
        match &self.schedule {
            Schedule::Cron(expr) => {
                let parsed = cron::Schedule::from_str(expr).map_err(|e| {
                    err(
                        "schedule.cron",
                        format!(
                            "{expr:?} does not parse ({}); use 6 or 7 fields: sec min hour day month weekday [year]",
                            one_line(&e.to_string())
                        ),
                    )
                })?;
                // Reject expressions that can never fire (e.g. 30 February), evaluated in the
                // job's zone from a fixed instant so validation never reads the clock.
                let from = DateTime::<Utc>::UNIX_EPOCH.with_timezone(&tz);
                if parsed.after(&from).next().is_none() {
                    return Err(err("schedule.cron", format!("{expr:?} never fires")));
                }
            }
            Schedule::Every(d) if d.0 < MIN_INTERVAL => {
                return Err(err(
                    "schedule.every",
                    format!("{d} is shorter than the minimum 100ms"),
                ));
            }
            Schedule::Every(d) if d.0 > MAX_INTERVAL => {
                return Err(err(
                    "schedule.every",
                    format!("{d} is longer than the maximum 366 days"),
                ));
            }
            Schedule::Every(_) | Schedule::At(_) => {}
            Schedule::Resident => {
                if self.failover || self.max_retries > 0 || self.retry_timeouts {
                    return Err(err(
                        "schedule.resident",
                        "a resident job runs while its shard is held: failover, max_retries \
                         and retry_timeouts do not apply (leave them unset)"
                            .into(),
                    ));
                }
            }
        }
        match (&self.schedule, &self.offset) {
            (_, None) => {}
            (Schedule::Every(d), Some(off)) if off.0 >= d.0 => {
                return Err(err(
                    "offset",
                    format!("{off} is not shorter than the interval {d}"),
                ));
            }
            (Schedule::Every(_), Some(_)) => {}
            (_, Some(_)) => {
                return Err(err(
                    "offset",
                    "only interval schedules (schedule.every) take an offset".into(),
                ));
            }
        }
        if let Some(s) = self.shard_params.keys().find(|s| **s >= self.total) {
            return Err(err(
                "shard_params",
                format!("shard {s} does not exist (total is {})", self.total),
            ));
        }
        if let Some((s, p)) = self
            .shard_params
            .iter()
            .find(|(_, p)| p.len() > MAX_SHARD_PARAM)
        {
            return Err(err(
                "shard_params",
                format!(
                    "parameter of shard {s} is {} bytes; at most {MAX_SHARD_PARAM}",
                    p.len()
                ),
            ));
        }
        if self.job_param.len() > MAX_JOB_PARAM {
            return Err(err(
                "job_param",
                format!("{} bytes; at most {MAX_JOB_PARAM}", self.job_param.len()),
            ));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(err(
                "description",
                format!(
                    "{} bytes; at most {MAX_DESCRIPTION}",
                    self.description.len()
                ),
            ));
        }
        self.selector
            .validate()
            .map_err(|e| err("selector", e.to_string()))?;
        if let Some(t) = self.timeout {
            if t.0.is_zero() || t.0 > MAX_TIMEOUT {
                return Err(err("timeout", format!("{t} is outside 1ms..=24h")));
            }
        }
        if self.max_retries > MAX_RETRIES {
            return Err(err(
                "max_retries",
                format!("{} is above {MAX_RETRIES}", self.max_retries),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(expr: &str, total: u32) -> JobConfig {
        JobConfig::new(Schedule::Cron(expr.into()), total)
    }

    #[test]
    fn minimal_json_gets_defaults_and_unknown_fields_are_ignored() {
        let json = r#"{"schedule":{"every":"30s"},"total":4,"from_the_future":[1,2]}"#;
        let c: JobConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.schedule, Schedule::Every("30s".parse().unwrap()));
        assert_eq!(
            (c.time_zone.as_str(), c.misfire, c.failover),
            ("UTC", true, false)
        );
        assert_eq!(c.strategy, StrategyKind::Sticky);
        assert_eq!(c.handler_name("orders"), "orders");
        c.validate("orders").unwrap();
    }

    #[test]
    fn full_config_round_trips() {
        let mut c = cron("*/5 * * * * *", 8);
        c.handler = Some("sync".into());
        c.time_zone = "Europe/Berlin".into();
        c.shard_params.insert(0, "eu".into());
        c.selector = "zone=eu".parse().unwrap();
        c.timeout = Some("30s".parse().unwrap());
        c.failover = true;
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""schedule":{"cron":"*/5 * * * * *"}"#),
            "{json}"
        );
        assert!(json.contains(r#""selector":{"zone":"eu"}"#), "{json}");
        assert_eq!(serde_json::from_str::<JobConfig>(&json).unwrap(), c);
        let at = JobConfig::new(Schedule::At("2026-12-01T09:00:00Z".parse().unwrap()), 1);
        let json = serde_json::to_string(&at).unwrap();
        assert!(json.contains(r#"{"at":"2026-12-01T09:00:00Z"}"#), "{json}");
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut big_params = cron("* * * * * *", 2);
        big_params
            .shard_params
            .insert(1, "x".repeat(MAX_SHARD_PARAM + 1));
        let mut bad_tz = cron("* * * * * *", 1);
        bad_tz.time_zone = "Mars/Olympus".into();
        let mut outside = cron("* * * * * *", 2);
        outside.shard_params.insert(2, "x".into());
        let mut bad_sel = cron("* * * * * *", 1);
        bad_sel.selector = serde_json::from_str(r#"{"zone":"e u"}"#).unwrap();
        let mut huge_param = cron("* * * * * *", 1);
        huge_param.job_param = "x".repeat(MAX_JOB_PARAM + 1);
        let mut handler = cron("* * * * * *", 1);
        handler.handler = Some("a b".into());
        let mut zero_timeout = cron("* * * * * *", 1);
        zero_timeout.timeout = Some("0s".parse().unwrap());
        let mut retries = cron("* * * * * *", 1);
        retries.max_retries = 1000;
        let mut cron_offset = cron("* * * * * *", 1);
        cron_offset.offset = Some("1s".parse().unwrap());
        let mut long_offset = JobConfig::new(Schedule::Every("5s".parse().unwrap()), 1);
        long_offset.offset = Some("5s".parse().unwrap());
        let huge_every = JobConfig::new(
            Schedule::Every(HumanDuration(Duration::from_millis(u64::MAX))),
            1,
        );
        let table: Vec<(JobConfig, &str, &str)> = vec![
            (cron("* * * * * *", 0), "total", "0 is outside 1..=10000"),
            (cron("* * * * * *", 10_001), "total", "10001"),
            (cron("* * * *", 1), "schedule.cron", "does not parse"),
            (cron("* *", 1), "schedule.cron", "use 6 or 7 fields"),
            (cron("0 0 0 30 2 *", 1), "schedule.cron", "never fires"),
            (
                JobConfig::new(Schedule::Every("10ms".parse().unwrap()), 1),
                "schedule.every",
                "100ms",
            ),
            (bad_tz, "time_zone", "Mars/Olympus"),
            (outside, "shard_params", "shard 2 does not exist"),
            (big_params, "shard_params", "shard 1"),
            (bad_sel, "selector", "e u"),
            (huge_param, "job_param", "65537 bytes"),
            (handler, "handler", "handler name"),
            (zero_timeout, "timeout", "0s"),
            (retries, "max_retries", "1000"),
            (cron_offset, "offset", "only interval schedules"),
            (long_offset, "offset", "not shorter than the interval 5s"),
            (
                huge_every,
                "schedule.every",
                "longer than the maximum 366 days",
            ),
        ];
        for (config, field, reason) in table {
            let err = config.validate("orders").unwrap_err();
            assert_eq!(err.field, field, "{err}");
            let text = err.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(
                text.contains(reason) && text.starts_with("job \"orders\""),
                "{text}"
            );
        }
        let err = cron("* * * * * *", 1).validate("a/b").unwrap_err();
        assert_eq!(err.field, "name");
    }

    #[test]
    fn a_new_job_must_still_fire() {
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let resident = JobConfig::new(Schedule::Resident, 4);
        assert!(resident.validate_new("r", now).is_ok());
        let mut retried = resident.clone();
        retried.max_retries = 2;
        assert_eq!(
            retried.validate("r").unwrap_err().field,
            "schedule.resident"
        );
        assert_eq!(
            serde_json::to_string(&resident.schedule).unwrap(),
            "\"resident\""
        );
        let past = JobConfig::new(Schedule::At("2026-12-01T09:59:59Z".parse().unwrap()), 1);
        let e = past.validate_new("once", now).unwrap_err();
        assert_eq!(e.field, "schedule.at", "{e}");
        assert!(e.to_string().contains("in the past"), "{e}");
        past.validate("once").unwrap(); // stored, it stays valid
        let future = JobConfig::new(Schedule::At("2026-12-01T10:00:01Z".parse().unwrap()), 1);
        future.validate_new("once", now).unwrap();
        let e = cron("0 0 0 1 1 * 2025", 1)
            .validate_new("old", now)
            .unwrap_err();
        assert!(e.to_string().contains("never fires after"), "{e}");
        cron("0 0 0 1 1 * 2099", 1)
            .validate_new("future", now)
            .unwrap();
    }

    #[test]
    fn cron_in_a_time_zone_and_with_year_field_is_accepted() {
        let mut c = cron("0 30 9 * * Mon-Fri", 4);
        c.time_zone = "America/New_York".into();
        c.validate("weekday-report").unwrap();
        cron("0 0 12 1 1 * 2099", 1).validate("future").unwrap();
    }
}
