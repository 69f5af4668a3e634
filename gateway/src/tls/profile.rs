//! TLS profiles for outbound delivery: named, auditable sets of TLS parameters
//! (standards.md B6, B7, C1–C6). The profile a session used is part of its evidence
//! ([`crate::spool::record::TlsFacts::profile`]).
//!
//! TR-03108 (B6) asks that the parameters a client offers equal a declared profile,
//! that the client aborts when the server picks something outside it, and that no
//! downgrade is possible. With rustls this follows from its design: a client offers
//! exactly the cipher suites, groups and signature schemes of its `CryptoProvider`
//! and its signature verifier, and aborts the handshake (`PeerMisbehaved`) when a
//! server selects anything it did not offer; there is no fallback to older versions
//! or weaker suites. So a profile *is* a provider plus a verifier wrapper: the
//! provider fixes what is offered, [`ProfileVerifier`] adds what rustls cannot know
//! (the minimum peer key sizes of TR-02102-2, checked while the handshake runs, so
//! a weak key aborts it before any mail is sent).
//!
//! The profiles:
//!
//! - `bsi` — BSI TR-02102-2, edition 2025-01 (standards.md C1–C6):
//!   - C1: TLS 1.3 and 1.2 only; rustls always prefers 1.3 when both sides have it.
//!   - C3: TLS 1.3 suites `TLS_AES_256_GCM_SHA384`, `TLS_AES_128_GCM_SHA256`. Not
//!     ChaCha20-Poly1305 (not in the BSI list). `TLS_AES_128_CCM_SHA256` is listed by
//!     BSI but not implemented by rustls. No 0-RTT, no resumption (every handshake a
//!     full one, as for all profiles).
//!   - C2: TLS 1.2 suites ECDHE_ECDSA / ECDHE_RSA with AES-128/256-GCM. CBC and CCM
//!     (also listed by BSI) are not implemented by rustls; ChaCha20 is not listed.
//!   - C4: groups secp384r1 and secp256r1. secp521r1 and the brainpool curves are
//!     listed by BSI but the rustls aws-lc-rs provider has no key exchange for them,
//!     so they cannot be offered. X25519 is not listed and is not offered.
//!     Deliberate addition: the hybrid `SECP256R1MLKEM768` (ECDHE secp256r1 combined
//!     with ML-KEM-768, draft-ietf-tls-ecdhe-mlkem). Its shared secret includes a
//!     full secp256r1 ECDHE, so it is never weaker than the listed secp256r1, and it
//!     protects recorded traffic against a future quantum computer — the hybrid
//!     post-quantum key exchange BSI says it expects to recommend (standards.md C4;
//!     TR-02102-1 already recommends ML-KEM only in hybrid). `X25519MLKEM768` is not
//!     offered because its classical half is X25519.
//!   - C5: handshake signatures ECDSA (P-256/384/521) and RSA-PSS only. RSA PKCS#1
//!     v1.5 was allowed only until the end of 2025, so it is no longer offered;
//!     Ed25519 and ML-DSA are not in the list. This restricts the *handshake*
//!     signature (the server's proof of key possession). Signatures on certificates
//!     are not restricted: nearly every public CA signs with RSA PKCS#1 v1.5, and
//!     TR-02102-2 C5 concerns the TLS handshake.
//!   - C6: the server's key: RSA at least 3000 bits (`[tls] bsi_min_rsa_bits`,
//!     default 3000: an admin may lower it because many real servers still have
//!     RSA-2048, and sees the effect in the deferral reasons), elliptic curves at
//!     least 250 bits. Only RSA and EC keys are accepted.
//! - `modern` — the rustls defaults with aws-lc-rs (TLS 1.3 and 1.2, AES-GCM and
//!   ChaCha20, X25519MLKEM768, X25519, secp256r1, secp384r1), RSA keys at least
//!   2048 bits. The default for `encrypted` and `trusted`.
//! - `compat` — everything the aws-lc-rs provider implements for TLS 1.2/1.3 (all
//!   suites and groups, including the pure ML-KEM groups), no key-size minimum
//!   beyond the provider's (webpki verifies RSA signatures only for 2048-8192 bit
//!   keys). The default for `may`, and allowed only for `may` (B7): the
//!   configuration refuses it for any class above. Even `compat` has no CBC suites,
//!   no RSA key exchange and nothing before TLS 1.2 (the provider does not implement
//!   them), so a server offering only those cannot be reached with TLS at all; at
//!   `may` such a server gets the message in plaintext (RFC 7435), at every other
//!   level it is deferred.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    OtherError, PeerMisbehaved, SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use serde::{Deserialize, Serialize};
use webpki::aws_lc_rs as webpki_algs;

use super::client::TlsSetupError;
use super::peer_key::{KeyKind, PeerKey};
use crate::config::Level;

/// A named TLS profile. Ordered from weakest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Everything the provider can do; only for level `may` (B7).
    Compat,
    /// The rustls defaults, RSA >= 2048.
    Modern,
    /// BSI TR-02102-2 (2025-01).
    Bsi,
}

/// The parameter of the profiles that the configuration sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSettings {
    /// `[tls] bsi_min_rsa_bits`: the least RSA modulus `bsi` accepts (C6: 3000).
    pub bsi_min_rsa_bits: u32,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        ProfileSettings {
            bsi_min_rsa_bits: BSI_MIN_RSA_BITS,
        }
    }
}

/// TR-02102-2 (2025-01) minimum RSA key size (standards.md C6).
pub const BSI_MIN_RSA_BITS: u32 = 3000;
/// TR-02102-2 (2025-01) minimum elliptic-curve key size (standards.md C6).
pub const BSI_MIN_EC_BITS: u32 = 250;
/// The floor of `modern` for RSA (and what webpki verifies at all).
pub const MODERN_MIN_RSA_BITS: u32 = 2048;

/// Protocol versions of every profile, 1.3 first (C1).
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// C2/C3: AES-GCM only; 1.3 suites first.
static BSI_CIPHER_SUITES: &[SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

/// C4: NIST curves, plus the secp256r1 hybrid (see the module docs). The first group
/// is the one a TLS 1.3 key share is sent for; rustls also sends the secp256r1 share
/// of the hybrid, so a server without ML-KEM needs no extra round trip.
static BSI_KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    kx_group::SECP256R1MLKEM768,
    kx_group::SECP384R1,
    kx_group::SECP256R1,
];

/// C5: handshake signature schemes of `bsi`: ECDSA and RSA-PSS. (For TLS 1.2 the
/// curve is not bound to the scheme, hence several algorithms per ECDSA scheme.)
type SchemeMapping = [(
    SignatureScheme,
    &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm],
)];
static BSI_SIGNATURE_SCHEMES: &SchemeMapping = &[
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        &[
            webpki_algs::ECDSA_P384_SHA384,
            webpki_algs::ECDSA_P256_SHA384,
            webpki_algs::ECDSA_P521_SHA384,
        ],
    ),
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        &[
            webpki_algs::ECDSA_P256_SHA256,
            webpki_algs::ECDSA_P384_SHA256,
            webpki_algs::ECDSA_P521_SHA256,
        ],
    ),
    (
        SignatureScheme::ECDSA_NISTP521_SHA512,
        &[
            webpki_algs::ECDSA_P521_SHA512,
            webpki_algs::ECDSA_P384_SHA512,
            webpki_algs::ECDSA_P256_SHA512,
        ],
    ),
    (
        SignatureScheme::RSA_PSS_SHA512,
        &[webpki_algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
    ),
    (
        SignatureScheme::RSA_PSS_SHA384,
        &[webpki_algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
    ),
    (
        SignatureScheme::RSA_PSS_SHA256,
        &[webpki_algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
    ),
];

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Compat, Profile::Modern, Profile::Bsi];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Compat => "compat",
            Profile::Modern => "modern",
            Profile::Bsi => "bsi",
        }
    }

    /// The profile a level uses unless its class names one: `compat` for `may`,
    /// `modern` above (standards.md C: `bsi` becomes the default of `high` and
    /// `secret`, which name it in their class).
    pub fn default_for(level: Level) -> Profile {
        match level {
            Level::May => Profile::Compat,
            _ => Profile::Modern,
        }
    }

    /// Whether this profile may carry a message that needs `level` (B7: weaker
    /// parameters than `modern` only for opportunistic delivery).
    pub fn allowed_for(self, level: Level) -> bool {
        self >= Profile::Modern || level == Level::May
    }

    /// The protocol versions the profile offers: TLS 1.3 and 1.2 (C1).
    pub fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        VERSIONS
    }

    /// The provider with exactly the suites, groups and signature schemes the
    /// profile offers. Built once per process and shared. Use it (with
    /// [`Profile::versions`]) for every outbound client configuration, e.g. the
    /// per-connection DANE configurations, or better [`TlsProfile::client_config`],
    /// which also adds the key-size rules.
    pub fn provider(self) -> Arc<CryptoProvider> {
        static CELLS: [OnceLock<Arc<CryptoProvider>>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let cell = &CELLS[self as usize];
        cell.get_or_init(|| Arc::new(self.build_provider())).clone()
    }

    fn build_provider(self) -> CryptoProvider {
        let base = aws_lc_rs::default_provider();
        match self {
            Profile::Modern => base,
            Profile::Compat => CryptoProvider {
                cipher_suites: aws_lc_rs::ALL_CIPHER_SUITES.to_vec(),
                kx_groups: aws_lc_rs::ALL_KX_GROUPS.to_vec(),
                ..base
            },
            Profile::Bsi => CryptoProvider {
                cipher_suites: BSI_CIPHER_SUITES.to_vec(),
                kx_groups: BSI_KX_GROUPS.to_vec(),
                signature_verification_algorithms: WebPkiSupportedAlgorithms {
                    // Certificate signatures: everything webpki verifies (see C5 above).
                    all: base.signature_verification_algorithms.all,
                    mapping: BSI_SIGNATURE_SCHEMES,
                },
                ..base
            },
        }
    }

    /// The handshake signature schemes the profile accepts.
    pub fn signature_schemes(self) -> Vec<SignatureScheme> {
        self.provider()
            .signature_verification_algorithms
            .supported_schemes()
    }

    /// The key-size rules of this profile under `settings`.
    pub fn key_rules(self, settings: &ProfileSettings) -> KeyRules {
        match self {
            Profile::Bsi => KeyRules {
                min_rsa_bits: Some(settings.bsi_min_rsa_bits),
                min_ec_bits: Some(BSI_MIN_EC_BITS),
                rsa_and_ec_only: true,
            },
            Profile::Modern => KeyRules {
                min_rsa_bits: Some(MODERN_MIN_RSA_BITS),
                min_ec_bits: None,
                rsa_and_ec_only: false,
            },
            Profile::Compat => KeyRules {
                min_rsa_bits: None,
                min_ec_bits: None,
                rsa_and_ec_only: false,
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Minimum sizes of the server's public key (TR-02102-2, standards.md C6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    pub min_rsa_bits: Option<u32>,
    pub min_ec_bits: Option<u32>,
    /// Refuse keys other than RSA and EC (`bsi`: its signature schemes are ECDSA and
    /// RSA-PSS, so an EdDSA or unknown key could not sign the handshake anyway).
    pub rsa_and_ec_only: bool,
}

impl KeyRules {
    fn is_empty(&self) -> bool {
        self.min_rsa_bits.is_none() && self.min_ec_bits.is_none() && !self.rsa_and_ec_only
    }

    /// Check a server's end-entity certificate. Ok = its key, for the evidence.
    pub fn check(
        &self,
        profile: Profile,
        leaf: &CertificateDer<'_>,
    ) -> Result<Option<PeerKey>, ProfileViolation> {
        let Some(key) = PeerKey::of_certificate(leaf) else {
            if self.is_empty() {
                return Ok(None);
            }
            return Err(ProfileViolation::UnreadableKey { profile });
        };
        let minimum = match key.kind {
            KeyKind::Rsa => self.min_rsa_bits,
            KeyKind::Ec { .. } => self.min_ec_bits,
            KeyKind::EdDsa { .. } | KeyKind::Other { .. } if self.rsa_and_ec_only => {
                return Err(ProfileViolation::KeyTypeNotAllowed { key, profile });
            }
            KeyKind::EdDsa { .. } | KeyKind::Other { .. } => None,
        };
        match (minimum, key.bits) {
            (Some(minimum), Some(bits)) if bits < minimum => Err(ProfileViolation::KeyTooSmall {
                key,
                profile,
                minimum,
            }),
            (Some(_), None) => Err(ProfileViolation::UnreadableKey { profile }),
            _ => Ok(Some(key)),
        }
    }
}

/// A server that does not meet its profile. The text completes a sentence that
/// starts with the host name: "mx1.example.test presents an RSA-2048 key; profile
/// bsi requires at least 3000 bits".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileViolation {
    #[error("presents {}; profile {profile} requires at least {minimum} bits", .key.phrase())]
    KeyTooSmall {
        key: PeerKey,
        profile: Profile,
        minimum: u32,
    },
    #[error("presents {}; profile {profile} accepts only RSA and elliptic-curve keys", .key.phrase())]
    KeyTypeNotAllowed { key: PeerKey, profile: Profile },
    #[error("presents a certificate whose public key cannot be read; profile {profile} must check its size")]
    UnreadableKey { profile: Profile },
}

impl ProfileViolation {
    /// As a rustls error, so the handshake aborts; [`super::client::TlsFailure`]
    /// finds it again.
    pub fn into_rustls(self) -> TlsError {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    /// The violation inside a rustls error, if that is what it is.
    pub fn from_rustls(err: &TlsError) -> Option<&ProfileViolation> {
        match err {
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
                e.downcast_ref::<ProfileViolation>()
            }
            _ => None,
        }
    }
}

/// A profile with its settings applied: what a client configuration is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProfile {
    pub profile: Profile,
    pub rules: KeyRules,
}

impl TlsProfile {
    pub fn new(profile: Profile, settings: &ProfileSettings) -> TlsProfile {
        TlsProfile {
            profile,
            rules: profile.key_rules(settings),
        }
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.profile.provider()
    }

    pub fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        self.profile.versions()
    }

    /// The profile's rules for the server's end-entity certificate (C6) as a rustls
    /// result: for verifiers that run their own chain logic (DANE) and want the
    /// profile's refusal, with its plain-language reason, inside the handshake.
    pub fn check_leaf(&self, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
        self.rules
            .check(self.profile, leaf)
            .map(|_| ())
            .map_err(ProfileViolation::into_rustls)
    }

    /// `inner` with the profile's key-size rules and signature schemes enforced.
    pub fn wrap_verifier(&self, inner: Arc<dyn ServerCertVerifier>) -> Arc<ProfileVerifier> {
        Arc::new(ProfileVerifier {
            inner,
            profile: self.profile,
            rules: self.rules,
            schemes: self.profile.signature_schemes(),
        })
    }

    /// A complete outbound client configuration for this profile around a
    /// certificate verifier (PKIX, unauthenticated, DANE...): the profile's provider
    /// and versions, the verifier wrapped by [`Self::wrap_verifier`], no resumption
    /// (every recorded handshake is a full one), no 0-RTT (C3), SNI on.
    pub fn client_config(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let mut cfg = ClientConfig::builder_with_provider(self.provider())
            .with_protocol_versions(self.versions())
            .map_err(|e| TlsSetupError::Build(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.wrap_verifier(verifier))
            .with_no_client_auth();
        cfg.resumption = Resumption::disabled();
        cfg.enable_early_data = false;
        cfg.enable_sni = true;
        Ok(Arc::new(cfg))
    }
}

/// Wraps a certificate verifier: the inner one judges the chain and checks the
/// handshake signatures (never skipped); this one adds the profile's key-size
/// rules (C6) and accepts only the profile's signature schemes (C5), whatever the
/// inner verifier would allow.
#[derive(Debug)]
pub struct ProfileVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    profile: Profile,
    rules: KeyRules,
    schemes: Vec<SignatureScheme>,
}

impl ProfileVerifier {
    fn scheme_allowed(&self, dss: &DigitallySignedStruct) -> Result<(), TlsError> {
        if self.schemes.contains(&dss.scheme) {
            Ok(())
        } else {
            Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into())
        }
    }
}

impl ServerCertVerifier for ProfileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.rules
            .check(self.profile, end_entity)
            .map_err(ProfileViolation::into_rustls)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.scheme_allowed(dss)?;
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.scheme_allowed(dss)?;
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner
            .supported_verify_schemes()
            .into_iter()
            .filter(|s| self.schemes.contains(s))
            .collect()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests;
