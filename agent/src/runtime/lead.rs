//! The leader loop an agent runs per session: campaign, run the rebalancer while leading,
//! campaign again if deposed, resign when stopped.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use shardjob_coordinator::election::{Election, ElectionError};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::liveness::server::LivenessServer;
use shardjob_coordinator::rebalance::{RebalanceExit, RebalanceOptions, run_leader};
use shardjob_coordinator::session::SessionHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Event;

pub(crate) struct LeadTask {
    pub client: Client,
    pub keys: Keys,
    pub id: String,
    pub session: SessionHandle,
    pub options: RebalanceOptions,
    pub stop: CancellationToken,
    pub events: mpsc::Sender<Event>,
    /// The listener that takes liveness streams while this agent leads.
    pub liveness: Option<Arc<LivenessServer>>,
}

impl LeadTask {
    pub(crate) async fn run(self) {
        let election = Election::new(&self.client, &self.keys);
        let lost = self.session.lost();
        loop {
            let campaign = election.campaign(&self.session, &self.id);
            let leadership = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = campaign => match r {
                    Ok(l) => l,
                    Err(ElectionError::SessionLost { .. }) => return,
                    Err(e) => {
                        // Usually a transient etcd error (a raft election): every moment without
                        // a leader delays reassignments, so try again soon.
                        warn!(error = %e, "campaign failed; retrying");
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                },
            };
            self.report(true).await;
            // Streams are served for exactly this term: dropping it closes them.
            let term = self.liveness.as_ref().map(|l| l.lead(leadership.clone()));
            // The rebalancer stops when told to, or when the session is lost.
            let stop = self.stop.child_token();
            let watch_lost = {
                let (stop, lost) = (stop.clone(), lost.clone());
                tokio::spawn(async move {
                    lost.cancelled().await;
                    stop.cancel();
                })
            };
            let result =
                run_leader(&self.client, &self.keys, &leadership, &self.options, stop).await;
            watch_lost.abort();
            drop(term);
            self.report(false).await;
            match result {
                Ok((RebalanceExit::Deposed, _)) => continue,
                Ok((RebalanceExit::Stopped, _)) => {
                    if !lost.is_cancelled() {
                        // Hand leadership over at once instead of at lease expiry.
                        if let Err(e) = leadership.resign(&self.client).await {
                            warn!(error = %e, "resign failed");
                        }
                    }
                    info!("stopped leading");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "rebalancer failed; resigning and campaigning again");
                    let _ = leadership.resign(&self.client).await;
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn report(&self, leading: bool) {
        metrics::gauge!("shardjob_is_leader").set(if leading { 1.0 } else { 0.0 });
        let _ = self.events.send(Event::Leader(leading)).await;
    }
}
