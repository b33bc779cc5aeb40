//! Bearer-token authentication and the client's identity for rate limits.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::ApiError;

/// Who is calling, for the per-client limits: the peer's IP address (the port changes with
/// every connection), or `local` when the server was not given connect info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey(pub String);

/// Refuses a request without the configured token (when one is set) and tags it with its
/// client.
pub async fn guard(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: the length may leak, the content does not.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authorization: a bearer token is required (Authorization: Bearer <token>)",
            )
            .into_response();
        }
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "local".to_owned(), |c| c.0.ip().to_string());
    req.extensions_mut().insert(ClientKey(client));
    next.run(req).await
}
