//! ElasticJob's `AVG_ALLOCATION`, the same numbers for the same inputs.
//!
//! Instances are sorted by id. Each gets a contiguous block of `total / n` shards in order; the
//! `total % n` shards left at the end go one each to the first instances.
//!
//! Worked example (ElasticJob's own documentation), instances `[1, 2, 3]`:
//! - 9 shards: `1=[0,1,2] 2=[3,4,5] 3=[6,7,8]`
//! - 8 shards: `1=[0,1,6] 2=[2,3,7] 3=[4,5]`
//! - 10 shards: `1=[0,1,2,9] 2=[3,4,5] 3=[6,7,8]`
//!
//! Weights are ignored, as in ElasticJob. A join or a leave shifts most block boundaries, so
//! many shards move (about 40 % of 100 shards when a fourth instance joins three).

use crate::instance::canonical;
use crate::{Assignment, Instance, Strategy};

/// ElasticJob-compatible average allocation. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Average;

impl Strategy for Average {
    fn name(&self) -> &'static str {
        "average"
    }

    fn assign(
        &self,
        _job: &str,
        total: u32,
        eligible: &[Instance],
        _: Option<&Assignment>,
    ) -> Assignment {
        blocks(total, &canonical(eligible))
    }
}

/// The average allocation over instances in the given order (shared by odevity and round robin).
pub(crate) fn blocks(total: u32, ordered: &[&Instance]) -> Assignment {
    let mut out = Assignment::unassigned(total);
    let n = ordered.len() as u32;
    if n == 0 {
        return out;
    }
    let per = total / n;
    for (i, inst) in ordered.iter().enumerate() {
        let i = i as u32;
        for s in i * per..(i + 1) * per {
            out.set(s, Some(inst.id.clone()));
        }
    }
    for (j, inst) in ordered.iter().take((total % n) as usize).enumerate() {
        out.set(per * n + j as u32, Some(inst.id.clone()));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::InstanceId;

    pub(crate) fn insts(ids: &[&str]) -> Vec<Instance> {
        ids.iter()
            .map(|s| Instance::new(InstanceId::new(*s).unwrap()))
            .collect()
    }

    /// Shards per instance, in the order of `ids`.
    pub(crate) fn table(a: &Assignment, ids: &[&str]) -> Vec<Vec<u32>> {
        ids.iter()
            .map(|s| a.shards_of(&InstanceId::new(*s).unwrap()))
            .collect()
    }

    #[test]
    fn matches_elasticjob_documented_examples() {
        let ids = ["1", "2", "3"];
        // Input order does not matter: the list is sorted first.
        let eligible = insts(&["3", "1", "2"]);
        let cases: [(u32, Vec<Vec<u32>>); 4] = [
            (9, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]),
            (8, vec![vec![0, 1, 6], vec![2, 3, 7], vec![4, 5]]),
            (10, vec![vec![0, 1, 2, 9], vec![3, 4, 5], vec![6, 7, 8]]),
            (2, vec![vec![0], vec![1], vec![]]),
        ];
        for (total, want) in cases {
            let got = Average.assign("any-job", total, &eligible, None);
            assert_eq!(table(&got, &ids), want, "total {total}");
        }
    }

    #[test]
    fn no_instance_means_nothing_assigned() {
        let got = Average.assign("j", 4, &[], None);
        assert_eq!(got.unassigned_count(), 4);
    }
}
