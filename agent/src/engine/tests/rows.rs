//! One test per rule, each a few rows `given state + input at now → commands`.

use super::harness::*;
use crate::engine::{ClaimResult, Command, Input, LeaseId, Listing, RunKind::*, SeenOwner, Token};

// ---- at most one launch per (shard, fire) --------------------------------------------------

#[test]
fn a_claim_answered_after_a_fire_is_due_but_before_it_pops_runs_that_fire_once() {
    // The race found on main: the claim's catch-up ran fire 1.0, then the heap popped 1.0,
    // saw the shard running and queued 1.0 again as a misfire.
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    assert_eq!(claims(&h.assign("j", &[ME], 40)), [(vec![0], 40)]);
    h.set(1.02); // fire 1.0 is due; the timer has not fired yet
    let won = h.won("j", 0, 100, released_cursor(0.0), None);
    assert_eq!(launches(&won), [(0, 1.0, CatchUp)]);
    assert_eq!(
        launches(&h.at(1.02)),
        [],
        "the heap's 1.0 is the fire the catch-up ran"
    );
    assert_eq!(
        launches(&h.done("j", 0, exec_of(&won, 0))),
        [],
        "nothing coalesced"
    );
    assert_eq!(launches(&h.at(2.0)), [(0, 2.0, Scheduled)]);
}

#[test]
fn a_claim_answered_before_the_heap_pops_the_previous_owners_last_fire_does_not_repeat_it() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    h.assign("j", &[ME], 40);
    h.set(1.02);
    // The previous owner ran 1.0 and released.
    assert_eq!(
        launches(&h.won("j", 0, 100, released_cursor(1.0), None)),
        []
    );
    assert_eq!(launches(&h.at(1.5)), [], "1.0 ran on the previous owner");
    assert_eq!(launches(&h.at(2.0)), [(0, 2.0, Scheduled)]);
}

#[test]
fn a_fire_cut_short_is_rerun_exactly_once_by_the_next_owner() {
    let mut h = Harness::new();
    h.open();
    h.job("j", failover(every_second(1)));
    h.assign("j", &[ME], 40);
    h.set(1.3);
    // The dead owner was running 1.0 (its marker); its cursor is not trusted (a crash).
    let unreleased = Some(shardjob_coordinator::model::Cursor::default());
    let won = h.won("j", 0, 100, unreleased, marker(1.0, 90));
    assert_eq!(launches(&won), [(0, 1.0, Failover)]);
    assert_eq!(
        launches(&h.at(1.3)),
        [],
        "the heap's 1.0 is the fire being re-run"
    );
    assert_eq!(launches(&h.done("j", 0, exec_of(&won, 0))), []);
    assert_eq!(launches(&h.at(2.0)), [(0, 2.0, Scheduled)]);
}

#[test]
fn a_catch_up_never_runs_the_fire_the_failover_run_covers() {
    // A shutdown timeout: the old owner released (last_fire 0.0) with fire 1.0 cut short.
    let mut h = Harness::new();
    h.open();
    h.job("j", failover(every_second(1)));
    h.assign("j", &[ME], 40);
    h.set(1.3);
    let won = h.won("j", 0, 100, released_cursor(0.0), marker(1.0, 90));
    assert_eq!(
        launches(&won),
        [(0, 1.0, Failover)],
        "no catch-up of 1.0 besides"
    );
    // A later missed fire is still caught up, after the failover run.
    let mut h = Harness::new();
    h.open();
    h.job("j", failover(every_second(1)));
    h.assign("j", &[ME], 40);
    h.set(2.3);
    let won = h.won("j", 0, 100, released_cursor(0.0), marker(1.0, 90));
    assert_eq!(launches(&won), [(0, 1.0, Failover)]);
    h.at(2.3);
    let done = h.done("j", 0, exec_of(&won, 0));
    assert_eq!(launches(&done), [(0, 2.0, Misfire)]);
}

#[test]
fn a_catch_up_runs_the_most_recent_missed_fire_once_and_never_the_previous_last() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    h.assign("j", &[ME], 40);
    h.at(3.4);
    let won = h.won("j", 0, 100, released_cursor(1.0), None);
    assert_eq!(
        launches(&won),
        [(0, 3.0, CatchUp)],
        "2.0 is coalesced into 3.0"
    );
    // Without a trusted cursor (the previous owner crashed) nothing is caught up.
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    h.assign("j", &[ME], 40);
    h.at(3.4);
    let unreleased = Some(shardjob_coordinator::model::Cursor::default());
    assert_eq!(launches(&h.won("j", 0, 100, unreleased, None)), []);
    // Nor when the job does not allow misfires.
    let mut h = Harness::new();
    h.open();
    let mut c = every_second(1);
    c.misfire = false;
    h.job("j", c);
    h.assign("j", &[ME], 40);
    h.at(3.4);
    assert_eq!(
        launches(&h.won("j", 0, 100, released_cursor(1.0), None)),
        []
    );
}

#[test]
fn a_won_claim_publishes_its_shards_before_it_launches_their_runs() {
    // A run launched at once may end before the runtime reaches a later command: the status
    // must already show the shard (an integration test saw a held shard's run end while the
    // status still showed none).
    let mut h = Harness::new();
    h.open();
    let at = shardjob_coordinator::model::Schedule::At(wall(1.0));
    h.job("once", shardjob_coordinator::model::JobConfig::new(at, 1));
    h.assign("once", &[ME], 40);
    h.set(2.5);
    let won = h.won("once", 0, 100, None, None);
    assert_eq!(launches(&won), [(0, 1.0, CatchUp)]);
    assert_eq!(
        won.first(),
        Some(&Command::PublishOwned(vec!["once".into()])),
        "{won:?}"
    );
    assert_eq!(
        won.iter()
            .filter(|c| matches!(c, Command::PublishOwned(_) | Command::PublishAll))
            .count(),
        1,
        "{won:?}"
    );
}

#[test]
fn a_one_shot_claimed_after_its_instant_runs_once_unless_a_clean_release_says_it_ran() {
    let at = |secs: f64| {
        shardjob_coordinator::model::JobConfig::new(
            shardjob_coordinator::model::Schedule::At(wall(secs)),
            1,
        )
    };
    // Never held before (no cursor): it runs at once, and the heap's own pop does not repeat it.
    let mut h = Harness::new();
    h.open();
    h.job("once", at(1.0));
    h.assign("once", &[ME], 40);
    h.set(2.5);
    let won = h.won("once", 0, 100, None, None);
    assert_eq!(launches(&won), [(0, 1.0, CatchUp)]);
    assert_eq!(launches(&h.at(3.0)), []);
    // Its last owner crashed (an untrusted cursor): at least once, so it runs.
    let mut h = Harness::new();
    h.open();
    h.job("once", at(1.0));
    h.assign("once", &[ME], 40);
    h.set(2.5);
    let crashed = Some(shardjob_coordinator::model::Cursor::default());
    assert_eq!(
        launches(&h.won("once", 0, 100, crashed, None)),
        [(0, 1.0, CatchUp)]
    );
    // A clean release after it ran: not again.
    let mut h = Harness::new();
    h.open();
    h.job("once", at(1.0));
    h.assign("once", &[ME], 40);
    h.set(2.5);
    assert_eq!(
        launches(&h.won("once", 0, 100, released_cursor(1.0), None)),
        []
    );
    // Before its instant: nothing yet, the heap runs it.
    let mut h = Harness::new();
    h.open();
    h.job("once", at(1.0));
    h.assign("once", &[ME], 40);
    assert_eq!(launches(&h.won("once", 0, 100, None, None)), []);
    let run = h.at(1.0);
    assert_eq!(launches(&run), [(0, 1.0, Scheduled)]);
    // A cancelled end is no end; a real one is recorded as done (a cron job's ends are not).
    let mut twin = Harness::new();
    twin.open();
    twin.job("once", at(1.0));
    twin.assign("once", &[ME], 40);
    twin.won("once", 0, 100, None, None);
    let twin_run = twin.at(1.0);
    let cancelled = twin.step(Input::ExecDone {
        job: "once".into(),
        shard: 0,
        exec: exec_of(&twin_run, 0),
        outcome: crate::execlog::Outcome::Cancelled,
    });
    assert!(
        !cancelled
            .iter()
            .any(|c| matches!(c, Command::RecordDone { .. })),
        "{cancelled:?}"
    );
    let done = h.done("once", 0, exec_of(&run, 0));
    assert!(
        done.iter()
            .any(|c| matches!(c, Command::RecordDone { shard: 0, token, .. } if token.0 == 100)),
        "{done:?}"
    );
    let mut h = Harness::holding(1, every_second(1));
    let run = h.at(1.0);
    let done = h.done("j", 0, exec_of(&run, 0));
    assert!(
        !done.iter().any(|c| matches!(c, Command::RecordDone { .. })),
        "{done:?}"
    );
}

// ---- coalescing ----------------------------------------------------------------------------

#[test]
fn fires_during_a_run_coalesce_into_one_run_of_the_latest() {
    let mut h = Harness::holding(1, every_second(1));
    let first = h.at(1.0);
    assert_eq!(launches(&first), [(0, 1.0, Scheduled)]);
    assert_eq!(launches(&h.at(3.5)), [], "2.0 and 3.0 wait for 1.0");
    let done = h.done("j", 0, exec_of(&first, 0));
    assert_eq!(launches(&done), [(0, 3.0, Misfire)], "only the latest");
    // Without misfires they are skipped.
    let mut c = every_second(1);
    c.misfire = false;
    let mut h = Harness::holding(1, c);
    let first = h.at(1.0);
    h.at(3.5);
    assert_eq!(launches(&h.done("j", 0, exec_of(&first, 0))), []);
}

#[test]
fn a_trigger_during_a_run_is_owed_even_without_misfires() {
    let mut c = every_second(1);
    c.misfire = false;
    let mut h = Harness::holding(1, c);
    let first = h.at(1.0);
    assert_eq!(launches(&h.trigger("j", "t1", 1.2)), []);
    assert_eq!(
        launches(&h.done("j", 0, exec_of(&first, 0))),
        [(0, 1.2, Trigger)]
    );
}

// ---- triggers ------------------------------------------------------------------------------

#[test]
fn a_trigger_runs_every_fireable_shard_once_per_id() {
    let mut h = Harness::holding(2, every_second(2));
    assert_eq!(
        launches(&h.trigger("j", "a", 0.6)),
        [(0, 0.6, Trigger), (1, 0.6, Trigger)]
    );
    assert_eq!(launches(&h.trigger("j", "a", 0.6)), [], "the same id again");
    // Ids present at a (re)start are history.
    let listing = Listing::Triggers(vec![(
        "j".into(),
        shardjob_coordinator::model::Trigger {
            id: "b".into(),
            requested_at: wall(0.7),
        },
    )]);
    assert_eq!(launches(&h.step(Input::Relisted(listing))), []);
    assert_eq!(launches(&h.trigger("j", "b", 0.7)), []);
}

// ---- the lease's proof ---------------------------------------------------------------------

#[test]
fn nothing_launches_without_proof_of_the_lease_and_the_run_is_owed() {
    let mut h = Harness::holding(1, every(5, 1));
    // Opened at 0.5 with a 10 s TTL: proven until 10.5; the margin is 1 s.
    let five = h.at(5.0);
    assert_eq!(launches(&five), [(0, 5.0, Scheduled)]);
    h.done("j", 0, exec_of(&five, 0));
    assert_eq!(launches(&h.at(10.0)), [], "10.0 + margin is past the proof");
    assert_eq!(
        launches(&h.trigger("j", "t", 10.1)),
        [],
        "no trigger either"
    );
    let lapse = h.at(10.6);
    assert!(lapse.contains(&Command::Lapsed), "{lapse:?}");
    assert_eq!(
        launches(&h.prove_until(20.6)),
        [(0, 10.1, Trigger)],
        "latest owed"
    );
}

#[test]
fn only_a_resumption_republishes_the_whole_status() {
    let mut h = Harness::holding(1, every(5, 1));
    let five = h.at(5.0);
    h.done("j", 0, exec_of(&five, 0));
    assert_eq!(
        launches(&h.at(10.0)),
        [],
        "owed: 10.0 + margin is past the proof"
    );
    // Renewed before it lapsed: the owed run starts; nothing else in the status changed.
    let renewed = h.prove_until(20.6);
    assert_eq!(launches(&renewed), [(0, 10.0, Misfire)]);
    assert!(!renewed.contains(&Command::PublishAll), "{renewed:?}");
    h.done("j", 0, exec_of(&renewed, 0));
    assert!(h.at(20.7).contains(&Command::Lapsed));
    // Renewed after the lapse: the status shows it resumed.
    let resumed = h.prove_until(40.0);
    assert!(resumed.contains(&Command::PublishAll), "{resumed:?}");
}

#[test]
fn a_lapse_aborts_runs_and_replays_them_once_proven_again() {
    let mut h = Harness::holding(1, every(60, 1));
    h.prove_until(65.0); // keep-alives answered until here, then no more
    let run = h.at(60.0);
    assert_eq!(launches(&run), [(0, 60.0, Scheduled)]);
    let lapse = h.at(65.0);
    assert_eq!(aborts(&lapse), [0]);
    assert!(lapse.contains(&Command::Lapsed));
    assert_eq!(
        launches(&h.done("j", 0, exec_of(&run, 0))),
        [],
        "a stale report"
    );
    let resumed = h.prove_until(75.0);
    assert_eq!(launches(&resumed), [(0, 60.0, Misfire)], "replayed once");
    // Same token: nothing changed owner.
    assert!(
        resumed
            .iter()
            .any(|c| matches!(c, Command::Launch { token, replay: true, .. } if token.0 == 100))
    );
    assert_eq!(launches(&h.prove_until(80.0)), [], "not twice");
}

#[test]
fn a_lapse_replays_a_failover_run_as_a_failover_run() {
    let mut h = Harness::new();
    h.open();
    h.job("j", failover(every(60, 1)));
    h.assign("j", &[ME], 40);
    let won = h.won("j", 0, 100, None, marker(0.0, 90));
    assert_eq!(launches(&won), [(0, 0.0, Failover)]);
    assert_eq!(aborts(&h.at(10.5)), [0]);
    let resumed = h.prove_until(20.0);
    assert_eq!(launches(&resumed), [(0, 0.0, Failover)]);
    assert!(
        resumed
            .iter()
            .any(|c| matches!(c, Command::Launch { replay: true, .. }))
    );
}

// ---- launching ahead of the instant ---------------------------------------------------------

/// The `start_at` of each launch among `commands`, in seconds of the harness clock.
fn starts(h: &Harness, commands: &[Command]) -> Vec<Option<f64>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch { start_at, .. } => {
                Some(start_at.map(|s| (s - h.mono(0.0)).as_secs_f64()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_fire_is_launched_within_the_lead_and_waits_for_its_instant() {
    let lead = std::time::Duration::from_millis(100);
    let mut h = Harness::holding_with_lead(1, every(60, 1), lead);
    h.prove_until(200.0);
    assert_eq!(launches(&h.at(59.89)), [], "not before the lead");
    let early = h.at(59.95);
    assert_eq!(launches(&early), [(0, 60.0, Scheduled)]);
    let at = starts(&h, &early)[0].unwrap();
    assert!((at - 60.0).abs() < 1e-6, "starts at its instant, not {at}");
    assert_eq!(launches(&h.at(60.5)), [], "once");
}

#[test]
fn no_lead_for_a_job_still_running_nor_past_the_proof() {
    let lead = std::time::Duration::from_millis(100);
    // The run of 00:00 still runs at 00:59.9: the fire of 01:00 waits for its instant, where
    // it meets the running shard as it would without a lead (a misfire, owed).
    let mut h = Harness::holding_with_lead(1, every(60, 1), lead);
    h.prove_until(200.0);
    let first = h.at(60.0);
    assert_eq!(launches(&first), [(0, 60.0, Scheduled)]);
    assert_eq!(launches(&h.at(119.95)), []);
    let at_instant = h.at(120.0);
    assert_eq!(launches(&at_instant), [], "owed while 01:00's run runs");
    let done = h.done("j", 0, exec_of(&first, 0));
    assert_eq!(launches(&done), [(0, 120.0, Misfire)]);
    assert_eq!(
        starts(&h, &done),
        [None],
        "an owed run starts now, never early"
    );
    // A lease proven only until 30 ms before the instant (plus its margin): a tick within the
    // lead (for any reason) launches nothing ahead.
    let mut h = Harness::holding_with_lead(1, every(60, 1), lead);
    h.prove_until(60.97); // the margin is 1 s: the limit is 59.97
    h.set(59.95);
    assert_eq!(
        launches(&h.step(Input::Tick)),
        [],
        "the proof ends before the instant"
    );
    // A liveness guard that ends before the instant: nothing is launched ahead of it.
    let mut h = Harness::holding_with_lead(1, every(60, 1), lead);
    h.prove_until(200.0);
    h.guard_until(Some(59.99));
    assert_eq!(
        launches(&h.at(59.95)),
        [],
        "the guard ends before the instant"
    );
}

// ---- the liveness stream's guard ----------------------------------------------------------

#[test]
fn a_guard_that_runs_out_lapses_like_the_proof_and_a_settled_stream_resumes() {
    // The lease is proven far ahead; only the stream's guard binds.
    let mut h = Harness::holding(1, every(60, 1));
    h.prove_until(200.0);
    h.guard_until(Some(60.5));
    let run = h.at(60.0);
    assert_eq!(launches(&run), [(0, 60.0, Scheduled)]);
    // At the guard's end (not the proof's): the run stops, nothing starts.
    let lapse = h.at(60.5);
    assert_eq!(aborts(&lapse), [0]);
    assert!(lapse.contains(&Command::Lapsed));
    // A renewal of the lease alone does not resume while the guard is past.
    assert_eq!(launches(&h.prove_until(210.0)), []);
    // Settled alive: only the lease binds; the cut-short fire is replayed once, same token.
    let resumed = h.guard_until(None);
    assert_eq!(launches(&resumed), [(0, 60.0, Misfire)]);
    assert_eq!(launches(&h.guard_until(None)), [], "not twice");
}

#[test]
fn nothing_starts_within_the_guard_margin_and_a_past_guard_lapses_at_once() {
    let mut h = Harness::holding(1, every(60, 1));
    h.prove_until(200.0);
    // The fire at 60 would start 1 ms before the guard ends: too close.
    h.guard_until(Some(60.001));
    let at = h.at(60.0);
    assert_eq!(launches(&at), []);
    // A guard moved back into the past (a new stream whose hello was long ago) lapses now.
    let mut h = Harness::holding(1, every(60, 1));
    h.prove_until(200.0);
    h.at(30.0);
    let lapse = h.guard_until(Some(29.0));
    assert!(lapse.contains(&Command::Lapsed));
    // And a guard renewed ahead resumes.
    let resumed = h.guard_until(Some(70.0));
    assert!(!resumed.contains(&Command::Lapsed));
    assert_eq!(launches(&h.at(60.0)), [(0, 60.0, Scheduled)]);
}

#[test]
fn claims_wait_for_proof_and_go_at_the_recheck() {
    let mut h = Harness::new();
    let valid_until = h.mono(1.0); // proven for less than the margin
    h.step(Input::SessionOpened {
        lease: lease(),
        valid_until,
    });
    h.job("j", every_second(1));
    assert_eq!(claims(&h.assign("j", &[ME], 40)), []);
    h.prove_until(11.0);
    // Proof is back: the deferred claim goes at once rather than at the re-check.
    let mut h2 = Harness::new();
    h2.step(Input::SessionOpened {
        lease: lease(),
        valid_until: h2.mono(1.0),
    });
    h2.job("j", every_second(1));
    h2.assign("j", &[ME], 40);
    assert_eq!(claims(&h2.prove_until(11.0)), [(vec![0], 40)]);
}

// ---- disabled ------------------------------------------------------------------------------

#[test]
fn a_disabled_job_launches_nothing_of_any_kind() {
    let mut disabled = failover(every_second(1));
    disabled.disabled = true;
    // Scheduled fires and triggers.
    let mut h = Harness::holding(1, disabled.clone());
    assert_eq!(launches(&h.at(2.5)), []);
    assert_eq!(launches(&h.trigger("j", "t", 2.6)), []);
    // A claim's failover re-run and catch-up.
    let mut h = Harness::new();
    h.open();
    h.job("j", disabled.clone());
    h.assign("j", &[ME], 40);
    h.set(2.3);
    assert_eq!(
        launches(&h.won("j", 0, 100, released_cursor(0.0), marker(1.0, 90))),
        []
    );
    // A run owed when the job was disabled mid-run, and a lapse's replay.
    let mut h = Harness::holding(1, failover(every_second(1)));
    let run = h.at(1.0);
    h.at(2.0); // 2.0 owed as a misfire
    h.job("j", disabled);
    assert_eq!(launches(&h.done("j", 0, exec_of(&run, 0))), []);
    h.prove_until(3.0);
    h.at(3.0);
    assert_eq!(launches(&h.prove_until(20.0)), []);
}

// ---- claims and releases -------------------------------------------------------------------

#[test]
fn claims_take_free_assigned_shards_in_one_command_and_a_held_one_waits_for_its_delete() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(4));
    assert_eq!(
        claims(&h.assign("j", &[ME, "other", ME, ME], 42)),
        [(vec![0, 2, 3], 42)]
    );
    assert_eq!(
        claims(&h.assign("j", &[ME, "other", ME, ME], 43)),
        [],
        "in flight"
    );
    // 3 is still held by the previous owner: the refusal names its key.
    let won = |t| ClaimResult::Won {
        token: Token(t),
        cursor: None,
        running: None,
    };
    let holder = SeenOwner {
        instance: "other".into(),
        token: Token(10),
        lease: 99,
    };
    let answered = h.answer(
        "j",
        42,
        vec![(0, won(50)), (2, won(50)), (3, ClaimResult::Held(holder))],
    );
    assert_eq!(claims(&answered), [], "3 waits for the key's delete");
    assert_eq!(h.engine.fireable("j"), [0, 2]);
    assert_eq!(claims(&h.at(2.0)), [], "nor at a re-check");
    assert_eq!(
        claims(&h.owner_gone("j", 3, 51)),
        [(vec![3], 43)],
        "after the DELETE"
    );
    // Shutting down: no claims.
    h.step(Input::ShutdownBegun);
    assert_eq!(claims(&h.assign("j", &[ME, ME, ME, ME], 44)), []);
}

#[test]
fn a_job_with_no_shard_firing_here_keeps_no_fire_scheduled_until_one_does() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(2));
    h.assign("j", &["other", "other"], 42);
    assert_eq!(h.engine.heap.len(), 1, "scheduled when the config arrives");
    assert_eq!(launches(&h.at(1.0)), []);
    assert!(
        h.engine.heap.is_empty(),
        "at rest once its fire found nothing to run"
    );
    assert_eq!(launches(&h.at(5.0)), []);
    // Shard 1 comes to me at 5.5: its schedule resumes with the next fire, not before.
    h.set(5.5);
    assert_eq!(claims(&h.assign("j", &["other", ME], 43)), [(vec![1], 43)]);
    assert!(h.engine.heap.is_empty(), "claiming is not holding");
    h.won("j", 1, 60, None, None);
    assert_eq!(h.engine.heap.len(), 1);
    let run = h.at(6.0);
    assert_eq!(launches(&run), [(1, 6.0, Scheduled)]);
    h.done("j", 1, exec_of(&run, 1));
    assert_eq!(launches(&h.at(7.0)), [(1, 7.0, Scheduled)]);
    assert_eq!(h.engine.heap.len(), 1, "once, not once per event");
    // Moved away: it rests again after its next fire.
    h.assign("j", &["other", "other"], 44);
    h.at(8.0);
    assert!(h.engine.heap.is_empty());
}

#[test]
fn a_refusal_whose_key_was_deleted_while_the_claim_was_in_flight_claims_again() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    assert_eq!(claims(&h.assign("j", &[ME], 42)), [(vec![0], 42)]);
    // The txn read the previous owner's key; its delete overtook the answer.
    assert_eq!(claims(&h.owner_gone("j", 0, 60)), [], "in flight");
    assert_eq!(
        claims(&h.held("j", 0, "other", 10, 99)),
        [(vec![0], 42)],
        "the key it names is gone"
    );
    // The same refusal without the delete in between waits.
    assert_eq!(claims(&h.held("j", 0, "other", 61, 99)), []);
    assert_eq!(claims(&h.at(5.0)), []);
    assert_eq!(claims(&h.owner_gone("j", 0, 70)), [(vec![0], 42)]);
    // A re-list (after a compaction) that no longer shows the key counts as its delete.
    let listing = Listing::Owners {
        revision: 80,
        owners: vec![],
    };
    assert_eq!(claims(&h.step(Input::Relisted(listing))), [], "in flight");
    assert_eq!(
        claims(&h.held("j", 0, "other", 71, 99)),
        [(vec![0], 42)],
        "the re-list showed it gone"
    );
}

#[test]
fn a_claim_that_finds_the_assignment_changed_waits_for_the_new_one() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    assert_eq!(claims(&h.assign("j", &[ME], 42)), [(vec![0], 42)]);
    // The leader wrote 43; its event has not arrived yet.
    assert_eq!(
        claims(&h.answer("j", 42, vec![(0, ClaimResult::Stale)])),
        [],
        "no claim loop under the old revision"
    );
    assert_eq!(claims(&h.at(5.0)), [], "nor at a re-check");
    assert_eq!(claims(&h.assign("j", &[ME], 43)), [(vec![0], 43)]);
    // A stale answer to an older claim does not block the current revision.
    assert_eq!(
        claims(&h.answer("j", 42, vec![(0, ClaimResult::Stale)])),
        [(vec![0], 43)],
        "claimed again under 43"
    );
}

#[test]
fn a_relisting_keeps_only_the_owner_keys_that_concern_me() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(4));
    h.assign("j", &[ME, "other", "other", "-"], 42);
    let key = |instance: &str, token, lease| SeenOwner {
        instance: instance.into(),
        token: Token(token),
        lease,
    };
    let listing = Listing::Owners {
        revision: 30,
        owners: vec![
            ("j".into(), 0, key("other", 20, 99)), // assigned to me: I wait for it
            ("j".into(), 1, key("other", 21, 99)), // another's business
            ("j".into(), 3, key(ME, 22, 5)),       // mine, of an old lease: blocks
            ("k".into(), 0, key("other", 23, 99)), // a job I know nothing of
        ],
    };
    h.step(Input::Relisted(listing));
    let seen: Vec<(String, u32)> = h
        .engine
        .jobs
        .iter()
        .flat_map(|(j, js)| {
            js.shards
                .iter()
                .filter(|(_, sh)| sh.seen.is_some())
                .map(move |(s, _)| (j.clone(), *s))
        })
        .collect();
    assert_eq!(seen, [("j".to_owned(), 0), ("j".to_owned(), 3)]);
}

#[test]
fn a_release_waits_for_the_run_and_records_the_last_fire() {
    let mut h = Harness::holding(2, every_second(2));
    let run = h.at(1.0);
    h.done("j", 1, exec_of(&run, 1));
    // Shard 0 moves away while it runs; shard 1 stays.
    assert_eq!(releases(&h.assign("j", &["other", ME], 41)), []);
    assert_eq!(
        launches(&h.at(2.0)),
        [(1, 2.0, Scheduled)],
        "shard 0 fires no more"
    );
    assert_eq!(
        releases(&h.done("j", 0, exec_of(&run, 0))),
        [(0, 100, Some(1.0))]
    );
}

#[test]
fn a_release_before_any_fire_accounts_for_the_fire_before_the_claim() {
    let mut h = Harness::holding(1, every_second(1)); // claimed at 0.5
    assert_eq!(
        releases(&h.assign("j", &["other"], 41)),
        [(0, 100, Some(0.0))]
    );
}

#[test]
fn a_failed_release_is_retried_with_the_same_cursor() {
    let mut h = Harness::holding(1, every_second(1));
    let run = h.at(1.0);
    h.done("j", 0, exec_of(&run, 0));
    assert_eq!(
        releases(&h.assign("j", &["other"], 41)),
        [(0, 100, Some(1.0))]
    );
    h.step(Input::Released {
        job: "j".into(),
        shard: 0,
        lease: lease(),
        token: crate::engine::Token(100),
        result: Err(crate::engine::WriteFailed("no answer".into())),
    });
    assert_eq!(
        releases(&h.at(2.6)),
        [(0, 100, Some(1.0))],
        "at the re-check"
    );
}

#[test]
fn a_key_of_mine_seen_without_a_claims_answer_is_held() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(1));
    h.assign("j", &[ME], 40);
    let failed = ClaimResult::Failed(crate::engine::WriteFailed("timed out".into()));
    let retry = h.answer("j", 40, vec![(0, failed)]);
    assert!(h.engine.fireable("j").is_empty());
    assert_eq!(claims(&retry), [(vec![0], 40)], "tried again");
    // The claim did commit: the retry is refused by the key it made, and adopts it.
    h.held("j", 0, ME, 100, lease().get());
    assert_eq!(h.engine.fireable("j"), [0]);
    assert_eq!(launches(&h.at(1.0)), [(0, 1.0, Scheduled)]);
}

// ---- keys seen ------------------------------------------------------------------------------

#[test]
fn a_held_key_that_vanishes_aborts_its_run_and_is_claimed_again() {
    let mut h = Harness::holding(1, every_second(1));
    h.at(1.0);
    let gone = h.owner_gone("j", 0, 150);
    assert_eq!(aborts(&gone), [0]);
    assert_eq!(claims(&gone), [(vec![0], 40)]);
}

#[test]
fn an_event_older_than_my_key_is_ignored() {
    let mut h = Harness::holding(1, every_second(1)); // token 100
    assert!(
        aborts(&h.owner_gone("j", 0, 90)).is_empty(),
        "the delete of the previous key"
    );
    assert_eq!(h.engine.fireable("j"), [0]);
    // A re-list taken before my claim cannot show my key, and does not drop it.
    let before = Listing::Owners {
        revision: 95,
        owners: vec![],
    };
    h.step(Input::Relisted(before));
    assert_eq!(h.engine.fireable("j"), [0]);
    let after = Listing::Owners {
        revision: 120,
        owners: vec![],
    };
    assert_eq!(claims(&h.step(Input::Relisted(after))), [(vec![0], 40)]);
}

#[test]
fn a_self_fence_aborts_everything_and_old_keys_block_claims_until_they_vanish() {
    let mut h = Harness::holding(1, every_second(1));
    h.at(1.0);
    let fenced = h.step(Input::SessionLost);
    assert_eq!(aborts(&fenced), [0]);
    assert_eq!(launches(&h.at(2.0)), []);
    assert!(h.engine.fireable("j").is_empty());
    let new_lease = LeaseId::new(8).unwrap();
    assert_eq!(
        claims(&h.open_with(new_lease)),
        [],
        "the key of lease 7 still exists"
    );
    assert_eq!(claims(&h.owner_gone("j", 0, 160)), [(vec![0], 40)]);
    // An answer to a claim of the old session is ignored.
    assert_eq!(
        launches(&h.won("j", 0, 170, released_cursor(0.0), None)),
        []
    );
}

// ---- schedule changes ----------------------------------------------------------------------

#[test]
fn a_live_offset_change_reschedules() {
    let mut c = every_second(1);
    c.schedule = shardjob_coordinator::model::Schedule::Every(
        shardjob_coordinator::model::HumanDuration(std::time::Duration::from_secs(10)),
    );
    let mut h = Harness::holding(1, c.clone());
    c.offset = Some(shardjob_coordinator::model::HumanDuration(
        std::time::Duration::from_secs(5),
    ));
    h.job("j", c);
    assert_eq!(launches(&h.at(9.0)), [(0, 5.0, Scheduled)]);
    assert_eq!(launches(&h.at(10.0)), [], "the old schedule's 10.0 is gone");
}

#[test]
fn a_config_put_with_the_same_instants_takes_its_settings_and_keeps_the_fire() {
    let mut h = Harness::holding(1, every_second(1));
    let mut c = every_second(1);
    // An interval's time zone moves none of its fires: no reschedule, but `disabled` counts.
    c.time_zone = "Europe/Berlin".into();
    c.disabled = true;
    h.job("j", c.clone());
    assert_eq!(launches(&h.at(1.0)), [], "disabled");
    c.disabled = false;
    h.job("j", c);
    assert_eq!(launches(&h.at(2.0)), [(0, 2.0, Scheduled)]);
    assert_eq!(launches(&h.at(2.5)), [], "one fire, not one per version");
}

#[test]
fn a_relisted_assignment_replaces_what_was_assigned_here() {
    let mut h = Harness::holding(2, every_second(2)); // shards 0 and 1, page revision 40
    h.job("k", every_second(3));
    h.assign("k", &[ME, "other", ME], 41);
    assert_eq!(h.engine.assigned_total(), 4);
    // The re-list after a lost watch: j keeps shard 0 only, k is no longer mine at all.
    let entry = |shards: Vec<u32>| shardjob_coordinator::model::PageEntry {
        generation: 2,
        total: 2,
        shards,
    };
    let listed = h.step(Input::Relisted(Listing::Assignments(vec![(
        "j".into(),
        entry(vec![0]),
        60,
    )])));
    assert_eq!(h.engine.assigned_total(), 1);
    assert_eq!(h.engine.fireable("j"), [0]);
    assert_eq!(
        releases(&listed),
        [(1, 101, Some(0.0))],
        "shard 1 is given back"
    );
    assert_eq!(claims(&listed), [], "nothing of k is claimed");
}

// ---- shutdown ------------------------------------------------------------------------------

#[test]
fn shutdown_starts_nothing_and_finish_releases_everything() {
    let mut h = Harness::holding(2, every_second(2));
    let run = h.at(1.0);
    h.done("j", 1, exec_of(&run, 1));
    h.step(Input::ShutdownBegun);
    assert_eq!(launches(&h.at(3.0)), []);
    assert_eq!(launches(&h.trigger("j", "t", 3.1)), []);
    assert_eq!(
        launches(&h.done("j", 0, exec_of(&run, 0))),
        [],
        "nothing owed runs"
    );
    assert!(!h.engine.drained(), "shards are still held");
    let finish = h.step(Input::Finish);
    assert_eq!(
        releases(&finish),
        [(0, 100, Some(1.0)), (1, 101, Some(1.0))]
    );
    assert!(h.engine.drained());
}

#[test]
fn a_page_written_again_with_my_shards_unchanged_decides_nothing_but_claims_under_it() {
    let mut h = Harness::holding(2, every_second(2)); // revision 40, shards 0 and 1 held
    // Another instance's shards of the job moved: my page is rewritten, mine are the same.
    assert_eq!(
        h.assign("j", &[ME, ME], 60),
        [],
        "nothing to do, nothing to publish"
    );
    assert_eq!(h.engine.fireable("j"), [0, 1]);
    // The claim after a lost key is guarded by the page as it is now, not as first read.
    assert_eq!(claims(&h.owner_gone("j", 1, 150)), [(vec![1], 60)]);
    // While a claim is out, a rewrite decides again (a shard of mine is not held).
    assert_eq!(claims(&h.assign("j", &[ME, ME], 61)), [], "in flight");
    assert_eq!(
        claims(&h.answer("j", 60, vec![(1, ClaimResult::Stale)])),
        [(vec![1], 61)],
        "claimed again under 61"
    );
}

// ---- the owner watch ------------------------------------------------------------------------

#[test]
fn owner_deletes_are_watched_only_while_a_claim_waits_for_one() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(2));
    let mut seen = owner_watch(&h.assign("j", &[ME, ME], 42));
    seen.extend(owner_watch(&h.won("j", 0, 50, None, None)));
    assert_eq!(seen, [], "claims that win wait for nothing");
    // Shard 1 is still held by its previous owner: watch from after the refusal's reading.
    assert_eq!(
        owner_watch(&h.held("j", 1, "other", 30, 99)),
        [Some(Some(READ_AT + 1))]
    );
    assert_eq!(
        owner_watch(&h.held("j", 1, "other", 30, 99)),
        [],
        "already watching"
    );
    let gone = h.owner_gone("j", 1, 60);
    assert_eq!(claims(&gone), [(vec![1], 42)]);
    assert_eq!(owner_watch(&gone), [None], "nothing waits: the watch stops");
    assert_eq!(owner_watch(&h.won("j", 1, 61, None, None)), []);
}

#[test]
fn a_wait_with_an_older_reading_restarts_the_watch_and_a_reassignment_ends_a_wait() {
    let mut h = Harness::new();
    h.open();
    h.job("j", every_second(2));
    h.assign("j", &[ME, ME], 42);
    let refuse = |h: &mut Harness, shard: u32, read_at: i64| {
        let holder = SeenOwner {
            instance: "other".into(),
            token: Token(20),
            lease: 99,
        };
        h.step(Input::Claimed {
            job: "j".into(),
            lease: lease(),
            revision: 42,
            read_at,
            results: vec![(shard, ClaimResult::Held(holder))],
        })
    };
    assert_eq!(owner_watch(&refuse(&mut h, 0, 70)), [Some(Some(71))]);
    assert_eq!(
        owner_watch(&refuse(&mut h, 1, 80)),
        [],
        "covered by the watch from 71"
    );
    // A refusal that read at 65 answered late: its key may have gone at 66, before 71.
    assert_eq!(owner_watch(&refuse(&mut h, 1, 65)), [Some(Some(66))]);
    // The shards go to another instance: nothing here waits for their keys any more.
    assert_eq!(owner_watch(&h.assign("j", &["other", "other"], 43)), [None]);
}

#[test]
fn a_lost_sessions_keys_are_waited_for_from_a_listing() {
    let mut h = Harness::holding(2, every_second(2)); // lease 7, tokens 100 and 101
    assert_eq!(owner_watch(&h.step(Input::SessionLost)), [Some(None)]);
    h.open_with(LeaseId::new(8).unwrap());
    // The old keys block the new session's claims until they vanish with their lease.
    let first = h.owner_gone("j", 0, 130);
    assert_eq!(claims(&first), [(vec![0], 40)]);
    assert_eq!(owner_watch(&first), []);
    assert_eq!(owner_watch(&h.owner_gone("j", 1, 131)), [None]);
}

// ---- the config the runtime shares -------------------------------------------------------

#[test]
fn a_config_put_again_unchanged_is_the_same_one_and_a_change_is_a_new_one() {
    // The runtime keeps what a job's executions share while the engine's config is the same
    // one (`runtime/job_runs.rs`): a change must be a new one, a repeat must not.
    let mut h = Harness::new();
    h.job("j", every_second(1));
    let first = h.engine.config("j").cloned().expect("kept");
    h.job("j", every_second(1));
    let again = h.engine.config("j").cloned().expect("kept");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "unchanged: the same"
    );
    let mut retried = every_second(1);
    retried.max_retries = 2;
    h.job("j", retried.clone());
    let changed = h.engine.config("j").cloned().expect("kept");
    assert!(
        !std::sync::Arc::ptr_eq(&first, &changed),
        "changed: a new one"
    );
    assert_eq!(changed.max_retries, 2);
    // A schedule change makes a new spec, and so a new config too.
    retried.schedule = every(2, 1).schedule;
    h.job("j", retried);
    let rescheduled = h.engine.config("j").cloned().expect("kept");
    assert!(!std::sync::Arc::ptr_eq(&changed, &rescheduled));
}
