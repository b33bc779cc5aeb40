//! bench-tasks: delayed tasks at volume on one PostgreSQL, shardjob (and, built with
//! `--features graphile`, graphile_worker 0.14.1 beside it, same workload, same server).
//!
//! Cases, each one line `bench=tasks impl=.. case=.. pending=.. rate=.. p50_ms= p99_ms= max_ms=
//! completed_per_s= lost= duplicates= rss_mib=`:
//! - `submit-batched`: the far-ahead backlog (`--pending`, default 1,000,000 due in two days)
//!   submitted in batches of 1000 from 4 clients; `rate` is tasks/s;
//! - `submit-single`: 20,000 single submits from 16 clients;
//! - `steady`: `--rates` (default 5000,20000) tasks due per second for `--secs` (default 10)
//!   each, with the backlog stored; lateness is first start minus due time;
//! - `burst`: `--burst` (default 100,000) tasks due at one instant;
//! - `kill`: 4 agents, 2000 due per second for 12 s, one SIGKILLed 4 s in (TTL 2 s): `max_ms`
//!   is the gap its segments saw.
//!
//! Usage: `bench-tasks [--pending N] [--rates 5000,20000] [--secs 10] [--burst N] [--agents 2]
//! [--cases submit,steady,burst,kill] [--claim-ahead-ms N] [--agent-bin PATH]` (release build:
//! `cargo build --release -p shardjob-examples --bin tasks_agent -p shardjob-integration --bin bench-tasks`).

use std::process::ExitCode;
use std::time::Duration;

use shardjob_integration::EtcdCluster;
use shardjob_integration::benchkit::run_main;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskbench::Line;
use shardjob_integration::taskbench::shardjob::{Bench, QUEUE, SEGMENTS, submit_all};
use shardjob_tasks::{NewTask, Tasks, TasksConfig};

#[derive(Debug, Clone)]
struct Opts {
    pending: u64,
    rates: Vec<u64>,
    secs: u64,
    burst: u64,
    agents: usize,
    cases: Vec<String>,
    bin: Option<std::path::PathBuf>,
    claim_ahead_ms: Option<u64>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        pending: 1_000_000,
        rates: vec![5000, 20000],
        secs: 10,
        burst: 100_000,
        agents: 2,
        cases: ["submit", "steady", "burst", "kill"]
            .map(String::from)
            .to_vec(),
        bin: None,
        claim_ahead_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value {v:?} for {flag}");
        match flag.as_str() {
            "--pending" => o.pending = v.parse().map_err(|_| bad())?,
            "--rates" => {
                o.rates = v
                    .split(',')
                    .map(|r| r.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?
            }
            "--secs" => o.secs = v.parse().map_err(|_| bad())?,
            "--burst" => o.burst = v.parse().map_err(|_| bad())?,
            "--agents" => o.agents = v.parse().map_err(|_| bad())?,
            "--cases" => o.cases = v.split(',').map(String::from).collect(),
            "--agent-bin" => o.bin = Some(v.into()),
            "--claim-ahead-ms" => o.claim_ahead_ms = Some(v.parse().map_err(|_| bad())?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

fn agent_bin(explicit: Option<std::path::PathBuf>) -> Result<std::path::PathBuf, String> {
    let bin = explicit.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("tasks_agent")))
            .unwrap_or_else(|| "tasks_agent".into())
    });
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p shardjob-examples --bin tasks_agent` or pass --agent-bin",
            bin.display()
        ))
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "graphile")]
    {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some("--graphile-worker") {
            let (url, log) = (
                args.get(2).cloned().unwrap_or_default(),
                args.get(3).cloned().unwrap_or_default(),
            );
            return run_main("bench-tasks worker", async move {
                shardjob_integration::taskbench::graphile::worker_main(
                    &url,
                    std::path::Path::new(&log),
                )
                .await?;
                Ok(Vec::new())
            });
        }
    }
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-tasks: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_main("bench-tasks", run(opts))
}

fn say(line: &Line) -> String {
    let text = line.render();
    eprintln!("{text}");
    text
}

async fn run(o: Opts) -> Result<Vec<String>, String> {
    let bin = agent_bin(o.bin.clone())?;
    let pg = PgServer::start().map_err(|e| e.to_string())?;
    let etcd = EtcdCluster::single().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tasks = Tasks::connect(TasksConfig::new([pg.url()]).pool_size(32))
        .await
        .map_err(|e| e.to_string())?;
    tasks
        .ensure_queue(QUEUE, SEGMENTS)
        .await
        .map_err(|e| e.to_string())?;
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut out = Vec::new();
    let mut b = Bench {
        pg: &pg,
        etcd: &etcd,
        tasks: tasks.clone(),
        db,
        agents: Vec::new(),
        bin,
        dir: dir.path().to_owned(),
        pending: 0,
        claim_ahead_ms: o.claim_ahead_ms,
    };
    let far = Duration::from_secs(2 * 86_400);
    let want = |c: &str| o.cases.iter().any(|x| x == c);
    // The backlog, batched: also the batched-submit case.
    let backlog: Vec<NewTask> = (0..o.pending)
        .map(|i| NewTask::after(far + Duration::from_millis(i % 86_400_000)))
        .collect();
    let rate = submit_all(&tasks, backlog, 1000, 4).await?;
    b.pending = o.pending;
    if want("submit") {
        out.push(say(&Line {
            implementation: "shardjob",
            case: "submit-batched".into(),
            pending: 0,
            rate,
            ..Line::default()
        }));
        let singles: Vec<NewTask> = (0..20_000u64)
            .map(|i| NewTask::after(far + Duration::from_millis(i)))
            .collect();
        let rate = submit_all(&tasks, singles, 1, 16).await?;
        b.pending += 20_000;
        out.push(say(&Line {
            implementation: "shardjob",
            case: "submit-single".into(),
            pending: b.pending,
            rate,
            ..Line::default()
        }));
    }
    let ids: Vec<String> = (0..o.agents).map(|i| format!("w{i}")).collect();
    for id in &ids {
        b.start_agent(id)?;
    }
    let alive: Vec<&str> = ids.iter().map(String::as_str).collect();
    b.wait_owned(&alive).await?;
    if want("steady") {
        for &r in &o.rates {
            let n = r * o.secs;
            let lead = Duration::from_secs(3) + Duration::from_secs_f64(n as f64 / 40_000.0);
            let (from, to) = b.schedule(n, o.secs as f64, lead).await?;
            let line = b
                .measure(
                    "steady",
                    r as f64,
                    from,
                    to,
                    Duration::from_secs(o.secs + 120),
                )
                .await?;
            out.push(say(&line));
        }
    }
    if want("burst") {
        let lead = Duration::from_secs(3) + Duration::from_secs_f64(o.burst as f64 / 40_000.0);
        let (from, to) = b.schedule(o.burst, 0.0, lead).await?;
        let line = b
            .measure("burst", o.burst as f64, from, to, Duration::from_secs(180))
            .await?;
        out.push(say(&line));
    }
    if want("kill") {
        let mut ids = ids.clone();
        while ids.len() < 4 {
            let id = format!("w{}", ids.len());
            b.start_agent(&id)?;
            ids.push(id);
        }
        let alive: Vec<&str> = ids.iter().map(String::as_str).collect();
        b.wait_owned(&alive).await?;
        let (from, to) = b.schedule(24_000, 12.0, Duration::from_secs(2)).await?;
        let victim = b.agents.len() - 1;
        let kill_at = from + chrono::Duration::seconds(4);
        let wait = (kill_at - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        b.agents[victim].kill();
        let line = b
            .measure("kill", 2000.0, from, to, Duration::from_secs(120))
            .await?;
        out.push(say(&line));
    }
    for a in b.agents.iter_mut() {
        let _ = a.stop(Duration::from_secs(30));
    }
    #[cfg(feature = "graphile")]
    out.extend(graphile_cases(&o, &pg, dir.path()).await?);
    Ok(out)
}

/// Due times: `n` evenly over `secs` from `lead` ahead.
#[cfg(feature = "graphile")]
fn dues(n: u64, secs: f64, lead: Duration) -> Vec<chrono::DateTime<chrono::Utc>> {
    let from = chrono::Utc::now() + chrono::Duration::from_std(lead).unwrap_or_default();
    let step = (secs * 1e6 / n.max(1) as f64) as i64;
    (0..n as i64)
        .map(|i| from + chrono::Duration::microseconds(i * step))
        .collect()
}

/// The same cases through graphile_worker 0.14.1.
#[cfg(feature = "graphile")]
async fn graphile_cases(
    o: &Opts,
    pg: &PgServer,
    dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    use shardjob_integration::taskbench::graphile::Graphile;
    let mut g = Graphile::new(&pg.url(), dir).await?;
    let mut out = Vec::new();
    let far = dues(o.pending, 86_400.0, Duration::from_secs(2 * 86_400));
    let (_, rate) = g.add(&far, 1000, 4).await?;
    g.pending = o.pending;
    let want = |c: &str| o.cases.iter().any(|x| x == c);
    if want("submit") {
        out.push(say(&Line {
            implementation: "graphile_worker",
            case: "submit-batched".into(),
            rate,
            ..Line::default()
        }));
        let singles = dues(20_000, 20.0, Duration::from_secs(2 * 86_400));
        let (_, rate) = g.add(&singles, 1, 16).await?;
        g.pending += 20_000;
        out.push(say(&Line {
            implementation: "graphile_worker",
            case: "submit-single".into(),
            pending: g.pending,
            rate,
            ..Line::default()
        }));
    }
    for _ in 0..o.agents {
        g.start_worker()?;
    }
    if want("steady") {
        for &r in &o.rates {
            let n = r * o.secs;
            let lead = Duration::from_secs(3) + Duration::from_secs_f64(n as f64 / 20_000.0);
            let d = dues(n, o.secs as f64, lead);
            let (first, _) = g.add(&d, 1000, 4).await?;
            out.push(say(&g
                .measure(
                    "steady",
                    r as f64,
                    first,
                    &d,
                    Duration::from_secs(o.secs + 120),
                )
                .await));
        }
    }
    if want("burst") {
        let lead = Duration::from_secs(3) + Duration::from_secs_f64(o.burst as f64 / 20_000.0);
        let d = dues(o.burst, 0.0, lead);
        let (first, _) = g.add(&d, 1000, 4).await?;
        out.push(say(&g
            .measure("burst", o.burst as f64, first, &d, Duration::from_secs(180))
            .await));
    }
    if want("kill") {
        while g.workers.len() < 4 {
            g.start_worker()?;
        }
        let d = dues(24_000, 12.0, Duration::from_secs(3));
        let (first, _) = g.add(&d, 1000, 4).await?;
        let kill_at = d[0] + chrono::Duration::seconds(4);
        tokio::time::sleep((kill_at - chrono::Utc::now()).to_std().unwrap_or_default()).await;
        g.workers.pop(); // SIGKILL (drop)
        out.push(say(&g
            .measure("kill", 2000.0, first, &d, Duration::from_secs(120))
            .await));
    }
    Ok(out)
}
