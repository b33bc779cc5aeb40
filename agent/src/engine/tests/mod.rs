//! Table and property tests of the engine: each row is `given state + input at now →
//! commands`, with no etcd, no tokio and no clock.

mod compact;
mod harness;
mod props;
mod resident;
mod rows;
