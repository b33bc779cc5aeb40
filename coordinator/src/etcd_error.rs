//! [`EtcdError`]: one error type for a request to etcd that failed. It keeps etcd-client's error
//! (whose own type has no `source()` and is not `Clone`), the operation that failed, and whether
//! the request timed out on our side, and answers the question every caller has: try again
//! ([`EtcdError::is_transient`]) or give up?

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

/// What went wrong, as far as a caller needs to tell.
#[derive(Debug, Clone)]
pub enum Cause {
    /// No answer within `after` (our own bound on the request).
    TimedOut { after: Duration },
    /// etcd (or the client) answered with an error.
    Client(Arc<etcd_client::Error>),
}

/// A failed request to etcd: `op` says which (e.g. "claim", "listing /shardjob/ns/jobs/").
#[derive(Debug, Clone, thiserror::Error)]
pub struct EtcdError {
    pub op: String,
    pub cause: Cause,
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Cause::TimedOut { after } => write!(f, "{}: no answer within {after:?}", self.op),
            Cause::Client(e) => write!(f, "{}: {e}", self.op),
        }
    }
}

impl EtcdError {
    /// `op` failed with etcd-client's `error`.
    pub fn client(op: impl Into<String>, error: etcd_client::Error) -> Self {
        Self {
            op: op.into(),
            cause: Cause::Client(Arc::new(error)),
        }
    }

    /// `op` got no answer within `after`.
    pub fn timed_out(op: impl Into<String>, after: Duration) -> Self {
        Self {
            op: op.into(),
            cause: Cause::TimedOut { after },
        }
    }

    /// The gRPC status code etcd answered with, if it answered with one.
    pub fn code(&self) -> Option<Code> {
        match &self.cause {
            Cause::Client(e) => match e.as_ref() {
                etcd_client::Error::GRpcStatus(s) => Some(s.code()),
                _ => None,
            },
            Cause::TimedOut { .. } => None,
        }
    }

    /// The kind of the I/O error under the failure, if the request failed in the transport
    /// (connection refused or reset, a TLS handshake: rustls reports `InvalidData`). Found by
    /// walking the source chain, which etcd-client's own error does not expose.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        let Cause::Client(inner) = &self.cause else {
            return None;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = match inner.as_ref() {
            etcd_client::Error::GRpcStatus(s) => Some(s),
            etcd_client::Error::TransportError(t) => Some(t),
            etcd_client::Error::IoError(io) => Some(io),
            _ => None,
        };
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return Some(io.kind());
            }
            source = err.source();
        }
        None
    }

    /// True when the same request may well succeed later: a timeout, a broken or refused
    /// connection, or a status etcd uses for a passing state (no leader, leader changed,
    /// too many requests, a member shutting down). False for what will fail the same way
    /// again: bad credentials, permission denied, invalid arguments, a key or lease not found.
    pub fn is_transient(&self) -> bool {
        match &self.cause {
            Cause::TimedOut { .. } => true,
            Cause::Client(e) => match e.as_ref() {
                etcd_client::Error::GRpcStatus(s) => transient_code(s.code()),
                etcd_client::Error::TransportError(_)
                | etcd_client::Error::IoError(_)
                | etcd_client::Error::LeaseKeepAliveError(_)
                | etcd_client::Error::WatchError(_) => true,
                _ => false,
            },
        }
    }

    /// True when etcd refused who we are (wrong user or password, an expired or bad token, a
    /// role without the permission).
    pub fn is_auth(&self) -> bool {
        matches!(
            self.code(),
            Some(Code::Unauthenticated | Code::PermissionDenied)
        ) || (self.code() == Some(Code::InvalidArgument)
            && self.message().contains("authentication failed"))
    }

    fn message(&self) -> String {
        match &self.cause {
            Cause::Client(e) => match e.as_ref() {
                etcd_client::Error::GRpcStatus(s) => s.message().to_owned(),
                other => other.to_string(),
            },
            Cause::TimedOut { .. } => String::new(),
        }
    }
}

/// The gRPC codes etcd answers with for a state that passes.
fn transient_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

/// Runs `request` under `limit`, naming it `op` in the error, and records how long it took in
/// `shardjob_etcd_request_seconds{op}` (`op` is static: a handful of label values).
pub async fn bounded<T, F>(op: &'static str, limit: Duration, request: F) -> Result<T, EtcdError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    let began = tokio::time::Instant::now();
    let result = tokio::time::timeout(limit, request).await;
    metrics::histogram!("shardjob_etcd_request_seconds", "op" => op)
        .record(began.elapsed().as_secs_f64());
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EtcdError::client(op, e)),
        Err(_) => Err(EtcdError::timed_out(op, limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> EtcdError {
        EtcdError::client(
            "put",
            etcd_client::Error::GRpcStatus(tonic::Status::new(code, message)),
        )
    }

    #[test]
    fn transient_by_code_not_by_text() {
        let table = [
            (
                status(Code::Unavailable, "etcdserver: no leader"),
                true,
                false,
            ),
            (
                status(Code::Unavailable, "etcdserver: leader changed"),
                true,
                false,
            ),
            (
                status(Code::DeadlineExceeded, "etcdserver: request timed out"),
                true,
                false,
            ),
            (
                status(Code::ResourceExhausted, "etcdserver: too many requests"),
                true,
                false,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                false,
                true,
            ),
            (
                status(Code::Unauthenticated, "etcdserver: invalid auth token"),
                false,
                true,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                false,
                true,
            ),
            (
                status(Code::NotFound, "etcdserver: requested lease not found"),
                false,
                false,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: too many operations in txn request",
                ),
                false,
                false,
            ),
            (
                EtcdError::timed_out("claim", Duration::from_secs(2)),
                true,
                false,
            ),
        ];
        for (e, transient, auth) in table {
            assert_eq!(e.is_transient(), transient, "{e}");
            assert_eq!(e.is_auth(), auth, "{e}");
        }
    }

    #[test]
    fn says_what_failed_and_why() {
        let e = EtcdError::timed_out("claim", Duration::from_secs(2));
        assert_eq!(e.to_string(), "claim: no answer within 2s");
        let e = status(Code::Unavailable, "etcdserver: no leader");
        assert!(e.to_string().starts_with("put: grpc request error"), "{e}");
        assert_eq!(e.code(), Some(Code::Unavailable));
    }
}
