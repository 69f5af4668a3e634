//! One SMTP session: the command state machine (RFC 5321 section 4.1, section 3.3
//! for the transaction) and its extensions. I/O is generic so the same code runs
//! over TCP, over TLS after STARTTLS, and over in-memory pipes in the tests.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::address::{self, Path, PathError};
use super::auth::{self, SaslError};
use super::data::{self, DataStream, Fed, TlsInfo, Trace};
use super::io::{Conn, IoError, Line};
use super::Shared;
use crate::classify::HeaderFindings;
use crate::config::{ClassifyConfig, SmtpConfig};
use crate::queue::{IncomingMessage, SubmitError};
use crate::spool::record::{
    now_secs, BodyType, ClientInfo, Envelope, Notify, QueueId, Recipient, Ret, RiskClass,
    RECORD_VERSION,
};

/// What the session loop wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Close the connection (replies already queued are sent first).
    Close,
    /// `220` to STARTTLS was sent: run the TLS handshake on the raw stream.
    StartTls,
}

/// The mail transaction between MAIL and the end of DATA (RFC 5321 section 3.3).
struct Transaction {
    id: QueueId,
    sender: String,
    body: BodyType,
    smtputf8: bool,
    requiretls: bool,
    ret: Option<Ret>,
    envid: Option<String>,
    recipients: Vec<Recipient>,
}

/// Where the DATA phase stores the message while it arrives.
struct Sink {
    /// The spool file being written; None once refused or failed.
    msg: Option<IncomingMessage>,
    /// The spool failed: the rest of the data is read and dropped, and the client
    /// is told at the end.
    failed: Option<SubmitError>,
    /// The message's Message-ID, found or added.
    message_id: Option<String>,
    /// What the header section says about the message's class (A1).
    findings: HeaderFindings,
}

impl Sink {
    async fn write(&mut self, bytes: &[u8]) {
        let Some(msg) = self.msg.as_mut() else {
            return;
        };
        if let Err(e) = msg.write(bytes).await {
            tracing::warn!(queue_id = %msg.id(), error = %e, "spool write failed; reading the data to its end");
            self.failed = Some(e);
            self.discard().await;
        }
    }

    /// The header section is complete: store our Received field, a Message-ID
    /// field if it has none (RFC 5322 section 3.6.4: a message SHOULD have one; we
    /// add it so the evidence and the recipient can name the message), and the
    /// header section itself.
    async fn head(
        &mut self,
        received: &str,
        added_id: &str,
        head: Vec<u8>,
        classify: &ClassifyConfig,
    ) {
        // A1: the classification marks (subject tag, Sensitivity, Purview label,
        // TLS-Required) are read here; a subject tag is removed before storing, so
        // it never leaves the gateway.
        let (head, findings) = crate::classify::scan_header(&head, classify);
        self.findings = findings;
        let mut prefix = received.as_bytes().to_vec();
        self.message_id = match data::find_message_id(&head) {
            Some(id) if id.is_empty() => None,
            Some(id) => Some(id),
            None => {
                prefix.extend_from_slice(format!("Message-ID: {added_id}\r\n").as_bytes());
                Some(added_id.to_string())
            }
        };
        self.write(&prefix).await;
        self.write(&head).await;
    }

    async fn discard(&mut self) {
        if let Some(msg) = self.msg.take() {
            msg.discard().await;
        }
    }
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// The client's address is in `smtp.relay_networks`.
    relay_ip: bool,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    auth_user: Option<String>,
    auth_failures: u32,
    errors: u32,
    tx: Option<Transaction>,
    shutdown: watch::Receiver<bool>,
    /// Messages accepted in this session.
    pub accepted: u32,
}

/// Case-insensitive prefix strip (`FROM:`, `TO:`).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A HELO/EHLO argument we are willing to write into a Received header: a domain
/// or address literal, no spaces, no characters that could break the header.
fn valid_helo(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c))
}

/// How an address error is answered; `sender` selects X.1.7 (sender) vs X.1.3
/// (recipient) per RFC 3463.
fn path_error_reply(e: &PathError, sender: bool) -> String {
    let (sub, what) = if sender {
        ("7", "sender")
    } else {
        ("3", "recipient")
    };
    match e {
        PathError::Syntax(m) => format!("501 5.1.{sub} Bad {what} address syntax: {m}"),
        PathError::Hostile(m) => format!("553 5.1.{sub} {what} address rejected: {m}"),
        // RFC 6531 section 3.7.4.1
        PathError::NeedsUtf8 => {
            "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter".to_string()
        }
    }
}

/// The result of reading one SASL response line.
enum SaslLine {
    Text(String),
    /// The client sent `*` (RFC 4954 section 4).
    Cancelled,
    Flow(Flow),
}

impl Session {
    pub fn new(shared: Arc<Shared>, ip: IpAddr, shutdown: watch::Receiver<bool>) -> Session {
        let relay_ip = shared
            .config
            .smtp
            .relay_networks
            .iter()
            .any(|n| n.contains(&ip));
        Session {
            shared,
            ip,
            relay_ip,
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            auth_failures: 0,
            errors: 0,
            tx: None,
            shutdown,
            accepted: 0,
        }
    }

    fn cfg(&self) -> &SmtpConfig {
        &self.shared.config.smtp
    }

    fn host(&self) -> &str {
        &self.shared.hostname
    }

    /// STARTTLS completed: RFC 3207 section 4.2 — forget everything learned from
    /// the client before the handshake; a new EHLO is required.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
    }

    /// Read and execute commands until the session ends or STARTTLS is accepted.
    pub async fn run<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        let mut line = Vec::new();
        loop {
            let deadline = Instant::now() + self.cfg().command_timeout;
            let max = self.cfg().max_line_length;
            let read = conn
                .read_line(&mut line, max, deadline, Some(&mut self.shutdown))
                .await;
            let flow = match read {
                Ok(Line::Complete) => self.command(conn, &line).await,
                // RFC 5321 section 4.5.3.1.4 / 4.2.2
                Ok(Line::TooLong { .. }) => self.fail(conn, "500 5.5.2 Error: line too long"),
                Err(e) => self.read_failed(conn, e),
            };
            if flow != Flow::Continue {
                return flow;
            }
        }
    }

    /// An error reply; too many of them end the session (a client that is not
    /// speaking SMTP, or probing).
    fn fail<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>, reply: &str) -> Flow {
        conn.push(reply);
        self.errors += 1;
        if self.errors >= self.shared.tuning.max_errors {
            tracing::info!(client = %self.ip, errors = self.errors, "too many errors, closing");
            conn.push(&format!("421 4.7.0 {} Error: too many errors", self.host()));
            return Flow::Close;
        }
        Flow::Continue
    }

    fn read_failed<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        e: IoError,
    ) -> Flow {
        let queue_id = self.tx.as_ref().map(|t| t.id.to_string());
        match e {
            IoError::Eof => {
                tracing::debug!(client = %self.ip, queue_id, "client closed the connection");
            }
            IoError::Timeout => {
                tracing::info!(client = %self.ip, queue_id, "timeout, closing");
                conn.push(&format!(
                    "421 4.4.2 {} Error: timeout exceeded",
                    self.host()
                ));
            }
            IoError::Shutdown => {
                conn.push(&format!("421 4.3.2 {} Service shutting down", self.host()));
            }
            IoError::Io(e) => {
                tracing::info!(client = %self.ip, queue_id, error = %e, "connection error");
            }
        }
        Flow::Close
    }

    async fn command<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        raw: &[u8],
    ) -> Flow {
        let body = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(raw);
        if body.iter().any(|&b| b == b'\r' || b == 0) {
            return self.fail(conn, "500 5.5.2 Error: bad character in command");
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return self.fail(conn, "500 5.5.2 Error: command is not UTF-8");
        };
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(conn, arg, true),
            "HELO" => self.hello(conn, arg, false),
            "MAIL" => self.mail(conn, arg).await,
            "RCPT" => self.rcpt(conn, arg),
            "DATA" => self.data(conn, arg).await,
            "RSET" => {
                if !arg.trim().is_empty() {
                    return self.fail(conn, "501 5.5.4 Syntax: RSET");
                }
                self.tx = None;
                conn.push("250 2.0.0 Ok");
                Flow::Continue
            }
            "NOOP" => {
                conn.push("250 2.0.0 Ok");
                Flow::Continue
            }
            "QUIT" => {
                conn.push(&format!("221 2.0.0 {} Bye", self.host()));
                Flow::Close
            }
            "HELP" => {
                conn.push_multi(
                    "214",
                    &[
                        "2.0.0 qrelay mail gateway. Commands:".into(),
                        "2.0.0 EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT"
                            .into(),
                        "2.0.0 See RFC 5321".into(),
                    ],
                );
                Flow::Continue
            }
            // RFC 5321 section 3.5.3: 252 when we will not verify but will try.
            "VRFY" => {
                conn.push(
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
                Flow::Continue
            }
            "STARTTLS" => self.starttls(conn, arg).await,
            "AUTH" => self.auth(conn, arg).await,
            // BDAT is not offered (no CHUNKING); the others are not for this box.
            "EXPN" | "BDAT" | "ETRN" | "TURN" | "ATRN" | "BURL" | "VERB" => {
                self.fail(conn, "502 5.5.1 Error: command not implemented")
            }
            _ => self.fail(conn, "500 5.5.2 Error: command not recognized"),
        }
    }

    fn hello<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        arg: &str,
        esmtp: bool,
    ) -> Flow {
        let name = arg.trim();
        if !valid_helo(name) {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            return self.fail(conn, &format!("501 5.5.4 Syntax: {verb} hostname"));
        }
        // RFC 5321 section 4.1.4: EHLO/HELO resets the transaction.
        self.tx = None;
        self.helo = Some(name.to_string());
        self.esmtp = esmtp;
        if !esmtp {
            conn.push(&format!("250 {}", self.host()));
            return Flow::Continue;
        }
        let mut lines = vec![
            self.host().to_string(),
            "PIPELINING".into(),                             // RFC 2920
            format!("SIZE {}", self.cfg().max_message_size), // RFC 1870
            "8BITMIME".into(),                               // RFC 6152
            "SMTPUTF8".into(),                               // RFC 6531
            "ENHANCEDSTATUSCODES".into(),                    // RFC 2034
            "DSN".into(),                                    // RFC 3461
        ];
        if self.tls.is_none() {
            lines.push("STARTTLS".into()); // RFC 3207
        } else {
            // RFC 8689 section 4 / standards.md G1: only on a TLS session.
            lines.push("REQUIRETLS".into());
            // RFC 4954 section 4: cleartext mechanisms only under TLS.
            if !self.cfg().users.is_empty() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
        }
        conn.push_multi("250", &lines);
        Flow::Continue
    }

    async fn mail<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        arg: &str,
    ) -> Flow {
        if self.helo.is_none() {
            return self.fail(conn, "503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.fail(conn, "503 5.5.1 Error: nested MAIL command");
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.fail(conn, "501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let (inner, param_text) = match address::split_path(rest) {
            Ok(v) => v,
            Err(e) => return self.fail(conn, &path_error_reply(&e, true)),
        };
        let params = match address::parse_params(param_text) {
            Ok(p) => p,
            Err(e) => return self.fail(conn, &format!("501 5.5.4 {e}")),
        };
        if !params.is_empty() && !self.esmtp {
            return self.fail(conn, "555 5.5.4 MAIL parameters need EHLO");
        }
        let mut size = 0u64;
        let mut body = BodyType::SevenBit;
        let mut smtputf8 = false;
        let mut requiretls = false;
        let mut ret = None;
        let mut envid = None;
        for p in &params {
            let kw = p.keyword.as_str();
            let value = p.value.map(|v| v.to_ascii_uppercase());
            match (kw, value.as_deref()) {
                // RFC 1870 section 6
                ("SIZE", Some(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                    size = v.parse().unwrap_or(u64::MAX);
                    if size > self.cfg().max_message_size {
                        tracing::info!(client = %self.ip, size, "rejected: declared size over the limit");
                        return self.fail(
                            conn,
                            "552 5.3.4 Message size exceeds fixed maximum message size",
                        );
                    }
                }
                // RFC 6152; BINARYMIME needs CHUNKING (RFC 3030), which is not offered.
                ("BODY", Some("7BIT")) => body = BodyType::SevenBit,
                ("BODY", Some("8BITMIME")) => body = BodyType::EightBitMime,
                ("BODY", Some("BINARYMIME")) => {
                    return self.fail(
                        conn,
                        "555 5.5.4 BODY=BINARYMIME needs CHUNKING, not offered",
                    )
                }
                ("SMTPUTF8", None) => smtputf8 = true,
                // RFC 3461 section 4.3
                ("RET", Some("FULL")) => ret = Some(Ret::Full),
                ("RET", Some("HDRS")) => ret = Some(Ret::Headers),
                ("ENVID", Some(_)) => match p.value.map(address::parse_envid) {
                    Some(Ok(id)) => envid = Some(id),
                    Some(Err(e)) => return self.fail(conn, &format!("501 5.5.4 {e}")),
                    None => {}
                },
                // RFC 8689 section 4.1: REQUIRETLS is only offered over TLS.
                ("REQUIRETLS", None) => {
                    if self.tls.is_none() {
                        return self.fail(
                            conn,
                            "530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first",
                        );
                    }
                    requiretls = true;
                }
                // RFC 4954 section 5: accepted; we do not relay the identity further.
                ("AUTH", Some(_)) => {}
                ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID" | "REQUIRETLS" | "AUTH", _) => {
                    return self.fail(conn, &format!("501 5.5.4 Bad {kw} parameter"));
                }
                // RFC 5321 section 4.1.1.11
                _ => return self.fail(conn, &format!("555 5.5.4 Unsupported parameter {kw}")),
            }
        }
        let sender = match address::parse_path(inner, smtputf8) {
            Ok(Path::Null) => String::new(),
            Ok(Path::Mailbox(m)) => m.address(),
            Ok(Path::Postmaster) => {
                return self.fail(conn, "501 5.1.7 Bad sender address syntax: needs a domain")
            }
            Err(e) => {
                tracing::info!(client = %self.ip, reason = %e, "rejected sender address");
                return self.fail(conn, &path_error_reply(&e, true));
            }
        };
        // Disk space is checked before the client sends the data.
        match self.shared.queue.check_room(size).await {
            Ok(()) => {}
            Err(SubmitError::DiskFull) => {
                tracing::warn!(client = %self.ip, size, "rejected MAIL: spool disk nearly full");
                conn.push("452 4.3.1 Insufficient system storage");
                return Flow::Continue;
            }
            Err(SubmitError::Io(e)) => {
                tracing::error!(client = %self.ip, error = %e, "cannot check spool space");
                conn.push("451 4.3.0 Local error in processing");
                return Flow::Continue;
            }
        }
        let id = QueueId::generate();
        tracing::debug!(queue_id = %id, client = %self.ip, from = %sender, "MAIL accepted");
        self.tx = Some(Transaction {
            id,
            sender,
            body,
            smtputf8,
            requiretls,
            ret,
            envid,
            recipients: Vec::new(),
        });
        conn.push("250 2.1.0 Ok");
        Flow::Continue
    }

    fn rcpt<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>, arg: &str) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.fail(conn, "503 5.5.1 Error: need MAIL command");
        };
        let queue_id = tx.id.clone();
        let utf8 = tx.smtputf8;
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.fail(conn, "501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let (inner, param_text) = match address::split_path(rest) {
            Ok(v) => v,
            Err(e) => return self.fail(conn, &path_error_reply(&e, false)),
        };
        let params = match address::parse_params(param_text) {
            Ok(p) => p,
            Err(e) => return self.fail(conn, &format!("501 5.5.4 {e}")),
        };
        if !params.is_empty() && !self.esmtp {
            return self.fail(conn, "555 5.5.4 RCPT parameters need EHLO");
        }
        let mut notify = None;
        let mut orcpt = None;
        for p in &params {
            match (p.keyword.as_str(), p.value) {
                // RFC 3461 section 4.1
                ("NOTIFY", Some(v)) => match parse_notify(v) {
                    Some(n) => notify = Some(n),
                    None => return self.fail(conn, "501 5.5.4 Bad NOTIFY parameter"),
                },
                // RFC 3461 section 4.2
                ("ORCPT", Some(v)) => match address::parse_orcpt(v) {
                    Ok(o) => orcpt = Some(o),
                    Err(e) => return self.fail(conn, &format!("501 5.5.4 {e}")),
                },
                ("NOTIFY" | "ORCPT", None) => {
                    return self.fail(conn, &format!("501 5.5.4 Bad {} parameter", p.keyword))
                }
                (kw, _) => {
                    return self.fail(conn, &format!("555 5.5.4 Unsupported parameter {kw}"))
                }
            }
        }
        let mailbox = match address::parse_path(inner, utf8) {
            Ok(Path::Mailbox(m)) => m,
            Ok(Path::Null) => {
                return self.fail(conn, "501 5.1.3 Bad recipient address syntax: empty")
            }
            Ok(Path::Postmaster) => {
                return self.fail(
                    conn,
                    "550 5.1.1 <postmaster>: this gateway has no local mailboxes",
                )
            }
            Err(e) => {
                tracing::info!(queue_id = %queue_id, client = %self.ip, reason = %e, "rejected recipient address");
                return self.fail(conn, &path_error_reply(&e, false));
            }
        };
        if mailbox.literal {
            // Transport security is decided per recipient domain (DNSSEC, DANE,
            // MTA-STS); an address literal has none of that.
            return self.fail(
                conn,
                "553 5.1.3 Address literals are not accepted as recipients: a domain is needed",
            );
        }
        if mailbox.domain.eq_ignore_ascii_case(self.host()) {
            // Relaying to ourselves would loop (RFC 5321 section 6.3).
            return self.fail(conn, "550 5.1.1 This gateway has no local mailboxes");
        }
        let address = mailbox.address();
        // Never an open relay: this box has no local mailboxes, so every recipient
        // is a relay, allowed only for the LAN servers or authenticated users.
        if !(self.relay_ip || self.auth_user.is_some()) {
            tracing::info!(queue_id = %queue_id, client = %self.ip, to = %address, "rejected: relaying denied");
            return self.fail(conn, "550 5.7.1 Relaying denied");
        }
        let max = self.cfg().max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return Flow::Continue;
        };
        // The same recipient twice is delivered once.
        if tx.recipients.iter().any(|r| r.address == address) {
            conn.push("250 2.1.5 Ok");
            return Flow::Continue;
        }
        // RFC 5321 section 4.5.3.1.10
        if tx.recipients.len() >= max {
            tracing::info!(queue_id = %queue_id, client = %self.ip, max, "too many recipients");
            conn.push("452 4.5.3 Too many recipients");
            return Flow::Continue;
        }
        tx.recipients
            .push(Recipient::new(address, orcpt, notify, now_secs()));
        conn.push("250 2.1.5 Ok");
        Flow::Continue
    }

    async fn data<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        arg: &str,
    ) -> Flow {
        if !arg.trim().is_empty() {
            return self.fail(conn, "501 5.5.4 Syntax: DATA");
        }
        let Some(tx) = self.tx.as_ref() else {
            return self.fail(conn, "503 5.5.1 Error: need MAIL command");
        };
        if tx.recipients.is_empty() {
            // RFC 2920 section 3.1: 554 when no recipient was accepted.
            return self.fail(conn, "554 5.5.1 Error: no valid recipients");
        }
        let id = tx.id.clone();
        let received = self.received_header(tx, now_secs());
        let msg = match self.shared.queue.begin(id.clone()).await {
            Ok(msg) => msg,
            Err(e) => {
                // Nothing to store into: say so before the client sends the data.
                self.tx = None;
                self.spool_refused(conn, &id, &e);
                return Flow::Continue;
            }
        };
        let mut sink = Sink {
            msg: Some(msg),
            failed: None,
            message_id: None,
            findings: HeaderFindings::default(),
        };
        let config = self.shared.config.clone();
        let classify = &config.classify;
        conn.push("354 End data with <CR><LF>.<CR><LF>");
        let deadline = Instant::now() + self.cfg().data_timeout;
        let max_line = self.cfg().max_line_length;
        let mut stream = DataStream::new(self.cfg().max_message_size, data::MAX_HEADER_SECTION);
        let added_id = format!("<{}@{}>", id, self.host());
        let mut line = Vec::new();
        loop {
            match conn.read_line(&mut line, max_line, deadline, None).await {
                Ok(Line::Complete) => match stream.line(&line) {
                    Fed::Held => {}
                    Fed::Body(body) => sink.write(body).await,
                    Fed::HeaderEnd(head, body) => {
                        sink.head(&received, &added_id, head, classify).await;
                        sink.write(body).await;
                    }
                    Fed::End(head) => {
                        if let Some(head) = head {
                            sink.head(&received, &added_id, head, classify).await;
                        }
                        break;
                    }
                },
                Ok(Line::TooLong { crlf }) => stream.too_long_line(crlf),
                Err(e) => {
                    // Never acknowledged: nothing may stay behind.
                    sink.discard().await;
                    let flow = self.read_failed(conn, e);
                    self.tx = None;
                    return flow;
                }
            }
            if stream.refused() {
                // Refused whatever follows: give the disk space back now.
                sink.discard().await;
            }
        }
        let Some(tx) = self.tx.take() else {
            sink.discard().await;
            return Flow::Continue;
        };
        if let Err(rejection) = stream.finish() {
            sink.discard().await;
            tracing::info!(queue_id = %tx.id, client = %self.ip, reason = rejection.reason(), "message rejected");
            conn.push(&rejection.to_string());
            return Flow::Continue;
        }
        match sink.msg.take() {
            Some(msg) => {
                let findings = std::mem::take(&mut sink.findings);
                self.queue_message(conn, tx, msg, sink.message_id, findings)
                    .await
            }
            None => {
                let e = sink.failed.take().unwrap_or_else(|| {
                    SubmitError::Io("message content missing after the end of data".into())
                });
                self.spool_refused(conn, &tx.id, &e);
                Flow::Continue
            }
        }
    }

    /// Our Received field for the message of `tx` (RFC 5321 section 4.4).
    fn received_header(&self, tx: &Transaction, now: u64) -> String {
        let helo = self.helo.as_deref().unwrap_or_default();
        let protocol = data::protocol_keyword(
            self.esmtp,
            self.tls.is_some(),
            self.auth_user.is_some(),
            tx.smtputf8,
        );
        let single = (tx.recipients.len() == 1).then(|| tx.recipients[0].address.as_str());
        data::received_header(&Trace {
            helo,
            ip: self.ip,
            hostname: self.host(),
            protocol: &protocol,
            tls: self.tls.as_ref(),
            id: &tx.id,
            for_rcpt: single,
            timestamp: now,
        })
    }

    /// The answer when the spool cannot take the message.
    fn spool_refused<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<T>,
        id: &QueueId,
        e: &SubmitError,
    ) {
        match e {
            SubmitError::DiskFull => {
                tracing::warn!(queue_id = %id, client = %self.ip, "message refused: spool disk nearly full");
                conn.push("452 4.3.1 Insufficient system storage");
            }
            SubmitError::Io(e) => {
                tracing::error!(queue_id = %id, client = %self.ip, error = %e, "message refused: spool error");
                conn.push("451 4.3.0 Local error in processing");
            }
        }
    }

    /// Commit the streamed message to the queue; the 250 goes out only once the
    /// queue says content and envelope are on disk.
    async fn queue_message<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        tx: Transaction,
        msg: IncomingMessage,
        message_id: Option<String>,
        findings: HeaderFindings,
    ) -> Flow {
        let id = tx.id.clone();
        let cfg = &self.shared.config.classify;
        let class = crate::classify::classify(cfg, &tx.sender, tx.requiretls, &findings);
        // G3: `TLS-Required: No` only where the admin allows it; REQUIRETLS wins
        // over it (RFC 8689 section 4.2.2); the class limit is applied per recipient
        // when the message is delivered (a recipient-domain rule may raise it).
        let tls_optional = findings.tls_required_no
            && cfg.honour_tls_required_no
            && !tx.requiretls
            && class.class <= RiskClass::Normal;
        if findings.tls_required_no && !tls_optional {
            tracing::info!(queue_id = %id, class = %class.class, "TLS-Required: No not honoured (not allowed by [classify] honour_tls_required_no, REQUIRETLS, or class above normal)");
        }
        let env = Envelope {
            record_version: RECORD_VERSION,
            id: tx.id,
            received_at: now_secs(),
            sender: tx.sender,
            ret: tx.ret,
            envid: tx.envid,
            body: tx.body,
            smtputf8: tx.smtputf8,
            requiretls: tx.requiretls,
            size: msg.len(),
            class: class.class,
            class_reasons: class.reasons.clone(),
            tls_optional,
            expires_at: None,
            client: ClientInfo {
                addr: self.ip.to_string(),
                helo: self.helo.clone().unwrap_or_default(),
                tls: self.tls.as_ref().map(TlsInfo::summary),
                auth_user: self.auth_user.clone(),
            },
            message_id: message_id.clone(),
            recipients: tx.recipients,
        };
        match self.shared.queue.commit(msg, env).await {
            Ok(()) => {
                self.accepted += 1;
                tracing::info!(queue_id = %id, client = %self.ip, message_id = message_id.as_deref().unwrap_or(""), class = %class.class, reasons = %class.reasons.join("; "), "message accepted");
                conn.push(&format!("250 2.0.0 Ok: queued as {id}"));
            }
            Err(e) => self.spool_refused(conn, &id, &e),
        }
        Flow::Continue
    }

    async fn starttls<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        arg: &str,
    ) -> Flow {
        if !arg.trim().is_empty() {
            return self.fail(conn, "501 5.5.4 Syntax: STARTTLS");
        }
        if self.tls.is_some() {
            return self.fail(conn, "503 5.5.1 Error: TLS already active");
        }
        conn.push("220 2.0.0 Ready to start TLS");
        if let Err(e) = conn.flush().await {
            return self.read_failed(conn, e);
        }
        // Anything the client sent after STARTTLS before the handshake was sent in
        // the clear and must not be executed inside the TLS session
        // (CVE-2011-0411, RFC 3207 section 4.2).
        let discarded = conn.discard_buffered();
        if discarded > 0 {
            tracing::warn!(client = %self.ip, bytes = discarded, "discarded plaintext pipelined after STARTTLS");
        }
        Flow::StartTls
    }

    /// Read one line of a SASL exchange (RFC 4954 section 4).
    async fn sasl_line<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        challenge: &str,
    ) -> SaslLine {
        conn.push(challenge);
        let deadline = Instant::now() + self.cfg().command_timeout;
        let max = self.cfg().max_line_length;
        let mut line = Vec::new();
        match conn
            .read_line(&mut line, max, deadline, Some(&mut self.shutdown))
            .await
        {
            Ok(Line::Complete) => {}
            Ok(Line::TooLong { .. }) => {
                return SaslLine::Flow(
                    self.fail(conn, "500 5.5.6 Authentication exchange line is too long"),
                )
            }
            Err(e) => return SaslLine::Flow(self.read_failed(conn, e)),
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            SaslLine::Cancelled
        } else {
            SaslLine::Text(text.to_string())
        }
    }

    async fn auth<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        arg: &str,
    ) -> Flow {
        if self.tls.is_none() {
            // RFC 4954 section 6
            return self.fail(
                conn,
                "538 5.7.11 Encryption required for requested authentication mechanism",
            );
        }
        if self.cfg().users.is_empty() {
            return self.fail(conn, "503 5.5.1 Error: authentication not enabled");
        }
        if !self.esmtp {
            return self.fail(conn, "503 5.5.1 Error: send EHLO first");
        }
        if self.auth_user.is_some() {
            return self.fail(conn, "503 5.5.1 Error: already authenticated");
        }
        if self.tx.is_some() {
            return self.fail(conn, "503 5.5.1 Error: MAIL transaction in progress");
        }
        let (mech, initial) = match arg.trim().split_once(' ') {
            Some((m, i)) => (m, Some(i.trim().to_string())),
            None => (arg.trim(), None),
        };
        let credentials = match mech.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(i) => i,
                    None => match self.sasl_line(conn, "334 ").await {
                        SaslLine::Text(t) => t,
                        SaslLine::Cancelled => return self.auth_cancelled(conn),
                        SaslLine::Flow(f) => return f,
                    },
                };
                auth::decode_response(&response).and_then(|d| auth::parse_plain(&d))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => i,
                    None => match self.sasl_line(conn, "334 VXNlcm5hbWU6").await {
                        SaslLine::Text(t) => t,
                        SaslLine::Cancelled => return self.auth_cancelled(conn),
                        SaslLine::Flow(f) => return f,
                    },
                };
                let user = match auth::decode_response(&user).and_then(auth::login_text) {
                    Ok(u) => u,
                    Err(e) => return self.auth_failed(conn, None, e).await,
                };
                let pass = match self.sasl_line(conn, "334 UGFzc3dvcmQ6").await {
                    SaslLine::Text(t) => t,
                    SaslLine::Cancelled => return self.auth_cancelled(conn),
                    SaslLine::Flow(f) => return f,
                };
                auth::decode_response(&pass)
                    .and_then(auth::login_text)
                    .map(|p| (user, p))
            }
            _ => return self.fail(conn, "504 5.5.4 Unrecognized authentication type"),
        };
        let (user, password) = match credentials {
            Ok(c) => c,
            Err(e) => return self.auth_failed(conn, None, e).await,
        };
        let users = self.cfg().users.clone();
        let name = user.clone();
        let ok = tokio::task::spawn_blocking(move || auth::verify(&users, &name, &password))
            .await
            .unwrap_or(false);
        if ok {
            tracing::info!(client = %self.ip, user = ?user, "authenticated");
            self.auth_user = Some(user);
            conn.push("235 2.7.0 Authentication successful");
            Flow::Continue
        } else {
            self.auth_failed(conn, Some(&user), SaslError::Malformed)
                .await
        }
    }

    fn auth_cancelled<T: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<T>) -> Flow {
        self.fail(conn, "501 5.0.0 Authentication cancelled")
    }

    /// A failed attempt: logged with the user name only, answered after a delay,
    /// and the connection closed after too many.
    async fn auth_failed<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<T>,
        user: Option<&str>,
        e: SaslError,
    ) -> Flow {
        self.auth_failures += 1;
        tracing::warn!(client = %self.ip, user = ?user.unwrap_or(""), failures = self.auth_failures, "authentication failed");
        tokio::time::sleep(self.shared.tuning.auth_failure_delay).await;
        if self.auth_failures >= self.shared.tuning.max_auth_failures {
            conn.push(&format!(
                "421 4.7.0 {} Error: too many failed authentication attempts",
                self.host()
            ));
            return Flow::Close;
        }
        match e {
            SaslError::Decode => self.fail(conn, &e.to_string()),
            SaslError::Malformed => {
                // RFC 4954 section 6
                conn.push("535 5.7.8 Authentication credentials invalid");
                Flow::Continue
            }
        }
    }
}

/// RFC 3461 section 4.1: `NEVER` alone, or a comma list of SUCCESS/FAILURE/DELAY.
fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" if !n.success => n.success = true,
            "FAILURE" if !n.failure => n.failure = true,
            "DELAY" if !n.delay => n.delay = true,
            _ => return None,
        }
    }
    if n.never && (n.success || n.failure || n.delay || v.contains(',')) {
        return None;
    }
    Some(n)
}
