//! How many tasks may run at once on this agent: per queue (its `concurrency`) and over every
//! queue of the process (`TasksConfig::max_running`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The two limits a running task holds a permit of.
#[derive(Debug, Clone)]
pub struct Permits {
    pub queue: Arc<Semaphore>,
    pub agent: Option<Arc<Semaphore>>,
}

/// Held while a task runs.
#[derive(Debug)]
pub struct Held(
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] Option<OwnedSemaphorePermit>,
);

impl Permits {
    /// Permits free under both limits.
    pub fn available(&self) -> usize {
        let q = self.queue.available_permits();
        self.agent
            .as_ref()
            .map_or(q, |a| q.min(a.available_permits()))
    }

    /// Waits for a permit of each limit (the queue's first, so one queue cannot hold the
    /// agent's permits while it waits for its own).
    pub async fn acquire(&self) -> Option<Held> {
        let q = self.queue.clone().acquire_owned().await.ok()?;
        let a = match &self.agent {
            Some(a) => Some(a.clone().acquire_owned().await.ok()?),
            None => None,
        };
        Some(Held(q, a))
    }

    /// Resolves once a permit of the limit that is exhausted may be free (to wake a starved
    /// worker).
    pub async fn changed(&self) {
        match &self.agent {
            Some(a) if a.available_permits() == 0 => drop(a.acquire().await),
            _ => drop(self.queue.acquire().await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_limits_hold() {
        let agent = Arc::new(Semaphore::new(1));
        let a = Permits {
            queue: Arc::new(Semaphore::new(5)),
            agent: Some(agent.clone()),
        };
        let b = Permits {
            queue: Arc::new(Semaphore::new(5)),
            agent: Some(agent),
        };
        assert_eq!(a.available(), 1);
        let held = a.acquire().await.unwrap();
        assert_eq!(
            (a.available(), b.available()),
            (0, 0),
            "the agent's one permit is shared"
        );
        drop(held);
        assert_eq!(b.available(), 1);
    }
}
