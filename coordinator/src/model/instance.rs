//! `instances/<id>`: what a live agent tells the leader about itself (lease-bound: the key
//! vanishes with the agent's lease).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shardjob_sharding::{Instance, InstanceId, validate_label, validate_name};

/// Largest instance weight.
pub const MAX_WEIGHT: u32 = 1000;

/// The value of `instances/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: InstanceId,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// Names of the handlers this instance can run; it is eligible only for their jobs.
    #[serde(default)]
    pub handlers: BTreeSet<String>,
    pub started_at: DateTime<Utc>,
    /// Set in the instance's last write, just before it deletes its key, by an agent shutting
    /// down gracefully: the leader moves its shards at once instead of parking them for
    /// `rebalance_delay` (which is for an instance whose lease expired and may come back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Where this instance takes liveness streams when it leads (`host:port`); absent when
    /// the agent runs without one (see `coordinator/src/liveness/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<String>,
}

fn one() -> u32 {
    1
}

impl InstanceInfo {
    /// Checks weight, labels and handler names; `key_id` is the id in the key, which must match.
    pub fn validate(&self, key_id: &str) -> Result<(), String> {
        if self.id.as_str() != key_id {
            return Err(format!(
                "id {:?} differs from the key's {key_id:?}",
                self.id.as_str()
            ));
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "weight {} is outside 1..={MAX_WEIGHT}",
                self.weight
            ));
        }
        for (k, v) in &self.labels {
            validate_label(k, v).map_err(|e| format!("labels: {e}"))?;
        }
        for h in &self.handlers {
            validate_name("handler name", h).map_err(|e| format!("handlers: {e}"))?;
        }
        Ok(())
    }

    /// The instance as the sharding strategies see it.
    pub fn to_instance(&self) -> Instance {
        Instance {
            id: self.id.clone(),
            weight: self.weight,
            labels: self.labels.clone(),
        }
    }
}
