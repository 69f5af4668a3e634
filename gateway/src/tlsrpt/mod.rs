//! SMTP TLS Reporting (RFC 8460, standards.md B4, F1-F3): daily reports to
//! recipient domains about how our TLS sessions with their MX hosts went.
//!
//! # The standard in short
//! - A domain asks for reports with a TXT record at `_smtp._tls.<domain>`:
//!   `v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/x`
//!   ([`record`], F1).
//! - A sender counts, per **policy domain** and **UTC day**, its TLS sessions per
//!   applied policy: `tlsa` (DANE), `sts` (MTA-STS) or `no-policy-found`,
//!   successful and failed, the failures grouped by *result type* (section 4.3:
//!   `starttls-not-supported`, `certificate-expired`, `tlsa-invalid`,
//!   `sts-policy-fetch-error`, ...) and by MX host and addresses.
//! - After the day, it sends one JSON document per domain (section 4.4, F2),
//!   gzip-compressed, to every `rua`: by mail as a `multipart/report;
//!   report-type="tlsrpt"` message (section 5.3) or by HTTPS POST (section 5.4).
//!   The report mail is delivered *without* enforcing DANE or MTA-STS (section 3:
//!   the report may be about exactly the failure that would block it), and an
//!   undeliverable report is retried for up to a day (F3).
//!
//! # How qrelay does it
//! - The deliverer calls [`TlsRpt::record`] once per TLS session attempt with an
//!   MX host (and once for a policy failure before any session, e.g. an MTA-STS
//!   policy that could not be fetched). That only updates an in-memory aggregate
//!   per (day, domain, policy); no DNS, no disk.
//! - [`TlsRpt::run`] writes the aggregates to `<spool>/tlsrpt/<YYYY-MM-DD>.json`
//!   every minute and at shutdown (temporary file, fsync, rename), so a restart
//!   keeps the day's counts. Shortly after each UTC midnight (plus a random delay,
//!   so not every sender reports at once) it sends every complete past day.
//! - [`TlsRpt::send_day`] (also `qrelay tls-rpt send [--day]`) looks up each
//!   domain's policy, builds and gzips its report and hands it off: a mail goes
//!   into our own queue with `tls_optional` (no DANE/MTA-STS enforcement) and an
//!   expiry of `[tls_rpt] retry_for`; a POST is made at once. Domains without a
//!   policy get nothing (B4: reports go to every domain that publishes one).
//!   What could not be handed off (a failed POST, a DNS failure) waits in
//!   `<spool>/tlsrpt/pending/` and is retried with growing pauses until
//!   `retry_for` after the first try ([`pending`]).
//! - Once a day's reports are handed off, its aggregate is removed. Sending the
//!   current day on request reports what was counted so far; the rest of the day
//!   follows in the next report, which begins where that one ended.
//!
//! The policy domain is the recipient domain, the domain whose `_smtp._tls`
//! record is consulted (as Postfix's TLSRPT support and the big senders do),
//! also for DANE, where RFC 8460 would allow the TLSA base domain.

mod https;
mod mail;
pub mod pending;
pub mod record;
pub mod report;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::watch;

use crate::config::Config;
use crate::dns::Resolver;
use crate::queue::Queue;
use crate::spool::record::{domain_of, now_secs, Envelope, RiskClass};

pub use https::{HttpsUrl, GZIP_MEDIA_TYPE};
pub use mail::report_filename;
use pending::{PendingDir, PendingReport, Target};
use record::{Discovery, Rua};
pub use report::{day_start, utc_day, DayAggregate, Report, RESULT_TYPES};

/// How often the aggregates are written to disk and pending reports looked at.
const PERSIST_INTERVAL: Duration = Duration::from_secs(60);
/// Time limit of one HTTPS POST, from the address lookup to the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Reports of a finished day go out this long after midnight UTC, plus a random
/// part of [`SEND_JITTER`] (RFC 8460 section 5: spread the load on receivers).
const SEND_AFTER_MIDNIGHT: u64 = 60;
const SEND_JITTER: u64 = 900;

/// One TLS session attempt with an MX host, or a policy failure before any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    /// Unix seconds.
    pub at: u64,
    /// The recipient (policy) domain.
    pub domain: String,
    pub policy: PolicyApplied,
    /// The MX host name; empty for a policy failure before any session.
    pub mx_host: String,
    pub receiving_ip: Option<IpAddr>,
    pub sending_ip: Option<IpAddr>,
    /// The name in the server's EHLO answer, if known.
    pub receiving_helo: Option<String>,
    /// `None`: the session succeeded (TLS established as the policy requires).
    pub failure: Option<SessionFailure>,
}

/// The policy that applied to a session (RFC 8460 section 4.3 `policy-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyApplied {
    /// DANE: the MX host's TLSA RRset, each record "usage selector matching hex".
    Tlsa { records: Vec<String> },
    /// MTA-STS: the policy file's lines (version, mode, mx..., max_age) and its
    /// `mx` patterns.
    Sts {
        policy_string: Vec<String>,
        mx_patterns: Vec<String>,
    },
    /// Neither.
    None,
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFailure {
    /// The RFC 8460 result type (one of [`RESULT_TYPES`]; see
    /// [`crate::spool::record::ProblemKind::rpt_result_type`]).
    pub result_type: &'static str,
    /// Our own words about it (may be empty).
    pub additional_information: String,
    /// A TLS error code or message, e.g. from the TLS library.
    pub failure_reason_code: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsRptError {
    #[error("cannot set up TLS-RPT: {0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{0}` is not a day in the form YYYY-MM-DD")]
    BadDay(String),
    #[error("{0} (UTC) has not begun yet")]
    FutureDay(String),
    #[error("TLS-RPT is disabled ([tls_rpt] enabled = false)")]
    Disabled,
}

/// One report handed off (or parked) by [`TlsRpt::send_day`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentReport {
    pub domain: String,
    pub report_id: String,
    /// The `rua` URI, or "(policy lookup)" when the policy could not be looked up.
    pub destination: String,
    pub outcome: SentOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentOutcome {
    /// The report mail is in our queue under this id.
    Queued { queue_id: String },
    /// The endpoint answered with this 2xx status.
    Posted { status: u16 },
    /// Not handed off yet; kept in `pending/` and retried.
    Pending { error: String },
    /// Not handed off and not retried (the retry period is over, or it could not
    /// be stored).
    Dropped { error: String },
}

/// A report ready to go: the same bytes go to every `rua`.
#[derive(Debug, Clone)]
struct Prepared {
    domain: String,
    report_id: String,
    filename: String,
    gzip: Vec<u8>,
}

#[derive(Default)]
struct State {
    days: BTreeMap<String, DayAggregate>,
    /// Days changed since they were last written (or removed since).
    dirty: BTreeSet<String>,
}

struct Inner {
    config: Arc<Config>,
    dir: PathBuf,
    resolver: Resolver,
    poster: https::Poster,
    pending: PendingDir,
    state: Mutex<State>,
    /// Held by whoever writes `dir`: a persist, a send, a retry pass. Sends hold it
    /// throughout, so a day's file is removed only after its reports are handed
    /// off, and no persist can write a half-sent state in between.
    disk: tokio::sync::Mutex<()>,
}

/// The TLS-RPT service: one per daemon; clones share it.
#[derive(Clone)]
pub struct TlsRpt {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TlsRpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRpt")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl TlsRpt {
    /// Open the service over `dir` (`<spool.dir>/tlsrpt`): load the aggregates
    /// kept there and set up the HTTPS client (PKIX: the built-in roots plus
    /// `[tls] ca_file`).
    pub fn open(
        config: Arc<Config>,
        dir: &Path,
        resolver: Resolver,
    ) -> Result<TlsRpt, TlsRptError> {
        let io = |source| TlsRptError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let pending = PendingDir::open(dir.join("pending")).map_err(io)?;
        let roots = crate::mtasts::pkix_roots(config.tls.ca_file.as_deref())
            .map_err(|e| TlsRptError::Setup(e.to_string()))?;
        let poster = https::Poster::new(
            resolver.clone(),
            roots,
            config.tls_rpt.https_port,
            POST_TIMEOUT,
        )
        .map_err(TlsRptError::Setup)?;
        let days = load_days(dir).map_err(io)?;
        tracing::info!(days = days.len(), dir = %dir.display(), "TLS-RPT aggregates loaded");
        Ok(TlsRpt {
            inner: Arc::new(Inner {
                config,
                dir: dir.to_owned(),
                resolver,
                poster,
                pending,
                state: Mutex::new(State {
                    days,
                    dirty: BTreeSet::new(),
                }),
                disk: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The default directory under a spool directory.
    pub fn dir_in(spool_dir: &Path) -> PathBuf {
        spool_dir.join("tlsrpt")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update completes under the lock; a panic cannot leave half of one.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled(&self) -> bool {
        self.inner.config.tls_rpt.enabled
    }

    /// Count one session (cheap: memory only). Ignored while TLS-RPT is disabled.
    pub fn record(&self, s: SessionResult) {
        if !self.enabled() {
            return;
        }
        let domain = s.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return;
        }
        let at = if s.at == 0 { now_secs() } else { s.at };
        let day = utc_day(at);
        let mut st = self.lock();
        st.days
            .entry(day.clone())
            .or_insert_with(|| DayAggregate::new(&day, day_start(&day).unwrap_or(0)))
            .add(&domain, &s);
        st.dirty.insert(day);
    }

    /// A copy of what is counted for `day` (tests, diagnostics).
    pub fn aggregate(&self, day: &str) -> Option<DayAggregate> {
        self.lock().days.get(day).cloned()
    }

    /// Write changed aggregates to disk now.
    pub async fn persist(&self) {
        let _disk = self.inner.disk.lock().await;
        self.persist_locked().await;
    }

    /// [`TlsRpt::persist`] for a caller holding the disk lock.
    async fn persist_locked(&self) {
        let work: Vec<(String, Option<Vec<u8>>)> = {
            let mut st = self.lock();
            let dirty = std::mem::take(&mut st.dirty);
            dirty
                .into_iter()
                .map(|day| {
                    let bytes = st.days.get(&day).and_then(|a| serde_json::to_vec(a).ok());
                    (day, bytes)
                })
                .collect()
        };
        if work.is_empty() {
            return;
        }
        let dir = self.inner.dir.clone();
        let failed = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for (day, bytes) in work {
                let path = dir.join(format!("{day}.json"));
                let res = match bytes {
                    Some(b) => write_durably(&path, &b),
                    None => match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    },
                };
                if let Err(e) = res {
                    tracing::error!(file = %path.display(), error = %e, "cannot write TLS-RPT aggregate");
                    failed.push(day);
                }
            }
            failed
        })
        .await
        .unwrap_or_default();
        // Try those again next time.
        self.lock().dirty.extend(failed);
    }

    fn contact(&self) -> String {
        let c = self.inner.config.tls_rpt.contact.trim();
        if c.is_empty() {
            format!("postmaster@{}", self.inner.config.hostname())
        } else {
            c.to_string()
        }
    }

    /// The envelope sender and `From:` of report mails: the contact, when it is an
    /// address, else postmaster of our host name.
    fn sender(&self) -> String {
        let c = self.contact();
        if c.contains('@') && !c.contains(char::is_whitespace) {
            c.trim_start_matches("mailto:").to_string()
        } else {
            format!("postmaster@{}", self.inner.config.hostname())
        }
    }

    /// The reporting domain (section 5.1 `sender`, section 5.3
    /// `TLS-Report-Submitter`): the domain of the sender address.
    fn submitter(&self) -> String {
        let d = domain_of(&self.sender());
        if d.is_empty() {
            self.inner.config.hostname()
        } else {
            d
        }
    }

    fn organization(&self) -> String {
        let o = self.inner.config.tls_rpt.organization_name.trim();
        if o.is_empty() {
            self.inner.config.hostname()
        } else {
            o.to_string()
        }
    }

    /// Build a domain's report for `[begin, end]`.
    fn prepare(
        &self,
        domain: &str,
        policies: Vec<report::PolicyReport>,
        begin: u64,
        end: u64,
    ) -> Result<Prepared, std::io::Error> {
        let unique = format!("{:016x}", rand::random::<u64>());
        let submitter = self.submitter();
        let report_id = format!("{}.{unique}@{submitter}", utc_day(begin));
        let report = Report {
            organization_name: self.organization(),
            date_range: report::DateRange {
                start_datetime: report::rfc3339(begin),
                end_datetime: report::rfc3339(end),
            },
            contact_info: self.contact(),
            report_id: report_id.clone(),
            policies,
        };
        Ok(Prepared {
            domain: domain.to_string(),
            filename: report_filename(&submitter, domain, begin, end, &unique),
            gzip: report::gzip_json(&report)?,
            report_id,
        })
    }

    /// Send the reports of one UTC day (`YYYY-MM-DD`) now: for each domain with
    /// data for that day and a TLS-RPT policy, one report to each of its `rua`
    /// URIs. Afterwards that day's aggregate is gone (for the current day: what
    /// was counted so far; counting goes on from now).
    pub async fn send_day(&self, day: &str, queue: &Queue) -> Result<Vec<SentReport>, TlsRptError> {
        if !self.enabled() {
            return Err(TlsRptError::Disabled);
        }
        let start = day_start(day).ok_or_else(|| TlsRptError::BadDay(day.to_string()))?;
        let now = now_secs();
        if start > now {
            return Err(TlsRptError::FutureDay(day.to_string()));
        }
        let _disk = self.inner.disk.lock().await;
        let day_end = start + report::DAY_SECS - 1;
        let complete = day_end < now;
        let Some(agg) = ({
            let mut st = self.lock();
            let agg = st.days.remove(day);
            if agg.is_some() && !complete {
                // The next report of today begins after this one ends.
                st.days
                    .insert(day.to_string(), DayAggregate::new(day, now + 1));
            }
            agg
        }) else {
            tracing::info!(day, "TLS-RPT: nothing recorded for this day");
            return Ok(Vec::new());
        };
        let end = if complete { day_end } else { now };
        let mut sent = Vec::new();
        for (domain, policies) in agg.domains {
            let prepared = match self.prepare(&domain, policies, agg.begin, end) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(domain, error = %e, "cannot build the TLS-RPT report");
                    continue;
                }
            };
            sent.extend(self.hand_off(&prepared, queue, now).await);
        }
        // Handed off (or parked in pending/): now the day's file may go.
        self.lock().dirty.insert(day.to_string());
        self.persist_locked().await;
        Ok(sent)
    }

    /// Look up the domain's policy and send the report to each `rua`.
    async fn hand_off(&self, p: &Prepared, queue: &Queue, now: u64) -> Vec<SentReport> {
        match record::discover(&self.inner.resolver, &p.domain).await {
            Discovery::Record(rec) => self.deliver(p, &rec.rua, queue, now, now).await,
            Discovery::NoRecord(why) => {
                tracing::debug!(domain = %p.domain, reason = %why, "no TLS-RPT policy: no report");
                Vec::new()
            }
            Discovery::TempFail(e) => {
                tracing::warn!(domain = %p.domain, error = %e, "TLS-RPT policy lookup failed; will retry");
                vec![self.park(p, Target::Lookup, now, now, 1, &e)]
            }
        }
    }

    /// Send one report to each URI; what fails is parked with `first_try`.
    async fn deliver(
        &self,
        p: &Prepared,
        rua: &[Rua],
        queue: &Queue,
        first_try: u64,
        now: u64,
    ) -> Vec<SentReport> {
        let mut out = Vec::new();
        for uri in rua {
            let report = match uri {
                Rua::Mailto(addr) => match self.submit_mail(p, addr, queue, now).await {
                    Ok(queue_id) => SentReport {
                        domain: p.domain.clone(),
                        report_id: p.report_id.clone(),
                        destination: uri.to_string(),
                        outcome: SentOutcome::Queued { queue_id },
                    },
                    Err(e) => self.park(p, Target::Mailto(addr.clone()), first_try, now, 1, &e),
                },
                Rua::Https(url) => match self.post(p, url).await {
                    Ok(status) => SentReport {
                        domain: p.domain.clone(),
                        report_id: p.report_id.clone(),
                        destination: uri.to_string(),
                        outcome: SentOutcome::Posted { status },
                    },
                    Err(e) => self.park(p, Target::Https(url.to_string()), first_try, now, 1, &e),
                },
            };
            out.push(report);
        }
        out
    }

    async fn post(&self, p: &Prepared, url: &HttpsUrl) -> Result<u16, String> {
        let res = self.inner.poster.post(url, p.gzip.clone()).await;
        match &res {
            Ok(status) => {
                tracing::info!(domain = %p.domain, %url, status, report_id = %p.report_id, "TLS-RPT report posted")
            }
            Err(e) => {
                tracing::warn!(domain = %p.domain, %url, error = %e, report_id = %p.report_id, "TLS-RPT report post failed")
            }
        }
        res
    }

    /// Queue the report mail for `to`. Returns the queue id.
    async fn submit_mail(
        &self,
        p: &Prepared,
        to: &str,
        queue: &Queue,
        now: u64,
    ) -> Result<String, String> {
        let from = self.sender();
        let content = mail::build(&mail::ReportMail {
            from: &from,
            to,
            policy_domain: &p.domain,
            submitter: &self.submitter(),
            organization: &self.organization(),
            report_id: &p.report_id,
            filename: &p.filename,
            date: now,
            gzip: &p.gzip,
        });
        let env = report_envelope(
            &from,
            to,
            content.len() as u64,
            now,
            self.inner.config.tls_rpt.retry_for.as_secs(),
            &self.inner.config.hostname(),
        );
        let id = env.id.to_string();
        match queue.submit(env, content).await {
            Ok(()) => {
                tracing::info!(queue_id = %id, domain = %p.domain, to, report_id = %p.report_id, "TLS-RPT report mail queued");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(domain = %p.domain, to, error = %e, "cannot queue TLS-RPT report mail");
                Err(e.to_string())
            }
        }
    }

    /// Keep a report that could not be handed off for a later try, unless its
    /// retry period is over.
    fn park(
        &self,
        p: &Prepared,
        target: Target,
        first_try: u64,
        now: u64,
        attempts: u32,
        error: &str,
    ) -> SentReport {
        let destination = target.to_string();
        let retry_for = self.inner.config.tls_rpt.retry_for.as_secs();
        let outcome = match pending::next_try(first_try, attempts, now, retry_for) {
            None => {
                tracing::warn!(domain = %p.domain, %destination, report_id = %p.report_id, "TLS-RPT report dropped: retry period over");
                SentOutcome::Dropped {
                    error: error.to_string(),
                }
            }
            Some(next_try) => {
                let pr = PendingReport {
                    name: format!("{now}-{:016x}", rand::random::<u64>()),
                    domain: p.domain.clone(),
                    report_id: p.report_id.clone(),
                    filename: p.filename.clone(),
                    target,
                    first_try,
                    attempts,
                    next_try,
                    last_error: error.to_string(),
                    gzip_base64: base64::engine::general_purpose::STANDARD.encode(&p.gzip),
                };
                match self.inner.pending.store(&pr) {
                    Ok(()) => SentOutcome::Pending {
                        error: error.to_string(),
                    },
                    Err(e) => {
                        tracing::error!(domain = %p.domain, error = %e, "cannot keep TLS-RPT report for retry");
                        SentOutcome::Dropped {
                            error: format!("{error}; cannot keep it for retry: {e}"),
                        }
                    }
                }
            }
        };
        SentReport {
            domain: p.domain.clone(),
            report_id: p.report_id.clone(),
            destination,
            outcome,
        }
    }

    /// Try the pending reports that are due. Returns how many were handed off.
    pub async fn retry_pending(&self, queue: &Queue) -> usize {
        let _disk = self.inner.disk.lock().await;
        let now = now_secs();
        let mut done = 0;
        for pr in self.inner.pending.load_all() {
            if pr.next_try > now {
                continue;
            }
            let gzip = match base64::engine::general_purpose::STANDARD.decode(&pr.gzip_base64) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(domain = %pr.domain, error = %e, "damaged pending TLS-RPT report removed");
                    let _ = self.inner.pending.remove(&pr.name);
                    continue;
                }
            };
            let p = Prepared {
                domain: pr.domain.clone(),
                report_id: pr.report_id.clone(),
                filename: pr.filename.clone(),
                gzip,
            };
            let result: Result<(), String> = match &pr.target {
                Target::Lookup => match record::discover(&self.inner.resolver, &p.domain).await {
                    Discovery::Record(rec) => {
                        // Failures of single URIs become pending entries of their own.
                        self.deliver(&p, &rec.rua, queue, pr.first_try, now).await;
                        Ok(())
                    }
                    Discovery::NoRecord(why) => {
                        tracing::info!(domain = %p.domain, reason = %why, "TLS-RPT policy gone; pending report dropped");
                        Ok(())
                    }
                    Discovery::TempFail(e) => Err(e),
                },
                Target::Mailto(to) => self.submit_mail(&p, to, queue, now).await.map(|_| ()),
                Target::Https(u) => match pr.https_url() {
                    Some(url) => self.post(&p, &url).await.map(|_| ()),
                    None => {
                        tracing::warn!(domain = %p.domain, url = %u, "pending TLS-RPT report with an invalid URL removed");
                        Ok(())
                    }
                },
            };
            match result {
                Ok(()) => {
                    done += 1;
                    if let Err(e) = self.inner.pending.remove(&pr.name) {
                        tracing::error!(error = %e, "cannot remove pending TLS-RPT report");
                    }
                }
                Err(e) => {
                    let attempts = pr.attempts + 1;
                    let retry_for = self.inner.config.tls_rpt.retry_for.as_secs();
                    match pending::next_try(pr.first_try, attempts, now, retry_for) {
                        Some(next_try) => {
                            let updated = PendingReport {
                                attempts,
                                next_try,
                                last_error: e,
                                ..pr.clone()
                            };
                            if let Err(e) = self.inner.pending.store(&updated) {
                                tracing::error!(error = %e, "cannot update pending TLS-RPT report");
                            }
                        }
                        None => {
                            tracing::warn!(
                                domain = %pr.domain, destination = %pr.target, report_id = %pr.report_id,
                                attempts, error = %e,
                                "TLS-RPT report given up: not delivered within the retry period"
                            );
                            let _ = self.inner.pending.remove(&pr.name);
                        }
                    }
                }
            }
        }
        done
    }

    /// Send every day before today (UTC) that still has an aggregate.
    pub async fn send_past_days(&self, queue: &Queue) {
        let today = utc_day(now_secs());
        let days: Vec<String> = self
            .lock()
            .days
            .keys()
            .filter(|d| d.as_str() < today.as_str())
            .cloned()
            .collect();
        for day in days {
            match self.send_day(&day, queue).await {
                Ok(sent) => tracing::info!(day, "{}", summary(&day, &sent)),
                Err(e) => tracing::error!(day, error = %e, "TLS-RPT reports not sent"),
            }
        }
    }

    /// The background work: persist every minute, send finished days shortly
    /// after each UTC midnight (and at start for days left over from before a
    /// restart), retry pending reports; persist at shutdown.
    pub async fn run(self, queue: Queue, mut shutdown: watch::Receiver<bool>) {
        if !self.enabled() {
            tracing::info!("TLS-RPT disabled");
            return;
        }
        let jitter = |max: u64| rand::random::<u64>() % (max + 1);
        let mut next_send = now_secs() + 30 + jitter(90);
        let mut tick = tokio::time::interval(PERSIST_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            }
            if *shutdown.borrow() {
                break;
            }
            let now = now_secs();
            if now >= next_send {
                self.send_past_days(&queue).await;
                let midnight = (now / report::DAY_SECS + 1) * report::DAY_SECS;
                next_send = midnight + SEND_AFTER_MIDNIGHT + jitter(SEND_JITTER);
            }
            self.retry_pending(&queue).await;
            self.persist().await;
        }
        self.persist().await;
        tracing::info!("TLS-RPT aggregates saved");
    }

    /// For the control socket's handler, which runs on tokio's blocking pool:
    /// [`TlsRpt::send_day`] with its outcome as a sentence for the admin.
    pub fn control_send(&self, day: &str, queue: &Queue) -> Result<String, String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        handle.block_on(async {
            match self.send_day(day, queue).await {
                Ok(sent) => Ok(summary(day, &sent)),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// A sentence per report for the admin and the log.
pub fn summary(day: &str, sent: &[SentReport]) -> String {
    if sent.is_empty() {
        return format!("TLS-RPT {day}: no reports to send (nothing recorded for domains with a TLS-RPT policy)");
    }
    let mut out = format!(
        "TLS-RPT {day}: {} report{}",
        sent.len(),
        if sent.len() == 1 { "" } else { "s" }
    );
    for s in sent {
        let what = match &s.outcome {
            SentOutcome::Queued { queue_id } => format!("queued as {queue_id}"),
            SentOutcome::Posted { status } => format!("posted ({status})"),
            SentOutcome::Pending { error } => format!("will be retried: {error}"),
            SentOutcome::Dropped { error } => format!("dropped: {error}"),
        };
        out.push_str(&format!(
            "\n  {} -> {}: {what} [{}]",
            s.domain, s.destination, s.report_id
        ));
    }
    out
}

/// The envelope of a report mail: class `none` and `tls_optional`, so neither
/// DANE nor MTA-STS is enforced for it (RFC 8460 section 3, F3), given up after
/// `retry_for` seconds.
fn report_envelope(
    from: &str,
    to: &str,
    size: u64,
    now: u64,
    retry_for: u64,
    hostname: &str,
) -> Envelope {
    let mut env = Envelope::generated(
        from,
        to,
        size,
        hostname,
        RiskClass::None,
        "TLS-RPT report (RFC 8460)",
    );
    env.tls_optional = true;
    env.expires_at = Some(now + retry_for);
    env
}

/// Write a file so that after a crash it holds either the old or the new bytes:
/// temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The aggregates in `dir`: files named `YYYY-MM-DD.json`. A file that cannot be
/// read is renamed to `.bad` (kept for inspection, not read again).
fn load_days(dir: &Path) -> std::io::Result<BTreeMap<String, DayAggregate>> {
    let mut days = BTreeMap::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let path = e.path();
        let Some(day) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|d| day_start(d).is_some())
            .map(str::to_string)
        else {
            continue;
        };
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<DayAggregate>(&b).map_err(|e| e.to_string()))
            .and_then(|a| {
                if a.day == day {
                    Ok(a)
                } else {
                    Err(format!("holds day {}", a.day))
                }
            });
        match parsed {
            Ok(a) => {
                days.insert(day, a);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "unreadable TLS-RPT aggregate set aside");
                let _ = std::fs::rename(&path, path.with_extension("json.bad"));
            }
        }
    }
    Ok(days)
}
