//! [`TasksConfig`]: where the store is and the limits producers are held to.

use std::time::Duration;

/// How to reach the store and what to accept. Setters never fail; [`crate::Tasks::connect`]
/// checks.
#[derive(Debug, Clone)]
pub struct TasksConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) pool_size: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_payload: usize,
    pub(crate) max_delay: Duration,
    pub(crate) retention_days: u64,
    pub(crate) partitions_ahead: u64,
    pub(crate) maintenance_every: Duration,
    pub(crate) notify_horizon: Duration,
    pub(crate) background: bool,
    pub(crate) max_running: Option<usize>,
}

impl TasksConfig {
    /// A store on these PostgreSQL servers (`postgres://user[:password]@host:port/db`). With
    /// more than one, segment `s` of `S` lives on server `s · n / S`: the order matters and is
    /// fixed for the life of the data.
    pub fn new<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            pool_size: 16,
            timeout: Duration::from_secs(5),
            max_payload: 64 * 1024,
            max_delay: Duration::from_secs(366 * 24 * 3600),
            retention_days: 7,
            partitions_ahead: 7,
            maintenance_every: Duration::from_secs(3600),
            notify_horizon: Duration::from_secs(600),
            background: true,
            max_running: None,
        }
    }

    /// Connections per server (default 16).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Bound of every connect and request (default 5 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Largest payload, as JSON bytes (default 64 KiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Furthest a task may be due from now (default 366 days).
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Days a finished task and an attempt are kept (default 7): their day partitions are
    /// dropped after.
    pub fn retention_days(mut self, days: u64) -> Self {
        self.retention_days = days;
        self
    }

    /// How often the retention runs (default hourly; one agent at a time does it).
    pub fn maintenance_every(mut self, every: Duration) -> Self {
        self.maintenance_every = every;
        self
    }

    /// At most this many tasks running at once in this process, over every queue (each queue
    /// also has its own `concurrency`); default: no limit beyond the queues'.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = Some(n);
        self
    }

    /// Run the listener (new tasks reach this process's segment workers at once) and the
    /// hourly retention (default on). Off for a process that only submits or reads, such as
    /// the CLI.
    pub fn background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// Tasks due sooner than this are announced to their owner at once (default 10 min; must
    /// exceed every queue's window).
    pub fn notify_horizon(mut self, d: Duration) -> Self {
        self.notify_horizon = d;
        self
    }
}
