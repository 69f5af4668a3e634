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
//!
//! # Streaming, and what is held in memory
//!
//! The content is not collected in memory: a session may receive a 50 MiB message
//! while hundreds of others do the same. [`DataStream`] holds back only the header
//! section (at most [`MAX_HEADER_SECTION`] bytes), because what is prepended
//! depends on it: the hop count decides whether the message is a loop, and the
//! Message-ID field whether one is added. Once the header section is complete it is
//! handed over to be stored behind our Received field, and every later line is
//! handed over as it arrives, to be written to the spool. A header section over the
//! limit is refused with `552 5.3.4` like an over-long message (Postfix has the
//! same kind of limit, `header_size_limit`). A refused message stops being
//! handed over at once; the caller removes what was written.

use std::net::IpAddr;

use crate::spool::record::QueueId;

/// Why the received data is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DataRejection {
    #[error("552 5.3.4 Message size exceeds fixed maximum message size")]
    TooBig,
    #[error("552 5.3.4 Message header section exceeds the size limit")]
    HeaderTooBig,
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
            DataRejection::HeaderTooBig => "header section too big",
            DataRejection::LineTooLong => "line too long",
            DataRejection::BareLineEnding => "bare CR or LF in message",
            DataRejection::TooManyHops => "too many Received headers (mail loop)",
        }
    }
}

/// The most bytes of header section held in memory (see the module docs).
pub(crate) const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// What to do with one line of data (see [`DataStream::line`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed<'a> {
    /// Nothing to store now: the line is part of the header section being held,
    /// or the message is refused.
    Held,
    /// The header section is complete (and passed the hop count): store it, then
    /// this line, the first of the body.
    HeaderEnd(Vec<u8>, &'a [u8]),
    /// Store this body line (dot-unstuffed, with its CRLF).
    Body(&'a [u8]),
    /// End of data. Carries the header section if it was still held (a message
    /// without a body), to be stored like in `HeaderEnd`.
    End(Option<Vec<u8>>),
}

enum Phase {
    /// Holding the header section; `first` until its first line is seen.
    Header { held: Vec<u8>, first: bool },
    /// Past the header section (or refused): nothing is held.
    Body,
}

/// Frames, unstuffs and checks the lines of one DATA phase, holding only the
/// header section.
pub(crate) struct DataStream {
    max_size: usize,
    max_header: usize,
    /// Content bytes so far (dot-unstuffed, as they will be stored).
    size: usize,
    phase: Phase,
    /// The previous line ended with CRLF (true at the start of the data).
    at_line_start: bool,
    bare: bool,
    too_big: bool,
    header_too_big: bool,
    line_too_long: bool,
    too_many_hops: bool,
}

impl DataStream {
    pub fn new(max_size: u64, max_header: usize) -> Self {
        DataStream {
            max_size: usize::try_from(max_size).unwrap_or(usize::MAX),
            max_header,
            size: 0,
            phase: Phase::Header {
                held: Vec::new(),
                first: true,
            },
            at_line_start: true,
            bare: false,
            too_big: false,
            header_too_big: false,
            line_too_long: false,
            too_many_hops: false,
        }
    }

    /// The message will be refused; nothing more is handed over for storing.
    pub fn refused(&self) -> bool {
        self.bare || self.too_big || self.header_too_big || self.line_too_long || self.too_many_hops
    }

    /// Feed one line including its LF.
    pub fn line<'a>(&mut self, line: &'a [u8]) -> Fed<'a> {
        if self.at_line_start && line == b".\r\n" {
            return Fed::End(self.end_of_header());
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
        if self.size + line.len() > self.max_size {
            self.too_big = true;
        }
        if self.refused() {
            // Refused anyway: keep reading to the end, hold nothing more.
            self.phase = Phase::Body;
            return Fed::Held;
        }
        self.size += line.len();
        match &mut self.phase {
            Phase::Body => Fed::Body(line),
            Phase::Header { held, first } => {
                if !is_header_line(line, *first) {
                    return match self.end_of_header() {
                        Some(head) => Fed::HeaderEnd(head, line),
                        None => Fed::Held,
                    };
                }
                let needed = held.len() + line.len();
                if needed > self.max_header {
                    self.header_too_big = true;
                    self.phase = Phase::Body;
                    return Fed::Held;
                }
                if needed > held.capacity() {
                    // Grow by doubling, but never past the limit: it bounds the
                    // allocation, not only the length.
                    let target = held
                        .capacity()
                        .saturating_mul(2)
                        .clamp(needed, self.max_header);
                    held.reserve_exact(target - held.len());
                }
                held.extend_from_slice(line);
                *first = false;
                Fed::Held
            }
        }
    }

    /// Leave the header phase; the header section to store, unless refused.
    fn end_of_header(&mut self) -> Option<Vec<u8>> {
        let Phase::Header { held, .. } = std::mem::replace(&mut self.phase, Phase::Body) else {
            return None;
        };
        if self.refused() {
            return None;
        }
        if count_received(&held) > MAX_HOPS {
            self.too_many_hops = true;
            return None;
        }
        Some(held)
    }

    /// An over-long line was discarded by the reader.
    pub fn too_long_line(&mut self, crlf: bool) {
        self.line_too_long = true;
        self.phase = Phase::Body;
        self.at_line_start = crlf;
    }

    /// After the end of data: whether the message is accepted.
    pub fn finish(&self) -> Result<(), DataRejection> {
        if self.too_big {
            Err(DataRejection::TooBig)
        } else if self.header_too_big {
            Err(DataRejection::HeaderTooBig)
        } else if self.line_too_long {
            Err(DataRejection::LineTooLong)
        } else if self.bare {
            Err(DataRejection::BareLineEnding)
        } else if self.too_many_hops {
            Err(DataRejection::TooManyHops)
        } else {
            Ok(())
        }
    }
}

/// A header field line (`name:`) or, after the first line, a continuation line.
fn is_header_line(line: &[u8], first: bool) -> bool {
    let is_continuation = !first && matches!(line.first(), Some(b' ' | b'\t'));
    let is_field = line
        .iter()
        .position(|&b| b == b':')
        .is_some_and(|colon| colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b)));
    is_continuation || is_field
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
        if !is_header_line(&content[pos..end], first) {
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

    /// Runs a DATA phase through a [`DataStream`] and collects what it hands over
    /// for storing: the content, and how many bytes were consumed.
    fn collect_with(
        data: &[u8],
        max: u64,
        max_header: usize,
    ) -> (Result<Vec<u8>, DataRejection>, usize) {
        let mut c = DataStream::new(max, max_header);
        let mut stored = Vec::new();
        let mut consumed = 0;
        for line in data.split_inclusive(|&b| b == b'\n') {
            consumed += line.len();
            match c.line(line) {
                Fed::Held => {}
                Fed::HeaderEnd(head, first) => {
                    stored.extend_from_slice(&head);
                    stored.extend_from_slice(first);
                }
                Fed::Body(l) => stored.extend_from_slice(l),
                Fed::End(head) => {
                    if let Some(head) = head {
                        stored.extend_from_slice(&head);
                    }
                    return (c.finish().map(|()| stored), consumed);
                }
            }
            if c.refused() {
                assert!(matches!(c.phase, Phase::Body), "nothing held once refused");
            }
        }
        panic!("no end of data in {:?}", String::from_utf8_lossy(data));
    }

    fn collect(data: &[u8], max: u64) -> (Result<Vec<u8>, DataRejection>, usize) {
        collect_with(data, max, MAX_HEADER_SECTION)
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
    fn header_section_is_held_then_body_lines_pass_through() {
        let mut c = DataStream::new(1000, 1000);
        assert_eq!(c.line(b"Subject: x\r\n"), Fed::Held);
        assert_eq!(c.line(b"\tfolded\r\n"), Fed::Held);
        assert_eq!(
            c.line(b"\r\n"),
            Fed::HeaderEnd(b"Subject: x\r\n\tfolded\r\n".to_vec(), b"\r\n")
        );
        assert_eq!(c.line(b"..body\r\n"), Fed::Body(b".body\r\n"));
        assert_eq!(c.line(b".\r\n"), Fed::End(None));
        assert_eq!(c.finish(), Ok(()));

        // Headers only, no body: handed over at the end.
        let (r, _) = collect(b"Subject: x\r\n.\r\n", 1000);
        assert_eq!(r.unwrap(), b"Subject: x\r\n");
        // No header section at all.
        let (r, _) = collect(b"just text\r\n.\r\n", 1000);
        assert_eq!(r.unwrap(), b"just text\r\n");
    }

    #[test]
    fn header_section_over_the_limit_is_refused_and_not_held() {
        let mut data = b"Subject: x\r\n".repeat(100);
        data.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let (r, n) = collect_with(&data, 1_000_000, 1000);
        assert_eq!(r, Err(DataRejection::HeaderTooBig));
        assert_eq!(n, data.len(), "read to the end");
        let (r, _) = collect_with(&data, 1_000_000, 10_000);
        assert_eq!(r.unwrap(), &data[..data.len() - 3]);
    }

    #[test]
    fn held_header_allocation_never_exceeds_the_limit() {
        let mut c = DataStream::new(u64::MAX, MAX_HEADER_SECTION);
        let line = format!("X-Filler: {}\r\n", "h".repeat(4000));
        let mut most = 0;
        loop {
            let fed = c.line(line.as_bytes());
            assert_eq!(fed, Fed::Held);
            match &c.phase {
                Phase::Header { held, .. } => most = most.max(held.capacity()),
                Phase::Body => break,
            }
        }
        assert!(most <= MAX_HEADER_SECTION, "{most}");
        assert!(most > MAX_HEADER_SECTION - line.len());
        assert_eq!(c.line(b".\r\n"), Fed::End(None));
        assert_eq!(c.finish(), Err(DataRejection::HeaderTooBig));
    }

    #[test]
    fn mail_loops_are_found_in_the_held_header_section() {
        let mut data = b"Received: x\r\n".repeat(MAX_HOPS + 1);
        data.extend_from_slice(b"\r\nReceived: in the body\r\n.\r\n");
        let (r, _) = collect(&data, 1_000_000);
        assert_eq!(r, Err(DataRejection::TooManyHops));
        let (r, _) = collect(&data[14..], 1_000_000);
        assert!(r.is_ok());
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
