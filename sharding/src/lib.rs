//! Pure shard assignment for shardjob: which instance should own which shard of a job.
//!
//! No I/O, no clock, no async: everything here is a function of its arguments, so the leader's
//! decisions can be tested with tables and property tests.
//!
//! Where to start:
//! - [`Strategy`] and [`StrategyKind`]: `assign(job, total, eligible, previous) -> Assignment`;
//!   the strategies live in [`strategy`], each with a worked example in its docs.
//! - [`Assignment`] (owner per shard) and [`Moves`] (what changed between two).
//! - [`Instance`], [`InstanceId`], [`Selector`]: who may own shards.
//! - [`min_moves`]: the least movement any balanced assignment allows.

mod assignment;
mod bound;
pub mod even;
pub mod fair;
pub mod hash;
mod instance;
mod moves;
mod name;
mod selector;
pub mod strategy;

pub use assignment::Assignment;
pub use bound::min_moves;
pub use instance::Instance;
pub use moves::{Move, Moves};
pub use name::{InstanceId, MAX_NAME_LEN, NameError, validate_name};
pub use selector::{Selector, SelectorError, validate_label};
pub use strategy::{Strategy, StrategyKind, UnknownStrategy};
