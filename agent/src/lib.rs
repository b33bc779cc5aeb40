//! The shardjob agent, the crate services embed. Built out in the "Agent runtime" issue; for now
//! only the crate exists.

pub use shardjob_coordinator as coordinator;
