//! [`PgServer`]: a throwaway PostgreSQL for a test or a benchmark, killed on drop.
//!
//! `initdb` into a temp dir, `postgres` on a free loopback port with its socket in that dir,
//! trust authentication, `fsync` off (a test database need not survive a power cut, but a
//! committed transaction survives a crash of the server: commits still reach the kernel). The
//! binaries come from `PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin` (Debian puts
//! them there, off `PATH`). PostgreSQL refuses to run as root: when the tests run as root the
//! server runs as the `postgres` user (the process is started with that uid directly, the same
//! as `runuser -u postgres`, so the child is `postgres` itself and a kill reaches it).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Marker in every data dir path, so a script can find servers a crashed test left.
pub const PG_DIR_PREFIX: &str = "shardjob-pg-";

/// What went wrong while running PostgreSQL for a test.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("no PostgreSQL binaries: set PG_BIN or install postgresql with scripts/setup")]
    NoBinaries,
    #[error("creating the temp dir: {0}")]
    TempDir(std::io::Error),
    #[error("finding a free port: {0}")]
    Port(std::io::Error),
    #[error("looking up the postgres user: {0}")]
    User(String),
    #[error("{step}: {cause}")]
    Run { step: &'static str, cause: String },
    #[error("PostgreSQL not ready after {waited:?}; last log lines:\n{log}")]
    NotReady { waited: Duration, log: String },
}

/// One PostgreSQL server for a test.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<v>/bin`, or `PG_BIN`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The uid and gid of `postgres`, when running as root.
fn server_user() -> Result<Option<(u32, u32)>, PgError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| PgError::User(e.to_string()))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| PgError::User("no postgres user in /etc/passwd (install postgresql)".into()))
}

impl PgServer {
    /// Initialises and starts a server; returns once it accepts connections.
    pub fn start() -> Result<Self, PgError> {
        let bin = bin_dir().ok_or(PgError::NoBinaries)?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix(PG_DIR_PREFIX)
            .tempdir()
            .map_err(PgError::TempDir)?;
        if let Some((uid, gid)) = user {
            nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).map_err(|e| {
                PgError::Run {
                    step: "chown of the temp dir",
                    cause: e.to_string(),
                }
            })?;
        }
        let port = crate::free_ports(1).map_err(PgError::Port)?[0];
        let mut server = Self {
            bin,
            dir,
            port,
            user,
            child: None,
        };
        let data = server.data_dir();
        let out = server
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| PgError::Run {
                step: "initdb",
                cause: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(PgError::Run {
                step: "initdb",
                cause: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        server.resume()?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.env("LC_ALL", "C");
        c
    }

    /// Starts the server again on the same port and data (after [`Self::crash`]).
    pub fn resume(&mut self) -> Result<(), PgError> {
        let log = std::fs::File::create(self.log_path()).map_err(PgError::TempDir)?;
        if let Some((uid, gid)) = self.user {
            let _ = nix::unistd::chown(&self.log_path(), Some(uid.into()), Some(gid.into()));
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=256MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| PgError::Run {
                step: "spawning postgres",
                cause: e.to_string(),
            })?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, patience: Duration) -> Result<(), PgError> {
        let start = Instant::now();
        while start.elapsed() < patience {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(PgError::Run {
                    step: "postgres exited during start-up",
                    cause: format!("{status}; log:\n{}", self.log_tail()),
                });
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(PgError::NotReady {
            waited: patience,
            log: self.log_tail(),
        })
    }

    /// A crash: SIGKILL of the postmaster (its backends exit when they see it gone), waited
    /// for. [`Self::resume`] starts it again; committed data stays.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Backends notice the postmaster's death within moments; wait until the port is free
        // of them (a new postmaster refuses to start while old shared memory is attached).
        let pid_file = self.data_dir().join("postmaster.pid");
        let start = Instant::now();
        while pid_file.exists() && start.elapsed() < Duration::from_secs(10) {
            let held = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
                .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok());
            if !held {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The connection URL (`postgres://postgres@127.0.0.1:<port>/postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the postmaster, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 20)
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown (SIGQUIT) takes the backends down with it; SIGKILL if slow.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGQUIT);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
