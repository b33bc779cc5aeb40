//! The `shardjob` CLI end to end: a real etcd, in-process agents, the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Out, args, shardjob};

use chrono::{DateTime, Utc};
use shardjob_agent::JobSpec;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::kv::list_prefix;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{
    Slow, builder, drain_until, recorder, shards_per_fire, shutdown_all, wait_owned,
};
use tokio::sync::mpsc;

/// Runs `shardjob --endpoints .. --namespace ns args..`.
async fn sj(endpoints: &[String], ns: &str, extra: &[&str]) -> Out {
    let mut a = args(&["--endpoints", &endpoints.join(","), "--namespace", ns]);
    a.extend(args(extra));
    shardjob(a).await
}

async fn ok(endpoints: &[String], ns: &str, args: &[&str]) -> String {
    let o = sj(endpoints, ns, args).await;
    assert!(o.ok, "shardjob {args:?} failed: {}", o.stderr);
    o.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_steer_a_running_namespace_with_the_cli() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let client = etcd.client().await.unwrap();
    let keys = Keys::new("ops").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        // Job j fires only far in the future: in this test only triggers run it.
        let spec = JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(4);
        let handle = builder(&endpoints, "ops", id)
            .job(spec, recorder(id, tx.clone(), Slow::default()))
            .handler("reminders", recorder(id, tx.clone(), Slow::default()))
            .start()
            .await
            .unwrap();
        agents.push(handle);
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;

    let status: serde_json::Value =
        serde_json::from_str(&ok(&endpoints, "ops", &["status", "--json"]).await).unwrap();
    assert_eq!(status["instances"], 2);
    assert!(status["leader"].is_string());
    assert_eq!(status["jobs"][0]["converged"], true, "{status}");
    let table = ok(&endpoints, "ops", &["status"]).await;
    assert!(
        table.contains("JOB")
            && table
                .lines()
                .any(|l| l.starts_with("j ") && l.contains(" yes ")),
        "{table}"
    );
    let show = ok(&endpoints, "ops", &["job", "show", "j"]).await;
    assert!(
        show.contains("assignment generation") && show.contains("TOKEN"),
        "{show}"
    );

    // trigger: every shard once.
    let t = ok(&endpoints, "ops", &["trigger", "j", "--json"]).await;
    assert!(t.contains("\"triggered\":\"j\""), "{t}");
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| {
        shards_per_fire(r).values().any(|s| s.len() == 4)
    })
    .await;
    assert_eq!(runs.len(), 4, "{runs:?}");

    // drain an instance: its shards move to the other.
    ok(
        &endpoints,
        "ops",
        &["disable", "instance", "a", "--reason", "kernel upgrade"],
    )
    .await;
    wait_owned(&statuses, "j", 4, |o| o["b"].len() == 4).await;
    // config set reshards (validated first).
    let bad = sj(&endpoints, "ops", &["config", "set", "j", "--shards", "0"]).await;
    assert!(
        !bad.ok && bad.stderr.lines().count() == 1 && bad.stderr.contains("total"),
        "{}",
        bad.stderr
    );
    ok(&endpoints, "ops", &["config", "set", "j", "--shards", "6"]).await;
    wait_owned(&statuses, "j", 6, |o| o["b"].len() == 6).await;
    ok(&endpoints, "ops", &["enable", "instance", "a"]).await;
    wait_owned(&statuses, "j", 6, |o| o.values().all(|s| s.len() == 3)).await;

    // a one-shot job for a handler the agents registered runs once.
    let at: DateTime<Utc> = DateTime::from_timestamp(Utc::now().timestamp() + 3, 0).unwrap();
    ok(
        &endpoints,
        "ops",
        &[
            "job",
            "create",
            "remind-1",
            "--handler",
            "reminders",
            "--at",
            &at.to_rfc3339(),
            "--shards",
            "2",
            "--param",
            "list=december",
        ],
    )
    .await;
    let exists = sj(
        &endpoints,
        "ops",
        &[
            "job",
            "create",
            "remind-1",
            "--handler",
            "reminders",
            "--at",
            &at.to_rfc3339(),
        ],
    )
    .await;
    assert!(
        !exists.ok && exists.stderr.contains("already exists"),
        "{}",
        exists.stderr
    );
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| {
        r.iter().filter(|r| r.job == "remind-1").count() == 2
    })
    .await;
    assert!(
        runs.iter()
            .filter(|r| r.job == "remind-1")
            .all(|r| r.fire == at && r.job_param == "list=december")
    );

    // A one-shot in the past is refused at creation, naming the field.
    let late = [
        "job",
        "create",
        "late",
        "--handler",
        "reminders",
        "--at",
        "2020-01-01T00:00:00Z",
    ];
    let late = sj(&endpoints, "ops", &late).await;
    assert!(
        !late.ok && late.stderr.contains("schedule.at") && late.stderr.contains("in the past"),
        "{}",
        late.stderr
    );

    // A cron job in a time zone (a clap group refused --cron with --time-zone), an interval
    // with an offset, and config set clearing shard params, selector and timeout.
    let report = [
        "job",
        "create",
        "report",
        "--handler",
        "reminders",
        "--cron",
        "0 30 9 * * Mon-Fri",
        "--time-zone",
        "Europe/Berlin",
    ];
    ok(&endpoints, "ops", &report).await;
    let ticker = [
        "job",
        "create",
        "ticker",
        "--handler",
        "reminders",
        "--every",
        "1h",
        "--offset",
        "15m",
        "--shards",
        "2",
        "--shard-param",
        "0=eu",
        "--selector",
        "zone=a",
        "--timeout",
        "5s",
    ];
    ok(&endpoints, "ops", &ticker).await;
    let config = |dump: &serde_json::Value, job: &str| dump["jobs"][job]["config"].clone();
    let dump: serde_json::Value =
        serde_json::from_str(&ok(&endpoints, "ops", &["dump", "--json"]).await).unwrap();
    assert_eq!(
        config(&dump, "report")["time_zone"],
        "Europe/Berlin",
        "{dump}"
    );
    let t = config(&dump, "ticker");
    assert_eq!(t["offset"], "15m", "{t}");
    assert!(
        t["shard_params"]["0"] == "eu" && !t["selector"].is_null() && !t["timeout"].is_null(),
        "{t}"
    );
    let clear = [
        "config",
        "set",
        "ticker",
        "--clear-shard-params",
        "--clear-selector",
        "--clear-timeout",
        "--offset",
        "0s",
    ];
    ok(&endpoints, "ops", &clear).await;
    let dump: serde_json::Value =
        serde_json::from_str(&ok(&endpoints, "ops", &["dump", "--json"]).await).unwrap();
    let t = config(&dump, "ticker");
    let empty = |v: &serde_json::Value| {
        v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) || v.as_str() == Some("")
    };
    assert!(
        empty(&t["shard_params"]) && empty(&t["timeout"]) && empty(&t["offset"]),
        "{t}"
    );
    assert!(!t["selector"].to_string().contains("zone"), "{t}");

    // delete: refused while enabled, then every key of the job is gone.
    let refused = sj(&endpoints, "ops", &["job", "delete", "j"]).await;
    assert!(
        !refused.ok && refused.stderr.contains("disable it first"),
        "{}",
        refused.stderr
    );
    ok(&endpoints, "ops", &["disable", "job", "j"]).await;
    let deleted = ok(&endpoints, "ops", &["job", "delete", "j"]).await;
    assert!(deleted.starts_with("deleted job j"), "{deleted}");
    let left = list_prefix(&client, keys.root(), None).await.unwrap();
    let of_j: Vec<String> = left
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|k| k.ends_with("/j") || k.contains("/j/"))
        .collect();
    assert!(of_j.is_empty(), "keys of j left: {of_j:?}");
    // Its shards leave the assigned pages with the leader's next pass.
    shardjob_integration::fixtures::wait_unassigned(&client, &keys, "j").await;
    let dump: serde_json::Value =
        serde_json::from_str(&ok(&endpoints, "ops", &["dump", "--json"]).await).unwrap();
    assert!(dump["jobs"].get("j").is_none() && dump["jobs"].get("remind-1").is_some());
    shutdown_all(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_one_clear_line_and_garbage_is_a_named_problem() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let mut client = etcd.client().await.unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["trigger", "nope"], "no such job: nope"),
        (vec!["job", "create", "x", "--cron", "* *"], "schedule.cron"),
        (
            vec!["job", "create", "x", "--every", "5x"],
            "is not a duration",
        ),
        (vec!["job", "create", "x"], "needs --cron, --every or --at"),
        (vec!["job", "show", "nope"], "no such job: nope"),
        (vec!["disable", "instance", "a/b"], "invalid name"),
    ];
    for (args, want) in cases {
        let o = sj(&endpoints, "errs", &args).await;
        assert!(!o.ok, "{args:?} succeeded");
        assert_eq!(o.stderr.lines().count(), 1, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.starts_with("shardjob: ") && o.stderr.contains(want),
            "{args:?}: {}",
            o.stderr
        );
    }
    let unreachable = sj(
        &["http://127.0.0.1:1".to_owned()],
        "errs",
        &["--dial-timeout", "1s", "status"],
    )
    .await;
    assert!(
        !unreachable.ok && unreachable.stderr.lines().count() == 1,
        "{}",
        unreachable.stderr
    );
    assert!(
        unreachable
            .stderr
            .contains("cannot reach etcd at http://127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );

    client
        .put("/shardjob/errs/jobs/broken", "{not json", None)
        .await
        .unwrap();
    let status = ok(&endpoints, "errs", &["status"]).await;
    assert!(
        status.contains("PROBLEMS")
            && status.contains("/shardjob/errs/jobs/broken: not a valid job config"),
        "{status}"
    );
}
