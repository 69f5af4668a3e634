//! The DNS side of DANE for one MX host, as small pure decisions the delivery code
//! calls between its lookups (standards.md D1-D6, RFC 7672 section 2.2):
//!
//! 1. [`precondition`]: from the DNSSEC status of the MX answer and of the host's
//!    address answer, whether a TLSA lookup is made at all (D1, D2, D3).
//! 2. [`tlsa_candidates`]: which `_25._tcp.<name>` names to query, in order, and
//!    the TLSA base domain each one stands for (D3, RFC 7672 2.2.3).
//! 3. [`tlsa_step`] per answer, or [`requirement`] over all answers: what the host
//!    requires: DANE authentication, TLS only, no DANE, or skip the host (D4-D6).

use super::normalize_name;
use super::tlsa::{TlsaSet, UsableTlsa};
use crate::dns::Security;

/// The enhanced status code for a host or domain given up on for a DANE reason
/// (RFC 7672 section 2.2: 4.7.5 "cryptographic failure", temporary).
pub const STATUS_DANE_TEMPORARY: &str = "4.7.5";

/// Step 1: does DANE apply to this MX host?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The MX RRset and the host's addresses are DNSSEC-secure: look up TLSA
    /// records for the [`tlsa_candidates`].
    LookUpTlsa,
    /// DANE does not apply to this host; other mechanisms (MTA-STS, PKIX) decide.
    /// An insecure MX can reach "trusted" at most, never "verified" (D2).
    NotApplicable { reason: String },
    /// D1: the address answer is bogus or could not be validated: do not use this
    /// host (an attacker may be steering us); try the next MX.
    SkipHost {
        status: &'static str,
        reason: String,
    },
    /// D1: the MX answer is bogus or could not be validated: defer the whole domain
    /// (no host of a forged MX set may be used, and nothing may be downgraded).
    DeferDomain {
        status: &'static str,
        reason: String,
    },
}

fn unusable_answer(s: Security) -> bool {
    s == Security::Bogus || s == Security::Indeterminate
}

/// Step 1 (D1, D2, D3). `mx` is the DNSSEC status of the MX RRset (for an implicit
/// MX, of the answer that showed there is none); `addresses` that of the host's
/// A/AAAA answers *including every CNAME on the way* (the weakest of them).
///
/// RFC 7672 section 2.2.1: DANE needs a secure MX RRset, otherwise an attacker
/// could substitute an MX host of his own with TLSA records of his own. Section
/// 2.2.2: the TLSA lookup is done only when the address records are secure; an
/// insecure address answer means the host's zone is unsigned, so a TLSA answer
/// could not be secure either, and asking costs time for nothing.
pub fn precondition(host: &str, mx: Security, addresses: Security) -> Precondition {
    if unusable_answer(mx) {
        return Precondition::DeferDomain {
            status: STATUS_DANE_TEMPORARY,
            reason: format!("the MX answer for the domain of {host} is {mx} (DNSSEC)"),
        };
    }
    if unusable_answer(addresses) {
        return Precondition::SkipHost {
            status: STATUS_DANE_TEMPORARY,
            reason: format!("the address answer for {host} is {addresses} (DNSSEC)"),
        };
    }
    if mx != Security::Secure {
        return Precondition::NotApplicable {
            reason: format!("the MX answer is {mx}, DANE needs it DNSSEC-secure"),
        };
    }
    if addresses != Security::Secure {
        return Precondition::NotApplicable {
            reason: format!(
                "the address answer for {host} is {addresses}, DANE needs it DNSSEC-secure"
            ),
        };
    }
    Precondition::LookUpTlsa
}

/// One TLSA query to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaCandidate {
    /// The query name, absolute (with the final dot, so no resolver search list
    /// applies): `_25._tcp.<base_domain>.`
    pub qname: String,
    /// The TLSA base domain (no final dot, lower case): the SNI, the primary
    /// reference identifier for DANE-TA, the name in the evidence.
    pub base_domain: String,
}

impl TlsaCandidate {
    fn for_name(name: &str) -> TlsaCandidate {
        let base_domain = normalize_name(name);
        TlsaCandidate {
            qname: format!("_25._tcp.{base_domain}."),
            base_domain,
        }
    }
}

/// Step 2 (D3, RFC 7672 section 2.2.3, RFC 7671 section 7): the TLSA queries for
/// an MX host, in the order to try them.
///
/// `original_host` is the name from the MX record (or the domain itself for an
/// implicit MX). `expanded_host_if_secure_cname` is the final target of the CNAME
/// chain the address lookup followed, given *only* when every link of that chain
/// was DNSSEC-secure. Then the expanded name is tried first (the certificate is
/// most likely issued for the name of the machine that really answers), and the
/// original name second. An insecure CNAME chain means the address answer was not
/// secure, and [`precondition`] already said no TLSA lookup at all.
pub fn tlsa_candidates(
    original_host: &str,
    expanded_host_if_secure_cname: Option<&str>,
) -> Vec<TlsaCandidate> {
    let original = TlsaCandidate::for_name(original_host);
    match expanded_host_if_secure_cname.map(TlsaCandidate::for_name) {
        Some(expanded) if expanded != original => vec![expanded, original],
        _ => vec![original],
    }
}

/// The DNS answer to one TLSA query, as the resolver classified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// A DNSSEC-secure TLSA RRset (which may contain no usable record).
    Secure(TlsaSet),
    /// NXDOMAIN or NODATA, proven by DNSSEC.
    SecureDenial,
    /// An answer from an unsigned zone (an insecure delegation below the host).
    Insecure,
    /// SERVFAIL, timeout, bogus or indeterminate: the lookup failed.
    Failed { reason: String },
}

/// What one MX host requires for DANE (the result of steps 1-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneRequirement {
    /// No DANE for this host (secure denial or insecure TLSA answers, D4; or the
    /// precondition said no): other mechanisms decide.
    None { reason: String },
    /// D5: a secure TLSA RRset without any usable record. TLS is mandatory, but
    /// the server is not authenticated by DANE ("encrypted", not "verified";
    /// RFC 7672 section 2.2 / RFC 7671 section 10.3 wording: the client MUST use
    /// TLS, but need not authenticate).
    TlsRequired { base_domain: String, tlsa: TlsaSet },
    /// D6: at least one usable record. TLS is mandatory and a [`super::DaneVerifier`]
    /// built from `usable` must accept the server; on failure the host is skipped
    /// (never plaintext, never a weaker check).
    Authenticate {
        base_domain: String,
        tlsa: TlsaSet,
        usable: UsableTlsa,
    },
    /// D4: the TLSA lookup failed on a secure host: skip this host, try the next
    /// MX; when none is left, defer with `status` (4.7.5). A failed lookup is never
    /// read as "no TLSA" (that would let an attacker switch DANE off by dropping
    /// packets).
    SkipHost {
        status: &'static str,
        reason: String,
    },
}

impl DaneRequirement {
    /// Whether the server must be authenticated by DANE (D6).
    pub fn authentication_required(&self) -> bool {
        matches!(self, DaneRequirement::Authenticate { .. })
    }

    /// Whether TLS is mandatory for this host because of DANE (D5, D6).
    pub fn tls_required(&self) -> bool {
        matches!(
            self,
            DaneRequirement::Authenticate { .. } | DaneRequirement::TlsRequired { .. }
        )
    }
}

/// Step 3, one answer: `Some(requirement)` ends the search, `None` means "query the
/// next candidate" (and when there is none, [`requirement`]'s no-DANE result).
///
/// - A secure RRset ends the search, usable or not: the client does not go on to
///   the original name hoping for records it likes better (RFC 7672 2.2.3).
/// - A secure denial or an insecure answer goes on to the next candidate
///   (RFC 7671 section 7: no TLSA at the expanded name -> try the original name).
/// - A failure ends the search with [`DaneRequirement::SkipHost`] (D4).
pub fn tlsa_step(candidate: &TlsaCandidate, answer: TlsaAnswer) -> Option<DaneRequirement> {
    match answer {
        TlsaAnswer::Secure(tlsa) if tlsa.is_empty() => None,
        TlsaAnswer::Secure(tlsa) => {
            let usable = tlsa.usable();
            let base_domain = candidate.base_domain.clone();
            Some(if usable.is_empty() {
                DaneRequirement::TlsRequired { base_domain, tlsa }
            } else {
                DaneRequirement::Authenticate {
                    base_domain,
                    tlsa,
                    usable,
                }
            })
        }
        TlsaAnswer::SecureDenial | TlsaAnswer::Insecure => None,
        TlsaAnswer::Failed { reason } => Some(DaneRequirement::SkipHost {
            status: STATUS_DANE_TEMPORARY,
            reason: format!("TLSA lookup for {} failed: {reason}", candidate.qname),
        }),
    }
}

/// Step 3 over the answers to the candidates, in [`tlsa_candidates`] order. Answers
/// after the one that ends the search are ignored, so a caller that queries lazily
/// (stopping when [`tlsa_step`] returns `Some`) and one that queried everything get
/// the same result.
pub fn requirement(
    answers: impl IntoIterator<Item = (TlsaCandidate, TlsaAnswer)>,
) -> DaneRequirement {
    let mut last = None;
    for (candidate, answer) in answers {
        let secure_denial = answer == TlsaAnswer::SecureDenial;
        if let Some(done) = tlsa_step(&candidate, answer) {
            return done;
        }
        last = Some((candidate.qname, secure_denial));
    }
    match last {
        Some((qname, true)) => DaneRequirement::None {
            reason: format!("no TLSA records (DNSSEC-proven) at {qname}"),
        },
        Some((qname, false)) => DaneRequirement::None {
            reason: format!("the TLSA answer for {qname} is not DNSSEC-secure"),
        },
        None => DaneRequirement::None {
            reason: "no TLSA query was made".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::Tlsa;

    const HOST: &str = "mx1.example.test";

    fn set(records: &[&str]) -> TlsaSet {
        records
            .iter()
            .map(|r| r.parse::<Tlsa>().expect("record"))
            .collect()
    }

    fn usable_record() -> String {
        format!("3 1 1 {}", hex::encode([7u8; 32]))
    }

    #[test]
    fn d1_bogus_mx_defers_the_domain() {
        for mx in [Security::Bogus, Security::Indeterminate] {
            for addr in [Security::Secure, Security::Insecure, Security::Bogus] {
                assert!(
                    matches!(
                        precondition(HOST, mx, addr),
                        Precondition::DeferDomain {
                            status: "4.7.5",
                            ..
                        }
                    ),
                    "{mx} {addr}"
                );
            }
        }
    }

    #[test]
    fn d1_bogus_address_skips_the_host() {
        for mx in [Security::Secure, Security::Insecure] {
            for addr in [Security::Bogus, Security::Indeterminate] {
                match precondition(HOST, mx, addr) {
                    Precondition::SkipHost { status, reason } => {
                        assert_eq!(status, "4.7.5");
                        assert!(reason.contains(HOST), "{reason}");
                    }
                    other => panic!("{mx} {addr}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn d2_dane_only_with_a_secure_mx_rrset() {
        // An insecure MX can at most reach "trusted": no TLSA lookup at all.
        assert!(matches!(
            precondition(HOST, Security::Insecure, Security::Secure),
            Precondition::NotApplicable { .. }
        ));
        assert_eq!(
            precondition(HOST, Security::Secure, Security::Secure),
            Precondition::LookUpTlsa
        );
    }

    #[test]
    fn d3_tlsa_lookup_only_with_secure_addresses() {
        match precondition(HOST, Security::Secure, Security::Insecure) {
            Precondition::NotApplicable { reason } => assert!(reason.contains(HOST), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn d3_secure_cname_tries_expanded_name_first_then_original() {
        let c = tlsa_candidates("MX1.Example.TEST.", Some("host.provider.test."));
        assert_eq!(
            c,
            vec![
                TlsaCandidate {
                    qname: "_25._tcp.host.provider.test.".into(),
                    base_domain: "host.provider.test".into(),
                },
                TlsaCandidate {
                    qname: "_25._tcp.mx1.example.test.".into(),
                    base_domain: "mx1.example.test".into(),
                },
            ]
        );
        // No CNAME (or one pointing to the same name): one candidate.
        assert_eq!(tlsa_candidates(HOST, None).len(), 1);
        assert_eq!(tlsa_candidates(HOST, Some("MX1.example.test")).len(), 1);
        assert_eq!(tlsa_candidates(HOST, None)[0].base_domain, HOST);
    }

    #[test]
    fn d3_denial_at_expanded_name_falls_back_to_original() {
        let c = tlsa_candidates(HOST, Some("host.provider.test"));
        let r = requirement([
            (c[0].clone(), TlsaAnswer::SecureDenial),
            (c[1].clone(), TlsaAnswer::Secure(set(&[&usable_record()]))),
        ]);
        match r {
            DaneRequirement::Authenticate { base_domain, .. } => assert_eq!(base_domain, HOST),
            other => panic!("{other:?}"),
        }
        // Records at the expanded name win; the original name is not consulted.
        let r = requirement([
            (c[0].clone(), TlsaAnswer::Secure(set(&[&usable_record()]))),
            (c[1].clone(), TlsaAnswer::Failed { reason: "x".into() }),
        ]);
        match r {
            DaneRequirement::Authenticate { base_domain, .. } => {
                assert_eq!(base_domain, "host.provider.test")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn d4_lookup_failure_skips_the_host() {
        let c = tlsa_candidates(HOST, None);
        let r = requirement([(
            c[0].clone(),
            TlsaAnswer::Failed {
                reason: "SERVFAIL".into(),
            },
        )]);
        match &r {
            DaneRequirement::SkipHost { status, reason } => {
                assert_eq!(*status, "4.7.5");
                assert!(reason.contains("_25._tcp.mx1.example.test."), "{reason}");
                assert!(reason.contains("SERVFAIL"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!r.tls_required());
        // A failure at the expanded name is not skipped over to the original name.
        let c = tlsa_candidates(HOST, Some("host.provider.test"));
        let r = requirement([
            (
                c[0].clone(),
                TlsaAnswer::Failed {
                    reason: "bogus".into(),
                },
            ),
            (c[1].clone(), TlsaAnswer::Secure(set(&[&usable_record()]))),
        ]);
        assert!(matches!(r, DaneRequirement::SkipHost { .. }), "{r:?}");
    }

    #[test]
    fn d4_secure_denial_means_no_dane() {
        let c = tlsa_candidates(HOST, None);
        let r = requirement([(c[0].clone(), TlsaAnswer::SecureDenial)]);
        assert!(matches!(r, DaneRequirement::None { .. }), "{r:?}");
        assert!(!r.tls_required());
        let r = requirement([(c[0].clone(), TlsaAnswer::Insecure)]);
        assert!(matches!(r, DaneRequirement::None { .. }), "{r:?}");
        // An empty "secure" RRset is a denial too.
        let r = requirement([(c[0].clone(), TlsaAnswer::Secure(TlsaSet::default()))]);
        assert!(matches!(r, DaneRequirement::None { .. }), "{r:?}");
    }

    #[test]
    fn d5_no_usable_record_means_tls_without_authentication() {
        let c = tlsa_candidates(HOST, None);
        let only_pkix = set(&[&format!("1 1 1 {}", hex::encode([1u8; 32]))]);
        let r = requirement([(c[0].clone(), TlsaAnswer::Secure(only_pkix.clone()))]);
        assert_eq!(
            r,
            DaneRequirement::TlsRequired {
                base_domain: HOST.into(),
                tlsa: only_pkix
            }
        );
        assert!(r.tls_required());
        assert!(!r.authentication_required());
    }

    #[test]
    fn d6_usable_record_means_authentication_is_mandatory() {
        let c = tlsa_candidates(HOST, None);
        let tlsa = set(&[
            &usable_record(),
            &format!("0 1 1 {}", hex::encode([1u8; 32])),
        ]);
        let r = requirement([(c[0].clone(), TlsaAnswer::Secure(tlsa.clone()))]);
        match &r {
            DaneRequirement::Authenticate {
                base_domain,
                tlsa: all,
                usable,
            } => {
                assert_eq!(base_domain, HOST);
                assert_eq!(all, &tlsa, "the whole RRset is kept for the evidence");
                assert_eq!(usable.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.authentication_required());
        assert!(r.tls_required());
    }
}
