//! Inbound STARTTLS: the server certificate (configured or generated on first start).
//!
//! The LAN mail server talks to the box over STARTTLS (RFC 3207). The certificate is
//! either the one the admin configured (`smtp.tls_cert` / `smtp.tls_key`, PEM) or a
//! self-signed one generated with rcgen on first start and kept in
//! `<spool.dir>/tls/smtp-cert.pem` and `smtp-key.pem` (the key file is mode 0600, the
//! directory 0700), so the LAN server sees the same certificate after every restart
//! and can pin it. Delete both files to get a new one.
//!
//! The configuration uses the aws-lc-rs provider and allows TLS 1.2 and 1.3 only
//! (standards.md C1); the server's cipher-suite order wins. No 0-RTT (C3): rustls
//! accepts no early data unless asked to.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// File names of the generated certificate and key under `<spool.dir>/tls/`.
pub const GENERATED_CERT: &str = "smtp-cert.pem";
pub const GENERATED_KEY: &str = "smtp-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} contains no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot generate a certificate for {hostname}: {message}")]
    Generate { hostname: String, message: String },
    #[error("certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The directory holding the generated certificate and key.
pub fn generated_dir(cfg: &Config) -> PathBuf {
    cfg.spool.dir.join("tls")
}

/// The rustls configuration of the inbound listener: the configured certificate, or
/// the generated one (made now if it does not exist yet).
pub fn load_or_generate(cfg: &Config) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let (cert_path, key_path) = match (&cfg.smtp.tls_cert, &cfg.smtp.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = generated_dir(cfg);
            let cert = dir.join(GENERATED_CERT);
            let key = dir.join(GENERATED_KEY);
            if !(cert.exists() && key.exists()) {
                generate(&cfg.hostname(), &dir, &cert, &key)?;
            }
            (cert, key)
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsSetupError::Read {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    server_config(certs, key)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let read_err = |e: rustls_pki_types::pem::Error| TlsSetupError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Make a self-signed certificate (ECDSA P-256) for `hostname` and store it durably:
/// the key first (mode 0600), then the certificate, each written to a temporary
/// file, fsynced and renamed into place.
fn generate(hostname: &str, dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsSetupError> {
    let gen_err = |message: String| TlsSetupError::Generate {
        hostname: hostname.to_string(),
        message,
    };
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| gen_err(e.to_string()))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsSetupError::Write {
            path: dir.to_owned(),
            source,
        })?;
    write_file(key, ck.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert, ck.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        cert = %cert.display(),
        %hostname,
        "generated a self-signed certificate for inbound STARTTLS"
    );
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsSetupError> {
    let werr = |source: io::Error| TlsSetupError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    fs::rename(&tmp, path).map_err(werr)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
    }
    Ok(())
}

/// The inbound certificate as `qrelay tls show` and the box's console present it:
/// what an admin compares with what the LAN mail server (or a browser) is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub path: PathBuf,
    /// Configured by the admin, or generated by the relay on its first start.
    pub generated: bool,
    pub subject: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub names: Vec<String>,
    /// Validity period, RFC 3339 (UTC).
    pub not_before: String,
    pub not_after: String,
    /// SHA-256 of the certificate (DER), the fingerprint browsers and
    /// `openssl x509 -fingerprint -sha256` show.
    pub sha256: [u8; 32],
}

impl CertificateSummary {
    /// The fingerprint as browsers print it: upper-case hex pairs joined by colons.
    pub fn sha256_colons(&self) -> String {
        self.sha256
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The certificate the inbound listener presents (configured, or generated), without
/// making one: `None` while the relay has not started yet on a fresh box.
pub fn current_certificate(cfg: &Config) -> Result<Option<CertificateSummary>, TlsSetupError> {
    let (path, generated) = match &cfg.smtp.tls_cert {
        Some(c) if cfg.smtp.tls_key.is_some() => (c.clone(), false),
        _ => (generated_dir(cfg).join(GENERATED_CERT), true),
    };
    if generated && !path.exists() {
        return Ok(None);
    }
    let leaf = read_certs(&path)?.swap_remove(0);
    summarize(path, generated, &leaf).map(Some)
}

fn summarize(
    path: PathBuf,
    generated: bool,
    leaf: &CertificateDer<'_>,
) -> Result<CertificateSummary, TlsSetupError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsSetupError::Read {
            path: path.clone(),
            message: format!("not a valid X.509 certificate: {e}"),
        })?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|gn| match gn {
                GeneralName::DNSName(n) => Some((*n).to_string()),
                GeneralName::IPAddress(ip) => ip_text(ip),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let time = |t: x509_parser::time::ASN1Time| match u64::try_from(t.timestamp()) {
        Ok(secs) => crate::calendar::rfc3339(secs),
        Err(_) => "before 1970".to_string(),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Ok(CertificateSummary {
        subject: cert.subject().to_string(),
        names,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        sha256,
        path,
        generated,
    })
}

fn ip_text(raw: &[u8]) -> Option<String> {
    match raw.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(raw).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path) -> Config {
        let mut cfg = Config::default();
        cfg.spool.dir = dir.to_owned();
        cfg.smtp.hostname = "relay.test.example".into();
        cfg
    }

    #[test]
    fn generates_once_with_private_key_mode_0600_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        load_or_generate(&cfg).expect("generated");
        let key = dir.path().join("tls").join(GENERATED_KEY);
        let cert = dir.path().join("tls").join(GENERATED_CERT);
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "private key must be readable by the owner only"
        );
        let first = fs::read(&cert).unwrap();
        load_or_generate(&cfg).expect("loaded");
        assert_eq!(
            fs::read(&cert).unwrap(),
            first,
            "the certificate survives restarts"
        );
    }

    #[test]
    fn configured_certificate_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["configured.example".into()]).unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, ck.cert.pem()).unwrap();
        fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let mut cfg = config(dir.path());
        cfg.smtp.tls_cert = Some(cert);
        cfg.smtp.tls_key = Some(key);
        load_or_generate(&cfg).expect("configured certificate loads");
        assert!(!dir.path().join("tls").exists(), "nothing generated");
    }

    #[test]
    fn configured_file_without_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        fs::write(&cert, "not a certificate\n").unwrap();
        let mut cfg = config(dir.path());
        cfg.smtp.tls_cert = Some(cert.clone());
        cfg.smtp.tls_key = Some(cert);
        let err = load_or_generate(&cfg).unwrap_err();
        assert!(matches!(err, TlsSetupError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn c3_no_zero_rtt_and_server_suite_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        let sc = load_or_generate(&config(dir.path())).unwrap();
        assert_eq!(sc.max_early_data_size, 0, "no 0-RTT");
        assert!(sc.ignore_client_order);
    }

    #[test]
    fn summary_of_the_generated_certificate_has_its_names_and_der_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        assert_eq!(
            current_certificate(&cfg).unwrap(),
            None,
            "nothing is generated just by looking"
        );
        assert!(!dir.path().join("tls").exists());
        load_or_generate(&cfg).unwrap();
        let s = current_certificate(&cfg).unwrap().expect("generated now");
        assert!(s.generated);
        assert_eq!(s.names, vec!["relay.test.example".to_string()]);
        let pem = fs::read(dir.path().join("tls").join(GENERATED_CERT)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
        assert_eq!(&s.sha256[..], want.as_ref());
        let colons = s.sha256_colons();
        assert_eq!(colons.len(), 32 * 3 - 1);
        assert_eq!(colons.replace(':', ""), hex::encode_upper(want.as_ref()));
        assert!(
            s.not_before < s.not_after,
            "{} .. {}",
            s.not_before,
            s.not_after
        );
    }

    #[test]
    fn summary_of_a_configured_certificate_and_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gw.example".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("192.0.2.7".parse().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("c.pem");
        fs::write(&cert_path, cert.pem()).unwrap();
        let mut cfg = config(dir.path());
        cfg.smtp.tls_cert = Some(cert_path.clone());
        cfg.smtp.tls_key = Some(dir.path().join("k.pem"));
        let s = current_certificate(&cfg).unwrap().unwrap();
        assert!(!s.generated);
        assert_eq!(s.path, cert_path);
        assert_eq!(
            s.names,
            vec!["gw.example".to_string(), "192.0.2.7".to_string()]
        );

        fs::write(&cert_path, "not a certificate").unwrap();
        let err = current_certificate(&cfg).unwrap_err().to_string();
        assert!(err.contains("c.pem"), "{err}");
    }
}
