//! Resident jobs: a run for as long as the shard is held, stopped before the release and cut
//! at a self-fence.

use super::harness::*;
use crate::engine::{Command, ExecId, Input, RunKind::*};
use shardjob_coordinator::model::{JobConfig, Schedule};

fn resident(total: u32) -> JobConfig {
    JobConfig::new(Schedule::Resident, total)
}

/// A resident job `j` of `total` shards, all claimed here (token 100 + shard), and the exec id
/// of each shard's run.
fn holding(total: u32) -> (Harness, Vec<ExecId>) {
    let mut h = Harness::new();
    h.open();
    h.job("j", resident(total));
    h.assign("j", &vec![ME; total as usize], 40);
    let execs = (0..total)
        .map(|s| exec_of(&h.won("j", s, 100 + i64::from(s), None, None), s))
        .collect();
    (h, execs)
}

/// The stops among `commands`.
fn stops(commands: &[Command]) -> Vec<u32> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Stop { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect()
}

#[test]
fn a_claim_starts_one_resident_run_with_the_token_and_nothing_fires_after() {
    let mut h = Harness::new();
    h.open();
    h.job("j", resident(2));
    h.assign("j", &[ME, ME], 40);
    let won = h.won("j", 1, 101, None, None);
    assert_eq!(launches(&won), [(1, 0.5, Resident)]);
    assert!(
        won.iter()
            .any(|c| matches!(c, Command::Launch { token, .. } if token.0 == 101))
    );
    assert_eq!(
        launches(&h.at(9.0)),
        [],
        "no schedule: no fires, no second run"
    );
}

#[test]
fn a_shard_reassigned_away_stops_its_run_and_releases_only_after_it_ended() {
    let (mut h, execs) = holding(1);
    let exec = execs[0];
    let moved = h.assign("j", &["other"], 41);
    assert_eq!(stops(&moved), [0]);
    assert_eq!(releases(&moved), [], "the run still goes on");
    assert!(
        stops(&h.assign("j", &["other"], 42)).is_empty(),
        "asked once"
    );
    let ended = h.done("j", 0, exec);
    assert_eq!(releases(&ended), [(0, 100, None)]);
    assert_eq!(launches(&ended), [], "not wanted here any more");
}

#[test]
fn a_run_that_ends_by_itself_starts_again_at_the_recheck_not_at_once() {
    let (mut h, execs) = holding(1);
    let first = execs[0];
    h.set(2.0);
    assert_eq!(launches(&h.done("j", 0, first)), [], "no tight loop");
    assert_eq!(
        launches(&h.assign("j", &[ME], 41)),
        [],
        "nor when the job is decided again"
    );
    assert_eq!(launches(&h.at(3.5)), [(0, 2.0, Resident)]);
}

#[test]
fn a_self_fence_cuts_the_run_and_nothing_restarts_it_under_the_old_lease() {
    let (mut h, _) = holding(1);
    let fenced = h.step(Input::SessionLost);
    assert_eq!(aborts(&fenced), [0]);
    assert_eq!(launches(&h.at(5.0)), []);
}

#[test]
fn a_lapse_aborts_the_run_and_the_proof_starts_it_again_with_the_same_token() {
    let (mut h, _) = holding(1);
    assert_eq!(aborts(&h.at(10.5)), [0]);
    let resumed = h.prove_until(20.0);
    assert_eq!(launches(&resumed), [(0, 0.5, Resident)]);
    assert!(
        resumed
            .iter()
            .any(|c| matches!(c, Command::Launch { token, replay: true, .. } if token.0 == 100))
    );
}

#[test]
fn a_shutdown_stops_resident_runs_even_while_still_assigned() {
    let (mut h, execs) = holding(2);
    let stopping = h.step(Input::ShutdownBegun);
    assert_eq!(stops(&stopping), [0, 1]);
    let ended = h.done("j", 0, execs[0]);
    assert_eq!(launches(&ended), [], "nothing starts during a shutdown");
    assert_eq!(launches(&h.at(5.0)), []);
}

#[test]
fn disabling_a_resident_job_stops_its_runs_and_enabling_starts_them() {
    let (mut h, execs) = holding(1);
    let run = execs[0];
    let mut off = resident(1);
    off.disabled = true;
    assert_eq!(stops(&h.job("j", off)), [0]);
    assert_eq!(launches(&h.done("j", 0, run)), []);
    assert_eq!(launches(&h.at(3.0)), [], "disabled: nothing at the recheck");
    assert_eq!(launches(&h.job("j", resident(1))), [(0, 3.0, Resident)]);
}
