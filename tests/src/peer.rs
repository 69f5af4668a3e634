//! A small SMTP server that can advertise REQUIRETLS (RFC 8689), and a small
//! STARTTLS client to submit with REQUIRETLS.
//!
//! Postfix in Debian 12 cannot advertise REQUIRETLS, so the tests need their own
//! receiving peer for standards.md G2: [`Peer`] listens on
//! `mx-requiretls.example.test` ([`REQUIRETLS_PEER_IP`]:25, MX of
//! `requiretls.example.test` in the DNSSEC-signed test zone) with the test CA's
//! `mx-requiretls` certificate. It speaks enough ESMTP for a relay: EHLO/HELO,
//! STARTTLS, MAIL/RCPT/DATA (dot-unstuffing), RSET, NOOP, QUIT, and records every
//! transaction (MAIL FROM with its parameters, RCPTs, content, whether TLS was on)
//! and every command line for the test to inspect. Whether it advertises
//! REQUIRETLS after STARTTLS is configurable; it never advertises it before
//! STARTTLS (RFC 8689 section 4.1) and refuses a REQUIRETLS it did not offer.
//!
//! The address is fixed, so a [`FileLock`] serialises its users across test
//! processes, like [`Infra::lan_relay_lock`].
//!
//! [`submit_starttls`] is the client side: EHLO, STARTTLS, EHLO again, one
//! transaction with arbitrary MAIL FROM parameters (swaks 20201014 cannot send
//! REQUIRETLS). It accepts any server certificate (the relay's own is
//! self-signed in tests) but still checks the handshake signatures.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::infra::{FileLock, Infra, REQUIRETLS_PEER_IP};
use crate::smtp::{Reply, Transaction};

/// The peer's host name (its certificate's name).
pub const PEER_HOSTNAME: &str = "mx-requiretls.example.test";

/// Longest command or data line the peer accepts (RFC 5321 section 4.5.3.1.6 says
/// 1000 octets for data; some slack for bad clients).
const MAX_LINE: usize = 64 * 1024;
/// Largest message the peer stores.
const MAX_DATA: usize = 32 * 1024 * 1024;

/// One mail transaction the peer accepted (after the final dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTransaction {
    /// The EHLO/HELO name the client gave.
    pub helo: String,
    /// Everything after `MAIL FROM:` as sent, e.g. `<a@b> BODY=8BITMIME REQUIRETLS`.
    pub mail_from: String,
    /// The forward-paths of the accepted RCPT commands, without angle brackets.
    pub rcpts: Vec<String>,
    /// The message, dot-unstuffed, CRLF line endings, without the final dot.
    pub data: Vec<u8>,
    /// The transaction ran inside TLS.
    pub tls: bool,
}

impl PeerTransaction {
    /// Whether MAIL FROM carried the REQUIRETLS parameter (RFC 8689 section 4.2.1).
    pub fn requiretls(&self) -> bool {
        self.mail_from
            .split_whitespace()
            .skip(1)
            .any(|p| p.eq_ignore_ascii_case("REQUIRETLS"))
    }

    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// What the peer saw: commands in order (with whether TLS was on) and the
/// accepted transactions.
#[derive(Debug, Default)]
struct Seen {
    commands: Vec<(bool, String)>,
    transactions: Vec<PeerTransaction>,
}

/// The running REQUIRETLS test peer. Stops (and releases the address) on drop.
pub struct Peer {
    seen: Arc<Mutex<Seen>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _lock: FileLock,
}

impl Peer {
    /// Start the peer on [`REQUIRETLS_PEER_IP`]:25; `requiretls` says whether it
    /// advertises REQUIRETLS after STARTTLS. Waits for the address lock first.
    pub fn start(requiretls: bool) -> Result<Peer> {
        let infra = Infra::get();
        let lock = FileLock::acquire(&infra.state_dir.join("requiretls-peer.lock"))?;
        let tls = Arc::new(server_config(&infra.certs())?);
        let addr: SocketAddr = format!("{REQUIRETLS_PEER_IP}:25").parse()?;
        // Bind here, so a failure is the caller's error and not a thread's panic.
        let sock = socket2_listener(addr)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = {
            let seen = seen.clone();
            std::thread::Builder::new()
                .name("requiretls-peer".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("peer runtime");
                    rt.block_on(serve(sock, tls, requiretls, seen, rx));
                })?
        };
        Ok(Peer {
            seen,
            shutdown: Some(tx),
            thread: Some(thread),
            _lock: lock,
        })
    }

    /// The transactions accepted so far.
    pub fn transactions(&self) -> Vec<PeerTransaction> {
        self.seen.lock().expect("peer state").transactions.clone()
    }

    /// Every command line received so far (DATA content excluded), with whether
    /// TLS was on.
    pub fn commands(&self) -> Vec<(bool, String)> {
        self.seen.lock().expect("peer state").commands.clone()
    }

    /// Wait for an accepted transaction whose content contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<PeerTransaction> {
        let start = Instant::now();
        loop {
            if let Some(t) = self
                .transactions()
                .into_iter()
                .find(|t| t.data_text().contains(needle))
            {
                return Ok(t);
            }
            if start.elapsed() > timeout {
                bail!(
                    "no transaction containing {needle:?} at the REQUIRETLS peer within {timeout:?}; commands seen: {:?}",
                    self.commands()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listening socket with SO_REUSEADDR (a previous test's connections may still
/// be in TIME_WAIT on the fixed address).
fn socket2_listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let std_listener = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.bind(addr)?;
        let l = sock.listen(64)?;
        l.into_std()
    });
    std_listener.with_context(|| format!("bind the REQUIRETLS peer on {addr}"))
}

fn server_config(certs: &Path) -> Result<rustls::ServerConfig> {
    let chain_file = certs.join("mx-requiretls-chain.pem");
    let key_file = certs.join("mx-requiretls.key");
    let chain = CertificateDer::pem_file_iter(&chain_file)
        .with_context(|| format!("read {}", chain_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", chain_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("read {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(cfg)
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    requiretls: bool,
    seen: Arc<Mutex<Seen>>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = connection(stream, acceptor, requiretls, seen).await;
                });
            }
        }
    }
}

/// One client connection: a plaintext session, and after STARTTLS a TLS one.
async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    requiretls: bool,
    seen: Arc<Mutex<Seen>>,
) -> Result<()> {
    let mut io = BufReader::new(stream);
    io.get_mut()
        .write_all(format!("220 {PEER_HOSTNAME} ESMTP qrelay test peer\r\n").as_bytes())
        .await?;
    let Some(io) = session(io, false, requiretls, &seen).await? else {
        return Ok(());
    };
    // RFC 3207 section 4.2: anything the client pipelined after STARTTLS is discarded.
    let tls = acceptor.accept(io.into_inner()).await?;
    session(BufReader::new(tls), true, requiretls, &seen).await?;
    Ok(())
}

/// The state of a transaction in progress.
#[derive(Default)]
struct Tx {
    mail_from: Option<String>,
    rcpts: Vec<String>,
}

/// Serve commands until QUIT or EOF (`None`), or STARTTLS (`Some(io)` for the
/// upgrade).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: BufReader<S>,
    tls: bool,
    requiretls: bool,
    seen: &Mutex<Seen>,
) -> Result<Option<BufReader<S>>> {
    let mut helo: Option<String> = None;
    let mut tx = Tx::default();
    loop {
        let Some(line) = read_line(&mut io).await? else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        seen.lock()
            .expect("peer state")
            .commands
            .push((tls, line.clone()));
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let reply: String = match verb.as_str() {
            "EHLO" if !arg.is_empty() => {
                helo = Some(arg.clone());
                tx = Tx::default();
                let mut ext = vec![
                    PEER_HOSTNAME.to_string(),
                    "PIPELINING".into(),
                    "SIZE 33554432".into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "DSN".into(),
                ];
                if !tls {
                    ext.push("STARTTLS".into());
                } else if requiretls {
                    // RFC 8689 section 4.1: only over TLS.
                    ext.push("REQUIRETLS".into());
                }
                let n = ext.len();
                ext.iter()
                    .enumerate()
                    .map(|(i, e)| format!("250{}{e}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect()
            }
            "HELO" if !arg.is_empty() => {
                helo = Some(arg.clone());
                tx = Tx::default();
                format!("250 {PEER_HOSTNAME}\r\n")
            }
            "EHLO" | "HELO" => "501 5.5.4 Syntax: EHLO hostname\r\n".into(),
            "STARTTLS" if tls => "503 5.5.1 TLS already active\r\n".into(),
            "STARTTLS" => {
                io.get_mut()
                    .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                    .await?;
                return Ok(Some(io));
            }
            "MAIL" => mail(&arg, helo.is_some(), tls, requiretls, &mut tx),
            "RCPT" => match (&tx.mail_from, strip_prefix_ci(&arg, "TO:")) {
                (None, _) => "503 5.5.1 Error: need MAIL command\r\n".into(),
                (_, None) => "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into(),
                (Some(_), Some(rest)) => {
                    let path = rest.split_whitespace().next().unwrap_or("");
                    tx.rcpts
                        .push(path.trim_matches(|c| c == '<' || c == '>').to_string());
                    "250 2.1.5 Ok\r\n".into()
                }
            },
            "DATA" if tx.rcpts.is_empty() => "503 5.5.1 Error: need RCPT command\r\n".into(),
            "DATA" => {
                io.get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let data = read_data(&mut io).await?;
                let t = PeerTransaction {
                    helo: helo.clone().unwrap_or_default(),
                    mail_from: tx.mail_from.take().unwrap_or_default(),
                    rcpts: std::mem::take(&mut tx.rcpts),
                    data,
                    tls,
                };
                let mut s = seen.lock().expect("peer state");
                s.transactions.push(t);
                format!("250 2.0.0 Ok: queued as PEER{}\r\n", s.transactions.len())
            }
            "RSET" => {
                tx = Tx::default();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                let _ = io.get_mut().shutdown().await;
                return Ok(None);
            }
            _ => "502 5.5.2 Error: command not recognized\r\n".into(),
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// MAIL FROM: record the whole argument; refuse REQUIRETLS unless it was offered
/// (RFC 8689 section 4.1: only advertised, only in TLS).
fn mail(arg: &str, greeted: bool, tls: bool, requiretls: bool, tx: &mut Tx) -> String {
    if !greeted {
        return "503 5.5.1 Error: send HELO/EHLO first\r\n".into();
    }
    if tx.mail_from.is_some() {
        return "503 5.5.1 Error: nested MAIL command\r\n".into();
    }
    let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into();
    };
    let wants = rest
        .split_whitespace()
        .skip(1)
        .any(|p| p.eq_ignore_ascii_case("REQUIRETLS"));
    if wants && !(tls && requiretls) {
        return "555 5.5.4 Unsupported option: REQUIRETLS\r\n".into();
    }
    tx.mail_from = Some(rest.trim().to_string());
    "250 2.1.0 Ok\r\n".into()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s[prefix.len()..].trim_start())
}

/// One line including its LF, `None` at EOF. A line over [`MAX_LINE`] ends the
/// connection.
async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *io)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        bail!("line too long or connection closed mid-line");
    }
    Ok(Some(line))
}

/// The message after DATA up to the final dot, dot-unstuffed (RFC 5321 section
/// 4.5.2).
async fn read_data<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let Some(line) = read_line(io).await? else {
            bail!("connection closed in DATA");
        };
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() > MAX_DATA {
            bail!("message too large for the test peer");
        }
        data.extend_from_slice(line);
    }
}

// ------------------------------------------------------------------ the client

/// What [`submit_starttls`] saw.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The EHLO reply before STARTTLS.
    pub ehlo_plain: Reply,
    /// The reply to STARTTLS.
    pub starttls: Reply,
    /// The EHLO reply inside TLS.
    pub ehlo_tls: Reply,
    /// The transaction inside TLS.
    pub tx: Transaction,
}

impl Submission {
    /// Whether an EHLO reply lists `keyword` as an extension.
    pub fn offers(ehlo: &Reply, keyword: &str) -> bool {
        ehlo.lines.iter().skip(1).any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// Connect to `addr`, EHLO, STARTTLS, EHLO, then one transaction: `MAIL
/// FROM:<from>` followed by `mail_params` (e.g. `"REQUIRETLS"`), the RCPTs, and
/// `message` (dot-stuffed here). Blocking; call from plain `#[test]` functions.
pub fn submit_starttls(
    addr: SocketAddr,
    from: &str,
    mail_params: &str,
    rcpts: &[&str],
    message: &str,
) -> Result<Submission> {
    crate::smtp::block_on(async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let mut io = BufReader::new(tcp);
        let greeting = read_reply(&mut io).await?;
        if greeting.code != 220 {
            bail!("greeting: {greeting}");
        }
        let ehlo_plain = command(&mut io, "EHLO client.lan.test").await?;
        let starttls = command(&mut io, "STARTTLS").await?;
        if starttls.code != 220 {
            bail!("STARTTLS refused: {starttls}");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = ServerName::try_from("qrelay.lan.test")?.to_owned();
        let tls = connector
            .connect(name, io.into_inner())
            .await
            .context("TLS handshake with the relay")?;
        let mut io = BufReader::new(tls);
        let ehlo_tls = command(&mut io, "EHLO client.lan.test").await?;
        let params = if mail_params.trim().is_empty() {
            String::new()
        } else {
            format!(" {}", mail_params.trim())
        };
        let mail = command(&mut io, &format!("MAIL FROM:<{from}>{params}")).await?;
        let mut rcpt = Vec::new();
        if mail.is_positive() {
            for r in rcpts {
                rcpt.push(command(&mut io, &format!("RCPT TO:<{r}>")).await?);
            }
        }
        let mut tx = Transaction {
            mail,
            rcpt,
            data: None,
            end: None,
        };
        if tx.mail.is_positive() && tx.rcpt.iter().any(|r| r.is_positive()) {
            let d = command(&mut io, "DATA").await?;
            if d.code == 354 {
                let mut buf = String::with_capacity(message.len() + 8);
                for line in message.split_inclusive('\n') {
                    if line.starts_with('.') {
                        buf.push('.');
                    }
                    buf.push_str(line);
                }
                if !buf.ends_with("\r\n") {
                    buf.push_str("\r\n");
                }
                buf.push_str(".\r\n");
                io.get_mut().write_all(buf.as_bytes()).await?;
                tx.end = Some(read_reply(&mut io).await?);
            }
            tx.data = Some(d);
        }
        let _ = command(&mut io, "QUIT").await;
        Ok(Submission {
            ehlo_plain,
            starttls,
            ehlo_tls,
            tx,
        })
    })
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    line: &str,
) -> Result<Reply> {
    io.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await?;
    io.get_mut().flush().await?;
    read_reply(io)
        .await
        .with_context(|| format!("reply to {line:?}"))
}

async fn read_reply<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Result<Reply> {
    let mut lines = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), read_line(io))
            .await
            .context("reply timed out")??
            .context("connection closed")?;
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.len() < 3 || !line.is_char_boundary(3) {
            bail!("malformed reply line {line:?}");
        }
        let code: u16 = line[..3].parse().context("reply code")?;
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line.get(4..).unwrap_or("").to_string());
        if !more {
            return Ok(Reply { code, lines });
        }
    }
}

/// A certificate verifier for the test client only: any certificate is accepted
/// (the relay under test presents a self-signed one), but the handshake signatures
/// are still verified with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new() -> Self {
        AnyCertificate {
            algs: rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
