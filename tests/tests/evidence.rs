//! The evidence log (standards.md A5) through the real relay: a delivery leaves a
//! record with every A5 field, `qrelay evidence verify` vouches for the log after a
//! clean stop, both exports carry the same facts, and a tampered copy fails.

use std::fs;
use std::path::Path;
use std::time::Duration;

use qrelay_tests::json::Json;
use qrelay_tests::{level, token, Infra, Mx, Relay};

const ARRIVE: Duration = Duration::from_secs(60);

/// Every column of an evidence record, as `qrelay evidence export` names them.
const A5_FIELDS: &[&str] = &[
    "time",
    "at",
    "queue_id",
    "message_id",
    "sender",
    "recipient",
    "class",
    "class_reasons",
    "required_level",
    "exception",
    "mx",
    "ip",
    "mx_dnssec",
    "address_dnssec",
    "tlsa_dnssec",
    "tlsa_records",
    "tlsa_matched",
    "mta_sts_id",
    "mta_sts_mode",
    "tls_version",
    "cipher",
    "group",
    "tls_profile",
    "peer_spki_sha256",
    "peer_cert_sha256",
    "verdict",
    "mechanism",
    "requiretls",
    "outcome",
    "status",
    "reply",
];

#[test]
fn a5_evidence_log_verifies_exports_every_field_and_detects_tampering() {
    let mut relay = Relay::start(&level("verified")).unwrap();
    let tok = token("evidence");
    let rcpt = format!("{tok}@ca.example.test");
    let id = relay.swaks("sender@lan.test", &rcpt, &tok).unwrap();
    Infra::get()
        .mailbox(Mx::Ca)
        .wait_for_token(&tok, ARRIVE)
        .unwrap_or_else(|e| panic!("waiting for {tok}: {e:#}"));
    // Settled (and so recorded) once it left the queue.
    relay
        .wait_queue(|list| !list.contains(&id), ARRIVE)
        .unwrap();
    // `qrelay status` names the signing key an auditor notes down.
    let status = relay.cli_ok(&["status"]).unwrap();
    let status_key = status
        .lines()
        .find_map(|l| l.strip_prefix("evidence log key: "))
        .unwrap_or_else(|| panic!("no evidence key in `qrelay status`:\n{status}"))
        .trim()
        .to_string();
    // A clean stop signs everything recorded.
    relay.stop();

    let report = relay.cli_ok(&["evidence", "verify"]).unwrap();
    assert!(report.contains("intact"), "{report}");
    assert!(!report.contains("unsigned"), "{report}");
    let fingerprint = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("device key:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no device key in the report:\n{report}"))
        .to_string();
    assert_eq!(
        status_key, fingerprint,
        "status and verify name the same key"
    );
    relay
        .cli_ok(&["evidence", "verify", "--expect-key", &fingerprint])
        .unwrap();
    let wrong = "ab".repeat(32);
    let out = relay
        .cli(&["evidence", "verify", "--expect-key", &wrong])
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a foreign key fingerprint passed"
    );

    // JSON: the record of this recipient, with every field.
    let json = relay
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
        .unwrap();
    assert!(json.status.success(), "{json:?}");
    let rows = Json::parse(&String::from_utf8(json.stdout).unwrap()).unwrap();
    let row = rows
        .as_array()
        .iter()
        .find(|r| r.get("recipient").as_str() == Some(rcpt.as_str()))
        .unwrap_or_else(|| panic!("no evidence for {rcpt} in {rows:?}"))
        .clone();
    for field in A5_FIELDS {
        assert_ne!(row.get(field), &Json::Null, "JSON export lacks {field}");
    }
    let text = |f: &str| row.get(f).as_str().unwrap_or_default().to_string();
    assert_eq!(text("queue_id"), id);
    assert_eq!(text("sender"), "sender@lan.test");
    assert_eq!(text("class"), "normal");
    assert_eq!(text("required_level"), "verified");
    assert_eq!(text("mx"), "mx-ca.example.test");
    assert_eq!(text("ip"), Mx::Ca.ip().to_string());
    assert_eq!(text("mx_dnssec"), "secure");
    assert_eq!(text("address_dnssec"), "secure");
    assert_eq!(text("verdict"), "verified");
    assert_eq!(text("mechanism"), "pkix");
    assert_eq!(text("requiretls"), "not requested");
    assert_eq!(text("outcome"), "delivered");
    assert!(text("status").starts_with("2."), "{row:?}");
    assert!(text("reply").starts_with("250"), "{row:?}");
    assert!(text("message_id").contains('@'), "{row:?}");
    for f in [
        "tls_version",
        "cipher",
        "group",
        "tls_profile",
        "peer_spki_sha256",
        "peer_cert_sha256",
    ] {
        assert!(!text(f).is_empty(), "{f} is empty: {row:?}");
    }

    // CSV into a file: the same facts, column for column.
    let csv_file = relay.dir().join("evidence.csv");
    let today = "2000-01-01";
    relay
        .cli_ok(&[
            "evidence",
            "export",
            "--from",
            today,
            "--to",
            "2999-12-31T23:59:59Z",
            "--format",
            "csv",
            "--output",
            csv_file.to_str().unwrap(),
        ])
        .unwrap();
    let table = parse_csv(&fs::read_to_string(&csv_file).unwrap());
    let header = &table[0];
    for field in A5_FIELDS {
        assert!(header.iter().any(|h| h == field), "CSV lacks {field}");
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let line = table
        .iter()
        .find(|r| r.get(col("recipient")) == Some(&rcpt))
        .unwrap_or_else(|| panic!("no CSV row for {rcpt}"));
    assert_eq!(line.len(), header.len());
    for field in A5_FIELDS {
        let in_json = match row.get(field) {
            Json::Str(s) => s.clone(),
            Json::Num(n) => format!("{n}"),
            Json::Arr(items) => items
                .iter()
                .map(|i| i.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" | "),
            other => panic!("{field}: unexpected JSON {other:?}"),
        };
        assert_eq!(line[col(field)], in_json, "CSV and JSON differ in {field}");
    }

    // A copy of the evidence, verified through a config pointing at it, then one
    // character of this recipient's record changed.
    let copy = relay.dir().join("copy");
    copy_dir(&relay.spool_dir.join("evidence"), &copy.join("evidence"));
    let mut config: toml::Table = fs::read_to_string(&relay.config_file)
        .unwrap()
        .parse()
        .unwrap();
    config["spool"]
        .as_table_mut()
        .unwrap()
        .insert("dir".into(), copy.display().to_string().into());
    let copy_config = relay.dir().join("copy.toml");
    fs::write(&copy_config, toml::to_string(&config).unwrap()).unwrap();
    let verify_copy = || {
        std::process::Command::new(qrelay_tests::relay::qrelay_bin())
            .args(["evidence", "verify", "--config"])
            .arg(&copy_config)
            .output()
            .unwrap()
    };
    let out = verify_copy();
    assert!(out.status.success(), "the copy does not verify: {out:?}");

    let log = copy.join("evidence/log");
    let mut bytes = fs::read(&log).unwrap();
    let at = bytes
        .windows(tok.len())
        .position(|w| w == tok.as_bytes())
        .expect("the recipient is in the log");
    bytes[at] ^= 0x01;
    fs::write(&log, &bytes).unwrap();
    let out = verify_copy();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "tampering not detected: {out:?}"
    );
    assert!(
        stderr.contains("NOT intact") && stderr.contains("record"),
        "{stderr}"
    );
    // The export refuses a broken log.
    let out = std::process::Command::new(qrelay_tests::relay::qrelay_bin())
        .args([
            "evidence",
            "export",
            "--from",
            "2000-01-01",
            "--to",
            "2999-12-31",
        ])
        .args(["--format", "json", "--config"])
        .arg(&copy_config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "a broken log was exported");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// RFC 4180: quoted fields with doubled quotes, CRLF between records.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}
