//! PKIX and TLS scenarios per level (issue 3, standards.md A2, A3, C1, H) through
//! real delivery at `encrypted` and `verified`, through `qrelay check --json`
//! (tests/src/scenario.rs), and compared with posttls-finger's verdict word
//! (`[ip]` form with the test CA as CAfile; no DNS involved).

use qrelay_tests::scenario::{posttls_finger, Scenario, Want};
use qrelay_tests::Mx;

fn held(reason: &'static [&'static str]) -> Want {
    Want::Held { reason }
}

#[test]
fn a3_pkix_on_dnssec_secure_mx_delivers_verified() {
    let ok = Want::Delivered {
        mx: Mx::Ca,
        verdict: "verified",
    };
    Scenario {
        domain: "ca.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::Ca],
        check_mx: &[("mx-ca.example.test", "verified", "pkix")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::Ca, "secure", &["mx-ca.example.test"]),
        "Verified"
    );
}

#[test]
fn h_self_signed_is_encrypted_not_verified() {
    Scenario {
        domain: "self.example.test",
        encrypted: Want::Delivered {
            mx: Mx::SelfSigned,
            verdict: "encrypted",
        },
        verified: held(&[
            "certificate not trusted; level verified requires an authenticated server",
        ]),
        watch: &[Mx::SelfSigned],
        check_mx: &[("mx-self.example.test", "encrypted", "none")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::SelfSigned, "may", &["mx-self.example.test"]),
        "Untrusted"
    );
}

#[test]
fn h_expired_certificate_is_encrypted_not_verified() {
    Scenario {
        domain: "expired.example.test",
        encrypted: Want::Delivered {
            mx: Mx::Expired,
            verdict: "encrypted",
        },
        verified: held(&[
            "certificate expired or not yet valid; level verified requires an authenticated server",
        ]),
        watch: &[Mx::Expired],
        check_mx: &[("mx-expired.example.test", "encrypted", "none")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::Expired, "may", &["mx-expired.example.test"]),
        "Untrusted"
    );
    assert_eq!(
        posttls_finger(Mx::Expired, "secure", &["mx-expired.example.test"]),
        "Untrusted"
    );
}

#[test]
fn h_unknown_ca_is_encrypted_not_verified() {
    Scenario {
        domain: "otherca.example.test",
        encrypted: Want::Delivered {
            mx: Mx::OtherCa,
            verdict: "encrypted",
        },
        verified: held(&[
            "certificate not trusted; level verified requires an authenticated server",
        ]),
        watch: &[Mx::OtherCa],
        check_mx: &[("mx-otherca.example.test", "encrypted", "none")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::OtherCa, "may", &["mx-otherca.example.test"]),
        "Untrusted"
    );
}

#[test]
fn a2_no_starttls_is_held_at_encrypted() {
    Scenario {
        domain: "plain.example.test",
        encrypted: held(&["offers no STARTTLS; level encrypted requires TLS"]),
        verified: held(&["offers no STARTTLS; level verified requires TLS"]),
        watch: &[Mx::Plain],
        check_mx: &[("mx-plain.example.test", "plaintext", "none")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::Plain, "may", &["mx-plain.example.test"]),
        "none"
    );
}

#[test]
fn c1_tls10_only_server_is_held_at_encrypted() {
    Scenario {
        domain: "tls10.example.test",
        encrypted: held(&[
            "offers no TLS version, cipher suite, group or signature scheme allowed",
        ]),
        verified: held(&["offers no TLS version, cipher suite, group or signature scheme allowed"]),
        watch: &[Mx::Tls10],
        check_mx: &[("mx-tls10.example.test", "failed", "")],
        extra: "",
    }
    .run();
    // Postfix itself (OpenSSL, default security level) does not get a TLS 1.0
    // session either unless told to; with SECLEVEL=0 it does ("Trusted" chain).
    let pf = posttls_finger(Mx::Tls10, "may", &["mx-tls10.example.test"]);
    println!("posttls-finger -l may on the TLS 1.0 MX: {pf}");
}

#[test]
fn h_two_mx_only_the_second_authenticates() {
    Scenario {
        domain: "two-mx.example.test",
        encrypted: Want::Delivered {
            mx: Mx::SelfSigned,
            verdict: "encrypted",
        },
        verified: Want::Delivered {
            mx: Mx::DaneEe,
            verdict: "verified",
        },
        watch: &[Mx::SelfSigned, Mx::DaneEe],
        check_mx: &[
            ("mx-self.example.test", "encrypted", "none"),
            ("mx-dane-ee.example.test", "verified", "dane-ee"),
        ],
        extra: "",
    }
    .run();
}

#[test]
fn h_trusted_is_not_verified_for_pkix_on_unauthenticated_mx() {
    // pkix.insecure.example.test: MX and address from the unsigned zone, the
    // certificate is valid for the MX name, no MTA-STS: trusted (Postfix
    // "verify"), never verified.
    Scenario {
        domain: "pkix.insecure.example.test",
        encrypted: Want::Delivered {
            mx: Mx::Sts,
            verdict: "trusted",
        },
        verified: held(&["(trusted), but the MX name is not authenticated (MX answer insecure"]),
        watch: &[Mx::Sts],
        check_mx: &[("mx-sts.insecure.example.test", "trusted", "pkix")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::Sts, "verify", &["mx-sts.insecure.example.test"]),
        "Verified"
    );
}
