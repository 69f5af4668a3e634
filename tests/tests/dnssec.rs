//! DNSSEC in the test world (issue 3, standards.md B1, D1, D2): Knot serves a signed
//! test root, the signed TLD `test.`, the signed `example.test`, a bogus zone
//! (`bogus.example.test`: signed, but its DS in `example.test` matches no key) and an
//! insecure delegation (`insecure.example.test`: unsigned, no DS). The relay
//! validates in-process from the test root's DS (`[dns] trust_anchor`, written by the
//! harness).

use std::time::{Duration, Instant};

use qrelay_tests::infra::{kdig, trust_anchor_file};
use qrelay_tests::relay::assert_never_arrives;
use qrelay_tests::{level, token, Infra, Message, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);
const HELD: Duration = Duration::from_secs(60);

fn assert_tls(m: &Message, mx: Mx) {
    let r = m
        .postfix_received()
        .unwrap_or_else(|| panic!("no Postfix Received header in {}", m.raw));
    assert!(r.contains(mx.hostname()), "{r}");
    assert!(r.contains("using TLSv1."), "not received over TLS: {r}");
}

/// Wait until the relay's log contains `needle`.
fn wait_log(relay: &Relay, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let log = relay.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            start.elapsed() < timeout,
            "relay log never showed {needle:?}:\n{}",
            relay.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_test_world_is_signed() {
    Infra::get();
    let anchor = std::fs::read_to_string(trust_anchor_file()).unwrap();
    assert!(anchor.starts_with(". DS "), "{anchor}");
    for zone in [
        ".",
        "test.",
        "example.test.",
        "lan.test.",
        "bogus.example.test.",
    ] {
        let keys = kdig("DNSKEY", zone).unwrap();
        assert!(keys.contains("257 3 13"), "{zone}: {keys}");
    }
    // DS at the parents: test. in the root, example.test in test.; none for the
    // insecure delegation.
    assert!(kdig("DS", "test.").unwrap().contains(" 13 2 "));
    assert!(kdig("DS", "example.test.").unwrap().contains(" 13 2 "));
    assert!(kdig("DS", "bogus.example.test.")
        .unwrap()
        .contains(" 13 2 "));
    assert_eq!(kdig("DS", "insecure.example.test.").unwrap().trim(), "");
    assert_eq!(kdig("DNSKEY", "insecure.example.test.").unwrap().trim(), "");
}

#[test]
fn secure_zone_delivers_at_encrypted() {
    let relay = Relay::start(&level("encrypted")).unwrap();
    let m = relay.deliver_token("dnssec-secure", "ca.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
    // The probe found DNSSEC working through Knot with the test root's anchor.
    wait_log(&relay, "DNSSEC available", Duration::from_secs(20));
    assert!(
        !relay.log().contains("DNSSEC unavailable"),
        "{}",
        relay.log_tail(40)
    );
}

#[test]
fn secure_cname_mx_host_is_followed() {
    // alias.example.test MX mx-alias, a CNAME to mx-ca (which has no AAAA): the
    // NODATA for AAAA at the end of the chain must not turn the host bogus.
    let relay = Relay::start(&level("encrypted")).unwrap();
    let m = relay.deliver_token("dnssec-cname", "alias.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
}

#[test]
fn b1_bogus_mx_answer_never_leads_to_delivery() {
    // Even at the lowest level (plaintext allowed), a bogus MX answer is not used.
    let infra = Infra::get();
    let relay = Relay::start(&level("may")).unwrap();
    let tok = token("dnssec-bogus-b1");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@bogus.example.test"),
            &tok,
        )
        .unwrap();
    let out = relay
        .wait_pending_with_reason(&id, &["DNSSEC"], HELD)
        .unwrap();
    println!("queue state:\n{out}");
    assert_never_arrives(&infra.mailbox(Mx::Ca), &tok, Duration::from_secs(4));
    let list = relay.queue_list().unwrap();
    assert!(list.contains(&id), "message left the queue:\n{list}");
}

#[test]
fn d1_bogus_mx_defers_the_domain() {
    let infra = Infra::get();
    let relay = Relay::start(&level("encrypted")).unwrap();
    let tok = token("dnssec-bogus-d1");
    let sender = format!("{tok}-sender@lan.test");
    let id = relay
        .swaks(&sender, &format!("{tok}@bogus.example.test"), &tok)
        .unwrap();
    let out = relay
        .wait_pending_with_reason(&id, &["4.7.5"], HELD)
        .unwrap();
    assert!(
        out.contains("DNSSEC validation failed for the MX of bogus.example.test"),
        "{out}"
    );
    // Deferred, several attempts (retry every second), never bounced, never sent.
    std::thread::sleep(Duration::from_secs(3));
    let list = relay.queue_list().unwrap();
    assert!(list.contains(&id), "message left the queue:\n{list}");
    assert_never_arrives(&infra.mailbox(Mx::Ca), &tok, Duration::from_secs(2));
    assert!(
        infra.mailbox(Mx::Lan).containing(&sender).is_empty(),
        "a DSN was sent for a DNSSEC failure"
    );
}

#[test]
fn d2_insecure_delegation_is_insecure_not_bogus() {
    let relay = Relay::start(&level("encrypted")).unwrap();
    let m = relay.deliver_token("dnssec-insecure", "insecure.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
}

#[test]
fn probe_reports_dnssec_unavailable_with_a_wrong_trust_anchor() {
    // The real IANA root DS: it matches no key of the test root. The probe fails, as
    // it does when the upstream strips DNSSEC: the relay says so loudly and falls
    // back to unvalidated DNS (the admin must fix the anchor). Levels that do not
    // rely on DNS authenticity deliver; `verified` without DNSSEC is held.
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("iana-root.ds");
    std::fs::write(
        &anchor,
        ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n",
    )
    .unwrap();
    let infra = Infra::get();
    let start = |l: &str| {
        let relay = Relay::start(&format!(
            "{}[dns]\ntrust_anchor = \"{}\"\n",
            level(l),
            anchor.display()
        ))
        .unwrap();
        let log = wait_log(
            &relay,
            "DNSSEC unavailable through upstream resolvers 127.0.10.54:53",
            Duration::from_secs(20),
        );
        assert!(
            log.contains(
                "falling back to unvalidated DNS; DANE and DNSSEC-based authentication are off"
            ),
            "{}",
            relay.log_tail(20)
        );
        relay
    };

    // `encrypted`: delivered over TLS, the answers recorded as unvalidated.
    let relay = start("encrypted");
    let m = relay.deliver_token("dnssec-wrong-anchor", "ca.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
    // The attempt's evidence: the MX answer was used unvalidated.
    let mx_dnssec = qrelay_tests::wait_until(
        "delivery attempt in the log",
        Duration::from_secs(20),
        || {
            relay
                .log()
                .lines()
                .filter(|l| l.contains("delivery attempt") && l.contains("ca.example.test"))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("mx_dnssec="))
                        .map(|v| v.trim_matches('"').to_string())
                })
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", relay.log_tail(30)));
    assert_eq!(mx_dnssec, "unvalidated");
    drop(relay);

    // `verified`: the MX name of ca.example.test is outside the domain and there is
    // no MTA-STS policy: without DNSSEC it cannot be authenticated; held, never sent.
    let relay = start("verified");
    let tok = token("dnssec-wrong-anchor-verified");
    let sender = format!("{tok}-sender@lan.test");
    let id = relay
        .swaks(&sender, &format!("{tok}@ca.example.test"), &tok)
        .unwrap();
    let out = relay
        .wait_pending_with_reason(&id, &["DNSSEC unavailable"], HELD)
        .unwrap();
    println!("queue state:\n{out}");
    assert_never_arrives(&infra.mailbox(Mx::Ca), &tok, Duration::from_secs(3));
    assert!(relay.queue_list().unwrap().contains(&id));
    assert!(infra.mailbox(Mx::Lan).containing(&sender).is_empty());
}
