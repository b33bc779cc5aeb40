//! [`AgentBuilder`]: how a service configures and starts its agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use shardjob_coordinator::connect::{ConnectConfig, ConnectError, connect};
use shardjob_coordinator::keys::{DEFAULT_PREFIX, Keys};
use shardjob_coordinator::liveness::LivenessOptions;
use shardjob_coordinator::liveness::server::LivenessServer;
use shardjob_coordinator::model::{ConfigError, MAX_WEIGHT};
use shardjob_coordinator::rebalance::RebalanceOptions;
use shardjob_coordinator::session::{DEFAULT_TTL, MAX_TTL, MIN_TTL};
use shardjob_sharding::{validate_label, validate_name};
use tokio::time::timeout;

use crate::execlog::ExecLog;
use crate::handle::AgentHandle;
use crate::job::{DynJob, Job};
use crate::runtime::{AgentConfig, Core};
use crate::spec::JobSpec;

/// Why an agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("invalid job: {0}")]
    InvalidJob(#[from] ConfigError),
    #[error("two handlers are named {0:?}")]
    DuplicateHandler(String),
    #[error("connecting to etcd: {0}")]
    Connect(#[from] ConnectError),
    #[error("publishing the config of job {job}: {cause}")]
    Publish { job: String, cause: String },
    #[error("opening the execution log {path}: {cause}")]
    ExecLog { path: String, cause: String },
    #[error("the agent's task ended abnormally: {0}")]
    Task(String),
    #[error(
        "instance id {id:?} is in use by a live process ({holder}); give each process its own id"
    )]
    InstanceLive { id: String, holder: String },
    #[error("starting the liveness stream's listener: {0}")]
    Liveness(#[from] shardjob_coordinator::liveness::LivenessError),
    #[error("checking whether instance id {id:?} is free: {cause}")]
    InstanceCheck {
        id: String,
        cause: shardjob_coordinator::etcd_error::EtcdError,
    },
}

/// Configures an agent; see [`crate::Agent::builder`].
pub struct AgentBuilder {
    connect: ConnectConfig,
    namespace: String,
    prefix: String,
    instance_id: Option<String>,
    labels: BTreeMap<String, String>,
    weight: u32,
    ttl: Duration,
    jobs: Vec<(JobSpec, Arc<dyn DynJob>)>,
    handlers: Vec<(String, Arc<dyn DynJob>)>,
    max_concurrent: Option<usize>,
    exec_log: Option<PathBuf>,
    exec_sinks: Vec<Arc<dyn crate::execlog::ExecSink>>,
    shutdown_timeout: Duration,
    rebalance: RebalanceOptions,
    leader_eligible: bool,
    liveness: Option<LivenessOptions>,
    connect_timeout: Duration,
    job_labels: bool,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("endpoints", &self.connect.endpoints)
            .field("namespace", &self.namespace)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Default for AgentBuilder {
    fn default() -> Self {
        Self {
            connect: ConnectConfig::default(),
            namespace: "default".into(),
            prefix: DEFAULT_PREFIX.into(),
            instance_id: None,
            labels: BTreeMap::new(),
            weight: 1,
            ttl: DEFAULT_TTL,
            jobs: Vec::new(),
            handlers: Vec::new(),
            max_concurrent: None,
            exec_log: None,
            exec_sinks: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            rebalance: RebalanceOptions::default(),
            leader_eligible: true,
            liveness: None,
            connect_timeout: Duration::from_secs(30),
            job_labels: true,
        }
    }
}

impl AgentBuilder {
    /// etcd endpoints (default `http://127.0.0.1:2379`).
    pub fn endpoints<S: Into<String>>(mut self, endpoints: impl IntoIterator<Item = S>) -> Self {
        self.connect.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// TLS: the CA certificate to verify etcd with, and optionally a client certificate and key
    /// (PEM files). Endpoints must then be `https://`.
    pub fn tls(
        mut self,
        ca: impl Into<PathBuf>,
        client_cert_and_key: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        self.connect.ca = Some(ca.into());
        if let Some((cert, key)) = client_cert_and_key {
            self.connect.cert = Some(cert);
            self.connect.key = Some(key);
        }
        self
    }

    /// How long to wait for etcd to answer when connecting (default 5 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.connect.dial_timeout = timeout;
        self
    }

    /// How long `start()` keeps trying to reach etcd when it is unreachable (default 30 s:
    /// services and etcd often boot together). Each failure is logged; wrong credentials, a bad
    /// certificate or unreadable files fail at once, since waiting cannot fix them.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The namespace (default `default`): agents of one namespace share jobs and a leader.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The key prefix (default `/shardjob/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This instance's id (default `<host>-<pid>-<random>`). Reusing an id across restarts lets
    /// `rebalance_delay` hand the same shards back.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// A label, matched against job selectors.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Relative capacity (1..=1000, default 1) for weighted strategies.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Lease TTL (2..=300 s, default 10 s): how long a dead instance keeps its shards.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// etcd user and password (tokens are refreshed automatically).
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.connect.user = Some((name.into(), password.into()));
        self
    }

    /// A job defined in code with its handler (registered under the job's handler name).
    pub fn job(mut self, spec: JobSpec, handler: impl Job) -> Self {
        self.jobs.push((spec, Arc::new(handler)));
        self
    }

    /// A handler without a job of its own, for jobs operators create at runtime.
    pub fn handler(mut self, name: impl Into<String>, handler: impl Job) -> Self {
        self.handlers.push((name.into(), Arc::new(handler)));
        self
    }

    /// At most this many executions at once on this instance, over all jobs.
    pub fn max_concurrent_executions(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// Append one JSON line per finished execution to this file.
    pub fn exec_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.exec_log = Some(path.into());
        self
    }

    /// Also gives every finished execution (aborted ones included) to `sink` — e.g.
    /// `shardjob_tasks::history::PgHistory`, the history in PostgreSQL with a retention.
    pub fn exec_sink(mut self, sink: Arc<dyn crate::execlog::ExecSink>) -> Self {
        self.exec_sinks.push(sink);
        self
    }

    /// How long a graceful shutdown waits for running executions and hand-offs.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// When leading: keep a departed instance's shards parked this long (0 = move at once).
    pub fn rebalance_delay(mut self, delay: Duration) -> Self {
        self.rebalance.rebalance_delay = delay;
        self
    }

    /// How long a finished one-shot job (every shard done) keeps its keys and done records
    /// before the leader deletes them (default 24 h; this agent's setting applies while it
    /// leads).
    pub fn one_shot_retention(mut self, retention: Duration) -> Self {
        self.rebalance.one_shot_retention = retention;
        self
    }

    /// Whether the fire and execution metrics carry a `job` label (default true). Each job
    /// then has series of its own in `shardjob_fires_total`, `shardjob_fire_lateness_seconds`,
    /// `shardjob_executions_total{outcome}` and `shardjob_execution_seconds`: one series per
    /// job this agent runs (×4 outcomes, × the histogram's buckets). With tens of thousands of
    /// jobs, turn it off and the series are per agent only. Execution metrics are recorded
    /// through handles taken from the `metrics` recorder when a job first launches here:
    /// install the recorder before starting the agent.
    pub fn metrics_job_label(mut self, on: bool) -> Self {
        self.job_labels = on;
        self
    }

    /// Whether this instance campaigns for leadership (default true).
    pub fn leader_eligible(mut self, on: bool) -> Self {
        self.leader_eligible = on;
        self
    }

    /// Turns on the liveness stream: the agent listens on `listen` (taking streams while it
    /// leads) and keeps a stream to the leader, so a crash of this process moves its shards in
    /// a fraction of a second (the guard and the slack, about 150 ms, plus one rebalance)
    /// instead of a lease TTL. Pauses, partitions and black holes still take the TTL.
    ///
    /// Off by default: only the deployment knows which address the other replicas can reach
    /// (a pod IP, a host port, `0.0.0.0` behind NAT), and an agent that opens a port
    /// unasked is unwelcome in many networks. `127.0.0.1:0` suits replicas on one host; give
    /// [`LivenessOptions::advertise`] when peers reach this process under another address.
    pub fn liveness(mut self, options: LivenessOptions) -> Self {
        self.liveness = Some(options);
        self
    }

    /// Validates everything, connects, publishes job configs, and starts the agent.
    pub async fn start(self) -> Result<AgentHandle, AgentError> {
        let invalid = |field, reason: String| AgentError::Invalid { field, reason };
        let keys = Keys::with_prefix(&self.prefix, &self.namespace)
            .map_err(|e| invalid("namespace", e.to_string()))?;
        let id = self.instance_id.clone().unwrap_or_else(default_instance_id);
        let instance = shardjob_sharding::InstanceId::new(id.clone())
            .map_err(|e| invalid("instance_id", e.to_string()))?;
        for (k, v) in &self.labels {
            validate_label(k, v).map_err(|e| invalid("label", e.to_string()))?;
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(invalid(
                "weight",
                format!("{} is outside 1..={MAX_WEIGHT}", self.weight),
            ));
        }
        if self.ttl < MIN_TTL || self.ttl > MAX_TTL || self.ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "ttl",
                format!("{:?} is outside 2..=300 s (whole seconds)", self.ttl),
            ));
        }
        if self.max_concurrent == Some(0) {
            return Err(invalid(
                "max_concurrent_executions",
                "0 would never run anything".into(),
            ));
        }
        if self.connect.endpoints.is_empty() {
            return Err(invalid("endpoints", "no etcd endpoint given".into()));
        }
        if let Some(l) = &self.liveness {
            l.validate()?;
        }
        let mut handlers: BTreeMap<String, Arc<dyn DynJob>> = BTreeMap::new();
        let mut configs = Vec::new();
        let mut job_limits = BTreeMap::new();
        for (spec, handler) in &self.jobs {
            let config = spec.validate()?;
            let name = config.handler_name(&spec.name).to_owned();
            if handlers.insert(name.clone(), handler.clone()).is_some() {
                return Err(AgentError::DuplicateHandler(name));
            }
            if let Some(n) = spec.max_concurrency {
                job_limits.insert(spec.name.clone(), n);
            }
            configs.push((spec.name.clone(), config));
        }
        for (name, handler) in &self.handlers {
            validate_name("handler name", name).map_err(|e| invalid("handler", e.to_string()))?;
            if handlers.insert(name.clone(), handler.clone()).is_some() {
                return Err(AgentError::DuplicateHandler(name.clone()));
            }
        }
        let mut sinks = self.exec_sinks.clone();
        if let Some(path) = &self.exec_log {
            let file = crate::execlog::JsonLines::open(path).map_err(|e| AgentError::ExecLog {
                path: path.display().to_string(),
                cause: e.to_string(),
            })?;
            sinks.push(Arc::new(file));
        }
        let exec_log = ExecLog::new(sinks).map(Arc::new);

        let client = connect_patiently(&self.connect, self.connect_timeout).await?;
        wait_until_free(&client, &keys, &id).await?;
        for (job, config) in &configs {
            publish(&client, &keys, job, config).await?;
        }
        let liveness = match self.liveness {
            None => None,
            Some(options) => {
                let server = LivenessServer::bind(
                    options.listen,
                    client.clone(),
                    keys.clone(),
                    id.clone(),
                    options.slack,
                )
                .await?;
                let advertise = options
                    .advertise
                    .clone()
                    .unwrap_or_else(|| server.local_addr().to_string());
                Some(crate::runtime::Liveness {
                    server: Arc::new(server),
                    advertise,
                    options,
                })
            }
        };
        let config = AgentConfig {
            id,
            instance,
            keys,
            labels: self.labels,
            weight: self.weight,
            ttl: self.ttl,
            handlers,
            job_limits,
            max_concurrent: self.max_concurrent,
            exec_log,
            shutdown_timeout: self.shutdown_timeout,
            rebalance: self.rebalance,
            leader_eligible: self.leader_eligible,
            job_labels: self.job_labels,
            liveness,
        };
        Ok(Core::spawn(client, config))
    }
}

/// Connects, retrying with backoff (100 ms doubling to 2 s) while etcd is unreachable and
/// `patience` lasts.
async fn connect_patiently(
    config: &shardjob_coordinator::connect::ConnectConfig,
    patience: Duration,
) -> Result<Client, AgentError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(config).await {
            Ok(client) => return Ok(client),
            Err(e @ ConnectError::Unreachable { .. })
                if tokio::time::Instant::now() + delay < deadline =>
            {
                tracing::warn!(error = %e, retry_in = ?delay, "etcd is unreachable; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until no live process holds `instances/<id>`. A key left by a crashed process of the
/// same id vanishes with its lease, within that lease's TTL: wait for it (a quick restart). A
/// key still there after its TTL and a second is kept alive by a live process: two processes
/// with one id would overwrite each other's registration, so refuse to start.
async fn wait_until_free(client: &Client, keys: &Keys, id: &str) -> Result<(), AgentError> {
    use shardjob_coordinator::etcd_error::bounded;
    let key = keys.instance(id);
    let check = |cause| AgentError::InstanceCheck {
        id: id.to_owned(),
        cause,
    };
    let mut client = client.clone();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let resp = bounded(
            "reading the instance key",
            Duration::from_secs(5),
            client.get(key.clone(), None),
        )
        .await
        .map_err(check)?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(());
        };
        let holder =
            serde_json::from_slice::<shardjob_coordinator::model::InstanceInfo>(kv.value())
                .map_or_else(
                    |_| "unreadable record".to_owned(),
                    |i| format!("host {:?}, pid {}", i.host, i.pid),
                );
        let now = tokio::time::Instant::now();
        let deadline = match deadline {
            Some(d) => d,
            None if kv.lease() == 0 => {
                return Err(AgentError::InstanceLive {
                    id: id.to_owned(),
                    holder: format!("{holder}, a key without a lease: delete {key} by hand"),
                });
            }
            None => {
                let ttl = bounded(
                    "reading the holder's lease",
                    Duration::from_secs(5),
                    client.lease_time_to_live(kv.lease(), None),
                )
                .await
                .map_err(check)?;
                let granted = Duration::from_secs(u64::try_from(ttl.granted_ttl()).unwrap_or(0));
                *deadline.insert(now + granted + Duration::from_secs(1))
            }
        };
        if now >= deadline {
            return Err(AgentError::InstanceLive {
                id: id.to_owned(),
                holder,
            });
        }
        tracing::info!(id, %holder, "the instance id is still registered; waiting for its lease to end");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes the job config if absent, or always with `overwrite`.
async fn publish(
    client: &Client,
    keys: &Keys,
    job: &str,
    config: &shardjob_coordinator::model::JobConfig,
) -> Result<(), AgentError> {
    let err = |cause: String| AgentError::Publish {
        job: job.to_owned(),
        cause,
    };
    // A one-shot whose instant has passed is never created from code: it either ran and was
    // retired (creating it again would run it again), or its moment was missed before it ever
    // existed. One already stored is left alone (it runs, or ran, as stored).
    if let shardjob_coordinator::model::Schedule::At(at) = config.schedule {
        if at <= chrono::Utc::now() && !config.overwrite {
            let key = keys.job(job);
            let stored = timeout(Duration::from_secs(10), client.clone().get(key, None))
                .await
                .map_err(|_| err("no answer within 10s".into()))?
                .map_err(|e| err(e.to_string()))?;
            if stored.kvs().is_empty() {
                tracing::warn!(job, %at, "not publishing a one-shot whose instant has passed");
            }
            return Ok(());
        }
    }
    let value = serde_json::to_vec(config).map_err(|e| err(e.to_string()))?;
    let key = keys.job(job);
    let put = TxnOp::put(key.clone(), value, None);
    let txn = if config.overwrite {
        Txn::new().and_then(vec![put])
    } else {
        Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![put])
    };
    timeout(Duration::from_secs(10), client.clone().txn(txn))
        .await
        .map_err(|_| err("no answer within 10s".into()))?
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// This machine's host name (`HOSTNAME`, else `/etc/hostname`), or `""`.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// `<host>-<pid>-<random>`, reduced to the allowed characters.
fn default_instance_id() -> String {
    let host: String = hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let random = shardjob_sharding::hash::fnv1a64(&[
        &nanos.to_le_bytes(),
        &std::process::id().to_le_bytes(),
    ]);
    format!(
        "{}-{}-{:06x}",
        if host.is_empty() { "host" } else { &host },
        std::process::id(),
        random & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_instance_ids_are_valid_names() {
        let id = default_instance_id();
        assert!(validate_name("instance id", &id).is_ok(), "{id}");
    }

    #[tokio::test]
    async fn bad_settings_fail_before_connecting_and_name_the_field() {
        let base = || AgentBuilder::default().endpoints(["http://127.0.0.1:1"]);
        let table: Vec<(AgentBuilder, &str)> = vec![
            (base().namespace("a/b"), "namespace"),
            (base().instance_id("x y"), "instance_id"),
            (base().weight(0), "weight"),
            (base().ttl(Duration::from_secs(1)), "ttl"),
            (base().label("k", "v w"), "label"),
            (
                base().max_concurrent_executions(0),
                "max_concurrent_executions",
            ),
        ];
        for (builder, field) in table {
            match builder.start().await {
                Err(AgentError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
