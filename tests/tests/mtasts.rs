//! MTA-STS scenarios (issue 3, standards.md E2, E5-E7) through real delivery at
//! `encrypted` and `verified` and through `qrelay check --json`
//! (tests/src/scenario.rs). The policies are served by nginx on 127.0.20.50:443
//! (tests/src/infra.rs, `STS_POLICY_HOSTS`); the MX of the MTA-STS domains lives in
//! the unsigned zone, so only the policy can make it `verified`.
//!
//! posttls-finger has no MTA-STS support: no comparison here.

use qrelay_tests::scenario::{Scenario, Want};
use qrelay_tests::Mx;

fn held(reason: &'static [&'static str]) -> Want {
    Want::Held { reason }
}

#[test]
fn e5_enforce_ok_delivers_verified_by_mta_sts() {
    let ok = Want::Delivered {
        mx: Mx::Sts,
        verdict: "verified",
    };
    Scenario {
        domain: "sts-ok.insecure.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::Sts],
        check_mx: &[("mx-sts.insecure.example.test", "verified", "mta-sts")],
        extra: "",
    }
    .run();
}

#[test]
fn e5_enforce_mx_not_covered_is_held() {
    Scenario {
        domain: "sts-nomx.insecure.example.test",
        encrypted: held(&["MTA-STS policy (enforce) does not list mx-sts.insecure.example.test"]),
        verified: held(&["MTA-STS policy (enforce) does not list mx-sts.insecure.example.test"]),
        watch: &[Mx::Sts],
        check_mx: &[("mx-sts.insecure.example.test", "failed", "")],
        extra: "",
    }
    .run();
}

#[test]
fn e2_policy_host_with_wrong_name_is_a_fetch_error() {
    // No valid policy: delivery as without MTA-STS. The MX certificate is valid
    // for its name, but that name came from unsigned DNS: trusted, not verified.
    Scenario {
        domain: "sts-wrongname.insecure.example.test",
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
}

#[test]
fn e6_testing_with_bad_certificate_delivers_at_encrypted() {
    Scenario {
        domain: "sts-testing.example.test",
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
}

#[test]
fn e7_dane_takes_precedence_over_mta_sts() {
    // An enforce policy that does not cover the DANE-EE MX: DANE decides.
    let ok = Want::Delivered {
        mx: Mx::DaneEe,
        verdict: "verified",
    };
    Scenario {
        domain: "sts-dane.example.test",
        encrypted: ok,
        verified: ok,
        watch: &[Mx::DaneEe],
        check_mx: &[("mx-dane-ee.example.test", "verified", "dane-ee")],
        extra: "",
    }
    .run();
}
