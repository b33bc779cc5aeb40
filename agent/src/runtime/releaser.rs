//! Packs releases into few txns, with a bounded number in flight: the counterpart of the
//! claimer (the loop is `batch::run_packed`). An agent handing over thousands of shards (a
//! graceful shutdown, a drain, a big rebalance) would otherwise send one txn, and keep one
//! task, per shard.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span};

use super::Event;
use super::batch::{Packable, run_packed};
use super::txn::{RELEASE_CHUNK, ReleaseItem, Writes, release_many};
use crate::engine::{Input, LeaseId};

/// Release txns running at once.
const IN_FLIGHT: usize = 8;

/// One shard to release, held with the session of `lease`.
#[derive(Debug)]
pub(crate) struct ReleaseWork {
    pub lease: LeaseId,
    pub item: ReleaseItem,
}

impl Packable for ReleaseWork {
    fn lease(&self) -> LeaseId {
        self.lease
    }
    fn size(&self) -> usize {
        1
    }
}

/// What every release txn shares.
pub(crate) struct Releaser {
    pub writes: Arc<Writes>,
    pub events: mpsc::Sender<Event>,
}

impl Releaser {
    /// Starts the releaser; it ends when the sender is dropped.
    pub(crate) fn spawn(self) -> mpsc::UnboundedSender<ReleaseWork> {
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(self);
        let task = run_packed(rx, RELEASE_CHUNK, IN_FLIGHT, move |lease, works| {
            let this = this.clone();
            let span = info_span!("release", shards = works.len());
            async move { this.release(lease, works).await }.instrument(span)
        });
        tokio::spawn(task.in_current_span());
        tx
    }

    async fn release(&self, lease: LeaseId, works: Vec<ReleaseWork>) {
        let items: Vec<ReleaseItem> = works.into_iter().map(|w| w.item).collect();
        let w = &self.writes;
        let results = release_many(&w.client, &w.keys, &items, w.timeout).await;
        for (item, result) in items.into_iter().zip(results) {
            let (job, shard, token) = (item.job, item.shard, item.token);
            match &result {
                Ok(true) => info!(job = %job, shard, "released"),
                Ok(false) => info!(job = %job, shard, "owner key already gone"),
                Err(_) => {}
            }
            let result = result
                .map(|_| ())
                .map_err(|e| crate::engine::WriteFailed(e.to_string()));
            if self
                .events
                .send(Event::Engine(Input::Released {
                    job,
                    shard,
                    lease,
                    token,
                    result,
                }))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
