//! The task API over HTTP: an axum [`Router`] any service can mount (`router(ApiState)`), and
//! that `examples/src/bin/tasks_server.rs` serves.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/tasks` | submit one task (`{"queue", "due_at" \| "delay_ms", "payload", "dedupe_key", "max_attempts"}`) or a batch (`{"queue", "tasks": [...]}`) → 201 |
//! | `GET /v1/tasks/{id}` | the task |
//! | `DELETE /v1/tasks/{id}` | cancel: `{"outcome": "cancelled" \| "already_running" \| "already_finished"}` |
//! | `GET /v1/tasks?queue=&status=&due_before=&cursor=&limit=` | a page in due order, `next` cursor |
//! | `GET /v1/tasks/{id}/attempts` | every attempt |
//! | `GET /v1/executions?instance=&limit=` | what a worker ran, newest first |
//! | `GET /v1/jobs`, `/v1/instances`, `/v1/leader` | read-only views of the cron side (etcd) |
//! | `GET /v1/history?job=&shard=&since=&limit=` | a cron job's executions (the PostgreSQL history sink), newest first |
//! | `GET /v1/queues` | every queue: tasks per status, pending by due bucket, lateness, throughput |
//! | `GET /openapi.json` | the OpenAPI 3 document |
//! | `GET /` | the read-only dashboard (`dashboard.html`: plain HTML and a little JavaScript over these routes) |
//!
//! Errors are `{"error": {"code", "message"}}` with a stable code and a message naming the
//! field: 400 malformed input, 401 without the token, 404 unknown id/queue/route, 413 a body
//! over the limit, 429 a rate limit, 503 the store unreachable.
//!
//! Start at [`routes`] (handlers), [`input`] (what a request may hold), [`error`].

mod auth;
pub mod error;
pub mod input;
pub mod openapi;
mod routes;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;

pub use auth::ClientKey;
use error::ApiError;

use crate::ratelimit::KeyedBuckets;
use crate::tasks::Tasks;

/// Largest request body unless configured (a batch of 10 000 small tasks fits).
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Limits the API enforces.
#[derive(Debug, Default)]
pub struct Limits {
    /// Tasks submitted per second per client (token bucket), if limited.
    pub submits: Option<KeyedBuckets>,
}

impl Limits {
    /// Takes `n` submissions from `client`'s bucket.
    pub fn admit_submits(&self, client: &ClientKey, n: u32) -> Result<(), ApiError> {
        let Some(b) = &self.submits else {
            return Ok(());
        };
        b.take(&client.0, f64::from(n), Instant::now())
            .map_err(|wait| {
                metrics::counter!("shardjob_api_rate_limited_total", "limit" => "submits")
                    .increment(1);
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "submissions: over this client's rate limit; retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                )
            })
    }
}

/// What the routes share.
#[derive(Clone)]
pub struct ApiState {
    pub tasks: Tasks,
    /// For `/v1/jobs`, `/v1/instances`, `/v1/leader`: a client and the namespace's keys.
    pub cluster: Option<(etcd_client::Client, shardjob_coordinator::keys::Keys)>,
    /// Requests must carry `Authorization: Bearer <token>` when set.
    pub token: Option<Arc<str>>,
    pub limits: Arc<Limits>,
    pub body_limit: usize,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field(
                "cluster",
                &self.cluster.as_ref().map(|(_, k)| k.root().to_owned()),
            )
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("limits", &self.limits)
            .finish()
    }
}

impl ApiState {
    /// A state over `tasks` with no cluster view, no token, no limits.
    pub fn new(tasks: Tasks) -> Self {
        Self {
            tasks,
            cluster: None,
            token: None,
            limits: Arc::new(Limits::default()),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// The API's router. Serve it with connect info
/// (`into_make_service_with_connect_info::<SocketAddr>()`) for per-client limits by address.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/tasks", get(routes::list).post(routes::submit))
        .route("/v1/tasks/{id}", get(routes::get).delete(routes::cancel))
        .route("/v1/tasks/{id}/attempts", get(routes::attempts))
        .route("/v1/executions", get(routes::executions))
        .route("/v1/jobs", get(routes::jobs))
        .route("/v1/instances", get(routes::instances))
        .route("/v1/leader", get(routes::leader))
        .route("/v1/queues", get(routes::queues))
        .route("/v1/history", get(routes::history))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ));
    Router::new()
        .route("/openapi.json", get(routes::openapi))
        .route("/", get(routes::dashboard))
        .merge(v1)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
}

/// Serves [`router`] on `listener` (with each client's address, for the per-client limits)
/// until `shutdown` resolves; requests in flight then finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
