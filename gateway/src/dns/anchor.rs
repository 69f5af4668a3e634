//! The DNSSEC trust anchor: the root key(s) every chain of trust starts from.
//!
//! Built in are the IANA root key-signing keys KSK-2017 (key tag 20326) and KSK-2024
//! (key tag 38696). `[dns] trust_anchor = "FILE"` replaces them with the lines of
//! FILE, in zone-file format, each either
//!
//! ```text
//! .  IN DS     20326 8 2 E06D44B8...C7F8EC8D
//! .  IN DNSKEY 257 3 8 AwEAAaz/tAm8...
//! ```
//!
//! (TTL and class optional, `;` comments, parentheses spanning lines allowed).
//! Only root anchors are accepted: qrelay validates from the root down.
//!
//! A DNSKEY line is the key itself. A DS line is only a digest of a key: hickory
//! cannot take it as an anchor (field notes: "unsupported RecordType: DS"), so the
//! resolver fetches the root DNSKEY RRset once, unvalidated, and trusts exactly the
//! key whose digest matches the DS ([`ds_matches`]). Trusting the fetched key is
//! safe because the digest pins it: a forged key cannot have the configured digest.
//! The digest is computed here (RFC 4034 section 5.1.4: digest over the owner name
//! in canonical wire form followed by the DNSKEY rdata) with aws-lc-rs.

use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use base64::Engine;
use hickory_resolver::proto::dnssec::{Algorithm, PublicKeyBuf, TrustAnchors};

/// The IANA root KSKs, copied from Debian's `dns-root-data` package
/// (`/usr/share/dns/root.key`, IANA's root-anchors.xml), checked against its
/// `/usr/share/dns/root.ds` by the unit test `builtin_keys_match_iana_ds`:
///
/// ```text
/// . IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
/// . IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
/// ```
const IANA_ROOT_KSKS: &str = "\
; KSK-2017, key tag 20326
. IN DNSKEY 257 3 8 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3+/4RgWOq7HrxRixHlFlExOLAJr5emLvN7SWXgnLh4+B5xQlNVz8Og8kvArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF0jLHwVN8efS3rCj/EWgvIWgb9tarpVUDK/b58Da+sqqls3eNbuv7pr+eoZG+SrDK6nWeL3c6H5Apxz7LjVc1uTIdsIXxuOLYA4/ilBmSVIzuDWfdRUfhHdY6+cn8HFRm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwNR1AkUTV74bU=
; KSK-2024, key tag 38696
. IN DNSKEY 257 3 8 AwEAAa96jeuknZlaeSrvyAJj6ZHv28hhOKkx3rLGXVaC6rXTsDc449/cidltpkyGwCJNnOAlFNKF2jBosZBU5eeHspaQWOmOElZsjICMQMC3aeHbGiShvZsx4wMYSjH8e7Vrhbu6irwCzVBApESjbUdpWWmEnhathWu1jo+siFUiRAAxm9qyJNg/wOZqqzL/dL/q8PkcRU5oUKEpUge71M3ej2/7CPqpdVwuMoTvoB+ZOT4YeGyxMvHmbrxlFzGOHOijtzN+u1TQNatX2XBuzZNQ1K+s2CXkPIZo7s6JgZyvaBevYtxPvYLw4z9mR7K2vaF18UYH9Z9GNUUeayffKC73PYc=
";

#[derive(Debug, thiserror::Error)]
pub enum TrustAnchorError {
    #[error("cannot read the DNSSEC trust anchor file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DNSSEC trust anchor file {path}, record {record}: {reason}")]
    Syntax {
        path: PathBuf,
        record: usize,
        reason: String,
    },
    #[error("DNSSEC trust anchor file {path} holds no DS or DNSKEY record")]
    Empty { path: PathBuf },
}

/// A root DNSKEY: the fields of its rdata (RFC 4034 section 2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnskeyAnchor {
    pub flags: u16,
    pub protocol: u8,
    pub algorithm: u8,
    pub public_key: Vec<u8>,
}

impl DnskeyAnchor {
    /// The rdata in wire form: flags, protocol, algorithm, key.
    pub fn rdata(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.public_key.len());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.push(self.protocol);
        out.push(self.algorithm);
        out.extend_from_slice(&self.public_key);
        out
    }

    /// The key tag (RFC 4034 appendix B), for messages.
    pub fn key_tag(&self) -> u16 {
        key_tag(&self.rdata())
    }

    /// A "secure entry point" zone key (flags 257): what a trust anchor should be.
    /// Revoked keys (RFC 5011 bit) never are.
    pub fn usable(&self) -> bool {
        const ZONE: u16 = 0x0100;
        const REVOKE: u16 = 0x0080;
        self.flags & ZONE != 0 && self.flags & REVOKE == 0 && self.protocol == 3
    }
}

/// A root DS record (RFC 4034 section 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsAnchor {
    pub key_tag: u16,
    pub algorithm: u8,
    pub digest_type: u8,
    pub digest: Vec<u8>,
}

impl std::fmt::Display for DsAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            ". DS {} {} {} {}",
            self.key_tag,
            self.algorithm,
            self.digest_type,
            hex::encode_upper(&self.digest)
        )
    }
}

/// The trust anchor configuration, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchor {
    /// Keys to trust directly (the built-in IANA keys, or DNSKEY lines).
    Keys(Vec<DnskeyAnchor>),
    /// Digests: the root key whose digest matches is trusted (fetched at start).
    Digests(Vec<DsAnchor>),
}

impl TrustAnchor {
    /// The IANA root KSKs.
    pub fn builtin() -> TrustAnchor {
        match parse_anchor_text(IANA_ROOT_KSKS) {
            Ok(anchor) => anchor,
            // The constant above is fixed text covered by unit tests.
            Err(e) => unreachable!("built-in root anchor does not parse: {e}"),
        }
    }

    /// `[dns] trust_anchor`: the file if given, else the built-in keys.
    pub fn from_config(path: Option<&Path>) -> Result<TrustAnchor, TrustAnchorError> {
        let Some(path) = path else {
            return Ok(TrustAnchor::builtin());
        };
        let text = std::fs::read_to_string(path).map_err(|source| TrustAnchorError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_anchor_text(&text).map_err(|e| match e {
            ParseFailure::Empty => TrustAnchorError::Empty {
                path: path.to_path_buf(),
            },
            ParseFailure::Record { record, reason } => TrustAnchorError::Syntax {
                path: path.to_path_buf(),
                record,
                reason,
            },
        })
    }

    /// A one-line description for logs.
    pub fn describe(&self) -> String {
        match self {
            TrustAnchor::Keys(keys) => {
                let tags: Vec<String> = keys.iter().map(|k| k.key_tag().to_string()).collect();
                format!("root DNSKEY {}", tags.join(", "))
            }
            TrustAnchor::Digests(ds) => {
                let tags: Vec<String> = ds.iter().map(|d| d.key_tag.to_string()).collect();
                format!("root DS {}", tags.join(", "))
            }
        }
    }
}

/// The hickory trust anchor set holding `keys` (all as root keys).
pub fn trust_anchors(keys: &[DnskeyAnchor]) -> TrustAnchors {
    let mut anchors = TrustAnchors::empty();
    for k in keys {
        anchors.insert(&PublicKeyBuf::new(
            k.public_key.clone(),
            Algorithm::from_u8(k.algorithm),
        ));
    }
    anchors
}

#[derive(Debug, PartialEq, Eq)]
enum ParseFailure {
    Empty,
    Record { record: usize, reason: String },
}

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseFailure::Empty => f.write_str("no DS or DNSKEY record"),
            ParseFailure::Record { record, reason } => write!(f, "record {record}: {reason}"),
        }
    }
}

/// Split zone-file text into records: comments removed, parenthesised continuations
/// joined, blank lines dropped.
fn records(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut depth = 0usize;
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("");
        for token in line
            .replace('(', " ( ")
            .replace(')', " ) ")
            .split_whitespace()
        {
            match token {
                "(" => depth += 1,
                ")" => depth = depth.saturating_sub(1),
                t => current.push(t.to_string()),
            }
        }
        if depth == 0 && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn parse_anchor_text(text: &str) -> Result<TrustAnchor, ParseFailure> {
    let mut keys = Vec::new();
    let mut digests = Vec::new();
    for (i, tokens) in records(text).into_iter().enumerate() {
        let record = i + 1;
        let fail = |reason: String| ParseFailure::Record { record, reason };
        match parse_record(&tokens).map_err(fail)? {
            Parsed::Key(k) => keys.push(k),
            Parsed::Ds(d) => digests.push(d),
        }
    }
    match (keys.is_empty(), digests.is_empty()) {
        (true, true) => Err(ParseFailure::Empty),
        (false, true) => Ok(TrustAnchor::Keys(keys)),
        (true, false) => Ok(TrustAnchor::Digests(digests)),
        (false, false) => Err(ParseFailure::Record {
            record: 1,
            reason: "mixes DS and DNSKEY records; give one kind".into(),
        }),
    }
}

enum Parsed {
    Key(DnskeyAnchor),
    Ds(DsAnchor),
}

fn number<T: std::str::FromStr>(token: Option<&String>, what: &str) -> Result<T, String> {
    let t = token.ok_or_else(|| format!("{what} missing"))?;
    t.parse::<T>()
        .map_err(|_| format!("{what} {t:?} is not a valid number"))
}

fn parse_record(tokens: &[String]) -> Result<Parsed, String> {
    let owner = tokens.first().ok_or("empty record")?;
    if owner != "." {
        return Err(format!(
            "owner {owner:?}: only root (\".\") trust anchors are supported"
        ));
    }
    // Optional TTL and class, in either order (RFC 1035 section 5.1).
    let mut rest = tokens[1..].iter().peekable();
    while let Some(t) = rest.peek() {
        if t.eq_ignore_ascii_case("IN") || t.chars().all(|c| c.is_ascii_digit()) {
            rest.next();
        } else {
            break;
        }
    }
    let rtype = rest.next().ok_or("record type missing")?;
    let fields: Vec<&String> = rest.collect();
    match rtype.to_ascii_uppercase().as_str() {
        "DS" => {
            let key_tag = number::<u16>(fields.first().copied(), "key tag")?;
            let algorithm = number::<u8>(fields.get(1).copied(), "algorithm")?;
            let digest_type = number::<u8>(fields.get(2).copied(), "digest type")?;
            let hex_digest: String = fields.iter().skip(3).map(|s| s.as_str()).collect();
            let digest = hex::decode(&hex_digest).map_err(|e| format!("digest is not hex: {e}"))?;
            let want = digest_len(digest_type).ok_or_else(|| {
                format!("digest type {digest_type} is not supported (2 = SHA-256, 4 = SHA-384)")
            })?;
            if digest.len() != want {
                return Err(format!(
                    "digest has {} bytes, digest type {digest_type} needs {want}",
                    digest.len()
                ));
            }
            Ok(Parsed::Ds(DsAnchor {
                key_tag,
                algorithm,
                digest_type,
                digest,
            }))
        }
        "DNSKEY" => {
            let flags = number::<u16>(fields.first().copied(), "flags")?;
            let protocol = number::<u8>(fields.get(1).copied(), "protocol")?;
            let algorithm = number::<u8>(fields.get(2).copied(), "algorithm")?;
            let b64: String = fields.iter().skip(3).map(|s| s.as_str()).collect();
            if b64.is_empty() {
                return Err("public key missing".into());
            }
            let public_key = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("public key is not base64: {e}"))?;
            let key = DnskeyAnchor {
                flags,
                protocol,
                algorithm,
                public_key,
            };
            if !key.usable() {
                return Err(format!(
                    "DNSKEY flags {flags} / protocol {protocol}: not a zone key (use the KSK, flags 257)"
                ));
            }
            Ok(Parsed::Key(key))
        }
        other => Err(format!("record type {other} is not DS or DNSKEY")),
    }
}

fn digest_len(digest_type: u8) -> Option<usize> {
    match digest_type {
        2 => Some(32),
        4 => Some(48),
        _ => None,
    }
}

/// An owner name in canonical wire form (RFC 4034 section 6.2: lower case,
/// uncompressed). `"."` is the single zero byte.
fn canonical_wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

/// The DS digest of `key` at `owner` (RFC 4034 5.1.4): digest(owner | rdata).
pub fn ds_digest(owner: &str, key: &DnskeyAnchor, digest_type: u8) -> Option<Vec<u8>> {
    let algorithm = match digest_type {
        2 => &digest::SHA256,
        4 => &digest::SHA384,
        _ => return None,
    };
    let mut ctx = digest::Context::new(algorithm);
    ctx.update(&canonical_wire_name(owner));
    ctx.update(&key.rdata());
    Some(ctx.finish().as_ref().to_vec())
}

/// Whether the root `key` is the one `ds` stands for.
pub fn ds_matches(ds: &DsAnchor, key: &DnskeyAnchor) -> bool {
    ds.algorithm == key.algorithm
        && ds.key_tag == key.key_tag()
        && ds_digest(".", key, ds.digest_type).is_some_and(|d| d == ds.digest)
}

/// RFC 4034 appendix B key tag over DNSKEY rdata.
fn key_tag(rdata: &[u8]) -> u16 {
    let mut ac: u32 = 0;
    for (i, b) in rdata.iter().enumerate() {
        ac += if i & 1 == 1 {
            u32::from(*b)
        } else {
            u32::from(*b) << 8
        };
    }
    ac += (ac >> 16) & 0xFFFF;
    (ac & 0xFFFF) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const IANA_DS: &str = "\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
";

    fn keys() -> Vec<DnskeyAnchor> {
        match TrustAnchor::builtin() {
            TrustAnchor::Keys(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builtin_keys_are_the_iana_ksks() {
        let k = keys();
        let tags: Vec<u16> = k.iter().map(DnskeyAnchor::key_tag).collect();
        assert_eq!(tags, [20326, 38696]);
        assert!(k.iter().all(|k| k.algorithm == 8 && k.flags == 257));
        assert_eq!(trust_anchors(&k).len(), 2);
    }

    #[test]
    fn builtin_keys_match_iana_ds() {
        // The DS digests published by IANA (dns-root-data's root.ds) must come out of
        // the built-in keys: checks both the key material and the digest computation.
        let TrustAnchor::Digests(ds) = parse_anchor_text(IANA_DS).unwrap() else {
            panic!("DS lines parse as digests");
        };
        let k = keys();
        assert!(ds_matches(&ds[0], &k[0]));
        assert!(ds_matches(&ds[1], &k[1]));
        assert!(!ds_matches(&ds[0], &k[1]));
        assert!(!ds_matches(&ds[1], &k[0]));
        assert_eq!(
            hex::encode_upper(ds_digest(".", &k[0], 2).unwrap()),
            "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
        );
    }

    #[test]
    fn digest_agrees_with_hickory_for_sha384() {
        use hickory_resolver::proto::dnssec::rdata::DNSKEY;
        use hickory_resolver::proto::dnssec::DigestType;
        use hickory_resolver::proto::rr::Name;
        let k = &keys()[1];
        let ours = ds_digest(".", k, 4).unwrap();
        let theirs = DNSKEY::with_flags(
            k.flags,
            PublicKeyBuf::new(k.public_key.clone(), Algorithm::RSASHA256),
        )
        .to_digest(&Name::root(), DigestType::SHA384)
        .unwrap();
        assert_eq!(ours, theirs.as_ref());
        assert_eq!(ours.len(), 48);
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_wire_name("."), [0]);
        assert_eq!(
            canonical_wire_name("Ex.TEST."),
            [2, b'e', b'x', 4, b't', b'e', b's', b't', 0]
        );
    }

    #[test]
    fn anchor_files_in_zone_file_format() {
        // TTL, class, comments and parentheses, as keymgr and dig print them.
        let text = "; the test root\n\
                    .\t3600\tIN\tDNSKEY\t257 3 13 (\n\
                      mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+\n\
                      KkxLbxILfDLUT0rAK9iUzy1L53eKGQ== ) ; KSK\n";
        match parse_anchor_text(text).unwrap() {
            TrustAnchor::Keys(k) => {
                assert_eq!(k.len(), 1);
                assert_eq!(k[0].algorithm, 13);
                assert_eq!(k[0].public_key.len(), 64);
            }
            other => panic!("{other:?}"),
        }
        let ds = ". IN DS 12345 13 2 ( 0123456789ABCDEF0123456789ABCDEF\n 0123456789ABCDEF0123456789ABCDEF )";
        match parse_anchor_text(ds).unwrap() {
            TrustAnchor::Digests(d) => {
                assert_eq!(d[0].key_tag, 12345);
                assert_eq!(d[0].digest.len(), 32);
                assert_eq!(
                    d[0].to_string(),
                    format!(". DS 12345 13 2 {}", "0123456789ABCDEF".repeat(4))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_anchor_files_are_refused_with_a_reason() {
        let bad = |text: &str, needle: &str| match parse_anchor_text(text) {
            Err(e) => assert!(e.to_string().contains(needle), "{e} / {needle}"),
            Ok(a) => panic!("{text:?} parsed: {a:?}"),
        };
        bad("", "no DS or DNSKEY");
        bad("; only a comment\n", "no DS or DNSKEY");
        bad("example. IN DS 1 8 2 00", "only root");
        bad(". IN A 127.0.0.1", "not DS or DNSKEY");
        bad(". IN DS 20326 8 2 ZZ", "not hex");
        bad(". IN DS 20326 8 2 00AA", "needs 32");
        bad(". IN DS 20326 8 1 00AA", "not supported");
        bad(". IN DS x 8 2 00", "key tag");
        bad(". IN DNSKEY 257 3 8 !!!", "base64");
        bad(". IN DNSKEY 256 3 8", "public key missing");
        bad(". IN DNSKEY 385 3 8 AwEAAQ==", "not a zone key");
        let mixed = format!("{}\n{IANA_DS}", IANA_ROOT_KSKS);
        bad(&mixed, "mixes");
        // A missing file names the file.
        let err = TrustAnchor::from_config(Some(Path::new("/nonexistent/root.ds"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root.ds"), "{err}");
        assert_eq!(
            TrustAnchor::from_config(None).unwrap(),
            TrustAnchor::builtin()
        );
    }
}
