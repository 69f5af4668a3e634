//! Real TLS handshakes against tokio-rustls servers on 127.0.0.1 (ephemeral ports)
//! with rcgen certificates, named after the rules they prove (standards.md B3,
//! D5-D10). Record data is computed from rcgen's view of the keys, independently
//! of the code under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::tls::client::TlsFailure;

const MX: &str = "mx1.example.test";
/// A CNAME target: the TLSA base domain when the MX name is an alias.
const EXPANDED: &str = "host.provider.test";
const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

// ---------------------------------------------------------------- certificates

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Clone, Copy)]
enum Validity {
    Current,
    Expired,
}

fn params(names: &[&str], validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    if let Validity::Expired = validity {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    p
}

/// A CA and its SubjectPublicKeyInfo (DER).
struct Ca(CertifiedIssuer<'static, KeyPair>, Vec<u8>);

impl Ca {
    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = params(&[], Validity::Current);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    }

    /// A self-signed root. Two roots made with the same `cn` have the same name
    /// but different keys (the "another CA" of B3 at its most deceptive).
    fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ca(
            CertifiedIssuer::self_signed(Ca::ca_params(cn), key).expect("root"),
            spki,
        )
    }

    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ca(
            CertifiedIssuer::signed_by(Ca::ca_params(cn), key, &self.0).expect("intermediate"),
            spki,
        )
    }

    fn cert(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    fn spki(&self) -> Vec<u8> {
        self.1.clone()
    }

    fn leaf(&self, names: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = params(names, validity)
            .signed_by(&key, &self.0)
            .expect("leaf");
        Leaf {
            cert: cert.der().clone(),
            key,
        }
    }
}

struct Leaf {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl Leaf {
    fn self_signed(names: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = params(names, validity).self_signed(&key).expect("cert");
        Leaf {
            cert: cert.der().clone(),
            key,
        }
    }

    fn spki(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// A TLSA record for `cert` / `spki`, computed here, not by the code under test.
fn record(usage: u8, selector: u8, matching: u8, cert: &[u8], spki: &[u8]) -> Tlsa {
    let selected = if selector == 0 { cert } else { spki };
    let data = match matching {
        0 => selected.to_vec(),
        1 => digest::digest(&digest::SHA256, selected).as_ref().to_vec(),
        _ => digest::digest(&digest::SHA512, selected).as_ref().to_vec(),
    };
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

fn ee_record(selector: u8, matching: u8, leaf: &Leaf) -> Tlsa {
    record(3, selector, matching, leaf.cert.as_ref(), &leaf.spki())
}

fn ta_record(selector: u8, matching: u8, ca: &Ca) -> Tlsa {
    record(2, selector, matching, ca.cert().as_ref(), &ca.spki())
}

// ---------------------------------------------------------------- server

/// Always presents one chain with one signing key (which need not belong to it).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A TLS server for one connection on 127.0.0.1; the task yields the SNI it saw
/// when the handshake completed.
async fn serve(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> (SocketAddr, JoinHandle<Option<Option<String>>>) {
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .expect("signing key");
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(CertifiedKey::new(
            chain,
            signing_key,
        )))));
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        // Finish the exchange so the client sees the server's Finished (TLS 1.3).
        let mut byte = [0u8; 1];
        let _ = tls.read(&mut byte).await;
        Some(sni)
    });
    (addr, task)
}

struct Client {
    result: Result<(), std::io::Error>,
    outcome: Option<DaneOutcome>,
    sni_seen: Option<Option<String>>,
}

impl Client {
    fn ok(&self) -> DaneOutcome {
        match &self.result {
            Ok(()) => self
                .outcome
                .clone()
                .expect("an accepted handshake records an outcome"),
            Err(e) => panic!("handshake refused: {e}"),
        }
    }

    /// Refused because no usable record matched (not for another reason).
    fn mismatch(&self) -> bool {
        let _ = self.refused();
        match &self.result {
            Err(e) => {
                let found = TlsaMismatch::find_in_io(e);
                if let Some(m) = found {
                    assert!(
                        m.to_string()
                            .starts_with("TLSA records did not match the certificate chain"),
                        "{m}"
                    );
                }
                found.is_some()
            }
            Ok(()) => false,
        }
    }

    fn refused(&self) -> TlsFailure {
        match &self.result {
            Ok(()) => panic!("handshake accepted: {:?}", self.outcome),
            Err(e) => {
                assert_eq!(self.outcome, None, "no outcome after a refusal");
                TlsFailure::from_io(e)
            }
        }
    }
}

/// Connect with a DANE verifier built from `records` (D5/D9-filtered here, the way
/// the delivery code does it) and the given connection name.
async fn connect_as(
    addr: SocketAddr,
    server: JoinHandle<Option<Option<String>>>,
    records: Vec<Tlsa>,
    base_domain: &str,
    mx_host: &str,
    versions: &[&'static SupportedProtocolVersion],
    connect_name: Option<ServerName<'static>>,
) -> Client {
    let usable = TlsaSet::new(records).usable();
    let slot = OutcomeSlot::new();
    let verifier = Arc::new(
        DaneVerifier::new(&usable, base_domain, mx_host, provider(), slot.clone())
            .expect("verifier"),
    );
    let config = client_config(provider(), versions, verifier.clone()).expect("config");
    let name = connect_name.unwrap_or_else(|| verifier.server_name());
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        tls.write_all(b"x").await?;
        tls.flush().await?;
        Ok::<(), std::io::Error>(())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("handshake timed out");
    let sni_seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server timed out")
        .expect("server task");
    Client {
        result,
        outcome: slot.get(),
        sni_seen,
    }
}

/// Serve `chain` (signed with `key`) and connect with `records` for base domain
/// and MX host `MX`, TLS 1.2 or 1.3.
async fn handshake(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    records: Vec<Tlsa>,
) -> Client {
    let (addr, server) = serve(chain, key, BOTH).await;
    connect_as(addr, server, records, MX, MX, BOTH, None).await
}

// ---------------------------------------------------------------- D7 DANE-EE

#[tokio::test]
async fn d7_dane_ee_spki_sha256_matches_and_ignores_name_and_expiry() {
    let leaf = Leaf::self_signed(&["wrong.name.test"], Validity::Expired);
    let rec = ee_record(1, 1, &leaf);
    let c = handshake(vec![leaf.cert.clone()], leaf.key_der(), vec![rec.clone()]).await;
    let outcome = c.ok();
    assert_eq!(outcome.mechanism, DaneMechanism::DaneEe);
    assert_eq!(outcome.mechanism.as_str(), "dane-ee");
    assert_eq!(outcome.record, rec);
    assert_eq!(outcome.base_domain, MX);
    assert_eq!(outcome.chain_position, Some(0));
    assert_eq!(outcome.matched_name, None);
    assert_eq!(
        outcome.record.to_string(),
        format!("3 1 1 {}", hex::encode(&rec.data))
    );
}

#[tokio::test]
async fn d7_dane_ee_ignores_the_issuer() {
    // A CA-signed leaf whose CA the client has never heard of: the pin is enough.
    let ca = Ca::root("unknown CA");
    let leaf = ca.leaf(&["elsewhere.test"], Validity::Current);
    let c = handshake(
        vec![leaf.cert.clone(), ca.cert()],
        leaf.key_der(),
        vec![ee_record(0, 1, &leaf)],
    )
    .await;
    assert_eq!(c.ok().mechanism, DaneMechanism::DaneEe);
}

#[tokio::test]
async fn d6_no_matching_record_refuses_the_handshake() {
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let other = Leaf::self_signed(&[MX], Validity::Current);
    let ca = Ca::root("some CA");
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ee_record(1, 1, &other), ta_record(0, 1, &ca)],
    )
    .await;
    assert!(c.mismatch(), "{:?}", c.result);
}

// ---------------------------------------------------------------- D8 DANE-TA

#[tokio::test]
async fn d8_dane_ta_chain_to_matched_ca_and_name_checked() {
    // root -> intermediate -> leaf; the record names the root, which the server
    // sends (RFC 7672 3.1.2).
    let root = Ca::root("qrelay test root");
    let inter = root.intermediate("qrelay test intermediate");
    let leaf = inter.leaf(&[MX], Validity::Current);
    let chain = vec![leaf.cert.clone(), inter.cert(), root.cert()];
    let c = handshake(chain.clone(), leaf.key_der(), vec![ta_record(0, 1, &root)]).await;
    let o = c.ok();
    assert_eq!(o.mechanism, DaneMechanism::DaneTa);
    assert_eq!(o.mechanism.as_str(), "dane-ta");
    assert_eq!(o.chain_position, Some(2));
    assert_eq!(o.matched_name.as_deref(), Some(MX));

    // The record may name the intermediate instead.
    let c = handshake(chain, leaf.key_der(), vec![ta_record(1, 1, &inter)]).await;
    let o = c.ok();
    assert_eq!(o.chain_position, Some(1));
}

#[tokio::test]
async fn d8_dane_ta_reference_identifiers_are_base_domain_and_mx_name() {
    // The MX name is an alias (secure CNAME) for EXPANDED, whose TLSA records were
    // used: a certificate for either name is accepted, for a third name not.
    let root = Ca::root("qrelay test root");
    for (name, ok) in [(MX, true), (EXPANDED, true), ("other.example.test", false)] {
        let leaf = root.leaf(&[name], Validity::Current);
        let (addr, server) =
            serve(vec![leaf.cert.clone(), root.cert()], leaf.key_der(), BOTH).await;
        let c = connect_as(
            addr,
            server,
            vec![ta_record(0, 1, &root)],
            EXPANDED,
            MX,
            BOTH,
            None,
        )
        .await;
        if ok {
            assert_eq!(c.ok().matched_name.as_deref(), Some(name));
        } else {
            assert_eq!(c.refused(), TlsFailure::NameMismatch);
        }
    }
}

#[tokio::test]
async fn d8_dane_ta_wildcard_in_leftmost_label_matches() {
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&["*.example.test"], Validity::Current);
    let c = handshake(
        vec![leaf.cert.clone(), root.cert()],
        leaf.key_der(),
        vec![ta_record(0, 1, &root)],
    )
    .await;
    assert_eq!(c.ok().matched_name.as_deref(), Some(MX));
}

#[tokio::test]
async fn d8_dane_ta_wrong_name_refused() {
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&["wrong.example.test"], Validity::Current);
    let c = handshake(
        vec![leaf.cert.clone(), root.cert()],
        leaf.key_der(),
        vec![ta_record(0, 1, &root)],
    )
    .await;
    assert_eq!(c.refused(), TlsFailure::NameMismatch);
}

#[tokio::test]
async fn d8_dane_ta_expired_leaf_refused() {
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&[MX], Validity::Expired);
    let c = handshake(
        vec![leaf.cert.clone(), root.cert()],
        leaf.key_der(),
        vec![ta_record(0, 1, &root)],
    )
    .await;
    assert_eq!(c.refused(), TlsFailure::Expired);
}

#[tokio::test]
async fn d8_dane_ta_bare_public_key_need_not_be_in_the_chain() {
    // "2 1 0": the full key from DNS is the anchor (RFC 7671 5.2.2); the server
    // sends only its leaf.
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&[MX], Validity::Current);
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ta_record(1, 0, &root)],
    )
    .await;
    let o = c.ok();
    assert_eq!(o.mechanism, DaneMechanism::DaneTa);
    assert_eq!(o.chain_position, None);

    // A digest of the key cannot stand in for the missing certificate.
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ta_record(1, 1, &root)],
    )
    .await;
    assert!(c.mismatch());
    // And a bare key of another CA does not chain.
    let other = Ca::root("qrelay test root");
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ta_record(1, 0, &other)],
    )
    .await;
    assert!(c.mismatch());
}

#[tokio::test]
async fn d8_dane_ta_record_matching_a_leaf_that_is_not_self_issued_refused() {
    // A usage-2 record names an issuer; a CA-signed leaf cannot be its own anchor.
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&[MX], Validity::Current);
    let rec = record(2, 0, 1, leaf.cert.as_ref(), &leaf.spki());
    let c = handshake(vec![leaf.cert.clone()], leaf.key_der(), vec![rec]).await;
    assert!(c.result.is_err());
}

// ---------------------------------------------------------------- B3

#[tokio::test]
async fn b3_usage_2_with_certificate_of_another_ca_refused() {
    // Same CA name, different key: only the key decides.
    let real = Ca::root("qrelay test root");
    let forger = Ca::root("qrelay test root");
    let leaf = forger.leaf(&[MX], Validity::Current);
    let records = vec![ta_record(0, 1, &real), ta_record(1, 1, &real)];

    // The forger's own CA in the chain: no record matches.
    let c = handshake(
        vec![leaf.cert.clone(), forger.cert()],
        leaf.key_der(),
        records.clone(),
    )
    .await;
    assert!(c.mismatch());

    // The real CA certificate (public, anyone can send it) in the chain: it
    // matches, but the leaf was not issued by it.
    let c = handshake(
        vec![leaf.cert.clone(), real.cert()],
        leaf.key_der(),
        records,
    )
    .await;
    let f = c.refused();
    assert!(
        matches!(f, TlsFailure::NotTrusted | TlsFailure::BadSignature),
        "{f:?}"
    );
}

#[tokio::test]
async fn b3_selector_mismatch_refused() {
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let spki_hash = digest::digest(&digest::SHA256, &leaf.spki())
        .as_ref()
        .to_vec();
    let cert_hash = digest::digest(&digest::SHA256, leaf.cert.as_ref())
        .as_ref()
        .to_vec();
    // Selector Cert(0) carrying the SPKI digest, and SPKI(1) carrying the
    // certificate digest: neither may match.
    for (selector, data) in [(0u8, spki_hash), (1, cert_hash)] {
        let rec = Tlsa {
            usage: 3,
            selector,
            matching: 1,
            data,
        };
        let c = handshake(vec![leaf.cert.clone()], leaf.key_der(), vec![rec]).await;
        assert!(c.mismatch(), "selector {selector}");
    }
}

/// B3: "tested once per usage/selector/matching type": each combination accepts
/// the server it describes and refuses one it does not.
async fn combination(usage: u8, selector: u8, matching: u8) {
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&[MX], Validity::Current);
    let stranger = Ca::root("stranger CA");
    let stranger_leaf = stranger.leaf(&[MX], Validity::Current);
    let (good, bad) = if usage == 3 {
        (
            ee_record(selector, matching, &leaf),
            ee_record(selector, matching, &stranger_leaf),
        )
    } else {
        (
            ta_record(selector, matching, &root),
            ta_record(selector, matching, &stranger),
        )
    };
    assert!(good.is_usable(), "{good}");
    let chain = vec![leaf.cert.clone(), root.cert()];

    let c = handshake(chain.clone(), leaf.key_der(), vec![good.clone()]).await;
    let o = c.ok();
    assert_eq!(o.record, good);
    let expected = if usage == 3 {
        DaneMechanism::DaneEe
    } else {
        DaneMechanism::DaneTa
    };
    assert_eq!(o.mechanism, expected);

    let c = handshake(chain, leaf.key_der(), vec![bad]).await;
    assert!(c.mismatch(), "{usage} {selector} {matching}");
}

macro_rules! combinations {
    ($($name:ident: $u:expr, $s:expr, $m:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                combination($u, $s, $m).await;
            }
        )*
    };
}

combinations! {
    b3_dane_ta_2_0_0_cert_full: 2, 0, 0;
    b3_dane_ta_2_0_1_cert_sha256: 2, 0, 1;
    b3_dane_ta_2_0_2_cert_sha512: 2, 0, 2;
    b3_dane_ta_2_1_0_spki_full: 2, 1, 0;
    b3_dane_ta_2_1_1_spki_sha256: 2, 1, 1;
    b3_dane_ta_2_1_2_spki_sha512: 2, 1, 2;
    b3_dane_ee_3_0_0_cert_full: 3, 0, 0;
    b3_dane_ee_3_0_1_cert_sha256: 3, 0, 1;
    b3_dane_ee_3_0_2_cert_sha512: 3, 0, 2;
    b3_dane_ee_3_1_0_spki_full: 3, 1, 0;
    b3_dane_ee_3_1_1_spki_sha256: 3, 1, 1;
    b3_dane_ee_3_1_2_spki_sha512: 3, 1, 2;
}

// ---------------------------------------------------------------- D9

#[tokio::test]
async fn d9_weaker_digest_match_is_not_enough_when_stronger_is_published() {
    // 3 1 1 matches the server, 3 1 2 is for another key: SHA-512 is the strongest
    // digest published for (3, 1), so the matching SHA-256 record is ignored.
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let other = Leaf::self_signed(&[MX], Validity::Current);
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ee_record(1, 1, &leaf), ee_record(1, 2, &other)],
    )
    .await;
    assert!(c.mismatch());

    // A Full(0) record is no digest and still counts next to 3 1 2.
    let c = handshake(
        vec![leaf.cert.clone()],
        leaf.key_der(),
        vec![ee_record(1, 0, &leaf), ee_record(1, 2, &other)],
    )
    .await;
    assert_eq!(c.ok().record.matching, 0);
}

// ---------------------------------------------------------------- D10

async fn foreign_key(versions: &[&'static SupportedProtocolVersion]) {
    // The server presents the certificate the TLSA record pins, but does not hold
    // its key: it signs the handshake with another key of the same type.
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let impostor = Leaf::self_signed(&[MX], Validity::Current);
    for rec in [ee_record(1, 1, &leaf), ee_record(0, 1, &leaf)] {
        let (addr, server) = serve(vec![leaf.cert.clone()], impostor.key_der(), versions).await;
        let c = connect_as(addr, server, vec![rec], MX, MX, BOTH, None).await;
        assert_eq!(c.refused(), TlsFailure::BadSignature);
    }
    // The same server with the right key passes: the refusal above was the key.
    let (addr, server) = serve(vec![leaf.cert.clone()], leaf.key_der(), versions).await;
    let c = connect_as(
        addr,
        server,
        vec![ee_record(1, 1, &leaf)],
        MX,
        MX,
        BOTH,
        None,
    )
    .await;
    c.ok();
}

#[tokio::test]
async fn d10_matching_certificate_with_foreign_key_is_refused_tls13() {
    foreign_key(TLS13).await;
}

#[tokio::test]
async fn d10_matching_certificate_with_foreign_key_is_refused_tls12() {
    foreign_key(TLS12).await;
}

#[tokio::test]
async fn d10_dane_ta_chain_with_foreign_key_is_refused() {
    let root = Ca::root("qrelay test root");
    let leaf = root.leaf(&[MX], Validity::Current);
    let impostor = Leaf::self_signed(&[MX], Validity::Current);
    for versions in [TLS12, TLS13] {
        let (addr, server) = serve(
            vec![leaf.cert.clone(), root.cert()],
            impostor.key_der(),
            versions,
        )
        .await;
        let c = connect_as(
            addr,
            server,
            vec![ta_record(0, 1, &root)],
            MX,
            MX,
            BOTH,
            None,
        )
        .await;
        assert_eq!(c.refused(), TlsFailure::BadSignature);
    }
}

#[tokio::test]
async fn d10_sni_is_the_tlsa_base_domain() {
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let (addr, server) = serve(vec![leaf.cert.clone()], leaf.key_der(), BOTH).await;
    let c = connect_as(
        addr,
        server,
        vec![ee_record(1, 1, &leaf)],
        "Host.Provider.TEST.",
        MX,
        BOTH,
        None,
    )
    .await;
    assert_eq!(c.ok().base_domain, EXPANDED);
    assert_eq!(c.sni_seen, Some(Some(EXPANDED.to_string())));
}

#[tokio::test]
async fn d10_connecting_with_another_name_than_the_base_domain_is_refused() {
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let (addr, server) = serve(vec![leaf.cert.clone()], leaf.key_der(), BOTH).await;
    let wrong = ServerName::try_from(MX).expect("name").to_owned();
    let c = connect_as(
        addr,
        server,
        vec![ee_record(1, 1, &leaf)],
        EXPANDED,
        MX,
        BOTH,
        Some(wrong),
    )
    .await;
    match c.refused() {
        TlsFailure::Other(m) => assert!(m.contains("TLSA base domain"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tls12_dane_ee_handshake_succeeds() {
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    let (addr, server) = serve(vec![leaf.cert.clone()], leaf.key_der(), TLS12).await;
    let c = connect_as(
        addr,
        server,
        vec![ee_record(1, 1, &leaf)],
        MX,
        MX,
        BOTH,
        None,
    )
    .await;
    c.ok();
}

// ---------------------------------------------------------------- construction

#[test]
fn d5_verifier_needs_a_usable_record() {
    let only_pkix = TlsaSet::new(vec![Tlsa {
        usage: 1,
        selector: 1,
        matching: 1,
        data: vec![0; 32],
    }]);
    let err = DaneVerifier::new(&only_pkix.usable(), MX, MX, provider(), OutcomeSlot::new())
        .expect_err("no usable record");
    assert_eq!(err, DaneError::NoUsableRecords);
}

#[test]
fn verifier_refuses_invalid_names() {
    let usable = TlsaSet::new(vec![Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0; 32],
    }])
    .usable();
    for bad in ["", "bad name", "192.0.2.1"] {
        assert!(
            DaneVerifier::new(&usable, bad, MX, provider(), OutcomeSlot::new()).is_err(),
            "{bad:?}"
        );
    }
    let v = DaneVerifier::new(
        &usable,
        "MX1.Example.Test.",
        MX,
        provider(),
        OutcomeSlot::new(),
    )
    .expect("verifier");
    assert_eq!(v.base_domain(), MX);
    assert_eq!(v.server_name().to_str(), MX);
}

#[test]
fn client_config_has_no_resumption_and_no_early_data() {
    let usable = TlsaSet::new(vec![Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0; 32],
    }])
    .usable();
    let v =
        Arc::new(DaneVerifier::new(&usable, MX, MX, provider(), OutcomeSlot::new()).expect("v"));
    let cfg = client_config(provider(), BOTH, v).expect("config");
    assert!(!cfg.enable_early_data);
    assert!(cfg.enable_sni);
    // No session storage: a resumed session would skip the verifier.
    let debug = format!("{:?}", cfg.resumption);
    assert!(debug.contains("NoClientSessionStorage"), "{debug}");
    assert!(debug.contains("Disabled"), "{debug}");
}

#[tokio::test]
async fn c6_leaf_check_of_the_tls_profile_runs_after_a_dane_match() {
    // The TLS profile's certificate rules (e.g. minimum key size) still apply to a
    // DANE-authenticated server: a failing check refuses it inside the handshake.
    let leaf = Leaf::self_signed(&[MX], Validity::Current);
    for (accept, expect_ok) in [(true, true), (false, false)] {
        let (addr, server) = serve(vec![leaf.cert.clone()], leaf.key_der(), BOTH).await;
        let usable = TlsaSet::new(vec![ee_record(1, 1, &leaf)]).usable();
        let slot = OutcomeSlot::new();
        let seen = leaf.cert.clone();
        let check: LeafCheck = Arc::new(move |cert: &CertificateDer<'_>| {
            assert_eq!(cert.as_ref(), seen.as_ref(), "the check sees the leaf");
            if accept {
                Ok(())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        });
        let verifier = Arc::new(
            DaneVerifier::new(&usable, MX, MX, provider(), slot.clone())
                .expect("verifier")
                .with_leaf_check(check),
        );
        let config = client_config(provider(), BOTH, verifier.clone()).expect("config");
        let result = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(config)
                .connect(verifier.server_name(), tcp)
                .await?;
            tls.write_all(b"x").await?;
            Ok::<(), std::io::Error>(())
        }
        .await;
        let _ = server.await;
        assert_eq!(result.is_ok(), expect_ok, "{result:?}");
        assert_eq!(slot.get().is_some(), expect_ok);
    }
}
