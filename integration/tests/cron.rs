//! A real cron schedule firing through agents (every other test's cron never fires): every
//! second, in a zone that is not UTC, each fire runs every shard exactly once across a
//! graceful hand-off.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use shardjob_agent::JobSpec;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{
    Slow, assert_no_double_runs_and_rising_tokens, builder, drain_until, recorder, shards_per_fire,
    wait_owned,
};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_in_a_time_zone_runs_each_fire_once_across_a_hand_off() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Half an hour off UTC: a zone mistake would move every fire by 30 minutes, not 0.
    let spec = || {
        JobSpec::new("tick", "*/1 * * * * *")
            .unwrap()
            .time_zone("Asia/Kolkata")
            .shards(4)
    };
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let agent = builder(&endpoints, "cron", id)
            .job(spec(), recorder(id, tx.clone(), Slow::default()))
            .start()
            .await
            .unwrap();
        agents.push(agent);
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    wait_owned(&statuses, "tick", 4, |o| o.values().all(|s| s.len() == 2)).await;

    // Two whole fires with both agents, then b hands off, then two whole fires on a alone.
    let mut runs = Vec::new();
    let complete = |runs: &[shardjob_integration::agents::Ran], n: usize| {
        shards_per_fire(runs)
            .values()
            .filter(|s| s.len() == 4)
            .count()
            >= n
    };
    drain_until(&mut rx, &mut runs, |r| complete(r, 2)).await;
    let handoff: DateTime<Utc> = Utc::now();
    agents.pop().unwrap().shutdown().await.unwrap();
    wait_owned(&statuses[..1], "tick", 4, |o| o["a"].len() == 4).await;
    let after = |r: &[shardjob_integration::agents::Ran]| {
        shards_per_fire(r)
            .range(handoff..)
            .filter(|(_, s)| s.len() == 4)
            .count()
            >= 3
    };
    drain_until(&mut rx, &mut runs, after).await;
    agents.pop().unwrap().shutdown().await.unwrap();
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }

    assert_no_double_runs_and_rising_tokens(&runs);
    let per_fire = shards_per_fire(&runs);
    let fires: Vec<&DateTime<Utc>> = per_fire.keys().collect();
    for f in &fires {
        assert_eq!(
            f.timestamp_subsec_nanos(),
            0,
            "cron fires on whole seconds: {f}"
        );
    }
    // Every second between the first and the last complete fire ran all four shards.
    let complete_fires: Vec<&DateTime<Utc>> = per_fire
        .iter()
        .filter(|(_, s)| s.len() == 4)
        .map(|(f, _)| f)
        .collect();
    let (first, last) = (complete_fires[0], complete_fires[complete_fires.len() - 1]);
    let mut t = *first;
    while t <= *last {
        assert_eq!(
            per_fire.get(&t).map(|s| s.len()),
            Some(4),
            "fire {t} did not run every shard: {per_fire:?}"
        );
        t += chrono::Duration::seconds(1);
    }
    assert!(runs.iter().any(|r| r.instance == "b"), "b never ran");
    assert!(
        runs.iter().any(|r| r.instance == "a" && r.fire > handoff),
        "a took nothing over"
    );
}
