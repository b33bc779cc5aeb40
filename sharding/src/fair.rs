//! Weighted fair shares: how many shards each instance should hold for an assignment to count
//! as balanced.
//!
//! Instance `i` of weight `w_i` has the exact share `total * w_i / W` (W = sum of weights).
//! Balanced means every instance holds the floor or the ceiling of its exact share. With equal
//! weights that is the familiar "max − min ≤ 1".

use crate::Instance;

/// The floor and ceiling of one instance's exact share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub floor: u32,
    pub ceil: u32,
}

/// The share of every instance in `eligible`, in the same order. Empty input, empty output.
pub fn shares(total: u32, eligible: &[&Instance]) -> Vec<Share> {
    let weights: Vec<u64> = eligible.iter().map(|i| i.effective_weight()).collect();
    shares_by_weight(total, &weights)
}

/// [`shares`] for instances of these (effective) weights.
pub fn shares_by_weight(total: u32, weights: &[u64]) -> Vec<Share> {
    let weight_sum: u64 = weights.iter().sum();
    if weight_sum == 0 {
        return Vec::new();
    }
    weights
        .iter()
        .map(|&w| {
            let num = u64::from(total) * w;
            // num / weight_sum <= total, so both fit in u32.
            let floor = (num / weight_sum) as u32;
            let ceil = floor + u32::from(num % weight_sum != 0);
            Share { floor, ceil }
        })
        .collect()
}

/// How many instances get their ceiling so that the counts add up to `total`.
pub fn extras(total: u32, shares: &[Share]) -> u32 {
    let floors: u64 = shares.iter().map(|s| u64::from(s.floor)).sum();
    (u64::from(total).saturating_sub(floors)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceId;

    #[test]
    fn shares_follow_weights() {
        let a = Instance::new(InstanceId::new("a").unwrap()).with_weight(2);
        let b = Instance::new(InstanceId::new("b").unwrap());
        let s = shares(10, &[&a, &b]);
        assert_eq!(
            s,
            [Share { floor: 6, ceil: 7 }, Share { floor: 3, ceil: 4 }]
        );
        assert_eq!(extras(10, &s), 1);
        let s = shares(9, &[&a, &b]);
        assert_eq!(
            s,
            [Share { floor: 6, ceil: 6 }, Share { floor: 3, ceil: 3 }]
        );
        assert_eq!(extras(9, &s), 0);
    }
}
