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
    /// True while a liveness stream to the leader binds this agent (attached, or settling a
    /// break): a crash of this process moves its shards within the guard, not the TTL.
    pub guarded: bool,
    /// What this agent, while it led, did about liveness streams that broke, by outcome.
    pub stream_breaks: shardjob_coordinator::liveness::server::Breaks,
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
        ended(self.task.await)
    }

    /// Stops at once as if the process died: executions are aborted, nothing is released,
    /// leadership is not resigned and the lease is not revoked, so other instances take over
    /// only when the lease expires. For tests and fault drills.
    pub async fn abort(self) {
        self.crash.cancel();
        let _ = self.task.await;
    }

    /// Runs until `signal` completes (e.g. `tokio::signal::ctrl_c()`), then shuts down
    /// gracefully. If the agent's task ends first (it panicked, or was aborted), this returns
    /// at once with an error saying so: a service must not go on believing it runs its jobs.
    pub async fn run_until<F: Future>(mut self, signal: F) -> Result<(), AgentError> {
        let signal = std::pin::pin!(signal);
        let early = tokio::select! {
            _ = signal => None,
            r = &mut self.task => Some(r),
        };
        match early {
            None => self.shutdown().await,
            Some(r) => {
                ended(r)?;
                Err(AgentError::Task(
                    "the agent stopped before it was asked to".into(),
                ))
            }
        }
    }

    /// The switch [`AgentHandle::abort`] pulls, for tests that need the agent gone while
    /// something else holds its handle.
    #[doc(hidden)]
    pub fn crash_switch(&self) -> CancellationToken {
        self.crash.clone()
    }
}

/// How the agent's task ended, as the caller sees it: a panic is reported with its message
/// (and logged), never swallowed.
fn ended(r: Result<Result<(), AgentError>, tokio::task::JoinError>) -> Result<(), AgentError> {
    match r {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(%message, "the agent's task panicked");
            Err(AgentError::Task(format!(
                "the agent's task panicked: {message}"
            )))
        }
        Err(e) => Err(AgentError::Task(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_the_agents_task_is_reported_with_its_message() {
        let task = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("engine invariant broken at j/0");
            }
            Ok::<(), AgentError>(())
        });
        let err = ended(task.await).unwrap_err();
        assert!(
            err.to_string()
                .contains("the agent's task panicked: engine invariant broken at j/0"),
            "{err}"
        );
        let fine = tokio::spawn(async { Ok::<(), AgentError>(()) });
        assert!(ended(fine.await).is_ok());
    }
}
