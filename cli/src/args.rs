//! The command line, as clap definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shardjob_coordinator::model::HumanDuration;

/// Inspect and steer shardjob namespaces stored in etcd.
#[derive(Debug, Parser)]
#[command(name = "shardjob", version)]
pub struct Cli {
    /// etcd endpoints, comma separated (also SHARDJOB_ENDPOINTS, then ETCDCTL_ENDPOINTS).
    #[arg(long, global = true, value_delimiter = ',')]
    pub endpoints: Option<Vec<String>>,
    /// Namespace.
    #[arg(
        long,
        global = true,
        env = "SHARDJOB_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Key prefix in front of the namespace.
    #[arg(
        long,
        global = true,
        env = "SHARDJOB_PREFIX",
        default_value = "/shardjob/"
    )]
    pub prefix: String,
    /// CA certificate to verify etcd with (PEM).
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true, env = "ETCDCTL_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true, env = "ETCDCTL_KEY")]
    pub key: Option<PathBuf>,
    /// user:password (the password is prompted for when omitted).
    #[arg(long, global = true, env = "ETCDCTL_USER")]
    pub user: Option<String>,
    /// How long to wait for etcd to answer.
    #[arg(long, global = true, default_value = "5s", value_parser = duration)]
    pub dial_timeout: Duration,
    /// Machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// A cron job's executions from the PostgreSQL history (agents with the history sink).
    History {
        job: String,
        /// Only this shard.
        #[arg(long)]
        shard: Option<u32>,
        /// Only executions started at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The task store's PostgreSQL URLs, comma separated (the history is on the first).
        #[arg(long, env = "SHARDJOB_PG_URL", value_delimiter = ',', required = true)]
        pg_url: Vec<String>,
    },
    /// Delayed tasks in PostgreSQL (needs no etcd).
    Tasks {
        /// The task store's PostgreSQL URLs, comma separated, in the agents' order.
        #[arg(long, env = "SHARDJOB_PG_URL", value_delimiter = ',', required = true)]
        pg_url: Vec<String>,
        #[command(subcommand)]
        cmd: TasksCmd,
    },
    /// Leader, instances, and per job: shards assigned, owned, converged.
    Status,
    /// Live instances.
    Instances,
    /// Jobs and their configs.
    Jobs,
    /// One job: show, create, delete.
    Job {
        #[command(subcommand)]
        cmd: JobCmd,
    },
    /// Run every shard of a job once now.
    Trigger { job: String },
    /// Disable a job (stops firing) or drain an instance (the leader assigns it nothing).
    Disable {
        #[command(subcommand)]
        target: Target,
    },
    /// Undo `disable`.
    Enable {
        #[command(subcommand)]
        target: Target,
    },
    /// Change a job's config (validated as agents validate it).
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The whole namespace as one JSON document.
    Dump,
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Config, assignment with generation, owners with tokens, running markers, cursors.
    Show { job: String },
    /// Create a job for a handler that agents registered.
    Create {
        job: String,
        /// The handler that runs it (default: the job's name).
        #[arg(long)]
        handler: Option<String>,
        #[command(flatten)]
        schedule: Box<ScheduleArgs>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Remove every key of a job (refused while it is enabled or running, unless --force).
    Delete {
        job: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Set fields of a job's config.
    Set {
        job: String,
        /// A new handler.
        #[arg(long)]
        handler: Option<String>,
        #[command(flatten)]
        schedule: Box<ScheduleArgs>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Target {
    Job {
        name: String,
    },
    Instance {
        id: String,
        /// Why (stored as the value of disabled/<id>).
        #[arg(long, default_value = "drained with shardjob")]
        reason: String,
    },
}

/// One of the three kinds of schedule (more than one is refused with a clear message), and
/// what qualifies it. Not a clap group: a group would also forbid `--cron` with `--time-zone`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Cron expression with seconds: "sec min hour day month weekday [year]".
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone of the cron expression.
    #[arg(long)]
    pub time_zone: Option<String>,
    /// A fixed interval, e.g. 30s, 5m.
    #[arg(long)]
    pub every: Option<HumanDuration>,
    /// Once, at this RFC 3339 instant.
    #[arg(long)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Shift of an interval schedule from the epoch, e.g. 15s (0s removes it).
    #[arg(long)]
    pub offset: Option<HumanDuration>,
}

/// Settable fields.
#[derive(Debug, Args)]
pub struct Settings {
    /// Number of shards.
    #[arg(long)]
    pub shards: Option<u32>,
    /// The job parameter.
    #[arg(long)]
    pub param: Option<String>,
    /// A shard parameter, SHARD=VALUE (repeatable).
    #[arg(long = "shard-param", value_parser = shard_param)]
    pub shard_params: Vec<(u32, String)>,
    /// Strategy: sticky, average, odevity, round_robin, consistent_hash.
    #[arg(long)]
    pub strategy: Option<shardjob_coordinator::sharding::StrategyKind>,
    /// Required instance labels, key=value,key=value.
    #[arg(long)]
    pub selector: Option<shardjob_coordinator::sharding::Selector>,
    /// Re-run a fire whose owner died mid-execution.
    #[arg(long)]
    pub failover: Option<bool>,
    /// Coalesce fires that arrive during a run (true) or skip them (false).
    #[arg(long)]
    pub misfire: Option<bool>,
    /// Execution timeout, e.g. 30s.
    #[arg(long)]
    pub timeout: Option<HumanDuration>,
    /// Retries of a failed execution.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Retry an execution that timed out too (true) or only failed ones (false).
    #[arg(long)]
    pub retry_timeouts: Option<bool>,
    #[arg(long)]
    pub description: Option<String>,
    /// Remove every shard parameter (before any --shard-param of the same command).
    #[arg(long)]
    pub clear_shard_params: bool,
    /// Remove the label selector (every instance with the handler is eligible).
    #[arg(long, conflicts_with = "selector")]
    pub clear_selector: bool,
    /// Remove the execution timeout.
    #[arg(long, conflicts_with = "timeout")]
    pub clear_timeout: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<HumanDuration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

fn shard_param(s: &str) -> Result<(u32, String), String> {
    let (shard, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SHARD=VALUE"))?;
    let shard = shard
        .trim()
        .parse()
        .map_err(|_| format!("{shard:?} is not a shard number"))?;
    Ok((shard, value.to_owned()))
}

#[derive(Debug, Subcommand)]
pub enum TasksCmd {
    /// Submit a task to a queue (due now unless --at or --after).
    Submit {
        queue: String,
        /// Due at this RFC 3339 instant.
        #[arg(long, conflicts_with = "after")]
        at: Option<String>,
        /// Due this long from now (`90s`, `15m`, `2h`).
        #[arg(long, value_parser = duration)]
        after: Option<Duration>,
        /// The payload, as JSON.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        dedupe_key: Option<String>,
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// A task's state.
    Get { id: String },
    /// Cancel a pending task.
    Cancel { id: String },
    /// A queue's tasks in due order, a page at a time.
    List {
        queue: String,
        /// pending, running, done, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only tasks due before this RFC 3339 instant.
        #[arg(long)]
        due_before: Option<String>,
        /// The `next` cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Every attempt of a task.
    Attempts { id: String },
    /// Put a failed (dead-letter) or cancelled task back, due now.
    Requeue {
        id: String,
        /// Attempts it gets.
        #[arg(long, default_value_t = 1)]
        extra: u32,
    },
}
