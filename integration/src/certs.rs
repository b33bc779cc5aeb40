//! Throwaway certificates for TLS tests: a CA, a server certificate for 127.0.0.1 (X.509 v3 with
//! an IP SAN, as rustls requires), a client certificate, and a second, unrelated CA to show that
//! a wrong CA is refused.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// PEM files in a temp dir (removed on drop).
#[derive(Debug)]
pub struct TestPki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    CertifiedIssuer::self_signed(params, key).map_err(|e| e.to_string())
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> Result<(String, String), String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.subject_alt_names = sans;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestPki {
    /// Generates everything into a new temp dir.
    pub fn generate() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("shardjob-pki-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = ca("shardjob test CA")?;
        let other = ca("some other CA")?;
        let localhost = "localhost"
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?;
        let (server_cert, server_key) = leaf(
            "etcd",
            vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::DnsName(localhost),
            ],
            // etcd also presents its server certificate as a client (its gateway dials itself).
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &root,
        )?;
        let (client_cert, client_key) = leaf(
            "shardjob",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &root,
        )?;
        let d = dir.path().to_owned();
        Ok(Self {
            ca: write(&d, "ca.pem", &root.pem())?,
            server_cert: write(&d, "server.pem", &server_cert)?,
            server_key: write(&d, "server-key.pem", &server_key)?,
            client_cert: write(&d, "client.pem", &client_cert)?,
            client_key: write(&d, "client-key.pem", &client_key)?,
            other_ca: write(&d, "other-ca.pem", &other.pem())?,
            dir,
        })
    }
}
