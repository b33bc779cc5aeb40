//! Decoding values read from etcd: JSON plus the type's own rules, with the key in every error.

use serde::de::DeserializeOwned;

use super::JobConfig;

/// A value under `key` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{key}: not a valid {what} ({cause})")]
    Json {
        key: String,
        what: &'static str,
        cause: String,
    },
    #[error("{key}: invalid {what}: {cause}")]
    Invalid {
        key: String,
        what: &'static str,
        cause: String,
    },
}

impl DecodeError {
    /// The key whose value was rejected.
    pub fn key(&self) -> &str {
        match self {
            DecodeError::Json { key, .. } | DecodeError::Invalid { key, .. } => key,
        }
    }
}

/// Parses `value` (the bytes under `key`) as JSON of `what`.
pub fn decode<T: DeserializeOwned>(
    key: &str,
    what: &'static str,
    value: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(value).map_err(|e| DecodeError::Json {
        key: key.to_owned(),
        what,
        cause: e.to_string(),
    })
}

/// Parses and validates the config of `job` stored under `key`.
pub fn decode_job(key: &str, job: &str, value: &[u8]) -> Result<JobConfig, DecodeError> {
    let config: JobConfig = decode(key, "job config", value)?;
    config.validate(job).map_err(|e| DecodeError::Invalid {
        key: key.to_owned(),
        what: "job config",
        cause: format!("{}: {}", e.field, e.reason),
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let err = decode_job("/shardjob/ns/jobs/j", "j", b"{not json").unwrap_err();
        assert_eq!(err.key(), "/shardjob/ns/jobs/j");
        assert!(
            err.to_string()
                .starts_with("/shardjob/ns/jobs/j: not a valid job config")
        );
        let err = decode_job("/k", "j", br#"{"schedule":{"every":"1s"},"total":0}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid job config: total: 0 is outside"),
            "{err}"
        );
    }
}
