//! Leader election over etcd's Election API, one election per namespace.
//!
//! Candidates campaign under the name `<root>leader` with their session's lease and their
//! instance id as the value, so stock `etcdctl elect --listen /shardjob/<ns>/leader` shows the
//! leader. etcd keeps one key per candidate (`<name>/<lease hex>`); the one with the lowest
//! create revision leads. Campaign returns when this candidate leads.
//!
//! Leading is a claim that can go stale (a paused process, an expired lease). So every write the
//! leader makes is a txn guarded by [`Leadership::fence`]:
//! `create_revision(leader key) == the revision it was created at`. Once the key is gone — lease
//! expired, resigned — no write with that fence can succeed, even if the old leader still
//! believes it leads.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, LeaderKey, ResignOptions};
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
    /// [`ElectionError::SessionLost`] when the session is lost (the server then withdraws the
    /// candidacy, and the lease's expiry removes it in any case).
    pub async fn campaign(
        &self,
        session: &SessionHandle,
        instance: &str,
    ) -> Result<Leadership, ElectionError> {
        let lost = session.lost();
        let mut client = self.client.clone();
        let campaign = client.campaign(self.name.clone(), instance, session.lease());
        let resp = tokio::select! {
            _ = lost.cancelled() => return Err(ElectionError::SessionLost { name: self.name.clone() }),
            r = campaign => r.map_err(|e| ElectionError::Campaign { name: self.name.clone(), cause: e.to_string() })?,
        };
        let leader = resp.leader().ok_or_else(|| ElectionError::Campaign {
            name: self.name.clone(),
            cause: "the response names no leader key".into(),
        })?;
        info!(instance, key = %String::from_utf8_lossy(leader.key()), rev = leader.rev(), "elected leader");
        Ok(Leadership {
            name: self.name.clone(),
            key: leader.key().to_vec(),
            rev: leader.rev(),
            lease: leader.lease(),
        })
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
