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
//! bytes), not its future (~1.3 KB): a group makes and polls its executions one at a time when
//! it wakes ([`start_each`]), and most have ended before the next one is made. Each execution
//! stays abortable on its own
//! ([`AbortHandle`]): an abort takes effect at its next poll (before its first, if it comes
//! first), as a task's abort does.
//!
//! **Ends wait for the starts.** An execution's end is a message to the agent's loop, and the
//! loop woken by a group runs next on that thread (tokio's LIFO slot): the loop's work on one
//! group's ends came before the next group's starts, all through the burst. So a group holds
//! the ends of its executions until every group of its instant has started its own (a
//! [`Wave`]), or [`HOLD_CAP`] passed, and then reports them in one message; later ends go as
//! they come, a batch per round.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::{AbortHandle, AbortRegistration, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::hash::FastMap;

/// Executions one task drives: few enough that a slow one holds up little, many enough that
/// a burst of 10k is 40 wakeups, not 10k.
pub(super) const PER_TASK: usize = 256;

/// A turn that starts at least this many runs at once (not launched ahead, not resident)
/// starts them in groups too, at the turn's instant. Spawned as a task each, the fires an agent owed after
/// a busy stretch (the first second after a cold start of 10k jobs spread over the second)
/// were ~2000 tasks of ~1.1 KB at once: the peak of that run's heap. A few runs still get a
/// task each (a group would be more allocations for one run).
pub(super) const GROUPED_NOW: usize = 32;

/// The longest a group holds its ends for the other groups of its instant to start (a handler
/// that blocks a worker thread can keep a group from starting at all).
pub(super) const HOLD_CAP: Duration = Duration::from_millis(50);

/// How long before its instant a group wakes to wait the rest on the CPU. The timer wakes a
/// task up to 1–2 ms late (tokio rounds deadlines up to its 1 ms tick, and the parked thread
/// is woken by the OS after that); spinning the last stretch starts the first group at the
/// instant. bench-lateness aligned 10k, four interleaved runs each: p99 18.2–19.8 ms against
/// 19.3–23.4 without. Only the first group a thread runs spins (the others wake after the
/// instant), for at most this long, once per crowd.
pub(super) const SPIN: Duration = Duration::from_millis(2);

/// Executions (each the `P` it is made from) waiting for their instant, not yet handed to a
/// task: already in their groups, by instant. A group is filled as executions are added, so a
/// burst is held once, in its groups' vectors, and never copied into them at launch (an
/// aligned 10k held it three times at the launch: the doubling vector of all waiting
/// executions, its slack and the groups made from it; ~10 MB of a 30 MB peak heap).
pub(super) struct Crowds<P> {
    waiting: FastMap<Instant, Vec<Group<P>>>,
    /// [`SPIN`] in the agent (none in tests on a paused clock).
    spin: Duration,
}

/// Executions one task will drive, in the order they were added.
type Group<P> = Vec<(P, AbortRegistration)>;

impl<P> Crowds<P> {
    /// Groups that wait the last `spin` before their instant on the CPU.
    pub(super) fn new(spin: Duration) -> Self {
        Self {
            waiting: FastMap::default(),
            spin,
        }
    }
}

/// How a group reports the ends of its executions: on `tx`, several at once made into one
/// message by `batch`.
pub(super) struct Report<E> {
    pub tx: mpsc::Sender<E>,
    pub batch: fn(Vec<E>) -> E,
}

impl<P: Send + 'static> Crowds<P> {
    /// Adds the execution made from `prepared`, to start at `at`; the handle aborts it alone.
    pub(super) fn add(&mut self, at: Instant, prepared: P) -> AbortHandle {
        let (handle, registration) = AbortHandle::new_pair();
        let groups = self.waiting.entry(at).or_default();
        match groups.last_mut() {
            Some(g) if g.len() < PER_TASK => g.push((prepared, registration)),
            _ => groups.push(vec![(prepared, registration)]),
        }
        handle
    }

    /// Spawns the waiting executions, [`PER_TASK`] of one instant to a task, in the current
    /// span; `start` makes each one's future when its task wakes, and what the future returns
    /// is its end, reported with `report`. (A function, not a boxed closure: the groups hold
    /// their executions inline, with no allocation per execution beyond the group's own.)
    pub(super) fn launch<F, E>(&mut self, start: fn(P) -> F, report: &Report<E>)
    where
        F: Future<Output = E> + Send + 'static,
        E: Send + 'static,
    {
        if self.waiting.is_empty() {
            return;
        }
        let mut instants: Vec<_> = self.waiting.drain().collect();
        // Earliest first (spawned in that order); within an instant the groups keep the
        // engine's order.
        instants.sort_unstable_by_key(|(at, _)| *at);
        for (at, groups) in instants {
            let wave = Arc::new(Wave {
                unstarted: AtomicUsize::new(groups.len()),
                all_started: Notify::new(),
            });
            for group in groups {
                let report = Report {
                    tx: report.tx.clone(),
                    batch: report.batch,
                };
                let woken = wake_at(at, self.spin);
                tokio::spawn(drive(woken, group, start, report, wave.clone()).in_current_span());
            }
        }
        // The map's table is sized to the busiest launch's instants: a few, not a burst.
        self.waiting.shrink_to(8);
    }
}

/// The groups of one instant, and how many of them have not started their executions yet.
struct Wave {
    unstarted: AtomicUsize,
    all_started: Notify,
}

impl Wave {
    fn started(&self) {
        if self.unstarted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_started.notify_waiters();
        }
    }

    async fn all_started(&self) {
        loop {
            let notified = self.all_started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.unstarted.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Returns at `at`: sleeps until `spin` before it, then spins. The spin is bounded by real
/// time (a paused test clock does not move while it spins) and the sleep after it is a no-op
/// unless the clock is paused.
async fn wake_at(at: Instant, spin: Duration) {
    if Instant::now() >= at {
        return; // a group of runs started now, or a wake that came late
    }
    if !spin.is_zero() {
        tokio::time::sleep_until(at.checked_sub(spin).unwrap_or(at)).await;
        let left = at.saturating_duration_since(Instant::now());
        let until = std::time::Instant::now() + left;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    if Instant::now() < at {
        tokio::time::sleep_until(at).await;
    }
}

/// Waits for `woken` (the instant), then makes and runs `group` to its end, reporting the ends.
async fn drive<P, F, E>(
    woken: impl Future<Output = ()>,
    group: Group<P>,
    start: fn(P) -> F,
    report: Report<E>,
    wave: Arc<Wave>,
) where
    F: Future<Output = E>,
{
    woken.await;
    let mut ends = Vec::with_capacity(group.len());
    // Every run polled once: started (those not done are polled again when they wake).
    let mut runs = start_each(group, start, &mut ends);
    wave.started();
    let all_started = wave.all_started();
    tokio::pin!(all_started);
    let cap = tokio::time::sleep(HOLD_CAP);
    tokio::pin!(cap);
    loop {
        tokio::select! {
            biased;
            () = &mut all_started => break,
            () = &mut cap => break,
            Some(end) = runs.next(), if !runs.is_empty() => {
                if let Ok(e) = end {
                    ends.push(e);
                }
            }
        }
    }
    loop {
        if !ends.is_empty() {
            let batch = (report.batch)(std::mem::take(&mut ends));
            if report.tx.send(batch).await.is_err() {
                return; // the loop is gone; the runs go with this task
            }
        }
        match runs.next().await {
            None => return,
            Some(end) => {
                ends.extend(end.ok());
                take_ready(&mut runs, &mut ends);
            }
        }
    }
}

/// Makes and polls the runs of `group` one after another, keeping the ends of those that
/// finish at their first poll (most do); the others are returned, to be driven together. A
/// run's future is made only when its turn comes, in a box of its own, and freed at once if
/// it is done, so the next run reuses that memory: made all at once into a `FuturesUnordered`
/// (as until 2026-12-03), a group held 256 futures of ~1 KB each and paid the set's
/// bookkeeping (a task node, queueing, a waker) for each.
fn start_each<P, F, E>(
    group: Group<P>,
    start: fn(P) -> F,
    ends: &mut Vec<E>,
) -> FuturesUnordered<Pin<Box<Abortable<F>>>>
where
    F: Future<Output = E>,
{
    // A run not done at its first poll is polled again, with a waker of the set's own, when
    // the set is first polled (a new member counts as woken): this first poll's waker is
    // never needed.
    let mut cx = Context::from_waker(Waker::noop());
    let pending = FuturesUnordered::new();
    for (p, registration) in group {
        let mut run = Box::pin(Abortable::new(start(p), registration));
        match run.as_mut().poll(&mut cx) {
            // An aborted run has no end to report.
            Poll::Ready(end) => ends.extend(end.ok()),
            Poll::Pending => pending.push(run),
        }
    }
    pending
}

/// Polls `runs` until none is ready, keeping the ends of those that finished (an aborted run
/// has no end to report).
fn take_ready<R, E>(runs: &mut FuturesUnordered<R>, ends: &mut Vec<E>)
where
    R: Future<Output = Result<E, futures_util::future::Aborted>>,
{
    while let Some(Some(end)) = runs.next().now_or_never() {
        ends.extend(end.ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(usize, Duration)>>>;

    thread_local! {
        /// Runs started so far on this (the paused test runtime's only) thread.
        static STARTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Run `i` records when it started and ends at once with its number, but run 0 never ends.
    async fn start((i, t0, seen): (usize, Instant, Seen)) -> (Vec<usize>, usize) {
        seen.lock().unwrap().push((i, Instant::now() - t0));
        STARTED.with(|n| n.set(n.get() + 1));
        // A run that waits does not hold up the others of its group.
        if i == 0 {
            std::future::pending::<()>().await;
        }
        // Nor does one that is not done at its first poll get lost.
        if i == 2 {
            tokio::task::yield_now().await;
        }
        (vec![i], 0)
    }

    /// A group's ends as one message, with how many runs had started when it was made.
    fn batch(ends: Vec<(Vec<usize>, usize)>) -> (Vec<usize>, usize) {
        let runs = ends.into_iter().flat_map(|(runs, _)| runs).collect();
        (runs, STARTED.with(std::cell::Cell::get))
    }

    #[tokio::test(start_paused = true)]
    async fn runs_start_at_their_instant_in_groups_and_abort_one_by_one() {
        let t0 = Instant::now();
        let started: Seen = Arc::default();
        let (tx, mut rx) = mpsc::channel(64);
        let report = Report { tx, batch };
        let mut crowds = Crowds::new(Duration::ZERO);
        let mut handles = Vec::new();
        let n = PER_TASK * 2 + 3;
        let at = |i: usize| Duration::from_millis(if i % 2 == 0 { 100 } else { 200 });
        for i in 0..n {
            handles.push(crowds.add(t0 + at(i), (i, t0, started.clone())));
        }
        handles[1].abort();
        crowds.launch(start, &report);
        tokio::time::sleep(Duration::from_millis(99)).await;
        assert!(
            started.lock().unwrap().is_empty(),
            "nothing before its instant"
        );
        // The ends of one instant are made into messages only once all its runs started, a
        // message per group (two groups of each instant: 258 and 257 runs, one aborted).
        let (first, second) = (n / 2 + 1, n - 1);
        let mut ended = Vec::new();
        let mut messages = 0;
        while ended.len() < n - 2 {
            let (ends, started_then) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every run ends")
                .expect("the groups report");
            messages += 1;
            let instant = at(ends[0]);
            assert_eq!(Instant::now() - t0, instant, "reported at its instant");
            let want = if instant == at(0) { first } else { second };
            assert_eq!(
                started_then, want,
                "an end of {instant:?} before every start"
            );
            ended.extend(ends);
        }
        assert_eq!(messages, 4, "one message per group");
        ended.sort_unstable();
        let want: Vec<usize> = (2..n).collect();
        assert_eq!(
            ended, want,
            "every end once; not the pending run's, not the aborted one's"
        );
        let seen = started.lock().unwrap().clone();
        assert_eq!(seen.len(), n - 1, "every run but the aborted one started");
        assert!(
            !seen.iter().any(|(i, _)| *i == 1),
            "the aborted one did not"
        );
        for (i, t) in seen {
            assert_eq!(t, at(i), "run {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spinning_wake_keeps_to_the_instant_on_a_paused_clock() {
        let at = Instant::now() + Duration::from_millis(100);
        wake_at(at, SPIN).await;
        assert_eq!(Instant::now(), at);
    }

    #[tokio::test]
    async fn a_spinning_wake_is_never_early() {
        for ms in [0, 1, 3, 10] {
            let at = Instant::now() + Duration::from_millis(ms);
            wake_at(at, SPIN).await;
            assert!(Instant::now() >= at, "woke before an instant {ms} ms away");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_that_cannot_start_holds_the_others_ends_no_longer_than_the_cap() {
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::channel(8);
        let wave = Arc::new(Wave {
            unstarted: AtomicUsize::new(2),
            all_started: Notify::new(),
        });
        // Only one of the wave's two groups runs: the other never starts.
        let group = vec![((1, t0, Seen::default()), AbortHandle::new_pair().1)];
        let report = Report { tx, batch };
        tokio::spawn(drive(
            wake_at(t0, Duration::ZERO),
            group,
            start,
            report,
            wave,
        ));
        assert_eq!(rx.recv().await.map(|(ends, _)| ends), Some(vec![1]));
        assert_eq!(Instant::now() - t0, HOLD_CAP);
    }
}
