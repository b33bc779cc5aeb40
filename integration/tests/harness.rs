//! Tests of the real-etcd harness itself.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use shardjob_integration::EtcdCluster;

fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; ESRCH = gone (the harness reaped it, so no zombie remains).
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn get(client: &mut Client, key: &str) -> Option<String> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned())
}

/// The member that is raft leader, as members themselves report it.
async fn leader_index(cluster: &EtcdCluster, skip: Option<usize>) -> usize {
    for i in (0..cluster.size()).filter(|i| Some(*i) != skip) {
        let mut c = cluster.member_client(i).await.unwrap();
        let status = c.status().await.unwrap();
        if status.leader() == status.header().unwrap().member_id() {
            return i;
        }
    }
    panic!("no member reports itself leader");
}

#[tokio::test]
async fn single_node_put_get() {
    let cluster = EtcdCluster::single().unwrap();
    let mut c = cluster.client().await.unwrap();
    c.put("/t/k", "v", None).await.unwrap();
    assert_eq!(get(&mut c, "/t/k").await.as_deref(), Some("v"));
    assert_eq!(get(&mut c, "/t/missing").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_keep_serving_after_the_raft_leader_is_killed() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let mut c = cluster.client().await.unwrap();
    c.put("/t/before", "1", None).await.unwrap();

    let leader = leader_index(&cluster, None).await;
    cluster.kill(leader).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // Wait for a new raft leader (the survivors' /health turns true once one is elected).
    tokio::task::block_in_place(|| {
        survivors
            .iter()
            .for_each(|i| cluster.wait_healthy(*i).unwrap())
    });
    let new_leader = leader_index(&cluster, Some(leader)).await;
    assert_ne!(new_leader, leader);

    let mut c = etcd_client::Client::connect(
        survivors
            .iter()
            .map(|i| cluster.endpoint(*i))
            .collect::<Vec<_>>(),
        None,
    )
    .await
    .unwrap();
    c.put("/t/after", "2", None).await.unwrap();
    let all = c
        .get("/t/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_rejoins_and_catches_up() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    cluster.kill(2).unwrap();
    tokio::task::block_in_place(|| cluster.wait_healthy_all()).unwrap();
    let mut c = Client::connect([cluster.endpoint(0), cluster.endpoint(1)], None)
        .await
        .unwrap();
    c.put("/t/while-down", "x", None).await.unwrap();

    let old_pid = cluster.pid(0).unwrap();
    tokio::task::block_in_place(|| cluster.restart(2)).unwrap();
    assert!(cluster.pid(2).is_some());
    assert_eq!(
        cluster.pid(0),
        Some(old_pid),
        "restart touched another member"
    );
    // A linearizable read served by member 2 alone: it must have rejoined raft and applied
    // the write it missed.
    let mut only2 = cluster.member_client(2).await.unwrap();
    assert_eq!(get(&mut only2, "/t/while-down").await.as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_answers_nothing_until_resumed() {
    let mut cluster = EtcdCluster::single().unwrap();
    let mut c = cluster.client().await.unwrap();
    c.put("/t/k", "v", None).await.unwrap();
    cluster.pause(0).unwrap();
    let stalled = tokio::time::timeout(Duration::from_millis(500), c.get("/t/k", None)).await;
    assert!(stalled.is_err(), "a SIGSTOPped etcd answered: {stalled:?}");
    cluster.resume(0).unwrap();
    assert_eq!(get(&mut c, "/t/k").await.as_deref(), Some("v"));
}

#[test]
fn drop_kills_every_member_also_on_panic() {
    let cluster = EtcdCluster::start(3).unwrap();
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    drop(cluster);
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "survivors after drop: {pids:?}"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let mut cluster = EtcdCluster::single().unwrap();
        cluster.pause(0).unwrap(); // a stopped process must be killed too
        tx.send(cluster.pid(0).unwrap()).unwrap();
        panic!("test body fails while etcd runs");
    });
    assert!(outcome.is_err());
    let pid = rx.recv().unwrap();
    assert!(!alive(pid), "etcd {pid} outlived a panicking test");
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let err = EtcdCluster::with_bin("/nonexistent/etcd")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/etcd") && err.contains("scripts/setup"),
        "{err}"
    );
}
