//! Delivery status notifications (Postfix: bounce).
//!
//! When a recipient fails, waits too long, or (if asked) is delivered, the sender
//! gets a DSN: an ordinary mail message from the null sender, built to three
//! standards:
//!
//! - **RFC 6522 multipart/report**: `Content-Type: multipart/report;
//!   report-type=delivery-status` with (1) a human-readable part, (2) the
//!   machine-readable report, (3) optionally the original message or its headers.
//! - **RFC 3464 message/delivery-status**: the report is a block of per-message
//!   fields (`Reporting-MTA`, `Original-Envelope-Id`, `Arrival-Date`), then one block
//!   per recipient (`Original-Recipient`, `Final-Recipient`, `Action`, `Status`,
//!   `Remote-MTA`, `Diagnostic-Code`, `Last-Attempt-Date`, `Will-Retry-Until`), blocks
//!   separated by an empty line.
//! - **RFC 3461 (the SMTP DSN extension)** says *when* a DSN is sent and what it
//!   returns: `NOTIFY=NEVER|SUCCESS,FAILURE,DELAY` per recipient (absent: failure
//!   and delay), `RET=FULL|HDRS` for the returned content, `ENVID` and `ORCPT` echoed
//!   back so the sender's software can match the report to what it sent.
//!
//! Rules this module enforces:
//! - No DSN is ever sent to the null reverse-path (RFC 5321 section 4.5.5): that
//!   is how mail loops between two bouncing systems are prevented.
//! - Only recipients whose NOTIFY asks for this kind of notice are reported; when
//!   none remain there is no DSN at all.
//! - A success notice is only ours to send when the next hop did **not** take our
//!   DSN parameters (`Recipient::remote_dsn == false`): then the action is `relayed`
//!   (RFC 3461 section 5: relaying to a server without DSN support). When the next
//!   hop accepted them, the final delivery agent sends the `delivered` notice and a
//!   second one from us would be a duplicate, so such recipients are left out.
//! - What is returned (RFC 3461 section 4.3 leaves the default to us): a failure
//!   DSN returns the full message unless `RET=HDRS` was given or the message is
//!   larger than [`MAX_FULL_RETURN`] (1 MiB); then only its header. Delay and
//!   success DSNs always return only the header: the message itself is still being
//!   delivered, or was delivered.
//! - A DSN never needs more of the original than it returns, and the original may be
//!   50 MiB: the caller passes an [`Original`], the message's size and only its
//!   beginning: all of it when [`full_return_possible`], else its header section
//!   (at most [`MAX_HEADER_RETURN`] bytes, see [`crate::spool::Spool::read_header_section`]).
//! - A message submitted with REQUIRETLS is never returned whole, whatever RET says:
//!   its DSN carries only the header section (RFC 8689 section 5, non-delivery
//!   message handling: the content must not leave over a path the sender did not
//!   accept, and the DSN itself may travel without REQUIRETLS), and the text says so.
//! - When a recipient's last attempt recorded why its server could not carry the
//!   message at its level ([`crate::spool::record::Problem`]), or the message is
//!   held, the text explains it in German and English for a non-technical sender
//!   ([`notice`], standards.md A4).
//! - The message is internationalized (RFC 6533) when the original envelope used
//!   SMTPUTF8: the report becomes `message/global-delivery-status`, the returned
//!   content `message/global` / `message/global-headers`. Otherwise everything in the
//!   report is US-ASCII and a UTF-8 address is written with `\x{HEX}` escapes.
//! - Nothing taken from a recipient address, a server reply or the envelope can
//!   break out of its header field: CR, LF and other controls are removed
//!   ([`mime::clean`]) and long fields are folded.
//!
//! The DSN content is written by hand (it is a fixed, small structure, and writing
//! it directly keeps every field under our control); the tests parse it back with
//! mail-parser, an independent MIME implementation.

mod mime;
pub mod notice;
#[cfg(test)]
mod tests;

pub use mime::rfc5322_date;

use crate::config::Level;
use crate::spool::record::{Attempt, BodyType, Envelope, Notify, Recipient, Ret};

/// A failure DSN returns the whole message only up to this size (unless RET=HDRS).
pub const MAX_FULL_RETURN: usize = 1024 * 1024;

/// Most bytes of an original's header section read for a DSN. The SMTP server
/// refuses header sections over 1 MiB; what it adds (Received, Message-ID) fits in
/// the rest. A longer one is returned cut at a line end.
pub const MAX_HEADER_RETURN: usize = 1024 * 1024 + 64 * 1024;

/// The original message as a DSN sees it: `bytes` is its beginning (all of it, or
/// at least its header section) and `size` its full length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original<'a> {
    pub bytes: &'a [u8],
    pub size: u64,
}

impl<'a> Original<'a> {
    /// A message held whole in memory.
    pub fn whole(bytes: &'a [u8]) -> Original<'a> {
        Original {
            bytes,
            size: bytes.len() as u64,
        }
    }

    /// Whether `bytes` is the complete message.
    pub fn is_complete(&self) -> bool {
        self.bytes.len() as u64 == self.size
    }
}

/// Whether a failure DSN for `env` may return the whole original of `size` bytes
/// (RFC 3461 section 4.3: RET=HDRS says no; beyond `opts.max_full_return`, our
/// limit; REQUIRETLS, RFC 8689 section 5: never). The caller reads the whole
/// message only then.
pub fn full_return_possible(env: &Envelope, size: u64, opts: &DsnOptions) -> bool {
    !env.requiretls && env.ret != Some(Ret::Headers) && size <= opts.max_full_return as u64
}

/// Which notice a DSN carries (RFC 3464 section 2.3.3, the `Action` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// `Action: failed`: the recipient will not get the message.
    Failure,
    /// `Action: delayed`: still trying.
    Delay,
    /// `Action: relayed`: handed to a server that does not send DSNs itself.
    Success,
    /// `Action: delayed` with a 4.7.x status: the level could not be met, the class
    /// says `hold` (standards.md A4). The message is kept and not sent; an
    /// administrator releases or deletes it.
    Held,
}

/// A DSN ready to be queued as a new message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The envelope sender of the DSN: always the null reverse-path "" (RFC 3464
    /// section 2, RFC 5321 section 4.5.5), so that a DSN never causes another DSN.
    pub sender: String,
    /// The envelope recipient: the original message's sender.
    pub recipient: String,
    /// The complete message, CRLF line endings.
    pub content: Vec<u8>,
    /// The body type the DSN must be sent with: 8BITMIME or BINARYMIME when the
    /// returned original (or an internationalized report) is not 7-bit.
    pub body: BodyType,
    /// Whether the DSN must be sent with SMTPUTF8 (the original was).
    pub smtputf8: bool,
}

/// Settings for [`build_dsn_with`] beyond the defaults of [`build_dsn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsnOptions {
    /// For a delay DSN: when we give up (Unix seconds), written as
    /// `Will-Retry-Until` (RFC 3464 section 2.3.9) and in the explanation.
    pub retry_until: Option<u64>,
    /// Largest original returned in full by a failure DSN.
    pub max_full_return: usize,
    /// The level the message's class requires, for the sender's notice; `None`:
    /// the class's built-in default ([`crate::config::RiskClass::default_config`]).
    pub level: Option<Level>,
}

impl Default for DsnOptions {
    fn default() -> Self {
        DsnOptions {
            retry_until: None,
            max_full_return: MAX_FULL_RETURN,
            level: None,
        }
    }
}

/// Build a DSN for `recipients` of `env` (whose content is `original`), or `None`
/// when none may be sent (null sender, or no recipient asked for this kind).
pub fn build_dsn(
    reporting_mta: &str,
    env: &Envelope,
    recipients: &[&Recipient],
    kind: DsnKind,
    original: &[u8],
    now: u64,
) -> Option<Dsn> {
    build_dsn_with(
        reporting_mta,
        env,
        recipients,
        kind,
        Original::whole(original),
        now,
        &DsnOptions::default(),
    )
}

/// [`build_dsn`] with options (a delay DSN should give `retry_until`), for an
/// original of which only the beginning may be at hand (see [`Original`]).
pub fn build_dsn_with(
    reporting_mta: &str,
    env: &Envelope,
    recipients: &[&Recipient],
    kind: DsnKind,
    original: Original<'_>,
    now: u64,
    opts: &DsnOptions,
) -> Option<Dsn> {
    // RFC 5321 sections 4.5.5 and 6.1: never notify the null reverse-path.
    if env.is_bounce() {
        return None;
    }
    // RFC 3461 section 4.1: NOTIFY decides, per recipient, which notices are wanted.
    let selected: Vec<&Recipient> = recipients
        .iter()
        .copied()
        .filter(|r| match kind {
            DsnKind::Failure => Notify::wants_failure(r.notify),
            DsnKind::Delay => Notify::wants_delay(r.notify),
            // RFC 3461 section 5: after relaying to a DSN-capable server the success
            // notice is that server's job.
            DsnKind::Success => Notify::wants_success(r.notify) && !r.remote_dsn,
            // A held message will not arrive unless someone acts: a sender who
            // asked for either failure or delay notices gets this one (A4).
            DsnKind::Held => Notify::wants_failure(r.notify) || Notify::wants_delay(r.notify),
        })
        .collect();
    if selected.is_empty() {
        return None;
    }

    let global = env.smtputf8;
    let host = host_name(reporting_mta);
    let (headers, has_body) = split_header(original.bytes);
    // RFC 3461 section 4.3: RET applies to failure notices; our default is FULL up
    // to max_full_return. Delay and success notices carry the header only. Only
    // an original that is here complete can be returned in full.
    let full = kind == DsnKind::Failure
        && full_return_possible(env, original.size, opts)
        && original.is_complete()
        && has_body;
    let returned: &[u8] = if full { original.bytes } else { headers };
    let boundary = boundary(env, returned);
    let original = original.bytes;

    let mut out = String::new();
    // The top-level header. Every interpolated value is cleaned of controls.
    mime::push_field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    mime::push_field(
        &mut out,
        "To",
        &format!("<{}>", mime::clean(&env.sender, !global).replace(' ', "")),
    );
    mime::push_field(&mut out, "Subject", subject(kind));
    mime::push_field(&mut out, "Date", &rfc5322_date(now));
    mime::push_field(
        &mut out,
        "Message-ID",
        &format!("<dsn.{}.{:016x}@{host}>", env.id, rand::random::<u64>()),
    );
    if let Some(mid) = original_message_id(original) {
        mime::push_field(&mut out, "In-Reply-To", &mid);
        mime::push_field(&mut out, "References", &mid);
    }
    // RFC 3834 section 5: a machine-generated reply; auto-responders stay quiet.
    mime::push_field(&mut out, "Auto-Submitted", "auto-replied");
    mime::push_field(&mut out, "MIME-Version", "1.0");
    // RFC 6522 section 3: report-type is the subtype of the second part.
    let report_type = if global {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    mime::push_field(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type={report_type}; boundary=\"{boundary}\""),
    );
    out.push_str("\r\n");
    out.push_str("This is a MIME-encapsulated delivery status notification.\r\n");

    // Part 1 (RFC 6522 section 3): the explanation for a person.
    let text = human_text(&host, env, &selected, kind, original, now, opts, full);
    out.push_str(&format!("\r\n--{boundary}\r\n"));
    mime::push_field(&mut out, "Content-Description", "Notification");
    if text.is_ascii() {
        mime::push_field(&mut out, "Content-Type", "text/plain; charset=us-ascii");
        mime::push_field(&mut out, "Content-Transfer-Encoding", "7bit");
        out.push_str("\r\n");
        out.push_str(&text);
    } else {
        mime::push_field(&mut out, "Content-Type", "text/plain; charset=utf-8");
        mime::push_field(&mut out, "Content-Transfer-Encoding", "base64");
        out.push_str("\r\n");
        out.push_str(&mime::base64_lines(text.as_bytes()));
    }

    // Part 2 (RFC 3464 section 2): the machine-readable report.
    let report = delivery_status(&host, env, &selected, kind, opts, global);
    out.push_str(&format!("\r\n--{boundary}\r\n"));
    mime::push_field(&mut out, "Content-Description", "Delivery report");
    mime::push_field(&mut out, "Content-Type", &format!("message/{report_type}"));
    mime::push_field(
        &mut out,
        "Content-Transfer-Encoding",
        if report.is_ascii() { "7bit" } else { "8bit" },
    );
    out.push_str("\r\n");
    out.push_str(&report);

    // Part 3 (RFC 6522 section 3): the original, or only its header.
    let mut content = out.into_bytes();
    let mut part = String::new();
    part.push_str(&format!("\r\n--{boundary}\r\n"));
    let eight_bit = !returned.is_ascii();
    let cte = if full && env.body == BodyType::BinaryMime {
        "binary"
    } else if eight_bit {
        "8bit"
    } else {
        "7bit"
    };
    if full {
        mime::push_field(&mut part, "Content-Description", "Undelivered message");
        // RFC 6532 section 3.7: message/global for an internationalized message.
        let ct = if global {
            "message/global"
        } else {
            "message/rfc822"
        };
        mime::push_field(&mut part, "Content-Type", ct);
    } else {
        mime::push_field(&mut part, "Content-Description", "Message headers");
        // text/rfc822-headers is RFC 6522's; message/global-headers RFC 6533's.
        let ct = if global {
            "message/global-headers"
        } else {
            "text/rfc822-headers"
        };
        mime::push_field(&mut part, "Content-Type", ct);
    }
    mime::push_field(&mut part, "Content-Transfer-Encoding", cte);
    part.push_str("\r\n");
    content.extend_from_slice(part.as_bytes());
    content.extend_from_slice(returned);
    content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let body = if full && env.body == BodyType::BinaryMime {
        BodyType::BinaryMime
    } else if content.is_ascii() {
        BodyType::SevenBit
    } else {
        BodyType::EightBitMime
    };
    Some(Dsn {
        sender: String::new(),
        recipient: env.sender.clone(),
        content,
        body,
        smtputf8: env.smtputf8,
    })
}

fn subject(kind: DsnKind) -> &'static str {
    match kind {
        DsnKind::Failure => "Undelivered Mail Returned to Sender",
        DsnKind::Delay => "Delayed Mail (still being retried)",
        DsnKind::Success => "Successful Mail Delivery Report",
        DsnKind::Held => "Mail held: the recipient's server is not secure enough",
    }
}

/// Our host name, reduced to the characters a host name (or an address literal)
/// may contain.
fn host_name(s: &str) -> String {
    let h: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// A MIME boundary (RFC 2046 section 5.1.1) that does not occur in the original.
fn boundary(env: &Envelope, original: &[u8]) -> String {
    loop {
        let b = format!("=_qrelay_{}_{:016x}", env.id, rand::random::<u64>());
        if !original.windows(b.len()).any(|w| w == b.as_bytes()) {
            return b;
        }
    }
}

/// The header section of a message (up to and including the CRLF that ends the
/// last field) and whether a body follows (RFC 5322 section 2.1).
fn split_header(msg: &[u8]) -> (&[u8], bool) {
    if let Some(p) = msg.windows(4).position(|w| w == b"\r\n\r\n") {
        return (&msg[..p + 2], true);
    }
    if let Some(p) = msg.windows(2).position(|w| w == b"\n\n") {
        return (&msg[..p + 1], true);
    }
    (msg, false)
}

/// The original's Message-ID (angle brackets included), if it has a sane one.
fn original_message_id(original: &[u8]) -> Option<String> {
    let (headers, _) = split_header(original);
    let msg = mail_parser::MessageParser::default().parse_headers(headers)?;
    let id = mime::clean(msg.message_id()?, true);
    let ok = !id.is_empty() && id.len() < 250 && !id.contains([' ', '<', '>']);
    ok.then(|| format!("<{id}>"))
}

/// The original's Subject, for the explanation.
fn original_subject(original: &[u8]) -> Option<String> {
    let (headers, _) = split_header(original);
    let msg = mail_parser::MessageParser::default().parse_headers(headers)?;
    let s = mime::clean(msg.subject()?, false);
    (!s.is_empty()).then_some(s)
}

/// The enhanced status code reported for `r` (RFC 3464 section 2.3.4): the
/// recipient's own when it is valid and fits the notice, else X.0.0 of the class.
fn status_of(r: &Recipient, kind: DsnKind) -> String {
    let fits = |code: &str| match kind {
        // A recipient that expired after transient errors keeps its 4.x.x code.
        DsnKind::Failure => code.starts_with('5') || code.starts_with('4'),
        DsnKind::Delay => code.starts_with('4'),
        DsnKind::Success => code.starts_with('2'),
        DsnKind::Held => code.starts_with("4.7."),
    };
    match r.status.as_deref().map(str::trim) {
        Some(code) if mime::is_status_code(code) && fits(code) => code.to_string(),
        // A hold is not final (RFC 3463: 4.x.x), whatever the last attempt said.
        Some(code)
            if kind == DsnKind::Held && mime::is_status_code(code) && code.starts_with("5.7.") =>
        {
            format!("4{}", &code[1..])
        }
        _ => match kind {
            DsnKind::Failure => "5.0.0",
            DsnKind::Delay => "4.0.0",
            DsnKind::Success => "2.0.0",
            DsnKind::Held => "4.7.0",
        }
        .to_string(),
    }
}

fn action(kind: DsnKind) -> &'static str {
    // RFC 3464 section 2.3.3.
    match kind {
        DsnKind::Failure => "failed",
        DsnKind::Delay | DsnKind::Held => "delayed",
        DsnKind::Success => "relayed",
    }
}

/// The server's reply, when the last attempt got one (rather than our own reason).
fn remote_reply(last: Option<&Attempt>) -> Option<&str> {
    last.map(|a| a.reply.as_str())
        .filter(|r| mime::is_smtp_reply(r))
}

/// The `message/delivery-status` body (RFC 3464 section 2.1: per-message fields,
/// then one block per recipient, blocks separated by an empty line).
fn delivery_status(
    host: &str,
    env: &Envelope,
    rcpts: &[&Recipient],
    kind: DsnKind,
    opts: &DsnOptions,
    global: bool,
) -> String {
    let ascii = !global;
    let mut s = String::new();
    // RFC 3464 section 2.2.1: ENVID as given (the spool keeps it xtext-decoded).
    if let Some(envid) = env.envid.as_deref() {
        let envid = mime::clean(envid, ascii);
        if !envid.is_empty() {
            mime::push_field(&mut s, "Original-Envelope-Id", &envid);
        }
    }
    // RFC 3464 section 2.2.2.
    mime::push_field(&mut s, "Reporting-MTA", &format!("dns; {host}"));
    // RFC 3464 section 2.2.5.
    mime::push_field(&mut s, "Arrival-Date", &rfc5322_date(env.received_at));

    for r in rcpts {
        s.push_str("\r\n");
        // RFC 3464 section 2.3.1 / RFC 3461 section 4.2: ORCPT as "addr-type;addr".
        if let Some(orcpt) = r.orcpt.as_deref() {
            let (t, a) = match orcpt.split_once(';') {
                Some((t, a)) => (Some(t.trim()), a.trim()),
                None => (None, orcpt.trim()),
            };
            if !a.is_empty() {
                let t = t.filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("utf-8"));
                mime::push_field(
                    &mut s,
                    "Original-Recipient",
                    &mime::address_field(t, a, global),
                );
            }
        }
        // RFC 3464 section 2.3.2.
        mime::push_field(
            &mut s,
            "Final-Recipient",
            &mime::address_field(None, &r.address, global),
        );
        // RFC 3464 sections 2.3.3 and 2.3.4.
        mime::push_field(&mut s, "Action", action(kind));
        mime::push_field(&mut s, "Status", &status_of(r, kind));
        if let Some(last) = r.last.as_ref() {
            // RFC 3464 section 2.3.5.
            let mx = mime::clean(&last.mx, true).replace(' ', "");
            if !mx.is_empty() {
                mime::push_field(&mut s, "Remote-MTA", &format!("dns; {mx}"));
            }
            // RFC 3464 section 2.3.6: the remote reply as an smtp diagnostic; our
            // own reason under an unregistered X- diagnostic type.
            let reply = mime::clean(&last.reply, ascii);
            if remote_reply(Some(last)).is_some() {
                mime::push_field(&mut s, "Diagnostic-Code", &format!("smtp; {reply}"));
            } else if !reply.is_empty() {
                mime::push_field(&mut s, "Diagnostic-Code", &format!("X-Qrelay; {reply}"));
            }
            // RFC 3464 section 2.3.7.
            if last.at > 0 {
                mime::push_field(&mut s, "Last-Attempt-Date", &rfc5322_date(last.at));
            }
        }
        // RFC 3464 section 2.3.9.
        if kind == DsnKind::Delay {
            if let Some(until) = opts.retry_until {
                mime::push_field(&mut s, "Will-Retry-Until", &rfc5322_date(until));
            }
        }
    }
    s
}

/// What an enhanced status code means, in words for the sender (RFC 3463 section
/// 3 subjects and details, plus the registry entries of RFC 5248 / RFC 8689 for
/// encryption).
fn plain_meaning(status: &str) -> Option<&'static str> {
    let tail = status.split_once('.').map(|(_, t)| t)?;
    Some(match tail {
        "1.1" => "The recipient's mailbox does not exist at the receiving server. Please check the address for typing errors.",
        "1.2" | "1.10" => "The recipient's domain does not exist or does not accept e-mail.",
        "1.3" => "The recipient's address is not a valid e-mail address.",
        "2.1" => "The recipient's mailbox is disabled.",
        "2.2" => "The recipient's mailbox is full.",
        "2.3" | "3.4" => "The message is too large for the receiving server.",
        "3.1" | "3.2" => "The receiving server is out of space or not accepting mail at the moment.",
        "4.1" => "The receiving server did not answer.",
        "4.2" => "The connection to the receiving server broke off.",
        "4.3" => "The recipient's domain could not be looked up in the DNS (a temporary problem).",
        "4.4" => "No mail server could be found for the recipient's domain.",
        "4.7" => "The message could not be delivered within the time allowed.",
        "7.1" => "The receiving server refused the message because of its rules (for example spam filtering or sender restrictions).",
        "7.4" | "7.10" | "7.11" | "7.30" => "The receiving server did not offer the encryption (TLS) this message requires. The message was not sent to it, so that it cannot be read on the way.",
        "7.5" | "7.7" => "The receiving server's encryption could not be verified (its certificate or security settings did not match what is required). The message was not sent to it, so that it cannot be read or altered on the way.",
        _ => return None,
    })
}

/// A sentence on how the last connection was protected.
fn transport_words(a: &Attempt) -> Option<String> {
    use crate::spool::record::TransportVerdict;
    let tls = a.tls.as_ref();
    match (a.verdict, tls) {
        (Some(TransportVerdict::Plaintext), _) => {
            Some("The connection to that server was not encrypted.".into())
        }
        (v, Some(t)) => {
            let verified = matches!(
                v,
                Some(TransportVerdict::Trusted | TransportVerdict::Verified)
            ) || t.pkix_verified;
            Some(format!(
                "The connection to that server was encrypted ({}, {}){}.",
                mime::clean(&t.version, false),
                mime::clean(&t.cipher, false),
                if verified {
                    " and the server's identity was verified"
                } else {
                    "; the server's identity was not verified"
                }
            ))
        }
        _ => None,
    }
}

/// Part 1: what happened, per recipient, in plain language.
#[allow(clippy::too_many_arguments)]
fn human_text(
    host: &str,
    env: &Envelope,
    rcpts: &[&Recipient],
    kind: DsnKind,
    original: &[u8],
    now: u64,
    opts: &DsnOptions,
    full: bool,
) -> String {
    const W: usize = 72;
    const IND: &str = "    ";
    const QUOTE: &str = "        ";
    let mut t = String::new();
    wrap_para(
        &mut t,
        &format!("This is the mail gateway {host}, reporting on a message you sent."),
    );
    let what = match original_subject(original) {
        Some(s) => format!(
            "Your message \"{s}\" (accepted {})",
            rfc5322_date(env.received_at)
        ),
        None => format!("Your message (accepted {})", rfc5322_date(env.received_at)),
    };
    // RFC 8689 section 5: the content of a REQUIRETLS message is not returned.
    let attached = if full {
        "A copy of your message is attached."
    } else if env.requiretls {
        "Because your message was sent with REQUIRETLS, only its headers are attached, not its content."
    } else {
        "The headers of your message are attached."
    };
    let intro = match kind {
        DsnKind::Failure => format!(
            "{what} could not be delivered to the recipients below. The gateway has given up; the message will not be delivered to them. {attached}"
        ),
        DsnKind::Held => format!(
            "{what} could not be sent to the recipients below with the security it requires. The gateway keeps it and does not send it; an administrator can release or delete it. {attached}"
        ),
        DsnKind::Delay => {
            let until = match opts.retry_until {
                Some(u) => format!(" until {}", rfc5322_date(u)),
                None => String::new(),
            };
            format!(
                "{what} has not yet been delivered to the recipients below. This is only a warning: you do not need to send the message again. The gateway will keep trying{until}, and will tell you if it finally has to give up."
            )
        }
        DsnKind::Success => format!("{what} was handed over to the recipients' mail servers below."),
    };
    notices(&mut t, env, rcpts, kind, opts);
    wrap_para(&mut t, &intro);

    for r in rcpts {
        let addr = mime::clean(&r.address, false);
        t.push_str(&format!("<{addr}>\r\n"));
        let status = status_of(r, kind);
        // (indent, text): server replies are quoted on their own, deeper lines.
        let mut lines: Vec<(&str, String)> = Vec::new();
        match kind {
            DsnKind::Success => {
                let server = r
                    .last
                    .as_ref()
                    .map(|a| mime::clean(&a.mx, false))
                    .filter(|m| !m.is_empty())
                    .map(|m| format!("the server {m}"))
                    .unwrap_or_else(|| "the recipient's server".into());
                lines.push((IND, format!(
                    "Delivered to {server}. That server does not send delivery confirmations, so this is the last confirmation you will receive; it shows that the message left this gateway, not that it reached the mailbox."
                )));
            }
            DsnKind::Failure | DsnKind::Delay | DsnKind::Held => {
                if let Some(m) = plain_meaning(&status) {
                    lines.push((IND, m.to_string()));
                }
            }
        }
        if let Some(a) = r.last.as_ref() {
            let reply = mime::clean(&a.reply, false);
            let server = match (mime::clean(&a.mx, false), mime::clean(&a.ip, false)) {
                (m, i) if !m.is_empty() && !i.is_empty() => format!("{m} ({i})"),
                (m, _) if !m.is_empty() => m,
                (_, i) => i,
            };
            if remote_reply(Some(a)).is_some() {
                if kind != DsnKind::Success {
                    let server = if server.is_empty() {
                        "The receiving server".to_string()
                    } else {
                        format!("The receiving server {server}")
                    };
                    lines.push((IND, format!("{server} answered:")));
                    lines.push((QUOTE, reply));
                }
            } else if !reply.is_empty() {
                lines.push((IND, format!("Reason: {reply}")));
            }
            if let Some(words) = transport_words(a) {
                lines.push((IND, words));
            }
            if a.at > 0 {
                lines.push((IND, format!("Last attempt: {}.", rfc5322_date(a.at))));
            }
        } else if kind != DsnKind::Success && plain_meaning(&status).is_none() {
            lines.push((
                IND,
                "No delivery attempt reached the recipient's server.".into(),
            ));
        }
        if kind == DsnKind::Delay && r.next_attempt > now {
            lines.push((
                IND,
                format!("Next attempt: {}.", rfc5322_date(r.next_attempt)),
            ));
        }
        lines.push((IND, format!("Status code: {status}.")));
        for (indent, l) in lines {
            mime::wrap(&mut t, indent, &l, W - indent.len());
        }
        t.push_str("\r\n");
    }
    wrap_para(
        &mut t,
        "The technical report for mail programs follows in the next part of this message.",
    );
    t
}

/// The German and the English notice (German first, each labelled) for the
/// recipients whose last attempt recorded a problem, and for held ones: what was
/// wrong with the server, the message's class and level, and what happened to it
/// (standards.md A4).
fn notices(
    out: &mut String,
    env: &Envelope,
    rcpts: &[&Recipient],
    kind: DsnKind,
    opts: &DsnOptions,
) {
    const IND: &str = "    ";
    if kind == DsnKind::Success {
        return;
    }
    let explained: Vec<(String, notice::Explanation)> = rcpts
        .iter()
        .filter_map(|r| {
            let last = r.last.as_ref();
            let mx = last.map(|a| a.mx.as_str()).unwrap_or("");
            let e = match last.and_then(|a| a.problem.as_ref()) {
                Some(p) => notice::explain(p, mx),
                None if kind == DsnKind::Held => notice::explain_unrecorded(mx),
                None => return None,
            };
            Some((mime::clean(&r.address, false), e))
        })
        .collect();
    if explained.is_empty() {
        return;
    }
    let class = env.class;
    let level = opts.level.unwrap_or_else(|| class.default_config().level);
    let (outcome_de, outcome_en) = match kind {
        DsnKind::Held => (
            "Die Nachricht wird aufbewahrt und nicht versendet; ein Administrator kann sie freigeben oder löschen.",
            "The message is kept and not sent; an administrator can release or delete it.",
        ),
        DsnKind::Delay => (
            "Die Nachricht wurde noch nicht versendet; das Gateway versucht es weiter.",
            "The message has not been sent yet; the gateway keeps trying.",
        ),
        _ => (
            "Die Nachricht wurde nicht versendet.",
            "The message was not sent.",
        ),
    };
    // The English text below says the same in its first paragraph.
    let requiretls = env.requiretls.then_some(
        "Da die Nachricht mit REQUIRETLS verschickt wurde, liegen dieser Benachrichtigung nur ihre Kopfzeilen bei, nicht ihr Inhalt.",
    );

    out.push_str("--- Deutsch ---\r\n");
    for (addr, e) in &explained {
        mime::wrap(out, "", &format!("Empfänger <{addr}>:"), 72);
        mime::wrap(out, IND, &e.de, 72 - IND.len());
        mime::wrap(
            out,
            IND,
            &format!(
                "Die Nachricht hat die Risikoklasse \"{}\" ({class}) und verlangt die Sicherheitsstufe \"{}\" ({level}). {outcome_de}",
                notice::de_class(class),
                notice::de_level(level),
            ),
            72 - IND.len(),
        );
    }
    if let Some(de) = requiretls {
        mime::wrap(out, "", de, 72);
    }
    out.push_str("\r\n--- English ---\r\n");
    for (addr, e) in &explained {
        mime::wrap(out, "", &format!("Recipient <{addr}>:"), 72);
        mime::wrap(out, IND, &e.en, 72 - IND.len());
        mime::wrap(
            out,
            IND,
            &format!("The message has the risk class \"{class}\" and requires the level \"{level}\". {outcome_en}"),
            72 - IND.len(),
        );
    }
    out.push_str("\r\n");
}

fn wrap_para(out: &mut String, text: &str) {
    mime::wrap(out, "", text, 72);
    out.push_str("\r\n");
}
