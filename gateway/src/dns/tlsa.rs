//! TLSA lookups for DANE (RFC 7672 section 2.2, standards.md D3/D4).
//!
//! The answer is classified by what DNSSEC proved about it, because that is all
//! DANE may act on:
//! - a validated TLSA RRset is [`TlsaAnswer::Secure`];
//! - a validated NXDOMAIN or NODATA is [`TlsaAnswer::SecureDenial`] (no DANE for the
//!   host, D4);
//! - an answer or denial from a provably unsigned zone is [`TlsaAnswer::Insecure`]
//!   (no DANE either: unsigned TLSA records could come from anyone);
//! - everything else (bogus, indeterminate, SERVFAIL, timeout) is
//!   [`TlsaAnswer::Failed`]: the host is skipped (D4), because reading a failed lookup
//!   as "no TLSA" would let an attacker switch DANE off by dropping packets.
//!
//! Records whose rdata is too short to be a TLSA record are skipped: they cannot be
//! used, and RFC 7672 section 2.2 treats unusable records as absent.

use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::{lookup_following, security_of, Lookup, Resolver, Security};
use crate::dane::{Tlsa, TlsaAnswer, TlsaSet};

impl Resolver {
    /// Look up the TLSA RRset at `qname` (absolute, e.g. `"_25._tcp.mx.example.test."`),
    /// following CNAMEs (RFC 7671 section 7 allows a TLSA name to be an alias).
    pub async fn resolve_tlsa(&self, qname: &str) -> TlsaAnswer {
        let name = match Name::from_utf8(qname) {
            Ok(n) if n.is_fqdn() => n,
            Ok(_) => {
                return TlsaAnswer::Failed {
                    reason: format!("TLSA query name {qname:?} is not absolute"),
                }
            }
            Err(e) => {
                return TlsaAnswer::Failed {
                    reason: format!("invalid TLSA query name {qname:?}: {e}"),
                }
            }
        };
        // While DNSSEC is unavailable the answer is unvalidated: no DANE (Insecure).
        let r = self.current();
        let answer = classify_tlsa(
            r.validating,
            lookup_following(&*r, &name, RecordType::TLSA).await,
        );
        tracing::debug!(qname, ?answer, "TLSA lookup");
        answer
    }
}

/// Sort one (CNAME-followed) TLSA lookup into a [`TlsaAnswer`].
fn classify_tlsa(validating: bool, lookup: Lookup) -> TlsaAnswer {
    match lookup {
        Lookup::Records(records) => {
            let security = security_of(validating, &records);
            let tlsa: TlsaSet = records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => {
                        let mut rdata = Vec::with_capacity(3 + t.cert_data.len());
                        rdata.push(u8::from(t.cert_usage));
                        rdata.push(u8::from(t.selector));
                        rdata.push(u8::from(t.matching));
                        rdata.extend_from_slice(&t.cert_data);
                        match Tlsa::from_rdata(&rdata) {
                            Ok(tlsa) => Some(tlsa),
                            Err(e) => {
                                tracing::info!(name = %r.name, "unusable TLSA record skipped: {e}");
                                None
                            }
                        }
                    }
                    _ => None,
                })
                .collect();
            match security {
                // A secure answer with nothing usable in it (only CNAMEs, or only
                // malformed records): secure, and empty, which DANE reads as "no TLSA".
                Security::Secure => TlsaAnswer::Secure(tlsa),
                Security::Insecure | Security::Unvalidated => TlsaAnswer::Insecure,
                Security::Bogus | Security::Indeterminate => TlsaAnswer::Failed {
                    reason: format!("the TLSA answer is {security} (DNSSEC)"),
                },
            }
        }
        Lookup::NoData(security) | Lookup::NxDomain(security) => match security {
            Security::Secure => TlsaAnswer::SecureDenial,
            Security::Insecure | Security::Unvalidated => TlsaAnswer::Insecure,
            Security::Bogus | Security::Indeterminate => TlsaAnswer::Failed {
                reason: format!("the denial of TLSA records is {security} (DNSSEC)"),
            },
        },
        Lookup::Unverified { reason, .. } => TlsaAnswer::Failed { reason },
        Lookup::Temp(reason) => TlsaAnswer::Failed { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::dnssec::Proof;
    use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector, TLSA};
    use hickory_resolver::proto::rr::rdata::CNAME;
    use hickory_resolver::proto::rr::Record;

    fn tlsa_record(proof: Proof, data: Vec<u8>) -> Record {
        let mut r = Record::from_rdata(
            Name::from_ascii("_25._tcp.mx.example.test.").unwrap(),
            300,
            RData::TLSA(TLSA::new(
                CertUsage::DaneEe,
                Selector::Spki,
                Matching::Sha256,
                data,
            )),
        );
        r.proof = proof;
        r
    }

    #[test]
    fn secure_records_become_a_set_and_short_ones_are_skipped() {
        let good = tlsa_record(Proof::Secure, vec![7u8; 32]);
        let empty = tlsa_record(Proof::Secure, Vec::new());
        match classify_tlsa(true, Lookup::Records(vec![good, empty])) {
            TlsaAnswer::Secure(set) => {
                assert_eq!(set.records().len(), 1);
                assert_eq!(set.records()[0].to_rdata()[..3], [3, 1, 1]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_are_classified_by_their_proof() {
        let rec = |p| Lookup::Records(vec![tlsa_record(p, vec![1u8; 32])]);
        assert_eq!(
            classify_tlsa(true, rec(Proof::Insecure)),
            TlsaAnswer::Insecure
        );
        assert!(matches!(
            classify_tlsa(true, rec(Proof::Bogus)),
            TlsaAnswer::Failed { .. }
        ));
        assert!(matches!(
            classify_tlsa(true, rec(Proof::Indeterminate)),
            TlsaAnswer::Failed { .. }
        ));
        // Without validation nothing is secure.
        assert_eq!(
            classify_tlsa(false, rec(Proof::Secure)),
            TlsaAnswer::Insecure
        );
        // One bogus record spoils the RRset.
        let mixed = Lookup::Records(vec![
            tlsa_record(Proof::Secure, vec![1u8; 32]),
            tlsa_record(Proof::Bogus, vec![2u8; 32]),
        ]);
        assert!(matches!(
            classify_tlsa(true, mixed),
            TlsaAnswer::Failed { .. }
        ));
    }

    #[test]
    fn denials_and_failures() {
        assert_eq!(
            classify_tlsa(true, Lookup::NoData(Security::Secure)),
            TlsaAnswer::SecureDenial
        );
        assert_eq!(
            classify_tlsa(true, Lookup::NxDomain(Security::Secure)),
            TlsaAnswer::SecureDenial
        );
        assert_eq!(
            classify_tlsa(true, Lookup::NxDomain(Security::Insecure)),
            TlsaAnswer::Insecure
        );
        assert!(matches!(
            classify_tlsa(true, Lookup::NoData(Security::Indeterminate)),
            TlsaAnswer::Failed { .. }
        ));
        assert!(matches!(
            classify_tlsa(true, Lookup::Temp("timeout".into())),
            TlsaAnswer::Failed { .. }
        ));
        assert!(matches!(
            classify_tlsa(
                true,
                Lookup::Unverified {
                    security: Security::Bogus,
                    reason: "bogus".into()
                }
            ),
            TlsaAnswer::Failed { .. }
        ));
    }

    #[test]
    fn a_secure_cname_without_tlsa_is_an_empty_secure_set() {
        let mut cname = Record::from_rdata(
            Name::from_ascii("_25._tcp.mx.example.test.").unwrap(),
            300,
            RData::CNAME(CNAME(Name::from_ascii("_25._tcp.other.test.").unwrap())),
        );
        cname.proof = Proof::Secure;
        match classify_tlsa(true, Lookup::Records(vec![cname])) {
            TlsaAnswer::Secure(set) => assert!(set.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
