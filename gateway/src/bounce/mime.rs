//! Small, careful pieces of message syntax used to write a DSN by hand: dates,
//! header-safe values, folding, line wrapping, address encoding.
//!
//! Everything that ends up inside a header field or a delivery-status field goes
//! through [`clean`] first, so nothing a remote server or a client sent us (a reply
//! text, an address) can end a field early and smuggle in a field of its own.

use base64::Engine;

/// The longest value we interpolate into one field; longer text is cut (a reply of
/// several kilobytes helps nobody and could break line limits).
pub(crate) const MAX_VALUE: usize = 900;

/// Make text safe for a header or delivery-status field: CR and LF (and the other
/// C0 controls except TAB, and DEL) become a space, runs of white space collapse to
/// one, and the result is cut at [`MAX_VALUE`] characters. With `ascii_only`,
/// non-ASCII characters become '?' (fields of a `message/delivery-status` must be
/// US-ASCII, RFC 3464 section 2.1.1).
pub(crate) fn clean(s: &str, ascii_only: bool) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_VALUE));
    let mut space = false;
    for c in s.chars() {
        let c = if c.is_control() || c == '\t' { ' ' } else { c };
        if c == ' ' {
            if !space && !out.is_empty() {
                out.push(' ');
            }
            space = true;
            continue;
        }
        space = false;
        if out.chars().count() >= MAX_VALUE {
            break;
        }
        out.push(if ascii_only && !c.is_ascii() { '?' } else { c });
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Write one header field, folded (RFC 5322 section 2.2.3) at white space so lines
/// stay near 78 characters. `value` must already be [`clean`]ed. A single word longer
/// than the hard limit of 998 octets (RFC 5322 section 2.1.1) cannot occur because
/// `clean` caps values at [`MAX_VALUE`].
pub(crate) fn push_field(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line_len + 1 + word.len() > 78 && line_len > name.len() + 1 {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
}

/// Wrap plain text to lines of at most `width` characters (words longer than that
/// are split), keeping `indent` in front of every line. Returns CRLF-terminated lines.
pub(crate) fn wrap(out: &mut String, indent: &str, text: &str, width: usize) {
    let mut line = String::new();
    let mut line_chars = 0usize;
    let flush = |out: &mut String, line: &mut String, n: &mut usize| {
        out.push_str(indent);
        out.push_str(line);
        out.push_str("\r\n");
        line.clear();
        *n = 0;
    };
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        // A word too long for any line is cut into line-sized pieces.
        while word.len() > width {
            if line_chars > 0 {
                flush(out, &mut line, &mut line_chars);
            }
            let rest = word.split_off(width);
            line.extend(word.iter());
            line_chars = width;
            flush(out, &mut line, &mut line_chars);
            word = rest;
        }
        if word.is_empty() {
            continue;
        }
        if line_chars > 0 && line_chars + 1 + word.len() > width {
            flush(out, &mut line, &mut line_chars);
        }
        if line_chars > 0 {
            line.push(' ');
            line_chars += 1;
        }
        line_chars += word.len();
        line.extend(word.iter());
    }
    if line_chars > 0 {
        flush(out, &mut line, &mut line_chars);
    }
}

/// Base64 with 76-character lines (RFC 2045 section 6.8), for a text part that is
/// not plain ASCII.
pub(crate) fn base64_lines(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for chunk in encoded.as_bytes().chunks(76) {
        // The base64 alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// An address for a delivery-status field, with its address type
/// (RFC 3464 section 2.3.2: `address-type ";" generic-address`).
///
/// ASCII addresses are `rfc822`. An internationalized address uses the `utf-8`
/// address type of RFC 6533 section 3: written as is inside a
/// `message/global-delivery-status`, and with every non-ASCII character as
/// `\x{HEX}` (EmbeddedUnicodeChar) inside a plain `message/delivery-status`.
/// A backslash is always escaped the same way so the encoding stays unambiguous.
pub(crate) fn address_field(addr_type: Option<&str>, addr: &str, global: bool) -> String {
    let addr = clean(addr, false).replace(' ', "");
    let ascii = addr.is_ascii() && !addr.contains('\\');
    let addr_type = match addr_type {
        Some(t) if ascii => clean(t, true).replace(' ', ""),
        _ if ascii => "rfc822".to_string(),
        _ => "utf-8".to_string(),
    };
    if ascii {
        return format!("{addr_type}; {addr}");
    }
    let mut enc = String::with_capacity(addr.len() + 8);
    for c in addr.chars() {
        if c == '\\' || (!global && !c.is_ascii()) {
            enc.push_str(&format!("\\x{{{:X}}}", c as u32));
        } else {
            enc.push(c);
        }
    }
    format!("{addr_type}; {enc}")
}

/// Is `s` an enhanced status code (RFC 3463 section 2: class "." subject "." detail,
/// class 2, 4 or 5, subject and detail 1 to 3 digits)?
pub(crate) fn is_status_code(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    matches!(class, "2" | "4" | "5") && digits(subject) && digits(detail)
}

/// Does this text look like an SMTP reply (RFC 5321 section 4.2: a three-digit code
/// starting with 2 to 5, then a space, a hyphen or the end)? Only such text came from
/// a remote server and goes into `Diagnostic-Code: smtp; ...`.
pub(crate) fn is_smtp_reply(s: &str) -> bool {
    let b = s.trim_start().as_bytes();
    b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && (b.len() == 3 || b[3] == b' ' || b[3] == b'-')
}

/// A date-time in the RFC 5322 section 3.3 form, always in UTC:
/// `Thu, 13 Feb 2025 10:00:00 +0000`. Used for `Date:` and for the DSN date fields
/// (RFC 3464 section 2.1.1 refers to the same syntax).
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::calendar::civil_from_days(days);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m as usize).saturating_sub(1) % 12],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_739_440_800),
            "Thu, 13 Feb 2025 10:00:00 +0000"
        );
    }

    #[test]
    fn clean_removes_line_breaks() {
        assert_eq!(clean("550 a\r\nBcc: x\r\n", true), "550 a Bcc: x");
        assert_eq!(clean("é\u{7}x", true), "? x");
        assert_eq!(clean(&"a".repeat(5000), true).len(), MAX_VALUE);
    }

    #[test]
    fn folding_keeps_words() {
        let mut s = String::new();
        let v = "word ".repeat(40);
        push_field(&mut s, "Diagnostic-Code", &clean(&v, true));
        assert!(s.lines().all(|l| l.len() <= 78));
        assert_eq!(s.matches("word").count(), 40);
        assert!(s.ends_with("\r\n"));
    }

    #[test]
    fn codes_and_replies() {
        assert!(is_status_code("5.1.1"));
        assert!(is_status_code("4.7.10"));
        assert!(!is_status_code("6.1.1"));
        assert!(!is_status_code("5.1"));
        assert!(!is_status_code("5.1.1.1"));
        assert!(is_smtp_reply("550 5.1.1 no such user"));
        assert!(is_smtp_reply("451-first line"));
        assert!(!is_smtp_reply("connection refused"));
        assert!(!is_smtp_reply("5500"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address_field(None, "a@b.example", false),
            "rfc822; a@b.example"
        );
        assert_eq!(
            address_field(None, "jö@b.example", false),
            "utf-8; j\\x{F6}@b.example"
        );
        assert_eq!(
            address_field(None, "jö@b.example", true),
            "utf-8; jö@b.example"
        );
    }
}
