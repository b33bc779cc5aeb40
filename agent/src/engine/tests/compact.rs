//! The engine's per-job and per-shard records stay small: an agent keeps one of each for every
//! job and every shard it sees, inline in hash tables and vectors (10k jobs × 8 shards ×
//! 20 agents is 80k shard records per agent). A field that grows them fails here first; raise
//! a bound only with a measurement in docs/BENCHMARKS.md ("Memory per job").

use std::mem::size_of;

use crate::engine::SeenOwner;
use crate::engine::job::{JobState, Spec};
use crate::engine::shard::{Local, Shard};

#[test]
fn a_job_record_is_at_most_64_bytes() {
    assert!(size_of::<JobState>() <= 64, "{}", size_of::<JobState>());
}

#[test]
fn a_shard_record_is_at_most_48_bytes() {
    // An owner key seen (someone else's, most of them) costs this and no more; what a held
    // shard carries is boxed.
    assert!(size_of::<Shard>() <= 48, "{}", size_of::<Shard>());
    assert!(size_of::<Local>() <= 16, "{}", size_of::<Local>());
    assert!(size_of::<SeenOwner>() <= 32, "{}", size_of::<SeenOwner>());
}

#[test]
fn a_spec_is_at_most_64_bytes() {
    // One per job this agent can run, boxed: what running takes of the config (`RunConfig`,
    // behind an `Arc` shared with the runtime's `JobRun`), the compiled schedule, the
    // version. The whole `JobConfig` made it 256; the config inline, 128.
    assert!(size_of::<Spec>() <= 64, "{}", size_of::<Spec>());
}
