//! Outbound TLS: client configurations per transport level and the facts of a session.
//!
//! SMTP between mail servers upgrades a plaintext connection with STARTTLS (RFC 3207).
//! What the client checks depends on the level the message needs (standards.md H):
//! - `may` / `encrypted`: encryption without authentication (RFC 7435 "opportunistic
//!   security"). Any certificate chain is accepted, because most MX certificates
//!   would not pass PKIX for the MX name anyway and an unauthenticated TLS session
//!   still defeats passive eavesdropping. What is *never* skipped is the handshake
//!   signature: the server must prove it holds the private key of the certificate it
//!   presented (TLS 1.3: CertificateVerify, RFC 8446 4.4.3; TLS 1.2: the signed
//!   ServerKeyExchange, RFC 5246 7.4.3). Skipping it would let anyone replay a real
//!   server's certificate, which matters for the facts we record and, with DANE in a
//!   later release, for authentication itself (standards.md D10).
//! - `trusted`: PKIX (RFC 5280) to the built-in Mozilla roots plus the configured
//!   `[tls] ca_file`, and the MX host name in the certificate (RFC 6125), with the MX
//!   host name as SNI. A failure aborts the handshake.
//!
//! TLS 1.2 and 1.3 only (standards.md C1); the aws-lc-rs provider offers only ECDHE
//! key exchange with AEAD suites, so every session is forward-secret (B2). Session
//! resumption is off: every recorded handshake is a full one with the certificate
//! actually checked, so the evidence never describes a session we did not verify.
//! The configurations are built once at start and shared by all deliveries: one per
//! kind of check (unauthenticated / PKIX) and TLS profile ([`super::profile`]), six
//! in all. Which parameters are offered and which server keys are accepted is the
//! profile's business; this module only decides how the certificate is judged.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    Error as TlsError, PeerMisbehaved, RootCertStore, SignatureScheme,
};

use super::peer_key::PeerKey;
use super::profile::{Profile, ProfileSettings, ProfileViolation, TlsProfile};
use crate::config::{Level, TlsConfig};
use crate::spool::record::TlsFacts;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("CA file {path} contains no usable certificate")]
    CaFileEmpty { path: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Build(String),
}

/// Why a TLS handshake to a recipient server failed, in words an admin and a sender
/// understand (and, later, in TLS-RPT's result types, RFC 8460 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The chain does not lead to a trusted root ("certificate-not-trusted").
    NotTrusted,
    /// The certificate does not name the MX host ("certificate-host-mismatch").
    NameMismatch,
    /// Outside its validity period ("certificate-expired").
    Expired,
    /// The server could not prove possession of the certificate's key.
    BadSignature,
    /// The server's key does not meet the profile (standards.md C6).
    Profile(ProfileViolation),
    /// The server and the profile have no version, suite, group or signature
    /// scheme in common (standards.md B6: nothing outside the profile is offered).
    NoCommonParameters { profile: Profile, detail: String },
    /// The server chose a parameter the profile did not offer; the client aborted (B6).
    OutsideProfile { profile: Profile, detail: String },
    /// Anything else: protocol error, connection lost.
    Other(String),
}

impl TlsFailure {
    /// Classify an error from the handshake.
    pub fn from_rustls(err: &TlsError) -> TlsFailure {
        match err {
            TlsError::InvalidCertificate(ce) => match ce {
                CertificateError::UnknownIssuer
                | CertificateError::BadEncoding
                | CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => TlsFailure::NotTrusted,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                CertificateError::BadSignature => TlsFailure::BadSignature,
                CertificateError::Other(_) => match ProfileViolation::from_rustls(err) {
                    Some(v) => TlsFailure::Profile(v.clone()),
                    None => TlsFailure::Other(format!("certificate rejected: {ce:?}")),
                },
                other => TlsFailure::Other(format!("certificate rejected: {other:?}")),
            },
            TlsError::PeerMisbehaved(m) => TlsFailure::Other(format!("peer misbehaved: {m:?}")),
            other => TlsFailure::Other(other.to_string()),
        }
    }

    /// Classify an I/O error returned by the TLS stream (tokio-rustls wraps the
    /// rustls error inside).
    pub fn from_io(err: &std::io::Error) -> TlsFailure {
        match err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
            Some(tls) => TlsFailure::from_rustls(tls),
            None => TlsFailure::Other(err.to_string()),
        }
    }

    /// Classify a failed handshake made with `profile`: besides [`Self::from_io`],
    /// name the profile when the failure is about the parameters it offers.
    pub fn from_handshake(err: &std::io::Error, profile: Profile) -> TlsFailure {
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
            return TlsFailure::Other(err.to_string());
        };
        let detail = tls.to_string();
        match tls {
            TlsError::AlertReceived(
                AlertDescription::HandshakeFailure
                | AlertDescription::InsufficientSecurity
                | AlertDescription::ProtocolVersion,
            )
            | TlsError::PeerIncompatible(_) => TlsFailure::NoCommonParameters { profile, detail },
            TlsError::PeerMisbehaved(
                PeerMisbehaved::SelectedUnofferedCipherSuite
                | PeerMisbehaved::SelectedUnofferedKxGroup
                | PeerMisbehaved::SelectedUnusableCipherSuiteForVersion
                | PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme
                | PeerMisbehaved::IllegalHelloRetryRequestWithUnofferedCipherSuite
                | PeerMisbehaved::IllegalHelloRetryRequestWithUnofferedNamedGroup
                | PeerMisbehaved::IllegalHelloRetryRequestWithUnsupportedVersion,
            ) => TlsFailure::OutsideProfile { profile, detail },
            other => TlsFailure::from_rustls(other),
        }
    }

    /// Whether the failure is the profile refusing the server (its key or its
    /// parameters), as opposed to a broken certificate or connection.
    pub fn is_profile_failure(&self) -> bool {
        matches!(
            self,
            TlsFailure::Profile(_)
                | TlsFailure::NoCommonParameters { .. }
                | TlsFailure::OutsideProfile { .. }
        )
    }

    /// A sentence about `host`, for the deferral reason the admin and the sender
    /// see, e.g. "mx1.example.test presents an RSA-2048 key; profile bsi requires
    /// at least 3000 bits" or "TLS with mx1.example.test failed: certificate not
    /// trusted".
    pub fn describe(&self, host: &str) -> String {
        match self {
            TlsFailure::Profile(v) => format!("{host} {v}"),
            TlsFailure::NoCommonParameters { profile, detail } => format!(
                "{host} offers no TLS version, cipher suite, group or signature scheme allowed by profile {profile} ({detail})"
            ),
            TlsFailure::OutsideProfile { profile, detail } => format!(
                "{host} chose TLS parameters outside profile {profile}; handshake aborted ({detail})"
            ),
            other => format!("TLS with {host} failed: {other}"),
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTrusted => f.write_str("certificate not trusted"),
            TlsFailure::NameMismatch => {
                f.write_str("name mismatch: the certificate does not name the host")
            }
            TlsFailure::Expired => f.write_str("certificate expired or not yet valid"),
            TlsFailure::BadSignature => f.write_str(
                "handshake signature invalid: the server does not hold the certificate's key",
            ),
            TlsFailure::Profile(v) => write!(f, "the server {v}"),
            TlsFailure::NoCommonParameters { profile, detail } => write!(
                f,
                "no TLS parameters in common with profile {profile} ({detail})"
            ),
            TlsFailure::OutsideProfile { profile, detail } => write!(
                f,
                "the server chose TLS parameters outside profile {profile} ({detail})"
            ),
            TlsFailure::Other(m) => write!(f, "TLS handshake failed: {m}"),
        }
    }
}

/// The client side of outbound TLS, built once from the configuration.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Per profile, in the order of [`Profile::ALL`].
    profiles: [ProfileConfigs; 3],
    roots: Arc<RootCertStore>,
    settings: ProfileSettings,
}

/// The configurations of one profile.
#[derive(Debug, Clone)]
struct ProfileConfigs {
    profile: TlsProfile,
    /// `may` and `encrypted`: any chain, real signature checks.
    unauthenticated: Arc<ClientConfig>,
    /// `trusted`: PKIX + host name.
    pkix: Arc<ClientConfig>,
    /// The same PKIX verifier, to note after an unauthenticated handshake whether
    /// PKIX would have passed.
    pkix_verifier: Arc<WebPkiServerVerifier>,
}

impl ClientTls {
    /// Build all configurations with the default profile settings: roots =
    /// webpki-roots + the PEM certificates of `ca_file` (loaded once, here).
    pub fn new(ca_file: Option<&Path>) -> Result<ClientTls, TlsSetupError> {
        ClientTls::with_settings(ca_file, ProfileSettings::default())
    }

    /// Build from the `[tls]` table (`ca_file`, `bsi_min_rsa_bits`).
    pub fn from_config(tls: &TlsConfig) -> Result<ClientTls, TlsSetupError> {
        ClientTls::with_settings(
            tls.ca_file.as_deref(),
            ProfileSettings {
                bsi_min_rsa_bits: tls.bsi_min_rsa_bits,
            },
        )
    }

    pub fn with_settings(
        ca_file: Option<&Path>,
        settings: ProfileSettings,
    ) -> Result<ClientTls, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsSetupError::CaFile {
                    path: shown.clone(),
                    message: e.to_string(),
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsSetupError::CaFile {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::CaFileEmpty { path: shown });
            }
        }
        let roots = Arc::new(roots);
        let [a, b, c] = Profile::ALL.map(|p| ProfileConfigs::build(p, &settings, &roots));
        Ok(ClientTls {
            profiles: [a?, b?, c?],
            roots,
            settings,
        })
    }

    fn of(&self, profile: Profile) -> &ProfileConfigs {
        &self.profiles[profile as usize]
    }

    /// The configuration for a required level and a profile.
    pub fn config(&self, level: Level, profile: Profile) -> Arc<ClientConfig> {
        let p = self.of(profile);
        match level {
            Level::May | Level::Encrypted => p.unauthenticated.clone(),
            _ => p.pkix.clone(),
        }
    }

    /// The configuration for a required level with the level's default profile.
    pub fn config_for(&self, level: Level) -> Arc<ClientConfig> {
        self.config(level, Profile::default_for(level))
    }

    /// A profile with the configured settings: for building per-connection
    /// configurations (DANE) with [`TlsProfile::client_config`].
    pub fn profile(&self, profile: Profile) -> TlsProfile {
        self.of(profile).profile
    }

    pub fn settings(&self) -> ProfileSettings {
        self.settings
    }

    /// The PKIX trust anchors (Mozilla roots + `[tls] ca_file`).
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Whether the chain the server presented passes PKIX for `server_name`. Used
    /// after an unauthenticated handshake, only to record the fact.
    pub fn pkix_check(
        &self,
        chain: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> Result<(), TlsFailure> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(TlsFailure::NotTrusted);
        };
        // The chain check does not depend on the profile (all profiles verify the
        // same certificate signature algorithms).
        self.of(Profile::Modern)
            .pkix_verifier
            .verify_server_cert(leaf, intermediates, server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| TlsFailure::from_rustls(&e))
    }
}

impl ProfileConfigs {
    fn build(
        profile: Profile,
        settings: &ProfileSettings,
        roots: &Arc<RootCertStore>,
    ) -> Result<ProfileConfigs, TlsSetupError> {
        let profile = TlsProfile::new(profile, settings);
        let provider = profile.provider();
        let pkix_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsSetupError::Build(e.to_string()))?;
        let unauthenticated = profile.client_config(Arc::new(AcceptAnyChain {
            algorithms: provider.signature_verification_algorithms,
        }))?;
        let pkix = profile.client_config(pkix_verifier.clone())?;
        Ok(ProfileConfigs {
            profile,
            unauthenticated,
            pkix,
            pkix_verifier,
        })
    }
}

/// Accepts any certificate chain (RFC 7435 unauthenticated encryption) but always
/// checks the handshake signature against the presented certificate.
#[derive(Debug)]
struct AcceptAnyChain {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // The chain is not judged here, but the leaf must at least be a certificate:
        // its key is what the handshake signature is checked against.
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

/// SHA-256 of the certificate (DER) and of its SubjectPublicKeyInfo (DER). The SPKI
/// digest is what a DANE-EE 3 1 1 record pins (RFC 7671 5.1).
pub fn cert_fingerprints(leaf: &CertificateDer<'_>) -> (String, Option<String>) {
    let cert = sha256_hex(leaf.as_ref());
    let spki = webpki::EndEntityCert::try_from(leaf)
        .ok()
        .map(|ee| sha256_hex(ee.subject_public_key_info().as_ref()));
    (cert, spki)
}

/// The facts of an established session made with `profile`, for the attempt
/// record and the log: version, suite, group (C4), the peer's certificate and key
/// (C6) and the profile itself (part of the evidence).
pub fn session_facts(conn: &ClientConnection, pkix_verified: bool, profile: Profile) -> TlsFacts {
    let super::Negotiated {
        version,
        cipher,
        group,
    } = super::Negotiated::of(conn);
    let (peer_cert_sha256, peer_spki_sha256, key) = match conn.peer_certificates() {
        Some([leaf, ..]) => {
            let (c, s) = cert_fingerprints(leaf);
            (Some(c), s, PeerKey::of_certificate(leaf))
        }
        _ => (None, None, None),
    };
    TlsFacts {
        version,
        cipher,
        group,
        peer_cert_sha256,
        peer_spki_sha256,
        pkix_verified,
        profile: profile.as_str().to_string(),
        peer_key_type: key.as_ref().map(PeerKey::type_name),
        peer_key_bits: key.and_then(|k| k.bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_tls12_and_tls13_only_without_resumption() {
        let tls = ClientTls::new(None).expect("client tls");
        for level in [Level::May, Level::Encrypted, Level::Trusted] {
            let cfg = tls.config_for(level);
            let versions: Vec<_> = cfg
                .crypto_provider()
                .cipher_suites
                .iter()
                .map(|s| s.version().version)
                .collect();
            assert!(versions.iter().all(|v| matches!(
                v,
                rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
            )));
            assert!(!cfg.enable_early_data);
        }
    }

    #[test]
    fn fingerprints_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let (c, s) = cert_fingerprints(&der);
        assert_eq!(c, sha256_hex(der.as_ref()));
        assert_eq!(
            s.unwrap(),
            sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
    }

    #[test]
    fn failures_read_plainly() {
        let f = TlsFailure::from_rustls(&TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(f, TlsFailure::NotTrusted);
        assert_eq!(f.to_string(), "certificate not trusted");
        let f = TlsFailure::from_rustls(&TlsError::InvalidCertificate(
            CertificateError::NotValidForName,
        ));
        assert!(f.to_string().starts_with("name mismatch"));
    }

    #[test]
    fn missing_ca_file_content_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "").unwrap();
        assert!(ClientTls::new(Some(&p)).is_err());
    }
}
