//! [`AgentHandle`]: a running agent, its status, and its graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::builder::AgentError;

/// What an agent is doing, published after every change (await it with
/// [`AgentHandle::status`]'s `changed()`/`wait_for`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    pub instance: String,
    /// The current lease (0 while there is none).
    pub lease: i64,
    pub is_leader: bool,
    /// Shards this instance owns and may fire, per job.
    pub owned: BTreeMap<String, Vec<u32>>,
    /// Sessions lost so far (each one self-fenced the agent).
    pub session_losses: u64,
    /// Times the lease could no longer be proven alive (executions stopped until etcd
    /// answered; most end with the lease proven again, see `session_losses` for the others).
    pub lapses: u64,
    /// Executions finished so far.
    pub executions: u64,
    /// True once a graceful shutdown has begun.
    pub stopping: bool,
}

/// A running agent. Dropping it does not stop the agent; call [`AgentHandle::shutdown`].
#[derive(Debug)]
pub struct AgentHandle {
    pub(crate) id: String,
    pub(crate) shutdown: CancellationToken,
    pub(crate) crash: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), AgentError>>,
    pub(crate) status: watch::Receiver<AgentStatus>,
}

impl AgentHandle {
    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.id
    }

    /// A receiver of the agent's status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Graceful shutdown: stop firing, hand shards to others, wait for running executions (up
    /// to the shutdown timeout), release, resign, revoke the lease.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        self.task
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?
    }

    /// Stops at once as if the process died: executions are aborted, nothing is released,
    /// leadership is not resigned and the lease is not revoked, so other instances take over
    /// only when the lease expires. For tests and fault drills.
    pub async fn abort(self) {
        self.crash.cancel();
        let _ = self.task.await;
    }

    /// Runs until `signal` completes (e.g. `tokio::signal::ctrl_c()`), then shuts down
    /// gracefully.
    pub async fn run_until<F: Future>(self, signal: F) -> Result<(), AgentError> {
        signal.await;
        self.shutdown().await
    }
}
