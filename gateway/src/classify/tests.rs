//! Risk classes (standards.md A1) from every source, and the subject tag's
//! removal, including folded, encoded and hostile header sections.

use super::*;
use crate::config::{ClassifyConfig, RiskClass};

fn cfg() -> ClassifyConfig {
    let mut c = ClassifyConfig::default();
    c.senders.insert("legal.firma.de".into(), RiskClass::Secret);
    c.senders.insert("Boss@Firma.de".into(), RiskClass::High);
    c.senders
        .insert("newsletter@firma.de".into(), RiskClass::None);
    c.purview_labels
        .insert("Streng vertraulich".into(), RiskClass::Secret);
    c.purview_labels
        .insert("Confidential".into(), RiskClass::High);
    c.purview_labels.insert(
        "{11111111-2222-3333-4444-555555555555}".into(),
        RiskClass::High,
    );
    c.recipient_domains
        .insert("Partner.Example".into(), RiskClass::High);
    c
}

fn scan(head: &str) -> (String, HeaderFindings) {
    let (out, f) = scan_header(head.as_bytes(), &cfg());
    (String::from_utf8(out).expect("utf-8 out"), f)
}

/// No CR without LF after it, no LF without CR before it, no empty line before the
/// end, and every line after the first that is not a field is a continuation.
fn assert_clean(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    assert!(
        !out.windows(4).any(|w| w == b"\r\n\r\n"),
        "empty line inside"
    );
}

fn subject_of(out: &str) -> String {
    let raw = format!("{out}\r\n");
    let m = mail_parser::MessageParser::default()
        .parse_headers(raw.as_bytes())
        .expect("parses");
    m.subject().unwrap_or("").to_string()
}

#[test]
fn a1_subject_tag_sets_high_and_is_removed() {
    let head = "From: a@firma.de\r\nSubject: [vertraulich] Gehaltsliste\r\nTo: b@example.org\r\n";
    let (out, f) = scan(head);
    assert_eq!(
        out,
        "From: a@firma.de\r\nSubject: Gehaltsliste\r\nTo: b@example.org\r\n"
    );
    assert_eq!(
        f.subject_tag,
        Some(("[vertraulich]".into(), RiskClass::High))
    );
    let c = classify(&cfg(), "a@example.com", false, &f);
    assert_eq!(c.class, RiskClass::High);
    assert_eq!(c.reasons, vec!["subject tag \"[vertraulich]\" → high"]);
}

#[test]
fn a1_subject_tag_is_case_insensitive_anywhere_and_collapses_space() {
    for (subject, want) in [
        ("Subject: Re: [SECURE] Vertrag", "Subject: Re: Vertrag"),
        ("Subject: Vertrag [Confidential]", "Subject: Vertrag"),
        (
            "Subject: Vertrag [secure] Entwurf",
            "Subject: Vertrag Entwurf",
        ),
        ("Subject: [secure]", "Subject: "),
        ("Subject:[secure]Vertrag", "Subject: Vertrag"),
        ("Subject:   [secure]   ", "Subject: "),
        ("Subject: [secure] [vertraulich] x", "Subject: x"),
        ("SUBJECT : [secure] x", "SUBJECT: x"),
    ] {
        let (out, f) = scan(&format!("{subject}\r\nTo: b@example.org\r\n"));
        assert_eq!(out, format!("{want}\r\nTo: b@example.org\r\n"), "{subject}");
        assert!(f.subject_tag.is_some(), "{subject}");
        assert_clean(out.as_bytes());
    }
}

#[test]
fn a1_untagged_header_is_byte_identical() {
    let head = b"Subject: Quarterly figures\r\n\tfolded on\r\nX-Weird:\xff\xfe bytes\r\nSensitivity: Normal\r\n";
    let (out, f) = scan_header(head, &cfg());
    assert_eq!(out, head.to_vec());
    assert_eq!(f, HeaderFindings::default());
    let c = classify(&cfg(), "a@example.com", false, &f);
    assert_eq!(c.class, RiskClass::Normal);
    assert_eq!(c.reasons, vec!["default class normal"]);
}

#[test]
fn a1_folded_subject_keeps_its_folds() {
    let (out, f) =
        scan("Subject: Quarterly figures for\r\n [confidential] the board\r\nTo: x@y\r\n");
    assert_eq!(
        out,
        "Subject: Quarterly figures for\r\n the board\r\nTo: x@y\r\n"
    );
    assert!(f.subject_tag.is_some());
    // Tag at the end of a continuation line: no trailing blank, no empty line.
    let (out, _) = scan("Subject: Quarterly figures\r\n [confidential]\r\nTo: x@y\r\n");
    assert_eq!(out, "Subject: Quarterly figures\r\nTo: x@y\r\n");
    // Tag alone on the first line.
    let (out, _) = scan("Subject: [confidential]\r\n Quarterly figures\r\nTo: x@y\r\n");
    assert_eq!(out, "Subject:\r\n Quarterly figures\r\nTo: x@y\r\n");
    assert_eq!(subject_of(&out), "Quarterly figures");
    // Folded, and nothing else left.
    let (out, _) = scan("Subject:\r\n [confidential]\r\nTo: x@y\r\n");
    assert_eq!(out, "Subject: \r\nTo: x@y\r\n");
    assert_clean(out.as_bytes());
}

#[test]
fn a1_tag_split_by_a_fold_is_found_through_decoding() {
    let mut c = cfg();
    c.subject_tags
        .insert("[streng vertraulich]".into(), RiskClass::Secret);
    let head = b"Subject: Akte [streng\r\n vertraulich] Meyer\r\n";
    let (out, f) = scan_header(head, &c);
    assert_eq!(String::from_utf8(out).unwrap(), "Subject: Akte Meyer\r\n");
    assert_eq!(
        f.subject_tag,
        Some(("[streng vertraulich]".into(), RiskClass::Secret))
    );
}

#[test]
fn a1_tag_in_encoded_word_is_removed_and_reencoded() {
    // "[vertraulich] Gehälter März" as one UTF-8 B encoded word.
    let head = "Subject: =?UTF-8?B?W3ZlcnRyYXVsaWNoXSBHZWjDpGx0ZXIgTcOkcno=?=\r\nTo: x@y\r\n";
    let (out, f) = scan(head);
    assert_eq!(
        f.subject_tag,
        Some(("[vertraulich]".into(), RiskClass::High))
    );
    assert!(out.starts_with("Subject: =?UTF-8?B?"), "{out}");
    assert!(out.ends_with("\r\nTo: x@y\r\n"));
    assert_eq!(subject_of(&out), "Gehälter März");
    assert_clean(out.as_bytes());

    // Q encoding, only ASCII left: written as plain text.
    let (out, _) = scan("Subject: =?iso-8859-1?Q?=5Bsecure=5D_Vertrag?=\r\n");
    assert_eq!(out, "Subject: Vertrag\r\n");

    // Tag in plain text next to an encoded word: the encoded word stays as it is.
    let (out, _) = scan("Subject: [secure] =?UTF-8?B?R2Vow6RsdGVy?=\r\n");
    assert_eq!(out, "Subject: =?UTF-8?B?R2Vow6RsdGVy?=\r\n");

    // Nothing left.
    let (out, _) = scan("Subject: =?UTF-8?B?W3NlY3VyZV0=?=\r\n");
    assert_eq!(out, "Subject: \r\n");
}

#[test]
fn a1_long_non_ascii_subject_is_reencoded_in_short_words() {
    let text = "Ünterlagen ".repeat(40);
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("[secure] {text}").as_bytes(),
    );
    let (out, f) = scan(&format!("Subject: =?UTF-8?B?{b64}?=\r\n"));
    assert!(f.subject_tag.is_some());
    for line in out.split("\r\n") {
        assert!(line.len() <= 78, "line too long: {line}");
    }
    assert_eq!(subject_of(&out), text.trim_end());
    assert_clean(out.as_bytes());
}

#[test]
fn a1_encoded_word_cannot_inject_a_header_field() {
    // "[secure] x\r\nBcc: victim@example.org" in an encoded word.
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"[secure] x\r\nBcc: victim@example.org",
    );
    let (out, _) = scan(&format!("Subject: =?UTF-8?B?{b64}?=\r\nTo: a@b\r\n"));
    assert_clean(out.as_bytes());
    assert!(!out.contains("\r\nBcc:"), "{out}");
    assert_eq!(out.matches("\r\n").count(), 2, "{out}");
}

#[test]
fn a1_hostile_header_sections() {
    // Bare CR and LF inside a tagged Subject are not passed on.
    let head = b"Subject: [secure] a\rb\nInjected: yes\r\nTo: a@b\r\n";
    let (out, f) = scan_header(head, &cfg());
    assert!(f.subject_tag.is_some());
    assert!(
        out.starts_with(b"Subject: a b\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Invalid UTF-8 around the tag is kept byte for byte.
    let head = b"Subject: \xff[secure] \xfe\r\n";
    let (out, f) = scan_header(head, &cfg());
    assert_eq!(out, b"Subject: \xff \xfe\r\n".to_vec());
    assert!(f.subject_tag.is_some());
    assert_clean(&out);
    // A huge header section with thousands of tags: linear time, all removed.
    let mut big = b"Subject:".to_vec();
    for _ in 0..100_000 {
        big.extend_from_slice(b" [secure] x\r\n");
    }
    for i in 0..2_000 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(400)).as_bytes());
    }
    let start = std::time::Instant::now();
    let (out, f) = scan_header(&big, &cfg());
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert!(f.subject_tag.is_some());
    assert!(!out.windows(8).any(|w| w.eq_ignore_ascii_case(b"[secure]")));
    assert_clean(&out);
    // No field at all, a continuation first, a line without a colon.
    for head in [
        &b""[..],
        b"\r\n",
        b" lone continuation\r\n",
        b"no colon here\r\n",
        b"Subject",
    ] {
        let (out, f) = scan_header(head, &cfg());
        assert_eq!(out, head.to_vec());
        assert_eq!(f, HeaderFindings::default());
    }
}

#[test]
fn a1_body_after_empty_line_is_not_scanned() {
    let head = "To: a@b\r\n\r\nSubject: [secure] not a header\r\n";
    let (out, f) = scan(head);
    assert_eq!(out, head);
    assert_eq!(f.subject_tag, None);
}

#[test]
fn a1_only_the_first_subject_counts() {
    let (out, _) = scan("Subject: [secure] one\r\nSubject: [secure] two\r\n");
    assert_eq!(out, "Subject: one\r\nSubject: [secure] two\r\n");
}

#[test]
fn a1_sensitivity_header() {
    let (_, f) = scan("Sensitivity: Company-Confidential\r\n");
    assert_eq!(
        f.sensitivity,
        Some(("Company-Confidential".into(), RiskClass::High))
    );
    let c = classify(&cfg(), "", false, &f);
    assert_eq!(c.class, RiskClass::High);
    assert_eq!(c.reasons, vec!["Sensitivity: Company-Confidential → high"]);
    let (_, f) = scan("sensitivity:\r\n  private \r\n");
    assert_eq!(f.sensitivity, Some(("private".into(), RiskClass::High)));
    let (_, f) = scan("Sensitivity: Personal\r\n");
    assert_eq!(f.sensitivity, None);
}

#[test]
fn a1_purview_label_by_name_or_guid_only_when_enabled() {
    let g1 = "aaaaaaaa-0000-0000-0000-000000000001";
    let g2 = "11111111-2222-3333-4444-555555555555";
    let g3 = "cccccccc-0000-0000-0000-000000000003";
    let head = format!(
        "msip_labels: MSIP_Label_{g1}_Enabled=true; MSIP_Label_{g1}_SetDate=2024-05-02T08:00:00Z;\r\n \
         MSIP_Label_{g1}_Method=Privileged; MSIP_Label_{g1}_Name=Streng vertraulich;\r\n \
         MSIP_Label_{g1}_SiteId=9f2e0000-0000-0000-0000-000000000000; MSIP_Label_{g1}_ContentBits=0;\r\n \
         MSIP_Label_{g2}_Enabled=True; MSIP_Label_{g2}_Name=Intern;\r\n \
         MSIP_Label_{g3}_Enabled=false; MSIP_Label_{g3}_Name=Confidential\r\n"
    );
    let (out, f) = scan(&head);
    assert_eq!(out, head);
    assert_eq!(
        f.purview,
        vec![
            ("Streng vertraulich".to_string(), RiskClass::Secret),
            ("Intern".to_string(), RiskClass::High),
        ]
    );
    let c = classify(&cfg(), "a@example.com", false, &f);
    assert_eq!(c.class, RiskClass::Secret);
    assert_eq!(
        c.reasons,
        vec![
            "Purview label \"Streng vertraulich\" → secret",
            "Purview label \"Intern\" → high",
        ]
    );
}

#[test]
fn a1_sender_rules_address_domain_and_subdomain() {
    let f = HeaderFindings::default();
    let c = classify(&cfg(), "anna@legal.firma.de", false, &f);
    assert_eq!(c.class, RiskClass::Secret);
    assert_eq!(c.reasons, vec!["sender rule legal.firma.de → secret"]);
    let c = classify(&cfg(), "anna@eu.Legal.Firma.DE", false, &f);
    assert_eq!(c.class, RiskClass::Secret);
    let c = classify(&cfg(), "boss@firma.de", false, &f);
    assert_eq!(c.class, RiskClass::High);
    assert_eq!(c.reasons, vec!["sender rule Boss@Firma.de → high"]);
    // A sender rule can lower the class below the default.
    let c = classify(&cfg(), "newsletter@firma.de", false, &f);
    assert_eq!(c.class, RiskClass::None);
    // Not a subdomain, only a suffix.
    let c = classify(&cfg(), "x@illegal.firma.de", false, &f);
    assert_eq!(c.class, RiskClass::Normal);
    let c = classify(&cfg(), "x@legal.firma.de.evil.example", false, &f);
    assert_eq!(c.class, RiskClass::Normal);
    // The null sender matches no rule.
    assert_eq!(classify(&cfg(), "", false, &f).class, RiskClass::Normal);
}

#[test]
fn a1_requiretls_sets_its_class() {
    let c = classify(&cfg(), "a@example.com", true, &HeaderFindings::default());
    assert_eq!(c.class, RiskClass::High);
    assert_eq!(c.reasons, vec!["REQUIRETLS requested by the client → high"]);
}

#[test]
fn a1_highest_class_wins_and_every_reason_is_kept() {
    let (_, f) = scan("Subject: [secure] x\r\nSensitivity: Private\r\n");
    let c = classify(&cfg(), "anna@legal.firma.de", true, &f);
    assert_eq!(c.class, RiskClass::Secret);
    assert_eq!(
        c.reasons,
        vec![
            "sender rule legal.firma.de → secret",
            "subject tag \"[secure]\" → high",
            "Sensitivity: Private → high",
            "REQUIRETLS requested by the client → high",
        ]
    );
    // Of two tags, the higher class is reported.
    let mut cf = cfg();
    cf.subject_tags.insert("[geheim]".into(), RiskClass::Secret);
    let (out, f) = scan_header(b"Subject: [secure] [GEHEIM] x\r\n", &cf);
    assert_eq!(out, b"Subject: x\r\n".to_vec());
    assert_eq!(f.subject_tag, Some(("[geheim]".into(), RiskClass::Secret)));
}

#[test]
fn a1_non_ascii_tag_matches_case_insensitively() {
    let mut cf = cfg();
    cf.subject_tags
        .insert("[geschützt]".into(), RiskClass::High);
    let (out, f) = scan_header("Subject: [GESCHÜTZT] Akte\r\n".as_bytes(), &cf);
    assert_eq!(out, b"Subject: Akte\r\n".to_vec());
    assert_eq!(f.subject_tag, Some(("[geschützt]".into(), RiskClass::High)));
}

#[test]
fn a1_recipient_domain_rule() {
    let c = cfg();
    assert_eq!(
        recipient_class(&c, "partner.example."),
        Some((
            RiskClass::High,
            "recipient domain rule Partner.Example → high".into()
        ))
    );
    assert_eq!(
        recipient_class(&c, "PARTNER.example").map(|x| x.0),
        Some(RiskClass::High)
    );
    assert_eq!(recipient_class(&c, "sub.partner.example"), None);
    assert_eq!(recipient_class(&c, ""), None);
}

#[test]
fn g3_tls_required_no_is_found() {
    let (_, f) = scan("TLS-Required: No\r\n");
    assert!(f.tls_required_no);
    let (_, f) = scan("tls-required:   no  \r\n");
    assert!(f.tls_required_no);
    let (_, f) = scan("TLS-Required: Yes\r\n");
    assert!(!f.tls_required_no);
    // In the body, it means nothing.
    let (_, f) = scan("To: a@b\r\n\r\nTLS-Required: No\r\n");
    assert!(!f.tls_required_no);
}
