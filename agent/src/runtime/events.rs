//! How the core reacts to each event. Every handler updates state, then asks the ownership
//! engine what to do for the jobs it touched.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use etcd_client::KeyValue;
use shardjob_coordinator::keys::KeyKind;
use shardjob_coordinator::model::{AssignmentRecord, Owner, Trigger, decode, decode_job};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use super::exec::{ExecRequest, execute};
use super::fires::instant_of;
use super::state::JobEntry;
use super::txn::ShardClaim;
use super::{Core, Event, RunningExec, Stream};
use crate::job::ShardContext;
use crate::ownership::SeenOwner;
use crate::schedule::FireSchedule;
use shardjob_coordinator::watch::WatchEvent;

/// Why an execution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunKind {
    OnTime,
    /// Coalesced while the previous run went on, or caught up after a hand-off.
    Misfire,
    /// Replays a fire whose owner died mid-execution.
    Failover,
    /// Asked for through `triggers/<job>`.
    Trigger,
}

fn key_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

impl Core {
    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Watch(stream, ev) => self.on_watch(stream, ev),
            Event::Claimed {
                job,
                lease,
                results,
            } => self.on_claimed(&job, lease, results),
            Event::Released { job, shard, lease } => {
                if lease == self.lease {
                    // A failed release leaves the key held and not releasing: the re-check
                    // decides this job again (a successful one makes that a no-op).
                    self.retry.insert(job.clone());
                    if let Some(t) = self.tables.get_mut(&job) {
                        t.releasing.remove(&shard);
                    }
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.last_run.remove(&shard);
                        j.floor.remove(&shard);
                        j.claimed_at.remove(&shard);
                    }
                }
            }
            Event::ExecDone {
                job,
                shard,
                lease,
                fire,
                id,
            } => self.on_exec_done(job, shard, lease, fire, id),
            Event::Leader(leading) => self.publish_status(|s| s.is_leader = leading),
        }
    }

    fn on_watch(&mut self, stream: Stream, ev: WatchEvent) {
        let mut touched: Vec<String> = Vec::new();
        match ev {
            WatchEvent::Restarted { kvs, .. } if stream == Stream::Triggers => {
                // Triggers present at (re)start are history: remember their ids, run nothing.
                for kv in &kvs {
                    if let Some((job, t)) = self.decode_trigger(kv) {
                        self.triggers_seen.insert(job, t.id);
                    }
                }
            }
            WatchEvent::Put(kv) if stream == Stream::Triggers => self.on_trigger(&kv),
            WatchEvent::Delete { .. } if stream == Stream::Triggers => {}
            WatchEvent::Restarted { kvs, .. } => {
                // A whole prefix was replaced: decide and publish everything once.
                self.reset(stream);
                for kv in &kvs {
                    self.apply_put(stream, kv);
                }
                self.decide_all();
                self.publish_status(|_| {});
            }
            WatchEvent::Put(kv) => touched.extend(self.apply_put(stream, &kv)),
            WatchEvent::Delete { kv, .. } => {
                touched.extend(self.apply_delete(stream, &key_of(&kv)))
            }
        }
        for job in &touched {
            self.decide(job);
        }
        if stream != Stream::Jobs && !touched.is_empty() {
            self.publish_owned(&touched);
        }
    }

    /// Forgets everything a re-listed prefix held (the listing puts it back).
    fn reset(&mut self, stream: Stream) {
        match stream {
            Stream::Jobs => {
                self.jobs.clear();
                self.heap.clear();
            }
            Stream::Assignments => self.tables.values_mut().for_each(|t| t.assignment = None),
            Stream::Owners => self.tables.values_mut().for_each(|t| t.owners.clear()),
            Stream::Triggers => {}
        }
    }

    fn decode_trigger(&self, kv: &KeyValue) -> Option<(String, Trigger)> {
        let key = key_of(kv);
        let Some(KeyKind::Trigger(job)) = self.cfg.keys.parse(&key) else {
            return None;
        };
        match decode::<Trigger>(&key, "trigger", kv.value()) {
            Ok(t) => Some((job, t)),
            Err(e) => {
                warn!(error = %e, "skipping a trigger that does not decode");
                None
            }
        }
    }

    /// A new trigger id: run every shard this agent may fire, once.
    fn on_trigger(&mut self, kv: &KeyValue) {
        let Some((job, trigger)) = self.decode_trigger(kv) else {
            return;
        };
        if self.triggers_seen.get(&job) == Some(&trigger.id) {
            return;
        }
        self.triggers_seen.insert(job.clone(), trigger.id.clone());
        if self.stopping.is_some() || !self.jobs.contains_key(&job) {
            return;
        }
        let me = self.me();
        let shards = self
            .tables
            .get(&job)
            .map(|t| t.fireable(me))
            .unwrap_or_default();
        tracing::info!(job, id = %trigger.id, shards = shards.len(), "triggered");
        for (shard, token) in shards {
            self.start_or_queue(&job, shard, token, trigger.requested_at, RunKind::Trigger);
        }
    }

    /// Starts a run now, or, while the shard's previous run goes on, queues it as the one
    /// coalesced misfire (if the job allows misfires).
    pub(super) fn start_or_queue(
        &mut self,
        job: &str,
        shard: u32,
        token: i64,
        fire: DateTime<Utc>,
        kind: RunKind,
    ) {
        let running = self
            .tables
            .get(job)
            .is_some_and(|t| t.running.contains(&shard));
        if !running {
            self.launch(job, shard, token, fire, kind);
            return;
        }
        metrics::counter!("shardjob_misfires_total").increment(1);
        if let Some(entry) = self.jobs.get_mut(job).filter(|e| e.config.misfire) {
            entry.pending_misfire.insert(shard, fire);
        }
    }

    fn apply_put(&mut self, stream: Stream, kv: &KeyValue) -> Option<String> {
        let key = key_of(kv);
        match (stream, self.cfg.keys.parse(&key)?) {
            (Stream::Jobs, KeyKind::Job(job)) => {
                self.upsert_job(&job, &key, kv.value());
                Some(job)
            }
            (Stream::Assignments, KeyKind::Assignment(job)) => {
                let me = self.cfg.id.as_str();
                let table = self.tables.entry(job.clone()).or_default();
                let before = table.assignment_names(me);
                match decode::<AssignmentRecord>(&key, "assignment", kv.value()) {
                    Ok(r) => table.assignment = Some((r, kv.mod_revision())),
                    Err(e) => warn!(error = %e, "skipping an assignment that does not decode"),
                }
                // Another instance's change cannot change what this one does: skip deciding.
                (before || table.assignment_names(me)).then_some(job)
            }
            (Stream::Owners, KeyKind::Owner { job, shard }) => {
                // An owner key that does not decode still holds the shard: nobody may claim over
                // it, so it is recorded as held by an unknown instance.
                let instance = decode::<Owner>(&key, "owner", kv.value())
                    .map(|o| o.instance.to_string())
                    .unwrap_or_default();
                let seen = SeenOwner {
                    instance,
                    token: kv.create_revision(),
                    lease: kv.lease(),
                };
                let me = self.cfg.id.as_str();
                let table = self.tables.entry(job.clone()).or_default();
                let relevant = seen.instance == me || table.concerns(shard, me);
                table.owners.insert(shard, seen);
                relevant.then_some(job)
            }
            _ => None,
        }
    }

    fn apply_delete(&mut self, stream: Stream, key: &str) -> Option<String> {
        match (stream, self.cfg.keys.parse(key)?) {
            (Stream::Jobs, KeyKind::Job(job)) => {
                self.jobs.remove(&job);
                Some(job)
            }
            (Stream::Assignments, KeyKind::Assignment(job)) => {
                let t = self.tables.get_mut(&job)?;
                let before = t.assignment_names(&self.cfg.id);
                t.assignment = None;
                before.then_some(job)
            }
            (Stream::Owners, KeyKind::Owner { job, shard }) => {
                let t = self.tables.get_mut(&job)?;
                let relevant = t.concerns(shard, &self.cfg.id);
                t.owners.remove(&shard);
                relevant.then_some(job)
            }
            _ => None,
        }
    }

    /// A job config arrived: keep it if this agent has its handler; reschedule on a change.
    fn upsert_job(&mut self, job: &str, key: &str, value: &[u8]) {
        let config = match decode_job(key, job, value) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "skipping a job config that does not decode; the last good one stays");
                return;
            }
        };
        let Some(handler) = self.cfg.handlers.get(config.handler_name(job)).cloned() else {
            self.jobs.remove(job);
            return;
        };
        let schedule_changed = self.jobs.get(job).is_none_or(|e| {
            e.config.schedule != config.schedule || e.config.time_zone != config.time_zone
        });
        if let Some(entry) = self.jobs.get_mut(job).filter(|_| !schedule_changed) {
            entry.config = config;
            return;
        }
        let offset = config.offset.map(|o| o.0).unwrap_or_default();
        let schedule = match FireSchedule::new(&config.schedule, &config.time_zone)
            .map(|s| s.with_offset(offset))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(job, error = %e, "schedule does not compile; job skipped");
                return;
            }
        };
        self.next_version += 1;
        let version = self.next_version;
        let now_utc = Utc::now();
        if let Some(next) = schedule.next_after(now_utc) {
            self.heap.push(
                instant_of(next, Instant::now(), now_utc),
                job,
                version,
                next,
            );
        }
        let limit = self
            .cfg
            .job_limits
            .get(job)
            .map(|n| Arc::new(Semaphore::new(*n)));
        let old = self.jobs.remove(job);
        let mut entry = JobEntry {
            config,
            schedule,
            version,
            handler,
            limit,
            pending_misfire: Default::default(),
            last_run: Default::default(),
            floor: Default::default(),
            claimed_at: Default::default(),
        };
        if let Some(old) = old {
            entry.last_run = old.last_run;
            entry.floor = old.floor;
            entry.claimed_at = old.claimed_at;
        }
        self.jobs.insert(job.to_owned(), entry);
        self.tables.entry(job.to_owned()).or_default();
    }

    fn on_claimed(&mut self, job: &str, lease: i64, results: Vec<(u32, ShardClaim)>) {
        if lease != self.lease {
            return; // a claim of a fenced session: its keys count as someone else's anyway
        }
        let now_utc = Utc::now();
        let mut runs: Vec<(u32, i64, DateTime<Utc>, RunKind)> = Vec::new();
        if let Some(table) = self.tables.get_mut(job) {
            for (shard, result) in results {
                table.claiming.remove(&shard);
                match result {
                    ShardClaim::Won {
                        token,
                        cursor,
                        running,
                    } => {
                        let seen = SeenOwner {
                            instance: self.cfg.id.clone(),
                            token,
                            lease,
                        };
                        table.owners.insert(shard, seen);
                        if let Some(entry) = self.jobs.get_mut(job) {
                            entry.claimed_at.insert(shard, now_utc);
                        }
                        // A marker left behind: the previous execution was cut short (its owner
                        // died, lost its lease or timed out shutting down).
                        let failover = self.jobs.get(job).is_some_and(|e| e.config.failover);
                        let rerun = running.filter(|_| failover).map(|r| r.fire_time);
                        if let Some(fire) = rerun {
                            runs.push((shard, token, fire, RunKind::Failover));
                        }
                        let trusted = cursor.filter(|c| c.released).and_then(|c| c.last_fire);
                        if let (Some(last), Some(entry)) = (trusted, self.jobs.get_mut(job)) {
                            entry.floor.insert(shard, last);
                            // Never repeat the previous owner's last fire; run the most recent
                            // one it missed, once, as a misfire (unless that is the fire the
                            // failover run above already re-runs: one cut short at shutdown).
                            let latest = entry.schedule.latest_at_or_before(now_utc);
                            if let Some(missed) = latest
                                .filter(|l| *l > last && entry.config.misfire && Some(*l) != rerun)
                            {
                                runs.push((shard, token, missed, RunKind::Misfire));
                            }
                        }
                        debug!(job, shard, token, "claimed");
                    }
                    ShardClaim::Lost => {}
                    ShardClaim::Failed(e) => {
                        warn!(job, shard, error = %e, "claim failed; retrying");
                        self.retry.insert(job.to_owned());
                    }
                }
            }
        }
        for (shard, token, fire, kind) in runs {
            self.start_or_queue(job, shard, token, fire, kind);
        }
        metrics::counter!("shardjob_shard_claims_total").increment(1);
        self.decide(job);
        self.publish_owned(&[job.to_owned()]);
    }

    fn on_exec_done(&mut self, job: String, shard: u32, lease: i64, fire: DateTime<Utc>, id: u64) {
        let key = (job, shard);
        // Only the execution's own entry: after a lapse or a self-fence a later execution of
        // the shard may already run.
        if self.execs.get(&key).is_none_or(|r| r.id != id) {
            return;
        }
        self.execs.remove(&key);
        let job = key.0.as_str();
        if lease != self.lease {
            return;
        }
        if let Some(t) = self.tables.get_mut(job) {
            t.running.remove(&shard);
        }
        let pending = self.jobs.get_mut(job).and_then(|e| {
            let last = e.last_run.entry(shard).or_insert(fire);
            *last = (*last).max(fire);
            e.pending_misfire.remove(&shard)
        });
        self.status.send_modify(|s| s.executions += 1);
        if let Some(fire) = pending {
            let me = self.me();
            let token = self
                .tables
                .get(job)
                .and_then(|t| t.fireable(me).into_iter().find(|(s, _)| *s == shard));
            if let Some((_, token)) = token {
                self.launch(job, shard, token, fire, RunKind::Misfire);
            }
        }
        self.decide(job);
    }

    /// Fires every due entry of the heap.
    pub(super) fn fire_due(&mut self) {
        let now = Instant::now();
        let mut coalesced = 0u64;
        while let Some(f) = self.heap.pop_due(now) {
            let Some(entry) = self.jobs.get(&f.job).filter(|e| e.version == f.version) else {
                continue; // the job was removed or rescheduled
            };
            // Both clocks read together: pairing this fire's wall time with the instant read
            // before the burst would schedule the next fire early by the time the burst took.
            let (mono, now_utc) = (Instant::now(), Utc::now());
            let lateness = (now_utc - f.fire_time).to_std().unwrap_or_default();
            metrics::histogram!("shardjob_fire_lateness_seconds").record(lateness.as_secs_f64());
            metrics::counter!("shardjob_fires_total").increment(1);
            let (next, skipped) = entry.schedule.following(f.fire_time, now_utc);
            coalesced += u64::from(skipped);
            if let Some(next) = next {
                self.heap
                    .push(instant_of(next, mono, now_utc), &f.job, f.version, next);
            }
            if entry.config.disabled || self.stopping.is_some() {
                continue;
            }
            let me = self.me();
            let shards = self
                .tables
                .get(&f.job)
                .map(|t| t.fireable(me))
                .unwrap_or_default();
            for (shard, token) in shards {
                self.start_or_queue(&f.job, shard, token, f.fire_time, RunKind::OnTime);
            }
        }
        if coalesced > 0 {
            metrics::counter!("shardjob_fires_coalesced_total").increment(coalesced);
            warn!(
                jobs = coalesced,
                "the scheduler fell a whole interval behind; fires older than now were coalesced into the late run"
            );
        }
    }

    /// Starts one execution, if the lease is still proven.
    fn launch(&mut self, job: &str, shard: u32, token: i64, fire: DateTime<Utc>, kind: RunKind) {
        if !self.session_valid() {
            if self.lapsed {
                debug!(job, shard, "not starting during a lapse");
            } else {
                warn!(
                    job,
                    shard, "not starting: the lease is not proven long enough"
                );
            }
            if self.session.is_some() {
                // Replayed if the proof comes back (see `lapse`).
                super::lapse::record(&mut self.dropped, job, shard, fire, kind);
            }
            return;
        }
        let Some(entry) = self.jobs.get(job) else {
            return;
        };
        let ctx = ShardContext {
            job: job.to_owned(),
            shard,
            total: entry.config.total,
            shard_param: entry.config.shard_param(shard).to_owned(),
            job_param: entry.config.job_param.clone(),
            fire_time: fire,
            token,
            attempt: 1,
            is_failover: kind == RunKind::Failover,
            is_misfire: kind == RunKind::Misfire,
            cancel: self.fence.child_token(),
        };
        let permits = self
            .global_limit
            .iter()
            .chain(entry.limit.iter())
            .cloned()
            .collect();
        let marker = entry.config.failover.then(|| self.writes.clone());
        let req = ExecRequest {
            marker,
            handler: entry.handler.clone(),
            ctx,
            timeout: entry.config.timeout.map(|t| t.0),
            retries: entry.config.max_retries,
            permits,
            instance: self.cfg.id.clone(),
            log: self.cfg.exec_log.clone(),
        };
        if let Some(t) = self.tables.get_mut(job) {
            t.running.insert(shard);
        }
        let (tx, lease, job_name) = (self.tx.clone(), self.lease, job.to_owned());
        self.next_exec += 1;
        let id = self.next_exec;
        let task = tokio::spawn(
            async move {
                execute(req).await;
                let _ = tx
                    .send(Event::ExecDone {
                        job: job_name,
                        shard,
                        lease,
                        fire,
                        id,
                    })
                    .await;
            }
            .in_current_span(),
        );
        let run = RunningExec {
            id,
            abort: task.abort_handle(),
            fire,
            kind,
        };
        self.execs.insert((job.to_owned(), shard), run);
    }
}
