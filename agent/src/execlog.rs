//! The execution history: every finished execution (aborted ones included) goes to each
//! [`ExecSink`] the agent was given — the JSON-lines file of [`JsonLines`] (`.exec_log(path)`),
//! or any other (`.exec_sink(..)`; `shardjob_tasks::history::PgHistory` keeps it in
//! PostgreSQL with a retention).
//!
//! The file is for the fault suite's checker and for anyone auditing what ran where:
//! `{"job","shard","fire_time","instance","token","start","end","outcome"}`, times RFC 3339 UTC
//! with microseconds. Lines are appended with one `write` each on a file opened `O_APPEND`, so
//! several processes may share one file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Timeout,
    /// The handler stopped because its token was cancelled (it returned, or the agent's cancel
    /// reached it before the abort did).
    Cancelled,
    /// Cut short by the agent (a lapse, a self-fence, a lost owner key, the shutdown timeout):
    /// cancelled and aborted before it could end by itself.
    Aborted,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One finished execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub job: String,
    pub shard: u32,
    pub fire_time: DateTime<Utc>,
    pub instance: String,
    pub token: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub outcome: Outcome,
}

#[derive(serde::Deserialize)]
struct OwnedLine {
    job: String,
    shard: u32,
    fire_time: DateTime<Utc>,
    instance: String,
    token: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    outcome: String,
}

#[derive(Serialize)]
struct Line<'a> {
    job: &'a str,
    shard: u32,
    fire_time: String,
    instance: &'a str,
    token: i64,
    start: String,
    end: String,
    outcome: Outcome,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A line of the execution log that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{cause}: {line}")]
    Json { cause: String, line: String },
    #[error("unknown outcome {outcome:?}: {line}")]
    Outcome { outcome: String, line: String },
}

impl ExecRecord {
    /// Parses one line of the log.
    pub fn from_json(line: &str) -> Result<Self, ParseError> {
        let l: OwnedLine = serde_json::from_str(line).map_err(|e| ParseError::Json {
            cause: e.to_string(),
            line: line.to_owned(),
        })?;
        let outcome = match l.outcome.as_str() {
            "ok" => Outcome::Ok,
            "failed" => Outcome::Failed,
            "timeout" => Outcome::Timeout,
            "cancelled" => Outcome::Cancelled,
            "aborted" => Outcome::Aborted,
            other => {
                return Err(ParseError::Outcome {
                    outcome: other.to_owned(),
                    line: line.to_owned(),
                });
            }
        };
        Ok(Self {
            job: l.job,
            shard: l.shard,
            fire_time: l.fire_time,
            instance: l.instance,
            token: l.token,
            start: l.start,
            end: l.end,
            outcome,
        })
    }

    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        let line = Line {
            job: &self.job,
            shard: self.shard,
            fire_time: rfc3339(self.fire_time),
            instance: &self.instance,
            token: self.token,
            start: rfc3339(self.start),
            end: rfc3339(self.end),
            outcome: self.outcome,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// Where finished executions go. Called on the agent's own tasks: it must not block (queue
/// the record and write it elsewhere).
pub trait ExecSink: Send + Sync + 'static {
    /// One finished execution.
    fn record(&self, record: &ExecRecord);
}

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct JsonLines {
    file: Mutex<File>,
}

impl JsonLines {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

impl ExecSink for JsonLines {
    /// Appends one line; a failing disk is logged, never fatal to the agent.
    fn record(&self, record: &ExecRecord) {
        let mut line = record.to_json();
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "writing the execution log failed");
        }
    }
}

/// Every sink of an agent.
#[derive(Clone, Default)]
pub struct ExecLog {
    sinks: Vec<std::sync::Arc<dyn ExecSink>>,
}

impl std::fmt::Debug for ExecLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecLog")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl ExecLog {
    /// A log over `sinks`; `None` when there are none (nothing to record).
    pub fn new(sinks: Vec<std::sync::Arc<dyn ExecSink>>) -> Option<Self> {
        (!sinks.is_empty()).then_some(Self { sinks })
    }

    /// Gives one record to every sink.
    pub fn append(&self, record: &ExecRecord) {
        for s in &self.sinks {
            s.record(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_documented_fields_and_microsecond_utc_times() {
        let r = ExecRecord {
            job: "orders".into(),
            shard: 3,
            fire_time: "2026-11-21T10:00:05Z".parse().unwrap(),
            instance: "node-a".into(),
            token: 42,
            start: "2026-11-21T10:00:05.000123Z".parse().unwrap(),
            end: "2026-11-21T10:00:05.5Z".parse().unwrap(),
            outcome: Outcome::Ok,
        };
        assert_eq!(
            r.to_json(),
            r#"{"job":"orders","shard":3,"fire_time":"2026-11-21T10:00:05.000000Z","instance":"node-a","token":42,"start":"2026-11-21T10:00:05.000123Z","end":"2026-11-21T10:00:05.500000Z","outcome":"ok"}"#
        );
        assert_eq!(ExecRecord::from_json(&r.to_json()).unwrap(), r);
        assert!(ExecRecord::from_json("{}").is_err());
    }
}
