//! chaos: the fault-injection campaign with its independent checker.
//!
//! `chaos --seed S --faults K [--ttl SECS] [--agent-bin PATH] [--agents N] [--keep DIR]
//! [--kinds kill,pause,etcd_leader,partition,rolling,leader_kill]` (default: every kind)
//! `[--stream on|off]` (default on: the agents keep the liveness stream to the leader)
//!
//! Starts a 3-member etcd cluster and N (default 4) `chaos_agent` processes (each behind its own
//! proxies to the members), injects K faults drawn by a RNG seeded with S — SIGKILL and restart
//! an agent, SIGSTOP one past its TTL, kill the raft leader member and restart it, black-hole one
//! agent's connections past its TTL, a rolling restart of all agents, SIGKILL the shardjob
//! leader — waiting for recovery after each, then checks the merged execution log against the
//! fault timeline and ends with one line:
//!
//! `bench=chaos seed=S faults=K kill=.. pause=.. etcd_leader=.. partition=.. rolling=..
//! leader_kill=.. executions=N overlaps=0 duplicates=0 lost_fires=0 stuck_shards=0 token_regressions=0 untokened=0
//! fenced_overlaps=N fenced_duplicates=N stream=on crashes=N crash_gap_p50=.. crash_gap_max=..
//! leader_crashes=N leader_crash_gap_max=..` — the crash gaps (seconds until every shard of a
//! SIGKILLed agent had a new owner key) apart for agents that did not lead (the stream's case)
//! and for leaders (nobody streams to a leader: its lease's TTL).
//!
//! Exits non-zero when any violation was found (each is printed first).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use shardjob_agent::execlog::ExecRecord;
use shardjob_integration::benchkit::percentile;
use shardjob_integration::campaign::{Campaign, plans};
use shardjob_integration::checker::{CheckInput, FaultKind, check};
use shardjob_integration::rng::SplitMix64;

struct Args {
    seed: u64,
    faults: usize,
    ttl: u64,
    agents: usize,
    agent_bin: PathBuf,
    keep: Option<PathBuf>,
    kinds: Vec<FaultKind>,
    stream: bool,
}

fn parse() -> Result<Args, String> {
    let default_bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("chaos_agent")))
        .unwrap_or_else(|| PathBuf::from("chaos_agent"));
    let mut a = Args {
        seed: 1,
        faults: 6,
        ttl: 2,
        agents: 4,
        agent_bin: default_bin,
        keep: None,
        kinds: FaultKind::ALL.to_vec(),
        stream: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--seed" => a.seed = num(&v)?,
            "--faults" => a.faults = num(&v)? as usize,
            "--ttl" => a.ttl = num(&v)?,
            "--agents" => a.agents = num(&v)? as usize,
            "--agent-bin" => a.agent_bin = PathBuf::from(v),
            "--keep" => a.keep = Some(PathBuf::from(v)),
            "--stream" => {
                a.stream = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--stream: {v:?} is neither on nor off")),
                }
            }
            "--kinds" => {
                a.kinds = v
                    .split(',')
                    .map(|k| {
                        FaultKind::ALL
                            .into_iter()
                            .find(|f| f.name() == k.trim())
                            .ok_or_else(|| format!("--kinds: unknown fault {k:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.agents < 2 || !(2..=300).contains(&a.ttl) || a.kinds.is_empty() {
        return Err("--agents must be at least 2 and --ttl within 2..=300".into());
    }
    if !a.agent_bin.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build -p shardjob-examples --bin chaos_agent` (same profile) or pass --agent-bin",
            a.agent_bin.display()
        ));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(clean) if clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let dir = tempfile::Builder::new()
        .prefix("shardjob-chaos-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let ttl = Duration::from_secs(args.ttl);
    let mut campaign =
        Campaign::start(&args.agent_bin, args.agents, ttl, args.stream, dir.path()).await?;
    campaign
        .converged(args.agents, Duration::from_secs(60))
        .await?;
    let window_start = Utc::now();
    let mut rng = SplitMix64::new(args.seed);
    for k in 0..args.faults {
        let kind = args.kinds[rng.below(args.kinds.len() as u64) as usize];
        eprintln!("chaos: fault {}/{}: {}", k + 1, args.faults, kind.name());
        campaign
            .inject(kind, &mut rng)
            .await
            .map_err(|e| format!("fault {} ({}): {e}", k + 1, kind.name()))?;
        // A few quiet fires between faults, so their effects stay apart.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let window_end = Utc::now() - chrono::Duration::seconds(2);
    // Let executions of the last fires finish and be logged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| campaign.stop_all());

    let text = std::fs::read_to_string(&campaign.exec_log)
        .map_err(|e| format!("reading the execution log: {e}"))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        records.push(
            ExecRecord::from_json(line)
                .map_err(|e| format!("execution log line {}: {e}", n + 1))?,
        );
    }
    let jobs = plans();
    let report = check(&CheckInput {
        records: &records,
        faults: &campaign.faults,
        jobs: &jobs,
        window: (window_start, window_end),
        ttl,
    });
    for v in report
        .overlaps
        .iter()
        .chain(&report.duplicates)
        .chain(&report.token_regressions)
        .chain(&report.lost_fires)
        .chain(&report.stuck_shards)
        .chain(&report.untokened)
        .take(40)
    {
        eprintln!("chaos: VIOLATION {v}");
    }
    for f in &campaign.faults {
        eprintln!(
            "chaos: fault {} on {} from {} to {}",
            f.kind.name(),
            f.target,
            f.start.format("%H:%M:%S%.3f"),
            f.end.format("%H:%M:%S%.3f")
        );
    }
    if let Some(keep) = &args.keep {
        let _ = std::fs::create_dir_all(keep);
        let _ = std::fs::copy(&campaign.exec_log, keep.join("exec.log"));
        for a in &campaign.agents {
            let _ = std::fs::copy(
                dir.path().join(format!("{}.log", a.id)),
                keep.join(format!("{}.log", a.id)),
            );
        }
    }
    let count = |k: FaultKind| campaign.faults.iter().filter(|f| f.kind == k).count();
    let kinds: Vec<String> = FaultKind::ALL
        .iter()
        .map(|k| format!("{}={}", k.name(), count(*k)))
        .collect();
    for (led, gap) in &campaign.gaps {
        eprintln!("chaos: crash gap {gap:.3} s (leader: {led})");
    }
    let gaps = |led: bool| -> Vec<f64> {
        campaign
            .gaps
            .iter()
            .filter(|(l, _)| *l == led)
            .map(|(_, g)| *g)
            .collect()
    };
    let (crashes, leader_crashes) = (gaps(false), gaps(true));
    let gap_keys = format!(
        "stream={} crashes={} crash_gap_p50={:.3} crash_gap_max={:.3} leader_crashes={} leader_crash_gap_max={:.3}",
        if args.stream { "on" } else { "off" },
        crashes.len(),
        percentile(&crashes, 50.0),
        percentile(&crashes, 100.0),
        leader_crashes.len(),
        percentile(&leader_crashes, 100.0),
    );
    println!(
        "bench=chaos seed={} faults={} {} executions={} overlaps={} duplicates={} lost_fires={} stuck_shards={} token_regressions={} untokened={} fenced_overlaps={} fenced_duplicates={} crash_duplicates={} {gap_keys}",
        args.seed,
        campaign.faults.len(),
        kinds.join(" "),
        report.executions,
        report.overlaps.len(),
        report.duplicates.len(),
        report.lost_fires.len(),
        report.stuck_shards.len(),
        report.token_regressions.len(),
        report.untokened.len(),
        report.fenced_overlaps,
        report.fenced_duplicates,
        report.crash_duplicates,
    );
    Ok(report.clean())
}
