//! TLS-RPT (RFC 8460, standards.md B4, F1-F3) through real delivery: a relay
//! delivers to domains that publish `_smtp._tls` (tests/src/infra.rs,
//! `TLSRPT_DOMAINS` and `rpt-dane`), `qrelay tls-rpt send` sends the day's reports
//! so far, and they must arrive:
//! - by mail at `tlsrpt@ca.example.test` (Postfix mx-ca): a `multipart/report;
//!   report-type="tlsrpt"` message with an `application/tlsrpt+gzip` attachment
//!   holding the JSON report with the RFC's field names;
//! - by HTTPS POST at `https://tlsrpt.example.test/report`, served by this test on
//!   127.0.20.51 with the test CA's `tlsrpt` certificate; the relay connects to
//!   our port through `[tls_rpt] https_port`.
//!
//! Several tests may share mx-ca's mailbox: the relay's `organization_name` is a
//! unique token, which the report's text part and JSON carry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use qrelay_tests::infra::TLSRPT_HTTPS_IP;
use qrelay_tests::json::Json;
use qrelay_tests::{token, wait_until, Infra, Message, Mx, Relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ARRIVE: Duration = Duration::from_secs(60);

/// One request the HTTPS endpoint received.
#[derive(Debug, Clone)]
struct Posted {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// The report endpoint: HTTPS on 127.0.20.51:<free port>, answering 200 to every
/// request and keeping what it received. Runs until the test process ends.
struct Endpoint {
    port: u16,
    seen: Arc<Mutex<Vec<Posted>>>,
}

impl Endpoint {
    fn start(certs: &Path) -> Result<Endpoint> {
        let chain = CertificateDer::pem_file_iter(certs.join("tlsrpt-chain.pem"))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(certs.join("tlsrpt.key"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = std::net::TcpListener::bind((TLSRPT_HTTPS_IP, 0))
            .with_context(|| format!("bind {TLSRPT_HTTPS_IP}"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let seen: Arc<Mutex<Vec<Posted>>> = Arc::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let seen = seen2.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        if let Ok(p) = read_request(&mut tls).await {
                            seen.lock().unwrap().push(p);
                            let _ = tls
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                            let _ = tls.shutdown().await;
                        }
                    });
                }
            });
        });
        Ok(Endpoint { port, seen })
    }

    fn posts(&self) -> Vec<Posted> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP/1.1 request with a Content-Length body (what the relay sends).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<Posted> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed in the header");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or("").split(' ');
    let method = start.next().unwrap_or("").to_string();
    let path = start.next().unwrap_or("").to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .context("no Content-Length")?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed in the body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Posted {
        method,
        path,
        headers,
        body,
    })
}

fn gunzip(data: &[u8]) -> Result<String> {
    let mut out = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut out)
        .context("gunzip")?;
    Ok(out)
}

/// The `application/tlsrpt+gzip` attachment of a report mail, decoded and
/// gunzipped; also returns the attachment's part headers.
fn report_attachment(m: &Message) -> Result<(String, Json)> {
    let raw = m.raw.replace("\r\n", "\n");
    let start = raw
        .find("Content-Type: application/tlsrpt+gzip")
        .context("no application/tlsrpt+gzip part")?;
    let part = &raw[start..];
    let (headers, body) = part.split_once("\n\n").context("part without body")?;
    let b64: String = body
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .concat();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .context("base64")?;
    let json = gunzip(&gz)?;
    Ok((headers.to_string(), Json::parse(&json)?))
}

/// Check the report document (RFC 8460 section 4.4) for `domain`; returns its
/// policy types.
fn check_report(report: &Json, org: &str, domain: &str) -> Vec<String> {
    assert_eq!(
        report.get("organization-name").as_str(),
        Some(org),
        "{report:?}"
    );
    assert!(report.get("contact-info").as_str().is_some());
    assert!(report
        .get("report-id")
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let range = report.get("date-range");
    for k in ["start-datetime", "end-datetime"] {
        let v = range
            .get(k)
            .as_str()
            .unwrap_or_else(|| panic!("no {k}: {report:?}"));
        assert!(v.ends_with('Z') && v.contains('T'), "{k} = {v}");
    }
    let policies = report.get("policies").as_array();
    assert!(!policies.is_empty(), "{report:?}");
    let mut types = Vec::new();
    for p in policies {
        let policy = p.get("policy");
        assert_eq!(policy.get("policy-domain").as_str(), Some(domain));
        let t = policy.get("policy-type").as_str().expect("policy-type");
        assert!(["tlsa", "sts", "no-policy-found"].contains(&t), "{t}");
        types.push(t.to_string());
        let summary = p.get("summary");
        for k in [
            "total-successful-session-count",
            "total-failure-session-count",
        ] {
            assert!(matches!(summary.get(k), Json::Num(_)), "no {k}: {p:?}");
        }
        for f in p.get("failure-details").as_array() {
            assert!(f.get("result-type").as_str().is_some());
            assert!(matches!(f.get("failed-session-count"), Json::Num(_)));
        }
    }
    let successes: f64 = policies
        .iter()
        .map(
            |p| match p.get("summary").get("total-successful-session-count") {
                Json::Num(n) => *n,
                _ => 0.0,
            },
        )
        .sum();
    assert!(
        successes >= 1.0,
        "no successful session counted: {report:?}"
    );
    types
}

/// Wait for the report mail about `domain` from the relay with organization `org`.
fn wait_report_mail(org: &str, domain: &str) -> Message {
    Infra::get()
        .mailbox(Mx::Ca)
        .wait_for(
            |m| m.raw.contains(org) && m.header("TLS-Report-Domain").as_deref() == Some(domain),
            ARRIVE,
        )
        .unwrap_or_else(|e| panic!("report mail for {domain}: {e:#}"))
        .remove(0)
}

#[test]
fn b4_f3_reports_arrive_by_mail_and_https() {
    let infra = Infra::get();
    let endpoint = Endpoint::start(&infra.certs()).expect("HTTPS endpoint");
    let org = token("rpt-org");
    // Level verified: mx-expired (rpt-fail) cannot carry mail, a failure to report.
    let relay = Relay::start(&format!(
        "[tls_rpt]\nenabled = true\nhttps_port = {}\norganization_name = \"{org}\"\n\
         [class.normal]\nlevel = \"verified\"\n",
        endpoint.port
    ))
    .unwrap();

    // A day's worth of sessions: one message to each reporting domain.
    relay.deliver_token("rpt-mail", "rpt-mail.example.test", Mx::Ca, ARRIVE);
    relay.deliver_token("rpt-https", "rpt-https.example.test", Mx::Ca, ARRIVE);
    relay.deliver_token("rpt-dane", "rpt-dane.example.test", Mx::DaneEe, ARRIVE);
    // The session results are recorded when an attempt ends, just after the MX
    // accepted: wait until the queue is empty.
    relay
        .wait_queue(|q| !q.contains("rpt-"), ARRIVE)
        .expect("the messages leave the queue");
    // F2: a session that fails the policy (the expired certificate) is counted as
    // a failure with its result type.
    let fail_tok = token("rpt-fail");
    let fail_id = relay
        .swaks(
            "sender@lan.test",
            &format!("{fail_tok}@rpt-fail.example.test"),
            &fail_tok,
        )
        .unwrap();
    relay
        .wait_pending_with_reason(&fail_id, &["expired"], ARRIVE)
        .unwrap();

    let out = relay.cli_ok(&["tls-rpt", "send"]).unwrap();
    assert!(
        out.contains("rpt-mail.example.test -> mailto:tlsrpt@ca.example.test: queued as"),
        "{out}\nlog:\n{}",
        relay.log_tail(40)
    );
    assert!(
        out.contains("rpt-dane.example.test -> mailto:tlsrpt@ca.example.test: queued as"),
        "{out}"
    );
    assert!(
        out.contains("rpt-fail.example.test -> mailto:tlsrpt@ca.example.test: queued as"),
        "{out}"
    );
    assert!(
        out.contains("rpt-https.example.test -> https://tlsrpt.example.test/report: posted (200)"),
        "{out}\nlog:\n{}",
        relay.log_tail(40)
    );

    // By HTTPS POST (F3), made during the send.
    let post = wait_until("the HTTPS report", ARRIVE, || {
        endpoint
            .posts()
            .into_iter()
            .find(|p| gunzip(&p.body).is_ok_and(|j| j.contains("rpt-https.example.test")))
    })
    .unwrap();
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/report");
    assert_eq!(
        post.headers.get("content-type").map(String::as_str),
        Some("application/tlsrpt+gzip")
    );
    assert_eq!(
        post.headers.get("host").map(String::as_str),
        Some("tlsrpt.example.test")
    );
    let report = Json::parse(&gunzip(&post.body).unwrap()).unwrap();
    let types = check_report(&report, &org, "rpt-https.example.test");
    assert!(types.iter().any(|t| t == "no-policy-found"), "{types:?}");

    // By mail (F3): multipart/report; report-type="tlsrpt", gzip attachment.
    for (domain, want_type) in [
        ("rpt-mail.example.test", "no-policy-found"),
        ("rpt-dane.example.test", "tlsa"),
    ] {
        let m = wait_report_mail(&org, domain);
        let ct = m.header("Content-Type").unwrap_or_default();
        assert!(ct.starts_with("multipart/report"), "{ct}");
        assert!(ct.contains("report-type=\"tlsrpt\""), "{ct}");
        let subject = m.header("Subject").unwrap_or_default();
        assert!(
            subject.starts_with(&format!("Report Domain: {domain} Submitter: ")),
            "{subject}"
        );
        assert!(subject.contains("Report-ID: <"), "{subject}");
        assert!(m.header("TLS-Report-Submitter").is_some());
        let (part_headers, report) = report_attachment(&m).unwrap();
        assert!(
            part_headers.contains("Content-Transfer-Encoding: base64"),
            "{part_headers}"
        );
        assert!(
            part_headers.contains(&format!("!{domain}!")) && part_headers.contains(".json.gz\""),
            "filename: {part_headers}"
        );
        let types = check_report(&report, &org, domain);
        assert!(types.iter().any(|t| t == want_type), "{domain}: {types:?}");
    }

    // The failure: no success, a certificate-expired detail naming the MX.
    let m = wait_report_mail(&org, "rpt-fail.example.test");
    let (_, report) = report_attachment(&m).unwrap();
    let policy = &report.get("policies").as_array()[0];
    assert!(
        matches!(policy.get("summary").get("total-failure-session-count"), Json::Num(n) if *n >= 1.0),
        "{report:?}"
    );
    let details = policy.get("failure-details").as_array();
    let expired = details
        .iter()
        .find(|d| d.get("result-type").as_str() == Some("certificate-expired"))
        .unwrap_or_else(|| panic!("no certificate-expired detail: {report:?}"));
    assert_eq!(
        expired.get("receiving-mx-hostname").as_str(),
        Some("mx-expired.example.test")
    );
    assert_eq!(expired.get("receiving-ip").as_str(), Some("127.0.20.13"));
    relay.cli_ok(&["queue", "delete", &fail_id]).unwrap();

    // Sent means gone: a second send right away has nothing for these domains.
    let again = relay.cli_ok(&["tls-rpt", "send"]).unwrap();
    assert!(!again.contains("rpt-mail.example.test"), "{again}");
}
