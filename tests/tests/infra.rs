//! The test infrastructure itself works: Knot answers, each Postfix MX takes mail
//! from swaks and delivers it into its Maildir, with TLS where configured, and
//! rejects/defers the magic recipients.

use std::time::Duration;

use qrelay_tests::infra::kdig;
use qrelay_tests::{swaks, token, Infra, Mx};

#[test]
fn knot_serves_the_test_zones() {
    Infra::get();
    let mx = kdig("MX", "ca.example.test").unwrap();
    assert!(mx.contains("10 mx-ca.example.test."), "{mx}");
    let backup = kdig("MX", "backup.example.test").unwrap();
    assert!(backup.contains("10 mx-down.example.test."), "{backup}");
    assert!(backup.contains("20 mx-ca.example.test."), "{backup}");
    let null = kdig("MX", "nullmx.example.test").unwrap();
    assert_eq!(null.trim(), "0 .");
    assert_eq!(
        kdig("A", "implicit.example.test").unwrap().trim(),
        "127.0.20.1"
    );
    assert_eq!(kdig("MX", "implicit.example.test").unwrap().trim(), "");
    assert_eq!(kdig("A", "mx-noaddr.example.test").unwrap().trim(), "");
    assert!(kdig("MX", "lan.test").unwrap().contains("mx.lan.test."));
    assert_eq!(kdig("A", "mx.lan.test").unwrap().trim(), "127.0.20.4");
}

#[test]
fn every_mx_accepts_mail_from_swaks() {
    let infra = Infra::get();
    for mx in Mx::ALL {
        let tok = token("infra");
        let mut extra = vec![];
        if mx != Mx::Plain {
            extra.push("--tls");
        }
        swaks(
            mx.addr(),
            "sender@lan.test",
            "someone@ca.example.test",
            &tok,
            &extra,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e:#}\n{}",
                mx.name(),
                infra.maillog_tail(mx.name(), 20)
            )
        });
        let m = infra
            .mailbox(mx)
            .wait_for_token(&tok, Duration::from_secs(20))
            .unwrap();
        let rcv = m.postfix_received().expect("Received by Postfix");
        assert!(rcv.contains(mx.hostname()), "{rcv}");
        if mx == Mx::Plain {
            assert!(!rcv.contains("using TLS"), "{rcv}");
        } else {
            assert!(rcv.contains("using TLS"), "{rcv}");
        }
    }
}

#[test]
fn plain_mx_offers_no_starttls_and_magic_recipients_work() {
    Infra::get();
    let e = swaks(
        Mx::Plain.addr(),
        "s@lan.test",
        "x@plain.example.test",
        "t",
        &["--tls"],
    );
    assert!(e.is_err(), "the plain MX must not offer STARTTLS");
    let r = swaks(
        Mx::Ca.addr(),
        "s@lan.test",
        "reject550@ca.example.test",
        "t",
        &[],
    );
    let text = format!("{r:?}");
    assert!(text.contains("550 5.1.1"), "{text}");
    let r = swaks(
        Mx::Ca.addr(),
        "s@lan.test",
        "defer450@ca.example.test",
        "t",
        &[],
    );
    let text = format!("{r:?}");
    assert!(text.contains("450 4.2.0"), "{text}");
}

#[test]
fn ca_mx_certificate_verifies_against_test_ca() {
    let infra = Infra::get();
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-connect", "127.0.20.1:25"])
        .args([
            "-verify_hostname",
            "mx-ca.example.test",
            "-verify_return_error",
        ])
        .arg("-CAfile")
        .arg(&infra.ca_file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[test]
fn smtp_client_reports_per_recipient_replies() {
    let infra = Infra::get();
    let tok = token("client");
    let ok = format!("{tok}@ca.example.test");
    let rcpts = [
        ok.as_str(),
        "reject550@ca.example.test",
        "defer450@ca.example.test",
    ];
    let msg = qrelay_tests::build_message("s@lan.test", &rcpts, &tok, ".leading dot\nbody");
    let t = qrelay_tests::send_mail(Mx::Ca.addr(), "s@lan.test", &rcpts, &msg).unwrap();
    assert_eq!(t.codes(), vec![250, 250, 550, 450, 354, 250], "{t:?}");
    assert!(t.queue_id().is_some());
    let m = infra
        .mailbox(Mx::Ca)
        .wait_for_token(&tok, Duration::from_secs(20))
        .unwrap();
    assert!(m.body().contains("\n.leading dot\n") || m.body().starts_with(".leading dot"));
    assert_eq!(m.header("X-Test-Token").as_deref(), Some(tok.as_str()));
}

/// posttls-finger (Postfix's own TLS probe) as a second opinion on the peers: the
/// CA-signed MX verify against the test CA, the self-signed one does not, the
/// plain one offers no TLS.
#[test]
fn posttls_finger_second_opinion_on_the_peers() {
    let infra = Infra::get();
    let finger = |mx: Mx, level: &str| {
        let out = std::process::Command::new("posttls-finger")
            .args(["-l", level, "-F"])
            .arg(&infra.ca_file)
            .arg(format!("[{}]:25", mx.ip()))
            .arg(mx.hostname())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for mx in [Mx::Ca, Mx::Lan] {
        let t = finger(mx, "secure");
        assert!(t.contains("Verified TLS connection established"), "{t}");
    }
    let t = finger(Mx::SelfSigned, "secure");
    assert!(t.contains("Untrusted TLS connection established"), "{t}");
    let t = finger(Mx::Plain, "may");
    assert!(!t.contains("STARTTLS"), "{t}");
    assert!(!t.contains("TLS connection established"), "{t}");
}
