//! bench-handoff: the gap of a graceful hand-off, shard by shard, and fires missed.
//!
//! 4 `quickstart` agent processes share a 32-shard job firing every second (TTL 10 s, so a gap
//! can only come from the hand-off itself, never from a lease expiring). Per trial one agent
//! gets SIGTERM; for each of its shards, this process times the old owner's release (the DELETE
//! of its owner key) to the new owner's claim (the PUT), as watch events arrive. Missed fires
//! are counted from the execution log over the whole run. Ends with:
//! `bench=handoff trials=10 gap_p50=.. gap_p99=.. missed=..` (seconds).
//!
//! Usage: `bench-handoff [--trials 10] [--shards 32] [--agent-bin PATH]`

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_integration::EtcdCluster;
use shardjob_integration::benchkit::{Fleet, FleetSpec, agent_bin, percentile, run_main};
use tokio::time::{Instant, timeout};

fn main() -> ExitCode {
    let (mut trials, mut shards, mut bin) = (10usize, 32u32, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        let ok = match flag.as_str() {
            "--trials" => v.parse().map(|n| trials = n).is_ok(),
            "--shards" => v.parse().map(|n| shards = n).is_ok(),
            "--agent-bin" => {
                bin = Some(v.clone().into());
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("bench-handoff: bad flag {flag} {v}");
            return ExitCode::from(2);
        }
    }
    run_main("bench-handoff", async move {
        run(bin, trials, shards).await.map(|l| vec![l])
    })
}

async fn run(
    bin: Option<std::path::PathBuf>,
    trials: usize,
    shards: u32,
) -> Result<String, String> {
    let bin = agent_bin(bin)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let etcd = tokio::task::block_in_place(EtcdCluster::single).map_err(|e| e.to_string())?;
    let mut fleet = Fleet::start(
        &etcd,
        &bin,
        dir.path(),
        "handoff",
        FleetSpec {
            n: 4,
            shards,
            ttl: Duration::from_secs(10),
            stream: false,
        },
    )
    .await?;
    fleet.converged(4).await?;
    let started: DateTime<Utc> = Utc::now();
    let mut gaps = Vec::new();
    for trial in 0..trials {
        let view = fleet.converged(4).await?;
        let victim = trial % fleet.agents.len();
        let id = fleet.agents[victim].id.clone();
        let mine: BTreeSet<u32> = Fleet::owners(&view)
            .into_iter()
            .filter(|(_, o)| *o == id)
            .map(|(s, _)| s)
            .collect();
        let mut watcher = fleet.owner_watch();
        fleet.next_owner_event(&mut watcher).await?; // the initial listing
        fleet.agents[victim].terminate()?;
        let mut released: BTreeMap<u32, Instant> = BTreeMap::new();
        let mut claimed: BTreeMap<u32, Instant> = BTreeMap::new();
        timeout(Duration::from_secs(30), async {
            while claimed.len() < mine.len() {
                for (shard, owner) in fleet.next_owner_event(&mut watcher).await? {
                    if !mine.contains(&shard) {
                        continue;
                    }
                    match owner {
                        None => {
                            released.entry(shard).or_insert_with(Instant::now);
                        }
                        Some(o) if o != id && released.contains_key(&shard) => {
                            claimed.entry(shard).or_insert_with(Instant::now);
                        }
                        Some(_) => {}
                    }
                }
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|_| format!("trial {trial}: the shards of {id} were not handed over"))??;
        for (s, at) in &claimed {
            gaps.push(at.duration_since(released[s]).as_secs_f64());
        }
        tokio::task::block_in_place(|| fleet.agents[victim].wait_exit(Duration::from_secs(30)))?;
        eprintln!(
            "bench-handoff: trial={trial} shards={} worst_gap={:.4}",
            mine.len(),
            gaps.iter()
                .rev()
                .take(mine.len())
                .fold(0.0f64, |a, b| a.max(*b))
        );
        fleet.agents[victim].start()?;
    }
    fleet.converged(4).await?;
    let finished = Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = fleet.records();
    // Every fire strictly inside the run (skipping a second at each end) must have run.
    let ran: BTreeSet<(i64, u32)> = records
        .iter()
        .map(|r| (r.fire_time.timestamp(), r.shard))
        .collect();
    let mut missed = 0;
    for t in (started.timestamp() + 2)..(finished.timestamp() - 1) {
        missed += (0..shards).filter(|s| !ran.contains(&(t, *s))).count();
    }
    for a in &mut fleet.agents {
        let _ = tokio::task::block_in_place(|| a.stop(Duration::from_secs(20)));
    }
    Ok(format!(
        "bench=handoff trials={trials} shards_moved={} gap_p50={:.4} gap_p99={:.4} missed={missed}",
        gaps.len(),
        percentile(&gaps, 50.0),
        percentile(&gaps, 99.0)
    ))
}
