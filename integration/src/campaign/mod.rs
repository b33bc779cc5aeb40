//! The fault campaign: a 3-member etcd cluster, agent processes behind controllable proxies,
//! faults drawn by a seeded RNG one at a time, and a recorded timeline for the checker.

mod agent_proc;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use shardjob_coordinator::connect::{ConnectConfig, connect};
use shardjob_coordinator::election::Election;
use shardjob_coordinator::keys::{KeyKind, Keys};
use shardjob_coordinator::model::Owner;
use shardjob_coordinator::view::ClusterView;
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use tokio::time::{Instant, sleep};

pub use agent_proc::AgentProc;

use crate::EtcdCluster;
use crate::benchkit::{ATTACH_TARGET, ATTACHED};
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
    /// Per crash (kill, leader kill): whether the victim led, and how long until every shard
    /// it owned had a new owner key, in seconds, as this process saw it on a watch.
    pub gaps: Vec<(bool, f64)>,
    /// The agents run the liveness stream.
    pub stream: bool,
    /// Per agent: attachments its log held when it was last started.
    attach_seen: Vec<usize>,
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
        stream: bool,
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
            let log = if stream {
                format!("warn,{ATTACH_TARGET}=info")
            } else {
                "warn".to_owned()
            };
            let mut envs = vec![
                ("SHARDJOB_ENDPOINTS".to_owned(), endpoints.join(",")),
                ("SHARDJOB_NAMESPACE".to_owned(), NAMESPACE.to_owned()),
                ("SHARDJOB_TTL".to_owned(), ttl.as_secs().to_string()),
                (
                    "SHARDJOB_EXEC_LOG".to_owned(),
                    exec_log.display().to_string(),
                ),
                ("SHARDJOB_LOG".to_owned(), log),
            ];
            if stream {
                // Streams go straight to the leader, not through the etcd proxies: a partition
                // (a black hole) leaves the stream open, so it still falls back to the lease.
                envs.push(("SHARDJOB_LIVENESS".to_owned(), "127.0.0.1:0".to_owned()));
            }
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
            gaps: Vec::new(),
            stream,
            attach_seen: vec![0; agents],
            keys,
            client,
        })
    }

    /// With the stream on: waits until every agent but the leader has attached since it was
    /// last started (each logs one line per attachment), so a crash finds it attached.
    async fn attached(&self) -> Result<(), String> {
        if !self.stream {
            return Ok(());
        }
        let leader = self.shardjob_leader().await?;
        for (i, a) in self.agents.iter().enumerate() {
            if i != leader {
                let seen = self.attach_seen[i];
                tokio::task::block_in_place(|| a.wait_log(ATTACHED, seen, self.recovery()))?;
            }
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        self.attach_seen[i] = self.agents[i].log_count(ATTACHED);
        self.agents[i].start()
    }

    /// SIGKILLs agent `victim` and returns how long until every shard it owned had another
    /// owner key (watched from just before the kill).
    async fn kill_and_time(&mut self, victim: usize) -> Result<f64, String> {
        let id = self.agents[victim].id.clone();
        let view = ClusterView::load(&self.client, &self.keys)
            .await
            .map_err(|e| e.to_string())?;
        let mut mine: BTreeSet<(String, u32)> = view
            .jobs
            .iter()
            .flat_map(|(job, j)| {
                j.owners
                    .iter()
                    .filter(|(_, o)| o.owner.instance.as_str() == id)
                    .map(move |(s, _)| (job.clone(), *s))
            })
            .collect();
        let mut watcher = PrefixWatcher::new(&self.client, self.keys.owners_root());
        watcher.next().await.map_err(|e| e.to_string())?; // the listing
        let killed = Instant::now();
        self.agents[victim].kill();
        let limit = self.recovery();
        tokio::time::timeout(limit, async {
            while !mine.is_empty() {
                let ev = watcher.next().await.map_err(|e| e.to_string())?;
                let kvs = match ev {
                    WatchEvent::Put(kv) => vec![kv],
                    WatchEvent::Restarted { kvs, .. } => kvs,
                    WatchEvent::Delete { .. } => continue,
                };
                for kv in kvs {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let Some(KeyKind::Owner { job, shard }) = self.keys.parse(&key) else {
                        continue;
                    };
                    let owner = serde_json::from_slice::<Owner>(kv.value())
                        .map(|o| o.instance.to_string())
                        .unwrap_or_default();
                    if owner != id {
                        mine.remove(&(job, shard));
                    }
                }
            }
            Ok::<_, String>(())
        })
        .await
        .map_err(|_| format!("shards of {id} not taken over within {limit:?}"))??;
        Ok(killed.elapsed().as_secs_f64())
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
                self.attached().await?;
                let led = self.shardjob_leader().await? == victim;
                let gap = self.kill_and_time(victim).await?;
                self.gaps.push((led, gap));
                self.converged(n - 1, self.recovery()).await?;
                self.restart(victim)?;
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
                    self.restart(i)?;
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
