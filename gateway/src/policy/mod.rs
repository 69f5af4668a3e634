//! The transport decision for one MX host, made in one place and readable top to
//! bottom: inputs -> verdict achieved -> action.
//!
//! Inputs: the level the message requires (from its risk class, standards.md A1), what
//! the server offered (STARTTLS in its EHLO reply), and how the TLS handshake went
//! (including whether PKIX and the host name verified).
//!
//! Verdicts (standards.md H): `plaintext` (no TLS), `encrypted` (TLS >= 1.2, peer not
//! authenticated), `trusted` (PKIX chain to a trusted root and the MX name in the
//! certificate). `verified` (DANE, MTA-STS, DNSSEC-secure MX) arrives with the next
//! release; its inputs (the DNS [`crate::dns::Security`] of the MX and address answers,
//! TLSA records) slot into [`Inputs`] and the ladder below without changing callers.
//!
//! Actions:
//! - `Send`: the achieved verdict meets the level; go on with MAIL FROM.
//! - `SkipHost`: this host cannot carry the message at this level; try the next one,
//!   and when none is left the message is *deferred* (4.7.5), never sent weaker
//!   (A2, A4). The reason names the host and what failed, in plain language.
//! - `RetryPlaintext`: only for `may`: the handshake failed, so reconnect and send
//!   without TLS (RFC 7435 section 3: opportunistic security falls back to cleartext
//!   rather than failing; RFC 3207 section 4.1).
//!
//! Before the handshake there is one rule: STARTTLS is used whenever it is offered,
//! at every level (B2) — see [`use_starttls`].

use crate::config::Level;
use crate::spool::record::TransportVerdict;
use crate::tls::client::TlsFailure;

/// How the TLS negotiation with one host went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// No handshake was attempted (the server did not offer STARTTLS).
    NotAttempted,
    /// STARTTLS was refused by the server or the handshake failed.
    Failed(TlsFailure),
    /// This connection is the plaintext retry after the handshake on the previous
    /// connection to the same address failed this way (only ever done for `may`).
    PlaintextRetry(TlsFailure),
    /// A session was established.
    Established {
        /// e.g. "TLSv1.3".
        version: String,
        /// Whether the chain passed PKIX for the MX host name (Ok) or why not.
        pkix: Result<(), TlsFailure>,
    },
}

/// Everything the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs<'a> {
    /// The MX host name (for the reason text).
    pub host: &'a str,
    /// The minimum level the message needs.
    pub required: Level,
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
    RetryPlaintext {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the transport achieved; `None` when no usable transport exists.
    pub verdict: Option<TransportVerdict>,
    pub action: Action,
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
    }
}

fn rank(v: TransportVerdict) -> u8 {
    match v {
        TransportVerdict::Plaintext => 0,
        TransportVerdict::Encrypted => 1,
        TransportVerdict::Trusted => 2,
    }
}

/// TLS 1.2 and 1.3 are acceptable (standards.md C1). The client offers nothing else,
/// so this only guards against a misbuilt configuration.
fn acceptable_version(version: &str) -> bool {
    matches!(version, "TLSv1.2" | "TLSv1.3")
}

/// The decision for one host.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let host = inputs.host;
    let required = inputs.required;

    // 1. What did the transport achieve?
    let achieved: Result<TransportVerdict, String> = match &inputs.tls {
        TlsOutcome::NotAttempted if inputs.starttls_offered => {
            Err(format!("{host} offers STARTTLS but it was not used"))
        }
        TlsOutcome::NotAttempted => Ok(TransportVerdict::Plaintext),
        TlsOutcome::PlaintextRetry(_) if required == Level::May => Ok(TransportVerdict::Plaintext),
        TlsOutcome::PlaintextRetry(f) | TlsOutcome::Failed(f) => Err(f.describe(host)),
        TlsOutcome::Established { version, .. } if !acceptable_version(version) => Err(format!(
            "{host} negotiated {version}; TLS 1.2 or newer is required"
        )),
        TlsOutcome::Established { pkix: Ok(()), .. } => Ok(TransportVerdict::Trusted),
        TlsOutcome::Established { pkix: Err(_), .. } => Ok(TransportVerdict::Encrypted),
    };

    // 2. Does it meet the level?
    match achieved {
        Ok(verdict) if rank(verdict) >= rank(minimum_verdict(required)) => Decision {
            verdict: Some(verdict),
            action: Action::Send,
        },
        Ok(verdict) => Decision {
            verdict: Some(verdict),
            action: Action::SkipHost {
                status: "4.7.5",
                reason: shortfall(host, required, verdict, &inputs.tls),
            },
        },
        // 3. TLS failed. `may` falls back to plaintext on a new connection (RFC 7435);
        //    every other level must not (A2): skip the host, defer if none is left.
        Err(why) if required == Level::May => Decision {
            verdict: None,
            action: Action::RetryPlaintext { reason: why },
        },
        // A profile refusal already says what is missing (e.g. the key size);
        // other failures add that this level cannot do without TLS.
        Err(why) if profile_refused(&inputs.tls) => Decision {
            verdict: None,
            action: Action::SkipHost {
                status: "4.7.5",
                reason: why,
            },
        },
        Err(why) => Decision {
            verdict: None,
            action: Action::SkipHost {
                status: "4.7.5",
                reason: format!("{why}; level {required} requires TLS"),
            },
        },
    }
}

/// Whether the TLS profile refused the server (its key or its parameters, B6/C6).
fn profile_refused(tls: &TlsOutcome) -> bool {
    matches!(tls, TlsOutcome::Failed(f) | TlsOutcome::PlaintextRetry(f) if f.is_profile_failure())
}

/// A plain-language reason why the achieved verdict is not enough.
fn shortfall(host: &str, required: Level, got: TransportVerdict, tls: &TlsOutcome) -> String {
    match (got, tls) {
        (TransportVerdict::Plaintext, _) => {
            format!("{host} offers no STARTTLS; level {required} requires TLS")
        }
        (_, TlsOutcome::Established { pkix: Err(f), .. }) => {
            format!("{host}: {f}; level {required} requires an authenticated server")
        }
        _ => format!(
            "{host}: transport {} does not meet level {required}",
            got.as_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn established(pkix: Result<(), TlsFailure>) -> TlsOutcome {
        TlsOutcome::Established {
            version: "TLSv1.3".into(),
            pkix,
        }
    }

    fn run(required: Level, offered: bool, tls: TlsOutcome) -> Decision {
        decide(&Inputs {
            host: "mx1.example.test",
            required,
            starttls_offered: offered,
            tls,
        })
    }

    #[test]
    fn b2_starttls_used_whenever_offered() {
        assert!(use_starttls(true));
        assert!(!use_starttls(false));
        // Not using an offered STARTTLS is never accepted, not even for `may`.
        for level in [Level::Encrypted, Level::Trusted] {
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
        for level in [Level::Encrypted, Level::Trusted] {
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
            TlsOutcome::Established {
                version: "TLSv1.1".into(),
                pkix: Ok(()),
            },
        );
        assert!(matches!(d.action, Action::SkipHost { .. }), "{d:?}");
    }

    #[test]
    fn trusted_requires_pkix_and_name() {
        let d = run(Level::Trusted, true, established(Ok(())));
        assert_eq!(d.verdict, Some(TransportVerdict::Trusted));
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
        let outcomes = [
            TlsOutcome::NotAttempted,
            TlsOutcome::Failed(TlsFailure::Expired),
            established(Err(TlsFailure::NotTrusted)),
            established(Ok(())),
        ];
        for required in [Level::May, Level::Encrypted, Level::Trusted] {
            for offered in [false, true] {
                for tls in &outcomes {
                    let d = run(required, offered, tls.clone());
                    if d.action == Action::Send {
                        let v = d.verdict.expect("a sent message has a verdict");
                        assert!(
                            rank(v) >= rank(minimum_verdict(required)),
                            "{required} sent with {v:?}"
                        );
                    }
                }
            }
        }
    }
}
