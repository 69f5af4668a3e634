//! One test (or more) per rule of standards.md, named with the rule id.

use super::*;
use crate::dane::{tlsa_candidates, tlsa_step, Tlsa, TlsaAnswer, TlsaSet};
use crate::mtasts::{check_mx, Policy};

const HOST: &str = "mx1.example.test";
const DOMAIN: &str = "example.test";

fn established(pkix: Result<(), TlsFailure>) -> TlsOutcome {
    TlsOutcome::Established(Established::pkix("TLSv1.3", pkix))
}

fn no_dane() -> DaneRequirement {
    DaneRequirement::None {
        reason: "the MX answer is unvalidated, DANE needs it DNSSEC-secure".into(),
    }
}

fn facts<'a>(required: Level, dane: &'a DaneRequirement) -> HostFacts<'a> {
    HostFacts {
        domain: DOMAIN,
        host: HOST,
        required,
        dane_only: false,
        mx_security: Security::Unvalidated,
        address_security: Security::Unvalidated,
        dane,
        mta_sts: check_mx(None, HOST),
    }
}

fn run(required: Level, offered: bool, tls: TlsOutcome) -> Decision {
    let dane = no_dane();
    decide(&Inputs {
        facts: facts(required, &dane),
        starttls_offered: offered,
        tls,
    })
}

fn run_with(f: HostFacts<'_>, offered: bool, tls: TlsOutcome) -> Decision {
    decide(&Inputs {
        facts: f,
        starttls_offered: offered,
        tls,
    })
}

fn skip_reason(d: &Decision) -> &str {
    match &d.action {
        Action::SkipHost { status, reason } => {
            assert_eq!(*status, "4.7.5", "{d:?}");
            reason
        }
        other => panic!("expected SkipHost, got {other:?}"),
    }
}

fn usable_set() -> TlsaSet {
    [format!("3 1 1 {}", hex::encode([7u8; 32]))]
        .iter()
        .map(|r| r.parse::<Tlsa>().expect("record"))
        .collect()
}

fn unusable_set() -> TlsaSet {
    [format!("1 1 1 {}", hex::encode([7u8; 32]))]
        .iter()
        .map(|r| r.parse::<Tlsa>().expect("record"))
        .collect()
}

/// The requirement from a secure TLSA answer at the MX host name.
fn dane_from(answer: TlsaAnswer) -> DaneRequirement {
    let c = &tlsa_candidates(HOST, None)[0];
    tlsa_step(c, answer).unwrap_or(DaneRequirement::None {
        reason: "no TLSA".into(),
    })
}

fn dane_match() -> DaneOutcome {
    DaneOutcome {
        mechanism: DaneMechanism::DaneEe,
        record: usable_set().records()[0].clone(),
        base_domain: HOST.into(),
        chain_position: Some(0),
        matched_name: None,
    }
}

fn secure<'a>(required: Level, dane: &'a DaneRequirement) -> HostFacts<'a> {
    HostFacts {
        mx_security: Security::Secure,
        address_security: Security::Secure,
        ..facts(required, dane)
    }
}

fn sts(mode: &str, mx: &str) -> Policy {
    Policy::parse(format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n").as_bytes())
        .expect("policy")
}

// ------------------------------------------------------------ existing ladder

#[test]
fn b2_starttls_used_whenever_offered() {
    assert!(use_starttls(true));
    assert!(!use_starttls(false));
    // Not using an offered STARTTLS is never accepted, not even for `may`.
    for level in [Level::Encrypted, Level::Trusted, Level::Verified] {
        let d = run(level, true, TlsOutcome::NotAttempted);
        assert!(
            matches!(d.action, Action::SkipHost { .. }),
            "{level}: {d:?}"
        );
    }
    let d = run(Level::May, true, TlsOutcome::NotAttempted);
    assert_ne!(d.action, Action::Send);
}

#[test]
fn only_may_sends_on_the_plaintext_retry() {
    let retry = TlsOutcome::PlaintextRetry(TlsFailure::BadSignature);
    let d = run(Level::May, true, retry.clone());
    assert_eq!(d.verdict, Some(TransportVerdict::Plaintext));
    assert_eq!(d.action, Action::Send);
    for level in [Level::Encrypted, Level::Trusted, Level::Verified] {
        let d = run(level, true, retry.clone());
        assert!(
            matches!(d.action, Action::SkipHost { .. }),
            "{level}: {d:?}"
        );
    }
}

#[test]
fn may_sends_plaintext_without_starttls() {
    let d = run(Level::May, false, TlsOutcome::NotAttempted);
    assert_eq!(d.verdict, Some(TransportVerdict::Plaintext));
    assert_eq!(d.action, Action::Send);
}

#[test]
fn may_uses_unauthenticated_tls() {
    let d = run(Level::May, true, established(Err(TlsFailure::NotTrusted)));
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
    assert_eq!(d.mechanism, Mechanism::None);
    assert_eq!(d.action, Action::Send);
}

#[test]
fn may_falls_back_to_plaintext_after_failed_handshake() {
    let d = run(
        Level::May,
        true,
        TlsOutcome::Failed(TlsFailure::BadSignature),
    );
    assert!(matches!(d.action, Action::RetryPlaintext { .. }), "{d:?}");
}

#[test]
fn a2_normal_never_falls_back_to_plaintext() {
    // `normal` maps to `encrypted`: no STARTTLS or a failed handshake defers.
    let d = run(Level::Encrypted, false, TlsOutcome::NotAttempted);
    match d.action {
        Action::SkipHost { status, reason } => {
            assert_eq!(status, "4.7.5");
            assert_eq!(
                reason,
                "mx1.example.test offers no STARTTLS; level encrypted requires TLS"
            );
        }
        other => panic!("{other:?}"),
    }
    let d = run(
        Level::Encrypted,
        true,
        TlsOutcome::Failed(TlsFailure::Other("handshake failure".into())),
    );
    assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
    assert_eq!(d.verdict, None);
}

#[test]
fn encrypted_accepts_any_certificate() {
    let d = run(
        Level::Encrypted,
        true,
        established(Err(TlsFailure::NameMismatch)),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
    assert_eq!(d.action, Action::Send);
}

#[test]
fn c1_old_tls_versions_are_not_encrypted() {
    let d = run(
        Level::Encrypted,
        true,
        TlsOutcome::Established(Established::pkix("TLSv1.1", Ok(()))),
    );
    assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
}

#[test]
fn trusted_requires_pkix_and_name() {
    let d = run(Level::Trusted, true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert_eq!(d.mechanism, Mechanism::Pkix);
    assert_eq!(d.action, Action::Send);

    let d = run(
        Level::Trusted,
        true,
        established(Err(TlsFailure::NameMismatch)),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
    match d.action {
        Action::SkipHost { reason, .. } => {
            assert!(reason.contains("mx1.example.test"), "{reason}");
            assert!(reason.contains("name mismatch"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let d = run(
        Level::Trusted,
        true,
        TlsOutcome::Failed(TlsFailure::NotTrusted),
    );
    match d.action {
        Action::SkipHost { reason, .. } => {
            assert!(reason.contains("certificate not trusted"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let d = run(Level::Trusted, false, TlsOutcome::NotAttempted);
    assert!(matches!(d.action, Action::SkipHost { .. }));
}

#[test]
fn b6_profile_refusal_defers_with_the_profile_reason() {
    use crate::tls::profile::Profile;
    let f = TlsFailure::NoCommonParameters {
        profile: Profile::Bsi,
        detail: "received fatal alert: HandshakeFailure".into(),
    };
    let d = run(Level::Encrypted, true, TlsOutcome::Failed(f.clone()));
    match d.action {
        Action::SkipHost { status, reason } => {
            assert_eq!(status, "4.7.5");
            assert!(
                reason.starts_with("mx1.example.test offers no TLS version"),
                "{reason}"
            );
            assert!(reason.contains("profile bsi"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // `may` still falls back to plaintext (RFC 7435), as for any TLS failure.
    let d = run(Level::May, true, TlsOutcome::Failed(f));
    assert!(matches!(d.action, Action::RetryPlaintext { .. }), "{d:?}");
}

#[test]
fn a4_no_silent_downgrade_at_any_required_level() {
    let usable = dane_from(TlsaAnswer::Secure(usable_set()));
    let unusable = dane_from(TlsaAnswer::Secure(unusable_set()));
    let none = no_dane();
    let outcomes = [
        TlsOutcome::NotAttempted,
        TlsOutcome::Failed(TlsFailure::Expired),
        TlsOutcome::PlaintextRetry(TlsFailure::Expired),
        established(Err(TlsFailure::NotTrusted)),
        established(Ok(())),
        TlsOutcome::Established(Established {
            name_in_domain: Some("mail.example.test".into()),
            ..Established::pkix("TLSv1.3", Err(TlsFailure::NameMismatch))
        }),
    ];
    let policies = [
        None,
        Some(sts("enforce", HOST)),
        Some(sts("testing", "x.test")),
    ];
    for required in [
        Level::May,
        Level::Encrypted,
        Level::Trusted,
        Level::Verified,
    ] {
        for dane in [&usable, &unusable, &none] {
            for security in [Security::Secure, Security::Insecure, Security::Unvalidated] {
                for policy in &policies {
                    for offered in [false, true] {
                        for tls in &outcomes {
                            let f = HostFacts {
                                mx_security: security,
                                address_security: security,
                                mta_sts: check_mx(policy.as_ref(), HOST),
                                ..facts(required, dane)
                            };
                            let d = run_with(f, offered, tls.clone());
                            if d.action == Action::Send {
                                let v = d.verdict.expect("a sent message has a verdict");
                                assert!(
                                    rank(v) >= rank(minimum_verdict(required)),
                                    "{required} sent with {v:?}"
                                );
                                // Usable TLSA: only a DANE match sends (B3, D6).
                                assert!(
                                    !dane.authentication_required(),
                                    "sent without a DANE match: {d:?}"
                                );
                                // TLS mandatory by DANE or MTA-STS: never plaintext.
                                if dane.tls_required()
                                    || policy.as_ref().is_some_and(|p| p.mode == Mode::Enforce)
                                {
                                    assert_ne!(v, TransportVerdict::Plaintext, "{d:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------ A3: verified

#[test]
fn a3_verified_by_certificate_name_within_the_recipient_domain() {
    for name in ["example.test", "mail.example.test", "*.example.test"] {
        let d = run(
            Level::Verified,
            true,
            TlsOutcome::Established(Established {
                name_in_domain: Some(name.into()),
                ..Established::pkix("TLSv1.3", Err(TlsFailure::NameMismatch))
            }),
        );
        assert_eq!(d.verdict, Some(TransportVerdict::Verified), "{name}");
        assert_eq!(d.mechanism, Mechanism::Pkix);
        assert!(d.basis.contains(name), "{}", d.basis);
        assert_eq!(d.action, Action::Send);
    }
}

#[test]
fn a3_verified_by_pkix_on_a_dnssec_secure_mx_name() {
    let none = no_dane();
    let d = run_with(secure(Level::Verified, &none), true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Verified));
    assert_eq!(d.mechanism, Mechanism::Pkix);
    assert!(d.basis.contains("DNSSEC-secure"), "{}", d.basis);
    assert_eq!(d.action, Action::Send);
    // Secure MX but insecure addresses: the MX name is not enough.
    let f = HostFacts {
        address_security: Security::Insecure,
        ..secure(Level::Verified, &none)
    };
    let d = run_with(f, true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert!(skip_reason(&d).contains("address answer insecure"), "{d:?}");
}

#[test]
fn a3_trusted_is_not_verified_and_the_reason_says_what_is_missing() {
    let d = run(Level::Verified, true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert_eq!(
        skip_reason(&d),
        "mx1.example.test: certificate is valid for mx1.example.test (trusted), but the MX name \
         is not authenticated (MX answer unvalidated (DNSSEC unavailable through the upstream \
         resolvers), not DNSSEC-secure; no MTA-STS enforce policy; no certificate name within \
         example.test) — level verified requires it"
    );
    // The same session meets `trusted`.
    let d = run(Level::Trusted, true, established(Ok(())));
    assert_eq!(d.action, Action::Send);
}

#[test]
fn a3_verified_requires_pkix_at_all() {
    let d = run(
        Level::Verified,
        true,
        established(Err(TlsFailure::NotTrusted)),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
    let r = skip_reason(&d);
    assert!(
        r.contains("certificate not trusted") && r.contains("level verified"),
        "{r}"
    );
}

// ------------------------------------------------------------ B3, D1-D11

#[test]
fn b3_dane_host_without_starttls_is_not_used() {
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    for required in [Level::May, Level::Encrypted, Level::Verified] {
        let d = run_with(secure(required, &dane), false, TlsOutcome::NotAttempted);
        let r = skip_reason(&d);
        assert!(
            r.contains("offers no STARTTLS") && r.contains("TLSA"),
            "{r}"
        );
    }
}

#[test]
fn b3_dane_mismatch_is_never_sent_weaker() {
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    // `may` too: no plaintext retry for a DANE host.
    for required in [Level::May, Level::Encrypted] {
        let d = run_with(
            secure(required, &dane),
            true,
            TlsOutcome::Failed(TlsFailure::Other(
                "TLSA records did not match the certificate chain".into(),
            )),
        );
        let r = skip_reason(&d);
        assert!(r.contains("must be authenticated by DANE"), "{r}");
        let d = run_with(
            secure(required, &dane),
            true,
            TlsOutcome::PlaintextRetry(TlsFailure::BadSignature),
        );
        assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
    }
}

#[test]
fn d1_bogus_mx_defers_the_domain() {
    let none = no_dane();
    for s in [Security::Bogus, Security::Indeterminate] {
        let f = HostFacts {
            mx_security: s,
            ..facts(Level::Encrypted, &none)
        };
        assert!(matches!(
            plan(&f),
            Plan::DeferDomain {
                status: "4.7.5",
                ..
            }
        ));
        let d = run_with(f, true, established(Ok(())));
        assert!(matches!(d.action, Action::DeferDomain { .. }), "{d:?}");
    }
}

#[test]
fn d1_bogus_address_skips_the_host() {
    let none = no_dane();
    let f = HostFacts {
        mx_security: Security::Secure,
        address_security: Security::Bogus,
        ..facts(Level::May, &none)
    };
    match plan(&f) {
        Plan::SkipHost { status, reason } => {
            assert_eq!(status, "4.7.5");
            assert!(reason.contains("bogus"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn d2_insecure_mx_with_tlsa_is_at_most_trusted() {
    // No TLSA lookup is made for an insecure MX (the caller passes None): PKIX on
    // the MX name is `trusted`, not `verified`.
    let none = no_dane();
    let f = HostFacts {
        mx_security: Security::Insecure,
        address_security: Security::Secure,
        ..facts(Level::Verified, &none)
    };
    assert_eq!(plan(&f), Plan::Connect { dane: false });
    let d = run_with(f, true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert!(matches!(d.action, Action::SkipHost { .. }));
}

#[test]
fn d4_tlsa_lookup_failure_skips_the_host() {
    let dane = dane_from(TlsaAnswer::Failed {
        reason: "SERVFAIL".into(),
    });
    let f = secure(Level::May, &dane);
    match plan(&f) {
        Plan::SkipHost { status, reason } => {
            assert_eq!(status, "4.7.5");
            assert!(
                reason.contains("SERVFAIL") && reason.contains(HOST),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn d4_secure_denial_means_no_dane() {
    let dane = dane_from(TlsaAnswer::SecureDenial);
    let f = secure(Level::Encrypted, &dane);
    assert_eq!(plan(&f), Plan::Connect { dane: false });
    let d = run_with(f, true, established(Err(TlsFailure::NotTrusted)));
    assert_eq!(d.action, Action::Send);
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
}

#[test]
fn d5_unusable_tlsa_means_tls_mandatory_but_not_qualified() {
    let dane = dane_from(TlsaAnswer::Secure(unusable_set()));
    assert!(matches!(dane, DaneRequirement::TlsRequired { .. }));
    assert_eq!(
        plan(&secure(Level::May, &dane)),
        Plan::Connect { dane: false }
    );
    // TLS mandatory even for `may`.
    let d = run_with(secure(Level::May, &dane), false, TlsOutcome::NotAttempted);
    assert!(skip_reason(&d).contains("TLSA"));
    let d = run_with(
        secure(Level::May, &dane),
        true,
        TlsOutcome::Failed(TlsFailure::Expired),
    );
    assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
    // PKIX on a secure MX name would be `verified`; with unusable TLSA at most `trusted`.
    let d = run_with(secure(Level::Verified, &dane), true, established(Ok(())));
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert!(skip_reason(&d).contains("unusable"), "{d:?}");
    let d = run_with(
        secure(Level::Encrypted, &dane),
        true,
        established(Err(TlsFailure::NotTrusted)),
    );
    assert_eq!(d.action, Action::Send);
}

#[test]
fn d6_usable_tlsa_connects_with_dane_and_a_match_is_verified() {
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    assert_eq!(
        plan(&secure(Level::Verified, &dane)),
        Plan::Connect { dane: true }
    );
    let d = run_with(
        secure(Level::Verified, &dane),
        true,
        TlsOutcome::Established(Established {
            dane: Some(dane_match()),
            ..Established::pkix("TLSv1.3", Err(TlsFailure::NotTrusted))
        }),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Verified));
    assert_eq!(d.mechanism, Mechanism::DaneEe);
    assert!(d.basis.contains("3 1 1"), "{}", d.basis);
    assert_eq!(d.action, Action::Send);
    // A session without a recorded match is not used.
    let d = run_with(secure(Level::May, &dane), true, established(Ok(())));
    assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
}

#[test]
fn d7_dane_ta_mechanism_is_recorded() {
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    let d = run_with(
        secure(Level::Verified, &dane),
        true,
        TlsOutcome::Established(Established {
            dane: Some(DaneOutcome {
                mechanism: DaneMechanism::DaneTa,
                ..dane_match()
            }),
            ..Established::pkix("TLSv1.3", Ok(()))
        }),
    );
    assert_eq!(d.mechanism, Mechanism::DaneTa);
    assert_eq!(d.verdict, Some(TransportVerdict::Verified));
}

#[test]
fn d11_dane_only_destination_without_tlsa_is_deferred() {
    for dane in [
        dane_from(TlsaAnswer::SecureDenial),
        dane_from(TlsaAnswer::Secure(unusable_set())),
        no_dane(),
    ] {
        let f = HostFacts {
            dane_only: true,
            ..secure(Level::May, &dane)
        };
        match plan(&f) {
            Plan::SkipHost { status, reason } => {
                assert_eq!(status, "4.7.5");
                assert!(
                    reason.starts_with("example.test is a dane-only destination, but mx1.example.test cannot be authenticated by DANE"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    let f = HostFacts {
        dane_only: true,
        ..secure(Level::May, &dane)
    };
    assert_eq!(plan(&f), Plan::Connect { dane: true });
}

// ------------------------------------------------------------ E5-E7

#[test]
fn e5_enforce_host_not_covered_is_not_used() {
    let none = no_dane();
    let p = sts("enforce", "mx9.example.test");
    let f = HostFacts {
        mta_sts: check_mx(Some(&p), HOST),
        ..facts(Level::May, &none)
    };
    match plan(&f) {
        Plan::SkipHost { status, reason } => {
            assert_eq!(status, "4.7.5");
            assert!(
                reason.contains("does not list mx1.example.test"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn e5_enforce_requires_tls_and_pkix_for_the_mx_name() {
    let none = no_dane();
    let p = sts("enforce", HOST);
    let f = || HostFacts {
        mta_sts: check_mx(Some(&p), HOST),
        ..facts(Level::May, &none)
    };
    let d = run_with(f(), false, TlsOutcome::NotAttempted);
    assert!(skip_reason(&d).contains("MTA-STS"), "{d:?}");
    let d = run_with(f(), true, established(Err(TlsFailure::NotTrusted)));
    let r = skip_reason(&d);
    assert!(
        r.contains("requires a valid certificate") && r.contains("not trusted"),
        "{r}"
    );
    // No plaintext retry under enforce.
    let d = run_with(f(), true, TlsOutcome::Failed(TlsFailure::Expired));
    assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
    // PKIX ok: verified by MTA-STS.
    let d = run_with(
        HostFacts {
            required: Level::Verified,
            ..f()
        },
        true,
        established(Ok(())),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Verified));
    assert_eq!(d.mechanism, Mechanism::MtaSts);
    assert_eq!(d.action, Action::Send);
}

#[test]
fn e6_testing_delivers_per_level_and_reports() {
    let none = no_dane();
    let p = sts("testing", "other.example.test");
    let f = HostFacts {
        mta_sts: check_mx(Some(&p), HOST),
        ..facts(Level::Encrypted, &none)
    };
    assert_eq!(plan(&f), Plan::Connect { dane: false });
    let d = run_with(f.clone(), true, established(Err(TlsFailure::NotTrusted)));
    assert_eq!(d.action, Action::Send);
    assert_eq!(d.verdict, Some(TransportVerdict::Encrypted));
    assert!(
        d.report.as_deref().is_some_and(|r| r.contains("testing")),
        "{d:?}"
    );
    // A testing policy does not authenticate.
    let d = run_with(
        HostFacts {
            required: Level::Verified,
            mta_sts: check_mx(Some(&sts("testing", HOST)), HOST),
            ..f
        },
        true,
        established(Ok(())),
    );
    assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
    assert!(skip_reason(&d).contains("testing mode"), "{d:?}");
}

#[test]
fn e7_dane_takes_precedence_over_mta_sts() {
    let dane = dane_from(TlsaAnswer::Secure(usable_set()));
    // The enforce policy does not list the host, but DANE decides alone.
    let p = sts("enforce", "mx9.example.test");
    let f = HostFacts {
        mta_sts: check_mx(Some(&p), HOST),
        ..secure(Level::Verified, &dane)
    };
    assert_eq!(plan(&f), Plan::Connect { dane: true });
    let d = run_with(
        f,
        true,
        TlsOutcome::Established(Established {
            dane: Some(dane_match()),
            ..Established::pkix("TLSv1.3", Err(TlsFailure::NotTrusted))
        }),
    );
    assert_eq!(d.mechanism, Mechanism::DaneEe);
    assert_eq!(d.action, Action::Send);
}

// ------------------------------------------------------------ H: vocabulary

#[test]
fn h_verdicts_and_mechanisms_use_the_standard_words() {
    let words: Vec<&str> = [
        TransportVerdict::Plaintext,
        TransportVerdict::Encrypted,
        TransportVerdict::Trusted,
        TransportVerdict::Verified,
    ]
    .iter()
    .map(|v| v.as_str())
    .collect();
    assert_eq!(words, ["plaintext", "encrypted", "trusted", "verified"]);
    let m: Vec<&str> = [
        Mechanism::DaneEe,
        Mechanism::DaneTa,
        Mechanism::MtaSts,
        Mechanism::Pkix,
        Mechanism::None,
    ]
    .iter()
    .map(|m| m.as_str())
    .collect();
    assert_eq!(m, ["dane-ee", "dane-ta", "mta-sts", "pkix", "none"]);
    // Levels and verdicts line up, weakest to strongest.
    for (level, verdict) in [
        (Level::May, TransportVerdict::Plaintext),
        (Level::Encrypted, TransportVerdict::Encrypted),
        (Level::Trusted, TransportVerdict::Trusted),
        (Level::Verified, TransportVerdict::Verified),
    ] {
        assert_eq!(minimum_verdict(level), verdict);
        assert_eq!(level.as_str(), verdict.as_str().replace("plaintext", "may"));
    }
}
