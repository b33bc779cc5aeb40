//! One agent process of the campaign: start, SIGKILL, SIGSTOP/SIGCONT, SIGTERM and wait.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// An agent process (killed on drop).
#[derive(Debug)]
pub struct AgentProc {
    pub id: String,
    bin: PathBuf,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    /// Prepares (does not start) agent `id`.
    pub fn new(id: &str, bin: &Path, envs: Vec<(String, String)>, log_dir: &Path) -> Self {
        Self {
            id: id.to_owned(),
            bin: bin.to_owned(),
            envs,
            log: log_dir.join(format!("{id}.log")),
            child: None,
        }
    }

    /// Starts the process (its stderr appends to `<log_dir>/<id>.log`).
    pub fn start(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("SHARDJOB_INSTANCE_ID", &self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, sig: Signal) -> Result<(), String> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| format!("{} is not running", self.id))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        kill(pid, sig).map_err(|e| format!("{sig} to {}: {e}", self.id))
    }

    /// How many lines of this agent's log (all its runs) contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Waits until more than `seen` lines of the log contain `needle` (the agents log as they
    /// go; the file is the only thing a process shares).
    pub fn wait_log(&self, needle: &str, seen: usize, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.log_count(needle) <= seen {
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no new {needle:?} in its log within {limit:?}",
                    self.id
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP.
    pub fn pause(&self) -> Result<(), String> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), String> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM: ask for a graceful shutdown, without waiting.
    pub fn terminate(&self) -> Result<(), String> {
        self.signal(Signal::SIGTERM)
    }

    /// Waits up to `limit` for the process to exit; SIGKILL after that.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("{} did not stop within {limit:?}", self.id));
            }
            // A child's exit has no async notification here; poll.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM (graceful shutdown) and wait up to `limit` for the exit; SIGKILL after that.
    pub fn stop(&mut self, limit: Duration) -> Result<(), String> {
        self.terminate()?;
        self.wait_exit(limit)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.resume();
        }
        self.kill();
    }
}
