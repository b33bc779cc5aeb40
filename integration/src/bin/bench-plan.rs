//! bench-plan: the leader's passes at bench-scale's size, pure (no etcd, no agents).
//!
//! Feeds a [`Rebalancer`] `--instances` instances and `--jobs` sticky jobs of `--shards`
//! shards, plans the cold start, then removes `--departures` instances one at a time (a
//! crash each, with `rebalance_delay` 0) and plans each departure. Measures the CPU of a pass
//! (plan and page encoding: what a crash costs the leader before its first write), the shards
//! each departure moves against the departed instance's own (`orphans`: a departure that
//! moves only those moves the fewest), and the bytes of the pages written.
//!
//! Ends with `bench=plan jobs=.. shards=.. instances=.. cold_ms=.. depart_ms=.. orphans=..
//! moves=.. pages=.. page_bytes=..` (the departure figures: the median pass's time, totals
//! over every departure for the rest).
//!
//! Usage: `bench-plan [--instances 20] [--jobs 10000] [--shards 8] [--departures 5]`

use std::process::ExitCode;
use std::time::{Duration, Instant as StdInstant};

use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{HumanDuration, JobConfig, Schedule};
use shardjob_coordinator::rebalance::{
    Observed, Pass, RebalanceOptions, Rebalancer, Stored, World,
};
use tokio::time::Instant;

struct Args {
    instances: usize,
    jobs: usize,
    shards: u32,
    departures: usize,
}

fn main() -> ExitCode {
    let mut a = Args {
        instances: 20,
        jobs: 10_000,
        shards: 8,
        departures: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        let ok = match flag.as_str() {
            "--instances" => v.parse().map(|n| a.instances = n).is_ok(),
            "--jobs" => v.parse().map(|n| a.jobs = n).is_ok(),
            "--shards" => v.parse().map(|n| a.shards = n).is_ok(),
            "--departures" => v.parse().map(|n| a.departures = n).is_ok(),
            _ => false,
        };
        if !ok || a.departures >= a.instances {
            eprintln!("bench-plan: bad flag {flag} {v} (and fewer departures than instances)");
            return ExitCode::from(2);
        }
    }
    match run(&a) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-plan: {e}");
            ExitCode::FAILURE
        }
    }
}

fn instance(i: usize) -> String {
    format!("agent-{i:03}")
}

fn run(a: &Args) -> Result<String, String> {
    let keys = Keys::new("bench").map_err(|e| e.to_string())?;
    let mut world = World::new(keys.clone());
    for i in 0..a.instances {
        let id = instance(i);
        let info = serde_json::json!({"id": id, "handlers": ["scale"],
            "version": env!("CARGO_PKG_VERSION"), "started_at": "2026-01-01T00:00:00Z"});
        world.put(&keys.instance(&id), info.to_string().as_bytes());
    }
    let every = Schedule::Every(HumanDuration(Duration::from_secs(60)));
    let mut cfg = JobConfig::new(every, a.shards);
    cfg.handler = Some("scale".into());
    let cfg = serde_json::to_vec(&cfg).map_err(|e| e.to_string())?;
    for j in 0..a.jobs {
        world.put(&keys.job(&format!("scale-{j:05}")), &cfg);
    }
    let t0 = Instant::now();
    let options = RebalanceOptions {
        rebalance_delay: Duration::ZERO,
        ..RebalanceOptions::default()
    };
    let mut r = Rebalancer::start(world, Stored::default(), options, t0);
    let mut at = t0 + Duration::from_secs(10);
    let (cold, pass) = timed(|| r.poll(at)).ok_or("the cold start planned nothing")?;
    r.written(pass, at);

    let (mut times, mut orphans, mut moves, mut pages, mut bytes) = (vec![], 0, 0, 0, 0);
    for d in 0..a.departures {
        let gone = instance(a.instances - 1 - d);
        orphans += r
            .world()
            .assignments
            .values()
            .map(|rec| {
                (0..rec.owners.len() as u32)
                    .filter(|&s| rec.owner(s).is_some_and(|o| o.as_str() == gone))
                    .count()
            })
            .sum::<usize>();
        at += Duration::from_secs(1);
        r.on_event(
            Observed::Delete {
                key: keys.instance(&gone),
            },
            at,
        );
        at += Duration::from_secs(1);
        let (took, pass) = timed(|| r.poll(at)).ok_or("a departure planned nothing")?;
        moves += pass.plan.moves;
        pages += pass.pages.len();
        bytes += page_bytes(&pass);
        eprintln!(
            "bench-plan: {gone} gone: {:.1} ms, {} moves, {} pages",
            ms(took),
            pass.plan.moves,
            pass.pages.len()
        );
        times.push(took);
        r.written(pass, at);
    }
    times.sort();
    let depart = times.get(times.len() / 2).copied().unwrap_or_default();
    Ok(format!(
        "bench=plan jobs={} shards={} instances={} cold_ms={:.1} depart_ms={:.1} orphans={orphans} moves={moves} pages={pages} page_bytes={bytes}",
        a.jobs,
        a.shards,
        a.instances,
        ms(cold),
        ms(depart)
    ))
}

fn timed<T>(f: impl FnOnce() -> Option<T>) -> Option<(Duration, T)> {
    let start = StdInstant::now();
    f().map(|v| (start.elapsed(), v))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn page_bytes(pass: &Pass) -> usize {
    pass.pages
        .iter()
        .filter_map(|p| p.value.as_ref())
        .map(Vec::len)
        .sum()
}
