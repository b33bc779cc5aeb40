//! Turns the runtime's events into engine inputs: watch events decoded (a value that does not
//! decode is logged with its key and goes no further: the last good value stays), task results
//! passed on.

use etcd_client::KeyValue;
use shardjob_coordinator::keys::KeyKind;
use shardjob_coordinator::model::{AssignedPage, Owner, Trigger, decode, decode_job, decode_page};
use shardjob_coordinator::watch::WatchEvent;
use tracing::warn;

use super::{Core, Event, Stream};
use crate::engine::{Input, Listing, SeenOwner, Token};

fn key_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

/// The owner key `kv` (at `key`) as the engine sees it, its name made by `name`. A value that
/// does not decode still holds the shard: nobody may claim over it, so it is held by an
/// unknown instance (`""`). For the watch's listing and for the key a refused claim read.
pub(super) fn seen_owner(
    key: &str,
    kv: &KeyValue,
    name: impl FnOnce(&str) -> std::sync::Arc<str>,
) -> SeenOwner {
    let instance = match decode::<Owner>(key, "owner", kv.value()) {
        Ok(o) => name(o.instance.as_str()),
        Err(e) => {
            warn!(error = %e, "an owner key that does not decode holds its shard for an unknown owner");
            name("")
        }
    };
    SeenOwner {
        instance,
        token: Token(kv.create_revision()),
        lease: kv.lease(),
    }
}

impl Core {
    /// One event into the engine (or handled here), its commands left for the caller to take.
    pub(super) fn absorb(&mut self, event: Event) {
        let input = match event {
            Event::Watch(Stream::Instance, ev) => return self.on_own_key(ev),
            Event::Batch(events) => {
                for ev in events {
                    self.absorb(ev);
                }
                return;
            }
            Event::Watch(Stream::Assignments, ev) => {
                let now = super::now();
                for input in self.on_page(ev) {
                    self.engine.apply(input, now);
                }
                return;
            }
            Event::Watch(stream, ev) => match self.translate(stream, ev) {
                Some(input) => input,
                None => return,
            },
            Event::Engine(input @ Input::ExecDone { exec, .. }) => {
                // An execution the engine aborted is no longer its concern.
                if self.execs.remove(&exec).is_none() {
                    return;
                }
                self.ended += 1;
                input
            }
            Event::Engine(input) => input,
            Event::Leader(leading) => {
                self.status.send_modify(|s| s.is_leader = leading);
                return;
            }
        };
        self.engine.apply(input, super::now());
    }

    /// This instance's key changed. Deleted (by hand, while the session lives) or missing from
    /// a re-list, it is put again: an instance without its key gets no shards, though its lease
    /// is alive. Events older than the registration speak of an earlier session's key.
    fn on_own_key(&mut self, ev: WatchEvent) {
        let own = self.cfg.keys.instance(&self.cfg.id);
        let gone_at = match &ev {
            WatchEvent::Delete { kv, .. } if key_of(kv) == own => kv.mod_revision(),
            WatchEvent::Restarted { kvs, revision } if !kvs.iter().any(|kv| key_of(kv) == own) => {
                *revision
            }
            _ => return,
        };
        let (Some((info, registered_at)), Some(lease), None) =
            (&self.registered, self.engine.lease(), self.stopping)
        else {
            return;
        };
        if gone_at < *registered_at {
            return;
        }
        let Ok(value) = serde_json::to_vec(info) else {
            return;
        };
        warn!(key = %own, "my instance key is gone while my lease lives; registering again");
        let mut client = self.client.clone();
        tokio::spawn(async move {
            let opts = etcd_client::PutOptions::new().with_lease(lease.get());
            let put = client.put(own.clone(), value, Some(opts));
            if let Err(e) = shardjob_coordinator::etcd_error::bounded(
                "registering the instance again",
                std::time::Duration::from_secs(5),
                put,
            )
            .await
            {
                warn!(key = %own, error = %e, "registering again failed; unregistered until the next re-list or session");
            }
        });
    }

    fn translate(&mut self, stream: Stream, ev: WatchEvent) -> Option<Input> {
        match ev {
            WatchEvent::Restarted { kvs, revision } => Some(Input::Relisted(match stream {
                Stream::Jobs => {
                    // Sized once, and each key's buffers freed as it is decoded: the listing
                    // of every job is the agent's largest allocation at its start.
                    let mut jobs = Vec::with_capacity(kvs.len());
                    jobs.extend(kvs.into_iter().filter_map(|kv| self.job(&kv)));
                    Listing::Jobs(jobs)
                }
                Stream::Assignments => return None, // on_page
                Stream::Owners => Listing::Owners {
                    revision,
                    owners: kvs.iter().filter_map(|kv| self.owner(kv)).collect(),
                },
                Stream::Triggers => {
                    Listing::Triggers(kvs.iter().filter_map(|kv| self.trigger(kv)).collect())
                }
                Stream::Instance => return None,
            })),
            WatchEvent::Put(kv) => match stream {
                Stream::Jobs => self.job(&kv).map(|(job, config)| Input::JobPut {
                    job,
                    config: Box::new(config),
                }),
                Stream::Assignments => None, // on_page
                // Filtered out by etcd (the watch asks for deletes only): an agent learns of
                // owner keys from its claims.
                Stream::Owners => None,
                Stream::Triggers => self
                    .trigger(&kv)
                    .map(|(job, trigger)| Input::TriggerPut { job, trigger }),
                Stream::Instance => None,
            },
            WatchEvent::Delete { kv, .. } => match (stream, self.cfg.keys.parse(&key_of(&kv))?) {
                (Stream::Jobs, KeyKind::Job(job)) => Some(Input::JobDeleted { job }),
                (Stream::Owners, KeyKind::Owner { job, shard }) => Some(Input::OwnerDeleted {
                    job,
                    shard,
                    revision: kv.mod_revision(),
                }),
                _ => None,
            },
        }
    }

    fn job(&self, kv: &KeyValue) -> Option<(String, shardjob_coordinator::model::JobConfig)> {
        let key = key_of(kv);
        let Some(KeyKind::Job(job)) = self.cfg.keys.parse(&key) else {
            return None;
        };
        match decode_job(&key, &job, kv.value()) {
            Ok(c) => Some((job, c)),
            Err(e) => {
                warn!(error = %e, "skipping a job config that does not decode; the last good one stays");
                None
            }
        }
    }

    /// An event of my `assigned/<me>/` pages, as the engine's per-job inputs.
    fn on_page(&mut self, ev: WatchEvent) -> Vec<Input> {
        match ev {
            WatchEvent::Restarted { kvs, .. } => {
                let pages = kvs.iter().filter_map(|kv| self.page(kv)).collect();
                vec![Input::Relisted(self.my_pages.relist(pages))]
            }
            WatchEvent::Put(kv) => match self.page(&kv) {
                Some((page, value, revision)) => self.my_pages.put(page, value, revision),
                None => Vec::new(),
            },
            WatchEvent::Delete { kv, .. } => match self.cfg.keys.parse(&key_of(&kv)) {
                Some(KeyKind::Assigned { page, .. }) => self.my_pages.delete(page),
                _ => Vec::new(),
            },
        }
    }

    /// One of my pages, decoded, with its mod revision; `None` (logged) when it does not
    /// decode: the last good value stays.
    fn page(&self, kv: &KeyValue) -> Option<(u16, AssignedPage, i64)> {
        let key = key_of(kv);
        let Some(KeyKind::Assigned { instance, page }) = self.cfg.keys.parse(&key) else {
            return None;
        };
        if instance != self.cfg.id {
            return None;
        }
        match decode_page(&key, kv.value()) {
            Ok(p) => Some((page, p, kv.mod_revision())),
            Err(e) => {
                warn!(error = %e, "skipping an assigned page that does not decode");
                None
            }
        }
    }

    /// An owner key that does not decode still holds the shard: nobody may claim over it, so it
    /// is recorded as held by an unknown instance.
    fn owner(&mut self, kv: &KeyValue) -> Option<(String, u32, SeenOwner)> {
        let key = key_of(kv);
        let Some(KeyKind::Owner { job, shard }) = self.cfg.keys.parse(&key) else {
            return None;
        };
        let names = &mut self.names;
        Some((job, shard, seen_owner(&key, kv, |n| names.get(n))))
    }

    fn trigger(&self, kv: &KeyValue) -> Option<(String, Trigger)> {
        let key = key_of(kv);
        let Some(KeyKind::Trigger(job)) = self.cfg.keys.parse(&key) else {
            return None;
        };
        match decode::<Trigger>(&key, "trigger", kv.value()) {
            Ok(t) => Some((job, t)),
            Err(e) => {
                warn!(error = %e, "skipping a trigger that does not decode");
                None
            }
        }
    }
}
