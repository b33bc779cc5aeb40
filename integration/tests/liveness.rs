//! The liveness stream against real etcd, with in-process agents: a crash is acted on through
//! the broken stream (judged from etcd's history, not a clock), and a stream cut by the
//! network while the agent lives is settled "alive" and changes no owner.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::Client;
use shardjob_agent::{AgentHandle, JobSpec, LivenessOptions};
use shardjob_coordinator::keys::Keys;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{
    Slow, assert_no_double_runs_and_rising_tokens, builder, recorder, wait_owned, wait_status,
};
use shardjob_integration::ports::free_ports;
use shardjob_integration::proxy::{Proxy, Sever};
use shardjob_integration::revoked::{assert_revoked_through_stream, history, revision};
use tokio::sync::mpsc;

const TTL: Duration = Duration::from_secs(10);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agents_lease_is_revoked_through_its_broken_stream_before_any_new_owner() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(6)
    };
    let mut agents: BTreeMap<&str, AgentHandle> = BTreeMap::new();
    for id in ["a", "b", "c"] {
        let agent = builder(&endpoints, "stream", id)
            .ttl(TTL)
            .liveness(LivenessOptions::new(loopback(0)))
            .job(spec(), recorder(id, tx.clone(), Slow::default()))
            .start()
            .await
            .unwrap();
        agents.insert(id, agent);
    }
    let statuses: Vec<_> = agents.values().map(AgentHandle::status).collect();
    let balanced = |o: &BTreeMap<String, Vec<u32>>| o.values().all(|s| s.len() == 2);
    let before = wait_owned(&statuses, "j", 6, balanced).await;
    // Every agent but the leader is attached to it.
    wait_status(
        &statuses,
        "two agents guarded by a stream to the leader",
        |s| {
            s.iter().filter(|s| s.is_leader).count() == 1
                && s.iter().filter(|s| !s.is_leader && s.guarded).count() == 2
        },
    )
    .await;
    let victim = agents
        .iter()
        .find(|(_, a)| !a.status().borrow().is_leader)
        .map(|(id, _)| *id)
        .unwrap();
    let lease = agents[victim].status().borrow().lease;

    let keys = Keys::new("stream").unwrap();
    let client = etcd.client().await.unwrap();
    let from = revision(&client, &keys).await.unwrap() + 1;
    let crashed = tokio::time::Instant::now();
    agents.remove(victim).unwrap().abort().await;
    let survivors: Vec<_> = agents.values().map(AgentHandle::status).collect();
    wait_owned(&survivors, "j", 6, |o| o.values().all(|s| s.len() == 3)).await;
    eprintln!(
        "the crashed agent's shards moved after {:?} (TTL {TTL:?})",
        crashed.elapsed()
    );

    // From etcd's history: the leader's "dead" verdict on the victim's stream, then one
    // revision deleting the victim's instance key and every owner key of its lease (a revoke),
    // then the new owners.
    let events = history(&client, &keys, from).await.unwrap();
    assert_revoked_through_stream(&client, &keys, &events, victim, lease, "j", &before[victim])
        .await;
    let leader = agents
        .values()
        .find(|a| a.status().borrow().is_leader)
        .unwrap();
    assert_eq!(leader.status().borrow().stream_breaks.revoked, 1);

    let mut runs = Vec::new();
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    assert_no_double_runs_and_rising_tokens(&runs);
    for a in agents.into_values() {
        a.shutdown().await.unwrap();
    }
}

/// A leader whose stream address is a proxy, and one more agent that streams through it; the
/// proxy severs the stream (`how`) while both live.
async fn a_severed_stream_is_settled_alive(how: Sever, ns: &str) {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(4)
    };
    let port = free_ports(1).unwrap()[0];
    let proxy = Proxy::start(loopback(port)).await.unwrap();
    // A longer guard than the default leaves the agent room to settle on a loaded machine.
    let options = |listen| {
        let mut o = LivenessOptions::new(listen);
        o.interval = Duration::from_millis(50);
        o.guard = Duration::from_millis(400);
        o
    };
    let mut leader_opts = options(loopback(port));
    leader_opts.advertise = Some(format!("127.0.0.1:{}", proxy.port()));
    let a = builder(&endpoints, ns, "a")
        .ttl(TTL)
        .liveness(leader_opts)
        .job(spec(), recorder("a", tx.clone(), Slow::default()))
        .start()
        .await
        .unwrap();
    let sa = vec![a.status()];
    wait_status(&sa, "a leads", |s| s[0].is_leader).await;
    let b = builder(&endpoints, ns, "b")
        .ttl(TTL)
        .liveness(options(loopback(0)))
        .job(spec(), recorder("b", tx.clone(), Slow::default()))
        .start()
        .await
        .unwrap();
    let statuses = vec![a.status(), b.status()];
    let owned = wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;
    wait_status(&statuses, "b guarded", |s| s[1].guarded).await;

    let keys = Keys::new(ns).unwrap();
    let mut client = etcd.client().await.unwrap();
    let lease = b.status().borrow().lease;
    let tokens = |client: &mut Client| {
        let mut client = client.clone();
        let keys = keys.clone();
        let shards = owned["b"].clone();
        async move {
            let mut t = Vec::new();
            for s in shards {
                let r = client.get(keys.owner("j", s), None).await.unwrap();
                t.push((r.kvs()[0].create_revision(), r.kvs()[0].lease()));
            }
            t
        }
    };
    let tokens_before = tokens(&mut client).await;

    proxy.sever(how);
    // The leader saw the break, waited past b's guard, and found b's "alive" first.
    wait_status(&statuses, "the leader to act on the break", |s| {
        s[0].stream_breaks.spared + s[0].stream_breaks.revoked > 0
    })
    .await;
    let breaks = a.status().borrow().stream_breaks;
    assert_eq!((breaks.spared, breaks.revoked), (1, 0), "{breaks:?}");
    let verdict = client
        .get(keys.liveness("b", lease, 0), None)
        .await
        .unwrap();
    let value = String::from_utf8_lossy(verdict.kvs()[0].value()).into_owned();
    assert_eq!(value, r#"{"verdict":"alive","by":"b"}"#);
    // Nothing changed hands: same lease, same owner keys (tokens), no session lost.
    let st = b.status().borrow().clone();
    assert_eq!((st.lease, st.session_losses), (lease, 0));
    assert_eq!(tokens(&mut client).await, tokens_before);
    // b attaches again (stream 1), through the proxy, which forwards new connections.
    wait_status(&statuses, "b guarded again", |s| s[1].guarded).await;

    let mut runs = Vec::new();
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    assert_no_double_runs_and_rising_tokens(&runs);
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_severed_on_both_sides_while_the_agent_lives_changes_no_owner() {
    a_severed_stream_is_settled_alive(Sever::Both, "sever-both").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_severed_only_at_the_leader_is_settled_by_the_agents_silence() {
    a_severed_stream_is_settled_alive(Sever::Upstream, "sever-up").await;
}
