//! The lease Session against real etcd.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use etcd_client::PutOptions;
use shardjob_coordinator::connect::{ConnectConfig, connect};
use shardjob_coordinator::session::{Session, SessionError};
use shardjob_integration::EtcdCluster;
use shardjob_integration::fixtures::PATIENCE;
use shardjob_integration::proxy::Proxy;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

async fn key_exists(client: &mut etcd_client::Client, key: &str) -> bool {
    !client.get(key, None).await.unwrap().kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_until_never_runs_ahead_of_the_server_lease() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let session = Session::grant(&client, Duration::from_secs(2))
        .await
        .unwrap();
    client
        .put(
            "/t/bound",
            "x",
            Some(PutOptions::new().with_lease(session.lease())),
        )
        .await
        .unwrap();
    // Let at least one keep-alive round happen, then stop refreshing.
    sleep(Duration::from_secs(1)).await;
    let handle = session.orphan();
    let valid_until = handle.valid_until();
    assert!(valid_until > Instant::now(), "proof already expired");
    // At the last instant the session claims validity, the server must still hold the lease.
    sleep_until(valid_until - Duration::from_millis(5)).await;
    assert!(
        key_exists(&mut client, "/t/bound").await,
        "key gone before valid_until"
    );
    // And the session says it is lost once the proof runs out (event, not polling).
    timeout(PATIENCE, handle.lost().cancelled()).await.unwrap();
    assert!(!handle.is_valid(Instant::now(), Duration::ZERO));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_the_lease_well_past_its_ttl() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let session = Session::grant(&client, Duration::from_secs(2))
        .await
        .unwrap();
    client
        .put(
            "/t/k",
            "x",
            Some(PutOptions::new().with_lease(session.lease())),
        )
        .await
        .unwrap();
    let first = session.handle().valid_until();
    // Three TTLs: without keep-alives the key would be gone.
    sleep(Duration::from_secs(6)).await;
    assert!(key_exists(&mut client, "/t/k").await);
    let handle = session.handle();
    assert!(handle.valid_until() > first + Duration::from_secs(3));
    assert!(handle.is_valid(Instant::now(), Duration::from_millis(200)));
    session.close().await.unwrap();
    assert!(!key_exists(&mut client, "/t/k").await, "close must revoke");
    assert!(handle.lost().is_cancelled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rides_through_an_etcd_pause_shorter_than_its_proof() {
    let mut etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let session = Session::grant(&client, Duration::from_secs(6))
        .await
        .unwrap();
    client
        .put(
            "/t/k",
            "x",
            Some(PutOptions::new().with_lease(session.lease())),
        )
        .await
        .unwrap();
    let handle = session.handle();
    etcd.pause(0).unwrap();
    sleep(Duration::from_secs(3)).await; // more than one keep-alive interval (2 s) fails
    let mut renewals = handle.renewals();
    renewals.mark_unchanged();
    let stuck = handle.valid_until();
    etcd.resume(0).unwrap();
    // The next acknowledged keep-alive pushes the proof past where it stood during the pause.
    timeout(PATIENCE, renewals.changed())
        .await
        .expect("keep-alives resumed after the pause")
        .unwrap();
    assert!(handle.valid_until() > stuck);
    assert!(!handle.lost().is_cancelled());
    assert!(key_exists(&mut client, "/t/k").await);
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_from_outside_is_noticed_as_lost() {
    let etcd = EtcdCluster::single().unwrap();
    let mut client = etcd.client().await.unwrap();
    let session = Session::grant(&client, Duration::from_secs(3))
        .await
        .unwrap();
    let handle = session.handle();
    client.lease_revoke(session.lease()).await.unwrap();
    // The next keep-alive (within TTL/3) learns the lease is gone.
    timeout(PATIENCE, handle.lost().cancelled()).await.unwrap();
    assert!(!handle.is_valid(Instant::now(), Duration::ZERO));
}

#[tokio::test]
async fn a_bad_ttl_is_a_clear_error() {
    let etcd = EtcdCluster::single().unwrap();
    let client = etcd.client().await.unwrap();
    for ttl in [
        Duration::from_secs(1),
        Duration::from_secs(301),
        Duration::from_millis(2500),
    ] {
        let err = Session::grant(&client, ttl).await.unwrap_err();
        assert!(matches!(err, SessionError::BadTtl(_)), "{err}");
        assert!(err.to_string().contains("2..=300 s"), "{err}");
    }
}

/// A client of `etcd` member 0 through a black-hole proxy, and the endpoint list for it.
async fn through_proxy(etcd: &EtcdCluster) -> (Proxy, etcd_client::Client) {
    let proxy = Proxy::start(([127, 0, 0, 1], etcd.client_port(0)).into())
        .await
        .unwrap();
    let config = ConnectConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", proxy.port())],
        ..ConnectConfig::default()
    };
    let client = connect(&config).await.unwrap();
    (proxy, client)
}

/// Keeps `lease` alive from another client until it is gone (as an etcd raft election does
/// for every lease when it ends).
fn keep_alive_from_outside(mut direct: etcd_client::Client, lease: i64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok((mut keeper, mut acks)) = direct.lease_keep_alive(lease).await else {
            return;
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match acks.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                _ => return,
            }
            sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_ends_with_the_proof_back_when_etcd_kept_the_lease() {
    let etcd = EtcdCluster::single().unwrap();
    let (proxy, client) = through_proxy(&etcd).await;
    let session = Session::grant(&client, Duration::from_secs(2))
        .await
        .unwrap();
    let handle = session.handle();
    let outside = keep_alive_from_outside(etcd.client().await.unwrap(), session.lease());

    proxy.cut();
    // The proof runs out while no keep-alive gets through: lapsed, not lost.
    sleep_until(handle.valid_until() + Duration::from_millis(100)).await;
    assert!(!handle.is_valid(Instant::now(), Duration::ZERO));
    assert!(!handle.lost().is_cancelled(), "a lapse is not a loss");

    let mut renewals = handle.renewals();
    renewals.mark_unchanged();
    proxy.heal();
    timeout(PATIENCE, renewals.changed())
        .await
        .expect("the lease was never proven again")
        .unwrap();
    assert!(handle.is_valid(Instant::now(), Duration::from_millis(200)));
    assert!(!handle.lost().is_cancelled());
    session.close().await.unwrap();
    timeout(PATIENCE, outside).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_ends_in_loss_when_the_lease_expired_meanwhile() {
    let etcd = EtcdCluster::single().unwrap();
    let (proxy, client) = through_proxy(&etcd).await;
    let session = Session::grant(&client, Duration::from_secs(2))
        .await
        .unwrap();
    let handle = session.handle();
    let mut direct = etcd.client().await.unwrap();
    direct
        .put(
            "/t/lapse",
            "x",
            Some(PutOptions::new().with_lease(session.lease())),
        )
        .await
        .unwrap();
    let mut deleted = direct.watch("/t/lapse", None).await.unwrap();

    proxy.cut();
    // The server expires the lease (its key's delete event), then the cut heals.
    timeout(PATIENCE, async {
        while let Some(resp) = deleted.message().await.unwrap() {
            if !resp.events().is_empty() {
                return;
            }
        }
    })
    .await
    .unwrap();
    assert!(!handle.is_valid(Instant::now(), Duration::ZERO));
    assert!(
        !handle.lost().is_cancelled(),
        "no one has told the session yet"
    );
    proxy.heal();
    timeout(PATIENCE, handle.lost().cancelled())
        .await
        .expect("the session never learnt its lease is gone");
    drop(session);
}
