//! Reports that could not be handed off yet, kept in `<spool>/tlsrpt/pending/`
//! and retried with growing pauses until `[tls_rpt] retry_for` (24 hours, RFC 8460
//! section 5.3/5.4 and standards.md F3) after the first try; then they are
//! dropped with a warning.
//!
//! One JSON file per report and destination, written durably (temporary file,
//! fsync, rename, directory fsync) so a report survives a restart.
//! Mail destinations rarely end up here: a report mail goes into the mail queue,
//! which retries it itself until the message's `expires_at`. Only a failure to
//! queue it (a full disk) or to find the domain's policy (a DNS outage) lands
//! here, besides failed HTTPS posts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::https::HttpsUrl;

/// Pauses after the first, second, ... failed try; the last repeats.
pub const RETRY_DELAYS: [u64; 5] = [5 * 60, 15 * 60, 3600, 2 * 3600, 4 * 3600];

/// Where a pending report still has to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The domain's policy could not be looked up: look it up again, then send
    /// to each of its `rua` URIs.
    Lookup,
    /// A mailbox (queueing the mail failed).
    Mailto(String),
    /// An HTTPS endpoint (the POST failed).
    Https(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Lookup => f.write_str("(policy lookup)"),
            Target::Mailto(a) => write!(f, "mailto:{a}"),
            Target::Https(u) => f.write_str(u),
        }
    }
}

/// One report waiting for its next try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    /// File stem in `pending/`: unique, file-name safe.
    pub name: String,
    pub domain: String,
    pub report_id: String,
    pub filename: String,
    pub target: Target,
    /// Unix seconds of the first try: the retry period counts from here.
    pub first_try: u64,
    pub attempts: u32,
    pub next_try: u64,
    pub last_error: String,
    /// The gzipped report, base64.
    pub gzip_base64: String,
}

impl PendingReport {
    pub fn https_url(&self) -> Option<HttpsUrl> {
        match &self.target {
            Target::Https(u) => HttpsUrl::parse(u).ok(),
            _ => None,
        }
    }
}

/// When to try again after `attempts` failed tries (the latest at `now`), or
/// `None` when the next try would come `retry_for` seconds or more after the
/// first one: the report is given up.
pub fn next_try(first_try: u64, attempts: u32, now: u64, retry_for: u64) -> Option<u64> {
    let i = (attempts.max(1) as usize - 1).min(RETRY_DELAYS.len() - 1);
    let at = now + RETRY_DELAYS[i];
    (at < first_try.saturating_add(retry_for)).then_some(at)
}

/// The `pending/` directory.
#[derive(Debug, Clone)]
pub struct PendingDir {
    dir: PathBuf,
}

impl PendingDir {
    pub fn open(dir: PathBuf) -> std::io::Result<PendingDir> {
        std::fs::create_dir_all(&dir)?;
        Ok(PendingDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Write (or replace) a pending report durably.
    pub fn store(&self, p: &PendingReport) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
        super::write_durably(&self.file(&p.name), &bytes)
    }

    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every pending report; unreadable files are logged and left alone.
    pub fn load_all(&self) -> Vec<PendingReport> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<PendingReport>(&b).map_err(|e| e.to_string())
                }) {
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable pending TLS-RPT report ignored")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn f3_retry_schedule_grows_then_repeats() {
        let t0 = 1_000_000;
        assert_eq!(next_try(t0, 1, t0, DAY), Some(t0 + 300));
        assert_eq!(next_try(t0, 2, t0 + 300, DAY), Some(t0 + 300 + 900));
        assert_eq!(next_try(t0, 3, t0, DAY), Some(t0 + 3600));
        assert_eq!(next_try(t0, 4, t0, DAY), Some(t0 + 7200));
        assert_eq!(next_try(t0, 5, t0, DAY), Some(t0 + 4 * 3600));
        assert_eq!(next_try(t0, 50, t0, DAY), Some(t0 + 4 * 3600));
    }

    #[test]
    fn f3_retries_stop_24h_after_the_first_try() {
        let t0 = 1_000_000;
        // Follow the schedule from the first try: every try is within 24 h and
        // the report is given up before a try would fall after them.
        let (mut now, mut attempts, mut tries) = (t0, 1, vec![t0]);
        while let Some(at) = next_try(t0, attempts, now, DAY) {
            assert!(at < t0 + DAY);
            tries.push(at);
            now = at;
            attempts += 1;
        }
        assert!(tries.len() >= 8, "{tries:?}");
        assert!(*tries.last().unwrap() + RETRY_DELAYS[4] >= t0 + DAY);
        // Late in the period no further try is scheduled.
        assert_eq!(next_try(t0, 3, t0 + DAY - 60, DAY), None);
        assert_eq!(next_try(t0, 1, t0 + DAY, DAY), None);
    }

    #[test]
    fn f3_pending_reports_survive_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let pd = PendingDir::open(dir.path().join("pending")).unwrap();
        let p = PendingReport {
            name: "r1".into(),
            domain: "d.example".into(),
            report_id: "id@x".into(),
            filename: "f.json.gz".into(),
            target: Target::Https("https://r.example/x".into()),
            first_try: 1,
            attempts: 1,
            next_try: 301,
            last_error: "refused".into(),
            gzip_base64: "AAAA".into(),
        };
        pd.store(&p).unwrap();
        std::fs::write(pd.path().join("junk.json"), b"{").unwrap();
        assert_eq!(pd.load_all(), vec![p.clone()]);
        assert_eq!(p.https_url().unwrap().host, "r.example");
        pd.remove("r1").unwrap();
        pd.remove("r1").unwrap();
        assert!(pd.load_all().is_empty());
    }
}
