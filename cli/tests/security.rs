//! TLS and etcd authentication end to end: agents, leader election and the CLI under TLS with
//! client certificates, and under a role that may only touch its namespace prefix.
#![allow(clippy::unwrap_used)]

mod common;

use common::{args, shardjob as sj};

use etcd_client::Permission;
use shardjob_agent::JobSpec;
use shardjob_integration::agents::{Slow, builder, recorder, shutdown_all, wait_owned};
use shardjob_integration::certs::TestPki;
use shardjob_integration::{ClusterOptions, EtcdCluster, TlsFiles};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_cli_work_over_tls_and_a_wrong_ca_is_one_clear_line() {
    let pki = TestPki::generate().unwrap();
    let etcd = EtcdCluster::with_options(ClusterOptions {
        tls: Some(TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca.clone()),
        }),
        ..ClusterOptions::default()
    })
    .unwrap();
    let endpoints = etcd.endpoints();
    assert!(endpoints[0].starts_with("https://"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(2);
    let agent = builder(&endpoints, "tls", "a")
        .tls(
            &pki.ca,
            Some((pki.client_cert.clone(), pki.client_key.clone())),
        )
        .job(spec, recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    wait_owned(&[agent.status()], "j", 2, |_| true).await;

    // From the agent's side, a CA that did not sign the server fails start() at once as a TLS
    // failure (waiting cannot fix it), not as an unreachable etcd retried for connect_timeout.
    let (tx, _rx) = mpsc::unbounded_channel();
    let wrong = builder(&endpoints, "tls", "b")
        .tls(
            &pki.other_ca,
            Some((pki.client_cert.clone(), pki.client_key.clone())),
        )
        .dial_timeout(std::time::Duration::from_secs(2))
        .job(
            JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(2),
            recorder("b", tx, Slow::default()),
        )
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            wrong,
            shardjob_agent::AgentError::Connect(
                shardjob_coordinator::connect::ConnectError::Tls { .. }
            )
        ),
        "{wrong}"
    );

    let p = |path: &std::path::Path| path.display().to_string();
    let base = |ca: &str| {
        args(&[
            "--endpoints",
            &endpoints[0],
            "--namespace",
            "tls",
            "--cacert",
            ca,
            "--cert",
            &p(&pki.client_cert),
            "--key",
            &p(&pki.client_key),
        ])
    };
    let mut status = base(&p(&pki.ca));
    status.extend(args(&["status", "--json"]));
    let ok = sj(status).await;
    assert!(ok.ok, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("\"converged\":true") && ok.stdout.contains("\"leader\":\"a\""),
        "{}",
        ok.stdout
    );

    let mut wrong_ca = base(&p(&pki.other_ca));
    wrong_ca.extend(args(&["--dial-timeout", "2s", "status"]));
    let bad = sj(wrong_ca).await;
    assert!(!bad.ok && bad.stderr.lines().count() == 1, "{}", bad.stderr);
    assert!(bad.stderr.starts_with("shardjob: "), "{}", bad.stderr);
    // Sorted by the transport's error, not by its text: a TLS failure, not "cannot reach".
    assert!(bad.stderr.contains("TLS handshake"), "{}", bad.stderr);
    eprintln!("wrong CA: {}", bad.stderr.trim());

    let plain = sj(args(&[
        "--endpoints",
        &endpoints[0].replace("https", "http"),
        "--dial-timeout",
        "2s",
        "status",
    ]))
    .await;
    assert!(
        !plain.ok && plain.stderr.lines().count() == 1,
        "{}",
        plain.stderr
    );
    shutdown_all([agent]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_limited_to_the_namespace_prefix_is_enough_and_other_namespaces_are_denied() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let mut root = etcd.client().await.unwrap();
    root.user_add("root", "root-pw", None).await.unwrap();
    root.role_add("root").await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.role_add("shardjob-prod").await.unwrap();
    root.role_grant_permission(
        "shardjob-prod",
        Permission::read_write("/shardjob/prod/").with_prefix(),
    )
    .await
    .unwrap();
    root.user_add("ops", "ops-pw", None).await.unwrap();
    root.user_grant_role("ops", "shardjob-prod").await.unwrap();
    root.auth_enable().await.unwrap();

    // Two agents under the limited user: sessions, election, rebalancing and claims all work.
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let spec = JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(4);
        agents.push(
            builder(&endpoints, "prod", id)
                .user("ops", "ops-pw")
                .job(spec, recorder(id, tx.clone(), Slow::default()))
                .start()
                .await
                .unwrap(),
        );
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;
    assert_eq!(statuses.iter().filter(|s| s.borrow().is_leader).count(), 1);

    let cli = |ns: &str, user: &str, extra: &[&str]| {
        let mut a = args(&[
            "--endpoints",
            &endpoints[0],
            "--namespace",
            ns,
            "--user",
            user,
            "--dial-timeout",
            "2s",
        ]);
        a.extend(args(extra));
        sj(a)
    };
    let ok = cli("prod", "ops:ops-pw", &["status", "--json"]).await;
    assert!(
        ok.ok && ok.stdout.contains("\"converged\":true"),
        "{}{}",
        ok.stdout,
        ok.stderr
    );
    let trig = cli("prod", "ops:ops-pw", &["trigger", "j"]).await;
    assert!(trig.ok, "{}", trig.stderr);

    let denied = cli("staging", "ops:ops-pw", &["status"]).await;
    assert!(
        !denied.ok && denied.stderr.lines().count() == 1,
        "{}",
        denied.stderr
    );
    assert!(
        denied.stderr.contains("permission denied"),
        "{}",
        denied.stderr
    );

    let wrong = cli("prod", "ops:nope", &["status"]).await;
    assert!(
        !wrong.ok && wrong.stderr.lines().count() == 1,
        "{}",
        wrong.stderr
    );
    assert!(
        wrong
            .stderr
            .contains("authentication failed for user \"ops\""),
        "{}",
        wrong.stderr
    );
    shutdown_all(agents).await;
}
