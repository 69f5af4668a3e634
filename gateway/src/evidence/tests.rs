//! The evidence log (standards.md A5): records, the chain across restarts and
//! crashes, and every kind of tampering `verify` must notice.

use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::signature::Ed25519KeyPair;

use super::chain::{self, Body, Entry, Hash, Head, Paths};
use super::export::csv_field;
use super::*;
use crate::config::{ExceptionConfig, Level, RiskClass};
use crate::spool::record::{
    Attempt, AuthFacts, BodyType, ClientInfo, Envelope, Mechanism, MtaStsFacts, QueueId, RcptState,
    Recipient, TlsFacts, TlsaFacts, TransportVerdict, RECORD_VERSION,
};

// ---- helpers ---------------------------------------------------------------

fn sample(i: u64) -> AttemptEvidence {
    AttemptEvidence {
        at: 1_790_000_000 + i * 60,
        queue_id: format!("{:016X}", 0xABC0 + i),
        message_id: format!("<m{i}@lan.test>"),
        sender: "alice@lan.test".into(),
        recipient: format!("rcpt{i}@example.test"),
        class: "high".into(),
        class_reasons: vec!["subject tag [vertraulich]".into()],
        required_level: "verified".into(),
        mx: "mx.example.test".into(),
        ip: "127.0.20.1".into(),
        verdict: "verified".into(),
        mechanism: "dane-ee".into(),
        outcome: "delivered".into(),
        status: "2.0.0".into(),
        reply: "250 2.0.0 Ok".into(),
        ..AttemptEvidence::default()
    }
}

/// A log in a fresh tempdir with `n` attempts, signed.
fn log_with(n: u64) -> (tempfile::TempDir, EvidenceLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = EvidenceLog::open(&dir.path().join("evidence")).unwrap();
    for i in 0..n {
        log.append(sample(i)).unwrap();
    }
    log.checkpoint().unwrap();
    (dir, log)
}

fn ev(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("evidence")
}

/// The frames of a log file as (offset, length including the prefix).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + n > bytes.len() {
            break;
        }
        out.push((at, 4 + n));
        at += 4 + n;
    }
    out
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    frames(bytes)
        .into_iter()
        .map(|(o, n)| postcard::from_bytes(&bytes[o + 4..o + n]).unwrap())
        .collect()
}

fn read_log(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("log")).unwrap()
}

fn write_log(dir: &Path, bytes: &[u8]) {
    fs::write(dir.join("log"), bytes).unwrap();
}

/// What an attacker who can write files does after changing entries: renumber,
/// relink every hash, re-sign every checkpoint with `key`, and write a matching
/// head. Returns the log bytes.
fn rechain(dir: &Path, mut list: Vec<Entry>, key: &Ed25519KeyPair) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut prev: Hash = [0; 32];
    let mut head = None;
    for (seq, e) in list.iter_mut().enumerate() {
        e.seq = seq as u64;
        e.prev = prev;
        if let Body::Checkpoint {
            head_seq,
            head_hash,
            signature,
        } = &mut e.body
        {
            *head_seq = seq as u64 - 1;
            *head_hash = prev;
            *signature = chain::sign(key, *head_seq, head_hash);
        }
        let frame = chain::encode_frame(e).unwrap();
        prev = chain::hash(&frame);
        if let Body::Checkpoint {
            head_seq,
            head_hash,
            signature,
        } = &e.body
        {
            head = Some(Head {
                checkpoint_seq: seq as u64,
                checkpoint_hash: prev,
                head_seq: *head_seq,
                head_hash: *head_hash,
                signature: signature.clone(),
            });
        }
        bytes.extend_from_slice(&frame);
    }
    write_log(dir, &bytes);
    head.unwrap().write(&dir.join("head")).unwrap();
    bytes
}

fn new_key() -> (Ed25519KeyPair, Vec<u8>) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    (
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
        doc.as_ref().to_vec(),
    )
}

fn device_key(dir: &Path) -> Ed25519KeyPair {
    chain::read_key(&Paths::new(dir).key).unwrap().unwrap()
}

fn verify_err(dir: &Path) -> String {
    match verify(dir, None) {
        Ok(r) => panic!("tampering not detected:\n{r}"),
        Err(e) => e.to_string(),
    }
}

fn export_string(dir: &Path, from: u64, to: u64, format: ExportFormat) -> (usize, String) {
    let mut out = Vec::new();
    let n = export(dir, from, to, format, &mut out).unwrap();
    (n, String::from_utf8(out).unwrap())
}

// ---- the record ------------------------------------------------------------

fn envelope() -> Envelope {
    Envelope {
        record_version: RECORD_VERSION,
        id: QueueId::parse("0123456789ABCDEF").unwrap(),
        received_at: 1_790_000_000,
        sender: "alice@lan.test".into(),
        ret: None,
        envid: None,
        body: BodyType::SevenBit,
        smtputf8: false,
        requiretls: true,
        size: 10,
        class: RiskClass::High,
        class_reasons: vec!["subject tag [vertraulich]".into(), "sender alice".into()],
        tls_optional: false,
        expires_at: None,
        client: ClientInfo::default(),
        message_id: Some("<m1@lan.test>".into()),
        recipients: vec![Recipient::new(
            "bob@example.test".into(),
            None,
            None,
            1_790_000_000,
        )],
    }
}

fn full_attempt() -> Attempt {
    Attempt {
        at: 1_790_000_100,
        mx: "mx.example.test".into(),
        ip: "127.0.20.1".into(),
        tls: Some(TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            group: Some("secp384r1".into()),
            peer_cert_sha256: Some("cc".repeat(32)),
            peer_spki_sha256: Some("aa".repeat(32)),
            pkix_verified: true,
            profile: "bsi".into(),
            peer_key_type: Some("EC secp384r1".into()),
            peer_key_bits: Some(384),
        }),
        verdict: Some(TransportVerdict::Verified),
        reply: "250 2.0.0 Ok: queued".into(),
        auth: Some(AuthFacts {
            mechanism: Mechanism::DaneEe,
            basis: "DANE-EE".into(),
            mx_dnssec: "secure".into(),
            address_dnssec: "secure".into(),
            tlsa: Some(TlsaFacts {
                dnssec: "secure".into(),
                base_domain: "mx.example.test".into(),
                records: vec!["3 1 1 aaaa".into(), "3 1 1 bbbb".into()],
                matched: Some("3 1 1 aaaa".into()),
            }),
            mta_sts: Some(MtaStsFacts {
                id: "20260101".into(),
                mode: "enforce".into(),
                covered: true,
            }),
        }),
        problem: None,
        requiretls: true,
    }
}

#[test]
fn a5_evidence_from_attempt_has_every_field() {
    let env = envelope();
    let mut r = env.recipients[0].clone();
    r.state = RcptState::Delivered;
    r.status = Some("2.0.0".into());
    let a = full_attempt();
    let e = AttemptEvidence::from_attempt(&env, &r, &a, Level::Verified, None);
    assert_eq!(e.at, 1_790_000_100);
    assert_eq!(e.queue_id, "0123456789ABCDEF");
    assert_eq!(e.message_id, "<m1@lan.test>");
    assert_eq!(e.sender, "alice@lan.test");
    assert_eq!(e.recipient, "bob@example.test");
    assert_eq!(e.class, "high");
    assert_eq!(e.class_reasons.len(), 2);
    assert_eq!(e.required_level, "verified");
    assert_eq!(e.exception, "");
    assert_eq!(
        (e.mx.as_str(), e.ip.as_str()),
        ("mx.example.test", "127.0.20.1")
    );
    assert_eq!(e.mx_dnssec, "secure");
    assert_eq!(e.address_dnssec, "secure");
    assert_eq!(e.tlsa_dnssec, "secure");
    assert_eq!(e.tlsa_records, vec!["3 1 1 aaaa", "3 1 1 bbbb"]);
    assert_eq!(e.tlsa_matched, "3 1 1 aaaa");
    assert_eq!(e.mta_sts_id, "20260101");
    assert_eq!(e.mta_sts_mode, "enforce");
    assert_eq!(e.tls_version, "TLSv1.3");
    assert_eq!(e.cipher, "TLS13_AES_256_GCM_SHA384");
    assert_eq!(e.group, "secp384r1");
    assert_eq!(e.tls_profile, "bsi");
    assert_eq!(e.peer_spki_sha256, "aa".repeat(32));
    assert_eq!(e.peer_cert_sha256, "cc".repeat(32));
    assert_eq!(e.verdict, "verified");
    assert_eq!(e.mechanism, "dane-ee");
    assert_eq!(e.requiretls, "requested, passed on");
    assert_eq!(e.outcome, "delivered");
    assert_eq!(e.status, "2.0.0");
    assert_eq!(e.reply, "250 2.0.0 Ok: queued");
    // Every column is filled for a fully authenticated delivery (without an
    // exception: that column is for exceptions only).
    for (name, value) in e.columns() {
        assert!(
            name == "exception" || !value.is_empty(),
            "column {name} is empty"
        );
    }
}

#[test]
fn a5_evidence_without_tls_leaves_fields_empty_and_records_the_exception() {
    let mut env = envelope();
    env.sender = String::new();
    env.requiretls = false;
    env.message_id = None;
    let mut r = env.recipients[0].clone();
    r.state = RcptState::Pending;
    r.status = Some("4.7.5".into());
    let a = Attempt {
        at: 5,
        mx: String::new(),
        ip: String::new(),
        tls: None,
        verdict: None,
        reply: "no MX reachable".into(),
        auth: None,
        problem: None,
        requiretls: false,
    };
    let exc = ExceptionConfig {
        id: "partner-dane-broken".into(),
        domain: Some("example.test".into()),
        address: None,
        level: Level::Encrypted,
        reason: "ticket 4711".into(),
        approver: "dpo@lan.test".into(),
        created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        expires: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    let e = AttemptEvidence::from_attempt(&env, &r, &a, Level::Encrypted, Some(&exc));
    assert_eq!(e.sender, "<>");
    assert_eq!(e.message_id, "");
    assert_eq!(e.requiretls, "not requested");
    assert_eq!(e.outcome, "deferred");
    assert_eq!(e.status, "4.7.5");
    assert_eq!(e.required_level, "encrypted");
    assert!(e
        .exception
        .starts_with("partner-dane-broken; approved by dpo@lan.test"));
    assert!(e.exception.contains("ticket 4711"), "{}", e.exception);
    assert!(
        e.exception.contains("2027-01-15T08:00:00Z"),
        "{}",
        e.exception
    );
    for empty in [
        &e.tls_version,
        &e.cipher,
        &e.group,
        &e.verdict,
        &e.mechanism,
        &e.mx_dnssec,
        &e.tlsa_dnssec,
        &e.tlsa_matched,
        &e.mta_sts_id,
    ] {
        assert!(empty.is_empty());
    }

    let mut env2 = envelope();
    env2.requiretls = true;
    let mut a2 = full_attempt();
    a2.requiretls = false;
    r.state = RcptState::Held;
    let e = AttemptEvidence::from_attempt(&env2, &r, &a2, Level::Verified, None);
    assert_eq!(e.requiretls, "requested, not passed on");
    assert_eq!(e.outcome, "held");
    r.state = RcptState::Failed;
    let e = AttemptEvidence::from_attempt(&env2, &r, &a2, Level::Verified, None);
    assert_eq!(e.outcome, "failed");
}

#[test]
fn a5_csv_columns_are_the_json_keys() {
    let e = sample(1);
    let json = serde_json::to_value(&e).unwrap();
    let keys: std::collections::BTreeSet<_> = json.as_object().unwrap().keys().cloned().collect();
    let cols: std::collections::BTreeSet<_> =
        e.columns().iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(keys, cols);
}

#[test]
fn a5_csv_fields_are_escaped() {
    assert_eq!(csv_field("plain"), "plain");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("two\r\nlines"), "\"two\r\nlines\"");
    assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    assert_eq!(csv_field("@evil"), "'@evil");
    assert_eq!(csv_field(""), "");
}

#[test]
fn a5_export_bounds_parse_dates_and_rfc3339() {
    assert_eq!(parse_bound("1970-01-01", false).unwrap(), 0);
    assert_eq!(parse_bound("1970-01-01", true).unwrap(), 86_400);
    assert_eq!(parse_bound("2026-11-22", false).unwrap(), 1_795_305_600);
    assert_eq!(parse_bound("2024-02-29", false).unwrap(), 1_709_164_800);
    assert_eq!(
        parse_bound("2026-11-22T10:00:00Z", false).unwrap(),
        1_795_305_600 + 36_000
    );
    // --to is inclusive: that second belongs to the range.
    assert_eq!(
        parse_bound("2026-11-22T10:00:00Z", true).unwrap(),
        1_795_305_600 + 36_001
    );
    assert_eq!(
        parse_bound("2026-11-22T11:00:00.123+01:00", false).unwrap(),
        1_795_305_600 + 36_000
    );
    assert_eq!(
        parse_bound("2026-11-22t05:30:00-04:30", false).unwrap(),
        1_795_305_600 + 36_000
    );
    for bad in [
        "2026-13-01",
        "2025-02-29",
        "22.11.2026",
        "2026-11-22T25:00:00Z",
        "2026-11-22T10:00:00",
        "2026-11-22T10:00Z",
        "1969-12-31",
        "",
    ] {
        assert!(parse_bound(bad, false).is_err(), "{bad} accepted");
    }
}

// ---- the log ---------------------------------------------------------------

#[test]
fn a5_round_trip_append_sign_verify_export() {
    let (dir, log) = log_with(3);
    let ev = ev(&dir);
    let r = verify(&ev, None).unwrap();
    assert_eq!(r.attempts, 3);
    // genesis, checkpoint, 3 attempts, checkpoint
    assert_eq!(r.records, 6);
    assert_eq!(r.checkpoints, 2);
    assert_eq!(r.signed_through, 4);
    assert_eq!(r.head_checkpoint, 5);
    assert_eq!(
        (r.unsigned_records, r.unsigned_attempts, r.torn_bytes),
        (0, 0, 0)
    );
    assert_eq!(r.key_fingerprint, log.public_key_fingerprint());
    assert!(r.key_file_checked);
    assert_eq!(r.first_attempt, Some(sample(0).at));
    assert_eq!(r.last_attempt, Some(sample(2).at));
    assert!(r.to_string().contains("intact"));
    // The fingerprint also satisfies --expect-key, in any case and with colons.
    let fp = log.public_key_fingerprint();
    let colons = fp
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(verify(&ev, Some(&colons)).unwrap().key_expected);

    // The records read back equal what was appended.
    let got: Vec<AttemptEvidence> = entries(&read_log(&ev))
        .into_iter()
        .filter_map(|e| match e.body {
            Body::Attempt(a) => Some(*a),
            _ => None,
        })
        .collect();
    assert_eq!(got, (0..3).map(sample).collect::<Vec<_>>());

    // Files are private: the log holds personal data, the key signs it.
    use std::os::unix::fs::PermissionsExt;
    for f in ["log", "head", "device-ed25519.pk8"] {
        let mode = fs::metadata(ev.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} mode {mode:o}");
    }
}

#[test]
fn a5_export_json_and_csv_with_time_range() {
    let (dir, log) = log_with(3);
    let mut odd = sample(3);
    odd.reply = "550 5.7.1 \"no\", said the server\r\nsecond line".into();
    odd.tlsa_records = vec!["3 1 1 aa".into(), "2 0 1 bb".into()];
    log.append(odd.clone()).unwrap();
    log.checkpoint().unwrap();
    let ev = ev(&dir);

    let (n, json) = export_string(&ev, 0, u64::MAX, ExportFormat::Json);
    assert_eq!(n, 4);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3]["reply"], odd.reply.as_str());
    assert_eq!(rows[3]["tlsa_records"][1], "2 0 1 bb");
    assert_eq!(rows[0]["time"], "2026-09-21T14:13:20Z");
    for (name, _) in sample(0).columns() {
        assert!(rows[0].get(name).is_some(), "json lacks {name}");
    }

    // [from, to): only the middle two.
    let (n, json) = export_string(&ev, sample(1).at, sample(3).at, ExportFormat::Json);
    assert_eq!(n, 2);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["recipient"], "rcpt1@example.test");
    assert_eq!(v[1]["recipient"], "rcpt2@example.test");
    let (n, json) = export_string(&ev, 1, 2, ExportFormat::Json);
    assert_eq!((n, json.as_str()), (0, "[]\n"));

    let (n, csv) = export_string(&ev, 0, u64::MAX, ExportFormat::Csv);
    assert_eq!(n, 4);
    let header = csv.split("\r\n").next().unwrap();
    assert!(header.starts_with("time,at,queue_id,message_id,sender,recipient,class,"));
    assert_eq!(header.split(',').count(), 31);
    assert!(csv.contains("\"550 5.7.1 \"\"no\"\", said the server\r\nsecond line\""));
    assert!(csv.contains(",3 1 1 aa | 2 0 1 bb,"));
    assert!(export(&ev, 10, 10, ExportFormat::Csv, &mut Vec::new()).is_err());
}

#[test]
fn a5_restart_keeps_the_chain() {
    let (dir, log) = log_with(2);
    let fp = log.public_key_fingerprint();
    log.append(sample(2)).unwrap();
    drop(log);
    // Not signed at the drop: the unsigned tail is reported, not an error.
    let r = verify(&ev(&dir), None).unwrap();
    assert_eq!((r.unsigned_records, r.unsigned_attempts), (1, 1));

    let log = EvidenceLog::open(&ev(&dir)).unwrap();
    assert_eq!(log.public_key_fingerprint(), fp);
    log.append(sample(3)).unwrap();
    log.checkpoint().unwrap();
    drop(log);
    let log = EvidenceLog::open(&ev(&dir)).unwrap();
    log.append(sample(4)).unwrap();
    log.checkpoint().unwrap();
    let r = verify(&ev(&dir), None).unwrap();
    assert_eq!(r.attempts, 5);
    assert_eq!(r.resumed, 0);
    assert_eq!(r.unsigned_records, 0);
    assert_eq!(r.key_fingerprint, fp);
    let seqs: Vec<u64> = entries(&read_log(&ev(&dir)))
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a5_checkpoint_only_when_something_is_new() {
    let (dir, log) = log_with(1);
    let before = read_log(&ev(&dir)).len();
    log.checkpoint().unwrap();
    log.checkpoint().unwrap();
    assert_eq!(read_log(&ev(&dir)).len(), before);
}

#[test]
fn a5_second_relay_on_the_same_log_is_refused() {
    let (dir, _log) = log_with(0);
    let err = EvidenceLog::open(&ev(&dir)).unwrap_err();
    assert!(matches!(err, EvidenceError::Locked(_)), "{err}");
}

#[test]
fn a5_torn_tail_after_crash_is_cut_and_recorded() {
    let (dir, log) = log_with(2);
    log.append(sample(2)).unwrap();
    drop(log);
    let ev = ev(&dir);
    // A crash in the middle of writing the next frame: its first 9 bytes.
    let mut bytes = read_log(&ev);
    let next = chain::encode_frame(&Entry {
        seq: 99,
        at: 0,
        prev: [0; 32],
        body: Body::Attempt(Box::new(sample(3))),
    })
    .unwrap();
    bytes.extend_from_slice(&next[..9]);
    write_log(&ev, &bytes);
    // verify (e.g. run before the relay restarts) reports it, without failing.
    let r = verify(&ev, None).unwrap();
    assert_eq!(r.torn_bytes, 9);
    assert!(r.to_string().contains("unfinished record"));

    let log = EvidenceLog::open(&ev).unwrap();
    log.append(sample(4)).unwrap();
    log.checkpoint().unwrap();
    let r = verify(&ev, None).unwrap();
    assert_eq!((r.resumed, r.torn_bytes, r.attempts), (1, 0, 4));
    let list = entries(&read_log(&ev));
    assert!(list
        .iter()
        .any(|e| e.body == Body::Resumed { torn_bytes: 9 }));
}

#[test]
fn a5_zero_filled_tail_after_crash_is_cut() {
    let (dir, log) = log_with(1);
    log.append(sample(1)).unwrap();
    drop(log);
    let ev = ev(&dir);
    // The file size reached the disk, the data did not.
    let mut bytes = read_log(&ev);
    bytes.extend_from_slice(&[0u8; 300]);
    write_log(&ev, &bytes);
    assert_eq!(verify(&ev, None).unwrap().torn_bytes, 300);
    drop(EvidenceLog::open(&ev).unwrap());
    let r = verify(&ev, None).unwrap();
    assert_eq!((r.resumed, r.attempts, r.torn_bytes), (1, 2, 0));
}

#[test]
fn a5_crash_between_checkpoint_and_head_is_repaired() {
    let (dir, log) = log_with(1);
    let ev = ev(&dir);
    let old_head = fs::read(ev.join("head")).unwrap();
    log.append(sample(1)).unwrap();
    log.checkpoint().unwrap();
    drop(log);
    // The checkpoint reached the log, the new head did not.
    fs::write(ev.join("head"), &old_head).unwrap();
    assert!(verify(&ev, None).is_ok());
    drop(EvidenceLog::open(&ev).unwrap());
    let r = verify(&ev, None).unwrap();
    assert_eq!(r.head_checkpoint, r.records - 1);
}

#[test]
fn a5_open_refuses_a_tampered_log() {
    let (dir, log) = log_with(3);
    drop(log);
    let ev = ev(&dir);
    let mut bytes = read_log(&ev);
    let (o, _) = frames(&bytes)[3];
    let at = o + find(&bytes[o..], b"rcpt1").unwrap();
    bytes[at] = b'R';
    write_log(&ev, &bytes);
    let err = EvidenceLog::open(&ev).unwrap_err().to_string();
    assert!(err.contains("record 4"), "{err}");
    // And the log was not touched.
    assert_eq!(read_log(&ev), bytes);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a5_verify_detects_an_edited_byte() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let mut bytes = read_log(&ev);
    // Record 3 is the second attempt (after genesis, checkpoint, attempt 0).
    let (o, _) = frames(&bytes)[3];
    let at = o + find(&bytes[o..], b"250 2.0.0").unwrap();
    bytes[at] = b'5';
    write_log(&ev, &bytes);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 4") && err.contains("does not continue the chain"),
        "{err}"
    );
}

#[test]
fn a5_verify_detects_an_edited_record_with_recomputed_length() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let bytes = read_log(&ev);
    let fr = frames(&bytes);
    let (o, n) = fr[3];
    let mut e: Entry = postcard::from_bytes(&bytes[o + 4..o + n]).unwrap();
    let Body::Attempt(a) = &mut e.body else {
        panic!("record 3 is not an attempt")
    };
    a.verdict = "verified (and a longer story)".into();
    let frame = chain::encode_frame(&e).unwrap();
    assert_ne!(frame.len(), n);
    let mut out = bytes[..o].to_vec();
    out.extend_from_slice(&frame);
    out.extend_from_slice(&bytes[o + n..]);
    write_log(&ev, &out);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 4") && err.contains("does not continue the chain"),
        "{err}"
    );
}

#[test]
fn a5_verify_detects_a_removed_record() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let bytes = read_log(&ev);
    let (o, n) = frames(&bytes)[3];
    let mut out = bytes[..o].to_vec();
    out.extend_from_slice(&bytes[o + n..]);
    write_log(&ev, &out);
    let err = verify_err(&ev);
    assert!(
        err.contains("expected record 3") && err.contains("found record 4"),
        "{err}"
    );
    assert!(err.contains("removed or reordered"), "{err}");
}

#[test]
fn a5_verify_detects_reordered_records() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let bytes = read_log(&ev);
    let fr = frames(&bytes);
    let (o2, n2) = fr[2];
    let (o3, n3) = fr[3];
    let mut out = bytes[..o2].to_vec();
    out.extend_from_slice(&bytes[o3..o3 + n3]);
    out.extend_from_slice(&bytes[o2..o2 + n2]);
    out.extend_from_slice(&bytes[o3 + n3..]);
    write_log(&ev, &out);
    let err = verify_err(&ev);
    assert!(
        err.contains("expected record 2") && err.contains("reordered"),
        "{err}"
    );
}

#[test]
fn a5_verify_detects_a_removed_record_even_when_renumbered_and_relinked() {
    // An attacker without the device key renumbers and relinks everything after
    // the removed record: the checkpoints' signatures no longer fit.
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let mut list = entries(&read_log(&ev));
    list.remove(3);
    let (other, _) = new_key();
    rechain(&ev, list, &other);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 1") && err.contains("bad signature"),
        "{err}"
    );
}

#[test]
fn a5_verify_detects_a_truncated_tail() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let bytes = read_log(&ev);
    let fr = frames(&bytes);
    // Cut the last checkpoint and the last attempt, at a frame boundary.
    let (o, _) = fr[fr.len() - 2];
    write_log(&ev, &bytes[..o]);
    let err = verify_err(&ev);
    assert!(
        err.contains("holds 4 records") && err.contains("names record 5"),
        "{err}"
    );
    assert!(err.contains("cut off the end"), "{err}");
    // The relay refuses to continue it too.
    assert!(EvidenceLog::open(&ev).is_err());
}

#[test]
fn a5_verify_detects_truncation_in_the_middle_of_a_record() {
    let (dir, _log) = log_with(3);
    let ev = ev(&dir);
    let bytes = read_log(&ev);
    let (o, n) = frames(&bytes)[3];
    write_log(&ev, &bytes[..o + n / 2]);
    let err = verify_err(&ev);
    assert!(err.contains("cut off the end"), "{err}");
    // Not mistaken for a crash: the relay does not "repair" signed records away.
    assert!(EvidenceLog::open(&ev).is_err());
    assert_eq!(read_log(&ev).len(), o + n / 2);
}

#[test]
fn a5_verify_detects_a_removed_head_or_log() {
    let (dir, _log) = log_with(1);
    let ev = ev(&dir);
    fs::rename(ev.join("head"), dir.path().join("head.saved")).unwrap();
    assert!(verify_err(&ev).contains("head is missing"));
    fs::rename(dir.path().join("head.saved"), ev.join("head")).unwrap();
    fs::remove_file(ev.join("log")).unwrap();
    assert!(verify_err(&ev).contains("the log was removed"));
    assert!(EvidenceLog::open(&ev).is_err());
}

#[test]
fn a5_verify_detects_a_replaced_key_file() {
    let (dir, log) = log_with(2);
    drop(log);
    let ev = ev(&dir);
    let (_, pk8) = new_key();
    fs::write(ev.join("device-ed25519.pk8"), pk8).unwrap();
    let err = verify_err(&ev);
    assert!(err.contains("the signing key was replaced"), "{err}");
    let err = EvidenceLog::open(&ev).unwrap_err().to_string();
    assert!(err.contains("the signing key was replaced"), "{err}");
}

#[test]
fn a5_verify_detects_a_log_resigned_with_a_new_key_but_the_old_genesis() {
    let (dir, log) = log_with(3);
    drop(log);
    let ev = ev(&dir);
    // Edit a record, then relink and re-sign everything with the attacker's key;
    // the genesis entry still pins the device key.
    let mut list = entries(&read_log(&ev));
    if let Body::Attempt(a) = &mut list[3].body {
        a.outcome = "failed".into();
    }
    let (other, other_pk8) = new_key();
    rechain(&ev, list.clone(), &other);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 1") && err.contains("bad signature"),
        "{err}"
    );
    // Also replacing the key file is caught by the pinned key.
    fs::write(ev.join("device-ed25519.pk8"), other_pk8).unwrap();
    let err = verify_err(&ev);
    assert!(err.contains("the signing key was replaced"), "{err}");
}

#[test]
fn a5_verify_with_expected_key_detects_a_log_rewritten_from_scratch() {
    let (dir, log) = log_with(3);
    let original = log.public_key_fingerprint();
    drop(log);
    let ev = ev(&dir);
    // The attacker rewrites everything: a new key file, a genesis pinning it,
    // every checkpoint re-signed, a new head.
    let mut list = entries(&read_log(&ev));
    list.remove(3);
    let (other, other_pk8) = new_key();
    if let Body::Genesis { public_key, .. } = &mut list[0].body {
        *public_key = chain::public_key(&other);
    }
    rechain(&ev, list, &other);
    fs::write(ev.join("device-ed25519.pk8"), other_pk8).unwrap();
    // Consistent in itself, so only the auditor's noted fingerprint catches it.
    let r = verify(&ev, None).unwrap();
    assert_ne!(r.key_fingerprint, original);
    let err = verify(&ev, Some(&original)).unwrap_err().to_string();
    assert!(err.contains("not by the expected key"), "{err}");
    assert!(err.contains(&original), "{err}");
}

#[test]
fn a5_verify_detects_a_corrupt_signature() {
    let (dir, log) = log_with(2);
    drop(log);
    let ev = ev(&dir);
    // Flipping a bit of the last checkpoint's signature alone.
    let bytes = read_log(&ev);
    let fr = frames(&bytes);
    let (o, n) = fr[fr.len() - 1];
    let mut tampered = bytes.clone();
    tampered[o + n - 1] ^= 1;
    write_log(&ev, &tampered);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 4") && err.contains("bad signature"),
        "{err}"
    );

    // The same, with the hash chain and head made consistent again.
    let mut list = entries(&bytes);
    let key = device_key(&ev);
    rechain(&ev, list.clone(), &key);
    assert!(verify(&ev, None).is_ok());
    let last = list.len() - 1;
    if let Body::Checkpoint { signature, .. } = &mut list[last].body {
        signature[0] ^= 0x80;
    }
    let mut out = Vec::new();
    let mut prev = [0u8; 32];
    for e in &mut list {
        e.prev = prev;
        let f = chain::encode_frame(e).unwrap();
        prev = chain::hash(&f);
        out.extend_from_slice(&f);
    }
    write_log(&ev, &out);
    let err = verify_err(&ev);
    assert!(
        err.contains("record 4") && err.contains("not valid"),
        "{err}"
    );
}

#[test]
fn a5_verify_detects_a_checkpoint_copied_from_elsewhere() {
    // A valid signature for another position does not vouch for this one.
    let (dir, log) = log_with(2);
    drop(log);
    let ev = ev(&dir);
    let mut list = entries(&read_log(&ev));
    let Body::Checkpoint { signature, .. } = list[1].body.clone() else {
        panic!("record 1 is not a checkpoint")
    };
    let last = list.len() - 1;
    if let Body::Checkpoint { signature: s, .. } = &mut list[last].body {
        *s = signature;
    }
    let mut out = Vec::new();
    let mut prev = [0u8; 32];
    for e in &mut list {
        e.prev = prev;
        if let Body::Checkpoint { head_hash, .. } = &mut e.body {
            *head_hash = prev;
        }
        let f = chain::encode_frame(e).unwrap();
        prev = chain::hash(&f);
        out.extend_from_slice(&f);
    }
    write_log(&ev, &out);
    let err = verify_err(&ev);
    assert!(err.contains("bad signature"), "{err}");
}

#[tokio::test]
async fn a5_run_signs_periodically_and_at_shutdown() {
    let (dir, log) = log_with(0);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(log.clone().run(Duration::from_millis(50), rx));
    let l = log.clone();
    tokio::task::spawn_blocking(move || l.append(sample(0)))
        .await
        .unwrap()
        .unwrap();
    let ev = ev(&dir);
    let mut signed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if verify(&ev, None).unwrap().unsigned_records == 0 {
            signed = true;
            break;
        }
    }
    assert!(signed, "no periodic checkpoint");
    log.append(sample(1)).unwrap();
    tx.send(true).unwrap();
    task.await.unwrap();
    let r = verify(&ev, None).unwrap();
    assert_eq!((r.attempts, r.unsigned_records), (2, 0));
}
