//! (i) `qrelay queue list|show|retry|delete` against a relay holding a deferred
//! message (level `encrypted` towards the MX without STARTTLS).

use std::time::Duration;

use qrelay_tests::relay::assert_never_arrives;
use qrelay_tests::{token, Infra, Mx, Relay};

#[test]
fn queue_list_show_retry_delete() {
    let infra = Infra::get();
    let relay = Relay::start("[class.normal]\nlevel = \"encrypted\"\n").unwrap();
    let tok = token("qcli");
    let rcpt = format!("{tok}@plain.example.test");
    let id = relay.swaks("sender@lan.test", &rcpt, &tok).unwrap();
    assert_eq!(id.len(), 16, "queue IDs are 16 hex digits: {id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    relay
        .wait_pending_with_reason(&id, &["tls"], Duration::from_secs(60))
        .unwrap();

    let list = relay.queue_list().unwrap();
    println!("queue list:\n{list}");
    assert!(list.contains(&id), "{list}");

    let show = relay.queue_show(&id).unwrap();
    println!("queue show:\n{show}");
    assert!(
        show.contains(&rcpt),
        "show does not name the recipient:\n{show}"
    );
    assert!(
        show.contains("sender@lan.test"),
        "show does not name the sender:\n{show}"
    );

    // Unknown IDs are errors.
    let bad = relay.cli(&["queue", "show", "0000000000000000"]).unwrap();
    assert!(
        !bad.status.success(),
        "show of an unknown ID succeeded: {bad:?}"
    );

    // retry: accepted, and the message is still held (the MX still has no TLS).
    relay.cli_ok(&["queue", "retry", &id]).unwrap();
    relay
        .wait_pending_with_reason(&id, &["tls"], Duration::from_secs(30))
        .unwrap();

    // delete: gone from the queue, never delivered.
    relay.cli_ok(&["queue", "delete", &id]).unwrap();
    relay
        .wait_queue(|l| !l.contains(&id), Duration::from_secs(10))
        .unwrap();
    let gone = relay.cli(&["queue", "show", &id]).unwrap();
    assert!(
        !gone.status.success(),
        "deleted message still shown: {gone:?}"
    );
    assert_never_arrives(&infra.mailbox(Mx::Plain), &tok, Duration::from_secs(2));
}
