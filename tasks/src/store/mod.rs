//! The PostgreSQL store: one pool per server, and the SQL of every operation.
//!
//! - [`submit`]: inserting tasks (one statement per batch and server: dedupe, insert, notify);
//! - [`owner`]: what a segment's owner does, every change fenced by the segment's token;
//! - [`read`]: get, list, cancel and requeue, for producers and operators;
//! - [`partitions`]: day partitions, created ahead and dropped after retention.

pub mod owner;
pub mod partitions;
pub mod read;
pub mod submit;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::{TasksError, pg_text};

/// Earliest and latest instants used as open bounds in queries (chrono's own extremes are out
/// of PostgreSQL's range).
pub fn far_past() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::UNIX_EPOCH
}

/// See [`far_past`]: 9999-12-31.
pub fn far_future() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(253_402_300_799, 0).unwrap_or_default()
}

/// The NOTIFY channel new tasks are announced on.
pub const CHANNEL: &str = "shardjob_tasks";

/// One PostgreSQL server.
#[derive(Debug)]
pub struct Server {
    pub pool: Pool,
    pub config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    pub name: String,
}

/// Every configured server, in the order of the configured URLs (the segment → server map
/// depends on it).
#[derive(Debug)]
pub struct Store {
    pub servers: Vec<Server>,
    /// Day partitions known to exist: (server, table, day).
    known: Mutex<HashSet<(usize, &'static str, NaiveDate)>>,
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Pools for `urls` (no connection is made yet), `max_size` connections each.
    pub fn new(urls: &[String], max_size: usize, timeout: Duration) -> Result<Self, TasksError> {
        if urls.is_empty() {
            return Err(TasksError::NoServers);
        }
        let servers = urls
            .iter()
            .map(|url| {
                let config: tokio_postgres::Config =
                    url.parse()
                        .map_err(|e: tokio_postgres::Error| TasksError::BadUrl {
                            url: redact(url),
                            cause: pg_text(&e),
                        })?;
                let mut pg = config.clone();
                pg.connect_timeout(timeout);
                let manager = Manager::from_config(
                    pg,
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                );
                let pool = Pool::builder(manager)
                    .max_size(max_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(timeout))
                    .create_timeout(Some(timeout))
                    .recycle_timeout(Some(timeout))
                    .build()
                    .map_err(|e| TasksError::BadUrl {
                        url: redact(url),
                        cause: e.to_string(),
                    })?;
                Ok(Server {
                    pool,
                    config,
                    name: redact(url),
                })
            })
            .collect::<Result<Vec<_>, TasksError>>()?;
        Ok(Self {
            servers,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// A pooled connection to `server`.
    pub async fn conn(
        &self,
        server: usize,
        op: &'static str,
    ) -> Result<deadpool_postgres::Object, TasksError> {
        let s = self
            .servers
            .get(server)
            .ok_or_else(|| TasksError::db(op, server, "no such server"))?;
        s.pool
            .get()
            .await
            .map_err(|e| TasksError::db(op, server, format!("{}: {e}", s.name)))
    }
}

/// A payload as stored, read as text (`payload::text`) and parsed here: PostgreSQL's jsonb
/// rewrites numbers in its own form, and a value that serde_json then refuses must not panic
/// a worker or an API handler (found by schemathesis). What does not parse comes back as a
/// JSON string of the stored text.
pub(crate) fn payload(text: Result<String, tokio_postgres::Error>) -> serde_json::Value {
    match text {
        Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "a stored payload does not parse as JSON here; passing its text");
            serde_json::Value::String(t)
        }),
        Err(e) => {
            tracing::warn!(error = %crate::error::pg_text(&e), "a stored payload could not be read");
            serde_json::Value::Null
        }
    }
}

/// A database error of `op` on `server`.
pub(crate) fn db_err(
    op: &'static str,
    server: usize,
) -> impl Fn(tokio_postgres::Error) -> TasksError {
    move |e| TasksError::db(op, server, pg_text(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        let e = Store::new(
            &["postgres://a:pw@h:notaport/x".into()],
            1,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(matches!(
            Store::new(&[], 1, Duration::from_secs(1)),
            Err(TasksError::NoServers)
        ));
    }
}
