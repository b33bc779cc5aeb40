//! Example agents as real processes against real etcd: SIGKILL failover judged by the demo's
//! own checker, and the Prometheus exporter.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardjob_integration::{EtcdCluster, free_ports};

/// A child process killed (and reaped) on drop, also when the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(bin: &str, etcd: &EtcdCluster, id: &str, envs: &[(&str, String)]) -> Proc {
    agent_to(bin, etcd, id, envs, Stdio::null())
}

fn agent_to(
    bin: &str,
    etcd: &EtcdCluster,
    id: &str,
    envs: &[(&str, String)],
    stderr: Stdio,
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.env("SHARDJOB_ENDPOINTS", etcd.endpoints().join(","))
        .env("SHARDJOB_INSTANCE_ID", id)
        .env("SHARDJOB_TTL", "2")
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

#[test]
fn a_sigkilled_agent_process_fails_over_with_no_double_run() {
    let etcd = EtcdCluster::single().unwrap();
    let dir = tempfile_dir();
    let log = dir.join("exec.log");
    let envs = [
        ("SHARDJOB_NAMESPACE", "proc".to_owned()),
        ("SHARDJOB_EXEC_LOG", log.display().to_string()),
        ("SHARDJOB_SHARDS", "12".to_owned()),
    ];
    let quickstart = env!("CARGO_BIN_EXE_quickstart");
    let mut procs: Vec<Proc> = ["p-a", "p-b", "p-c"]
        .iter()
        .map(|id| agent(quickstart, &etcd, id, &envs))
        .collect();

    wait_all_twelve_run(&log);

    let killed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut victim = procs.remove(1);
    victim.0.kill().unwrap(); // SIGKILL: no hand-off, no revoke
    let summary = check_failover(&log, "p-b", &killed_at);
    assert!(summary.starts_with("demo: killed=p-b moved="), "{summary}");
    assert!(summary.ends_with("double_runs=0"), "{summary}");
    eprintln!("{summary}");
    drop(procs);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_sigkilled_process_with_the_stream_on_is_revoked_through_it_long_before_its_ttl() {
    use shardjob_agent::coordinator::election::Election;
    use shardjob_agent::coordinator::keys::Keys;
    use shardjob_agent::coordinator::view::ClusterView;
    use shardjob_integration::revoked::{assert_revoked_through_stream, history, revision};

    let etcd = EtcdCluster::single().unwrap();
    let dir = tempfile_dir();
    let log = dir.join("exec.log");
    let ids = ["s-a", "s-b", "s-c"];
    let stderr = |id: &str| dir.join(format!("{id}.stderr"));
    let mut procs: std::collections::BTreeMap<&str, Proc> = ids
        .iter()
        .map(|id| {
            let envs = [
                ("SHARDJOB_NAMESPACE", "sproc".to_owned()),
                ("SHARDJOB_EXEC_LOG", log.display().to_string()),
                ("SHARDJOB_SHARDS", "12".to_owned()),
                // A TTL the lease cannot explain the move by.
                ("SHARDJOB_TTL", "10".to_owned()),
                ("SHARDJOB_LIVENESS", "127.0.0.1:0".to_owned()),
                (
                    "SHARDJOB_LOG",
                    "warn,shardjob_coordinator::liveness::client=info".to_owned(),
                ),
            ];
            let file = std::fs::File::create(stderr(id)).unwrap();
            let p = agent_to(
                env!("CARGO_BIN_EXE_quickstart"),
                &etcd,
                id,
                &envs,
                file.into(),
            );
            (*id, p)
        })
        .collect();
    wait_all_twelve_run(&log);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = etcd.client().await.unwrap();
        let keys = Keys::new("sproc").unwrap();
        let leader = Election::new(&client, &keys)
            .leader()
            .await
            .unwrap()
            .unwrap()
            .instance;
        let view = ClusterView::load(&client, &keys).await.unwrap();
        let victim = *ids.iter().find(|id| **id != leader).unwrap();
        assert!(
            view.instances.contains_key(victim),
            "{victim} is not registered"
        );
        let mut c = client.clone();
        let lease = c.get(keys.instance(victim), None).await.unwrap().kvs()[0].lease();
        let shards: Vec<u32> = view.jobs["quickstart"]
            .owners
            .iter()
            .filter(|(_, o)| o.owner.instance.as_str() == victim)
            .map(|(s, _)| *s)
            .collect();
        assert!(!shards.is_empty());
        // The victim's stream is attached: its log says so.
        let attached = || {
            std::fs::read_to_string(stderr(victim))
                .unwrap_or_default()
                .contains("liveness stream attached")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !attached() {
            assert!(
                Instant::now() < deadline,
                "{victim} never attached its stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let from = revision(&client, &keys).await.unwrap() + 1;
        let killed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        procs.get_mut(victim).unwrap().0.kill().unwrap(); // SIGKILL
        let summary = check_failover(&log, victim, &killed_at);
        assert!(summary.ends_with("double_runs=0"), "{summary}");
        eprintln!("{summary}");
        // The move was the leader's doing through the broken stream, not the lease's expiry.
        let events = history(&client, &keys, from).await.unwrap();
        assert_revoked_through_stream(
            &client,
            &keys,
            &events,
            victim,
            lease,
            "quickstart",
            &shards,
        )
        .await;
    });
    drop(procs);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_prometheus_example_exports_agent_metrics() {
    let etcd = EtcdCluster::single().unwrap();
    let port = free_ports(1).unwrap()[0];
    let envs = [
        ("SHARDJOB_NAMESPACE", "prom".to_owned()),
        ("SHARDJOB_METRICS_ADDR", format!("127.0.0.1:{port}")),
    ];
    let _p = agent(env!("CARGO_BIN_EXE_prometheus"), &etcd, "m-1", &envs);
    // Scrape until the agent has claimed its 8 shards and fired (an HTTP endpoint offers no
    // event to wait on; this polls with a deadline).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(body) = scrape(port) {
            let has = |m: &str| body.lines().any(|l| l.starts_with(m));
            if has("shardjob_owned_shards 8")
                && has("shardjob_fires_total")
                && has("shardjob_executions_total{outcome=\"ok\"")
            {
                assert!(has("shardjob_is_leader 1"), "{body}");
                // Per job (the default), etcd request times, the lease's remaining proof.
                assert!(
                    body.lines().any(
                        |l| l.starts_with("shardjob_executions_total{") && l.contains("job=\"")
                    ),
                    "{body}"
                );
                assert!(has("shardjob_etcd_request_seconds"), "{body}");
                assert!(has("shardjob_lease_remaining_seconds"), "{body}");
                return;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("metrics never showed a working agent:\n{last}");
}

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// demo-check's verdict on the failover of `victim`, SIGKILLed at `killed_at` (waiting up to
/// 30 s for its shards to run elsewhere): its last line, after asserting it succeeded.
fn check_failover(log: &std::path::Path, victim: &str, killed_at: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_demo-check"))
        .args(["--log", &log.display().to_string(), "--killed", victim])
        .args(["--killed-at", killed_at, "--wait", "30"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().last().unwrap_or_default().to_owned()
}

/// Waits (demo-check, up to 60 s) until three agents share all 12 shards in the log.
fn wait_all_twelve_run(log: &std::path::Path) {
    let ready = Command::new(env!("CARGO_BIN_EXE_demo-check"))
        .args(["--log", &log.display().to_string()])
        .args(["--ready", "12", "--instances", "3", "--wait", "60"])
        .status()
        .unwrap();
    assert!(
        ready.success(),
        "the three agents never shared all 12 shards"
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shardjob-proc-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
