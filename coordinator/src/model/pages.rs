//! `assigned/<instance>/<page>`: the assignments as they are stored, one instance at a time.
//!
//! The leader plans per job ([`AssignmentRecord`], kept in its memory), but writes per
//! instance: the jobs of the namespace are split into [`PAGES`] pages by a hash of their name
//! ([`page_of`]), and each page of each instance holds that instance's shards of those jobs.
//! An agent watches only its own pages (`assigned/<me>/`), and a change that touches 4k jobs
//! (a crash at 10k jobs × 8 shards over 20 agents) is a few hundred page writes, not 4k job
//! records each sent to every agent. [`records_of`] turns the pages back into per-job
//! records (a new leader, the CLI); [`PageEntry::of`] is one instance's part of a record.
//! The shards assigned to nobody (no instance eligible, a one-shot's shard done) have pages
//! of their own, `unassigned/<page>`, read by the leader and the CLI only: with them a job's
//! generation and total survive a change of leader even when no instance holds any of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shardjob_sharding::{Assignment, InstanceId};

use super::{AssignmentRecord, DecodeError, MAX_TOTAL, decode};

/// Pages per instance. Part of the key layout: changing it moves every job to another page.
pub const PAGES: u16 = 16;

/// The page `job` is stored in (FNV-1a of its name: stable across versions and machines).
pub fn page_of(job: &str) -> u16 {
    (shardjob_sharding::hash::fnv1a64(&[job.as_bytes()]) % u64::from(PAGES)) as u16
}

/// One page of one instance: `{"jobs":{"orders":{"generation":3,"total":8,"shards":[0,5]}}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedPage {
    pub jobs: BTreeMap<String, PageEntry>,
}

/// One instance's part of one job's assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    /// The job's assignment generation.
    pub generation: u64,
    /// The job's shard count in that assignment.
    pub total: u32,
    /// The shards this instance is assigned, ascending.
    pub shards: Vec<u32>,
}

impl PageEntry {
    /// `instance`'s part of `record`, `None` when the record gives it no shard.
    pub fn of(record: &AssignmentRecord, instance: &InstanceId) -> Option<Self> {
        let index = record.instances.binary_search(instance).ok()? as u32;
        let shards: Vec<u32> = (0..record.owners.len() as u32)
            .filter(|&s| record.owners[s as usize] == Some(index))
            .collect();
        (!shards.is_empty()).then_some(Self {
            generation: record.generation,
            total: record.owners.len() as u32,
            shards,
        })
    }

    /// The shards of `record` assigned to nobody, `None` when every shard has an instance.
    pub fn unassigned(record: &AssignmentRecord) -> Option<Self> {
        let shards: Vec<u32> = (0..record.owners.len() as u32)
            .filter(|&s| record.owners[s as usize].is_none())
            .collect();
        (!shards.is_empty()).then_some(Self {
            generation: record.generation,
            total: record.owners.len() as u32,
            shards,
        })
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=MAX_TOTAL).contains(&self.total) {
            return Err(format!("total {} is outside 1..={MAX_TOTAL}", self.total));
        }
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        if !self.shards.windows(2).all(|w| w[0] < w[1]) {
            return Err("shards are not ascending and distinct".into());
        }
        match self.shards.last() {
            Some(&last) if last >= self.total => {
                Err(format!("shard {last} is not below total {}", self.total))
            }
            _ => Ok(()),
        }
    }
}

/// Parses and checks the page stored under `key` (every job named validly, every entry's
/// shards ascending and below its total).
pub fn decode_page(key: &str, value: &[u8]) -> Result<AssignedPage, DecodeError> {
    let page: AssignedPage = decode(key, "assigned page", value)?;
    for (job, entry) in &page.jobs {
        let bad = shardjob_sharding::validate_name("job", job)
            .map_err(|e| e.to_string())
            .and_then(|()| entry.check())
            .err();
        if let Some(cause) = bad {
            return Err(DecodeError::Invalid {
                key: key.to_owned(),
                what: "assigned page",
                cause: format!("job {job}: {cause}"),
            });
        }
    }
    Ok(page)
}

/// The per-job records `pages` describe, each page with its holder (`None`: the page of
/// shards assigned to nobody).
///
/// The pages of one pass are written in several txns, so a leader that dies between two of
/// them leaves a shard named on two pages: it goes to the entry of the higher generation (the
/// later plan; a tie to an instance over nobody). A job's generation and total are its
/// entries' highest.
pub fn records_of<'a>(
    pages: impl IntoIterator<Item = (Option<&'a InstanceId>, &'a AssignedPage)>,
) -> BTreeMap<String, AssignmentRecord> {
    struct Merged {
        generation: u64,
        /// Per shard: the generation that named it, and the instance (`None`: nobody).
        owners: Vec<Option<(u64, Option<InstanceId>)>>,
    }
    let mut jobs: BTreeMap<&str, Merged> = BTreeMap::new();
    for (holder, page) in pages {
        for (job, entry) in &page.jobs {
            let m = jobs.entry(job.as_str()).or_insert_with(|| Merged {
                generation: 0,
                owners: Vec::new(),
            });
            m.generation = m.generation.max(entry.generation);
            if m.owners.len() < entry.total as usize {
                m.owners.resize(entry.total as usize, None);
            }
            for &s in &entry.shards {
                let slot = &mut m.owners[s as usize];
                let wins = match slot {
                    None => true,
                    Some((g, by)) => {
                        entry.generation > *g || (entry.generation == *g && by.is_none())
                    }
                };
                if wins {
                    *slot = Some((entry.generation, holder.cloned()));
                }
            }
        }
    }
    jobs.into_iter()
        .map(|(job, m)| {
            let owners = m
                .owners
                .into_iter()
                .map(|o| o.and_then(|(_, id)| id))
                .collect();
            let record =
                AssignmentRecord::from_assignment(m.generation, &Assignment::from_owners(owners));
            (job.to_owned(), record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn record(generation: u64, owners: &[&str]) -> AssignmentRecord {
        AssignmentRecord::of_names(generation, owners)
    }

    /// Every holder's pages (one page each: the page number does not matter here).
    fn pages_of(
        records: &BTreeMap<String, AssignmentRecord>,
    ) -> BTreeMap<Option<InstanceId>, AssignedPage> {
        let mut pages: BTreeMap<Option<InstanceId>, AssignedPage> = BTreeMap::new();
        for (job, r) in records {
            for i in &r.instances {
                let entry = PageEntry::of(r, i).expect("a listed instance has shards");
                let page = pages.entry(Some(i.clone())).or_default();
                page.jobs.insert(job.clone(), entry);
            }
            if let Some(entry) = PageEntry::unassigned(r) {
                pages
                    .entry(None)
                    .or_default()
                    .jobs
                    .insert(job.clone(), entry);
            }
        }
        pages
    }

    #[test]
    fn an_instances_part_and_back_to_the_records() {
        let r = record(4, &["b", "a", "-", "b"]);
        assert_eq!(
            PageEntry::of(&r, &id("b")),
            Some(PageEntry {
                generation: 4,
                total: 4,
                shards: vec![0, 3]
            })
        );
        assert_eq!(PageEntry::of(&r, &id("c")), None);
        let records: BTreeMap<String, AssignmentRecord> = [
            ("j".to_owned(), r),
            ("k".to_owned(), record(1, &["a"])),
            // Nobody at the end, and a job nobody holds at all (a done one-shot).
            ("l".to_owned(), record(2, &["c", "-", "-"])),
            ("m".to_owned(), record(9, &["-", "-"])),
        ]
        .into();
        let pages = pages_of(&records);
        assert_eq!(
            records_of(pages.iter().map(|(h, p)| (h.as_ref(), p))),
            records
        );
    }

    #[test]
    fn a_shard_on_two_pages_goes_to_the_later_generation() {
        // The leader moved shard 1 from a to b (generation 5) and died after writing b's page.
        let stale = AssignedPage {
            jobs: [(
                "j".to_owned(),
                PageEntry {
                    generation: 4,
                    total: 2,
                    shards: vec![0, 1],
                },
            )]
            .into(),
        };
        let fresh = AssignedPage {
            jobs: [(
                "j".to_owned(),
                PageEntry {
                    generation: 5,
                    total: 2,
                    shards: vec![1],
                },
            )]
            .into(),
        };
        let (a, b) = (id("a"), id("b"));
        for order in [
            [(Some(&a), &stale), (Some(&b), &fresh)],
            [(Some(&b), &fresh), (Some(&a), &stale)],
        ] {
            assert_eq!(records_of(order)["j"], record(5, &["a", "b"]));
        }
    }

    #[test]
    fn pages_that_break_a_rule_are_refused_with_the_key_and_job() {
        let key = "/shardjob/ns/assigned/a/3";
        let ok = br#"{"jobs":{"j":{"generation":1,"total":4,"shards":[0,3]}}}"#;
        assert_eq!(decode_page(key, ok).unwrap().jobs["j"].shards, [0, 3]);
        for (value, want) in [
            (
                &br#"{"jobs":{"j":{"generation":1,"total":4,"shards":[4]}}}"#[..],
                "shard 4 is not below total 4",
            ),
            (
                br#"{"jobs":{"j":{"generation":1,"total":4,"shards":[2,1]}}}"#,
                "not ascending",
            ),
            (
                br#"{"jobs":{"j":{"generation":1,"total":4,"shards":[]}}}"#,
                "no shards",
            ),
            (
                br#"{"jobs":{"j":{"generation":1,"total":0,"shards":[0]}}}"#,
                "total 0",
            ),
            (
                br#"{"jobs":{"a/b":{"generation":1,"total":1,"shards":[0]}}}"#,
                "job a/b",
            ),
            (b"{nope", "not a valid assigned page"),
        ] {
            let err = decode_page(key, value).unwrap_err().to_string();
            assert!(err.starts_with(key) && err.contains(want), "{err}");
        }
    }

    #[test]
    fn pages_spread_jobs_and_never_change() {
        // Part of the key layout: a job's page must be the same for every version.
        // (FNV-1a 64 of the name and a 0xff terminator, modulo 16.)
        assert_eq!(["orders", "a", "job-00001"].map(page_of), [9, 9, 11]);
        let mut per_page = [0u32; PAGES as usize];
        for i in 0..16_000 {
            per_page[page_of(&format!("job-{i:05}")) as usize] += 1;
        }
        assert!(
            per_page.iter().all(|&n| (800..1200).contains(&n)),
            "{per_page:?}"
        );
    }
}
