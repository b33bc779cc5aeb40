//! [`PrefixWatcher`]: a list-then-watch of one prefix that never misses a change.
//!
//! Modelled on kube-runtime's watcher: one `next()` steps a small state machine.
//! - `List`: read the whole prefix, emit [`WatchEvent::Restarted`] with every key, then watch
//!   from the listing's revision + 1.
//! - `Watch { from }`: open a watch at `from`, then emit each change as `Put` or `Delete`.
//! - A broken stream resumes from the last revision seen (no event lost, none repeated).
//! - A compaction past the resume revision makes etcd cancel the watch: the watcher goes back
//!   to `List`, and the consumer replaces its whole state with the new listing (deletes it missed
//!   are thereby applied).

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::{Client, EventType, KeyValue, WatchFilterType, WatchOptions, WatchStream};
use tracing::warn;

use crate::kv::list_prefix;

/// One step of a watched prefix.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The complete current content of the prefix (at the start, and after a compaction).
    Restarted {
        kvs: Vec<KeyValue>,
        revision: i64,
    },
    Put(KeyValue),
    /// The deleted key (its value is empty; `prev` has the last value when the watcher asked
    /// for it with [`PrefixWatcher::with_prev_kv`] and etcd still had it).
    Delete {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
}

/// A watch that cannot continue by itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    #[error("watch of {prefix} canceled by etcd: {reason}")]
    Canceled { prefix: String, reason: String },
}

enum State {
    List,
    Watch { from: i64 },
    Watching { stream: Box<WatchStream>, last: i64 },
}

/// A list-then-watch of one prefix. See the module docs.
pub struct PrefixWatcher {
    client: Client,
    prefix: String,
    state: State,
    pending: VecDeque<WatchEvent>,
    failures: u32,
    prev_kv: bool,
    deletes_only: bool,
}

impl std::fmt::Debug for PrefixWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixWatcher")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl PrefixWatcher {
    /// Starts with a full listing of `prefix`.
    pub fn new(client: &Client, prefix: impl Into<String>) -> Self {
        Self::with_state(client, prefix.into(), State::List)
    }

    /// Watches `prefix` from `revision` on: for a caller that already read everything up to
    /// `revision - 1`.
    pub fn from_revision(client: &Client, prefix: impl Into<String>, revision: i64) -> Self {
        Self::with_state(client, prefix.into(), State::Watch { from: revision })
    }

    fn with_state(client: &Client, prefix: String, state: State) -> Self {
        Self {
            client: client.clone(),
            prefix,
            state,
            pending: VecDeque::new(),
            failures: 0,
            prev_kv: false,
            deletes_only: false,
        }
    }

    /// Also deliver the previous value of deleted keys. Off by default: etcd 3.4 reads it from
    /// its backend once per event *per watcher*, so with 20 agents a burst of 4k deletes costs
    /// 80k reads (measured: that alone kept a 10k-job cluster's failover at 40 s).
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Deliver only deletes after the listing (etcd filters the puts out before sending them).
    /// For a consumer that learns of new keys another way: the agent learns of owner keys from
    /// its own claims, so the claims of 19 other agents need not reach it.
    pub fn deletes_only(mut self) -> Self {
        self.deletes_only = true;
        self
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next change. Transient etcd errors are retried inside (with backoff, logged); only a
    /// watch etcd refuses for good (e.g. permission denied) is an error.
    pub async fn next(&mut self) -> Result<WatchEvent, WatchError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            match std::mem::replace(&mut self.state, State::List) {
                State::List => match list_prefix(&self.client, &self.prefix, None).await {
                    Ok(listing) => {
                        self.failures = 0;
                        self.state = State::Watch {
                            from: listing.revision + 1,
                        };
                        return Ok(WatchEvent::Restarted {
                            kvs: listing.kvs,
                            revision: listing.revision,
                        });
                    }
                    Err(e) => self.backoff(&e.to_string(), State::List).await,
                },
                State::Watch { from } => {
                    let mut opts = WatchOptions::new().with_prefix().with_start_revision(from);
                    if self.prev_kv {
                        opts = opts.with_prev_key();
                    }
                    if self.deletes_only {
                        opts = opts.with_filters([WatchFilterType::NoPut]);
                    }
                    match self.client.watch(self.prefix.clone(), Some(opts)).await {
                        Ok(stream) => {
                            self.state = State::Watching {
                                stream: Box::new(stream),
                                last: from - 1,
                            }
                        }
                        Err(e) => self.backoff(&e.to_string(), State::Watch { from }).await,
                    }
                }
                State::Watching {
                    mut stream,
                    mut last,
                } => match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => {
                        if resp.compact_revision() > 0 {
                            warn!(prefix = %self.prefix, compacted = resp.compact_revision(), "watch compacted; re-listing");
                            self.state = State::List;
                        } else if resp.cancel_reason().contains("no leader") {
                            // The member lost its raft leader (clients connect with require_leader): transient;
                            // resume from the last revision seen once there is a leader again.
                            self.backoff(resp.cancel_reason(), State::Watch { from: last + 1 })
                                .await;
                        } else {
                            return Err(WatchError::Canceled {
                                prefix: self.prefix.clone(),
                                reason: resp.cancel_reason().to_owned(),
                            });
                        }
                    }
                    Ok(Some(resp)) => {
                        self.failures = 0;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            last = last.max(kv.mod_revision());
                            self.pending.push_back(match ev.event_type() {
                                EventType::Put => WatchEvent::Put(kv.clone()),
                                EventType::Delete => WatchEvent::Delete {
                                    kv: kv.clone(),
                                    prev: ev.prev_kv().cloned(),
                                },
                            });
                        }
                        self.state = State::Watching { stream, last };
                    }
                    Ok(None) => {
                        self.backoff("watch stream closed", State::Watch { from: last + 1 })
                            .await
                    }
                    Err(e) => {
                        self.backoff(&e.to_string(), State::Watch { from: last + 1 })
                            .await
                    }
                },
            }
        }
    }

    /// Waits before retrying (100 ms doubling to 2 s): etcd is unreachable or failing, and a
    /// tight loop would only add load.
    async fn backoff(&mut self, cause: &str, resume: State) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100 << self.failures.min(5)).min(Duration::from_secs(2));
        warn!(prefix = %self.prefix, %cause, retry_in = ?delay, "watch interrupted");
        self.state = resume;
        tokio::time::sleep(delay).await;
    }
}
