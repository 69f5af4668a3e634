//! `qrelay check` (standards.md I): the JSON shape and the verdict per class from
//! recorded sessions. The sessions themselves are tested against in-test SMTP
//! servers in `deliver::client::tests` (`i_check_*`).

use std::net::IpAddr;

use super::*;
use crate::dane::DaneRequirement;
use crate::deliver::client::{HostPrep, Observed, RouteHost};
use crate::mtasts;
use crate::policy::{Established, HostFacts};
use crate::spool::record::AuthFacts;

fn host(name: &str, ip: &str, security: Security) -> RouteHost {
    RouteHost {
        mx: name.into(),
        addrs: vec![ip.parse::<IpAddr>().unwrap()],
        address_security: security,
        secure_cname: None,
    }
}

/// A host probe as `probe_route` records it: the session's TLS outcome judged at
/// level `may`.
fn probe(h: RouteHost, mx_security: Security, outcome: Option<TlsOutcome>) -> HostProbe {
    let prep = HostPrep {
        dane: DaneRequirement::None {
            reason: "no TLSA".into(),
        },
        mta_sts: mtasts::check_mx(None, &h.mx),
        auth: AuthFacts::default(),
    };
    let facts: HostFacts<'_> = prep.facts("example.test", &h, mx_security, Level::May, false);
    let plan = policy::plan(&facts);
    let ip = h.addrs[0];
    let address = match outcome {
        None => AddressProbe {
            ip,
            seen: Observed::default(),
            ended: Some(format!("cannot connect to {}[{ip}]:25", h.mx)),
        },
        Some(tls) => {
            let starttls_offered = !matches!(tls, TlsOutcome::NotAttempted);
            let decision = policy::decide(&Inputs {
                facts: facts.clone(),
                starttls_offered,
                tls: tls.clone(),
            });
            let ended = match &decision.action {
                Action::Send => None,
                Action::SkipHost { reason, .. }
                | Action::DeferDomain { reason, .. }
                | Action::RetryPlaintext { reason } => Some(reason.clone()),
            };
            AddressProbe {
                ip,
                seen: Observed {
                    connected: true,
                    greeting: Some("220 ready".into()),
                    starttls_offered,
                    outcome: Some(tls),
                    decision: Some(decision),
                    ..Observed::default()
                },
                ended,
            }
        }
    };
    HostProbe {
        host: h,
        prep,
        plan,
        addresses: vec![address],
    }
}

fn pkix_ok() -> TlsOutcome {
    TlsOutcome::Established(Established::pkix("TLSv1.3", Ok(())))
}

fn untrusted() -> TlsOutcome {
    TlsOutcome::Established(Established::pkix("TLSv1.3", Err(TlsFailure::NotTrusted)))
}

#[test]
fn i_verdict_per_class_follows_the_level() {
    // DNSSEC-secure MX with a PKIX-valid certificate: verified, every class delivers.
    let secure = [probe(
        host("mx.example.test", "192.0.2.1", Security::Secure),
        Security::Secure,
        Some(pkix_ok()),
    )];
    for level in [
        Level::May,
        Level::Encrypted,
        Level::Trusted,
        Level::Verified,
    ] {
        let j = judge("example.test", Security::Secure, &secure, level, false);
        assert!(j.deliver, "{level}: {j:?}");
        assert_eq!(j.verdict.as_deref(), Some("verified"));
        assert_eq!(j.via.as_deref(), Some("mx.example.test[192.0.2.1]"));
    }

    // The same certificate from unsigned DNS: trusted; verified defers, and says why.
    let insecure = [probe(
        host("mx.example.test", "192.0.2.1", Security::Insecure),
        Security::Insecure,
        Some(pkix_ok()),
    )];
    let j = judge(
        "example.test",
        Security::Insecure,
        &insecure,
        Level::Trusted,
        false,
    );
    assert!(
        j.deliver && j.verdict.as_deref() == Some("trusted"),
        "{j:?}"
    );
    let j = judge(
        "example.test",
        Security::Insecure,
        &insecure,
        Level::Verified,
        false,
    );
    assert!(!j.deliver);
    assert!(j.reason.starts_with("would defer: "), "{}", j.reason);
    assert!(j.reason.contains("not authenticated"), "{}", j.reason);

    // A self-signed certificate: encrypted only.
    let selfsigned = [probe(
        host("mx.example.test", "192.0.2.1", Security::Insecure),
        Security::Insecure,
        Some(untrusted()),
    )];
    let j = judge(
        "example.test",
        Security::Insecure,
        &selfsigned,
        Level::Encrypted,
        false,
    );
    assert!(
        j.deliver && j.verdict.as_deref() == Some("encrypted"),
        "{j:?}"
    );
    assert!(
        !judge(
            "example.test",
            Security::Insecure,
            &selfsigned,
            Level::Trusted,
            false
        )
        .deliver
    );

    // No STARTTLS: only `may` delivers, in plaintext.
    let plain = [probe(
        host("mx.example.test", "192.0.2.1", Security::Insecure),
        Security::Insecure,
        Some(TlsOutcome::NotAttempted),
    )];
    let j = judge(
        "example.test",
        Security::Insecure,
        &plain,
        Level::May,
        false,
    );
    assert!(
        j.deliver && j.verdict.as_deref() == Some("plaintext"),
        "{j:?}"
    );
    let j = judge(
        "example.test",
        Security::Insecure,
        &plain,
        Level::Encrypted,
        false,
    );
    assert!(
        !j.deliver && j.reason.contains("offers no STARTTLS"),
        "{j:?}"
    );
}

#[test]
fn i_failed_handshake_falls_back_only_for_may_and_dane_only_defers() {
    let failed = [probe(
        host("mx.example.test", "192.0.2.1", Security::Insecure),
        Security::Insecure,
        Some(TlsOutcome::Failed(TlsFailure::Other(
            "handshake failed".into(),
        ))),
    )];
    let j = judge(
        "example.test",
        Security::Insecure,
        &failed,
        Level::May,
        false,
    );
    assert!(j.deliver, "{j:?}");
    assert!(
        j.reason.contains("after the TLS handshake failed"),
        "{}",
        j.reason
    );
    assert!(
        !judge(
            "example.test",
            Security::Insecure,
            &failed,
            Level::Encrypted,
            false
        )
        .deliver
    );

    // D11: a dane-only destination without TLSA records is deferred at every level.
    let secure = [probe(
        host("mx.example.test", "192.0.2.1", Security::Secure),
        Security::Secure,
        Some(pkix_ok()),
    )];
    let j = judge("example.test", Security::Secure, &secure, Level::May, true);
    assert!(!j.deliver && j.reason.contains("dane-only"), "{j:?}");
}

#[test]
fn i_second_mx_carries_the_class_when_the_first_is_down() {
    let probes = [
        probe(
            host("mx1.example.test", "192.0.2.1", Security::Secure),
            Security::Secure,
            None,
        ),
        probe(
            host("mx2.example.test", "192.0.2.2", Security::Secure),
            Security::Secure,
            Some(pkix_ok()),
        ),
    ];
    let j = judge(
        "example.test",
        Security::Secure,
        &probes,
        Level::Verified,
        false,
    );
    assert_eq!(j.via.as_deref(), Some("mx2.example.test[192.0.2.2]"));
    let prefs = HashMap::from([("mx1.example.test".to_string(), 10u16)]);
    let r = mx_report(&probes[0], Security::Secure, &prefs);
    assert_eq!(r.verdict, "failed");
    assert_eq!(r.preference, Some(10));
    assert!(r.reason.contains("cannot connect"), "{}", r.reason);
    assert_eq!(r.starttls, None);
    let r = mx_report(&probes[1], Security::Secure, &prefs);
    assert_eq!(
        (r.verdict.as_str(), r.mechanism.as_str()),
        ("verified", "pkix")
    );
    assert_eq!(r.dnssec, "secure");
}

#[test]
fn i_json_has_the_documented_shape() {
    let classes = vec![ClassSpec {
        name: "normal".into(),
        level: Level::Encrypted,
        profile: Profile::Modern,
    }];
    let probes = [probe(
        host("mx.example.test", "192.0.2.1", Security::Secure),
        Security::Secure,
        Some(pkix_ok()),
    )];
    let mut report = empty_report("example.test", Security::Secure, &classes);
    report.mx = vec![mx_report(&probes[0], Security::Secure, &HashMap::new())];
    report.qualified = true;
    report.encrypted = true;
    let v: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "domain",
        "dnssec",
        "null_mx",
        "mx",
        "qualified",
        "encrypted",
        "mta_sts",
        "tls_rpt",
        "classes",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["domain"], "example.test");
    assert_eq!(v["qualified"], true);
    let mx = &v["mx"][0];
    for key in [
        "host",
        "ips",
        "preference",
        "dnssec",
        "mechanism",
        "tls_version",
        "cipher",
        "verdict",
        "reason",
    ] {
        assert!(mx.get(key).is_some(), "missing mx.{key}: {mx}");
    }
    assert_eq!(mx["ips"][0], "192.0.2.1");
    assert_eq!(mx["verdict"], "verified");
    assert_eq!(mx["mechanism"], "pkix");
    // And back: the report is one self-contained JSON object.
    let back: CheckReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, report);
}

#[test]
fn i_classes_come_from_the_configuration() {
    let mut config = Config::default();
    config.class.insert(
        RiskClass::High,
        crate::config::ClassConfig {
            level: Level::Verified,
            tls_profile: Some(Profile::Bsi),
            grace: None,
            action: crate::config::LevelAction::Bounce,
        },
    );
    let all = classes(&config, None).unwrap();
    assert!(all.iter().any(|c| c.name == "normal"));
    let high = classes(&config, Some("high")).unwrap();
    assert_eq!(
        high,
        vec![ClassSpec {
            name: "high".into(),
            level: Level::Verified,
            profile: Profile::Bsi
        }]
    );
    assert_eq!(primary(&high), Profile::Bsi);
    assert!(matches!(
        classes(&config, Some("nope")),
        Err(CheckError::UnknownClass { .. })
    ));
}
