//! MTA-STS (RFC 8461): a recipient domain says, over HTTPS, which mail servers are
//! its own and that they must present a valid certificate.
//!
//! # The problem it solves
//! SMTP finds a domain's mail servers through MX records in DNS. Without DNSSEC an
//! attacker on the path can forge the MX answer (sending the mail to their own
//! server) or strip STARTTLS; a sender that checks nothing cannot tell. MTA-STS lets
//! the domain publish, on a web server authenticated by an ordinary (PKIX, "web")
//! certificate, the list of MX names it uses. A sender that has the policy only
//! delivers to a listed MX, over TLS, with a certificate valid for that MX name.
//!
//! # How a sender learns the policy
//! 1. **Discovery** (section 3.1, standards.md E1): a TXT record at
//!    `_mta-sts.<domain>` such as `v=STSv1; id=20240101T000000;`. Exactly one record
//!    beginning with `v=STSv1` must exist, with an `id` of 1 to 32 letters and
//!    digits; otherwise the domain has no policy. The `id` changes whenever the
//!    policy changes, so a sender only re-fetches when it sees a new id.
//! 2. **Fetch** (section 3.3, E2): `GET https://mta-sts.<domain>/.well-known/mta-sts.txt`.
//!    The certificate must be PKIX-valid for `mta-sts.<domain>`; BSI TR-03108 adds
//!    that it must not be a wildcard certificate (B5). Only `200 OK` counts,
//!    redirects are never followed, the body is `text/plain`, at most 64 KiB, and
//!    the whole fetch is bounded in time (about a minute).
//! 3. **Parse** (section 3.2, E3): `version: STSv1`, `mode: enforce|testing|none`,
//!    `max_age: <seconds>` (at most one year) and one `mx:` line per allowed MX
//!    name or pattern (`*.example.com` covers exactly one more label).
//! 4. **Cache** (section 5.1, E4): the policy is kept for `max_age` seconds after the
//!    fetch, on disk so it survives restarts. When a refresh fails the cached policy
//!    keeps applying until it expires: that is the whole point, since an attacker
//!    who can forge DNS can also block the fetch (section 10.2). A missing or
//!    changed TXT record does not remove a cached policy either; a domain retires
//!    its policy by publishing `mode: none` under a new id (section 8.3). We refresh
//!    ahead of expiry (in the last quarter of max_age, at most one day before) so a
//!    policy does not lapse while its host is briefly down.
//!
//! # How delivery applies it (section 5, E5-E7)
//! - `enforce`: an MX host that no pattern covers is not used; for a covered host
//!   TLS is mandatory and its certificate must be PKIX-valid for the MX name, or
//!   the host is not used either. If no host remains, the message is *deferred*,
//!   not bounced (section 5.1: a new policy may fix it; standards.md E5). A
//!   successful delivery this way is authenticated (`verified`, standards.md A3).
//! - `testing`: deliver as if there were no policy, but report what would have
//!   failed through TLS-RPT (E6).
//! - `none`, no policy, or a policy that could not be obtained: deliver as if the
//!   domain had no MTA-STS (section 5: "MUST continue with delivery"); a failed
//!   fetch is reported with its TLS-RPT result type.
//! - DANE takes precedence (section 2, E7): when the MX has usable TLSA records,
//!   DANE decides and MTA-STS is not applied to that host. That is the caller's
//!   job; [`check_mx`] knows nothing about DANE.
//!
//! A policy belongs to the recipient domain it was fetched for and to no other:
//! two domains served by the same MX host (a hosting provider) have separate
//! policies, and the cache is keyed strictly by recipient domain (field notes).
//!
//! # In this module
//! - [`Policy`], [`Mode`], [`Policy::matches_mx`]: the document and MX matching.
//! - [`record`]: the TXT discovery; [`check_mx`]: the per-host decision (pure).
//! - [`MtaSts`]: the service delivery calls: [`MtaSts::policy_for`] with an
//!   in-memory layer over the disk cache, [`MtaSts::purge`],
//!   [`MtaSts::spawn_refresher`] for the daemon.
//! - [`purge_cached`]: the cache directory operation behind `qrelay mta-sts purge`.
//!
//! The HTTPS fetch uses hyper's low-level HTTP/1.1 client over our own TCP and
//! rustls connection (see `fetch`), so address lookups go through our resolver and
//! the certificate check is ours: a well-tested HTTP parser without a second DNS,
//! TLS or redirect policy.

mod cache;
mod fetch;
mod policy;
pub mod record;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub use cache::{cache_dir, normalize_domain, purge_cached, CacheError, CachedPolicy};
pub use fetch::WELL_KNOWN_PATH;
pub use policy::{Mode, Policy, PolicyError, MAX_AGE_LIMIT};

use crate::config::Config;
use crate::dns::Resolver;
use cache::DiskCache;
use fetch::Fetcher;
use record::Discovery;

/// TLS-RPT result types for policy problems (RFC 8460 section 4.3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RptResultType {
    /// The policy could not be fetched (host unreachable, timeout, HTTP status,
    /// redirect, DNS failure).
    StsPolicyFetchError,
    /// The policy was fetched but is not valid (syntax, media type, size).
    StsPolicyInvalid,
    /// The policy host's certificate failed validation (including B5 wildcards).
    StsWebpkiInvalid,
}

impl RptResultType {
    /// The RFC 8460 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RptResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            RptResultType::StsPolicyInvalid => "sts-policy-invalid",
            RptResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

impl std::fmt::Display for RptResultType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why fetching a policy failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("MTA-STS policy fetch failed: {0}")]
    Fetch(String),
    #[error("MTA-STS policy host certificate invalid: {0}")]
    Webpki(String),
    #[error("MTA-STS policy invalid: {0}")]
    Invalid(String),
}

impl FetchError {
    pub fn rpt_result_type(&self) -> RptResultType {
        match self {
            FetchError::Fetch(_) => RptResultType::StsPolicyFetchError,
            FetchError::Webpki(_) => RptResultType::StsWebpkiInvalid,
            FetchError::Invalid(_) => RptResultType::StsPolicyInvalid,
        }
    }
}

/// Setting up the service failed.
#[derive(Debug, thiserror::Error)]
pub enum MtaStsSetupError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot build the MTA-STS TLS client: {0}")]
    Tls(String),
    #[error("MTA-STS cache: {0}")]
    Cache(#[from] CacheError),
}

/// The answer to "which MTA-STS policy applies to this recipient domain?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyLookup {
    /// A valid policy (possibly `mode: none`). `from_cache`: served from the cache
    /// (memory or disk) rather than fetched just now; `id`: the TXT id it was
    /// fetched for (evidence, standards.md A5).
    Found {
        policy: Policy,
        id: String,
        from_cache: bool,
        fetched_at: SystemTime,
    },
    /// The domain has no (available) policy: deliver as without MTA-STS.
    None,
    /// The domain announces a policy (or its TXT lookup failed) but none could be
    /// obtained and none is cached. RFC 8461 section 5: deliver as without MTA-STS;
    /// report `rpt_result_type` to the domain's TLS-RPT address. A delivery that
    /// needs MTA-STS for its level cannot be authenticated this way now.
    TempFail {
        reason: String,
        rpt_result_type: RptResultType,
    },
}

impl PolicyLookup {
    /// The policy to apply, if any.
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            PolicyLookup::Found { policy, .. } => Some(policy),
            _ => None,
        }
    }
}

/// What MTA-STS says about one MX host of a recipient domain (E5, E6). Pure data;
/// DANE precedence (E7) is applied by the caller before consulting this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MxCheck {
    /// The mode of the policy that applies; `None` when no policy applies (none
    /// found, `mode: none`).
    pub mode: Option<Mode>,
    /// The host matches one of the policy's `mx` patterns.
    pub covered: bool,
    /// The host may be used at all. `false` only under `enforce` for a host no
    /// pattern covers.
    pub allowed: bool,
    /// TLS with a PKIX-valid certificate for the MX host name is mandatory; a
    /// failure means: do not use this host (try the next, else defer).
    pub pkix_required: bool,
    /// Policy failures at this host (not covered, no TLS, PKIX failure) are to be
    /// reported through TLS-RPT (`enforce` and `testing`).
    pub report: bool,
}

/// What to do after the TLS handshake with a host, given the [`MxCheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Go on with this host.
    Use,
    /// Do not use this host; try the next MX. If none remains, defer (4.7.5) —
    /// never bounce because of MTA-STS (standards.md E5).
    Skip(String),
}

/// Decide for one MX host (RFC 8461 sections 4.1 and 5):
/// - no policy or `mode: none`: allowed, nothing required, nothing reported;
/// - `enforce`: allowed only if covered; then TLS with PKIX for the MX name is
///   required;
/// - `testing`: always allowed and nothing required, but failures are reported.
pub fn check_mx(policy: Option<&Policy>, mx_host: &str) -> MxCheck {
    let Some(p) = policy.filter(|p| p.mode != Mode::None) else {
        return MxCheck {
            mode: None,
            covered: false,
            allowed: true,
            pkix_required: false,
            report: false,
        };
    };
    let covered = p.matches_mx(mx_host);
    match p.mode {
        Mode::Enforce => MxCheck {
            mode: Some(Mode::Enforce),
            covered,
            allowed: covered,
            pkix_required: covered,
            report: true,
        },
        _ => MxCheck {
            mode: Some(p.mode),
            covered,
            allowed: true,
            pkix_required: false,
            report: true,
        },
    }
}

impl MxCheck {
    /// Before connecting: may the host be tried? (`Skip` for an uncovered host
    /// under `enforce`, section 4.1.)
    pub fn before_connect(&self, mx_host: &str) -> HostAction {
        if self.allowed {
            HostAction::Use
        } else {
            HostAction::Skip(format!(
                "MTA-STS policy (enforce) does not list {mx_host} as a mail server of the domain"
            ))
        }
    }

    /// After the TLS handshake (or its failure): `pkix_valid` says whether TLS was
    /// established with a certificate PKIX-valid for the MX name (section 4.2).
    pub fn after_tls(&self, mx_host: &str, pkix_valid: bool) -> HostAction {
        if self.pkix_required && !pkix_valid {
            HostAction::Skip(format!(
                "MTA-STS policy (enforce) requires a valid certificate for {mx_host}"
            ))
        } else {
            HostAction::Use
        }
    }

    /// Whether a delivery to this host authenticates the MX against DNS forgery by
    /// MTA-STS (standards.md A3: PKIX on an MX allowed by an enforce policy).
    pub fn authenticates(&self, pkix_valid: bool) -> bool {
        self.mode == Some(Mode::Enforce) && self.covered && pkix_valid
    }
}

/// The PKIX trust anchors for policy hosts: the built-in Mozilla roots plus the
/// PEM certificates of `[tls] ca_file` (the same set outbound PKIX uses).
pub fn pkix_roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, MtaStsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |message: String| MtaStsSetupError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(err("no usable certificate".into()));
        }
    }
    Ok(Arc::new(roots))
}

/// The MTA-STS service: one per daemon, shared by all deliveries.
pub struct MtaSts {
    enabled: bool,
    retry_after_failure: Duration,
    refresh_interval: Duration,
    resolver: Resolver,
    fetcher: Fetcher,
    disk: DiskCache,
    /// The in-memory layer: every live cached policy, by recipient domain.
    memory: Mutex<HashMap<String, CachedPolicy>>,
    /// Recent fetch failures, so a failing host is not asked for every message.
    failures: Mutex<HashMap<String, (Instant, FetchError)>>,
    /// One lookup at a time per domain: concurrent deliveries wait for one fetch.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts")
            .field("enabled", &self.enabled)
            .field("cache", &self.disk)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves consistent data behind
    // (single inserts and removes), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl MtaSts {
    /// Build the service from `[mta_sts]` and `[spool] dir`, with the daemon's
    /// resolver and the PKIX roots (see [`pkix_roots`]). Loads the disk cache.
    pub fn new(
        config: &Config,
        resolver: Resolver,
        roots: Arc<RootCertStore>,
    ) -> Result<MtaSts, MtaStsSetupError> {
        let c = &config.mta_sts;
        let fetcher = Fetcher::new(
            resolver.clone(),
            roots,
            c.port,
            c.fetch_timeout,
            c.max_policy_size,
        )
        .map_err(MtaStsSetupError::Tls)?;
        let disk = DiskCache::open(cache_dir(&config.spool.dir))?;
        let memory: HashMap<String, CachedPolicy> = disk
            .load_all(SystemTime::now())
            .into_iter()
            .map(|c| (c.domain.clone(), c))
            .collect();
        tracing::info!(policies = memory.len(), "MTA-STS cache loaded");
        Ok(MtaSts {
            enabled: c.enabled,
            retry_after_failure: c.retry_after_failure,
            refresh_interval: c.refresh_interval,
            resolver,
            fetcher,
            disk,
            memory: Mutex::new(memory),
            failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The policy that applies to mail for `domain` (the recipient domain, never
    /// the MX host's). See the module documentation for the rules; in short:
    /// TXT lookup; the cached policy if its id is current and it is not due for
    /// refresh; otherwise a fetch, falling back to the cached policy while it lives.
    pub async fn policy_for(&self, domain: &str) -> PolicyLookup {
        if !self.enabled {
            return PolicyLookup::None;
        }
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(domain, "no MTA-STS lookup: {e}");
                return PolicyLookup::None;
            }
        };
        let gate = {
            let mut map = lock(&self.in_flight);
            map.entry(domain.clone()).or_default().clone()
        };
        let result = {
            let _one_at_a_time = gate.lock().await;
            self.lookup(&domain).await
        };
        let mut map = lock(&self.in_flight);
        // Nobody else waits for this domain (the map and we hold the only two
        // references, and new waiters need the map lock): drop its gate.
        if Arc::strong_count(&gate) == 2 {
            map.remove(&domain);
        }
        result
    }

    /// [`MtaSts::policy_for`] for a normalised domain, one at a time per domain.
    async fn lookup(&self, domain: &str) -> PolicyLookup {
        let domain = domain.to_string();
        let now = SystemTime::now();
        let cached = self.cached(&domain, now);

        match record::discover(&self.resolver, &domain).await {
            Discovery::Record(rec) => {
                if let Some(c) = &cached {
                    if c.id == rec.id && !c.needs_refresh(now) {
                        return found(c, true);
                    }
                }
                if let Some(err) = self.recent_failure(&domain) {
                    return self.fall_back(&domain, cached, err);
                }
                let why = match &cached {
                    None => "no cached policy",
                    Some(c) if c.id != rec.id => "policy id changed",
                    Some(_) => "cached policy due for refresh",
                };
                tracing::debug!(domain = %domain, id = %rec.id, "fetching MTA-STS policy: {why}");
                match self.fetcher.fetch(&domain).await {
                    Ok(policy) => {
                        lock(&self.failures).remove(&domain);
                        let entry = CachedPolicy {
                            domain: domain.clone(),
                            id: rec.id,
                            policy,
                            fetched_at: unix_secs(SystemTime::now()),
                        };
                        tracing::info!(
                            domain = %domain,
                            id = %entry.id,
                            mode = %entry.policy.mode,
                            max_age = entry.policy.max_age,
                            "MTA-STS policy fetched"
                        );
                        if let Err(e) = self.disk.store(&entry) {
                            // The policy applies to this lookup; without its file it is
                            // fetched again next time.
                            tracing::error!(domain = %domain, "cannot persist the MTA-STS policy: {e}");
                        }
                        lock(&self.memory).insert(domain.clone(), entry.clone());
                        found(&entry, false)
                    }
                    Err(err) => {
                        lock(&self.failures).insert(domain.clone(), (Instant::now(), err.clone()));
                        self.fall_back(&domain, cached, err)
                    }
                }
            }
            Discovery::NoRecord(why) => match cached {
                // Section 8.3: only a policy of mode none retires a policy; a
                // vanished record does not (an attacker can remove it).
                Some(c) => {
                    tracing::debug!(domain = %domain, "{why}; cached MTA-STS policy still applies");
                    found(&c, true)
                }
                None => PolicyLookup::None,
            },
            Discovery::TempFail(reason) => match cached {
                Some(c) => {
                    tracing::debug!(domain = %domain, "{reason}; cached MTA-STS policy applies");
                    found(&c, true)
                }
                None => {
                    tracing::warn!(domain = %domain, "MTA-STS discovery failed: {reason}");
                    PolicyLookup::TempFail {
                        reason,
                        rpt_result_type: RptResultType::StsPolicyFetchError,
                    }
                }
            },
        }
    }

    /// After a failed fetch: the cached policy while it lives (section 5.1), else
    /// `TempFail` with the failure's TLS-RPT type.
    fn fall_back(
        &self,
        domain: &str,
        cached: Option<CachedPolicy>,
        err: FetchError,
    ) -> PolicyLookup {
        match cached {
            Some(c) => {
                tracing::warn!(domain, id = %c.id, "{err}; keeping the cached MTA-STS policy until it expires");
                found(&c, true)
            }
            None => {
                tracing::warn!(domain, rpt = %err.rpt_result_type(), "{err}");
                PolicyLookup::TempFail {
                    reason: err.to_string(),
                    rpt_result_type: err.rpt_result_type(),
                }
            }
        }
    }

    fn recent_failure(&self, domain: &str) -> Option<FetchError> {
        let failures = lock(&self.failures);
        failures
            .get(domain)
            .filter(|(at, _)| at.elapsed() < self.retry_after_failure)
            .map(|(_, e)| e.clone())
    }

    /// The live cached policy of a domain. An expired one is forgotten (memory and
    /// disk); one whose file was removed by `qrelay mta-sts purge` is forgotten too.
    fn cached(&self, domain: &str, now: SystemTime) -> Option<CachedPolicy> {
        let mut memory = lock(&self.memory);
        let entry = memory.get(domain)?.clone();
        if !self.disk.exists(domain) {
            tracing::info!(domain, "cached MTA-STS policy was purged");
            memory.remove(domain);
            return None;
        }
        if entry.is_expired(now) {
            tracing::info!(domain, id = %entry.id, "cached MTA-STS policy expired");
            memory.remove(domain);
            if let Err(e) = self.disk.remove(domain) {
                tracing::warn!(domain, "cannot remove the expired MTA-STS policy: {e}");
            }
            return None;
        }
        Some(entry)
    }

    /// The cached policy of a domain without any lookup (for `qrelay check` and
    /// the UI), if it is live.
    pub fn cached_policy(&self, domain: &str) -> Option<CachedPolicy> {
        let domain = normalize_domain(domain).ok()?;
        self.cached(&domain, SystemTime::now())
    }

    /// Forget a domain's cached policy (memory and disk) and any remembered fetch
    /// failure; the next lookup fetches anew. Returns whether a policy was cached.
    pub fn purge(&self, domain: &str) -> Result<bool, CacheError> {
        let domain = normalize_domain(domain)?;
        let in_memory = lock(&self.memory).remove(&domain).is_some();
        lock(&self.failures).remove(&domain);
        let on_disk = self.disk.remove(&domain)?;
        tracing::info!(domain = %domain, "MTA-STS policy purged");
        Ok(in_memory || on_disk)
    }

    /// Refresh every cached policy that is due (and drop expired ones). Returns
    /// the number of domains looked up.
    pub async fn refresh_due(&self) -> usize {
        lock(&self.failures).retain(|_, (at, _)| at.elapsed() < self.retry_after_failure);
        let now = SystemTime::now();
        let due: Vec<String> = lock(&self.memory)
            .values()
            .filter(|c| c.needs_refresh(now))
            .map(|c| c.domain.clone())
            .collect();
        for domain in &due {
            let _ = self.policy_for(domain).await;
        }
        due.len()
    }

    /// Start the background refresher (every `[mta_sts] refresh_interval`). It
    /// runs until the returned handle is aborted or the runtime stops.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.refresh_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = this.refresh_due().await;
                if n > 0 {
                    tracing::debug!(domains = n, "MTA-STS refresh pass");
                }
            }
        })
    }

    /// Put an entry into both cache layers (tests: a policy fetched long ago).
    #[cfg(test)]
    fn insert_cached(&self, entry: CachedPolicy) {
        self.disk.store(&entry).expect("store");
        lock(&self.memory).insert(entry.domain.clone(), entry);
    }
}

fn found(c: &CachedPolicy, from_cache: bool) -> PolicyLookup {
    PolicyLookup::Found {
        policy: c.policy.clone(),
        id: c.id.clone(),
        from_cache,
        fetched_at: c.fetched_at_time(),
    }
}
