//! ElasticJob's `ROUND_ROBIN` (`RotateServerByName`): instances sorted by id, rotated left by
//! `|hash(job)| mod n`, then allocated as `average`.
//!
//! The hash is Java's `String.hashCode()`, as in ElasticJob (`|i32::MIN|` is taken as 2^31,
//! where Java's `Math.abs` would return a negative number and fail).
//!
//! Worked example, instances `[a, b, c]`, 3 shards: job `"a"` (hash 97, 97 mod 3 = 1) rotates
//! the list to `[b, c, a]`: `b=[0] c=[1] a=[2]`.

use super::average::blocks;
use crate::hash::java_string_hash;
use crate::instance::canonical;
use crate::{Assignment, Instance, Strategy};

/// ElasticJob-compatible round-robin allocation. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn assign(
        &self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        _: Option<&Assignment>,
    ) -> Assignment {
        let mut ordered = canonical(eligible);
        if !ordered.is_empty() {
            let offset = java_string_hash(job).unsigned_abs() as usize % ordered.len();
            ordered.rotate_left(offset);
        }
        blocks(total, &ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::average::tests::{insts, table};

    #[test]
    fn rotates_by_job_hash() {
        let ids = ["a", "b", "c"];
        let eligible = insts(&ids);
        // "a" = 97 -> offset 1; "c" = 99 -> offset 0.
        let a = RoundRobin.assign("a", 3, &eligible, None);
        assert_eq!(table(&a, &ids), [vec![2], vec![0], vec![1]]);
        let c = RoundRobin.assign("c", 4, &eligible, None);
        assert_eq!(table(&c, &ids), [vec![0, 3], vec![1], vec![2]]);
    }
}
