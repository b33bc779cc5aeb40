//! shardjob's side of `bench-lateness`: one in-process agent owning N one-shard jobs that fire
//! every second. [`Fires::Aligned`]: all at the whole second (the worst case, as N cron jobs
//! `* * * * * *` would); [`Fires::Spread`]: job i with `offset` i/N s.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use shardjob_agent::{Agent, job_fn};
use shardjob_coordinator::model::{JobConfig, Schedule};
use tokio::time::Instant;

use super::{Fires, Recorder, line, measure};
use crate::benchkit::{put_jobs, single_etcd};

/// Runs the measurement and returns its summary line.
pub async fn run(n: usize, secs: u32, fires: Fires) -> Result<String, String> {
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
        "shardjob: {n} jobs written in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let recorder: Arc<OnceLock<Recorder>> = Arc::default();
    let rec = recorder.clone();
    let handler = job_fn(move |ctx| {
        let started = Utc::now();
        if let (Some(r), Some(i)) = (rec.get(), job_index(&ctx.job)) {
            r.record(i, ctx.fire_time, started);
        }
        async { Ok(()) }
    });
    let agent = Agent::builder()
        .endpoints(etcd.endpoints())
        .namespace("lateness")
        .instance_id("solo")
        .handler("tick", handler)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let mut status = agent.status();
    let owned = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let count: usize = status
                .borrow_and_update()
                .owned
                .values()
                .map(Vec::len)
                .sum();
            if count >= n {
                return Ok(());
            }
            if status.changed().await.is_err() {
                return Err("the agent stopped".to_owned());
            }
            // Summing N entries on every one of N changes would make this wait quadratic (and
            // hold the status lock the agent publishes through): look at most every 50 ms.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    owned.map_err(|_| format!("the agent did not own all {n} jobs within 600 s"))??;
    eprintln!(
        "shardjob: all {n} jobs owned {:.1}s after the start",
        t0.elapsed().as_secs_f64()
    );

    let measured = measure(&recorder, n, secs, Duration::from_secs(1)).await?;
    // Not a graceful shutdown: handing 100k shards back is not what is measured here, and etcd
    // goes away with this process anyway.
    agent.abort().await;
    Ok(line("shardjob", fires, n, &measured))
}

fn job_index(job: &str) -> Option<usize> {
    job.strip_prefix('j')?.parse().ok()
}
