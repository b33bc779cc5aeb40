//! Packs the claims of many jobs into few txns, with a bounded number in flight.
//!
//! The core decides claims job by job; sent one txn each, a cold start of 10k jobs would be 10k
//! txns and 10k tasks alive at once (each with its own client and request). The claimer packs
//! queued claims of one lease into txns of up to [`CLAIM_CHUNK`] shards, keeps at most
//! [`IN_FLIGHT`] running (the loop is `batch::run_packed`), and reports each job's results to
//! the core as `Input::Claimed`.

use std::sync::Arc;

use shardjob_sharding::InstanceId;
use tokio::sync::mpsc;
use tracing::{Instrument, info_span};

use super::Event;
use super::batch::{Packable, run_packed};
use super::txn::{CLAIM_CHUNK, ClaimPart, Claimant, Writes, claim};
use crate::engine::{Input, LeaseId};

/// Claim txns running at once.
pub(crate) const IN_FLIGHT: usize = 8;

/// One job's shards to claim with the session of `lease`.
#[derive(Debug)]
pub(crate) struct ClaimWork {
    pub lease: LeaseId,
    pub part: ClaimPart,
}

impl Packable for ClaimWork {
    fn lease(&self) -> LeaseId {
        self.lease
    }
    fn size(&self) -> usize {
        self.part.shards.len()
    }
}

/// What every claim txn shares.
pub(crate) struct Claimer {
    pub writes: Arc<Writes>,
    pub instance: InstanceId,
    pub events: mpsc::Sender<Event>,
}

impl Claimer {
    /// Starts the claimer; it ends when the sender is dropped.
    pub(crate) fn spawn(self) -> mpsc::UnboundedSender<ClaimWork> {
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(self);
        let task = run_packed(rx, CLAIM_CHUNK, IN_FLIGHT, move |lease, works| {
            let this = this.clone();
            let shards: usize = works.iter().map(Packable::size).sum();
            let span = info_span!("claim", jobs = works.len(), shards);
            async move { this.claim(lease, works).await }.instrument(span)
        });
        tokio::spawn(task.in_current_span());
        tx
    }

    async fn claim(&self, lease: LeaseId, works: Vec<ClaimWork>) {
        let parts: Vec<ClaimPart> = works.into_iter().map(|w| w.part).collect();
        let who = Claimant {
            keys: &self.writes.keys,
            instance: &self.instance,
            lease,
            timeout: self.writes.timeout,
        };
        let (results, read_at) = claim(&self.writes.client, &who, &parts).await;
        for (part, results) in parts.into_iter().zip(results) {
            let ev = Event::Engine(Input::Claimed {
                job: part.job,
                lease,
                revision: part.assignment_revision,
                read_at,
                results,
            });
            if self.events.send(ev).await.is_err() {
                return;
            }
        }
    }
}
