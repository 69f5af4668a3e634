//! The transport decision for one MX host, made in one place and readable top to
//! bottom: inputs -> verdict achieved -> action.
//!
//! # Inputs ([`HostFacts`], [`Inputs`])
//! - the level the message requires (from its risk class, standards.md A1) and
//!   whether the destination is `dane_only` (D11);
//! - the DNSSEC status of the MX answer and of the host's address answer
//!   ([`Security`]; anything but `Secure` counts as not secure);
//! - what DANE requires of the host ([`DaneRequirement`], from the TLSA lookup);
//! - what the recipient domain's MTA-STS policy says about the host ([`MxCheck`]);
//! - whether the server offered STARTTLS, and how the TLS handshake went
//!   ([`TlsOutcome`]: the DANE match, PKIX for the MX name, a PKIX-valid
//!   certificate name within the recipient domain).
//!
//! # Verdicts (standards.md H), strongest first
//! - `verified`: the MX is authenticated against DNS forgery (A3): a DANE match
//!   (`dane-ee`/`dane-ta`); PKIX on an MX allowed by an MTA-STS enforce policy
//!   (`mta-sts`); PKIX with a certificate name equal to the recipient domain or a
//!   subdomain of it (`pkix`, Postfix `secure` nexthop:dot-nexthop); PKIX on the MX
//!   name when the MX and address answers are DNSSEC-secure (`pkix`).
//! - `trusted`: PKIX chain and the MX name in the certificate, the MX name from
//!   unauthenticated DNS (`pkix`).
//! - `encrypted`: TLS 1.2 or newer, the server not authenticated (`none`).
//! - `plaintext`: no TLS.
//!
//! # Actions
//! - `Send`: the achieved verdict meets the level; go on with MAIL FROM.
//! - `SkipHost`: this host cannot carry the message; try the next one, and when
//!   none is left the message is *deferred* (4.7.5), never sent weaker (A2, A4,
//!   B3, E5). The reason names the host and what was missing, in plain language.
//! - `DeferDomain`: no host of this domain may be used now (D1: forged MX set).
//! - `RetryPlaintext`: only for `may` when nothing makes TLS mandatory: the
//!   handshake failed, so reconnect and send without TLS (RFC 7435 section 3).
//!
//! Two calls, one rule set: [`plan`] before connecting (which hosts may be tried
//! at all and whether DANE verifies the handshake), and [`decide`] after the
//! handshake, which applies [`plan`]'s rules again before judging the session.

pub mod problem;

use crate::config::Level;
use crate::dane::{self, DaneMechanism, DaneOutcome, DaneRequirement, Precondition};
use crate::dns::Security;
use crate::mtasts::{HostAction, Mode, MxCheck};
use crate::spool::record::{Mechanism, TransportVerdict};
use crate::tls::client::TlsFailure;

/// What is known about one MX host before connecting to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts<'a> {
    /// The recipient domain (lower case).
    pub domain: &'a str,
    /// The MX host name (what PKIX checks; the reason texts name it).
    pub host: &'a str,
    /// The minimum level the message needs.
    pub required: Level,
    /// The destination accepts only DANE-authenticated hosts (D11).
    pub dane_only: bool,
    /// DNSSEC status of the MX RRset (of the address answer for an implicit MX).
    pub mx_security: Security,
    /// DNSSEC status of the host's A/AAAA answers, CNAMEs included.
    pub address_security: Security,
    /// What DANE requires; `DaneRequirement::None` when no TLSA lookup was made.
    pub dane: &'a DaneRequirement,
    /// What the domain's MTA-STS policy says about this host (no policy: mode `None`).
    pub mta_sts: MxCheck,
}

/// How the TLS negotiation with one host went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// No handshake was attempted (the server did not offer STARTTLS).
    NotAttempted,
    /// STARTTLS was refused by the server or the handshake failed (a DANE
    /// mismatch fails the handshake too).
    Failed(TlsFailure),
    /// This connection is the plaintext retry after the handshake on the previous
    /// connection to the same address failed this way (only ever done for `may`).
    PlaintextRetry(TlsFailure),
    /// A session was established.
    Established(Established),
}

/// The facts of an established session that the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// Whether the chain passed PKIX for the MX host name (Ok) or why not.
    pub pkix: Result<(), TlsFailure>,
    /// A name of the certificate, PKIX-valid, equal to the recipient domain or a
    /// subdomain of it (Postfix nexthop:dot-nexthop).
    pub name_in_domain: Option<String>,
    /// The DANE match, when a DANE verifier judged the handshake.
    pub dane: Option<DaneOutcome>,
}

impl Established {
    /// A session judged by PKIX alone (no DANE, no name in the recipient domain).
    pub fn pkix(version: &str, pkix: Result<(), TlsFailure>) -> Established {
        Established {
            version: version.to_string(),
            pkix,
            name_in_domain: None,
            dane: None,
        }
    }
}

/// Everything [`decide`] depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs<'a> {
    pub facts: HostFacts<'a>,
    /// The server advertised STARTTLS in its EHLO reply.
    pub starttls_offered: bool,
    pub tls: TlsOutcome,
}

/// What to do with this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send,
    SkipHost {
        /// Enhanced status code for the deferral (RFC 3463 X.7.5: cryptographic failure).
        status: &'static str,
        reason: String,
    },
    /// No host of the domain may be used now: defer the message (D1).
    DeferDomain {
        status: &'static str,
        reason: String,
    },
    RetryPlaintext {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the transport achieved; `None` when no usable transport exists.
    pub verdict: Option<TransportVerdict>,
    /// What authenticated the server.
    pub mechanism: Mechanism,
    /// In plain language: what authenticated the server, or what it lacks.
    pub basis: String,
    pub action: Action,
    /// A policy failure to report through TLS-RPT although the message was not
    /// held back for it (E6: MTA-STS `testing`).
    pub report: Option<String>,
}

/// The decision before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// D1: the MX answer is forged or unvalidatable: defer the whole domain.
    DeferDomain {
        status: &'static str,
        reason: String,
    },
    /// Do not connect to this host; try the next.
    SkipHost {
        status: &'static str,
        reason: String,
    },
    /// Connect. `dane`: the handshake is judged by a DANE verifier built from the
    /// host's usable TLSA records (D6-D8, D10); otherwise any chain is accepted in
    /// the handshake (its signature always verified) and [`decide`] judges PKIX.
    Connect { dane: bool },
}

/// B2: use STARTTLS whenever the server offers it, whatever the level, including
/// `may`. There is no level at which an offered STARTTLS is ignored.
pub fn use_starttls(starttls_offered: bool) -> bool {
    starttls_offered
}

/// The least verdict that satisfies a level.
pub fn minimum_verdict(level: Level) -> TransportVerdict {
    match level {
        Level::May => TransportVerdict::Plaintext,
        Level::Encrypted => TransportVerdict::Encrypted,
        Level::Trusted => TransportVerdict::Trusted,
        Level::Verified => TransportVerdict::Verified,
    }
}

fn rank(v: TransportVerdict) -> u8 {
    match v {
        TransportVerdict::Plaintext => 0,
        TransportVerdict::Encrypted => 1,
        TransportVerdict::Trusted => 2,
        TransportVerdict::Verified => 3,
    }
}

/// TLS 1.2 and 1.3 are acceptable (standards.md C1). The client offers nothing else,
/// so this only guards against a misbuilt configuration.
fn acceptable_version(version: &str) -> bool {
    matches!(version, "TLSv1.2" | "TLSv1.3")
}

/// Before connecting: may this host be tried, and does DANE judge the handshake?
pub fn plan(f: &HostFacts<'_>) -> Plan {
    let host = f.host;

    // D1: a bogus or indeterminate MX answer defers the whole domain; a bogus or
    // indeterminate address answer skips this host. (D2/D3: an MX or address
    // answer that is not secure means no TLSA lookup; the caller made none.)
    match dane::precondition(host, f.mx_security, f.address_security) {
        Precondition::DeferDomain { status, reason } => {
            return Plan::DeferDomain {
                status,
                reason: format!("{reason}: a forged MX set must not be used; deferred"),
            }
        }
        Precondition::SkipHost { status, reason } => {
            return Plan::SkipHost {
                status,
                reason: format!("{reason}: this host is not used"),
            }
        }
        Precondition::NotApplicable { .. } | Precondition::LookUpTlsa => {}
    }

    // D4: the TLSA lookup failed on a secure host: skip it, never read the failure
    // as "no TLSA" (that would let an attacker switch DANE off).
    if let DaneRequirement::SkipHost { status, reason } = f.dane {
        return Plan::SkipHost {
            status,
            reason: format!("{host}: {reason}; the host is not used without its DANE check"),
        };
    }

    // D11: a dane-only destination takes only hosts with usable TLSA records.
    if f.dane_only && !f.dane.authentication_required() {
        return Plan::SkipHost {
            status: dane::STATUS_DANE_TEMPORARY,
            reason: format!(
                "{} is a dane-only destination, but {host} cannot be authenticated by DANE: {}",
                f.domain,
                dane_absence(f.dane)
            ),
        };
    }

    // E7 (and D6): usable TLSA records: DANE alone decides, MTA-STS is not applied.
    if f.dane.authentication_required() {
        return Plan::Connect { dane: true };
    }

    // E5: an enforce policy that does not list this host: the host is not used.
    if let HostAction::Skip(why) = f.mta_sts.before_connect(host) {
        return Plan::SkipHost {
            status: "4.7.5",
            reason: format!("{host}: {why}; the host is not used"),
        };
    }

    Plan::Connect { dane: false }
}

/// Why DANE cannot authenticate a host, for D11's reason.
fn dane_absence(dane: &DaneRequirement) -> String {
    match dane {
        DaneRequirement::None { reason } => reason.clone(),
        DaneRequirement::TlsRequired { base_domain, .. } => {
            format!("its TLSA records at _25._tcp.{base_domain} are all unusable")
        }
        DaneRequirement::SkipHost { reason, .. } => reason.clone(),
        DaneRequirement::Authenticate { .. } => "DANE applies".into(),
    }
}

/// Who makes TLS mandatory for this host regardless of the level (B3, D5, D6, E5).
fn tls_mandated_by(f: &HostFacts<'_>) -> Option<String> {
    match f.dane {
        DaneRequirement::Authenticate { base_domain, .. }
        | DaneRequirement::TlsRequired { base_domain, .. } => {
            return Some(format!(
                "its DNSSEC-signed TLSA records (_25._tcp.{base_domain}) make TLS mandatory"
            ))
        }
        DaneRequirement::None { .. } | DaneRequirement::SkipHost { .. } => {}
    }
    if f.mta_sts.pkix_required {
        return Some(format!(
            "the MTA-STS policy (enforce) of {} requires TLS with a valid certificate",
            f.domain
        ));
    }
    None
}

/// What authenticated the server of an established session, and how strongly.
struct Auth {
    verdict: TransportVerdict,
    mechanism: Mechanism,
    basis: String,
}

/// The decision for one host after STARTTLS (or its absence).
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let f = &inputs.facts;
    let host = f.host;
    let required = f.required;
    let skip = |verdict, reason: String| Decision {
        verdict,
        mechanism: Mechanism::None,
        basis: String::new(),
        action: Action::SkipHost {
            status: "4.7.5",
            reason,
        },
        report: None,
    };

    // 0. The rules before the connection still hold (D1, D4, D11, E5 coverage).
    let dane_auth = match plan(f) {
        Plan::DeferDomain { status, reason } => {
            return Decision {
                action: Action::DeferDomain { status, reason },
                ..skip(None, String::new())
            }
        }
        Plan::SkipHost { status, reason } => {
            return Decision {
                action: Action::SkipHost { status, reason },
                ..skip(None, String::new())
            }
        }
        Plan::Connect { dane } => dane,
    };
    let mandate = tls_mandated_by(f);

    // 1. What did the transport achieve?
    let achieved: Result<Auth, String> = match &inputs.tls {
        // B2: an offered STARTTLS is always used.
        TlsOutcome::NotAttempted if inputs.starttls_offered => {
            Err(format!("{host} offers STARTTLS but it was not used"))
        }
        // B3, D5, D6, E5: TLSA records or an enforce policy and no STARTTLS: the
        // host is not used (a stripped STARTTLS looks exactly like this).
        TlsOutcome::NotAttempted if mandate.is_some() => {
            let why = mandate.as_deref().unwrap_or_default();
            return skip(
                Some(TransportVerdict::Plaintext),
                format!("{host} offers no STARTTLS, but {why}; the host is not used"),
            );
        }
        TlsOutcome::NotAttempted => Ok(Auth {
            verdict: TransportVerdict::Plaintext,
            mechanism: Mechanism::None,
            basis: format!("{host} offers no STARTTLS"),
        }),
        // RFC 7435: `may` falls back to plaintext, unless TLS is mandatory here.
        TlsOutcome::PlaintextRetry(_) if required == Level::May && mandate.is_none() => Ok(Auth {
            verdict: TransportVerdict::Plaintext,
            mechanism: Mechanism::None,
            basis: "TLS failed; level may sends without TLS".into(),
        }),
        TlsOutcome::PlaintextRetry(e) | TlsOutcome::Failed(e) => Err(e.describe(host)),
        // C1.
        TlsOutcome::Established(e) if !acceptable_version(&e.version) => Err(format!(
            "{host} negotiated {}; TLS 1.2 or newer is required",
            e.version
        )),
        TlsOutcome::Established(e) => match authenticate(f, e, dane_auth) {
            Ok(auth) => Ok(auth),
            Err((verdict, reason)) => return skip(Some(verdict), reason),
        },
    };

    // 2. TLS failed.
    let auth = match achieved {
        Ok(auth) => auth,
        // B3, D6: a host with usable TLSA records that fails DANE is never used,
        // with a weaker check or without TLS.
        Err(why) if dane_auth => {
            return skip(
                None,
                format!("{why}; {host} has usable TLSA records and must be authenticated by DANE, so it is not used"),
            )
        }
        // D5, E5: TLS is mandatory for this host whatever the level.
        Err(why) if mandate.is_some() => {
            let mandate = mandate.as_deref().unwrap_or_default();
            return skip(None, format!("{why}; {mandate}"));
        }
        // `may` falls back to plaintext on a new connection (RFC 7435); every
        // other level must not (A2): skip the host, defer if none is left.
        Err(why) if required == Level::May => {
            return Decision {
                action: Action::RetryPlaintext { reason: why },
                ..skip(None, String::new())
            }
        }
        // B6, C6: a profile refusal already says what is missing.
        Err(why) if profile_refused(&inputs.tls) => return skip(None, why),
        Err(why) => return skip(None, format!("{why}; level {required} requires TLS")),
    };

    // E6: `testing` delivers as the level allows; a failure is only reported.
    let report = match &inputs.tls {
        TlsOutcome::Established(e) if f.mta_sts.mode == Some(Mode::Testing) && !dane_auth => {
            if !f.mta_sts.covered {
                Some(format!(
                    "MTA-STS policy (testing) of {} does not list {host}",
                    f.domain
                ))
            } else {
                e.pkix
                    .as_ref()
                    .err()
                    .map(|why| format!("MTA-STS policy (testing) of {}: {host}: {why}", f.domain))
            }
        }
        TlsOutcome::NotAttempted | TlsOutcome::PlaintextRetry(_)
            if f.mta_sts.mode == Some(Mode::Testing) =>
        {
            Some(format!(
                "MTA-STS policy (testing) of {}: no TLS with {host}",
                f.domain
            ))
        }
        _ => None,
    };

    // 3. Does it meet the level (A2-A4)?
    let action = if rank(auth.verdict) >= rank(minimum_verdict(required)) {
        Action::Send
    } else {
        Action::SkipHost {
            status: "4.7.5",
            reason: shortfall(f, &auth, &inputs.tls),
        }
    };
    Decision {
        verdict: Some(auth.verdict),
        mechanism: auth.mechanism,
        basis: auth.basis,
        action,
        report,
    }
}

/// The verdict of an established session. `Err((verdict, reason))`: the host must
/// not be used whatever the level (DANE without a match, E5 PKIX failure).
fn authenticate(
    f: &HostFacts<'_>,
    e: &Established,
    dane_auth: bool,
) -> Result<Auth, (TransportVerdict, String)> {
    let host = f.host;

    // E7, D6-D8: a host with usable TLSA records is decided by DANE alone. The
    // handshake only succeeds when a record matched; the outcome says which.
    if dane_auth {
        return match &e.dane {
            Some(o) => Ok(Auth {
                verdict: TransportVerdict::Verified,
                mechanism: match o.mechanism {
                    DaneMechanism::DaneEe => Mechanism::DaneEe,
                    DaneMechanism::DaneTa => Mechanism::DaneTa,
                },
                basis: format!(
                    "TLSA record {} at _25._tcp.{} matched ({})",
                    o.record, o.base_domain, o.mechanism
                ),
            }),
            None => Err((
                TransportVerdict::Encrypted,
                format!(
                    "{host}: no TLSA record matched the certificate chain; the host is not used"
                ),
            )),
        };
    }

    let pkix_mx = e.pkix.is_ok();

    // E5: under an enforce policy a covered host must present a certificate that
    // is PKIX-valid for its name, or it is not used.
    if let HostAction::Skip(why) = f.mta_sts.after_tls(host, pkix_mx) {
        let detail = e
            .pkix
            .as_ref()
            .err()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        return Err((
            TransportVerdict::Encrypted,
            format!("{host}: {why}{detail}; the host is not used"),
        ));
    }

    let secure_dns = f.mx_security == Security::Secure && f.address_security == Security::Secure;
    let auth = if f.mta_sts.authenticates(pkix_mx) {
        // A3 (2), E5: PKIX on an MX the enforce policy lists.
        Auth {
            verdict: TransportVerdict::Verified,
            mechanism: Mechanism::MtaSts,
            basis: format!(
                "certificate valid for {host}, which the MTA-STS policy (enforce) of {} lists",
                f.domain
            ),
        }
    } else if let Some(name) = &e.name_in_domain {
        // A3 (3): a PKIX-valid certificate name within the recipient domain: a DNS
        // forger cannot obtain one (Postfix `secure`, nexthop:dot-nexthop).
        Auth {
            verdict: TransportVerdict::Verified,
            mechanism: Mechanism::Pkix,
            basis: format!(
                "certificate valid for {name}, within the recipient domain {}",
                f.domain
            ),
        }
    } else if pkix_mx && secure_dns {
        // A3 (4): PKIX on the MX name, the MX and address answers DNSSEC-secure.
        Auth {
            verdict: TransportVerdict::Verified,
            mechanism: Mechanism::Pkix,
            basis: format!(
                "certificate valid for {host}; the MX and address answers are DNSSEC-secure"
            ),
        }
    } else if pkix_mx {
        // H: `trusted`: PKIX and the MX name, but the name came from unauthenticated DNS.
        Auth {
            verdict: TransportVerdict::Trusted,
            mechanism: Mechanism::Pkix,
            basis: format!(
                "certificate valid for {host}, but the MX name is not authenticated ({})",
                unauthenticated_mx(f)
            ),
        }
    } else {
        Auth {
            verdict: TransportVerdict::Encrypted,
            mechanism: Mechanism::None,
            basis: match &e.pkix {
                Err(why) => format!("TLS without authentication: {why}"),
                Ok(()) => "TLS without authentication".into(),
            },
        }
    };

    // D5: a secure TLSA RRset without usable records: TLS is mandatory but the
    // host is not qualified: at most `trusted`.
    if let DaneRequirement::TlsRequired { base_domain, .. } = f.dane {
        if auth.verdict == TransportVerdict::Verified {
            return Ok(Auth {
                verdict: TransportVerdict::Trusted,
                mechanism: Mechanism::Pkix,
                basis: format!(
                    "{}; but its TLSA records at _25._tcp.{base_domain} are all unusable, so it is not qualified",
                    auth.basis
                ),
            });
        }
    }
    Ok(auth)
}

/// Why the MX name of a `trusted` host is not authenticated, e.g. "no DNSSEC, no
/// MTA-STS enforce policy, no certificate name within example.com".
fn unauthenticated_mx(f: &HostFacts<'_>) -> String {
    let literal = f.host.parse::<std::net::IpAddr>().is_ok();
    let dnssec = if !literal
        && (f.mx_security == Security::Unvalidated || f.address_security == Security::Unvalidated)
    {
        // Only a resolver that cannot validate (DNSSEC unavailable through the
        // upstreams, see `crate::dns`) leaves a host name's answers unvalidated.
        "MX answer unvalidated (DNSSEC unavailable through the upstream resolvers), not \
         DNSSEC-secure"
            .to_string()
    } else if f.mx_security != Security::Secure {
        format!("MX answer {}, not DNSSEC-secure", f.mx_security)
    } else {
        format!("address answer {}, not DNSSEC-secure", f.address_security)
    };
    let sts = match f.mta_sts.mode {
        Some(Mode::Testing) => "MTA-STS policy only in testing mode".to_string(),
        Some(Mode::Enforce) => "MTA-STS policy enforce, but not satisfied".to_string(),
        _ => "no MTA-STS enforce policy".to_string(),
    };
    format!("{dnssec}; {sts}; no certificate name within {}", f.domain)
}

/// Whether the TLS profile refused the server (its key or its parameters, B6/C6).
fn profile_refused(tls: &TlsOutcome) -> bool {
    matches!(tls, TlsOutcome::Failed(f) | TlsOutcome::PlaintextRetry(f) if f.is_profile_failure())
}

/// A plain-language reason why the achieved verdict is not enough.
fn shortfall(f: &HostFacts<'_>, got: &Auth, tls: &TlsOutcome) -> String {
    let host = f.host;
    let required = f.required;
    match (got.verdict, tls) {
        (TransportVerdict::Plaintext, _) => {
            format!("{host} offers no STARTTLS; level {required} requires TLS")
        }
        (TransportVerdict::Trusted, _) if matches!(f.dane, DaneRequirement::TlsRequired { .. }) => {
            format!("{host}: {} — level {required} requires an authenticated MX", got.basis)
        }
        (TransportVerdict::Trusted, _) => format!(
            "{host}: certificate is valid for {host} (trusted), but the MX name is not authenticated ({}) — level {required} requires it",
            unauthenticated_mx(f)
        ),
        (_, TlsOutcome::Established(Established { pkix: Err(e), .. })) => {
            format!("{host}: {e}; level {required} requires an authenticated server")
        }
        _ => format!(
            "{host}: transport {} does not meet level {required}",
            got.verdict.as_str()
        ),
    }
}

#[cfg(test)]
mod tests;
