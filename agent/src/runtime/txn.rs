//! The two ownership writes, as etcd txns.
//!
//! Claim (many shards at once, up to [`CLAIM_CHUNK`] per txn):
//! `mod_revision(assignments/j) == seen ∧ ∀s create_revision(owners/j/s) == 0` →
//! `∀s: get cursors/j/s; get running/j/s; put owners/j/s (lease); put cursors/j/s
//! {"released":false}`.
//! The txn's revision is the new keys' create revision: the fencing token. If the batch fails,
//! each shard is tried alone (one may be held by someone else while the rest are free).
//!
//! Release: `create_revision(owners/j/s) == token` → `delete owners/j/s; put cursors/j/s
//! {"last_fire":..,"released":true}`.
//!
//! Running marker (failover jobs): before the handler runs, `create_revision(owners/j/s) ==
//! token` → `put running/j/s`; after, `mod_revision(running/j/s) == that put's revision` →
//! `delete running/j/s`. A stale owner can neither start (its token no longer matches) nor
//! delete a successor's marker (its revision no longer matches).

use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{Cursor, Owner, Running};
use shardjob_sharding::InstanceId;
use tokio::time::timeout;

/// Shards per claim txn: 4 ops each within etcd's default 128 ops per txn.
pub(crate) const CLAIM_CHUNK: usize = 32;
const OPS_PER_SHARD: usize = 4;

/// How long one ownership write may take: at most 5 s, and never more than the lease TTL, so a
/// request stuck on a broken connection is retried within one lease rather than after several.
pub(crate) fn txn_timeout(ttl: Duration) -> Duration {
    ttl.min(Duration::from_secs(5))
}

/// How claiming one shard went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShardClaim {
    /// Mine, with this token; the cursor as it was before the claim, and the running marker
    /// a previous owner left (it died mid-execution).
    Won {
        token: i64,
        cursor: Option<Cursor>,
        running: Option<Running>,
    },
    /// Someone holds it, or the assignment changed: wait for the next event.
    Lost,
    /// etcd did not answer: try again later.
    Failed(String),
}

/// The claim of `shards` of `job`; see the module docs.
pub(crate) struct ClaimRequest<'a> {
    pub keys: &'a Keys,
    pub job: &'a str,
    pub assignment_revision: i64,
    pub generation: u64,
    pub instance: &'a InstanceId,
    pub lease: i64,
    pub timeout: Duration,
}

pub(crate) async fn claim(
    client: &Client,
    req: &ClaimRequest<'_>,
    shards: &[u32],
) -> Vec<(u32, ShardClaim)> {
    let mut out = Vec::with_capacity(shards.len());
    for chunk in shards.chunks(CLAIM_CHUNK) {
        match claim_batch(client, req, chunk).await {
            Ok(Some(won)) => out.extend(won),
            Ok(None) if chunk.len() > 1 => {
                for &s in chunk {
                    match claim_batch(client, req, &[s]).await {
                        Ok(Some(won)) => out.extend(won),
                        Ok(None) => out.push((s, ShardClaim::Lost)),
                        Err(e) => out.push((s, ShardClaim::Failed(e))),
                    }
                }
            }
            Ok(None) => out.extend(chunk.iter().map(|s| (*s, ShardClaim::Lost))),
            Err(e) => out.extend(chunk.iter().map(|s| (*s, ShardClaim::Failed(e.clone())))),
        }
    }
    out
}

/// `Ok(None)`: a compare failed.
async fn claim_batch(
    client: &Client,
    req: &ClaimRequest<'_>,
    shards: &[u32],
) -> Result<Option<Vec<(u32, ShardClaim)>>, String> {
    let owner = serde_json::to_vec(&Owner {
        instance: req.instance.clone(),
        generation: req.generation,
    })
    .map_err(|e| e.to_string())?;
    let claimed = serde_json::to_vec(&Cursor::default()).map_err(|e| e.to_string())?;
    let mut compares = vec![Compare::mod_revision(
        req.keys.assignment(req.job),
        CompareOp::Equal,
        req.assignment_revision,
    )];
    let mut ops = Vec::with_capacity(shards.len() * OPS_PER_SHARD);
    for &s in shards {
        let key = req.keys.owner(req.job, s);
        compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
        ops.push(TxnOp::get(req.keys.cursor(req.job, s), None));
        ops.push(TxnOp::get(req.keys.running(req.job, s), None));
        ops.push(TxnOp::put(
            key,
            owner.clone(),
            Some(PutOptions::new().with_lease(req.lease)),
        ));
        ops.push(TxnOp::put(
            req.keys.cursor(req.job, s),
            claimed.clone(),
            None,
        ));
    }
    let txn = Txn::new().when(compares).and_then(ops);
    let resp = timeout(req.timeout, client.clone().txn(txn))
        .await
        .map_err(|_| format!("claim: no answer within {:?}", req.timeout))?
        .map_err(|e| format!("claim: {e}"))?;
    if !resp.succeeded() {
        return Ok(None);
    }
    let token = resp.header().map_or(0, |h| h.revision());
    let responses = resp.op_responses();
    let won = shards
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let cursor = got(&responses, OPS_PER_SHARD * i);
            let running = got(&responses, OPS_PER_SHARD * i + 1);
            (
                s,
                ShardClaim::Won {
                    token,
                    cursor,
                    running,
                },
            )
        })
        .collect();
    Ok(Some(won))
}

/// The value of the `index`-th response, if it is a get that found JSON of `T`.
fn got<T: serde::de::DeserializeOwned>(responses: &[TxnOpResponse], index: usize) -> Option<T> {
    match responses.get(index) {
        Some(TxnOpResponse::Get(get)) => get
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()),
        _ => None,
    }
}

/// Writes the running marker of `shard` if `token` still owns it; returns the marker's
/// revision, or `None` when the shard is no longer ours.
pub(crate) async fn put_marker(
    client: &Client,
    keys: &Keys,
    job: &str,
    shard: u32,
    marker: &Running,
    limit: Duration,
) -> Result<Option<i64>, String> {
    let value = serde_json::to_vec(marker).map_err(|e| e.to_string())?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            keys.owner(job, shard),
            CompareOp::Equal,
            marker.token,
        )])
        .and_then(vec![TxnOp::put(keys.running(job, shard), value, None)]);
    let resp = timeout(limit, client.clone().txn(txn))
        .await
        .map_err(|_| format!("marker: no answer within {limit:?}"))?
        .map_err(|e| format!("marker: {e}"))?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// Deletes the running marker written at `revision` (not a successor's).
pub(crate) async fn delete_marker(
    client: &Client,
    keys: &Keys,
    job: &str,
    shard: u32,
    revision: i64,
    limit: Duration,
) -> Result<(), String> {
    let key = keys.running(job, shard);
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then(vec![TxnOp::delete(key, None)]);
    timeout(limit, client.clone().txn(txn))
        .await
        .map_err(|_| format!("marker delete: no answer within {limit:?}"))?
        .map_err(|e| format!("marker delete: {e}"))?;
    Ok(())
}

/// Releases `shard` of `job` held with `token`, recording `last_fire`. `Ok(false)`: the key was
/// no longer ours (its lease expired first).
pub(crate) async fn release(
    client: &Client,
    keys: &Keys,
    job: &str,
    shard: u32,
    token: i64,
    last_fire: Option<DateTime<Utc>>,
    limit: Duration,
) -> Result<bool, String> {
    let cursor = serde_json::to_vec(&Cursor {
        last_fire,
        released: true,
    })
    .map_err(|e| e.to_string())?;
    let key = keys.owner(job, shard);
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            token,
        )])
        .and_then(vec![
            TxnOp::delete(key, None),
            TxnOp::put(keys.cursor(job, shard), cursor, None),
        ]);
    let resp = timeout(limit, client.clone().txn(txn))
        .await
        .map_err(|_| format!("release: no answer within {limit:?}"))?
        .map_err(|e| format!("release: {e}"))?;
    Ok(resp.succeeded())
}
