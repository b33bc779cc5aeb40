//! An agent's life against real etcd: starting while etcd is down, and a handle that reports
//! the agent's end instead of waiting for a signal that will not save it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shardjob_agent::{AgentError, JobSpec};
use shardjob_coordinator::connect::ConnectError;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{Slow, builder, recorder};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;
use tokio::time::timeout;

fn spec() -> JobSpec {
    JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_an_etcd_that_comes_up_after_it() {
    let mut etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    etcd.kill(0).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let starting = tokio::spawn({
        let endpoints = endpoints.clone();
        async move {
            builder(&endpoints, "life", "a")
                .connect_timeout(Duration::from_secs(30))
                .job(spec(), recorder("a", tx, Slow::default()))
                .start()
                .await
        }
    });
    // etcd comes back on the same port (restart waits until it is healthy).
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart(0).unwrap();
        etcd
    })
    .await
    .unwrap();
    let agent = timeout(PATIENCE, starting).await.unwrap().unwrap();
    let agent = agent.expect("start() gave up while etcd was still coming up");
    agent.shutdown().await.unwrap();
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_up_on_an_unreachable_etcd_after_the_connect_timeout() {
    let mut etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    etcd.kill(0).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let began = Instant::now();
    let err = builder(&endpoints, "life", "a")
        .connect_timeout(Duration::from_secs(1))
        .dial_timeout(Duration::from_millis(200))
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Connect(ConnectError::Unreachable { .. })),
        "{err}"
    );
    // It kept trying (backoff 100, 200, 400 ms...) rather than failing at the first refusal.
    assert!(
        began.elapsed() >= Duration::from_millis(700),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_an_error_when_the_agent_ends_before_the_signal() {
    let etcd = EtcdCluster::single().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = builder(&etcd.endpoints(), "life", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let crash = agent.crash_switch();
    let running = tokio::spawn(agent.run_until(std::future::pending::<()>()));
    crash.cancel();
    let result = timeout(PATIENCE, running).await.unwrap().unwrap();
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains("stopped before it was asked to"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_off_at_once_even_with_a_rebalance_delay() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, _rx) = mpsc::unbounded_channel();
    // Far longer than the test's patience: a parked shard would fail it.
    let delay = Duration::from_secs(120);
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let agent = builder(&endpoints, "leave", id)
            .rebalance_delay(delay)
            .job(
                JobSpec::every("j", Duration::from_secs(1))
                    .unwrap()
                    .shards(4),
                recorder(id, tx.clone(), Slow::default()),
            )
            .start()
            .await
            .unwrap();
        agents.push(agent);
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    shardjob_integration::agents::wait_owned(&statuses, "j", 4, |o| {
        o.values().all(|s| s.len() == 2)
    })
    .await;
    let b = agents.pop().unwrap();
    b.shutdown().await.unwrap();
    shardjob_integration::agents::wait_owned(&statuses[..1], "j", 4, |o| o["a"].len() == 4).await;
    for a in agents {
        a.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_instance_id_fails_to_start() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, _rx) = mpsc::unbounded_channel();
    let first = builder(&endpoints, "dup", "a")
        .job(spec(), recorder("a", tx.clone(), Slow::default()))
        .start()
        .await
        .unwrap();
    let statuses = [first.status()];
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    let err = builder(&endpoints, "dup", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::InstanceLive { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by a live process"),
        "{err}"
    );
    // The first one was not disturbed: same lease, same shards.
    let status = first.status().borrow().clone();
    assert_eq!(status.owned["j"], [0, 1], "{status:?}");
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_by_hand_is_repaired_an_instance_key_and_an_assignment() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let mut client = etcd.client().await.unwrap();
    let keys = shardjob_coordinator::keys::Keys::new("repair").unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = builder(&endpoints, "repair", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let statuses = [agent.status()];
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    let lease = agent.status().borrow().lease;

    // Its instance key deleted by hand: the agent puts it back, under the same lease.
    client.delete(keys.instance("a"), None).await.unwrap();
    let back = timeout(PATIENCE, put_of(&mut client, keys.instance("a")))
        .await
        .expect("the instance key was never put back");
    assert_eq!(back, lease);

    // Its assigned page deleted by hand: the leader writes it again, and the shards are owned.
    let page = keys.assigned("a", shardjob_coordinator::model::page_of("j"));
    client.delete(page.clone(), None).await.unwrap();
    timeout(PATIENCE, put_of(&mut client, page))
        .await
        .expect("the assigned page was never rewritten");
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    agent.shutdown().await.unwrap();
}

/// Waits until `key` exists (read, then watched from that read's revision: no put is missed)
/// and returns its lease.
async fn put_of(client: &mut etcd_client::Client, key: String) -> i64 {
    let resp = client.get(key.clone(), None).await.unwrap();
    if let Some(kv) = resp.kvs().first() {
        return kv.lease();
    }
    let from = resp.header().unwrap().revision() + 1;
    let opts = etcd_client::WatchOptions::new().with_start_revision(from);
    let mut stream = client.watch(key, Some(opts)).await.unwrap();
    while let Some(resp) = stream.message().await.unwrap() {
        for ev in resp.events() {
            if ev.event_type() == etcd_client::EventType::Put {
                return ev.kv().map_or(0, |kv| kv.lease());
            }
        }
    }
    panic!("the watch ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_records_each_shard_done_then_is_retired_after_its_retention() {
    use shardjob_coordinator::keys::Keys;
    use shardjob_coordinator::view::ClusterView;
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("finish").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let agent = builder(&etcd.endpoints(), "finish", "a")
        .one_shot_retention(Duration::from_secs(3))
        .handler("expire", recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(1);
    let mut config = shardjob_coordinator::model::JobConfig::new(
        shardjob_coordinator::model::Schedule::At(at),
        2,
    );
    config.handler = Some("expire".into());
    shardjob_coordinator::ops::create_job(&client, &keys, "coupons", &config)
        .await
        .unwrap();
    for _ in 0..2 {
        timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
    }
    // Each shard's end is recorded, fenced by its owner's token.
    for shard in 0..2 {
        timeout(PATIENCE, put_of(&mut client, keys.done("coupons", shard)))
            .await
            .expect("no done record");
    }
    let view = ClusterView::load(&client, &keys).await.unwrap();
    let job = &view.jobs["coupons"];
    assert_eq!(job.done.len(), 2, "{job:?}");
    assert!(
        job.done
            .values()
            .all(|d| d.outcome == "ok" && d.instance.as_str() == "a" && d.fire_time == at)
    );
    // Then every key of the job goes, after the retention.
    timeout(PATIENCE, gone(&mut client, keys.job("coupons")))
        .await
        .expect("the finished one-shot was never retired");
    let left = client
        .get(
            keys.root(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let of_job: Vec<String> = left
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|k| k.contains("/coupons"))
        .collect();
    assert!(of_job.is_empty(), "keys left: {of_job:?}");
    assert!(rx.try_recv().is_err(), "the one-shot ran again");
    agent.shutdown().await.unwrap();
}

/// Waits until `key` does not exist (read, then watched from that read's revision).
async fn gone(client: &mut etcd_client::Client, key: String) {
    let resp = client.get(key.clone(), None).await.unwrap();
    if resp.kvs().is_empty() {
        return;
    }
    let from = resp.header().unwrap().revision() + 1;
    let opts = etcd_client::WatchOptions::new().with_start_revision(from);
    let mut stream = client.watch(key, Some(opts)).await.unwrap();
    while let Some(resp) = stream.message().await.unwrap() {
        if resp
            .events()
            .iter()
            .any(|ev| ev.event_type() == etcd_client::EventType::Delete)
        {
            return;
        }
    }
    panic!("the watch ended");
}
