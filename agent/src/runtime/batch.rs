//! The loop the claimer and the releaser share: take queued work of one lease, pack it up to a
//! size limit, and run each pack as its own task with a bounded number in flight. While every
//! slot is busy work queues up, so packs fill when it matters and a lone item still goes out at
//! once.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use crate::engine::LeaseId;

/// Work that can be packed with other work of the same lease.
pub(crate) trait Packable {
    /// The session the work belongs to (work of two sessions is never packed together).
    fn lease(&self) -> LeaseId;
    /// How much of a pack's limit it takes.
    fn size(&self) -> usize;
}

/// Runs until the sender of `rx` is dropped; `run(lease, pack)` carries out one pack.
pub(crate) async fn run_packed<W, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<W>,
    limit: usize,
    in_flight: usize,
    run: F,
) where
    W: Packable,
    F: Fn(LeaseId, Vec<W>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut carry: Option<W> = None;
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
        let lease = first.lease();
        let mut size = first.size();
        let mut pack = vec![first];
        while size < limit {
            match rx.try_recv() {
                Ok(w) if w.lease() == lease && size + w.size() <= limit => {
                    size += w.size();
                    pack.push(w);
                }
                Ok(w) => {
                    carry = Some(w);
                    break;
                }
                Err(_) => break,
            }
        }
        let fut = run(lease, pack);
        tokio::spawn(
            async move {
                fut.await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct W(i64, usize, u32);

    impl Packable for W {
        fn lease(&self) -> LeaseId {
            LeaseId::new(self.0).unwrap()
        }
        fn size(&self) -> usize {
            self.1
        }
    }

    #[tokio::test]
    async fn packs_queued_work_of_one_lease_up_to_the_limit() {
        let (tx, rx) = mpsc::unbounded_channel();
        for w in [
            W(1, 3, 0),
            W(1, 3, 1),
            W(1, 3, 2),
            W(2, 1, 3),
            W(1, 1, 4),
            W(1, 9, 5),
        ] {
            tx.send(w).unwrap();
        }
        drop(tx);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        run_packed(rx, 6, 1, move |lease, pack: Vec<W>| {
            let done = done_tx.clone();
            async move {
                let ids: Vec<u32> = pack.iter().map(|w| w.2).collect();
                done.send((lease.get(), ids)).unwrap();
            }
        })
        .await;
        let mut packs = Vec::new();
        while let Some(p) = done.recv().await {
            packs.push(p);
        }
        // In order; a pack stops at the limit or at work of another lease; an item larger
        // than the limit goes alone.
        assert_eq!(
            packs,
            [
                (1, vec![0, 1]),
                (1, vec![2]),
                (2, vec![3]),
                (1, vec![4]),
                (1, vec![5])
            ]
        );
    }
}
