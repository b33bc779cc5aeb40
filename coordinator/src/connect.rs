//! Connecting to etcd the same way everywhere (agent, CLI, tests): endpoints, TLS from files,
//! user/password with automatic token refresh, and errors that say in one line what is wrong.

use std::path::PathBuf;
use std::time::Duration;

use crate::etcd_error::{EtcdError, bounded};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) to verify the server with; implies TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// User and password (etcd's tokens expire after 5 idle minutes; they are refreshed).
    pub user: Option<(String, String)>,
    /// How long to wait for etcd to answer at all.
    pub dial_timeout: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ca: None,
            cert: None,
            key: None,
            user: None,
            dial_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("no etcd endpoint given")]
    NoEndpoint,
    #[error("reading {what} {path}: {cause}")]
    ReadFile {
        what: &'static str,
        path: String,
        cause: String,
    },
    #[error("--cert and --key go together (got only {0})")]
    HalfIdentity(&'static str),
    #[error("cannot reach etcd at {endpoints}: {cause}")]
    Unreachable { endpoints: String, cause: String },
    #[error("authentication failed for user {user:?}: {cause}")]
    AuthFailed { user: String, cause: String },
    #[error("TLS handshake with etcd at {endpoints} failed: {cause}")]
    Tls { endpoints: String, cause: String },
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::ReadFile {
        what,
        path: path.display().to_string(),
        cause: e.to_string(),
    })
}

/// Connects and proves etcd answers (a status call), so a wrong endpoint, CA or password is an
/// error here rather than a hang later.
pub async fn connect(config: &ConnectConfig) -> Result<Client, ConnectError> {
    if config.endpoints.is_empty() {
        return Err(ConnectError::NoEndpoint);
    }
    let endpoints = config.endpoints.join(",");
    // require_leader: a member that has lost its raft leader answers at once with an error
    // (which callers retry, possibly on another member) instead of holding the request until
    // an election ends.
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_require_leader(true);
    let tls = config.ca.is_some() || config.cert.is_some();
    if tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &config.ca {
            t = t.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
        }
        match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                t = t.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("key", key)?,
                ));
            }
            (Some(_), None) => return Err(ConnectError::HalfIdentity("--cert")),
            (None, Some(_)) => return Err(ConnectError::HalfIdentity("--key")),
            (None, None) => {}
        }
        opts = opts.with_tls(t);
    }
    if let Some((user, password)) = &config.user {
        opts = opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    let classify = |e: EtcdError| classify(config, &endpoints, tls, e);
    let wait = config.dial_timeout * 2;
    let mut client = bounded(
        "connecting",
        wait,
        Client::connect(&config.endpoints, Some(opts)),
    )
    .await
    .map_err(classify)?;
    bounded("asking for status", wait, client.status())
        .await
        .map_err(classify)?;
    Ok(client)
}

/// Sorts a failure at connect by what etcd or the transport said, not by its text: a refusal
/// of the credentials by its gRPC code, a TLS failure by the kind of the I/O error under it
/// (rustls reports a bad certificate or handshake as `InvalidData`; a refused or reset
/// connection has a network kind).
fn classify(config: &ConnectConfig, endpoints: &str, tls: bool, e: EtcdError) -> ConnectError {
    let cause = e.to_string();
    if let (Some((user, _)), true) = (&config.user, e.is_auth()) {
        return ConnectError::AuthFailed {
            user: user.clone(),
            cause,
        };
    }
    if tls && e.io_kind() == Some(std::io::ErrorKind::InvalidData) {
        return ConnectError::Tls {
            endpoints: endpoints.to_owned(),
            cause,
        };
    }
    ConnectError::Unreachable {
        endpoints: endpoints.to_owned(),
        cause,
    }
}
