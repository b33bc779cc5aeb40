//! [`Inbox`]: the agent loop's two channels, control events and executions' ends.
//!
//! Everything the engine is told arrives as an [`Event`]. Ends of executions come in bursts
//! (ten thousand fires at one instant, or an overloaded agent's every fire) and were queued in
//! one channel with everything else: an agent firing 80k jobs a second kept that channel full,
//! every claim's answer waited behind tens of thousands of ends, the claimer's slots stayed
//! busy waiting to deliver them, and a cold start of 100k jobs stopped at 80k owned (claims
//! came back at one txn per five seconds). So the watches, the claimer, the releaser and the
//! leadership task send on `control`, executions on `ends`, and the loop takes control events
//! first, then ends, a bounded number of each per turn: neither kind can hold the other up.

use tokio::sync::mpsc;

use super::Event;

/// The receiving ends; see the module docs.
#[derive(Debug)]
pub(super) struct Inbox {
    control: mpsc::Receiver<Event>,
    ends: mpsc::Receiver<Event>,
}

/// The sending ends: `control` for everything but executions, `ends` for executions.
#[derive(Debug, Clone)]
pub(super) struct Senders {
    pub control: mpsc::Sender<Event>,
    pub ends: mpsc::Sender<Event>,
}

impl Inbox {
    /// Two channels of `capacity` events each.
    pub(super) fn new(capacity: usize) -> (Senders, Self) {
        let (control, control_rx) = mpsc::channel(capacity);
        let (ends, ends_rx) = mpsc::channel(capacity);
        (
            Senders { control, ends },
            Self {
                control: control_rx,
                ends: ends_rx,
            },
        )
    }

    /// The next event, a control event first when both wait; `None` once the control channel
    /// is closed and empty.
    pub(super) async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            ev = self.control.recv() => ev,
            Some(ev) = self.ends.recv() => Some(ev),
        }
    }

    /// Hands `absorb` what else is waiting: up to `max` control events, then up to `max` ends.
    pub(super) fn drain(&mut self, max: usize, mut absorb: impl FnMut(Event)) {
        for _ in 0..max {
            match self.control.try_recv() {
                Ok(ev) => absorb(ev),
                Err(_) => break,
            }
        }
        for _ in 0..max {
            match self.ends.try_recv() {
                Ok(ev) => absorb(ev),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Event;

    fn leader(n: usize) -> Event {
        Event::Leader(n % 2 == 0)
    }

    /// A tag for each event: `c` for control, `e` for an end (ends are sent as batches).
    fn tag(ev: &Event) -> char {
        match ev {
            Event::Batch(_) => 'e',
            _ => 'c',
        }
    }

    #[tokio::test]
    async fn control_events_never_wait_behind_a_burst_of_ends() {
        let (tx, mut inbox) = Inbox::new(1024);
        for _ in 0..600 {
            tx.ends.send(Event::Batch(Vec::new())).await.unwrap();
        }
        for i in 0..3 {
            tx.control.send(leader(i)).await.unwrap();
        }
        // The first event is a control event, though 600 ends were queued before it.
        let first = inbox.recv().await.expect("an event");
        assert_eq!(tag(&first), 'c');
        // A turn takes the other control events, then at most `max` ends.
        let mut turn = String::new();
        inbox.drain(256, |ev| turn.push(tag(&ev)));
        assert_eq!(turn, format!("cc{}", "e".repeat(256)));
        // Ends are not starved by a steady stream of control events either.
        tx.control.send(leader(3)).await.unwrap();
        let mut turn = String::new();
        let first = inbox.recv().await.expect("an event");
        turn.push(tag(&first));
        inbox.drain(256, |ev| turn.push(tag(&ev)));
        assert_eq!(turn, format!("c{}", "e".repeat(256)));
        // What is left, with nothing on the control channel.
        let mut left = String::new();
        inbox.drain(1000, |ev| left.push(tag(&ev)));
        assert_eq!(left, "e".repeat(600 - 512));
    }

    #[tokio::test]
    async fn closed_once_the_control_senders_are_gone() {
        // The agent's core keeps a control sender for as long as it runs: a closed control
        // channel means the loop is over, whatever ends are still queued.
        let (tx, mut inbox) = Inbox::new(4);
        tx.ends.send(Event::Batch(Vec::new())).await.unwrap();
        let Senders {
            control,
            ends: _ends,
        } = tx;
        drop(control);
        assert!(inbox.recv().await.is_none());
    }
}
