//! Hooks for shardjob's own integration tests (not a stable API): the ownership txns are
//! private to the runtime, but their fallback paths are only reachable on purpose from outside.

use std::time::Duration;

use etcd_client::Client;
use shardjob_coordinator::keys::Keys;
use shardjob_sharding::InstanceId;

use crate::engine::{ClaimResult, LeaseId, Token};
use crate::runtime::txn::{ClaimPart, Claimant, ReleaseItem, claim};

/// Shards the agent packs into one claim txn.
pub const CLAIM_CHUNK: usize = crate::runtime::txn::CLAIM_CHUNK;

/// How claiming one shard went, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Won with this fencing token.
    Won(i64),
    /// The owner key exists: the instance its value names, and its create revision.
    Held(String, i64),
    /// The assignment changed since it was read.
    Stale,
    Failed(String),
}

/// Runs the batched claim txn for `parts` (`(job, assignment_revision, generation, shards)`)
/// and returns each part's results in order.
pub async fn claim_parts(
    client: &Client,
    keys: &Keys,
    instance: &InstanceId,
    lease: i64,
    parts: &[(&str, i64, u64, Vec<u32>)],
) -> Vec<Vec<(u32, Claimed)>> {
    let parts: Vec<ClaimPart> = parts
        .iter()
        .map(|(job, rev, generation, shards)| ClaimPart {
            job: (*job).to_owned(),
            assignment_revision: *rev,
            generation: *generation,
            shards: shards.clone(),
        })
        .collect();
    let Some(lease) = LeaseId::new(lease) else {
        return parts
            .iter()
            .map(|p| {
                p.shards
                    .iter()
                    .map(|s| (*s, Claimed::Failed("lease 0 is no lease".into())))
                    .collect()
            })
            .collect();
    };
    let who = Claimant {
        keys,
        instance,
        lease,
        timeout: Duration::from_secs(5),
    };
    claim(client, &who, &parts)
        .await
        .0
        .into_iter()
        .map(|results| {
            results
                .into_iter()
                .map(|(s, c)| {
                    let c = match c {
                        ClaimResult::Won { token, .. } => Claimed::Won(token.0),
                        ClaimResult::Held(h) => Claimed::Held(h.instance.to_string(), h.token.0),
                        ClaimResult::Stale => Claimed::Stale,
                        ClaimResult::Failed(e) => Claimed::Failed(e.0),
                    };
                    (s, c)
                })
                .collect()
        })
        .collect()
}

/// Runs the batched release txn for `items` (`(job, shard, token)`, no `last_fire`) and returns
/// each item's result: `Ok(true)` released, `Ok(false)` no longer held with that token.
pub async fn release_shards(
    client: &Client,
    keys: &Keys,
    items: &[(&str, u32, i64)],
) -> Vec<Result<bool, String>> {
    // String here: the hook's callers compare texts.
    let items: Vec<ReleaseItem> = items
        .iter()
        .map(|(job, shard, token)| ReleaseItem {
            job: (*job).to_owned(),
            shard: *shard,
            token: Token(*token),
            last_fire: None,
        })
        .collect();
    crate::runtime::txn::release_many(client, keys, &items, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect()
}
