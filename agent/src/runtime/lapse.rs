//! A lapse: the lease can no longer be proven alive, but etcd has not said it is gone.
//!
//! This happens in every etcd raft election (no keep-alive is answered for one to two seconds;
//! the new raft leader then renews every lease) and at the start of every partition. The agent
//! cannot know which, so at the instant its proof runs out ([`Core::on_proof_deadline`]) it stops
//! executing: running executions are cancelled and aborted, and no fire starts (`launch` checks
//! the proof). It keeps everything else: its lease, its shards, its claims and releases in
//! flight, its leadership (every leader write is fenced anyway).
//!
//! Then either etcd answers a keep-alive and the lease is proven again ([`Core::on_renewal`]):
//! owner keys cannot outlive their lease and no one can claim a key that exists, so no one else
//! ran these shards meanwhile, and the agent resumes with the same tokens, re-running the fires
//! the lapse dropped, once per shard (as misfires, if the job allows them). Or etcd says the
//! lease is gone, the session is lost, and the agent self-fences as before.
//!
//! Before, a lapse was a loss: at a 2 s TTL every etcd leader kill self-fenced every agent, and
//! getting a new lease and claiming everything again through an etcd that had just elected a
//! leader took seconds more (fault campaign, seed 77).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::{info, warn};

use super::Core;
use super::events::RunKind;

/// Fires dropped by a lapse, per (job, shard): the latest one and why it was to run.
pub(super) type Dropped = HashMap<(String, u32), (DateTime<Utc>, RunKind)>;

/// Records `fire` as dropped for (job, shard), keeping the latest fire per shard (one replay
/// per shard, like a coalesced misfire).
pub(super) fn record(
    dropped: &mut Dropped,
    job: &str,
    shard: u32,
    fire: DateTime<Utc>,
    kind: RunKind,
) {
    let entry = dropped
        .entry((job.to_owned(), shard))
        .or_insert((fire, kind));
    if fire > entry.0 {
        *entry = (fire, kind);
    }
}

/// How a dropped run is replayed once the lease is proven again, if at all: a scheduled fire
/// only when the job allows misfires; a failover replay or a manual trigger always (each is a
/// run someone is owed).
pub(super) fn replay_kind(kind: RunKind, misfire_allowed: bool) -> Option<RunKind> {
    match kind {
        RunKind::OnTime | RunKind::Misfire => misfire_allowed.then_some(RunKind::Misfire),
        RunKind::Failover | RunKind::Trigger => Some(kind),
    }
}

impl Core {
    /// The proof's end as last seen: lapse, unless a renewal moved it meanwhile.
    pub(super) fn on_proof_deadline(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        if session.handle().valid_until() > Instant::now() {
            return;
        }
        warn!("the lease can no longer be proven alive: stopping executions until etcd answers");
        metrics::counter!("shardjob_lease_lapses_total").increment(1);
        self.lapsed = true;
        self.renewals.borrow_and_update();
        self.fence.cancel();
        self.fence = tokio_util::sync::CancellationToken::new();
        for ((job, shard), run) in std::mem::take(&mut self.execs) {
            run.abort.abort();
            record(&mut self.dropped, &job, shard, run.fire, run.kind);
            if let Some(t) = self.tables.get_mut(&job) {
                t.running.remove(&shard);
            }
        }
        self.publish_status(|s| s.lapses += 1);
    }

    /// A keep-alive was acknowledged: if the proof is back, resume and replay what was dropped.
    pub(super) fn on_renewal(&mut self) {
        self.renewals.borrow_and_update();
        if !self.session_valid() {
            return;
        }
        if self.lapsed {
            info!("the lease is proven again: resuming with the same lease and shards");
            self.lapsed = false;
        }
        let dropped = std::mem::take(&mut self.dropped);
        let me = self.me();
        let mut replays = Vec::new();
        for ((job, shard), (fire, kind)) in dropped {
            let Some(entry) = self.jobs.get(&job) else {
                continue;
            };
            if entry.config.disabled || self.stopping.is_some() {
                continue;
            }
            let Some(kind) = replay_kind(kind, entry.config.misfire) else {
                continue;
            };
            let token = self
                .tables
                .get(&job)
                .and_then(|t| t.fireable(me).into_iter().find(|(s, _)| *s == shard));
            if let Some((_, token)) = token {
                replays.push((job, shard, token, fire, kind));
            }
        }
        for (job, shard, token, fire, kind) in replays {
            info!(job, shard, %fire, "replaying a run the lapse dropped");
            self.start_or_queue(&job, shard, token, fire, kind);
        }
        // Claims deferred for lack of proof can go now rather than at the next re-check.
        self.recheck();
        self.publish_status(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32) -> DateTime<Utc> {
        format!("2026-11-21T10:00:{s:02}Z").parse().unwrap()
    }

    #[test]
    fn only_the_latest_dropped_fire_of_a_shard_is_kept() {
        let mut d = Dropped::new();
        record(&mut d, "j", 0, t(5), RunKind::OnTime);
        record(&mut d, "j", 0, t(3), RunKind::Trigger);
        record(&mut d, "j", 0, t(6), RunKind::OnTime);
        record(&mut d, "j", 1, t(4), RunKind::Failover);
        assert_eq!(d.len(), 2);
        assert_eq!(d[&("j".to_owned(), 0)], (t(6), RunKind::OnTime));
        assert_eq!(d[&("j".to_owned(), 1)], (t(4), RunKind::Failover));
    }

    #[test]
    fn replays_follow_the_misfire_policy_except_owed_runs() {
        use RunKind::*;
        let table = [
            (OnTime, true, Some(Misfire)),
            (OnTime, false, None),
            (Misfire, true, Some(Misfire)),
            (Misfire, false, None),
            (Failover, false, Some(Failover)),
            (Trigger, false, Some(Trigger)),
        ];
        for (kind, allowed, want) in table {
            assert_eq!(
                replay_kind(kind, allowed),
                want,
                "{kind:?} misfire={allowed}"
            );
        }
    }
}
