//! [`Stored`]: which `assigned/` pages etcd holds (a hash of each value), and which page writes
//! make them say what the leader's per-job assignments say. Pure: the runner lists and
//! watches, the [`super::Rebalancer`] routes page events here and asks for the writes of a pass.
//!
//! A pass writes the pages its changed jobs touch: for each changed job, the page it is in,
//! of every instance its old or new assignment names. A page is written whole (every job of
//! that page the instance holds shards of) and only when it differs from what is stored; a
//! page left with no job is deleted. Pages deleted or changed by hand, and at a new leader's
//! start every stored page (a leader that died mid-pass may have left some stale), are
//! *repairs*: recomputed at the next pass and rewritten if they differ. The pages of shards
//! assigned to nobody (`unassigned/<page>`) are kept the same way, with no instance.

use std::collections::{BTreeMap, BTreeSet};

use shardjob_sharding::InstanceId;
use shardjob_sharding::hash::fnv1a64;

use super::plan::Plan;
use crate::keys::{KeyKind, Keys};
use crate::model::{
    AssignedPage, AssignmentRecord, PAGES, PageEntry, decode_page, page_of, records_of,
};

/// One page of one holder: an instance (`assigned/<instance>/<page>`) or nobody
/// (`unassigned/<page>`).
pub type PageKey = (Option<InstanceId>, u16);

/// One page to put (`Some`, its encoded value) or delete (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageWrite {
    pub holder: Option<InstanceId>,
    pub page: u16,
    pub value: Option<Vec<u8>>,
}

impl PageWrite {
    /// The key it writes.
    pub fn key(&self, keys: &Keys) -> String {
        match &self.holder {
            Some(i) => keys.assigned(i.as_str(), self.page),
            None => keys.unassigned(self.page),
        }
    }

    /// The stamp written with it (an instance's page only; nobody claims the unassigned).
    pub fn stamp_key(&self, keys: &Keys) -> Option<String> {
        let i = self.holder.as_ref()?;
        Some(keys.stamp(i.as_str(), self.page))
    }

    /// Its ops: the page's put or delete, and its stamp's, to go in one txn.
    pub fn ops(&self, keys: &Keys) -> impl Iterator<Item = etcd_client::TxnOp> {
        let op = |key: String, value: Vec<u8>| match self.value {
            Some(_) => etcd_client::TxnOp::put(key, value, None),
            None => etcd_client::TxnOp::delete(key, None),
        };
        let page = op(self.key(keys), self.value.clone().unwrap_or_default());
        let stamp = self.stamp_key(keys).map(|key| op(key, Vec::new()));
        std::iter::once(page).chain(stamp)
    }
}

/// What the leader knows of the stored pages.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Every stored page, by the hash of its value.
    pages: BTreeMap<PageKey, u64>,
    /// Pages to recompute and rewrite if they differ, whatever the next pass changes.
    repair: BTreeSet<PageKey>,
}

/// The stored pages of a listing, decoded.
#[derive(Debug)]
pub struct Loaded {
    pub stored: Stored,
    /// The per-job records the pages describe.
    pub records: BTreeMap<String, AssignmentRecord>,
    /// Keys whose value was refused, with why.
    pub problems: Vec<(String, String)>,
}

impl Stored {
    /// The pages listed at a new leader's start; every one of them is checked at its first pass.
    pub fn load(keys: &Keys, entries: &[(String, Vec<u8>)]) -> Loaded {
        let mut stored = Stored::default();
        let mut pages: Vec<(Option<InstanceId>, AssignedPage)> = Vec::new();
        let mut problems = Vec::new();
        for (key, value) in entries {
            let Some(page_key) = page_key(keys, key) else {
                problems.push((key.clone(), "not an assigned page key".to_owned()));
                continue;
            };
            stored.pages.insert(page_key.clone(), hash(value));
            stored.repair.insert(page_key.clone());
            match decode_page(key, value) {
                Ok(page) => pages.push((page_key.0, page)),
                Err(e) => problems.push((key.clone(), e.to_string())),
            }
        }
        let records = records_of(pages.iter().map(|(i, p)| (i.as_ref(), p)));
        Loaded {
            stored,
            records,
            problems,
        }
    }

    /// A page put seen on the watch: the leader's own write coming back changes nothing; any
    /// other value (written by hand) is repaired.
    pub fn on_put(&mut self, keys: &Keys, key: &str, value: &[u8]) {
        if let Some(k) = page_key(keys, key) {
            if self.pages.get(&k) != Some(&hash(value)) {
                self.pages.insert(k.clone(), hash(value));
                self.repair.insert(k);
            }
        }
    }

    /// A page delete seen on the watch (by hand: the leader's own deletes are already gone).
    pub fn on_delete(&mut self, keys: &Keys, key: &str) {
        if let Some(k) = page_key(keys, key) {
            if self.pages.remove(&k).is_some() {
                self.repair.insert(k);
            }
        }
    }

    /// A fresh listing of every page under `prefix` (`assigned/` or `unassigned/`, after a
    /// compaction): what differs is repaired.
    pub fn on_reset(&mut self, keys: &Keys, prefix: &str, entries: &[(String, Vec<u8>)]) {
        let unassigned = prefix == keys.unassigned_prefix();
        let listed: BTreeMap<PageKey, u64> = entries
            .iter()
            .filter_map(|(k, v)| Some((page_key(keys, k)?, hash(v))))
            .collect();
        let mine = |k: &PageKey| k.0.is_none() == unassigned;
        let all: BTreeSet<PageKey> = listed
            .keys()
            .chain(self.pages.keys().filter(|k| mine(k)))
            .cloned()
            .collect();
        for k in all {
            if listed.get(&k) != self.pages.get(&k) {
                self.repair.insert(k);
            }
        }
        self.pages.retain(|k, _| !mine(k));
        self.pages.extend(listed);
    }

    /// True when some page waits to be repaired.
    pub fn needs_repair(&self) -> bool {
        !self.repair.is_empty()
    }

    /// The page writes that make the stored pages say what `assignments` with `plan` applied
    /// say: the pages `plan` touches, and those waiting for repair.
    pub fn writes(
        &self,
        assignments: &BTreeMap<String, AssignmentRecord>,
        plan: &Plan,
    ) -> Result<Vec<PageWrite>, String> {
        let mut touched: BTreeSet<PageKey> = self.repair.clone();
        let mut add = |job: &str, record: Option<&AssignmentRecord>| {
            let Some(record) = record else { return };
            let page = page_of(job);
            for i in &record.instances {
                touched.insert((Some(i.clone()), page));
            }
            if record.owners.iter().any(Option::is_none) {
                touched.insert((None, page));
            }
        };
        for (job, new) in &plan.writes {
            add(job, Some(new));
            add(job, assignments.get(job));
        }
        for job in plan.deletes.iter().chain(&plan.retire) {
            add(job, assignments.get(job));
        }
        if touched.is_empty() {
            return Ok(Vec::new());
        }
        // Per page number, the touched pages' contents by holder; names borrowed, not copied
        // (a crash at 10k jobs x 8 shards over 20 agents touches every page: ~80k entries).
        let mut by_page: Vec<BTreeMap<Option<&InstanceId>, BTreeMap<&str, PageEntry>>> =
            (0..PAGES).map(|_| BTreeMap::new()).collect();
        for (holder, page) in &touched {
            by_page[usize::from(*page)].insert(holder.as_ref(), BTreeMap::new());
        }
        let planned: BTreeSet<&str> = plan
            .writes
            .iter()
            .map(|(j, _)| j.as_str())
            .chain(plan.deletes.iter().chain(&plan.retire).map(String::as_str))
            .collect();
        let after = assignments
            .iter()
            .filter(|(job, _)| !planned.contains(job.as_str()))
            .chain(plan.writes.iter().map(|(j, r)| (j, r)));
        for (job, record) in after {
            let holders = &mut by_page[usize::from(page_of(job))];
            if holders.is_empty() {
                continue;
            }
            for i in &record.instances {
                if let (Some(content), Some(entry)) =
                    (holders.get_mut(&Some(i)), PageEntry::of(record, i))
                {
                    content.insert(job, entry);
                }
            }
            if let (Some(content), Some(entry)) =
                (holders.get_mut(&None), PageEntry::unassigned(record))
            {
                content.insert(job, entry);
            }
        }
        let mut writes = Vec::new();
        for (page, holders) in by_page.iter().enumerate() {
            for (holder, jobs) in holders {
                let value = if jobs.is_empty() {
                    None
                } else {
                    // The same JSON as an `AssignedPage` of these jobs.
                    let encoded =
                        serde_json::to_vec(&PageRef { jobs }).map_err(|e| e.to_string())?;
                    Some(encoded)
                };
                let k = (holder.cloned(), page as u16);
                if self.pages.get(&k).copied() != value.as_deref().map(hash) {
                    writes.push(PageWrite {
                        holder: k.0,
                        page: k.1,
                        value,
                    });
                }
            }
        }
        Ok(writes)
    }

    /// The writes of a pass went through, or every page in question is up to date: nothing
    /// waits for repair.
    pub fn written(&mut self, writes: &[PageWrite]) {
        for w in writes {
            let k = (w.holder.clone(), w.page);
            match &w.value {
                Some(v) => self.pages.insert(k, hash(v)),
                None => self.pages.remove(&k),
            };
        }
        self.repair.clear();
    }

    /// The writes of a pass failed, perhaps half-way: what each page holds now is unknown,
    /// so every one of them is checked again at the next pass.
    pub fn write_failed(&mut self, writes: &[PageWrite]) {
        for w in writes {
            let k = (w.holder.clone(), w.page);
            self.pages.remove(&k);
            self.repair.insert(k);
        }
    }
}

/// An [`AssignedPage`] of borrowed names, encoded the same.
#[derive(serde::Serialize)]
struct PageRef<'a> {
    jobs: &'a BTreeMap<&'a str, PageEntry>,
}

fn page_key(keys: &Keys, key: &str) -> Option<PageKey> {
    match keys.parse(key)? {
        KeyKind::Assigned { instance, page } => Some((Some(InstanceId::new(instance).ok()?), page)),
        KeyKind::Unassigned { page } => Some((None, page)),
        _ => None,
    }
}

fn hash(value: &[u8]) -> u64 {
    fnv1a64(&[value])
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

    fn plan(writes: &[(&str, AssignmentRecord)], deletes: &[&str]) -> Plan {
        Plan {
            writes: writes
                .iter()
                .map(|(j, r)| (j.to_string(), r.clone()))
                .collect(),
            deletes: deletes.iter().map(|j| j.to_string()).collect(),
            moves: 0,
            wake_at: None,
            retire: vec![],
        }
    }

    /// Two job names in the same page, and one in another.
    fn names() -> (String, String, String) {
        let first = "job-0".to_owned();
        let same = (1..)
            .map(|i| format!("job-{i}"))
            .find(|j| page_of(j) == page_of(&first))
            .unwrap();
        let other = (1..)
            .map(|i| format!("job-{i}"))
            .find(|j| page_of(j) != page_of(&first))
            .unwrap();
        (first, same, other)
    }

    fn decoded(w: &PageWrite) -> AssignedPage {
        serde_json::from_slice(w.value.as_ref().expect("a put")).unwrap()
    }

    fn keys() -> Keys {
        Keys::new("ns").unwrap()
    }

    /// Applies `writes` to `store` as etcd would, and returns the listing etcd would give.
    fn listing(
        store: &mut BTreeMap<String, Vec<u8>>,
        writes: &[PageWrite],
    ) -> Vec<(String, Vec<u8>)> {
        for w in writes {
            let key = w.key(&keys());
            match &w.value {
                Some(v) => store.insert(key, v.clone()),
                None => store.remove(&key),
            };
        }
        store.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn a_pass_writes_the_touched_pages_whole_and_a_new_leader_reads_the_records_back() {
        let (j, same, other) = names();
        let mut stored = Stored::default();
        let mut assignments = BTreeMap::new();
        let first = plan(
            &[
                (&j, record(1, &["a", "b"])),
                (&same, record(1, &["a"])),
                (&other, record(1, &["b"])),
            ],
            &[],
        );
        let writes = stored.writes(&assignments, &first).unwrap();
        // a and b in j's page, b in the other's.
        assert_eq!(writes.len(), 3, "{writes:?}");
        let a_page = writes.iter().find(|w| w.holder == Some(id("a"))).unwrap();
        let mut both = vec![j.clone(), same.clone()];
        both.sort();
        assert_eq!(decoded(a_page).jobs.into_keys().collect::<Vec<_>>(), both);
        stored.written(&writes);
        for (job, r) in first.writes {
            assignments.insert(job, r);
        }
        let mut etcd = BTreeMap::new();
        let listed = listing(&mut etcd, &writes);
        let loaded = Stored::load(&keys(), &listed);
        assert_eq!(loaded.records, assignments);
        assert!(loaded.problems.is_empty());

        // Moving `same` from a to b rewrites a's and b's page of that page only.
        let second = plan(&[(&same, record(2, &["b"]))], &[]);
        let writes = stored.writes(&assignments, &second).unwrap();
        let mut touched: Vec<(String, u16)> = writes
            .iter()
            .map(|w| {
                (
                    w.holder.as_ref().map_or("-".into(), |i| i.to_string()),
                    w.page,
                )
            })
            .collect();
        touched.sort();
        assert_eq!(
            touched,
            [("a".to_owned(), page_of(&j)), ("b".to_owned(), page_of(&j))]
        );
        let b_page = writes.iter().find(|w| w.holder == Some(id("b"))).unwrap();
        assert_eq!(decoded(b_page).jobs[&same].generation, 2);
        assert!(decoded(b_page).jobs.contains_key(&j), "b's page lost j");
        stored.written(&writes);
        listing(&mut etcd, &writes);
        assignments.insert(same.clone(), record(2, &["b"]));

        // Deleting the only job of a's page deletes the page.
        let third = plan(&[], &[&j]);
        let writes = stored.writes(&assignments, &third).unwrap();
        let a_write = writes.iter().find(|w| w.holder == Some(id("a"))).unwrap();
        assert_eq!(a_write.value, None);
        stored.written(&writes);
        assignments.remove(&j);
        let listed = listing(&mut etcd, &writes);
        assert!(
            !listed.iter().any(|(k, _)| k.contains("/assigned/a/")),
            "{listed:?}"
        );
        assert_eq!(Stored::load(&keys(), &listed).records, assignments);
    }

    #[test]
    fn shards_assigned_to_nobody_have_their_own_page_so_the_generation_survives() {
        let (j, ..) = names();
        let mut stored = Stored::default();
        let p = plan(&[(&j, record(7, &["a", "-"]))], &[]);
        let writes = stored.writes(&BTreeMap::new(), &p).unwrap();
        let nobody = writes
            .iter()
            .find(|w| w.holder.is_none())
            .expect("an unassigned page");
        assert_eq!(nobody.key(&keys()), keys().unassigned(page_of(&j)));
        assert_eq!(decoded(nobody).jobs[&j].shards, [1]);
        stored.written(&writes);
        let mut etcd = BTreeMap::new();
        listing(&mut etcd, &writes);
        // Its last shard done: nobody holds any of it, and a new leader still knows it.
        let assignments: BTreeMap<String, AssignmentRecord> = p.writes.iter().cloned().collect();
        let p = plan(&[(&j, record(8, &["-", "-"]))], &[]);
        let writes = stored.writes(&assignments, &p).unwrap();
        assert_eq!(
            writes.len(),
            2,
            "a's page deleted, nobody's rewritten: {writes:?}"
        );
        let listed = listing(&mut etcd, &writes);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            Stored::load(&keys(), &listed).records[&j],
            record(8, &["-", "-"])
        );
    }

    #[test]
    fn nothing_is_written_when_the_pages_already_say_it() {
        let (j, ..) = names();
        let mut stored = Stored::default();
        let p = plan(&[(&j, record(1, &["a"]))], &[]);
        let writes = stored.writes(&BTreeMap::new(), &p).unwrap();
        stored.written(&writes);
        let assignments: BTreeMap<String, AssignmentRecord> = p.writes.iter().cloned().collect();
        // The same record planned again (a pass for another reason): no write.
        assert_eq!(stored.writes(&assignments, &p).unwrap(), []);
        // The echo of the leader's own write changes nothing.
        let key = keys().assigned("a", page_of(&j));
        stored.on_put(&keys(), &key, writes[0].value.as_ref().unwrap());
        assert!(!stored.needs_repair());
    }

    #[test]
    fn a_page_deleted_or_changed_by_hand_is_rewritten_and_a_failed_write_checked_again() {
        let (j, ..) = names();
        let mut stored = Stored::default();
        let p = plan(&[(&j, record(1, &["a"]))], &[]);
        let writes = stored.writes(&BTreeMap::new(), &p).unwrap();
        stored.written(&writes);
        let assignments: BTreeMap<String, AssignmentRecord> = p.writes.iter().cloned().collect();
        let key = keys().assigned("a", page_of(&j));
        let nothing = plan(&[], &[]);

        stored.on_delete(&keys(), &key);
        assert!(stored.needs_repair());
        let again = stored.writes(&assignments, &nothing).unwrap();
        assert_eq!(again, writes);
        stored.written(&again);

        stored.on_put(&keys(), &key, br#"{"jobs":{}}"#);
        assert_eq!(stored.writes(&assignments, &nothing).unwrap(), writes);
        stored.written(&writes);

        // A page of an instance that has nothing (written by hand) is deleted.
        let stray = keys().assigned("z", 0);
        stored.on_put(&keys(), &stray, br#"{"jobs":{}}"#);
        let w = stored.writes(&assignments, &nothing).unwrap();
        assert_eq!(
            (w.len(), &w[0].holder, &w[0].value),
            (1, &Some(id("z")), &None)
        );
        stored.written(&w);

        stored.write_failed(&writes);
        assert_eq!(stored.writes(&assignments, &nothing).unwrap(), writes);
    }

    #[test]
    fn a_new_leader_checks_every_stored_page_and_repairs_a_half_written_pass() {
        let (j, ..) = names();
        let page = page_of(&j);
        // The old leader moved shard 1 of j from a to b and died after writing b's page.
        let a = br#"{"jobs":{"J":{"generation":4,"total":2,"shards":[0,1]}}}"#;
        let b = br#"{"jobs":{"J":{"generation":5,"total":2,"shards":[1]}}}"#;
        let fix = |v: &[u8]| {
            String::from_utf8_lossy(v)
                .replace("\"J\"", &format!("{j:?}"))
                .into_bytes()
        };
        let listed = vec![
            (keys().assigned("a", page), fix(a)),
            (keys().assigned("b", page), fix(b)),
        ];
        let loaded = Stored::load(&keys(), &listed);
        assert_eq!(loaded.records[&j], record(5, &["a", "b"]));
        let writes = loaded
            .stored
            .writes(&loaded.records, &plan(&[], &[]))
            .unwrap();
        // a's page is rewritten without shard 1; b's already says what the record says.
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(decoded(&writes[0]).jobs[&j].shards, [0]);
        assert_eq!(writes[0].holder, Some(id("a")));
    }
}
