//! DANE scenarios (issue 3, standards.md B1, B3, D1, D2, D6-D8, D11) through real
//! delivery at `encrypted` and `verified` and through `qrelay check --json`
//! (tests/src/scenario.rs). The TLSA records are in tests/src/infra.rs
//! (`dane_records`, `test_zones`).
//!
//! posttls-finger is not asked for a DANE verdict: its DANE level needs DNSSEC
//! answers from the system resolver, which is not Knot. Where a PKIX verdict exists
//! it is compared (DANE-TA MX).

use qrelay_tests::scenario::{posttls_finger, Scenario, Want};
use qrelay_tests::Mx;

const DANE_FAIL: &[&str] = &["TLSA records did not match the certificate chain"];

const TLSA_BOGUS: &[&str] =
    &["TLSA lookup for _25._tcp.mx-tlsa-bogus.example.test. failed: DNSSEC validation failed"];

fn held(reason: &'static [&'static str]) -> Want {
    Want::Held { reason }
}

#[test]
fn d7_dane_ee_delivers_verified() {
    let ok = Want::Delivered {
        mx: Mx::DaneEe,
        verdict: "verified",
    };
    Scenario {
        domain: "dane-ee.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::DaneEe],
        check_mx: &[("mx-dane-ee.example.test", "verified", "dane-ee")],
        extra: "",
    }
    .run();
    // Without DANE the self-signed MX is at most "Untrusted" for Postfix.
    assert_eq!(
        posttls_finger(Mx::DaneEe, "may", &["mx-dane-ee.example.test"]),
        "Untrusted"
    );
}

#[test]
fn d8_dane_ta_delivers_verified() {
    let ok = Want::Delivered {
        mx: Mx::DaneTa,
        verdict: "verified",
    };
    Scenario {
        domain: "dane-ta.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::DaneTa],
        check_mx: &[("mx-dane-ta.example.test", "verified", "dane-ta")],
        extra: "",
    }
    .run();
    assert_eq!(
        posttls_finger(Mx::DaneTa, "secure", &["mx-dane-ta.example.test"]),
        "Verified"
    );
}

#[test]
fn b3_tlsa_mismatch_is_never_delivered() {
    Scenario {
        domain: "dane-mismatch.example.test",
        encrypted: held(DANE_FAIL),
        verified: held(DANE_FAIL),
        watch: &[Mx::Ca],
        check_mx: &[("mx-dane-mismatch.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn b3_tlsa_selector_mismatch_is_never_delivered() {
    Scenario {
        domain: "dane-selector.example.test",
        encrypted: held(DANE_FAIL),
        verified: held(DANE_FAIL),
        watch: &[Mx::Ca],
        check_mx: &[("mx-dane-selector.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn b3_dane_ta_with_a_certificate_of_another_ca_is_never_delivered() {
    Scenario {
        domain: "dane-otherca.example.test",
        encrypted: held(DANE_FAIL),
        verified: held(DANE_FAIL),
        watch: &[Mx::OtherCa],
        check_mx: &[("mx-dane-otherca.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn d6_tlsa_present_but_no_starttls_is_held() {
    Scenario {
        domain: "dane-plain.example.test",
        encrypted: held(&["offers no STARTTLS, but its DNSSEC-signed TLSA records"]),
        verified: held(&["offers no STARTTLS, but its DNSSEC-signed TLSA records"]),
        watch: &[Mx::Plain],
        check_mx: &[("mx-dane-plain.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn b1_bogus_tlsa_is_held() {
    // The host's address is secure; its TLSA RRset (a CNAME into the bogus zone)
    // is bogus: D4, skip the host, defer.
    Scenario {
        domain: "tlsa-bogus.example.test",
        encrypted: held(TLSA_BOGUS),
        verified: held(TLSA_BOGUS),
        watch: &[Mx::Ca],
        check_mx: &[("mx-tlsa-bogus.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn d1_mx_host_in_bogus_zone_is_held() {
    // MX secure, the host's address (and TLSA) bogus: skip the host, defer.
    Scenario {
        domain: "bogus-host.example.test",
        encrypted: held(&["mx.bogus.example.test: the address answer is bogus (DNSSEC)"]),
        verified: held(&["mx.bogus.example.test: the address answer is bogus (DNSSEC)"]),
        watch: &[Mx::Ca],
        check_mx: &[],
        extra: "",
    }
    .run();
}

#[test]
fn d2_tlsa_in_unsigned_zone_is_ignored() {
    // mx.insecure.example.test publishes a TLSA record that matches nothing; the
    // zone is unsigned, so it is ignored: delivered at encrypted, never verified
    // (the certificate does not name the host either).
    Scenario {
        domain: "dane-insecure.example.test",
        encrypted: Want::Delivered {
            mx: Mx::Ca,
            verdict: "encrypted",
        },
        verified: held(&[
            "name mismatch: the certificate does not name the host; level verified requires",
        ]),
        watch: &[Mx::Ca],
        check_mx: &[("mx.insecure.example.test", "encrypted", "none")],
        extra: "",
    }
    .run();
}

#[test]
fn d11_dane_only_destination_without_tlsa_is_held() {
    Scenario {
        domain: "ca.example.test",
        encrypted: held(&[
            "is a dane-only destination, but mx-ca.example.test cannot be authenticated by DANE",
        ]),
        verified: held(&[
            "is a dane-only destination, but mx-ca.example.test cannot be authenticated by DANE",
        ]),
        watch: &[Mx::Ca],
        check_mx: &[],
        extra: "[[destination]]\ndomain = \"ca.example.test\"\ndane_only = true\n",
    }
    .run();
}

#[test]
fn d11_dane_only_destination_with_dane_delivers() {
    let ok = Want::Delivered {
        mx: Mx::DaneEe,
        verdict: "verified",
    };
    Scenario {
        domain: "dane-ee.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::DaneEe],
        check_mx: &[("mx-dane-ee.example.test", "verified", "dane-ee")],
        extra: "[[destination]]\ndomain = \"dane-ee.example.test\"\ndane_only = true\n",
    }
    .run();
}
