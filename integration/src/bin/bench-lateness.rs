//! bench-lateness: fire lateness of one process scheduling N jobs that each fire every second,
//! shardjob against tokio-cron-scheduler (tcs).
//!
//! For every N and implementation this program runs itself as a child process, so each line's
//! CPU time and peak RSS are that implementation's alone. shardjob: one agent (with its own
//! etcd) owning N one-shard jobs with `every: 1s`, all firing at the whole second
//! (`fires=aligned`, the burst N cron jobs make) or spread over it with `offset` i/N s
//! (`shardjob-spread`, `fires=spread`); tcs: N `* * * * * *` cron jobs, once with
//! `new_with_channel_size(N)` (`impl=tcs`) and once with the default channel (`impl=tcs-default`).
//! Each child measures a window of `--secs` whole seconds once everything is set up:
//! `bench=lateness impl=shardjob fires=aligned n=10000 p50_ms=.. p99_ms=.. max_ms=.. missed=.. duplicates=.. cpu_s=.. rss_mib=..`
//! (cpu_s is the window's CPU time; rss_mib is the child's peak over its whole life).
//!
//! `--agents K` (default 1) shares shardjob's jobs among K agents in the process (etcd still
//! on the same 2 cores); its lines end with `agents=K`.
//!
//! Usage: `bench-lateness [--n 1000,10000,100000] [--secs 10] [--impls shardjob,shardjob-spread,tcs,tcs-default] [--agents 1]`

use std::process::{ExitCode, Stdio};

use shardjob_integration::benchkit::run_main;
use shardjob_integration::lateness::{self, Fires};

const IMPLS: [&str; 4] = ["shardjob", "shardjob-spread", "tcs", "tcs-default"];

struct Args {
    ns: Vec<usize>,
    secs: u32,
    impls: Vec<String>,
    /// shardjob only: agents sharing the jobs in the one process.
    agents: usize,
    child: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        ns: vec![1000, 10_000, 100_000],
        secs: 10,
        impls: IMPLS.map(String::from).to_vec(),
        agents: 1,
        child: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--child" {
            a.child = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--n" => {
                a.ns = v
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .map_err(|_| format!("--n: bad count {s:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--secs" => a.secs = v.parse().map_err(|_| format!("--secs: bad value {v:?}"))?,
            "--agents" => {
                a.agents = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("--agents: bad count {v:?}"))?
            }
            "--impls" => {
                a.impls = v.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) = a.impls.iter().find(|i| !IMPLS.contains(&i.as_str())) {
                    return Err(format!("--impls: unknown implementation {bad:?}"));
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-lateness: {e}");
            return ExitCode::from(2);
        }
    };
    if args.child {
        let (n, secs, agents) = (
            args.ns.first().copied().unwrap_or(1000),
            args.secs,
            args.agents,
        );
        let which = args.impls.first().cloned().unwrap_or_default();
        return run_main("bench-lateness", async move {
            let line = match which.as_str() {
                "shardjob" => lateness::shardjob::run(n, secs, Fires::Aligned, agents).await?,
                "shardjob-spread" => {
                    lateness::shardjob::run(n, secs, Fires::Spread, agents).await?
                }
                "tcs" => lateness::tcs::run(n, secs, Some(n)).await?,
                _ => lateness::tcs::run(n, secs, None).await?,
            };
            Ok(vec![line])
        });
    }
    for n in &args.ns {
        for which in &args.impls {
            match child(*n, args.secs, which, args.agents) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("bench-lateness: impl={which} n={n}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// Runs one measurement in a child process and returns its summary line.
fn child(n: usize, secs: u32, which: &str, agents: usize) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .args([
            "--child",
            "--n",
            &n.to_string(),
            "--secs",
            &secs.to_string(),
        ])
        .args(["--impls", which])
        .args(["--agents", &agents.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("starting the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find(|l| l.starts_with("bench=lateness")) {
        Some(line) if out.status.success() => Ok(line.to_owned()),
        _ => Err(format!("the child failed ({})", out.status)),
    }
}
