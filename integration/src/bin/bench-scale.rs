//! bench-scale: many in-process agents sharing many jobs on one etcd.
//!
//! Writes `--jobs` jobs of `--shards` shards (every 60 s, spread over the minute, failover off),
//! then starts `--agents` agents in this process and measures:
//! - `cold_s`: first agent start → every shard owned (mine and assigned, per the agents' status);
//! - `steady_writes`: etcd write proposals committed during `--steady` seconds once settled
//!   (`etcd_server_proposals_committed_total` from etcd's `/metrics`; lease keep-alives are not
//!   proposals in etcd 3.4, so this counts puts, deletes and txns that write);
//! - `recover_s`: crash of one agent that is not the leader (`AgentHandle::abort`: its lease is
//!   left to expire) → every shard owned again by the others; `reassign_s` is the part after
//!   its instance key vanished (the rest is the lease running out: up to the TTL);
//! - `rss_mib`: this process's peak RSS with all agents (`rss_per_agent_mib` = that / agents).
//!
//! Ends with `bench=scale jobs=.. shards=.. agents=.. ttl=.. cold_s=.. recover_s=..
//! reassign_s=.. steady_writes=.. rss_mib=.. rss_per_agent_mib=..`.
//!
//! Usage: `bench-scale [--agents 20] [--jobs 10000] [--shards 8] [--ttl 10] [--steady 30]`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shardjob_agent::{Agent, AgentHandle, AgentStatus, job_fn};
use shardjob_coordinator::model::{HumanDuration, JobConfig, Schedule};
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use shardjob_integration::benchkit::{put_jobs, run_main, single_etcd};
use shardjob_integration::lateness::peak_rss_mib;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

#[derive(Debug, Clone, Copy)]
struct Args {
    agents: usize,
    jobs: usize,
    shards: u32,
    ttl: u64,
    steady: u64,
}

const PROPOSALS: &str = "etcd_server_proposals_committed_total";
/// Watch events etcd sent to its watchers (stderr only: how many events the agents' watches
/// cost, the cold start's and the recovery's).
const EVENTS_SENT: &str = "etcd_debugging_mvcc_events_total";

fn main() -> ExitCode {
    let mut a = Args {
        agents: 20,
        jobs: 10_000,
        shards: 8,
        ttl: 10,
        steady: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        let ok = match flag.as_str() {
            "--agents" => v.parse().map(|n| a.agents = n).is_ok(),
            "--jobs" => v.parse().map(|n| a.jobs = n).is_ok(),
            "--shards" => v.parse().map(|n| a.shards = n).is_ok(),
            "--ttl" => v.parse().map(|n| a.ttl = n).is_ok(),
            "--steady" => v.parse().map(|n| a.steady = n).is_ok(),
            _ => false,
        };
        if !ok || a.agents < 2 {
            eprintln!("bench-scale: bad flag {flag} {v} (and at least 2 agents)");
            return ExitCode::from(2);
        }
    }
    run_main("bench-scale", async move { run(a).await.map(|l| vec![l]) })
}

async fn run(a: Args) -> Result<String, String> {
    let (etcd, client, keys) = single_etcd("scale").await?;
    let mut cfg = JobConfig::new(
        Schedule::Every(HumanDuration(Duration::from_secs(60))),
        a.shards,
    );
    cfg.handler = Some("scale".into());
    let jobs = (0..a.jobs).map(|i| {
        let mut c = cfg.clone();
        c.offset = Some(HumanDuration(Duration::from_millis(
            (i * 60_000 / a.jobs.max(1)) as u64,
        )));
        (format!("j{i:05}"), c)
    });
    put_jobs(&client, &keys, jobs).await?;
    let total = a.jobs * a.shards as usize;
    eprintln!("bench-scale: {} jobs x {} shards written", a.jobs, a.shards);
    let events_at_start = etcd.metric(0, EVENTS_SENT).unwrap_or(0.0);

    let runs = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let runs = runs.clone();
        let handler = job_fn(move |_ctx| {
            runs.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        });
        let agent = Agent::builder()
            .endpoints(etcd.endpoints())
            .namespace("scale")
            .instance_id(format!("a{i:02}"))
            .ttl(Duration::from_secs(a.ttl))
            .handler("scale", handler)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        agents.push(agent);
    }
    eprintln!(
        "bench-scale: {} agents started after {:.2}s",
        a.agents,
        t0.elapsed().as_secs_f64()
    );
    let statuses: Vec<watch::Receiver<AgentStatus>> = agents.iter().map(|g| g.status()).collect();
    all_owned(&statuses, total, Duration::from_secs(300)).await?;
    let cold_s = t0.elapsed().as_secs_f64();
    let events_cold = etcd.metric(0, EVENTS_SENT).unwrap_or(0.0);
    eprintln!(
        "bench-scale: cold start: every shard owned after {cold_s:.2}s; etcd sent {:.0} watch events",
        events_cold - events_at_start
    );

    sleep(Duration::from_secs(2)).await;
    let before = etcd.metric(0, PROPOSALS).ok_or("no etcd metrics")?;
    sleep(Duration::from_secs(a.steady)).await;
    let after = etcd.metric(0, PROPOSALS).ok_or("no etcd metrics")?;
    let steady_writes = after - before;
    eprintln!(
        "bench-scale: steady: {steady_writes} writes in {}s; {} executions so far",
        a.steady,
        runs.load(Ordering::Relaxed)
    );

    let per_agent: Vec<usize> = statuses
        .iter()
        .map(|s| s.borrow().owned.values().map(Vec::len).sum())
        .collect();
    eprintln!("bench-scale: shards per agent: {per_agent:?}");
    let victim = statuses
        .iter()
        .rposition(|s| !s.borrow().is_leader)
        .ok_or("every agent leads?")?;
    let moved: usize = statuses[victim].borrow().owned.values().map(Vec::len).sum();
    let crashed = agents.remove(victim);
    let mut statuses = statuses;
    statuses.remove(victim);
    let victim_key = keys.instance(crashed.instance_id());
    let mut instances = PrefixWatcher::new(&client, keys.instances_prefix());
    instances.next().await.map_err(|e| e.to_string())?; // the listing
    // When the leader's assignment writes and the agents' claims arrive, for the split below.
    let writes = puts_seen(&client, keys.assigned_prefix()).await?;
    let claims = puts_seen(&client, keys.owners_root()).await?;
    let events_before_crash = etcd.metric(0, EVENTS_SENT).unwrap_or(0.0);
    let t1 = Instant::now();
    crashed.abort().await;
    let expired = tokio::spawn(async move {
        loop {
            match instances.next().await {
                Ok(WatchEvent::Delete { kv, .. }) if kv.key() == victim_key.as_bytes() => {
                    return Instant::now();
                }
                Ok(_) => {}
                Err(_) => return Instant::now(),
            }
        }
    });
    all_owned(&statuses, total, Duration::from_secs(a.ttl * 3 + 60)).await?;
    let done = Instant::now();
    let events_recovery = etcd.metric(0, EVENTS_SENT).unwrap_or(0.0) - events_before_crash;
    eprintln!("bench-scale: recovery: etcd sent {events_recovery:.0} watch events");
    let recover_s = done.duration_since(t1).as_secs_f64();
    let expired = expired.await.map_err(|e| e.to_string())?;
    let expiry_s = expired.duration_since(t1).as_secs_f64();
    let reassign_s = done.duration_since(expired).as_secs_f64();
    eprintln!(
        "bench-scale: recovery: {moved} shards owned again after {recover_s:.2}s (lease gone after {expiry_s:.2}s, then {reassign_s:.2}s to reassign and claim)"
    );
    let span = |seen: &PutsSeen| {
        let (first, last, n) = seen.take();
        let at =
            |t: Option<Instant>| t.map_or(f64::NAN, |t| t.duration_since(expired).as_secs_f64());
        format!("{n} from {:.2}s to {:.2}s", at(first), at(last))
    };
    eprintln!(
        "bench-scale: after the lease went: assignment writes {}, claims {}",
        span(&writes),
        span(&claims)
    );

    let rss = peak_rss_mib();
    shutdown(agents).await;
    Ok(format!(
        "bench=scale jobs={} shards={} agents={} ttl={} cold_s={cold_s:.2} recover_s={recover_s:.2} reassign_s={reassign_s:.2} steady_writes={steady_writes} rss_mib={rss:.0} rss_per_agent_mib={:.1}",
        a.jobs,
        a.shards,
        a.agents,
        a.ttl,
        rss / a.agents as f64
    ))
}

/// Puts under a prefix, timed as they arrive, from the moment of the call.
struct PutsSeen {
    times: Arc<std::sync::Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PutsSeen {
    /// The first and last put seen, and how many; stops watching.
    fn take(&self) -> (Option<Instant>, Option<Instant>, usize) {
        self.task.abort();
        let times = self.times.lock().map(|t| t.clone()).unwrap_or_default();
        (times.first().copied(), times.last().copied(), times.len())
    }
}

async fn puts_seen(client: &etcd_client::Client, prefix: String) -> Result<PutsSeen, String> {
    let mut watcher = PrefixWatcher::new(client, prefix);
    watcher.next().await.map_err(|e| e.to_string())?; // the listing
    let times: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let sink = times.clone();
    let task = tokio::spawn(async move {
        while let Ok(ev) = watcher.next().await {
            if let (WatchEvent::Put(_), Ok(mut t)) = (ev, sink.lock()) {
                t.push(Instant::now());
            }
        }
    });
    Ok(PutsSeen { times, task })
}

/// Polls the agents' status until together they own `total` shards (a benchmark driver has no
/// single event for "every agent settled").
async fn all_owned(
    statuses: &[watch::Receiver<AgentStatus>],
    total: usize,
    limit: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + limit;
    let mut report = start;
    loop {
        let owned: usize = statuses
            .iter()
            .map(|s| s.borrow().owned.values().map(Vec::len).sum::<usize>())
            .sum();
        if owned == total {
            return Ok(());
        }
        if report.elapsed() >= Duration::from_millis(500) {
            report = Instant::now();
            let at = start.elapsed().as_secs_f64();
            eprintln!("bench-scale: {owned} of {total} shards owned at {at:.1}s");
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {owned} of {total} shards owned after {limit:?}"
            ));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown(agents: Vec<AgentHandle>) {
    let mut tasks = tokio::task::JoinSet::new();
    for a in agents {
        tasks.spawn(a.shutdown());
    }
    while tasks.join_next().await.is_some() {}
}
