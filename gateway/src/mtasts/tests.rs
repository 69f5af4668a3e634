//! The whole `policy_for` path against peers on 127.0.0.1: our DNS responder for
//! TXT and A records, our HTTPS server with certificates of an in-test CA.

use std::path::PathBuf;
use std::time::Duration;

use super::testutil::{Canned, StsDns, TestCa, TestDns, TestHttps};
use super::*;

const ENFORCE: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.a.test\r\nmx: *.mx.a.test\r\nmax_age: 86400\r\n";

struct World {
    dns: TestDns,
    ca: TestCa,
    https: TestHttps,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
}

/// DNS, CA and an HTTPS server whose certificate names `cert_names`.
async fn world(cert_names: &[&str]) -> World {
    let dns = TestDns::start().await;
    let ca = TestCa::new();
    let (chain, key) = ca.issue(cert_names);
    let https = TestHttps::start(chain, key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file);
    World {
        dns,
        ca,
        https,
        dir,
        ca_file,
    }
}

impl World {
    fn config(&self, port: u16) -> Config {
        let mut cfg = Config::default();
        cfg.spool.dir = self.dir.path().join("data");
        cfg.mta_sts.port = port;
        cfg.mta_sts.fetch_timeout = Duration::from_secs(5);
        cfg.mta_sts.retry_after_failure = Duration::ZERO;
        cfg
    }

    fn service_with(&self, cfg: &Config) -> MtaSts {
        let roots = pkix_roots(Some(&self.ca_file)).unwrap();
        MtaSts::new(cfg, self.dns.resolver(), roots).unwrap()
    }

    fn service(&self) -> MtaSts {
        self.service_with(&self.config(self.https.port))
    }

    /// A second HTTPS server with another certificate, and a service using it.
    async fn other_server(
        &self,
        chain_key: (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
    ) -> (TestHttps, MtaSts) {
        let https = TestHttps::start(chain_key.0, chain_key.1).await;
        let svc = self.service_with(&self.config(https.port));
        (https, svc)
    }
}

fn temp_fail_type(l: &PolicyLookup) -> RptResultType {
    match l {
        PolicyLookup::TempFail {
            rpt_result_type, ..
        } => *rpt_result_type,
        other => panic!("expected TempFail, got {other:?}"),
    }
}

fn found(l: &PolicyLookup) -> (&Policy, &str, bool) {
    match l {
        PolicyLookup::Found {
            policy,
            id,
            from_cache,
            ..
        } => (policy, id.as_str(), *from_cache),
        other => panic!("expected Found, got {other:?}"),
    }
}

#[tokio::test]
async fn e2_policy_fetched_over_https_then_served_from_cache() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "20240101");
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let svc = w.service();

    let l = svc.policy_for("A.Test.").await;
    let (p, id, from_cache) = found(&l);
    assert_eq!((p.mode, id, from_cache), (Mode::Enforce, "20240101", false));
    assert_eq!(p.mx, ["mx.a.test", "*.mx.a.test"]);
    assert_eq!(w.https.paths(), [WELL_KNOWN_PATH]);

    // Same id, far from expiry: no second fetch.
    let l = svc.policy_for("a.test").await;
    assert!(found(&l).2);
    assert_eq!(w.https.requests(), 1);
    assert!(cache_dir(&w.dir.path().join("data"))
        .join("a.test.policy")
        .exists());
}

#[tokio::test]
async fn e1_two_sts_records_mean_no_policy() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.a("mta-sts.a.test", std::net::Ipv4Addr::LOCALHOST);
    w.dns
        .txt("_mta-sts.a.test", &["v=STSv1; id=1", "v=STSv1; id=2"]);
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let svc = w.service();
    assert_eq!(svc.policy_for("a.test").await, PolicyLookup::None);
    assert_eq!(w.https.requests(), 0, "no fetch without exactly one record");
}

#[tokio::test]
async fn e1_missing_or_malformed_record_means_no_policy() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.a("mta-sts.a.test", std::net::Ipv4Addr::LOCALHOST);
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let svc = w.service();
    assert_eq!(svc.policy_for("a.test").await, PolicyLookup::None);
    w.dns.txt("_mta-sts.a.test", &["v=STSv1; id=not-alnum!"]);
    assert_eq!(svc.policy_for("a.test").await, PolicyLookup::None);
    w.dns.txt("_mta-sts.a.test", &["v=spf1 -all"]);
    assert_eq!(svc.policy_for("a.test").await, PolicyLookup::None);
    assert_eq!(w.https.requests(), 0);
}

#[tokio::test]
async fn e1_txt_lookup_failure_without_cache_is_temporary() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.servfail(
        "_mta-sts.a.test",
        hickory_resolver::proto::rr::RecordType::TXT,
    );
    let svc = w.service();
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
}

#[tokio::test]
async fn e2_redirect_is_a_fetch_error() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve(
        "mta-sts.a.test",
        Canned::raw("HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere.test/p.txt\r\nContent-Length: 0\r\n\r\n"),
    );
    let l = w.service().policy_for("a.test").await;
    assert_eq!(temp_fail_type(&l), RptResultType::StsPolicyFetchError);
    let PolicyLookup::TempFail { reason, .. } = l else {
        unreachable!()
    };
    assert!(reason.contains("redirect"), "{reason}");
    assert_eq!(w.https.requests(), 1, "the redirect was not followed");
}

#[tokio::test]
async fn e2_only_status_200_counts() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let svc = w.service();
    // No response configured: the server answers 404.
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
    w.https.serve(
        "mta-sts.a.test",
        Canned::raw(format!(
            "HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{ENFORCE}",
            ENFORCE.len()
        )),
    );
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
}

/// A valid policy padded with an unknown field to exactly `len` bytes.
fn padded_policy(len: usize) -> String {
    let head = "version: STSv1\nmode: testing\nmx: mx.a.test\nmax_age: 86400\nx-pad: ";
    let mut s = head.to_string();
    s.push_str(&"p".repeat(len - head.len() - 1));
    s.push('\n');
    assert_eq!(s.len(), len);
    s
}

#[tokio::test]
async fn e2_oversized_policy_rejected() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let svc = w.service();

    // Exactly 64 KiB is accepted.
    w.https
        .serve("mta-sts.a.test", Canned::policy(&padded_policy(65536)));
    assert_eq!(found(&svc.policy_for("a.test").await).0.mode, Mode::Testing);
    svc.purge("a.test").unwrap();

    // One byte more, announced by Content-Length.
    w.https
        .serve("mta-sts.a.test", Canned::policy(&padded_policy(65537)));
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyInvalid
    );
    // One byte more, without Content-Length (the body ends with the connection).
    w.https.serve(
        "mta-sts.a.test",
        Canned::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{}",
            padded_policy(65537)
        )),
    );
    let l = svc.policy_for("a.test").await;
    assert_eq!(temp_fail_type(&l), RptResultType::StsPolicyInvalid, "{l:?}");
}

#[tokio::test]
async fn e2_content_type_must_be_text_plain() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let svc = w.service();
    w.https
        .serve("mta-sts.a.test", Canned::ok("text/html", ENFORCE));
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyInvalid
    );
    w.https.serve(
        "mta-sts.a.test",
        Canned::ok("text/plain; charset=utf-8", ENFORCE),
    );
    assert_eq!(found(&svc.policy_for("a.test").await).0.mode, Mode::Enforce);
}

#[tokio::test]
async fn e3_invalid_policy_is_sts_policy_invalid() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve(
        "mta-sts.a.test",
        Canned::policy("version: STSv1\nmode: enforce\nmx: bad*.a.test\nmax_age: 60\n"),
    );
    assert_eq!(
        temp_fail_type(&w.service().policy_for("a.test").await),
        RptResultType::StsPolicyInvalid
    );
}

#[tokio::test]
async fn e2_slow_policy_host_times_out() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let mut slow = Canned::policy(ENFORCE);
    slow.delay = Duration::from_secs(5);
    w.https.serve("mta-sts.a.test", slow);
    let mut cfg = w.config(w.https.port);
    cfg.mta_sts.fetch_timeout = Duration::from_millis(400);
    let svc = w.service_with(&cfg);
    let started = std::time::Instant::now();
    let l = svc.policy_for("a.test").await;
    assert_eq!(temp_fail_type(&l), RptResultType::StsPolicyFetchError);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn e2_unreachable_policy_host_is_a_fetch_error() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    // A port nobody listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let svc = w.service_with(&w.config(port));
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
    // No address for the policy host at all.
    w.dns.sts_domain("b.test", "1");
    w.dns
        .servfail("mta-sts.b.test", hickory_resolver::proto::rr::RecordType::A);
    assert_eq!(
        temp_fail_type(&svc.policy_for("b.test").await),
        RptResultType::StsPolicyFetchError
    );
}

#[tokio::test]
async fn e2_untrusted_or_misnamed_certificate_is_webpki_invalid() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");

    // A certificate of a CA we do not trust.
    let stranger = TestCa::new();
    let (https, svc) = w.other_server(stranger.issue(&["mta-sts.a.test"])).await;
    https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsWebpkiInvalid
    );
    assert_eq!(
        https.requests(),
        0,
        "no request over an unverified connection"
    );

    // Our CA, but for another name (e.g. the bare domain).
    let (https, svc) = w.other_server(w.ca.issue(&["a.test", "www.a.test"])).await;
    https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsWebpkiInvalid
    );
}

#[tokio::test]
async fn b5_wildcard_certificate_on_policy_host_refused() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    for names in [&["*.a.test"][..], &["mta-sts.a.test", "*.a.test"][..]] {
        // PKIX alone would accept both certificates for mta-sts.a.test.
        let (https, svc) = w.other_server(w.ca.issue(names)).await;
        https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
        let l = svc.policy_for("a.test").await;
        assert_eq!(
            temp_fail_type(&l),
            RptResultType::StsWebpkiInvalid,
            "{names:?}"
        );
        let PolicyLookup::TempFail { reason, .. } = l else {
            unreachable!()
        };
        assert!(reason.contains("wildcard"), "{reason}");
        assert_eq!(https.requests(), 0);
    }
}

#[tokio::test]
async fn e4_cached_policy_survives_restart_and_is_kept_when_refresh_fails() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    {
        let svc = w.service();
        assert!(!found(&svc.policy_for("a.test").await).2);
    }
    // "Restart": a new service on the same data directory, policy host now down.
    w.https.serve(
        "mta-sts.a.test",
        Canned::raw("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"),
    );
    let svc = w.service();
    assert_eq!(svc.cached_policy("a.test").unwrap().id, "1");
    let l = svc.policy_for("a.test").await;
    let (p, id, from_cache) = found(&l);
    assert_eq!((p.mode, id, from_cache), (Mode::Enforce, "1", true));
    assert_eq!(
        w.https.requests(),
        1,
        "unchanged id: no fetch after restart"
    );

    // The id changes but the fetch fails: the cached policy still applies.
    w.dns.sts_domain("a.test", "2");
    let l = svc.policy_for("a.test").await;
    let (p, id, from_cache) = found(&l);
    assert_eq!((p.mode, id, from_cache), (Mode::Enforce, "1", true));
    assert_eq!(w.https.requests(), 2);

    // Also when the TXT lookup fails or the record disappears (RFC 8461 8.3).
    w.dns.servfail(
        "_mta-sts.a.test",
        hickory_resolver::proto::rr::RecordType::TXT,
    );
    assert!(found(&svc.policy_for("a.test").await).2);
    w.dns.txt("_mta-sts.a.test", &[]);
    assert!(found(&svc.policy_for("a.test").await).2);
}

#[tokio::test]
async fn e4_new_id_fetches_the_new_policy() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let svc = w.service();
    assert_eq!(found(&svc.policy_for("a.test").await).0.mode, Mode::Enforce);
    // The domain retires its policy: mode none under a new id (RFC 8461 8.3).
    w.dns.sts_domain("a.test", "2");
    w.https.serve(
        "mta-sts.a.test",
        Canned::policy("version: STSv1\nmode: none\nmax_age: 86400\n"),
    );
    let l = svc.policy_for("a.test").await;
    let (p, id, from_cache) = found(&l);
    assert_eq!((p.mode, id, from_cache), (Mode::None, "2", false));
    assert!(check_mx(l.policy(), "anything.example").allowed);
    // And it is what a restart finds.
    assert_eq!(w.service().cached_policy("a.test").unwrap().id, "2");
}

fn old_entry(domain: &str, max_age: u32, age: u64) -> CachedPolicy {
    CachedPolicy {
        domain: domain.into(),
        id: "1".into(),
        policy: Policy::parse(ENFORCE.replace("86400", &max_age.to_string()).as_bytes()).unwrap(),
        fetched_at: unix_secs(SystemTime::now()) - age,
    }
}

#[tokio::test]
async fn e4_policy_near_expiry_is_refreshed_ahead_of_time() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve(
        "mta-sts.a.test",
        Canned::policy("version: STSv1\nmode: testing\nmx: mx.a.test\nmax_age: 604800\n"),
    );
    let svc = w.service();
    // Fetched 20 of its 24 hours ago, same id: due, although still valid.
    svc.insert_cached(old_entry("a.test", 86_400, 20 * 3600));
    let l = svc.policy_for("a.test").await;
    let (p, _, from_cache) = found(&l);
    assert_eq!((p.mode, from_cache), (Mode::Testing, false));

    // The background pass does the same for every cached domain that is due.
    svc.insert_cached(old_entry("a.test", 86_400, 20 * 3600));
    assert_eq!(svc.refresh_due().await, 1);
    assert_eq!(
        svc.cached_policy("a.test").unwrap().policy.mode,
        Mode::Testing
    );
    assert_eq!(svc.refresh_due().await, 0, "fresh policies are left alone");
    assert_eq!(w.https.requests(), 2);
}

#[tokio::test]
async fn e4_expired_policy_is_not_used() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let svc = w.service();
    svc.insert_cached(old_entry("a.test", 3600, 7200));
    // Policy host answers 404: with the cached policy expired, nothing applies.
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
    assert!(svc.cached_policy("a.test").is_none());
    assert!(!cache_dir(&w.dir.path().join("data"))
        .join("a.test.policy")
        .exists());
}

#[tokio::test]
async fn e4_purge_removes_cached_policy() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let data = w.dir.path().join("data");
    let svc = w.service();
    assert!(!found(&svc.policy_for("a.test").await).2);

    assert!(svc.purge("a.test").unwrap());
    assert!(svc.cached_policy("a.test").is_none());
    assert!(!cache_dir(&data).join("a.test.policy").exists());
    assert!(!svc.purge("a.test").unwrap());
    // The next lookup fetches anew.
    assert!(!found(&svc.policy_for("a.test").await).2);
    assert_eq!(w.https.requests(), 2);

    // `qrelay mta-sts purge` works on the directory while the service runs: the
    // service notices and does not keep using its in-memory copy.
    assert!(purge_cached(&data, "A.TEST.").unwrap());
    w.https.serve(
        "mta-sts.a.test",
        Canned::raw("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(
        temp_fail_type(&svc.policy_for("a.test").await),
        RptResultType::StsPolicyFetchError
    );
}

#[tokio::test]
async fn e4_policy_of_one_domain_never_applies_to_another_sharing_the_mx() {
    let w = world(&["mta-sts.a.test", "mta-sts.c.test"]).await;
    // a.test and b.test and c.test all use the provider's mx.shared.test.
    w.dns.sts_domain("a.test", "1");
    w.https.serve(
        "mta-sts.a.test",
        Canned::policy("version: STSv1\nmode: enforce\nmx: mx.shared.test\nmax_age: 86400\n"),
    );
    w.dns.sts_domain("c.test", "1");
    w.https.serve(
        "mta-sts.c.test",
        Canned::policy("version: STSv1\nmode: testing\nmx: mx.shared.test\nmax_age: 86400\n"),
    );
    let svc = w.service();
    let a = svc.policy_for("a.test").await;
    assert_eq!(found(&a).0.mode, Mode::Enforce);
    assert!(check_mx(a.policy(), "mx.shared.test").pkix_required);

    // b.test publishes no policy: a.test's enforce policy must not leak to it.
    let b = svc.policy_for("b.test").await;
    assert_eq!(b, PolicyLookup::None);
    let check = check_mx(b.policy(), "mx.shared.test");
    assert!(check.allowed && !check.pkix_required && check.mode.is_none());

    // c.test has its own (testing) policy for the same MX.
    let c = svc.policy_for("c.test").await;
    assert_eq!(found(&c).0.mode, Mode::Testing);
    assert!(!check_mx(c.policy(), "mx.shared.test").pkix_required);

    // Also after a restart, from the disk cache.
    let svc = w.service();
    assert_eq!(svc.policy_for("b.test").await, PolicyLookup::None);
    assert_eq!(found(&svc.policy_for("c.test").await).0.mode, Mode::Testing);
    assert!(svc.cached_policy("b.test").is_none());
}

#[tokio::test]
async fn e4_failing_policy_host_is_not_asked_for_every_message() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let mut cfg = w.config(w.https.port);
    cfg.mta_sts.retry_after_failure = Duration::from_secs(600);
    let svc = w.service_with(&cfg);
    for _ in 0..3 {
        assert_eq!(
            temp_fail_type(&svc.policy_for("a.test").await),
            RptResultType::StsPolicyFetchError
        );
    }
    assert_eq!(w.https.requests(), 1);
    // An admin purge forgets the failure too.
    svc.purge("a.test").unwrap();
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    assert!(!found(&svc.policy_for("a.test").await).2);
}

#[tokio::test]
async fn e4_concurrent_lookups_share_one_fetch() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    let mut slow = Canned::policy(ENFORCE);
    slow.delay = Duration::from_millis(200);
    w.https.serve("mta-sts.a.test", slow);
    let svc = w.service();
    let (x, y, z) = tokio::join!(
        svc.policy_for("a.test"),
        svc.policy_for("a.test"),
        svc.policy_for("a.test")
    );
    for l in [&x, &y, &z] {
        assert_eq!(found(l).0.mode, Mode::Enforce);
    }
    assert_eq!(w.https.requests(), 1);
    assert!(
        lock(&svc.in_flight).is_empty(),
        "no per-domain gates left behind"
    );
}

#[tokio::test]
async fn e4_background_refresher_refreshes_due_policies() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve(
        "mta-sts.a.test",
        Canned::policy("version: STSv1\nmode: testing\nmx: mx.a.test\nmax_age: 604800\n"),
    );
    let mut cfg = w.config(w.https.port);
    cfg.mta_sts.refresh_interval = Duration::from_millis(100);
    let svc = Arc::new(w.service_with(&cfg));
    svc.insert_cached(old_entry("a.test", 86_400, 23 * 3600));
    let task = svc.spawn_refresher();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while svc.cached_policy("a.test").unwrap().policy.mode != Mode::Testing {
        assert!(std::time::Instant::now() < deadline, "not refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(w.https.requests(), 1);
}

#[tokio::test]
async fn mta_sts_disabled_means_no_policy() {
    let w = world(&["mta-sts.a.test"]).await;
    w.dns.sts_domain("a.test", "1");
    w.https.serve("mta-sts.a.test", Canned::policy(ENFORCE));
    let mut cfg = w.config(w.https.port);
    cfg.mta_sts.enabled = false;
    let svc = w.service_with(&cfg);
    assert_eq!(svc.policy_for("a.test").await, PolicyLookup::None);
    assert_eq!(w.https.requests(), 0);
}

fn enforce_policy() -> Policy {
    Policy::parse(ENFORCE.as_bytes()).unwrap()
}

#[test]
fn e5_enforce_mx_not_covered_is_not_used() {
    let p = enforce_policy();
    let c = check_mx(Some(&p), "mx.evil.test");
    assert!(!c.allowed && !c.covered && c.report);
    assert!(matches!(
        c.before_connect("mx.evil.test"),
        HostAction::Skip(_)
    ));
    assert!(!c.authenticates(true));

    // A covered host must present a PKIX-valid certificate for its name.
    let c = check_mx(Some(&p), "MX.A.TEST.");
    assert!(c.allowed && c.covered && c.pkix_required);
    assert_eq!(c.before_connect("mx.a.test"), HostAction::Use);
    assert!(matches!(
        c.after_tls("mx.a.test", false),
        HostAction::Skip(_)
    ));
    assert_eq!(c.after_tls("mx.a.test", true), HostAction::Use);
    assert!(c.authenticates(true), "enforce + covered + PKIX = verified");
    assert!(!c.authenticates(false));
    // Wildcard patterns cover exactly one label.
    assert!(check_mx(Some(&p), "x.mx.a.test").allowed);
    assert!(!check_mx(Some(&p), "y.x.mx.a.test").allowed);
}

#[test]
fn e6_testing_mode_delivers() {
    let mut p = enforce_policy();
    p.mode = Mode::Testing;
    for host in ["mx.a.test", "mx.evil.test"] {
        let c = check_mx(Some(&p), host);
        assert!(c.allowed && !c.pkix_required && c.report, "{host}");
        assert_eq!(c.before_connect(host), HostAction::Use);
        assert_eq!(c.after_tls(host, false), HostAction::Use);
        assert!(!c.authenticates(true), "testing never authenticates");
    }
    assert!(check_mx(Some(&p), "mx.a.test").covered);
    assert!(!check_mx(Some(&p), "mx.evil.test").covered);
}

#[test]
fn e6_mode_none_and_no_policy_change_nothing() {
    let mut p = enforce_policy();
    p.mode = Mode::None;
    for c in [
        check_mx(Some(&p), "mx.evil.test"),
        check_mx(None, "mx.a.test"),
    ] {
        assert_eq!(
            c,
            MxCheck {
                mode: None,
                covered: false,
                allowed: true,
                pkix_required: false,
                report: false
            }
        );
    }
}

#[test]
fn rpt_result_types_use_rfc_8460_names() {
    assert_eq!(
        FetchError::Fetch("x".into()).rpt_result_type().as_str(),
        "sts-policy-fetch-error"
    );
    assert_eq!(
        FetchError::Invalid("x".into()).rpt_result_type().as_str(),
        "sts-policy-invalid"
    );
    assert_eq!(
        FetchError::Webpki("x".into()).rpt_result_type().as_str(),
        "sts-webpki-invalid"
    );
}
