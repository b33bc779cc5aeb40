//! The delayed-task checker: judges a run from the store's attempts table and the handlers'
//! own log (`tasks_agent`'s `SHARDJOB_TASK_LOG`), independently of the code under test.
//!
//! - `lost`: tasks not `done`;
//! - `duplicates`: tasks with more than one `ok` attempt recorded;
//! - `overlaps`: two handler runs of one task at the same time, where the store accepted the
//!   outcome of both (a run whose outcome the store refused — a fenced ex-owner's — is counted
//!   as `fenced_overlaps` instead: the fencing token is what covers it);
//! - lateness: first start of each task minus its due time, from the handler log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::benchkit::percentile;

/// One handler run from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRun {
    pub task: String,
    pub instance: String,
    pub token: i64,
    pub attempt: i64,
    pub due: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskReport {
    pub tasks: usize,
    pub done: usize,
    pub ran_once: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub overlaps: usize,
    pub fenced_overlaps: usize,
    pub recovered: usize,
    pub runs: usize,
    pub late_p50_ms: f64,
    pub late_p99_ms: f64,
    pub late_max_ms: f64,
}

impl TaskReport {
    /// `tasks=.. ran_once=.. lost=.. duplicates=.. overlaps=.. fenced_overlaps=.. recovered=..`
    pub fn line(&self) -> String {
        format!(
            "tasks={} ran_once={} lost={} duplicates={} overlaps={} fenced_overlaps={} recovered={} runs={} late_p50_ms={:.1} late_p99_ms={:.1} late_max_ms={:.1}",
            self.tasks,
            self.ran_once,
            self.lost,
            self.duplicates,
            self.overlaps,
            self.fenced_overlaps,
            self.recovered,
            self.runs,
            self.late_p50_ms,
            self.late_p99_ms,
            self.late_max_ms
        )
    }

    /// True when nothing was lost, duplicated or overlapped.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.overlaps == 0
    }
}

/// Reads the handler log (bad lines are skipped: a killed process may leave half a line).
pub fn read_log(path: &Path) -> Vec<LoggedRun> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let time = |k: &str| v.get(k)?.as_str()?.parse::<DateTime<Utc>>().ok();
            Some(LoggedRun {
                task: v.get("task")?.as_str()?.to_owned(),
                instance: v.get("instance")?.as_str()?.to_owned(),
                token: v.get("token")?.as_i64()?,
                attempt: v.get("attempt")?.as_i64()?,
                due: time("due")?,
                start: time("start")?,
                end: time("end")?,
            })
        })
        .collect()
}

/// What the store says of a queue: each task's status, and each attempt.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub status: HashMap<String, String>,
    /// (task, token, attempt, outcome).
    pub attempts: Vec<(String, i64, i64, String)>,
}

/// Reads `queue` from every server of the store.
pub async fn load(dbs: &[&tokio_postgres::Client], queue: &str) -> Result<Stored, String> {
    let mut stored = Stored::default();
    for db in dbs {
        for r in db
            .query(
                "SELECT id::text, status FROM tasks WHERE queue = $1",
                &[&queue],
            )
            .await
            .map_err(|e| e.to_string())?
        {
            stored.status.insert(r.get(0), r.get(1));
        }
        for r in db
            .query(
                "SELECT task::text, token, attempt, outcome FROM attempts WHERE queue = $1",
                &[&queue],
            )
            .await
            .map_err(|e| e.to_string())?
        {
            let attempt: i32 = r.get(2);
            stored
                .attempts
                .push((r.get(0), r.get(1), i64::from(attempt), r.get(3)));
        }
    }
    Ok(stored)
}

/// Judges `queue` on `dbs` (every server of the store) against the handler log `runs`.
pub async fn check(
    dbs: &[&tokio_postgres::Client],
    queue: &str,
    runs: &[LoggedRun],
) -> Result<TaskReport, String> {
    Ok(judge(&load(dbs, queue).await?, runs))
}

/// The verdict on what the store holds and what the handlers logged. Pure.
pub fn judge(stored: &Stored, runs: &[LoggedRun]) -> TaskReport {
    // (task, token, attempt) of every attempt whose outcome the store accepted.
    let mut accepted: HashSet<(&str, i64, i64)> = HashSet::new();
    let mut ok: HashMap<&str, usize> = HashMap::new();
    let mut recovered: HashSet<&str> = HashSet::new();
    for (task, token, attempt, outcome) in &stored.attempts {
        if outcome == "lost" {
            recovered.insert(task);
            continue;
        }
        if outcome == "ok" {
            *ok.entry(task).or_default() += 1;
        }
        accepted.insert((task, *token, *attempt));
    }
    let mut report = TaskReport {
        tasks: stored.status.len(),
        done: stored.status.values().filter(|s| *s == "done").count(),
        recovered: recovered.len(),
        runs: runs.len(),
        ..TaskReport::default()
    };
    report.lost = report.tasks - report.done;
    report.ran_once = ok.values().filter(|n| **n == 1).count();
    report.duplicates = ok.values().filter(|n| **n > 1).count();
    let mut by_task: BTreeMap<&str, Vec<&LoggedRun>> = BTreeMap::new();
    for r in runs {
        by_task.entry(r.task.as_str()).or_default().push(r);
    }
    let mut late = Vec::new();
    for (task, mut rs) in by_task {
        rs.sort_by_key(|r| r.start);
        if let Some(first) = rs.first() {
            late.push((first.start - first.due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                if b.start >= a.end {
                    continue;
                }
                let both = [a, b]
                    .iter()
                    .all(|r| accepted.contains(&(task, r.token, r.attempt)));
                if both {
                    report.overlaps += 1;
                } else {
                    report.fenced_overlaps += 1;
                }
            }
        }
    }
    report.late_p50_ms = percentile(&late, 50.0);
    report.late_p99_ms = percentile(&late, 99.0);
    report.late_max_ms = late.iter().copied().fold(0.0, f64::max);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, token: i64, attempt: i64, start_ms: i64, end_ms: i64) -> LoggedRun {
        let t0: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let at = |ms| t0 + chrono::Duration::milliseconds(ms);
        LoggedRun {
            task: task.into(),
            instance: format!("i{token}"),
            token,
            attempt,
            due: t0,
            start: at(start_ms),
            end: at(end_ms),
        }
    }

    fn stored(statuses: &[(&str, &str)], attempts: &[(&str, i64, i64, &str)]) -> Stored {
        Stored {
            status: statuses
                .iter()
                .map(|(t, s)| (t.to_string(), s.to_string()))
                .collect(),
            attempts: attempts
                .iter()
                .map(|(t, tok, a, o)| (t.to_string(), *tok, *a, o.to_string()))
                .collect(),
        }
    }

    #[test]
    fn overlaps_count_only_when_the_store_accepted_both_runs() {
        let runs = [run("t", 5, 1, 0, 100), run("t", 9, 2, 50, 150)];
        // The ex-owner's outcome was refused (the new owner recorded it lost): fenced.
        let fenced = stored(&[("t", "done")], &[("t", 5, 1, "lost"), ("t", 9, 2, "ok")]);
        let r = judge(&fenced, &runs);
        assert_eq!(
            (r.overlaps, r.fenced_overlaps, r.recovered, r.ran_once),
            (0, 1, 1, 1)
        );
        // Both accepted: a real overlap, and a duplicate.
        let both = stored(&[("t", "done")], &[("t", 5, 1, "ok"), ("t", 9, 2, "ok")]);
        let r = judge(&both, &runs);
        assert_eq!((r.overlaps, r.duplicates, r.ran_once), (1, 1, 0));
        assert!(!r.clean());
        // One after the other is no overlap; a pending task is lost.
        let seq = [run("t", 5, 1, 0, 100), run("t", 9, 2, 100, 150)];
        let r = judge(
            &stored(&[("t", "done"), ("u", "pending")], &[("t", 9, 2, "ok")]),
            &seq,
        );
        assert_eq!((r.overlaps, r.fenced_overlaps, r.lost), (0, 0, 1));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "{\"task\":\"t\",\"instance\":\"a\",\"token\":5,\"attempt\":1,\"due\":\"2026-12-01T10:00:00Z\",\"start\":\"2026-12-01T10:00:00.01Z\",\"end\":\"2026-12-01T10:00:01Z\"}\n{\"task\":\"t\",\"ins",
        )
        .unwrap();
        let runs = read_log(&p);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].token, 5);
    }
}
