//! `shardjob tasks …` end to end: the real binary against a real PostgreSQL (no etcd).
#![allow(clippy::unwrap_used)]

mod common;

use common::{args, shardjob};
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::connect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_list_cancel_requeue_and_clear_errors() {
    let pg = PgServer::start().unwrap();
    connect(&[&pg]).await.ensure_queue("cli", 4).await.unwrap();
    let url = pg.url();
    let sj = |rest: &[&str]| {
        let mut a = args(&["tasks", "--pg-url", &url]);
        a.extend(args(rest));
        shardjob(a)
    };
    let out = sj(&[
        "submit",
        "cli",
        "--after",
        "1h",
        "--payload",
        r#"{"coupon":"C-1"}"#,
    ])
    .await;
    assert!(out.ok, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    let out = sj(&["get", &id]).await;
    assert!(
        out.ok && out.stdout.contains("status    pending"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("C-1"), "{}", out.stdout);
    let out = sj(&["list", "cli", "--status", "pending"]).await;
    assert!(
        out.ok && out.stdout.lines().count() == 2 && out.stdout.contains(&id),
        "{}",
        out.stdout
    );
    let out = sj(&["cancel", &id]).await;
    assert_eq!(out.stdout.trim(), "cancelled", "{}", out.stderr);
    let out = shardjob(args(&["--json", "tasks", "--pg-url", &url, "get", &id])).await;
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["task"]["status"], "cancelled", "{v}");
    let out = sj(&["requeue", &id, "--extra", "2"]).await;
    assert!(
        out.ok && out.stdout.contains("pending again"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = sj(&["attempts", &id]).await;
    assert!(
        out.ok && out.stdout.starts_with("ATTEMPT"),
        "{}",
        out.stdout
    );
    let dup = sj(&["submit", "cli", "--dedupe-key", "k", "--after", "1h"]).await;
    let again = sj(&["submit", "cli", "--dedupe-key", "k", "--after", "1h"]).await;
    assert!(
        again.stdout.starts_with(dup.stdout.trim()) && again.stdout.contains("existing"),
        "{}",
        again.stdout
    );

    for (argv, needle) in [
        (vec!["get", "not-a-uuid"], "not a task id"),
        (vec!["submit", "nope"], "unknown queue \"nope\""),
        (
            vec!["submit", "cli", "--payload", "{bad"],
            "--payload is not JSON",
        ),
        (
            vec!["submit", "cli", "--at", "tomorrow"],
            "--at \"tomorrow\"",
        ),
        (vec!["list", "cli", "--status", "weird"], "status"),
        (
            vec!["cancel", "00000000-0000-0000-0000-000000000000"],
            "no task",
        ),
    ] {
        let out = sj(&argv).await;
        assert!(!out.ok, "{argv:?} succeeded: {}", out.stdout);
        assert_eq!(out.stderr.lines().count(), 1, "{argv:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{argv:?}: {}", out.stderr);
    }
    let out = shardjob(args(&["tasks", "get", &id])).await;
    assert!(
        !out.ok && out.stderr.contains("pg-url"),
        "without a URL: {}",
        out.stderr
    );
}
