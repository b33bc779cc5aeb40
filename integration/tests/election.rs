//! Leader election and the leader fence against real etcd.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use shardjob_coordinator::election::Election;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::rebalance::{RebalanceExit, RebalanceOptions, run_leader};
use shardjob_coordinator::session::Session;
use shardjob_integration::EtcdCluster;
use shardjob_integration::fixtures::PATIENCE;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_candidate_leads_once_the_first_session_is_gone() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("elect").unwrap();
    let election = Election::new(&client, &keys);

    let a = Session::grant(&client, TTL).await.unwrap();
    let lead_a = election.campaign(&a.handle(), "a").await.unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().instance, "a");

    let b = Session::grant(&client, TTL).await.unwrap();
    let b_handle = b.handle();
    let campaign_b = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign(&b_handle, "b").await })
    };
    // b waits while a leads.
    tokio::task::yield_now().await;
    assert!(!campaign_b.is_finished());

    let orphaned_at = Instant::now();
    let a_handle = a.orphan();
    let lead_b = timeout(TTL + Duration::from_secs(5), campaign_b)
        .await
        .expect("b was not elected after a's lease ran out")
        .unwrap()
        .unwrap();
    let took = orphaned_at.elapsed();
    // b can only lead after a's lease is gone, i.e. after a's proof of validity ran out.
    assert!(
        Instant::now() >= a_handle.valid_until(),
        "b led while a's lease was proven"
    );
    eprintln!("failover of leadership after the session stopped: {took:?} (TTL {TTL:?})");
    assert_ne!(lead_a.key(), lead_b.key());
    let leader = election.leader().await.unwrap().unwrap();
    assert_eq!(leader.instance, "b");
    assert_eq!(leader.create_revision, lead_b.revision());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_write() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("fence").unwrap();
    let election = Election::new(&client, &keys);

    let a = Session::grant(&client, TTL).await.unwrap();
    let lead_a = election.campaign(&a.handle(), "a").await.unwrap();
    let fenced_put = |fence: Compare, value: &'static str| {
        Txn::new()
            .when(vec![fence])
            .and_then(vec![TxnOp::put(keys.assigned("x", 0), value, None)])
    };
    assert!(
        client
            .txn(fenced_put(lead_a.fence(), "a1"))
            .await
            .unwrap()
            .succeeded()
    );

    // a's lease is revoked (as if it expired); b is elected.
    client.lease_revoke(a.lease()).await.unwrap();
    let b = Session::grant(&client, TTL).await.unwrap();
    let lead_b = timeout(PATIENCE, election.campaign(&b.handle(), "b"))
        .await
        .unwrap()
        .unwrap();

    // a still holds its Leadership value, but the fence rejects it; b's write goes through.
    assert!(
        !client
            .txn(fenced_put(lead_a.fence(), "a2"))
            .await
            .unwrap()
            .succeeded()
    );
    assert!(
        client
            .txn(fenced_put(lead_b.fence(), "b1"))
            .await
            .unwrap()
            .succeeded()
    );
    let stored = client.get(keys.assigned("x", 0), None).await.unwrap();
    assert_eq!(stored.kvs()[0].value(), b"b1");

    // The whole rebalancer of a stale leader stops as deposed at its first write.
    client
        .put(
            keys.job("j2"),
            r#"{"schedule":{"every":"1s"},"total":2}"#,
            None,
        )
        .await
        .unwrap();
    let (exit, stats) = timeout(
        PATIENCE,
        run_leader(
            &client,
            &keys,
            &lead_a,
            &RebalanceOptions::default(),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(exit, RebalanceExit::Deposed);
    assert_eq!(stats.writes, 0);
    // The fence is a create_revision compare on the leader key.
    let fence_rev = lead_b.revision();
    let same = Compare::create_revision(lead_b.key().to_vec(), CompareOp::Equal, fence_rev);
    assert!(
        client
            .txn(Txn::new().when(vec![same]))
            .await
            .unwrap()
            .succeeded()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_etcdctl_elect_listen_sees_the_leader() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("interop").unwrap();
    let session = Session::grant(&client, TTL).await.unwrap();
    Election::new(&client, &keys)
        .campaign(&session.handle(), "instance-7")
        .await
        .unwrap();

    let mut child = Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoint(0),
            "elect",
            "--listen",
            &keys.election_name(),
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl on PATH (scripts/setup installs it)");
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<Result<Vec<_>, _>>()
    });
    let lines = timeout(PATIENCE, lines).await.unwrap().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // etcdctl prints the leader key, then its value.
    assert!(
        lines[0].starts_with(&format!("{}/", keys.election_name())),
        "{lines:?}"
    );
    assert_eq!(lines[1], "instance-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resigning_hands_over_at_once_and_the_resigner_can_campaign_again() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("resign").unwrap();
    let election = Election::new(&client, &keys);
    // A long TTL: if the hand-over waited for expiry, the test would hit its guard.
    let ttl = Duration::from_secs(60);
    let a = Session::grant(&client, ttl).await.unwrap();
    let lead_a = election.campaign(&a.handle(), "a").await.unwrap();
    let b = Session::grant(&client, ttl).await.unwrap();
    let campaign_b = {
        let (election, handle) = (election.clone(), b.handle());
        tokio::spawn(async move { election.campaign(&handle, "b").await })
    };
    lead_a.resign(&client).await.unwrap();
    timeout(Duration::from_secs(10), campaign_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().instance, "b");

    // a, with a new session, queues up again and leads once b's session closes.
    drop(a);
    let a2 = Session::grant(&client, ttl).await.unwrap();
    let campaign_a = {
        let (election, handle) = (election.clone(), a2.handle());
        tokio::spawn(async move { election.campaign(&handle, "a").await })
    };
    b.close().await.unwrap();
    timeout(Duration::from_secs(10), campaign_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().instance, "a");
}

/// The campaign runs on the client (see `election.rs`), so it must queue exactly like the Go
/// client: behind a stock `etcdctl elect` candidate, and lead once that one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_candidates_queue_behind_a_stock_etcdctl_elect_candidate() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("queue").unwrap();
    let election = Election::new(&client, &keys);

    let mut child = Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoint(0),
            "elect",
            &keys.election_name(),
            "from-etcdctl",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl on PATH (scripts/setup installs it)");
    let stdout = child.stdout.take().unwrap();
    // etcdctl prints its key once elected (then its value). The pipe stays open until etcdctl
    // exits: closed early, etcdctl died of SIGPIPE on its next line, never resigned, and its
    // 60 s lease kept it leading (1 run in 15 failed so).
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        (lines.next(), lines)
    });
    let (first, rest) = timeout(PATIENCE, first).await.unwrap().unwrap();
    assert!(matches!(first, Some(Ok(ref l)) if l.starts_with(&keys.election_name())));
    let drained = tokio::task::spawn_blocking(move || rest.count());

    let session = Session::grant(&client, TTL).await.unwrap();
    let mut campaign = {
        let (election, handle) = (election.clone(), session.handle());
        tokio::spawn(async move { election.campaign(&handle, "ours").await })
    };
    // Queued, not leading: etcdctl's candidate is older.
    assert!(
        timeout(Duration::from_millis(500), &mut campaign)
            .await
            .is_err(),
        "elected while an etcdctl candidate leads"
    );
    assert_eq!(
        election.leader().await.unwrap().unwrap().instance,
        "from-etcdctl"
    );

    // etcdctl resigns on SIGINT.
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let lead = timeout(PATIENCE, campaign)
        .await
        .expect("not elected after etcdctl left")
        .unwrap()
        .unwrap();
    timeout(PATIENCE, drained).await.unwrap().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "etcdctl did not resign cleanly: {status}");
    let leader = election.leader().await.unwrap().unwrap();
    assert_eq!(leader.instance, "ours");
    assert_eq!(leader.create_revision, lead.revision());
}

/// A campaign interrupted between its steps (a timeout, an error) and called again goes on
/// with the same candidate key, keeping its place in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_called_again_keeps_its_place_in_the_queue() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("again").unwrap();
    let election = Election::new(&client, &keys);
    let a = Session::grant(&client, TTL).await.unwrap();
    let lead_a = election.campaign(&a.handle(), "a").await.unwrap();
    let b = Session::grant(&client, TTL).await.unwrap();
    let c = Session::grant(&client, TTL).await.unwrap();

    // b queues, then its campaign is dropped mid-wait; c queues after it.
    let first_try = {
        let (election, handle) = (election.clone(), b.handle());
        tokio::spawn(async move { election.campaign(&handle, "b").await })
    };
    let kv = client.clone();
    let candidates = |n: usize| {
        let mut kv = kv.clone();
        let prefix = format!("{}/", keys.election_name());
        async move {
            loop {
                let got = kv
                    .get(
                        prefix.clone(),
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                    .await
                    .unwrap();
                if got.kvs().len() >= n {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    };
    timeout(PATIENCE, candidates(2)).await.unwrap();
    first_try.abort();
    let campaign_c = {
        let (election, handle) = (election.clone(), c.handle());
        tokio::spawn(async move { election.campaign(&handle, "c").await })
    };
    timeout(PATIENCE, candidates(3)).await.unwrap();
    let campaign_b = {
        let (election, handle) = (election.clone(), b.handle());
        tokio::spawn(async move { election.campaign(&handle, "b").await })
    };
    lead_a.resign(&client).await.unwrap();
    let lead_b = timeout(PATIENCE, campaign_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().instance, "b");
    assert!(!campaign_c.is_finished(), "c jumped ahead of b");
    lead_b.resign(&client).await.unwrap();
    timeout(PATIENCE, campaign_c)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(election.leader().await.unwrap().unwrap().instance, "c");
}
