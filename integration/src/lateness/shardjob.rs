//! shardjob's side of `bench-lateness`: in-process agents (one by default) sharing N one-shard
//! jobs that fire every second. [`Fires::Aligned`]: all at the whole second (the worst case, as
//! N cron jobs `* * * * * *` would); [`Fires::Spread`]: job i with `offset` i/N s.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use shardjob_agent::{Agent, job_fn};
use shardjob_coordinator::model::{JobConfig, Schedule};
use tokio::time::Instant;

use super::{Fires, Recorder, line, measure, peak_rss_mib};
use crate::benchkit::{put_jobs, single_etcd};

/// Runs the measurement with `agents` agents in this process and returns its summary line.
pub async fn run(n: usize, secs: u32, fires: Fires, agents: usize) -> Result<String, String> {
    let (etcd, client, keys) = single_etcd("lateness").await?;
    let mut cfg = JobConfig::new(
        Schedule::Every("1s".parse().map_err(|e| format!("{e}"))?),
        1,
    );
    cfg.handler = Some("tick".into());
    let t0 = Instant::now();
    let config = |i: usize| {
        let mut c = cfg.clone();
        if fires == Fires::Spread {
            let ms = (i * 1000 / n.max(1)) as u64;
            c.offset = Some(shardjob_coordinator::model::HumanDuration(
                Duration::from_millis(ms),
            ));
        }
        c
    };
    put_jobs(&client, &keys, (0..n).map(|i| (format!("j{i}"), config(i)))).await?;
    eprintln!(
        "shardjob: {n} jobs written in {:.1}s, peak RSS {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        peak_rss_mib()
    );

    let recorder: Arc<OnceLock<Recorder>> = Arc::default();
    let handler = || {
        let rec = recorder.clone();
        job_fn(move |ctx| {
            let started = Utc::now();
            if let (Some(r), Some(i)) = (rec.get(), job_index(&ctx.job)) {
                r.record(i, ctx.fire_time, started);
            }
            async { Ok(()) }
        })
    };
    let mut started = Vec::new();
    for i in 0..agents.max(1) {
        let id = if agents <= 1 {
            "solo".to_owned()
        } else {
            format!("a{i}")
        };
        let agent = Agent::builder()
            .endpoints(etcd.endpoints())
            .namespace("lateness")
            .instance_id(id)
            .handler("tick", handler())
            .start()
            .await
            .map_err(|e| e.to_string())?;
        started.push(agent);
    }
    let mut statuses: Vec<_> = started.iter().map(|a| a.status()).collect();
    // Measured once the cluster has settled: every job owned and, with several agents, each
    // holding its share (99 % of n / K; the first agents to start take everything, and the
    // leader moves shards to the later ones). Until 2026-12-01 it waited only for every job
    // to be owned, and so measured the hand-off to the last agent in some runs and not others.
    let k = started.len();
    let owned = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let each: Vec<usize> = statuses
                .iter_mut()
                .map(|s| {
                    s.borrow_and_update()
                        .owned
                        .values()
                        .map(Vec::len)
                        .sum::<usize>()
                })
                .collect();
            let count: usize = each.iter().sum();
            let shared = k == 1 || each.iter().all(|&c| c * k * 100 >= n * 99);
            if count >= n && shared {
                return Ok(());
            }
            if statuses.iter().any(|s| s.has_changed().is_err()) {
                return Err("an agent stopped".to_owned());
            }
            // Summing N entries on every one of N changes would make this wait quadratic (and
            // hold the status locks the agents publish through): look every 50 ms.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    owned.map_err(|_| format!("the agents did not own all {n} jobs within 600 s"))??;
    eprintln!(
        "shardjob: all {n} jobs owned, shared among the agents, {:.1}s after the start, peak RSS {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        peak_rss_mib()
    );

    let measured = measure(&recorder, n, secs, Duration::from_secs(1)).await?;
    // Not a graceful shutdown: handing 100k shards back is not what is measured here, and etcd
    // goes away with this process anyway.
    for agent in started {
        agent.abort().await;
    }
    let line = line("shardjob", fires, n, &measured);
    // The default line stays as it was; more agents say so.
    Ok(if agents > 1 {
        format!("{line} agents={agents}")
    } else {
        line
    })
}

fn job_index(job: &str) -> Option<usize> {
    job.strip_prefix('j')?.parse().ok()
}
