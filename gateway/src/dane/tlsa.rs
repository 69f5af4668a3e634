//! TLSA records: parsing (DNS wire rdata and presentation format), which records an
//! SMTP client may use (RFC 7672 section 3.1, standards.md D5), digest agility
//! (RFC 7671 section 9, D9) and matching a record against a certificate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;

/// Certificate usage PKIX-TA(0): a CA that must also be a public, PKIX-trusted root.
pub const USAGE_PKIX_TA: u8 = 0;
/// Certificate usage PKIX-EE(1): the server certificate, which must also pass PKIX.
pub const USAGE_PKIX_EE: u8 = 1;
/// Certificate usage DANE-TA(2): a trust anchor named by DNS (RFC 7671 section 5.2).
pub const USAGE_DANE_TA: u8 = 2;
/// Certificate usage DANE-EE(3): the server's own certificate or key (RFC 7671 5.1).
pub const USAGE_DANE_EE: u8 = 3;
/// Selector Cert(0): the whole certificate, DER.
pub const SELECTOR_CERT: u8 = 0;
/// Selector SPKI(1): the certificate's SubjectPublicKeyInfo, DER.
pub const SELECTOR_SPKI: u8 = 1;
/// Matching type Full(0): the selected bytes themselves, no digest.
pub const MATCHING_FULL: u8 = 0;
/// Matching type SHA2-256(1): 32 bytes.
pub const MATCHING_SHA256: u8 = 1;
/// Matching type SHA2-512(2): 64 bytes.
pub const MATCHING_SHA512: u8 = 2;

/// Why a TLSA record cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsaParseError {
    #[error(
        "TLSA rdata is {0} bytes; at least 4 are needed (usage, selector, matching type, data)"
    )]
    TooShort(usize),
    #[error("TLSA record needs four fields \"usage selector matching-type hex-data\"")]
    MissingField,
    #[error("TLSA {field} {value:?} is not a number from 0 to 255")]
    BadNumber { field: &'static str, value: String },
    #[error("TLSA certificate association data is not hexadecimal: {0}")]
    BadHex(String),
}

/// One TLSA record (RFC 6698 section 2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the full certificate, 1 the SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 full data, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

/// Why a record is not usable by an SMTP client (standards.md D5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// RFC 7672 section 3.1.3: SMTP clients cannot know which CAs the server's
    /// operator considers "public", so PKIX-TA(0) and PKIX-EE(1) are treated as
    /// unusable.
    #[error("usage {0} (PKIX-TA/PKIX-EE) is not used for SMTP (RFC 7672 3.1.3)")]
    PkixUsage(u8),
    #[error("unknown certificate usage {0}")]
    UnknownUsage(u8),
    #[error("unknown selector {0}")]
    UnknownSelector(u8),
    #[error("unknown matching type {0}")]
    UnknownMatching(u8),
    #[error("matching type {matching} needs {expected} bytes of data, the record has {got}")]
    WrongDigestLength {
        matching: u8,
        expected: usize,
        got: usize,
    },
    #[error("the record carries no certificate association data")]
    Empty,
}

impl Tlsa {
    /// Parse DNS wire-format rdata: one byte each of usage, selector and matching
    /// type, then the association data (RFC 6698 section 2.1). Any values parse;
    /// whether the record is usable is [`Tlsa::unusable_reason`]'s question.
    pub fn from_rdata(rdata: &[u8]) -> Result<Tlsa, TlsaParseError> {
        match rdata {
            [usage, selector, matching, data @ ..] if !data.is_empty() => Ok(Tlsa {
                usage: *usage,
                selector: *selector,
                matching: *matching,
                data: data.to_vec(),
            }),
            _ => Err(TlsaParseError::TooShort(rdata.len())),
        }
    }

    /// The record as DNS wire-format rdata.
    pub fn to_rdata(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.data.len());
        out.extend_from_slice(&[self.usage, self.selector, self.matching]);
        out.extend_from_slice(&self.data);
        out
    }

    /// The association data as lower-case hex.
    pub fn data_hex(&self) -> String {
        hex::encode(&self.data)
    }

    /// `None` when an SMTP client may use this record, else why not (D5,
    /// RFC 7672 section 3.1 and RFC 6698 section 2.1).
    pub fn unusable_reason(&self) -> Option<Unusable> {
        match self.usage {
            USAGE_DANE_TA | USAGE_DANE_EE => {}
            USAGE_PKIX_TA | USAGE_PKIX_EE => return Some(Unusable::PkixUsage(self.usage)),
            other => return Some(Unusable::UnknownUsage(other)),
        }
        if !matches!(self.selector, SELECTOR_CERT | SELECTOR_SPKI) {
            return Some(Unusable::UnknownSelector(self.selector));
        }
        let expected = match self.matching {
            MATCHING_FULL => None,
            MATCHING_SHA256 => Some(32),
            MATCHING_SHA512 => Some(64),
            other => return Some(Unusable::UnknownMatching(other)),
        };
        if self.data.is_empty() {
            return Some(Unusable::Empty);
        }
        match expected {
            // A digest of the wrong length can never match anything; RFC 7671
            // section 5 (and 6698 2.1.3) make such a record unusable rather than
            // "matches nothing", which matters: an RRset of only such records is
            // "no usable records" (D5), not an authentication failure (D6).
            Some(n) if self.data.len() != n => Some(Unusable::WrongDigestLength {
                matching: self.matching,
                expected: n,
                got: self.data.len(),
            }),
            _ => None,
        }
    }

    pub fn is_usable(&self) -> bool {
        self.unusable_reason().is_none()
    }

    /// The plain-language mnemonic of RFC 7218, e.g. "DANE-EE(3) SPKI(1) SHA2-256(1)".
    pub fn mnemonic(&self) -> String {
        let usage = match self.usage {
            USAGE_PKIX_TA => "PKIX-TA",
            USAGE_PKIX_EE => "PKIX-EE",
            USAGE_DANE_TA => "DANE-TA",
            USAGE_DANE_EE => "DANE-EE",
            _ => "usage",
        };
        let selector = match self.selector {
            SELECTOR_CERT => "Cert",
            SELECTOR_SPKI => "SPKI",
            _ => "selector",
        };
        let matching = match self.matching {
            MATCHING_FULL => "Full",
            MATCHING_SHA256 => "SHA2-256",
            MATCHING_SHA512 => "SHA2-512",
            _ => "matching",
        };
        format!(
            "{usage}({}) {selector}({}) {matching}({})",
            self.usage, self.selector, self.matching
        )
    }

    /// Whether this record's association data matches the given certificate.
    /// `spki` is the certificate's SubjectPublicKeyInfo (DER, with its outer
    /// SEQUENCE); `None` when the certificate could not be parsed, in which case
    /// selector-1 records cannot match. Usage is not looked at here.
    pub fn matches(&self, cert_der: &[u8], spki: Option<&[u8]>) -> bool {
        let selected = match self.selector {
            SELECTOR_CERT => cert_der,
            SELECTOR_SPKI => match spki {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            MATCHING_FULL => selected == self.data.as_slice(),
            MATCHING_SHA256 => {
                digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice()
            }
            MATCHING_SHA512 => {
                digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice()
            }
            _ => false,
        }
    }
}

impl fmt::Display for Tlsa {
    /// Presentation format, `3 1 1 <hex>` (RFC 6698 section 2.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            self.data_hex()
        )
    }
}

impl FromStr for Tlsa {
    type Err = TlsaParseError;

    /// Presentation format: "usage selector matching-type hex", where the hex may be
    /// split by white space (RFC 6698 section 2.2). Parentheses of multi-line zone
    /// file entries are not accepted: pass the record's fields, not a zone file.
    fn from_str(s: &str) -> Result<Tlsa, TlsaParseError> {
        let mut fields = s.split_whitespace();
        let mut number = |field: &'static str| -> Result<u8, TlsaParseError> {
            let value = fields.next().ok_or(TlsaParseError::MissingField)?;
            value.parse::<u8>().map_err(|_| TlsaParseError::BadNumber {
                field,
                value: value.to_string(),
            })
        };
        let usage = number("usage")?;
        let selector = number("selector")?;
        let matching = number("matching type")?;
        let hex_text: String = fields.collect();
        if hex_text.is_empty() {
            return Err(TlsaParseError::MissingField);
        }
        let data = hex::decode(&hex_text).map_err(|e| TlsaParseError::BadHex(e.to_string()))?;
        Ok(Tlsa {
            usage,
            selector,
            matching,
            data,
        })
    }
}

/// A TLSA RRset as it came from DNS (validated by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsaSet {
    records: Vec<Tlsa>,
}

impl TlsaSet {
    pub fn new(records: Vec<Tlsa>) -> TlsaSet {
        TlsaSet { records }
    }

    /// Every record of the RRset, usable or not (for evidence: A5 wants the RRset).
    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records an SMTP client uses for authentication:
    ///
    /// 1. D5: drop unusable records ([`Tlsa::unusable_reason`]): usages 0/1, unknown
    ///    selectors or matching types, digests of the wrong length. This happens
    ///    *before* step 2, so a malformed record cannot influence the choice of digest.
    /// 2. D9, RFC 7671 section 9 (digest algorithm agility): for each combination of
    ///    usage and selector, keep only the records whose matching type is the
    ///    strongest digest present for that combination (SHA2-512(2) over
    ///    SHA2-256(1)). A server operator who publishes both during a transition to
    ///    a stronger digest thereby tells clients that support it to ignore the
    ///    weaker one, so an attacker who could break SHA-256 gains nothing. Full(0)
    ///    is not a digest: it is the data itself and cannot be weakened by a broken
    ///    hash, so Full(0) records are always kept (RFC 7671 section 9's example:
    ///    with "3 1 0", "3 1 1" and "3 1 2" published, a key matching "3 1 0" or
    ///    "3 1 2" is accepted, one matching only "3 1 1" is not).
    ///
    /// An empty result from a non-empty, secure RRset means "TLS mandatory without
    /// authentication" (D5); a non-empty one means authentication must succeed (D6).
    pub fn usable(&self) -> UsableTlsa {
        let usable: Vec<&Tlsa> = self.records.iter().filter(|r| r.is_usable()).collect();
        let mut strongest: BTreeMap<(u8, u8), u8> = BTreeMap::new();
        for r in usable.iter().filter(|r| r.matching != MATCHING_FULL) {
            let best = strongest.entry((r.usage, r.selector)).or_insert(r.matching);
            if digest_strength(r.matching) > digest_strength(*best) {
                *best = r.matching;
            }
        }
        let mut records: Vec<Tlsa> = usable
            .into_iter()
            .filter(|r| {
                r.matching == MATCHING_FULL
                    || strongest.get(&(r.usage, r.selector)) == Some(&r.matching)
            })
            .cloned()
            .collect();
        records.sort();
        records.dedup();
        UsableTlsa { records }
    }
}

impl FromIterator<Tlsa> for TlsaSet {
    fn from_iter<I: IntoIterator<Item = Tlsa>>(iter: I) -> TlsaSet {
        TlsaSet::new(iter.into_iter().collect())
    }
}

/// The client's preference among the digests it supports (RFC 7671 section 9: the
/// order is the client's choice; SHA2-512 is the stronger).
fn digest_strength(matching: u8) -> u8 {
    match matching {
        MATCHING_SHA512 => 2,
        MATCHING_SHA256 => 1,
        _ => 0,
    }
}

/// The usable records of a TLSA RRset after D5 and D9; only [`TlsaSet::usable`]
/// makes one, so a [`super::DaneVerifier`] never sees an unfiltered record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsableTlsa {
    records: Vec<Tlsa>,
}

impl UsableTlsa {
    pub fn records(&self) -> &[Tlsa] {
        &self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

/// Split a DER SubjectPublicKeyInfo into the contents of its outer SEQUENCE, the
/// form rustls-webpki keeps in a trust anchor. `None` unless `der` is exactly one
/// well-formed SEQUENCE.
pub(crate) fn spki_contents(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(n);
        // DER: the shortest form, no leading zero byte.
        if len_bytes.first() == Some(&0) {
            return None;
        }
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        (len, rest)
    };
    (rest.len() == len).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str) -> Tlsa {
        s.parse().expect("record")
    }

    fn h(n: usize, byte: u8) -> String {
        hex::encode(vec![byte; n])
    }

    #[test]
    fn parses_presentation_and_rdata_alike() {
        let hex32 = h(32, 0xab);
        let t = rec(&format!("3 1 1 {hex32}"));
        assert_eq!((t.usage, t.selector, t.matching), (3, 1, 1));
        assert_eq!(t.data, vec![0xab; 32]);
        assert_eq!(t.to_string(), format!("3 1 1 {hex32}"));
        assert_eq!(Tlsa::from_rdata(&t.to_rdata()).unwrap(), t);
        // Hex split by white space (zone files often wrap it).
        let split = format!("2 0 1 {} {}", &hex32[..20], &hex32[20..]);
        assert_eq!(rec(&split).data, vec![0xab; 32]);
        // Upper-case hex.
        assert_eq!(rec("3 1 0 ABCD").data, vec![0xab, 0xcd]);
        assert_eq!(rec("3 1 1 00").mnemonic(), "DANE-EE(3) SPKI(1) SHA2-256(1)");
    }

    #[test]
    fn rejects_malformed_records() {
        assert_eq!(
            Tlsa::from_rdata(&[3, 1, 1]),
            Err(TlsaParseError::TooShort(3))
        );
        assert_eq!(Tlsa::from_rdata(&[]), Err(TlsaParseError::TooShort(0)));
        assert_eq!("3 1 1".parse::<Tlsa>(), Err(TlsaParseError::MissingField));
        assert!(matches!(
            "3 1 256 00".parse::<Tlsa>(),
            Err(TlsaParseError::BadNumber { .. })
        ));
        assert!(matches!(
            "3 x 1 00".parse::<Tlsa>(),
            Err(TlsaParseError::BadNumber { .. })
        ));
        assert!(matches!(
            "3 1 1 abc".parse::<Tlsa>(),
            Err(TlsaParseError::BadHex(_))
        ));
        assert!(matches!(
            "3 1 1 zz".parse::<Tlsa>(),
            Err(TlsaParseError::BadHex(_))
        ));
    }

    #[test]
    fn d5_usage_0_and_1_are_unusable() {
        for usage in [0u8, 1] {
            let t = rec(&format!("{usage} 1 1 {}", h(32, 1)));
            assert_eq!(t.unusable_reason(), Some(Unusable::PkixUsage(usage)));
        }
        let set = TlsaSet::new(vec![
            rec(&format!("0 0 1 {}", h(32, 1))),
            rec(&format!("1 1 1 {}", h(32, 2))),
        ]);
        assert!(
            set.usable().is_empty(),
            "PKIX usages only: no usable record"
        );
        assert!(rec(&format!("4 1 1 {}", h(32, 1)))
            .unusable_reason()
            .is_some());
        assert!(rec(&format!("2 1 1 {}", h(32, 1))).is_usable());
        assert!(rec(&format!("3 1 1 {}", h(32, 1))).is_usable());
    }

    #[test]
    fn d5_wrong_digest_length_is_unusable() {
        assert_eq!(
            rec(&format!("3 1 1 {}", h(31, 1))).unusable_reason(),
            Some(Unusable::WrongDigestLength {
                matching: 1,
                expected: 32,
                got: 31
            })
        );
        assert!(!rec(&format!("3 1 1 {}", h(33, 1))).is_usable());
        assert!(!rec(&format!("3 1 2 {}", h(32, 1))).is_usable());
        assert!(rec(&format!("3 1 2 {}", h(64, 1))).is_usable());
        // Full(0) has no fixed length, but must carry data.
        assert!(rec("3 0 0 01").is_usable());
        let empty = Tlsa {
            usage: 3,
            selector: 1,
            matching: 0,
            data: vec![],
        };
        assert_eq!(empty.unusable_reason(), Some(Unusable::Empty));
    }

    #[test]
    fn d5_unknown_selector_and_matching_are_unusable() {
        assert_eq!(
            rec(&format!("3 2 1 {}", h(32, 1))).unusable_reason(),
            Some(Unusable::UnknownSelector(2))
        );
        assert_eq!(
            rec(&format!("3 1 3 {}", h(32, 1))).unusable_reason(),
            Some(Unusable::UnknownMatching(3))
        );
    }

    #[test]
    fn d9_only_strongest_digest_per_usage_selector_is_used() {
        let ee_spki_256 = rec(&format!("3 1 1 {}", h(32, 1)));
        let ee_spki_512 = rec(&format!("3 1 2 {}", h(64, 2)));
        let ee_spki_full = rec("3 1 0 3000");
        let ee_cert_256 = rec(&format!("3 0 1 {}", h(32, 3)));
        let ta_spki_256 = rec(&format!("2 1 1 {}", h(32, 4)));
        let set = TlsaSet::new(vec![
            ee_spki_256.clone(),
            ee_spki_512.clone(),
            ee_spki_full.clone(),
            ee_cert_256.clone(),
            ta_spki_256.clone(),
        ]);
        let usable = set.usable();
        let got = usable.records();
        // 3 1 1 is dropped: 3 1 2 is present for the same usage and selector.
        assert!(!got.contains(&ee_spki_256), "{got:?}");
        assert!(got.contains(&ee_spki_512));
        // Full(0) is not a digest and stays.
        assert!(got.contains(&ee_spki_full));
        // Other usage/selector combinations keep their own strongest digest.
        assert!(got.contains(&ee_cert_256));
        assert!(got.contains(&ta_spki_256));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn d9_malformed_stronger_digest_does_not_suppress_a_usable_one() {
        // A 3 1 2 record with a 32-byte "digest" is unusable (D5) and must not make
        // the correct 3 1 1 record disappear (D9 runs on usable records only).
        let good = rec(&format!("3 1 1 {}", h(32, 1)));
        let bad512 = rec(&format!("3 1 2 {}", h(32, 2)));
        let usable = TlsaSet::new(vec![good.clone(), bad512]).usable();
        assert_eq!(usable.records(), std::slice::from_ref(&good));
    }

    #[test]
    fn matches_by_selector_and_digest() {
        let cert = b"certificate bytes";
        let spki = b"spki bytes";
        let sha256 = |d: &[u8]| hex::encode(digest::digest(&digest::SHA256, d).as_ref());
        let sha512 = |d: &[u8]| hex::encode(digest::digest(&digest::SHA512, d).as_ref());
        assert!(rec(&format!("3 0 1 {}", sha256(cert))).matches(cert, Some(spki)));
        assert!(rec(&format!("3 1 1 {}", sha256(spki))).matches(cert, Some(spki)));
        assert!(rec(&format!("3 1 2 {}", sha512(spki))).matches(cert, Some(spki)));
        assert!(rec(&format!("3 0 0 {}", hex::encode(cert))).matches(cert, Some(spki)));
        // The selector decides what is hashed.
        assert!(!rec(&format!("3 1 1 {}", sha256(cert))).matches(cert, Some(spki)));
        assert!(!rec(&format!("3 1 1 {}", sha256(spki))).matches(cert, None));
    }

    #[test]
    fn spki_contents_strips_exactly_one_sequence() {
        assert_eq!(
            spki_contents(&[0x30, 0x02, 0x05, 0x00]),
            Some(&[0x05, 0x00][..])
        );
        assert_eq!(spki_contents(&[0x30, 0x03, 0x05, 0x00]), None);
        assert_eq!(spki_contents(&[0x31, 0x02, 0x05, 0x00]), None);
        assert_eq!(spki_contents(&[]), None);
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(vec![0u8; 0x80]);
        assert_eq!(spki_contents(&long).map(<[u8]>::len), Some(0x80));
        // Non-minimal length encodings are not DER.
        assert_eq!(spki_contents(&[0x30, 0x81, 0x02, 0x05, 0x00]), None);
    }
}
