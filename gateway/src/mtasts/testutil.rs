//! Test peers on 127.0.0.1 for MTA-STS: the shared DNS responder with an STS helper,
//! a test CA, and an HTTPS server that serves canned HTTP responses per Host header
//! (so malformed answers can be served on purpose).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::testutil::dns::TestDns;

/// MTA-STS set-up on the shared test DNS responder.
pub trait StsDns {
    fn sts_domain(&self, domain: &str, id: &str);
}

impl StsDns for TestDns {
    /// A domain with an STS record and a policy host on 127.0.0.1.
    fn sts_domain(&self, domain: &str, id: &str) {
        self.txt(
            &format!("_mta-sts.{domain}"),
            &[&format!("v=STSv1; id={id};")],
        );
        self.a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST);
    }
}

/// A CA of our own; its certificate is written as a PEM file for `[tls] ca_file`.
pub struct TestCa {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qrelay MTA-STS test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        TestCa { ca }
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.ca.pem()).unwrap();
    }

    /// A leaf certificate with these subjectAltNames, signed by the CA.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &self.ca)
                .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A canned HTTP response.
#[derive(Clone)]
pub struct Canned {
    pub bytes: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Canned {
    /// 200 with a body and the given Content-Type.
    pub fn ok(content_type: &str, body: &str) -> Canned {
        Canned::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    pub fn policy(body: &str) -> Canned {
        Canned::ok("text/plain", body)
    }

    pub fn raw(text: impl Into<String>) -> Canned {
        Canned {
            bytes: text.into().into_bytes(),
            delay: Duration::ZERO,
        }
    }
}

/// An HTTPS server on 127.0.0.1 presenting one certificate and answering each
/// request with the canned response for its Host header (404 for others).
pub struct TestHttps {
    pub port: u16,
    responses: Arc<Mutex<HashMap<String, Canned>>>,
    requests: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl TestHttps {
    pub async fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TestHttps {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let responses: Arc<Mutex<HashMap<String, Canned>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, n, p) = (responses.clone(), requests.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, r, n, p) = (acceptor.clone(), r.clone(), n.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                    p.lock().unwrap().push(path);
                    let host = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host")
                                .then(|| v.trim().to_ascii_lowercase())
                        })
                        .unwrap_or_default();
                    let canned = r.lock().unwrap().get(&host).cloned().unwrap_or_else(|| {
                        Canned::raw("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    });
                    tokio::time::sleep(canned.delay).await;
                    let _ = tls.write_all(&canned.bytes).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TestHttps {
            port,
            responses,
            requests,
            paths,
        }
    }

    pub fn serve(&self, host: &str, canned: Canned) {
        self.responses
            .lock()
            .unwrap()
            .insert(host.to_ascii_lowercase(), canned);
    }

    /// How many requests arrived (complete request heads).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}
