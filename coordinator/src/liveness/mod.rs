//! The liveness stream: fast failover after a crash, without waiting for the lease to expire.
//!
//! Each agent keeps one gRPC stream open to the namespace's leader (`proto/liveness.proto`).
//! A crashed process's kernel closes its sockets at once, so the leader sees the stream end
//! within a round trip. A stream that ends without a `Goodbye` makes the leader revoke that
//! agent's lease, which deletes its instance and owner keys in one step; the rebalancer sees
//! the departure and the usual claims follow.
//!
//! Revoking a live agent's lease must never let two owners run a shard. The argument, in full
//! in `docs/ARCHITECTURE.md` ("Liveness stream"), rests on two rules:
//! - **The leader waits** `guard + slack` after the last message it read on the broken stream
//!   before it acts, and the agent stops acting `guard` after the last message the leader
//!   acknowledged (or its `Hello`) — [`guard`], pure and table-tested.
//! - **etcd decides the race** between an agent that lives and a leader that thinks it does
//!   not: both put-if-absent one key per stream, "alive" or "dead" ([`verdict`]); the leader's
//!   put is fenced by its leader key. The agent settles as soon as its stream breaks or goes
//!   quiet; if it wins, the leader cannot revoke through that stream and the agent carries on
//!   under its lease alone; if it loses, it self-fences.
//!
//! Where to start: [`server`] (the leader's side: accept, acknowledge, condemn, revoke),
//! [`client`] (the agent's side: find the leader, attach, ping, settle), [`guard`].

pub mod client;
pub mod guard;
pub mod server;
pub mod verdict;

use std::net::SocketAddr;
use std::time::Duration;

/// The generated gRPC code.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("shardjob.liveness.v1");
}

/// How the stream is kept. The defaults give a crash gap of about `guard + slack` plus one
/// rebalance (measured in docs/BENCHMARKS.md, `bench-failover` `mode=stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessOptions {
    /// Where this agent takes streams when it leads.
    pub listen: SocketAddr,
    /// What it publishes for others to connect to (`host:port`); the bound address when
    /// `None`. Set it when the listen address is not what peers reach (`0.0.0.0`, NAT, a
    /// proxy).
    pub advertise: Option<String>,
    /// How often the agent pings the leader.
    pub interval: Duration,
    /// How long after each acknowledged ping the agent keeps acting (the leader learns it from
    /// the `Hello`, so agents and leader need not be configured alike).
    pub guard: Duration,
    /// What the leader adds to the agent's guard before it revokes: the time the agent needs to
    /// stop what runs once its guard has passed.
    pub slack: Duration,
}

impl LivenessOptions {
    /// Defaults for a listen address: ping every 25 ms, guard 100 ms, slack 50 ms.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            advertise: None,
            interval: Duration::from_millis(25),
            guard: Duration::from_millis(100),
            slack: Duration::from_millis(50),
        }
    }

    /// Publishes `addr` (`host:port`) for the others instead of the bound address.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// Checks the timings make sense together.
    pub fn validate(&self) -> Result<(), LivenessError> {
        let bad = |why: &str| Err(LivenessError::Options(why.to_owned()));
        if self.interval.is_zero() || self.guard.is_zero() {
            return bad("interval and guard must be positive");
        }
        if self.guard < self.interval * 2 {
            return bad("guard must be at least twice the ping interval");
        }
        if self.guard > MAX_GUARD {
            return bad("guard must be at most 60 s");
        }
        Ok(())
    }
}

/// The longest guard a leader accepts from an agent.
pub const MAX_GUARD: Duration = Duration::from_secs(60);

/// What went wrong with the liveness stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LivenessError {
    #[error("liveness options: {0}")]
    Options(String),
    #[error("binding the liveness listener on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: String },
}
