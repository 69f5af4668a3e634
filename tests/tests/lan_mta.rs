//! (e) Postfix as the LAN's mail server relays through qrelay:
//! swaks -> Postfix 127.0.30.1:25 -> qrelay 127.0.30.25:2525 -> Postfix MX.

use std::time::Duration;

use qrelay_tests::infra::{LAN_MTA_ADDR, LAN_RELAY_ADDR};
use qrelay_tests::{swaks, token, Infra, Mx, Relay};

#[test]
fn lan_postfix_relays_through_qrelay_to_the_mx() {
    let infra = Infra::get();
    let _lock = infra.lan_relay_lock().unwrap();
    let relay = Relay::start_at(
        LAN_RELAY_ADDR.parse().unwrap(),
        "[class.normal]\nlevel = \"trusted\"\n",
    )
    .unwrap();
    let tok = token("lan-mta");
    swaks(
        LAN_MTA_ADDR.parse().unwrap(),
        "alice@lan.test",
        &format!("{tok}@ca.example.test"),
        &tok,
        &[],
    )
    .unwrap();
    let m = infra
        .mailbox(Mx::Ca)
        .wait_for_token(&tok, Duration::from_secs(90))
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nLAN Postfix log:\n{}\nqrelay log:\n{}",
                infra.lan_mta_log_tail(30),
                relay.log_tail(30)
            )
        });
    let received = m.received();
    assert!(received.len() >= 3, "expected 3+ hops: {received:#?}");
    let top = m.postfix_received().unwrap();
    assert!(top.contains("mx-ca.example.test"), "{top}");
    assert!(top.contains("using TLSv1."), "{top}");
    assert!(
        received
            .iter()
            .any(|r| r.contains("by mail.lan.test (Postfix)")),
        "the LAN Postfix hop is missing: {received:#?}"
    );
    // The LAN Postfix handed the message to qrelay (its log says relay=127.0.30.25).
    let log = infra.lan_mta_log_tail(200);
    assert!(
        log.lines()
            .any(|l| l.contains("relay=127.0.30.25[127.0.30.25]:2525") && l.contains("status=sent")),
        "{log}"
    );
}
