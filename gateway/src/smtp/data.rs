//! The DATA phase: finding the end of the message, dot-unstuffing, limits, and
//! what is added to the content before it is queued (Received, Message-ID).
//!
//! # Line endings and SMTP smuggling
//!
//! Only `<CRLF>.<CRLF>` ends the data (RFC 5321 section 4.1.1.4): a `.` line counts
//! as the end only when the previous line ended with CRLF and the `.` line itself
//! ends with CRLF. `<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>` and similar are content.
//!
//! A message that contains a bare LF or a bare CR anywhere (RFC 5321 section 2.3.8
//! forbids them) is read to its real end and then refused with
//! `554 5.6.0`; it is never stored. Refusing rather than normalising keeps the
//! stored content byte-for-byte what the client sent, and it guarantees that no
//! content this box relays can be read as an end of data by a lax receiving server
//! downstream (the SMTP smuggling attacks of 2023). The LAN mail server sees the
//! refusal at once, with the reason.
//!
//! Lines longer than `smtp.max_line_length` and messages larger than
//! `smtp.max_message_size` are likewise read to the end, never stored, and
//! refused with `552 5.3.4`.

use std::net::IpAddr;

use crate::spool::record::QueueId;

/// Why the received data is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataRejection {
    #[error("552 5.3.4 Message size exceeds fixed maximum message size")]
    TooBig,
    #[error("552 5.3.4 Message contains a line longer than the limit")]
    LineTooLong,
    #[error(
        "554 5.6.0 Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 section 2.3.8)"
    )]
    BareLineEnding,
    /// RFC 5321 section 6.3: a mail loop.
    #[error("554 5.4.6 Too many hops: mail loop detected")]
    TooManyHops,
}

impl DataRejection {
    /// A short reason for the log.
    pub fn reason(self) -> &'static str {
        match self {
            DataRejection::TooBig => "message too big",
            DataRejection::LineTooLong => "line too long",
            DataRejection::BareLineEnding => "bare CR or LF in message",
            DataRejection::TooManyHops => "too many Received headers (mail loop)",
        }
    }
}

/// Collects the lines of one DATA phase.
pub(crate) struct DataCollector {
    content: Vec<u8>,
    max_size: usize,
    /// The previous line ended with CRLF (true at the start of the data).
    at_line_start: bool,
    bare: bool,
    too_big: bool,
    line_too_long: bool,
}

impl DataCollector {
    pub fn new(max_size: u64) -> Self {
        DataCollector {
            content: Vec::new(),
            max_size: usize::try_from(max_size).unwrap_or(usize::MAX),
            at_line_start: true,
            bare: false,
            too_big: false,
            line_too_long: false,
        }
    }

    /// Feed one line including its LF. Returns true when it was the end of data.
    pub fn line(&mut self, line: &[u8]) -> bool {
        if self.at_line_start && line == b".\r\n" {
            return true;
        }
        let crlf = line.ends_with(b"\r\n");
        let body_end = if crlf { line.len() - 2 } else { line.len() };
        // The only LF is the last byte (lines are split at LF); so a line not
        // ending in CRLF ends in a bare LF, and any CR before the end is bare.
        if !crlf || line[..body_end].contains(&b'\r') {
            self.bare = true;
        }
        // Dot-unstuffing, RFC 5321 section 4.5.2.
        let line = if self.at_line_start && line.first() == Some(&b'.') {
            &line[1..]
        } else {
            line
        };
        self.at_line_start = crlf;
        if self.too_big || self.bare || self.line_too_long {
            // Refused anyway: keep reading to the end, store nothing more.
            return false;
        }
        if self.content.len() + line.len() > self.max_size {
            self.too_big = true;
            self.content = Vec::new();
        } else {
            self.content.extend_from_slice(line);
        }
        false
    }

    /// An over-long line was discarded by the reader.
    pub fn too_long_line(&mut self, crlf: bool) {
        self.line_too_long = true;
        self.content = Vec::new();
        self.at_line_start = crlf;
    }

    pub fn finish(self) -> Result<Vec<u8>, DataRejection> {
        if self.too_big {
            Err(DataRejection::TooBig)
        } else if self.line_too_long {
            Err(DataRejection::LineTooLong)
        } else if self.bare {
            Err(DataRejection::BareLineEnding)
        } else {
            Ok(self.content)
        }
    }
}

/// The end of the header section: the index just past the header lines (before
/// the empty line, if any). Stops at the first line that is neither a header field
/// nor a continuation, so a message without headers has an empty header section.
fn header_section(content: &[u8]) -> &[u8] {
    let mut pos = 0;
    let mut first = true;
    while pos < content.len() {
        let end = content[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i + 2)
            .unwrap_or(content.len());
        let line = &content[pos..end];
        let is_continuation = !first && matches!(line.first(), Some(b' ' | b'\t'));
        let is_field = line.iter().position(|&b| b == b':').is_some_and(|colon| {
            colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b))
        });
        if !(is_continuation || is_field) {
            break;
        }
        first = false;
        pos = end;
    }
    &content[..pos]
}

/// More Received fields than this means a mail loop (RFC 5321 section 6.3; the
/// same limit as Postfix's `hopcount_limit`).
pub(crate) const MAX_HOPS: usize = 50;

/// The number of Received fields in the header section.
pub(crate) fn count_received(content: &[u8]) -> usize {
    header_section(content)
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"Received:"))
        .count()
}

/// The Message-ID field of the header section, unfolded and trimmed (RFC 5322
/// section 3.6.4), e.g. `<abc@example.org>`.
pub(crate) fn find_message_id(content: &[u8]) -> Option<String> {
    let headers = header_section(content);
    let mut value: Option<Vec<u8>> = None;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let is_continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match (&mut value, is_continuation) {
            (Some(v), true) => v.extend_from_slice(line),
            (Some(_), false) => break,
            (None, false) => {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    if line[..colon].eq_ignore_ascii_case(b"Message-ID") {
                        value = Some(line[colon + 1..].to_vec());
                    }
                }
            }
            (None, true) => {}
        }
    }
    let value = value?;
    let text = String::from_utf8_lossy(&value);
    let unfolded: String = text
        .split(['\r', '\n'])
        .collect::<Vec<_>>()
        .join("")
        .trim()
        .chars()
        .take(998)
        .collect();
    Some(unfolded)
}

/// TLS details of the inbound hop.
pub(crate) type TlsInfo = crate::tls::Negotiated;

/// What the Received header says about the hop.
pub(crate) struct Trace<'a> {
    pub helo: &'a str,
    pub ip: IpAddr,
    pub hostname: &'a str,
    /// RFC 3848 / RFC 6531 protocol keyword, e.g. "ESMTPSA".
    pub protocol: &'a str,
    pub tls: Option<&'a TlsInfo>,
    pub id: &'a QueueId,
    /// Given only when the message has exactly one recipient (RFC 5321 section 7.2).
    pub for_rcpt: Option<&'a str>,
    pub timestamp: u64,
}

/// The Received header field (RFC 5321 section 4.4), folded, with CRLF.
pub(crate) fn received_header(t: &Trace<'_>) -> String {
    let literal = match t.ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut h = format!(
        "Received: from {} ({})\r\n\tby {} (qrelay) with {} id {}",
        t.helo, literal, t.hostname, t.protocol, t.id
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {}",
            tls.version, tls.cipher
        ));
        if let Some(g) = &tls.group {
            h.push_str(&format!(" key-exchange {g}"));
        }
        h.push(')');
    }
    if let Some(r) = t.for_rcpt {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    let ts = i64::try_from(t.timestamp).unwrap_or(i64::MAX);
    h.push_str(&format!(
        ";\r\n\t{}\r\n",
        mail_builder::headers::date::Date::new(ts).to_rfc822()
    ));
    h
}

/// The RFC 3848 / RFC 6531 `with` keyword for the Received header.
pub(crate) fn protocol_keyword(esmtp: bool, tls: bool, auth: bool, smtputf8: bool) -> String {
    if !esmtp {
        return "SMTP".into();
    }
    let mut p = String::from(if smtputf8 { "UTF8SMTP" } else { "ESMTP" });
    if tls {
        p.push('S');
    }
    if auth {
        p.push('A');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8], max: u64) -> (Result<Vec<u8>, DataRejection>, usize) {
        let mut c = DataCollector::new(max);
        let mut consumed = 0;
        for line in data.split_inclusive(|&b| b == b'\n') {
            consumed += line.len();
            if c.line(line) {
                return (c.finish(), consumed);
            }
        }
        panic!("no end of data in {:?}", String::from_utf8_lossy(data));
    }

    #[test]
    fn dot_unstuffing_and_end_of_data() {
        let (r, n) = collect(b"a\r\n..b\r\n.\r\nMAIL FROM:<x@y>\r\n", 1000);
        assert_eq!(r.unwrap(), b"a\r\n.b\r\n");
        assert_eq!(n, 11);
        let (r, _) = collect(b".\r\n", 1000);
        assert_eq!(r.unwrap(), b"");
    }

    #[test]
    fn smuggling_end_sequences_do_not_end_data() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r\n.\r\r\nMAIL FROM:<x@y>\r\n.\r\n",
        ] {
            let (r, n) = collect(evil, 1000);
            assert_eq!(
                n,
                evil.len(),
                "{:?} split early",
                String::from_utf8_lossy(evil)
            );
            assert_eq!(r, Err(DataRejection::BareLineEnding));
        }
    }

    #[test]
    fn size_limit_reads_to_end() {
        let (r, _) = collect(b"0123456789\r\n0123456789\r\n.\r\n", 15);
        assert_eq!(r, Err(DataRejection::TooBig));
    }

    #[test]
    fn received_fields_are_counted_in_headers_only() {
        let m = b"Received: a\r\n\tb\r\nreceived: c\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received(m), 2);
    }

    #[test]
    fn message_id_is_found_in_headers_only() {
        let m = b"Subject: x\r\nMessage-Id:\r\n <a@b.example>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(find_message_id(m).as_deref(), Some("<a@b.example>"));
        let m = b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(find_message_id(m), None);
        let m = b"no header here\r\nMessage-ID: <x@y>\r\n";
        assert_eq!(find_message_id(m), None);
    }

    #[test]
    fn protocol_keywords_follow_rfc3848() {
        assert_eq!(protocol_keyword(true, false, false, false), "ESMTP");
        assert_eq!(protocol_keyword(true, true, false, false), "ESMTPS");
        assert_eq!(protocol_keyword(true, true, true, false), "ESMTPSA");
        assert_eq!(protocol_keyword(true, true, true, true), "UTF8SMTPSA");
        assert_eq!(protocol_keyword(false, true, false, false), "SMTP");
    }
}
