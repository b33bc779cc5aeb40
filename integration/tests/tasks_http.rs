//! The task API over real HTTP, against a real agent, etcd and PostgreSQL: every route, the
//! error shapes (400 naming the field, 401, 404, 413, 429), and the cluster views.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shardjob_integration::EtcdCluster;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::*;
use shardjob_tasks::http::{ApiState, Limits};
use shardjob_tasks::ratelimit::KeyedBuckets;
use tokio::sync::mpsc;

async fn start_api(state: ApiState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(shardjob_tasks::http::serve(
        listener,
        state,
        std::future::pending(),
    ));
    addr
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_in_json_and_errors_name_the_field() {
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "web", &rec, tx)
        .segments(2)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-http", "a", spec).await;
    tasks.ensure_queue("web", 2).await.unwrap();
    let keys = shardjob_coordinator::keys::Keys::new("tasks-http").unwrap();
    let state = ApiState {
        cluster: Some((etcd.client().await.unwrap(), keys)),
        body_limit: 64 * 1024,
        ..ApiState::new(tasks.clone())
    };
    let api = start_api(state).await;

    // Submit one, see it run, read it and its attempts and the worker's executions.
    let (st, v) = http(
        api,
        "POST",
        "/v1/tasks",
        Some(r#"{"queue":"web","delay_ms":200,"payload":{"n":1}}"#),
        None,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["duplicate"], json!(false));
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.id.to_string() == id).await;
    wait_status(&tasks, &[id.parse().unwrap()], "done").await;
    let (st, v) = http(api, "GET", &format!("/v1/tasks/{id}"), None, None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("done")), "{v}");
    let (st, v) = http(api, "GET", &format!("/v1/tasks/{id}/attempts"), None, None).await;
    assert_eq!(
        (st, v["attempts"][0]["outcome"].as_str()),
        (200, Some("ok")),
        "{v}"
    );
    let (st, v) = http(api, "GET", "/v1/executions?instance=a", None, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["executions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["task"] == json!(id)),
        "{v}"
    );

    // A batch, a page of it, and cancels.
    let batch = json!({"queue": "web", "tasks": [{"delay_ms": 60_000}, {"due_at": "2027-06-01T00:00:00Z", "dedupe_key": "k"}]});
    let (st, v) = http(api, "POST", "/v1/tasks", Some(&batch.to_string()), None).await;
    assert_eq!(st, 201, "{v}");
    let later = v["tasks"][0]["id"].as_str().unwrap().to_owned();
    let (st, v) = http(
        api,
        "GET",
        "/v1/tasks?queue=web&status=pending&limit=1",
        None,
        None,
    )
    .await;
    assert_eq!(
        (st, v["tasks"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
    let cursor = v["next"].as_str().unwrap().to_owned();
    let (st, v) = http(
        api,
        "GET",
        &format!("/v1/tasks?queue=web&status=pending&cursor={cursor}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (st, v["tasks"].as_array().map(Vec::len), &v["next"]),
        (200, Some(1), &Value::Null),
        "{v}"
    );
    let (st, v) = http(api, "DELETE", &format!("/v1/tasks/{later}"), None, None).await;
    assert_eq!((st, v["outcome"].as_str()), (200, Some("cancelled")), "{v}");
    let (st, v) = http(api, "DELETE", &format!("/v1/tasks/{id}"), None, None).await;
    assert_eq!(
        (st, v["outcome"].as_str()),
        (200, Some("already_finished")),
        "{v}"
    );

    // Errors: status, stable code, a message naming the field.
    // (method, path, body, status, code, a part of the message)
    type Row<'a> = (&'a str, String, Option<&'a str>, u16, &'a str, &'a str);
    let table: Vec<Row> = vec![
        (
            "GET",
            "/v1/tasks/not-a-uuid".into(),
            None,
            400,
            "bad_request",
            "id:",
        ),
        (
            "GET",
            format!("/v1/tasks/{}", uuid_nil()),
            None,
            404,
            "not_found",
            "id: no task",
        ),
        (
            "DELETE",
            format!("/v1/tasks/{}", uuid_nil()),
            None,
            404,
            "not_found",
            "id: no task",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"queue":"web","due_at":"soon"}"#),
            400,
            "bad_request",
            "due_at",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"queue":"nope","delay_ms":1}"#),
            404,
            "unknown_queue",
            "nope",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some("{not json"),
            400,
            "bad_request",
            "body:",
        ),
        (
            "GET",
            "/v1/tasks?queue=web&status=weird".into(),
            None,
            400,
            "bad_request",
            "status",
        ),
        (
            "GET",
            "/v1/tasks?queue=web&due_before=yesterday".into(),
            None,
            400,
            "bad_request",
            "due_before",
        ),
        (
            "GET",
            "/v1/tasks?queue=web&colour=red".into(),
            None,
            400,
            "bad_request",
            "colour",
        ),
        (
            "GET",
            "/v1/tasks".into(),
            None,
            400,
            "bad_request",
            "queue: required",
        ),
        (
            "GET",
            "/v2/elsewhere".into(),
            None,
            404,
            "not_found",
            "no such route",
        ),
    ];
    for (method, path, body, status, c, needle) in table {
        let (st, v) = http(api, method, &path, body, None).await;
        assert_eq!((st, code(&v)), (status, c), "{method} {path}: {v}");
        assert!(message(&v).contains(needle), "{method} {path}: {v}");
    }
    let big = json!({"queue": "web", "delay_ms": 1, "payload": "x".repeat(100_000)}).to_string();
    let (st, v) = http(api, "POST", "/v1/tasks", Some(&big), None).await;
    assert_eq!((st, code(&v)), (413, "payload_too_large"), "{v}");

    // The cron side, read-only.
    let (st, v) = http(api, "GET", "/v1/jobs", None, None).await;
    assert_eq!(st, 200);
    assert!(v["jobs"].get("tasks.web").is_some(), "{v}");
    let (st, v) = http(api, "GET", "/v1/instances", None, None).await;
    assert!(st == 200 && v["instances"].get("a").is_some(), "{v}");
    let (st, v) = http(api, "GET", "/v1/leader", None, None).await;
    assert_eq!(
        (st, v["leader"]["instance"].as_str()),
        (200, Some("a")),
        "{v}"
    );
    let (st, v) = http(api, "GET", "/openapi.json", None, None).await;
    assert_eq!((st, v["openapi"].as_str()), (200, Some("3.0.3")));
    agent.shutdown().await.unwrap();
}

fn uuid_nil() -> String {
    shardjob_tasks::Uuid::nil().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_set_and_a_client_over_its_rate_gets_429() {
    let pg = PgServer::start().unwrap();
    let tasks = connect(&[&pg]).await;
    tasks.ensure_queue("lim", 1).await.unwrap();
    let state = ApiState {
        token: Some(Arc::from("s3cret")),
        limits: Arc::new(Limits {
            submits: Some(KeyedBuckets::new(1.0, 3.0)),
        }),
        ..ApiState::new(tasks)
    };
    let api = start_api(state).await;
    let one = r#"{"queue":"lim","delay_ms":60000}"#;
    for token in [None, Some("wrong")] {
        let (st, v) = http(api, "POST", "/v1/tasks", Some(one), token).await;
        assert_eq!((st, code(&v)), (401, "unauthorized"), "{token:?}: {v}");
    }
    let (st, _) = http(api, "GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200, "the document needs no token");
    // A burst of 3, then 1 per second: the 4th at once is refused and says when to retry.
    for i in 0..3 {
        let (st, v) = http(api, "POST", "/v1/tasks", Some(one), Some("s3cret")).await;
        assert_eq!(st, 201, "submit {i}: {v}");
    }
    let (st, v) = http(api, "POST", "/v1/tasks", Some(one), Some("s3cret")).await;
    assert_eq!((st, code(&v)), (429, "rate_limited"), "{v}");
    assert!(message(&v).contains("retry in"), "{v}");
    // A batch of 5 is 5 submissions.
    let five = json!({"queue": "lim", "tasks": vec![json!({"delay_ms": 1}); 5]}).to_string();
    let (st, _) = http(api, "POST", "/v1/tasks", Some(&five), Some("s3cret")).await;
    assert_eq!(st, 429);
}
