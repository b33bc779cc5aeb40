//! The store's schema, as versioned migrations the crate runs at start on every server.
//!
//! Idempotent and safe when many agents start at once: each server's migrations run under a
//! transaction-scoped advisory lock, and a version applied once is recorded in
//! `shardjob_task_migrations` and never run again. Add a migration by appending to
//! [`MIGRATIONS`]; never edit one that shipped.
//!
//! Tables (see docs/ARCHITECTURE.md, "Delayed tasks"):
//! - `tasks`, partitioned by day of `due_at` (finished tasks leave by dropping a day);
//! - `attempts`, partitioned by day of `started_at`;
//! - `segment_fences`, one row per (queue, segment): the token of its current owner;
//! - `task_dedupe`, (queue, dedupe key) → task, unique per queue (a partitioned table cannot
//!   hold a unique index without its partition key);
//! - `task_queues`, each queue's segment count;
//! - `executions` (version 2), the cron jobs' execution history (`history.rs`), partitioned
//!   by day of `started_at`.

use deadpool_postgres::Pool;

use crate::error::{TasksError, pg_text};

/// Advisory lock key of the migrations ("sjtasks" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6a74_6173_6b73;

/// The migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE task_queues (
    name        text PRIMARY KEY,
    segments    int NOT NULL CHECK (segments > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tasks (
    id            uuid NOT NULL,
    queue         text NOT NULL,
    segment       int NOT NULL,
    due_at        timestamptz NOT NULL,
    payload       jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending','running','done','failed','cancelled')),
    attempt       int NOT NULL DEFAULT 0,
    max_attempts  int CHECK (max_attempts > 0),  -- NULL: the queue's retry policy
    dedupe_key    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    last_error    text,
    token         bigint,
    instance      text,
    recovery      boolean NOT NULL DEFAULT false,
    lost          int NOT NULL DEFAULT 0,
    PRIMARY KEY (id, due_at)
) PARTITION BY RANGE (due_at);
CREATE TABLE tasks_default PARTITION OF tasks DEFAULT;
CREATE INDEX tasks_pending ON tasks (queue, segment, due_at) WHERE status = 'pending';
CREATE INDEX tasks_running ON tasks (queue, segment) WHERE status = 'running';
CREATE INDEX tasks_by_status ON tasks (queue, status, due_at, id);
CREATE TABLE attempts (
    task        uuid NOT NULL,
    attempt     int NOT NULL,
    queue       text NOT NULL,
    segment     int NOT NULL,
    instance    text NOT NULL,
    token       bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    outcome     text NOT NULL,
    error       text,
    PRIMARY KEY (task, attempt, started_at)
) PARTITION BY RANGE (started_at);
CREATE TABLE attempts_default PARTITION OF attempts DEFAULT;
CREATE INDEX attempts_by_instance ON attempts (instance, started_at);
CREATE TABLE segment_fences (
    queue      text NOT NULL,
    segment    int NOT NULL,
    token      bigint NOT NULL,
    instance   text NOT NULL,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, segment)
);
CREATE TABLE task_dedupe (
    queue       text NOT NULL,
    dedupe_key  text NOT NULL,
    task        uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, dedupe_key)
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE executions (
    job         text NOT NULL,
    shard       int NOT NULL,
    fire_time   timestamptz NOT NULL,
    instance    text NOT NULL,
    token       bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    outcome     text NOT NULL
) PARTITION BY RANGE (started_at);
CREATE TABLE executions_default PARTITION OF executions DEFAULT;
CREATE INDEX executions_by_job ON executions (job, shard, started_at);
"#,
    ),
];

/// Brings server `server` to the latest version.
pub async fn migrate(pool: &Pool, server: usize) -> Result<(), TasksError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| TasksError::db("connecting to migrate", server, e))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    let fail = |version: i32| {
        move |e: tokio_postgres::Error| TasksError::Migrate {
            server,
            version,
            cause: pg_text(&e),
        }
    };
    let tx = client.transaction().await.map_err(fail(0))?;
    // Every starting agent queues here; the first applies, the others find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail(0))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS shardjob_task_migrations (
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(fail(0))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM shardjob_task_migrations",
            &[],
        )
        .await
        .map_err(fail(0))?
        .get(0);
    if current > latest {
        return Err(TasksError::Migrate {
            server,
            version: current,
            cause: format!(
                "the database is at version {current}, newer than this build's {latest}; upgrade the agent"
            ),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(fail(*version))?;
        tx.execute(
            "INSERT INTO shardjob_task_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(fail(*version))?;
        tracing::info!(server, version, "task store migrated");
    }
    tx.commit().await.map_err(fail(latest))
}
