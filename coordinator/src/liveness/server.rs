//! The leader's side of the liveness stream.
//!
//! Every agent that embeds a listener binds it at start ([`LivenessServer::bind`]) and
//! publishes its address in `instances/<id>`; only while it leads ([`LivenessServer::lead`])
//! does it accept streams. Per stream: read the `Hello`, acknowledge every `Ping`, and when the
//! stream ends:
//! - with a `Goodbye`, or because this term of leadership ended: nothing;
//! - otherwise (reset, closed without a goodbye): wait until `guard + slack` after the last
//!   message read ([`condemn_at`]), put "dead" first ([`super::verdict::condemn`], fenced by the
//!   leader key) and, if that won, revoke the agent's lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::proto::agent_message::Kind;
use super::proto::liveness_server::{Liveness, LivenessServer as Grpc};
use super::proto::{AgentMessage, Hello, LeaderMessage};
use super::verdict::{Condemned, StreamId, condemn};
use super::{LivenessError, MAX_GUARD};
use crate::election::Leadership;
use crate::etcd_error::bounded;
use crate::keys::Keys;

/// How long a new stream may take to say `Hello`.
const HELLO_WITHIN: Duration = Duration::from_secs(2);
/// The bound of the condemn txn and of the revoke.
const WRITE_LIMIT: Duration = Duration::from_secs(2);

/// When the leader may act on a stream that broke: `guard + slack` after the last message it
/// read on it. The agent stops acting `guard` after the send of the last message the leader
/// acknowledged, which was before the leader read it.
pub fn condemn_at(last_read: Instant, guard: Duration, slack: Duration) -> Instant {
    last_read + guard + slack
}

/// How a stream ended, as the leader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The agent said goodbye: it leaves on purpose (or has lost its lease).
    Goodbye,
    /// This term of leadership ended; the agent reconnects to the next leader.
    Deposed,
    /// Reset, or closed without a goodbye: the process is probably gone.
    Broken,
}

/// What this leader did about broken streams so far, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaks {
    /// "dead" won and the lease was revoked.
    pub revoked: u64,
    /// The agent had settled "alive" first: its lease stays.
    pub spared: u64,
    /// Not acted on: the term ended, the fence failed, or the lease was gone already.
    pub moot: u64,
    /// The condemn txn or the revoke failed (the TTL decides).
    pub failed: u64,
}

#[derive(Debug, Clone)]
struct Term {
    leadership: Leadership,
    over: CancellationToken,
}

struct Shared {
    client: Client,
    keys: Keys,
    me: String,
    slack: Duration,
    term: watch::Receiver<Option<Term>>,
    breaks: watch::Sender<Breaks>,
}

/// The listener an agent keeps, serving streams only while it leads.
pub struct LivenessServer {
    addr: SocketAddr,
    term: watch::Sender<Option<Term>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LivenessServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivenessServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// While alive, this agent leads and serves streams; dropping it ends the term (every stream
/// of it is closed, and breaks pending are not acted on).
#[derive(Debug)]
pub struct LeadTerm {
    over: CancellationToken,
    term: watch::Sender<Option<Term>>,
}

impl Drop for LeadTerm {
    fn drop(&mut self) {
        self.over.cancel();
        self.term.send_if_modified(|t| {
            let mine = t.as_ref().is_some_and(|t| t.over.is_cancelled());
            if mine {
                *t = None;
            }
            mine
        });
    }
}

impl LivenessServer {
    /// Binds `listen` and serves in the background. `me` is this agent's instance id, `slack`
    /// what it adds to each agent's guard before it revokes.
    pub async fn bind(
        listen: SocketAddr,
        client: Client,
        keys: Keys,
        me: String,
        slack: Duration,
    ) -> Result<Self, LivenessError> {
        let listener =
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| LivenessError::Bind {
                    addr: listen,
                    cause: e.to_string(),
                })?;
        let addr = listener.local_addr().map_err(|e| LivenessError::Bind {
            addr: listen,
            cause: e.to_string(),
        })?;
        let (term, term_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            client,
            keys,
            me,
            slack,
            term: term_rx,
            breaks: watch::channel(Breaks::default()).0,
        });
        let shared_for_counts = shared.clone();
        let stop = CancellationToken::new();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = tonic::transport::Server::builder()
            .add_service(Grpc::new(Service { shared }))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let task = tokio::spawn(
            async move {
                if let Err(e) = serve.await {
                    warn!(error = %e, "the liveness listener stopped");
                }
            }
            .in_current_span(),
        );
        info!(%addr, "liveness listener bound");
        Ok(Self {
            addr,
            term,
            stop,
            task,
            shared: shared_for_counts,
        })
    }

    /// What this agent did about broken streams while it led, by outcome.
    pub fn breaks(&self) -> watch::Receiver<Breaks> {
        self.shared.breaks.subscribe()
    }

    /// The address bound (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves streams as the leader of `leadership` until the returned term is dropped.
    pub fn lead(&self, leadership: Leadership) -> LeadTerm {
        let over = CancellationToken::new();
        let old = self.term.send_replace(Some(Term {
            leadership,
            over: over.clone(),
        }));
        if let Some(old) = old {
            old.over.cancel();
        }
        LeadTerm {
            over,
            term: self.term.clone(),
        }
    }
}

impl Drop for LivenessServer {
    fn drop(&mut self) {
        if let Some(t) = self.term.send_replace(None) {
            t.over.cancel();
        }
        self.stop.cancel();
        self.task.abort();
    }
}

struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Liveness for Service {
    type AttachStream = ReceiverStream<Result<LeaderMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match timeout(HELLO_WITHIN, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                kind: Some(Kind::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        let read_at = Instant::now();
        let guard = check_hello(&hello, &self.shared.keys, &self.shared.me)?;
        self.check_registered(&hello).await?;
        let term = self
            .shared
            .term
            .borrow()
            .clone()
            .filter(|t| !t.over.is_cancelled())
            .ok_or_else(|| Status::failed_precondition("this instance does not lead"))?;
        let (tx, rx) = mpsc::channel(16);
        let span = info_span!("liveness", instance = %hello.instance, lease = %format!("{:x}", hello.lease), epoch = hello.epoch);
        let stream = Stream {
            shared: self.shared.clone(),
            term,
            hello,
            guard,
        };
        tokio::spawn(stream.run(inbound, tx, read_at).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Service {
    /// The `Hello`'s lease must be the one `instances/<id>` is registered with: a stream the
    /// leader may act on is only ever one of a registered instance's own lease.
    async fn check_registered(&self, hello: &Hello) -> Result<(), Status> {
        let mut c = self.shared.client.clone();
        let key = self.shared.keys.instance(&hello.instance);
        let resp = bounded(
            "reading a streaming instance",
            WRITE_LIMIT,
            c.get(key, None),
        )
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
        match resp.kvs().first() {
            Some(kv) if kv.lease() == hello.lease => Ok(()),
            Some(_) => Err(Status::failed_precondition(
                "hello: that lease is not the instance's registered one",
            )),
            None => Err(Status::failed_precondition("hello: no such instance")),
        }
    }
}

/// The guard a `Hello` asks for, or why it is refused.
fn check_hello(hello: &Hello, keys: &Keys, me: &str) -> Result<Duration, Status> {
    if hello.root != keys.root() {
        return Err(Status::invalid_argument(format!(
            "this leader serves {}, not {}",
            keys.root(),
            hello.root
        )));
    }
    if hello.instance == me {
        return Err(Status::invalid_argument("a leader does not watch itself"));
    }
    if shardjob_sharding::validate_name("instance", &hello.instance).is_err() || hello.lease == 0 {
        return Err(Status::invalid_argument("hello: bad instance or lease 0"));
    }
    let guard = Duration::from_millis(u64::from(hello.guard_ms));
    if guard.is_zero() || guard > MAX_GUARD {
        return Err(Status::invalid_argument(
            "hello: guard_ms must be 1..=60000",
        ));
    }
    Ok(guard)
}

struct Stream {
    shared: Arc<Shared>,
    term: Term,
    hello: Hello,
    guard: Duration,
}

impl Stream {
    async fn run(
        self,
        mut inbound: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<LeaderMessage, Status>>,
        mut last_read: Instant,
    ) {
        metrics::gauge!("shardjob_liveness_streams").increment(1.0);
        debug!("stream attached");
        let ended = loop {
            tokio::select! {
                _ = self.term.over.cancelled() => break Ended::Deposed,
                m = inbound.message() => match m {
                    Ok(Some(AgentMessage { kind: Some(Kind::Ping(p)) })) => {
                        last_read = Instant::now();
                        // Never wait on a slow reader: a ping left unanswered only makes the
                        // agent settle sooner.
                        let _ = tx.try_send(Ok(LeaderMessage { ack: p.seq }));
                    }
                    Ok(Some(AgentMessage { kind: Some(Kind::Goodbye(_)) })) => break Ended::Goodbye,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break Ended::Broken,
                },
            }
        };
        // No acknowledgement leaves after this point.
        drop(tx);
        drop(inbound);
        metrics::gauge!("shardjob_liveness_streams").decrement(1.0);
        if ended != Ended::Broken {
            debug!(?ended, "stream ended");
            return;
        }
        let at = condemn_at(last_read, self.guard, self.shared.slack);
        info!(wait = ?at.saturating_duration_since(Instant::now()), "stream broke without a goodbye");
        tokio::select! {
            _ = self.term.over.cancelled() => {
                self.shared.breaks.send_modify(|b| b.moot += 1);
                return;
            }
            _ = sleep_until(at) => {}
        }
        let outcome = self.condemn().await;
        metrics::counter!("shardjob_liveness_breaks_total", "outcome" => outcome).increment(1);
        self.shared.breaks.send_modify(|b| match outcome {
            "revoked" => b.revoked += 1,
            "spared" => b.spared += 1,
            "failed" => b.failed += 1,
            _ => b.moot += 1,
        });
    }

    async fn condemn(&self) -> &'static str {
        let s = &self.shared;
        let h = &self.hello;
        let stream = StreamId {
            instance: h.instance.clone(),
            lease: h.lease,
            epoch: h.epoch,
        };
        let fence = self.term.leadership.fence();
        let verdict = condemn(&s.client, &s.keys, fence, &s.me, &stream, WRITE_LIMIT).await;
        match verdict {
            Ok(Condemned::Yes) => {}
            Ok(Condemned::Spared) => {
                info!("the agent settled alive first: its lease stays");
                return "spared";
            }
            Ok(Condemned::NotLeader) => return "deposed",
            Ok(Condemned::LeaseGone) => return "gone",
            Err(e) => {
                warn!(error = %e, "could not condemn the stream; the lease's TTL decides");
                return "failed";
            }
        }
        let mut c = s.client.clone();
        match bounded(
            "revoking a broken stream's lease",
            WRITE_LIMIT,
            c.lease_revoke(h.lease),
        )
        .await
        {
            Ok(_) => {
                info!("revoked the lease of a broken stream");
                "revoked"
            }
            Err(e) if e.to_string().contains("lease not found") => "gone",
            Err(e) => {
                // "dead" is recorded: the agent self-fences when it reads it; its lease ends by
                // itself at the latest.
                warn!(error = %e, "revoking failed; the lease expires by itself");
                "failed"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(root: &str, instance: &str, lease: i64, guard_ms: u32) -> Hello {
        Hello {
            root: root.into(),
            instance: instance.into(),
            lease,
            epoch: 0,
            guard_ms,
        }
    }

    #[test]
    fn rows_of_hellos() {
        let keys = Keys::new("ns").unwrap();
        let root = keys.root().to_owned();
        // (hello, accepted guard or refusal)
        let rows = [
            (hello(&root, "a", 7, 100), Some(100)),
            (hello("/shardjob/other/", "a", 7, 100), None),
            (hello(&root, "leader", 7, 100), None),
            (hello(&root, "a/b", 7, 100), None),
            (hello(&root, "a", 0, 100), None),
            (hello(&root, "a", 7, 0), None),
            (hello(&root, "a", 7, 60_001), None),
            (hello(&root, "a", 7, 60_000), Some(60_000)),
        ];
        for (h, want) in rows {
            let got = check_hello(&h, &keys, "leader")
                .ok()
                .map(|d| d.as_millis() as u32);
            assert_eq!(got, want, "{h:?}");
        }
    }

    #[test]
    fn the_leader_waits_past_the_agents_guard() {
        let t = Instant::now();
        let at = condemn_at(t, Duration::from_millis(100), Duration::from_millis(50));
        assert_eq!(at - t, Duration::from_millis(150));
    }
}
