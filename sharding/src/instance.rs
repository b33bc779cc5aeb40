//! What a strategy knows about one eligible instance: its id, weight and labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::InstanceId;

/// One instance as the strategies see it.
///
/// `weight` scales the instance's fair share for `sticky` and `consistent_hash` (an instance of
/// weight 2 gets twice the shards of one of weight 1). The ElasticJob-compatible strategies
/// ignore it, as ElasticJob does. A weight of 0 counts as 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl Instance {
    /// An instance of weight 1 with no labels.
    pub fn new(id: InstanceId) -> Self {
        Self {
            id,
            weight: 1,
            labels: BTreeMap::new(),
        }
    }

    /// The same instance with `weight`.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same instance with one more label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The weight used in share computations (never 0).
    pub fn effective_weight(&self) -> u64 {
        u64::from(self.weight.max(1))
    }
}

/// Sorts by id and drops later duplicates of an id, so strategies never depend on input order.
pub(crate) fn canonical(eligible: &[Instance]) -> Vec<&Instance> {
    let mut v: Vec<&Instance> = eligible.iter().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v.dedup_by(|a, b| a.id == b.id);
    v
}
