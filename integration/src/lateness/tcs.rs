//! tokio-cron-scheduler's side of `bench-lateness`: N cron jobs `* * * * * *` (every second),
//! each recording its start. A tcs job is not told which fire it is; every-second cron fires are
//! whole seconds, so the scheduled instant is taken as the start's whole second. A fire more
//! than a second late would be attributed to the wrong second (it shows as a duplicate and a miss).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::{Fires, Recorder, line, measure};

/// Runs the measurement with tcs's default channel size (`channel: None`) or an explicit one.
pub async fn run(n: usize, secs: u32, channel: Option<usize>) -> Result<String, String> {
    let t0 = Instant::now();
    let mut sched = match channel {
        Some(size) => JobScheduler::new_with_channel_size(size).await,
        None => JobScheduler::new().await,
    }
    .map_err(|e| format!("creating the scheduler: {e}"))?;
    let recorder: Arc<OnceLock<Recorder>> = Arc::default();
    for i in 0..n {
        let rec = recorder.clone();
        let job = Job::new_async("* * * * * *", move |_id, _sched| {
            let started = Utc::now();
            if let Some(r) = rec.get() {
                let scheduled = DateTime::from_timestamp(started.timestamp(), 0).unwrap_or(started);
                r.record(i, scheduled, started);
            }
            Box::pin(async {})
        })
        .map_err(|e| format!("creating job {i}: {e}"))?;
        sched
            .add(job)
            .await
            .map_err(|e| format!("adding job {i}: {e}"))?;
    }
    sched
        .start()
        .await
        .map_err(|e| format!("starting the scheduler: {e}"))?;
    eprintln!("tcs: {n} jobs added in {:.1}s", t0.elapsed().as_secs_f64());

    let measured = measure(&recorder, n, secs, Duration::from_secs(2)).await?;
    sched
        .shutdown()
        .await
        .map_err(|e| format!("shutting down: {e}"))?;
    let name = if channel.is_some() {
        "tcs"
    } else {
        "tcs-default"
    };
    Ok(line(name, Fires::Aligned, n, &measured))
}
