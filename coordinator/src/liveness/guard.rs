//! The agent's side of the argument, as pure arithmetic: until when may this agent act on its
//! lease, given what it sent on its stream and what the leader acknowledged?
//!
//! The leader ends a lease only after a stream broke, and only once `guard` (plus its own slack)
//! has passed since the last message it *read* on that stream. A message is read after it was
//! sent, so once the agent has sent the `Hello` of stream `n` at `s0`, and the leader has
//! acknowledged a `Ping` sent at `s`, the leader cannot end the lease through stream `n` before
//! `max(s0, s) + guard`. That instant is the [`Guard::until`] the engine treats like the end of
//! the lease's proof: at it, executions stop.
//!
//! Before it gets there, the agent asks etcd to record it alive for stream `n` (a put-if-absent
//! of `liveness/<id>/<lease>/<n>`, [`super::verdict`]); the leader's revoke is the same
//! put-if-absent with "dead" first. Whoever is first wins: after "alive" the leader cannot end
//! this lease through stream `n` any more, so the agent is [`Phase::Free`] (bound by its lease
//! alone) until it opens stream `n + 1`; after "dead" the lease is the leader's to end and the
//! agent self-fences.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where the agent's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No stream the leader could end the lease through: not attached yet, or the last one
    /// was settled "alive" in etcd. Only the lease binds.
    Free,
    /// Attached as stream `epoch`: protected until `until`.
    Attached { epoch: u64, until: Instant },
    /// Stream `epoch` broke or went quiet: asking etcd for the verdict; still protected until
    /// `until`, and not after it.
    Settling { epoch: u64, until: Instant },
    /// The leader's verdict came first: the lease is (being) revoked.
    Condemned,
}

/// What binds the agent's actions, as far as the stream is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Only the lease.
    Lease,
    /// Nothing may be done under the lease at or after this instant (unless it moves on).
    Until(Instant),
    /// Nothing at all: the leader is ending the lease.
    Condemned,
}

/// The agent's stream state; see the module docs. Time is passed in.
#[derive(Debug, Clone)]
pub struct Guard {
    guard: Duration,
    phase: Phase,
    /// Pings sent and not acknowledged yet: (seq, sent at), oldest first.
    sent: VecDeque<(u64, Instant)>,
}

/// At most this many unacknowledged pings are remembered (a leader that stopped answering is
/// settled long before).
const MAX_UNACKED: usize = 64;

impl Guard {
    /// A guard that protects for `guard` after each message the leader read.
    pub fn new(guard: Duration) -> Self {
        Self {
            guard,
            phase: Phase::Free,
            sent: VecDeque::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Until when the agent may act, as far as the stream is concerned.
    pub fn bound(&self) -> Bound {
        match self.phase {
            Phase::Free => Bound::Lease,
            Phase::Attached { until, .. } | Phase::Settling { until, .. } => Bound::Until(until),
            Phase::Condemned => Bound::Condemned,
        }
    }

    /// The `Hello` of stream `epoch` goes out at `at` (read it before handing it to the
    /// transport: an earlier instant is the safe side).
    pub fn hello(&mut self, epoch: u64, at: Instant) {
        if self.phase == Phase::Condemned {
            return;
        }
        self.sent.clear();
        self.phase = Phase::Attached {
            epoch,
            until: at + self.guard,
        };
    }

    /// Ping `seq` goes out at `at`.
    pub fn ping(&mut self, seq: u64, at: Instant) {
        if matches!(self.phase, Phase::Attached { .. }) {
            if self.sent.len() == MAX_UNACKED {
                self.sent.pop_front();
            }
            self.sent.push_back((seq, at));
        }
    }

    /// The leader acknowledged ping `seq`: it read it, so it waits `guard` from then at least.
    pub fn ack(&mut self, seq: u64) {
        let Phase::Attached { epoch, until } = self.phase else {
            return;
        };
        let Some(pos) = self.sent.iter().position(|(s, _)| *s == seq) else {
            return; // unknown or already superseded
        };
        let sent = self.sent[pos].1;
        self.sent.drain(..=pos);
        self.phase = Phase::Attached {
            epoch,
            until: until.max(sent + self.guard),
        };
    }

    /// When to stop waiting for acknowledgements and settle in etcd instead: halfway through
    /// the guard, so a verdict has the other half to come back before anything must stop.
    pub fn settle_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Attached { until, .. } => Some(until - self.guard / 2),
            _ => None,
        }
    }

    /// The stream broke (or [`Guard::settle_at`] passed): ask etcd. Returns the stream to
    /// settle, if any.
    pub fn broke(&mut self) -> Option<u64> {
        match self.phase {
            Phase::Attached { epoch, until } => {
                self.phase = Phase::Settling { epoch, until };
                Some(epoch)
            }
            Phase::Settling { epoch, .. } => Some(epoch),
            Phase::Free | Phase::Condemned => None,
        }
    }

    /// etcd recorded the verdict on stream `epoch`: `alive` (ours came first) or not.
    pub fn settled(&mut self, epoch: u64, alive: bool) {
        let Phase::Settling { epoch: e, .. } = self.phase else {
            return;
        };
        if e != epoch {
            return;
        }
        self.sent.clear();
        self.phase = if alive { Phase::Free } else { Phase::Condemned };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_millis(100);

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn the_hello_protects_before_any_ack_and_acks_extend_from_their_send_time() {
        let t0 = Instant::now();
        let mut g = Guard::new(G);
        assert_eq!(g.bound(), Bound::Lease, "no stream: only the lease binds");
        g.hello(0, t0);
        assert_eq!(g.bound(), Bound::Until(ms(t0, 100)));
        g.ping(1, ms(t0, 25));
        g.ping(2, ms(t0, 50));
        // Acked late: the protection counts from the send, not from the answer.
        g.ack(2);
        assert_eq!(g.bound(), Bound::Until(ms(t0, 150)));
        // An ack of an older ping (superseded) changes nothing.
        g.ack(1);
        assert_eq!(g.bound(), Bound::Until(ms(t0, 150)));
        assert_eq!(g.settle_at(), Some(ms(t0, 100)));
    }

    #[test]
    fn rows_of_settling() {
        // (verdict alive?, phase after, until after)
        let t0 = Instant::now();
        for (alive, want) in [(true, Phase::Free), (false, Phase::Condemned)] {
            let mut g = Guard::new(G);
            g.hello(4, t0);
            assert_eq!(g.broke(), Some(4));
            // Still protected while etcd is asked, and not longer.
            assert_eq!(g.bound(), Bound::Until(ms(t0, 100)));
            // Acks after the break do not extend anything.
            g.ping(1, ms(t0, 10));
            g.ack(1);
            assert_eq!(g.bound(), Bound::Until(ms(t0, 100)));
            // A verdict on another stream is not this one's.
            g.settled(3, alive);
            assert!(matches!(g.phase(), Phase::Settling { epoch: 4, .. }));
            g.settled(4, alive);
            assert_eq!(g.phase(), want);
            assert_eq!(g.broke(), None, "nothing left to settle");
        }
    }

    #[test]
    fn condemned_stays_condemned_and_binds_at_once() {
        let t0 = Instant::now();
        let mut g = Guard::new(G);
        g.hello(0, t0);
        g.broke();
        g.settled(0, false);
        g.hello(1, ms(t0, 1));
        assert_eq!(g.phase(), Phase::Condemned);
        assert_eq!(g.bound(), Bound::Condemned);
    }

    #[test]
    fn unacked_pings_are_bounded() {
        let t0 = Instant::now();
        let mut g = Guard::new(G);
        g.hello(0, t0);
        for seq in 0..1000 {
            g.ping(seq, ms(t0, seq));
        }
        assert_eq!(g.sent.len(), MAX_UNACKED);
        g.ack(999);
        assert_eq!(g.bound(), Bound::Until(ms(t0, 1099)));
        assert!(g.sent.is_empty());
    }
}
