//! Errors as the API answers them: a status and `{"error": {"code", "message"}}`, the message
//! naming the field at fault.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::TasksError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, for programs: `bad_request`, `not_found`, `unknown_queue`, `unauthorized`,
    /// `payload_too_large`, `rate_limited`, `unavailable`, `internal`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<TasksError> for ApiError {
    fn from(e: TasksError) -> Self {
        let text = e.to_string();
        match e {
            TasksError::UnknownQueue(_) => Self::new(StatusCode::NOT_FOUND, "unknown_queue", text),
            TasksError::BadTask { .. } | TasksError::BadQueue { .. } => Self::bad_request(text),
            TasksError::Database { .. } | TasksError::NoServers => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", text)
            }
            TasksError::BadUrl { .. } | TasksError::Migrate { .. } | TasksError::Fenced { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", text)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_map_to_statuses_and_stable_codes() {
        let table = [
            (TasksError::UnknownQueue("q".into()), 404, "unknown_queue"),
            (
                TasksError::BadTask {
                    field: "payload",
                    reason: "too big".into(),
                },
                400,
                "bad_request",
            ),
            (
                TasksError::db("submitting", 0, "refused"),
                503,
                "unavailable",
            ),
        ];
        for (e, status, code) in table {
            let a = ApiError::from(e);
            assert_eq!((a.status.as_u16(), a.code), (status, code), "{a:?}");
        }
    }
}
