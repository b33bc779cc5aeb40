//! The independent checker of the fault campaign: it reads only the execution log and the fault
//! timeline, and reports every violation of shardjob's safety and liveness claims.
//!
//! - **overlaps**: two executions of one (job, shard) overlap in time. The one excuse is the
//!   hazard no lease can stop: the earlier execution's process was paused or cut off from etcd
//!   during the overlap *and* its token is strictly lower (a store that checks tokens would have
//!   rejected its writes).
//! - **duplicates**: a (job, shard, fire) that ran to `ok` more than once, by anyone, the same
//!   instance included (a sequential repeat is no overlap, but it is still a fire run twice).
//!   The one excuse is the overlap's: the earlier run's process was paused or cut off from etcd
//!   after it started and its token is strictly lower (counted as `fenced_duplicates`). The
//!   other excuse is failover's own promise, at least once: the earlier run's process was
//!   SIGKILLed within a second after the run ended (before it could delete its running
//!   marker, so the next owner re-ran the fire), with a lower token (`crash_duplicates`).
//! - **token regressions**: per (job, shard), in start order, a token lower than the previous.
//! - **lost fires**: a scheduled fire in the window that no execution ran (outcome ok), outside
//!   the documented gap of a crash-type fault (kill, pause, partition, leader kill, etcd leader
//!   kill): from one interval before the fault to TTL + 1 s after it (TTL + 3 s for an etcd
//!   leader kill: raft elects a new leader first). Graceful restarts have no gap.
//! - **stuck shards**: two consecutive executed fires of a shard more than 2 × interval + TTL +
//!   1 s apart (+2 s across an etcd leader kill). An ownership gap of TTL + 1 s shows in the log
//!   as up to one interval more on each side: the fault may strike just before a fire, and the
//!   new owner runs the first fire after its claim.
//! - **untokened**: an execution without a fencing token.
//!
//! The log holds executions the agent cut short too (`aborted`, `cancelled`): they count for
//! overlaps and token order, never as a fire that ran.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::execlog::{ExecRecord, Outcome};

/// A kind of fault the campaign injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    Kill,
    Pause,
    EtcdLeader,
    Partition,
    Rolling,
    LeaderKill,
}

impl FaultKind {
    /// Every kind, in summary-line order.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::EtcdLeader,
        FaultKind::Partition,
        FaultKind::Rolling,
        FaultKind::LeaderKill,
    ];

    /// The name used in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::EtcdLeader => "etcd_leader",
            FaultKind::Partition => "partition",
            FaultKind::Rolling => "rolling",
            FaultKind::LeaderKill => "leader_kill",
        }
    }

    fn crash_like(self) -> bool {
        self != FaultKind::Rolling
    }

    /// The target's process could still run code while not able to prove its lease.
    fn isolates(self) -> bool {
        matches!(self, FaultKind::Pause | FaultKind::Partition)
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The instance id (or etcd member) hit.
    pub target: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A job as scheduled: `total` shards every `every` (epoch-aligned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    pub job: String,
    pub total: u32,
    pub every: Duration,
}

/// What the checker looks at.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    pub records: &'a [ExecRecord],
    pub faults: &'a [Fault],
    pub jobs: &'a [JobPlan],
    /// Fires in `(window.0, window.1]` must have run.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub ttl: Duration,
}

/// One violation, described for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub executions: usize,
    pub overlaps: Vec<Violation>,
    pub duplicates: Vec<Violation>,
    /// Duplicates excused by a pause/partition and a lower token (for the record).
    pub fenced_duplicates: usize,
    /// Duplicates excused by a SIGKILL just after the first run ended, and a lower token.
    pub crash_duplicates: usize,
    /// Overlaps excused by a pause/partition and a lower token (for the record).
    pub fenced_overlaps: usize,
    pub token_regressions: Vec<Violation>,
    pub lost_fires: Vec<Violation>,
    pub stuck_shards: Vec<Violation>,
    pub untokened: Vec<Violation>,
}

impl Report {
    /// True when nothing was violated.
    pub fn clean(&self) -> bool {
        self.overlaps.is_empty()
            && self.duplicates.is_empty()
            && self.token_regressions.is_empty()
            && self.lost_fires.is_empty()
            && self.stuck_shards.is_empty()
            && self.untokened.is_empty()
    }
}

fn secs(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Runs every check.
pub fn check(input: &CheckInput<'_>) -> Report {
    let mut report = Report {
        executions: input.records.len(),
        ..Report::default()
    };
    let mut by_shard: BTreeMap<(&str, u32), Vec<&ExecRecord>> = BTreeMap::new();
    for r in input.records {
        if r.token <= 0 {
            report.untokened.push(Violation(format!(
                "{} shard {} fire {} on {} has no token",
                r.job, r.shard, r.fire_time, r.instance
            )));
        }
        by_shard
            .entry((r.job.as_str(), r.shard))
            .or_default()
            .push(r);
    }
    for ((job, shard), runs) in &mut by_shard {
        runs.sort_by_key(|r| (r.start, r.token));
        overlaps(input, job, *shard, runs, &mut report);
        duplicates(input, job, *shard, runs, &mut report);
        for pair in runs.windows(2) {
            if pair[1].token < pair[0].token {
                report.token_regressions.push(Violation(format!(
                    "{job} shard {shard}: token {} on {} started after token {} on {}",
                    pair[1].token, pair[1].instance, pair[0].token, pair[0].instance
                )));
            }
        }
    }
    lost_and_stuck(input, &by_shard, &mut report);
    report
}

fn overlaps(
    input: &CheckInput<'_>,
    job: &str,
    shard: u32,
    runs: &[&ExecRecord],
    report: &mut Report,
) {
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            if b.start >= a.end {
                continue; // sorted by start: b starts after a ended
            }
            // a started first and b began before a ended.
            if isolated_between(input, &a.instance, b.start, a.end) && a.token < b.token {
                report.fenced_overlaps += 1;
            } else {
                report.overlaps.push(Violation(format!(
                    "{job} shard {shard}: {} (token {}, {}..{}) overlaps {} (token {}, {}..{})",
                    a.instance, a.token, a.start, a.end, b.instance, b.token, b.start, b.end
                )));
            }
        }
    }
}

/// True when `instance` was paused or cut off from etcd at some time in `(from, to)`.
fn isolated_between(
    input: &CheckInput<'_>,
    instance: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> bool {
    input
        .faults
        .iter()
        .any(|f| f.kind.isolates() && f.target == instance && f.start < to && f.end > from)
}

/// True when `instance` was SIGKILLed (kill or leader kill) at most a second after `end`: a
/// fault's recorded start precedes the signal, so the window reaches back one second.
fn killed_right_after(input: &CheckInput<'_>, instance: &str, end: DateTime<Utc>) -> bool {
    input.faults.iter().any(|f| {
        matches!(f.kind, FaultKind::Kill | FaultKind::LeaderKill)
            && f.target == instance
            && f.start - chrono::Duration::seconds(1) <= end
            && end <= f.end
    })
}

fn duplicates(
    input: &CheckInput<'_>,
    job: &str,
    shard: u32,
    runs: &[&ExecRecord],
    report: &mut Report,
) {
    let mut by_fire: BTreeMap<DateTime<Utc>, Vec<&ExecRecord>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.outcome == Outcome::Ok) {
        by_fire.entry(r.fire_time).or_default().push(r);
    }
    for (fire, oks) in by_fire {
        for pair in oks.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            // a ran first, on a process that was cut off between its start and b's (it could
            // not delete its running marker, or it finished on resuming), with a lower token.
            let cut_off = isolated_between(input, &a.instance, a.start, a.end.max(b.start));
            if cut_off && a.token < b.token {
                report.fenced_duplicates += 1;
            } else if a.token < b.token && killed_right_after(input, &a.instance, a.end) {
                report.crash_duplicates += 1;
            } else {
                report.duplicates.push(Violation(format!(
                    "{job} shard {shard}: fire {fire} ran to ok twice: {} (token {}, {}..{}) and {} (token {}, {}..{})",
                    a.instance, a.token, a.start, a.end, b.instance, b.token, b.start, b.end
                )));
            }
        }
    }
}

/// The windows in which fires may be lost, and the extra allowance for gaps across them.
fn excused(input: &CheckInput<'_>, every: Duration) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    input
        .faults
        .iter()
        .filter(|f| f.kind.crash_like())
        .map(|f| {
            let extra = if f.kind == FaultKind::EtcdLeader {
                3
            } else {
                1
            };
            let until = f.start.max(if f.kind.isolates() {
                f.start
            } else {
                f.end.min(f.start)
            });
            (
                f.start - secs(every),
                until + secs(input.ttl) + chrono::Duration::seconds(extra),
            )
        })
        .collect()
}

fn lost_and_stuck(
    input: &CheckInput<'_>,
    by_shard: &BTreeMap<(&str, u32), Vec<&ExecRecord>>,
    report: &mut Report,
) {
    for plan in input.jobs {
        let period = plan.every.as_millis().max(1) as i64;
        let windows = excused(input, plan.every);
        let (from, to) = input.window;
        let mut fire = (from.timestamp_millis().div_euclid(period) + 1) * period;
        let mut fires = Vec::new();
        while fire <= to.timestamp_millis() {
            if let Some(t) = DateTime::<Utc>::from_timestamp_millis(fire) {
                fires.push(t);
            }
            fire += period;
        }
        for shard in 0..plan.total {
            let ran: BTreeSet<DateTime<Utc>> = by_shard
                .get(&(plan.job.as_str(), shard))
                .map(|runs| {
                    runs.iter()
                        .filter(|r| r.outcome == Outcome::Ok)
                        .map(|r| r.fire_time)
                        .collect()
                })
                .unwrap_or_default();
            for f in &fires {
                let in_gap = windows.iter().any(|(s, e)| s <= f && f <= e);
                if !ran.contains(f) && !in_gap {
                    report.lost_fires.push(Violation(format!(
                        "{} shard {shard}: fire {f} never ran",
                        plan.job
                    )));
                }
            }
            let in_window: Vec<&DateTime<Utc>> =
                ran.iter().filter(|t| **t > from && **t <= to).collect();
            for pair in in_window.windows(2) {
                let gap = *pair[1] - *pair[0];
                let across_etcd = input.faults.iter().any(|f| {
                    f.kind == FaultKind::EtcdLeader && f.start < *pair[1] && f.end > *pair[0]
                });
                let allowed = secs(plan.every) * 2
                    + secs(input.ttl)
                    + chrono::Duration::seconds(if across_etcd { 3 } else { 1 });
                if gap > allowed {
                    report.stuck_shards.push(Violation(format!(
                        "{} shard {shard}: nothing ran between fires {} and {} ({} s)",
                        plan.job,
                        pair[0],
                        pair[1],
                        gap.num_milliseconds() as f64 / 1000.0
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-21T10:00:{s}Z").parse().unwrap()
    }

    fn rec(
        instance: &str,
        shard: u32,
        fire: &str,
        token: i64,
        start: &str,
        end: &str,
    ) -> ExecRecord {
        ExecRecord {
            job: "j".into(),
            shard,
            fire_time: t(fire),
            instance: instance.into(),
            token,
            start: t(start),
            end: t(end),
            outcome: Outcome::Ok,
        }
    }

    fn plan() -> Vec<JobPlan> {
        vec![JobPlan {
            job: "j".into(),
            total: 1,
            every: Duration::from_secs(1),
        }]
    }

    /// A clean log: shard 0 run every second from :01 to :10 by "a".
    fn clean_log() -> Vec<ExecRecord> {
        (1..=10)
            .map(|s| {
                rec(
                    "a",
                    0,
                    &format!("{s:02}"),
                    5,
                    &format!("{s:02}.1"),
                    &format!("{s:02}.3"),
                )
            })
            .collect()
    }

    fn run(records: &[ExecRecord], faults: &[Fault]) -> Report {
        let jobs = plan();
        check(&CheckInput {
            records,
            faults,
            jobs: &jobs,
            window: (t("00.5"), t("10")),
            ttl: Duration::from_secs(2),
        })
    }

    #[test]
    fn a_clean_log_is_clean() {
        let r = run(&clean_log(), &[]);
        assert!(r.clean(), "{r:?}");
        assert_eq!(r.executions, 10);
    }

    #[test]
    fn catches_an_overlap_of_two_owners() {
        let mut log = clean_log();
        log.push(rec("b", 0, "05", 6, "05.2", "05.4"));
        let r = run(&log, &[]);
        assert_eq!(r.overlaps.len(), 1, "{r:?}");
        assert!(r.overlaps[0].0.contains("a (token 5"));
    }

    #[test]
    fn excuses_an_overlap_only_for_a_paused_owner_with_a_lower_token() {
        let mut log = clean_log();
        log.retain(|r| r.fire_time < t("05"));
        // a was paused mid-execution of fire :05 and resumed at :09; b took over at :07.
        log.push(rec("a", 0, "05", 5, "05.1", "09.1"));
        log.push(rec("b", 0, "08", 6, "08.1", "08.3"));
        let pause = Fault {
            kind: FaultKind::Pause,
            target: "a".into(),
            start: t("05.2"),
            end: t("09"),
        };
        let r = run(&log, std::slice::from_ref(&pause));
        assert!(r.overlaps.is_empty(), "{r:?}");
        assert_eq!(r.fenced_overlaps, 1);
        // Without the pause, or with b's token not higher, it is a violation.
        assert_eq!(run(&log, &[]).overlaps.len(), 1);
        let mut same_token = log.clone();
        same_token.last_mut().unwrap().token = 5;
        assert_eq!(run(&same_token, &[pause]).overlaps.len(), 1);
    }

    #[test]
    fn catches_a_fire_run_twice_even_one_after_the_other_on_one_instance() {
        let mut log = clean_log();
        log.push(rec("a", 0, "05", 5, "05.5", "05.6"));
        let r = run(&log, &[]);
        assert!(r.overlaps.is_empty(), "{r:?}");
        assert_eq!(r.duplicates.len(), 1, "{r:?}");
        assert!(!r.clean());
        // A second run that did not end ok is no duplicate.
        log.last_mut().unwrap().outcome = Outcome::Aborted;
        assert!(run(&log, &[]).duplicates.is_empty());
    }

    #[test]
    fn excuses_a_rerun_after_a_kill_that_struck_before_the_marker_was_deleted() {
        let mut log = clean_log();
        log.retain(|r| r.fire_time != t("05"));
        log.push(rec("a", 0, "05", 5, "05.1", "05.3"));
        log.push(rec("b", 0, "05", 6, "05.6", "05.8"));
        let kill = |start: &str, token_b: i64| {
            let mut log = log.clone();
            log.last_mut().unwrap().token = token_b;
            let f = Fault {
                kind: FaultKind::Kill,
                target: "a".into(),
                start: t(start),
                end: t("05.5"),
            };
            run(&log, std::slice::from_ref(&f))
        };
        let r = kill("05.31", 6);
        assert!(r.duplicates.is_empty(), "{r:?}");
        assert_eq!(r.crash_duplicates, 1);
        // A kill long after the run, or a second run with a lower token, excuses nothing.
        assert_eq!(kill("07", 6).duplicates.len(), 1);
        assert_eq!(kill("05.31", 4).duplicates.len(), 1);
        assert_eq!(run(&log, &[]).duplicates.len(), 1);
    }

    #[test]
    fn excuses_a_duplicate_only_for_a_paused_owner_with_a_lower_token() {
        let mut log = clean_log();
        log.retain(|r| r.fire_time != t("05"));
        // a was paused while running :05 and finished it on resuming; b re-ran it meanwhile.
        log.push(rec("a", 0, "05", 5, "05.1", "05.3"));
        log.push(rec("b", 0, "05", 6, "08.1", "08.3"));
        let pause = Fault {
            kind: FaultKind::Pause,
            target: "a".into(),
            start: t("05.2"),
            end: t("08"),
        };
        let r = run(&log, std::slice::from_ref(&pause));
        assert!(r.duplicates.is_empty(), "{r:?}");
        assert_eq!(r.fenced_duplicates, 1);
        assert_eq!(run(&log, &[]).duplicates.len(), 1);
    }

    #[test]
    fn catches_a_token_regression() {
        let mut log = clean_log();
        log[6].token = 4;
        let r = run(&log, &[]);
        assert_eq!(r.token_regressions.len(), 1, "{r:?}");
    }

    #[test]
    fn catches_a_lost_fire_but_excuses_the_gap_after_a_kill() {
        let mut log = clean_log();
        log.retain(|r| r.fire_time != t("06"));
        let r = run(&log, &[]);
        assert_eq!(r.lost_fires.len(), 1, "{r:?}");
        assert!(r.lost_fires[0].0.contains("10:00:06"));
        // A kill at :05.5 excuses fires from :04.5 to :08.5 (TTL 2 s + 1 s).
        let kill = Fault {
            kind: FaultKind::Kill,
            target: "a".into(),
            start: t("05.5"),
            end: t("05.5"),
        };
        assert!(run(&log, &[kill]).lost_fires.is_empty());
        // A graceful rolling restart excuses nothing.
        let rolling = Fault {
            kind: FaultKind::Rolling,
            target: "a".into(),
            start: t("05.5"),
            end: t("06.5"),
        };
        assert_eq!(run(&log, &[rolling]).lost_fires.len(), 1);
        // A cancelled execution does not count as run.
        let mut cancelled = clean_log();
        cancelled[5].outcome = Outcome::Cancelled;
        assert_eq!(run(&cancelled, &[]).lost_fires.len(), 1);
    }

    #[test]
    fn catches_a_stuck_shard_even_inside_a_fault_window() {
        let kill = Fault {
            kind: FaultKind::Kill,
            target: "a".into(),
            start: t("03.5"),
            end: t("03.5"),
        };
        // Allowed: 2 × 1 s + TTL 2 s + 1 s = 5 s between executed fires.
        let mut at_bound = clean_log();
        at_bound.retain(|r| r.fire_time < t("04") || r.fire_time > t("07"));
        assert!(
            run(&at_bound, std::slice::from_ref(&kill))
                .stuck_shards
                .is_empty(),
            ":03 -> :08 is 5 s"
        );
        let mut beyond = clean_log();
        beyond.retain(|r| r.fire_time < t("04") || r.fire_time > t("08"));
        let r = run(&beyond, &[kill]);
        assert_eq!(r.stuck_shards.len(), 1, ":03 -> :09 is 6 s: {r:?}");
    }

    #[test]
    fn catches_an_execution_without_a_token() {
        let mut log = clean_log();
        log[2].token = 0;
        let r = run(&log, &[]);
        assert_eq!(r.untokened.len(), 1);
        // (and the token "drop" to 0 is also a regression)
        assert_eq!(r.token_regressions.len(), 1);
    }
}
