//! The hash maps of the agent's hot paths, keyed by job name or execution id: every fire and
//! every end of an execution looks several of them up, and std's SipHash was ~10 % of an
//! aligned burst of 10k fires. foldhash is several times faster on short keys and still seeded
//! per process (keys come from etcd, written by operators, not from the network at large).

/// A `HashMap` with foldhash's per-process random seed.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash's per-process random seed.
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
