//! What the API takes, and the checks that turn it into [`NewTask`]s: times are RFC 3339,
//! ids are UUIDs, and every error names its field (`tasks[3].due_at`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::error::ApiError;
use crate::submit::NewTask;

/// Most tasks in one batch request.
pub const MAX_BATCH: usize = 10_000;

/// One task in a request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskIn {
    /// RFC 3339; exclusive with `delay_ms`.
    pub due_at: Option<String>,
    pub delay_ms: Option<u64>,
    pub payload: Option<serde_json::Value>,
    pub dedupe_key: Option<String>,
    pub max_attempts: Option<u32>,
}

/// `POST /v1/tasks`: one task (its fields beside `queue`) or a batch (`tasks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    pub queue: String,
    pub tasks: Option<Vec<TaskIn>>,
    pub due_at: Option<String>,
    pub delay_ms: Option<u64>,
    pub payload: Option<serde_json::Value>,
    pub dedupe_key: Option<String>,
    pub max_attempts: Option<u32>,
}

/// Parses an RFC 3339 instant named `field`.
pub fn time(field: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{field}: {text:?} is not an RFC 3339 time (e.g. 2026-12-01T18:00:00Z): {e}"
            ))
        })
}

/// Parses a task id.
pub fn id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::bad_request(format!("id: {text:?} is not a task id (a UUID)")))
}

impl TaskIn {
    fn into_task(self, field: &str) -> Result<NewTask, ApiError> {
        let mut task = match (self.due_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "{field}: give due_at or delay_ms, not both"
                )));
            }
            (Some(t), None) => NewTask::at(time(&format!("{field}due_at"), &t)?),
            (None, Some(ms)) => NewTask::after(Duration::from_millis(ms)),
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "{field}due_at or {field}delay_ms is required"
                )));
            }
        };
        if let Some(p) = self.payload {
            task = task.payload(p);
        }
        if let Some(k) = self.dedupe_key {
            task = task.dedupe_key(k);
        }
        if let Some(n) = self.max_attempts {
            task = task.max_attempts(n);
        }
        Ok(task)
    }
}

impl SubmitBody {
    /// The tasks, and whether the request was a batch.
    pub fn into_tasks(self) -> Result<(String, Vec<NewTask>, bool), ApiError> {
        let single = self.due_at.is_some()
            || self.delay_ms.is_some()
            || self.payload.is_some()
            || self.dedupe_key.is_some()
            || self.max_attempts.is_some();
        match self.tasks {
            Some(_) if single => Err(ApiError::bad_request(
                "tasks: a batch takes its fields per task, not beside `tasks`",
            )),
            Some(list) if list.is_empty() || list.len() > MAX_BATCH => Err(ApiError::bad_request(
                format!("tasks: {} tasks; 1..={MAX_BATCH} per request", list.len()),
            )),
            Some(list) => {
                let tasks = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| t.into_task(&format!("tasks[{i}].")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((self.queue, tasks, true))
            }
            None => {
                let one = TaskIn {
                    due_at: self.due_at,
                    delay_ms: self.delay_ms,
                    payload: self.payload,
                    dedupe_key: self.dedupe_key,
                    max_attempts: self.max_attempts,
                };
                Ok((self.queue, vec![one.into_task("")?], false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> Result<(String, Vec<NewTask>, bool), ApiError> {
        serde_json::from_value::<SubmitBody>(json)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .into_tasks()
    }

    #[test]
    fn one_or_a_batch_and_every_error_names_its_field() {
        let (q, t, batch) = body(serde_json::json!({"queue": "q", "delay_ms": 10})).unwrap();
        assert_eq!((q.as_str(), t.len(), batch), ("q", 1, false));
        let (_, t, batch) = body(serde_json::json!({"queue": "q", "tasks": [
            {"delay_ms": 1}, {"due_at": "2026-12-01T18:00:00Z", "payload": {"a": 1}}]}))
        .unwrap();
        assert_eq!((t.len(), batch), (2, true));
        let table = [
            (
                serde_json::json!({"queue": "q"}),
                "due_at or delay_ms is required",
            ),
            (
                serde_json::json!({"queue": "q", "due_at": "tomorrow"}),
                "due_at: \"tomorrow\"",
            ),
            (
                serde_json::json!({"queue": "q", "due_at": "2026-12-01T18:00:00Z", "delay_ms": 1}),
                "not both",
            ),
            (
                serde_json::json!({"queue": "q", "tasks": [{"delay_ms": 1}, {"due_at": "x"}]}),
                "tasks[1].due_at",
            ),
            (
                serde_json::json!({"queue": "q", "tasks": []}),
                "tasks: 0 tasks",
            ),
            (
                serde_json::json!({"queue": "q", "tasks": [{"delay_ms": 1}], "delay_ms": 1}),
                "not beside",
            ),
            (
                serde_json::json!({"queue": "q", "delay_ms": 1, "colour": "red"}),
                "unknown field `colour`",
            ),
        ];
        for (json, needle) in table {
            let e = body(json.clone()).unwrap_err();
            assert!(e.message.contains(needle), "{json}: {}", e.message);
            assert_eq!(e.code, "bad_request");
        }
        assert!(id("not-a-uuid").unwrap_err().message.starts_with("id:"));
    }
}
