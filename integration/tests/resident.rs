//! Resident jobs through real agents and real etcd: a run per held shard for as long as it is
//! held, stopped before its shard moves, never two at once for one shard.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{builder, wait_owned};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Started(String, u32, i64),
    Stopped(String, u32),
}

/// A resident handler that counts the live runs of each shard (shared by every agent of the
/// test, so an overlap is seen directly) and takes 200 ms to stop.
fn worker(
    instance: &'static str,
    live: Arc<Mutex<BTreeMap<u32, u32>>>,
    overlaps: Arc<Mutex<u32>>,
    tx: mpsc::UnboundedSender<Ev>,
) -> impl shardjob_agent::Job {
    job_fn(move |ctx: ShardContext| {
        let (live, overlaps, tx) = (live.clone(), overlaps.clone(), tx.clone());
        async move {
            {
                let mut live = live.lock().unwrap();
                let n = live.entry(ctx.shard).or_default();
                if *n > 0 {
                    *overlaps.lock().unwrap() += 1;
                }
                *n += 1;
            }
            let _ = tx.send(Ev::Started(instance.into(), ctx.shard, ctx.token));
            ctx.cancel.cancelled().await;
            tokio::time::sleep(Duration::from_millis(200)).await; // finishing in-flight work
            *live.lock().unwrap().entry(ctx.shard).or_default() -= 1;
            let _ = tx.send(Ev::Stopped(instance.into(), ctx.shard));
            Ok(())
        }
    })
}

async fn until(
    rx: &mut mpsc::UnboundedReceiver<Ev>,
    seen: &mut Vec<Ev>,
    n: usize,
    want: impl Fn(&Ev) -> bool,
) {
    tokio::time::timeout(PATIENCE, async {
        while seen.iter().filter(|e| want(e)).count() < n {
            seen.push(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_runs_follow_their_shards_and_stop_before_they_move() {
    let etcd = EtcdCluster::single().unwrap();
    let live = Arc::new(Mutex::new(BTreeMap::new()));
    let overlaps = Arc::new(Mutex::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = || JobSpec::resident("segments").unwrap().shards(4);
    let a = builder(&etcd.endpoints(), "resident", "a")
        .job(
            spec(),
            worker("a", live.clone(), overlaps.clone(), tx.clone()),
        )
        .start()
        .await
        .unwrap();
    let mut seen = Vec::new();
    until(
        &mut rx,
        &mut seen,
        4,
        |e| matches!(e, Ev::Started(i, ..) if i == "a"),
    )
    .await;

    let b = builder(&etcd.endpoints(), "resident", "b")
        .job(
            spec(),
            worker("b", live.clone(), overlaps.clone(), tx.clone()),
        )
        .start()
        .await
        .unwrap();
    let split = wait_owned(&[a.status(), b.status()], "segments", 4, |m| {
        m.values().all(|s| s.len() == 2)
    })
    .await;
    until(
        &mut rx,
        &mut seen,
        2,
        |e| matches!(e, Ev::Started(i, ..) if i == "b"),
    )
    .await;
    // Each shard b started was stopped on a first, and nothing else moved.
    for s in &split["b"] {
        let stopped = seen.iter().position(|e| *e == Ev::Stopped("a".into(), *s));
        let started = seen
            .iter()
            .position(|e| matches!(e, Ev::Started(i, sh, _) if i == "b" && sh == s));
        assert!(
            stopped.is_some() && stopped < started,
            "shard {s}: {seen:?}"
        );
    }
    for s in &split["a"] {
        assert!(!seen.contains(&Ev::Stopped("a".into(), *s)), "{seen:?}");
    }

    // A graceful leave hands a's shards over the same way; tokens rise at every move.
    a.shutdown().await.unwrap();
    wait_owned(&[b.status()], "segments", 4, |_| true).await;
    until(
        &mut rx,
        &mut seen,
        4,
        |e| matches!(e, Ev::Started(i, ..) if i == "b"),
    )
    .await;
    let mut tokens: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for e in &seen {
        if let Ev::Started(_, s, t) = e {
            tokens.entry(*s).or_default().push(*t);
        }
    }
    for (s, ts) in &tokens {
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "shard {s}: {ts:?}");
    }
    assert_eq!(*overlaps.lock().unwrap(), 0, "{seen:?}");
    b.shutdown().await.unwrap();
    assert!(
        live.lock().unwrap().values().all(|n| *n == 0),
        "every run stopped"
    );
}
