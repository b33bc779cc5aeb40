//! [`Crowds`]: executions launched ahead of a shared instant, run a few hundred to a task.
//!
//! A burst of fires due at one instant (10k cron jobs `* * * * * *`) is prepared ahead of it
//! (`EngineConfig::lead`). Spawned as a task each, every one of them registered its own timer
//! and was woken and scheduled on its own at the instant: bench-lateness aligned 10k, p99
//! 27–37 ms and 1.4 KB of task per execution. Here the executions of one instant are split
//! into groups of [`PER_TASK`]; each group is one task that sleeps once and then drives its
//! executions together. Groups keep both worker threads busy (work stealing moves whole
//! groups), and a handler that blocks its thread delays at most its own group.
//!
//! What waits for the instant is what an execution is made from (its request, a few hundred
//! bytes), not its future (~1.3 KB): a group makes its executions when it wakes, and most have
//! ended before the next group runs. Each execution stays abortable on its own
//! ([`AbortHandle`]): an abort takes effect at its next poll (before its first, if it comes
//! first), as a task's abort does.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::{AbortHandle, AbortRegistration, Abortable};
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tracing::Instrument;

/// Executions one task drives: few enough that a slow one holds up little, many enough that
/// a burst of 10k is 40 wakeups, not 10k.
pub(super) const PER_TASK: usize = 256;

/// Executions (each the `P` it is made from) waiting for their instant, not yet handed to a
/// task.
pub(super) struct Crowds<P> {
    waiting: Vec<(Instant, P, AbortRegistration)>,
}

impl<P> Default for Crowds<P> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
        }
    }
}

impl<P: Send + 'static> Crowds<P> {
    /// Adds the execution made from `prepared`, to start at `at`; the handle aborts it alone.
    pub(super) fn add(&mut self, at: Instant, prepared: P) -> AbortHandle {
        let (handle, registration) = AbortHandle::new_pair();
        self.waiting.push((at, prepared, registration));
        handle
    }

    /// Spawns the waiting executions, [`PER_TASK`] of one instant to a task, in the current
    /// span; `start` makes each one's future when its task wakes. (A function, not a boxed
    /// closure: the groups hold their executions inline, with no allocation per execution
    /// beyond the group's own.)
    pub(super) fn launch<F>(&mut self, start: fn(P) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        // Stable: executions of one instant keep the engine's order.
        waiting.sort_by_key(|(at, ..)| *at);
        let mut rest = waiting.into_iter().peekable();
        while let Some((at, p, r)) = rest.next() {
            let mut group = vec![(p, r)];
            while group.len() < PER_TASK {
                match rest.next_if(|(next, ..)| *next == at) {
                    Some((_, p, r)) => group.push((p, r)),
                    None => break,
                }
            }
            tokio::spawn(drive(at, group, start).in_current_span());
        }
    }
}

/// Sleeps until `at`, then makes and runs `group` to its end.
async fn drive<P, F>(at: Instant, group: Vec<(P, AbortRegistration)>, start: fn(P) -> F)
where
    F: Future<Output = ()>,
{
    tokio::time::sleep_until(at).await;
    let mut runs: FuturesUnordered<_> = group
        .into_iter()
        .map(|(p, r)| Abortable::new(start(p), r))
        .collect();
    while runs.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn runs_start_at_their_instant_in_groups_and_abort_one_by_one() {
        let t0 = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        type Seen = Arc<Mutex<Vec<(usize, Duration)>>>;
        async fn start((i, t0, seen): (usize, Instant, Seen)) {
            seen.lock().unwrap().push((i, Instant::now() - t0));
            // A run that waits does not hold up the others of its group.
            if i == 0 {
                std::future::pending::<()>().await;
            }
        }
        let mut crowds = Crowds::default();
        let mut handles = Vec::new();
        let n = PER_TASK * 2 + 3;
        for i in 0..n {
            let at = t0 + Duration::from_millis(if i % 2 == 0 { 100 } else { 200 });
            handles.push(crowds.add(at, (i, t0, started.clone())));
        }
        handles[1].abort();
        crowds.launch(start);
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert!(
            started.lock().unwrap().is_empty(),
            "nothing before its instant"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = started.lock().unwrap().clone();
        assert_eq!(seen.len(), n - 1, "every run but the aborted one started");
        assert!(
            !seen.iter().any(|(i, _)| *i == 1),
            "the aborted one did not"
        );
        for (i, at) in seen {
            let want = if i % 2 == 0 { 100 } else { 200 };
            assert_eq!(at, Duration::from_millis(want), "run {i}");
        }
    }
}
