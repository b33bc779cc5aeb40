//! script_job: each shard runs a program, with the shard in `SHARDJOB_*` environment variables
//! (no shell builds a command line from parameters, so none can be interpolated).
//!
//! ```sh
//! cargo run -p shardjob-examples --bin script_job
//! SHARDJOB_SCRIPT=/usr/local/bin/export-orders cargo run -p shardjob-examples --bin script_job
//! ```
//! Without `SHARDJOB_SCRIPT` it runs `/bin/sh -c 'echo ...'` (a fixed script that only reads the
//! variables).

use std::process::ExitCode;
use std::time::Duration;

use shardjob_agent::JobSpec;
use shardjob_agent::kinds::ScriptJob;
use shardjob_examples::{builder_from_env, exit, init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("script_job", run().await)
}

async fn run() -> Result<(), String> {
    let job = match std::env::var("SHARDJOB_SCRIPT") {
        Ok(program) => ScriptJob::new(program),
        Err(_) => ScriptJob::new("/bin/sh").args([
            "-c",
            r#"echo "shard $SHARDJOB_SHARD of $SHARDJOB_TOTAL, fire $SHARDJOB_FIRE_TIME, token $SHARDJOB_TOKEN""#,
        ]),
    };
    let spec = JobSpec::every("script", Duration::from_secs(5))
        .map_err(|e| e.to_string())?
        .shards(4)
        .timeout(Duration::from_secs(60));
    let agent = builder_from_env()?
        .job(spec, job)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
