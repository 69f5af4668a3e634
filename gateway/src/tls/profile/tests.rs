//! The profiles against real handshakes with rustls servers on 127.0.0.1, each
//! server restricted to the parameters a test needs (one suite, one group, one
//! signature scheme, a key of a given size).

use std::sync::OnceLock;

use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Mutex;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, SignatureAlgorithm};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::spool::record::TlsFacts;
use crate::tls::client::{session_facts, ClientTls, TlsFailure};

const MX: &str = "mx1.example.test";

static TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

// ---------------------------------------------------------------- keys and servers

/// RSA key generation is slow-ish: one key per size for the whole test binary.
fn rsa_key(bits: u32) -> &'static rcgen::KeyPair {
    static K2048: OnceLock<rcgen::KeyPair> = OnceLock::new();
    static K3072: OnceLock<rcgen::KeyPair> = OnceLock::new();
    let (cell, size) = match bits {
        2048 => (&K2048, rcgen::RsaKeySize::_2048),
        3072 => (&K3072, rcgen::RsaKeySize::_3072),
        other => panic!("no RSA-{other} test key"),
    };
    cell.get_or_init(|| {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).expect("RSA key")
    })
}

fn certified(key: &rcgen::KeyPair) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let cert = rcgen::CertificateParams::new(vec![MX.to_string()])
        .unwrap()
        .self_signed(key)
        .unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// What a test server offers.
struct ServerSpec {
    suites: Vec<SupportedCipherSuite>,
    groups: Vec<&'static dyn SupportedKxGroup>,
    versions: &'static [&'static SupportedProtocolVersion],
    /// Sign the handshake only with RSA PKCS#1 v1.5 SHA-256, and note the
    /// signature schemes each client offered.
    pkcs1_only: Option<Arc<Mutex<Vec<SignatureScheme>>>>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        let p = default_provider();
        ServerSpec {
            suites: p.cipher_suites,
            groups: p.kx_groups,
            versions: VERSIONS,
            pkcs1_only: None,
        }
    }
}

/// A signing key that will only sign with RSA_PKCS1_SHA256.
#[derive(Debug)]
struct Pkcs1Only(Arc<dyn SigningKey>);

impl SigningKey for Pkcs1Only {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if offered.contains(&SignatureScheme::RSA_PKCS1_SHA256) {
            self.0.choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
        } else {
            None
        }
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// Serves one certificate and notes the signature schemes the client offered.
#[derive(Debug)]
struct Recording {
    key: Arc<CertifiedKey>,
    offered: Arc<Mutex<Vec<SignatureScheme>>>,
}

impl ResolvesServerCert for Recording {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Ok(mut o) = self.offered.lock() {
            *o = hello.signature_schemes().to_vec();
        }
        Some(self.key.clone())
    }
}

fn server_config(spec: &ServerSpec, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: spec.suites.clone(),
        kx_groups: spec.groups.clone(),
        ..default_provider()
    });
    let (cert, key_der) = certified(key);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(spec.versions)
        .unwrap()
        .with_no_client_auth();
    let cfg = if let Some(offered) = &spec.pkcs1_only {
        let signing = provider.key_provider.load_private_key(key_der).unwrap();
        let ck = CertifiedKey::new(vec![cert], Arc::new(Pkcs1Only(signing)));
        builder.with_cert_resolver(Arc::new(Recording {
            key: Arc::new(ck),
            offered: offered.clone(),
        }))
    } else {
        builder.with_single_cert(vec![cert], key_der).unwrap()
    };
    Arc::new(cfg)
}

/// One handshake from a `ClientTls` configuration (level `encrypted`: any chain)
/// with `profile` to a server on 127.0.0.1. Ok = the facts the client records.
async fn handshake_with(
    tls: &ClientTls,
    profile: Profile,
    server: Arc<ServerConfig>,
) -> Result<TlsFacts, TlsFailure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // The server's view does not matter; the client's error is what is tested.
        if let Ok(mut s) = TlsAcceptor::from(server).accept(tcp).await {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(tls.config(Level::Encrypted, profile));
    let name = ServerName::try_from(MX).unwrap();
    let result = match connector.connect(name, tcp).await {
        Ok(stream) => Ok(session_facts(stream.get_ref().1, false, profile)),
        Err(e) => Err(TlsFailure::from_handshake(&e, profile)),
    };
    let _ = srv.await;
    result
}

async fn handshake(profile: Profile, server: Arc<ServerConfig>) -> Result<TlsFacts, TlsFailure> {
    let tls = ClientTls::new(None).expect("client tls");
    handshake_with(&tls, profile, server).await
}

fn ecdsa_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn suite_names(p: Profile) -> Vec<String> {
    p.provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

fn group_names(p: Profile) -> Vec<String> {
    p.provider()
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect()
}

// ---------------------------------------------------------------- C1

#[tokio::test]
async fn c1_bsi_offers_only_tls12_and_tls13() {
    let bsi = Profile::Bsi;
    let versions: Vec<_> = bsi.versions().iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        [
            rustls::ProtocolVersion::TLSv1_3,
            rustls::ProtocolVersion::TLSv1_2
        ]
    );
    for s in &bsi.provider().cipher_suites {
        assert!(matches!(
            s.version().version,
            rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
        ));
    }
    let tls = ClientTls::new(None).unwrap();
    for level in [Level::May, Level::Encrypted, Level::Trusted] {
        let cfg = tls.config(level, bsi);
        assert!(!cfg.enable_early_data, "no 0-RTT (C3)");
        assert_eq!(
            suite_names(bsi),
            cfg.crypto_provider()
                .cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        );
    }

    // 1.3 preferred when the server has both; 1.2 when it has only 1.2.
    let key = ecdsa_key();
    let facts = handshake(bsi, server_config(&ServerSpec::default(), &key))
        .await
        .expect("bsi with a default server");
    assert_eq!(facts.version, "TLSv1.3");
    let tls12 = ServerSpec {
        versions: TLS12_ONLY,
        ..Default::default()
    };
    let facts = handshake(bsi, server_config(&tls12, &key)).await.unwrap();
    assert_eq!(facts.version, "TLSv1.2");
}

// ---------------------------------------------------------------- C2, C3

#[tokio::test]
async fn c2_bsi_tls12_suites_are_ecdhe_aes_gcm_only() {
    let tls12: Vec<String> = suite_names(Profile::Bsi)
        .into_iter()
        .filter(|n| !n.starts_with("TLS13_"))
        .collect();
    assert_eq!(
        tls12,
        [
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ]
    );
    // A TLS 1.2 server with only ChaCha20 suites has nothing in common with bsi.
    let key = ecdsa_key();
    let chacha12 = ServerSpec {
        suites: vec![cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
        versions: TLS12_ONLY,
        ..Default::default()
    };
    let err = handshake(Profile::Bsi, server_config(&chacha12, &key))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TlsFailure::NoCommonParameters {
                profile: Profile::Bsi,
                ..
            }
        ),
        "{err:?}"
    );
    // An AES-GCM TLS 1.2 server works, and the suite is recorded.
    let gcm12 = ServerSpec {
        suites: vec![cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        versions: TLS12_ONLY,
        ..Default::default()
    };
    let facts = handshake(Profile::Bsi, server_config(&gcm12, &key))
        .await
        .unwrap();
    assert_eq!(facts.cipher, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
}

#[test]
fn c3_bsi_tls13_suites_exclude_chacha20() {
    let tls13: Vec<String> = suite_names(Profile::Bsi)
        .into_iter()
        .filter(|n| n.starts_with("TLS13_"))
        .collect();
    assert_eq!(
        tls13,
        ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"]
    );
    assert!(!suite_names(Profile::Bsi)
        .iter()
        .any(|n| n.contains("CHACHA20")));
    // modern and compat keep ChaCha20 (the rustls defaults).
    assert!(suite_names(Profile::Modern)
        .iter()
        .any(|n| n.contains("CHACHA20")));
}

#[tokio::test]
async fn b6_server_choosing_chacha20_only_fails_with_bsi() {
    let key = ecdsa_key();
    let chacha = ServerSpec {
        suites: vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256],
        versions: TLS13_ONLY,
        ..Default::default()
    };
    let err = handshake(Profile::Bsi, server_config(&chacha, &key))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TlsFailure::NoCommonParameters {
                profile: Profile::Bsi,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_profile_failure());
    let reason = err.describe(MX);
    assert!(
        reason.starts_with("mx1.example.test offers no TLS version, cipher suite"),
        "{reason}"
    );
    assert!(reason.contains("profile bsi"), "{reason}");

    let facts = handshake(Profile::Modern, server_config(&chacha, &key))
        .await
        .expect("modern offers ChaCha20");
    assert_eq!(facts.cipher, "TLS13_CHACHA20_POLY1305_SHA256");
    assert_eq!(facts.profile, "modern");
}

// ---------------------------------------------------------------- C4

#[tokio::test]
async fn c4_bsi_groups_exclude_x25519() {
    let groups = group_names(Profile::Bsi);
    assert_eq!(groups, ["secp256r1MLKEM768", "secp384r1", "secp256r1"]);
    assert!(!groups.iter().any(|g| g.contains("X25519")), "{groups:?}");
    assert!(group_names(Profile::Modern).contains(&"X25519".to_string()));
    assert!(group_names(Profile::Modern).contains(&"X25519MLKEM768".to_string()));

    // A server with only X25519: nothing in common for bsi, fine for modern.
    let key = ecdsa_key();
    let x25519 = ServerSpec {
        groups: vec![kx_group::X25519],
        ..Default::default()
    };
    let err = handshake(Profile::Bsi, server_config(&x25519, &key))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TlsFailure::NoCommonParameters {
                profile: Profile::Bsi,
                ..
            }
        ),
        "{err:?}"
    );
    let facts = handshake(Profile::Modern, server_config(&x25519, &key))
        .await
        .unwrap();
    assert_eq!(facts.group.as_deref(), Some("X25519"));
}

#[tokio::test]
async fn c4_negotiated_group_is_recorded() {
    let key = ecdsa_key();
    for (group, name) in [
        (kx_group::SECP384R1, "secp384r1"),
        (kx_group::SECP256R1, "secp256r1"),
        (kx_group::SECP256R1MLKEM768, "secp256r1MLKEM768"),
    ] {
        for versions in [TLS13_ONLY, TLS12_ONLY] {
            if versions[0].version == rustls::ProtocolVersion::TLSv1_2 && name.contains("MLKEM") {
                continue; // hybrids are TLS 1.3 only
            }
            let spec = ServerSpec {
                groups: vec![group],
                versions,
                ..Default::default()
            };
            let facts = handshake(Profile::Bsi, server_config(&spec, &key))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(facts.group.as_deref(), Some(name), "{facts:?}");
            assert_eq!(facts.profile, "bsi");
        }
    }
    // modern against a default server: the X25519 hybrid.
    let facts = handshake(Profile::Modern, server_config(&ServerSpec::default(), &key))
        .await
        .unwrap();
    assert_eq!(facts.group.as_deref(), Some("X25519MLKEM768"));
}

// ---------------------------------------------------------------- C5

#[tokio::test]
async fn c5_bsi_refuses_rsa_pkcs1_signatures() {
    let schemes = Profile::Bsi.signature_schemes();
    assert!(!schemes.is_empty());
    for s in &schemes {
        let n = format!("{s:?}");
        assert!(n.starts_with("ECDSA_") || n.starts_with("RSA_PSS_"), "{n}");
    }
    assert!(Profile::Modern
        .signature_schemes()
        .contains(&SignatureScheme::RSA_PKCS1_SHA256));

    // TLS 1.2 (1.3 never uses PKCS#1 for the handshake), an RSA-3072 key so the key
    // size is not the reason, and a server that signs only with PKCS#1 v1.5.
    let offered = Arc::new(Mutex::new(Vec::new()));
    let spec = ServerSpec {
        versions: TLS12_ONLY,
        pkcs1_only: Some(offered.clone()),
        ..Default::default()
    };
    let key = rsa_key(3072);
    handshake(Profile::Bsi, server_config(&spec, key))
        .await
        .expect_err("bsi must not complete a handshake signed with PKCS#1 v1.5");
    let bsi_offered = offered.lock().unwrap().clone();
    assert!(!bsi_offered.is_empty());
    assert!(
        bsi_offered
            .iter()
            .all(|s| format!("{s:?}").starts_with("ECDSA_")
                || format!("{s:?}").starts_with("RSA_PSS_")),
        "bsi offered {bsi_offered:?}"
    );
    let facts = handshake(Profile::Modern, server_config(&spec, key))
        .await
        .expect("modern accepts PKCS#1 v1.5");
    assert!(offered
        .lock()
        .unwrap()
        .contains(&SignatureScheme::RSA_PKCS1_SHA256));
    assert_eq!(facts.version, "TLSv1.2");
    assert_eq!(facts.cipher, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
}

#[test]
fn c5_profile_verifier_refuses_schemes_outside_the_profile() {
    // Whatever the inner verifier supports, the wrapper offers and accepts only the
    // profile's schemes (a DANE verifier built elsewhere cannot widen bsi).
    let tls = TlsProfile::new(Profile::Bsi, &ProfileSettings::default());
    let v = tls.wrap_verifier(full_pkix_verifier());
    let offered = v.supported_verify_schemes();
    assert!(!offered.contains(&SignatureScheme::RSA_PKCS1_SHA256));
    assert!(!offered.contains(&SignatureScheme::ED25519));
    assert!(offered.contains(&SignatureScheme::RSA_PSS_SHA256));
}

/// A PKIX verifier over the full default provider: an "inner" verifier that
/// supports more schemes than bsi.
fn full_pkix_verifier() -> Arc<dyn ServerCertVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(default_provider()),
    )
    .build()
    .unwrap()
}

// ---------------------------------------------------------------- C6

#[tokio::test]
async fn c6_bsi_refuses_rsa_2048_key_and_accepts_rsa_3072() {
    let spec = ServerSpec::default();
    let err = handshake(Profile::Bsi, server_config(&spec, rsa_key(2048)))
        .await
        .unwrap_err();
    match &err {
        TlsFailure::Profile(ProfileViolation::KeyTooSmall { key, minimum, .. }) => {
            assert_eq!(key.bits, Some(2048));
            assert_eq!(*minimum, 3000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.describe(MX),
        "mx1.example.test presents an RSA-2048 key; profile bsi requires at least 3000 bits"
    );

    let facts = handshake(Profile::Bsi, server_config(&spec, rsa_key(3072)))
        .await
        .expect("RSA-3072 meets bsi");
    assert_eq!(facts.profile, "bsi");
    assert_eq!(facts.peer_key_type.as_deref(), Some("RSA"));
    assert_eq!(facts.peer_key_bits, Some(3072));

    // modern accepts RSA-2048 and records it.
    let facts = handshake(Profile::Modern, server_config(&spec, rsa_key(2048)))
        .await
        .unwrap();
    assert_eq!(facts.peer_key_bits, Some(2048));

    // The same rule as a plain check (for DANE's own verifier): refused with the
    // profile's reason, found again by TlsFailure.
    let (weak, _) = certified(rsa_key(2048));
    let bsi = TlsProfile::new(Profile::Bsi, &ProfileSettings::default());
    let err = bsi.check_leaf(&weak).unwrap_err();
    assert_eq!(
        TlsFailure::from_rustls(&err).describe(MX),
        "mx1.example.test presents an RSA-2048 key; profile bsi requires at least 3000 bits"
    );

    // The admin may lower the bsi minimum ([tls] bsi_min_rsa_bits).
    let lowered = ClientTls::with_settings(
        None,
        ProfileSettings {
            bsi_min_rsa_bits: 2048,
        },
    )
    .unwrap();
    let facts = handshake_with(&lowered, Profile::Bsi, server_config(&spec, rsa_key(2048)))
        .await
        .expect("bsi with bsi_min_rsa_bits = 2048");
    assert_eq!(facts.peer_key_bits, Some(2048));

    // EC: P-256 (256 >= 250) passes bsi and is recorded with its curve.
    let facts = handshake(Profile::Bsi, server_config(&spec, &ecdsa_key()))
        .await
        .unwrap();
    assert_eq!(facts.peer_key_type.as_deref(), Some("EC secp256r1"));
    assert_eq!(facts.peer_key_bits, Some(256));
}

#[test]
fn c6_key_rules_per_profile() {
    let settings = ProfileSettings::default();
    let (rsa2048, _) = certified(rsa_key(2048));
    let (ed, _) = certified(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap());
    let bsi = Profile::Bsi.key_rules(&settings);
    assert!(matches!(
        bsi.check(Profile::Bsi, &rsa2048),
        Err(ProfileViolation::KeyTooSmall { minimum: 3000, .. })
    ));
    let err = bsi.check(Profile::Bsi, &ed).unwrap_err();
    assert_eq!(
        err.to_string(),
        "presents an Ed25519 key; profile bsi accepts only RSA and elliptic-curve keys"
    );
    assert!(Profile::Modern
        .key_rules(&settings)
        .check(Profile::Modern, &ed)
        .is_ok());
    let compat = Profile::Compat.key_rules(&settings);
    assert_eq!(
        compat
            .check(Profile::Compat, &rsa2048)
            .unwrap()
            .and_then(|k| k.bits),
        Some(2048)
    );
    // Garbage is not a certificate: only a profile without rules lets it pass here
    // (the handshake signature check refuses it anyway).
    let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        bsi.check(Profile::Bsi, &junk),
        Err(ProfileViolation::UnreadableKey { .. })
    ));
    assert_eq!(compat.check(Profile::Compat, &junk), Ok(None));
}

// ---------------------------------------------------------------- B7, defaults

#[test]
fn b7_profile_defaults_and_levels() {
    assert_eq!(Profile::default_for(Level::May), Profile::Compat);
    assert_eq!(Profile::default_for(Level::Encrypted), Profile::Modern);
    assert_eq!(Profile::default_for(Level::Trusted), Profile::Modern);
    assert!(Profile::Compat.allowed_for(Level::May));
    assert!(!Profile::Compat.allowed_for(Level::Encrypted));
    assert!(!Profile::Compat.allowed_for(Level::Trusted));
    for p in [Profile::Modern, Profile::Bsi] {
        for l in [Level::May, Level::Encrypted, Level::Trusted] {
            assert!(p.allowed_for(l));
        }
    }
    // compat offers everything the provider has; modern is the rustls default.
    let all: Vec<String> = rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(suite_names(Profile::Compat), all);
    assert_eq!(
        group_names(Profile::Compat).len(),
        rustls::crypto::aws_lc_rs::ALL_KX_GROUPS.len()
    );
    assert_eq!(
        group_names(Profile::Modern),
        default_provider()
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect::<Vec<_>>()
    );
    // One provider per profile, shared.
    assert!(Arc::ptr_eq(
        &Profile::Bsi.provider(),
        &Profile::Bsi.provider()
    ));
}
