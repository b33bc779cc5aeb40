//! The leader's rebalancer against real etcd.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, PutOptions};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::kv::list_prefix;
use shardjob_coordinator::model::{InstanceInfo, Owner};
use shardjob_coordinator::rebalance::{MAX_TXN_OPS, RebalanceOptions};
use shardjob_coordinator::view::ClusterView;
use shardjob_integration::EtcdCluster;
use shardjob_integration::fixtures::{owners, put_job, register, start_leader, wait_assignment};
use shardjob_sharding::{Instance, InstanceId, min_moves};

const TTL: Duration = Duration::from_secs(10);

fn instances(ids: &[&str]) -> Vec<Instance> {
    ids.iter()
        .map(|i| Instance::new(InstanceId::new(*i).unwrap()))
        .collect()
}

fn ids(record: &shardjob_coordinator::model::AssignmentRecord) -> Vec<String> {
    record.instances.iter().map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_make_new_generations_with_minimal_moves() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("rb").unwrap();
    let mut sessions = Vec::new();
    for id in ["a", "b", "c"] {
        sessions.push(register(&client, &keys, id, &["h"], &[], TTL).await);
    }
    put_job(
        &client,
        &keys,
        "j",
        r#"{"handler":"h","schedule":{"every":"1s"},"total":12}"#,
    )
    .await;
    let leader = start_leader(&client, &keys, "leader", TTL, RebalanceOptions::default()).await;

    let r1 = wait_assignment(&client, &keys, "j", |r| ids(r) == ["a", "b", "c"]).await;
    let a1 = r1.to_assignment().unwrap();
    assert_eq!(a1.spread(&instances(&["a", "b", "c"])), 0);

    // d joins: one new generation, exactly the minimum moved, all of it to d.
    let d = register(&client, &keys, "d", &["h"], &[], TTL).await;
    let r2 = wait_assignment(&client, &keys, "j", |r| ids(r).contains(&"d".to_owned())).await;
    assert_eq!(r2.generation, r1.generation + 1);
    let a2 = r2.to_assignment().unwrap();
    let moves = a1.moves_to(&a2);
    assert_eq!(
        moves.len() as u32,
        min_moves(12, &instances(&["a", "b", "c", "d"]), Some(&a1))
    );
    assert_eq!(moves.len(), 3);
    assert!(moves.iter().all(|m| m.to.as_ref().unwrap().as_str() == "d"));

    // b leaves (its lease is revoked): only b's shards move.
    let b = sessions.remove(1);
    b.close().await.unwrap();
    let r3 = wait_assignment(&client, &keys, "j", |r| !ids(r).contains(&"b".to_owned())).await;
    assert_eq!(r3.generation, r2.generation + 1);
    let a3 = r3.to_assignment().unwrap();
    let moves = a2.moves_to(&a3);
    assert_eq!(moves.len(), 3);
    assert!(
        moves
            .iter()
            .all(|m| m.from.as_ref().unwrap().as_str() == "b")
    );
    assert_eq!(a3.spread(&instances(&["a", "c", "d"])), 0);

    let (_, stats) = leader.stop().await;
    assert!(stats.passes >= 3, "{stats:?}");
    drop((d, sessions));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_changes_reshard_and_a_drained_instance_gets_nothing() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("rb2").unwrap();
    let _a = register(&client, &keys, "a", &["j"], &[("zone", "eu")], TTL).await;
    let _b = register(&client, &keys, "b", &["j"], &[("zone", "eu")], TTL).await;
    let _c = register(&client, &keys, "c", &["j"], &[("zone", "us")], TTL).await;
    put_job(
        &client,
        &keys,
        "j",
        r#"{"schedule":{"every":"1s"},"total":4,"selector":{"zone":"eu"}}"#,
    )
    .await;
    let leader = start_leader(&client, &keys, "L", TTL, RebalanceOptions::default()).await;
    let r = wait_assignment(&client, &keys, "j", |r| r.owners.len() == 4).await;
    assert_eq!(
        owners(&r),
        ["a", "a", "b", "b"],
        "c does not match the selector"
    );

    put_job(
        &client,
        &keys,
        "j",
        r#"{"schedule":{"every":"1s"},"total":6,"selector":{"zone":"eu"}}"#,
    )
    .await;
    let r = wait_assignment(&client, &keys, "j", |r| r.owners.len() == 6).await;
    assert_eq!(owners(&r), ["a", "a", "b", "b", "a", "b"]);

    client
        .put(keys.disabled("b"), "draining for maintenance", None)
        .await
        .unwrap();
    let r = wait_assignment(&client, &keys, "j", |r| ids(r) == ["a"]).await;
    assert_eq!(owners(&r), ["a"; 6]);

    client.delete(keys.disabled("b"), None).await.unwrap();
    let r = wait_assignment(&client, &keys, "j", |r| ids(r) == ["a", "b"]).await;
    assert_eq!(
        r.to_assignment().unwrap().spread(&instances(&["a", "b"])),
        0
    );
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_every_key_kind_is_skipped_and_rebalancing_goes_on() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("junk").unwrap();
    let garbage = [
        keys.instance("bad"),
        keys.job("badjob"),
        keys.owner("good", 0),
        keys.running("good", 0),
        keys.cursor("good", 0),
        keys.trigger("good"),
    ];
    for key in &garbage {
        client.put(key.as_str(), "{not json", None).await.unwrap();
    }
    // An assigned page is the leader's to write: garbage there is not kept but repaired (this
    // one, of an instance with nothing assigned, deleted).
    let ghost = keys.assigned("ghost", 0);
    client.put(ghost.as_str(), "{not json", None).await.unwrap();
    // A stamp with no page: harmless, and reported.
    let stray_stamp = keys.stamp("ghost", 1);
    client.put(stray_stamp.as_str(), "", None).await.unwrap();
    // Well-formed JSON that breaks a rule is rejected too.
    put_job(
        &client,
        &keys,
        "zero",
        r#"{"schedule":{"every":"1s"},"total":0}"#,
    )
    .await;
    let _a = register(&client, &keys, "a", &["good"], &[], TTL).await;
    let leader = start_leader(&client, &keys, "L", TTL, RebalanceOptions::default()).await;

    put_job(
        &client,
        &keys,
        "good",
        r#"{"schedule":{"every":"1s"},"total":2}"#,
    )
    .await;
    wait_assignment(&client, &keys, "good", |r| owners(r) == ["a", "a"]).await;

    // Garbage over a good config keeps the last good one in force...
    client.put(keys.job("good"), "garbage", None).await.unwrap();
    // ...and the leader keeps rebalancing on it when membership changes.
    let _b = register(&client, &keys, "b", &["good"], &[], TTL).await;
    wait_assignment(&client, &keys, "good", |r| owners(r) == ["a", "b"]).await;

    let view = ClusterView::load(&client, &keys).await.unwrap();
    let ghost_left = client.get(ghost.as_str(), None).await.unwrap();
    assert!(
        ghost_left.kvs().is_empty(),
        "the garbage page was not repaired"
    );
    let problem_keys: BTreeSet<&str> = view.problems.iter().map(|p| p.key.as_str()).collect();
    let reported = [&keys.job("zero"), &keys.job("good"), &stray_stamp];
    for key in garbage.iter().chain(reported) {
        assert!(
            problem_keys.contains(key.as_str()),
            "{key} not reported: {problem_keys:?}"
        );
    }
    assert!(
        view.problems.iter().all(|p| p.error.starts_with(&p.key)),
        "{:?}",
        view.problems
    );
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_128_changed_pages_go_out_in_several_fenced_txns() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("many").unwrap();
    // 10 instances × 16 pages: up to 160 page writes in the first pass.
    let mut registered = Vec::new();
    for i in 0..10 {
        registered.push(register(&client, &keys, &format!("i{i}"), &["h"], &[], TTL).await);
    }
    let jobs = 300;
    for i in 0..jobs {
        put_job(
            &client,
            &keys,
            &format!("j{i:03}"),
            r#"{"handler":"h","schedule":{"every":"1s"},"total":2}"#,
        )
        .await;
    }
    let leader = start_leader(&client, &keys, "L", TTL, RebalanceOptions::default()).await;
    wait_assignment(&client, &keys, "j299", |r| {
        r.owners.iter().all(Option::is_some)
    })
    .await;
    let (_, stats) = leader.stop().await;

    let listing = list_prefix(&client, &keys.assigned_prefix(), None)
        .await
        .unwrap();
    assert!(
        listing.kvs.len() > MAX_TXN_OPS,
        "{} pages",
        listing.kvs.len()
    );
    let mut per_txn = std::collections::BTreeMap::<i64, usize>::new();
    for kv in &listing.kvs {
        *per_txn.entry(kv.mod_revision()).or_default() += 1;
    }
    // Each page with its stamp: half as many pages as ops per txn.
    assert_eq!(
        per_txn.len(),
        listing.kvs.len().div_ceil(MAX_TXN_OPS / 2),
        "{per_txn:?}"
    );
    assert!(per_txn.values().all(|n| *n <= MAX_TXN_OPS / 2));
    assert_eq!(stats.txns as usize, per_txn.len());
    let stamps = list_prefix(&client, &keys.stamps_prefix(), None)
        .await
        .unwrap();
    let revisions = |kvs: &[etcd_client::KeyValue], prefix: &str| {
        kvs.iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (key[prefix.len()..].to_owned(), kv.mod_revision())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        revisions(&stamps.kvs, &keys.stamps_prefix()),
        revisions(&listing.kvs, &keys.assigned_prefix()),
        "every page has its stamp, written in its txn"
    );
    // Every job is on the pages, as the view reads them back.
    let view = ClusterView::load(&client, &keys).await.unwrap();
    let assigned = view
        .jobs
        .values()
        .filter(|j| j.assignment.is_some())
        .count();
    assert_eq!(assigned, jobs);
    assert!(view.problems.is_empty(), "{:?}", view.problems);
    drop(registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_view_reports_convergence_from_owner_keys() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let keys = Keys::new("view").unwrap();
    let a = register(&client, &keys, "a", &["j"], &[], TTL).await;
    put_job(
        &client,
        &keys,
        "j",
        r#"{"schedule":{"every":"1s"},"total":2}"#,
    )
    .await;
    let leader = start_leader(&client, &keys, "L", TTL, RebalanceOptions::default()).await;
    wait_assignment(&client, &keys, "j", |r| owners(r) == ["a", "a"]).await;

    let view = ClusterView::load(&client, &keys).await.unwrap();
    assert_eq!(view.leader.as_ref().unwrap().instance, "L");
    assert!(!view.jobs["j"].converged(), "no owner keys yet");
    let owner = |instance: &str| {
        serde_json::to_vec(&Owner {
            instance: InstanceId::new(instance).unwrap(),
            generation: 1,
        })
        .unwrap()
    };
    let lease = Some(PutOptions::new().with_lease(a.lease()));
    client
        .put(keys.owner("j", 0), owner("a"), lease.clone())
        .await
        .unwrap();
    client
        .put(keys.owner("j", 1), owner("zz"), lease.clone())
        .await
        .unwrap();
    let view = ClusterView::load(&client, &keys).await.unwrap();
    assert_eq!(view.jobs["j"].owned_by_assignee(), 1);
    assert!(!view.jobs["j"].converged());
    client
        .put(keys.owner("j", 1), owner("a"), lease)
        .await
        .unwrap();
    let view = ClusterView::load(&client, &keys).await.unwrap();
    let job = &view.jobs["j"];
    assert!(job.converged());
    // The fencing token is the owner key's create revision (kept across the overwrite above).
    assert!(job.owners[&1].token > job.owners[&0].token);
    assert_eq!(
        view.instances["a"].handlers.iter().collect::<Vec<_>>(),
        ["j"]
    );
    leader.stop().await;
}

/// Runs a leader on its own single-threaded runtime so the test can freeze it (block its only
/// thread) while etcd moves on and compacts: the leader's watches must then re-list.
#[test]
fn after_a_compaction_past_its_watch_the_rebalancer_relists_and_misses_nothing() {
    use std::sync::mpsc;
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let keys = Keys::new("compact").unwrap();

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = mpsc::channel::<()>();
    let (thaw_tx, thaw_rx) = mpsc::channel::<()>();
    let (freeze_tx, freeze_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let leader_thread = {
        let (endpoints, keys) = (endpoints.clone(), keys.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // This client's connection lives on this runtime, so freezing it stalls reads.
                let client = Client::connect(endpoints, None).await.unwrap();
                let leader = start_leader(
                    &client,
                    &keys,
                    "L",
                    Duration::from_secs(60),
                    RebalanceOptions::default(),
                )
                .await;
                ready_tx.send(()).unwrap();
                freeze_rx.await.unwrap();
                frozen_tx.send(()).unwrap();
                thaw_rx.recv().unwrap(); // blocks the runtime's only thread on purpose
                stop_rx.await.unwrap();
                leader.stop().await
            })
        })
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(endpoints, None).await.unwrap();
        let _a = register(&client, &keys, "a", &["j"], &[], TTL).await;
        let b = register(&client, &keys, "b", &["j"], &[], TTL).await;
        put_job(
            &client,
            &keys,
            "j",
            r#"{"schedule":{"every":"1s"},"total":4}"#,
        )
        .await;
        ready_rx.recv().unwrap();
        wait_assignment(&client, &keys, "j", |r| ids(r) == ["a", "b"]).await;

        freeze_tx.send(()).unwrap();
        frozen_rx.recv().unwrap();
        // Flood the frozen leader's instance watch far past etcd's per-watcher buffer (128
        // responses) and HTTP/2 flow-control windows, so etcd parks it as a slow watcher.
        let mut info: InstanceInfo = serde_json::from_slice(
            client.get(keys.instance("a"), None).await.unwrap().kvs()[0].value(),
        )
        .unwrap();
        let a_lease = client.get(keys.instance("a"), None).await.unwrap().kvs()[0].lease();
        for i in 0..1500 {
            info.host = format!("{i}-{}", "x".repeat(8 * 1024));
            client
                .put(
                    keys.instance("a"),
                    serde_json::to_vec(&info).unwrap(),
                    Some(PutOptions::new().with_lease(a_lease)),
                )
                .await
                .unwrap();
        }
        // The change the leader must not miss, then a compaction past it.
        b.close().await.unwrap();
        let rev = client
            .get("/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client
            .compact(rev, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        thaw_tx.send(()).unwrap();

        wait_assignment(&client, &keys, "j", |r| ids(r) == ["a"]).await;
    });
    stop_tx.send(()).unwrap();
    let (_, stats) = leader_thread.join().unwrap();
    assert!(
        stats.relists >= 1,
        "the watch was never compacted, so this test proved nothing: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_delay_parks_a_departed_instances_shards_then_moves_them() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("delay").unwrap();
    let _a = register(&client, &keys, "a", &["j"], &[], TTL).await;
    let b = register(&client, &keys, "b", &["j"], &[], TTL).await;
    put_job(
        &client,
        &keys,
        "j",
        r#"{"schedule":{"every":"1s"},"total":4}"#,
    )
    .await;
    let delay = Duration::from_secs(2);
    let options = RebalanceOptions {
        rebalance_delay: delay,
        ..RebalanceOptions::default()
    };
    let leader = start_leader(&client, &keys, "L", TTL, options).await;
    let before = wait_assignment(&client, &keys, "j", |r| ids(r) == ["a", "b"]).await;

    let left = tokio::time::Instant::now();
    b.close().await.unwrap();
    let after = wait_assignment(&client, &keys, "j", |r| ids(r) == ["a"]).await;
    // Parked for at least the delay (a lower bound: a slow machine cannot make this flaky).
    assert!(left.elapsed() >= delay, "moved after {:?}", left.elapsed());
    assert_eq!(after.generation, before.generation + 1);
    leader.stop().await;
}
