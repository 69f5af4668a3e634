//! `qrelay check DOMAIN`: what qrelay would do with mail for a recipient domain,
//! and why (standards.md I).
//!
//! The lookups are the delivery's: [`Deliverer::resolve_route`] (MX with DNSSEC
//! status, addresses), the MTA-STS policy through the [`crate::mtasts::MtaSts`]
//! service, and per host [`Deliverer::probe_route`], which prepares every host like
//! a delivery (TLSA lookup, MTA-STS check, [`policy::plan`]) and runs the
//! delivery's own session with every address (connect, EHLO, STARTTLS with the
//! class's TLS profile, [`policy::decide`], EHLO again) and then QUIT instead of
//! MAIL FROM. No mail is sent.
//!
//! The sessions are judged at level `may`, which records what each transport
//! achieved (`verified`, `trusted`, `encrypted`, `plaintext`, or `failed` when
//! the host must not be used); the verdict per risk class then replays the
//! delivery's host order with [`policy::plan`] and [`policy::decide`] at the
//! class's level on the recorded outcomes ([`judge`]): the same decision, no
//! second implementation of it.
//!
//! On top of what delivery needs, the check looks up the `_mta-sts` record and
//! the TLS-RPT record (`_smtp._tls.<domain>`, RFC 8460) for the report.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Level, RiskClass};
use crate::deliver::client::{AddressProbe, Deliverer, HostProbe, Route, TlsaSource};
use crate::dns::{DnssecHealth, MxResult, Resolver, Security};
use crate::mtasts::record::{discover, Discovery};
use crate::mtasts::{PolicyLookup, RptResultType};
use crate::policy::{self, Action, Inputs, Plan, TlsOutcome};
use crate::spool::record::TlsaFacts;
use crate::tls::client::TlsFailure;
use crate::tls::profile::Profile;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no risk class {name:?} in the configuration (configured: {known})")]
    UnknownClass { name: String, known: String },
    #[error("the configuration has no risk class ([class.NAME])")]
    NoClasses,
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
}

/// A risk class to judge: its name, level and TLS profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    pub name: String,
    pub level: Level,
    pub profile: Profile,
}

/// The classes to judge: `only`, or every configured class.
pub fn classes(config: &Config, only: Option<&str>) -> Result<Vec<ClassSpec>, CheckError> {
    let spec = |class: RiskClass| ClassSpec {
        name: class.as_str().to_string(),
        level: config.class_level(class),
        profile: config.class_tls_profile(class),
    };
    match only {
        Some(name) => match RiskClass::parse(name) {
            Some(class) => Ok(vec![spec(class)]),
            None => Err(CheckError::UnknownClass {
                name: name.to_string(),
                known: RiskClass::ALL.map(|c| c.as_str()).join(", "),
            }),
        },
        None if config.class.is_empty() => Err(CheckError::NoClasses),
        None => Ok(RiskClass::ALL.into_iter().map(spec).collect()),
    }
}

/// The whole result, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub domain: String,
    /// DNSSEC status of the MX answer (of the address answer for an implicit MX).
    pub dnssec: String,
    /// The probe at the start of the check: the root DNSKEY validated through the
    /// upstream resolvers. When not, every answer is unvalidated (see `crate::dns`).
    #[serde(default)]
    pub dnssec_available: bool,
    /// Why DNSSEC is unavailable, when the probe failed.
    #[serde(default)]
    pub dnssec_problem: Option<String>,
    /// RFC 7505: the domain accepts no mail.
    pub null_mx: bool,
    /// Why no host could be determined (DNS), when so.
    pub error: Option<String>,
    /// The domain could not be checked at all (DNS unreachable, no such domain).
    pub unchecked: bool,
    /// The TLS profile of the sessions in `mx`.
    pub profile: String,
    pub mx: Vec<MxReport>,
    pub mta_sts: Option<MtaStsReport>,
    pub tls_rpt: Option<TlsRptReport>,
    /// The verdict per risk class.
    pub classes: Vec<ClassVerdict>,
    /// A delivery at level `verified` would succeed now.
    pub qualified: bool,
    /// A delivery at level `encrypted` would succeed now.
    pub encrypted: bool,
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxReport {
    pub host: String,
    pub preference: Option<u16>,
    pub ips: Vec<String>,
    /// DNSSEC of the host: the weaker of the MX and the address answer.
    pub dnssec: String,
    pub address_dnssec: String,
    /// `dane-ee`, `dane-ta`, `mta-sts`, `pkix`, `none`.
    pub mechanism: String,
    /// `verified`, `trusted`, `encrypted`, `plaintext`, `failed`.
    pub verdict: String,
    /// What authenticated the host, or why it cannot be used.
    pub reason: String,
    /// The address the fields below come from (the first that worked, else the last).
    pub ip: Option<String>,
    pub starttls: Option<bool>,
    pub requiretls: bool,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub group: Option<String>,
    pub certificate: Option<CertReport>,
    pub tlsa: Option<TlsaReport>,
    pub mta_sts_mode: Option<String>,
    pub mta_sts_covered: Option<bool>,
    /// How the TLS profile judged the server.
    pub profile_verdict: String,
    pub addresses: Vec<AddressReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressReport {
    pub ip: String,
    pub verdict: String,
    pub reason: String,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertReport {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    /// RFC 3339, UTC.
    pub not_after: Option<String>,
    pub expired: bool,
    pub key_type: Option<String>,
    pub key_bits: Option<u32>,
    pub sha256: Option<String>,
    /// The chain passed PKIX for the MX name.
    pub pkix_valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsaReport {
    pub base_domain: String,
    pub dnssec: String,
    pub records: Vec<String>,
    /// The record that matched the server's chain.
    pub matched: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtaStsReport {
    /// The `_mta-sts` TXT record's id, or why there is none.
    pub record: String,
    /// `found`, `none`, `unavailable`.
    pub status: String,
    pub mode: Option<String>,
    pub max_age: Option<u32>,
    pub mx: Vec<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRptReport {
    /// The `v=TLSRPTv1` record, if any.
    pub record: Option<String>,
    pub rua: Vec<String>,
    pub error: Option<String>,
}

/// What a message of one class would get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassVerdict {
    pub class: String,
    pub level: String,
    pub profile: String,
    pub deliver: bool,
    /// `host[ip]` that would take the message.
    pub via: Option<String>,
    pub verdict: Option<String>,
    /// "would deliver ..." or "would defer: ...".
    pub reason: String,
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub deliver: bool,
    pub via: Option<String>,
    pub verdict: Option<String>,
    pub reason: String,
}

/// Would a message of `level` be delivered, given the probes? Delivery's host
/// order and rules: [`policy::plan`] per host, [`policy::decide`] per address on
/// the recorded session, the `may` plaintext retry after a failed handshake.
pub fn judge(
    domain: &str,
    mx_security: Security,
    probes: &[HostProbe],
    level: Level,
    dane_only: bool,
) -> Judgement {
    let defer = |reason: String| Judgement {
        deliver: false,
        via: None,
        verdict: None,
        reason: format!("would defer: {reason}"),
    };
    let mut last: Option<String> = None;
    for hp in probes {
        let facts = hp
            .prep
            .facts(domain, &hp.host, mx_security, level, dane_only);
        match policy::plan(&facts) {
            Plan::DeferDomain { reason, .. } => return defer(reason),
            Plan::SkipHost { reason, .. } => {
                last = Some(reason);
                continue;
            }
            Plan::Connect { .. } => {}
        }
        for a in &hp.addresses {
            let via = format!("{}[{}]", hp.host.mx, a.ip);
            let Some(outcome) = &a.seen.outcome else {
                last = a.ended.clone();
                continue;
            };
            let inputs = Inputs {
                facts: facts.clone(),
                starttls_offered: a.seen.starttls_offered,
                tls: outcome.clone(),
            };
            let mut decision = policy::decide(&inputs);
            let mut after_fallback = false;
            if let Action::RetryPlaintext { reason } = &decision.action {
                let failure = match outcome {
                    TlsOutcome::Failed(f) => f.clone(),
                    _ => TlsFailure::Other(reason.clone()),
                };
                decision = policy::decide(&Inputs {
                    tls: TlsOutcome::PlaintextRetry(failure),
                    ..inputs
                });
                after_fallback = true;
            }
            match decision.action {
                // The session failed after the decision (EHLO over TLS).
                Action::Send if probe_ready(a).is_err() && !after_fallback => {
                    last = a.ended.clone();
                }
                Action::Send => {
                    let verdict = decision.verdict.map(|v| v.as_str().to_string());
                    let how = verdict.as_deref().unwrap_or("plaintext");
                    let extra = if after_fallback {
                        " after the TLS handshake failed (level may)"
                    } else {
                        ""
                    };
                    return Judgement {
                        deliver: true,
                        reason: format!("would deliver via {via} ({how}){extra}"),
                        via: Some(via),
                        verdict,
                    };
                }
                Action::DeferDomain { reason, .. } => return defer(reason),
                Action::SkipHost { reason, .. } | Action::RetryPlaintext { reason } => {
                    last = Some(reason)
                }
            }
        }
    }
    defer(last.unwrap_or_else(|| format!("no host to deliver to for {domain}")))
}

/// Whether the probe's session was ready for mail (`Err`: why not).
fn probe_ready(a: &AddressProbe) -> Result<(), &str> {
    match &a.ended {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// The per-address verdict: what the session achieved at level `may`, or `failed`.
fn address_verdict(a: &AddressProbe) -> (String, String, String) {
    let failed = |why: String| ("failed".to_string(), "none".to_string(), why);
    match (&a.seen.decision, &a.ended) {
        (Some(d), None) if d.action == Action::Send => (
            d.verdict
                .map(|v| v.as_str())
                .unwrap_or("plaintext")
                .to_string(),
            d.mechanism.as_str().to_string(),
            d.basis.clone(),
        ),
        (_, Some(why)) => failed(why.clone()),
        (_, None) => failed("no decision".into()),
    }
}

/// The domain's check: DNS, MTA-STS, TLS-RPT, then the sessions.
pub async fn check_domain(
    deliverer: &Deliverer,
    domain: &str,
    classes: &[ClassSpec],
) -> Result<CheckReport, CheckError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || domain.contains(char::is_whitespace) || domain.contains('@') {
        return Err(CheckError::BadDomain(domain));
    }
    let resolver = deliverer.resolver();
    // Standalone, so probe once here: while DNSSEC is unavailable through the
    // upstreams the lookups below are unvalidated, exactly as in the daemon.
    let health = resolver.probe_dnssec().await;
    resolver.dnssec_status().set(health.clone());
    let dnssec_available = health.is_available();
    let dnssec_problem = match &health {
        DnssecHealth::Unavailable { reason, .. } => Some(format!(
            "unavailable through upstream resolvers {}: {reason} (answers unvalidated)",
            resolver.upstreams()
        )),
        _ => None,
    };
    let mx = resolver.resolve_mx(&domain).await;
    let mut report = empty_report(&domain, mx.security(), classes);
    report.dnssec_available = dnssec_available;
    report.dnssec_problem = dnssec_problem.clone();
    match &mx {
        MxResult::NullMx { .. } => {
            report.null_mx = true;
            let reason = mx.failure(&domain).map(|f| f.2).unwrap_or_default();
            report.error = Some(reason.clone());
            fail_classes(&mut report, classes, &reason, true);
            return Ok(report);
        }
        MxResult::NoSuchDomain { .. } | MxResult::TempFail { .. } => {
            let (permanent, _, reason) = mx.failure(&domain).unwrap_or_default();
            report.unchecked = true;
            report.error = Some(reason.clone());
            fail_classes(&mut report, classes, &reason, permanent);
            return Ok(report);
        }
        _ => {}
    }
    let preferences: HashMap<String, u16> = match &mx {
        MxResult::Hosts { hosts, .. } => hosts
            .iter()
            .map(|h| (h.name.clone(), h.preference))
            .collect(),
        _ => HashMap::new(),
    };
    let sts = match deliverer.mta_sts() {
        Some(service) => service.policy_for(&domain).await,
        None => PolicyLookup::None,
    };
    let record = discover(resolver, &domain).await;
    let tls_rpt = tls_rpt(resolver, &domain).await;
    let mut report = match deliverer.resolve_route(&domain).await {
        Ok(route) => {
            check_route(
                deliverer,
                &domain,
                &route,
                &preferences,
                &sts,
                TlsaSource::Dns(resolver),
                classes,
            )
            .await
        }
        Err((permanent, _, reason)) => {
            report.error = Some(reason.clone());
            fail_classes(&mut report, classes, &reason, permanent);
            report
        }
    };
    report.mta_sts = Some(mta_sts_report(&record, &sts));
    report.tls_rpt = Some(tls_rpt);
    report.dnssec_available = dnssec_available;
    report.dnssec_problem = dnssec_problem;
    Ok(report)
}

fn empty_report(domain: &str, dnssec: Security, classes: &[ClassSpec]) -> CheckReport {
    CheckReport {
        domain: domain.to_string(),
        dnssec: dnssec.as_str().to_string(),
        dnssec_available: false,
        dnssec_problem: None,
        null_mx: false,
        error: None,
        unchecked: false,
        profile: primary(classes).as_str().to_string(),
        mx: Vec::new(),
        mta_sts: None,
        tls_rpt: None,
        classes: Vec::new(),
        qualified: false,
        encrypted: false,
    }
}

/// Every class gets the same result: nothing to connect to. `permanent`: a
/// delivery would fail for good (null MX, no such domain), else it is deferred.
fn fail_classes(report: &mut CheckReport, classes: &[ClassSpec], reason: &str, permanent: bool) {
    let word = if permanent { "fail" } else { "defer" };
    report.classes = classes
        .iter()
        .map(|c| ClassVerdict {
            class: c.name.clone(),
            level: c.level.as_str().to_string(),
            profile: c.profile.as_str().to_string(),
            deliver: false,
            via: None,
            verdict: None,
            reason: format!("would {word}: {reason}"),
        })
        .collect();
}

/// The profile of the sessions shown per MX: the first class's (the only one with
/// `--class`), `normal`'s when it is among them.
fn primary(classes: &[ClassSpec]) -> Profile {
    classes
        .iter()
        .find(|c| c.name == "normal")
        .or(classes.first())
        .map_or(Profile::Modern, |c| c.profile)
}

/// The check below the DNS step (the seam tests use, like
/// [`Deliverer::deliver_route`]): sessions with every address, once per TLS
/// profile the classes use, and the report.
pub async fn check_route(
    deliverer: &Deliverer,
    domain: &str,
    route: &Route,
    preferences: &HashMap<String, u16>,
    sts: &PolicyLookup,
    tlsa: TlsaSource<'_>,
    classes: &[ClassSpec],
) -> CheckReport {
    let dane_only = deliverer.config().dane_only(domain);
    let main_profile = primary(classes);
    let profiles: BTreeSet<Profile> = classes
        .iter()
        .map(|c| c.profile)
        .chain([main_profile])
        .collect();
    let mut probes: HashMap<Profile, Vec<HostProbe>> = HashMap::new();
    for profile in profiles {
        let p = deliverer
            .probe_route(domain, route, sts, tlsa, profile)
            .await;
        probes.insert(profile, p);
    }
    let main = probes.get(&main_profile).cloned().unwrap_or_default();
    let mut report = empty_report(domain, route.mx_security, classes);
    report.mx = main
        .iter()
        .map(|hp| mx_report(hp, route.mx_security, preferences))
        .collect();
    report.classes = classes
        .iter()
        .map(|c| {
            let p = probes.get(&c.profile).map(Vec::as_slice).unwrap_or(&[]);
            let j = judge(domain, route.mx_security, p, c.level, dane_only);
            ClassVerdict {
                class: c.name.clone(),
                level: c.level.as_str().to_string(),
                profile: c.profile.as_str().to_string(),
                deliver: j.deliver,
                via: j.via,
                verdict: j.verdict,
                reason: j.reason,
            }
        })
        .collect();
    report.qualified = judge(domain, route.mx_security, &main, Level::Verified, dane_only).deliver;
    report.encrypted = judge(
        domain,
        route.mx_security,
        &main,
        Level::Encrypted,
        dane_only,
    )
    .deliver;
    report
}

fn mx_report(
    hp: &HostProbe,
    mx_security: Security,
    preferences: &HashMap<String, u16>,
) -> MxReport {
    let host = &hp.host;
    let chosen = hp
        .addresses
        .iter()
        .find(|a| address_verdict(a).0 != "failed")
        .or(hp.addresses.last());
    let (verdict, mechanism, reason) = match (&hp.plan, chosen) {
        (Plan::DeferDomain { reason, .. } | Plan::SkipHost { reason, .. }, _) => {
            ("failed".to_string(), "none".to_string(), reason.clone())
        }
        (_, Some(a)) => address_verdict(a),
        (_, None) => (
            "failed".to_string(),
            "none".to_string(),
            "no address".to_string(),
        ),
    };
    let seen = chosen.map(|a| &a.seen);
    let tls = seen.and_then(|s| s.tls.as_ref());
    let dane_match = seen.and_then(|s| match &s.outcome {
        Some(TlsOutcome::Established(e)) => e.dane.as_ref().map(|o| o.record.to_string()),
        _ => None,
    });
    let profile_verdict = match seen.and_then(|s| s.outcome.as_ref()) {
        Some(TlsOutcome::Established(_)) => format!(
            "accepted ({})",
            tls.map(|t| t.profile.as_str()).unwrap_or_default()
        ),
        Some(TlsOutcome::Failed(f)) if f.is_profile_failure() => format!("refused: {f}"),
        Some(TlsOutcome::Failed(f)) => format!("handshake failed: {f}"),
        Some(_) => "no TLS".to_string(),
        None => "not reached".to_string(),
    };
    MxReport {
        host: host.mx.clone(),
        preference: preferences.get(&host.mx).copied(),
        ips: host.addrs.iter().map(|ip| ip.to_string()).collect(),
        dnssec: mx_security
            .weakest(host.address_security)
            .as_str()
            .to_string(),
        address_dnssec: host.address_security.as_str().to_string(),
        mechanism,
        verdict,
        reason,
        ip: chosen.map(|a| a.ip.to_string()),
        starttls: seen
            .filter(|s| s.greeting.is_some())
            .map(|s| s.starttls_offered),
        requiretls: seen.is_some_and(|s| s.requiretls),
        tls_version: tls.map(|t| t.version.clone()),
        cipher: tls.map(|t| t.cipher.clone()),
        group: tls.and_then(|t| t.group.clone()),
        certificate: seen.and_then(|s| {
            let leaf = s.chain.first()?;
            Some(cert_report(leaf, tls))
        }),
        tlsa: hp.prep.auth.tlsa.as_ref().map(|t: &TlsaFacts| TlsaReport {
            base_domain: t.base_domain.clone(),
            dnssec: t.dnssec.clone(),
            records: t.records.clone(),
            matched: dane_match.clone(),
        }),
        mta_sts_mode: hp.prep.mta_sts.mode.map(|m| m.as_str().to_string()),
        mta_sts_covered: hp.prep.mta_sts.mode.map(|_| hp.prep.mta_sts.covered),
        profile_verdict,
        addresses: hp
            .addresses
            .iter()
            .map(|a| {
                let (verdict, _, reason) = address_verdict(a);
                AddressReport {
                    ip: a.ip.to_string(),
                    verdict,
                    reason,
                    tls_version: a.seen.tls.as_ref().map(|t| t.version.clone()),
                    cipher: a.seen.tls.as_ref().map(|t| t.cipher.clone()),
                }
            })
            .collect(),
    }
}

fn cert_report(
    leaf: &rustls::pki_types::CertificateDer<'_>,
    tls: Option<&crate::spool::record::TlsFacts>,
) -> CertReport {
    use x509_parser::extensions::GeneralName;
    let mut report = CertReport {
        subject: String::new(),
        issuer: String::new(),
        names: Vec::new(),
        not_after: None,
        expired: false,
        key_type: tls.and_then(|t| t.peer_key_type.clone()),
        key_bits: tls.and_then(|t| t.peer_key_bits),
        sha256: tls.and_then(|t| t.peer_cert_sha256.clone()),
        pkix_valid: tls.is_some_and(|t| t.pkix_verified),
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        report.subject = "(unparsable certificate)".into();
        return report;
    };
    report.subject = cert.subject().to_string();
    report.issuer = cert.issuer().to_string();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        report.names = san
            .value
            .general_names
            .iter()
            .filter_map(|gn| match gn {
                GeneralName::DNSName(n) => Some((*n).to_string()),
                GeneralName::IPAddress(ip) => Some(format!("IP:{}", hex::encode(ip))),
                _ => None,
            })
            .collect();
    }
    let not_after = cert.validity().not_after.timestamp();
    if let Ok(secs) = u64::try_from(not_after) {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        report.not_after = Some(humantime::format_rfc3339_seconds(t).to_string());
        report.expired = t < std::time::SystemTime::now();
    } else {
        report.expired = true;
    }
    report
}

fn mta_sts_report(record: &Discovery, sts: &PolicyLookup) -> MtaStsReport {
    let record = match record {
        Discovery::Record(r) => format!("v=STSv1; id={}", r.id),
        Discovery::NoRecord(why) => format!("none ({why})"),
        Discovery::TempFail(why) => format!("lookup failed ({why})"),
    };
    match sts {
        PolicyLookup::Found { policy, .. } => MtaStsReport {
            record,
            status: "found".into(),
            mode: Some(policy.mode.as_str().to_string()),
            max_age: Some(policy.max_age),
            mx: policy.mx.clone(),
            reason: None,
        },
        PolicyLookup::None => MtaStsReport {
            record,
            status: "none".into(),
            mode: None,
            max_age: None,
            mx: Vec::new(),
            reason: None,
        },
        PolicyLookup::TempFail {
            reason,
            rpt_result_type,
        } => MtaStsReport {
            record,
            status: "unavailable".into(),
            mode: None,
            max_age: None,
            mx: Vec::new(),
            reason: Some(format!("{reason} ({})", rpt_type(*rpt_result_type))),
        },
    }
}

fn rpt_type(t: RptResultType) -> &'static str {
    t.as_str()
}

/// The TLS-RPT record at `_smtp._tls.<domain>` (RFC 8460 3): `v=TLSRPTv1; rua=...`.
async fn tls_rpt(resolver: &Resolver, domain: &str) -> TlsRptReport {
    let mut report = TlsRptReport {
        record: None,
        rua: Vec::new(),
        error: None,
    };
    let txts = match resolver
        .txt_unvalidated(&format!("_smtp._tls.{domain}"))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.record = txts.iter().find(|t| t.starts_with("v=TLSRPTv1")).cloned();
    // The same reading as the reports themselves (`crate::tlsrpt`).
    match crate::tlsrpt::record::select_record(&txts) {
        crate::tlsrpt::record::Discovery::Record(r) => {
            report.rua = r.rua.iter().map(ToString::to_string).collect();
        }
        crate::tlsrpt::record::Discovery::NoRecord(why) if report.record.is_some() => {
            report.error = Some(why);
        }
        _ => {}
    }
    report
}

/// Replace control characters so text from DNS and servers cannot drive the terminal.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The report for a person: the domain facts, a block per MX, the class verdicts.
pub fn format_report(r: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Domain:    {}", safe(&r.domain));
    if let Some(p) = &r.dnssec_problem {
        let _ = writeln!(out, "DNSSEC:    {}", safe(p));
    }
    let _ = writeln!(out, "DNSSEC:    {} (MX answer)", r.dnssec);
    if r.null_mx {
        let _ = writeln!(out, "Null MX:   yes: the domain accepts no mail (RFC 7505)");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(out, "Problem:   {}", safe(e));
    }
    if let Some(m) = &r.mta_sts {
        let _ = writeln!(out, "MTA-STS:   record {}", safe(&m.record));
        match (&m.mode, m.max_age) {
            (Some(mode), Some(age)) => {
                let _ = writeln!(
                    out,
                    "           policy mode {mode}, max_age {age}, mx {}",
                    safe(&m.mx.join(", "))
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "           policy {}{}",
                    m.status,
                    m.reason
                        .as_deref()
                        .map(|x| format!(": {}", safe(x)))
                        .unwrap_or_default()
                );
            }
        }
    }
    if let Some(t) = &r.tls_rpt {
        let text = match (&t.record, &t.error) {
            (Some(rec), _) => safe(rec),
            (None, Some(e)) => safe(e),
            (None, None) => "none".into(),
        };
        let _ = writeln!(out, "TLS-RPT:   {text}");
    }
    for m in &r.mx {
        let _ = writeln!(out);
        let pref = m.preference.map(|p| p.to_string()).unwrap_or("-".into());
        let _ = writeln!(out, "MX {} (preference {pref})", safe(&m.host));
        let row = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "  {k:<15}{v}");
        };
        row(&mut out, "addresses", m.ips.join(", "));
        row(
            &mut out,
            "DNSSEC",
            format!(
                "{} (MX {}, address {})",
                m.dnssec, r.dnssec, m.address_dnssec
            ),
        );
        row(
            &mut out,
            "STARTTLS",
            match m.starttls {
                Some(true) => "offered".into(),
                Some(false) => "not offered".into(),
                None => "not reached".into(),
            },
        );
        if let Some(v) = &m.tls_version {
            row(
                &mut out,
                "TLS",
                format!(
                    "{v}, {}, {}",
                    m.cipher.as_deref().unwrap_or("?"),
                    m.group.as_deref().unwrap_or("?")
                ),
            );
        }
        if let Some(c) = &m.certificate {
            row(&mut out, "certificate", safe(&c.subject));
            row(&mut out, "  names", safe(&c.names.join(", ")));
            row(&mut out, "  issuer", safe(&c.issuer));
            row(
                &mut out,
                "  expires",
                format!(
                    "{}{}",
                    c.not_after.as_deref().unwrap_or("?"),
                    if c.expired { " (EXPIRED)" } else { "" }
                ),
            );
            row(
                &mut out,
                "  key",
                format!(
                    "{} {} bit",
                    c.key_type.as_deref().unwrap_or("?"),
                    c.key_bits.map(|b| b.to_string()).unwrap_or("?".into())
                ),
            );
            row(
                &mut out,
                "  PKIX",
                if c.pkix_valid {
                    format!("valid for {}", safe(&m.host))
                } else {
                    "not valid for the MX name".into()
                },
            );
        }
        match &m.tlsa {
            Some(t) => {
                row(
                    &mut out,
                    "TLSA",
                    format!("_25._tcp.{} ({})", safe(&t.base_domain), safe(&t.dnssec)),
                );
                for rec in &t.records {
                    let mark = if t.matched.as_ref() == Some(rec) {
                        " (matched)"
                    } else {
                        ""
                    };
                    row(&mut out, "", format!("{}{mark}", safe(rec)));
                }
            }
            None => row(&mut out, "TLSA", "not looked up (DNS not secure)".into()),
        }
        row(
            &mut out,
            "MTA-STS",
            match (&m.mta_sts_mode, m.mta_sts_covered) {
                (Some(mode), Some(true)) => format!("{mode}, host listed"),
                (Some(mode), _) => format!("{mode}, host NOT listed"),
                _ => "no policy".into(),
            },
        );
        row(
            &mut out,
            "REQUIRETLS",
            if m.requiretls { "advertised" } else { "no" }.into(),
        );
        row(
            &mut out,
            "profile",
            format!("{}: {}", r.profile, safe(&m.profile_verdict)),
        );
        row(
            &mut out,
            "verdict",
            format!("{} (mechanism {})", m.verdict.to_uppercase(), m.mechanism),
        );
        row(&mut out, "reason", safe(&m.reason));
        if m.addresses.len() > 1 {
            for a in &m.addresses {
                row(
                    &mut out,
                    "  address",
                    format!("{} {}: {}", a.ip, a.verdict, safe(&a.reason)),
                );
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Verdict per risk class:");
    for c in &r.classes {
        let _ = writeln!(
            out,
            "  {:<10} level {:<9} profile {:<7} {}",
            c.class,
            c.level,
            c.profile,
            safe(&c.reason)
        );
    }
    let _ = writeln!(
        out,
        "Qualified (level verified): {}; encrypted: {}",
        if r.qualified { "yes" } else { "no" },
        if r.encrypted { "yes" } else { "no" }
    );
    out
}

#[cfg(test)]
mod tests;
