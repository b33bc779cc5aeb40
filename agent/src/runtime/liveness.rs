//! The agent's liveness stream, per session: the listener it serves while it leads (bound once
//! at start, in the builder) and the stream it keeps to the leader (one task per lease). See
//! `shardjob_coordinator::liveness` for the protocol and the safety argument; this file only
//! starts, stops and abandons the task.

use std::sync::Arc;

use etcd_client::Client;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::liveness::LivenessOptions;
use shardjob_coordinator::liveness::client::AgentStream;
use shardjob_coordinator::liveness::guard::Bound;
use shardjob_coordinator::liveness::server::LivenessServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The liveness configuration of an agent, with its bound listener.
pub(crate) struct Liveness {
    pub server: Arc<LivenessServer>,
    /// What `instances/<id>` publishes for the others to connect to.
    pub advertise: String,
    pub options: LivenessOptions,
}

/// The stream task of the current session.
pub(crate) struct StreamTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
    pub bound: watch::Receiver<Bound>,
}

impl StreamTask {
    pub(crate) fn spawn(
        liveness: &Liveness,
        client: &Client,
        keys: &Keys,
        instance: &str,
        lease: i64,
    ) -> Self {
        let stream = AgentStream {
            client: client.clone(),
            keys: keys.clone(),
            instance: instance.to_owned(),
            lease,
            interval: liveness.options.interval,
            guard: liveness.options.guard,
        };
        let (tx, bound) = watch::channel(Bound::Lease);
        let stop = CancellationToken::new();
        let task = tokio::spawn(stream.run(tx, stop.clone()).in_current_span());
        Self { stop, task, bound }
    }

    /// Leaves on purpose: a goodbye goes out, and the leader does nothing.
    pub(crate) async fn close(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.task).await;
    }

    /// Leaves on purpose without waiting for the goodbye to go out.
    pub(crate) fn close_soon(self) {
        self.stop.cancel();
    }

    /// As if the process died: no goodbye; the leader sees the stream end.
    pub(crate) fn vanish(self) {
        self.task.abort();
    }
}
