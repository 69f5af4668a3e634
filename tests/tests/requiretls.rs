//! REQUIRETLS (RFC 8689, standards.md G1-G3) through real delivery.
//!
//! - G1: the relay's inbound listener offers REQUIRETLS only after STARTTLS, and
//!   refuses it in MAIL FROM before.
//! - G2: a REQUIRETLS message goes only to a host whose MX set is DNSSEC- or
//!   MTA-STS-validated, whose certificate is verified and which advertises
//!   REQUIRETLS, and `REQUIRETLS` is passed on in MAIL FROM. The receiving side is
//!   the test peer (`tests/src/peer.rs`, `mx-requiretls.example.test`), since
//!   Postfix cannot advertise REQUIRETLS; `norequiretls.example.test` is Postfix
//!   (mx-ca: DNSSEC + PKIX verified, no REQUIRETLS): non-delivery with 5.7.30.
//! - G3: the failure DSN of a REQUIRETLS message returns only its headers.

use std::time::Duration;

use qrelay_tests::peer::{submit_starttls, Peer, Submission};
use qrelay_tests::smtp::{block_on, SmtpClient};
use qrelay_tests::{build_message, token, Infra, Message, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);

/// Submit a REQUIRETLS message over STARTTLS; returns its queue id.
fn submit(relay: &Relay, sender: &str, rcpt: &str, message: &str) -> String {
    let s =
        submit_starttls(relay.listen, sender, "REQUIRETLS", &[rcpt], message).expect("submission");
    s.tx.queue_id().unwrap_or_else(|| {
        panic!(
            "REQUIRETLS submission refused: {:?}\nrelay log:\n{}",
            s.tx,
            relay.log_tail(30)
        )
    })
}

/// The failure DSN sent to `sender` (a unique address at lan.test).
fn wait_dsn(sender: &str) -> Message {
    let mut found = Infra::get()
        .mailbox(Mx::Lan)
        .wait_for(
            |m| {
                m.header_all("To").iter().any(|t| t.contains(sender))
                    || m.header("Delivered-To").is_some_and(|t| t.contains(sender))
            },
            ARRIVE,
        )
        .unwrap_or_else(|e| panic!("no DSN for {sender}: {e:#}"));
    found.remove(0)
}

/// A DSN's text with its base64 parts decoded (the notice may be UTF-8 base64).
fn readable(m: &Message) -> String {
    let mut out = m.raw.clone();
    let mut in_b64 = false;
    let mut chunk = String::new();
    for line in m.raw.lines() {
        if line
            .to_ascii_lowercase()
            .starts_with("content-transfer-encoding: base64")
        {
            in_b64 = true;
            chunk.clear();
            continue;
        }
        if in_b64 {
            if line.starts_with("--") {
                out.push_str(&String::from_utf8_lossy(&b64_decode(&chunk)));
                in_b64 = false;
            } else {
                chunk.push_str(line.trim());
            }
        }
    }
    out
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn g1_requiretls_is_offered_only_after_starttls() {
    let relay = Relay::start("").unwrap();
    let tok = token("g1");
    let rcpt = format!("{tok}@noaddr.example.test");
    // Before STARTTLS: not offered, and refused in MAIL FROM.
    let before = block_on(async {
        let mut c = SmtpClient::connect(relay.listen, None).await?;
        let ehlo = c.ehlo("client.lan.test").await?;
        let mail = c.command("MAIL FROM:<sender@lan.test> REQUIRETLS").await?;
        c.quit().await;
        anyhow::Ok((ehlo, mail))
    })
    .unwrap();
    assert!(
        !Submission::offers(&before.0, "REQUIRETLS"),
        "{:?}",
        before.0
    );
    assert!(Submission::offers(&before.0, "STARTTLS"), "{:?}", before.0);
    assert_eq!(
        before.1.code / 100,
        5,
        "REQUIRETLS accepted without TLS: {}",
        before.1
    );
    // After STARTTLS: offered and accepted.
    let msg = build_message("sender@lan.test", &[&rcpt], &tok, "hello");
    let s = submit_starttls(
        relay.listen,
        "sender@lan.test",
        "REQUIRETLS",
        &[&rcpt],
        &msg,
    )
    .unwrap();
    assert!(
        !Submission::offers(&s.ehlo_plain, "REQUIRETLS"),
        "{:?}",
        s.ehlo_plain
    );
    assert!(
        Submission::offers(&s.ehlo_tls, "REQUIRETLS"),
        "{:?}",
        s.ehlo_tls
    );
    assert!(s.tx.accepted(), "{:?}", s.tx);
    let id = s.tx.queue_id().unwrap();
    let show = relay.queue_show(&id).unwrap();
    assert!(
        show.lines().any(|l| l.trim() == "REQUIRETLS:   yes"),
        "{show}"
    );
}

#[test]
fn g2_requiretls_is_passed_on_to_a_verified_server_that_offers_it() {
    let peer = Peer::start(true).expect("REQUIRETLS peer");
    let relay = Relay::start("").unwrap();
    let tok = token("g2-ok");
    let rcpt = format!("{tok}@requiretls.example.test");
    let msg = build_message("sender@lan.test", &[&rcpt], &tok, "confidential body");
    submit(&relay, "sender@lan.test", &rcpt, &msg);
    let t = peer
        .wait_for(&tok, ARRIVE)
        .unwrap_or_else(|e| panic!("{e:#}\nrelay log:\n{}", relay.log_tail(40)));
    assert!(t.tls, "delivered without TLS: {t:?}");
    assert!(
        t.requiretls(),
        "REQUIRETLS not passed on: MAIL FROM:{}",
        t.mail_from
    );
    assert!(
        t.mail_from.starts_with("<sender@lan.test>"),
        "MAIL FROM:{}",
        t.mail_from
    );
    assert_eq!(t.rcpts, vec![rcpt]);
    assert!(t.data_text().contains("confidential body"));
    // RFC 8689 section 4.2.1: never a MAIL FROM with REQUIRETLS outside TLS.
    assert!(
        !peer
            .commands()
            .iter()
            .any(|(tls, c)| !tls && c.to_ascii_uppercase().starts_with("MAIL")),
        "MAIL before STARTTLS: {:?}",
        peer.commands()
    );
}

#[test]
fn g2_server_without_requiretls_gets_nothing_and_sender_gets_5_7_30() {
    let relay = Relay::start("").unwrap();
    let tok = token("g2-postfix");
    let sender = format!("sender-{tok}@lan.test");
    let rcpt = format!("{tok}@norequiretls.example.test");
    let secret = format!("BODY-MUST-NOT-COME-BACK-{tok}");
    let msg = build_message(&sender, &[&rcpt], &tok, &secret);
    submit(&relay, &sender, &rcpt, &msg);
    let dsn = wait_dsn(&sender);
    // mx-ca is verified (DNSSEC-secure MX, PKIX) but does not offer REQUIRETLS.
    assert!(
        Infra::get().mailbox(Mx::Ca).containing(&secret).is_empty(),
        "delivered to a server without REQUIRETLS"
    );
    assert!(dsn.raw.contains("5.7.30"), "no 5.7.30 in DSN:\n{}", dsn.raw);
    assert!(
        dsn.raw.to_lowercase().contains("action: failed"),
        "{}",
        dsn.raw
    );
    assert!(dsn.raw.contains(&rcpt), "{}", dsn.raw);
    // G3 / RFC 8689 section 5: headers only, never the body.
    let text = readable(&dsn);
    assert!(!text.contains(&secret), "body returned:\n{text}");
    assert!(text.contains(&tok), "original headers missing:\n{text}");
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert!(text.contains("REQUIRETLS"), "{text}");
}

#[test]
fn g2_peer_not_offering_requiretls_never_sees_mail_from() {
    let peer = Peer::start(false).expect("peer without REQUIRETLS");
    let relay = Relay::start("").unwrap();
    let tok = token("g2-peer-no");
    let sender = format!("sender-{tok}@lan.test");
    let rcpt = format!("{tok}@requiretls.example.test");
    let msg = build_message(&sender, &[&rcpt], &tok, "hello");
    submit(&relay, &sender, &rcpt, &msg);
    let dsn = wait_dsn(&sender);
    assert!(dsn.raw.contains("5.7.30"), "no 5.7.30 in DSN:\n{}", dsn.raw);
    // The relay looked at the EHLO after STARTTLS and left without MAIL FROM.
    let commands = peer.commands();
    assert!(
        commands
            .iter()
            .any(|(tls, c)| *tls && c.to_ascii_uppercase().starts_with("EHLO")),
        "the relay never reached the peer: {commands:?}"
    );
    assert!(
        !commands
            .iter()
            .any(|(_, c)| c.to_ascii_uppercase().starts_with("MAIL")),
        "MAIL FROM sent to a server without REQUIRETLS: {commands:?}"
    );
    assert!(peer.transactions().is_empty());
}

#[test]
fn g2_without_requiretls_the_peer_gets_a_plain_mail_from() {
    let peer = Peer::start(true).expect("REQUIRETLS peer");
    let relay = Relay::start("").unwrap();
    let tok = token("g2-plain");
    let rcpt = format!("{tok}@requiretls.example.test");
    relay.swaks("sender@lan.test", &rcpt, &tok).unwrap();
    let t = peer
        .wait_for(&tok, ARRIVE)
        .unwrap_or_else(|e| panic!("{e:#}\nrelay log:\n{}", relay.log_tail(40)));
    assert!(
        !t.requiretls(),
        "REQUIRETLS added: MAIL FROM:{}",
        t.mail_from
    );
    assert!(t.tls);
    // And a Postfix MX without REQUIRETLS still gets ordinary mail.
    let tok2 = token("g2-plain-postfix");
    relay
        .swaks(
            "sender@lan.test",
            &format!("{tok2}@norequiretls.example.test"),
            &tok2,
        )
        .unwrap();
    Infra::get()
        .mailbox(Mx::Ca)
        .wait_for_token(&tok2, ARRIVE)
        .expect("delivered");
}
