//! The agent's side of the liveness stream: find the leader's address, attach, ping every
//! interval, and when the stream breaks or goes quiet settle the verdict in etcd before the
//! guard runs out (see [`super::guard`]). What binds the agent is published on a watch
//! channel as a [`Bound`]; the agent's runtime hands it to its engine.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use super::guard::{Bound, Guard, Phase};
use super::proto::agent_message::Kind;
use super::proto::liveness_client::LivenessClient;
use super::proto::{AgentMessage, Goodbye, Hello, Ping};
use super::verdict::{StreamId, Verdict, settle_alive};
use crate::election::Election;
use crate::etcd_error::bounded;
use crate::keys::Keys;
use crate::model::InstanceInfo;

/// How often to look for a leader (with an address) while not attached: first after 250 ms,
/// then doubling to 2 s (an agent that leads, or whose leader has no listener, would otherwise
/// read etcd twice every 250 ms for as long as that lasts). An attachment starts over.
const LOOK_FIRST: Duration = Duration::from_millis(250);
const LOOK_MAX: Duration = Duration::from_secs(2);
/// The bound of a connection attempt.
const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// How long a goodbye may take to go out.
const GOODBYE_WITHIN: Duration = Duration::from_millis(300);

/// One agent's stream for one lease.
#[derive(Clone)]
pub struct AgentStream {
    pub client: Client,
    pub keys: Keys,
    pub instance: String,
    pub lease: i64,
    pub interval: Duration,
    pub guard: Duration,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("instance", &self.instance)
            .field("lease", &format_args!("{:x}", self.lease))
            .finish_non_exhaustive()
    }
}

/// How a turn of attaching ended.
enum Turn {
    /// The stream broke or went quiet: settle it.
    Broke,
    /// Stopped: a goodbye went out (or nothing was attached).
    Stopped,
}

impl AgentStream {
    /// Runs until `stop` fires (then says goodbye) or the leader's verdict condemns this
    /// lease (then publishes [`Bound::Condemned`] and returns).
    pub async fn run(self, bound: watch::Sender<Bound>, stop: CancellationToken) {
        let mut guard = Guard::new(self.guard);
        let mut epoch = 0u64;
        let election = Election::new(&self.client, &self.keys);
        let mut look = LOOK_FIRST;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let channel = match self.leader_addr(&election).await {
                None => None,
                Some(addr) => match connect(&addr).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        debug!(%addr, error = %e, "cannot reach the leader's liveness listener");
                        None
                    }
                },
            };
            let Some(channel) = channel else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(look) => {}
                }
                look = (look * 2).min(LOOK_MAX);
                continue;
            };
            look = LOOK_FIRST;
            match self.attach(channel, epoch, &mut guard, &bound, &stop).await {
                Turn::Stopped => return,
                Turn::Broke => {}
            }
            if !self.settle(epoch, &mut guard, &bound, &stop).await {
                return;
            }
            epoch += 1;
        }
    }

    /// The current leader's liveness address, unless this agent leads or the leader has none.
    async fn leader_addr(&self, election: &Election) -> Option<String> {
        let leader = election.leader().await.ok()??;
        if leader.instance == self.instance {
            return None;
        }
        let mut c = self.client.clone();
        let key = self.keys.instance(&leader.instance);
        let resp = bounded(
            "reading the leader's instance",
            CONNECT_WITHIN,
            c.get(key, None),
        )
        .await
        .ok()?;
        let kv = resp.kvs().first()?;
        let info: InstanceInfo = serde_json::from_slice(kv.value()).ok()?;
        info.liveness
    }

    /// One stream: hello, pings, acknowledgements, until it breaks, goes quiet or is stopped.
    async fn attach(
        &self,
        channel: Channel,
        epoch: u64,
        guard: &mut Guard,
        bound: &watch::Sender<Bound>,
        stop: &CancellationToken,
    ) -> Turn {
        let (tx, rx) = mpsc::channel(16);
        let hello = Hello {
            root: self.keys.root().to_owned(),
            instance: self.instance.clone(),
            lease: self.lease,
            epoch,
            guard_ms: u32::try_from(self.guard.as_millis()).unwrap_or(u32::MAX),
        };
        // Read before the hello goes out: the protection counts from no later than its send.
        guard.hello(epoch, Instant::now().into_std());
        publish(bound, guard);
        if tx.send(message(Kind::Hello(hello))).await.is_err() {
            return Turn::Broke;
        }
        let mut grpc = LivenessClient::new(channel);
        let settle_at = |g: &Guard| g.settle_at().map_or_else(Instant::now, Instant::from_std);
        let response = tokio::select! {
            _ = stop.cancelled() => return goodbye(tx, None).await,
            r = grpc.attach(ReceiverStream::new(rx)) => r,
            _ = sleep_until(settle_at(guard)) => return Turn::Broke,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => {
                debug!(%status, "the leader refused the stream");
                return Turn::Broke;
            }
        };
        info!(epoch, "liveness stream attached");
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return goodbye(tx, Some(inbound)).await,
                _ = ticks.tick() => {
                    seq += 1;
                    guard.ping(seq, Instant::now().into_std());
                    if tx.try_send(message(Kind::Ping(Ping { seq }))).is_err() {
                        // The transport is not taking pings: it is as good as broken.
                        return Turn::Broke;
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(ack)) => {
                        guard.ack(ack.ack);
                        publish(bound, guard);
                    }
                    Ok(None) | Err(_) => return Turn::Broke,
                },
                _ = sleep_until(settle_at(guard)) => {
                    debug!("no acknowledgement for half the guard: settling");
                    return Turn::Broke;
                }
            }
        }
    }

    /// Settles stream `epoch` in etcd, retrying until a verdict stands. Returns false when
    /// condemned (or stopped).
    async fn settle(
        &self,
        epoch: u64,
        guard: &mut Guard,
        bound: &watch::Sender<Bound>,
        stop: &CancellationToken,
    ) -> bool {
        if guard.broke().is_none() {
            return guard.phase() != Phase::Condemned;
        }
        publish(bound, guard);
        let limit = self.guard.max(Duration::from_millis(500));
        let stream = StreamId {
            instance: self.instance.clone(),
            lease: self.lease,
            epoch,
        };
        loop {
            match settle_alive(&self.client, &self.keys, &stream, limit).await {
                Ok(v) => {
                    guard.settled(epoch, v == Verdict::Alive);
                    publish(bound, guard);
                    if v == Verdict::Dead {
                        warn!(
                            epoch,
                            "the leader condemned this lease after its stream broke"
                        );
                        return false;
                    }
                    debug!(
                        epoch,
                        "settled alive: only the lease binds until the next stream"
                    );
                    return true;
                }
                Err(e) => {
                    warn!(error = %e, "could not settle the liveness verdict; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
}

fn message(kind: Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

fn publish(bound: &watch::Sender<Bound>, guard: &Guard) {
    let now = guard.bound();
    bound.send_if_modified(|b| {
        let changed = *b != now;
        *b = now;
        changed
    });
}

async fn connect(addr: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_WITHIN)
        .tcp_nodelay(true);
    match timeout(CONNECT_WITHIN, endpoint.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no connection within 1 s".into()),
    }
}

/// Says goodbye and waits (briefly) for the leader to close the stream, so the message is out
/// before the connection goes.
async fn goodbye(
    tx: mpsc::Sender<AgentMessage>,
    inbound: Option<tonic::Streaming<super::proto::LeaderMessage>>,
) -> Turn {
    let _ = tx.send(message(Kind::Goodbye(Goodbye {}))).await;
    drop(tx);
    if let Some(mut inbound) = inbound {
        let _ = timeout(GOODBYE_WITHIN, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    }
    Turn::Stopped
}
