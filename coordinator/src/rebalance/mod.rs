//! The rebalancer the elected leader runs.
//!
//! Start at [`plan`] (the pure decision: which assignments to write, given a [`World`]), then
//! [`Rebalancer`] (pure too: when to plan — debounce, join settle, cold start, parked
//! departures, retries — with `on_event` / `deadline` / `poll(now)`), then [`run_leader`] (the
//! list/watch/write loop around them). The world is fed by watch events and never does I/O;
//! the runner never decides anything.

mod plan;
mod planned;
mod rebalancer;
mod runner;
mod stored;
mod world;

pub use plan::{Plan, plan};
pub use planned::PlannedJob;
pub use rebalancer::{Observed, Pass, Rebalancer};
pub use runner::{
    MAX_TXN_BYTES, MAX_TXN_OPS, RebalanceError, RebalanceExit, RebalanceOptions, RebalanceStats,
    run_leader,
};
pub use stored::{Loaded, PageKey, PageWrite, Stored};
pub use world::{Departed, Dirty, World};
