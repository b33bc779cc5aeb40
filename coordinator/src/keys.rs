//! The etcd key layout: every key shardjob reads or writes is built here, and only here.
//!
//! All keys live under one root, `<prefix><namespace>/` (default prefix `/shardjob/`), and are
//! grouped by type first, so each kind of watcher watches exactly one prefix:
//!
//! ```text
//! /shardjob/<ns>/instances/<instance>        lease-bound, written by the agent
//! /shardjob/<ns>/leader/<lease hex>          etcd Election API, name /shardjob/<ns>/leader
//! /shardjob/<ns>/jobs/<job>                  JobConfig
//! /shardjob/<ns>/assigned/<instance>/<page>  written by the leader only, fenced: the shards
//!                                            one instance holds of the jobs of one page
//! /shardjob/<ns>/stamps/<instance>/<page>    empty, written in the same txn as that page: a
//!                                            claim compares its revision, not the page's
//! /shardjob/<ns>/unassigned/<page>           the same for the shards assigned to nobody
//! /shardjob/<ns>/owners/<job>/<shard>        lease-bound; create_revision = fencing token
//! /shardjob/<ns>/running/<job>/<shard>       failover jobs: an execution in progress
//! /shardjob/<ns>/cursors/<job>/<shard>       last fire run by the previous owner
//! /shardjob/<ns>/done/<job>/<shard>          a one-shot's shard ran: when, how, where
//! /shardjob/<ns>/triggers/<job>              run every shard once now
//! /shardjob/<ns>/disabled/<instance>         drain: the leader assigns it nothing
//! /shardjob/<ns>/liveness/<instance>/<lease hex>/<epoch>
//!                                            lease-bound: who won a broken liveness stream
//! ```
//!
//! Every prefix that is watched or deleted ends in `/`, so job `a` never matches job `a-b`.

use std::fmt;

use shardjob_sharding::{NameError, validate_name};

/// Default key prefix; the namespace follows it.
pub const DEFAULT_PREFIX: &str = "/shardjob/";

/// What a key under the root is, parsed back from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Instance(String),
    Leader(String),
    Job(String),
    /// `assigned/<instance>/<page>`
    Assigned {
        instance: String,
        page: u16,
    },
    /// `stamps/<instance>/<page>`
    Stamp {
        instance: String,
        page: u16,
    },
    /// `unassigned/<page>`
    Unassigned {
        page: u16,
    },
    Owner {
        job: String,
        shard: u32,
    },
    Running {
        job: String,
        shard: u32,
    },
    Cursor {
        job: String,
        shard: u32,
    },
    Done {
        job: String,
        shard: u32,
    },
    Trigger(String),
    Disabled(String),
}

/// Builds (and parses) the keys of one namespace.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({})", self.root)
    }
}

impl Keys {
    /// Keys of `namespace` under [`DEFAULT_PREFIX`].
    pub fn new(namespace: &str) -> Result<Self, NameError> {
        Self::with_prefix(DEFAULT_PREFIX, namespace)
    }

    /// Keys of `namespace` under `prefix` (a `/` is added to the prefix when missing).
    pub fn with_prefix(prefix: &str, namespace: &str) -> Result<Self, NameError> {
        validate_name("namespace", namespace)?;
        let sep = if prefix.ends_with('/') { "" } else { "/" };
        Ok(Self {
            root: format!("{prefix}{sep}{namespace}/"),
        })
    }

    /// `<prefix><namespace>/`: everything of this namespace.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn under(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}/{rest}", self.root)
    }

    /// `<root><kind>/<job>/<shard>`, made in one allocation: every execution's context names
    /// its owner key, and ten thousand fires at one instant made it 20k formatted strings.
    fn shard_key(&self, kind: &str, job: &str, shard: u32) -> String {
        use std::fmt::Write;
        let mut key = String::with_capacity(self.root.len() + kind.len() + job.len() + 12);
        key.push_str(&self.root);
        key.push_str(kind);
        key.push('/');
        key.push_str(job);
        key.push('/');
        // Writing into a String cannot fail.
        let _ = write!(key, "{shard}");
        key
    }

    /// `instances/`
    pub fn instances_prefix(&self) -> String {
        self.under("instances", "")
    }
    /// `instances/<id>`
    pub fn instance(&self, id: &str) -> String {
        self.under("instances", id)
    }
    /// The Election API name: `<root>leader` (etcd appends `/<lease hex>` per candidate).
    pub fn election_name(&self) -> String {
        format!("{}leader", self.root)
    }
    /// `leader/`: the candidates' keys; the one with the lowest create revision leads.
    pub fn leader_prefix(&self) -> String {
        self.under("leader", "")
    }
    /// `liveness/`
    pub fn liveness_prefix(&self) -> String {
        self.under("liveness", "")
    }
    /// `liveness/<instance>/<lease hex>/<epoch>`: the verdict on stream `epoch` of that lease
    /// after it broke (the agent's "alive" or the leader's "dead", whichever came first).
    pub fn liveness(&self, instance: &str, lease: i64, epoch: u64) -> String {
        self.under("liveness", &format!("{instance}/{lease:x}/{epoch}"))
    }
    /// `jobs/`
    pub fn jobs_prefix(&self) -> String {
        self.under("jobs", "")
    }
    /// `jobs/<job>`
    pub fn job(&self, job: &str) -> String {
        self.under("jobs", job)
    }
    /// `assigned/`: every instance's pages.
    pub fn assigned_prefix(&self) -> String {
        self.under("assigned", "")
    }
    /// `assigned/<instance>/`: what one instance is assigned, all its pages (what its agent
    /// watches).
    pub fn assigned_to(&self, instance: &str) -> String {
        self.under("assigned", &format!("{instance}/"))
    }
    /// `assigned/<instance>/<page>`: its shards of the jobs of `page`
    /// ([`crate::model::page_of`]).
    pub fn assigned(&self, instance: &str, page: u16) -> String {
        self.under("assigned", &format!("{instance}/{page}"))
    }
    /// `stamps/`: every page's stamp.
    pub fn stamps_prefix(&self) -> String {
        self.under("stamps", "")
    }
    /// `stamps/<instance>/<page>`: an empty key the leader puts (and deletes) in the same txn
    /// as `assigned/<instance>/<page>`, so its mod revision is the page's. A claim compares
    /// this one: etcd reads a compared key's whole value, and a page can be kilobytes.
    pub fn stamp(&self, instance: &str, page: u16) -> String {
        self.under("stamps", &format!("{instance}/{page}"))
    }
    /// `unassigned/`: the pages of shards assigned to nobody.
    pub fn unassigned_prefix(&self) -> String {
        self.under("unassigned", "")
    }
    /// `unassigned/<page>`: the shards of the jobs of `page` that no instance is assigned (none
    /// eligible, or a one-shot's shard done), so a job's generation and total survive a leader.
    pub fn unassigned(&self, page: u16) -> String {
        self.under("unassigned", &page.to_string())
    }
    /// `owners/` (all jobs)
    pub fn owners_root(&self) -> String {
        self.under("owners", "")
    }
    /// `owners/<job>/`
    pub fn owners_prefix(&self, job: &str) -> String {
        self.under("owners", &format!("{job}/"))
    }
    /// `owners/<job>/<shard>`
    pub fn owner(&self, job: &str, shard: u32) -> String {
        self.shard_key("owners", job, shard)
    }
    /// `running/<job>/`
    pub fn running_prefix(&self, job: &str) -> String {
        self.under("running", &format!("{job}/"))
    }
    /// `running/<job>/<shard>`
    pub fn running(&self, job: &str, shard: u32) -> String {
        self.shard_key("running", job, shard)
    }
    /// `cursors/<job>/`
    pub fn cursors_prefix(&self, job: &str) -> String {
        self.under("cursors", &format!("{job}/"))
    }
    /// `cursors/<job>/<shard>`
    pub fn cursor(&self, job: &str, shard: u32) -> String {
        self.shard_key("cursors", job, shard)
    }
    /// `done/` (all jobs)
    pub fn done_root(&self) -> String {
        self.under("done", "")
    }
    /// `done/<job>/`
    pub fn done_prefix(&self, job: &str) -> String {
        self.under("done", &format!("{job}/"))
    }
    /// `done/<job>/<shard>`
    pub fn done(&self, job: &str, shard: u32) -> String {
        self.shard_key("done", job, shard)
    }
    /// `triggers/`
    pub fn triggers_prefix(&self) -> String {
        self.under("triggers", "")
    }
    /// `triggers/<job>`
    pub fn trigger(&self, job: &str) -> String {
        self.under("triggers", job)
    }
    /// `disabled/`
    pub fn disabled_prefix(&self) -> String {
        self.under("disabled", "")
    }
    /// `disabled/<instance>`
    pub fn disabled(&self, instance: &str) -> String {
        self.under("disabled", instance)
    }

    /// Every per-job prefix and key of `job`, for deleting a job completely.
    pub fn job_keys(&self, job: &str) -> JobKeys {
        JobKeys {
            config: self.job(job),
            trigger: self.trigger(job),
            prefixes: [
                self.owners_prefix(job),
                self.running_prefix(job),
                self.cursors_prefix(job),
                self.done_prefix(job),
            ],
        }
    }

    /// What `key` is, or `None` for a key outside this namespace or of no known shape.
    pub fn parse(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.root)?;
        let (kind, name) = rest.split_once('/')?;
        let valid = |s: &str| validate_name("name", s).is_ok();
        let sharded = |name: &str| -> Option<(String, u32)> {
            let (job, shard) = name.split_once('/')?;
            (valid(job) && !shard.starts_with('+'))
                .then(|| shard.parse().ok().map(|s| (job.to_owned(), s)))?
        };
        let page_number = |text: &str| -> Option<u16> {
            let page: u16 = text.parse().ok()?;
            // Only the page's own spelling: `07` or `+7` would be a second key for page 7.
            (page.to_string() == text && page < crate::model::PAGES).then_some(page)
        };
        if kind == "unassigned" {
            return page_number(name).map(|page| KeyKind::Unassigned { page });
        }
        if kind == "assigned" || kind == "stamps" {
            let (instance, text) = name.split_once('/')?;
            let page = page_number(text).filter(|_| valid(instance))?;
            let instance = instance.to_owned();
            return Some(if kind == "assigned" {
                KeyKind::Assigned { instance, page }
            } else {
                KeyKind::Stamp { instance, page }
            });
        }
        if matches!(kind, "owners" | "running" | "cursors" | "done") {
            let (job, shard) = sharded(name)?;
            return Some(match kind {
                "owners" => KeyKind::Owner { job, shard },
                "running" => KeyKind::Running { job, shard },
                "done" => KeyKind::Done { job, shard },
                _ => KeyKind::Cursor { job, shard },
            });
        }
        if !valid(name) {
            return None;
        }
        let name = name.to_owned();
        Some(match kind {
            "instances" => KeyKind::Instance(name),
            "leader" => KeyKind::Leader(name),
            "jobs" => KeyKind::Job(name),
            "triggers" => KeyKind::Trigger(name),
            "disabled" => KeyKind::Disabled(name),
            _ => return None,
        })
    }
}

/// The keys of one job (see [`Keys::job_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobKeys {
    pub config: String,
    pub trigger: String,
    /// `owners/<job>/`, `running/<job>/`, `cursors/<job>/`, `done/<job>/`.
    pub prefixes: [String; 4],
}

/// The end of the key range of every key starting with `prefix` (etcd's `prefix + 1`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_type_first_and_prefixes_end_in_slash() {
        let k = Keys::new("prod").unwrap();
        assert_eq!(k.instance("i1"), "/shardjob/prod/instances/i1");
        assert_eq!(k.election_name(), "/shardjob/prod/leader");
        assert_eq!(k.owner("orders", 3), "/shardjob/prod/owners/orders/3");
        assert_eq!(k.cursor("orders", 0), "/shardjob/prod/cursors/orders/0");
        assert_eq!(
            k.running("orders", u32::MAX),
            "/shardjob/prod/running/orders/4294967295"
        );
        assert_eq!(k.done("o-1", 12), "/shardjob/prod/done/o-1/12");
        assert_eq!(
            k.liveness("i1", 0x694d, 3),
            "/shardjob/prod/liveness/i1/694d/3"
        );
        for p in [
            k.instances_prefix(),
            k.jobs_prefix(),
            k.owners_prefix("a"),
            k.running_prefix("a"),
            k.cursors_prefix("a"),
            k.disabled_prefix(),
            k.assigned_prefix(),
            k.assigned_to("a"),
            k.unassigned_prefix(),
            k.stamps_prefix(),
        ] {
            assert!(p.ends_with('/'), "{p}");
        }
        // Job "a" never matches job "a-b".
        assert!(!k.owner("a-b", 1).starts_with(&k.owners_prefix("a")));
        // Nor instance "a" instance "a-b"'s pages.
        assert!(!k.assigned("a-b", 0).starts_with(&k.assigned_to("a")));
    }

    #[test]
    fn custom_prefix_and_bad_namespace() {
        let k = Keys::with_prefix("/apps/x", "ns").unwrap();
        assert_eq!(k.root(), "/apps/x/ns/");
        let err = Keys::new("a/b").unwrap_err().to_string();
        assert!(err.starts_with("namespace"), "{err}");
    }

    #[test]
    fn parse_round_trips_and_rejects_odd_shapes() {
        let k = Keys::new("ns").unwrap();
        let table = [
            (k.instance("i-1"), Some(KeyKind::Instance("i-1".into()))),
            (k.job("j"), Some(KeyKind::Job("j".into()))),
            (
                k.owner("j", 7),
                Some(KeyKind::Owner {
                    job: "j".into(),
                    shard: 7,
                }),
            ),
            (
                k.running("j", 0),
                Some(KeyKind::Running {
                    job: "j".into(),
                    shard: 0,
                }),
            ),
            (k.disabled("i"), Some(KeyKind::Disabled("i".into()))),
            (
                k.assigned("i-1", 15),
                Some(KeyKind::Assigned {
                    instance: "i-1".into(),
                    page: 15,
                }),
            ),
            (format!("{}assigned/i/16", k.root()), None),
            (format!("{}assigned/i/07", k.root()), None),
            (format!("{}assigned/i/+7", k.root()), None),
            (format!("{}assigned/i", k.root()), None),
            (
                k.stamp("i-1", 0),
                Some(KeyKind::Stamp {
                    instance: "i-1".into(),
                    page: 0,
                }),
            ),
            (format!("{}stamps/i/07", k.root()), None),
            (k.unassigned(3), Some(KeyKind::Unassigned { page: 3 })),
            (format!("{}unassigned/16", k.root()), None),
            (format!("{}unassigned/a/1", k.root()), None),
            (
                format!("{}leader/694d7b8e1c2f", k.root()),
                Some(KeyKind::Leader("694d7b8e1c2f".into())),
            ),
            ("/shardjob/other/jobs/j".to_owned(), None),
            (format!("{}owners/j/x", k.root()), None),
            (format!("{}owners/j/+1", k.root()), None),
            (format!("{}jobs/a/b", k.root()), None),
            (format!("{}nope/j", k.root()), None),
        ];
        for (key, want) in table {
            assert_eq!(k.parse(&key), want, "{key}");
        }
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
