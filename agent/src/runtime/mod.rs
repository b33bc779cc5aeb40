//! The agent's runtime: one task that owns the I/O. It turns what happens (watch events, txn
//! results, finished executions, the lease's renewals, timers, shutdown) into an engine
//! [`Input`], calls [`Engine::step`], and carries out the [`Command`]s that come back
//! ([`carry`]). It decides nothing: every rule is in [`crate::engine`].
//!
//! What stays here is the session's life, which is I/O: grant a lease, register
//! `instances/<id>` under it, start campaigning (`lead`), feed every renewal to the engine, and
//! when etcd says the lease is gone tell the engine (it self-fences) and open a new session.
//! Claims, releases and executions run in spawned tasks and report back, so the loop never
//! waits on etcd.

mod batch;
mod carry;
mod claimer;
mod clocks;
mod crowd;
mod exec;
mod exec_metrics;
mod inbox;
mod job_runs;
mod lead;
mod liveness;
mod names;
mod observe;
mod pages;
mod releaser;
mod ticket;
pub(crate) mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::{Client, PutOptions};
use shardjob_coordinator::etcd_error::{EtcdError, bounded};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::InstanceInfo;
use shardjob_coordinator::rebalance::RebalanceOptions;
use shardjob_coordinator::session::Session;
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use shardjob_sharding::InstanceId;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::builder::AgentError;
use crate::engine::{Command, Engine, EngineConfig, ExecId, Input, LeaseId};
use crate::execlog::ExecLog;
use crate::handle::{AgentHandle, AgentStatus};
use crate::hash::FastMap;
use crate::job::DynJob;
use carry::RunningExec;
use claimer::{ClaimWork, Claimer};
pub(crate) use clocks::now;
pub(crate) use liveness::Liveness;
use liveness::StreamTask;
use releaser::{ReleaseWork, Releaser};
use shardjob_coordinator::liveness::guard::Bound;
use txn::Writes;

/// Everything the builder validated.
pub(crate) struct AgentConfig {
    pub id: String,
    /// `id`, validated.
    pub instance: InstanceId,
    pub keys: Keys,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub ttl: Duration,
    pub handlers: BTreeMap<String, Arc<dyn DynJob>>,
    pub job_limits: BTreeMap<String, usize>,
    pub max_concurrent: Option<usize>,
    pub exec_log: Option<Arc<ExecLog>>,
    pub shutdown_timeout: Duration,
    pub rebalance: RebalanceOptions,
    pub leader_eligible: bool,
    /// Fire and execution metrics carry a `job` label.
    pub job_labels: bool,
    /// The liveness stream, when on.
    pub liveness: Option<Liveness>,
}

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Jobs,
    Assignments,
    Owners,
    Triggers,
    /// This instance's own key (to register again when someone deletes it).
    Instance,
}

/// What the tasks of the runtime report to its loop: watch events (decoded there), results
/// for the engine as they are (claims, releases, executions), and leadership.
pub(crate) enum Event {
    Watch(Stream, WatchEvent),
    Engine(Input),
    Leader(bool),
    /// Several at once, in order (the ends of a crowd's group, `crowd.rs`).
    Batch(Vec<Event>),
}

pub(crate) struct Core {
    client: Client,
    cfg: Arc<AgentConfig>,
    /// What every execution shares: this agent's id, the log, the keys.
    common: Arc<job_runs::Common>,
    /// For everything but executions' ends (`inbox.rs`).
    tx: mpsc::Sender<Event>,
    /// For executions' ends.
    ends: mpsc::Sender<Event>,
    engine: Engine,
    session: Option<Session>,
    /// Executions in progress, by the engine's id.
    execs: FastMap<ExecId, RunningExec>,
    /// Executions launched ahead of their instant, spawned together after each turn.
    crowds: crowd::Crowds<carry::Prepared>,
    /// Every extension of the session's proof.
    renewals: watch::Receiver<Instant>,
    /// Client, keys and write limit, shared by the claimer, the releaser and the running
    /// markers of failover jobs.
    writes: Arc<Writes>,
    /// Claims go through the claimer, which packs many jobs into one txn.
    claims: mpsc::UnboundedSender<ClaimWork>,
    /// Releases go through the releaser, which packs many shards into one txn.
    releases: mpsc::UnboundedSender<ReleaseWork>,
    leader: Option<(CancellationToken, JoinHandle<()>)>,
    global_limit: Option<Arc<Semaphore>>,
    /// Per-job concurrency limits, made on a job's first launch.
    job_limits: FastMap<String, Arc<Semaphore>>,
    /// Executions ended in this turn, not yet counted in the status (one update per turn, not
    /// one per end: an aligned burst's 10k ends woke every status watcher 10k times).
    ended: u64,
    /// Makes execution metrics' handles (`exec_metrics.rs`).
    exec_metrics: exec_metrics::ExecMetrics,
    /// What the executions of each job share, made at its first launch (`job_runs.rs`).
    job_runs: job_runs::JobRuns,
    /// Shards assigned here, as last published (the gauge moves by differences).
    assigned_published: std::cell::Cell<usize>,
    /// When the status's `owned` map was last rebuilt with full nodes (`publish_owned`).
    owned_refill: std::cell::Cell<shardjob_coordinator::refill::Refill>,
    status: watch::Sender<AgentStatus>,
    stopping: Option<Instant>,
    /// What `instances/<id>` holds for the current session, and the revision it was put at.
    registered: Option<(InstanceInfo, i64)>,
    /// The liveness stream of the current session.
    stream: Option<StreamTask>,
    /// Instance names of owner keys, one copy each.
    names: names::Names,
    /// The jobs on each of my `assigned/` pages, to tell which ones leave a page.
    my_pages: pages::MyPages,
    /// The watch of owner deletes, while the engine waits for one (`engine/waits.rs`).
    owner_watch: Option<JoinHandle<()>>,
}

impl Core {
    /// Starts the agent's task.
    pub(crate) fn spawn(client: Client, cfg: AgentConfig) -> AgentHandle {
        let (senders, inbox) = inbox::Inbox::new(4096);
        let inbox::Senders { control: tx, ends } = senders;
        let id = cfg.id.clone();
        let (status, status_rx) = watch::channel(AgentStatus {
            instance: id.clone(),
            ..AgentStatus::default()
        });
        let shutdown = CancellationToken::new();
        let crash = CancellationToken::new();
        let writes = Arc::new(Writes {
            client: client.clone(),
            keys: cfg.keys.clone(),
            timeout: txn::txn_timeout(cfg.ttl),
        });
        let claims = Claimer {
            writes: writes.clone(),
            instance: cfg.instance.clone(),
            events: tx.clone(),
        }
        .spawn();
        let releases = Releaser {
            writes: writes.clone(),
            events: tx.clone(),
        }
        .spawn();
        let engine = Engine::new(EngineConfig {
            id: cfg.id.clone(),
            handlers: cfg.handlers.keys().cloned().collect(),
            margin: cfg.ttl / 10,
            job_labels: cfg.job_labels,
            lead: FIRE_LEAD,
            lead_crowd: LEAD_CROWD,
        });
        if let Some(l) = &cfg.liveness {
            tokio::spawn(forward_breaks(l.server.breaks(), status.clone()));
        }
        let core = Core {
            client,
            writes,
            claims,
            releases,
            engine,
            global_limit: cfg.max_concurrent.map(|n| Arc::new(Semaphore::new(n))),
            job_limits: FastMap::default(),
            ended: 0,
            exec_metrics: exec_metrics::ExecMetrics::new(cfg.job_labels),
            job_runs: job_runs::JobRuns::default(),
            assigned_published: std::cell::Cell::new(0),
            owned_refill: std::cell::Cell::default(),
            common: Arc::new(job_runs::Common {
                instance: Arc::from(cfg.id.as_str()),
                log: cfg.exec_log.clone(),
                keys: cfg.keys.clone(),
            }),
            cfg: Arc::new(cfg),
            tx,
            ends,
            session: None,
            execs: FastMap::default(),
            crowds: crowd::Crowds::new(crowd::SPIN),
            renewals: watch::channel(Instant::now()).1,
            leader: None,
            status,
            stopping: None,
            registered: None,
            stream: None,
            names: names::Names::default(),
            my_pages: pages::MyPages::default(),
            owner_watch: None,
        };
        let span = info_span!("agent", instance = %id);
        let task = tokio::spawn(
            core.run(inbox, shutdown.clone(), crash.clone())
                .instrument(span),
        );
        AgentHandle {
            id,
            shutdown,
            crash,
            task,
            status: status_rx,
        }
    }

    /// One input to the engine, its commands carried out.
    fn step(&mut self, input: Input) {
        let commands = self.engine.step(input, now());
        self.carry_out(commands);
    }

    async fn run(
        mut self,
        mut inbox: inbox::Inbox,
        shutdown: CancellationToken,
        crash: CancellationToken,
    ) -> Result<(), AgentError> {
        let keys = &self.cfg.keys;
        let watchers: Vec<JoinHandle<()>> = [
            (Stream::Jobs, keys.jobs_prefix()),
            (Stream::Assignments, keys.assigned_to(&self.cfg.id)),
            (Stream::Triggers, keys.triggers_prefix()),
            (Stream::Instance, keys.instance(&self.cfg.id)),
        ]
        .into_iter()
        .map(|(stream, prefix)| {
            tokio::spawn(forward(
                self.client.clone(),
                stream,
                prefix,
                None,
                self.tx.clone(),
            ))
        })
        .collect();
        loop {
            if crash.is_cancelled() {
                self.crash();
                for w in watchers {
                    w.abort();
                }
                self.watch_owners(None);
                return Ok(());
            }
            if self.session.is_none()
                && self.stopping.is_none()
                && !self.open_session(&shutdown, &crash).await
            {
                if crash.is_cancelled() {
                    continue;
                }
                break; // shut down while etcd was unreachable
            }
            let has_session = self.session.is_some();
            let lost = self
                .session
                .as_ref()
                .map(|s| s.handle().lost())
                .unwrap_or_default();
            let mut renewals = self.renewals.clone();
            let mut bound = self.stream.as_ref().map(|s| s.bound.clone());
            let wake = self.engine.next_wake().map(Instant::from_std);
            tokio::select! {
                biased;
                _ = crash.cancelled() => continue,
                _ = lost.cancelled(), if has_session => self.self_fence(),
                _ = renewals.changed(), if has_session => {
                    let valid_until = *self.renewals.borrow_and_update();
                    let left = valid_until.saturating_duration_since(Instant::now());
                    metrics::gauge!("shardjob_lease_remaining_seconds").set(left.as_secs_f64());
                    self.step(Input::Proof { valid_until: valid_until.into_std() });
                }
                () = bound_changed(&mut bound), if has_session => self.on_bound(),
                _ = shutdown.cancelled(), if self.stopping.is_none() => self.begin_shutdown().await,
                ev = inbox.recv() => match ev {
                    Some(ev) => {
                        // What else has arrived goes in the same batch: one round of commands
                        // (and of status publication) for a burst of finished executions.
                        self.absorb(ev);
                        inbox.drain(EVENT_BATCH, |ev| self.absorb(ev));
                        if self.ended > 0 {
                            let ended = std::mem::take(&mut self.ended);
                            self.status.send_modify(|s| s.executions += ended);
                        }
                        // What has come due, too: while events keep arriving this branch is
                        // chosen every turn and the tick's never (an agent with more fires than
                        // it can run fired only when a claim was answered).
                        let now = now();
                        if self.engine.next_wake().is_some_and(|w| w <= now.mono) {
                            self.engine.apply(Input::Tick, now);
                        }
                        let commands = self.engine.take_commands();
                        self.carry_out(commands);
                    }
                    None => break,
                },
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => self.step(Input::Tick),
                _ = sleep_until(self.stopping.unwrap_or_else(Instant::now)), if self.stopping.is_some() => {
                    warn!("shutdown timeout: cancelling what still runs");
                    break;
                }
            }
            if self.stopping.is_some() && self.execs.is_empty() && self.engine.drained() {
                break;
            }
        }
        self.finish().await;
        for w in watchers {
            w.abort();
        }
        self.watch_owners(None);
        Ok(())
    }

    /// Grants a lease, registers the instance and starts campaigning; retries until it works
    /// or shutdown is requested (returns false then).
    async fn open_session(
        &mut self,
        shutdown: &CancellationToken,
        crash: &CancellationToken,
    ) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.try_open_session().await {
                Ok(()) => return true,
                Err(e) => warn!(error = %e, retry_in = ?delay, "could not open a session"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = crash.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn try_open_session(&mut self) -> Result<(), OpenError> {
        let session = Session::grant(&self.client, self.cfg.ttl).await?;
        // A grant answered late (etcd slow, or a partition that held the request) comes with
        // little proof left: claiming shards with it would only lose their next fires. Let it
        // expire and ask again.
        if !session.handle().is_valid(Instant::now(), self.cfg.ttl / 2) {
            session.orphan();
            return Err(OpenError::GrantedTooLate);
        }
        let lease = LeaseId::new(session.lease()).ok_or(OpenError::LeaseZero)?;
        let info = InstanceInfo {
            id: self.cfg.instance.clone(),
            host: crate::builder::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: self.cfg.labels.clone(),
            weight: self.cfg.weight,
            handlers: self.cfg.handlers.keys().cloned().collect(),
            started_at: Utc::now(),
            leaving: false,
            liveness: self.cfg.liveness.as_ref().map(|l| l.advertise.clone()),
        };
        let value = serde_json::to_vec(&info).map_err(|e| OpenError::Encode(e.to_string()))?;
        let mut client = self.client.clone();
        let put = client.put(
            self.cfg.keys.instance(&self.cfg.id),
            value,
            Some(PutOptions::new().with_lease(lease.get())),
        );
        let put = bounded("registering the instance", Duration::from_secs(5), put).await?;
        let revision = put.header().map_or(0, |h| h.revision());
        self.renewals = session.handle().renewals();
        self.renewals.borrow_and_update();
        self.registered = Some((info, revision));
        if self.cfg.leader_eligible {
            let stop = CancellationToken::new();
            let task = lead::LeadTask {
                client: self.client.clone(),
                keys: self.cfg.keys.clone(),
                id: self.cfg.id.clone(),
                session: session.handle(),
                options: self.cfg.rebalance.clone(),
                stop: stop.clone(),
                events: self.tx.clone(),
                liveness: self.cfg.liveness.as_ref().map(|l| l.server.clone()),
            };
            self.leader = Some((stop, tokio::spawn(task.run().in_current_span())));
        }
        if let Some(l) = &self.cfg.liveness {
            let task =
                StreamTask::spawn(l, &self.client, &self.cfg.keys, &self.cfg.id, lease.get());
            self.stream = Some(task);
        }
        info!(%lease, "registered");
        let proven = session.handle().valid_until();
        let left = proven.saturating_duration_since(Instant::now());
        metrics::gauge!("shardjob_lease_remaining_seconds").set(left.as_secs_f64());
        let valid_until = proven.into_std();
        self.session = Some(session);
        self.step(Input::SessionOpened { lease, valid_until });
        Ok(())
    }

    /// Lease gone: the engine self-fences; the session and leadership end here, and the next
    /// loop turn opens a new session.
    fn self_fence(&mut self) {
        metrics::counter!("shardjob_session_losses_total").increment(1);
        metrics::gauge!("shardjob_lease_remaining_seconds").set(0.0);
        self.step(Input::SessionLost);
        self.registered = None;
        if let Some(s) = self.stream.take() {
            s.close_soon();
        }
        if let Some((stop, _)) = self.leader.take() {
            stop.cancel();
        }
        self.session = None;
        self.publish_all(|s| {
            s.session_losses += 1;
            s.is_leader = false;
            s.guarded = false;
        });
    }

    /// Simulated process death: stop everything, release nothing, let the lease expire.
    fn crash(&mut self) {
        warn!("aborting as if the process died");
        // Abort before cancelling: a dead process's handlers do not get to see a cancel, and
        // a dead process writes no log line either.
        for (_, run) in std::mem::take(&mut self.execs) {
            run.vanish();
        }
        if let Some((_, task)) = self.leader.take() {
            task.abort(); // no resign: leadership ends with the lease
        }
        if let Some(s) = self.stream.take() {
            s.vanish(); // no goodbye: the leader sees the stream end
        }
        if let Some(session) = self.session.take() {
            let _ = session.orphan();
        }
    }

    /// Graceful shutdown, step 1: stop firing and leave the instance list (the leader moves
    /// this instance's shards at once); the loop then releases them as they are reassigned.
    async fn begin_shutdown(&mut self) {
        info!("shutting down: handing shards over");
        self.stopping = Some(Instant::now() + self.cfg.shutdown_timeout);
        self.step(Input::ShutdownBegun);
        // Leaving the instance list is what makes the leader move this instance's shards at
        // once; a connection broken by an etcd restart must not turn that into a wait for the
        // shutdown timeout, so it is retried. The key's last value says `leaving` just before
        // it is deleted, so a leader with `rebalance_delay` does not park these shards for a
        // comeback that will not happen.
        let key = self.cfg.keys.instance(&self.cfg.id);
        let last = self.registered.take().and_then(|(mut info, _)| {
            info.leaving = true;
            serde_json::to_vec(&info).ok()
        });
        let lease = self.engine.lease();
        let client = self.client.clone();
        // Its own request: etcd refuses a txn that touches one key twice.
        if let (Some(value), Some(lease)) = (last, lease) {
            let opts = PutOptions::new().with_lease(lease.get());
            let mut c = client.clone();
            let put = c.put(key.clone(), value, Some(opts));
            if let Err(e) = bounded("marking the instance as leaving", ATTEMPT, put).await {
                warn!(error = %e, "could not mark the instance as leaving; with a rebalance_delay its shards may be parked");
            }
        }
        let left = retry("removing the instance key", || {
            let (mut c, key) = (client.clone(), key.clone());
            async move {
                bounded("removing the instance key", ATTEMPT, c.delete(key, None))
                    .await
                    .map(|_| ())
            }
        })
        .await;
        if let Err(e) = left {
            warn!(error = %e, "could not remove the instance key; shards move at lease expiry");
        }
    }

    /// Graceful shutdown, last step: cancel what still runs, release what is still held,
    /// stop leading (resign), revoke the lease.
    async fn finish(&mut self) {
        let commands = self.engine.step(Input::Finish, now());
        let mut items = Vec::new();
        for c in commands {
            match c {
                Command::Release {
                    job,
                    shard,
                    token,
                    last_fire,
                    ..
                } => items.push(txn::ReleaseItem {
                    job,
                    shard,
                    token,
                    last_fire,
                }),
                other => self.carry_out(vec![other]),
            }
        }
        // Anything the engine did not name (it should name every run) goes too.
        for (_, run) in std::mem::take(&mut self.execs) {
            run.abort(&self.cfg.id, &self.cfg.exec_log);
        }
        for chunk in items.chunks(txn::RELEASE_CHUNK) {
            let w = &self.writes;
            let released = retry("releasing at shutdown", || async {
                let limit = w.timeout.min(ATTEMPT);
                let results = txn::release_many(&w.client, &w.keys, chunk, limit).await;
                match results.into_iter().find_map(Result::err) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            })
            .await;
            if let Err(e) = released {
                warn!(shards = chunk.len(), error = %e, "release at shutdown failed; the lease's end frees them");
            }
        }
        if let Some((stop, task)) = self.leader.take() {
            stop.cancel();
            let _ = timeout(Duration::from_secs(5), task).await;
        }
        if let Some(s) = self.stream.take() {
            s.close().await;
        }
        if let Some(session) = self.session.take() {
            if let Err(e) = session.close().await {
                warn!(error = %e, "revoking the lease failed; it expires by itself");
            }
        }
        self.publish_all(|s| {
            s.is_leader = false;
            s.lease = 0;
        });
        info!("stopped");
    }
}

impl Core {
    /// The liveness stream's bound moved: tell the engine; a condemned lease self-fences at
    /// once (the leader is revoking it).
    fn on_bound(&mut self) {
        let Some(bound) = self.stream.as_mut().map(|s| *s.bound.borrow_and_update()) else {
            return;
        };
        let guarded = matches!(bound, Bound::Until(_));
        self.status.send_if_modified(|s| {
            let changed = s.guarded != guarded;
            s.guarded = guarded;
            changed
        });
        match bound {
            Bound::Lease => self.step(Input::Guard { until: None }),
            Bound::Until(t) => self.step(Input::Guard { until: Some(t) }),
            Bound::Condemned => {
                metrics::counter!("shardjob_liveness_condemned_total").increment(1);
                self.self_fence();
            }
        }
    }
}

/// Copies the liveness listener's break counts into the status, while the listener lives.
async fn forward_breaks(
    mut breaks: watch::Receiver<shardjob_coordinator::liveness::server::Breaks>,
    status: watch::Sender<AgentStatus>,
) {
    while breaks.changed().await.is_ok() {
        let b = *breaks.borrow_and_update();
        status.send_if_modified(|s| {
            let changed = s.stream_breaks != b;
            s.stream_breaks = b;
            changed
        });
    }
}

/// Resolves when the stream's bound changed; never while there is no stream (or its task
/// ended).
async fn bound_changed(rx: &mut Option<watch::Receiver<Bound>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// How far ahead of their instant scheduled fires are prepared (`EngineConfig::lead`): a
/// burst of 10k fires at one instant takes ~70 ms to prepare on 2 cores (bench-lateness).
const FIRE_LEAD: Duration = Duration::from_millis(100);
/// Fires due in one millisecond that make a crowd worth launching ahead
/// (`EngineConfig::lead_crowd`): fires spread over time are started in time by the loop, and a
/// timer per execution only adds its rounding (bench-lateness spread 10k: p50 1.0 ms without
/// the lead, 1.25 ms with it for every fire).
const LEAD_CROWD: u32 = 64;

/// At most this many events of each channel (`inbox.rs`) are taken per turn of the loop.
const EVENT_BATCH: usize = 256;

/// The bound of one attempt of a shutdown write.
const ATTEMPT: Duration = Duration::from_secs(1);

/// Why a session could not be opened (the loop tries again with backoff).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Grant(#[from] shardjob_coordinator::session::SessionError),
    #[error("the lease was granted too late to be of use; asking again")]
    GrantedTooLate,
    #[error("etcd granted lease 0, which is no lease")]
    LeaseZero,
    #[error("encoding the instance record: {0}")]
    Encode(String),
    #[error(transparent)]
    Register(#[from] EtcdError),
}

/// Runs `op` (each attempt bounded by [`ATTEMPT`]) up to 5 times, 200 ms apart: for the few
/// writes of a graceful shutdown, where a transient etcd error (a connection broken by a member
/// restart) would otherwise cost a whole lease TTL or the shutdown timeout.
async fn retry<T, E, F, Fut>(what: &str, op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt == 5 => return Err(e),
            Err(e) => warn!(what, attempt, error = %e, "retrying"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Feeds one prefix's watch events into the core, forever (a refused watch is retried, from a
/// listing). From revision `from` if given, else from a listing.
async fn forward(
    client: Client,
    stream: Stream,
    prefix: String,
    mut from: Option<i64>,
    tx: mpsc::Sender<Event>,
) {
    loop {
        let mut watcher = match from.take() {
            Some(rev) => PrefixWatcher::from_revision(&client, prefix.clone(), rev),
            None => PrefixWatcher::new(&client, prefix.clone()),
        };
        if stream == Stream::Owners {
            // The puts are other agents' claims (and my own, answered already): 19 of 20
            // owner events at 20 agents, none of them needed (`engine/observe.rs`).
            watcher = watcher.deletes_only();
        }
        loop {
            match watcher.next().await {
                Ok(ev) => {
                    if tx.send(Event::Watch(stream, ev)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "watch refused; starting over in 1s");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
