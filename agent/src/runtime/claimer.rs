//! Packs the claims of many jobs into few txns, with a bounded number in flight.
//!
//! The core decides claims job by job; sent one txn each, a cold start of 10k jobs would be 10k
//! txns and 10k tasks alive at once (each with its own client and request). The claimer takes
//! the queued claims of one lease, packs them into txns of up to [`CLAIM_CHUNK`] shards, keeps
//! at most [`IN_FLIGHT`] txns running, and reports each job's results to the core as
//! `Event::Claimed`. While all txns are in flight, claims queue up, so batches fill when it
//! matters and a lone claim still goes out at once.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use shardjob_coordinator::keys::Keys;
use shardjob_sharding::InstanceId;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, info_span};

use super::Event;
use super::txn::{CLAIM_CHUNK, ClaimPart, Claimant, claim};

/// Claim txns running at once.
pub(crate) const IN_FLIGHT: usize = 8;

/// One job's shards to claim with the session of `lease`.
#[derive(Debug)]
pub(crate) struct ClaimWork {
    pub lease: i64,
    pub part: ClaimPart,
}

/// What every claim txn shares.
pub(crate) struct Claimer {
    pub client: Client,
    pub keys: Keys,
    pub instance: InstanceId,
    pub timeout: Duration,
    pub events: mpsc::Sender<Event>,
}

impl Claimer {
    /// Starts the claimer; it ends when the sender is dropped.
    pub(crate) fn spawn(self) -> mpsc::UnboundedSender<ClaimWork> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.run(rx).in_current_span());
        tx
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<ClaimWork>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut carry: Option<ClaimWork> = None;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let first = match carry.take() {
                Some(w) => w,
                None => match rx.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let lease = first.lease;
            let mut shards = first.part.shards.len();
            let mut parts = vec![first.part];
            while shards < CLAIM_CHUNK {
                match rx.try_recv() {
                    Ok(w) if w.lease == lease && shards + w.part.shards.len() <= CLAIM_CHUNK => {
                        shards += w.part.shards.len();
                        parts.push(w.part);
                    }
                    Ok(w) => {
                        carry = Some(w);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let this = this.clone();
            let span = info_span!("claim", jobs = parts.len(), shards);
            tokio::spawn(
                async move {
                    let who = Claimant {
                        keys: &this.keys,
                        instance: &this.instance,
                        lease,
                        timeout: this.timeout,
                    };
                    let results = claim(&this.client, &who, &parts).await;
                    drop(permit);
                    for (part, results) in parts.into_iter().zip(results) {
                        let job = part.job;
                        let ev = Event::Claimed {
                            job,
                            lease,
                            results,
                        };
                        if this.events.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                .instrument(span),
            );
        }
    }
}
