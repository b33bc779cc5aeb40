//! [`ScriptJob`]: run a program for each shard, with the shard in environment variables.
//!
//! No shell is involved: the program and its arguments are fixed when the job is defined, and
//! everything that varies per run (shard, parameters, fire time, token) reaches the program only
//! as environment variables, so no parameter can ever be interpolated into a command line.
//!
//! | variable | value |
//! |---|---|
//! | `SHARDJOB_JOB` | job name |
//! | `SHARDJOB_SHARD` / `SHARDJOB_TOTAL` | shard number / shard count |
//! | `SHARDJOB_SHARD_PARAM` / `SHARDJOB_JOB_PARAM` | parameters |
//! | `SHARDJOB_FIRE_TIME` | scheduled fire, RFC 3339 UTC |
//! | `SHARDJOB_TOKEN` | fencing token |
//! | `SHARDJOB_ATTEMPT`, `SHARDJOB_IS_FAILOVER`, `SHARDJOB_IS_MISFIRE` | run details |
//!
//! Exit status 0 is success, anything else a failure (retried if the job has retries). On
//! cancellation (timeout, lost lease, shutdown) the process is killed.

use std::ffi::OsString;
use std::path::PathBuf;

use chrono::SecondsFormat;
use tokio::process::Command;

use crate::job::{Job, JobError, ShardContext};

/// Runs `program args...` per shard. See the module docs.
#[derive(Debug, Clone)]
pub struct ScriptJob {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl ScriptJob {
    /// A job running `program` (looked up in `PATH` if it has no `/`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Fixed arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A fixed extra environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn command(&self, ctx: &ShardContext) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SHARDJOB_JOB", &ctx.job)
            .env("SHARDJOB_SHARD", ctx.shard.to_string())
            .env("SHARDJOB_TOTAL", ctx.total.to_string())
            .env("SHARDJOB_SHARD_PARAM", &ctx.shard_param)
            .env("SHARDJOB_JOB_PARAM", &ctx.job_param)
            .env(
                "SHARDJOB_FIRE_TIME",
                ctx.fire_time.to_rfc3339_opts(SecondsFormat::Micros, true),
            )
            .env("SHARDJOB_TOKEN", ctx.token.to_string())
            .env("SHARDJOB_ATTEMPT", ctx.attempt.to_string())
            .env("SHARDJOB_IS_FAILOVER", ctx.is_failover.to_string())
            .env("SHARDJOB_IS_MISFIRE", ctx.is_misfire.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

impl Job for ScriptJob {
    async fn run(&self, ctx: ShardContext) -> Result<(), JobError> {
        let mut child = self
            .command(&ctx)
            .spawn()
            .map_err(|e| JobError::Failed(format!("starting {}: {e}", self.program.display())))?;
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| JobError::failed(format!("waiting for {}: {e}", self.program.display())))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(JobError::Failed(format!("{} exited with {status}", self.program.display())))
                }
            }
            _ = ctx.cancel.cancelled() => {
                let _ = child.kill().await;
                Err(JobError::Cancelled)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn ctx(job_param: &str) -> ShardContext {
        ShardContext {
            job: "report".into(),
            shard: 3,
            total: 8,
            shard_param: "eu west".into(),
            job_param: job_param.into(),
            fire_time: "2026-11-21T10:00:05Z".parse().unwrap(),
            token: 4242,
            attempt: 1,
            is_failover: false,
            is_misfire: true,
            cancel: CancellationToken::new(),
            owner_key: String::new(),
        }
    }

    #[tokio::test]
    async fn shard_info_arrives_in_env_and_parameters_are_never_interpolated() {
        let dir = std::env::temp_dir().join(format!("shardjob-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let pwned = dir.join("pwned");
        let hostile = format!(
            "$(touch {}); `touch {}`; '\"",
            pwned.display(),
            pwned.display()
        );
        let job = ScriptJob::new("/bin/sh")
            .args(["-c", r#"printf '%s|%s|%s|%s|%s|%s|%s\n' "$SHARDJOB_JOB" "$SHARDJOB_SHARD" "$SHARDJOB_TOTAL" "$SHARDJOB_SHARD_PARAM" "$SHARDJOB_FIRE_TIME" "$SHARDJOB_TOKEN" "$SHARDJOB_JOB_PARAM" > "$OUT""#])
            .env("OUT", &out);
        job.run(ctx(&hostile)).await.unwrap();
        let line = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            line.trim_end(),
            format!("report|3|8|eu west|2026-11-21T10:00:05.000000Z|4242|{hostile}")
        );
        assert!(!pwned.exists(), "a parameter was executed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn exit_codes_become_outcomes() {
        assert_eq!(ScriptJob::new("true").run(ctx("")).await, Ok(()));
        let err = ScriptJob::new("/bin/sh")
            .args(["-c", "exit 3"])
            .run(ctx(""))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        let err = ScriptJob::new("/nonexistent/tool")
            .run(ctx(""))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("starting /nonexistent/tool"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cancellation_kills_the_process() {
        let c = ctx("");
        let cancel = c.cancel.clone();
        let job = ScriptJob::new("sleep").args(["30"]);
        let run = tokio::spawn(async move { job.run(c).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        cancel.cancel();
        assert_eq!(run.await.unwrap(), Err(JobError::Cancelled));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
