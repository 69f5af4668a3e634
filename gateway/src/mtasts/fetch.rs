//! Fetching the policy over HTTPS (RFC 8461 section 3.3).
//!
//! The connection is ours: the policy host's addresses come from our resolver (so
//! tests and the DNSSEC work see every lookup), TCP from tokio, TLS from rustls with
//! a verifier that does PKIX (webpki-roots + `[tls] ca_file`) for `mta-sts.<domain>`
//! and then refuses wildcard certificates (standards.md B5). HTTP/1.1 on top comes
//! from hyper's low-level client connection, which parses the response robustly
//! (chunked bodies, header limits) without bringing its own TLS, DNS or redirect
//! handling: nothing is followed, nothing is cached.

use crate::net::{connect_any, AbortOnDrop};

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    RootCertStore, SignatureScheme,
};

use tokio_rustls::TlsConnector;

use super::policy::Policy;
use super::FetchError;
use crate::dns::Resolver;

/// The path every policy lives at (section 3.3).
pub const WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";

/// Fetches policies: one per call, no connection reuse, no HTTP caching.
#[derive(Clone)]
pub(crate) struct Fetcher {
    resolver: Resolver,
    tls: TlsConnector,
    port: u16,
    timeout: Duration,
    max_size: usize,
}

impl Fetcher {
    pub(crate) fn new(
        resolver: Resolver,
        roots: Arc<RootCertStore>,
        port: u16,
        timeout: Duration,
        max_size: usize,
    ) -> Result<Fetcher, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pkix = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PolicyHostVerifier { pkix }))
            .with_no_client_auth();
        // Every fetch verifies a full handshake; HTTP/1.1 only (no ALPN needed).
        cfg.resumption = Resumption::disabled();
        cfg.enable_early_data = false;
        Ok(Fetcher {
            resolver,
            tls: TlsConnector::from(Arc::new(cfg)),
            port,
            timeout,
            max_size,
        })
    }

    /// Fetch and parse the policy of `domain` (normalised). The whole operation,
    /// from the address lookup to the last body byte, is bounded by the timeout.
    pub(crate) async fn fetch(&self, domain: &str) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(self.timeout, self.fetch_inner(&host)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Fetch(format!(
                "https://{host}{WELL_KNOWN_PATH}: no complete answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    async fn fetch_inner(&self, host: &str) -> Result<Policy, FetchError> {
        let addrs = self.resolver.resolve_addrs(host).await;
        if addrs.addrs.is_empty() {
            return Err(FetchError::Fetch(match addrs.temp_error {
                Some(e) => format!("address lookup for {host} failed: {e}"),
                None => format!("{host} has no address"),
            }));
        }
        let tcp = connect_any(&addrs.addrs, self.port).await.map_err(|e| {
            FetchError::Fetch(format!("cannot connect to {host} port {}: {e}", self.port))
        })?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| FetchError::Fetch(format!("invalid host name {host}: {e}")))?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| classify_tls_error(host, &e))?;

        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Fetch(format!("HTTP with {host} failed: {e}")))?;
        // The connection future drives the I/O; it ends with this function.
        let driver = AbortOnDrop(tokio::spawn(conn));

        let req = Request::get(WELL_KNOWN_PATH)
            .header(HOST, host)
            .header(USER_AGENT, concat!("qrelay/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Fetch(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Fetch(format!("HTTP request to {host} failed: {e}")))?;

        let status = resp.status();
        if status.is_redirection() {
            // Section 3.3: "HTTP 3xx redirects MUST NOT be followed".
            let to = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(FetchError::Fetch(format!(
                "{host} answered {status} redirecting to {to}; redirects are not followed (RFC 8461 3.3)"
            )));
        }
        if status != StatusCode::OK {
            return Err(FetchError::Fetch(format!(
                "{host} answered {status} (only 200 is accepted)"
            )));
        }
        // Section 3.2: the policy is served as text/plain. Parameters such as
        // `charset=utf-8` are fine.
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_text_plain(ctype) {
            return Err(FetchError::Invalid(format!(
                "{host} served the policy as {:?}, not text/plain",
                ctype
            )));
        }
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_size as u64) {
            return Err(self.too_large(host));
        }
        let body = Limited::new(resp.into_body(), self.max_size)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    self.too_large(host)
                } else {
                    FetchError::Fetch(format!("reading the policy from {host} failed: {e}"))
                }
            })?
            .to_bytes();
        drop(driver);
        Policy::parse(&body).map_err(|e| FetchError::Invalid(format!("{host}: {e}")))
    }

    fn too_large(&self, host: &str) -> FetchError {
        FetchError::Invalid(format!(
            "{host} served a policy larger than {} bytes",
            self.max_size
        ))
    }
}

fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

/// A rejected certificate is `sts-webpki-invalid`; anything else in the handshake
/// is a fetch error.
fn classify_tls_error(host: &str, err: &std::io::Error) -> FetchError {
    match err.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) {
        Some(TlsError::InvalidCertificate(CertificateError::Other(other))) => {
            FetchError::Webpki(format!("certificate of {host} rejected: {other}"))
        }
        Some(TlsError::InvalidCertificate(ce)) => {
            FetchError::Webpki(format!("certificate of {host} rejected: {ce}"))
        }
        Some(other) => FetchError::Fetch(format!("TLS with {host} failed: {other}")),
        None => FetchError::Fetch(format!("TLS with {host} failed: {err}")),
    }
}

/// The certificate of the policy host carries a wildcard name (standards.md B5).
#[derive(Debug, thiserror::Error)]
#[error("wildcard certificate ({0}) on the policy host is not accepted (BSI TR-03108)")]
struct WildcardCertificate(String);

/// PKIX for the policy host name, then the BSI deviation: no wildcard certificate.
/// The handshake signatures are checked by the PKIX verifier (never skipped).
#[derive(Debug)]
struct PolicyHostVerifier {
    pkix: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PolicyHostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let verified = self.pkix.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(name) = wildcard_name(end_entity) {
            return Err(TlsError::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WildcardCertificate(name))),
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.pkix.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.pkix.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.pkix.supported_verify_schemes()
    }
}

/// The first wildcard name of a certificate: a subjectAltName dNSName or a subject
/// common name starting with `*`. A certificate that does not parse counts as one
/// (it cannot be shown not to be a wildcard certificate); PKIX has accepted it
/// already, so this does not happen in practice.
fn wildcard_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok(p) => p,
        Err(e) => return Some(format!("unparsable certificate: {e}")),
    };
    match parsed.subject_alternative_name() {
        Ok(Some(san)) => {
            for gn in &san.value.general_names {
                if let GeneralName::DNSName(n) = gn {
                    if n.starts_with('*') {
                        return Some((*n).to_string());
                    }
                }
            }
        }
        Ok(None) => {}
        Err(e) => return Some(format!("unparsable subjectAltName: {e}")),
    }
    let cn = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find(|cn| cn.starts_with('*'))
        .map(str::to_string);
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2_content_type_text_plain_with_parameters() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain(" text/plain ;charset=\"us-ascii\""));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain(""));
        assert!(!is_text_plain("application/octet-stream"));
    }

    fn cert_with(names: &[&str], cn: Option<&str>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn b5_wildcard_names_are_found_in_san_and_cn() {
        assert_eq!(
            wildcard_name(&cert_with(&["mta-sts.example.com"], None)),
            None
        );
        assert_eq!(
            wildcard_name(&cert_with(&["mta-sts.example.com", "*.example.com"], None)).as_deref(),
            Some("*.example.com")
        );
        assert_eq!(
            wildcard_name(&cert_with(&["mta-sts.example.com"], Some("*.example.com"))).as_deref(),
            Some("*.example.com")
        );
        assert!(wildcard_name(&CertificateDer::from(vec![1u8, 2, 3])).is_some());
    }
}
