//! When a recipient's server cannot give a message its level (issue 4, standards.md
//! A4): the message is retried during its class's grace period, then bounced or
//! held, never sent weaker; the sender is told in German and English what is wrong
//! with the server. Exceptions lower the level only while in force, never for
//! `secret`, and every use is in the evidence log.
//!
//! The class comes from a sender rule (`boss@lan.test` → high, `lawyer@lan.test` →
//! secret); notices go back to the sender's domain `lan.test`, whose MX is mx-lan.

use std::time::{Duration, Instant};

use qrelay_tests::json::Json;
use qrelay_tests::relay::assert_never_arrives;
use qrelay_tests::{swaks, token, Infra, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);

const SENDERS: &str = r#"
[classify.senders]
"boss@lan.test" = "high"
"lawyer@lan.test" = "secret"
"#;

/// Wait until `queue show ID` contains `needle`; returns the output.
fn wait_show(relay: &Relay, id: &str, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let show = relay.queue_show(id).unwrap_or_else(|e| format!("{e:#}"));
        if show.contains(needle) {
            return show;
        }
        assert!(
            start.elapsed() < timeout,
            "queue show {id} never contained {needle:?}:\n{show}\nrelay log:\n{}",
            relay.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The human-readable part of a DSN, decoded (base64 when not ASCII) and with
/// every run of white space made one space, so wrapped sentences can be searched.
fn notice_text(body: &str) -> String {
    use base64::Engine;
    let mut text = body.to_string();
    if let Some(at) = body.find("Content-Transfer-Encoding: base64") {
        let rest = &body[at..];
        let start = rest
            .find("\r\n\r\n")
            .map(|p| p + 4)
            .or_else(|| rest.find("\n\n").map(|p| p + 2));
        if let Some(start) = start {
            let b64: String = rest[start..]
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .collect();
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                text = format!("{}\n{body}", String::from_utf8_lossy(&bytes));
            }
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The evidence records of one recipient, from `qrelay evidence export`.
fn evidence_of(relay: &Relay, rcpt: &str) -> Vec<Json> {
    let out = relay
        .cli(&[
            "evidence",
            "export",
            "--from",
            "2020-01-01",
            "--to",
            "2099-12-31",
            "--format",
            "json",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = out.find('[').unwrap_or(0);
    let all = Json::parse(&out[start..]).unwrap();
    all.as_array()
        .iter()
        .filter(|r| r.get("recipient").as_str() == Some(rcpt))
        .cloned()
        .collect()
}

#[test]
fn a4_high_message_is_held_after_the_grace_period_and_the_sender_told_why() {
    let relay = Relay::start(&format!(
        "{SENDERS}\n[class.high]\ngrace = \"3s\"\naction = \"hold\"\n"
    ))
    .unwrap();
    let tok = token("held");
    // mx-self has a self-signed certificate: encrypted, never verified.
    let id = relay
        .swaks("boss@lan.test", &format!("{tok}@self.example.test"), &tok)
        .unwrap();
    let show = wait_show(&relay, &id, "State:          held", ARRIVE);
    assert!(show.contains("Class:        high"), "{show}");
    assert!(show.contains("CertificateNotTrusted"), "{show}");

    // The sender hears about it once, in German and English.
    let notice = Infra::get()
        .mailbox(Mx::Lan)
        .wait_for_token(&tok, ARRIVE)
        .unwrap();
    let body = notice_text(notice.body());
    for needle in [
        "--- Deutsch ---",
        "--- English ---",
        "mx-self.example.test",
        "Action: delayed",
    ] {
        assert!(body.contains(needle), "{needle:?} missing in:\n{body}");
    }
    assert!(relay.queue_list().unwrap().contains(&id));

    // Never sent with the weaker transport, also not after a release: the server
    // is still what it was, so the message is held again.
    let out = relay.cli_ok(&["queue", "release", &id]).unwrap();
    assert!(out.contains("released"), "{out}");
    assert_never_arrives(
        &Infra::get().mailbox(Mx::SelfSigned),
        &tok,
        Duration::from_secs(5),
    );
    wait_show(&relay, &id, "State:          held", ARRIVE);
    // Releasing a message with nothing held says so.
    let other = relay
        .cli(&["queue", "release", "0123456789ABCDEF"])
        .unwrap();
    assert!(!other.status.success());
    relay.cli_ok(&["queue", "delete", &id]).unwrap();
}

#[test]
fn a4_bounce_after_the_grace_period_explains_the_expired_certificate() {
    let relay = Relay::start(&format!(
        "{SENDERS}\n[class.high]\ngrace = \"2s\"\naction = \"bounce\"\n"
    ))
    .unwrap();
    let tok = token("expired");
    let id = relay
        .swaks(
            "boss@lan.test",
            &format!("{tok}@expired.example.test"),
            &tok,
        )
        .unwrap();
    let dsn = Infra::get()
        .mailbox(Mx::Lan)
        .wait_for_token(&tok, ARRIVE)
        .unwrap();
    let body = notice_text(dsn.body());
    for needle in [
        "--- Deutsch ---",
        "--- English ---",
        // The test CA's expired certificate ended on 2021-01-01.
        "am 01.01.2021 abgelaufen",
        "expired on 2021-01-01",
        "Action: failed",
        "Status: 5.7.",
    ] {
        assert!(body.contains(needle), "{needle:?} missing in:\n{body}");
    }
    relay
        .wait_queue(|l| !l.contains(&id), Duration::from_secs(30))
        .unwrap();
    assert_never_arrives(
        &Infra::get().mailbox(Mx::Expired),
        &tok,
        Duration::from_secs(2),
    );
}

fn exception(id: &str, domain: &str, expires: &str) -> String {
    format!(
        r#"
[[exception]]
id = "{id}"
domain = "{domain}"
level = "encrypted"
reason = "self-signed certificate, partner promised a fix (ticket 4711)"
approver = "Data protection officer"
created = "2026-01-01T00:00:00Z"
expires = "{expires}"
"#
    )
}

#[test]
fn a4_exception_in_force_lowers_the_level_and_its_use_is_recorded() {
    let relay = Relay::start(&format!(
        "{SENDERS}{}",
        exception("self-ok", "self.example.test", "2099-01-01T00:00:00Z")
    ))
    .unwrap();
    let tok = token("exception");
    let rcpt = format!("{tok}@self.example.test");
    relay.swaks("boss@lan.test", &rcpt, &tok).unwrap();
    Infra::get()
        .mailbox(Mx::SelfSigned)
        .wait_for_token(&tok, ARRIVE)
        .unwrap();
    let recs = evidence_of(&relay, &rcpt);
    let delivered = recs
        .iter()
        .find(|r| r.get("outcome").as_str() == Some("delivered"))
        .unwrap_or_else(|| panic!("no delivered record in {recs:?}"));
    assert_eq!(delivered.get("class").as_str(), Some("high"));
    assert_eq!(delivered.get("required_level").as_str(), Some("encrypted"));
    let used = delivered.get("exception").as_str().unwrap_or_default();
    assert!(used.contains("self-ok"), "{used}");
    assert!(used.contains("Data protection officer"), "{used}");
    assert!(relay.log().contains("exception used"));
}

#[test]
fn a4_expired_exception_no_longer_applies() {
    let relay = Relay::start(&format!(
        "{SENDERS}{}",
        exception("self-old", "self.example.test", "2026-02-01T00:00:00Z")
    ))
    .unwrap();
    let tok = token("expired-exception");
    let id = relay
        .swaks("boss@lan.test", &format!("{tok}@self.example.test"), &tok)
        .unwrap();
    relay
        .wait_pending_with_reason(&id, &["level verified requires"], ARRIVE)
        .unwrap();
    assert_never_arrives(
        &Infra::get().mailbox(Mx::SelfSigned),
        &tok,
        Duration::from_secs(3),
    );
    assert!(
        relay.log().contains("exception self-old expired"),
        "the expired exception is named at start"
    );
    relay.cli_ok(&["queue", "delete", &id]).unwrap();
}

#[test]
fn a4_no_exception_lowers_secret() {
    let relay = Relay::start(&format!(
        "{SENDERS}{}",
        exception("self-ok", "self.example.test", "2099-01-01T00:00:00Z")
    ))
    .unwrap();
    let tok = token("secret");
    let id = relay
        .swaks("lawyer@lan.test", &format!("{tok}@self.example.test"), &tok)
        .unwrap();
    let show = relay
        .wait_pending_with_reason(&id, &["level verified requires"], ARRIVE)
        .unwrap();
    assert!(show.contains("Class:        secret"), "{show}");
    assert_never_arrives(
        &Infra::get().mailbox(Mx::SelfSigned),
        &tok,
        Duration::from_secs(3),
    );
    relay.cli_ok(&["queue", "delete", &id]).unwrap();
}

/// Send `to` a message with `TLS-Required: No` from `from`; returns the queue id.
fn send_tls_optional(relay: &Relay, from: &str, to: &str, subject: &str) -> String {
    let t = swaks(
        relay.listen,
        from,
        to,
        subject,
        &["--add-header", "TLS-Required: No"],
    )
    .unwrap();
    qrelay_tests::relay::queued_id(&t).unwrap_or_else(|| panic!("not queued:\n{t}"))
}

#[test]
fn g3_tls_required_no_only_where_allowed_and_never_for_high() {
    // mx-plain offers no STARTTLS: only a message that may go without TLS gets there.
    let plain = Infra::get().mailbox(Mx::Plain);

    // Not allowed by the admin: the header changes nothing (normal = encrypted).
    let relay = Relay::start(SENDERS).unwrap();
    let tok = token("tlsreq-refused");
    let id = send_tls_optional(
        &relay,
        "sender@lan.test",
        &format!("{tok}@plain.example.test"),
        &tok,
    );
    relay
        .wait_pending_with_reason(&id, &["STARTTLS"], ARRIVE)
        .unwrap();
    assert_never_arrives(&plain, &tok, Duration::from_secs(3));
    drop(relay);

    // Allowed: a normal message goes, in plaintext if it must; a high one never.
    let relay = Relay::start(&format!(
        "{SENDERS}\n[classify]\nhonour_tls_required_no = true\n"
    ))
    .unwrap();
    let tok = token("tlsreq-ok");
    send_tls_optional(
        &relay,
        "sender@lan.test",
        &format!("{tok}@plain.example.test"),
        &tok,
    );
    plain.wait_for_token(&tok, ARRIVE).unwrap();
    let show_tok = token("tlsreq-high");
    let id = send_tls_optional(
        &relay,
        "boss@lan.test",
        &format!("{show_tok}@plain.example.test"),
        &show_tok,
    );
    relay
        .wait_pending_with_reason(&id, &["STARTTLS"], ARRIVE)
        .unwrap();
    assert_never_arrives(&plain, &show_tok, Duration::from_secs(3));
}
