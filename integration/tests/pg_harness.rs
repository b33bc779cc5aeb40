//! The PostgreSQL harness itself: a server starts, survives a crash and restart with its data,
//! and is gone after drop.
#![allow(clippy::unwrap_used)]

use shardjob_integration::postgres::PgServer;

fn psql(pg: &PgServer, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([&pg.url(), "-XAtqc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_server_starts_keeps_its_data_across_a_crash_and_dies_with_its_handle() {
    let mut pg = PgServer::start().unwrap();
    psql(&pg, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)");
    pg.crash();
    assert!(pg.pid().is_none());
    pg.resume().unwrap();
    assert_eq!(psql(&pg, "SELECT x FROM t"), "7");
    let pid = pg.pid().unwrap();
    drop(pg);
    let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err();
    assert!(gone, "postmaster {pid} outlived its handle");
}
