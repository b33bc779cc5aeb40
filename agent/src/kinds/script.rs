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
//! Exit status 0 is success, anything else a failure (retried if the job has retries). The
//! program runs in a process group of its own; on cancellation (timeout, lost lease, shutdown)
//! or when the execution is aborted, the whole group is killed (SIGKILL), so what the program
//! started dies with it. Its stdout and stderr go to `tracing` line by line (target
//! `shardjob::script`, with the job and shard), never to the agent's own terminal.

use std::ffi::OsString;
use std::path::PathBuf;

use chrono::SecondsFormat;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
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
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}

/// Kills a process group when dropped, unless disarmed: an execution aborted mid-run (its
/// future dropped) takes the program's children with it too.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            // ESRCH (the group is gone already) is what we want anyway.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends each line of `pipe` to tracing until it closes.
fn forward_lines(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    stream: &'static str,
    job: String,
    shard: u32,
) {
    let Some(pipe) = pipe else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "shardjob::script", job, shard, stream, "{line}");
        }
    });
}

impl Job for ScriptJob {
    async fn run(&self, ctx: ShardContext) -> Result<(), JobError> {
        let mut child = self
            .command(&ctx)
            .spawn()
            .map_err(|e| JobError::Failed(format!("starting {}: {e}", self.program.display())))?;
        // The child leads its own group (process_group(0)): its pid is the group id.
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        let mut group = GroupGuard(pid.map(Pid::from_raw));
        forward_lines(child.stdout.take(), "stdout", ctx.job.clone(), ctx.shard);
        forward_lines(child.stderr.take(), "stderr", ctx.job.clone(), ctx.shard);
        tokio::select! {
            status = child.wait() => {
                // It ended by itself: what it left running in the background is its business.
                group.0 = None;
                let status = status.map_err(|e| JobError::failed(format!("waiting for {}: {e}", self.program.display())))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(JobError::Failed(format!("{} exited with {status}", self.program.display())))
                }
            }
            _ = ctx.cancel.cancelled() => {
                group.kill();
                let _ = child.wait().await;
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
            instance: "me".into(),
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

    /// True while `pid` names a process that is not a zombie.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
            .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
    }

    /// Runs a script that starts a grandchild (`sleep 30 &`), writes both pids, and waits.
    async fn started_with_a_grandchild(
        dir: &std::path::Path,
    ) -> (
        tokio::task::JoinHandle<Result<(), JobError>>,
        CancellationToken,
        [i32; 2],
    ) {
        let pids = dir.join("pids");
        let c = ctx("");
        let cancel = c.cancel.clone();
        let job = ScriptJob::new("/bin/sh")
            .args(["-c", r#"sleep 30 & echo "$$ $!" > "$PIDS.tmp"; mv "$PIDS.tmp" "$PIDS"; echo started; wait"#])
            .env("PIDS", &pids);
        let run = tokio::spawn(async move { job.run(c).await });
        // The script says when it is ready by the file appearing (written by rename).
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&pids) {
                break t;
            }
            tokio::task::yield_now().await;
        };
        let mut it = text.split_whitespace().map(|p| p.parse::<i32>().unwrap());
        let (sh, sleeper) = (it.next().unwrap(), it.next().unwrap());
        assert!(alive(sh) && alive(sleeper));
        (run, cancel, [sh, sleeper])
    }

    async fn gone(pids: [i32; 2]) {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while pids.iter().any(|p| alive(*p)) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a process of the script's group outlived its cancellation");
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("shardjob-script-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (run, cancel, pids) = started_with_a_grandchild(&dir).await;
        cancel.cancel();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("the run did not end at its cancellation");
        assert_eq!(ended.unwrap(), Err(JobError::Cancelled));
        gone(pids).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_aborted_execution_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("shardjob-script-ab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (run, _cancel, pids) = started_with_a_grandchild(&dir).await;
        run.abort();
        let _ = run.await;
        gone(pids).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
