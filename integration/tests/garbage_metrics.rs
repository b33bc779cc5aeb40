//! A cursor or running marker that does not decode, read in a claim txn, is counted in
//! `shardjob_garbage_values_total{kind}` (and logged with its key) instead of silently becoming
//! "none". Its own test binary: it installs the process's one global metrics recorder.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use shardjob_agent::{JobSpec, job_fn};
use shardjob_coordinator::keys::Keys;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{builder, wait_owned};

/// Counts increments of `shardjob_garbage_values_total` by its `kind` label.
#[derive(Default)]
struct Garbage(Mutex<BTreeMap<String, Arc<Count>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl Recorder for Garbage {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() != "shardjob_garbage_values_total" {
            return Counter::noop();
        }
        let kind = key
            .labels()
            .find(|l| l.key() == "kind")
            .map_or(String::new(), |l| l.value().to_owned());
        let count = self.0.lock().unwrap().entry(kind).or_default().clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

static GARBAGE: std::sync::OnceLock<&'static Garbage> = std::sync::OnceLock::new();

fn counted(kind: &str) -> u64 {
    GARBAGE
        .get()
        .and_then(|g| {
            g.0.lock()
                .unwrap()
                .get(kind)
                .map(|c| c.0.load(Ordering::SeqCst))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_cursor_and_marker_read_at_a_claim_are_counted() {
    let recorder: &'static Garbage = Box::leak(Box::default());
    metrics::set_global_recorder(recorder).unwrap();
    GARBAGE.set(recorder).ok();

    let etcd = EtcdCluster::single().unwrap();
    let keys = Keys::new("garbage").unwrap();
    let mut client = etcd.client().await.unwrap();
    // Written before anyone claims the shard: the claim txn reads both.
    client
        .put(keys.cursor("j", 0), "{not json", None)
        .await
        .unwrap();
    client
        .put(keys.running("j", 0), "{not json", None)
        .await
        .unwrap();
    let spec = JobSpec::new("j", "0 0 0 1 1 * 2099")
        .unwrap()
        .shards(1)
        .failover(true);
    let agent = builder(&etcd.endpoints(), "garbage", "a")
        .job(spec, job_fn(|_| async { Ok(()) }))
        .start()
        .await
        .unwrap();
    wait_owned(&[agent.status()], "j", 1, |_| true).await;
    // The claim's answer is handled before the shard shows as owned.
    assert_eq!(counted("cursor"), 1);
    assert_eq!(counted("running"), 1);
    assert_eq!(
        agent.status().borrow().executions,
        0,
        "a garbage marker re-ran something"
    );
    agent.shutdown().await.unwrap();
}
