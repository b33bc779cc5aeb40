//! ElasticJob's `ODEVITY`: instances sorted by id, reversed when the job name's hash is even,
//! then allocated as `average`.
//!
//! The hash is Java's `String.hashCode()` (see [`crate::hash::java_string_hash`]), so a job gets
//! the same order as under ElasticJob. Spreading jobs with even and odd hashes over opposite
//! ends of the list keeps the first instances from collecting every job's remainder shards.
//!
//! Worked example, instances `[a, b, c]`, 10 shards: job `"a"` (hash 97, odd) keeps the order:
//! `a=[0,1,2,9] b=[3,4,5] c=[6,7,8]`; job `"b"` (hash 98, even) reverses it:
//! `c=[0,1,2,9] b=[3,4,5] a=[6,7,8]`.

use super::average::blocks;
use crate::hash::java_string_hash;
use crate::instance::canonical;
use crate::{Assignment, Instance, Strategy};

/// ElasticJob-compatible odevity allocation. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Odevity;

impl Strategy for Odevity {
    fn name(&self) -> &'static str {
        "odevity"
    }

    fn assign(
        &self,
        job: &str,
        total: u32,
        eligible: &[Instance],
        _: Option<&Assignment>,
    ) -> Assignment {
        let mut ordered = canonical(eligible);
        if java_string_hash(job) % 2 == 0 {
            ordered.reverse();
        }
        blocks(total, &ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::average::tests::{insts, table};

    #[test]
    fn even_hash_reverses_odd_keeps() {
        let ids = ["a", "b", "c"];
        let eligible = insts(&ids);
        let odd = Odevity.assign("a", 10, &eligible, None);
        assert_eq!(
            table(&odd, &ids),
            [vec![0, 1, 2, 9], vec![3, 4, 5], vec![6, 7, 8]]
        );
        let even = Odevity.assign("b", 10, &eligible, None);
        assert_eq!(
            table(&even, &ids),
            [vec![6, 7, 8], vec![3, 4, 5], vec![0, 1, 2, 9]]
        );
    }
}
