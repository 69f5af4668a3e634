//! The per-connection rustls verifier that authenticates an MX with its TLSA records
//! (standards.md D6-D8, D10), and the client configuration that carries it.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    SignatureScheme, SupportedProtocolVersion,
};

use super::tlsa::{spki_contents, Tlsa, UsableTlsa, SELECTOR_SPKI, USAGE_DANE_EE, USAGE_DANE_TA};
use super::{normalize_name, DaneError};

/// How the server was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaneMechanism {
    /// A DANE-EE(3) record matched the server's certificate or key.
    DaneEe,
    /// The chain led to a certificate or key named by a DANE-TA(2) record.
    DaneTa,
}

impl DaneMechanism {
    /// The evidence and `qrelay check --json` spelling: "dane-ee" / "dane-ta".
    pub fn as_str(self) -> &'static str {
        match self {
            DaneMechanism::DaneEe => "dane-ee",
            DaneMechanism::DaneTa => "dane-ta",
        }
    }
}

impl fmt::Display for DaneMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What authenticated the server, for the evidence record (standards.md A5: "the
/// TLSA RRset and the matching record").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneOutcome {
    pub mechanism: DaneMechanism,
    /// The record that matched; `record.to_string()` is its presentation form
    /// "usage selector matching hex".
    pub record: Tlsa,
    /// The TLSA base domain whose RRset the record came from.
    pub base_domain: String,
    /// Position in the presented chain of the certificate the record matched
    /// (0 = the server's own certificate). `None` for a DANE-TA bare public key
    /// ("2 1 0") that the server did not send as a certificate.
    pub chain_position: Option<usize>,
    /// DANE-TA only: the reference identifier the server certificate was
    /// valid for (the base domain or the MX host name). DANE-EE checks no name.
    pub matched_name: Option<String>,
}

/// Where a [`DaneVerifier`] leaves its [`DaneOutcome`]. Cheap to clone; the caller
/// keeps one clone and reads it after the handshake.
///
/// Read it only after the handshake *succeeded*: the certificate is judged before
/// the server proves possession of the key. The verifier clears the slot when that
/// proof fails, but a handshake can still fail later for other reasons.
#[derive(Debug, Clone, Default)]
pub struct OutcomeSlot(Arc<Mutex<Option<DaneOutcome>>>);

impl OutcomeSlot {
    pub fn new() -> OutcomeSlot {
        OutcomeSlot::default()
    }

    /// The recorded outcome, if any.
    pub fn get(&self) -> Option<DaneOutcome> {
        self.lock().clone()
    }

    fn set(&self, outcome: Option<DaneOutcome>) {
        *self.lock() = outcome;
    }

    fn lock(&self) -> MutexGuard<'_, Option<DaneOutcome>> {
        // A panic while holding the lock cannot leave an Option half-written.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The reason given when no usable TLSA record matched the presented chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLSA records did not match the certificate chain ({records} usable record(s) for {base_domain})")]
pub struct TlsaMismatch {
    pub base_domain: String,
    pub records: usize,
}

impl TlsaMismatch {
    /// The mismatch inside a handshake error, if that is why it failed (for a
    /// plain-language reason and, later, TLS-RPT's "dane-..." result types).
    pub fn find(error: &TlsError) -> Option<&TlsaMismatch> {
        match error {
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<TlsaMismatch>()
            }
            _ => None,
        }
    }

    /// The same for the I/O error a tokio-rustls handshake returns.
    pub fn find_in_io(error: &std::io::Error) -> Option<&TlsaMismatch> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
            .and_then(TlsaMismatch::find)
    }
}

/// A [`ServerCertVerifier`] for one connection to one MX host, built from the
/// host's usable TLSA records (see the module documentation for the rules).
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    base_domain: String,
    /// DANE-TA reference identifiers: the base domain, then the MX host name.
    reference_names: Vec<(String, ServerName<'static>)>,
    provider: Arc<CryptoProvider>,
    slot: OutcomeSlot,
    leaf_check: Option<LeafCheckFn>,
}

/// An extra check of the server certificate, see [`DaneVerifier::with_leaf_check`].
pub type LeafCheck = Arc<dyn Fn(&CertificateDer<'_>) -> Result<(), TlsError> + Send + Sync>;

struct LeafCheckFn(LeafCheck);

impl fmt::Debug for LeafCheckFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeafCheck")
    }
}

impl DaneVerifier {
    /// A verifier for a connection to `mx_host`, whose TLSA records were found at
    /// `_25._tcp.<base_domain>` (the base domain is the CNAME-expanded host name or
    /// `mx_host` itself, see [`super::tlsa_candidates`]).
    ///
    /// `provider` must be the one the connection's `ClientConfig` uses (the TLS
    /// profile): its signature algorithms verify both the chain (DANE-TA) and the
    /// handshake signature.
    pub fn new(
        usable: &UsableTlsa,
        base_domain: &str,
        mx_host: &str,
        provider: Arc<CryptoProvider>,
        slot: OutcomeSlot,
    ) -> Result<DaneVerifier, DaneError> {
        if usable.is_empty() {
            return Err(DaneError::NoUsableRecords);
        }
        let base_domain = normalize_name(base_domain);
        let mx_host = normalize_name(mx_host);
        let mut reference_names = Vec::new();
        for name in [&base_domain, &mx_host] {
            if reference_names.iter().any(|(n, _)| n == name) {
                continue;
            }
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| DaneError::InvalidName { name: name.clone() })?;
            if !matches!(server_name, ServerName::DnsName(_)) {
                return Err(DaneError::InvalidName { name: name.clone() });
            }
            reference_names.push((name.clone(), server_name));
        }
        Ok(DaneVerifier {
            records: usable.records().to_vec(),
            base_domain,
            reference_names,
            provider,
            slot,
            leaf_check: None,
        })
    }

    /// The name to connect with: the TLSA base domain. It is sent as SNI (D10,
    /// RFC 7672 section 8.1) and [`ServerCertVerifier::verify_server_cert`] refuses
    /// any other name, so a caller who passes the wrong one fails closed.
    pub fn server_name(&self) -> ServerName<'static> {
        // Index 0 is the base domain, validated in `new`.
        self.reference_names[0].1.clone()
    }

    pub fn base_domain(&self) -> &str {
        &self.base_domain
    }

    /// Add a check of the server's certificate that runs after a record matched,
    /// inside the handshake: the TLS profile's rules that DANE does not replace,
    /// such as minimum key sizes (standards.md C6). An error refuses the server.
    pub fn with_leaf_check(mut self, check: LeafCheck) -> DaneVerifier {
        self.leaf_check = Some(LeafCheckFn(check));
        self
    }

    fn found(
        &self,
        end_entity: &CertificateDer<'_>,
        mechanism: DaneMechanism,
        record: &Tlsa,
        chain_position: Option<usize>,
        matched_name: Option<String>,
    ) -> Result<ServerCertVerified, TlsError> {
        if let Some(LeafCheckFn(check)) = &self.leaf_check {
            check(end_entity)?;
        }
        self.slot.set(Some(DaneOutcome {
            mechanism,
            record: record.clone(),
            base_domain: self.base_domain.clone(),
            chain_position,
            matched_name,
        }));
        Ok(ServerCertVerified::assertion())
    }

    /// DANE-TA(2), RFC 7671 section 5.2: the server certificate must chain to the
    /// trust anchor, be within its validity dates, and carry one of the reference
    /// identifiers (RFC 7672 section 3.2.3). `Ok(name)` is the identifier that
    /// matched.
    fn check_ta_path(
        &self,
        ee: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        anchors: &[TrustAnchor<'_>],
        now: UnixTime,
    ) -> Result<String, TlsError> {
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        self.reference_names
            .iter()
            .find(|(_, name)| ee.verify_is_valid_for_subject_name(name).is_ok())
            .map(|(text, _)| text.clone())
            .ok_or(TlsError::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
    }
}

/// The SubjectPublicKeyInfo (DER, with its SEQUENCE) of any certificate in the
/// chain, CA or not; `None` when it does not parse.
fn spki_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    webpki::anchor_from_trusted_cert(cert)
        .ok()
        .map(|anchor| webpki::spki_for_anchor(&anchor).as_ref().to_vec())
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.slot.set(None);
        // D10: the connection must have been opened with the TLSA base domain as
        // its name (and so as SNI). Anything else is a wiring mistake: refuse.
        if normalize_name(&server_name.to_str()) != self.base_domain {
            return Err(TlsError::General(format!(
                "DANE: connection opened for {:?}, but the SNI must be the TLSA base domain {}",
                server_name.to_str(),
                self.base_domain
            )));
        }

        // The leaf must parse: its key is what the handshake signature is checked
        // against, whatever the records say.
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        let leaf_spki = ee.subject_public_key_info();

        // DANE-EE(3), RFC 7671 section 5.1 / RFC 7672 section 3.1.1: the record
        // pins the server's certificate or key. Nothing else is checked: not the
        // names in the certificate, not its dates, not who issued it. The DNSSEC
        // signature over the TLSA RRset is what vouches for the binding.
        for record in self.records.iter().filter(|r| r.usage == USAGE_DANE_EE) {
            if record.matches(end_entity.as_ref(), Some(leaf_spki.as_ref())) {
                return self.found(end_entity, DaneMechanism::DaneEe, record, Some(0), None);
            }
        }

        // DANE-TA(2), RFC 7671 section 5.2 / RFC 7672 section 3.1.2: a record names
        // a trust anchor; some certificate the server sent must be it (the server
        // MUST send the TA certificate, RFC 7672 3.1.2), and then the leaf must
        // validate up to it like PKIX with that one anchor: signatures, validity
        // dates, and a name check against the reference identifiers.
        let chain: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let spkis: Vec<Option<Vec<u8>>> = chain.iter().map(|c| spki_of(c)).collect();
        let mut first_failure: Option<TlsError> = None;
        for record in self.records.iter().filter(|r| r.usage == USAGE_DANE_TA) {
            let mut matched_in_chain = false;
            for (position, (cert, spki)) in chain.iter().zip(&spkis).enumerate() {
                if !record.matches(cert.as_ref(), spki.as_deref()) {
                    continue;
                }
                matched_in_chain = true;
                // For Cert(0) the certificate is the anchor (with its name
                // constraints); for SPKI(1) only the key is trusted, and the
                // certificate carrying it supplies the subject name that links
                // it to the certificate it issued.
                let anchor = match webpki::anchor_from_trusted_cert(cert) {
                    Ok(mut anchor) => {
                        if record.selector == SELECTOR_SPKI {
                            anchor.name_constraints = None;
                        }
                        anchor
                    }
                    Err(_) => continue,
                };
                match self.check_ta_path(&ee, intermediates, &[anchor], now) {
                    Ok(name) => {
                        return self.found(
                            end_entity,
                            DaneMechanism::DaneTa,
                            record,
                            Some(position),
                            Some(name),
                        )
                    }
                    Err(e) => {
                        first_failure.get_or_insert(e);
                    }
                }
            }
            // A bare public key ("2 1 0") need not be in the chain (RFC 7671
            // section 5.2.2): the key from DNS becomes the anchor, named like the
            // issuer of each certificate presented (the signature check decides
            // which, if any, it really issued). Digests of a key ("2 1 1/2") cannot
            // be turned back into a key, so they need the key in the chain.
            if !matched_in_chain && record.selector == SELECTOR_SPKI && record.matching == 0 {
                let Some(contents) = spki_contents(&record.data) else {
                    continue;
                };
                let mut issuers: Vec<Vec<u8>> = Vec::new();
                for cert in &chain {
                    if let Ok(parsed) = webpki::EndEntityCert::try_from(*cert) {
                        let issuer = parsed.issuer().to_vec();
                        if !issuers.contains(&issuer) {
                            issuers.push(issuer);
                        }
                    }
                }
                let anchors: Vec<TrustAnchor<'_>> = issuers
                    .iter()
                    .map(|issuer| TrustAnchor {
                        subject: Der::from(issuer.as_slice()),
                        subject_public_key_info: Der::from(contents),
                        name_constraints: None,
                    })
                    .collect();
                match self.check_ta_path(&ee, intermediates, &anchors, now) {
                    Ok(name) => {
                        return self.found(
                            end_entity,
                            DaneMechanism::DaneTa,
                            record,
                            None,
                            Some(name),
                        )
                    }
                    // The key from DNS issued nothing presented: a plain mismatch.
                    Err(TlsError::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature,
                    )) => {}
                    Err(e) => {
                        first_failure.get_or_insert(e);
                    }
                }
            }
        }

        // A DANE-TA record matched but its path failed: that reason (expired, wrong
        // name, not issued by the anchor) is the most useful one to report.
        Err(first_failure.unwrap_or_else(|| {
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                TlsaMismatch {
                    base_domain: self.base_domain.clone(),
                    records: self.records.len(),
                },
            ))))
        }))
    }

    // D10: the server's proof of possession of the certificate's private key is
    // always verified, by the provider's own code. Without it anyone could replay
    // the (public) certificate that the TLSA record pins.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
        .inspect_err(|_| self.slot.set(None))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
        .inspect_err(|_| self.slot.set(None))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        false
    }
}

/// rustls-webpki's path errors in rustls's vocabulary (so that
/// `tls::client::TlsFailure::from_rustls` classifies them like PKIX failures).
fn pki_error(error: webpki::Error) -> TlsError {
    use webpki::Error as E;
    let cert_error = match error {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::CertNotValidForName(_) => CertificateError::NotValidForName,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    TlsError::InvalidCertificate(cert_error)
}

/// The rustls client configuration for one DANE connection: the TLS profile's
/// `provider` and `versions`, the `verifier`, no client certificate, SNI on (the
/// caller connects with [`DaneVerifier::server_name`], the TLSA base domain, D10),
/// no session resumption and no early data, so every connection is a full
/// handshake whose certificate this verifier judged (the evidence never describes
/// a session that was not verified).
pub fn client_config(
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    verifier: Arc<DaneVerifier>,
) -> Result<Arc<ClientConfig>, DaneError> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| DaneError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config.enable_sni = true;
    Ok(Arc::new(config))
}
