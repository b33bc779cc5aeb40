//! shardjob's coordination core: everything that talks to etcd on behalf of a namespace.
//!
//! Where to start:
//! - [`keys`]: the key layout (one module builds every key).
//! - [`etcd_error`]: one error type for a failed etcd request, with `is_transient()`.
//! - [`model`]: the JSON value of every key, with validation.
//! - [`session`]: the lease an instance lives by, kept alive, with a proof of liveness
//!   (`valid_until`) and a token that fires when the lease is lost.
//! - [`election`]: leader election over etcd's Election API, and the fence every leader write
//!   carries.
//! - [`rebalance`]: what the leader runs: a pure planner (`plan`), a pure timer of passes
//!   (`Rebalancer`) and the watch/write loop.
//! - [`watch`]: a list-then-watch helper that re-lists after a compaction.
//! - [`refill`]: keeps the per-job B-trees' nodes full as they grow.
//! - [`view`]: a read-only snapshot of a namespace for the CLI and tests.
//! - [`liveness`]: the stream each agent keeps to the leader, so a crash moves its shards
//!   within a fraction of a second instead of a lease TTL.

pub mod connect;
pub mod election;
pub mod etcd_error;
pub mod keys;
pub mod kv;
pub mod liveness;
pub mod model;
pub mod ops;
pub mod rebalance;
pub mod refill;
pub mod session;
pub mod view;
pub mod watch;

pub use shardjob_sharding as sharding;
