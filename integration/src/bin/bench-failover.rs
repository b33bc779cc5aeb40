//! bench-failover: how long a SIGKILLed agent's shards stay unowned, and until they run again.
//!
//! 4 `quickstart` agent processes share a 32-shard job firing every second. Per trial one agent
//! is SIGKILLed (no hand-off, no revoke). Measured from the kill, as seen by this process:
//! - ownership gap: until the last of the victim's shards has a new owner key (watch events);
//! - run gap: until the last of them has started a run elsewhere (execution log).
//!
//! Then the victim is restarted and the fleet re-converges. Ends with, per TTL:
//! `bench=failover ttl=2 trials=20 gap_p50=.. gap_p99=.. gap_max=.. run_gap_p99=..` (seconds).
//!
//! Then the same with the liveness stream on (`SHARDJOB_LIVENESS=127.0.0.1:0`), per TTL:
//! `bench=failover mode=stream ttl=10 trials=20 gap_p50=.. ...`. The victims there are the
//! agents that do not lead (a leader's crash still waits for its lease: nobody streams to it),
//! and each trial waits until the restarted victim's stream is attached again.
//!
//! Usage: `bench-failover [--trials-2 20] [--trials-10 5] [--stream-trials 20] [--shards 32]
//! [--agent-bin PATH]`

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use shardjob_integration::EtcdCluster;
use shardjob_integration::benchkit::{ATTACHED, Fleet, FleetSpec, agent_bin, percentile, run_main};
use tokio::time::{Instant, timeout};

fn main() -> ExitCode {
    let mut trials = [(2u64, 20usize), (10, 5)];
    let mut stream_trials = 20usize;
    let mut shards = 32u32;
    let mut bin = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        let parsed = match flag.as_str() {
            "--trials-2" => v.parse().map(|n| trials[0].1 = n).is_ok(),
            "--trials-10" => v.parse().map(|n| trials[1].1 = n).is_ok(),
            "--stream-trials" => v.parse().map(|n| stream_trials = n).is_ok(),
            "--shards" => v.parse().map(|n| shards = n).is_ok(),
            "--agent-bin" => {
                bin = Some(v.clone().into());
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("bench-failover: bad flag {flag} {v}");
            return ExitCode::from(2);
        }
    }
    run_main("bench-failover", async move {
        let bin = agent_bin(bin)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let etcd = tokio::task::block_in_place(EtcdCluster::single).map_err(|e| e.to_string())?;
        let mut lines = Vec::new();
        for (ttl, n) in trials.into_iter().filter(|(_, n)| *n > 0) {
            lines.push(run(&etcd, &bin, dir.path(), ttl, n, shards, false).await?);
        }
        for ttl in [2, 10].into_iter().filter(|_| stream_trials > 0) {
            lines.push(run(&etcd, &bin, dir.path(), ttl, stream_trials, shards, true).await?);
        }
        Ok(lines)
    })
}

async fn run(
    etcd: &EtcdCluster,
    bin: &std::path::Path,
    dir: &std::path::Path,
    ttl: u64,
    trials: usize,
    shards: u32,
    stream: bool,
) -> Result<String, String> {
    let ttl_d = Duration::from_secs(ttl);
    let ns = format!("failover{ttl}{}", if stream { "s" } else { "" });
    let spec = FleetSpec {
        n: 4,
        shards,
        ttl: ttl_d,
        stream,
    };
    let mut fleet = Fleet::start(etcd, bin, dir, &ns, spec).await?;
    let (mut gaps, mut run_gaps) = (Vec::new(), Vec::new());
    let mut next = 0usize;
    // Per agent: how many attachments its log held when it was last started.
    let mut attach_seen = vec![0usize; fleet.agents.len()];
    for trial in 0..trials {
        let mut view = fleet.converged(4).await?;
        if stream {
            // Every agent but the leader attached (each logs one line per attachment).
            view = attached(&mut fleet, view, &attach_seen).await?;
        }
        let leader = view.leader.as_ref().map(|l| l.instance.clone());
        let mut victim = next % fleet.agents.len();
        if stream && leader.as_deref() == Some(fleet.agents[victim].id.as_str()) {
            victim = (victim + 1) % fleet.agents.len();
        }
        next = victim + 1;
        let id = fleet.agents[victim].id.clone();
        let mine: BTreeSet<u32> = Fleet::owners(&view)
            .into_iter()
            .filter(|(_, o)| *o == id)
            .map(|(s, _)| s)
            .collect();
        let mut watcher = fleet.owner_watch();
        fleet.next_owner_event(&mut watcher).await?; // the initial listing
        let (killed, killed_utc) = (Instant::now(), Utc::now());
        fleet.agents[victim].kill();
        let mut moved = BTreeSet::new();
        timeout(ttl_d * 3 + Duration::from_secs(10), async {
            while moved.len() < mine.len() {
                for (shard, owner) in fleet.next_owner_event(&mut watcher).await? {
                    if mine.contains(&shard) && owner.as_ref().is_some_and(|o| *o != id) {
                        moved.insert(shard);
                    }
                }
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|_| format!("trial {trial}: shards of {id} were not taken over"))??;
        gaps.push(killed.elapsed().as_secs_f64());
        // Runs elsewhere: from the log (records are written at the end of each run).
        let deadline = Instant::now() + Duration::from_secs(10);
        let run_gap = loop {
            let records = fleet.records();
            let firsts: Vec<f64> = mine
                .iter()
                .filter_map(|s| {
                    records
                        .iter()
                        .filter(|r| r.shard == *s && r.instance != id && r.start > killed_utc)
                        .map(|r| (r.start - killed_utc).num_milliseconds() as f64 / 1000.0)
                        .reduce(f64::min)
                })
                .collect();
            if firsts.len() == mine.len() {
                break firsts.into_iter().fold(0.0, f64::max);
            }
            if Instant::now() > deadline {
                return Err(format!("trial {trial}: moved shards did not run"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        run_gaps.push(run_gap);
        eprintln!(
            "bench-failover: stream={stream} ttl={ttl} trial={trial} victim={id} moved={} gap={:.3} run_gap={run_gap:.3}",
            mine.len(),
            gaps[trial]
        );
        attach_seen[victim] = fleet.agents[victim].log_count(ATTACHED);
        fleet.agents[victim].start()?;
    }
    fleet.converged(4).await?;
    for a in &mut fleet.agents {
        let _ = a.stop(Duration::from_secs(20));
    }
    let mode = if stream { "mode=stream " } else { "" };
    Ok(format!(
        "bench=failover {mode}ttl={ttl} trials={trials} gap_p50={:.3} gap_p99={:.3} gap_max={:.3} run_gap_p99={:.3}",
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0),
        percentile(&gaps, 100.0),
        percentile(&run_gaps, 99.0)
    ))
}

/// Waits until every agent but the leader has attached its stream since it was last started
/// (`seen`: the attachments its log held then), and returns the view read after that.
async fn attached(
    fleet: &mut Fleet,
    mut view: shardjob_coordinator::view::ClusterView,
    seen: &[usize],
) -> Result<shardjob_coordinator::view::ClusterView, String> {
    for _ in 0..3 {
        let leader = view.leader.as_ref().map(|l| l.instance.clone());
        for (a, seen) in fleet.agents.iter().zip(seen) {
            if Some(&a.id) == leader.as_ref() {
                continue;
            }
            tokio::task::block_in_place(|| a.wait_log(ATTACHED, *seen, Duration::from_secs(20)))?;
        }
        let again = fleet.converged(4).await?;
        if again.leader.as_ref().map(|l| &l.instance) == leader.as_ref() {
            return Ok(again);
        }
        view = again; // the leader changed meanwhile: wait for the new one's streams
    }
    Err("the leader kept changing".into())
}
