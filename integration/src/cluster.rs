//! [`EtcdCluster`]: one or more real etcd processes for a test, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::health::is_healthy;
use crate::ports::free_ports;

/// Marker in every data dir path, so a script can find etcd processes a crashed test left.
pub const DATA_DIR_PREFIX: &str = "shardjob-etcd-";

/// What went wrong while running etcd for a test.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("creating the temp data dir: {0}")]
    TempDir(std::io::Error),
    #[error("finding free ports: {0}")]
    Ports(std::io::Error),
    #[error("spawning {bin}: {cause} (install etcd with scripts/setup, or set ETCD_BIN)")]
    Spawn { bin: String, cause: std::io::Error },
    #[error("etcd member {member} exited during start-up ({status}); last log lines:\n{log}")]
    Exited {
        member: usize,
        status: String,
        log: String,
    },
    #[error("etcd member {member} not healthy after {waited:?}; last log lines:\n{log}")]
    NotHealthy {
        member: usize,
        waited: Duration,
        log: String,
    },
    #[error("signalling etcd member {member}: {cause}")]
    Signal { member: usize, cause: nix::Error },
    #[error("etcd member {member} did not stop when paused: {status}")]
    NotStopped { member: usize, status: String },
    #[error("etcd member {member} is not running")]
    NotRunning { member: usize },
    #[error("no etcd member {member} (cluster has {size})")]
    NoSuchMember { member: usize, size: usize },
    #[error("connecting a client to {endpoints:?}: {cause}")]
    Connect {
        endpoints: Vec<String>,
        cause: String,
    },
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of members (1 or more; 3 for fault tests).
    pub members: usize,
    /// Extra flags for every member (TLS, auth, quotas...).
    pub extra_args: Vec<String>,
    /// The etcd binary; `None`: `ETCD_BIN`, else `etcd` from `PATH`.
    pub bin: Option<PathBuf>,
    /// Serve clients over TLS with these files (client certificates required when `client_ca`
    /// is set). Health checks use a separate plain metrics port either way.
    pub tls: Option<TlsFiles>,
    /// How long to wait for every member to report healthy.
    pub ready_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            members: 1,
            extra_args: Vec::new(),
            bin: None,
            tls: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// Certificate files for a TLS cluster (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that client certificates must chain to (`--client-cert-auth`).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// Real etcd processes for one test. Every process is killed when this is dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    bin: PathBuf,
    options: ClusterOptions,
    // Dropped last (fields drop in order), after Drop::drop killed the processes.
    _dir: TempDir,
}

static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

impl EtcdCluster {
    /// One etcd member, healthy.
    pub fn single() -> Result<Self, HarnessError> {
        Self::with_options(ClusterOptions::default())
    }

    /// `members` etcd members forming one cluster, all healthy.
    pub fn start(members: usize) -> Result<Self, HarnessError> {
        Self::with_options(ClusterOptions {
            members,
            ..ClusterOptions::default()
        })
    }

    /// One member run from `bin` instead of `ETCD_BIN`/`PATH`.
    pub fn with_bin(bin: impl Into<PathBuf>) -> Result<Self, HarnessError> {
        Self::with_options(ClusterOptions {
            bin: Some(bin.into()),
            ..ClusterOptions::default()
        })
    }

    /// A cluster as `options` say. Retries with fresh ports when a member cannot bind.
    pub fn with_options(options: ClusterOptions) -> Result<Self, HarnessError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(options.clone()) {
                Ok(c) => return Ok(c),
                Err(e @ HarnessError::Exited { .. })
                    if e.to_string().contains("address already in use") =>
                {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(HarnessError::NotRunning { member: 0 }))
    }

    fn try_start(options: ClusterOptions) -> Result<Self, HarnessError> {
        let n = options.members.max(1);
        let dir = tempfile::Builder::new()
            .prefix(DATA_DIR_PREFIX)
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let ports = free_ports(3 * n).map_err(HarnessError::Ports)?;
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let token = format!("shardjob-test-{}-{seq}", std::process::id());
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let bin = options.bin.clone().unwrap_or_else(|| {
            std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
        });
        let mut cluster = Self {
            members,
            token,
            bin,
            options,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Number of members (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Client URL of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    /// Client URL of member `i` (`http://127.0.0.1:<port>`, `https://` with TLS).
    pub fn endpoint(&self, i: usize) -> String {
        self.url(i)
    }

    /// Client port of member `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members.get(i).map_or(0, |m| m.client_port)
    }

    /// OS process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }

    /// A client connected to every member.
    pub async fn client(&self) -> Result<etcd_client::Client, HarnessError> {
        connect(self.endpoints()).await
    }

    /// A client connected to member `i` only.
    pub async fn member_client(&self, i: usize) -> Result<etcd_client::Client, HarnessError> {
        connect(vec![self.endpoint(i)]).await
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        let m = self.member_mut(i)?;
        let mut child = m
            .child
            .take()
            .ok_or(HarnessError::NotRunning { member: i })?;
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// SIGSTOP member `i`: it holds its ports but answers nothing.
    /// Returns once the member has stopped: a signal is delivered asynchronously, and an etcd
    /// thread already on a CPU answered a request sent right after `kill` (a harness test
    /// failed so in CI). The stop is awaited with `waitpid(WUNTRACED)`, which reports each stop
    /// of a child once; a member already stopped (paused twice) is seen in `/proc` before signalling.
    pub fn pause(&mut self, i: usize) -> Result<(), HarnessError> {
        let pid = self.pid(i).ok_or(HarnessError::NotRunning { member: i })?;
        if proc_state(pid) == Some('T') {
            return Ok(()); // stopped already: no new stop to report
        }
        self.signal(i, Signal::SIGSTOP)?;
        let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        match waitpid(raw, Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(..)) => Ok(()),
            Ok(other) => Err(HarnessError::NotStopped {
                member: i,
                status: format!("{other:?}"),
            }),
            Err(cause) => Err(HarnessError::Signal { member: i, cause }),
        }
    }

    /// SIGCONT member `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), HarnessError> {
        self.signal(i, Signal::SIGCONT)
    }

    /// Start member `i` again with its data dir (killing it first if it runs); waits for health.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        if self.member_mut(i)?.child.is_some() {
            self.kill(i)?;
        }
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    /// Waits until member `i` reports healthy (it has a leader and serves quorum reads).
    pub fn wait_healthy(&mut self, i: usize) -> Result<(), HarnessError> {
        let timeout = self.options.ready_timeout;
        let start = Instant::now();
        let port = self.member_mut(i)?.metrics_port;
        loop {
            self.check_alive(i)?;
            if is_healthy(port) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(HarnessError::NotHealthy {
                    member: i,
                    waited: start.elapsed(),
                    log: self.log_tail(i),
                });
            }
            // Polling is the only way: etcd has no readiness notification for a client.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running member reports healthy (after a kill: a new raft leader).
    pub fn wait_healthy_all(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_healthy(i)?;
            }
        }
        Ok(())
    }

    /// The last lines of member `i`'s log (its stderr).
    pub fn log_tail(&self, i: usize) -> String {
        let Some(m) = self.members.get(i) else {
            return String::new();
        };
        let text = std::fs::read_to_string(log_path(&m.data_dir)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port(i))
    }

    /// The value of Prometheus metric `name` on member `i` (summed over its series), read from
    /// its metrics endpoint; `None` when the member does not answer or has no such metric.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let port = self.members.get(i)?.metrics_port;
        let text = crate::health::get(port, "/metrics").ok()?;
        crate::health::metric_sum(&text, name)
    }

    /// URL of member `i`'s plain-HTTP metrics endpoint (`/metrics`, `/health`).
    pub fn metrics_url(&self, i: usize) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.members.get(i).map_or(0, |m| m.metrics_port)
        )
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member, HarnessError> {
        let size = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(HarnessError::NoSuchMember { member: i, size })
    }

    fn signal(&mut self, i: usize, sig: Signal) -> Result<(), HarnessError> {
        let pid = self.pid(i).ok_or(HarnessError::NotRunning { member: i })?;
        let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        kill(pid, sig).map_err(|cause| HarnessError::Signal { member: i, cause })
    }

    fn check_alive(&mut self, i: usize) -> Result<(), HarnessError> {
        let m = self.member_mut(i)?;
        let child = m
            .child
            .as_mut()
            .ok_or(HarnessError::NotRunning { member: i })?;
        if let Ok(Some(status)) = child.try_wait() {
            m.child = None;
            return Err(HarnessError::Exited {
                member: i,
                status: status.to_string(),
                log: self.log_tail(i),
            });
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let bin = self.bin.clone();
        let mut extra = self.options.extra_args.clone();
        let token = self.token.clone();
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(tls) = &self.options.tls {
            extra.push(format!("--cert-file={}", tls.cert.display()));
            extra.push(format!("--key-file={}", tls.key.display()));
            if let Some(ca) = &tls.client_ca {
                extra.push(format!("--trusted-ca-file={}", ca.display()));
                extra.push("--client-cert-auth".into());
            }
        }
        let m = self.member_mut(i)?;
        std::fs::create_dir_all(&m.data_dir).map_err(HarnessError::TempDir)?;
        let log = File::create(log_path(&m.data_dir)).map_err(HarnessError::TempDir)?;
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let child = Command::new(&bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .args(["--listen-metrics-urls", &metrics])
            // As etcd 3.5 does by default, and as production 3.4 clusters should run: a
            // restarted member must not be able to force a new election when it rejoins.
            .args(["--pre-vote=true"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|cause| HarnessError::Spawn {
                bin: bin.display().to_string(),
                cause,
            })?;
        m.child = Some(child);
        Ok(())
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("etcd.log")
}

async fn connect(endpoints: Vec<String>) -> Result<etcd_client::Client, HarnessError> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    etcd_client::Client::connect(endpoints.clone(), Some(opts))
        .await
        .map_err(|e| HarnessError::Connect {
            endpoints,
            cause: e.to_string(),
        })
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // SIGKILL also ends a SIGSTOPped process.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`T`: stopped), if readable.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the command may hold spaces and parentheses; the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
