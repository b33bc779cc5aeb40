//! [`TasksError`]: every way a task operation fails, named after the step that failed and
//! carrying the cause's text.

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TasksError {
    /// No PostgreSQL URL was configured.
    #[error("no PostgreSQL server configured (TasksConfig::new takes at least one URL)")]
    NoServers,
    /// A URL does not parse.
    #[error("PostgreSQL URL {url:?} does not parse: {cause}")]
    BadUrl { url: String, cause: String },
    /// A migration failed.
    #[error("migrating server {server} to version {version}: {cause}")]
    Migrate {
        server: usize,
        version: i32,
        cause: String,
    },
    /// The queue is not known to the store.
    #[error("unknown queue {0:?}: no worker has registered it (Tasks::ensure_queue creates it)")]
    UnknownQueue(String),
    /// A queue definition breaks a rule.
    #[error("queue {queue:?}: {field}: {reason}")]
    BadQueue {
        queue: String,
        field: &'static str,
        reason: String,
    },
    /// A task to submit breaks a rule.
    #[error("task {field}: {reason}")]
    BadTask { field: &'static str, reason: String },
    /// A request to the database failed (unreachable, timed out, refused).
    #[error("{op} on server {server}: {cause}")]
    Database {
        op: &'static str,
        server: usize,
        cause: String,
    },
    /// A segment's fence row holds a newer token than this owner's: another owner took over.
    #[error("segment {queue}/{segment}: fenced out (my token {mine}, the fence's {current:?})")]
    Fenced {
        queue: String,
        segment: u32,
        mine: i64,
        current: Option<i64>,
    },
}

impl TasksError {
    /// A database error of `op` on `server`, with the full cause chain's text.
    pub(crate) fn db(op: &'static str, server: usize, e: impl std::fmt::Display) -> Self {
        Self::Database {
            op,
            server,
            cause: e.to_string(),
        }
    }
}

/// The text of a tokio-postgres error including its database message (its `Display` alone
/// says only "db error").
pub(crate) fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}
