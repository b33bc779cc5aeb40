//! The cron side's execution history in PostgreSQL: the agent's sink writes every execution,
//! the API and the store read it back per job and shard, and retention drops old days.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::builder;
use shardjob_integration::fixtures::PATIENCE;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::{connect, http, raw};
use shardjob_tasks::history::PgHistory;
use shardjob_tasks::http::ApiState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_execution_is_in_the_history_and_old_days_are_dropped() {
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let spec = JobSpec::every("hist", Duration::from_secs(1))
        .unwrap()
        .shards(2);
    let agent = builder(&etcd.endpoints(), "history", "a")
        .exec_sink(Arc::new(PgHistory::start(&tasks)))
        .job(spec, job_fn(|_ctx: ShardContext| async { Ok(()) }))
        .start()
        .await
        .unwrap();
    // Three fires of both shards reach the table (the sink writes in the background).
    let runs = tokio::time::timeout(PATIENCE, async {
        loop {
            let runs = tasks.history("hist", None, None, 100).await.unwrap();
            if runs.len() >= 6 {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap();
    assert!(
        runs.iter()
            .all(|r| r.outcome == "ok" && r.instance == "a" && r.token > 0),
        "{runs:?}"
    );
    assert!(
        runs.windows(2).all(|w| w[0].started_at >= w[1].started_at),
        "newest first"
    );
    let shard1 = tasks.history("hist", Some(1), None, 100).await.unwrap();
    assert!(!shard1.is_empty() && shard1.iter().all(|r| r.shard == 1));
    let state = ApiState::new(tasks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(shardjob_tasks::http::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let (st, v) = http(
        api,
        "GET",
        "/v1/history?job=hist&shard=0&limit=2",
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let list = v["executions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert!(
        list.iter().all(|e| e["shard"] == 0 && e["job"] == "hist"),
        "{v}"
    );
    let (st, _) = http(api, "GET", "/v1/history?job=hist&shard=x", None, None).await;
    assert_eq!(st, 400);
    agent.shutdown().await.unwrap();

    // A day past the retention (7 days) is dropped whole; today stays.
    let old = Utc::now()
        .date_naive()
        .checked_sub_days(Days::new(10))
        .unwrap();
    let next = old.checked_add_days(Days::new(1)).unwrap();
    let db = raw(&pg).await;
    db.batch_execute(&format!(
        "CREATE TABLE executions_p{} PARTITION OF executions FOR VALUES FROM ('{old} 00:00:00+00') TO ('{next} 00:00:00+00');
         INSERT INTO executions VALUES ('hist', 0, '{old} 12:00:00+00', 'a', 1, '{old} 12:00:00+00', '{old} 12:00:01+00', 'ok')",
        old.format("%Y%m%d")
    ))
    .await
    .unwrap();
    let dropped = tasks.maintain().await.unwrap();
    assert!(
        dropped.contains(&format!("executions_p{}", old.format("%Y%m%d"))),
        "{dropped:?}"
    );
    let left = tasks.history("hist", None, None, 1000).await.unwrap();
    assert!(
        left.len() >= 6 && left.iter().all(|r| r.started_at.date_naive() > old),
        "{left:?}"
    );
}
