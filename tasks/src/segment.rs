//! Where a task lives: its segment (a shard of the queue's job) and the server that holds the
//! segment. Pure.

use shardjob_sharding::hash::fnv1a64;

/// Segments of a queue unless it says otherwise.
pub const DEFAULT_SEGMENTS: u32 = 64;

/// The segment of a task: FNV-1a of its dedupe key (or, without one, its id) mod `segments`.
/// Stable across processes and versions: changing it would strand every pending task.
pub fn segment_of(key: &str, segments: u32) -> u32 {
    (fnv1a64(&[key.as_bytes()]) % u64::from(segments.max(1))) as u32
}

/// The server (index into the configured URLs) that holds `segment`: contiguous ranges, so
/// segment `s` of `S` lives on server `s * n / S`. Fixed for a given `S` and `n`; adding a
/// server moves segments and is an offline operation (docs/OPERATIONS.md).
pub fn server_of(segment: u32, segments: u32, servers: usize) -> usize {
    if servers <= 1 || segments == 0 {
        return 0;
    }
    ((u64::from(segment) * servers as u64) / u64::from(segments)) as usize
}

/// The shardjob job whose shards are the queue's segments.
pub fn job_name(queue: &str) -> String {
    format!("tasks.{queue}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segments_are_stable_values_not_just_consistent_ones() {
        // Pinned: a change of the hash would move every stored task's segment.
        assert_eq!(segment_of("coupon-42", 64), segment_of("coupon-42", 64));
        assert_eq!(
            segment_of("coupon-42", 64),
            (fnv1a64(&[b"coupon-42"]) % 64) as u32
        );
        assert_eq!(segment_of("x", 1), 0);
    }

    #[test]
    fn servers_take_contiguous_ranges() {
        let map: Vec<usize> = (0..8).map(|s| server_of(s, 8, 2)).collect();
        assert_eq!(map, [0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(server_of(63, 64, 1), 0);
        assert_eq!(server_of(5, 64, 3), 0);
        assert_eq!(server_of(63, 64, 3), 2);
    }

    proptest! {
        #[test]
        fn every_segment_and_server_is_in_range(key in ".*", segments in 1u32..10_000, servers in 1usize..16) {
            let s = segment_of(&key, segments);
            prop_assert!(s < segments);
            prop_assert!(server_of(s, segments, servers) < servers);
        }
    }
}
