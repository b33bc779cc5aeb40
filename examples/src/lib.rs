//! Runnable shardjob examples (quickstart, prometheus, script job) arrive with the agent runtime;
//! for now only the crate exists.

pub use shardjob_agent as agent;
