//! Policy discovery: the `_mta-sts.<domain>` TXT record (RFC 8461 section 3.1).

use crate::dns::Resolver;

/// A valid `v=STSv1` record: what matters is its `id`, which changes whenever the
/// policy changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// 1 to 32 letters and digits.
    pub id: String,
}

/// The outcome of the TXT lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Exactly one valid record.
    Record(StsRecord),
    /// No usable record: none, several, or a malformed one. The domain has no
    /// available policy (section 3.1), unless a cached one is still valid.
    NoRecord(String),
    /// The lookup could not be completed (SERVFAIL, timeout).
    TempFail(String),
}

/// Parse one TXT record (its strings already joined). `None` unless it is a
/// syntactically valid STSv1 record:
///
/// ```text
/// sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
/// sts-field-delim = *WSP ";" *WSP
/// sts-version     = %s"v=STSv1"                          ; must come first
/// sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
/// sts-extension   = name "=" 1*(%x21-3A / %x3C / %x3E-7E)
/// ```
pub fn parse_record(txt: &str) -> Option<StsRecord> {
    let mut fields = txt.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let rest: Vec<&str> = fields.collect();
    let mut id = None;
    for (i, field) in rest.iter().enumerate() {
        if field.is_empty() {
            // Only a single trailing delimiter may leave an empty field.
            if i + 1 == rest.len() {
                continue;
            }
            return None;
        }
        let (key, value) = field.split_once('=')?;
        if key == "id" {
            let ok = !value.is_empty()
                && value.len() <= 32
                && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok || id.replace(value.to_string()).is_some() {
                return None;
            }
        } else {
            let key_ok = key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && key.len() <= 32
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            let value_ok = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=');
            if !key_ok || !value_ok {
                return None;
            }
        }
    }
    id.map(|id| StsRecord { id })
}

/// Choose the record from all TXT records at `_mta-sts.<domain>` (section 3.1):
/// records that do not begin with `v=STSv1` are discarded (they may be anything
/// else); of the rest there must be exactly one, and it must be valid.
pub fn select_record(txts: &[String]) -> Discovery {
    let sts: Vec<&String> = txts
        .iter()
        .filter(|t| {
            t.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
        })
        .collect();
    match sts.as_slice() {
        [] => Discovery::NoRecord("no v=STSv1 TXT record".into()),
        [one] => match parse_record(one) {
            Some(r) => Discovery::Record(r),
            None => Discovery::NoRecord(format!("malformed MTA-STS record {one:?}")),
        },
        many => Discovery::NoRecord(format!(
            "{} v=STSv1 TXT records (exactly one is allowed)",
            many.len()
        )),
    }
}

/// Look up `_mta-sts.<domain>` with our resolver. `domain` is already normalised
/// (lower-case A-labels, no trailing dot).
pub async fn discover(resolver: &Resolver, domain: &str) -> Discovery {
    match resolver
        .txt_unvalidated(&format!("_mta-sts.{domain}"))
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

    fn recs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn e1_valid_record_with_id() {
        assert_eq!(
            select_record(&recs(&["v=STSv1; id=20160831085700Z;"])),
            Discovery::Record(StsRecord {
                id: "20160831085700Z".into()
            })
        );
        assert_eq!(
            parse_record("v=STSv1;id=abc"),
            Some(StsRecord { id: "abc".into() })
        );
        assert_eq!(
            parse_record("v=STSv1 ;\tid=abc ; ext_1=va:lue"),
            Some(StsRecord { id: "abc".into() })
        );
    }

    #[test]
    fn e1_other_txt_records_are_ignored() {
        assert!(matches!(
            select_record(&recs(&["v=spf1 -all", "v=STSv1; id=1", "google-site=x"])),
            Discovery::Record(_)
        ));
    }

    #[test]
    fn e1_two_sts_records_mean_no_policy() {
        assert!(matches!(
            select_record(&recs(&["v=STSv1; id=1", "v=STSv1; id=2"])),
            Discovery::NoRecord(_)
        ));
        // Even two identical ones.
        assert!(matches!(
            select_record(&recs(&["v=STSv1; id=1", "v=STSv1; id=1"])),
            Discovery::NoRecord(_)
        ));
    }

    #[test]
    fn e1_record_without_valid_id_means_no_policy() {
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=abc-def",
            "v=STSv1; id=123456789012345678901234567890123",
            "v=STSv1; id=1; id=2",
            "v=STSv1;; id=1",
            "v=STSv1; id=1; broken",
        ] {
            assert!(
                matches!(select_record(&recs(&[bad])), Discovery::NoRecord(_)),
                "{bad:?}"
            );
        }
        // 32 characters is the longest id allowed.
        assert!(parse_record("v=STSv1; id=12345678901234567890123456789012").is_some());
    }

    #[test]
    fn e1_version_must_come_first_and_match_exactly() {
        assert!(matches!(
            select_record(&recs(&["id=1; v=STSv1"])),
            Discovery::NoRecord(_)
        ));
        assert!(matches!(
            select_record(&recs(&["v=STSv10; id=1"])),
            Discovery::NoRecord(_)
        ));
        assert!(matches!(
            select_record(&recs(&["v=stsv1; id=1"])),
            Discovery::NoRecord(_)
        ));
        assert!(matches!(select_record(&[]), Discovery::NoRecord(_)));
    }
}
