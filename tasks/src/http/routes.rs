//! The handlers of every route.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::input::{SubmitBody, id, time};
use super::{ApiState, ClientKey};
use crate::store::read::CancelOutcome;

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

fn ok(v: impl serde::Serialize) -> Answer {
    Ok((StatusCode::OK, Json(json!(v))))
}

/// A JSON body the extractor refused: too large (413) or malformed (400), in our shape.
fn body_error(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            r.body_text(),
        )
    } else {
        ApiError::bad_request(format!("body: {}", r.body_text()))
    }
}

fn query_error(r: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", r.body_text()))
}

/// Query parameters as given; each route takes what it knows and refuses the rest.
fn params(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    known: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "query: unknown parameter {k:?} (known: {known:?})"
        )));
    }
    Ok(q)
}

fn limit(q: &HashMap<String, String>, default: usize) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit: {v:?} is not in 1..=1000"))),
    }
}

pub async fn submit(
    State(s): State<ApiState>,
    client: Option<Extension<ClientKey>>,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(body_error)?;
    let (queue, tasks, batch) = body.into_tasks()?;
    let n = tasks.len() as u32;
    let client = client.map_or_else(|| ClientKey("local".into()), |Extension(c)| c);
    s.limits.admit_submits(&client, n)?;
    let done = s.tasks.submit_batch(&queue, tasks).await?;
    let v = if batch {
        json!({"tasks": done})
    } else {
        json!(done.first())
    };
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn get(State(s): State<ApiState>, Path(task): Path<String>) -> Answer {
    let task = id(&task)?;
    match s.tasks.task(task).await? {
        Some(t) => ok(t),
        None => Err(ApiError::not_found(format!("id: no task {task}"))),
    }
}

pub async fn attempts(State(s): State<ApiState>, Path(task): Path<String>) -> Answer {
    let task = id(&task)?;
    match s.tasks.get(task).await? {
        Some(st) => ok(json!({"attempts": st.attempts})),
        None => Err(ApiError::not_found(format!("id: no task {task}"))),
    }
}

pub async fn cancel(State(s): State<ApiState>, Path(task): Path<String>) -> Answer {
    let task = id(&task)?;
    match s.tasks.cancel(task).await? {
        CancelOutcome::Unknown => Err(ApiError::not_found(format!("id: no task {task}"))),
        outcome => ok(json!({"id": task, "outcome": outcome})),
    }
}

pub async fn list(
    State(s): State<ApiState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Answer {
    let q = params(q, &["queue", "status", "due_before", "cursor", "limit"])?;
    let queue = q
        .get("queue")
        .ok_or_else(|| ApiError::bad_request("queue: required"))?;
    let due_before = q
        .get("due_before")
        .map(|t| time("due_before", t))
        .transpose()?;
    let page = s
        .tasks
        .list(
            queue,
            q.get("status").map(String::as_str),
            due_before,
            q.get("cursor").map(String::as_str),
            limit(&q, 100)?,
        )
        .await?;
    ok(page)
}

pub async fn executions(
    State(s): State<ApiState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Answer {
    let q = params(q, &["instance", "limit"])?;
    let instance = q
        .get("instance")
        .ok_or_else(|| ApiError::bad_request("instance: required"))?;
    shardjob_sharding::validate_name("instance id", instance)
        .map_err(|e| ApiError::bad_request(format!("instance: {e}")))?;
    let runs = s.tasks.executions(instance, limit(&q, 100)?).await?;
    ok(json!({"executions": runs}))
}

async fn view(s: &ApiState) -> Result<shardjob_coordinator::view::ClusterView, ApiError> {
    let Some((client, keys)) = &s.cluster else {
        return Err(ApiError::not_found(
            "this server has no etcd connection for cluster views",
        ));
    };
    shardjob_coordinator::view::ClusterView::load(client, keys)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })
}

pub async fn jobs(State(s): State<ApiState>) -> Answer {
    let v = view(&s).await?;
    ok(
        json!({"revision": v.revision, "jobs": v.jobs, "disabled": v.disabled, "problems": v.problems}),
    )
}

pub async fn instances(State(s): State<ApiState>) -> Answer {
    let v = view(&s).await?;
    // Each instance's lease, as its owner keys carry it, and what is left of it.
    let mut leases: std::collections::BTreeMap<String, i64> = Default::default();
    for job in v.jobs.values() {
        for o in job.owners.values().filter(|o| o.current) {
            leases.insert(o.owner.instance.to_string(), o.lease);
        }
    }
    let mut left = serde_json::Map::new();
    if let Some((client, _)) = &s.cluster {
        for (instance, lease) in leases {
            let mut c = client.clone();
            if let Ok(r) = c.lease_time_to_live(lease, None).await {
                left.insert(instance, json!(r.ttl()));
            }
        }
    }
    ok(json!({"revision": v.revision, "instances": v.instances, "leases": left}))
}

pub async fn history(
    State(s): State<ApiState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Answer {
    let q = params(q, &["job", "shard", "since", "limit"])?;
    let job = q
        .get("job")
        .ok_or_else(|| ApiError::bad_request("job: required"))?;
    shardjob_sharding::validate_name("job name", job)
        .map_err(|e| ApiError::bad_request(format!("job: {e}")))?;
    let shard = q
        .get("shard")
        .map(|v| {
            v.parse::<u32>()
                .ok()
                .filter(|s| *s < shardjob_coordinator::model::MAX_TOTAL)
                .ok_or_else(|| ApiError::bad_request(format!("shard: {v:?} is not a shard number")))
        })
        .transpose()?;
    let since = q.get("since").map(|t| time("since", t)).transpose()?;
    let runs = s.tasks.history(job, shard, since, limit(&q, 100)?).await?;
    ok(json!({"executions": runs}))
}

pub async fn queues(State(s): State<ApiState>) -> Answer {
    ok(json!({"queues": s.tasks.queue_stats().await?}))
}

pub async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

pub async fn leader(State(s): State<ApiState>) -> Answer {
    let v = view(&s).await?;
    ok(json!({"revision": v.revision, "leader": v.leader}))
}

pub async fn openapi(State(s): State<ApiState>) -> Json<Value> {
    Json(super::openapi::document(s.token.is_some()))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route (see /openapi.json)")
}
