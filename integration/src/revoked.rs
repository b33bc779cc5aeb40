//! Reading etcd's history to judge a crash causally: was the lease of a crashed agent ended by
//! the leader through its broken liveness stream, before anyone else owned its shards?

use etcd_client::{Client, EventType, WatchOptions};
use shardjob_coordinator::keys::Keys;
use tokio::time::timeout;

use crate::fixtures::PATIENCE;

/// One event: (mod revision, put or delete, key, value).
pub type Event = (i64, EventType, String, String);

/// The namespace's current revision.
pub async fn revision(client: &Client, keys: &Keys) -> Result<i64, String> {
    let mut c = client.clone();
    let r = c.get(keys.root(), None).await.map_err(|e| e.to_string())?;
    r.header()
        .map(|h| h.revision())
        .ok_or_else(|| "a get without a header".to_owned())
}

/// Every event under the namespace from revision `from` up to the current one.
pub async fn history(client: &Client, keys: &Keys, from: i64) -> Result<Vec<Event>, String> {
    let until = revision(client, keys).await?;
    let mut c = client.clone();
    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = c
        .watch(keys.root(), Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<Event> = Vec::new();
    while out.last().is_none_or(|(rev, ..)| *rev < until) && from <= until {
        let resp = timeout(PATIENCE, stream.message())
            .await
            .map_err(|_| "the history watch went quiet".to_owned())?
            .map_err(|e| e.to_string())?
            .ok_or("the history watch ended")?;
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                out.push((
                    kv.mod_revision(),
                    ev.event_type(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                ));
            }
        }
    }
    Ok(out)
}

/// Checks, in `events`: a "dead" verdict on a stream of `victim`'s `lease`, then one revision
/// deleting `victim`'s instance key and its owner keys of `shards` (of `job`) together — a
/// revoke — and every such owner key created again only after it (read now from `client`).
/// Returns the revoke's revision.
pub async fn assert_revoked_through_stream(
    client: &Client,
    keys: &Keys,
    events: &[Event],
    victim: &str,
    lease: i64,
    job: &str,
    shards: &[u32],
) -> i64 {
    let prefix = format!("{}{victim}/{lease:x}/", keys.liveness_prefix());
    let dead = events
        .iter()
        .find(|(_, t, k, v)| {
            *t == EventType::Put && k.starts_with(&prefix) && v.contains("\"dead\"")
        })
        .unwrap_or_else(|| panic!("no dead verdict under {prefix} in {events:#?}"));
    let gone = events
        .iter()
        .find(|(_, t, k, _)| *t == EventType::Delete && *k == keys.instance(victim))
        .unwrap_or_else(|| panic!("{victim}'s instance key was not deleted: {events:#?}"));
    assert!(
        dead.0 < gone.0,
        "the verdict {dead:?} came after the deletion {gone:?}"
    );
    let mut c = client.clone();
    for &s in shards {
        let owner = keys.owner(job, s);
        let deleted = events
            .iter()
            .find(|(_, t, k, _)| *t == EventType::Delete && *k == owner)
            .unwrap_or_else(|| panic!("{owner} was never deleted"));
        assert_eq!(
            deleted.0, gone.0,
            "{owner} went apart from its lease's other keys"
        );
        let now = c
            .get(owner.clone(), None)
            .await
            .expect("reading an owner key");
        let created = now.kvs().first().map(|kv| kv.create_revision());
        assert!(
            created.is_some_and(|c| c > gone.0),
            "{owner} created at {created:?}, not after the revoke at {}",
            gone.0
        );
    }
    gone.0
}
