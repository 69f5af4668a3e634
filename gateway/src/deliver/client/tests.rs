//! The SMTP client against small SMTP servers on 127.0.0.1 (ephemeral ports), with
//! rcgen certificates: CA-signed (trusted), self-signed (encrypted), none, and one
//! that presents the right certificate but signs the handshake with another key.

use super::*;
use std::sync::Mutex;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::deliver::RcptRequest;
use crate::spool::record::{Notify, QueueId};

const MX: &str = "mx1.example.test";

// ---------------------------------------------------------------- certificates

struct Pki {
    ca_pem: String,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "qrelay test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
        }
    }

    /// A leaf for `name` signed by the CA: (certificate, key).
    fn leaf(&self, name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert.der().clone(), key)
    }
}

fn self_signed(name: &str) -> (CertificateDer<'static>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().clone(), key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn key_der(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn server_tls(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key_der(key))
            .unwrap(),
    )
}

/// Presents `cert` but holds a different key: the handshake signature cannot verify.
#[derive(Debug)]
struct ForeignKey(Arc<CertifiedKey>);

impl ResolvesServerCert for ForeignKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server_tls12(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key_der(key))
            .unwrap(),
    )
}

fn server_tls12_foreign_key(cert: CertificateDer<'static>) -> Arc<ServerConfig> {
    let other = rcgen::KeyPair::generate().unwrap();
    let signing = provider()
        .key_provider
        .load_private_key(key_der(&other))
        .unwrap();
    let certified = Arc::new(CertifiedKey::new(vec![cert], signing));
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ForeignKey(certified))),
    )
}

fn server_tls_foreign_key(cert: CertificateDer<'static>) -> Arc<ServerConfig> {
    let other = rcgen::KeyPair::generate().unwrap();
    let signing = provider()
        .key_provider
        .load_private_key(key_der(&other))
        .unwrap();
    let certified = Arc::new(CertifiedKey::new(vec![cert], signing));
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(ForeignKey(certified))),
    )
}

// ---------------------------------------------------------------- test server

#[derive(Clone)]
struct Spec {
    greeting: String,
    starttls: Option<Arc<ServerConfig>>,
    ehlo_ok: bool,
    extensions: Vec<&'static str>,
    rcpt: fn(&str) -> String,
    data_final: String,
    /// Never say anything (for timeouts).
    silent: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            greeting: format!("220 {MX} ESMTP test"),
            starttls: None,
            ehlo_ok: true,
            extensions: vec![
                "PIPELINING",
                "SIZE 10000000",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "DSN",
            ],
            rcpt: |_| "250 2.1.5 Ok".into(),
            data_final: "250 2.0.0 Ok: queued as 4711".into(),
            silent: false,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Log {
    commands: Vec<String>,
    tls: bool,
    handshake_failed: bool,
    data: Option<Vec<u8>>,
}

type Logs = Arc<Mutex<Vec<Log>>>;

async fn start(spec: Spec) -> (u16, Logs) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let logs: Logs = Arc::default();
    let l = logs.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let spec = spec.clone();
            let logs = l.clone();
            tokio::spawn(async move {
                let log = handle(tcp, &spec).await;
                logs.lock().unwrap().push(log);
            });
        }
    });
    (port, logs)
}

enum Next {
    Done,
    StartTls,
}

async fn handle(tcp: TcpStream, spec: &Spec) -> Log {
    let mut log = Log::default();
    let mut rd = BufReader::new(tcp);
    if spec.silent {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
        return log;
    }
    if rd
        .write_all(format!("{}\r\n", spec.greeting).as_bytes())
        .await
        .is_err()
    {
        return log;
    }
    if !spec.greeting.starts_with('2') {
        let _ = run(&mut rd, spec, &mut log, false).await;
        return log;
    }
    if let Next::StartTls = run(&mut rd, spec, &mut log, false).await {
        let Some(cfg) = spec.starttls.clone() else {
            return log;
        };
        match TlsAcceptor::from(cfg).accept(rd.into_inner()).await {
            Ok(tls) => {
                log.tls = true;
                let mut rd = BufReader::new(tls);
                let _ = run(&mut rd, spec, &mut log, true).await;
            }
            Err(_) => log.handshake_failed = true,
        }
    }
    log
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    rd: &mut BufReader<S>,
    spec: &Spec,
    log: &mut Log,
    in_tls: bool,
) -> Next {
    loop {
        let mut line = String::new();
        match rd.read_line(&mut line).await {
            Ok(0) | Err(_) => return Next::Done,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        log.commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            if !spec.ehlo_ok {
                "502 5.5.2 EHLO not supported".to_string()
            } else {
                let mut lines = vec![MX.to_string()];
                lines.extend(spec.extensions.iter().map(|s| s.to_string()));
                if spec.starttls.is_some() && !in_tls {
                    lines.push("STARTTLS".into());
                }
                let n = lines.len();
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            }
        } else if upper.starts_with("HELO") {
            format!("250 {MX}")
        } else if upper == "STARTTLS" {
            if spec.starttls.is_some() && !in_tls {
                let _ = rd.write_all(b"220 2.0.0 Ready to start TLS\r\n").await;
                return Next::StartTls;
            }
            "502 5.5.1 not here".into()
        } else if upper.starts_with("MAIL FROM:") {
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let addr = cmd[8..]
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            (spec.rcpt)(&addr)
        } else if upper == "DATA" {
            let _ = rd
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                match rd.read_until(b'\n', &mut l).await {
                    Ok(0) | Err(_) => return Next::Done,
                    Ok(_) => {}
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
            }
            log.data = Some(data);
            spec.data_final.clone()
        } else if upper == "QUIT" {
            let _ = rd.write_all(b"221 2.0.0 Bye\r\n").await;
            return Next::Done;
        } else if upper == "RSET" {
            "250 2.0.0 Ok".into()
        } else {
            "500 5.5.2 unknown command".into()
        };
        if rd
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return Next::Done;
        }
    }
}

// ---------------------------------------------------------------- client side

fn deliverer(port: u16, ca_file: Option<&std::path::Path>) -> Deliverer {
    let mut cfg = Config::default();
    cfg.delivery.port = port;
    cfg.delivery.helo_name = "qrelay.test".into();
    cfg.delivery.connect_timeout = Duration::from_secs(3);
    cfg.delivery.command_timeout = Duration::from_secs(3);
    cfg.dns.servers = vec!["127.0.10.54:53".parse().unwrap()];
    cfg.tls.ca_file = ca_file.map(|p| p.to_owned());
    Deliverer::new(Arc::new(cfg)).expect("deliverer")
}

fn request(level: Level, rcpts: &[&str]) -> DeliveryRequest {
    DeliveryRequest {
        id: QueueId::generate(),
        domain: "example.test".into(),
        sender: "alice@sender.test".into(),
        recipients: rcpts
            .iter()
            .map(|a| RcptRequest {
                address: a.to_string(),
                orcpt: Some(format!("rfc822;{a}")),
                notify: Some(Notify {
                    failure: true,
                    delay: true,
                    ..Default::default()
                }),
            })
            .collect(),
        body: BodyType::EightBitMime,
        smtputf8: false,
        ret: Some(Ret::Headers),
        envid: Some("env id+1".into()),
        level,
        tls_profile: crate::tls::profile::Profile::default_for(level),
        requiretls: false,
        tls_optional: false,
        content: Arc::new(b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n".to_vec()),
    }
}

fn local(mx: &str) -> Vec<Target> {
    vec![Target {
        mx: mx.into(),
        addrs: vec!["127.0.0.1".parse().unwrap()],
    }]
}

async fn logs_settled(logs: &Logs, n: usize) -> Vec<Log> {
    for _ in 0..100 {
        if logs.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    logs.lock().unwrap().clone()
}

fn delivered(o: &RcptOutcome) -> bool {
    matches!(o, RcptOutcome::Delivered { .. })
}

fn status_of(o: &RcptOutcome) -> &str {
    match o {
        RcptOutcome::Deferred { status, .. } | RcptOutcome::Failed { status, .. } => status,
        RcptOutcome::Delivered { .. } => "2.0.0",
    }
}

fn reply_of(o: &RcptOutcome) -> &str {
    match o {
        RcptOutcome::Deferred { reply, .. }
        | RcptOutcome::Failed { reply, .. }
        | RcptOutcome::Delivered { reply, .. } => reply,
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn encrypted_over_self_signed_starttls() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert.clone(), &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(
        report.outcomes[0],
        RcptOutcome::Delivered {
            reply: "250 2.0.0 Ok: queued as 4711".into(),
            remote_dsn: true
        }
    );
    let a = &report.attempt;
    assert_eq!((a.mx.as_str(), a.ip.as_str()), (MX, "127.0.0.1"));
    assert_eq!(a.verdict, Some(TransportVerdict::Encrypted));
    let tls = a.tls.as_ref().expect("tls facts");
    assert_eq!(tls.version, "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
    assert!(tls.group.is_some());
    assert!(!tls.pkix_verified);
    let (fp, spki) = crate::tls::client::cert_fingerprints(&cert);
    assert_eq!(tls.peer_cert_sha256.as_deref(), Some(fp.as_str()));
    assert_eq!(tls.peer_spki_sha256, spki);

    let log = &logs_settled(&logs, 1).await[0];
    assert!(log.tls);
    // EHLO before and after STARTTLS (RFC 3207 4.2); MAIL only inside TLS.
    let ehlos = log
        .commands
        .iter()
        .filter(|c| c.starts_with("EHLO qrelay.test"))
        .count();
    assert_eq!(ehlos, 2, "{:?}", log.commands);
    assert!(log.commands.contains(&"STARTTLS".to_string()));
    let mail = log.commands.iter().find(|c| c.starts_with("MAIL")).unwrap();
    assert_eq!(
        mail,
        &format!(
            "MAIL FROM:<alice@sender.test> SIZE={} BODY=8BITMIME RET=HDRS ENVID=env+20id+2B1",
            request(Level::May, &[]).content.size()
        )
    );
    let rcpt = log.commands.iter().find(|c| c.starts_with("RCPT")).unwrap();
    assert_eq!(
        rcpt,
        "RCPT TO:<bob@example.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.test"
    );
    // Dot-stuffed on the wire, so the server un-stuffs to the original lines.
    assert_eq!(
        log.data.as_deref(),
        Some(&b"Subject: hi\r\n\r\n..leading dot\r\nbody\r\n"[..])
    );
}

#[tokio::test]
async fn a2_encrypted_defers_when_no_starttls_is_offered() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert_eq!(
                reply,
                "mx1.example.test offers no STARTTLS; level encrypted requires TLS"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Plaintext));
    let log = &logs_settled(&logs, 1).await[0];
    assert!(
        !log.commands.iter().any(|c| c.starts_with("MAIL")),
        "never sent in plaintext: {:?}",
        log.commands
    );
    assert!(log.data.is_none());
}

#[tokio::test]
async fn may_delivers_plaintext_without_starttls() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(&request(Level::May, &["bob@example.test"]), &local(MX))
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Plaintext));
    assert!(report.attempt.tls.is_none());
    assert!(logs_settled(&logs, 1).await[0].data.is_some());
}

#[tokio::test]
async fn trusted_with_ca_signed_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (cert, key) = pki.leaf(MX);
    let (port, _logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, Some(&ca));
    // A recipient domain the MX name lies outside of: PKIX on the MX name alone,
    // from unauthenticated DNS, is `trusted` (within the domain it is `verified`,
    // see a3_pkix_name_within_the_recipient_domain_is_verified).
    let outside = |level| DeliveryRequest {
        domain: "customer.test".into(),
        ..request(level, &["bob@customer.test"])
    };
    let report = d.deliver_to(&outside(Level::Trusted), &local(MX)).await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Trusted));
    assert!(report.attempt.tls.as_ref().unwrap().pkix_verified);

    // The same server at level `encrypted` is recorded as PKIX-verifiable too.
    let report = d.deliver_to(&outside(Level::Encrypted), &local(MX)).await;
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Trusted));
    assert!(report.attempt.tls.as_ref().unwrap().pkix_verified);
}

#[tokio::test]
async fn trusted_defers_on_untrusted_certificate() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(&request(Level::Trusted, &["bob@example.test"]), &local(MX))
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert!(reply.contains(MX), "{reply}");
            assert!(reply.contains("certificate not trusted"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    let log = &logs_settled(&logs, 1).await[0];
    assert!(!log.commands.iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn trusted_defers_on_name_mismatch() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (cert, key) = pki.leaf("other.example.test");
    let (port, _logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, Some(&ca));
    // A recipient domain outside the certificate's name (a valid certificate for a
    // name within the recipient domain would be `verified`, standards.md A3).
    let outside = |level| DeliveryRequest {
        domain: "customer.test".into(),
        ..request(level, &["bob@customer.test"])
    };
    let report = d.deliver_to(&outside(Level::Trusted), &local(MX)).await;
    let reply = reply_of(&report.outcomes[0]);
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5");
    assert!(
        reply.contains("name mismatch") && reply.contains(MX),
        "{reply}"
    );

    // At `encrypted` it is delivered, and the facts say PKIX did not verify.
    let report = d.deliver_to(&outside(Level::Encrypted), &local(MX)).await;
    assert!(delivered(&report.outcomes[0]));
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Encrypted));
    assert!(!report.attempt.tls.as_ref().unwrap().pkix_verified);
}

#[tokio::test]
async fn d10_handshake_signed_with_foreign_key_is_refused() {
    let (cert, _real_key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls_foreign_key(cert)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert!(reply.contains("signature"), "{reply}");
        }
        other => panic!("replayed certificate accepted: {other:?}"),
    }
    assert!(report.attempt.tls.is_none());
    let log = &logs_settled(&logs, 1).await[0];
    assert!(!log.commands.iter().any(|c| c.starts_with("MAIL")));

    // `may` falls back to plaintext on a new connection (RFC 7435) and says so.
    let report = d
        .deliver_to(&request(Level::May, &["bob@example.test"]), &local(MX))
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Plaintext));
    assert!(report.attempt.tls.is_none());
}

#[tokio::test]
async fn tls12_session_is_encrypted_and_recorded() {
    let (cert, key) = self_signed(MX);
    let (port, _logs) = start(Spec {
        starttls: Some(server_tls12(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let tls = report.attempt.tls.as_ref().unwrap();
    assert_eq!(tls.version, "TLSv1.2");
    assert!(tls.cipher.starts_with("TLS_ECDHE_"), "{}", tls.cipher);
}

fn self_signed_rsa(
    name: &str,
    size: rcgen::RsaKeySize,
) -> (CertificateDer<'static>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.der().clone(), key)
}

#[tokio::test]
async fn c6_tls_profile_and_peer_key_are_recorded_in_delivery() {
    use crate::tls::profile::Profile;
    let (cert, key) = self_signed_rsa(MX, rcgen::RsaKeySize::_3072);
    let (port, _logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let mut req = request(Level::Encrypted, &["bob@example.test"]);
    req.tls_profile = Profile::Bsi;
    let report = d.deliver_to(&req, &local(MX)).await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let tls = report.attempt.tls.as_ref().unwrap();
    assert_eq!(tls.profile, "bsi");
    assert_eq!(tls.peer_key_type.as_deref(), Some("RSA"));
    assert_eq!(tls.peer_key_bits, Some(3072));
    assert_eq!(tls.version, "TLSv1.3");
    assert!(!tls.cipher.contains("CHACHA20"), "{}", tls.cipher);
    assert!(
        !tls.group.as_deref().unwrap_or("").contains("X25519"),
        "{:?}",
        tls.group
    );

    // The default profile of `encrypted` is modern; an EC key is recorded with its curve.
    let (cert, key) = self_signed(MX);
    let (port, _logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let report = deliverer(port, None)
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    let tls = report.attempt.tls.as_ref().unwrap();
    assert_eq!(tls.profile, "modern");
    assert_eq!(tls.peer_key_type.as_deref(), Some("EC secp256r1"));
    assert_eq!(tls.peer_key_bits, Some(256));
}

#[tokio::test]
async fn c6_bsi_defers_a_server_with_an_rsa_2048_key_in_plain_words() {
    use crate::tls::profile::Profile;
    let (cert, key) = self_signed_rsa(MX, rcgen::RsaKeySize::_2048);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let mut req = request(Level::Encrypted, &["bob@example.test"]);
    req.tls_profile = Profile::Bsi;
    let report = d.deliver_to(&req, &local(MX)).await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert_eq!(
                reply,
                "mx1.example.test presents an RSA-2048 key; profile bsi requires at least 3000 bits"
            );
        }
        other => panic!("deferred, not bounced or sent: {other:?}"),
    }
    let log = &logs_settled(&logs, 1).await[0];
    assert!(
        !log.commands.iter().any(|c| c.starts_with("MAIL")),
        "{:?}",
        log.commands
    );
}

#[tokio::test]
async fn d10_tls12_handshake_signed_with_foreign_key_is_refused() {
    let (cert, _real_key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls12_foreign_key(cert)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::Encrypted, &["bob@example.test"]),
            &local(MX),
        )
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5", "{report:?}");
    assert!(matches!(report.outcomes[0], RcptOutcome::Deferred { .. }));
    let log = &logs_settled(&logs, 1).await[0];
    assert!(!log.commands.iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn per_recipient_replies_with_pipelining() {
    let (port, logs) = start(Spec {
        rcpt: |a| match a {
            a if a.starts_with("ok") => "250 2.1.5 Ok".into(),
            a if a.starts_with("later") => "450 4.2.1 Mailbox busy".into(),
            _ => "550 5.1.1 No such user".into(),
        },
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let req = request(
        Level::May,
        &["ok@example.test", "later@example.test", "gone@example.test"],
    );
    let report = d.deliver_to(&req, &local(MX)).await;
    assert!(delivered(&report.outcomes[0]));
    assert_eq!(
        report.outcomes[1],
        RcptOutcome::Deferred {
            reply: "450 4.2.1 Mailbox busy".into(),
            status: "4.2.1".into()
        }
    );
    assert_eq!(
        report.outcomes[2],
        RcptOutcome::Failed {
            reply: "550 5.1.1 No such user".into(),
            status: "5.1.1".into()
        }
    );
    let log = &logs_settled(&logs, 1).await[0];
    assert!(log.data.is_some());
}

#[tokio::test]
async fn no_data_when_no_recipient_is_accepted() {
    let (port, logs) = start(Spec {
        rcpt: |_| "550 5.1.1 No such user".into(),
        extensions: vec![],
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::May, &["a@example.test", "b@example.test"]),
            &local(MX),
        )
        .await;
    assert!(report.outcomes.iter().all(|o| status_of(o) == "5.1.1"));
    let log = &logs_settled(&logs, 1).await[0];
    assert!(!log.commands.iter().any(|c| c == "DATA"));
    // Without DSN support no DSN parameters are sent.
    assert!(log
        .commands
        .iter()
        .any(|c| c == "MAIL FROM:<alice@sender.test>"));
}

#[tokio::test]
async fn data_reply_applies_to_accepted_recipients() {
    let (port, _logs) = start(Spec {
        data_final: "554 5.6.0 Content rejected".into(),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(
            &request(Level::May, &["a@example.test", "b@example.test"]),
            &local(MX),
        )
        .await;
    for o in &report.outcomes {
        assert_eq!(
            o,
            &RcptOutcome::Failed {
                reply: "554 5.6.0 Content rejected".into(),
                status: "5.6.0".into()
            }
        );
    }
}

#[tokio::test]
async fn next_host_after_refused_connection_and_4xx_greeting() {
    let (busy_port, _l1) = start(Spec {
        greeting: "421 4.3.2 too busy".into(),
        ..Default::default()
    })
    .await;
    let busy = busy_port;
    // Nothing listens on 127.0.0.2 at this port: connection refused.
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let targets = vec![
        Target {
            mx: "down.example.test".into(),
            addrs: vec!["127.0.0.2".parse().unwrap()],
        },
        Target {
            mx: MX.into(),
            addrs: vec!["127.0.0.1".parse().unwrap()],
        },
    ];
    let report = d
        .deliver_to(&request(Level::May, &["a@example.test"]), &targets)
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.mx, MX);
    assert_eq!(logs_settled(&logs, 1).await.len(), 1);

    // A 4xx greeting also moves on; when no host is left the message is deferred.
    let d = deliverer(busy, None);
    let report = d
        .deliver_to(&request(Level::May, &["a@example.test"]), &local(MX))
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.3.2");
    assert!(reply_of(&report.outcomes[0]).contains("421 4.3.2 too busy"));
}

#[tokio::test]
async fn smtputf8_needed_but_not_offered_fails_permanently() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let mut req = request(Level::May, &["jörg@example.test"]);
    req.smtputf8 = true;
    let report = d.deliver_to(&req, &local(MX)).await;
    match &report.outcomes[0] {
        RcptOutcome::Failed { status, reply } => {
            assert_eq!(status, "5.6.7");
            assert!(reply.contains("SMTPUTF8"));
        }
        other => panic!("{other:?}"),
    }
    let log = &logs_settled(&logs, 1).await[0];
    assert!(!log.commands.iter().any(|c| c.starts_with("MAIL")));
}

#[tokio::test]
async fn smtputf8_parameter_sent_when_offered() {
    let (port, logs) = start(Spec {
        extensions: vec!["SMTPUTF8", "8BITMIME"],
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let mut req = request(Level::May, &["jörg@example.test"]);
    req.smtputf8 = true;
    let report = d.deliver_to(&req, &local(MX)).await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let log = &logs_settled(&logs, 1).await[0];
    let mail = log.commands.iter().find(|c| c.starts_with("MAIL")).unwrap();
    assert!(mail.ends_with("BODY=8BITMIME SMTPUTF8"), "{mail}");
}

#[tokio::test]
async fn helo_fallback_only_for_may() {
    let (port, _logs) = start(Spec {
        ehlo_ok: false,
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_to(&request(Level::May, &["a@example.test"]), &local(MX))
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let report = d
        .deliver_to(&request(Level::Encrypted, &["a@example.test"]), &local(MX))
        .await;
    assert!(
        matches!(report.outcomes[0], RcptOutcome::Deferred { .. }),
        "{report:?}"
    );
}

#[tokio::test]
async fn silent_server_times_out_and_defers() {
    let (port, _logs) = start(Spec {
        silent: true,
        ..Default::default()
    })
    .await;
    let mut cfg = Config::default();
    cfg.delivery.port = port;
    cfg.delivery.command_timeout = Duration::from_millis(300);
    cfg.dns.servers = vec!["127.0.10.54:53".parse().unwrap()];
    let d = Deliverer::new(Arc::new(cfg)).unwrap();
    let report = d
        .deliver_to(&request(Level::May, &["a@example.test"]), &local(MX))
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { status, reply } => {
            assert_eq!(status, "4.4.2");
            assert!(reply.contains("no answer"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn transport_delivers_to_an_address_literal() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let mut req = request(Level::May, &["bob@[127.0.0.1]"]);
    req.domain = "[127.0.0.1]".into();
    let transport: &dyn Transport = &d;
    let report = transport.deliver(req).await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.ip, "127.0.0.1");
    assert_eq!(logs_settled(&logs, 1).await.len(), 1);
}

#[test]
fn address_literals() {
    assert_eq!(
        address_literal("[127.0.0.1]"),
        Some("127.0.0.1".parse().unwrap())
    );
    assert_eq!(address_literal("[IPv6:::1]"), Some("::1".parse().unwrap()));
    assert_eq!(address_literal("example.test"), None);
    assert_eq!(address_literal("[999.0.0.1]"), None);
}

// ---------------------------------------------------------------- streaming DATA

/// What the server's mailbox gets: the data received, with the dot-stuffing undone
/// (RFC 5321 4.5.2: a line starting with "." loses that first ".").
fn unstuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for line in data.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// `content` stored in a spool under `dir`, opened the way the queue opens it.
fn spooled(dir: &std::path::Path, content: &[u8]) -> Arc<dyn ContentSource> {
    use crate::spool::record::{ClientInfo, Envelope, Recipient, RECORD_VERSION};
    let spool = crate::spool::Spool::open(dir, 0).unwrap();
    let env = Envelope {
        record_version: RECORD_VERSION,
        id: QueueId::generate(),
        received_at: now_secs(),
        sender: "alice@sender.test".into(),
        ret: None,
        envid: None,
        body: BodyType::EightBitMime,
        smtputf8: false,
        requiretls: false,
        size: content.len() as u64,
        class: crate::config::RiskClass::Normal,
        class_reasons: Vec::new(),
        tls_optional: false,
        expires_at: None,
        client: ClientInfo::default(),
        message_id: None,
        recipients: vec![Recipient::new("bob@example.test".into(), None, None, 0)],
    };
    spool.store(&env, content).unwrap();
    Arc::new(spool.open_content(&env.id).unwrap())
}

/// Append filler lines (CRLF-ended, under 1000 bytes) until `msg` is `end` long.
fn pad_to(msg: &mut Vec<u8>, end: usize) {
    let mut i = 0u32;
    while end - msg.len() > 1000 {
        msg.extend_from_slice(format!("line {i:06} {}\r\n", "x".repeat(60)).as_bytes());
        i += 1;
    }
    let rest = end - msg.len();
    assert!(rest >= 2, "cannot pad by {rest}");
    msg.extend(std::iter::repeat_n(b'y', rest - 2));
    msg.extend_from_slice(b"\r\n");
    assert_eq!(msg.len(), end);
}

/// Deliver `content` from a spool file and return what the server's mailbox got
/// and the MAIL command.
async fn deliver_spooled(content: &[u8]) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (port, logs) = start(Spec {
        extensions: vec!["PIPELINING", "SIZE 60000000", "8BITMIME"],
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let mut req = request(Level::May, &["bob@example.test"]);
    req.content = spooled(dir.path(), content);
    let report = d.deliver_to(&req, &local(MX)).await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let log = logs_settled(&logs, 1).await.remove(0);
    let mail = log
        .commands
        .iter()
        .find(|c| c.starts_with("MAIL"))
        .cloned()
        .unwrap();
    (unstuff(&log.data.expect("data received")), mail)
}

#[tokio::test]
async fn dot_stuffing_across_chunk_boundaries_arrives_byte_exact() {
    let mut msg = b"From: alice@sender.test\r\nSubject: boundaries\r\n\r\n".to_vec();
    // A "."-led line starting exactly at the first chunk boundary.
    pad_to(&mut msg, SEND_CHUNK);
    msg.extend_from_slice(b".leading dot at the boundary\r\n");
    // A CRLF split across the second boundary, then a "."-led line.
    pad_to(&mut msg, 2 * SEND_CHUNK + 1);
    assert_eq!(&msg[2 * SEND_CHUNK - 1..], b"\r\n");
    msg.extend_from_slice(b".after the split CRLF\r\n");
    // A line of only "." at the third boundary: unstuffed it would end the data.
    pad_to(&mut msg, 3 * SEND_CHUNK);
    msg.extend_from_slice(b".\r\n..two dots\r\nlast line\r\n");
    let (got, mail) = deliver_spooled(&msg).await;
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "content changed on the way");
    assert!(mail.contains(&format!(" SIZE={} ", msg.len())), "{mail}");
}

#[tokio::test]
async fn message_without_final_line_end_gets_one() {
    // The last chunk ends mid-line; as before streaming, CRLF is added.
    let mut msg = b"Subject: open end\r\n\r\n".to_vec();
    pad_to(&mut msg, SEND_CHUNK);
    msg.extend_from_slice(b".no line end");
    let (got, _) = deliver_spooled(&msg).await;
    let mut want = msg.clone();
    want.extend_from_slice(b"\r\n");
    assert!(got == want);
}

#[tokio::test]
async fn five_mib_message_is_delivered_byte_exact() {
    let mut msg = b"From: alice@sender.test\r\nSubject: big\r\n\r\n".to_vec();
    let mut i = 0usize;
    while msg.len() < 5 * 1024 * 1024 {
        // Varying lengths so "."-led lines fall at many offsets, chunk edges included.
        let dots = if i.is_multiple_of(7) { "." } else { "" };
        let line = format!("{dots}{i} {}\r\n", "abcdefghij".repeat(i % 13));
        msg.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let (got, mail) = deliver_spooled(&msg).await;
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "content changed on the way");
    assert!(mail.contains(&format!(" SIZE={} ", msg.len())), "{mail}");
}

/// Content that cannot be read past its first chunk.
#[derive(Debug)]
struct Unreadable;

impl ContentSource for Unreadable {
    fn size(&self) -> u64 {
        3 * SEND_CHUNK as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset > 0 {
            return Err(std::io::Error::other("disk error"));
        }
        let n = buf.len();
        buf.fill(b'a');
        if n >= 2 {
            buf[n - 2..].copy_from_slice(b"\r\n");
        }
        Ok(n)
    }
}

#[tokio::test]
async fn read_error_mid_data_defers_and_leaves_the_data_unfinished() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let mut req = request(Level::May, &["bob@example.test"]);
    req.content = Arc::new(Unreadable);
    let report = d.deliver_to(&req, &local(MX)).await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { status, reply } => {
            assert_eq!(status, "4.3.0");
            assert!(reply.contains("disk error"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    let log = &logs_settled(&logs, 1).await[0];
    assert!(log.commands.iter().any(|c| c == "DATA"));
    // The connection ended before the final ".": the server has no message, and
    // no QUIT was sent inside the data.
    assert!(log.data.is_none());
}

// ---------------------------------------------------------------- DANE, MTA-STS, verified
//
// DNSSEC from a signed zone is not available here: these tests hand
// `deliver_route` the DNS facts a validating resolver would have produced (MX and
// address security, TLSA answers) and an MTA-STS policy, the seam below the DNS
// step that the real path (`attempt`) goes through as well.

use crate::dane::{Tlsa, TlsaAnswer, TlsaSet};
use crate::mtasts::{Policy, PolicyLookup};
use crate::spool::record::Mechanism;

/// Serve `spec` on an already bound listener.
fn serve(listener: TcpListener, spec: Spec) -> Logs {
    let logs: Logs = Arc::default();
    let l = logs.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let spec = spec.clone();
            let logs = l.clone();
            tokio::spawn(async move {
                let log = handle(tcp, &spec).await;
                logs.lock().unwrap().push(log);
            });
        }
    });
    logs
}

/// Two servers on one port (the delivery port is one setting) at 127.0.0.2 and
/// 127.0.0.3.
async fn start_pair(a: Spec, b: Spec) -> (u16, Logs, Logs) {
    for _ in 0..50 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = TcpListener::bind(("127.0.0.3", port)).await {
            return (port, serve(first, a), serve(second, b));
        }
    }
    panic!("no common free port on 127.0.0.2 and 127.0.0.3");
}

fn route(hosts: &[(&str, &str)], security: Security) -> Route {
    Route {
        mx_security: security,
        hosts: hosts
            .iter()
            .map(|(mx, ip)| RouteHost {
                mx: mx.to_string(),
                addrs: vec![ip.parse().unwrap()],
                address_security: security,
                secure_cname: None,
            })
            .collect(),
    }
}

/// The DANE-EE SPKI SHA-256 record ("3 1 1") of a certificate.
fn dane_ee(cert: &CertificateDer<'_>) -> Tlsa {
    let (_, spki) = crate::tls::client::cert_fingerprints(cert);
    format!("3 1 1 {}", spki.unwrap()).parse().unwrap()
}

fn tlsa_table(entries: Vec<(&str, TlsaAnswer)>) -> HashMap<String, TlsaAnswer> {
    entries
        .into_iter()
        .map(|(host, a)| (format!("_25._tcp.{host}."), a))
        .collect()
}

fn sts_found(mode: &str, mx: &str) -> PolicyLookup {
    PolicyLookup::Found {
        policy: Policy::parse(
            format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n").as_bytes(),
        )
        .unwrap(),
        id: "20261122T000000".into(),
        from_cache: false,
        fetched_at: std::time::SystemTime::now(),
    }
}

fn ca_file(pki: &Pki) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    (dir, ca)
}

fn auth(report: &DeliveryReport) -> &AuthFacts {
    report.attempt.auth.as_ref().expect("auth facts")
}

fn sent_mail(logs: &[Log]) -> bool {
    logs.iter()
        .any(|l| l.commands.iter().any(|c| c.starts_with("MAIL")))
}

#[tokio::test]
async fn d7_dane_ee_match_is_verified_with_mechanism_dane_ee() {
    let (cert, key) = self_signed(MX);
    let record = dane_ee(&cert);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        MX,
        TlsaAnswer::Secure(TlsaSet::new(vec![record.clone()])),
    )]);
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Secure),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Verified));
    let a = auth(&report);
    assert_eq!(a.mechanism, Mechanism::DaneEe);
    assert_eq!(
        (a.mx_dnssec.as_str(), a.address_dnssec.as_str()),
        ("secure", "secure")
    );
    let t = a.tlsa.as_ref().expect("tlsa facts");
    assert_eq!(t.dnssec, "secure");
    assert_eq!(t.base_domain, MX);
    assert_eq!(t.records, vec![record.to_string()]);
    assert_eq!(t.matched, Some(record.to_string()));
    // A self-signed certificate: PKIX did not verify, DANE did.
    assert!(!report.attempt.tls.as_ref().unwrap().pkix_verified);
    assert!(sent_mail(&logs_settled(&logs, 1).await));
}

#[tokio::test]
async fn b3_tlsa_mismatch_skips_the_host_and_defers() {
    let (cert, key) = self_signed(MX);
    let (other, _) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        MX,
        TlsaAnswer::Secure(TlsaSet::new(vec![dane_ee(&other)])),
    )]);
    // Even `may`: a host with usable TLSA records is never used without a match.
    for level in [Level::May, Level::Verified] {
        let report = d
            .deliver_route(
                &request(level, &["bob@example.test"]),
                &route(&[(MX, "127.0.0.1")], Security::Secure),
                &PolicyLookup::None,
                TlsaSource::Fixed(&tlsa),
            )
            .await;
        match &report.outcomes[0] {
            RcptOutcome::Deferred { reply, status } => {
                assert_eq!(status, "4.7.5");
                assert!(reply.contains("TLSA records did not match"), "{reply}");
                assert!(reply.contains("must be authenticated by DANE"), "{reply}");
            }
            other => panic!("{level}: {other:?}"),
        }
        assert_eq!(auth(&report).mechanism, Mechanism::None);
        assert_eq!(auth(&report).tlsa.as_ref().unwrap().matched, None);
    }
    let logs = logs_settled(&logs, 2).await;
    assert!(!sent_mail(&logs), "{logs:?}");
    assert_eq!(logs.len(), 2, "no plaintext retry: {logs:?}");
}

#[tokio::test]
async fn b3_tlsa_present_but_no_starttls_defers() {
    let (cert, _) = self_signed(MX);
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        MX,
        TlsaAnswer::Secure(TlsaSet::new(vec![dane_ee(&cert)])),
    )]);
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Secure),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert!(
                reply.starts_with(
                    "mx1.example.test offers no STARTTLS, but its DNSSEC-signed TLSA records"
                ),
                "{reply}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!sent_mail(&logs_settled(&logs, 1).await));
}

#[tokio::test]
async fn d4_tlsa_lookup_failure_skips_the_host_without_connecting() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        MX,
        TlsaAnswer::Failed {
            reason: "SERVFAIL".into(),
        },
    )]);
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Secure),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5");
    assert!(
        reply_of(&report.outcomes[0]).contains("SERVFAIL"),
        "{report:?}"
    );
    assert_eq!(
        auth(&report).tlsa.as_ref().unwrap().dnssec,
        "failed: SERVFAIL"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(logs.lock().unwrap().is_empty(), "no connection");
}

#[tokio::test]
async fn e5_mta_sts_enforce_with_pkix_is_verified_by_mta_sts() {
    let pki = Pki::new();
    let (_dir, ca) = ca_file(&pki);
    let mx = "mx.provider.test";
    let (cert, key) = pki.leaf(mx);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, Some(&ca));
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &route(&[(mx, "127.0.0.1")], Security::Insecure),
            &sts_found("enforce", mx),
            TlsaSource::Fixed(&HashMap::new()),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Verified));
    let a = auth(&report);
    assert_eq!(a.mechanism, Mechanism::MtaSts);
    assert_eq!(
        a.mta_sts,
        Some(MtaStsFacts {
            id: "20261122T000000".into(),
            mode: "enforce".into(),
            covered: true,
        })
    );
    assert_eq!(a.tlsa, None, "insecure MX: no TLSA lookup (D2)");
    assert!(sent_mail(&logs_settled(&logs, 1).await));
}

#[tokio::test]
async fn e5_mta_sts_enforce_mx_not_covered_defers_without_connecting() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Insecure),
            &sts_found("enforce", "mx9.example.test"),
            TlsaSource::Fixed(&HashMap::new()),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert!(reply.contains("does not list mx1.example.test"), "{reply}");
        }
        other => panic!("never bounced, never sent: {other:?}"),
    }
    assert_eq!(
        auth(&report).mta_sts.as_ref().map(|m| m.covered),
        Some(false)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(logs.lock().unwrap().is_empty(), "no connection");
}

#[tokio::test]
async fn e5_mta_sts_enforce_pkix_failure_defers() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let report = d
        .deliver_route(
            &request(Level::Encrypted, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Insecure),
            &sts_found("enforce", MX),
            TlsaSource::Fixed(&HashMap::new()),
        )
        .await;
    let reply = reply_of(&report.outcomes[0]);
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5");
    assert!(
        reply.contains("requires a valid certificate for mx1.example.test"),
        "{reply}"
    );
    assert!(!sent_mail(&logs_settled(&logs, 1).await));
}

#[tokio::test]
async fn a3_pkix_name_within_the_recipient_domain_is_verified() {
    let pki = Pki::new();
    let (_dir, ca) = ca_file(&pki);
    let mx = "mx.provider.test";
    for name in ["example.test", "*.example.test", MX] {
        let (cert, key) = pki.leaf(name);
        let (port, _logs) = start(Spec {
            starttls: Some(server_tls(cert, &key)),
            ..Default::default()
        })
        .await;
        let d = deliverer(port, Some(&ca));
        let report = d
            .deliver_route(
                &request(Level::Verified, &["bob@example.test"]),
                &route(&[(mx, "127.0.0.1")], Security::Insecure),
                &PolicyLookup::None,
                TlsaSource::Fixed(&HashMap::new()),
            )
            .await;
        assert!(delivered(&report.outcomes[0]), "{name}: {report:?}");
        assert_eq!(report.attempt.verdict, Some(TransportVerdict::Verified));
        let a = auth(&report);
        assert_eq!(a.mechanism, Mechanism::Pkix);
        assert!(
            a.basis.contains("within the recipient domain example.test"),
            "{}",
            a.basis
        );
    }
}

#[tokio::test]
async fn a3_pkix_on_mx_name_with_insecure_dns_is_trusted_not_verified() {
    let pki = Pki::new();
    let (_dir, ca) = ca_file(&pki);
    let mx = "mx.provider.test";
    let (cert, key) = pki.leaf(mx);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, Some(&ca));
    let insecure = route(&[(mx, "127.0.0.1")], Security::Insecure);
    let no_tlsa = HashMap::new();
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &insecure,
            &PolicyLookup::None,
            TlsaSource::Fixed(&no_tlsa),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert_eq!(
                reply,
                "mx.provider.test: certificate is valid for mx.provider.test (trusted), but the MX \
                 name is not authenticated (MX answer insecure, not DNSSEC-secure; no MTA-STS \
                 enforce policy; no certificate name within example.test) — level verified requires it"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Trusted));
    assert_eq!(auth(&report).mechanism, Mechanism::Pkix);
    assert!(!sent_mail(&logs_settled(&logs, 1).await));

    // At `trusted` the same host is good enough, and recorded as `trusted`.
    let report = d
        .deliver_route(
            &request(Level::Trusted, &["bob@example.test"]),
            &insecure,
            &PolicyLookup::None,
            TlsaSource::Fixed(&no_tlsa),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Trusted));

    // With DNSSEC-secure MX and address answers (and no TLSA, proven), the MX name
    // is authenticated: `verified` by PKIX.
    let tlsa = tlsa_table(vec![(mx, TlsaAnswer::SecureDenial)]);
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &route(&[(mx, "127.0.0.1")], Security::Secure),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Verified));
    let a = auth(&report);
    assert_eq!(a.mechanism, Mechanism::Pkix);
    assert_eq!(a.tlsa.as_ref().unwrap().dnssec, "secure denial");
}

#[tokio::test]
async fn two_mx_only_the_second_authenticates_and_gets_the_mail() {
    let (cert1, key1) = self_signed("mx1.example.test");
    let (cert2, key2) = self_signed("mx2.example.test");
    let record = dane_ee(&cert2);
    let (port, logs1, logs2) = start_pair(
        Spec {
            starttls: Some(server_tls(cert1, &key1)),
            ..Default::default()
        },
        Spec {
            starttls: Some(server_tls(cert2, &key2)),
            ..Default::default()
        },
    )
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![
        ("mx1.example.test", TlsaAnswer::SecureDenial),
        (
            "mx2.example.test",
            TlsaAnswer::Secure(TlsaSet::new(vec![record])),
        ),
    ]);
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &route(
                &[
                    ("mx1.example.test", "127.0.0.2"),
                    ("mx2.example.test", "127.0.0.3"),
                ],
                Security::Secure,
            ),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.mx, "mx2.example.test");
    assert_eq!(report.attempt.ip, "127.0.0.3");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Verified));
    assert_eq!(auth(&report).mechanism, Mechanism::DaneEe);
    assert!(!sent_mail(&logs_settled(&logs1, 1).await));
    assert!(sent_mail(&logs_settled(&logs2, 1).await));
}

#[tokio::test]
async fn d11_dane_only_destination_without_tlsa_is_deferred() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let mut cfg = Config::default();
    cfg.delivery.port = port;
    cfg.delivery.helo_name = "qrelay.test".into();
    cfg.delivery.connect_timeout = Duration::from_secs(3);
    cfg.delivery.command_timeout = Duration::from_secs(3);
    cfg.dns.servers = vec!["127.0.10.54:53".parse().unwrap()];
    cfg.destination = vec![crate::config::DestinationConfig {
        domain: "Example.Test".into(),
        dane_only: true,
    }];
    let d = Deliverer::new(Arc::new(cfg)).unwrap();
    let tlsa = tlsa_table(vec![(MX, TlsaAnswer::SecureDenial)]);
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Secure),
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    match &report.outcomes[0] {
        RcptOutcome::Deferred { reply, status } => {
            assert_eq!(status, "4.7.5");
            assert!(
                reply.starts_with("example.test is a dane-only destination, but mx1.example.test cannot be authenticated by DANE: no TLSA records"),
                "{reply}"
            );
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(logs.lock().unwrap().is_empty(), "no connection");
}

#[tokio::test]
async fn d1_bogus_mx_defers_the_domain_and_bogus_address_skips_the_host() {
    let (port, logs) = start(Spec::default()).await;
    let d = deliverer(port, None);
    let no_tlsa = HashMap::new();
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Bogus),
            &PolicyLookup::None,
            TlsaSource::Fixed(&no_tlsa),
        )
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5");
    assert!(matches!(report.outcomes[0], RcptOutcome::Deferred { .. }));
    assert!(
        reply_of(&report.outcomes[0]).contains("bogus"),
        "{report:?}"
    );

    let mut r = route(&[(MX, "127.0.0.1")], Security::Secure);
    r.hosts[0].address_security = Security::Bogus;
    let report = d
        .deliver_route(
            &request(Level::May, &["bob@example.test"]),
            &r,
            &PolicyLookup::None,
            TlsaSource::Fixed(&no_tlsa),
        )
        .await;
    assert!(matches!(report.outcomes[0], RcptOutcome::Deferred { .. }));
    assert!(
        reply_of(&report.outcomes[0]).contains("address answer"),
        "{report:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(logs.lock().unwrap().is_empty(), "no connection");
}

#[tokio::test]
async fn d3_secure_cname_target_is_the_tlsa_base_domain_and_sni() {
    // The MX name is an alias for host.provider.test (a secure CNAME chain): its
    // TLSA records are tried first and the connection names it (D3, D10).
    let target = "host.provider.test";
    let (cert, key) = self_signed(target);
    let record = dane_ee(&cert);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        target,
        TlsaAnswer::Secure(TlsaSet::new(vec![record.clone()])),
    )]);
    let mut r = route(&[(MX, "127.0.0.1")], Security::Secure);
    r.hosts[0].secure_cname = Some(target.into());
    let report = d
        .deliver_route(
            &request(Level::Verified, &["bob@example.test"]),
            &r,
            &PolicyLookup::None,
            TlsaSource::Fixed(&tlsa),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    let t = auth(&report).tlsa.as_ref().unwrap();
    assert_eq!(t.base_domain, target);
    assert_eq!(t.matched, Some(record.to_string()));
    assert!(sent_mail(&logs_settled(&logs, 1).await));
}

#[tokio::test]
async fn e6_mta_sts_testing_delivers_per_level() {
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    // Not listed and not PKIX-valid: delivered at `encrypted` all the same.
    let report = d
        .deliver_route(
            &request(Level::Encrypted, &["bob@example.test"]),
            &route(&[(MX, "127.0.0.1")], Security::Insecure),
            &sts_found("testing", "mx9.example.test"),
            TlsaSource::Fixed(&HashMap::new()),
        )
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Encrypted));
    let m = auth(&report).mta_sts.clone().unwrap();
    assert_eq!((m.mode.as_str(), m.covered), ("testing", false));
    assert!(sent_mail(&logs_settled(&logs, 1).await));
}

// ------------------------------------------------------- qrelay check (rule I)

fn check_classes() -> Vec<crate::check::ClassSpec> {
    use crate::check::ClassSpec;
    vec![
        ClassSpec {
            name: "none".into(),
            level: Level::May,
            profile: Profile::Compat,
        },
        ClassSpec {
            name: "normal".into(),
            level: Level::Encrypted,
            profile: Profile::Modern,
        },
        ClassSpec {
            name: "high".into(),
            level: Level::Verified,
            profile: Profile::Modern,
        },
    ]
}

fn class<'a>(r: &'a crate::check::CheckReport, name: &str) -> &'a crate::check::ClassVerdict {
    r.classes.iter().find(|c| c.class == name).expect("class")
}

/// The check said QUIT and never MAIL FROM, on every connection.
fn quit_without_mail(logs: &[Log]) {
    assert!(!logs.is_empty());
    assert!(!sent_mail(logs), "{logs:?}");
    for l in logs {
        assert!(l.data.is_none());
        if !l.handshake_failed {
            assert!(l.commands.iter().any(|c| c == "QUIT"), "{l:?}");
        }
    }
}

#[tokio::test]
async fn i_check_reports_each_mx_and_verdict_per_class() {
    let dane_mx = "mx1.example.test";
    let plain_mx = "mx2.example.test";
    let (cert, key) = self_signed(dane_mx);
    let record = dane_ee(&cert);
    let (port, logs_a, logs_b) = start_pair(
        Spec {
            starttls: Some(server_tls(cert, &key)),
            extensions: vec!["PIPELINING", "REQUIRETLS"],
            ..Default::default()
        },
        Spec::default(),
    )
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![
        (
            dane_mx,
            TlsaAnswer::Secure(TlsaSet::new(vec![record.clone()])),
        ),
        (plain_mx, TlsaAnswer::SecureDenial),
    ]);
    let prefs = HashMap::from([(dane_mx.to_string(), 10u16), (plain_mx.to_string(), 20u16)]);
    let report = crate::check::check_route(
        &d,
        "example.test",
        &route(
            &[(dane_mx, "127.0.0.2"), (plain_mx, "127.0.0.3")],
            Security::Secure,
        ),
        &prefs,
        &PolicyLookup::None,
        TlsaSource::Fixed(&tlsa),
        &check_classes(),
    )
    .await;

    assert_eq!(report.mx.len(), 2, "{report:?}");
    let a = &report.mx[0];
    assert_eq!((a.host.as_str(), a.preference), (dane_mx, Some(10)));
    assert_eq!(a.ips, vec!["127.0.0.2"]);
    assert_eq!(a.dnssec, "secure");
    assert_eq!(
        (a.verdict.as_str(), a.mechanism.as_str()),
        ("verified", "dane-ee")
    );
    assert_eq!(a.tls_version.as_deref(), Some("TLSv1.3"));
    assert!(a.cipher.is_some() && a.starttls == Some(true));
    assert!(a.requiretls, "REQUIRETLS after STARTTLS");
    let t = a.tlsa.as_ref().expect("tlsa");
    assert_eq!(t.records, vec![record.to_string()]);
    assert_eq!(t.matched, Some(record.to_string()));
    let c = a.certificate.as_ref().expect("certificate");
    assert!(c.names.contains(&dane_mx.to_string()), "{c:?}");
    assert!(!c.pkix_valid && !c.expired);

    let b = &report.mx[1];
    assert_eq!(
        (b.verdict.as_str(), b.mechanism.as_str()),
        ("plaintext", "none")
    );
    assert_eq!(b.starttls, Some(false));
    assert!(b.reason.contains("offers no STARTTLS"), "{}", b.reason);

    for name in ["none", "normal", "high"] {
        let v = class(&report, name);
        assert!(v.deliver, "{v:?}");
        assert_eq!(v.via.as_deref(), Some("mx1.example.test[127.0.0.2]"));
        assert_eq!(v.verdict.as_deref(), Some("verified"));
    }
    assert!(report.qualified && report.encrypted);

    // Both profiles (compat for `none`, modern) made their own sessions; none sent mail.
    quit_without_mail(&logs_settled(&logs_a, 2).await);
    quit_without_mail(&logs_settled(&logs_b, 2).await);

    // The JSON carries the documented keys.
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["mx"][0]["mechanism"], "dane-ee");
    assert_eq!(v["mx"][1]["verdict"], "plaintext");
    assert_eq!(v["qualified"], true);
}

#[tokio::test]
async fn i_check_trusted_is_not_qualified_and_says_why() {
    let pki = Pki::new();
    let (_dir, ca) = ca_file(&pki);
    let mx = "mx.provider.test";
    let (cert, key) = pki.leaf(mx);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, Some(&ca));
    let no_tlsa = HashMap::new();
    let report = crate::check::check_route(
        &d,
        "example.test",
        &route(&[(mx, "127.0.0.1")], Security::Insecure),
        &HashMap::new(),
        &PolicyLookup::None,
        TlsaSource::Fixed(&no_tlsa),
        &check_classes()[1..],
    )
    .await;
    let m = &report.mx[0];
    assert_eq!(
        (m.verdict.as_str(), m.mechanism.as_str()),
        ("trusted", "pkix")
    );
    assert!(m.tlsa.is_none(), "no TLSA lookup on insecure DNS");
    assert!(class(&report, "normal").deliver);
    let high = class(&report, "high");
    assert!(!high.deliver);
    assert!(
        high.reason
            .starts_with("would defer: mx.provider.test: certificate is valid"),
        "{}",
        high.reason
    );
    assert!(!report.qualified && report.encrypted);
    quit_without_mail(&logs_settled(&logs, 1).await);
}

#[tokio::test]
async fn i_check_encrypted_and_failed_hosts() {
    // Self-signed, no DNSSEC: encrypted.
    let (cert, key) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let no_tlsa = HashMap::new();
    let report = crate::check::check_route(
        &d,
        "example.test",
        &route(&[(MX, "127.0.0.1")], Security::Insecure),
        &HashMap::new(),
        &PolicyLookup::None,
        TlsaSource::Fixed(&no_tlsa),
        &check_classes(),
    )
    .await;
    assert_eq!(report.mx[0].verdict, "encrypted");
    assert_eq!(report.mx[0].mechanism, "none");
    assert!(class(&report, "normal").deliver && !class(&report, "high").deliver);
    assert!(!report.qualified && report.encrypted);
    quit_without_mail(&logs_settled(&logs, 2).await);

    // B3: a TLSA mismatch: the host fails for every class, `may` included.
    let (cert, key) = self_signed(MX);
    let (other, _) = self_signed(MX);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let d = deliverer(port, None);
    let tlsa = tlsa_table(vec![(
        MX,
        TlsaAnswer::Secure(TlsaSet::new(vec![dane_ee(&other)])),
    )]);
    let report = crate::check::check_route(
        &d,
        "example.test",
        &route(&[(MX, "127.0.0.1")], Security::Secure),
        &HashMap::new(),
        &PolicyLookup::None,
        TlsaSource::Fixed(&tlsa),
        &check_classes(),
    )
    .await;
    let m = &report.mx[0];
    assert_eq!(m.verdict, "failed", "{m:?}");
    assert!(m.reason.contains("TLSA"), "{}", m.reason);
    assert_eq!(m.tlsa.as_ref().unwrap().matched, None);
    for c in &report.classes {
        assert!(!c.deliver && c.reason.starts_with("would defer: "), "{c:?}");
    }
    assert!(!report.qualified && !report.encrypted);
    let logs = logs_settled(&logs, 2).await;
    assert!(!sent_mail(&logs), "{logs:?}");
}

// ---------------------------------------------------------------- DNSSEC unavailable

/// The whole attempt (resolver, policy, session) with DNSSEC unavailable through
/// the upstream: the unsigned test responder's answers are used unvalidated, so
/// `encrypted` and `trusted` deliver, and `verified` needs more than the MX name.
#[tokio::test]
async fn dnssec_unavailable_delivers_unvalidated_up_to_trusted_and_says_why_not_verified() {
    use crate::dns::DnssecHealth;
    let pki = Pki::new();
    let (_dir, ca) = ca_file(&pki);
    let mx = "mx.provider.test";
    let (cert, key) = pki.leaf(mx);
    let (port, logs) = start(Spec {
        starttls: Some(server_tls(cert, &key)),
        ..Default::default()
    })
    .await;
    let dns = crate::testutil::dns::TestDns::start().await;
    dns.mx("example.test", &[(10, "mx.provider.test.")]);
    dns.a(mx, std::net::Ipv4Addr::LOCALHOST);
    let mut d = deliverer(port, Some(&ca));
    d.resolver = crate::dns::Resolver::validating_for_tests(&crate::config::DnsConfig {
        servers: vec![dns.addr],
        timeout: Duration::from_secs(2),
        trust_anchor: None,
    });

    // DNSSEC works (as far as the resolver knows): the unsigned answer defers (D1).
    let report = d
        .attempt(request(Level::Encrypted, &["bob@example.test"]))
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5", "{report:?}");
    assert!(!delivered(&report.outcomes[0]));

    d.resolver().dnssec_status().set(DnssecHealth::Unavailable {
        reason: "signatures stripped".into(),
        checked_at: std::time::SystemTime::now(),
    });
    let report = d
        .attempt(request(Level::Encrypted, &["bob@example.test"]))
        .await;
    assert!(delivered(&report.outcomes[0]), "{report:?}");
    assert_eq!(auth(&report).mx_dnssec, "unvalidated");
    assert_eq!(auth(&report).address_dnssec, "unvalidated");

    let report = d
        .attempt(request(Level::Verified, &["bob@example.test"]))
        .await;
    assert_eq!(status_of(&report.outcomes[0]), "4.7.5", "{report:?}");
    let reply = reply_of(&report.outcomes[0]);
    assert!(
        reply.contains("MX answer unvalidated (DNSSEC unavailable through the upstream resolvers)"),
        "{reply}"
    );
    assert_eq!(report.attempt.verdict, Some(TransportVerdict::Trusted));
    assert_eq!(
        logs_settled(&logs, 2)
            .await
            .iter()
            .filter(|l| l.commands.iter().any(|c| c.starts_with("MAIL")))
            .count(),
        1,
        "only the `encrypted` message was sent"
    );
}

#[test]
fn a5_transport_header_names_verdict_mechanism_and_tls() {
    let auth = AuthFacts {
        mechanism: Mechanism::DaneEe,
        ..AuthFacts::default()
    };
    let tls = TlsFacts {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        group: Some("X25519MLKEM768".into()),
        peer_cert_sha256: None,
        peer_spki_sha256: None,
        pkix_verified: false,
        profile: "modern".into(),
        peer_key_type: None,
        peer_key_bits: None,
    };
    let h = super::transport_header(
        Some(TransportVerdict::Verified),
        &auth,
        Some(&tls),
        "mx1.example.org\r\nBcc: evil@example.org",
    );
    assert_eq!(
        h,
        "X-Qrelay-Transport: verified dane-ee TLSv1.3 TLS13_AES_256_GCM_SHA384 X25519MLKEM768 mx=mx1.example.orgBcc:evilexample.org\r\n"
    );
    assert_eq!(
        h.matches("\r\n").count(),
        1,
        "one header line, no injection"
    );
    let plain = super::transport_header(None, &AuthFacts::default(), None, "mx");
    assert_eq!(plain, "X-Qrelay-Transport: plaintext none mx=mx\r\n");
}

#[test]
fn a5_subject_mark_goes_in_front_of_the_subject_only_in_the_header() {
    let msg = b"From: a@b\r\nSubject: Quarterly figures\r\nTo: c@d\r\n\r\nSubject: in the body\r\n";
    let marked = super::mark_subject(msg, "[verified]");
    assert_eq!(
        String::from_utf8(marked).unwrap(),
        "From: a@b\r\nSubject: [verified] Quarterly figures\r\nTo: c@d\r\n\r\nSubject: in the body\r\n"
    );
    // No Subject in the header section: unchanged, also when the body has one.
    let none = b"From: a@b\r\n\r\nSubject: body\r\n";
    assert_eq!(super::mark_subject(none, "[verified]"), none.to_vec());
    // Case-insensitive field name, no space after the colon.
    let odd = b"subject:x\r\n\r\n";
    assert_eq!(
        super::mark_subject(odd, "[v] "),
        b"subject:[v] x\r\n\r\n".to_vec()
    );
}

#[tokio::test]
async fn certificate_checking_levels_wait_for_time_sync_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("synchronized");
    let mut cfg = Config::default();
    cfg.system.require_time_sync = true;
    cfg.dns.servers = vec!["127.0.10.54:53".parse().unwrap()];
    let mut d = Deliverer::new(Arc::new(cfg)).expect("deliverer");
    d.time_sync_flag = flag.clone();
    // Not synchronised: trusted and verified wait, with the reason.
    for level in [Level::Trusted, Level::Verified] {
        let report = d.attempt(request(level, &["bob@example.test"])).await;
        match &report.outcomes[0] {
            RcptOutcome::Deferred { reply, status } => {
                assert_eq!(status, "4.4.0");
                assert!(reply.contains("clock is not synchronised"), "{reply}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Levels that judge no certificate are not held back by the clock (they go on
    // to the MX lookup, whatever it finds).
    let report = d
        .attempt(request(Level::Encrypted, &["bob@example.test"]))
        .await;
    assert!(!report.attempt.reply.contains("clock"), "{report:?}");
    // Synchronised: no waiting.
    std::fs::write(&flag, b"").unwrap();
    let report = d
        .attempt(request(Level::Verified, &["bob@example.test"]))
        .await;
    assert!(!report.attempt.reply.contains("clock"), "{report:?}");
}
