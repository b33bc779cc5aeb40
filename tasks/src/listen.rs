//! New tasks due soon reach their owner at once: one `LISTEN` connection per server and
//! process, and a [`Nudge`] per segment worker. A notification only says "segment s of queue q
//! has a task due at t"; the worker then reloads that part of its window. A lost notification
//! (the connection broke) costs lateness, never a task: the periodic refill finds it, and
//! every reconnect nudges every worker of that server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::CHANNEL;
use crate::store::submit::parse_notification;

/// One worker's doorbell: what was announced since it last looked.
#[derive(Debug, Default)]
pub struct Nudge {
    rung: Mutex<Option<Rung>>,
    pub notify: Notify,
}

/// What a worker should reload after a nudge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rung {
    /// Tasks due from this instant on arrived.
    From(DateTime<Utc>),
    /// Notifications may have been lost: reload the whole window.
    All,
}

impl Nudge {
    /// Rings for a task due at `due`, or (`None`: a reconnect, anything may have been missed)
    /// for everything; a full reload swallows any earlier due time.
    fn ring(&self, due: Option<DateTime<Utc>>) {
        let mut rung = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        *rung = Some(match (*rung, due) {
            (Some(Rung::All), _) | (_, None) => Rung::All,
            (Some(Rung::From(old)), Some(d)) => Rung::From(old.min(d)),
            (None, Some(d)) => Rung::From(d),
        });
        drop(rung);
        self.notify.notify_one();
    }

    /// What rang since the last call, if anything.
    pub fn take(&self) -> Option<Rung> {
        self.rung.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The doorbells of this process's segment workers, by (queue, segment), with their server.
#[derive(Debug, Default)]
pub struct Nudges {
    map: Mutex<HashMap<SegmentKey, (usize, Arc<Nudge>)>>,
}

/// (queue, segment).
type SegmentKey = (String, u32);

impl Nudges {
    /// The doorbell of a worker starting on `queue`/`segment` of `server`.
    pub fn register(&self, queue: &str, segment: u32, server: usize) -> Arc<Nudge> {
        let nudge = Arc::new(Nudge::default());
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((queue.to_owned(), segment), (server, nudge.clone()));
        nudge
    }

    /// Removes a worker's doorbell (only its own: a newer worker may have replaced it).
    pub fn unregister(&self, queue: &str, segment: u32, nudge: &Arc<Nudge>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (queue.to_owned(), segment);
        if map.get(&key).is_some_and(|(_, n)| Arc::ptr_eq(n, nudge)) {
            map.remove(&key);
        }
    }

    fn dispatch(&self, payload: &str) {
        let Some((queue, dues)) = parse_notification(payload) else {
            tracing::debug!(payload, "ignoring a notification that does not parse");
            return;
        };
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (segment, due) in dues {
            if let Some((_, n)) = map.get(&(queue.clone(), segment)) {
                n.ring(Some(due));
            }
        }
    }

    fn ring_server(&self, server: usize) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for (s, n) in map.values() {
            if *s == server {
                n.ring(None);
            }
        }
    }
}

/// Listens on `server` for as long as the process runs, reconnecting with backoff.
pub async fn listen(server: usize, config: tokio_postgres::Config, nudges: Arc<Nudges>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match listen_once(server, &config, &nudges).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(server, error = %e, retry_in = ?delay, "task notifications lost; reconnecting")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    server: usize,
    config: &tokio_postgres::Config,
    nudges: &Nudges,
) -> Result<(), String> {
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| crate::error::pg_text(&e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::error::pg_text(&e), "the notification connection failed");
                    return;
                }
            }
        }
    });
    let listening = client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| crate::error::pg_text(&e));
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    // Whatever was announced while no one listened is found by a full reload.
    nudges.ring_server(server);
    while let Some(payload) = rx.recv().await {
        nudges.dispatch(&payload);
    }
    drop(client);
    Err("the notification connection closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_keeps_the_earliest_due_and_a_reconnect_asks_for_everything() {
        let nudges = Nudges::default();
        let n = nudges.register("q", 3, 0);
        let other = nudges.register("q", 4, 1);
        nudges.dispatch("q|3:5000,9:1");
        nudges.dispatch("q|3:2000");
        assert_eq!(
            n.take(),
            Some(Rung::From(
                DateTime::<Utc>::from_timestamp_millis(2000).unwrap()
            ))
        );
        assert_eq!(n.take(), None);
        nudges.ring_server(0);
        assert_eq!(n.take(), Some(Rung::All));
        assert_eq!(other.take(), None, "server 1 did not reconnect");
        nudges.unregister("q", 3, &other);
        nudges.dispatch("q|3:1");
        assert!(n.take().is_some(), "only its own doorbell is removed");
    }
}
