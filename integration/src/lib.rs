//! Tests and benchmarks of shardjob against real etcd and PostgreSQL processes.
//!
//! Where to start: [`EtcdCluster`] starts `etcd` (from `ETCD_BIN` or `PATH`) on free loopback
//! ports with a temporary data dir, waits until it is healthy, and kills every process it
//! started when dropped (also while a test panics); [`postgres::PgServer`] does the same for
//! PostgreSQL. Tests live in `tests/`, benchmarks are the
//! `bench-*` binaries in `src/bin/`.

pub mod agents;
pub mod benchkit;
pub mod campaign;
pub mod certs;
pub mod checker;
mod cluster;
pub mod fixtures;
mod health;
pub mod lateness;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod revoked;
pub use ports::free_ports;
pub mod rng;
pub mod taskbench;
pub mod taskcheck;
pub mod taskkit;

pub use cluster::{ClusterOptions, EtcdCluster, HarnessError, TlsFiles};
