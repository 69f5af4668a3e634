//! The client's view of the SMTP protocol: server replies, EHLO capabilities, the
//! DATA encoding and the parameters of MAIL FROM / RCPT TO.
//!
//! Replies (RFC 5321 4.2): one or more lines `ddd-text` ending with `ddd text` (or a
//! bare `ddd`), all with the same code. The first digit is the class: 2 success,
//! 3 intermediate, 4 transient failure, 5 permanent failure. Servers that announce
//! ENHANCEDSTATUSCODES (RFC 2034) put a `class.subject.detail` code (RFC 3463) at the
//! start of the text. Replies are kept verbatim for the sender and the evidence;
//! a multi-line reply is joined with spaces into one line.
//!
//! smtp-proto's response parser strips the enhanced code out of the text and re-joins
//! lines its own way, which loses the verbatim reply; its EHLO parser rejects some
//! real-world keyword spellings. Both are small enough to do here with explicit limits.

use std::fmt;

/// Longest reply line accepted (RFC 5321 4.5.3.1.5 says 512; real servers exceed it).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (an EHLO reply has a dozen).
pub const MAX_REPLY_LINES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply lines with different codes ({0} then {1})")]
    MixedCodes(u16, u16),
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
}

/// A complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Each line as received, without CRLF (code and separator included).
    pub lines: Vec<String>,
}

/// One parsed line: code, whether it is the last line, and the text after the code.
pub fn parse_line(raw: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let line = String::from_utf8_lossy(raw);
    let line = line.trim_end_matches(['\r', '\n']);
    let bytes = line.as_bytes();
    let malformed = || ReplyError::Malformed(line.chars().take(80).collect());
    if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let code = u16::from(bytes[0] - b'0') * 100
        + u16::from(bytes[1] - b'0') * 10
        + u16::from(bytes[2] - b'0');
    if !(200..=599).contains(&code) {
        return Err(malformed());
    }
    let last = match bytes.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err(malformed()),
    };
    Ok((code, last, line.to_string()))
}

/// Collects lines into a [`Reply`].
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyBuilder {
    /// Add one line; returns the reply when it was the last line.
    pub fn push(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        if raw.len() > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let (code, last, line) = parse_line(raw)?;
        if let Some(first) = self.code {
            if first != code {
                return Err(ReplyError::MixedCodes(first, code));
            }
        }
        self.code = Some(code);
        self.lines.push(line);
        if self.lines.len() > MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        if last {
            Ok(Some(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            }))
        } else {
            Ok(None)
        }
    }
}

impl Reply {
    pub fn class(&self) -> u16 {
        self.code / 100
    }
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// The text lines after the code, e.g. the EHLO keywords.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|l| l.get(4..).unwrap_or(""))
    }

    /// The RFC 3463 enhanced status code at the start of the first line, if present
    /// and consistent with the reply class.
    pub fn enhanced_status(&self) -> Option<String> {
        let text = self.texts().next()?;
        let token = text.split_ascii_whitespace().next()?;
        let mut parts = token.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let num = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if class.len() == 1
            && u16::from(class.as_bytes()[0] - b'0') == self.class()
            && matches!(class, "2" | "4" | "5")
            && num(subject, 3)
            && num(detail, 3)
        {
            Some(token.to_string())
        } else {
            None
        }
    }

    /// The enhanced status code, or one derived from the reply class (X.0.0).
    pub fn status(&self) -> String {
        self.enhanced_status()
            .unwrap_or_else(|| format!("{}.0.0", self.class()))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join(" "))
    }
}

/// What a server announced in its EHLO reply (RFC 5321 4.1.1.1), the extensions this
/// client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    pub binary_mime: bool,
    pub requiretls: bool,
    /// RFC 1870 SIZE: `Some(0)` = announced without a limit.
    pub size: Option<u64>,
}

impl Capabilities {
    /// Read the keywords of a 250 EHLO reply (the first line is the greeting).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for text in reply.texts().skip(1) {
            let mut words = text.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binary_mime = true,
                "REQUIRETLS" => caps.requiretls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        caps
    }
}

/// Encode message content for DATA (RFC 5321 4.5.2 "transparency"): every line that
/// starts with "." gets one more "."; line ends become CRLF (a bare LF is completed,
/// RFC 5321 2.3.8); the content ends with CRLF and then the terminating ".\r\n".
/// The whole content at once; [`DotStuffer`] does the same piece by piece.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.push(content, &mut out);
    stuffer.finish(&mut out);
    out
}

/// The DATA encoding of [`dot_stuff`] for content that arrives in pieces of any
/// size. Where a line starts and whether an LF had its CR are properties of the
/// content, not of how it was cut, so they are carried from one piece to the next:
/// a "." right after a piece boundary is still stuffed when the previous piece
/// ended a line, and a CRLF split between two pieces stays one CRLF.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    prev: u8,
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            prev: 0,
            empty: true,
        }
    }

    /// Most bytes [`DotStuffer::push`] appends for `n` bytes of content: each byte
    /// becomes at most two (".." or CR LF).
    pub fn max_encoded_len(n: usize) -> usize {
        n.saturating_mul(2)
    }

    /// Encode the next piece of content, appending to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + piece.len() / 64 + 2);
        for &b in piece {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' && self.prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
            self.prev = b;
        }
        if !piece.is_empty() {
            self.empty = false;
        }
    }

    /// End the data: the missing final line end, if any, and ".\r\n".
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.empty && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// RFC 3461 4 "xtext": printable ASCII except "+" and "=" as is, everything else "+HH".
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> Reply {
        let mut b = ReplyBuilder::default();
        let mut out = None;
        for l in lines {
            out = b.push(format!("{l}\r\n").as_bytes()).unwrap();
        }
        out.expect("complete reply")
    }

    #[test]
    fn single_and_multi_line_replies() {
        let r = reply(&["250 2.1.5 Ok"]);
        assert_eq!(r.code, 250);
        assert_eq!(r.status(), "2.1.5");
        assert_eq!(r.to_string(), "250 2.1.5 Ok");

        let r = reply(&["550-5.1.1 The email account", "550 5.1.1 does not exist"]);
        assert!(r.is_permanent());
        assert_eq!(r.status(), "5.1.1");
        assert_eq!(
            r.to_string(),
            "550-5.1.1 The email account 550 5.1.1 does not exist"
        );
        let r = reply(&["220"]);
        assert_eq!(r.code, 220);
        assert_eq!(r.status(), "2.0.0");
    }

    #[test]
    fn status_is_derived_when_missing_or_inconsistent() {
        assert_eq!(reply(&["451 try later"]).status(), "4.0.0");
        // A 5.x.x code in a 4xx reply is not believed.
        assert_eq!(reply(&["451 5.7.1 weird"]).status(), "4.0.0");
        assert_eq!(reply(&["421 4.4.2 bye"]).status(), "4.4.2");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut b = ReplyBuilder::default();
        assert!(b.push(b"hello\r\n").is_err());
        let mut b = ReplyBuilder::default();
        assert!(b.push(b"25\r\n").is_err());
        let mut b = ReplyBuilder::default();
        assert!(b.push(b"250_x\r\n").is_err());
        let mut b = ReplyBuilder::default();
        assert!(b.push(b"999 x\r\n").is_err());
        let mut b = ReplyBuilder::default();
        b.push(b"250-a\r\n").unwrap();
        assert_eq!(b.push(b"251 b\r\n"), Err(ReplyError::MixedCodes(250, 251)));
        let mut b = ReplyBuilder::default();
        let long = vec![b'2'; MAX_REPLY_LINE + 1];
        assert_eq!(b.push(&long), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn ehlo_capabilities() {
        let r = reply(&[
            "250-mx.example.test Hello",
            "250-PIPELINING",
            "250-SIZE 10240000",
            "250-starttls",
            "250-ENHANCEDSTATUSCODES",
            "250-8BITMIME",
            "250-DSN",
            "250 SMTPUTF8",
        ]);
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.starttls && c.eight_bit_mime && c.dsn && c.smtputf8);
        assert!(c.enhanced_status_codes);
        assert_eq!(c.size, Some(10_240_000));
        assert!(!c.chunking);
        // The greeting line is not a keyword.
        let c = Capabilities::from_ehlo(&reply(&["250 STARTTLS"]));
        assert!(!c.starttls);
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        // Bare LF completed, missing final line end added.
        assert_eq!(dot_stuff(b"a\n.b"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        // A dot in the middle of a line is data.
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
        // The end-of-data sequence inside content can never terminate early.
        let stuffed = dot_stuff(b"x\r\n.\r\ny\r\n");
        assert_eq!(stuffed, b"x\r\n..\r\ny\r\n.\r\n");
    }

    /// Every way of cutting the content into two or three pieces encodes exactly
    /// as the whole content does.
    #[test]
    fn dot_stuffing_in_pieces_matches_the_whole() {
        let samples: [&[u8]; 6] = [
            b"a\r\n.b\r\n..c\r\n.\r\nend",
            b".\r\n.\n.",
            b"x\ny\r\n\r\n.\r\n",
            b"\r\n\r\r\n.\r.\n",
            b"no line end at all",
            b"",
        ];
        for content in samples {
            let whole = dot_stuff(content);
            for i in 0..=content.len() {
                for j in i..=content.len() {
                    let mut s = DotStuffer::new();
                    let mut out = Vec::new();
                    for piece in [&content[..i], &content[i..j], &content[j..]] {
                        s.push(piece, &mut out);
                    }
                    s.finish(&mut out);
                    assert_eq!(
                        out,
                        whole,
                        "{:?} cut at {i}, {j}",
                        String::from_utf8_lossy(content)
                    );
                }
            }
        }
        // A CRLF split between pieces stays one CRLF; a dot after the cut is stuffed.
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.push(b"a\r", &mut out);
        s.push(b"\n.b", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(
            xtext("rfc822;a+b=c@example.org"),
            "rfc822;a+2Bb+3Dc@example.org"
        );
        assert_eq!(xtext("a b"), "a+20b");
    }
}
