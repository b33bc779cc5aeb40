//! quickstart: one sharded job; each process prints, once per fire, the shards it ran.
//!
//! ```sh
//! SHARDJOB_INSTANCE_ID=a cargo run -p shardjob-examples --bin quickstart &
//! SHARDJOB_INSTANCE_ID=b cargo run -p shardjob-examples --bin quickstart &
//! ```
//! `SHARDJOB_JOB` (default `quickstart`) and `SHARDJOB_SHARDS` (default 12) shape the job; it
//! fires every second. With `SHARDJOB_PG_URL` set, the agent also runs the delayed-task queue
//! `demo` (16 segments; see `tasks_agent`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_examples::{
    builder_from_env, exit, init_logging, logging_task_handler, shutdown_signal, tasks_from_env,
};
use shardjob_tasks::AgentBuilderExt;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("quickstart", run().await)
}

async fn run() -> Result<(), String> {
    let job = std::env::var("SHARDJOB_JOB").unwrap_or_else(|_| "quickstart".into());
    let shards: u32 = std::env::var("SHARDJOB_SHARDS")
        .unwrap_or_else(|_| "12".into())
        .parse()
        .map_err(|_| "SHARDJOB_SHARDS must be a number".to_owned())?;
    let spec = JobSpec::every(job, Duration::from_secs(1))
        .map_err(|e| e.to_string())?
        .shards(shards);

    // Handlers report (fire, shard); one printer task batches them into a line per fire.
    let (tx, rx) = mpsc::unbounded_channel::<(DateTime<Utc>, u32)>();
    let handler = job_fn(move |ctx: ShardContext| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((ctx.fire_time, ctx.shard));
            Ok(())
        }
    });
    let mut builder = builder_from_env()?.job(spec, handler);
    // With a task store, the same agents also run the delayed-task queue `demo` (16 segments).
    if let Some((tasks, log)) = tasks_from_env().await? {
        let queue = tasks.queue("demo", logging_task_handler(log)).segments(16);
        builder = builder.queue(queue).map_err(|e| e.to_string())?;
    }
    let agent = builder.start().await.map_err(|e| e.to_string())?;
    let id = agent.instance_id().to_owned();
    println!("{id}: started");
    tokio::spawn(print_per_fire(id.clone(), rx));
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    println!("{id}: stopped after handing its shards over");
    Ok(())
}

async fn print_per_fire(id: String, mut rx: mpsc::UnboundedReceiver<(DateTime<Utc>, u32)>) {
    let mut pending: BTreeMap<DateTime<Utc>, BTreeSet<u32>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((fire, shard)) => { pending.entry(fire).or_default().insert(shard); }
                None => return,
            },
            _ = tick.tick() => {
                // A fire is printed once its runs have had half a second to report.
                let cutoff = Utc::now() - chrono::Duration::milliseconds(500);
                let ready: Vec<DateTime<Utc>> = pending.range(..cutoff).map(|(f, _)| *f).collect();
                for fire in ready {
                    if let Some(shards) = pending.remove(&fire) {
                        let list: Vec<String> = shards.iter().map(u32::to_string).collect();
                        println!("{id}: fire {} ran shards [{}]", fire.format("%H:%M:%S"), list.join(","));
                    }
                }
            }
        }
    }
}
