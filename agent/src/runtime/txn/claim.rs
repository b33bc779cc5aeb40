//! The claim txn: shards of one or several jobs at once, up to [`CLAIM_CHUNK`] per txn (the
//! `claimer` packs them).
//!
//! ```text
//! if   ∀j mod_revision(stamp(j)) == seen(j)  ∧  create_revision(jobs/j) > 0
//!      ∧  ∀(j,s) create_revision(owners/j/s) == 0
//! then ∀(j,s): get cursors/j/s; get running/j/s; put owners/j/s (lease);
//!              if value(cursors/j/s) != {"released":false} then put cursors/j/s {"released":false}
//! else ∀j: get page(j), get stamp(j), get jobs/j (keys only);  ∀(j,s): get owners/j/s
//!
//! page(j)  = assigned/<me>/<page_of(j)>: my page that lists j (seen(j): its mod revision)
//! stamp(j) = stamps/<me>/<page_of(j)>: empty, put by the leader in the page's txn
//! ```
//!
//! The stamp stands for the page because etcd reads a compared key's whole value: a page is
//! ~7.5 KB at bench-scale, and comparing it made the cold start 10-35 % slower. Each stamp
//! is compared once per txn. When a refusal shows the page as seen but the stamp not (a page
//! put by hand, a stamp deleted by hand), the shards are tried again comparing the page
//! itself: the stamp is a shortcut, never what decides.
//!
//! The config's compare: a job deleted (its config and every owner key in one txn) stays on
//! the pages until the leader's next pass, and the owner deletes can reach this agent before
//! the config's; without it the claim they set off wins keys of a job that no longer exists.
//!
//! The cursor is overwritten only when it exists and says something else (a clean release's
//! `last_fire`, or garbage): etcd's value compare is false for a missing key, and an absent
//! cursor is as untrusted as `{"released":false}`. A cold start writes no cursor at all
//! (bench-scale: 80k fewer puts, cold start 5.6 → ~4 s).
//!
//! The txn's revision is the new keys' create revision: the fencing token. A refused txn says
//! at once, from its reads, why each shard was refused: its job's page changed
//! ([`ClaimResult::Stale`]) or its owner key exists ([`ClaimResult::Held`], with the key: the
//! agent waits for that key's delete, and a key of its own whose claim answer was lost is
//! adopted). The shards that were free are claimed again in one more txn. Agents watch only
//! the deletes of owner keys, so this read is how an agent learns who holds what it wants.

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use shardjob_coordinator::etcd_error::bounded;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{Cursor, Owner, page_of};
use shardjob_sharding::InstanceId;

use super::{TxnError, encode, got};
use crate::engine::{ClaimResult, LeaseId, SeenOwner, Token, WriteFailed};

/// Ops per shard in the success branch: two gets, the owner key's put, the cursor's txn.
const OPS_PER_SHARD: usize = 4;
/// Shards per claim txn. etcd 3.4 holds each branch (and the compares) to `--max-txn-ops`
/// (128 by default), and a nested txn to what the branch it is in leaves of it: 4 x 31 = 124
/// ops leave 4 for the cursor's txn (1 op); 32 shards leave none and are refused as "too many
/// operations", 31 pass. The refusal branch reads three keys per part and one per shard: 124
/// with 31 parts of one shard, the most. (This was 25, from a guess of five ops per shard;
/// `a_full_chunk_of_shards_fits_in_one_txn_claimed_and_refused` probes both shapes.)
pub(crate) const CLAIM_CHUNK: usize = (128 - 1) / OPS_PER_SHARD;
/// Txns per claim: the first, and retries of what a refusal showed to be free (a key created
/// or an assignment changed between two of them is rare; after this many the free shards are
/// reported failed and the engine tries them again at its re-check).
const ATTEMPTS: usize = 3;

/// Who claims: the same for every part of a batch.
pub(crate) struct Claimant<'a> {
    pub keys: &'a Keys,
    pub instance: &'a InstanceId,
    pub lease: LeaseId,
    pub timeout: std::time::Duration,
}

/// Shards of one job to claim under the assignment read at `assignment_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimPart {
    pub job: String,
    pub assignment_revision: i64,
    pub generation: u64,
    pub shards: Vec<u32>,
}

/// What a part's txn compares to know the page is still the one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// The page's stamp (small, the same revision).
    Stamp,
    /// The page itself: its stamp did not match.
    Page,
}

/// What one txn did.
enum Answer {
    /// Every shard won, per part in order.
    Won(Vec<Vec<(u32, ClaimResult)>>),
    /// A compare failed: per part, stale or not, and per shard the owner key found (if any);
    /// with the revision the txn read them at.
    Refused(Vec<Refusal>, i64),
}

struct Refusal {
    stale: bool,
    /// The page is the one read but its stamp is not.
    unstamped: bool,
    /// The job's config is gone.
    gone: bool,
    holders: Vec<Option<SeenOwner>>,
}

/// Claims `parts` (of one or several jobs, at most [`CLAIM_CHUNK`] shards together). One result
/// list per part, in order, one result per shard; and the earliest revision a refusal read the
/// key that holds a shard at (0 when none did): that key's delete comes after it.
pub(crate) async fn claim(
    client: &Client,
    who: &Claimant<'_>,
    parts: &[ClaimPart],
) -> (Vec<Vec<(u32, ClaimResult)>>, i64) {
    let mut read_at = 0;
    let mut out: Vec<Vec<(u32, ClaimResult)>> = parts
        .iter()
        .map(|p| Vec::with_capacity(p.shards.len()))
        .collect();
    // What is still to claim: the parts with the shards left (the first txn takes `parts` as
    // they are), and for each its index into `parts`.
    let mut retry: Vec<ClaimPart> = Vec::new();
    let mut index: Vec<usize> = (0..parts.len()).collect();
    let mut guards = vec![Guard::Stamp; parts.len()];
    for attempt in 0..ATTEMPTS {
        let batch = if attempt == 0 { parts } else { &retry[..] };
        if batch.is_empty() {
            break;
        }
        match claim_batch(client, who, batch, &guards).await {
            Ok(Answer::Won(won)) => {
                for (&i, results) in index.iter().zip(won) {
                    out[i].extend(results);
                }
                index.clear();
            }
            Ok(Answer::Refused(refusals, at)) => {
                let (mut next, mut next_index, mut next_guards) =
                    (Vec::new(), Vec::new(), Vec::new());
                let tried = index.iter().zip(batch).zip(&guards).zip(refusals);
                for (((&i, part), &guard), refusal) in tried {
                    if refusal.gone {
                        let why = "the job's config is gone";
                        out[i].extend(part.shards.iter().map(|&s| (s, failed(why))));
                        continue;
                    }
                    if refusal.stale {
                        out[i].extend(part.shards.iter().map(|&s| (s, ClaimResult::Stale)));
                        continue;
                    }
                    let mut free = Vec::new();
                    for (&s, holder) in part.shards.iter().zip(refusal.holders) {
                        match holder {
                            Some(h) => {
                                read_at = if read_at == 0 { at } else { read_at.min(at) };
                                out[i].push((s, ClaimResult::Held(h)));
                            }
                            None => free.push(s),
                        }
                    }
                    if !free.is_empty() {
                        next.push(ClaimPart {
                            job: part.job.clone(),
                            assignment_revision: part.assignment_revision,
                            generation: part.generation,
                            shards: free,
                        });
                        next_index.push(i);
                        next_guards.push(if refusal.unstamped {
                            Guard::Page
                        } else {
                            guard
                        });
                    }
                }
                retry = next;
                index = next_index;
                guards = next_guards;
                continue;
            }
            Err(e) => {
                let e = e.to_string();
                for (&i, part) in index.iter().zip(batch) {
                    out[i].extend(part.shards.iter().map(|&s| (s, failed(&e))));
                }
                index.clear();
            }
        }
        break;
    }
    for (&i, part) in index.iter().zip(&retry) {
        let why = "free at every read, refused every time (contended); trying again";
        out[i].extend(part.shards.iter().map(|&s| (s, failed(why))));
    }
    for results in &mut out {
        results.sort_by_key(|(s, _)| *s);
    }
    (out, read_at)
}

fn failed(why: &str) -> ClaimResult {
    ClaimResult::Failed(WriteFailed(why.to_owned()))
}

/// One txn claiming `parts`, each guarded as `guards` says.
async fn claim_batch(
    client: &Client,
    who: &Claimant<'_>,
    parts: &[ClaimPart],
    guards: &[Guard],
) -> Result<Answer, TxnError> {
    let claimed = encode("a cursor", &Cursor::default())?;
    let shards: usize = parts.iter().map(|p| p.shards.len()).sum();
    let mut compares = Vec::with_capacity(2 * parts.len() + shards);
    let mut ops = Vec::with_capacity(shards * OPS_PER_SHARD);
    let mut reads = Vec::with_capacity(3 * parts.len() + shards);
    // The (key, revision) pairs this txn compares already.
    let mut guarded: Vec<(String, i64)> = Vec::new();
    for (part, guard) in parts.iter().zip(guards) {
        let owner = encode(
            "an owner key",
            &Owner {
                instance: who.instance.clone(),
                generation: part.generation,
            },
        )?;
        // My page that lists the job: any change to it (this job's part or another's) refuses
        // the claim as stale, and the page's next event brings the revision to claim under.
        let (me, page_no) = (who.instance.as_str(), page_of(&part.job));
        let page = who.keys.assigned(me, page_no);
        let stamp = who.keys.stamp(me, page_no);
        // Compared once per txn: parts packed together mostly come from one page's event.
        let compared = match guard {
            Guard::Stamp => stamp.clone(),
            Guard::Page => page.clone(),
        };
        let pair = (compared, part.assignment_revision);
        if !guarded.contains(&pair) {
            compares.push(Compare::mod_revision(
                pair.0.clone(),
                CompareOp::Equal,
                part.assignment_revision,
            ));
            guarded.push(pair);
        }
        reads.push(TxnOp::get(page, Some(GetOptions::new().with_keys_only())));
        reads.push(TxnOp::get(stamp, Some(GetOptions::new().with_keys_only())));
        let config = who.keys.job(&part.job);
        compares.push(Compare::create_revision(
            config.clone(),
            CompareOp::Greater,
            0,
        ));
        reads.push(TxnOp::get(config, Some(GetOptions::new().with_keys_only())));
        for &s in &part.shards {
            let key = who.keys.owner(&part.job, s);
            compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            reads.push(TxnOp::get(key.clone(), None));
            ops.push(TxnOp::get(who.keys.cursor(&part.job, s), None));
            ops.push(TxnOp::get(who.keys.running(&part.job, s), None));
            ops.push(TxnOp::put(
                key,
                owner.clone(),
                Some(PutOptions::new().with_lease(who.lease.get())),
            ));
            let cursor = who.keys.cursor(&part.job, s);
            let unless_unreleased =
                Compare::value(cursor.clone(), CompareOp::NotEqual, claimed.clone());
            ops.push(TxnOp::txn(
                Txn::new().when([unless_unreleased]).and_then([TxnOp::put(
                    cursor,
                    claimed.clone(),
                    None,
                )]),
            ));
        }
    }
    let txn = Txn::new().when(compares).and_then(ops).or_else(reads);
    let resp = bounded("claim", who.timeout, client.clone().txn(txn)).await?;
    let responses = resp.op_responses();
    if !resp.succeeded() {
        let read_at = resp.header().map_or(0, |h| h.revision());
        return Ok(Answer::Refused(refusals(parts, &responses), read_at));
    }
    let token = resp.header().map_or(0, |h| h.revision());
    let mut i = 0;
    let won = parts
        .iter()
        .map(|part| {
            part.shards
                .iter()
                .map(|&s| {
                    let won = ClaimResult::Won {
                        token: Token(token),
                        cursor: got(&responses, OPS_PER_SHARD * i, "cursor"),
                        running: got(&responses, OPS_PER_SHARD * i + 1, "running"),
                    };
                    i += 1;
                    (s, won)
                })
                .collect()
        })
        .collect();
    Ok(Answer::Won(won))
}

/// Reads the refusal branch: per part its page's, its stamp's and its config's gets, then one
/// get per shard.
fn refusals(parts: &[ClaimPart], responses: &[TxnOpResponse]) -> Vec<Refusal> {
    let mut reads = responses.iter();
    parts
        .iter()
        .map(|part| {
            let seen = |kv: Option<&etcd_client::KeyValue>| {
                kv.is_some_and(|kv| kv.mod_revision() == part.assignment_revision)
            };
            let page = seen(first_kv(reads.next()));
            let stamp = seen(first_kv(reads.next()));
            let (stale, unstamped) = (!page, page && !stamp);
            let gone = first_kv(reads.next()).is_none();
            let holders = part
                .shards
                .iter()
                .map(|_| first_kv(reads.next()).map(holder))
                .collect();
            Refusal {
                stale,
                unstamped,
                gone,
                holders,
            }
        })
        .collect()
}

fn first_kv(resp: Option<&TxnOpResponse>) -> Option<&etcd_client::KeyValue> {
    match resp {
        Some(TxnOpResponse::Get(get)) => get.kvs().first(),
        _ => None,
    }
}

/// The owner key found by a refusal, read as the watch's listing reads it.
fn holder(kv: &etcd_client::KeyValue) -> SeenOwner {
    let key = String::from_utf8_lossy(kv.key());
    crate::runtime::observe::seen_owner(&key, kv, |n| n.into())
}
