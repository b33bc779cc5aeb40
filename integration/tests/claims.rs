//! The batched claim and release txns against real etcd: jobs packed into one txn get one
//! token, a part that cannot be claimed or released does not block the others packed with it,
//! and a refused claim says why (the key that holds the shard, or a changed assignment).
#![allow(clippy::unwrap_used)]

use shardjob_agent::testing::{Claimed, claim_parts, release_shards};
use shardjob_coordinator::keys::Keys;
use shardjob_integration::EtcdCluster;
use shardjob_sharding::InstanceId;

/// My page that lists `job`: what a claim of it is guarded by. (The job's config is put too:
/// a claim of a job without one is refused.)
fn page(keys: &Keys, job: &str) -> String {
    keys.assigned("me", shardjob_coordinator::model::page_of(job))
}

/// One etcd, a client, the keys of `namespace`, instance `me` and a lease of its own.
struct Bed {
    _etcd: EtcdCluster,
    client: etcd_client::Client,
    keys: Keys,
    me: InstanceId,
    lease: i64,
}

impl Bed {
    async fn start(namespace: &str) -> Self {
        let etcd = EtcdCluster::single().unwrap();
        let client = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        let lease = client.clone().lease_grant(30, None).await.unwrap().id();
        Bed {
            _etcd: etcd,
            client,
            keys: Keys::new(namespace).unwrap(),
            me: InstanceId::new("me").unwrap(),
            lease,
        }
    }
}

/// The stamp the leader writes with that page: what a claim compares.
fn stamp(keys: &Keys, job: &str) -> String {
    keys.stamp("me", shardjob_coordinator::model::page_of(job))
}

/// Puts `job`'s page (and its config, once); returns the page's revision.
async fn assign(client: &etcd_client::Client, keys: &Keys, job: &str) -> i64 {
    put(client, keys.job(job)).await;
    put_page(client, keys, job).await
}

/// Puts `job`'s page with its stamp in one txn, as the leader does; returns the revision.
async fn put_page(client: &etcd_client::Client, keys: &Keys, job: &str) -> i64 {
    use etcd_client::{Txn, TxnOp};
    let txn = Txn::new().and_then([
        TxnOp::put(page(keys, job), "{}", None),
        TxnOp::put(stamp(keys, job), "", None),
    ]);
    let resp = client.clone().txn(txn).await.unwrap();
    resp.header().unwrap().revision()
}

async fn put(client: &etcd_client::Client, key: String) -> i64 {
    let resp = client.clone().put(key, "{}", None).await.unwrap();
    resp.header().unwrap().revision()
}

/// The cursor of shard 0 of `job`, as stored.
async fn cursor(client: &etcd_client::Client, keys: &Keys, job: &str) -> Option<String> {
    let resp = client.clone().get(keys.cursor(job, 0), None).await.unwrap();
    let kv = resp.kvs().first()?;
    Some(String::from_utf8_lossy(kv.value()).into_owned())
}

async fn cursor_rev(client: &etcd_client::Client, keys: &Keys, job: &str) -> i64 {
    let resp = client.clone().get(keys.cursor(job, 0), None).await.unwrap();
    resp.kvs()[0].mod_revision()
}

fn token_of(results: &[(u32, Claimed)], shard: u32) -> i64 {
    match results.iter().find(|(s, _)| *s == shard) {
        Some((_, Claimed::Won(t))) => *t,
        other => panic!("shard {shard} not won: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_jobs_share_one_txn_and_a_refusal_names_what_blocked_it() {
    let Bed {
        _etcd,
        client,
        keys,
        me,
        lease,
    } = Bed::start("claims").await;
    let mut rev = std::collections::BTreeMap::new();
    for job in ["a", "b", "c", "d", "e"] {
        rev.insert(job, assign(&client, &keys, job).await);
    }
    // Each on a page of its own: changing d's page below changes nothing of the others'.
    let pages: std::collections::BTreeSet<String> = rev.keys().map(|j| page(&keys, j)).collect();
    assert_eq!(pages.len(), 5);

    // Two free jobs in one txn: every shard won, all with the txn's revision as token.
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[("a", rev["a"], 1, vec![0, 1]), ("b", rev["b"], 1, vec![0])],
    )
    .await;
    let t = token_of(&r[0], 0);
    assert_eq!((token_of(&r[0], 1), token_of(&r[1], 0)), (t, t), "{r:?}");
    let kv = client.clone().get(keys.owner("b", 0), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!((kv.create_revision(), kv.lease()), (t, lease));
    assert_eq!(
        cursor(&client, &keys, "b").await,
        None,
        "no cursor, none written"
    );

    // c/0 is held by someone else (a value that does not decode: an unknown owner) and d's
    // page changed since it was read: the batch is refused, and its reads say so; the
    // free shards (c/1, e/0, e/1) are claimed together in one more txn.
    let c0 = put(&client, keys.owner("c", 0)).await;
    let stale_d = rev["d"];
    put_page(&client, &keys, "d").await;
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[
            ("c", rev["c"], 1, vec![0, 1]),
            ("d", stale_d, 1, vec![0]),
            ("e", rev["e"], 1, vec![0, 1]),
        ],
    )
    .await;
    assert_eq!(r[0][0], (0, Claimed::Held(String::new(), c0)), "{r:?}");
    let c1 = token_of(&r[0], 1);
    assert_eq!(r[1], vec![(0, Claimed::Stale)], "{r:?}");
    let e = token_of(&r[2], 0);
    assert_eq!((token_of(&r[2], 1), c1), (e, e), "one retry txn: {r:?}");
    assert!(e > c0, "tokens rise: {r:?}");
    let d = client.clone().get(keys.owner("d", 0), None).await.unwrap();
    assert!(d.kvs().is_empty(), "no owner key for a stale assignment");

    // Nothing is claimed twice: a second claim of a's shards is refused by my own keys (what
    // an agent whose first answer was lost learns, and adopts).
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[("a", rev["a"], 1, vec![0, 1])],
    )
    .await;
    let mine = Claimed::Held("me".into(), t);
    assert_eq!(r[0], vec![(0, mine.clone()), (1, mine)]);

    // A job deleted (config and owner keys in one txn) is still on my page until the leader's
    // next pass: a claim its owner deletes set off must not win keys of a job that is gone.
    client.clone().delete(keys.job("a"), None).await.unwrap();
    client
        .clone()
        .delete(
            keys.owners_prefix("a"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[("a", rev["a"], 1, vec![0, 1])],
    )
    .await;
    assert!(
        r[0].iter()
            .all(|(_, c)| matches!(c, Claimed::Failed(why) if why.contains("config is gone"))),
        "{r:?}"
    );
    let left = client.clone().get(keys.owner("a", 0), None).await.unwrap();
    assert!(left.kvs().is_empty(), "an owner key of a deleted job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_stamp_was_lost_or_left_behind_is_compared_itself() {
    let Bed {
        _etcd,
        client,
        keys,
        me,
        lease,
    } = Bed::start("stamps").await;
    let (a, b) = ("a", "b");
    let ra = assign(&client, &keys, a).await;
    assign(&client, &keys, b).await;
    // a's stamp deleted by hand, b's page put by hand (its stamp left at the old revision).
    client.clone().delete(stamp(&keys, a), None).await.unwrap();
    let hand = put(&client, page(&keys, b)).await;
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[(a, ra, 1, vec![0]), (b, hand, 1, vec![0])],
    )
    .await;
    // Both refused by their stamps, both won comparing their pages (one retry txn).
    let t = token_of(&r[0], 0);
    assert_eq!(token_of(&r[1], 0), t, "{r:?}");
    // With no stamp, a page that changed is still found stale.
    client.clone().delete(keys.owner(a, 0), None).await.unwrap();
    put(&client, page(&keys, a)).await;
    let r = claim_parts(&client, &keys, &me, lease, &[(a, ra, 1, vec![0])]).await;
    assert_eq!(r[0], vec![(0, Claimed::Stale)], "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_a_stale_token_does_not_block_the_others_packed_with_it() {
    let Bed {
        _etcd,
        client,
        keys,
        me,
        lease,
    } = Bed::start("releases").await;
    let ra = assign(&client, &keys, "a").await;
    let rb = assign(&client, &keys, "b").await;
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[("a", ra, 1, vec![0, 1]), ("b", rb, 1, vec![0])],
    )
    .await;
    let t = token_of(&r[0], 0);
    let exists = |job: &'static str, shard: u32| {
        let (c, k) = (client.clone(), keys.owner(job, shard));
        async move { !c.clone().get(k, None).await.unwrap().kvs().is_empty() }
    };

    // a/1 with a wrong token: the batch fails, then each alone; a/1 stays held.
    let out = release_shards(&client, &keys, &[("a", 0, t), ("a", 1, t - 1), ("b", 0, t)]).await;
    assert_eq!(out, vec![Ok(true), Ok(false), Ok(true)]);
    assert!(!exists("a", 0).await && exists("a", 1).await && !exists("b", 0).await);
    let released = cursor(&client, &keys, "b").await.unwrap();
    assert!(released.contains(r#""released":true"#), "{released}");

    // Released keys are free again: a packed claim of both wins.
    let r = claim_parts(
        &client,
        &keys,
        &me,
        lease,
        &[("a", ra, 1, vec![0]), ("b", rb, 1, vec![0])],
    )
    .await;
    let t2 = token_of(&r[0], 0);
    assert_eq!(token_of(&r[1], 0), t2);
    // The claim overwrote the released cursor: a crash now leaves it untrusted.
    let unreleased = cursor(&client, &keys, "b").await;
    assert_eq!(unreleased.as_deref(), Some(r#"{"released":false}"#));
    assert_eq!(cursor_rev(&client, &keys, "b").await, t2);
    // The owner dies (its key goes without a release): the next claim leaves the unreleased
    // cursor as it is.
    client
        .clone()
        .delete(keys.owner("b", 0), None)
        .await
        .unwrap();
    let r = claim_parts(&client, &keys, &me, lease, &[("b", rb, 1, vec![0])]).await;
    let t3 = token_of(&r[0], 0);
    assert!(t3 > t2);
    assert_eq!(
        cursor_rev(&client, &keys, "b").await,
        t2,
        "rewritten for nothing"
    );
    let out = release_shards(&client, &keys, &[("a", 0, t2), ("b", 0, t3), ("a", 1, t)]).await;
    assert_eq!(out, vec![Ok(true), Ok(true), Ok(true)]);
    assert!(!exists("a", 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_chunk_of_shards_fits_in_one_txn_claimed_and_refused() {
    // etcd refuses a txn of more than 128 ops (its default `--max-txn-ops`) in a branch, and a
    // nested txn of more than its branch leaves: a full chunk, in both branches and in both
    // shapes (one job, or a job per shard: the most reads when refused), stays within it.
    let Bed {
        _etcd,
        client,
        keys,
        me,
        lease,
    } = Bed::start("chunk").await;
    let chunk = shardjob_agent::testing::CLAIM_CHUNK;
    let jobs: Vec<String> = (0..=chunk).map(|j| format!("j{j}")).collect();
    for job in &jobs {
        assign(&client, &keys, job).await;
    }
    // Jobs share pages: each is claimed under its page's last revision.
    let mut latest = Vec::new();
    for job in &jobs {
        let kv = client.clone().get(page(&keys, job), None).await.unwrap();
        latest.push((job.clone(), kv.kvs()[0].mod_revision()));
    }
    let (first, rest) = latest.split_first().unwrap();
    let one_job = vec![(first.0.clone(), first.1, (0..chunk as u32).collect())];
    let job_per_shard = rest.iter().map(|(j, r)| (j.clone(), *r, vec![0])).collect();
    for parts in [one_job, job_per_shard] {
        let parts: Vec<(&str, i64, u64, Vec<u32>)> = parts
            .iter()
            .map(|(j, r, s)| (j.as_str(), *r, 1, s.clone()))
            .collect();
        let r = claim_parts(&client, &keys, &me, lease, &parts).await;
        let t = token_of(&r[0], 0);
        let results: Vec<&Claimed> = r.iter().flatten().map(|(_, c)| c).collect();
        assert_eq!(results.len(), chunk, "{r:?}");
        assert!(
            results.iter().all(|c| **c == Claimed::Won(t)),
            "every shard won in one txn: {r:?}"
        );
        let r = claim_parts(&client, &keys, &me, lease, &parts).await;
        for (part, results) in parts.iter().zip(&r) {
            let held: Vec<(u32, Claimed)> = part
                .3
                .iter()
                .map(|s| (*s, Claimed::Held("me".into(), t)))
                .collect();
            assert_eq!(results, &held);
        }
    }
}
