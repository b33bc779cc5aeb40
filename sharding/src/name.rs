//! Validated names: namespaces, jobs and instances all share the rule `[A-Za-z0-9._-]{1,128}`.
//!
//! The rule keeps every etcd key readable and unambiguous: no `/` can sneak into a name and
//! make `jobs/a` collide with a prefix of something else.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest allowed name, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was rejected. `kind` says which name it was ("instance id", "job name", ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} is empty; allowed: [A-Za-z0-9._-]{{1,128}}")]
    Empty { kind: &'static str },
    #[error("{kind} {name:?} is {len} bytes long; at most {MAX_NAME_LEN} allowed")]
    TooLong {
        kind: &'static str,
        name: String,
        len: usize,
    },
    #[error("{kind} {name:?} contains {bad:?}; allowed: [A-Za-z0-9._-]")]
    BadChar {
        kind: &'static str,
        name: String,
        bad: char,
    },
}

/// Checks `name` against `[A-Za-z0-9._-]{1,128}`; `kind` names the thing in the error.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            kind,
            name: name.to_owned(),
            bad,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// The id of one agent instance, validated. Sorts and compares as its string.
///
/// Shared, not copied: a clone is a reference count. The leader names the same few instances
/// in every job's assignment (10k jobs × 8 shards), so each id is one allocation there.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        validate_name("instance id", &id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for InstanceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "A-z_0.9", "pod-7f9c.default", &"x".repeat(128)] {
            assert_eq!(validate_name("job name", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_with_a_message_naming_the_kind_and_value() {
        let cases: [(&str, &str); 5] = [
            ("", "job name is empty"),
            ("a/b", "contains '/'"),
            ("a b", "contains ' '"),
            ("ü", "contains 'ü'"),
            (&"x".repeat(129), "129 bytes long"),
        ];
        for (bad, want) in cases {
            let err = validate_name("job name", bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
            assert!(err.starts_with("job name"), "{err}");
        }
    }

    #[test]
    fn instance_id_deserialization_validates() {
        let ok: InstanceId = serde_json::from_str("\"node-1\"").unwrap();
        assert_eq!(ok.as_str(), "node-1");
        let err = serde_json::from_str::<InstanceId>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("instance id"), "{err}");
    }
}
