//! tasks-demo: the delayed-task half of `scripts/demo`.
//!
//! ```text
//! tasks-demo submit --pg URL [--queue demo] [--count 3000] [--from-ms 1000] [--over-ms 8000] [--sleep-ms 50]
//! tasks-demo check  --pg URL [--queue demo] --log FILE [--expect N] [--wait 60]
//! ```
//! `submit` creates the queue (16 segments) if needed and submits `count` tasks due evenly from
//! `from-ms` to `from-ms + over-ms` ahead. `check` waits until `expect` tasks are done (or
//! `wait` seconds pass), then prints the checker's verdict as one line,
//! `demo: tasks=<n> ran_once=<n> lost=0 duplicates=0 ...`, and exits non-zero unless clean.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shardjob_integration::taskcheck::{check, read_log};
use shardjob_tasks::{NewTask, Tasks, TasksConfig};

fn parse(args: &[String]) -> Result<(String, HashMap<String, String>), String> {
    let (cmd, rest) = args
        .split_first()
        .ok_or("usage: tasks-demo submit|check --pg URL ...")?;
    let mut flags = HashMap::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_owned(), value.clone());
    }
    Ok((cmd.clone(), flags))
}

fn num(flags: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, String> {
    flags.get(name).map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| format!("--{name} {v:?} is not a number"))
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tasks-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<bool, String> {
    let (cmd, flags) = parse(args)?;
    let pg = flags.get("pg").ok_or("--pg URL is required")?.clone();
    let queue = flags.get("queue").cloned().unwrap_or_else(|| "demo".into());
    match cmd.as_str() {
        "submit" => {
            let tasks = Tasks::connect(TasksConfig::new([pg]))
                .await
                .map_err(|e| e.to_string())?;
            tasks
                .ensure_queue(&queue, 16)
                .await
                .map_err(|e| e.to_string())?;
            let (count, from, over) = (
                num(&flags, "count", 3000)?,
                num(&flags, "from-ms", 1000)?,
                num(&flags, "over-ms", 8000)?,
            );
            let sleep = num(&flags, "sleep-ms", 50)?;
            let batch: Vec<NewTask> = (0..count)
                .map(|i| {
                    NewTask::after(Duration::from_millis(from + i * over / count.max(1)))
                        .payload(serde_json::json!({"sleep_ms": sleep, "n": i}))
                })
                .collect();
            for chunk in batch.chunks(1000) {
                tasks
                    .submit_batch(&queue, chunk.to_vec())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            println!(
                "demo: submitted {count} delayed tasks due over the next {:.0} s",
                (from + over) as f64 / 1000.0
            );
            Ok(true)
        }
        "check" => {
            let log = PathBuf::from(flags.get("log").ok_or("--log FILE is required")?);
            let expect = num(&flags, "expect", 0)?;
            let wait = Duration::from_secs(num(&flags, "wait", 60)?);
            let (db, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let start = Instant::now();
            loop {
                let done: i64 = db
                    .query_one(
                        "SELECT count(*) FROM tasks WHERE queue = $1 AND status = 'done'",
                        &[&queue],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if done as u64 >= expect || start.elapsed() > wait {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let report = check(&[&db], &queue, &read_log(&log)).await?;
            println!("demo: {}", report.line());
            Ok(report.clean() && report.tasks as u64 >= expect)
        }
        other => Err(format!("unknown command {other:?} (submit or check)")),
    }
}
