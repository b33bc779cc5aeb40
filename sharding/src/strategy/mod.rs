//! Sharding strategies: `assign(job, total, eligible, previous) -> Assignment`.
//!
//! Every strategy is a pure, deterministic function of its inputs: the order of `eligible` does
//! not matter (instances are sorted by id and deduplicated first), no clock, no randomness, no
//! process-seeded hashing. Callers filter `eligible` first (handler registered, not disabled,
//! selector matched; see [`crate::Selector::filter`]).
//!
//! | name | moves on membership change | weights | notes |
//! |---|---|---|---|
//! | `sticky` (default) | the minimum any balanced assignment allows | yes | floor/ceil of weighted share |
//! | `average` | many (blocks shift) | no | ElasticJob `AVG_ALLOCATION` |
//! | `odevity` | many | no | ElasticJob `ODEVITY` |
//! | `round_robin` | many | no | ElasticJob `ROUND_ROBIN` |
//! | `consistent_hash` | only the leaver's shards on a leave | yes (virtual nodes) | not exactly balanced |

mod average;
mod consistent_hash;
mod odevity;
mod round_robin;
pub(crate) mod sticky;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use average::Average;
pub use consistent_hash::ConsistentHash;
pub use odevity::Odevity;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;

use crate::{Assignment, Instance};

/// A sharding strategy: decides which eligible instance owns each shard of a job.
pub trait Strategy: fmt::Debug + Send + Sync {
    /// The strategy's name as written in job configs (`"sticky"`, `"average"`, ...).
    fn name(&self) -> &'static str;

    /// Assigns shards `0..total` of `job` over `eligible`. `previous` is the assignment in force
    /// (strategies that minimise movement start from it; it may have another total). With no
    /// eligible instance every shard is unassigned.
    fn assign(
        &self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        previous: Option<&Assignment>,
    ) -> Assignment;
}

/// The strategies by name, as stored in a job config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    #[default]
    Sticky,
    Average,
    Odevity,
    RoundRobin,
    ConsistentHash,
}

impl StrategyKind {
    /// Every strategy, default first.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::Sticky,
        StrategyKind::Average,
        StrategyKind::Odevity,
        StrategyKind::RoundRobin,
        StrategyKind::ConsistentHash,
    ];

    /// The strategy itself.
    pub fn strategy(self) -> &'static dyn Strategy {
        match self {
            StrategyKind::Sticky => &Sticky,
            StrategyKind::Average => &Average,
            StrategyKind::Odevity => &Odevity,
            StrategyKind::RoundRobin => &RoundRobin,
            StrategyKind::ConsistentHash => &ConsistentHash,
        }
    }

    /// Shorthand for `self.strategy().assign(..)`.
    pub fn assign(
        self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        previous: Option<&Assignment>,
    ) -> Assignment {
        self.strategy().assign(job, total, eligible, previous)
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy().name())
    }
}

/// An unknown strategy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?}; known: sticky, average, odevity, round_robin, consistent_hash")]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.strategy().name() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_json() {
        for k in StrategyKind::ALL {
            assert_eq!(k.to_string().parse::<StrategyKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{k}\""));
        }
        let err = "avg".parse::<StrategyKind>().unwrap_err().to_string();
        assert!(err.contains("\"avg\"") && err.contains("sticky"), "{err}");
    }
}
