//! Reading the two clocks the engine is given (`engine::Now`): the wall clock first, then the
//! monotonic one.
//!
//! The engine maps a fire's wall time onto the monotonic clock (`engine::fires::instant_of`:
//! the monotonic reading plus the fire's distance from the wall reading). Whatever time passes
//! between the two reads (a preemption on a shared vCPU lasts milliseconds) moves the mapped
//! instant by as much. Read wall first, it moves later, so a fire can start late but never
//! before its instant; read the other way round, bench-lateness counted `early` starts.

use chrono::{DateTime, Utc};

use crate::engine::Now;

/// Both clocks, the wall clock first.
pub(crate) fn now() -> Now {
    read(Utc::now, || tokio::time::Instant::now().into_std())
}

fn read(wall: impl FnOnce() -> DateTime<Utc>, mono: impl FnOnce() -> std::time::Instant) -> Now {
    let wall = wall();
    let mono = mono();
    Now { mono, wall }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::fires::instant_of;

    #[test]
    fn a_fire_mapped_from_a_reading_is_never_before_its_instant() {
        // One real timeline; every read of either clock takes 5 ms of it (a preemption).
        let (base_mono, base_wall) = (Instant::now(), Utc::now());
        let elapsed = Cell::new(Duration::ZERO);
        let tick = || {
            let t = elapsed.get();
            elapsed.set(t + Duration::from_millis(5));
            t
        };
        let now = read(
            || base_wall + chrono::Duration::from_std(tick()).unwrap(),
            || base_mono + tick(),
        );
        let fire = base_wall + chrono::Duration::milliseconds(100);
        let at = instant_of(fire, now.mono, now.wall);
        // The wall time at which the mapped instant comes, on the same timeline.
        let wall_at = base_wall + chrono::Duration::from_std(at - base_mono).unwrap();
        assert!(
            wall_at >= fire,
            "mapped to {wall_at}, before the fire at {fire}"
        );
    }
}
