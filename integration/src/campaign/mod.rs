//! The fault campaign: a 3-member etcd cluster, agent processes behind controllable proxies,
//! faults drawn by a seeded RNG one at a time, and a recorded timeline for the checker.

mod agent_proc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use shardjob_coordinator::connect::{ConnectConfig, connect};
use shardjob_coordinator::election::Election;
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::view::ClusterView;
use tokio::time::{Instant, sleep};

pub use agent_proc::AgentProc;

use crate::EtcdCluster;
use crate::checker::{Fault, FaultKind, JobPlan};
use crate::proxy::Proxy;
use crate::rng::SplitMix64;

/// The namespace the campaign uses.
pub const NAMESPACE: &str = "chaos";

/// The jobs of `chaos_agent`.
pub fn plans() -> Vec<JobPlan> {
    vec![
        JobPlan {
            job: "fast".into(),
            total: 16,
            every: Duration::from_secs(1),
        },
        JobPlan {
            job: "fo".into(),
            total: 5,
            every: Duration::from_secs(2),
        },
    ]
}

/// A running campaign.
pub struct Campaign {
    pub etcd: EtcdCluster,
    pub agents: Vec<AgentProc>,
    proxies: Vec<Vec<Proxy>>,
    pub ttl: Duration,
    pub faults: Vec<Fault>,
    pub exec_log: PathBuf,
    keys: Keys,
    client: etcd_client::Client,
}

impl std::fmt::Debug for Campaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Campaign")
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl Campaign {
    /// Starts etcd (3 members), one proxy per agent and member, and `agents` agent processes.
    pub async fn start(
        agent_bin: &Path,
        agents: usize,
        ttl: Duration,
        dir: &Path,
    ) -> Result<Self, String> {
        let etcd =
            tokio::task::block_in_place(|| EtcdCluster::start(3)).map_err(|e| e.to_string())?;
        let exec_log = dir.join("exec.log");
        let mut proxies = Vec::new();
        let mut procs = Vec::new();
        for i in 0..agents {
            let mut mine = Vec::new();
            for m in 0..3 {
                let addr = ([127, 0, 0, 1], etcd.client_port(m)).into();
                mine.push(Proxy::start(addr).await.map_err(|e| e.to_string())?);
            }
            let endpoints: Vec<String> = mine
                .iter()
                .map(|p| format!("http://127.0.0.1:{}", p.port()))
                .collect();
            let envs = vec![
                ("SHARDJOB_ENDPOINTS".to_owned(), endpoints.join(",")),
                ("SHARDJOB_NAMESPACE".to_owned(), NAMESPACE.to_owned()),
                ("SHARDJOB_TTL".to_owned(), ttl.as_secs().to_string()),
                (
                    "SHARDJOB_EXEC_LOG".to_owned(),
                    exec_log.display().to_string(),
                ),
                ("SHARDJOB_LOG".to_owned(), "warn".to_owned()),
            ];
            let mut p = AgentProc::new(&format!("agent-{i}"), agent_bin, envs, dir);
            p.start()?;
            procs.push(p);
            proxies.push(mine);
        }
        let config = ConnectConfig {
            endpoints: etcd.endpoints(),
            ..ConnectConfig::default()
        };
        let client = connect(&config).await.map_err(|e| e.to_string())?;
        let keys = Keys::new(NAMESPACE).map_err(|e| e.to_string())?;
        Ok(Self {
            etcd,
            agents: procs,
            proxies,
            ttl,
            faults: Vec::new(),
            exec_log,
            keys,
            client,
        })
    }

    /// Waits until `instances` agents are registered and every shard of both jobs is owned by its
    /// assignee (polling the namespace: the campaign driver has no better event).
    pub async fn converged(&mut self, instances: usize, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("nothing read yet");
        while Instant::now() < deadline {
            match ClusterView::load(&self.client, &self.keys).await {
                Ok(v) => {
                    let jobs_ok = plans().iter().all(|p| {
                        v.jobs
                            .get(&p.job)
                            .is_some_and(|j| j.converged() && j.assigned() == p.total as usize)
                    });
                    if v.instances.len() == instances && jobs_ok {
                        return Ok(());
                    }
                    last = format!("{} instances, jobs converged: {jobs_ok}", v.instances.len());
                }
                Err(e) => last = e.to_string(),
            }
            sleep(Duration::from_millis(200)).await;
        }
        Err(format!("not converged after {limit:?}: {last}"))
    }

    fn record(&mut self, kind: FaultKind, target: &str, start: chrono::DateTime<Utc>) {
        self.faults.push(Fault {
            kind,
            target: target.to_owned(),
            start,
            end: Utc::now(),
        });
    }

    fn recovery(&self) -> Duration {
        self.ttl * 3 + Duration::from_secs(20)
    }

    /// Injects one fault of `kind` (target drawn from `rng`) and waits for recovery.
    pub async fn inject(&mut self, kind: FaultKind, rng: &mut SplitMix64) -> Result<(), String> {
        let n = self.agents.len();
        let pick = rng.below(n as u64) as usize;
        let start = Utc::now();
        let outlast_ttl = self.ttl + Duration::from_millis(1500);
        match kind {
            FaultKind::Kill | FaultKind::LeaderKill => {
                let victim = if kind == FaultKind::LeaderKill {
                    self.shardjob_leader().await?
                } else {
                    pick
                };
                let id = self.agents[victim].id.clone();
                self.agents[victim].kill();
                self.converged(n - 1, self.recovery()).await?;
                self.agents[victim].start()?;
                self.record(kind, &id, start);
            }
            FaultKind::Pause => {
                let id = self.agents[pick].id.clone();
                self.agents[pick].pause()?;
                sleep(outlast_ttl).await;
                self.agents[pick].resume()?;
                self.record(kind, &id, start);
            }
            FaultKind::Partition => {
                let id = self.agents[pick].id.clone();
                self.proxies[pick].iter().for_each(Proxy::cut);
                sleep(outlast_ttl).await;
                self.proxies[pick].iter().for_each(Proxy::heal);
                self.record(kind, &id, start);
            }
            FaultKind::EtcdLeader => {
                let member = self.raft_leader().await?;
                self.etcd.kill(member).map_err(|e| e.to_string())?;
                tokio::task::block_in_place(|| self.etcd.wait_healthy_all())
                    .map_err(|e| e.to_string())?;
                sleep(Duration::from_secs(1)).await;
                tokio::task::block_in_place(|| self.etcd.restart(member))
                    .map_err(|e| e.to_string())?;
                self.record(kind, &format!("etcd-m{member}"), start);
            }
            FaultKind::Rolling => {
                for i in 0..n {
                    self.agents[i].stop(Duration::from_secs(20))?;
                    self.agents[i].start()?;
                    self.converged(n, self.recovery()).await?;
                }
                self.record(kind, "all", start);
            }
        }
        self.converged(n, self.recovery()).await
    }

    /// The agent index that leads the namespace.
    async fn shardjob_leader(&self) -> Result<usize, String> {
        let leader = Election::new(&self.client, &self.keys)
            .leader()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no shardjob leader")?;
        self.agents
            .iter()
            .position(|a| a.id == leader.instance)
            .ok_or_else(|| format!("leader {} is not one of the agents", leader.instance))
    }

    /// The etcd member that is raft leader.
    async fn raft_leader(&self) -> Result<usize, String> {
        for i in 0..self.etcd.size() {
            let Ok(mut c) = self.etcd.member_client(i).await else {
                continue;
            };
            let Ok(s) = c.status().await else { continue };
            if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                return Ok(i);
            }
        }
        Err("no etcd member says it is raft leader".into())
    }

    /// Stops every agent gracefully.
    pub fn stop_all(&mut self) {
        for a in &mut self.agents {
            let _ = a.stop(Duration::from_secs(20));
        }
    }
}
