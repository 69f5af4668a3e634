//! DSNs are parsed back with mail-parser (an independent MIME parser) and checked
//! field by field.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use super::*;
use crate::spool::record::{
    Attempt, ClientInfo, Problem, ProblemKind, QueueId, RcptState, TlsFacts, TransportVerdict,
    RECORD_VERSION,
};

const NOW: u64 = 1_739_440_800;

fn original() -> Vec<u8> {
    b"From: Alice <alice@example.com>\r\n\
To: bob@example.org\r\n\
Subject: Quarterly figures\r\n\
Message-ID: <orig-1@example.com>\r\n\
\r\n\
Hello Bob,\r\n\
the figures are attached.\r\n"
        .to_vec()
}

fn envelope(sender: &str) -> Envelope {
    Envelope {
        record_version: RECORD_VERSION,
        id: QueueId::parse("0123456789ABCDEF").expect("id"),
        received_at: NOW - 3600,
        sender: sender.into(),
        ret: None,
        envid: Some("QQ314159".into()),
        body: BodyType::SevenBit,
        smtputf8: false,
        requiretls: false,
        size: original().len() as u64,
        class: crate::config::RiskClass::Normal,
        class_reasons: Vec::new(),
        tls_optional: false,
        expires_at: None,
        client: ClientInfo::default(),
        message_id: Some("<orig-1@example.com>".into()),
        recipients: Vec::new(),
    }
}

fn failed(addr: &str, reply: &str, status: &str) -> Recipient {
    let mut r = Recipient::new(addr.into(), Some(format!("rfc822;{addr}")), None, NOW);
    r.state = RcptState::Failed;
    r.attempts = 3;
    r.status = Some(status.into());
    r.last = Some(Attempt {
        at: NOW - 60,
        mx: "mx1.example.org".into(),
        ip: "192.0.2.25".into(),
        tls: None,
        verdict: None,
        reply: reply.into(),
        auth: None,
        problem: None,
        requiretls: false,
    });
    r
}

/// The parts of a parsed DSN: (text, report, returned original).
fn parts<'a>(m: &'a Message<'a>) -> Vec<&'a mail_parser::MessagePart<'a>> {
    let root = m.root_part();
    let PartType::Multipart(ids) = &root.body else {
        panic!("root is not multipart: {:?}", root.body);
    };
    ids.iter().map(|&i| &m.parts[i as usize]).collect()
}

fn ctype(p: &mail_parser::MessagePart<'_>) -> String {
    let ct = p.content_type().expect("content type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
}

fn text_of(p: &mail_parser::MessagePart<'_>) -> String {
    match &p.body {
        PartType::Text(t) => t.to_string(),
        PartType::Binary(b) | PartType::InlineBinary(b) => String::from_utf8_lossy(b).into(),
        other => panic!("unexpected body {other:?}"),
    }
}

/// The delivery-status body as blocks of (name, value) fields, continuation lines
/// unfolded.
fn blocks(report: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for block in report.split("\r\n\r\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in block.split("\r\n").filter(|l| !l.is_empty()) {
            if line.starts_with(' ') || line.starts_with('\t') {
                let last = fields.last_mut().expect("continuation after a field");
                last.1.push_str(line);
            } else {
                let (n, v) = line.split_once(':').expect("field has a colon");
                fields.push((n.to_string(), v.trim().to_string()));
            }
        }
        if !fields.is_empty() {
            out.push(fields);
        }
    }
    out
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn failure_dsn_structure() {
    let env = envelope("alice@example.com");
    let r1 = failed(
        "bob@example.org",
        "550 5.1.1 <bob@example.org>: no such user",
        "5.1.1",
    );
    let mut r2 = failed(
        "carol@example.org",
        "the receiving server did not offer STARTTLS",
        "5.7.10",
    );
    r2.orcpt = None;
    if let Some(a) = r2.last.as_mut() {
        a.mx.clear();
    }
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r1, &r2],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("a DSN");
    assert_eq!(dsn.sender, "");
    assert_eq!(dsn.recipient, "alice@example.com");
    assert_eq!(dsn.body, BodyType::SevenBit);
    assert!(!dsn.smtputf8);
    // CRLF everywhere: no bare LF.
    for (i, b) in dsn.content.iter().enumerate() {
        if *b == b'\n' {
            assert!(i > 0 && dsn.content[i - 1] == b'\r', "bare LF at {i}");
        }
    }

    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    let from = m.from().and_then(|f| f.first()).expect("from");
    assert_eq!(from.address(), Some("MAILER-DAEMON@gw.example.com"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    let to = m.to().and_then(|t| t.first()).expect("to");
    assert_eq!(to.address(), Some("alice@example.com"));
    assert!(m.date().is_some());
    assert!(m
        .message_id()
        .is_some_and(|id| id.ends_with("@gw.example.com")));
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(m.in_reply_to().as_text(), Some("orig-1@example.com"));

    let ct = m.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let p = parts(&m);
    assert_eq!(p.len(), 3);
    assert_eq!(ctype(p[0]), "text/plain");
    assert_eq!(ctype(p[1]), "message/delivery-status");
    assert_eq!(ctype(p[2]), "message/rfc822");

    // Part 1: plain language.
    let text = text_of(p[0]);
    assert!(text.contains("could not be delivered"), "{text}");
    assert!(text.contains("Quarterly figures"), "{text}");
    assert!(text.contains("<bob@example.org>"), "{text}");
    assert!(text.contains("mailbox does not exist"), "{text}");
    assert!(
        text.contains("mx1.example.org (192.0.2.25) answered:"),
        "{text}"
    );
    assert!(
        text.contains("        550 5.1.1 <bob@example.org>: no such user"),
        "{text}"
    );
    assert!(text.contains("did not offer the encryption"), "{text}");
    assert!(
        text.contains("Reason: the receiving server did not offer STARTTLS"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.len() <= 76), "{text}");

    // Part 2: the report.
    let b = blocks(&text_of(p[1]));
    assert_eq!(b.len(), 3, "per-message block + 2 recipients: {b:?}");
    assert_eq!(field(&b[0], "Reporting-MTA"), Some("dns; gw.example.com"));
    assert_eq!(field(&b[0], "Original-Envelope-Id"), Some("QQ314159"));
    assert!(field(&b[0], "Arrival-Date").is_some());

    assert_eq!(
        field(&b[1], "Original-Recipient"),
        Some("rfc822; bob@example.org")
    );
    assert_eq!(
        field(&b[1], "Final-Recipient"),
        Some("rfc822; bob@example.org")
    );
    assert_eq!(field(&b[1], "Action"), Some("failed"));
    assert_eq!(field(&b[1], "Status"), Some("5.1.1"));
    assert_eq!(field(&b[1], "Remote-MTA"), Some("dns; mx1.example.org"));
    assert_eq!(
        field(&b[1], "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <bob@example.org>: no such user")
    );
    assert!(field(&b[1], "Last-Attempt-Date").is_some());
    assert!(field(&b[1], "Will-Retry-Until").is_none());

    assert_eq!(field(&b[2], "Original-Recipient"), None);
    assert_eq!(
        field(&b[2], "Final-Recipient"),
        Some("rfc822; carol@example.org")
    );
    assert_eq!(field(&b[2], "Status"), Some("5.7.10"));
    assert_eq!(field(&b[2], "Remote-MTA"), None);
    // Our own reason is not presented as a server reply.
    assert!(field(&b[2], "Diagnostic-Code").is_some_and(|d| d.starts_with("X-Qrelay;")));

    // Part 3: the whole original.
    let inner = p[2]
        .message()
        .expect("message/rfc822 is parsed as a message");
    assert_eq!(inner.subject(), Some("Quarterly figures"));
    assert!(inner
        .body_text(0)
        .is_some_and(|t| t.contains("figures are attached")));
}

#[test]
fn ret_hdrs_and_large_messages_return_headers_only() {
    let r = failed("bob@example.org", "550 5.1.1 no", "5.1.1");
    let check = |env: &Envelope, opts: &DsnOptions| {
        let dsn = build_dsn_with(
            "gw.example.com",
            env,
            &[&r],
            DsnKind::Failure,
            Original::whole(&original()),
            NOW,
            opts,
        )
        .expect("dsn");
        let m = MessageParser::default()
            .parse(&dsn.content)
            .expect("parses");
        let p = parts(&m);
        assert_eq!(ctype(p[2]), "text/rfc822-headers");
        let h = text_of(p[2]);
        assert!(h.contains("Subject: Quarterly figures"), "{h}");
        assert!(!h.contains("figures are attached"), "{h}");
    };
    let mut env = envelope("alice@example.com");
    env.ret = Some(Ret::Headers);
    check(&env, &DsnOptions::default());
    // RET absent but larger than the full-return limit.
    let env = envelope("alice@example.com");
    check(
        &env,
        &DsnOptions {
            max_full_return: 64,
            ..Default::default()
        },
    );
    // RET=FULL within the limit returns everything.
    let mut env = envelope("alice@example.com");
    env.ret = Some(Ret::Full);
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, &original(), NOW).expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(ctype(parts(&m)[2]), "message/rfc822");
}

#[test]
fn never_to_the_null_sender() {
    let env = envelope("");
    let r = failed("bob@example.org", "550 5.1.1 no", "5.1.1");
    for kind in [DsnKind::Failure, DsnKind::Delay, DsnKind::Success] {
        assert!(build_dsn("gw", &env, &[&r], kind, &original(), NOW).is_none());
    }
}

#[test]
fn notify_filters_recipients() {
    let env = envelope("alice@example.com");
    let mut never = failed("never@example.org", "550 5.1.1 no", "5.1.1");
    never.notify = Some(Notify {
        never: true,
        ..Default::default()
    });
    let mut success_only = failed("succ@example.org", "550 5.1.1 no", "5.1.1");
    success_only.notify = Some(Notify {
        success: true,
        ..Default::default()
    });
    let default = failed("default@example.org", "550 5.1.1 no", "5.1.1");

    // NOTIFY=NEVER and NOTIFY=SUCCESS get no failure notice.
    assert!(build_dsn(
        "gw",
        &env,
        &[&never, &success_only],
        DsnKind::Failure,
        &original(),
        NOW
    )
    .is_none());
    // Only the default recipient is reported.
    let dsn = build_dsn(
        "gw",
        &env,
        &[&never, &success_only, &default],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let b = blocks(&text_of(parts(&m)[1]));
    assert_eq!(b.len(), 2);
    assert_eq!(
        field(&b[1], "Final-Recipient"),
        Some("rfc822; default@example.org")
    );

    // Delay: the default (absent NOTIFY) includes delay; SUCCESS-only and NEVER do not.
    let dsn = build_dsn(
        "gw",
        &env,
        &[&never, &success_only, &default],
        DsnKind::Delay,
        &original(),
        NOW,
    )
    .expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(blocks(&text_of(parts(&m)[1])).len(), 2);

    // Success: only an explicit NOTIFY=SUCCESS, and only if relayed to a non-DSN server.
    let mut delivered = success_only.clone();
    delivered.state = RcptState::Delivered;
    delivered.status = Some("2.0.0".into());
    let mut remote = delivered.clone();
    remote.remote_dsn = true;
    let mut plain_default = default.clone();
    plain_default.state = RcptState::Delivered;
    assert!(build_dsn(
        "gw",
        &env,
        &[&plain_default],
        DsnKind::Success,
        &original(),
        NOW
    )
    .is_none());
    assert!(build_dsn("gw", &env, &[&remote], DsnKind::Success, &original(), NOW).is_none());
    assert!(build_dsn("gw", &env, &[&never], DsnKind::Success, &original(), NOW).is_none());
    assert!(build_dsn(
        "gw",
        &env,
        &[&delivered],
        DsnKind::Success,
        &original(),
        NOW
    )
    .is_some());
}

#[test]
fn success_dsn_is_relayed_with_headers_only() {
    let env = envelope("alice@example.com");
    let mut r = failed("bob@example.org", "250 2.0.0 Ok: queued as ABC", "2.0.0");
    r.state = RcptState::Delivered;
    r.notify = Some(Notify {
        success: true,
        failure: true,
        ..Default::default()
    });
    if let Some(a) = r.last.as_mut() {
        a.tls = Some(TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            group: Some("X25519MLKEM768".into()),
            peer_cert_sha256: None,
            peer_spki_sha256: None,
            pkix_verified: true,
            profile: "modern".into(),
            peer_key_type: Some("EC secp256r1".into()),
            peer_key_bits: Some(256),
        });
        a.verdict = Some(TransportVerdict::Trusted);
    }
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Success,
        &original(),
        NOW,
    )
    .expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(m.subject(), Some("Successful Mail Delivery Report"));
    let p = parts(&m);
    let b = blocks(&text_of(p[1]));
    assert_eq!(field(&b[1], "Action"), Some("relayed"));
    assert_eq!(field(&b[1], "Status"), Some("2.0.0"));
    assert_eq!(ctype(p[2]), "text/rfc822-headers");
    let text = text_of(p[0]);
    assert!(text.contains("identity was verified"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
}

#[test]
fn delay_dsn_says_until_when() {
    let env = envelope("alice@example.com");
    let mut r = failed(
        "bob@example.org",
        "451 4.7.1 greylisted, try later",
        "4.7.1",
    );
    r.state = RcptState::Pending;
    r.next_attempt = NOW + 240;
    let until = NOW + 4 * 86_400;
    let dsn = build_dsn_with(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Delay,
        Original::whole(&original()),
        NOW,
        &DsnOptions {
            retry_until: Some(until),
            ..Default::default()
        },
    )
    .expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(m.subject(), Some("Delayed Mail (still being retried)"));
    let p = parts(&m);
    let b = blocks(&text_of(p[1]));
    assert_eq!(field(&b[1], "Action"), Some("delayed"));
    assert_eq!(field(&b[1], "Status"), Some("4.7.1"));
    assert_eq!(
        field(&b[1], "Will-Retry-Until"),
        Some(rfc5322_date(until).as_str())
    );
    let text = text_of(p[0]);
    assert!(
        text.contains("do not need to send the message again"),
        "{text}"
    );
    assert!(text.contains(&rfc5322_date(until)), "{text}");
    // A delay notice returns only the header.
    assert_eq!(ctype(p[2]), "text/rfc822-headers");
}

#[test]
fn unknown_or_mismatched_status_falls_back_to_class_default() {
    let env = envelope("alice@example.com");
    let mut r = failed("bob@example.org", "550 rejected", "bogus");
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, &original(), NOW).expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(
        field(&blocks(&text_of(parts(&m)[1]))[1], "Status"),
        Some("5.0.0")
    );
    r.status = Some("5.1.1".into());
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Delay, &original(), NOW).expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(
        field(&blocks(&text_of(parts(&m)[1]))[1], "Status"),
        Some("4.0.0")
    );
}

#[test]
fn no_header_injection() {
    let mut env = envelope("alice@example.com\r\nBcc: victim@example.net");
    env.envid = Some("id\r\nX-Injected: 1".into());
    let mut r = failed(
        "bob@example.org\r\nX-Evil: 1",
        "550 5.1.1 bad\r\nBcc: victim@example.net\r\n\r\nFinal-Recipient: rfc822; forged@example.net",
        "5.1.1",
    );
    r.orcpt = Some("rfc822;x@example.org\r\nAction: delivered".into());
    let dsn = build_dsn(
        "gw.example.com\r\nX-Host: 1",
        &env,
        &[&r],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert!(m.header("Bcc").is_none());
    assert!(m.header("X-Host").is_none());
    let raw = String::from_utf8_lossy(&dsn.content);
    // No injected field starts a line anywhere in the DSN (the original's content
    // is ours to return, and it contains none of these).
    for bad in [
        "Bcc:",
        "X-Evil:",
        "X-Injected:",
        "X-Host:",
        "Action: delivered",
    ] {
        assert!(
            !raw.split("\r\n").any(|l| l.starts_with(bad)),
            "{bad} injected:\n{raw}"
        );
    }
    let b = blocks(&text_of(parts(&m)[1]));
    assert_eq!(b.len(), 2, "{b:?}");
    let finals: Vec<_> = b[1]
        .iter()
        .filter(|(n, _)| n == "Final-Recipient")
        .collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(field(&b[1], "Action"), Some("failed"));
}

#[test]
fn long_replies_are_folded() {
    let env = envelope("alice@example.com");
    let reply = format!("550 5.7.1 {}", "policy ".repeat(60));
    let r = failed("bob@example.org", &reply, "5.7.1");
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, &original(), NOW).expect("dsn");
    let raw = String::from_utf8_lossy(&dsn.content);
    assert!(raw.split("\r\n").all(|l| l.len() <= 998));
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let b = blocks(&text_of(parts(&m)[1]));
    let diag = field(&b[1], "Diagnostic-Code").expect("diag");
    assert_eq!(diag.matches("policy").count(), 60);
}

#[test]
fn internationalized_message_uses_global_types() {
    let mut env = envelope("jürgen@example.de");
    env.smtputf8 = true;
    env.body = BodyType::EightBitMime;
    let r = failed("søren@example.dk", "550 5.1.1 unknown", "5.1.1");
    let orig = "From: jürgen@example.de\r\nSubject: Grüße\r\n\r\nHallo\r\n".as_bytes();
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, orig, NOW).expect("dsn");
    assert!(dsn.smtputf8);
    assert_eq!(dsn.body, BodyType::EightBitMime);
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let ct = m.content_type().expect("ct");
    assert_eq!(ct.attribute("report-type"), Some("global-delivery-status"));
    let p = parts(&m);
    assert_eq!(ctype(p[1]), "message/global-delivery-status");
    assert_eq!(ctype(p[2]), "message/global");
    let b = blocks(&text_of(p[1]));
    assert_eq!(
        field(&b[1], "Final-Recipient"),
        Some("utf-8; søren@example.dk")
    );
    // The human-readable part is UTF-8 (base64), decoded by the parser.
    assert!(text_of(p[0]).contains("søren@example.dk"));
}

#[test]
fn utf8_address_in_ascii_report_is_escaped() {
    let env = envelope("alice@example.com");
    let r = failed("søren@example.dk", "550 5.1.1 unknown", "5.1.1");
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, &original(), NOW).expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let b = blocks(&text_of(parts(&m)[1]));
    assert_eq!(
        field(&b[1], "Final-Recipient"),
        Some("utf-8; s\\x{F8}ren@example.dk")
    );
}

#[test]
#[ignore = "prints a sample DSN for a person to read"]
fn print_sample() {
    let env = envelope("alice@example.com");
    let r1 = failed(
        "bob@example.org",
        "550 5.1.1 <bob@example.org>: no such user",
        "5.1.1",
    );
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r1],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("dsn");
    println!("{}", String::from_utf8_lossy(&dsn.content));
}

#[test]
fn eight_bit_originals_set_the_dsn_body_type() {
    let r = failed("bob@example.org", "550 5.1.1 unknown", "5.1.1");
    let orig = "Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\u{e9}\r\n";
    let mut env = envelope("alice@example.com");
    env.body = BodyType::EightBitMime;
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, orig.as_bytes(), NOW).expect("dsn");
    assert_eq!(dsn.body, BodyType::EightBitMime);
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let p = parts(&m);
    assert_eq!(ctype(p[2]), "message/rfc822");
    assert_eq!(p[2].content_transfer_encoding(), Some("8bit"));

    env.body = BodyType::BinaryMime;
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, orig.as_bytes(), NOW).expect("dsn");
    assert_eq!(dsn.body, BodyType::BinaryMime);
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(parts(&m)[2].content_transfer_encoding(), Some("binary"));

    // Headers only: the body's encoding no longer matters, the header's does.
    env.ret = Some(Ret::Headers);
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Failure, orig.as_bytes(), NOW).expect("dsn");
    assert_eq!(dsn.body, BodyType::EightBitMime);
    let mut env = envelope("alice@example.com");
    env.smtputf8 = true;
    let dsn = build_dsn("gw", &env, &[&r], DsnKind::Delay, orig.as_bytes(), NOW).expect("dsn");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert_eq!(ctype(parts(&m)[2]), "message/global-headers");
}

/// A recipient whose last attempt recorded a problem.
fn with_problem(addr: &str, status: &str, kind: ProblemKind, date: Option<u64>) -> Recipient {
    let mut r = failed(addr, "the server's certificate has expired", status);
    if let Some(a) = r.last.as_mut() {
        a.mx = "mx.example.org".into();
        a.problem = Some(Problem {
            kind,
            detail: "certificate not valid after 2021-01-01".into(),
            date,
        });
    }
    r
}

fn dsn_text(dsn: &Dsn) -> (String, String, String) {
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    let p = parts(&m);
    assert_eq!(p.len(), 3);
    (text_of(p[0]), text_of(p[1]), ctype(p[2]))
}

#[test]
fn a4_notice_explains_every_problem_kind_in_both_languages() {
    use crate::spool::record::ProblemKind as K;
    let kinds = [
        K::StarttlsNotSupported,
        K::CertificateExpired,
        K::CertificateNotTrusted,
        K::CertificateHostMismatch,
        K::TlsaInvalid,
        K::DnssecInvalid,
        K::DaneRequired,
        K::StsPolicyFetchError,
        K::StsPolicyInvalid,
        K::StsWebpkiInvalid,
        K::StsMxNotListed,
        K::NotAuthenticated,
        K::TlsProfile,
        K::HandshakeFailed,
        K::RequireTlsNotSupported,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for kind in kinds {
        let p = Problem {
            kind,
            detail: String::new(),
            date: None,
        };
        let e = notice::explain(&p, "mx.example.org");
        assert!(seen.insert(e.en.clone()), "{kind:?} repeats another text");
        for text in [&e.de, &e.en] {
            assert!(!text.contains(['\r', '\n']), "{kind:?}: {text}");
            assert!(text.len() < 400, "{kind:?}: too long for a sender: {text}");
        }
        assert!(e.de.contains("Administrator"), "{kind:?}: {}", e.de);
        assert!(e.en.contains("administrator"), "{kind:?}: {}", e.en);
        let names_server = !matches!(
            kind,
            K::StsPolicyFetchError | K::StsPolicyInvalid | K::StsWebpkiInvalid
        );
        if names_server {
            assert!(e.de.contains("mx.example.org"), "{kind:?}: {}", e.de);
            assert!(e.en.contains("mx.example.org"), "{kind:?}: {}", e.en);
        }
    }
    let e = notice::explain(
        &Problem {
            kind: K::StarttlsNotSupported,
            detail: String::new(),
            date: None,
        },
        "",
    );
    assert!(
        e.en.starts_with("The recipient's mail server does not offer encryption"),
        "{}",
        e.en
    );
    assert!(e.de.contains("bietet keine Verschlüsselung"), "{}", e.de);
}

#[test]
fn a4_expired_certificate_names_the_date() {
    // 2021-01-01 12:00 UTC.
    let p = Problem {
        kind: ProblemKind::CertificateExpired,
        detail: String::new(),
        date: Some(1_609_502_400),
    };
    let e = notice::explain(&p, "mx.example.org.");
    assert!(
        e.de.starts_with("Das Zertifikat des Servers mx.example.org ist am 01.01.2021 abgelaufen."),
        "{}",
        e.de
    );
    assert!(
        e.en.starts_with("The certificate of mx.example.org expired on 2021-01-01."),
        "{}",
        e.en
    );
    // A server name from DNS cannot smuggle text or line breaks into the notice.
    let e = notice::explain(&p, "mx.example.org\r\nBcc: x@evil");
    assert!(!e.en.contains(['\r', '\n', '@']), "{}", e.en);
    assert!(!e.de.contains(['\r', '\n', '@']), "{}", e.de);
    let e = notice::explain_unrecorded("");
    assert!(
        e.en.contains("could not be reached with the required security"),
        "{}",
        e.en
    );
    assert!(e.de.contains("erforderlichen Sicherheit"), "{}", e.de);
}

#[test]
fn a4_failure_dsn_carries_german_and_english_notice() {
    let mut env = envelope("alice@example.com");
    env.class = crate::config::RiskClass::High;
    let r = with_problem(
        "bob@example.org",
        "5.7.5",
        ProblemKind::CertificateExpired,
        Some(1_609_502_400),
    );
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("a DSN");
    let (text, report, _) = dsn_text(&dsn);
    let de = text.find("--- Deutsch ---").expect("German part");
    let en = text.find("--- English ---").expect("English part");
    assert!(de < en, "German first: {text}");
    let unwrapped = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Empfänger <bob@example.org>:",
        "Das Zertifikat des Servers mx.example.org ist am 01.01.2021 abgelaufen.",
        "Risikoklasse \"hoch\" (high)",
        "Sicherheitsstufe \"geprüft\" (verified)",
        "Die Nachricht wurde nicht versendet.",
        "Recipient <bob@example.org>:",
        "The certificate of mx.example.org expired on 2021-01-01.",
        "risk class \"high\" and requires the level \"verified\". The message was not sent.",
        "ask the recipient's IT department to fix this, or contact your administrator",
    ] {
        assert!(unwrapped.contains(want), "missing {want:?} in {text}");
    }
    // The report is still RFC 3464: one per-message block, one recipient block.
    let b = blocks(&report);
    assert_eq!(b.len(), 2);
    assert_eq!(field(&b[1], "Action"), Some("failed"));
    assert_eq!(field(&b[1], "Status"), Some("5.7.5"));
    // The level given by the caller (the configured one) is named.
    let opts = DsnOptions {
        level: Some(crate::config::Level::Trusted),
        ..DsnOptions::default()
    };
    let dsn = build_dsn_with(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Failure,
        Original::whole(&original()),
        NOW,
        &opts,
    )
    .expect("a DSN");
    let (text, _, _) = dsn_text(&dsn);
    assert!(text.contains("(trusted)"), "{text}");
}

#[test]
fn a4_no_notice_without_a_problem() {
    let env = envelope("alice@example.com");
    let r = failed("bob@example.org", "550 5.1.1 no such user", "5.1.1");
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("a DSN");
    let (text, _, _) = dsn_text(&dsn);
    assert!(!text.contains("--- Deutsch ---"), "{text}");
}

#[test]
fn a4_held_dsn_is_delayed_with_4_7_status() {
    let mut env = envelope("alice@example.com");
    env.class = crate::config::RiskClass::Secret;
    let mut r = with_problem(
        "bob@example.org",
        "5.7.10",
        ProblemKind::StarttlsNotSupported,
        None,
    );
    r.state = RcptState::Held;
    let mut r2 = failed("carol@example.org", "no server reached", "4.4.1");
    r2.state = RcptState::Held;
    r2.last = None;
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r, &r2],
        DsnKind::Held,
        &original(),
        NOW,
    )
    .expect("a DSN");
    let m = MessageParser::default()
        .parse(&dsn.content)
        .expect("parses");
    assert!(
        m.subject().is_some_and(|s| s.contains("held")),
        "{:?}",
        m.subject()
    );
    let (text, report, returned) = dsn_text(&dsn);
    // Only the headers of a held message are returned: it is still here.
    assert_eq!(returned, "text/rfc822-headers");
    let b = blocks(&report);
    assert_eq!(b.len(), 3);
    assert_eq!(field(&b[1], "Action"), Some("delayed"));
    assert_eq!(field(&b[1], "Status"), Some("4.7.10"));
    assert_eq!(field(&b[2], "Action"), Some("delayed"));
    assert_eq!(field(&b[2], "Status"), Some("4.7.0"));
    assert!(field(&b[1], "Will-Retry-Until").is_none());
    let unwrapped = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Der Mailserver mx.example.org bietet keine Verschlüsselung (STARTTLS) an",
        "Risikoklasse \"geheim\" (secret)",
        "Die Nachricht wird aufbewahrt und nicht versendet; ein Administrator kann sie freigeben oder löschen.",
        "The mail server mx.example.org does not offer encryption (STARTTLS)",
        "The message is kept and not sent; an administrator can release or delete it.",
        "Recipient <carol@example.org>: The recipient's mail server could not be reached with the required security.",
        "an administrator can release or delete it",
    ] {
        assert!(unwrapped.contains(want), "missing {want:?} in {text}");
    }
    // NOTIFY=NEVER: no notice; NOTIFY=FAILURE alone still hears about a hold.
    let mut never = r.clone();
    never.notify = Some(Notify {
        never: true,
        ..Default::default()
    });
    assert!(build_dsn("gw", &env, &[&never], DsnKind::Held, &original(), NOW).is_none());
    let mut fail_only = r.clone();
    fail_only.notify = Some(Notify {
        failure: true,
        ..Default::default()
    });
    assert!(build_dsn("gw", &env, &[&fail_only], DsnKind::Held, &original(), NOW).is_some());
}

#[test]
fn g3_requiretls_bounce_returns_headers_only() {
    let mut env = envelope("alice@example.com");
    env.requiretls = true;
    env.ret = Some(Ret::Full);
    let opts = DsnOptions::default();
    assert!(!full_return_possible(&env, 10, &opts));
    let r = with_problem(
        "bob@example.org",
        "5.7.30",
        ProblemKind::RequireTlsNotSupported,
        None,
    );
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("a DSN");
    let (text, _, returned) = dsn_text(&dsn);
    assert_eq!(returned, "text/rfc822-headers");
    let raw = String::from_utf8_lossy(&dsn.content);
    assert!(
        !raw.contains("the figures are attached"),
        "body leaked: {raw}"
    );
    assert!(raw.contains("Subject: Quarterly figures"), "{raw}");
    let unwrapped = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Because your message was sent with REQUIRETLS, only its headers are attached, not its content.",
        "Da die Nachricht mit REQUIRETLS verschickt wurde, liegen dieser Benachrichtigung nur ihre Kopfzeilen bei, nicht ihr Inhalt.",
        "does not support REQUIRETLS",
    ] {
        assert!(unwrapped.contains(want), "missing {want:?} in {text}");
    }
    // Without REQUIRETLS the same DSN returns the whole message.
    env.requiretls = false;
    let dsn = build_dsn(
        "gw.example.com",
        &env,
        &[&r],
        DsnKind::Failure,
        &original(),
        NOW,
    )
    .expect("a DSN");
    assert_eq!(dsn_text(&dsn).2, "message/rfc822");
}
