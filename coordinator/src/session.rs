//! The lease an instance lives by: granted, kept alive every TTL/3, and *proven* alive.
//!
//! etcd-client has no Go-style session, so this is one. The key number is `valid_until`: the
//! send time of the last keep-alive the server acknowledged, plus the TTL the server returned.
//! The server cannot expire the lease before that instant (its countdown started after we sent),
//! so while `now < valid_until` everything bound to the lease still exists. Callers that act on
//! the lease's behalf (running a shard) check [`SessionHandle::is_valid`] with a margin.
//!
//! The session rides through transient etcd errors (a new keep-alive stream, retried quickly).
//! When `valid_until` passes without an acknowledgement the session has *lapsed*: nothing may
//! act on the lease (`is_valid` is false), but the keep-alives go on, because the lease may well
//! still exist. An etcd raft election stops every keep-alive for one to two seconds and then
//! renews every lease, and a short partition may end before the server expires it. The next
//! acknowledgement proves the lease again and extends `valid_until` (watch
//! [`SessionHandle::renewals`]). Only the server saying the lease is gone (revoked, expired), or
//! the session being closed or orphaned, fires the [`SessionHandle::lost`] token. A lost
//! session is never revived: the owner starts a new one (and self-fences in between).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::etcd_error::{EtcdError, bounded};

/// Shortest lease TTL etcd grants.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Longest lease TTL shardjob allows.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// What went wrong with a session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("lease TTL {0:?} is outside 2..=300 s (whole seconds)")]
    BadTtl(Duration),
    #[error("granting a lease: {0}")]
    Grant(EtcdError),
    #[error("etcd refused to grant a lease: {0}")]
    GrantRefused(String),
    #[error("revoking lease {lease:x}: {cause}")]
    Revoke { lease: i64, cause: EtcdError },
}

#[derive(Debug)]
struct Shared {
    lease: i64,
    ttl: Duration,
    valid_until: watch::Sender<Instant>,
    lost: CancellationToken,
}

/// A cheap, cloneable view of a session for the tasks that act under its lease.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl SessionHandle {
    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.shared.lease
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Until when the lease is proven to exist on the server.
    pub fn valid_until(&self) -> Instant {
        *self.shared.valid_until.borrow()
    }

    /// A receiver that sees every extension of `valid_until` (each acknowledged keep-alive).
    pub fn renewals(&self) -> watch::Receiver<Instant> {
        self.shared.valid_until.subscribe()
    }

    /// True when `now + margin < valid_until` and the session is not lost.
    pub fn is_valid(&self, now: Instant, margin: Duration) -> bool {
        !self.shared.lost.is_cancelled() && now + margin < self.valid_until()
    }

    /// Fires when etcd says the lease is gone, or the session was closed or orphaned (then at
    /// `valid_until`). A lapse (no proof, no answer either) does not fire it.
    pub fn lost(&self) -> CancellationToken {
        self.shared.lost.clone()
    }

    fn extend(&self, until: Instant) {
        self.shared.valid_until.send_if_modified(|v| {
            let later = until > *v;
            if later {
                *v = until;
            }
            later
        });
    }
}

/// An etcd lease kept alive in a background task. Dropping it stops the keep-alives (like
/// [`Session::orphan`]); [`Session::close`] also revokes the lease.
pub struct Session {
    client: Client,
    handle: SessionHandle,
    stop_refresh: CancellationToken,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive every `ttl / 3`.
    pub async fn grant(client: &Client, ttl: Duration) -> Result<Self, SessionError> {
        if ttl < MIN_TTL || ttl > MAX_TTL || ttl.subsec_nanos() != 0 {
            return Err(SessionError::BadTtl(ttl));
        }
        let mut client = client.clone();
        let sent = Instant::now();
        let resp = bounded(
            "lease grant",
            ttl,
            client.lease_grant(ttl.as_secs() as i64, None),
        )
        .await
        .map_err(SessionError::Grant)?;
        if !resp.error().is_empty() || resp.ttl() <= 0 {
            return Err(SessionError::GrantRefused(format!(
                "{:?} (ttl {})",
                resp.error(),
                resp.ttl()
            )));
        }
        let granted = Duration::from_secs(resp.ttl() as u64);
        let handle = SessionHandle {
            shared: Arc::new(Shared {
                lease: resp.id(),
                ttl: granted,
                valid_until: watch::Sender::new(sent + granted),
                lost: CancellationToken::new(),
            }),
        };
        let stop_refresh = CancellationToken::new();
        let span =
            info_span!("session", lease = %format!("{:x}", resp.id()), ttl_s = granted.as_secs());
        tokio::spawn(
            keep_alive_loop(client.clone(), handle.clone(), stop_refresh.clone()).instrument(span),
        );
        info!(lease = %format!("{:x}", resp.id()), "lease granted");
        Ok(Self {
            client,
            handle,
            stop_refresh,
        })
    }

    /// A handle for tasks acting under this lease.
    pub fn handle(&self) -> SessionHandle {
        self.handle.clone()
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.handle.lease()
    }

    /// Stops refreshing without revoking: the lease expires on the server by itself, and
    /// `lost` fires at `valid_until`.
    pub fn orphan(self) -> SessionHandle {
        self.stop_refresh.cancel();
        self.handle.clone()
    }

    /// Stops refreshing and revokes the lease (deleting every key bound to it), waiting at
    /// most the TTL for etcd. `lost` fires either way.
    pub async fn close(self) -> Result<(), SessionError> {
        self.stop_refresh.cancel();
        let lease = self.lease();
        let mut client = self.client.clone();
        // Short attempts until the TTL is used up: a connection broken by an etcd member
        // restart fails one request, and a retry on a fresh connection usually succeeds.
        let deadline = Instant::now() + self.handle.ttl();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = left.min(Duration::from_secs(1));
            match bounded("lease revoke", limit, client.lease_revoke(lease)).await {
                Ok(_) => break Ok(()),
                // Already gone (expired, or revoked by someone else): what we wanted.
                Err(e) if e.code() == Some(tonic::Code::NotFound) => break Ok(()),
                Err(e) if Instant::now() + Duration::from_millis(200) >= deadline => break Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        self.handle.shared.lost.cancel();
        result.map_err(|cause| SessionError::Revoke { lease, cause })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_refresh.cancel();
    }
}

/// How one keep-alive round went.
enum Round {
    /// The server acknowledged, with this TTL in seconds.
    Alive(i64),
    /// The server says the lease does not exist any more.
    Gone,
    /// No answer (error, closed stream, timeout): try again while `valid_until` allows.
    Failed(String),
}

async fn keep_alive_loop(mut client: Client, handle: SessionHandle, stop: CancellationToken) {
    let interval = handle.ttl() / 3;
    let retry = interval.min(Duration::from_millis(250));
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut next = Instant::now() + interval;
    let mut lapsed = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep_until(next) => {}
        }
        let sent = Instant::now();
        let round = timeout_at(
            sent + interval,
            keep_alive_once(&mut client, handle.lease(), &mut stream),
        )
        .await
        .unwrap_or_else(|_| Round::Failed("keep-alive timed out".into()));
        match round {
            Round::Alive(ttl) => {
                if lapsed {
                    info!(
                        ttl,
                        "the lease is proven again: etcd kept it through the lapse"
                    );
                    lapsed = false;
                }
                handle.extend(sent + Duration::from_secs(ttl as u64));
                next = sent + interval;
                debug!(ttl, "keep-alive acknowledged");
            }
            Round::Gone => {
                warn!("lease is gone on the server (revoked or expired); session lost");
                handle.shared.lost.cancel();
                return;
            }
            Round::Failed(cause) => {
                stream = None;
                metrics::counter!("shardjob_lease_keepalive_failures_total").increment(1);
                if Instant::now() < handle.valid_until() {
                    warn!(%cause, "keep-alive failed; retrying while the lease is still proven");
                } else if !lapsed {
                    warn!(%cause, "the lease can no longer be proven alive; keep-alives go on until etcd says whether it still exists");
                    lapsed = true;
                } else {
                    debug!(%cause, "keep-alive failed during a lapse");
                }
                next = Instant::now() + retry;
            }
        }
    }
    // Refreshing stopped (orphan or drop): the proof still holds until valid_until.
    if !handle.shared.lost.is_cancelled() {
        sleep_until(handle.valid_until()).await;
        handle.shared.lost.cancel();
    }
}

async fn keep_alive_once(
    client: &mut Client,
    lease: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Round {
    if stream.is_none() {
        match client.lease_keep_alive(lease).await {
            Ok(pair) => *stream = Some(pair),
            // etcd-client sends a first keep-alive when it opens the stream, and turns an
            // answer of TTL 0 (no such lease) into this error.
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                return Round::Gone;
            }
            Err(e) => return Round::Failed(format!("opening keep-alive stream: {e}")),
        }
    }
    let Some((keeper, responses)) = stream.as_mut() else {
        return Round::Failed("no keep-alive stream".into());
    };
    if let Err(e) = keeper.keep_alive().await {
        return Round::Failed(format!("sending keep-alive: {e}"));
    }
    match responses.message().await {
        Ok(Some(resp)) if resp.ttl() > 0 => Round::Alive(resp.ttl()),
        Ok(Some(_)) => Round::Gone,
        Ok(None) => Round::Failed("keep-alive stream closed".into()),
        Err(e) => Round::Failed(format!("receiving keep-alive: {e}")),
    }
}
