//! What an auditor runs: `qrelay evidence verify` and `qrelay evidence export`.
//! Both only read; they work while the relay runs (the relay writes the head only
//! after the log holds its checkpoint, so reading the head first and then the log
//! always sees a consistent pair).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use super::chain::{self, Body, Head, Paths};
use super::record::AttemptEvidence;
use super::EvidenceError;

/// What `verify` found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub dir: PathBuf,
    /// Entries in the log (genesis, attempts, checkpoints, restarts).
    pub records: u64,
    pub attempts: u64,
    pub checkpoints: u64,
    /// Restarts that cut an incomplete record left by a crash.
    pub resumed: u64,
    /// When the log was created (Unix seconds).
    pub created: u64,
    /// The time range of the attempt records (Unix seconds).
    pub first_attempt: Option<u64>,
    pub last_attempt: Option<u64>,
    /// The last record covered by a checkpoint signature.
    pub signed_through: u64,
    /// Records after the last checkpoint, and how many of them are attempts: not
    /// signed yet (the relay signs them within `sign_interval`). Not an error, but
    /// cutting these off the end would go unnoticed.
    pub unsigned_records: u64,
    pub unsigned_attempts: u64,
    /// The checkpoint the head file names.
    pub head_checkpoint: u64,
    /// Bytes of an incomplete last record (a write cut short by a crash, or under
    /// way right now); the relay cuts them at its next start.
    pub torn_bytes: u64,
    /// Hex SHA-256 of the device public key pinned in the log.
    pub key_fingerprint: String,
    /// Whether the key in `device-ed25519.pk8` was compared (it is absent from a
    /// copy of the log given to an auditor, who uses `--expect-key` instead).
    pub key_file_checked: bool,
    /// Whether the key was compared with a fingerprint given by the caller.
    pub key_expected: bool,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "evidence log {}: intact", self.dir.display())?;
        writeln!(
            f,
            "  records:     {} ({} delivery attempts, {} checkpoints, {} restarts after a crash)",
            self.records, self.attempts, self.checkpoints, self.resumed
        )?;
        writeln!(f, "  created:     {}", rfc3339(self.created))?;
        if let (Some(a), Some(b)) = (self.first_attempt, self.last_attempt) {
            writeln!(f, "  attempts:    {} to {}", rfc3339(a), rfc3339(b))?;
        }
        let key_note = match (self.key_file_checked, self.key_expected) {
            (true, true) => "matches the device key file and the expected key",
            (true, false) => "matches the device key file",
            (false, true) => "matches the expected key (no device key file here)",
            (false, false) => "not compared",
        };
        writeln!(f, "  device key:  {} ({key_note})", self.key_fingerprint)?;
        writeln!(
            f,
            "  signed:      records 0 to {}; the head file names checkpoint record {}",
            self.signed_through, self.head_checkpoint
        )?;
        if self.unsigned_records > 0 {
            writeln!(
                f,
                "  unsigned:    {} records after the last checkpoint ({} attempts), signed at \
                 the next checkpoint",
                self.unsigned_records, self.unsigned_attempts
            )?;
        }
        if self.torn_bytes > 0 {
            writeln!(
                f,
                "  incomplete:  the last {} bytes are an unfinished record (a crash, or a \
                 write under way); the relay removes them at its next start",
                self.torn_bytes
            )?;
        }
        Ok(())
    }
}

/// Check the evidence log in `dir` completely: framing, every hash link, record
/// numbering, the genesis key against `device-ed25519.pk8` and against
/// `expect_key` (a hex SHA-256 fingerprint) when given, every checkpoint signature,
/// and that the log still holds the checkpoint the head file names. The first
/// problem found is the error, naming the record and what is wrong.
pub fn verify(dir: &Path, expect_key: Option<&str>) -> Result<VerifyReport, EvidenceError> {
    verify_len(dir, expect_key).map(|(report, _)| report)
}

/// [`verify`], and the length of the log it checked.
fn verify_len(dir: &Path, expect_key: Option<&str>) -> Result<(VerifyReport, u64), EvidenceError> {
    let paths = Paths::new(dir);
    let expected = expect_key.map(normalise_fingerprint).transpose()?;
    let head = Head::read(&paths.head)?;
    if !paths.log.exists() {
        return Err(match head {
            Some(_) => EvidenceError::LogRemoved {
                log: paths.log,
                head: paths.head,
            },
            None => EvidenceError::Missing(dir.to_path_buf()),
        });
    }
    let file_key = match chain::read_key(&paths.key)? {
        Some(k) => Some(chain::public_key(&k)),
        None if expected.is_some() => None,
        None => {
            return Err(EvidenceError::Key {
                path: paths.key,
                reason: "the file is missing, so the log's key cannot be checked against \
                         the device's (give the key's fingerprint with --expect-key)"
                    .into(),
            })
        }
    };
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        records: 0,
        attempts: 0,
        checkpoints: 0,
        resumed: 0,
        created: 0,
        first_attempt: None,
        last_attempt: None,
        signed_through: 0,
        unsigned_records: 0,
        unsigned_attempts: 0,
        head_checkpoint: 0,
        torn_bytes: 0,
        key_fingerprint: String::new(),
        key_file_checked: file_key.is_some(),
        key_expected: expected.is_some(),
    };
    let key_path = paths.key.clone();
    let scan = chain::scan(&paths.log, None, head.as_ref(), &mut |entry| {
        match &entry.body {
            Body::Genesis { public_key, .. } => {
                let pinned = chain::fingerprint(public_key);
                if let Some(file_key) = &file_key {
                    if file_key != public_key {
                        return Err(EvidenceError::KeyReplaced {
                            path: key_path.clone(),
                            file: chain::fingerprint(file_key),
                            pinned,
                        });
                    }
                }
                if let Some(expected) = &expected {
                    if *expected != pinned {
                        return Err(EvidenceError::KeyMismatch {
                            expected: expected.clone(),
                            found: pinned,
                        });
                    }
                }
            }
            Body::Attempt(rec) => {
                report.attempts += 1;
                report.unsigned_attempts += 1;
                report.first_attempt = Some(report.first_attempt.map_or(rec.at, |t| t.min(rec.at)));
                report.last_attempt = Some(report.last_attempt.map_or(rec.at, |t| t.max(rec.at)));
            }
            Body::Checkpoint { .. } => {
                report.checkpoints += 1;
                report.unsigned_attempts = 0;
            }
            Body::Resumed { .. } => report.resumed += 1,
        }
        Ok(())
    })?;
    chain::check_head(&paths, head.as_ref(), &scan)?;
    let (Some(last), Some(head)) = (&scan.last_checkpoint, &head) else {
        return Err(EvidenceError::HeadMissing(paths.head));
    };
    report.records = scan.next_seq;
    report.created = scan.created;
    report.signed_through = last.head_seq;
    report.unsigned_records = scan.next_seq - 1 - last.checkpoint_seq;
    report.head_checkpoint = head.checkpoint_seq;
    report.torn_bytes = scan.torn_bytes;
    report.key_fingerprint = chain::fingerprint(&scan.public_key);
    Ok((report, scan.valid_len))
}

/// A fingerprint as people type it: hex, any case, maybe with colons.
fn normalise_fingerprint(s: &str) -> Result<String, EvidenceError> {
    let hex: String = s
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(EvidenceError::BadArgument(format!(
            "`{s}` is not a key fingerprint (64 hex digits, as `qrelay evidence verify` prints)"
        )))
    }
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row; lists joined with " | ".
    Csv,
    /// A JSON array of objects, one per attempt.
    Json,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            _ => Err(format!("unknown format `{s}` (csv or json)")),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
        })
    }
}

/// One exported row: the time in RFC 3339 for people, then the record's fields.
#[derive(Serialize)]
struct Row<'a> {
    time: String,
    #[serde(flatten)]
    rec: &'a AttemptEvidence,
}

/// Write the attempt records with `from <= at < to` (Unix seconds) to `out`, after
/// verifying the whole log: a broken log is not exported. Returns how many records
/// were written.
pub fn export(
    dir: &Path,
    from: u64,
    to: u64,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<usize, EvidenceError> {
    if from >= to {
        return Err(EvidenceError::BadArgument(format!(
            "the time range is empty ({} to {})",
            rfc3339(from),
            rfc3339(to)
        )));
    }
    let (_, verified_len) = verify_len(dir, None)?;
    let paths = Paths::new(dir);
    let mut count = 0usize;
    let put =
        |out: &mut dyn Write, bytes: &[u8]| out.write_all(bytes).map_err(EvidenceError::Output);
    match format {
        ExportFormat::Csv => {
            let names: Vec<&str> = std::iter::once("time")
                .chain(AttemptEvidence::default().columns().iter().map(|(n, _)| *n))
                .collect();
            put(out, csv_line(names.iter().copied()).as_bytes())?;
        }
        ExportFormat::Json => put(out, b"[")?,
    }
    // Read again only what was verified, and check the chain again on the way: the
    // file may have grown meanwhile, and must not have changed.
    chain::scan(&paths.log, Some(verified_len), None, &mut |entry| {
        let Body::Attempt(rec) = &entry.body else {
            return Ok(());
        };
        if rec.at < from || rec.at >= to {
            return Ok(());
        }
        match format {
            ExportFormat::Csv => {
                let cols = rec.columns();
                let time = rfc3339(rec.at);
                let line = csv_line(
                    std::iter::once(time.as_str()).chain(cols.iter().map(|(_, v)| v.as_str())),
                );
                put(out, line.as_bytes())?;
            }
            ExportFormat::Json => {
                put(out, if count == 0 { b"\n" } else { b",\n" })?;
                let row = Row {
                    time: rfc3339(rec.at),
                    rec,
                };
                serde_json::to_writer(&mut *out, &row)
                    .map_err(|e| EvidenceError::Output(std::io::Error::other(e)))?;
            }
        }
        count += 1;
        Ok(())
    })?;
    if format == ExportFormat::Json {
        put(out, if count == 0 { b"]\n" } else { b"\n]\n" })?;
    }
    out.flush().map_err(EvidenceError::Output)?;
    Ok(count)
}

/// One CSV line (RFC 4180, CRLF).
fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let mut line = fields.map(csv_field).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

/// One CSV field. Quoted when it holds a comma, quote or line break (quotes
/// doubled). A field a spreadsheet would run as a formula (it starts with = + - @
/// or a tab/CR) gets a leading apostrophe: senders, Message-IDs and replies come
/// from strangers, and the auditor opens this file in a spreadsheet. The JSON export
/// keeps every value exactly.
pub(crate) fn csv_field(value: &str) -> String {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let value = if formula {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}
pub use crate::calendar::rfc3339;

/// Parse a bound of an export range: a date `YYYY-MM-DD` (UTC) or an RFC 3339 time
/// (`2026-11-22T10:00:00Z`, `...+01:00`, fractions ignored). For the end of a range
/// (`end`) the bound is inclusive: a date includes that whole day, a time that
/// second. Returns Unix seconds, exclusive for `end`.
pub fn parse_bound(s: &str, end: bool) -> Result<u64, EvidenceError> {
    let bad = |why: &str| {
        EvidenceError::BadArgument(format!(
            "`{s}` is not a date: {why} (want YYYY-MM-DD or RFC 3339, e.g. \
             2026-11-22T10:00:00Z)"
        ))
    };
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad("the date must be YYYY-MM-DD"));
    }
    let (year, month, day) = match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => return Err(bad("the date must be YYYY-MM-DD")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such day"));
    }
    let midnight = crate::calendar::days_from_civil(year, month as u32, day as u32) * 86_400;
    if b.len() == 10 {
        let t = midnight + if end { 86_400 } else { 0 };
        return u64::try_from(t).map_err(|_| bad("before 1970"));
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad("the time must be HH:MM:SS"));
    }
    let (hour, min, sec) = match (num(11..13), num(14..16), num(17..19)) {
        (Some(h), Some(m), Some(s)) if h < 24 && m < 60 && s <= 60 => (h, m, s.min(59)),
        _ => return Err(bad("the time must be HH:MM:SS")),
    };
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("a fraction of a second needs digits"));
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad("the time zone must be Z or +HH:MM")),
            };
            let h = rest.get(1..3).and_then(|p| p.parse::<i64>().ok());
            let m = rest.get(4..6).and_then(|p| p.parse::<i64>().ok());
            match (h, m) {
                (Some(h), Some(m)) if h < 24 && m < 60 => sign * (h * 3600 + m * 60),
                _ => return Err(bad("the time zone must be Z or +HH:MM")),
            }
        }
        _ => return Err(bad("the time zone must be Z or +HH:MM")),
    };
    let t = midnight + hour * 3600 + min * 60 + sec - offset + i64::from(end);
    u64::try_from(t).map_err(|_| bad("before 1970"))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}
