//! Running the real `shardjob` binary from tests.

use std::process::Command;

/// What one run printed.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shardjob args..` (without the caller's ETCDCTL_USER).
pub async fn shardjob(args: Vec<String>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardjob"));
    cmd.args(args).env_remove("ETCDCTL_USER");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `&str` arguments as owned strings.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
