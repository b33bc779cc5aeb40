//! [`Names`]: one shared copy of each instance name seen in owner keys. Every shard an agent
//! sees names one of a handful of instances; at 80k shards a `String` each was megabytes of
//! copies of the same twenty names.

use std::sync::Arc;

/// More distinct names than this (instances come and go under new ids) and the set starts
/// over: sharing saves memory, it is never needed for correctness.
const MAX_NAMES: usize = 4096;

/// Instance names, interned.
#[derive(Debug, Default)]
pub(crate) struct Names(crate::hash::FastSet<Arc<str>>);

impl Names {
    /// The shared copy of `name`.
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        if self.0.len() >= MAX_NAMES {
            self.0.clear();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(n.clone());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name() {
        let mut names = Names::default();
        let (a, b) = (names.get("agent-1"), names.get("agent-1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*names.get("agent-2"), "agent-2");
        assert!(!Arc::ptr_eq(&a, &names.get("agent-2")));
    }

    #[test]
    fn starts_over_past_the_bound() {
        let mut names = Names::default();
        let first = names.get("n0");
        for i in 1..=MAX_NAMES {
            names.get(&format!("n{i}"));
        }
        assert!(names.0.len() <= MAX_NAMES);
        assert_eq!(&*names.get("n0"), "n0");
        assert!(
            !Arc::ptr_eq(&first, &names.get("n0")),
            "a fresh copy after the reset"
        );
    }
}
