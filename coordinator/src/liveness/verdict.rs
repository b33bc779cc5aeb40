//! Who won a broken stream: one put-if-absent of `liveness/<instance>/<lease hex>/<epoch>`,
//! raced by the agent ("alive") and the leader ("dead", fenced by its leader key). etcd orders
//! the two; the loser reads the winner's value. The key is bound to the agent's lease, so it
//! goes with it.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use crate::etcd_error::{EtcdError, bounded};
use crate::keys::Keys;

/// One stream of one lease: what a verdict is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub instance: String,
    pub lease: i64,
    pub epoch: u64,
}

impl StreamId {
    fn key(&self, keys: &Keys) -> String {
        keys.liveness(&self.instance, self.lease, self.epoch)
    }
}

/// The value of a verdict key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The agent was first: the leader may not end the lease through this stream.
    Alive,
    /// The leader was first: it revokes the lease.
    Dead,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    verdict: Verdict,
    /// Who wrote it: the agent itself, or the leader's instance id.
    by: String,
}

/// What a leader's attempt to condemn a stream came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condemned {
    /// "dead" is recorded: revoke the lease.
    Yes,
    /// The agent recorded "alive" first: leave the lease to its TTL.
    Spared,
    /// The fence failed: this leader no longer leads.
    NotLeader,
    /// The lease is gone already (expired or revoked): nothing to do.
    LeaseGone,
}

/// What went wrong while settling a verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerdictError {
    #[error("settling {key}: {cause}")]
    Settle { key: String, cause: EtcdError },
}

fn put_first(key: &str, verdict: Verdict, by: &str, lease: i64) -> (Compare, TxnOp) {
    let value = serde_json::to_vec(&Record {
        verdict,
        by: by.to_owned(),
    })
    .unwrap_or_default();
    (
        Compare::create_revision(key, CompareOp::Equal, 0),
        TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
    )
}

/// Reads the verdict a failed put-if-absent lost to (garbage counts as "dead": the safe side
/// for the agent, which then self-fences).
fn winner(key: &str, resp: &etcd_client::TxnResponse) -> Verdict {
    let kv = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    match kv.map(|kv| serde_json::from_slice::<Record>(kv.value())) {
        Some(Ok(r)) => r.verdict,
        Some(Err(e)) => {
            tracing::warn!(key, error = %e, "a liveness verdict does not decode; reading it as dead");
            Verdict::Dead
        }
        None => Verdict::Dead,
    }
}

fn is_lease_gone(e: &EtcdError) -> bool {
    e.to_string().contains("lease not found")
}

/// The agent's side: records `alive` for stream `epoch` unless the leader was first. Returns
/// the verdict that stands (a retry after a lost answer finds its own "alive"); a lease etcd no
/// longer has reads as "dead" (it was revoked or expired: nothing may act on it).
pub async fn settle_alive(
    client: &Client,
    keys: &Keys,
    stream: &StreamId,
    limit: Duration,
) -> Result<Verdict, VerdictError> {
    let key = stream.key(keys);
    let (absent, put) = put_first(&key, Verdict::Alive, &stream.instance, stream.lease);
    let txn = Txn::new()
        .when([absent])
        .and_then([put])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let mut c = client.clone();
    let resp = match bounded("settling a liveness verdict", limit, c.txn(txn)).await {
        Ok(r) => r,
        Err(e) if is_lease_gone(&e) => return Ok(Verdict::Dead),
        Err(cause) => return Err(VerdictError::Settle { key, cause }),
    };
    Ok(if resp.succeeded() {
        Verdict::Alive
    } else {
        winner(&key, &resp)
    })
}

/// The leader's side: records `dead` for stream `epoch`, fenced by `fence` (its leader key),
/// unless the agent was first.
pub async fn condemn(
    client: &Client,
    keys: &Keys,
    fence: Compare,
    leader: &str,
    stream: &StreamId,
    limit: Duration,
) -> Result<Condemned, VerdictError> {
    let key = stream.key(keys);
    let (absent, put) = put_first(&key, Verdict::Dead, leader, stream.lease);
    // Two levels, so a failure tells which compare failed: the outer txn checks the fence,
    // the inner one the verdict.
    let inner = Txn::new()
        .when([absent])
        .and_then([put])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let txn = Txn::new().when([fence]).and_then([TxnOp::txn(inner)]);
    let mut c = client.clone();
    let resp = match bounded("condemning a liveness stream", limit, c.txn(txn)).await {
        Ok(r) => r,
        Err(e) if is_lease_gone(&e) => return Ok(Condemned::LeaseGone),
        Err(cause) => return Err(VerdictError::Settle { key, cause }),
    };
    if !resp.succeeded() {
        return Ok(Condemned::NotLeader);
    }
    let inner = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Txn(t) => Some(t),
        _ => None,
    });
    Ok(match inner {
        Some(t) if t.succeeded() => Condemned::Yes,
        Some(t) => match winner(&key, &t) {
            Verdict::Alive => Condemned::Spared,
            Verdict::Dead => Condemned::Yes, // a retry of our own
        },
        // Not what etcd answers; not knowing, leave the lease to its TTL.
        None => Condemned::Spared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_readable_json() {
        let v = serde_json::to_string(&Record {
            verdict: Verdict::Alive,
            by: "a".into(),
        })
        .unwrap();
        assert_eq!(v, r#"{"verdict":"alive","by":"a"}"#);
        let r: Record = serde_json::from_str(r#"{"verdict":"dead","by":"l"}"#).unwrap();
        assert_eq!(r.verdict, Verdict::Dead);
    }
}
