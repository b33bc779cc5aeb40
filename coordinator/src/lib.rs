//! shardjob's coordination core: the etcd model, the lease session, leader election and the
//! rebalancer. Built out in the "Coordination core" issue; for now only the crate exists.

pub use shardjob_sharding as sharding;
