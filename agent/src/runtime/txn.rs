//! The ownership writes, as etcd txns.
//!
//! Claim: see [`claim`] (one or several jobs' shards in one txn, and what a refusal reads).
//!
//! Release: `create_revision(owners/j/s) == token` → `delete owners/j/s; put cursors/j/s
//! {"last_fire":..,"released":true}`; up to [`RELEASE_CHUNK`] shards per txn (all compares
//! together), each alone if the batch fails.
//!
//! Running marker (failover jobs): before the handler runs, `create_revision(owners/j/s) ==
//! token` → `put running/j/s`; after, `mod_revision(running/j/s) == that put's revision` →
//! `delete running/j/s`. A stale owner can neither start (its token no longer matches) nor
//! delete a successor's marker (its revision no longer matches).

mod claim;

pub(crate) use claim::{CLAIM_CHUNK, ClaimPart, Claimant, claim};

use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{Cursor, Running};

use shardjob_coordinator::etcd_error::{EtcdError, bounded};

use crate::engine::Token;

/// An ownership write that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TxnError {
    #[error("encoding the value of {what}: {cause}")]
    Encode { what: &'static str, cause: String },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, TxnError> {
    serde_json::to_vec(value).map_err(|e| TxnError::Encode {
        what,
        cause: e.to_string(),
    })
}

/// What every ownership write of one agent shares: the client, the key layout and the limit of
/// one write. One `Arc` of it serves the claimer, the releaser and the running markers.
pub(crate) struct Writes {
    pub client: Client,
    pub keys: Keys,
    /// Limit of one write ([`txn_timeout`] of the TTL).
    pub timeout: Duration,
}

/// How long one ownership write may take: at most 5 s, and never more than the lease TTL, so a
/// request stuck on a broken connection is retried within one lease rather than after several.
pub(crate) fn txn_timeout(ttl: Duration) -> Duration {
    ttl.min(Duration::from_secs(5))
}

/// The value of the `index`-th response, if it is a get that found JSON of `T`. A value that
/// does not decode (someone wrote garbage with etcdctl) is logged with its key, counted in
/// `shardjob_garbage_values_total{kind}`, and read as absent: the safe default, since an absent
/// cursor is an untrusted one (no catch-up: nothing the previous owner ran can run twice) and
/// an absent marker re-runs nothing.
fn got<T: serde::de::DeserializeOwned>(
    responses: &[TxnOpResponse],
    index: usize,
    kind: &'static str,
) -> Option<T> {
    let Some(TxnOpResponse::Get(get)) = responses.get(index) else {
        return None;
    };
    let kv = get.kvs().first()?;
    match serde_json::from_slice(kv.value()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), kind, error = %e,
                "a value read at a claim does not decode; read as absent");
            metrics::counter!("shardjob_garbage_values_total", "kind" => kind).increment(1);
            None
        }
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
) -> Result<Option<i64>, TxnError> {
    let value = encode("a running marker", marker)?;
    let txn = Txn::new()
        .when(vec![owner_compare(keys, job, shard, Token(marker.token))])
        .and_then(vec![TxnOp::put(keys.running(job, shard), value, None)]);
    let resp = bounded("running marker", limit, client.clone().txn(txn)).await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// Writes the done record of a one-shot's shard if `token` still owns it; `Ok(false)` when it
/// no longer does.
pub(crate) async fn put_done(
    client: &Client,
    keys: &Keys,
    job: &str,
    shard: u32,
    token: Token,
    record: &shardjob_coordinator::model::Done,
    limit: Duration,
) -> Result<bool, TxnError> {
    let value = encode("a done record", record)?;
    let txn = Txn::new()
        .when(vec![owner_compare(keys, job, shard, token)])
        .and_then(vec![TxnOp::put(keys.done(job, shard), value, None)]);
    let resp = bounded("done record", limit, client.clone().txn(txn)).await?;
    Ok(resp.succeeded())
}

/// Deletes the running marker written at `revision` (not a successor's).
pub(crate) async fn delete_marker(
    client: &Client,
    keys: &Keys,
    job: &str,
    shard: u32,
    revision: i64,
    limit: Duration,
) -> Result<(), TxnError> {
    let key = keys.running(job, shard);
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )])
        .and_then(vec![TxnOp::delete(key, None)]);
    bounded("running marker delete", limit, client.clone().txn(txn)).await?;
    Ok(())
}

/// Shards per release txn: 2 ops each within etcd's default 128.
pub(crate) const RELEASE_CHUNK: usize = 64;

/// One shard to release, and the `last_fire` its cursor records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseItem {
    pub job: String,
    pub shard: u32,
    pub token: Token,
    pub last_fire: Option<DateTime<Utc>>,
}

/// The compare that holds only while `token` owns the shard: its owner key exists with that
/// create revision (etcd's `Mutex.IsOwner()`). Every write made on a shard's behalf is guarded
/// by it, so a stale owner writes nothing.
pub(crate) fn owner_compare(keys: &Keys, job: &str, shard: u32, token: Token) -> Compare {
    is_owner(keys.owner(job, shard), token.0)
}

/// [`owner_compare`] for a key already built (what handlers get, through
/// `ShardContext::owner_compare`).
pub(crate) fn is_owner(owner_key: String, token: i64) -> Compare {
    Compare::create_revision(owner_key, CompareOp::Equal, token)
}

/// Releases `items` (at most [`RELEASE_CHUNK`]) in one txn; if a token no longer matches, each
/// alone. One result per item, in order: `Ok(false)` when the key was no longer held with that
/// token (its lease expired first).
pub(crate) async fn release_many(
    client: &Client,
    keys: &Keys,
    items: &[ReleaseItem],
    limit: Duration,
) -> Vec<Result<bool, TxnError>> {
    if items.len() > 1 {
        match release_batch(client, keys, items, limit).await {
            Ok(true) => return items.iter().map(|_| Ok(true)).collect(),
            Ok(false) => {}
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(release_batch(client, keys, std::slice::from_ref(item), limit).await);
    }
    out
}

/// `Ok(false)`: a token no longer matched, nothing was written.
async fn release_batch(
    client: &Client,
    keys: &Keys,
    items: &[ReleaseItem],
    limit: Duration,
) -> Result<bool, TxnError> {
    let mut compares = Vec::with_capacity(items.len());
    let mut ops = Vec::with_capacity(items.len() * 2);
    for item in items {
        let cursor = encode(
            "a cursor",
            &Cursor {
                last_fire: item.last_fire,
                released: true,
            },
        )?;
        compares.push(owner_compare(keys, &item.job, item.shard, item.token));
        ops.push(TxnOp::delete(keys.owner(&item.job, item.shard), None));
        ops.push(TxnOp::put(keys.cursor(&item.job, item.shard), cursor, None));
    }
    let txn = Txn::new().when(compares).and_then(ops);
    let resp = bounded("release", limit, client.clone().txn(txn)).await?;
    Ok(resp.succeeded())
}
