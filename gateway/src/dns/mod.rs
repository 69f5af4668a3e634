//! DNS for outbound delivery: where does mail for a domain go?
//!
//! The rules (RFC 5321 section 5.1, RFC 7505, RFC 2181):
//! - Look up the domain's MX records. Lower preference values are tried first; hosts of
//!   equal preference are tried in *random* order so load spreads over them
//!   (RFC 5321 5.1: "the sender-SMTP MUST randomize them").
//! - No MX records but the domain has addresses (A/AAAA): the domain itself is the one
//!   mail host, the "implicit MX" (RFC 5321 5.1).
//! - A single MX whose exchange is the root "." is a "null MX" (RFC 7505): the domain
//!   accepts no mail; fail at once with 5.1.10 instead of retrying for days.
//! - NXDOMAIN: the domain does not exist, a permanent 5.1.2 "bad destination".
//! - SERVFAIL, timeouts, refused queries: *temporary*. A DNS outage defers; it never
//!   bounces and never downgrades (design.md, "Durability").
//! - Each MX host's addresses are looked up with both A and AAAA; a host with no
//!   address is skipped. Loopback and private addresses are *not* filtered: the test
//!   environment runs every peer on 127.0.0.0/8.
//! - An MX exchange must be a host name, not an IP address nor a CNAME (RFC 2181 10.3);
//!   both occur in the wild. An IP literal is used as the address of that host (with a
//!   warning); a CNAME is followed by the address lookup and recorded as the host's
//!   canonical name, while the MX name stays the name the certificate is checked for.
//!
//! Every answer carries its [`Security`] (Secure / Insecure / Bogus / Indeterminate),
//! which `policy::decide` and the DANE steps consume (standards.md B1, D1-D4).
//!
//! # DNSSEC
//!
//! - **Validation happens here, in-process** (hickory's `validate = true`): every
//!   RRSIG is checked from the trust anchor down (DS at the parent, DNSKEY at the
//!   child). The upstream resolver's AD bit is **never** consulted: it is one
//!   unauthenticated bit in a packet that anyone on the path (or the home router
//!   acting as resolver) can set; trusting it would make all of DANE as strong as
//!   the weakest link to the upstream.
//! - **Upstreams are asked over TCP.** Signed answers are large; UDP paths lose or
//!   strip RRSIGs (fragmentation, middleboxes), which makes good answers look bogus.
//! - **The trust anchor** is the IANA root KSKs built in ([`anchor`]), or the DS or
//!   DNSKEY lines of `[dns] trust_anchor`. A DS is matched against the root DNSKEY
//!   RRset fetched at first use.
//! - **A failure never becomes a denial.** Bogus, indeterminate, SERVFAIL and
//!   timeouts are temporary: an MX lookup gives [`MxResult::DnssecFailed`] (4.7.5) or
//!   [`MxResult::TempFail`] (4.4.3), the domain is deferred, never bounced, never
//!   delivered at a lower level. Only a proven (secure) or provably unsigned
//!   (insecure) NXDOMAIN leads to a 5.1.2 bounce (or, while DNSSEC is unavailable,
//!   an unvalidated one, as with any non-validating resolver; see below). A host whose address answer is
//!   bogus gets no addresses (D1: the host is skipped).
//! - **CNAMEs are followed here** when hickory stops at an alias or misjudges NODATA
//!   at one ([`lookup_following`]), and a chain is as secure as its weakest link.
//! - hickory's cache is on: positive answers are cached, negative and bogus ones are
//!   not.
//! - [`Resolver::probe_dnssec`] checks that the root DNSKEY validates through the
//!   upstreams; the daemon runs [`monitor_dnssec`] and says loudly when it does not.
//!
//! # When DNSSEC is unavailable: unvalidated fallback
//!
//! Many upstreams (home routers, some forwarders) strip RRSIGs, DNSKEY and DS
//! records; a configured trust anchor that matches no root key has the same effect.
//! Validating through such a path makes *every* answer bogus or indeterminate, and
//! every message, even one at level `encrypted`, would be deferred forever. So the
//! [`Resolver`] reads the shared [`DnssecStatus`]: while the last probe says
//! DNSSEC is **unavailable**, lookups go through the non-validating resolver and
//! every answer is [`Security::Unvalidated`] (never secure, never bogus). While it
//! is available, or not probed yet, validation stays on and a bogus or
//! indeterminate answer defers as above (D1, B1: with working DNSSEC, a broken
//! answer is an attack signal).
//!
//! The trade-off, deliberately: with unvalidated answers DANE does not apply (D2,
//! D3 need secure answers) and neither does "PKIX on a DNSSEC-secure MX" for
//! `verified`; `verified` then needs an MTA-STS enforce policy or a certificate name
//! within the recipient domain, else the message is deferred. `may`, `encrypted` and
//! `trusted` do not rely on DNS authenticity and deliver as usual. An on-path
//! attacker who strips signatures everywhere can force this mode; it never lowers a
//! message below its level, but DANE's extra protection for lower levels is lost
//! while it lasts. The switch is logged at error level and reported by
//! `qrelay status` and `qrelay check`, the same behaviour as Postfix with a
//! non-validating resolver.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::rdata::DNSSECRData;
use hickory_resolver::proto::dnssec::{Proof, PublicKey, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::OnceCell;

use crate::config::DnsConfig;

pub mod anchor;
mod probe;
mod tlsa;

pub use anchor::{DnskeyAnchor, DsAnchor, TrustAnchor, TrustAnchorError};
pub use probe::{monitor_dnssec, DnssecHealth, DnssecStatus, PROBE_INTERVAL};

/// How far a DNS answer can be trusted (RFC 4035 section 4.3 vocabulary, plus
/// `Unvalidated` for answers of a resolver that does not validate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// DNSSEC validation was not performed: DNSSEC is unavailable through the
    /// upstream resolvers (see the module documentation), or an IP literal.
    Unvalidated,
    /// A chain of trust from the trust anchor vouches for the answer.
    Secure,
    /// The answer comes from an unsigned zone (provably so).
    Insecure,
    /// Validation failed: signatures wrong, expired or missing. Possibly an attack.
    Bogus,
    /// Validation could not be completed.
    Indeterminate,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Unvalidated => "unvalidated",
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus => "bogus",
            Security::Indeterminate => "indeterminate",
        }
    }

    /// The weaker of two: a set of records is only as trustworthy as its worst member.
    pub fn weakest(self, other: Security) -> Security {
        fn rank(s: Security) -> u8 {
            match s {
                Security::Bogus => 0,
                Security::Indeterminate => 1,
                Security::Unvalidated => 2,
                Security::Insecure => 3,
                Security::Secure => 4,
            }
        }
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mail exchanger of a domain, in the order it is to be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange name, lower-case, without the trailing dot. For an implicit MX,
    /// the domain itself. This is the name the certificate must carry (`trusted`).
    pub name: String,
    pub preference: u16,
    /// The exchange was written as an IP address instead of a name (RFC 2181 10.3
    /// violation, tolerated): connect there without an address lookup.
    pub literal: Option<IpAddr>,
}

/// The answer to "where does mail for this domain go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxResult {
    /// Hosts to try in this order. `implicit`: there was no MX RRset; the domain's own
    /// addresses are used (RFC 5321 5.1), and `addresses` holds them.
    Hosts {
        hosts: Vec<MxHost>,
        implicit: bool,
        security: Security,
        /// Only for an implicit MX: the addresses already found for the domain.
        addresses: Vec<IpAddr>,
    },
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx { security: Security },
    /// The domain does not exist (NXDOMAIN).
    NoSuchDomain { security: Security },
    /// The domain exists but has neither MX nor address records.
    NoMailHost { security: Security },
    /// The lookup could not be completed now; try later.
    TempFail { reason: String },
    /// The answer (records or denial) is `Bogus` or `Indeterminate`: DNSSEC validation
    /// failed. Defer the domain (D1, B1): the answer may be forged, so neither a
    /// delivery to its hosts nor a bounce because of it may follow.
    DnssecFailed { security: Security, reason: String },
}

impl MxResult {
    /// `Some(DnssecFailed)` when `security` says the answer cannot be used.
    fn unverified(security: Security, what: &str) -> Option<MxResult> {
        matches!(security, Security::Bogus | Security::Indeterminate).then(|| {
            MxResult::DnssecFailed {
                security,
                reason: format!("{what} is {security}"),
            }
        })
    }

    /// The DNSSEC status of the answer (for `TempFail`: `Indeterminate`, nothing
    /// was proven).
    pub fn security(&self) -> Security {
        match self {
            MxResult::Hosts { security, .. }
            | MxResult::NullMx { security }
            | MxResult::NoSuchDomain { security }
            | MxResult::NoMailHost { security }
            | MxResult::DnssecFailed { security, .. } => *security,
            MxResult::TempFail { .. } => Security::Indeterminate,
        }
    }

    /// The enhanced status code (RFC 3463) and a plain-language reason for results
    /// that end the attempt before any connection. `None` for `Hosts`.
    pub fn failure(&self, domain: &str) -> Option<(bool, &'static str, String)> {
        match self {
            MxResult::Hosts { .. } => None,
            MxResult::NullMx { .. } => Some((
                true,
                "5.1.10",
                format!("Recipient address has null MX: {domain} accepts no mail (RFC 7505)"),
            )),
            MxResult::NoSuchDomain { .. } => Some((
                true,
                "5.1.2",
                format!("Bad destination system address: the domain {domain} does not exist"),
            )),
            MxResult::NoMailHost { .. } => Some((
                true,
                "5.4.4",
                format!("Unable to route: {domain} has no MX and no address records"),
            )),
            MxResult::TempFail { reason } => Some((
                false,
                "4.4.3",
                format!("DNS lookup for {domain} failed temporarily: {reason}"),
            )),
            MxResult::DnssecFailed { reason, .. } => Some((
                false,
                "4.7.5",
                format!("DNSSEC validation failed for the MX of {domain}: {reason}"),
            )),
        }
    }
}

/// The addresses of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrResult {
    /// IPv4 first, then IPv6 (see [`Resolver::resolve_addrs`]).
    pub addrs: Vec<IpAddr>,
    pub security: Security,
    /// The host name was an alias: the canonical name the CNAME chain led to.
    pub canonical: Option<String>,
    /// Every CNAME of the chain and the address answers are DNSSEC-secure: the
    /// canonical name may serve as the TLSA base domain (D3, RFC 7672 2.2.3).
    pub canonical_secure: bool,
    /// Set when no address was found because a lookup failed temporarily.
    pub temp_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("cannot read the system resolver configuration (/etc/resolv.conf): {0}")]
    SystemConfig(String),
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
    #[error(transparent)]
    TrustAnchor(#[from] TrustAnchorError),
}

/// What one lookup produced once hickory's error cases are sorted.
#[derive(Debug, Clone, PartialEq)]
enum Lookup {
    /// Records in the answer section (possibly with the CNAMEs that led to them).
    Records(Vec<Record>),
    /// NOERROR with no records of the type ("NODATA"), with the security of the
    /// denial (the SOA and NSEC/NSEC3 records that prove it).
    NoData(Security),
    /// NXDOMAIN, with the security of the denial.
    NxDomain(Security),
    /// The answer failed DNSSEC validation (`Bogus`) or could not be validated
    /// (`Indeterminate`). Never "no records": an attacker must not be able to turn an
    /// answer into a denial by breaking its signatures.
    Unverified { security: Security, reason: String },
    /// SERVFAIL, timeout, refused: no usable answer now. A validating upstream also
    /// answers SERVFAIL for bogus data, so this is as bad as `Unverified` for any
    /// decision that needs DNSSEC (field notes).
    Temp(String),
}

/// The security of a denial (NXDOMAIN/NODATA): what hickory's validator concluded
/// about the SOA and the NSEC/NSEC3 records of the authority section. A denial
/// carries no proof of its own (field notes); with none of these records at all
/// nothing is proven.
fn denial_security(validating: bool, nr: &NoRecords) -> Security {
    if !validating {
        return Security::Unvalidated;
    }
    let soa = nr.soa.iter().map(|soa| proof_security(soa.proof));
    let authorities = nr
        .authorities
        .iter()
        .flat_map(|a| a.iter())
        .filter(|r| {
            matches!(
                r.record_type(),
                RecordType::SOA | RecordType::NSEC | RecordType::NSEC3
            )
        })
        .map(|r| proof_security(r.proof));
    soa.chain(authorities)
        .reduce(Security::weakest)
        .unwrap_or(Security::Indeterminate)
}

/// Sort a hickory lookup error into the cases that matter for mail.
fn classify_error(validating: bool, err: &NetError) -> Lookup {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            let security = denial_security(validating, nr);
            match nr.response_code {
                ResponseCode::NXDomain => Lookup::NxDomain(security),
                ResponseCode::NoError => Lookup::NoData(security),
                other => Lookup::Temp(format!("server answered {other}")),
            }
        }
        // hickory's validator could not prove the denial secure: it says how far it
        // got. Insecure is a real answer (an unsigned zone); anything else is not.
        NetError::Dns(DnsError::Nsec {
            response, proof, ..
        }) => {
            let security = if validating {
                proof_security(*proof)
            } else {
                Security::Unvalidated
            };
            match security {
                Security::Bogus | Security::Indeterminate => Lookup::Unverified {
                    security,
                    reason: format!("the denial of existence is {security} (DNSSEC)"),
                },
                _ if response.metadata.response_code == ResponseCode::NXDomain => {
                    Lookup::NxDomain(security)
                }
                _ => Lookup::NoData(security),
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Lookup::Temp(format!("server answered {code}"))
        }
        NetError::Dns(DnsError::DnssecBogus) => Lookup::Unverified {
            security: Security::Bogus,
            reason: "DNSSEC validation failed (bogus answer)".into(),
        },
        NetError::Timeout => Lookup::Temp("no answer from the DNS server (timeout)".into()),
        other => Lookup::Temp(other.to_string()),
    }
}

/// Most CNAMEs followed for one lookup (RFC 1034 allows chains; loops must end).
const MAX_CNAME_HOPS: usize = 8;

/// One raw query, as hickory answers it. A trait so the CNAME handling below can be
/// tested against a table.
trait RawLookup {
    fn validating(&self) -> bool;
    async fn raw(&self, name: &Name, rtype: RecordType) -> Lookup;
}

/// The end of the CNAME chain in `records` starting at `name`, if the records hold
/// no record of `rtype` for it (a chain that stops at an alias).
fn dangling_cname_target(records: &[Record], name: &Name, rtype: RecordType) -> Option<Name> {
    let mut current = name.clone();
    for _ in 0..=MAX_CNAME_HOPS {
        if records
            .iter()
            .any(|r| r.record_type() == rtype && r.name == current)
        {
            return None;
        }
        match records.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name == current => Some(c.0.clone()),
            _ => None,
        }) {
            Some(next) => current = next,
            None => break,
        }
    }
    (current != *name).then_some(current)
}

/// A lookup that follows CNAMEs itself where hickory stops or goes wrong:
///
/// - An answer holding only CNAMEs (the target lies in another zone, or has no record
///   of the type): query the target. A secure CNAME alone proves nothing about the
///   target, so the target's own answer (and its denial proof) is needed.
/// - A bogus answer for a name that may be an alias: through recursive upstreams,
///   hickory 0.26.3 judges NODATA at a CNAME bogus ("SOA record is for the wrong
///   zone"; field notes). Ask for the CNAME itself; if it validates, query the target
///   and judge that answer instead. Nothing is trusted that did not validate: the
///   CNAME must, and the target's answer must.
///
/// The result carries the CNAME records in front of the target's records; a denial
/// at the target is as secure as the weakest link of the chain.
async fn lookup_following<L: RawLookup>(l: &L, name: &Name, rtype: RecordType) -> Lookup {
    let first = l.raw(name, rtype).await;
    if rtype == RecordType::CNAME {
        return first;
    }
    let mut chain: Vec<Record> = Vec::new();
    let mut answer = first.clone();
    let mut current = name.clone();
    for _ in 0..MAX_CNAME_HOPS {
        let target = match &answer {
            Lookup::Records(records) => match dangling_cname_target(records, &current, rtype) {
                Some(target) => {
                    chain.extend(records.iter().cloned());
                    target
                }
                None => break,
            },
            Lookup::Unverified { .. } => {
                let Lookup::Records(cnames) = l.raw(&current, RecordType::CNAME).await else {
                    break;
                };
                let cname_security = security_of(l.validating(), &cnames);
                if matches!(cname_security, Security::Bogus | Security::Indeterminate) {
                    break;
                }
                match dangling_cname_target(&cnames, &current, rtype) {
                    Some(target) => {
                        tracing::debug!(%current, %target, "re-asking the CNAME target of an unverified answer");
                        chain.extend(cnames);
                        target
                    }
                    None => break,
                }
            }
            _ => break,
        };
        if target == current || chain.len() > 2 * MAX_CNAME_HOPS {
            break;
        }
        current = target;
        answer = l.raw(&current, rtype).await;
    }
    if chain.is_empty() {
        return first;
    }
    let chain_security = security_of(l.validating(), &chain);
    match answer {
        Lookup::Records(records) => {
            chain.extend(records);
            Lookup::Records(chain)
        }
        Lookup::NoData(s) => Lookup::NoData(s.weakest(chain_security)),
        Lookup::NxDomain(s) => Lookup::NxDomain(s.weakest(chain_security)),
        other => other,
    }
}

/// Turn a domain as written in an address into an absolute DNS name, so no search
/// domain from resolv.conf is ever appended. Internationalized names become A-labels.
fn absolute_name(domain: &str) -> Result<Name, String> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() {
        return Err("empty domain".into());
    }
    Name::from_utf8(format!("{d}.")).map_err(|e| format!("invalid domain name {d:?}: {e}"))
}

fn name_to_host(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// The security a validating resolver gave one record.
fn proof_security(proof: Proof) -> Security {
    match proof {
        Proof::Secure => Security::Secure,
        Proof::Insecure => Security::Insecure,
        Proof::Bogus => Security::Bogus,
        Proof::Indeterminate => Security::Indeterminate,
    }
}

/// The overall security of a set of records (the weakest proof among them). RRSIGs
/// are the means of validation, not data: they do not count. An empty set proves
/// nothing: `Indeterminate`.
fn security_of(validating: bool, records: &[Record]) -> Security {
    if !validating {
        return Security::Unvalidated;
    }
    let mut data = records
        .iter()
        .filter(|r| r.record_type() != RecordType::RRSIG)
        .peekable();
    if data.peek().is_none() {
        return Security::Indeterminate;
    }
    data.map(|r| proof_security(r.proof))
        .fold(Security::Secure, Security::weakest)
}

/// Order MX records for delivery: RFC 7505 null MX detection, then by preference with
/// random order among equal preferences (RFC 5321 5.1). A name listed twice keeps its
/// lowest preference. Returns `None` for a null MX.
pub fn order_mx<R: Rng + ?Sized>(
    mut records: Vec<(u16, String)>,
    rng: &mut R,
) -> Option<Vec<MxHost>> {
    for (_, name) in records.iter_mut() {
        *name = name.trim_end_matches('.').to_ascii_lowercase();
    }
    // RFC 7505 3: a null MX is a single MX RR whose exchange is the root. A root
    // exchange among real ones is a misconfiguration: ignore that entry.
    if records.len() == 1 && records[0].1.is_empty() {
        return None;
    }
    records.retain(|(_, n)| !n.is_empty());
    records.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut seen = std::collections::HashSet::new();
    records.retain(|(_, n)| seen.insert(n.clone()));

    let mut out: Vec<MxHost> = Vec::with_capacity(records.len());
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].0;
        let end = records[start..]
            .iter()
            .position(|r| r.0 != pref)
            .map_or(records.len(), |p| start + p);
        let mut group: Vec<MxHost> = records[start..end]
            .iter()
            .map(|(p, n)| MxHost {
                name: n.clone(),
                preference: *p,
                literal: n.parse::<IpAddr>().ok(),
            })
            .collect();
        group.shuffle(rng);
        out.extend(group);
        start = end;
    }
    Some(out)
}

/// The MX resolver, built once from `[dns]`.
///
/// Two hickory resolvers share the upstreams: `validated` (DNSSEC on, the trust
/// anchor configured) answers every lookup this module makes; `plain` (no
/// validation) only fetches the root DNSKEY RRset when the anchor is a DS, and
/// serves [`Resolver::hickory`]. While the shared [`DnssecStatus`] says DNSSEC is
/// unavailable, `plain` answers the lookups too (unvalidated fallback, see the
/// module documentation).
#[derive(Clone)]
pub struct Resolver {
    plain: TokioResolver,
    /// Built at once for DNSKEY anchors; on first use for a DS anchor (the root key
    /// must be fetched and matched first), retried on every use until it succeeds.
    validated: Arc<OnceCell<TokioResolver>>,
    anchor: Arc<TrustAnchor>,
    cfg: Arc<DnsConfig>,
    validating: bool,
    /// The last DNSSEC probe (shared with the daemon's [`monitor_dnssec`]).
    dnssec: DnssecStatus,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("validating", &self.validating)
            .field("anchor", &self.anchor.describe())
            .field("upstreams", &self.upstreams())
            .finish()
    }
}

impl RawLookup for Resolver {
    fn validating(&self) -> bool {
        self.validating
    }

    async fn raw(&self, name: &Name, rtype: RecordType) -> Lookup {
        let resolver = match self.active().await {
            Ok(r) => r,
            Err(reason) => {
                return Lookup::Unverified {
                    security: Security::Indeterminate,
                    reason,
                }
            }
        };
        match resolver.lookup(name.clone(), rtype).await {
            Ok(l) => Lookup::Records(l.answers().to_vec()),
            Err(e) => classify_error(self.validating, &e),
        }
    }
}

impl Resolver {
    /// Build the resolver: the configured upstream servers (over TCP, at the
    /// configured port), or the system's resolv.conf when none are given; DNSSEC
    /// validation on, with the configured trust anchor (`[dns] trust_anchor`) or the
    /// built-in IANA root keys.
    pub fn from_config(cfg: &DnsConfig) -> Result<Resolver, DnsSetupError> {
        let anchor = TrustAnchor::from_config(cfg.trust_anchor.as_deref())?;
        Resolver::build(cfg, anchor, true, Transport::Tcp)
    }

    /// Share `status` (the daemon's probe result) instead of this resolver's own.
    pub fn with_dnssec_status(mut self, status: DnssecStatus) -> Resolver {
        self.dnssec = status;
        self
    }

    /// The DNSSEC probe status this resolver follows (shared by its clones).
    pub fn dnssec_status(&self) -> &DnssecStatus {
        &self.dnssec
    }

    /// Validation is configured, but the last probe found DNSSEC unavailable through
    /// the upstreams: lookups are answered unvalidated.
    pub fn dnssec_unavailable(&self) -> bool {
        self.validating && matches!(self.dnssec.get(), DnssecHealth::Unavailable { .. })
    }

    /// The resolver for one lookup (one snapshot of the status, so all queries of a
    /// lookup agree): `self`, or a non-validating copy while DNSSEC is unavailable.
    fn current(&self) -> Cow<'_, Resolver> {
        if self.dnssec_unavailable() {
            let mut plain = self.clone();
            plain.validating = false;
            Cow::Owned(plain)
        } else {
            Cow::Borrowed(self)
        }
    }

    /// A validating resolver (built-in anchor) against a small unsigned test
    /// responder (UDP), to check what an unsigned world looks like to it.
    #[cfg(test)]
    pub(crate) fn validating_for_tests(cfg: &DnsConfig) -> Resolver {
        match Resolver::build(cfg, TrustAnchor::builtin(), true, Transport::UdpThenTcp) {
            Ok(r) => r,
            Err(e) => panic!("test resolver: {e}"),
        }
    }

    /// A resolver that does not validate (every answer `Unvalidated`), for unit
    /// tests against small unsigned test responders.
    #[cfg(test)]
    pub(crate) fn unvalidated_for_tests(cfg: &DnsConfig) -> Resolver {
        match Resolver::build(cfg, TrustAnchor::builtin(), false, Transport::UdpThenTcp) {
            Ok(r) => r,
            Err(e) => panic!("test resolver: {e}"),
        }
    }

    fn build(
        cfg: &DnsConfig,
        anchor: TrustAnchor,
        validating: bool,
        transport: Transport,
    ) -> Result<Resolver, DnsSetupError> {
        let plain = hickory_resolver(cfg, None, transport)?;
        let validated = OnceCell::new();
        if validating {
            if let TrustAnchor::Keys(keys) = &anchor {
                let v = hickory_resolver(cfg, Some(anchor::trust_anchors(keys)), transport)?;
                // A fresh cell cannot be full.
                let _ = validated.set(v);
            }
        }
        tracing::debug!(
            validating,
            anchor = %anchor.describe(),
            "DNS resolver built"
        );
        Ok(Resolver {
            plain,
            validated: Arc::new(validated),
            anchor: Arc::new(anchor),
            cfg: Arc::new(cfg.clone()),
            validating,
            dnssec: DnssecStatus::default(),
        })
    }

    /// The resolver every lookup goes through: the validating one when validation
    /// is on (built now if the anchor is a DS and it is not built yet).
    async fn active(&self) -> Result<&TokioResolver, String> {
        if !self.validating {
            return Ok(&self.plain);
        }
        self.validated
            .get_or_try_init(|| async {
                let TrustAnchor::Digests(ds) = self.anchor.as_ref() else {
                    // Keys: built in `build`; only a failure there leaves this empty.
                    return Err("the DNSSEC resolver is not available".to_string());
                };
                let keys = self.root_keys_matching(ds).await?;
                tracing::info!(
                    keys = ?keys.iter().map(DnskeyAnchor::key_tag).collect::<Vec<_>>(),
                    "root DNSKEY matched the configured DS trust anchor"
                );
                hickory_resolver(
                    &self.cfg,
                    Some(anchor::trust_anchors(&keys)),
                    Transport::Tcp,
                )
                .map_err(|e| e.to_string())
            })
            .await
    }

    /// Fetch the root DNSKEY RRset (unvalidated) and keep the keys a configured DS
    /// stands for. The digest pins the key, so the fetch needs no validation.
    async fn root_keys_matching(&self, ds: &[DsAnchor]) -> Result<Vec<DnskeyAnchor>, String> {
        let wanted: Vec<String> = ds.iter().map(ToString::to_string).collect();
        let lookup = self
            .plain
            .lookup(Name::root(), RecordType::DNSKEY)
            .await
            .map_err(|e| {
                format!("cannot fetch the root DNSKEY RRset to match the DS trust anchor: {e}")
            })?;
        let keys: Vec<DnskeyAnchor> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(DnskeyAnchor {
                    flags: k.flags(),
                    protocol: 3,
                    algorithm: u8::from(k.public_key().algorithm()),
                    public_key: k.public_key().public_bytes().to_vec(),
                }),
                _ => None,
            })
            .filter(|k| k.usable() && ds.iter().any(|d| anchor::ds_matches(d, k)))
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "no root DNSKEY from the upstream resolvers matches the trust anchor ({})",
                wanted.join("; ")
            ));
        }
        Ok(keys)
    }

    /// The underlying hickory resolver, for record types this module does not wrap,
    /// with the same upstreams. Its answers are *not* DNSSEC-validated: use it only
    /// where DNSSEC plays no part (the MTA-STS TXT record, RFC 8461 section 3.1: the
    /// policy is authenticated by HTTPS, not by DNS).
    pub fn hickory(&self) -> &TokioResolver {
        &self.plain
    }

    /// The TXT records at `name` (absolute or relative to the root), each record's
    /// strings concatenated, through the *non-validating* resolver ([`Self::hickory`]):
    /// for the policy-discovery records whose authenticity comes from elsewhere
    /// (`_mta-sts`, `_smtp._tls`). `Ok(empty)`: no such records (NXDOMAIN or
    /// NODATA); `Err`: the lookup failed (a temporary condition), in words.
    pub async fn txt_unvalidated(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let name = Name::from_ascii(&fqdn).map_err(|e| format!("invalid name {fqdn}: {e}"))?;
        match self.plain.txt_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    // A record's strings are concatenated without separator.
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(nr)))
                if matches!(
                    nr.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Ok(Vec::new())
            }
            Err(NetError::Dns(DnsError::Nsec { .. })) => Ok(Vec::new()),
            Err(e) => Err(format!("TXT lookup of {fqdn} failed: {e}")),
        }
    }

    /// Whether answers are DNSSEC-validated in-process.
    pub fn validating(&self) -> bool {
        self.validating
    }

    /// The upstream resolvers, for messages: "127.0.0.1:53, ..." or the system's.
    pub fn upstreams(&self) -> String {
        if self.cfg.servers.is_empty() {
            return "from /etc/resolv.conf".into();
        }
        self.cfg
            .servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The security of an answer that carries no records (NXDOMAIN/NODATA) when the
    /// resolver does not validate.
    fn unvalidated_or(&self, s: Security) -> Security {
        if self.validating {
            s
        } else {
            Security::Unvalidated
        }
    }

    /// Where mail for `domain` goes (see the module documentation for the rules).
    pub async fn resolve_mx(&self, domain: &str) -> MxResult {
        self.current().mx_now(domain).await
    }

    async fn mx_now(&self, domain: &str) -> MxResult {
        let name = match absolute_name(domain) {
            Ok(n) => n,
            Err(e) => {
                // Not a syntactically valid domain: no lookup can ever succeed.
                tracing::warn!(domain, "MX lookup not attempted: {e}");
                return MxResult::NoSuchDomain {
                    security: self.unvalidated_or(Security::Insecure),
                };
            }
        };
        match lookup_following(self, &name, RecordType::MX).await {
            Lookup::Records(records) => {
                let security = security_of(self.validating, &records);
                if let Some(failed) = MxResult::unverified(security, "the MX answer") {
                    return failed;
                }
                let pairs: Vec<(u16, String)> = records
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, name_to_host(&mx.exchange))),
                        _ => None,
                    })
                    .collect();
                if pairs.is_empty() {
                    // Only CNAMEs or other types in the answer: treat as NODATA.
                    return self.implicit_mx(domain, security).await;
                }
                match order_mx(pairs, &mut rand::rng()) {
                    None => MxResult::NullMx { security },
                    Some(hosts) if hosts.is_empty() => MxResult::NullMx { security },
                    Some(hosts) => MxResult::Hosts {
                        hosts,
                        implicit: false,
                        security,
                        addresses: Vec::new(),
                    },
                }
            }
            Lookup::NoData(security) => {
                if let Some(failed) = MxResult::unverified(security, "the denial of an MX") {
                    return failed;
                }
                self.implicit_mx(domain, security).await
            }
            Lookup::NxDomain(security) => {
                // An NXDOMAIN bounces the message: only a proven (or provably
                // unsigned) one may do that.
                if let Some(failed) = MxResult::unverified(security, "the NXDOMAIN answer") {
                    return failed;
                }
                MxResult::NoSuchDomain { security }
            }
            Lookup::Unverified { security, reason } => MxResult::DnssecFailed { security, reason },
            Lookup::Temp(reason) => MxResult::TempFail { reason },
        }
    }

    /// RFC 5321 5.1: no MX RRset; if the domain has addresses it is its own mail host.
    async fn implicit_mx(&self, domain: &str, mx_security: Security) -> MxResult {
        let host = domain.trim_end_matches('.').to_ascii_lowercase();
        let addrs = self.addrs_now(&host).await;
        let security = mx_security.weakest(addrs.security);
        if let Some(failed) = MxResult::unverified(security, "the implicit MX (address) answer") {
            return failed;
        }
        if !addrs.addrs.is_empty() {
            return MxResult::Hosts {
                hosts: vec![MxHost {
                    name: host,
                    preference: 0,
                    literal: None,
                }],
                implicit: true,
                security,
                addresses: addrs.addrs,
            };
        }
        match addrs.temp_error {
            Some(reason) => MxResult::TempFail { reason },
            None => MxResult::NoMailHost { security },
        }
    }

    /// A and AAAA of one host, looked up together. IPv4 addresses come first: boxes
    /// are often on networks with an IPv6 address but no working IPv6 route, where an
    /// IPv6-first order would spend a connect timeout per host.
    ///
    /// `security` is the weakest status of both answers including every CNAME on the
    /// way. A bogus or unverifiable answer yields *no* addresses (D1: the host is not
    /// used) and a `temp_error` saying why.
    pub async fn resolve_addrs(&self, host: &str) -> AddrResult {
        self.current().addrs_now(host).await
    }

    async fn addrs_now(&self, host: &str) -> AddrResult {
        let name = match absolute_name(host) {
            Ok(n) => n,
            Err(e) => {
                return AddrResult {
                    addrs: Vec::new(),
                    security: self.unvalidated_or(Security::Indeterminate),
                    canonical: None,
                    canonical_secure: false,
                    temp_error: Some(e),
                }
            }
        };
        let (v4, v6) = tokio::join!(
            lookup_following(self, &name, RecordType::A),
            lookup_following(self, &name, RecordType::AAAA)
        );
        collect_addrs(self.validating, host, [v4, v6])
    }
}

/// Merge the A and AAAA lookups of one host into its address list.
fn collect_addrs(validating: bool, host: &str, lookups: [Lookup; 2]) -> AddrResult {
    let mut addrs = Vec::new();
    let mut canonical = None;
    let mut cnames_secure = true;
    let mut temp_error = None;
    let mut failed = 0;
    let mut security = if validating {
        Security::Secure
    } else {
        Security::Unvalidated
    };
    for lookup in lookups {
        match lookup {
            Lookup::Records(records) => {
                for r in &records {
                    match &r.data {
                        RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                        RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
                        // A chain is answered in order; the last target is canonical.
                        RData::CNAME(c) => {
                            canonical = Some(name_to_host(&c.0));
                            cnames_secure &= validating && r.proof == Proof::Secure;
                        }
                        _ => {}
                    }
                }
                security = security.weakest(security_of(validating, &records));
            }
            Lookup::NoData(s) | Lookup::NxDomain(s) => security = security.weakest(s),
            Lookup::Unverified {
                security: s,
                reason,
            } => {
                security = security.weakest(s);
                temp_error = Some(reason);
            }
            Lookup::Temp(reason) => {
                // No answer is no proof; but the other family may have answered.
                failed += 1;
                temp_error = Some(reason);
            }
        }
    }
    if failed == 2 && validating {
        // Neither family answered: nothing about this name is known.
        security = Security::Indeterminate;
    }
    if matches!(security, Security::Bogus | Security::Indeterminate) && !addrs.is_empty() {
        tracing::warn!(host, %security, "address answer failed DNSSEC validation; host not used");
        addrs.clear();
        temp_error.get_or_insert_with(|| format!("the address answer is {security} (DNSSEC)"));
    }
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    let canonical_secure = canonical.is_some() && cnames_secure && security == Security::Secure;
    AddrResult {
        addrs,
        security,
        canonical,
        canonical_secure,
        temp_error,
    }
}

/// One hickory resolver over the configured upstreams (or the system's); with
/// `anchors`, validating from them.
fn hickory_resolver(
    cfg: &DnsConfig,
    anchors: Option<TrustAnchors>,
    transport: Transport,
) -> Result<TokioResolver, DnsSetupError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if cfg.servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| DnsSetupError::SystemConfig(e.to_string()))?
    } else {
        TokioResolver::builder_with_config(upstream_config(&cfg.servers, transport), provider)
    };
    set_options(builder.options_mut(), cfg.timeout, anchors.is_some());
    if let Some(anchors) = anchors {
        // The builder is the only way to give hickory a custom anchor:
        // `ResolverOpts.trust_anchor` (a path) is ignored (field notes).
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    builder
        .build()
        .map_err(|e| DnsSetupError::Build(e.to_string()))
}

/// How configured upstreams are asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Production: TCP only.
    Tcp,
    /// Unsigned unit-test responders, which speak UDP.
    #[cfg_attr(not(test), allow(dead_code))]
    UdpThenTcp,
}

/// The name server list for configured upstreams: each over TCP at its port. TCP
/// because signed answers are large (RRSIGs, DNSKEY RRsets, NSEC proofs) and UDP
/// paths (fragmentation, middleboxes, home routers) lose or strip them, which would
/// make good answers look bogus.
fn upstream_config(servers: &[SocketAddr], transport: Transport) -> ResolverConfig {
    let name_servers = servers
        .iter()
        .map(|sa| {
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = sa.port();
            let connections = match transport {
                Transport::Tcp => vec![tcp],
                Transport::UdpThenTcp => {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    vec![udp, tcp]
                }
            };
            NameServerConfig::new(sa.ip(), true, connections)
        })
        .collect();
    ResolverConfig::from_name_servers(name_servers)
}

/// The resolver options, each set deliberately rather than inherited.
fn set_options(opts: &mut ResolverOpts, timeout: Duration, validate: bool) {
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.edns0 = true;
    // In-process DNSSEC validation (sets the DO bit, checks every RRSIG up to the
    // trust anchor). The upstream's AD bit is never consulted.
    opts.validate = validate;
    // Caching on: MX and address answers are small and reused for every message to
    // the same domain. Negative and bogus answers are not cached by hickory.
    opts.cache_size = 4096;
    // Mail routing comes from DNS only, never from /etc/hosts.
    opts.use_hosts_file = ResolveHosts::Never;
    // We only ask absolute names; search domains never apply.
    opts.ndots = 0;
    // Keep CNAMEs in answers so an aliased MX host is visible.
    opts.preserve_intermediates = true;
    // System upstreams are asked over UDP: a truncated or failed answer is retried
    // over TCP.
    opts.try_tcp_on_error = true;
    opts.recursion_desired = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
    use rand::SeedableRng;

    fn pairs(v: &[(u16, &str)]) -> Vec<(u16, String)> {
        v.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    #[test]
    fn mx_sorted_by_preference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let hosts = order_mx(
            pairs(&[(20, "b.example."), (10, "A.Example."), (30, "c.example")]),
            &mut rng,
        )
        .unwrap();
        let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example", "c.example"]);
        assert_eq!(hosts[0].preference, 10);
    }

    #[test]
    fn equal_preference_is_shuffled_but_stays_in_its_group() {
        let input = pairs(&[
            (10, "a1"),
            (10, "a2"),
            (10, "a3"),
            (10, "a4"),
            (20, "b1"),
            (20, "b2"),
            (5, "first"),
        ]);
        let mut firsts = std::collections::HashSet::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let hosts = order_mx(input.clone(), &mut rng).unwrap();
            assert_eq!(hosts.len(), 7);
            assert_eq!(hosts[0].name, "first");
            let mid: std::collections::BTreeSet<_> =
                hosts[1..5].iter().map(|h| h.name.clone()).collect();
            assert_eq!(mid.len(), 4);
            assert!(mid.iter().all(|n| n.starts_with('a')));
            assert!(hosts[5..].iter().all(|h| h.name.starts_with('b')));
            firsts.insert(hosts[1].name.clone());
        }
        // With 200 rounds every a-host must have come first at least once.
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }

    #[test]
    fn null_mx_is_detected() {
        let mut rng = rand::rng();
        assert_eq!(order_mx(pairs(&[(0, ".")]), &mut rng), None);
        assert_eq!(order_mx(pairs(&[(0, "")]), &mut rng), None);
        // A root exchange next to real ones is ignored, not a null MX.
        let hosts = order_mx(pairs(&[(0, "."), (10, "mx.example")]), &mut rng).unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].name, "mx.example");
    }

    #[test]
    fn duplicate_mx_names_keep_lowest_preference() {
        let hosts = order_mx(
            pairs(&[(20, "mx.example"), (10, "mx.example."), (15, "other")]),
            &mut rand::rng(),
        )
        .unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            (hosts[0].name.as_str(), hosts[0].preference),
            ("mx.example", 10)
        );
    }

    #[test]
    fn ip_literal_exchange_is_kept_as_address() {
        let hosts = order_mx(pairs(&[(10, "127.0.0.7.")]), &mut rand::rng()).unwrap();
        assert_eq!(hosts[0].literal, Some("127.0.0.7".parse().unwrap()));
    }

    fn no_records(code: ResponseCode) -> NetError {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            Query::query(Name::from_ascii("x.example.").unwrap(), RecordType::MX),
            code,
        )))
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            classify_error(false, &no_records(ResponseCode::NXDomain)),
            Lookup::NxDomain(Security::Unvalidated)
        );
        assert_eq!(
            classify_error(false, &no_records(ResponseCode::NoError)),
            Lookup::NoData(Security::Unvalidated)
        );
        assert!(matches!(
            classify_error(
                true,
                &NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
            ),
            Lookup::Temp(_)
        ));
        assert!(matches!(
            classify_error(true, &NetError::Timeout),
            Lookup::Temp(_)
        ));
        assert!(matches!(
            classify_error(true, &NetError::Dns(DnsError::DnssecBogus)),
            Lookup::Unverified {
                security: Security::Bogus,
                ..
            }
        ));
    }

    #[test]
    fn failures_map_to_status_codes() {
        let f = |r: MxResult| r.failure("example.test").unwrap();
        let (perm, st, msg) = f(MxResult::NullMx {
            security: Security::Unvalidated,
        });
        assert!(perm);
        assert_eq!(st, "5.1.10");
        assert!(msg.contains("null MX"));
        let (perm, st, _) = f(MxResult::NoSuchDomain {
            security: Security::Unvalidated,
        });
        assert!(perm && st == "5.1.2");
        let (perm, st, _) = f(MxResult::TempFail {
            reason: "timeout".into(),
        });
        assert!(!perm && st == "4.4.3", "a DNS outage defers, never bounces");
    }

    #[test]
    fn addresses_from_both_families_and_cname() {
        let q = Name::from_ascii("mx.example.").unwrap();
        let target = Name::from_ascii("real.example.").unwrap();
        let v4 = Lookup::Records(vec![
            Record::from_rdata(q.clone(), 60, RData::CNAME(CNAME(target.clone()))),
            Record::from_rdata(target.clone(), 60, RData::A(A::new(127, 0, 0, 9))),
        ]);
        let v6 = Lookup::Records(vec![Record::from_rdata(
            target,
            60,
            RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 1)),
        )]);
        let r = collect_addrs(false, "mx.example", [v4, v6]);
        assert_eq!(
            r.addrs,
            vec![
                "127.0.0.9".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(r.canonical.as_deref(), Some("real.example"));
        assert_eq!(r.security, Security::Unvalidated);
        assert!(!r.canonical_secure, "nothing is secure without validation");
        assert_eq!(r.temp_error, None);
    }

    #[test]
    fn address_lookup_temp_failure_is_reported() {
        let r = collect_addrs(
            false,
            "mx.example",
            [
                Lookup::Temp("timeout".into()),
                Lookup::NoData(Security::Unvalidated),
            ],
        );
        assert!(r.addrs.is_empty());
        assert_eq!(r.temp_error.as_deref(), Some("timeout"));
    }

    #[tokio::test]
    async fn resolver_against_a_local_dns_server() {
        // A local responder, so the classification is checked against what hickory
        // really returns for NXDOMAIN, NODATA and SERVFAIL.
        let dns = crate::testutil::dns::TestDns::start().await;
        dns.mx(
            "mx.example.test",
            &[
                (20, "backup.example.test."),
                (10, "mx1.example.test."),
                (10, "mx2.example.test."),
            ],
        );
        dns.mx("null.example.test", &[(0, ".")]);
        dns.nxdomain("nx.example.test");
        dns.servfail("fail.example.test", RecordType::MX);
        dns.servfail("fail.example.test", RecordType::A);
        dns.servfail("fail.example.test", RecordType::AAAA);
        dns.a(
            "implicit.example.test",
            std::net::Ipv4Addr::new(127, 0, 0, 5),
        );
        dns.a("mx1.example.test", std::net::Ipv4Addr::new(127, 0, 0, 11));
        dns.aaaa("mx2.example.test", std::net::Ipv6Addr::LOCALHOST);
        let r = dns.resolver();

        match r.resolve_mx("MX.example.test").await {
            MxResult::Hosts {
                hosts, implicit, ..
            } => {
                assert!(!implicit);
                let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
                assert_eq!(names.len(), 3);
                assert!(names[..2].contains(&"mx1.example.test"));
                assert!(names[..2].contains(&"mx2.example.test"));
                assert_eq!(names[2], "backup.example.test");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.resolve_mx("null.example.test").await,
            MxResult::NullMx { .. }
        ));
        assert!(matches!(
            r.resolve_mx("nx.example.test").await,
            MxResult::NoSuchDomain { .. }
        ));
        assert!(matches!(
            r.resolve_mx("fail.example.test").await,
            MxResult::TempFail { .. }
        ));
        assert!(matches!(
            r.resolve_mx("nomail.example.test").await,
            MxResult::NoMailHost { .. }
        ));
        match r.resolve_mx("implicit.example.test.").await {
            MxResult::Hosts {
                hosts,
                implicit,
                addresses,
                ..
            } => {
                assert!(implicit);
                assert_eq!(hosts[0].name, "implicit.example.test");
                assert_eq!(addresses, vec!["127.0.0.5".parse::<IpAddr>().unwrap()]);
            }
            other => panic!("{other:?}"),
        }
        // Loopback addresses are kept; both families are asked.
        let a = r.resolve_addrs("mx1.example.test").await;
        assert_eq!(a.addrs, vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
        let a = r.resolve_addrs("mx2.example.test").await;
        assert_eq!(a.addrs, vec!["::1".parse::<IpAddr>().unwrap()]);
        let a = r.resolve_addrs("fail.example.test").await;
        assert!(a.addrs.is_empty() && a.temp_error.is_some());
    }

    /// Answers from a table, as a validating resolver would give them.
    struct Table(std::collections::HashMap<(String, RecordType), Lookup>);

    impl RawLookup for Table {
        fn validating(&self) -> bool {
            true
        }
        async fn raw(&self, name: &Name, rtype: RecordType) -> Lookup {
            self.0
                .get(&(name.to_ascii().to_ascii_lowercase(), rtype))
                .cloned()
                .unwrap_or(Lookup::Temp("not in table".into()))
        }
    }

    fn rec(name: &str, rdata: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(Name::from_ascii(name).unwrap(), 60, rdata);
        r.proof = proof;
        r
    }

    fn cname(from: &str, to: &str, proof: Proof) -> Record {
        rec(
            from,
            RData::CNAME(CNAME(Name::from_ascii(to).unwrap())),
            proof,
        )
    }

    fn a(name: &str, proof: Proof) -> Record {
        rec(name, RData::A(A::new(127, 0, 0, 25)), proof)
    }

    fn table(entries: Vec<(&str, RecordType, Lookup)>) -> Table {
        Table(
            entries
                .into_iter()
                .map(|(n, t, l)| ((n.to_string(), t), l))
                .collect(),
        )
    }

    async fn follow(t: &Table, name: &str, rtype: RecordType) -> Lookup {
        lookup_following(t, &Name::from_ascii(name).unwrap(), rtype).await
    }

    #[tokio::test]
    async fn cname_chain_security_is_the_weakest_link() {
        use RecordType::{A as TA, AAAA as TAAAA};
        // mx -> (secure) mid -> (insecure) real, answered hop by hop: the address is
        // only as secure as the insecure link.
        let t = table(vec![
            (
                "mx.example.test.",
                TA,
                Lookup::Records(vec![cname(
                    "mx.example.test.",
                    "mid.example.test.",
                    Proof::Secure,
                )]),
            ),
            (
                "mid.example.test.",
                TA,
                Lookup::Records(vec![cname(
                    "mid.example.test.",
                    "real.other.test.",
                    Proof::Insecure,
                )]),
            ),
            (
                "real.other.test.",
                TA,
                Lookup::Records(vec![a("real.other.test.", Proof::Secure)]),
            ),
            (
                "mx.example.test.",
                TAAAA,
                Lookup::Records(vec![cname(
                    "mx.example.test.",
                    "mid.example.test.",
                    Proof::Secure,
                )]),
            ),
            (
                "mid.example.test.",
                TAAAA,
                Lookup::Records(vec![cname(
                    "mid.example.test.",
                    "real.other.test.",
                    Proof::Insecure,
                )]),
            ),
            ("real.other.test.", TAAAA, Lookup::NoData(Security::Secure)),
        ]);
        let v4 = follow(&t, "mx.example.test.", TA).await;
        let Lookup::Records(records) = &v4 else {
            panic!("{v4:?}")
        };
        assert_eq!(records.len(), 3, "both CNAMEs and the address");
        let v6 = follow(&t, "mx.example.test.", TAAAA).await;
        assert_eq!(v6, Lookup::NoData(Security::Insecure));
        let r = collect_addrs(true, "mx.example.test", [v4, v6]);
        assert_eq!(r.addrs.len(), 1);
        assert_eq!(r.security, Security::Insecure);
        assert_eq!(r.canonical.as_deref(), Some("real.other.test"));
        assert!(!r.canonical_secure);
    }

    #[tokio::test]
    async fn secure_cname_chain_gives_a_secure_canonical_name() {
        let chain = vec![
            cname("mx.example.test.", "host.provider.test.", Proof::Secure),
            a("host.provider.test.", Proof::Secure),
        ];
        let t = table(vec![
            ("mx.example.test.", RecordType::A, Lookup::Records(chain)),
            (
                "mx.example.test.",
                RecordType::AAAA,
                Lookup::Records(vec![cname(
                    "mx.example.test.",
                    "host.provider.test.",
                    Proof::Secure,
                )]),
            ),
            (
                "host.provider.test.",
                RecordType::AAAA,
                Lookup::NoData(Security::Secure),
            ),
        ]);
        let v4 = follow(&t, "mx.example.test.", RecordType::A).await;
        let v6 = follow(&t, "mx.example.test.", RecordType::AAAA).await;
        assert_eq!(v6, Lookup::NoData(Security::Secure));
        let r = collect_addrs(true, "mx.example.test", [v4, v6]);
        assert_eq!(r.security, Security::Secure);
        assert_eq!(r.canonical.as_deref(), Some("host.provider.test"));
        assert!(r.canonical_secure);
    }

    #[tokio::test]
    async fn bogus_nodata_at_a_cname_is_reasked_at_the_target() {
        // The field-notes bug: AAAA of an IPv4-only host behind a CNAME comes back
        // bogus through a recursive upstream. The validated CNAME is followed and the
        // target's secure NODATA is the answer.
        let bogus = Lookup::Unverified {
            security: Security::Bogus,
            reason: "SOA record is for the wrong zone".into(),
        };
        let t = table(vec![
            ("mx.example.test.", RecordType::AAAA, bogus.clone()),
            (
                "mx.example.test.",
                RecordType::CNAME,
                Lookup::Records(vec![cname(
                    "mx.example.test.",
                    "host.example.test.",
                    Proof::Secure,
                )]),
            ),
            (
                "host.example.test.",
                RecordType::AAAA,
                Lookup::NoData(Security::Secure),
            ),
            // A name whose CNAME is itself bogus stays bogus.
            ("evil.example.test.", RecordType::AAAA, bogus.clone()),
            (
                "evil.example.test.",
                RecordType::CNAME,
                Lookup::Records(vec![cname(
                    "evil.example.test.",
                    "host.example.test.",
                    Proof::Bogus,
                )]),
            ),
            // A bogus answer at a name that is no alias stays bogus.
            ("plain.example.test.", RecordType::AAAA, bogus.clone()),
            (
                "plain.example.test.",
                RecordType::CNAME,
                Lookup::NoData(Security::Secure),
            ),
        ]);
        assert_eq!(
            follow(&t, "mx.example.test.", RecordType::AAAA).await,
            Lookup::NoData(Security::Secure)
        );
        assert_eq!(
            follow(&t, "evil.example.test.", RecordType::AAAA).await,
            bogus
        );
        assert_eq!(
            follow(&t, "plain.example.test.", RecordType::AAAA).await,
            bogus
        );
    }

    #[tokio::test]
    async fn cname_loops_end() {
        let t = table(vec![
            (
                "a.test.",
                RecordType::A,
                Lookup::Records(vec![cname("a.test.", "b.test.", Proof::Secure)]),
            ),
            (
                "b.test.",
                RecordType::A,
                Lookup::Records(vec![cname("b.test.", "a.test.", Proof::Secure)]),
            ),
        ]);
        // Terminates; no address comes out of a loop.
        let r = follow(&t, "a.test.", RecordType::A).await;
        let Lookup::Records(records) = r else {
            panic!("{r:?}")
        };
        assert!(records.iter().all(|r| r.record_type() == RecordType::CNAME));
    }

    #[tokio::test]
    async fn bogus_or_unproven_mx_answers_never_bounce_or_deliver() {
        // Every shape of failure in an MX lookup turns into a temporary result.
        for (security, expect_dnssec) in [(Security::Bogus, true), (Security::Indeterminate, true)]
        {
            let r = MxResult::unverified(security, "the NXDOMAIN answer").unwrap();
            let (permanent, status, reason) = r.failure("example.test").unwrap();
            assert!(!permanent);
            assert_eq!(status, "4.7.5");
            assert_eq!(
                expect_dnssec,
                reason.contains("DNSSEC validation failed for the MX of example.test")
            );
        }
        assert!(MxResult::unverified(Security::Secure, "x").is_none());
        assert!(MxResult::unverified(Security::Insecure, "x").is_none());
    }

    #[test]
    fn denial_security_reads_soa_and_nsec_proofs() {
        let q = Query::query(Name::from_ascii("x.example.test.").unwrap(), RecordType::MX);
        let mut nr = NoRecords::new(q, ResponseCode::NXDomain);
        assert_eq!(
            denial_security(true, &nr),
            Security::Indeterminate,
            "no proof at all"
        );
        assert_eq!(denial_security(false, &nr), Security::Unvalidated);
        let soa = |proof| {
            let mut r = Record::from_rdata(
                Name::from_ascii("example.test.").unwrap(),
                60,
                RData::SOA(hickory_resolver::proto::rr::rdata::SOA::new(
                    Name::from_ascii("ns.example.test.").unwrap(),
                    Name::from_ascii("h.example.test.").unwrap(),
                    1,
                    60,
                    60,
                    60,
                    60,
                )),
            );
            r.proof = proof;
            r
        };
        nr.authorities = Some(Arc::from(vec![soa(Proof::Secure)]));
        assert_eq!(denial_security(true, &nr), Security::Secure);
        nr.authorities = Some(Arc::from(vec![soa(Proof::Secure), soa(Proof::Bogus)]));
        assert_eq!(denial_security(true, &nr), Security::Bogus);
        nr.authorities = Some(Arc::from(vec![soa(Proof::Insecure)]));
        assert_eq!(denial_security(true, &nr), Security::Insecure);
    }

    #[test]
    fn resolver_builds_for_configured_upstream() {
        let cfg = DnsConfig {
            servers: vec!["127.0.10.54:53".parse().unwrap()],
            timeout: Duration::from_secs(2),
            trust_anchor: None,
        };
        let r = Resolver::from_config(&cfg).expect("resolver");
        assert!(r.validating);
        assert!(r.validated.get().is_some(), "built-in keys: ready at once");
        assert_eq!(r.upstreams(), "127.0.10.54:53");
        let ns = upstream_config(&cfg.servers, Transport::Tcp);
        assert_eq!(ns.name_servers().len(), 1);
        let conns = &ns.name_servers()[0].connections;
        assert_eq!(conns.len(), 1, "TCP only");
        assert!(conns.iter().all(|c| c.port == 53));
        // A bad anchor file is a setup error naming the file.
        let bad = DnsConfig {
            trust_anchor: Some("/nonexistent/anchor".into()),
            ..cfg
        };
        let err = Resolver::from_config(&bad).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/anchor"), "{err}");
    }
}

#[cfg(test)]
mod unavailable_tests {
    //! The unvalidated fallback while DNSSEC is unavailable (module documentation),
    //! against the shared unsigned test responder.
    use super::*;
    use crate::dane::TlsaAnswer;
    use crate::testutil::dns::TestDns;
    use std::time::SystemTime;

    fn validating(dns: &TestDns) -> Resolver {
        Resolver::validating_for_tests(&DnsConfig {
            servers: vec![dns.addr],
            timeout: Duration::from_secs(2),
            trust_anchor: None,
        })
    }

    async fn world() -> TestDns {
        let dns = TestDns::start().await;
        dns.mx("example.test", &[(10, "mx.example.test.")]);
        dns.a("mx.example.test", std::net::Ipv4Addr::new(127, 0, 0, 11));
        dns
    }

    #[tokio::test]
    async fn unavailable_dnssec_gives_unvalidated_answers_not_failures() {
        let dns = world().await;
        let r = validating(&dns);
        r.dnssec_status().set(DnssecHealth::Unavailable {
            reason: "stripped".into(),
            checked_at: SystemTime::now(),
        });
        assert!(r.dnssec_unavailable());
        match r.resolve_mx("example.test").await {
            MxResult::Hosts {
                hosts, security, ..
            } => {
                assert_eq!(hosts[0].name, "mx.example.test");
                assert_eq!(security, Security::Unvalidated);
            }
            other => panic!("{other:?}"),
        }
        let a = r.resolve_addrs("mx.example.test").await;
        assert_eq!(a.addrs, vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.security, Security::Unvalidated);
        assert!(!a.canonical_secure);
        // No TLSA records: DANE does not apply (never Failed, never Secure).
        assert_eq!(
            r.resolve_tlsa("_25._tcp.mx.example.test.").await,
            TlsaAnswer::Insecure
        );
        // The status is shared by clones: recovery switches validation back on.
        let clone = r.clone();
        r.dnssec_status().set(DnssecHealth::Available {
            checked_at: SystemTime::now(),
        });
        assert!(!clone.dnssec_unavailable());
    }

    #[tokio::test]
    async fn available_dnssec_never_takes_an_unsigned_answer_as_secure() {
        let dns = world().await;
        let r = validating(&dns);
        for health in [
            DnssecHealth::Unknown,
            DnssecHealth::Available {
                checked_at: SystemTime::now(),
            },
        ] {
            r.dnssec_status().set(health);
            assert!(!r.dnssec_unavailable());
            let mx = r.resolve_mx("example.test").await;
            assert!(
                !matches!(
                    mx.security(),
                    Security::Secure | Security::Unvalidated | Security::Insecure
                ),
                "{mx:?}"
            );
            assert!(!matches!(mx, MxResult::Hosts { .. }), "{mx:?}");
            let a = r.resolve_addrs("mx.example.test").await;
            assert!(a.addrs.is_empty(), "{a:?}");
            assert_ne!(a.security, Security::Secure);
            assert!(matches!(
                r.resolve_tlsa("_25._tcp.mx.example.test.").await,
                TlsaAnswer::Failed { .. }
            ));
        }
    }

    #[tokio::test]
    async fn a_probe_through_an_unsigned_upstream_reports_unavailable() {
        let dns = world().await;
        let r = validating(&dns);
        match r.probe_dnssec().await {
            DnssecHealth::Unavailable { reason, .. } => assert!(!reason.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
