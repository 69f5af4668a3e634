//! Risk classes (issue 4, standards.md A1, A3): every source sets the class, the
//! highest wins, each reason is recorded (`qrelay queue show`, the evidence export),
//! the subject tag never reaches the recipient, and a `high` message is never sent
//! to a server that reaches only `encrypted`.
//!
//! Messages whose class is only to be read are sent to `noaddr.example.test`
//! (its MX host has no address): they stay in the queue, so `queue show` can be
//! asked, and nothing is delivered anywhere.

use std::time::{Duration, Instant};

use qrelay_tests::json::Json;
use qrelay_tests::peer::submit_starttls;
use qrelay_tests::relay::assert_never_arrives;
use qrelay_tests::{send_mail, swaks, token, Infra, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);

/// Classify rules used by the tests below, on top of the built-in defaults (the
/// subject tags `[vertraulich]`, `[confidential]`, `[secure]`; Sensitivity
/// `private` and `company-confidential`; REQUIRETLS → high).
const RULES: &str = r#"
[classify.senders]
"legal.lan.test" = "secret"
"newsletter@lan.test" = "none"

[classify.purview_labels]
"Streng vertraulich" = "secret"
"#;

/// Wait until `queue show ID` lists the class, and return its output.
fn show_class(relay: &Relay, id: &str) -> String {
    let start = Instant::now();
    loop {
        let show = relay.queue_show(id).unwrap_or_else(|e| format!("{e:#}"));
        if show.contains("Class:") {
            return show;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "queue show {id} never listed a class:\n{show}\nrelay log:\n{}",
            relay.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The class line of `queue show` ("Class:        high" → "high").
fn class_of(show: &str) -> String {
    show.lines()
        .find_map(|l| l.trim().strip_prefix("Class:"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The reasons `queue show` lists under the class.
fn reasons_of(show: &str) -> Vec<String> {
    show.lines()
        .filter_map(|l| l.trim().strip_prefix("because"))
        .map(|r| r.trim().to_string())
        .collect()
}

fn assert_class(relay: &Relay, id: &str, class: &str, reasons: &[&str]) {
    let show = show_class(relay, id);
    assert_eq!(class_of(&show), class, "{show}");
    assert_eq!(reasons_of(&show), reasons, "{show}");
}

/// A message with extra header lines, sent with swaks; returns its queue id.
fn send_with_headers(
    relay: &Relay,
    from: &str,
    to: &str,
    subject: &str,
    headers: &[&str],
) -> String {
    let mut extra: Vec<&str> = Vec::new();
    for h in headers {
        extra.push("--add-header");
        extra.push(h);
    }
    let t = swaks(relay.listen, from, to, subject, &extra)
        .unwrap_or_else(|e| panic!("sending to {to}: {e:#}"));
    qrelay_tests::relay::queued_id(&t).unwrap_or_else(|| panic!("no queue id:\n{t}"))
}

/// The first evidence record (JSON export) of queue id `id`, waiting for it.
fn evidence_of(relay: &Relay, id: &str) -> Json {
    let start = Instant::now();
    loop {
        if let Some(rec) = evidence_records(relay, id).into_iter().next() {
            return rec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no evidence record for {id}; relay log:\n{}",
            relay.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The evidence records (JSON export) of queue id `id`.
fn evidence_records(relay: &Relay, id: &str) -> Vec<Json> {
    let out = relay
        .cli(&[
            "evidence",
            "export",
            "--from",
            "2000-01-01",
            "--to",
            "2999-12-31",
            "--format",
            "json",
        ])
        .expect("run qrelay evidence export");
    assert!(
        out.status.success(),
        "evidence export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = Json::parse(&String::from_utf8_lossy(&out.stdout)).expect("export is JSON");
    json.as_array()
        .iter()
        .filter(|r| r.get("queue_id").as_str() == Some(id))
        .cloned()
        .collect()
}

#[test]
fn a1_default_class_when_nothing_matches() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-default");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@noaddr.example.test"),
            &tok,
        )
        .unwrap();
    assert_class(&relay, &id, "normal", &["default class normal"]);
}

#[test]
fn a1_sender_rule_sets_the_class() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-sender");
    let id = relay
        .swaks(
            "anna@eu.legal.lan.test",
            &format!("{tok}@noaddr.example.test"),
            &tok,
        )
        .unwrap();
    assert_class(
        &relay,
        &id,
        "secret",
        &["sender rule legal.lan.test → secret"],
    );
    // An address rule may also lower the class below the default.
    let id = relay
        .swaks(
            "newsletter@lan.test",
            &format!("{tok}-2@noaddr.example.test"),
            &tok,
        )
        .unwrap();
    assert_class(
        &relay,
        &id,
        "none",
        &["sender rule newsletter@lan.test → none"],
    );
}

#[test]
fn a1_subject_tag_sets_the_class() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-tag");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@noaddr.example.test"),
            &format!("[Confidential] {tok}"),
        )
        .unwrap();
    assert_class(
        &relay,
        &id,
        "high",
        &["subject tag \"[confidential]\" → high"],
    );
}

#[test]
fn a1_sensitivity_header_sets_the_class() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-sens");
    let id = send_with_headers(
        &relay,
        "sender@lan.test",
        &format!("{tok}@noaddr.example.test"),
        &tok,
        &["Sensitivity: Company-Confidential"],
    );
    assert_class(
        &relay,
        &id,
        "high",
        &["Sensitivity: Company-Confidential → high"],
    );
}

#[test]
fn a1_purview_label_sets_the_class() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-purview");
    let g = "3a80e051-487c-40d4-b491-73ad25d997e6";
    let labels = format!(
        "msip_labels: MSIP_Label_{g}_Enabled=true; MSIP_Label_{g}_SetDate=2024-05-02T08:00:00Z; \
         MSIP_Label_{g}_Method=Privileged; MSIP_Label_{g}_Name=Streng vertraulich; \
         MSIP_Label_{g}_SiteId=9f2e0000-0000-0000-0000-000000000000; MSIP_Label_{g}_ContentBits=0"
    );
    let id = send_with_headers(
        &relay,
        "sender@lan.test",
        &format!("{tok}@noaddr.example.test"),
        &tok,
        &[&labels],
    );
    assert_class(
        &relay,
        &id,
        "secret",
        &["Purview label \"Streng vertraulich\" → secret"],
    );
    // A label that is not enabled does not count.
    let disabled = labels.replace("_Enabled=true", "_Enabled=false");
    let id = send_with_headers(
        &relay,
        "sender@lan.test",
        &format!("{tok}-off@noaddr.example.test"),
        &tok,
        &[&disabled],
    );
    assert_class(&relay, &id, "normal", &["default class normal"]);
}

#[test]
fn a1_requiretls_sets_the_class() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-requiretls");
    let rcpt = format!("{tok}@noaddr.example.test");
    let msg = qrelay_tests::build_message("sender@lan.test", &[&rcpt], &tok, "hello");
    let s = submit_starttls(
        relay.listen,
        "sender@lan.test",
        "REQUIRETLS",
        &[&rcpt],
        &msg,
    )
    .expect("submission");
    let id =
        s.tx.queue_id()
            .unwrap_or_else(|| panic!("REQUIRETLS submission refused: {:?}", s.tx));
    assert_class(
        &relay,
        &id,
        "high",
        &["REQUIRETLS requested by the client → high"],
    );
}

#[test]
fn a1_highest_class_wins_and_every_reason_is_kept() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("cls-highest");
    let id = send_with_headers(
        &relay,
        "boss@legal.lan.test",
        &format!("{tok}@noaddr.example.test"),
        &format!("[secure] {tok}"),
        &["Sensitivity: Private"],
    );
    assert_class(
        &relay,
        &id,
        "secret",
        &[
            "sender rule legal.lan.test → secret",
            "subject tag \"[secure]\" → high",
            "Sensitivity: Private → high",
        ],
    );
}

#[test]
fn a1_subject_tag_is_removed_before_delivery() {
    let relay = Relay::start(RULES).unwrap();
    let mailbox = Infra::get().mailbox(Mx::Ca);
    // A plain tag (ca.example.test reaches `verified`: PKIX on a DNSSEC-secure MX).
    let tok = token("tag-plain");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@ca.example.test"),
            &format!("[vertraulich] Gehaltsliste {tok}"),
        )
        .unwrap();
    let m = mailbox.wait_for_token(&tok, ARRIVE).expect("delivered");
    let subject = m.header("Subject").unwrap_or_default();
    assert!(!subject.to_lowercase().contains("vertraulich"), "{subject}");
    assert!(
        subject.contains(&format!("Gehaltsliste {tok}")),
        "{subject}"
    );
    assert!(!m.raw.contains("[vertraulich]"), "{}", m.raw);
    // The evidence of the delivery keeps the class and its reason.
    let rec = evidence_of(&relay, &id);
    assert_eq!(rec.get("class").as_str(), Some("high"), "{rec:?}");
    let reasons: Vec<&str> = rec
        .get("class_reasons")
        .as_array()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert_eq!(reasons, ["subject tag \"[vertraulich]\" → high"], "{rec:?}");

    // A folded Subject with the tag on the continuation line, and a tag inside an
    // RFC 2047 encoded word ("[secure] Gehälter <tok>").
    let tok2 = token("tag-folded");
    let rcpt = format!("{tok2}@ca.example.test");
    let msg = format!(
        "From: <sender@lan.test>\r\nTo: {rcpt}\r\nSubject: Quartalszahlen {tok2}\r\n [confidential] Entwurf\r\n\
         Message-ID: <{tok2}@lan.test>\r\nX-Test-Token: {tok2}\r\n\r\nbody\r\n"
    );
    let t = send_mail(relay.listen, "sender@lan.test", &[&rcpt], &msg).unwrap();
    assert!(t.accepted(), "{t:?}");
    let m = mailbox.wait_for_token(&tok2, ARRIVE).expect("delivered");
    let raw_subject = m.raw.split("\n\n").next().unwrap_or("").to_lowercase();
    assert!(!raw_subject.contains("[confidential]"), "{}", m.raw);
    assert!(m.raw.contains("Entwurf"), "{}", m.raw);

    let tok3 = token("tag-encoded");
    let rcpt = format!("{tok3}@ca.example.test");
    let encoded = base64_encode(format!("[secure] Gehälter {tok3}").as_bytes());
    let msg = format!(
        "From: <sender@lan.test>\r\nTo: {rcpt}\r\nSubject: =?UTF-8?B?{encoded}?=\r\n\
         Message-ID: <{tok3}@lan.test>\r\nX-Test-Token: {tok3}\r\n\r\nbody\r\n"
    );
    let t = send_mail(relay.listen, "sender@lan.test", &[&rcpt], &msg).unwrap();
    assert!(t.accepted(), "{t:?}");
    let m = mailbox.wait_for_token(&tok3, ARRIVE).expect("delivered");
    let subject = m.header("Subject").unwrap_or_default();
    assert!(subject.starts_with("=?UTF-8?B?"), "re-encoded: {subject}");
    assert!(!subject.contains(&encoded), "tag still there: {subject}");
}

#[test]
fn a3_high_message_to_encrypted_only_domain_is_deferred() {
    let relay = Relay::start(RULES).unwrap();
    let tok = token("high-self");
    let id = relay
        .swaks(
            "sender@lan.test",
            &format!("{tok}@self.example.test"),
            &format!("[secure] {tok}"),
        )
        .unwrap();
    // self.example.test has a self-signed MX: `encrypted` at best, never `verified`.
    assert_never_arrives(
        &Infra::get().mailbox(Mx::SelfSigned),
        &tok,
        Duration::from_secs(8),
    );
    let show = show_class(&relay, &id);
    assert_eq!(class_of(&show), "high", "{show}");
    assert!(
        relay.queue_list().unwrap().contains(&id),
        "no longer queued"
    );
    let state = show
        .lines()
        .find_map(|l| l.trim().strip_prefix("State:"))
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        state.starts_with("pending"),
        "not pending within the grace period:\n{show}"
    );
}

#[test]
fn a1_recipient_domain_rule_raises_the_class() {
    let relay = Relay::start(&format!(
        "{RULES}\n[classify.recipient_domains]\n\"self.example.test\" = \"high\"\n"
    ))
    .unwrap();
    let tok = token("rcpt-rule");
    let id = relay
        .swaks("sender@lan.test", &format!("{tok}@self.example.test"), &tok)
        .unwrap();
    assert_never_arrives(
        &Infra::get().mailbox(Mx::SelfSigned),
        &tok,
        Duration::from_secs(8),
    );
    assert!(
        relay.queue_list().unwrap().contains(&id),
        "no longer queued"
    );
    // The message's own class stays normal; the rule applies per recipient and is
    // recorded with the attempt.
    let show = show_class(&relay, &id);
    assert_eq!(class_of(&show), "normal", "{show}");
    let rec = evidence_of(&relay, &id);
    assert_eq!(rec.get("class").as_str(), Some("high"), "{rec:?}");
    let reasons: Vec<&str> = rec
        .get("class_reasons")
        .as_array()
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert!(
        reasons.contains(&"recipient domain rule self.example.test → high"),
        "{rec:?}"
    );
    // A message to another domain is not affected: it goes out at `encrypted`.
    let tok2 = token("rcpt-rule-other");
    relay
        .swaks("sender@lan.test", &format!("{tok2}@ca.example.test"), &tok2)
        .unwrap();
    Infra::get()
        .mailbox(Mx::Ca)
        .wait_for_token(&tok2, ARRIVE)
        .expect("delivered");
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
