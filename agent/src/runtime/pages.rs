//! [`MyPages`]: this agent's `assigned/<me>/<page>` pages, turned into the engine's per-job
//! inputs. A page holds every job of that page with a shard assigned here; a job that leaves
//! it is no longer assigned here at all, so the jobs a page held last are remembered (only
//! their names) to tell the engine which ones left.

use shardjob_coordinator::model::AssignedPage;

use crate::engine::{Input, Listing};
use crate::hash::FastMap;

/// The jobs each of my pages held at its last put.
#[derive(Debug, Default)]
pub(crate) struct MyPages {
    jobs: FastMap<u16, Box<[String]>>,
}

impl MyPages {
    /// Page `page` now says `value` (read at `revision`): every job on it is put (with the
    /// page's revision, which its claims are guarded by), every job that left it deleted.
    pub(crate) fn put(&mut self, page: u16, value: AssignedPage, revision: i64) -> Vec<Input> {
        let old = self.jobs.remove(&page).unwrap_or_default();
        let mut inputs: Vec<Input> = old
            .into_vec()
            .into_iter()
            .filter(|job| !value.jobs.contains_key(job))
            .map(|job| Input::AssignmentDeleted { job })
            .collect();
        let names: Box<[String]> = value.jobs.keys().cloned().collect();
        inputs.extend(
            value
                .jobs
                .into_iter()
                .map(|(job, entry)| Input::AssignmentPut {
                    job,
                    entry,
                    revision,
                }),
        );
        if !names.is_empty() {
            self.jobs.insert(page, names);
        }
        inputs
    }

    /// Page `page` is gone: nothing of its jobs is assigned here.
    pub(crate) fn delete(&mut self, page: u16) -> Vec<Input> {
        let old = self.jobs.remove(&page).unwrap_or_default();
        old.into_vec()
            .into_iter()
            .map(|job| Input::AssignmentDeleted { job })
            .collect()
    }

    /// All my pages as listed (each with its revision): the whole of what is assigned here.
    pub(crate) fn relist(&mut self, pages: Vec<(u16, AssignedPage, i64)>) -> Listing {
        self.jobs.clear();
        let mut all = Vec::new();
        for (page, value, revision) in pages {
            let names: Box<[String]> = value.jobs.keys().cloned().collect();
            all.extend(value.jobs.into_iter().map(|(job, e)| (job, e, revision)));
            if !names.is_empty() {
                self.jobs.insert(page, names);
            }
        }
        Listing::Assignments(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardjob_coordinator::model::PageEntry;

    fn page(jobs: &[(&str, &[u32])]) -> AssignedPage {
        AssignedPage {
            jobs: jobs
                .iter()
                .map(|(j, shards)| {
                    let entry = PageEntry {
                        generation: 2,
                        total: 8,
                        shards: shards.to_vec(),
                    };
                    (j.to_string(), entry)
                })
                .collect(),
        }
    }

    /// (job, Some(shards, revision)) for a put, (job, None) for a delete.
    type Seen = (String, Option<(Vec<u32>, i64)>);

    fn seen(inputs: &[Input]) -> Vec<Seen> {
        inputs
            .iter()
            .map(|i| match i {
                Input::AssignmentPut {
                    job,
                    entry,
                    revision,
                } => (job.clone(), Some((entry.shards.clone(), *revision))),
                Input::AssignmentDeleted { job } => (job.clone(), None),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_page_puts_its_jobs_and_deletes_those_that_left_it() {
        let mut p = MyPages::default();
        let first = p.put(3, page(&[("a", &[0]), ("b", &[1, 2])]), 10);
        assert_eq!(
            seen(&first),
            [
                ("a".into(), Some((vec![0], 10))),
                ("b".into(), Some((vec![1, 2], 10)))
            ]
        );
        // b left page 3; a is put again with the page's new revision; another page is apart.
        assert_eq!(
            seen(&p.put(5, page(&[("c", &[4])]), 11)),
            [("c".into(), Some((vec![4], 11)))]
        );
        let second = p.put(3, page(&[("a", &[0])]), 12);
        assert_eq!(
            seen(&second),
            [("b".into(), None), ("a".into(), Some((vec![0], 12)))]
        );
        assert_eq!(seen(&p.delete(3)), [("a".into(), None)]);
        assert_eq!(seen(&p.delete(3)), []);
        // A re-list replaces everything: page 5's c is in it only if listed.
        let Listing::Assignments(all) = p.relist(vec![(3, page(&[("d", &[7])]), 20)]) else {
            panic!("not an assignments listing");
        };
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].0.as_str(), all[0].2), ("d", 20));
        assert_eq!(seen(&p.delete(5)), [], "c outlived the re-list");
        assert_eq!(seen(&p.delete(3)), [("d".into(), None)]);
    }
}
