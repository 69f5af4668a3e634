//! TLS-RPT end to end within the crate: a test DNS responder publishes the
//! `_smtp._tls` records, reports go into a real queue over a temporary spool (or
//! to an HTTPS endpoint that is down), and what was queued is parsed back.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mail_parser::MimeHeaders;
use serde_json::Value;

use super::*;
use crate::config::Config;
use crate::control::ControlHandler;
use crate::spool::record::ProblemKind;
use crate::spool::Spool;
use crate::testutil::dns::TestDns;

const DAY: u64 = 86_400;

struct World {
    dns: TestDns,
    _dir: tempfile::TempDir,
    spool_dir: PathBuf,
    rpt: TlsRpt,
    queue: Queue,
}

async fn world() -> World {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let mut cfg = Config::default();
    cfg.smtp.hostname = "relay.example".into();
    cfg.spool.dir = spool_dir.clone();
    cfg.tls_rpt.organization_name = "Example Org".into();
    cfg.tls_rpt.contact = "tlsrpt-admin@relay.example".into();
    let cfg = Arc::new(cfg);
    let rpt = TlsRpt::open(cfg.clone(), &TlsRpt::dir_in(&spool_dir), dns.resolver()).unwrap();
    let queue = Queue::new(Spool::open(&spool_dir, 0).unwrap(), cfg, vec![]);
    World {
        dns,
        _dir: dir,
        spool_dir,
        rpt,
        queue,
    }
}

fn success(at: u64, domain: &str, policy: PolicyApplied, mx: &str) -> SessionResult {
    SessionResult {
        at,
        domain: domain.into(),
        policy,
        mx_host: mx.into(),
        receiving_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25))),
        sending_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))),
        receiving_helo: Some(mx.into()),
        failure: None,
    }
}

fn failure(
    at: u64,
    domain: &str,
    policy: PolicyApplied,
    mx: &str,
    result_type: &'static str,
) -> SessionResult {
    SessionResult {
        failure: Some(SessionFailure {
            result_type,
            additional_information: format!("{result_type} at {mx}"),
            failure_reason_code: Some("X509_V_ERR_TEST".into()),
        }),
        ..success(at, domain, policy, mx)
    }
}

fn sts() -> PolicyApplied {
    PolicyApplied::Sts {
        policy_string: vec![
            "version: STSv1".into(),
            "mode: enforce".into(),
            "mx: *.rpt.example".into(),
            "max_age: 86400".into(),
        ],
        mx_patterns: vec!["*.rpt.example".into()],
    }
}

fn tlsa() -> PolicyApplied {
    PolicyApplied::Tlsa {
        records: vec!["3 1 1 aabbcc".into()],
    }
}

/// The JSON of a report built from what is recorded for `day`, domain `domain`.
fn report_json(w: &World, day: &str, domain: &str) -> Value {
    let agg = w.rpt.aggregate(day).unwrap();
    let policies = agg.domains.get(domain).unwrap().clone();
    let start = day_start(day).unwrap();
    let p = w
        .rpt
        .prepare(domain, policies, start, start + DAY - 1)
        .unwrap();
    serde_json::from_slice(&report::gunzip(&p.gzip).unwrap()).unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn f2_report_json_uses_the_rfc_field_names() {
    let w = world().await;
    let t = day_start("2025-03-01").unwrap() + 3600;
    let d = "rpt.example";
    w.rpt.record(success(t, d, sts(), "mx1.rpt.example"));
    w.rpt.record(success(t + 1, d, sts(), "mx1.rpt.example"));
    w.rpt.record(failure(
        t + 2,
        d,
        sts(),
        "mx2.rpt.example",
        "certificate-expired",
    ));
    w.rpt.record(failure(
        t + 3,
        d,
        sts(),
        "mx2.rpt.example",
        "certificate-expired",
    ));
    w.rpt.record(failure(
        t + 4,
        "RPT.example.",
        tlsa(),
        "mx3.rpt.example",
        "tlsa-invalid",
    ));
    w.rpt
        .record(success(t + 5, d, PolicyApplied::None, "mx4.rpt.example"));
    // A policy failure before any session: no MX host, no addresses.
    w.rpt.record(SessionResult {
        mx_host: String::new(),
        receiving_ip: None,
        receiving_helo: None,
        ..failure(t + 6, d, PolicyApplied::None, "", "sts-policy-fetch-error")
    });

    let v = report_json(&w, "2025-03-01", d);
    assert_eq!(
        keys(&v),
        [
            "contact-info",
            "date-range",
            "organization-name",
            "policies",
            "report-id"
        ]
    );
    assert_eq!(v["organization-name"], "Example Org");
    assert_eq!(v["contact-info"], "tlsrpt-admin@relay.example");
    assert_eq!(v["date-range"]["start-datetime"], "2025-03-01T00:00:00Z");
    assert_eq!(v["date-range"]["end-datetime"], "2025-03-01T23:59:59Z");
    assert!(v["report-id"].as_str().unwrap().ends_with("@relay.example"));
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 3, "{v:#}");
    for p in policies {
        assert_eq!(keys(p), ["failure-details", "policy", "summary"]);
        assert_eq!(
            keys(&p["summary"]),
            [
                "total-failure-session-count",
                "total-successful-session-count"
            ]
        );
        assert_eq!(p["policy"]["policy-domain"], d);
    }
    let by_type = |t: &str| {
        policies
            .iter()
            .find(|p| p["policy"]["policy-type"] == t)
            .unwrap()
    };

    let s = by_type("sts");
    assert_eq!(
        keys(&s["policy"]),
        ["mx-host", "policy-domain", "policy-string", "policy-type"]
    );
    assert_eq!(s["policy"]["policy-string"][1], "mode: enforce");
    assert_eq!(s["policy"]["mx-host"][0], "*.rpt.example");
    assert_eq!(s["summary"]["total-successful-session-count"], 2);
    assert_eq!(s["summary"]["total-failure-session-count"], 2);
    let f = &s["failure-details"][0];
    assert_eq!(
        keys(f),
        [
            "additional-information",
            "failed-session-count",
            "failure-reason-code",
            "receiving-ip",
            "receiving-mx-helo",
            "receiving-mx-hostname",
            "result-type",
            "sending-mta-ip"
        ]
    );
    assert_eq!(f["result-type"], "certificate-expired");
    assert_eq!(f["failed-session-count"], 2);
    assert_eq!(f["receiving-mx-hostname"], "mx2.rpt.example");
    assert_eq!(f["receiving-ip"], "192.0.2.25");
    assert_eq!(f["sending-mta-ip"], "198.51.100.1");

    let t = by_type("tlsa");
    assert_eq!(t["policy"]["policy-string"][0], "3 1 1 aabbcc");
    assert_eq!(t["policy"]["mx-host"][0], "mx3.rpt.example");
    assert_eq!(t["failure-details"][0]["result-type"], "tlsa-invalid");

    let n = by_type("no-policy-found");
    assert_eq!(keys(&n["policy"]), ["policy-domain", "policy-type"]);
    assert_eq!(n["summary"]["total-successful-session-count"], 1);
    assert_eq!(n["summary"]["total-failure-session-count"], 1);
    let pf = &n["failure-details"][0];
    assert_eq!(pf["result-type"], "sts-policy-fetch-error");
    assert!(pf.get("receiving-mx-hostname").is_none());
    assert!(pf.get("receiving-ip").is_none());
}

#[tokio::test]
async fn f2_every_result_type_is_spelled_as_in_the_rfc() {
    // standards.md F2, word for word.
    let standard = [
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    ];
    let mut ours = RESULT_TYPES.to_vec();
    ours.sort();
    let mut want = standard.to_vec();
    want.sort();
    assert_eq!(ours, want);
    // What the deliverer reports comes from ProblemKind: always an RFC word.
    for kind in [
        ProblemKind::StarttlsNotSupported,
        ProblemKind::CertificateExpired,
        ProblemKind::CertificateNotTrusted,
        ProblemKind::CertificateHostMismatch,
        ProblemKind::TlsaInvalid,
        ProblemKind::DnssecInvalid,
        ProblemKind::DaneRequired,
        ProblemKind::StsPolicyFetchError,
        ProblemKind::StsPolicyInvalid,
        ProblemKind::StsWebpkiInvalid,
        ProblemKind::StsMxNotListed,
        ProblemKind::NotAuthenticated,
        ProblemKind::TlsProfile,
        ProblemKind::HandshakeFailed,
        ProblemKind::RequireTlsNotSupported,
    ] {
        if let Some(t) = kind.rpt_result_type() {
            assert!(RESULT_TYPES.contains(&t), "{kind:?} -> {t}");
        }
    }
    let w = world().await;
    let t = day_start("2025-03-02").unwrap();
    for (i, rt) in RESULT_TYPES.iter().enumerate() {
        w.rpt.record(failure(
            t + i as u64,
            "rt.example",
            tlsa(),
            "mx.rt.example",
            rt,
        ));
    }
    let v = report_json(&w, "2025-03-02", "rt.example");
    let details = v["policies"][0]["failure-details"].as_array().unwrap();
    let mut seen: Vec<&str> = details
        .iter()
        .map(|d| d["result-type"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, want);
    assert_eq!(
        v["policies"][0]["summary"]["total-failure-session-count"],
        11
    );
}

#[tokio::test]
async fn f2_failure_details_are_bounded_but_counted() {
    let w = world().await;
    let t = day_start("2025-03-03").unwrap();
    let n = report::MAX_FAILURE_DETAILS + 20;
    for i in 0..n {
        let mut s = failure(
            t,
            "many.example",
            PolicyApplied::None,
            "mx.many.example",
            "validation-failure",
        );
        s.failure.as_mut().unwrap().additional_information = format!("reason {i}");
        w.rpt.record(s);
    }
    let v = report_json(&w, "2025-03-03", "many.example");
    assert_eq!(
        v["policies"][0]["summary"]["total-failure-session-count"],
        n
    );
    assert_eq!(
        v["policies"][0]["failure-details"]
            .as_array()
            .unwrap()
            .len(),
        report::MAX_FAILURE_DETAILS
    );
}

/// The report mails in the queue: (envelope, raw content).
fn queued(w: &World) -> Vec<(Envelope, Vec<u8>)> {
    ControlHandler::list(&w.queue)
        .into_iter()
        .map(|e| {
            let c = w.queue.spool().content(&e.id).unwrap();
            (e, c)
        })
        .collect()
}

#[tokio::test]
async fn b4_f3_send_day_mails_gzip_report_without_tls_enforcement() {
    let w = world().await;
    w.dns.txt(
        "_smtp._tls.rpt.example",
        &["v=TLSRPTv1; rua=mailto:tlsrpt@reports.example!10m"],
    );
    let now = now_secs();
    let day = utc_day(now - 2 * DAY);
    let t = day_start(&day).unwrap() + 600;
    w.rpt
        .record(success(t, "rpt.example", sts(), "mx1.rpt.example"));
    w.rpt.record(failure(
        t,
        "rpt.example",
        sts(),
        "mx2.rpt.example",
        "starttls-not-supported",
    ));
    // No `_smtp._tls` record: counted, but nobody to report to (B4).
    w.rpt.record(success(
        t,
        "norpt.example",
        PolicyApplied::None,
        "mx.norpt.example",
    ));
    w.rpt.persist().await;
    let file = TlsRpt::dir_in(&w.spool_dir).join(format!("{day}.json"));
    assert!(file.exists());

    let sent = w.rpt.send_day(&day, &w.queue).await.unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].domain, "rpt.example");
    assert_eq!(sent[0].destination, "mailto:tlsrpt@reports.example");
    assert!(matches!(sent[0].outcome, SentOutcome::Queued { .. }));
    assert!(summary(&day, &sent).contains("queued as"));
    // The day is done: gone from memory and disk.
    assert!(w.rpt.aggregate(&day).is_none());
    assert!(!file.exists());

    let q = queued(&w);
    assert_eq!(q.len(), 1);
    let (env, raw) = &q[0];
    assert_eq!(env.sender, "tlsrpt-admin@relay.example");
    assert_eq!(env.recipients[0].address, "tlsrpt@reports.example");
    assert!(
        env.tls_optional,
        "F3: no DANE/MTA-STS enforcement for reports"
    );
    assert_eq!(env.class, RiskClass::None);
    let expires = env.expires_at.unwrap();
    assert!(expires >= now + DAY && expires <= now_secs() + DAY);

    let msg = mail_parser::MessageParser::default().parse(raw).unwrap();
    let ct = msg.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    let subject = msg.subject().unwrap();
    assert!(
        subject.starts_with("Report Domain: rpt.example Submitter: relay.example Report-ID: <"),
        "{subject}"
    );
    let att = msg.attachment(0).unwrap();
    let name = att.attachment_name().unwrap();
    let begin = day_start(&day).unwrap();
    assert!(
        name.starts_with(&format!(
            "relay.example!rpt.example!{begin}!{}!",
            begin + DAY - 1
        )),
        "{name}"
    );
    assert!(name.ends_with(".json.gz"));
    let v: Value = serde_json::from_slice(&report::gunzip(att.contents()).unwrap()).unwrap();
    assert_eq!(v["policies"][0]["policy"]["policy-type"], "sts");
    assert_eq!(
        v["policies"][0]["summary"]["total-successful-session-count"],
        1
    );
    assert_eq!(
        v["policies"][0]["failure-details"][0]["result-type"],
        "starttls-not-supported"
    );
    assert_eq!(
        format!("<{}>", v["report-id"].as_str().unwrap()),
        subject.rsplit("Report-ID: ").next().unwrap()
    );

    // Sending the day again sends nothing more.
    assert!(w.rpt.send_day(&day, &w.queue).await.unwrap().is_empty());
}

#[tokio::test]
async fn f2_today_on_request_reports_so_far_and_continues_after() {
    let w = world().await;
    w.dns.txt(
        "_smtp._tls.rpt.example",
        &["v=TLSRPTv1; rua=mailto:r@rpt.example"],
    );
    let now = now_secs();
    let today = utc_day(now);
    w.rpt.record(success(
        now,
        "rpt.example",
        PolicyApplied::None,
        "mx.rpt.example",
    ));
    let sent = w.rpt.send_day(&today, &w.queue).await.unwrap();
    assert_eq!(sent.len(), 1);
    // Counting goes on in a new aggregate that begins after the report's end.
    let agg = w.rpt.aggregate(&today).unwrap();
    assert!(agg.domains.is_empty());
    assert!(agg.begin > now);
    // Not a future day, not a malformed one.
    assert!(matches!(
        w.rpt.send_day(&utc_day(now + 2 * DAY), &w.queue).await,
        Err(TlsRptError::FutureDay(_))
    ));
    assert!(matches!(
        w.rpt.send_day("yesterday", &w.queue).await,
        Err(TlsRptError::BadDay(_))
    ));
}

#[tokio::test]
async fn f2_aggregates_survive_a_restart() {
    let w = world().await;
    let t = day_start("2025-03-04").unwrap();
    w.rpt
        .record(success(t, "keep.example", tlsa(), "mx.keep.example"));
    w.rpt.record(failure(
        t,
        "keep.example",
        tlsa(),
        "mx.keep.example",
        "dane-required",
    ));
    w.rpt.persist().await;
    let before = w.rpt.aggregate("2025-03-04").unwrap();
    let again = TlsRpt::open(
        w.rpt.inner.config.clone(),
        &TlsRpt::dir_in(&w.spool_dir),
        w.dns.resolver(),
    )
    .unwrap();
    assert_eq!(again.aggregate("2025-03-04").unwrap(), before);
    // A damaged file is set aside, not fatal.
    std::fs::write(
        TlsRpt::dir_in(&w.spool_dir).join("2025-03-05.json"),
        b"{nope",
    )
    .unwrap();
    let third = TlsRpt::open(
        w.rpt.inner.config.clone(),
        &TlsRpt::dir_in(&w.spool_dir),
        w.dns.resolver(),
    )
    .unwrap();
    assert!(third.aggregate("2025-03-05").is_none());
    assert!(TlsRpt::dir_in(&w.spool_dir)
        .join("2025-03-05.json.bad")
        .exists());
}

#[tokio::test]
async fn f3_failed_https_post_is_kept_retried_and_given_up_after_24h() {
    let w = world().await;
    // Nothing listens on this port: the POST fails at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    w.dns.txt(
        "_smtp._tls.post.example",
        &[&format!("v=TLSRPTv1; rua=https://127.0.0.1:{port}/report")],
    );
    let day = utc_day(now_secs() - DAY);
    w.rpt.record(success(
        day_start(&day).unwrap(),
        "post.example",
        PolicyApplied::None,
        "mx.post.example",
    ));
    let sent = w.rpt.send_day(&day, &w.queue).await.unwrap();
    assert_eq!(sent.len(), 1);
    assert!(
        matches!(sent[0].outcome, SentOutcome::Pending { .. }),
        "{sent:?}"
    );
    let pending = w.rpt.inner.pending.load_all();
    assert_eq!(pending.len(), 1);
    let p = &pending[0];
    assert_eq!(p.attempts, 1);
    assert_eq!(p.next_try, p.first_try + pending::RETRY_DELAYS[0]);
    assert_eq!(
        p.target,
        Target::Https(format!("https://127.0.0.1:{port}/report"))
    );

    // Not due yet: nothing happens.
    assert_eq!(w.rpt.retry_pending(&w.queue).await, 0);
    assert_eq!(w.rpt.inner.pending.load_all()[0].attempts, 1);

    // Due: tried again, fails again, rescheduled.
    let mut due = p.clone();
    due.next_try = 0;
    w.rpt.inner.pending.store(&due).unwrap();
    assert_eq!(w.rpt.retry_pending(&w.queue).await, 0);
    let after = &w.rpt.inner.pending.load_all()[0];
    assert_eq!(after.attempts, 2);
    assert!(after.next_try > now_secs());

    // First tried more than 24 h ago: given up and removed.
    let mut old = after.clone();
    old.next_try = 0;
    old.first_try = now_secs() - DAY - 1;
    w.rpt.inner.pending.store(&old).unwrap();
    assert_eq!(w.rpt.retry_pending(&w.queue).await, 0);
    assert!(w.rpt.inner.pending.load_all().is_empty());
}

#[tokio::test]
async fn f3_policy_lookup_failure_is_retried_then_mailed() {
    let w = world().await;
    w.dns.servfail(
        "_smtp._tls.later.example",
        hickory_resolver::proto::rr::RecordType::TXT,
    );
    let day = utc_day(now_secs() - DAY);
    w.rpt.record(success(
        day_start(&day).unwrap(),
        "later.example",
        PolicyApplied::None,
        "mx.later.example",
    ));
    let sent = w.rpt.send_day(&day, &w.queue).await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, "(policy lookup)");
    assert!(matches!(sent[0].outcome, SentOutcome::Pending { .. }));
    assert!(queued(&w).is_empty());

    // DNS is back; the retry looks the policy up and mails the same report.
    w.dns.txt(
        "_smtp._tls.later.example",
        &["v=TLSRPTv1; rua=mailto:r@later.example"],
    );
    let mut due = w.rpt.inner.pending.load_all()[0].clone();
    due.next_try = 0;
    w.rpt.inner.pending.store(&due).unwrap();
    assert_eq!(w.rpt.retry_pending(&w.queue).await, 1);
    assert!(w.rpt.inner.pending.load_all().is_empty());
    let q = queued(&w);
    assert_eq!(q.len(), 1);
    let text = String::from_utf8_lossy(&q[0].1).to_string();
    assert!(
        text.contains(&format!("Report-ID: <{}>", due.report_id)),
        "{text}"
    );
}

#[tokio::test]
async fn b4_nothing_is_recorded_while_disabled() {
    let w = world().await;
    let mut cfg = (*w.rpt.inner.config).clone();
    cfg.tls_rpt.enabled = false;
    let off = TlsRpt::open(Arc::new(cfg), &w.spool_dir.join("off"), w.dns.resolver()).unwrap();
    off.record(success(
        now_secs(),
        "x.example",
        PolicyApplied::None,
        "mx.x.example",
    ));
    assert!(off.aggregate(&utc_day(now_secs())).is_none());
    assert!(matches!(
        off.send_day(&utc_day(now_secs()), &w.queue).await,
        Err(TlsRptError::Disabled)
    ));
}
