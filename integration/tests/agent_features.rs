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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_same_id_inside_the_rebalance_delay_gets_its_shards_back() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    // Far longer than the test: a parking that ended would show as b's shards on a or c.
    let delay = Duration::from_secs(120);
    let start = |id: &'static str| {
        let endpoints = endpoints.clone();
        async move {
            builder(&endpoints, "comeback", id)
                .rebalance_delay(delay)
                // Only a leads, so a crash of b or c never costs a leader change.
                .leader_eligible(id == "a")
                .job(never("j").shards(6), job_fn(|_| async { Ok(()) }))
                .start()
                .await
                .unwrap()
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    let c = start("c").await;
    let statuses = [a.status(), b.status(), c.status()];
    let before = wait_owned(&statuses, "j", 6, |o| o.values().all(|s| s.len() == 2)).await;
    // b dies without a word; its shards stay parked for it.
    b.abort().await;
    // The same id starts again (start() waits for the dead process's lease to end first).
    let b = start("b").await;
    let statuses = [a.status(), b.status(), c.status()];
    let after = wait_owned(&statuses, "j", 6, |o| {
        o.get("b").is_some_and(|s| s.len() == 2)
    })
    .await;
    assert_eq!(after, before, "b got other shards back, or a and c's moved");
    // The only leader last, so the others' hand-offs have someone to reassign them.
    for agent in [c, b, a] {
        agent.shutdown().await.unwrap();
    }
}

/// A fetch/process job whose shard has 3 batches of work.
struct Batches {
    left: std::sync::Mutex<std::collections::BTreeMap<u32, u32>>,
    processed: mpsc::UnboundedSender<(u32, u32)>,
}

impl shardjob_agent::kinds::DataflowJob for Batches {
    type Item = u32;
    async fn fetch(&self, ctx: &ShardContext) -> Result<Vec<u32>, JobError> {
        let mut left = self.left.lock().unwrap();
        let n = left.entry(ctx.shard).or_insert(3);
        if *n == 0 {
            return Ok(vec![]);
        }
        *n -= 1;
        Ok(vec![*n])
    }
    async fn process(&self, ctx: &ShardContext, items: Vec<u32>) -> Result<(), JobError> {
        for i in items {
            let _ = self.processed.send((ctx.shard, i));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataflow_job_drains_its_shards_work_under_a_real_agent() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("dataflow").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = shardjob_agent::kinds::Dataflow(Batches {
        left: Default::default(),
        processed: tx,
    });
    let agent = builder(&etcd.endpoints(), "dataflow", "a")
        .job(never("d").shards(2), job)
        .start()
        .await
        .unwrap();
    wait_owned(&[agent.status()], "d", 2, |_| true).await;
    ops::trigger(&client, &keys, "d").await.unwrap();
    let mut status = agent.status();
    timeout(PATIENCE, status.wait_for(|s| s.executions == 2))
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    while let Ok(p) = rx.try_recv() {
        got.push(p);
    }
    got.sort();
    assert_eq!(got, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_every_key_kind_leaves_running_agents_running() {
    use shardjob_integration::agents::{Ran, Slow, drain_until, recorder, shards_per_fire};
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("garbage").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let spec = JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(4);
        let agent = builder(&etcd.endpoints(), "garbage", id)
            .job(spec, recorder(id, tx.clone(), Slow::default()))
            .start()
            .await
            .unwrap();
        agents.push(agent);
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    let owned = wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;

    // Garbage under every kind of key (an owner key of a shard that does not exist: writing
    // over a held one would take the shard from its owner, which is what it means).
    let garbage = b"{not json".to_vec();
    for key in [
        keys.job("j"),
        keys.assigned("a", shardjob_coordinator::model::page_of("j")),
        keys.owner("j", 99),
        keys.cursor("j", 0),
        keys.running("j", 0),
        keys.trigger("j"),
        keys.instance("ghost"),
    ] {
        client.put(key, garbage.clone(), None).await.unwrap();
    }
    let written = chrono::Utc::now();

    // Both agents keep running every shard of every fire, with the last good config and
    // assignment, and nobody's shards move.
    let mut runs: Vec<Ran> = Vec::new();
    drain_until(&mut rx, &mut runs, |r| {
        shards_per_fire(r)
            .range(written..)
            .filter(|(_, s)| s.len() == 4)
            .count()
            >= 3
    })
    .await;
    let later = wait_owned(&statuses, "j", 4, |_| true).await;
    assert_eq!(later, owned, "shards moved after garbage was written");
    for agent in &agents {
        let s = agent.status().borrow().clone();
        assert_eq!(s.session_losses, 0, "{s:?}");
    }
    for agent in agents {
        agent.shutdown().await.unwrap();
    }
}
