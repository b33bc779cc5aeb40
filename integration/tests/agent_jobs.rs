//! Live job features of in-process agents against real etcd: triggers, disabling, live
//! resharding, misfire coalescing, failover re-runs, one-shot jobs created at runtime, a
//! crowd of fires at one instant, a trigger of many shards started in groups.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::Client;
use shardjob_agent::{AgentHandle, JobSpec};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::JobConfig;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{
    Ran, Slow, builder, drain_until, recorder, shards_per_fire, shutdown_all, wait_owned,
};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;
use tokio::time::timeout;

async fn agent(
    endpoints: &[String],
    ns: &str,
    id: &str,
    spec: JobSpec,
    ran: &mpsc::UnboundedSender<Ran>,
    slow: &Slow,
) -> AgentHandle {
    builder(endpoints, ns, id)
        .job(spec, recorder(id, ran.clone(), slow.clone()))
        .start()
        .await
        .unwrap()
}

async fn edit_job(client: &Client, keys: &Keys, job: &str, change: impl FnOnce(&mut JobConfig)) {
    let mut c = client.clone();
    let current = c.get(keys.job(job), None).await.unwrap();
    let mut config: JobConfig = serde_json::from_slice(current.kvs()[0].value()).unwrap();
    change(&mut config);
    c.put(keys.job(job), serde_json::to_vec(&config).unwrap(), None)
        .await
        .unwrap();
}

fn next_whole_second(after: DateTime<Utc>, plus: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(after.timestamp() + plus, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_runs_every_shard_once_per_id() {
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("trig").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    // A schedule that does not fire during the test: only triggers run.
    let spec = || JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(4);
    let a = agent(&endpoints, "trig", "a", spec(), &tx, &slow).await;
    let b = agent(&endpoints, "trig", "b", spec(), &tx, &slow).await;
    wait_owned(&[a.status(), b.status()], "j", 4, |o| {
        o.values().all(|s| s.len() == 2)
    })
    .await;

    let put_trigger = |id: &'static str, at: DateTime<Utc>| {
        let (mut c, key) = (client.clone(), keys.trigger("j"));
        async move {
            let v = serde_json::json!({"id": id, "requested_at": at}).to_string();
            c.put(key, v, None).await.unwrap();
        }
    };
    let t1 = "2026-01-01T00:00:01Z".parse().unwrap();
    let t2 = "2026-01-01T00:00:02Z".parse().unwrap();
    put_trigger("t1", t1).await;
    put_trigger("t1", t1).await; // the same id again: no second run
    put_trigger("t2", t2).await;
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| {
        shards_per_fire(r).get(&t2).is_some_and(|s| s.len() == 4)
    })
    .await;
    let per_fire = shards_per_fire(&runs);
    assert_eq!(per_fire[&t1].len(), 4);
    assert_eq!(
        runs.iter().filter(|r| r.fire == t1).count(),
        4,
        "t1 ran more than once per shard: {runs:?}"
    );
    shutdown_all([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_of_many_shards_started_in_groups_runs_each_once_and_reports_every_end() {
    // 40 runs started in one turn (a trigger of every shard) go into groups, not a task each
    // (`runtime/crowd.rs`, GROUPED_NOW = 32). The second trigger runs every shard again only
    // once the first's ends reached the engine (a shard still running would coalesce it).
    const SHARDS: u32 = 40;
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("grouped").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    let spec = JobSpec::new("j", "0 0 0 1 1 * 2099")
        .unwrap()
        .shards(SHARDS);
    let a = agent(&endpoints, "grouped", "a", spec, &tx, &slow).await;
    wait_owned(&[a.status()], "j", SHARDS, |_| true).await;
    let t1: DateTime<Utc> = "2026-01-01T00:00:01Z".parse().unwrap();
    let t2: DateTime<Utc> = "2026-01-01T00:00:02Z".parse().unwrap();
    let mut runs = Vec::new();
    for (id, at) in [("t1", t1), ("t2", t2)] {
        let v = serde_json::json!({"id": id, "requested_at": at}).to_string();
        client
            .clone()
            .put(keys.trigger("j"), v, None)
            .await
            .unwrap();
        drain_until(&mut rx, &mut runs, |r| {
            shards_per_fire(r)
                .get(&at)
                .is_some_and(|s| s.len() == SHARDS as usize)
        })
        .await;
    }
    for at in [t1, t2] {
        assert_eq!(
            runs.iter().filter(|r| r.fire == at).count(),
            SHARDS as usize,
            "a shard of {at} ran more than once: {runs:?}"
        );
    }
    shutdown_all([a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_stops_fires_and_a_new_total_reshards_live() {
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("live").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(4)
    };
    let a = agent(&endpoints, "live", "a", spec(), &tx, &slow).await;
    let b = agent(&endpoints, "live", "b", spec(), &tx, &slow).await;
    let statuses = [a.status(), b.status()];
    wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;

    edit_job(&client, &keys, "j", |c| c.total = 6).await;
    wait_owned(&statuses, "j", 6, |o| o.values().all(|s| s.len() == 3)).await;
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| {
        shards_per_fire(r).values().any(|s| s.len() == 6)
    })
    .await;

    edit_job(&client, &keys, "j", |c| c.disabled = true).await;
    let disabled_at = Utc::now();
    // Stopping can only be shown by time passing without runs: 2.5 s, two fires or more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    let late: Vec<&Ran> = runs
        .iter()
        .filter(|r| r.fire > disabled_at + chrono::Duration::seconds(1))
        .collect();
    assert!(late.is_empty(), "a disabled job fired: {late:?}");

    edit_job(&client, &keys, "j", |c| c.disabled = false).await;
    let enabled_at = Utc::now();
    drain_until(&mut rx, &mut runs, |r| {
        shards_per_fire(r)
            .range(enabled_at..)
            .any(|(_, s)| s.len() == 6)
    })
    .await;
    shutdown_all([a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_during_a_long_run_coalesce_into_one_misfire_run() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    let a = agent(
        &endpoints,
        "misfire",
        "a",
        JobSpec::every("j", Duration::from_secs(1)).unwrap(),
        &tx,
        &slow,
    )
    .await;
    wait_owned(&[a.status()], "j", 1, |_| true).await;

    // The run of fire T takes 2.5 s: fires T+1 and T+2 arrive while it goes on and become one
    // run (of the latest, T+2) right after it; T+3 is on time again.
    let t = next_whole_second(Utc::now(), 2);
    *slow.lock().unwrap() = Some(("a".to_owned(), t, Duration::from_millis(2500)));
    let mut runs = Vec::new();
    let t3 = t + chrono::Duration::seconds(3);
    drain_until(&mut rx, &mut runs, |r| r.iter().any(|r| r.fire >= t3)).await;
    let window: Vec<(i64, bool)> = runs
        .iter()
        .filter(|r| r.fire >= t && r.fire <= t3)
        .map(|r| ((r.fire - t).num_seconds(), r.misfire))
        .collect();
    assert_eq!(window, [(0, false), (2, true), (3, false)], "{runs:?}");
    a.shutdown().await.unwrap();
}

/// Two agents share a 2-shard failover job; `a`'s run of fire `t` hangs (60 s) and has started.
struct CutShort {
    etcd: EtcdCluster,
    a: AgentHandle,
    b: AgentHandle,
    rx: mpsc::UnboundedReceiver<Ran>,
    runs: Vec<Ran>,
    a_shard: u32,
    t: DateTime<Utc>,
}

/// `a` waits `a_shutdown` for running executions when shut down gracefully.
async fn a_run_hangs(ns: &str, a_shutdown: Duration) -> CutShort {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(2)
            .failover(true)
    };
    let a = builder(&endpoints, ns, "a")
        .shutdown_timeout(a_shutdown)
        .job(spec(), recorder("a", tx.clone(), slow.clone()))
        .start()
        .await
        .unwrap();
    let b = agent(&endpoints, ns, "b", spec(), &tx, &slow).await;
    let owned = wait_owned(&[a.status(), b.status()], "j", 2, |o| {
        o.values().all(|s| s.len() == 1)
    })
    .await;
    let a_shard = owned["a"][0];
    let t = next_whole_second(Utc::now(), 2);
    *slow.lock().unwrap() = Some(("a".to_owned(), t, Duration::from_secs(60)));
    let mut runs = Vec::new();
    // The handler reports at its start, after the running marker was written.
    drain_until(&mut rx, &mut runs, |r| {
        r.iter().any(|r| r.instance == "a" && r.fire == t)
    })
    .await;
    CutShort {
        etcd,
        a,
        b,
        rx,
        runs,
        a_shard,
        t,
    }
}

/// The failover runs among `runs` once two more seconds of fires came in.
async fn failover_runs(rx: &mut mpsc::UnboundedReceiver<Ran>, runs: &mut Vec<Ran>) -> Vec<Ran> {
    let settle = Utc::now() + chrono::Duration::seconds(2);
    drain_until(rx, runs, |r| r.iter().any(|r| r.fire > settle)).await;
    runs.iter().filter(|r| r.failover).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_cut_short_by_a_crash_is_rerun_once_by_the_next_owner() {
    let mut c = a_run_hangs("fo", Duration::from_secs(30)).await;
    // a dies while it runs, leaving its running marker behind.
    c.a.abort().await;

    // b takes the shard over after a's lease and re-runs fire T once, as a failover run.
    wait_owned(&[c.b.status()], "j", 2, |_| true).await;
    let failovers = failover_runs(&mut c.rx, &mut c.runs).await;
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    let f = &failovers[0];
    assert_eq!(
        (f.instance.as_str(), f.shard, f.fire),
        ("b", c.a_shard, c.t)
    );
    c.b.shutdown().await.unwrap();
}

/// An execution cut short by a self-fence keeps its marker, so the fire is re-run once by the
/// next owner. (Before, the cancelled execution deleted its marker when it saw the cancel before
/// the abort that follows it, and the fire was silently dropped: the crash test above failed 2 in
/// 12 runs from that race. On this path the race is narrower; this test never lost it in 32 runs
/// of the old code, so it guards the rule rather than reproducing the defect.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_cut_short_by_a_self_fence_is_rerun_once_by_the_next_owner() {
    let mut c = a_run_hangs("fence", Duration::from_secs(30)).await;
    let status = c.a.status().borrow().clone();
    let first_token = c
        .runs
        .iter()
        .find(|r| r.instance == "a" && r.fire == c.t)
        .unwrap()
        .token;
    // The lease is gone on the server: a self-fences and cancels the hanging run.
    let mut client = c.etcd.client().await.unwrap();
    client.lease_revoke(status.lease).await.unwrap();
    let mut a_status = c.a.status();
    timeout(PATIENCE, a_status.wait_for(|s| s.session_losses == 1))
        .await
        .unwrap()
        .unwrap();

    // Whoever claims a's shard next (b, or a on its new lease) re-runs fire T once.
    let failovers = failover_runs(&mut c.rx, &mut c.runs).await;
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    let f = &failovers[0];
    assert_eq!((f.shard, f.fire), (c.a_shard, c.t), "{f:?}");
    assert!(f.token > first_token, "not a new claim: {f:?}");
    shutdown_all(vec![c.a, c.b]).await;
}

/// A graceful shutdown that times out cuts the hanging run short: the next owner re-runs that
/// fire once, as a failover run, and not a second time as the misfire its cursor also implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_cut_short_by_a_shutdown_timeout_is_rerun_once_by_the_next_owner() {
    let mut c = a_run_hangs("stop", Duration::from_millis(200)).await;
    // a gives up 200 ms into fire T's second and releases, so when b claims, T is normally also
    // the latest fire after the released cursor (the case that ran twice).
    c.a.shutdown().await.unwrap();
    wait_owned(&[c.b.status()], "j", 2, |_| true).await;
    let failovers = failover_runs(&mut c.rx, &mut c.runs).await;
    let reruns: Vec<&Ran> = c
        .runs
        .iter()
        .filter(|r| r.instance == "b" && r.shard == c.a_shard && r.fire == c.t)
        .collect();
    assert_eq!(reruns.len(), 1, "{reruns:?}");
    assert!(reruns[0].failover, "{reruns:?}");
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    c.b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_job_created_at_runtime_runs_once_on_handler_only_agents() {
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("oneshot").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let handle = builder(&endpoints, "oneshot", id)
            .handler("send-reminders", recorder(id, tx.clone(), Slow::default()))
            .start()
            .await
            .unwrap();
        agents.push(handle);
    }
    // An operator creates a one-shot job with a plain etcd put.
    let at = next_whole_second(Utc::now(), 3);
    let config = serde_json::json!({"handler": "send-reminders", "schedule": {"at": at}, "total": 2,
        "job_param": "{\"list\":\"december\"}"});
    client
        .clone()
        .put(keys.job("reminders-2026-12-01"), config.to_string(), None)
        .await
        .unwrap();

    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| r.len() >= 2).await;
    // Nothing else may run: a one-shot is finished after its fire (shown by waiting two more
    // seconds, the only way to show an absence).
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.fire == at
        && r.job == "reminders-2026-12-01"
        && r.job_param.contains("december")));
    assert_eq!(shards_per_fire(&runs)[&at].len(), 2);
    shutdown_all(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_whose_instant_passed_before_any_agent_ran_runs_once_when_claimed() {
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("late").unwrap();
    // Written with a plain put, in the past: a cold cluster that comes up after T.
    let at = next_whole_second(Utc::now(), 0) - chrono::Duration::seconds(5);
    let config = serde_json::json!({"handler": "expire", "schedule": {"at": at}, "total": 2});
    client
        .clone()
        .put(keys.job("expire-coupons"), config.to_string(), None)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let agent = builder(&endpoints, "late", "a")
        .handler("expire", recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| r.len() >= 2).await;
    assert!(runs.iter().all(|r| r.fire == at && r.misfire), "{runs:?}");
    assert_eq!(shards_per_fire(&runs)[&at].len(), 2, "{runs:?}");
    // Each shard's end is recorded; the leader assigns done shards to nobody, so the agent
    // fires them no more (and releases them).
    shardjob_integration::agents::wait_owned(&[agent.status()], "expire-coupons", 0, |_| true)
        .await;
    let view = shardjob_coordinator::view::ClusterView::load(&client, &keys)
        .await
        .unwrap();
    let job = &view.jobs["expire-coupons"];
    assert_eq!(job.done.len(), 2, "{job:?}");
    let assignment = job
        .assignment
        .as_ref()
        .expect("the unassigned page keeps the record");
    assert!(assignment.owners.iter().all(Option::is_none), "{job:?}");
    // Another agent taking over runs nothing again.
    agent.shutdown().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let again = builder(&endpoints, "late", "b")
        .handler("expire", recorder("b", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    again.shutdown().await.unwrap();
    assert!(rx.try_recv().is_err(), "a done one-shot ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_defined_in_code_is_not_created_once_its_instant_has_passed() {
    let etcd = EtcdCluster::single().unwrap();
    let (endpoints, client) = (etcd.endpoints(), etcd.client().await.unwrap());
    let keys = Keys::new("past").unwrap();
    let past = Utc::now() - chrono::Duration::seconds(10);
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = builder(&endpoints, "past", "a")
        .job(
            JobSpec::at("long-gone", past).unwrap().shards(1),
            recorder("a", tx, Slow::default()),
        )
        .start()
        .await
        .unwrap();
    // start() has published what it publishes before it returns.
    let stored = client
        .clone()
        .get(keys.job("long-gone"), None)
        .await
        .unwrap();
    assert!(
        stored.kvs().is_empty(),
        "a one-shot in the past was created"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_fires_at_one_instant_runs_each_once_and_none_before_it() {
    // 300 jobs due at the same whole second: a crowd (≥ 64 fires in one millisecond), so they
    // are launched ahead and run in groups of 256 (`runtime/crowd.rs`), two groups here.
    const JOBS: usize = 300;
    let etcd = EtcdCluster::single().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, DateTime<Utc>, DateTime<Utc>)>();
    let mut b = builder(&etcd.endpoints(), "crowd", "a");
    for i in 0..JOBS {
        let tx = tx.clone();
        b = b.job(
            JobSpec::every(format!("j{i}"), Duration::from_secs(1)).unwrap(),
            shardjob_agent::job_fn(move |ctx| {
                let _ = tx.send((ctx.job.clone(), ctx.fire_time, Utc::now()));
                async { Ok(()) }
            }),
        );
    }
    let a = b.start().await.unwrap();
    let mut status = a.status();
    timeout(PATIENCE, async {
        while status.borrow_and_update().owned.len() < JOBS {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("every job owned");

    let t = next_whole_second(Utc::now(), 2);
    let t1 = t + chrono::Duration::seconds(1);
    let mut seen: BTreeMap<(DateTime<Utc>, String), usize> = BTreeMap::new();
    timeout(PATIENCE, async {
        while seen.keys().filter(|(f, _)| *f == t1).count() < JOBS {
            let (job, fire, started) = rx.recv().await.unwrap();
            assert!(
                started >= fire,
                "{job} started at {started}, before its fire {fire}"
            );
            if fire == t || fire == t1 {
                *seen.entry((fire, job)).or_default() += 1;
            }
        }
    })
    .await
    .expect("every job ran fire t + 1");
    let at_t = seen.keys().filter(|(f, _)| *f == t).count();
    assert_eq!(at_t, JOBS, "every job ran fire t");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    a.shutdown().await.unwrap();
}
