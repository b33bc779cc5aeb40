//! Label selectors: a job may require labels (`zone=eu,tier=batch`); only instances that carry
//! every required label with the required value are eligible for it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Instance;

/// Why a selector string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector term {term:?} is not of the form key=value")]
    NotKeyValue { term: String },
    #[error("selector key {key:?} is invalid; allowed: [A-Za-z0-9._/-]{{1,128}}")]
    BadKey { key: String },
    #[error("selector value {value:?} of key {key:?} is invalid; allowed: [A-Za-z0-9._-]{{0,128}}")]
    BadValue { key: String, value: String },
    #[error("selector key {key:?} appears twice")]
    Duplicate { key: String },
}

/// Required labels, all of which must match (an empty selector matches every instance).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// A selector from key/value pairs, each validated.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, SelectorError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            validate_label(&k, &v)?;
            if map.insert(k.clone(), v).is_some() {
                return Err(SelectorError::Duplicate { key: k });
            }
        }
        Ok(Self(map))
    }

    /// Checks every key and value (a selector read from etcd is checked before use).
    pub fn validate(&self) -> Result<(), SelectorError> {
        self.0.iter().try_for_each(|(k, v)| validate_label(k, v))
    }

    /// True when `labels` carries every required label with its value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// True when nothing is required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The required labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The instances this selector admits, in their given order.
    pub fn filter(&self, instances: &[Instance]) -> Vec<Instance> {
        instances
            .iter()
            .filter(|i| self.matches(&i.labels))
            .cloned()
            .collect()
    }
}

/// Checks one label pair: keys `[A-Za-z0-9._/-]{1,128}`, values `[A-Za-z0-9._-]{0,128}`.
pub fn validate_label(key: &str, value: &str) -> Result<(), SelectorError> {
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !key_ok {
        return Err(SelectorError::BadKey { key: key.into() });
    }
    let value_ok = value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !value_ok {
        return Err(SelectorError::BadValue {
            key: key.into(),
            value: value.into(),
        });
    }
    Ok(())
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses `key=value,key=value` (spaces around terms are ignored; empty string = match all).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| SelectorError::NotKeyValue { term: term.into() })?;
            pairs.push((k.trim(), v.trim()));
        }
        Self::from_pairs(pairs)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InstanceId;

    fn inst(id: &str, labels: &[(&str, &str)]) -> Instance {
        labels
            .iter()
            .fold(Instance::new(InstanceId::new(id).unwrap()), |i, (k, v)| {
                i.with_label(*k, *v)
            })
    }

    #[test]
    fn matches_only_instances_with_every_required_label() {
        let sel: Selector = "zone=eu, tier=batch".parse().unwrap();
        let all = [
            inst("a", &[("zone", "eu"), ("tier", "batch"), ("x", "y")]),
            inst("b", &[("zone", "eu")]),
            inst("c", &[("zone", "us"), ("tier", "batch")]),
            inst("d", &[]),
        ];
        let ids: Vec<_> = sel
            .filter(&all)
            .into_iter()
            .map(|i| i.id.to_string())
            .collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(Selector::default().filter(&all).len(), 4);
    }

    #[test]
    fn parse_errors_name_the_bad_part() {
        let table = [
            ("zone", "\"zone\" is not of the form key=value"),
            ("=eu", "selector key \"\""),
            ("zone=e u", "value \"e u\" of key \"zone\""),
            ("a=1,a=2", "\"a\" appears twice"),
        ];
        for (input, want) in table {
            let err = input.parse::<Selector>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        let sel: Selector = "b=2,a=1".parse().unwrap();
        assert_eq!(sel.to_string(), "a=1,b=2");
        assert_eq!(sel.to_string().parse::<Selector>().unwrap(), sel);
    }
}
