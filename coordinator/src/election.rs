//! Leader election, one election per namespace, with the key layout of etcd's Election API.
//!
//! Candidates campaign under the name `<root>leader` with their session's lease and their
//! instance id as the value, so stock `etcdctl elect --listen /shardjob/<ns>/leader` shows the
//! leader (and `etcdctl elect` candidates queue with ours). There is one key per candidate
//! (`<name>/<lease hex>`); the one with the lowest create revision leads.
//!
//! The campaign runs on the client, like the Go `concurrency` package, not through the server's
//! `Campaign` call: that call is one request that both writes the candidacy and waits to lead,
//! so it cannot carry a timeout, and a write of it lost in an etcd leader change held it for
//! etcd's full request timeout (7 s) — the fault campaign measured missed hand-overs from
//! exactly that. Here every step is a short bounded request: a put-if-absent of the candidate
//! key (idempotent, so a retry after a timeout is harmless), then, until no earlier candidate
//! is left, a read of the latest earlier one and a watch for its deletion, read again at least
//! once per lease TTL in case the watch went quiet.
//!
//! Leading is a claim that can go stale (a paused process, an expired lease). So every write the
//! leader makes is a txn guarded by [`Leadership::fence`]:
//! `create_revision(leader key) == the revision it was created at`. Once the key is gone — lease
//! expired, resigned — no write with that fence can succeed, even if the old leader still
//! believes it leads.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, LeaderKey, PutOptions,
    ResignOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::time::timeout;
use tracing::info;

use crate::keys::Keys;
use crate::session::SessionHandle;

/// What went wrong in an election.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ElectionError {
    #[error("campaigning for {name}: {cause}")]
    Campaign { name: String, cause: String },
    #[error("the session was lost while campaigning for {name}")]
    SessionLost { name: String },
    #[error("reading the leader of {name}: {cause}")]
    Leader { name: String, cause: String },
    #[error("resigning from {name}: {cause}")]
    Resign { name: String, cause: String },
}

/// The election of one namespace.
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Proof of being elected: the leader key and the revision it was created at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    name: String,
    key: Vec<u8>,
    rev: i64,
    lease: i64,
}

/// Who leads, as anyone can observe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's instance id (the campaign value).
    pub instance: String,
    pub key: String,
    pub create_revision: i64,
    pub lease: i64,
}

impl Election {
    /// The election of the namespace `keys` belongs to.
    pub fn new(client: &Client, keys: &Keys) -> Self {
        Self {
            client: client.clone(),
            name: keys.election_name(),
        }
    }

    /// Campaigns with `session`'s lease and value `instance` until elected. Returns early with
    /// [`ElectionError::SessionLost`] when the session is lost (the lease's end removes the
    /// candidacy), and with [`ElectionError::Campaign`] when one bounded step fails; calling
    /// it again continues with the same candidate key.
    pub async fn campaign(
        &self,
        session: &SessionHandle,
        instance: &str,
    ) -> Result<Leadership, ElectionError> {
        let lost = session.lost();
        tokio::select! {
            _ = lost.cancelled() => Err(ElectionError::SessionLost { name: self.name.clone() }),
            r = self.campaign_steps(session, instance) => r,
        }
    }

    async fn campaign_steps(
        &self,
        session: &SessionHandle,
        instance: &str,
    ) -> Result<Leadership, ElectionError> {
        let lease = session.lease();
        let key = format!("{}/{lease:x}", self.name);
        let limit = step_timeout(session.ttl());
        let rev = self.candidacy(&key, instance, lease, limit).await?;
        loop {
            match self.earlier_candidate(&key, rev, limit).await? {
                None => {
                    info!(instance, key, rev, "elected leader");
                    return Ok(Leadership {
                        name: self.name.clone(),
                        key: key.into_bytes(),
                        rev,
                        lease,
                    });
                }
                Some((earlier, seen_at)) => {
                    // Read again after its deletion, a broken watch, or a TTL of silence.
                    let woke = timeout(session.ttl(), self.deleted(&earlier, seen_at + 1)).await;
                    if woke == Ok(false) {
                        // The watch failed: do not spin on a member that refuses watches.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// Writes the candidate key unless it exists; returns its create revision.
    async fn candidacy(
        &self,
        key: &str,
        instance: &str,
        lease: i64,
        limit: Duration,
    ) -> Result<i64, ElectionError> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                instance,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self
            .bounded(limit, |mut c| async move { c.txn(txn).await })
            .await?;
        if resp.succeeded() {
            return resp
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| self.failed("the candidacy write came back without a revision"));
        }
        resp.op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            })
            .ok_or_else(|| self.failed("the candidate key vanished while it was written"))
    }

    /// The latest candidate created before `rev` (and the revision it was seen at), after
    /// checking that this candidacy still stands.
    async fn earlier_candidate(
        &self,
        key: &str,
        rev: i64,
        limit: Duration,
    ) -> Result<Option<(Vec<u8>, i64)>, ElectionError> {
        let earlier = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        let txn = Txn::new().and_then(vec![
            TxnOp::get(key, None),
            TxnOp::get(format!("{}/", self.name), Some(earlier)),
        ]);
        let resp = self
            .bounded(limit, |mut c| async move { c.txn(txn).await })
            .await?;
        let seen_at = resp.header().map_or(0, |h| h.revision());
        let gets: Vec<Vec<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
                _ => None,
            })
            .collect();
        match gets.as_slice() {
            [mine, _] if mine.first().map(KeyValue::create_revision) != Some(rev) => {
                Err(self.failed("the candidate key is gone (its lease ended, or it was deleted)"))
            }
            [_, earlier] => Ok(earlier.first().map(|kv| (kv.key().to_vec(), seen_at))),
            _ => Err(self.failed("the candidate read came back incomplete")),
        }
    }

    /// Waits until `key` is deleted at or after revision `from` (true), or the watch ends
    /// (false).
    async fn deleted(&self, key: &[u8], from: i64) -> bool {
        let mut client = self.client.clone();
        let opts = WatchOptions::new().with_start_revision(from);
        let Ok(mut stream) = client.watch(key.to_vec(), Some(opts)).await else {
            return false;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return true;
            }
            if resp.canceled() {
                return false;
            }
        }
        false
    }

    async fn bounded<T, F, Fut>(&self, limit: Duration, call: F) -> Result<T, ElectionError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match timeout(limit, call(self.client.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(&e.to_string())),
            Err(_) => Err(self.failed(&format!("no answer within {limit:?}"))),
        }
    }

    fn failed(&self, cause: &str) -> ElectionError {
        ElectionError::Campaign {
            name: self.name.clone(),
            cause: cause.to_owned(),
        }
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, ElectionError> {
        let mut client = self.client.clone();
        let err = |cause: String| ElectionError::Leader {
            name: self.name.clone(),
            cause,
        };
        match timeout(Duration::from_secs(5), client.leader(self.name.clone())).await {
            Err(_) => Err(err("no answer within 5s".into())),
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(err(e.to_string())),
            Ok(Ok(resp)) => Ok(resp.kv().map(|kv| LeaderInfo {
                instance: String::from_utf8_lossy(kv.value()).into_owned(),
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                create_revision: kv.create_revision(),
                lease: kv.lease(),
            })),
        }
    }
}

/// How long one campaign step may take: half the TTL, at most 2 s. A healthy etcd answers in
/// milliseconds; a step that takes longer is stuck (a write lost in an etcd leader change) and
/// is better retried, possibly on another member.
fn step_timeout(ttl: Duration) -> Duration {
    (ttl / 2).min(Duration::from_secs(2))
}

impl Leadership {
    /// The compare every leader write carries: the leader key still exists as created.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)
    }

    /// The leader key (`<root>leader/<lease hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The create revision of the leader key.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Gives up leadership: deletes the leader key so the next candidate is elected at once.
    pub async fn resign(self, client: &Client) -> Result<(), ElectionError> {
        let mut client = client.clone();
        let leader = LeaderKey::new()
            .with_name(self.name.clone())
            .with_key(self.key.clone())
            .with_rev(self.rev)
            .with_lease(self.lease);
        let call = client.resign(Some(ResignOptions::new().with_leader(leader)));
        match timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ElectionError::Resign {
                name: self.name,
                cause: e.to_string(),
            }),
            Err(_) => Err(ElectionError::Resign {
                name: self.name,
                cause: "no answer within 5s".into(),
            }),
        }
    }
}
