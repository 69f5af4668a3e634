//! swaks -> qrelay -> Postfix MX, per transport level, MX selection and DSNs.

use std::time::Duration;

use qrelay_tests::relay::assert_never_arrives;
use qrelay_tests::{build_message, level, send_mail, token, Infra, Message, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);
const HELD: Duration = Duration::from_secs(60);

fn assert_tls(m: &Message, mx: Mx) {
    let r = m
        .postfix_received()
        .unwrap_or_else(|| panic!("no Postfix Received header in {}", m.raw));
    assert!(r.contains(mx.hostname()), "{r}");
    assert!(r.contains("using TLSv1."), "not received over TLS: {r}");
    assert!(r.contains("with ESMTPS"), "{r}");
}

fn assert_plaintext(m: &Message, mx: Mx) {
    let r = m
        .postfix_received()
        .unwrap_or_else(|| panic!("no Postfix Received header in {}", m.raw));
    assert!(r.contains(mx.hostname()), "{r}");
    assert!(!r.contains("using TLS"), "{r}");
}

/// Wait for the DSN sent to `sender` (a unique address at lan.test).
fn wait_dsn(sender: &str, timeout: Duration) -> Message {
    let infra = Infra::get();
    let mut found = infra
        .mailbox(Mx::Lan)
        .wait_for(
            |m| {
                m.header_all("To").iter().any(|t| t.contains(sender))
                    || m.header("Delivered-To").is_some_and(|t| t.contains(sender))
            },
            timeout,
        )
        .unwrap_or_else(|e| panic!("no DSN for {sender}: {e:#}"));
    let m = found.remove(0);
    let ct = m.header("Content-Type").unwrap_or_default().to_lowercase();
    assert!(
        ct.contains("multipart/report"),
        "DSN is not multipart/report: {ct}\n{}",
        m.raw
    );
    assert!(ct.contains("delivery-status"), "{ct}");
    m
}

// (a) -------------------------------------------------------------------------

#[test]
fn trusted_to_ca_signed_mx_arrives_over_tls() {
    let relay = Relay::start(&level("trusted")).unwrap();
    let m = relay.deliver_token("trusted-ca", "ca.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
    assert!(m
        .header("Delivered-To")
        .zip(m.header("Subject"))
        .is_some_and(|(to, tok)| to.contains(&format!("{tok}@ca.example.test"))));
}

// (b) -------------------------------------------------------------------------

#[test]
fn encrypted_to_self_signed_mx_arrives_over_tls() {
    let relay = Relay::start(&level("encrypted")).unwrap();
    let m = relay.deliver_token("enc-self", "self.example.test", Mx::SelfSigned, ARRIVE);
    assert_tls(&m, Mx::SelfSigned);
}

#[test]
fn encrypted_to_mx_without_starttls_is_held() {
    let infra = Infra::get();
    let relay = Relay::start(&level("encrypted")).unwrap();
    let tok = token("enc-plain");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@plain.example.test"),
            &tok,
        )
        .unwrap();
    let out = relay.wait_pending_with_reason(&id, &["tls"], HELD).unwrap();
    println!("queue state:\n{out}");
    assert_never_arrives(&infra.mailbox(Mx::Plain), &tok, Duration::from_secs(3));
    let list = relay.queue_list().unwrap();
    assert!(list.contains(&id), "message left the queue:\n{list}");
    assert!(
        list.contains("TLS"),
        "`queue list` does not show the TLS reason:\n{list}"
    );
}

#[test]
fn may_to_mx_without_starttls_arrives_in_plaintext() {
    let relay = Relay::start(&level("may")).unwrap();
    let m = relay.deliver_token("may-plain", "plain.example.test", Mx::Plain, ARRIVE);
    assert_plaintext(&m, Mx::Plain);
}

#[test]
fn may_uses_tls_when_offered() {
    let relay = Relay::start(&level("may")).unwrap();
    let m = relay.deliver_token("may-self", "self.example.test", Mx::SelfSigned, ARRIVE);
    assert_tls(&m, Mx::SelfSigned);
}

// (c) -------------------------------------------------------------------------

#[test]
fn trusted_to_self_signed_mx_is_held() {
    let infra = Infra::get();
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("trusted-self");
    let id = relay
        .swaks("sender@lan.test", &format!("{tok}@self.example.test"), &tok)
        .unwrap();
    let out = relay
        .wait_pending_with_reason(&id, &["certificate", "cert", "tls", "trust"], HELD)
        .unwrap();
    println!("queue state:\n{out}");
    assert_never_arrives(&infra.mailbox(Mx::SelfSigned), &tok, Duration::from_secs(3));
    assert!(
        relay.queue_list().unwrap().contains(&id),
        "message left the queue"
    );
}

#[test]
fn trusted_to_mx_without_starttls_is_held() {
    let infra = Infra::get();
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("trusted-plain");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@plain.example.test"),
            &tok,
        )
        .unwrap();
    relay.wait_pending_with_reason(&id, &["tls"], HELD).unwrap();
    assert_never_arrives(&infra.mailbox(Mx::Plain), &tok, Duration::from_secs(2));
}

// (d) -------------------------------------------------------------------------

#[test]
fn preferred_mx_down_backup_mx_used() {
    let relay = Relay::start(&level("trusted")).unwrap();
    let m = relay.deliver_token("backup", "backup.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
}

#[test]
fn implicit_mx_from_address_record() {
    let relay = Relay::start(&level("encrypted")).unwrap();
    let m = relay.deliver_token("implicit", "implicit.example.test", Mx::Ca, ARRIVE);
    assert_tls(&m, Mx::Ca);
}

#[test]
fn null_mx_bounces_quickly_with_5_1_10() {
    let relay = Relay::start(&level("encrypted")).unwrap();
    let tok = token("nullmx");
    let sender = format!("sender-{tok}@lan.test");
    let rcpt = format!("{tok}@nullmx.example.test");
    relay.swaks(&sender, &rcpt, &tok).unwrap();
    let dsn = wait_dsn(&sender, Duration::from_secs(30));
    assert!(dsn.raw.contains("5.1.10"), "no 5.1.10 in DSN:\n{}", dsn.raw);
    assert!(
        dsn.raw.contains(&rcpt),
        "DSN does not name {rcpt}:\n{}",
        dsn.raw
    );
    assert!(
        dsn.raw.to_lowercase().contains("action: failed"),
        "{}",
        dsn.raw
    );
}

#[test]
fn recipient_550_bounces_with_the_mx_reply() {
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("r550");
    let sender = format!("sender-{tok}@lan.test");
    relay
        .swaks(&sender, "reject550@ca.example.test", &tok)
        .unwrap();
    let dsn = wait_dsn(&sender, Duration::from_secs(30));
    assert!(dsn.raw.contains("reject550@ca.example.test"), "{}", dsn.raw);
    assert!(dsn.raw.contains("5.1.1"), "{}", dsn.raw);
    assert!(
        dsn.raw.contains("no such user"),
        "DSN does not quote Postfix's reply:\n{}",
        dsn.raw
    );
    assert!(dsn.raw.contains("mx-ca.example.test"), "{}", dsn.raw);
}

#[test]
fn recipient_450_is_retried_and_stays_pending() {
    let infra = Infra::get();
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("r450");
    let sender = format!("sender-{tok}@lan.test");
    let id = relay
        .swaks(&sender, "defer450@ca.example.test", &tok)
        .unwrap();
    relay
        .wait_pending_with_reason(&id, &["450", "try later"], HELD)
        .unwrap();
    // With retry_schedule = ["1s"] Postfix must see several attempts.
    let log = infra.maillog_tail(Mx::Ca.name(), 100_000);
    let start = std::time::Instant::now();
    loop {
        let attempts = infra
            .maillog_tail(Mx::Ca.name(), 100_000)
            .lines()
            .filter(|l| l.contains(&format!("from=<{sender}>")) && l.contains("450 4.2.0"))
            .count();
        if attempts >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Postfix saw {attempts} attempts for the 450 recipient; expected retries\n{}",
            &log[log.len().saturating_sub(2000)..]
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(relay.queue_list().unwrap().contains(&id));
    // No DSN for a temporary failure (delay warnings are off).
    assert!(infra.mailbox(Mx::Lan).containing(&sender).is_empty());
}

#[test]
fn mixed_recipients_are_handled_per_recipient() {
    let infra = Infra::get();
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("mixed");
    let sender = format!("sender-{tok}@lan.test");
    let ok = format!("ok-{tok}@ca.example.test");
    let rcpts = [
        ok.as_str(),
        "reject550@ca.example.test",
        "defer450@ca.example.test",
    ];
    let msg = build_message(&sender, &rcpts, &tok, "one message, three fates");
    let t = send_mail(relay.listen, &sender, &rcpts, &msg).unwrap();
    assert!(t.accepted(), "{t:?}");
    let id = t.queue_id().expect("queue id");

    let m = infra.mailbox(Mx::Ca).wait_for_token(&tok, ARRIVE).unwrap();
    assert_tls(&m, Mx::Ca);
    let copies = infra.mailbox(Mx::Ca).containing(&tok);
    assert_eq!(
        copies.len(),
        1,
        "the good recipient got {} copies",
        copies.len()
    );

    let dsn = wait_dsn(&sender, Duration::from_secs(30));
    let report = dsn.raw.to_lowercase();
    assert!(
        report.contains("final-recipient: rfc822; reject550@ca.example.test")
            || report.contains("final-recipient: rfc822;reject550@ca.example.test"),
        "{}",
        dsn.raw
    );
    assert!(dsn.raw.contains("no such user"), "{}", dsn.raw);
    assert!(
        !report.contains(&format!("final-recipient: rfc822; {}", ok.to_lowercase())),
        "the delivered recipient is reported as failed:\n{}",
        dsn.raw
    );

    relay
        .wait_pending_with_reason(&id, &["450", "try later"], HELD)
        .unwrap();
}

#[test]
fn mx_host_without_address_is_not_delivered_and_not_lost() {
    let infra = Infra::get();
    let relay = Relay::start(&level("encrypted")).unwrap();
    let tok = token("noaddr");
    let sender = format!("sender-{tok}@lan.test");
    let id = relay
        .swaks(&sender, &format!("{tok}@noaddr.example.test"), &tok)
        .unwrap();
    // Either held with a reason or bounced with a DSN: never silently dropped.
    let start = std::time::Instant::now();
    loop {
        let pending = relay
            .queue_show(&id)
            .map(|s| s.to_lowercase())
            .unwrap_or_default();
        let held = relay.queue_list().unwrap_or_default().contains(&id)
            && (pending.contains("address") || pending.contains("mx-noaddr"));
        let bounced = !infra.mailbox(Mx::Lan).containing(&sender).is_empty();
        if held || bounced {
            println!("held: {held}, bounced: {bounced}");
            break;
        }
        assert!(
            start.elapsed() < HELD,
            "neither pending with a reason nor bounced; relay log:\n{}",
            relay.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn inbound_starttls_from_the_lan_client() {
    let infra = Infra::get();
    let relay = Relay::start(&level("trusted")).unwrap();
    let tok = token("inbound-tls");
    let t = qrelay_tests::swaks(
        relay.listen,
        "sender@lan.test",
        &format!("{tok}@ca.example.test"),
        &tok,
        &["--tls"],
    )
    .unwrap();
    assert!(t.contains("STARTTLS"), "{t}");
    let m = infra.mailbox(Mx::Ca).wait_for_token(&tok, ARRIVE).unwrap();
    assert_tls(&m, Mx::Ca);
    let ours = m
        .received()
        .into_iter()
        .find(|r| r.contains("by qrelay.lan.test"))
        .unwrap_or_else(|| panic!("no Received header by qrelay: {:#?}", m.received()));
    println!("qrelay's Received: {ours}");
    assert!(ours.contains("TLS"), "inbound TLS not recorded: {ours}");
}

#[test]
fn held_message_expires_with_a_dsn_naming_the_tls_reason() {
    let relay = Relay::start(
        "[class.normal]\nlevel = \"encrypted\"\n[delivery]\nqueue_lifetime = \"4s\"\n",
    )
    .unwrap();
    let tok = token("expire");
    let sender = format!("sender-{tok}@lan.test");
    let rcpt = format!("{tok}@plain.example.test");
    let id = relay.swaks(&sender, &rcpt, &tok).unwrap();
    let dsn = wait_dsn(&sender, Duration::from_secs(40));
    let lower = dsn.raw.to_lowercase();
    assert!(lower.contains("action: failed"), "{}", dsn.raw);
    assert!(dsn.raw.contains(&rcpt), "{}", dsn.raw);
    assert!(
        lower.contains("tls"),
        "the DSN does not say why:\n{}",
        dsn.raw
    );
    relay
        .wait_queue(|l| !l.contains(&id), Duration::from_secs(10))
        .unwrap();
}

#[test]
fn delay_warning_dsn_while_held() {
    let relay =
        Relay::start("[class.normal]\nlevel = \"encrypted\"\n[delivery]\ndelay_warning = \"2s\"\n")
            .unwrap();
    let tok = token("delay");
    let sender = format!("sender-{tok}@lan.test");
    let rcpt = format!("{tok}@plain.example.test");
    let id = relay.swaks(&sender, &rcpt, &tok).unwrap();
    let dsn = wait_dsn(&sender, Duration::from_secs(30));
    let lower = dsn.raw.to_lowercase();
    assert!(lower.contains("action: delayed"), "{}", dsn.raw);
    assert!(dsn.raw.contains(&rcpt), "{}", dsn.raw);
    // Still queued after the warning.
    assert!(relay.queue_list().unwrap().contains(&id));
}
