//! Envelope addresses and ESMTP parameters of MAIL FROM / RCPT TO (RFC 5321
//! section 4.1.2, RFC 3461 section 4, RFC 6531 section 3.3).
//!
//! Hand-written rather than smtp-proto's parser: that parser silently strips source
//! routes and quotes, and the one thing this box must never do is relay something
//! whose routing is hidden inside the local part. So we keep the path exactly as
//! written, and refuse from everybody the old relay tricks
//! ([`PathError::Hostile`]): source routes (`<@a,@b:u@c>`, RFC 5321 section 4.1.1.3
//! lets us not honour them), the percent hack (`u%other@domain`), UUCP bang paths
//! (`host!u`), more than one `@`, and quoted local parts hiding `@`, `%` or `!`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 section 4.5.3.1.3: a path is at most 256 octets including the brackets.
const MAX_PATH: usize = 254;
/// RFC 5321 section 4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 section 4.5.3.1.2.
const MAX_DOMAIN: usize = 255;
/// RFC 3461 section 4.4 (ENVID) and 4.2 (ORCPT).
pub(crate) const MAX_ENVID: usize = 100;
pub(crate) const MAX_ORCPT: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// Not an address at all.
    #[error("{0}")]
    Syntax(&'static str),
    /// Syntactically possible but a routing trick: refused from everybody.
    #[error("{0}")]
    Hostile(&'static str),
    /// Non-ASCII characters without the SMTPUTF8 parameter (RFC 6531 section 3.2).
    #[error("non-ASCII address needs the SMTPUTF8 parameter")]
    NeedsUtf8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mailbox {
    /// The local part exactly as written (quoted strings keep their quotes).
    pub local: String,
    pub domain: String,
    /// The domain is an address literal (`[192.0.2.1]`, `[IPv6:...]`).
    pub literal: bool,
}

impl Mailbox {
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Path {
    /// `<>`: the null reverse-path (bounces).
    Null,
    /// `<Postmaster>` without a domain (RFC 5321 section 4.1.1.3).
    Postmaster,
    Mailbox(Mailbox),
}

/// Split the argument after `FROM:` / `TO:` into the text inside the angle brackets
/// and the parameter text that follows. Quotes are honoured so a `>` inside a quoted
/// local part does not end the path.
pub(crate) fn split_path(arg: &str) -> Result<(&str, &str), PathError> {
    // Tolerate `FROM: <a@b>` (a common client deviation); require the brackets.
    let arg = arg.trim_start_matches(' ');
    let rest = arg
        .strip_prefix('<')
        .ok_or(PathError::Syntax("the address must be enclosed in <>"))?;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let inner = &rest[..i];
                let after = &rest[i + 1..];
                if !after.is_empty() && !after.starts_with(' ') {
                    return Err(PathError::Syntax("garbage after the address"));
                }
                return Ok((inner, after.trim_start_matches(' ')));
            }
            _ => {}
        }
    }
    Err(PathError::Syntax("missing closing >"))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Parse the text between `<` and `>`. `utf8` is true when the transaction carries
/// SMTPUTF8, which allows non-ASCII local parts and domains (RFC 6531 section 3.3).
pub(crate) fn parse_path(inner: &str, utf8: bool) -> Result<Path, PathError> {
    if inner.is_empty() {
        return Ok(Path::Null);
    }
    if inner.len() > MAX_PATH {
        return Err(PathError::Syntax("address too long"));
    }
    if inner.starts_with('@') {
        return Err(PathError::Hostile("source routes are not accepted"));
    }
    if !utf8 && !inner.is_ascii() {
        return Err(PathError::NeedsUtf8);
    }
    let (local, rest) = if let Some(q) = inner.strip_prefix('"') {
        let end = quoted_end(q)?;
        (&inner[..end + 2], &inner[end + 2..])
    } else {
        let end = inner.find('@').unwrap_or(inner.len());
        let local = &inner[..end];
        dot_string(local)?;
        (local, &inner[end..])
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(PathError::Syntax("local part longer than 64 octets"));
    }
    let Some(domain) = rest.strip_prefix('@') else {
        if rest.is_empty() && local.eq_ignore_ascii_case("postmaster") {
            return Ok(Path::Postmaster);
        }
        if rest.is_empty() {
            return Err(PathError::Syntax("the address needs a domain"));
        }
        return Err(PathError::Syntax("bad local part"));
    };
    if domain.contains('@') {
        return Err(PathError::Hostile("more than one @ in the address"));
    }
    let literal = domain.starts_with('[');
    if literal {
        address_literal(domain)?;
    } else {
        domain_name(domain)?;
    }
    Ok(Path::Mailbox(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
        literal,
    }))
}

/// An unquoted local part: atoms separated by single dots. `%` and `!` are atext
/// but are refused as the percent hack and bang paths.
fn dot_string(local: &str) -> Result<(), PathError> {
    if local.is_empty() {
        return Err(PathError::Syntax("empty local part"));
    }
    if local.contains('%') {
        return Err(PathError::Hostile("the percent hack (%) is not accepted"));
    }
    if local.contains('!') {
        return Err(PathError::Hostile("bang paths (!) are not accepted"));
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(PathError::Syntax("misplaced dot in the local part"));
        }
        if !atom.chars().all(|c| is_atext(c) || !c.is_ascii()) {
            return Err(PathError::Syntax("bad character in the local part"));
        }
    }
    Ok(())
}

/// Index (in `q`, the text after the opening quote) of the closing quote of a
/// Quoted-string. Refuses quoted local parts that hide routing characters.
fn quoted_end(q: &str) -> Result<usize, PathError> {
    let mut chars = q.char_indices();
    while let Some((i, c)) = chars.next() {
        let c = match c {
            '"' => {
                if i == 0 {
                    return Err(PathError::Syntax("empty quoted local part"));
                }
                return Ok(i);
            }
            // quoted-pairSMTP = %d92 %d32-126
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => e,
                _ => return Err(PathError::Syntax("bad quoted pair in the local part")),
            },
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531)
            c if (' '..='~').contains(&c) || !c.is_ascii() => c,
            _ => return Err(PathError::Syntax("bad character in the quoted local part")),
        };
        if matches!(c, '@' | '%' | '!') {
            return Err(PathError::Hostile(
                "quoted local parts containing @, % or ! are not accepted",
            ));
        }
    }
    Err(PathError::Syntax("unterminated quoted local part"))
}

fn domain_name(domain: &str) -> Result<(), PathError> {
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return Err(PathError::Syntax("bad domain"));
    }
    for label in domain.split('.') {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label.chars().all(ok_char)
        {
            return Err(PathError::Syntax("bad domain"));
        }
    }
    Ok(())
}

fn address_literal(domain: &str) -> Result<(), PathError> {
    let inner = domain
        .strip_prefix('[')
        .and_then(|d| d.strip_suffix(']'))
        .ok_or(PathError::Syntax("bad address literal"))?;
    let ok = match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(PathError::Syntax("bad address literal"))
    }
}

/// One `keyword[=value]` ESMTP parameter; the keyword upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Param<'a> {
    pub keyword: String,
    pub value: Option<&'a str>,
}

/// Parse Mail-parameters / Rcpt-parameters (RFC 5321 section 4.1.2): keywords are
/// `(ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`, values printable without `=` or
/// spaces. A keyword given twice is an error.
pub(crate) fn parse_params(text: &str) -> Result<Vec<Param<'_>>, &'static str> {
    let mut out: Vec<Param<'_>> = Vec::new();
    for item in text.split(' ').filter(|s| !s.is_empty()) {
        let (kw, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let mut chars = kw.chars();
        let good_kw = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !good_kw {
            return Err("bad parameter keyword");
        }
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_ascii_control() || c == '=') {
                return Err("bad parameter value");
            }
        }
        let keyword = kw.to_ascii_uppercase();
        if out.iter().any(|p| p.keyword == keyword) {
            return Err("parameter given twice");
        }
        out.push(Param { keyword, value });
    }
    Ok(out)
}

/// Decode RFC 3461 section 4 xtext: `+XX` hex escapes, other characters printable
/// ASCII except `+` and `=`.
pub(crate) fn xtext_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3).ok_or("truncated xtext escape")?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err("bad xtext escape");
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad xtext escape")?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return Err("bad character in xtext"),
        }
    }
    String::from_utf8(out).map_err(|_| "xtext does not decode to UTF-8")
}

/// RFC 3461 section 4.2 ORCPT: `addr-type ";" xtext`, returned as
/// `addr-type;decoded-address`.
pub(crate) fn parse_orcpt(value: &str) -> Result<String, &'static str> {
    if value.len() > MAX_ORCPT {
        return Err("ORCPT too long");
    }
    let (kind, addr) = value
        .split_once(';')
        .ok_or("ORCPT needs addr-type;address")?;
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("bad ORCPT address type");
    }
    let addr = xtext_decode(addr)?;
    if addr.is_empty() || addr.chars().any(|c| c.is_control()) {
        return Err("bad ORCPT address");
    }
    Ok(format!("{kind};{addr}"))
}

/// RFC 3461 section 4.4 ENVID: xtext, at most 100 characters, printable ASCII.
pub(crate) fn parse_envid(value: &str) -> Result<String, &'static str> {
    if value.len() > MAX_ENVID {
        return Err("ENVID longer than 100 characters");
    }
    let id = xtext_decode(value)?;
    if id.is_empty() || !id.bytes().all(|c| (32..=126).contains(&c)) {
        return Err("ENVID must be printable ASCII");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        match parse_path(s, false) {
            Ok(Path::Mailbox(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn ordinary_addresses_parse() {
        let m = mailbox("first.last+tag@sub.example.org");
        assert_eq!(m.local, "first.last+tag");
        assert_eq!(m.domain, "sub.example.org");
        assert_eq!(
            mailbox("\"john doe\"@example.org").address(),
            "\"john doe\"@example.org"
        );
        assert!(mailbox("a@[192.0.2.1]").literal);
        assert!(mailbox("a@[IPv6:2001:db8::1]").literal);
        assert_eq!(parse_path("", false), Ok(Path::Null));
        assert_eq!(parse_path("Postmaster", false), Ok(Path::Postmaster));
    }

    #[test]
    fn relay_tricks_are_hostile() {
        for s in [
            "@a.example,@b.example:user@c.example",
            "@a.example:user@c.example",
            "user%other.example@relay.example",
            "user%other.example",
            "other.example!user",
            "other!user@relay.example",
            "user@other.example@relay.example",
            "\"user@other.example\"@relay.example",
            "\"user%other.example\"@relay.example",
            "\"user\\@other.example\"@relay.example",
            "\"host!user\"@relay.example",
        ] {
            assert!(
                matches!(parse_path(s, false), Err(PathError::Hostile(_))),
                "{s}: {:?}",
                parse_path(s, false)
            );
        }
    }

    #[test]
    fn malformed_addresses_are_syntax_errors() {
        for s in [
            "user",
            "user@",
            ".user@example.org",
            "us..er@example.org",
            "user@-example.org",
            "user@exa_mple.org",
            "user@example..org",
            "user@[300.1.1.1]",
            "\"unterminated.example.org",
            "us er@example.org",
        ] {
            assert!(
                matches!(parse_path(s, false), Err(PathError::Syntax(_))),
                "{s}: {:?}",
                parse_path(s, false)
            );
        }
        let long = format!("{}@example.org", "a".repeat(65));
        assert!(matches!(
            parse_path(&long, false),
            Err(PathError::Syntax(_))
        ));
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        assert_eq!(
            parse_path("jürgen@example.de", false),
            Err(PathError::NeedsUtf8)
        );
        assert!(matches!(
            parse_path("jürgen@bücher.example", true),
            Ok(Path::Mailbox(_))
        ));
    }

    #[test]
    fn split_path_honours_quotes_and_params() {
        assert_eq!(split_path("<a@b> SIZE=10"), Ok(("a@b", "SIZE=10")));
        assert_eq!(split_path(" <a@b>"), Ok(("a@b", "")));
        assert_eq!(split_path("<\"x>y\"@b>"), Ok(("\"x>y\"@b", "")));
        assert!(split_path("a@b").is_err());
        assert!(split_path("<a@b").is_err());
        assert!(split_path("<a@b>x").is_err());
    }

    #[test]
    fn params_parse_and_reject_duplicates() {
        let p = parse_params("size=100  BODY=8BITMIME SMTPUTF8").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].keyword, "SIZE");
        assert_eq!(p[0].value, Some("100"));
        assert_eq!(p[2].value, None);
        assert!(parse_params("SIZE=1 size=2").is_err());
        assert!(parse_params("-X=1").is_err());
        assert!(parse_params("X=").is_err());
    }

    #[test]
    fn dsn_xtext_decoding() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").unwrap(), "a+b=c");
        assert!(xtext_decode("a+2").is_err());
        assert!(xtext_decode("a=b").is_err());
        assert_eq!(
            parse_orcpt("rfc822;user+40example.org").unwrap(),
            "rfc822;user@example.org"
        );
        assert!(parse_orcpt("rfc822").is_err());
        assert_eq!(parse_envid("QQ+2B1").unwrap(), "QQ+1");
        assert!(parse_envid(&"x".repeat(101)).is_err());
    }
}
