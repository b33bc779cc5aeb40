//! [`NewTask`]: what a producer submits, and the checks it must pass.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_sharding::validate_name;

use crate::error::TasksError;

/// Longest dedupe key, in bytes.
pub const MAX_DEDUPE_KEY: usize = 512;
/// Most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 1000;

/// When a task is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    At(DateTime<Utc>),
    After(Duration),
}

/// A task to submit.
///
/// ```
/// use std::time::Duration;
/// use shardjob_tasks::NewTask;
/// let t = NewTask::after(Duration::from_secs(3600))
///     .payload(serde_json::json!({"coupon": "C-42"}))
///     .dedupe_key("expire-C-42")
///     .max_attempts(3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub(crate) due: Due,
    pub(crate) payload: serde_json::Value,
    pub(crate) dedupe_key: Option<String>,
    pub(crate) max_attempts: Option<u32>,
}

impl NewTask {
    /// Due at `at` (a past instant means now).
    pub fn at(at: DateTime<Utc>) -> Self {
        Self::due(Due::At(at))
    }

    /// Due `delay` after it is submitted.
    pub fn after(delay: Duration) -> Self {
        Self::due(Due::After(delay))
    }

    fn due(due: Due) -> Self {
        Self {
            due,
            payload: serde_json::Value::Null,
            dedupe_key: None,
            max_attempts: None,
        }
    }

    /// The JSON the handler gets.
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = payload;
        self
    }

    /// At most one task per key and queue: a second submit returns the first's id.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Attempts before it fails for good (default: the queue's retry policy, decided by the
    /// worker when it runs).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The due instant seen from `now`, checked against `max_delay`.
    pub(crate) fn due_at(
        &self,
        now: DateTime<Utc>,
        max_delay: Duration,
    ) -> Result<DateTime<Utc>, TasksError> {
        let limit = if max_delay.as_secs() >= 86_400 {
            format!("{:.1} days", max_delay.as_secs_f64() / 86_400.0)
        } else {
            format!("{max_delay:?}")
        };
        let far = |what: String| TasksError::BadTask {
            field: "due",
            reason: format!("{what} is further ahead than the limit of {limit}"),
        };
        let at = match self.due {
            Due::At(at) => at.max(now),
            Due::After(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| far(format!("a delay of {d:?}")))?,
        };
        if (at - now).to_std().unwrap_or_default() > max_delay {
            return Err(far(at.to_rfc3339()));
        }
        Ok(at)
    }

    /// Checks the payload size and the dedupe key and attempts.
    pub(crate) fn check(&self, max_payload: usize) -> Result<(), TasksError> {
        let bytes = serde_json::to_vec(&self.payload).map_or(usize::MAX, |v| v.len());
        if bytes > max_payload {
            return Err(TasksError::BadTask {
                field: "payload",
                reason: format!("{bytes} bytes of JSON; at most {max_payload}"),
            });
        }
        if has_nul(&self.payload) {
            return Err(TasksError::BadTask {
                field: "payload",
                reason: "contains a NUL character (\\u0000), which PostgreSQL cannot store".into(),
            });
        }
        if let Some(k) = &self.dedupe_key {
            if k.contains('\0') {
                return Err(TasksError::BadTask {
                    field: "dedupe_key",
                    reason: "contains a NUL character, which PostgreSQL cannot store".into(),
                });
            }
            if k.is_empty() || k.len() > MAX_DEDUPE_KEY {
                return Err(TasksError::BadTask {
                    field: "dedupe_key",
                    reason: format!("{} bytes; 1..={MAX_DEDUPE_KEY}", k.len()),
                });
            }
        }
        if let Some(n) = self.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&n) {
                return Err(TasksError::BadTask {
                    field: "max_attempts",
                    reason: format!("{n} is outside 1..={MAX_ATTEMPTS}"),
                });
            }
        }
        Ok(())
    }
}

/// True when a string or key anywhere in `v` holds U+0000 (found by schemathesis: jsonb
/// refuses it, and the submit failed as a database error instead of a 400).
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks a queue name (the rules of shardjob names: letters, digits, `.`, `_`, `-`).
pub fn check_queue_name(name: &str) -> Result<(), TasksError> {
    validate_name("queue name", name).map_err(|e| TasksError::BadQueue {
        queue: name.to_owned(),
        field: "name",
        reason: e.to_string(),
    })?;
    // The job is "tasks.<queue>"; keep it inside the job-name limit.
    if name.len() > 120 {
        return Err(TasksError::BadQueue {
            queue: name.to_owned(),
            field: "name",
            reason: format!("{} bytes; at most 120", name.len()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tasks_name_the_field() {
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let year = Duration::from_secs(366 * 24 * 3600);
        let far = NewTask::after(Duration::from_secs(400 * 24 * 3600));
        assert!(matches!(
            far.due_at(now, year),
            Err(TasksError::BadTask { field: "due", .. })
        ));
        let huge = NewTask::after(Duration::MAX);
        assert!(huge.due_at(now, year).is_err(), "no overflow, no panic");
        let past = NewTask::at(now - chrono::Duration::hours(1));
        assert_eq!(past.due_at(now, year).unwrap(), now, "past means now");
        let table = [
            (
                NewTask::after(Duration::ZERO).payload(serde_json::json!("x".repeat(100))),
                "payload",
            ),
            (NewTask::after(Duration::ZERO).dedupe_key(""), "dedupe_key"),
            (
                NewTask::after(Duration::ZERO).max_attempts(0),
                "max_attempts",
            ),
            (
                NewTask::after(Duration::ZERO).payload(serde_json::json!({"a": ["ok", "x\u{0}y"]})),
                "payload",
            ),
            (
                NewTask::after(Duration::ZERO).dedupe_key("a\0b"),
                "dedupe_key",
            ),
        ];
        for (task, field) in table {
            let e = task.check(64).unwrap_err();
            assert!(
                matches!(e, TasksError::BadTask { field: f, .. } if f == field),
                "{e}"
            );
        }
        assert!(NewTask::after(Duration::ZERO).check(64).is_ok());
        assert!(check_queue_name("coupons").is_ok());
        assert!(check_queue_name("a b").is_err());
    }
}
