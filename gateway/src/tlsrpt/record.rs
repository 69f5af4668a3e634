//! The reporting policy: the `_smtp._tls.<domain>` TXT record (RFC 8460 section 3,
//! standards.md F1).
//!
//! ```text
//! tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim      = *WSP ";" *WSP
//! tlsrpt-field     = tlsrpt-rua / tlsrpt-extension
//! tlsrpt-version   = %s"v=TLSRPTv1"
//! tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! tlsrpt-uri       = URI          ; "mailto:" or "https:"
//! tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
//! tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
//! ```
//!
//! Section 3: of several TXT records, those not starting with `v=TLSRPTv1` are
//! discarded; unless exactly one remains, the domain does not implement TLS-RPT.
//! Unknown fields (extensions) are ignored. URIs of other schemes are ignored too;
//! a record without one usable `mailto:` or `https:` URI asks for nothing we can do
//! and counts as no record.
//!
//! A DMARC-style size limit (`mailto:a@b.example!10m`) is not part of RFC 8460 but
//! is seen in the wild; it is accepted and ignored (our reports are small).

use super::https::HttpsUrl;
use crate::dns::Resolver;

/// Where reports go: one `rua` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// A mailbox (`mailto:`), the address only (no hfields, no size limit).
    Mailto(String),
    /// An HTTPS endpoint reports are POSTed to.
    Https(HttpsUrl),
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rua::Mailto(a) => write!(f, "mailto:{a}"),
            Rua::Https(u) => write!(f, "{u}"),
        }
    }
}

/// A valid `v=TLSRPTv1` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// At least one; in the order published.
    pub rua: Vec<Rua>,
}

/// Why a TXT record is not a usable TLS-RPT policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("does not start with v=TLSRPTv1")]
    Version,
    #[error("malformed field {0:?}")]
    Field(String),
    #[error("rua given more than once")]
    DuplicateRua,
    #[error("no rua field")]
    NoRua,
    #[error("no usable mailto: or https: URI in rua")]
    NoUsableUri,
}

/// The outcome of the TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Record(TlsRptRecord),
    /// The domain asks for no reports: no record, several, or an invalid one.
    NoRecord(String),
    /// The lookup could not be completed now (SERVFAIL, timeout): try later.
    TempFail(String),
}

/// Parse one TXT record (its strings already joined).
pub fn parse_record(txt: &str) -> Result<TlsRptRecord, RecordError> {
    let mut fields = txt.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=TLSRPTv1") {
        return Err(RecordError::Version);
    }
    let rest: Vec<&str> = fields.collect();
    let mut rua: Option<Vec<Rua>> = None;
    for (i, field) in rest.iter().enumerate() {
        if field.is_empty() {
            // Only the one optional trailing delimiter may leave an empty field.
            if i + 1 == rest.len() {
                continue;
            }
            return Err(RecordError::Field(String::new()));
        }
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| RecordError::Field(field.to_string()))?;
        if key == "rua" {
            if rua.is_some() {
                return Err(RecordError::DuplicateRua);
            }
            rua = Some(parse_rua(value)?);
        } else if !ext_name_ok(key) || !ext_value_ok(value) {
            return Err(RecordError::Field(field.to_string()));
        }
    }
    let rua = rua.ok_or(RecordError::NoRua)?;
    if rua.is_empty() {
        return Err(RecordError::NoUsableUri);
    }
    Ok(TlsRptRecord { rua })
}

fn ext_name_ok(key: &str) -> bool {
    key.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && key.len() <= 32
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn ext_value_ok(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=')
}

/// The comma-separated URI list. Malformed URIs of a known scheme and URIs of
/// other schemes are skipped (logged); the caller rejects an empty result.
fn parse_rua(value: &str) -> Result<Vec<Rua>, RecordError> {
    let mut out = Vec::new();
    for uri in value.split(',').map(|u| u.trim_matches([' ', '\t'])) {
        if uri.is_empty() {
            return Err(RecordError::Field(format!("rua={value}")));
        }
        match parse_uri(uri) {
            Some(r) => {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            None => tracing::debug!(
                uri,
                "TLS-RPT rua URI ignored (not a usable mailto: or https: URI)"
            ),
        }
    }
    Ok(out)
}

fn parse_uri(uri: &str) -> Option<Rua> {
    let (scheme, rest) = uri.split_once(':')?;
    if scheme.eq_ignore_ascii_case("mailto") {
        parse_mailto(rest).map(Rua::Mailto)
    } else if scheme.eq_ignore_ascii_case("https") {
        HttpsUrl::parse(uri).ok().map(Rua::Https)
    } else {
        None
    }
}

/// The address of a `mailto:` URI (RFC 6068): hfields (`?subject=...`) dropped, a
/// DMARC-style `!size` suffix dropped, percent-encoding decoded. Only one plain
/// ASCII address is accepted: it goes into an SMTP envelope and a `To:` field.
fn parse_mailto(rest: &str) -> Option<String> {
    let addr = rest.split('?').next().unwrap_or("");
    let addr = match addr.rsplit_once('!') {
        Some((a, size)) if is_size_limit(size) => a,
        _ => addr,
    };
    let addr = percent_decode(addr)?;
    let (local, domain) = addr.rsplit_once('@')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_graphic()
                    && !matches!(
                        b,
                        b'<' | b'>' | b'(' | b')' | b',' | b';' | b'\\' | b'"' | b'[' | b']' | b'@'
                    )
            })
    };
    let domain_ok = domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    (plain(local) && domain_ok && addr.len() <= 254)
        .then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// `10m`, `500k`, `1g`, `12345`: a size with an optional unit.
fn is_size_limit(s: &str) -> bool {
    let digits = s.trim_end_matches(['k', 'm', 'g', 't', 'K', 'M', 'G', 'T']);
    !digits.is_empty() && s.len() - digits.len() <= 1 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Choose the policy among the TXT records of `_smtp._tls.<domain>`.
pub fn select_record(txts: &[String]) -> Discovery {
    let candidates: Vec<&String> = txts
        .iter()
        .filter(|t| t.starts_with("v=TLSRPTv1"))
        .collect();
    match candidates.as_slice() {
        [] => Discovery::NoRecord("no v=TLSRPTv1 TXT record".into()),
        [one] => match parse_record(one) {
            Ok(r) => Discovery::Record(r),
            Err(e) => Discovery::NoRecord(format!("invalid TLS-RPT record {one:?}: {e}")),
        },
        several => Discovery::NoRecord(format!(
            "{} v=TLSRPTv1 TXT records (exactly one is required)",
            several.len()
        )),
    }
}

/// Look up `_smtp._tls.<domain>`. Through the non-validating resolver: RFC 8460
/// does not require DNSSEC for the reporting policy, and a report is only
/// statistics about sessions, sent without enforcing the policy it reports on.
pub async fn discover(resolver: &Resolver, domain: &str) -> Discovery {
    match resolver
        .txt_unvalidated(&format!("_smtp._tls.{domain}"))
        .await
    {
        Ok(txts) if txts.is_empty() => Discovery::NoRecord("no TXT record".into()),
        Ok(txts) => select_record(&txts),
        Err(e) => Discovery::TempFail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailto(a: &str) -> Rua {
        Rua::Mailto(a.into())
    }

    #[test]
    fn f1_mailto_and_https_uris_are_parsed() {
        let r = parse_record(
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.com, https://reports.example.com/v1/tlsrpt",
        )
        .unwrap();
        assert_eq!(r.rua.len(), 2);
        assert_eq!(r.rua[0], mailto("tlsrpt@example.com"));
        match &r.rua[1] {
            Rua::Https(u) => {
                assert_eq!(u.host, "reports.example.com");
                assert_eq!(u.port, None);
                assert_eq!(u.path, "/v1/tlsrpt");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn f1_rfc_examples() {
        // RFC 8460 section 3.
        assert_eq!(
            parse_record("v=TLSRPTv1;rua=mailto:reports@example.com")
                .unwrap()
                .rua,
            vec![mailto("reports@example.com")]
        );
        let r = parse_record("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt").unwrap();
        assert!(matches!(&r.rua[0], Rua::Https(u) if u.host == "reporting.example.com"));
    }

    #[test]
    fn f1_trailing_delimiter_whitespace_and_extensions() {
        let r = parse_record("v=TLSRPTv1 ;\trua=mailto:a@b.example ; ext_1=x.y-z ;").unwrap();
        assert_eq!(r.rua, vec![mailto("a@b.example")]);
    }

    #[test]
    fn f1_size_limit_hfields_and_percent_encoding_are_handled() {
        let r = parse_record(
            "v=TLSRPTv1; rua=mailto:a@b.example!10m,mailto:c%40x@d.example?subject=x,MAILTO:e@F.Example!500",
        )
        .unwrap();
        // `c%40x@d.example` decodes to an address with two `@`: skipped.
        assert_eq!(r.rua, vec![mailto("a@b.example"), mailto("e@f.example")]);
        let r = parse_record("v=TLSRPTv1; rua=mailto:tls%2Drpt@d.example?subject=x").unwrap();
        assert_eq!(r.rua, vec![mailto("tls-rpt@d.example")]);
    }

    #[test]
    fn f1_duplicate_uris_are_sent_once() {
        let r = parse_record("v=TLSRPTv1; rua=mailto:a@b.example,mailto:a@b.example").unwrap();
        assert_eq!(r.rua, vec![mailto("a@b.example")]);
    }

    #[test]
    fn f1_invalid_records_are_rejected() {
        for bad in [
            "",
            "v=TLSRPTv2; rua=mailto:a@b.example",
            "v=tlsrptv1; rua=mailto:a@b.example",
            "rua=mailto:a@b.example; v=TLSRPTv1",
            "v=TLSRPTv1",
            "v=TLSRPTv1;",
            "v=TLSRPTv1; ruf=mailto:a@b.example",
            "v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example",
            "v=TLSRPTv1;; rua=mailto:a@b.example",
            "v=TLSRPTv1; rua=mailto:a@b.example; bad field",
            "v=TLSRPTv1; rua=mailto:a@b.example; _x=1",
            "v=TLSRPTv1; rua=mailto:a@b.example,",
            "v=TLSRPTv1; rua=http://insecure.example/report",
            "v=TLSRPTv1; rua=ftp://x.example/",
            "v=TLSRPTv1; rua=mailto:no-at-sign",
            "v=TLSRPTv1; rua=mailto:a b@c.example",
            "v=TLSRPTv1; rua=mailto:a@b.example%0D%0ABcc:x@y.example",
            "v=TLSRPTv1; rua=https://user@host.example/",
        ] {
            assert!(parse_record(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn f1_unknown_schemes_are_skipped_when_another_uri_is_usable() {
        let r = parse_record("v=TLSRPTv1; rua=ftp://x.example/r,mailto:a@b.example").unwrap();
        assert_eq!(r.rua, vec![mailto("a@b.example")]);
    }

    #[test]
    fn f1_exactly_one_tlsrpt_record_is_required() {
        let one = "v=TLSRPTv1; rua=mailto:a@b.example".to_string();
        let other = "v=spf1 -all".to_string();
        assert!(matches!(
            select_record(&[other.clone(), one.clone()]),
            Discovery::Record(_)
        ));
        assert!(matches!(select_record(&[other]), Discovery::NoRecord(_)));
        assert!(matches!(
            select_record(&[one.clone(), "v=TLSRPTv1; rua=mailto:c@d.example".into()]),
            Discovery::NoRecord(_)
        ));
        assert!(matches!(
            select_record(&["v=TLSRPTv1; nonsense".into()]),
            Discovery::NoRecord(_)
        ));
    }
}
