//! What a job definition promises, through a real agent against real etcd: parameters reach the
//! context, the overwrite rule, timeouts, retries and both concurrency limits, a script job,
//! and a wrong password from the agent's side.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shardjob_agent::kinds::ScriptJob;
use shardjob_agent::{AgentError, JobError, JobSpec, ShardContext, job_fn};
use shardjob_coordinator::connect::ConnectError;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::decode_job;
use shardjob_coordinator::ops;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{builder, wait_owned};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A job that never fires by itself: these tests run it through triggers.
fn never(name: &str) -> JobSpec {
    JobSpec::new(name, "0 0 0 1 1 * 2099").unwrap()
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(PATIENCE, rx.recv()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_and_job_params_reach_the_context() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("params").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = never("p")
        .shards(2)
        .shard_param(0, "eu")
        .shard_param(1, "us")
        .job_param("batch=500");
    let agent = builder(&etcd.endpoints(), "params", "a")
        .job(
            spec,
            job_fn(move |ctx: ShardContext| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((ctx.shard, ctx.shard_param, ctx.job_param, ctx.token));
                    Ok(())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    wait_owned(&[agent.status()], "p", 2, |_| true).await;
    ops::trigger(&client, &keys, "p").await.unwrap();
    let mut seen = [next(&mut rx).await, next(&mut rx).await];
    seen.sort();
    assert_eq!(
        seen.iter()
            .map(|(s, sp, jp, _)| (*s, sp.as_str(), jp.as_str()))
            .collect::<Vec<_>>(),
        [(0, "eu", "batch=500"), (1, "us", "batch=500")]
    );
    assert!(seen.iter().all(|(_, _, _, token)| *token > 0));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_config_wins_unless_the_code_says_overwrite() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("overwrite").unwrap();
    let stored = |client: etcd_client::Client| {
        let key = keys.job("o");
        async move {
            let resp = client.clone().get(key.clone(), None).await.unwrap();
            decode_job(&key, "o", resp.kvs()[0].value()).unwrap().total
        }
    };
    let start = |spec: JobSpec| {
        let endpoints = etcd.endpoints();
        async move {
            builder(&endpoints, "overwrite", "a")
                .job(spec, job_fn(|_| async { Ok(()) }))
                .start()
                .await
                .unwrap()
        }
    };
    // First definition: published.
    start(never("o").shards(2)).await.shutdown().await.unwrap();
    assert_eq!(stored(client.clone()).await, 2);
    // An operator changes it; the same code starting again does not undo that.
    ops::update_job(&client, &keys, "o", |c| c.total = 3)
        .await
        .unwrap();
    start(never("o").shards(2)).await.shutdown().await.unwrap();
    assert_eq!(stored(client.clone()).await, 3, "etcd's config must win");
    // With overwrite, the code's definition replaces it.
    start(never("o").shards(2).overwrite(true))
        .await
        .shutdown()
        .await
        .unwrap();
    assert_eq!(stored(client.clone()).await, 2, "overwrite must replace it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_retries_of_a_real_agent() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("retries").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    // Attempt 1 hangs past the timeout (cancelled: its token fires), attempt 2 fails, attempt
    // 3 succeeds: with retry_timeouts and 2 retries the execution ends ok after 3 attempts.
    let handler = job_fn(move |ctx: ShardContext| {
        let (tx, seen) = (tx.clone(), seen.clone());
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(ctx.attempt);
            match ctx.attempt {
                1 => {
                    ctx.cancel.cancelled().await;
                    Err(JobError::Cancelled)
                }
                2 => Err(JobError::failed("once more")),
                _ => Ok(()),
            }
        }
    });
    let spec = never("r")
        .timeout(Duration::from_millis(300))
        .retries(2)
        .retry_timeouts(true);
    let agent = builder(&etcd.endpoints(), "retries", "a")
        .job(spec, handler)
        .start()
        .await
        .unwrap();
    let statuses = [agent.status()];
    wait_owned(&statuses, "r", 1, |_| true).await;
    ops::trigger(&client, &keys, "r").await.unwrap();
    assert_eq!(
        [
            next(&mut rx).await,
            next(&mut rx).await,
            next(&mut rx).await
        ],
        [1, 2, 3]
    );
    let mut status = agent.status();
    timeout(PATIENCE, status.wait_for(|s| s.executions == 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "no fourth attempt");
    agent.shutdown().await.unwrap();
}

/// Counts runs in progress and the most seen at once.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn most(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_concurrency_limits_hold_under_a_real_agent() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("limits").unwrap();
    let (one, all) = (Gauge::default(), Gauge::default());
    let handler = |job: Option<Gauge>, all: Gauge| {
        job_fn(move |_| {
            let (job, all) = (job.clone(), all.clone());
            async move {
                all.enter();
                job.iter().for_each(Gauge::enter);
                // Long enough for the other shards' runs to be started and wait.
                tokio::time::sleep(Duration::from_millis(100)).await;
                job.iter().for_each(Gauge::leave);
                all.leave();
                Ok(())
            }
        })
    };
    // Job "one" allows 1 run at a time; the agent allows 3 across both jobs (4 + 4 shards).
    let agent = builder(&etcd.endpoints(), "limits", "a")
        .max_concurrent_executions(3)
        .job(
            never("one").shards(4).max_concurrency(1),
            handler(Some(one.clone()), all.clone()),
        )
        .job(never("many").shards(4), handler(None, all.clone()))
        .start()
        .await
        .unwrap();
    let statuses = [agent.status()];
    wait_owned(&statuses, "one", 4, |_| true).await;
    wait_owned(&statuses, "many", 4, |_| true).await;
    ops::trigger(&client, &keys, "one").await.unwrap();
    ops::trigger(&client, &keys, "many").await.unwrap();
    let mut status = agent.status();
    timeout(PATIENCE, status.wait_for(|s| s.executions == 8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.most(), 1, "job one ran two shards at once");
    assert_eq!(
        all.most(),
        3,
        "the agent's limit of 3 was not reached or was passed"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_job_runs_under_a_real_agent_with_the_shard_in_its_environment() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("script").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = ScriptJob::new("/bin/sh")
        .args([
            "-c",
            r#"echo "$SHARDJOB_SHARD $SHARDJOB_TOTAL $SHARDJOB_TOKEN" > "$DIR/shard-$SHARDJOB_SHARD""#,
        ])
        .env("DIR", dir.path());
    let agent = builder(&etcd.endpoints(), "script", "a")
        .job(never("s").shards(2), script)
        .start()
        .await
        .unwrap();
    let statuses = [agent.status()];
    wait_owned(&statuses, "s", 2, |_| true).await;
    ops::trigger(&client, &keys, "s").await.unwrap();
    let mut status = agent.status();
    timeout(PATIENCE, status.wait_for(|s| s.executions == 2))
        .await
        .unwrap()
        .unwrap();
    for shard in 0..2 {
        let line = std::fs::read_to_string(dir.path().join(format!("shard-{shard}"))).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[..2], [shard.to_string().as_str(), "2"], "{line}");
        assert!(fields[2].parse::<i64>().unwrap() > 0, "{line}");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_from_the_agent() {
    let etcd = EtcdCluster::single().unwrap();
    let mut root = etcd.client().await.unwrap();
    root.user_add("root", "root-pw", None).await.unwrap();
    root.role_add("root").await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.user_add("ops", "ops-pw", None).await.unwrap();
    root.auth_enable().await.unwrap();
    let err = builder(&etcd.endpoints(), "auth", "a")
        .user("ops", "not-the-password")
        .job(never("j"), job_fn(|_| async { Ok(()) }))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Connect(ConnectError::AuthFailed { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("authentication failed for user \"ops\""),
        "{err}"
    );
}
