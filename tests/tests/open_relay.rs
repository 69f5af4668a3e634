//! (f) Open-relay test: a client outside relay_networks cannot relay anywhere, by
//! any of the classic address tricks; nothing gets queued.

use std::net::IpAddr;

use qrelay_tests::smtp::{block_on, SmtpClient};
use qrelay_tests::{build_message, token, Relay};

const TRICKS: &[&str] = &[
    "victim@foreign.test",
    "victim@ca.example.test",
    "VICTIM@FOREIGN.TEST",
    "victim@foreign.test.",
    "victim%foreign.test@qrelay.lan.test",
    "victim%foreign.test@[127.0.0.1]",
    "victim%foreign.test",
    "@qrelay.lan.test:victim@foreign.test",
    "@qrelay.lan.test,@other.test:victim@foreign.test",
    "\"victim@foreign.test\"@qrelay.lan.test",
    "\"victim%foreign.test\"@qrelay.lan.test",
    "victim@foreign.test@qrelay.lan.test",
    "foreign.test!victim@qrelay.lan.test",
    "foreign.test!victim",
    "victim",
    "victim@[127.0.20.1]",
    "victim@[IPv6:::1]",
    "postmaster@foreign.test",
    "victim@qrelay.lan.test",
];

#[test]
fn client_outside_relay_networks_cannot_relay() {
    let mut relay = Relay::start("[smtp]\nrelay_networks = [\"127.0.0.2/32\"]\n").unwrap();
    let tok = token("openrelay");
    for source in ["127.0.0.1", "127.0.0.3"] {
        let bind: IpAddr = source.parse().unwrap();
        for rcpt in TRICKS {
            // One connection per attempt: a relay may hang up after repeated errors.
            let result = block_on(async {
                let mut c = SmtpClient::connect(relay.listen, Some(bind)).await?;
                c.ehlo("attacker.test").await?;
                let msg = build_message("spammer@foreign.test", &[rcpt], &tok, "spam");
                let t = c.transaction("spammer@foreign.test", &[rcpt], &msg).await?;
                c.quit().await;
                anyhow::Ok(t)
            });
            match result {
                Ok(t) => {
                    let r = &t.rcpt[0];
                    assert!(
                        !r.is_positive(),
                        "from {source}: RCPT TO:<{rcpt}> was accepted: {r}"
                    );
                    assert!(
                        !t.accepted(),
                        "from {source}: message to {rcpt} accepted: {t:?}"
                    );
                    println!("from {source}: <{rcpt}> -> {r}");
                }
                Err(e) => println!("from {source}: <{rcpt}> -> connection ended: {e:#}"),
            }
        }
    }
    assert!(
        relay.is_running(),
        "the relay died during the open-relay test"
    );
    let list = relay.queue_list().unwrap();
    assert!(
        !list.to_lowercase().contains("foreign") && !list.contains("victim"),
        "something was queued:\n{list}"
    );
}

#[test]
fn client_inside_relay_networks_can_relay() {
    // Control for the test above: the same relay accepts from 127.0.0.2.
    let relay = Relay::start("[smtp]\nrelay_networks = [\"127.0.0.2/32\"]\n").unwrap();
    let tok = token("inside");
    let rcpt = format!("{tok}@ca.example.test");
    let t = block_on(async {
        let mut c = SmtpClient::connect(relay.listen, Some("127.0.0.2".parse().unwrap()))
            .await
            .unwrap();
        c.ehlo("lan-server.lan.test").await.unwrap();
        let msg = build_message("sender@lan.test", &[&rcpt], &tok, "hello");
        let t = c
            .transaction("sender@lan.test", &[&rcpt], &msg)
            .await
            .unwrap();
        c.quit().await;
        t
    });
    assert!(t.accepted(), "{t:?}");
}
