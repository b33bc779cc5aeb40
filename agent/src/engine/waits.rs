//! Which owner keys this agent waits to see deleted, and the watch of `owners/` they need.
//!
//! An agent needs an owner key's delete only while it waits for one: a shard assigned to it
//! whose claim was refused by someone else's key (or by a key of its own old session), which
//! it may claim once that key is gone. Watching every owner delete of the namespace all the
//! time cost every agent every other agent's churn: a crash's 4000 expired keys went to all
//! 20 agents of bench-scale while none of them waited for any (the new owners claim after the
//! keys are gone). So the engine asks for the watch only while it waits
//! ([`Command::WatchOwners`], [`Command::UnwatchOwners`]):
//!
//! - a wait is a shard with a key seen that this agent does not hold (`seen` set, `local` not
//!   `Held`/`Releasing`); a key seen of a shard no longer assigned here is forgotten, so a
//!   wait never outlives the assignment it was for;
//! - the watch starts from the revision a refusal read its key at, plus one, so the key's
//!   delete is delivered even when it came before the watch was asked for; a wait whose
//!   reading is older than the running watch's start restarts the watch from it (a delete
//!   delivered twice changes nothing). A wait with no known reading (the keys of a session
//!   that self-fenced) starts the watch with a listing, as a re-list does;
//! - the jobs with a wait are kept in a set, brought up to date for a job after each change to
//!   it (and for all after a re-list or a lost session), and checked against a recount after
//!   every step in debug builds.
//!
//! What this gives up: a key of mine deleted by hand while no wait runs is not noticed until
//! the shard is released (the release finds the key gone) or a wait starts the watch again.

use super::job::JobState;
use super::shard::Shard;
use super::{Command, Engine};

/// The watch of owner deletes as last asked of the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum OwnerWatch {
    #[default]
    Off,
    /// Asked to run from this revision (`None`: from a listing, which covers everything).
    On { from: Option<i64> },
}

/// True when `sh` waits for its key's delete.
pub(super) fn waits(sh: &Shard) -> bool {
    sh.seen.is_some() && sh.local.held().is_none()
}

impl Engine {
    /// Brings `job`'s entry in the waiting jobs up to date.
    pub(super) fn rewait(&mut self, job: &str) {
        if !self.jobs.get(job).is_some_and(JobState::waits) {
            self.waiting.remove(job);
        } else if !self.waiting.contains(job) {
            self.waiting.insert(job.to_owned());
        }
    }

    /// Finds the waiting jobs anew (a re-list, a lost session, the end).
    pub(super) fn rewait_all(&mut self) {
        self.waiting = self
            .jobs
            .iter()
            .filter(|(_, js)| js.waits())
            .map(|(job, _)| job.clone())
            .collect();
    }

    /// A refusal read the key that holds a shard at `revision`: the watch, when it is asked
    /// for, starts no later than the revision after it.
    pub(super) fn read_at(&mut self, revision: i64) {
        self.wait_read = Some(self.wait_read.map_or(revision, |r| r.min(revision)));
    }

    /// Waits whose keys were read at no known revision (a lost session's keys): the watch
    /// starts with a listing.
    pub(super) fn read_unknown(&mut self) {
        self.wait_unread = true;
    }

    /// The watch this step's waits need, asked of the runtime if it changed.
    pub(super) fn steer_owner_watch(&mut self) {
        let (read, unread) = (self.wait_read.take(), std::mem::take(&mut self.wait_unread));
        // Stopping, nothing is claimed: no wait needs its delete any more.
        if self.waiting.is_empty() || self.stopping {
            if self.owner_watch != OwnerWatch::Off {
                self.owner_watch = OwnerWatch::Off;
                self.out.push(Command::UnwatchOwners);
            }
            return;
        }
        // From a listing when a wait's reading is unknown (or, defensively, when none is
        // known and the watch is not running); else from the earliest reading.
        let from = match (unread, read) {
            (true, _) | (false, None) => None,
            (false, Some(r)) => Some(r + 1),
        };
        match self.owner_watch {
            OwnerWatch::Off => self.watch_owners(from),
            // A listing on its way covers every wait known before it is read, and a race
            // with a claim's answer is the claim's (`deleted_while_claiming`).
            OwnerWatch::On { from: None } => {}
            OwnerWatch::On {
                from: Some(running),
            } => {
                let older = match from {
                    None => unread,
                    Some(f) => f < running,
                };
                if older {
                    self.watch_owners(from);
                }
            }
        }
    }

    fn watch_owners(&mut self, from: Option<i64>) {
        self.owner_watch = OwnerWatch::On { from };
        self.out.push(Command::WatchOwners { from });
    }

    /// The listing of a watch asked for without a revision arrived at `revision`: later waits
    /// with an older reading need the watch restarted from theirs.
    pub(super) fn owners_listed(&mut self, revision: i64) {
        if let OwnerWatch::On { from: None } = self.owner_watch {
            self.owner_watch = OwnerWatch::On {
                from: Some(revision + 1),
            };
        }
    }

    /// The waiting jobs are those a recount finds (debug builds, after every step), and a wait
    /// has its watch.
    pub(super) fn check_waits(&self) {
        for (job, js) in &self.jobs {
            assert_eq!(
                js.waits(),
                self.waiting.contains(job),
                "engine invariant broken at {job}: its waits are not counted right"
            );
        }
        assert!(
            self.waiting.iter().all(|j| self.jobs.contains_key(j)),
            "engine invariant broken: waits counted for a job that is gone"
        );
        assert!(
            self.waiting.is_empty() || self.stopping || self.owner_watch != OwnerWatch::Off,
            "engine invariant broken: waits without the owner watch"
        );
    }
}
