//! Whole sessions driven over in-memory pipes against a real queue on a temporary
//! spool, with a real STARTTLS handshake where TLS matters.

use super::*;

use std::path::PathBuf;
use std::sync::OnceLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

use crate::config::SmtpUser;
use crate::spool::record::{BodyType, Envelope, Ret};
use crate::spool::Spool;

const HOST: &str = "relay.test.example";
/// Inside `relay_networks` of the test configuration.
const LAN: &str = "192.0.2.10:40000";
/// Outside it.
const OUTSIDE: &str = "198.51.100.7:40000";
const USER: &str = "scanner";
const PASSWORD: &str = "correct horse battery staple";

fn user_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password(PASSWORD))
}

struct Harness {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    server: Server,
    shutdown: watch::Sender<bool>,
}

fn harness() -> Harness {
    harness_with(|_| {})
}

fn harness_with(adjust: impl FnOnce(&mut Config)) -> Harness {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let mut cfg = Config::default();
    cfg.spool.dir = dir.clone();
    cfg.spool.min_free_bytes = 0;
    cfg.smtp.hostname = HOST.into();
    cfg.smtp.relay_networks = vec!["192.0.2.0/24".parse().expect("net")];
    cfg.smtp.max_message_size = 4096;
    cfg.smtp.max_line_length = 1000;
    cfg.smtp.users = vec![SmtpUser {
        name: USER.into(),
        password_hash: user_hash().to_string(),
    }];
    adjust(&mut cfg);
    let spool = Spool::open(&dir, cfg.spool.min_free_bytes).expect("spool");
    let tls = crate::tls::server::load_or_generate(&cfg).expect("tls");
    let config = Arc::new(cfg);
    let queue = Queue::new(spool, config.clone(), vec![]);
    let tuning = Tuning {
        auth_failure_delay: Duration::from_millis(10),
        shutdown_grace: Duration::from_secs(2),
        ..Tuning::default()
    };
    let (shutdown, _) = watch::channel(false);
    Harness {
        _dir: tmp,
        dir,
        server: Server::with_tuning(config, queue, tls, tuning),
        shutdown,
    }
}

impl Harness {
    /// A client connected from `peer`; the greeting is not read yet.
    fn connect(&self, peer: &str) -> (Client<DuplexStream>, JoinHandle<()>) {
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let server = self.server.clone();
        let peer: SocketAddr = peer.parse().expect("addr");
        let rx = self.shutdown.subscribe();
        let task = tokio::spawn(async move { server.serve(server_side, peer, rx).await });
        (Client::new(client), task)
    }

    /// Connected, greeted, and EHLO done.
    async fn ready(&self, peer: &str) -> Client<DuplexStream> {
        let (mut c, _) = self.connect(peer);
        assert!(c.reply().await.starts_with("220 "));
        assert!(c.cmd("EHLO mail.lan.example").await.starts_with("250-"));
        c
    }

    fn stored(&self) -> Vec<(Envelope, String)> {
        let spool = Spool::open(&self.dir, 0).expect("spool");
        let envs = spool.recover().expect("recover").envelopes;
        envs.into_iter()
            .map(|e| {
                let content = spool.content(&e.id).expect("content");
                (e, String::from_utf8(content).expect("utf8"))
            })
            .collect()
    }

    /// Every file in the spool's `tmp/`, `msg/` and `env/`.
    fn spool_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for sub in ["tmp", "msg", "env"] {
            for e in std::fs::read_dir(self.dir.join("queue").join(sub)).expect("list") {
                files.push(e.expect("entry").path());
            }
        }
        files
    }

    fn tls_client_config(&self) -> Arc<rustls::ClientConfig> {
        let cert = CertificateDer::from_pem_file(
            self.dir
                .join("tls")
                .join(crate::tls::server::GENERATED_CERT),
        )
        .expect("generated certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("trust anchor");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }

    /// Connected, STARTTLS done (the certificate verified against the generated
    /// one), and EHLO sent inside TLS. Returns the client and the EHLO reply.
    async fn ready_tls(
        &self,
        peer: &str,
    ) -> (
        Client<tokio_rustls::client::TlsStream<DuplexStream>>,
        String,
    ) {
        let mut c = self.ready(peer).await;
        assert!(c.cmd("STARTTLS").await.starts_with("220 2.0.0"));
        let mut t = c.starttls(self.tls_client_config()).await;
        let ehlo = t.cmd("EHLO mail.lan.example").await;
        (t, ehlo)
    }
}

struct Client<S> {
    s: BufReader<S>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    fn new(s: S) -> Self {
        Client {
            s: BufReader::new(s),
        }
    }

    /// One complete (possibly multi-line) reply, lines joined with '\n'.
    async fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(n > 0, "connection closed; replies so far: {all:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                return all.join("\n");
            }
        }
    }

    async fn send(&mut self, raw: &str) {
        self.s.write_all(raw.as_bytes()).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// The server closed the connection (nothing more to read).
    async fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(20), self.s.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Send a whole message after DATA's 354; returns the final reply.
    async fn message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        assert!(self
            .cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .starts_with("250"));
        for r in to {
            let rep = self.cmd(&format!("RCPT TO:<{r}>")).await;
            assert!(rep.starts_with("250"), "{rep}");
        }
        assert!(self.cmd("DATA").await.starts_with("354"));
        self.send(body).await;
        self.reply().await
    }
}

impl Client<DuplexStream> {
    async fn starttls(
        self,
        config: Arc<rustls::ClientConfig>,
    ) -> Client<tokio_rustls::client::TlsStream<DuplexStream>> {
        assert!(self.s.buffer().is_empty(), "nothing may follow the 220");
        let raw = self.s.into_inner();
        let name = ServerName::try_from(HOST).expect("name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, raw)
            .await
            .expect("TLS handshake with the generated certificate");
        Client::new(tls)
    }
}

fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    reply.rsplit(' ').next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn ehlo_before_starttls_offers_starttls_but_not_auth_or_requiretls() {
    let h = harness();
    let (mut c, _) = h.connect(LAN);
    assert_eq!(c.reply().await, format!("220 {HOST} ESMTP qrelay"));
    let ehlo = c.cmd("EHLO mail.lan.example").await;
    for ext in [
        "PIPELINING",
        "SIZE 4096",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines().any(|l| &l[4..] == ext),
            "{ext} missing: {ehlo}"
        );
    }
    assert!(!ehlo.contains("REQUIRETLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    assert!(ehlo.lines().last().is_some_and(|l| l.starts_with("250 ")));
}

#[tokio::test]
async fn requiretls_g1_advertised_only_after_starttls() {
    let h = harness();
    let (_t, ehlo) = h.ready_tls(LAN).await;
    assert!(ehlo.lines().any(|l| &l[4..] == "REQUIRETLS"), "{ehlo}");
    assert!(
        ehlo.lines().any(|l| &l[4..] == "AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "no second STARTTLS: {ehlo}");
}

#[tokio::test]
async fn requiretls_g1_mail_parameter_refused_in_plaintext_and_recorded_over_tls() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let r = c.cmd("MAIL FROM:<a@lan.example> REQUIRETLS").await;
    assert!(r.starts_with("530 5.7.10"), "{r}");

    let (mut t, _) = h.ready_tls(LAN).await;
    assert!(t
        .cmd("MAIL FROM:<a@lan.example> REQUIRETLS")
        .await
        .starts_with("250"));
    assert!(t.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    assert!(t.cmd("DATA").await.starts_with("354"));
    t.send("Subject: secure\r\n\r\nhi\r\n.\r\n").await;
    queued_id(&t.reply().await);
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].0.requiretls);
}

#[tokio::test]
async fn starttls_resets_session_and_discards_pipelined_plaintext() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    // The injected EHLO travels in the same packet as STARTTLS (CVE-2011-0411).
    c.send("STARTTLS\r\nEHLO injected.example\r\n").await;
    assert!(c.reply().await.starts_with("220 2.0.0"));
    let mut t = c.starttls(h.tls_client_config()).await;
    // Neither the injected EHLO nor the earlier EHLO/MAIL count inside TLS.
    let r = t.cmd("MAIL FROM:<a@lan.example>").await;
    assert!(r.starts_with("503 5.5.1"), "{r}");
    assert!(t.cmd("EHLO mail.lan.example").await.starts_with("250-"));
    assert!(t.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    let r = t.cmd("STARTTLS").await;
    assert!(r.starts_with("503 5.5.1"), "{r}");
}

#[tokio::test]
async fn tls_session_is_recorded_in_received_header_and_envelope() {
    let h = harness();
    let (mut t, _) = h.ready_tls(LAN).await;
    let r = t
        .message(
            "a@lan.example",
            &["b@remote.example"],
            "Subject: x\r\n\r\nhi\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let stored = h.stored();
    let (env, content) = &stored[0];
    let tls = env.client.tls.as_deref().unwrap_or_default();
    assert!(tls.starts_with("TLSv1.3 TLS13_"), "{tls}");
    assert!(
        content.contains(&format!("with ESMTPS id {id}")),
        "{content}"
    );
    assert!(
        content.contains("(using TLSv1.3 with cipher TLS13_"),
        "{content}"
    );
    assert_eq!(env.client.auth_user, None);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = harness();
    let (mut c, _) = h.connect(LAN);
    c.reply().await;
    c.send(concat!(
        "EHLO mail.lan.example\r\n",
        "MAIL FROM:<a@lan.example>\r\n",
        "RCPT TO:<b@remote.example>\r\n",
        "RCPT TO:<bad%trick@remote.example>\r\n",
        "RCPT TO:<c@remote.example>\r\n",
        "DATA\r\n",
    ))
    .await;
    assert!(c.reply().await.starts_with("250-"));
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("553 5.1.3"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    c.send("Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    queued_id(&c.reply().await);
    assert!(c.reply().await.starts_with("221 2.0.0"));
    assert!(c.is_closed().await);
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    let rcpts: Vec<_> = stored[0]
        .0
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["b@remote.example", "c@remote.example"]);
}

#[tokio::test]
async fn received_and_message_id_are_added_and_content_kept() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let body = "Subject: hello\r\nFrom: a@lan.example\r\n\r\n..dot line\r\nline 2\r\n.\r\n";
    let r = c
        .message("a@lan.example", &["b@remote.example"], body)
        .await;
    let id = queued_id(&r);
    let stored = h.stored();
    let (env, content) = &stored[0];
    assert_eq!(env.id.as_str(), id);
    let expected_start = format!(
        "Received: from mail.lan.example ([192.0.2.10])\r\n\tby {HOST} (qrelay) with ESMTP id {id}\r\n\tfor <b@remote.example>;\r\n\t"
    );
    assert!(content.starts_with(&expected_start), "{content}");
    let msgid = format!("<{id}@{HOST}>");
    assert!(
        content.contains(&format!("\r\nMessage-ID: {msgid}\r\nSubject: hello\r\n")),
        "{content}"
    );
    assert!(
        content.ends_with("Subject: hello\r\nFrom: a@lan.example\r\n\r\n.dot line\r\nline 2\r\n"),
        "dot-unstuffed, otherwise as received: {content}"
    );
    assert_eq!(env.message_id.as_deref(), Some(msgid.as_str()));
    assert_eq!(env.size, content.len() as u64);
    assert_eq!(env.class, crate::config::RiskClass::Normal);
    assert_eq!(env.client.addr, "192.0.2.10");
    assert_eq!(env.client.helo, "mail.lan.example");
    assert_eq!(env.client.tls, None);
    assert_eq!(env.sender, "a@lan.example");
}

#[tokio::test]
async fn existing_message_id_is_kept_and_recorded() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let body = "Message-Id: <orig@lan.example>\r\nSubject: x\r\n\r\nhi\r\n.\r\n";
    let r = c
        .message(
            "a@lan.example",
            &["b@remote.example", "c@remote.example"],
            body,
        )
        .await;
    queued_id(&r);
    let (env, content) = &h.stored()[0];
    assert_eq!(env.message_id.as_deref(), Some("<orig@lan.example>"));
    assert_eq!(content.matches("Message-I").count(), 1, "{content}");
    assert!(
        !content.contains("\tfor <"),
        "no `for` with two recipients: {content}"
    );
}

#[tokio::test]
async fn dsn_parameters_are_kept_in_the_envelope() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let r = c
        .cmd("MAIL FROM:<a@lan.example> RET=HDRS ENVID=QQ+2B314 BODY=8BITMIME SIZE=100")
        .await;
    assert!(r.starts_with("250"), "{r}");
    let r = c
        .cmd("RCPT TO:<b@remote.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@remote.example")
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(c
        .cmd("RCPT TO:<c@remote.example> NOTIFY=NEVER")
        .await
        .starts_with("250"));
    assert!(c.cmd("RCPT TO:<d@remote.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: x\r\n\r\nhi\r\n.\r\n").await;
    queued_id(&c.reply().await);
    let (env, _) = &h.stored()[0];
    assert_eq!(env.ret, Some(Ret::Headers));
    assert_eq!(env.envid.as_deref(), Some("QQ+314"));
    assert_eq!(env.body, BodyType::EightBitMime);
    let b = &env.recipients[0];
    assert_eq!(b.orcpt.as_deref(), Some("rfc822;b+x@remote.example"));
    let n = b.notify.expect("notify");
    assert!(n.success && n.delay && !n.failure && !n.never);
    assert!(env.recipients[1].notify.is_some_and(|n| n.never));
    assert_eq!(env.recipients[2].notify, None);
    assert_eq!(env.recipients[2].orcpt, None);
}

#[tokio::test]
async fn bad_dsn_parameters_are_refused() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> RET=ALL")
        .await
        .starts_with("501 5.5.4"));
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> ENVID=a=b")
        .await
        .starts_with("501"));
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> FOO=1")
        .await
        .starts_with("555 5.5.4"));
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> BODY=BINARYMIME")
        .await
        .starts_with("555"));
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    let r = c
        .cmd("RCPT TO:<b@remote.example> NOTIFY=NEVER,SUCCESS")
        .await;
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert!(c
        .cmd("RCPT TO:<b@remote.example> ORCPT=rfc822")
        .await
        .starts_with("501"));
}

#[tokio::test]
async fn smtputf8_addresses_need_the_parameter() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let r = c.cmd("MAIL FROM:<jürgen@lan.example>").await;
    assert!(r.starts_with("553 5.6.7"), "{r}");
    assert!(c
        .cmd("MAIL FROM:<jürgen@lan.example> SMTPUTF8")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<zoë@bücher.example>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: ü\r\n\r\nhi\r\n.\r\n").await;
    let id = queued_id(&c.reply().await);
    let (env, content) = &h.stored()[0];
    assert!(env.smtputf8);
    assert!(
        content.contains(&format!("with UTF8SMTP id {id}")),
        "{content}"
    );
}

#[tokio::test]
async fn declared_size_over_limit_is_refused_at_mail() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let r = c.cmd("MAIL FROM:<a@lan.example> SIZE=4097").await;
    assert_eq!(
        r,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    let r = c
        .cmd("MAIL FROM:<a@lan.example> SIZE=99999999999999999999999")
        .await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> SIZE=4096")
        .await
        .starts_with("250"));
}

#[tokio::test]
async fn oversized_data_is_read_to_the_end_then_refused() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let line = format!("{}\r\n", "x".repeat(98));
    let body = format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(50));
    let r = c
        .message("a@lan.example", &["b@remote.example"], &body)
        .await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session is in sync: the next command gets its own answer.
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn too_many_recipients_get_452_4_5_3() {
    let h = harness_with(|c| c.smtp.max_recipients = 2);
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<c@remote.example>").await.starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<d@remote.example>").await,
        "452 4.5.3 Too many recipients"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: x\r\n\r\nhi\r\n.\r\n").await;
    queued_id(&c.reply().await);
    assert_eq!(h.stored()[0].0.recipients.len(), 2);
}

#[tokio::test]
async fn over_long_command_line_gets_500_5_5_2() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    let long = format!("NOOP {}", "x".repeat(2000));
    assert_eq!(c.cmd(&long).await, "500 5.5.2 Error: line too long");
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test]
async fn over_long_data_line_is_never_stored() {
    let h = harness_with(|c| c.smtp.max_message_size = 100_000);
    let mut c = h.ready(LAN).await;
    let body = format!("Subject: x\r\n\r\n{}\r\nafter\r\n.\r\n", "y".repeat(1500));
    let r = c
        .message("a@lan.example", &["b@remote.example"], &body)
        .await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn command_timeout_closes_with_421_4_4_2() {
    let h = harness_with(|c| c.smtp.command_timeout = Duration::from_millis(200));
    let mut c = h.ready(LAN).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn data_timeout_closes_with_421_4_4_2() {
    let h = harness_with(|c| c.smtp.data_timeout = Duration::from_millis(300));
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: slow\r\n\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.is_closed().await);
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn relaying_denied_for_unauthenticated_client_outside_relay_networks() {
    let h = harness();
    let mut c = h.ready(OUTSIDE).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    for rcpt in [
        "b@remote.example",
        "postmaster@lan.example",
        "x@lan.example",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert_eq!(r, "550 5.7.1 Relaying denied", "{rcpt}");
    }
    assert!(c.cmd("DATA").await.starts_with("554 5.5.1"));
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn ipv4_mapped_ipv6_client_is_matched_against_relay_networks() {
    let h = harness();
    let mut c = h.ready("[::ffff:192.0.2.10]:40000").await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
}

#[tokio::test]
async fn open_relay_address_tricks_are_refused_even_from_relay_networks() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    for trick in [
        "<@relay.test.example,@hop.example:victim@target.example>",
        "<@relay.test.example:victim@target.example>",
        "<victim%target.example@relay.test.example>",
        "<target.example!victim@relay.test.example>",
        "<target.example!victim>",
        "<victim@target.example@relay.test.example>",
        "<\"victim@target.example\"@relay.test.example>",
        "<\"victim%target.example\"@relay.test.example>",
        "<\"victim\\@target.example\"@relay.test.example>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{trick}")).await;
        assert!(r.starts_with("553 5.1.3"), "{trick}: {r}");
    }
    for bad in ["victim@target.example", "<victim>", "<victim@>", "<>"] {
        let r = c.cmd(&format!("RCPT TO:{bad}")).await;
        assert!(r.starts_with("501 5.1.3"), "{bad}: {r}");
    }
    let r = c.cmd("RCPT TO:<victim@[192.0.2.99]>").await;
    assert!(r.starts_with("553 5.1.3"), "{r}");
    let r = c.cmd("RCPT TO:<postmaster>").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(c.cmd("RSET").await.starts_with("250"));
    // The same tricks in the sender.
    let r = c.cmd("MAIL FROM:<a%b@lan.example>").await;
    assert!(r.starts_with("553 5.1.7"), "{r}");
    let r = c.cmd("MAIL FROM:<@hop.example:a@lan.example>").await;
    assert!(r.starts_with("553 5.1.7"), "{r}");
}

#[tokio::test]
async fn auth_plain_lets_an_outside_client_relay_and_is_recorded() {
    let h = harness();
    let (mut t, _) = h.ready_tls(OUTSIDE).await;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    use base64::Engine;
    let r = t.cmd(&format!("AUTH PLAIN {creds}")).await;
    assert_eq!(r, "235 2.7.0 Authentication successful");
    assert!(t.cmd("AUTH PLAIN").await.starts_with("503 5.5.1"));
    let r = t
        .message(
            "scan@lan.example",
            &["b@remote.example"],
            "Subject: s\r\n\r\nx\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let (env, content) = &h.stored()[0];
    assert_eq!(env.client.auth_user.as_deref(), Some(USER));
    assert!(
        content.contains(&format!("with ESMTPSA id {id}")),
        "{content}"
    );
    assert!(
        !content.contains(USER),
        "the user name stays out of the header"
    );
}

#[tokio::test]
async fn auth_login_with_prompts_succeeds() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let h = harness();
    let (mut t, _) = h.ready_tls(OUTSIDE).await;
    assert_eq!(t.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(t.cmd(&b64(USER)).await, "334 UGFzc3dvcmQ6");
    assert!(t.cmd(&b64(PASSWORD)).await.starts_with("235 2.7.0"));
    assert!(t.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(t.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
}

#[tokio::test]
async fn auth_failures_get_535_5_7_8_and_end_the_session_after_three() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let h = harness();
    let (mut t, _) = h.ready_tls(OUTSIDE).await;
    let wrong = b64(&format!("\0{USER}\0wrong"));
    assert_eq!(
        t.cmd(&format!("AUTH PLAIN {wrong}")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    // Unknown user: same answer.
    let unknown = b64(&format!("\0nobody\0{PASSWORD}"));
    assert_eq!(
        t.cmd(&format!("AUTH PLAIN {unknown}")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    // Still not allowed to relay.
    assert!(t.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert_eq!(
        t.cmd("RCPT TO:<b@remote.example>").await,
        "550 5.7.1 Relaying denied"
    );
    assert!(t.cmd("RSET").await.starts_with("250"));
    // Cancelling is not a failure.
    assert_eq!(t.cmd("AUTH PLAIN").await, "334");
    assert!(t.cmd("*").await.starts_with("501 5.0.0"));
    let r = t.cmd(&format!("AUTH PLAIN {wrong}")).await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(t.is_closed().await);
}

#[tokio::test]
async fn auth_is_refused_without_tls() {
    use base64::Engine;
    let h = harness();
    let mut c = h.ready(OUTSIDE).await;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let r = c.cmd(&format!("AUTH PLAIN {creds}")).await;
    assert!(r.starts_with("538 5.7.11"), "{r}");
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<b@remote.example>").await,
        "550 5.7.1 Relaying denied"
    );
}

#[tokio::test]
async fn disk_full_at_mail_gets_452_4_3_1() {
    let h = harness_with(|c| c.spool.min_free_bytes = u64::MAX / 2);
    let mut c = h.ready(LAN).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@lan.example>").await,
        "452 4.3.1 Insufficient system storage"
    );
    // No transaction was started.
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("503"));
}

#[tokio::test]
async fn smtp_smuggling_bare_lf_end_sequences_do_not_split_the_message() {
    for (name, body) in [
        ("LF.LF", "Subject: a\r\n\r\nhi\n.\nMAIL FROM:<evil@lan.example>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"),
        ("LF.CRLF", "Subject: a\r\n\r\nhi\n.\r\nMAIL FROM:<evil@lan.example>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"),
        ("CRLF.LF", "Subject: a\r\n\r\nhi\r\n.\nMAIL FROM:<evil@lan.example>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"),
        ("CR.CR", "Subject: a\r\n\r\nhi\r.\rMAIL FROM:<evil@lan.example>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"),
    ] {
        let h = harness();
        let mut c = h.ready(LAN).await;
        let r = c.message("a@lan.example", &["b@remote.example"], body).await;
        assert!(r.starts_with("554 5.6.0"), "{name}: {r}");
        // Exactly one reply for the whole thing: the next answer is NOOP's.
        assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok", "{name}");
        assert!(h.stored().is_empty(), "{name}: nothing stored");
    }
}

#[tokio::test]
async fn sequence_errors_and_simple_commands() {
    let h = harness();
    let (mut c, _) = h.connect(LAN);
    c.reply().await;
    assert!(c
        .cmd("MAIL FROM:<a@lan.example>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("EHLO").await.starts_with("501 5.5.4"));
    assert!(c.cmd("EHLO bad(name)").await.starts_with("501 5.5.4"));
    assert_eq!(c.cmd("HELO mail.lan.example").await, format!("250 {HOST}"));
    assert!(c
        .cmd("MAIL FROM:<a@lan.example> SIZE=10")
        .await
        .starts_with("555"));
    assert!(c
        .cmd("RCPT TO:<b@remote.example>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c
        .cmd("MAIL FROM:<a@lan.example>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").await.starts_with("554 5.5.1"));
    assert!(c.cmd("VRFY someone").await.starts_with("252"));
    assert!(c.cmd("EXPN list").await.starts_with("502 5.5.1"));
    assert!(c.cmd("BDAT 10 LAST").await.starts_with("502 5.5.1"));
    assert!(c.cmd("FOO").await.starts_with("500 5.5.2"));
    assert!(c.cmd("HELP").await.starts_with("214-"));
    assert!(c.cmd("noop").await.starts_with("250"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn null_sender_message_helo_session_uses_smtp_keyword() {
    let h = harness();
    let (mut c, _) = h.connect(LAN);
    c.reply().await;
    assert!(c.cmd("HELO mail.lan.example").await.starts_with("250"));
    let r = c
        .message(
            "",
            &["b@remote.example"],
            "Subject: bounce\r\n\r\nx\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    let (env, content) = &h.stored()[0];
    assert!(env.is_bounce());
    assert!(content.contains(&format!("with SMTP id {id}")), "{content}");
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    for _ in 0..19 {
        assert!(c.cmd("FOO").await.starts_with("500"));
    }
    assert!(c.cmd("FOO").await.starts_with("500"));
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn connection_limits_answer_421_4_7_0_at_the_greeting() {
    let h = harness_with(|c| {
        c.smtp.max_connections = 3;
        c.smtp.max_connections_per_ip = 2;
    });
    let (mut a, a_task) = h.connect(LAN);
    let (mut b, _) = h.connect(LAN);
    assert!(a.reply().await.starts_with("220"));
    assert!(b.reply().await.starts_with("220"));
    let (mut third, _) = h.connect(LAN);
    let r = third.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(third.is_closed().await);
    let (mut other, _) = h.connect(OUTSIDE);
    assert!(other.reply().await.starts_with("220"));
    let (mut fourth, _) = h.connect("203.0.113.5:1");
    assert!(fourth.reply().await.starts_with("421 4.7.0"));
    // A finished session frees its slot.
    assert!(a.cmd("QUIT").await.starts_with("221"));
    a_task.await.expect("session ends");
    let (mut again, _) = h.connect(LAN);
    assert!(again.reply().await.starts_with("220"));
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421_and_run_returns() {
    let h = harness();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let run = tokio::spawn(h.server.clone().run(listener, h.shutdown.subscribe()));
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut c = Client::new(stream);
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("EHLO mail.lan.example").await.starts_with("250-"));
    h.shutdown.send_replace(true);
    let r = c.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(c.is_closed().await);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns after shutdown")
        .expect("no panic");
}

#[test]
fn hash_password_makes_a_phc_string_the_config_accepts() {
    let h = hash_password("pw");
    let text = format!("[[smtp.users]]\nname = \"u\"\npassword_hash = \"{h}\"\n");
    let cfg = Config::parse(&text, std::path::Path::new("x")).expect("valid config");
    assert_eq!(cfg.smtp.users.len(), 1);
}

/// A log sink for one test (the current-thread runtime keeps every session task
/// on this thread, under the scoped subscriber).
#[derive(Clone, Default)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn logs_name_the_user_but_never_the_password_and_carry_queue_ids() {
    use base64::Engine;
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // tracing-core computes a callsite's interest from the registering thread's
    // default when only one dispatcher exists; a second live one makes it ask
    // every dispatcher, so callsites first hit by tests on other threads still
    // reach this one.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = harness();
    let (mut t, _) = h.ready_tls(OUTSIDE).await;
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0hunter2"));
    assert!(t
        .cmd(&format!("AUTH PLAIN {wrong}"))
        .await
        .starts_with("535"));
    let right = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    assert!(t
        .cmd(&format!("AUTH PLAIN {right}"))
        .await
        .starts_with("235"));
    let r = t
        .message(
            "a@lan.example",
            &["b@remote.example"],
            "Subject: l\r\n\r\nx\r\n.\r\n",
        )
        .await;
    let id = queued_id(&r);
    assert!(t.cmd("QUIT").await.starts_with("221"));
    assert!(t.is_closed().await);

    let logs = sink.text();
    assert!(logs.contains("authentication failed"), "{logs}");
    assert!(logs.contains(USER), "{logs}");
    for secret in [PASSWORD, "hunter2", wrong.as_str(), right.as_str()] {
        assert!(!logs.contains(secret), "{secret} logged: {logs}");
    }
    let accepted = logs
        .lines()
        .find(|l| l.contains("message accepted"))
        .unwrap_or_default();
    assert!(accepted.contains(&format!("queue_id={id}")), "{logs}");
    assert!(accepted.contains("client=198.51.100.7"), "{logs}");
    assert!(logs.contains("TLS established"), "{logs}");
}

#[tokio::test]
async fn spool_failure_at_end_of_data_gets_451_4_3_0_and_no_250() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    // Break the spool between MAIL and the end of DATA: content can no longer be
    // renamed into place.
    let msg_dir = h.dir.join("queue").join("msg");
    std::fs::remove_dir(&msg_dir).expect("empty msg dir");
    std::fs::write(&msg_dir, b"not a directory").expect("file");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(c.reply().await, "451 4.3.0 Local error in processing");
    assert!(c.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test]
async fn mail_loops_are_refused() {
    let h = harness_with(|c| c.smtp.max_message_size = 100_000);
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    let r = c
        .cmd(&format!("RCPT TO:<postmaster@{}>", HOST.to_uppercase()))
        .await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    assert!(c.cmd("RSET").await.starts_with("250"));
    let hops = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(51);
    let body = format!("{hops}Subject: loop\r\n\r\nx\r\n.\r\n");
    let r = c
        .message("a@lan.example", &["b@remote.example"], &body)
        .await;
    assert!(r.starts_with("554 5.4.6"), "{r}");
    assert!(h.stored().is_empty());
}

/// Lines of varied length, some starting with a dot, for large messages; returns
/// the data as sent (dot-stuffed, without the end marker) and as it is stored.
fn big_body(size: usize) -> (String, String) {
    let mut sent = String::from("Subject: big\r\nFrom: a@lan.example\r\n\r\n");
    let mut stored = sent.clone();
    let mut n = 0usize;
    while stored.len() < size {
        let text: String = (0..(n * 13) % 90)
            .map(|i| char::from(b'a' + ((n + i) % 26) as u8))
            .collect();
        let line = if n.is_multiple_of(7) {
            format!(".{n} {text}\r\n")
        } else {
            format!("{n} {text}\r\n")
        };
        if line.starts_with('.') {
            sent.push('.');
        }
        sent.push_str(&line);
        stored.push_str(&line);
        n += 1;
    }
    (sent, stored)
}

#[tokio::test]
async fn large_message_is_streamed_to_the_spool_byte_exact() {
    let h = harness_with(|c| c.smtp.max_message_size = 8 * 1024 * 1024);
    let mut c = h.ready(LAN).await;
    let (sent, expected) = big_body(5 * 1024 * 1024);
    assert!(expected.len() > 5 * 1024 * 1024);
    let r = c
        .message(
            "a@lan.example",
            &["b@remote.example"],
            &format!("{sent}.\r\n"),
        )
        .await;
    let id = queued_id(&r);
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    let (env, content) = &stored[0];
    let (prefix, rest) = content.split_at(content.len() - expected.len());
    assert!(rest == expected, "content differs from what was sent");
    assert!(
        prefix.starts_with("Received: from mail.lan.example"),
        "{prefix}"
    );
    assert!(
        prefix.ends_with(&format!("\r\nMessage-ID: <{id}@{HOST}>\r\n")),
        "{prefix}"
    );
    assert_eq!(env.size, content.len() as u64);
    assert_eq!(
        h.spool_files().len(),
        2,
        "only msg/ and env/: {:?}",
        h.spool_files()
    );
}

#[tokio::test]
async fn refused_messages_leave_no_file_in_the_spool() {
    let h = harness_with(|c| c.smtp.max_message_size = 1024 * 1024);
    let mut c = h.ready(LAN).await;
    let (over, _) = big_body(1024 * 1024 + 1);
    let (under, _) = big_body(900 * 1024);
    let hops = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(51);
    let cases = [
        ("too big", format!("{over}.\r\n"), "552 5.3.4"),
        // The bare LF comes after enough content for some to be on disk.
        (
            "bare LF",
            format!("{under}bare\nline\r\nmore\r\n.\r\n"),
            "554 5.6.0",
        ),
        (
            "line too long",
            format!("{under}{}\r\n.\r\n", "y".repeat(1500)),
            "552 5.3.4",
        ),
        ("loop", format!("{hops}\r\n{under}.\r\n"), "554 5.4.6"),
    ];
    for (name, body, code) in cases {
        let r = c
            .message("a@lan.example", &["b@remote.example"], &body)
            .await;
        assert!(r.starts_with(code), "{name}: {r}");
        assert!(h.spool_files().is_empty(), "{name}: {:?}", h.spool_files());
        assert!(c.cmd("NOOP").await.starts_with("250"), "{name}: in sync");
    }
    assert!(h.server.shared.queue.is_empty());
}

#[tokio::test]
async fn header_section_over_the_memory_limit_is_refused() {
    let h = harness_with(|c| c.smtp.max_message_size = 10 * 1024 * 1024);
    let mut c = h.ready(LAN).await;
    let filler = format!("X-Filler: {}\r\n", "h".repeat(88));
    let headers = filler.repeat(2 * 1024 * 1024 / filler.len() + 1);
    assert!(headers.len() > 2 * 1024 * 1024);
    let r = c
        .message(
            "a@lan.example",
            &["b@remote.example"],
            &format!("Subject: huge\r\n{headers}\r\nbody\r\n.\r\n"),
        )
        .await;
    assert_eq!(r, "552 5.3.4 Message header section exceeds the size limit");
    assert!(h.spool_files().is_empty(), "{:?}", h.spool_files());
    // Just under the limit is fine.
    let headers = filler.repeat((data::MAX_HEADER_SECTION - 100) / filler.len());
    let r = c
        .message(
            "a@lan.example",
            &["b@remote.example"],
            &format!("Subject: big\r\n{headers}\r\nbody\r\n.\r\n"),
        )
        .await;
    queued_id(&r);
    let (_, content) = &h.stored()[0];
    assert!(content.ends_with(&format!("{headers}\r\nbody\r\n")));
}

#[tokio::test]
async fn connection_dropped_mid_data_leaves_nothing_and_queues_nothing() {
    let h = harness_with(|c| c.smtp.max_message_size = 8 * 1024 * 1024);
    let (mut c, task) = h.connect(LAN);
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO mail.lan.example").await.starts_with("250-"));
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let (sent, _) = big_body(1024 * 1024);
    c.send(&sent).await;
    // The content goes to disk while it arrives, not at the end.
    let tmp = h.dir.join("queue").join("tmp");
    let mut on_disk = 0;
    for _ in 0..500 {
        on_disk = std::fs::read_dir(&tmp)
            .expect("list")
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
        if on_disk > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(on_disk > 0, "nothing streamed to tmp/");
    drop(c);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("session ends")
        .expect("session task");
    assert!(h.spool_files().is_empty(), "{:?}", h.spool_files());
    assert!(h.server.shared.queue.is_empty());
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn data_timeout_mid_message_leaves_nothing() {
    let h = harness_with(|c| {
        c.smtp.data_timeout = Duration::from_millis(500);
        c.smtp.max_message_size = 1024 * 1024;
    });
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let (sent, _) = big_body(300 * 1024);
    c.send(&sent).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(h.spool_files().is_empty(), "{:?}", h.spool_files());
    assert!(h.server.shared.queue.is_empty());
}

#[tokio::test]
async fn spool_unusable_at_data_gets_451_4_3_0_before_the_data() {
    let h = harness();
    let mut c = h.ready(LAN).await;
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@remote.example>").await.starts_with("250"));
    let tmp = h.dir.join("queue").join("tmp");
    std::fs::remove_dir(&tmp).expect("empty tmp dir");
    std::fs::write(&tmp, b"not a directory").expect("file");
    assert_eq!(c.cmd("DATA").await, "451 4.3.0 Local error in processing");
    // The transaction is over; a new one can start.
    assert!(c.cmd("MAIL FROM:<a@lan.example>").await.starts_with("250"));
}
