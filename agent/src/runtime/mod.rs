//! The agent's runtime: one task that owns all state and reacts to events; the decisions come
//! from [`crate::ownership`] and [`crate::schedule`], the I/O is in the small modules here.
//!
//! Events: the three namespace-wide watches (`jobs/`, `assignments/`, `owners/`), results of
//! claim/release txns, finished executions, the fire heap's next instant, a 1 s re-check, the
//! session's `lost` token, and shutdown.
//!
//! Session life: grant a lease, register `instances/<id>` under it, start campaigning. When the
//! lease can no longer be proven alive the agent stops executing and waits for etcd's answer
//! (a *lapse*, see [`lapse`]): proven again, it resumes with the same shards. When etcd says the
//! lease is gone the agent **self-fences**: it cancels and aborts every execution, forgets its
//! in-flight claims and releases, stops leading, and opens a new session. Owner keys of the old
//! lease are then someone else's (see [`crate::ownership`]) until they vanish with it.

mod batch;
mod claimer;
mod events;
mod exec;
mod fires;
mod lapse;
mod lead;
mod releaser;
mod state;
pub(crate) mod txn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use etcd_client::{Client, PutOptions};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::InstanceInfo;
use shardjob_coordinator::rebalance::RebalanceOptions;
use shardjob_coordinator::session::Session;
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use shardjob_sharding::InstanceId;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::builder::AgentError;
use crate::execlog::ExecLog;
use crate::handle::{AgentHandle, AgentStatus};
use crate::job::DynJob;
use crate::ownership::{Decision, Me, ShardTable};
use claimer::{ClaimWork, Claimer};
use fires::FireHeap;
use releaser::{ReleaseWork, Releaser};
use state::JobEntry;
use txn::{ShardClaim, Writes};

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
}

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Jobs,
    Assignments,
    Owners,
    Triggers,
}

/// What the core reacts to.
pub(crate) enum Event {
    Watch(Stream, WatchEvent),
    Claimed {
        job: String,
        lease: i64,
        results: Vec<(u32, ShardClaim)>,
    },
    Released {
        job: String,
        shard: u32,
        lease: i64,
    },
    ExecDone {
        job: String,
        shard: u32,
        lease: i64,
        fire: chrono::DateTime<Utc>,
        /// Which execution (a stale one must not clear a later one's entry).
        id: u64,
    },
    Leader(bool),
}

pub(crate) struct Core {
    client: Client,
    cfg: Arc<AgentConfig>,
    id: InstanceId,
    tx: mpsc::Sender<Event>,
    // Hash maps: every fire looks its job up in both, and a B-tree of 10k names costs a dozen
    // string compares per lookup.
    tables: HashMap<String, ShardTable>,
    jobs: HashMap<String, JobEntry>,
    heap: FireHeap,
    session: Option<Session>,
    lease: i64,
    fence: CancellationToken,
    execs: HashMap<(String, u32), RunningExec>,
    next_exec: u64,
    /// The proof ran out and etcd has not answered yet (see [`lapse`]).
    lapsed: bool,
    /// Every extension of the session's proof.
    renewals: watch::Receiver<Instant>,
    /// Runs the proof's end dropped, replayed once it is back.
    dropped: lapse::Dropped,
    /// Client, keys and write limit, shared by the claimer, the releaser and the running
    /// markers of failover jobs.
    writes: Arc<Writes>,
    /// Claims go through the claimer, which packs many jobs into one txn.
    claims: mpsc::UnboundedSender<ClaimWork>,
    /// Releases go through the releaser, which packs many shards into one txn.
    releases: mpsc::UnboundedSender<ReleaseWork>,
    leader: Option<(CancellationToken, JoinHandle<()>)>,
    global_limit: Option<Arc<Semaphore>>,
    status: watch::Sender<AgentStatus>,
    stopping: Option<Instant>,
    next_version: u64,
    /// The last trigger id seen per job (a trigger runs once per id).
    triggers_seen: BTreeMap<String, String>,
    /// A job that still held shards at the last `drained` check.
    drain_hint: Option<String>,
    /// Jobs to decide again at the next re-check (see `recheck`).
    retry: HashSet<String>,
}

/// An execution in progress.
pub(super) struct RunningExec {
    id: u64,
    abort: AbortHandle,
    fire: chrono::DateTime<Utc>,
    kind: events::RunKind,
}

impl Core {
    /// Starts the agent's task.
    pub(crate) fn spawn(client: Client, cfg: AgentConfig) -> AgentHandle {
        let (tx, rx) = mpsc::channel(4096);
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
        let core = Core {
            client,
            writes,
            claims,
            releases,
            id: cfg.instance.clone(),
            global_limit: cfg.max_concurrent.map(|n| Arc::new(Semaphore::new(n))),
            cfg: Arc::new(cfg),
            tx,
            tables: HashMap::new(),
            jobs: HashMap::new(),
            heap: FireHeap::default(),
            session: None,
            lease: 0,
            fence: CancellationToken::new(),
            execs: HashMap::new(),
            next_exec: 0,
            lapsed: false,
            renewals: watch::channel(Instant::now()).1,
            dropped: lapse::Dropped::new(),
            leader: None,
            status,
            stopping: None,
            next_version: 0,
            triggers_seen: BTreeMap::new(),
            drain_hint: None,
            retry: HashSet::new(),
        };
        let span = info_span!("agent", instance = %id);
        let task = tokio::spawn(
            core.run(rx, shutdown.clone(), crash.clone())
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

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        crash: CancellationToken,
    ) -> Result<(), AgentError> {
        let keys = &self.cfg.keys;
        let watchers: Vec<JoinHandle<()>> = [
            (Stream::Jobs, keys.jobs_prefix()),
            (Stream::Assignments, keys.assignments_prefix()),
            (Stream::Owners, keys.owners_root()),
            (Stream::Triggers, keys.triggers_prefix()),
        ]
        .into_iter()
        .map(|(stream, prefix)| {
            tokio::spawn(forward(
                self.client.clone(),
                stream,
                prefix,
                self.tx.clone(),
            ))
        })
        .collect();
        let mut recheck = tokio::time::interval(Duration::from_secs(1));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if crash.is_cancelled() {
                self.crash();
                for w in watchers {
                    w.abort();
                }
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
            let (lost, proof) = self
                .session
                .as_ref()
                .map(|s| (s.handle().lost(), s.handle().valid_until()))
                .unwrap_or_else(|| (CancellationToken::new(), Instant::now()));
            let watch_renewals = has_session && (self.lapsed || !self.dropped.is_empty());
            let mut renewals = self.renewals.clone();
            let next_fire = self.heap.next_due();
            tokio::select! {
                biased;
                _ = crash.cancelled() => continue,
                _ = lost.cancelled(), if has_session => self.self_fence("the lease is gone"),
                _ = sleep_until(proof), if has_session && !self.lapsed => self.on_proof_deadline(),
                _ = renewals.changed(), if watch_renewals => self.on_renewal(),
                _ = shutdown.cancelled(), if self.stopping.is_none() => self.begin_shutdown().await,
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = sleep_until(next_fire.unwrap_or_else(Instant::now)), if next_fire.is_some() => self.fire_due(),
                _ = recheck.tick() => self.recheck(),
                _ = sleep_until(self.stopping.unwrap_or_else(Instant::now)), if self.stopping.is_some() => {
                    warn!("shutdown timeout: cancelling what still runs");
                    break;
                }
            }
            if self.stopping.is_some() && self.drained() {
                break;
            }
        }
        self.finish().await;
        for w in watchers {
            w.abort();
        }
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

    async fn try_open_session(&mut self) -> Result<(), String> {
        let session = Session::grant(&self.client, self.cfg.ttl)
            .await
            .map_err(|e| e.to_string())?;
        // A grant answered late (etcd slow, or a partition that held the request) comes with
        // little proof left: claiming shards with it would only lose their next fires. Let it
        // expire and ask again.
        if !session.handle().is_valid(Instant::now(), self.cfg.ttl / 2) {
            session.orphan();
            return Err("the lease was granted too late to be of use; asking again".into());
        }
        let info = InstanceInfo {
            id: self.id.clone(),
            host: crate::builder::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            labels: self.cfg.labels.clone(),
            weight: self.cfg.weight,
            handlers: self.cfg.handlers.keys().cloned().collect(),
            started_at: Utc::now(),
        };
        let value = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
        let mut client = self.client.clone();
        let put = client.put(
            self.cfg.keys.instance(&self.cfg.id),
            value,
            Some(PutOptions::new().with_lease(session.lease())),
        );
        timeout(Duration::from_secs(5), put)
            .await
            .map_err(|_| "registering: no answer within 5s".to_owned())?
            .map_err(|e| format!("registering: {e}"))?;
        self.lease = session.lease();
        self.fence = CancellationToken::new();
        self.renewals = session.handle().renewals();
        self.lapsed = false;
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
            };
            self.leader = Some((stop, tokio::spawn(task.run().in_current_span())));
        }
        info!(lease = %format!("{:x}", session.lease()), "registered");
        self.session = Some(session);
        self.decide_all();
        self.publish_status(|_| {});
        Ok(())
    }

    /// Lease gone: stop everything done under it, then (next loop turn) open a new session.
    fn self_fence(&mut self, reason: &str) {
        warn!(
            reason,
            "self-fencing: cancelling executions and dropping ownership"
        );
        metrics::counter!("shardjob_session_losses_total").increment(1);
        self.fence.cancel();
        for (_, run) in std::mem::take(&mut self.execs) {
            run.abort.abort();
        }
        self.dropped.clear();
        self.lapsed = false;
        for t in self.tables.values_mut() {
            t.running.clear();
            t.claiming.clear();
            t.releasing.clear();
        }
        for j in self.jobs.values_mut() {
            j.forget_shard_state();
        }
        if let Some((stop, _)) = self.leader.take() {
            stop.cancel();
        }
        self.session = None;
        self.lease = 0;
        self.publish_status(|s| {
            s.session_losses += 1;
            s.is_leader = false;
        });
    }

    /// Simulated process death: stop everything, release nothing, let the lease expire.
    fn crash(&mut self) {
        warn!("aborting as if the process died");
        // Abort before cancelling: a dead process's handlers do not get to see a cancel.
        for (_, run) in std::mem::take(&mut self.execs) {
            run.abort.abort();
        }
        self.fence.cancel();
        if let Some((_, task)) = self.leader.take() {
            task.abort(); // no resign: leadership ends with the lease
        }
        if let Some(session) = self.session.take() {
            let _ = session.orphan();
        }
    }

    fn me(&self) -> Me<'_> {
        Me {
            id: &self.cfg.id,
            lease: self.lease,
        }
    }

    fn session_valid(&self) -> bool {
        // Act on the lease only while it is proven for a tenth of the TTL more.
        let margin = self.cfg.ttl / 10;
        self.session
            .as_ref()
            .is_some_and(|s| s.handle().is_valid(Instant::now(), margin))
    }

    fn publish_status(&self, change: impl FnOnce(&mut AgentStatus)) {
        let me = self.me();
        let owned: BTreeMap<String, Vec<u32>> = self
            .tables
            .iter()
            .filter_map(|(job, t)| {
                let shards: Vec<u32> = t.fireable(me).into_iter().map(|(s, _)| s).collect();
                (!shards.is_empty()).then(|| (job.clone(), shards))
            })
            .collect();
        let count: usize = owned.values().map(Vec::len).sum();
        metrics::gauge!("shardjob_owned_shards").set(count as f64);
        let lease = self.lease;
        let stopping = self.stopping.is_some();
        self.status.send_modify(|s| {
            s.owned = owned;
            s.lease = lease;
            s.stopping = stopping;
            change(s);
        });
    }

    /// Refreshes the published shards of `jobs` only: an event about one job must not cost a
    /// walk over every shard of every job (the full rebuild is `publish_status`).
    fn publish_owned(&self, jobs: &[String]) {
        let me = self.me();
        let mut delta: i64 = 0;
        self.status.send_if_modified(|s| {
            let mut changed = false;
            for job in jobs {
                let shards: Vec<u32> = self
                    .tables
                    .get(job)
                    .map(|t| t.fireable(me).into_iter().map(|(shard, _)| shard).collect())
                    .unwrap_or_default();
                let before = s.owned.get(job).map_or(0, Vec::len) as i64;
                if s.owned
                    .get(job)
                    .map_or(shards.is_empty(), |old| *old == shards)
                {
                    continue;
                }
                changed = true;
                delta += shards.len() as i64 - before;
                if shards.is_empty() {
                    s.owned.remove(job);
                } else {
                    s.owned.insert(job.clone(), shards);
                }
            }
            changed
        });
        if delta != 0 {
            metrics::gauge!("shardjob_owned_shards").increment(delta as f64);
        }
    }

    /// Decisions for every job (after a re-list, a new session, or the periodic re-check).
    fn decide_all(&mut self) {
        let jobs: Vec<String> = self.tables.keys().cloned().collect();
        for job in jobs {
            self.decide(&job);
        }
    }

    /// The periodic re-check: decides again only the jobs whose last decision could not be
    /// carried out (a claim deferred for lack of lease proof, a failed claim or release). A walk
    /// over every job each second would stall fires for milliseconds at 10k jobs.
    fn recheck(&mut self) {
        let jobs: Vec<String> = self.retry.drain().collect();
        for job in jobs {
            self.decide(&job);
        }
    }

    fn decide(&mut self, job: &str) {
        if self.lease == 0 {
            return;
        }
        let may_claim = self.stopping.is_none() && self.jobs.contains_key(job);
        let proven = self.session_valid();
        let me = Me {
            id: &self.cfg.id,
            lease: self.lease,
        };
        let Some(table) = self.tables.get(job) else {
            return;
        };
        let decisions = table.decide(me, may_claim);
        for d in decisions {
            if !proven && matches!(d, Decision::Claim { .. }) {
                // Not now: the lease is not proven long enough. Try again at the re-check.
                self.retry.insert(job.to_owned());
                continue;
            }
            self.carry_out(job, d);
        }
    }

    fn carry_out(&mut self, job: &str, decision: Decision) {
        let Some(table) = self.tables.get_mut(job) else {
            return;
        };
        let lease = self.lease;
        match decision {
            Decision::Claim {
                shards,
                assignment_revision,
                generation,
            } => {
                table.claiming.extend(shards.iter().copied());
                for chunk in shards.chunks(txn::CLAIM_CHUNK) {
                    let part = txn::ClaimPart {
                        job: job.to_owned(),
                        assignment_revision,
                        generation,
                        shards: chunk.to_vec(),
                    };
                    // Unbounded: the claimer lives as long as the core (never a lost claim).
                    let _ = self.claims.send(ClaimWork { lease, part });
                }
            }
            Decision::Release { shard, token } => {
                table.releasing.insert(shard);
                let last_fire = self.jobs.get(job).and_then(|j| j.cursor_value(shard));
                let item = (job.to_owned(), shard, token, last_fire);
                // Unbounded: the releaser lives as long as the core (never a lost release).
                let _ = self.releases.send(ReleaseWork { lease, item });
            }
        }
    }

    /// True once nothing runs and no shard is held or being released. Called after every event
    /// while stopping, so it remembers which job still held something: with 10k jobs a full
    /// walk per event would make a shutdown quadratic.
    fn drained(&mut self) -> bool {
        if !self.execs.is_empty() {
            return false;
        }
        let me = self.me();
        let busy = |t: &ShardTable| t.holds_any(me) || !t.releasing.is_empty();
        if let Some(t) = self.drain_hint.as_ref().and_then(|j| self.tables.get(j)) {
            if busy(t) {
                return false;
            }
        }
        self.drain_hint = self
            .tables
            .iter()
            .find(|(_, t)| busy(t))
            .map(|(j, _)| j.clone());
        self.drain_hint.is_none()
    }

    /// Graceful shutdown, step 1: stop firing and leave the instance list (the leader moves
    /// this instance's shards at once); the loop then releases them as they are reassigned.
    async fn begin_shutdown(&mut self) {
        info!("shutting down: handing shards over");
        self.stopping = Some(Instant::now() + self.cfg.shutdown_timeout);
        self.heap.clear();
        // Leaving the instance list is what makes the leader move this instance's shards at
        // once; a connection broken by an etcd restart must not turn that into a wait for the
        // shutdown timeout, so it is retried.
        let key = self.cfg.keys.instance(&self.cfg.id);
        let client = self.client.clone();
        let left = retry("removing the instance key", || {
            let (mut c, key) = (client.clone(), key.clone());
            async move {
                c.delete(key, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        if let Err(e) = left {
            warn!(error = %e, "could not remove the instance key; shards move at lease expiry");
        }
        self.publish_status(|_| {});
    }

    /// Graceful shutdown, last step: cancel what still runs, release what is still held,
    /// stop leading (resign), revoke the lease.
    async fn finish(&mut self) {
        self.fence.cancel();
        for (_, run) in std::mem::take(&mut self.execs) {
            run.abort.abort();
        }
        let me = Me {
            id: &self.cfg.id,
            lease: self.lease,
        };
        let held: Vec<(String, u32, i64)> = self
            .tables
            .iter()
            .flat_map(|(job, t)| {
                t.held(me)
                    .into_iter()
                    .map(move |(s, tok)| (job.clone(), s, tok))
            })
            .collect();
        let items: Vec<txn::ReleaseItem> = held
            .into_iter()
            .map(|(job, shard, token)| {
                let last_fire = self.jobs.get(&job).and_then(|j| j.cursor_value(shard));
                (job, shard, token, last_fire)
            })
            .collect();
        for chunk in items.chunks(txn::RELEASE_CHUNK) {
            let w = &self.writes;
            let released = retry("releasing at shutdown", || async {
                let results = txn::release_many(&w.client, &w.keys, chunk, w.timeout).await;
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
        if let Some(session) = self.session.take() {
            if let Err(e) = session.close().await {
                warn!(error = %e, "revoking the lease failed; it expires by itself");
            }
        }
        self.lease = 0;
        self.publish_status(|s| s.is_leader = false);
        info!("stopped");
    }
}

/// Runs `op` up to 5 times, 200 ms apart, each attempt bounded by 1 s: for the few writes of a
/// graceful shutdown, where a transient etcd error (a connection broken by a member restart)
/// would otherwise cost a whole lease TTL or the shutdown timeout.
async fn retry<T, F, Fut>(what: &str, op: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for attempt in 1..=5 {
        match timeout(Duration::from_secs(1), op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer within 1s".into(),
        }
        warn!(what, attempt, error = %last, "retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

/// Feeds one prefix's watch events into the core, forever (a refused watch is retried).
async fn forward(client: Client, stream: Stream, prefix: String, tx: mpsc::Sender<Event>) {
    loop {
        let mut watcher = PrefixWatcher::new(&client, prefix.clone());
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
