//! Packs releases into few txns, with a bounded number in flight: the counterpart of the
//! claimer. An agent handing over thousands of shards (a graceful shutdown, a drain, a big
//! rebalance) would otherwise send one txn, and keep one task, per shard.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use shardjob_coordinator::keys::Keys;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, info, info_span, warn};

use super::Event;
use super::txn::{RELEASE_CHUNK, ReleaseItem, release_many};

/// Release txns running at once.
const IN_FLIGHT: usize = 8;

/// One shard to release, held with the session of `lease`.
#[derive(Debug)]
pub(crate) struct ReleaseWork {
    pub lease: i64,
    pub item: ReleaseItem,
}

/// What every release txn shares.
pub(crate) struct Releaser {
    pub client: Client,
    pub keys: Keys,
    pub timeout: Duration,
    pub events: mpsc::Sender<Event>,
}

impl Releaser {
    /// Starts the releaser; it ends when the sender is dropped.
    pub(crate) fn spawn(self) -> mpsc::UnboundedSender<ReleaseWork> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.run(rx).in_current_span());
        tx
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<ReleaseWork>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut carry: Option<ReleaseWork> = None;
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
            let mut items = vec![first.item];
            while items.len() < RELEASE_CHUNK {
                match rx.try_recv() {
                    Ok(w) if w.lease == lease => items.push(w.item),
                    Ok(w) => {
                        carry = Some(w);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let this = this.clone();
            let span = info_span!("release", shards = items.len());
            tokio::spawn(
                async move {
                    let results =
                        release_many(&this.client, &this.keys, &items, this.timeout).await;
                    drop(permit);
                    for ((job, shard, _, _), result) in items.into_iter().zip(results) {
                        match result {
                            Ok(true) => info!(job = %job, shard, "released"),
                            Ok(false) => info!(job = %job, shard, "owner key already gone"),
                            Err(e) => {
                                warn!(job = %job, shard, error = %e, "release failed; retrying")
                            }
                        }
                        if this
                            .events
                            .send(Event::Released { job, shard, lease })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                .instrument(span),
            );
        }
    }
}
