//! demo-check: reads the demo's execution log after an instance was killed and prints
//! `demo: killed=<id> moved=<n> failover_seconds=<s> double_runs=<n>`.
//!
//! - moved: the shards the killed instance ran at its last fire before the kill;
//! - failover_seconds: from the kill to the first run elsewhere of the last of those shards;
//! - double_runs: (job, shard, fire) run more than once, plus overlapping runs of one shard by
//!   two instances.
//!
//! Usage: `demo-check --log FILE --killed ID --killed-at RFC3339 [--wait SECS]` (with `--wait`,
//! re-reads the log until every moved shard ran elsewhere, or fails after SECS), or
//! `demo-check --log FILE --ready SHARDS --instances N [--wait SECS]`: succeed once one fire ran
//! all SHARDS shards spread over N instances.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shardjob_agent::execlog::{ExecRecord, Outcome};

enum Mode {
    Killed { killed: String, at: DateTime<Utc> },
    Ready { shards: usize, instances: usize },
}

struct Args {
    log: String,
    mode: Mode,
    wait: Duration,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut log, mut killed, mut killed_at, mut wait) = (None, None, None, Duration::ZERO);
    let (mut ready, mut instances) = (None, 1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--log" => log = Some(v),
            "--killed" => killed = Some(v),
            "--killed-at" => {
                killed_at = Some(v.parse().map_err(|e| format!("--killed-at {v:?}: {e}"))?)
            }
            "--wait" => wait = Duration::from_secs(v.parse().map_err(|_| format!("--wait {v:?}"))?),
            "--ready" => ready = Some(v.parse().map_err(|_| format!("--ready {v:?}"))?),
            "--instances" => instances = v.parse().map_err(|_| format!("--instances {v:?}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let mode = match (ready, killed, killed_at) {
        (Some(shards), _, _) => Mode::Ready { shards, instances },
        (None, Some(killed), Some(at)) => Mode::Killed { killed, at },
        _ => return Err("give --ready SHARDS, or --killed ID with --killed-at TIME".into()),
    };
    Ok(Args {
        log: log.ok_or("--log is required")?,
        mode,
        wait,
    })
}

fn read(path: &str) -> Result<Vec<ExecRecord>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    // The last line may be half-written while agents run: skip what does not parse.
    Ok(text
        .lines()
        .filter_map(|l| ExecRecord::from_json(l).ok())
        .collect())
}

struct Report {
    moved: BTreeSet<u32>,
    failover: Option<f64>,
    double_runs: usize,
}

fn analyse(records: &[ExecRecord], killed: &str, at: DateTime<Utc>) -> Report {
    let last_fire = records
        .iter()
        .filter(|r| r.instance == killed && r.fire_time <= at)
        .map(|r| r.fire_time)
        .max();
    let moved: BTreeSet<u32> = records
        .iter()
        .filter(|r| r.instance == killed && Some(r.fire_time) == last_fire)
        .map(|r| r.shard)
        .collect();
    let mut worst: Option<f64> = Some(0.0);
    for shard in &moved {
        let first_elsewhere = records
            .iter()
            .filter(|r| r.shard == *shard && r.instance != killed && r.start > at)
            .map(|r| r.start)
            .min();
        worst = match (worst, first_elsewhere) {
            (Some(w), Some(t)) => Some(w.max((t - at).num_milliseconds() as f64 / 1000.0)),
            _ => None,
        };
    }
    // A fire run to its end twice (an execution the agent cut short, `aborted`, ran no fire).
    let mut per_fire: BTreeMap<(&str, u32, DateTime<Utc>), usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        *per_fire
            .entry((r.job.as_str(), r.shard, r.fire_time))
            .or_default() += 1;
    }
    let repeats = per_fire.values().filter(|n| **n > 1).count();
    let mut overlaps = 0;
    for (i, a) in records.iter().enumerate() {
        for b in &records[i + 1..] {
            let same = a.job == b.job && a.shard == b.shard && a.instance != b.instance;
            if same && a.start < b.end && b.start < a.end {
                overlaps += 1;
            }
        }
    }
    Report {
        failover: worst.filter(|_| !moved.is_empty()),
        moved,
        double_runs: repeats + overlaps,
    }
}

/// True when some fire ran `shards` distinct shards over at least `instances` instances.
fn ready(records: &[ExecRecord], shards: usize, instances: usize) -> bool {
    let mut per_fire: BTreeMap<DateTime<Utc>, (BTreeSet<u32>, BTreeSet<&str>)> = BTreeMap::new();
    for r in records {
        let e = per_fire.entry(r.fire_time).or_default();
        e.0.insert(r.shard);
        e.1.insert(&r.instance);
    }
    per_fire
        .values()
        .any(|(s, i)| s.len() == shards && i.len() >= instances)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-check: {e}");
            return ExitCode::from(2);
        }
    };
    let deadline = Instant::now() + args.wait;
    loop {
        let records = match read(&args.log) {
            Ok(r) => r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("demo-check: {e} (retrying)");
                Vec::new()
            }
            Err(e) => {
                eprintln!("demo-check: {e}");
                return ExitCode::from(2);
            }
        };
        match &args.mode {
            Mode::Ready { shards, instances } => {
                if ready(&records, *shards, *instances) {
                    return ExitCode::SUCCESS;
                }
            }
            Mode::Killed { killed, at } => {
                let report = analyse(&records, killed, *at);
                if let Some(failover) = report.failover {
                    let shards: Vec<String> = report.moved.iter().map(u32::to_string).collect();
                    println!(
                        "demo: shards of {killed} now running elsewhere: [{}]",
                        shards.join(",")
                    );
                    println!(
                        "demo: killed={killed} moved={} failover_seconds={failover:.2} double_runs={}",
                        report.moved.len(),
                        report.double_runs
                    );
                    return if report.double_runs == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    };
                }
            }
        }
        if Instant::now() >= deadline {
            eprintln!("demo-check: the expected runs did not show up in the log in time");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
