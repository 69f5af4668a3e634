//! Is DNSSEC working through the configured upstreams?
//!
//! Validation needs upstreams that pass RRSIGs, DNSKEY and DS records through.
//! Many do not (home routers, some forwarders), and then every answer looks bogus
//! and every delivery that needs DNSSEC is deferred. That is the safe outcome, but
//! it must not be a silent one: the operator has to learn that the cause is the
//! resolver path, not the recipients. So at start and every [`PROBE_INTERVAL`] the
//! root DNSKEY RRset is looked up and must validate against the trust anchor; if it
//! does not, one loud error-level sentence says so, and [`DnssecStatus`] holds the
//! state for the control socket (`qrelay status`) and for the [`Resolver`], which
//! answers unvalidated while DNSSEC is unavailable (the module documentation of
//! [`crate::dns`] explains the trade-off). A trust anchor that matches no root key
//! counts as unavailable too: a misconfiguration the operator must fix, reported
//! the same loud way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hickory_resolver::proto::rr::{Name, RecordType};

use super::{classify_error, security_of, Lookup, Resolver, Security};

/// How often the daemon re-probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// How soon it probes again while DNSSEC is unavailable: often the upstream was
/// only unreachable for a moment (the uplink of a box that has just booted), and
/// until the next probe DANE is off and what needs DNSSEC waits.
pub const PROBE_RETRY: Duration = Duration::from_secs(60);

/// The outcome of the last probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnssecHealth {
    /// No probe has finished yet.
    Unknown,
    /// The root DNSKEY RRset validated against the trust anchor.
    Available { checked_at: SystemTime },
    /// It did not: DNSSEC answers cannot be had now; lookups are unvalidated and
    /// what needs DNSSEC is deferred.
    Unavailable {
        reason: String,
        checked_at: SystemTime,
    },
    /// Validation is switched off (unit tests only).
    Disabled,
}

impl DnssecHealth {
    pub fn is_available(&self) -> bool {
        matches!(self, DnssecHealth::Available { .. })
    }

    /// One line for `qrelay status`.
    pub fn describe(&self) -> String {
        match self {
            DnssecHealth::Unknown => "DNSSEC: not probed yet".into(),
            DnssecHealth::Available { .. } => "DNSSEC: available".into(),
            DnssecHealth::Unavailable { reason, .. } => {
                format!("DNSSEC: UNAVAILABLE ({reason}); answers unvalidated")
            }
            DnssecHealth::Disabled => "DNSSEC: validation off".into(),
        }
    }
}

/// The shared state of the last probe (cheap to clone; one writer, many readers).
#[derive(Debug, Clone)]
pub struct DnssecStatus(Arc<StatusInner>);

#[derive(Debug)]
struct StatusInner {
    health: RwLock<DnssecHealth>,
    /// A [`monitor_dnssec`] keeps this status current (the daemon); without one
    /// (`qrelay check`, tests) nobody would ever end [`DnssecHealth::Unknown`].
    monitored: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for DnssecStatus {
    fn default() -> Self {
        DnssecStatus(Arc::new(StatusInner {
            health: RwLock::new(DnssecHealth::Unknown),
            monitored: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        }))
    }
}

impl DnssecStatus {
    pub fn get(&self) -> DnssecHealth {
        match self.0.health.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, health: DnssecHealth) {
        match self.0.health.write() {
            Ok(mut g) => *g = health,
            Err(poisoned) => *poisoned.into_inner() = health,
        }
        self.0.changed.notify_waiters();
    }

    /// Wait (at most `max`) until the first probe of a monitored status has finished.
    ///
    /// Before it, the resolver validates, and through upstreams that do not pass
    /// DNSSEC every answer is bogus: a delivery attempted in the first seconds after
    /// a start would be deferred into the retry schedule (5 minutes) although the
    /// probe is about to switch to unvalidated answers. Returns at once when no
    /// monitor runs or a probe has finished.
    pub async fn first_probe(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while self.0.monitored.load(Ordering::Acquire) && self.get() == DnssecHealth::Unknown {
            // Register for the wake-up before the second look, so that a probe
            // finishing in between is not missed.
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.get() != DnssecHealth::Unknown {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }
}

impl Resolver {
    /// Probe: does the root DNSKEY RRset validate through the configured upstreams?
    pub async fn probe_dnssec(&self) -> DnssecHealth {
        if !self.validating {
            return DnssecHealth::Disabled;
        }
        let checked_at = SystemTime::now();
        let resolver = match self.active().await {
            Ok(r) => r,
            Err(reason) => return DnssecHealth::Unavailable { reason, checked_at },
        };
        let lookup = match resolver.lookup(Name::root(), RecordType::DNSKEY).await {
            Ok(l) => Lookup::Records(l.answers().to_vec()),
            Err(e) => classify_error(true, &e),
        };
        let reason = match lookup {
            Lookup::Records(records) => {
                let dnskeys: Vec<_> = records
                    .into_iter()
                    .filter(|r| r.record_type() == RecordType::DNSKEY)
                    .collect();
                match security_of(true, &dnskeys) {
                    Security::Secure => return DnssecHealth::Available { checked_at },
                    _ if dnskeys.is_empty() => "no root DNSKEY records in the answer".into(),
                    s => format!(
                        "the root DNSKEY RRset is {s} (the trust anchor does not match the root keys, or signatures were stripped)"
                    ),
                }
            }
            Lookup::NoData(_) | Lookup::NxDomain(_) => {
                "no root DNSKEY records (the upstream does not serve DNSSEC data)".into()
            }
            Lookup::Unverified { reason, .. } | Lookup::Temp(reason) => reason,
        };
        DnssecHealth::Unavailable { reason, checked_at }
    }
}

/// Probe now and then every `interval` ([`PROBE_RETRY`] while unavailable) forever,
/// keeping `status` current (the resolvers sharing it switch to unvalidated lookups
/// while it says unavailable) and logging: the error sentence when DNSSEC becomes
/// unavailable, a warning at most every `interval` while it stays so (so it stays
/// visible without flooding the log), one info line when it becomes available. The
/// status is set before the line is logged.
///
/// The status counts as monitored from the call on (not from the first poll of the
/// returned future), so deliveries started right after it wait for the first probe
/// ([`DnssecStatus::first_probe`]).
pub fn monitor_dnssec(
    resolver: Resolver,
    status: DnssecStatus,
    interval: Duration,
) -> impl Future<Output = ()> {
    status.0.monitored.store(true, Ordering::Release);
    async move {
        let mut last_reminder = tokio::time::Instant::now();
        loop {
            let health = resolver.probe_dnssec().await;
            let before = status.get();
            status.set(health.clone());
            let still_unavailable = matches!(
                (&before, &health),
                (
                    DnssecHealth::Unavailable { .. },
                    DnssecHealth::Unavailable { .. }
                )
            );
            if !still_unavailable || last_reminder.elapsed() >= interval {
                log_transition(&resolver, &before, &health);
                last_reminder = tokio::time::Instant::now();
            }
            let next = match health {
                DnssecHealth::Unavailable { .. } => interval.min(PROBE_RETRY),
                _ => interval,
            };
            tokio::time::sleep(next).await;
        }
    }
}

fn log_transition(resolver: &Resolver, before: &DnssecHealth, now: &DnssecHealth) {
    let was_unavailable = matches!(before, DnssecHealth::Unavailable { .. });
    match now {
        DnssecHealth::Unavailable { reason, .. } if !was_unavailable => tracing::error!(
            "DNSSEC unavailable through upstream resolvers {}: {reason}: falling back to unvalidated DNS; DANE and DNSSEC-based authentication are off until it works again; messages that need them are deferred",
            resolver.upstreams()
        ),
        DnssecHealth::Unavailable { reason, .. } => tracing::warn!(
            "DNSSEC still unavailable through upstream resolvers {}: {reason}; answers unvalidated, DANE off",
            resolver.upstreams()
        ),
        DnssecHealth::Available { .. } if was_unavailable => tracing::info!(
            upstreams = %resolver.upstreams(),
            anchor = %resolver.anchor.describe(),
            "DNSSEC available again: the root DNSKEY validates; DNSSEC validation and DANE are back on"
        ),
        DnssecHealth::Available { .. } if !before.is_available() => tracing::info!(
            upstreams = %resolver.upstreams(),
            anchor = %resolver.anchor.describe(),
            "DNSSEC available: the root DNSKEY validates"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DnsConfig;

    #[tokio::test]
    async fn unreachable_upstream_is_reported_unavailable() {
        // Nothing listens on this port: the probe must come back, unavailable.
        let r = Resolver::from_config(&DnsConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(300),
            trust_anchor: None,
        })
        .unwrap();
        match r.probe_dnssec().await {
            DnssecHealth::Unavailable { reason, .. } => assert!(!reason.is_empty()),
            other => panic!("{other:?}"),
        }
        let status = DnssecStatus::default();
        assert_eq!(status.get(), DnssecHealth::Unknown);
        status.set(r.probe_dnssec().await);
        assert!(status.get().describe().contains("UNAVAILABLE"));
    }

    #[tokio::test]
    async fn unvalidated_resolver_reports_disabled() {
        let r = Resolver::unvalidated_for_tests(&DnsConfig::default());
        assert_eq!(r.probe_dnssec().await, DnssecHealth::Disabled);
    }

    #[tokio::test]
    async fn first_probe_waits_only_for_a_monitored_status() {
        // Nobody monitors: no waiting (qrelay check, tests).
        let status = DnssecStatus::default();
        let t = std::time::Instant::now();
        status.first_probe(Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(5));

        // Monitored through an unreachable upstream: the wait ends when the first
        // probe has an answer (unavailable), long before the bound.
        let r = Resolver::from_config(&DnsConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(200),
            trust_anchor: None,
        })
        .unwrap();
        let status = DnssecStatus::default();
        let monitor = tokio::spawn(monitor_dnssec(r, status.clone(), PROBE_INTERVAL));
        status.first_probe(Duration::from_secs(60)).await;
        assert!(
            matches!(status.get(), DnssecHealth::Unavailable { .. }),
            "{:?}",
            status.get()
        );
        monitor.abort();

        // A monitor that never finishes a probe: the wait is bounded.
        let status = DnssecStatus::default();
        let _never = monitor_dnssec(
            Resolver::unvalidated_for_tests(&DnsConfig::default()),
            status.clone(),
            PROBE_INTERVAL,
        );
        let t = std::time::Instant::now();
        status.first_probe(Duration::from_millis(300)).await;
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(status.get(), DnssecHealth::Unknown);
    }
}
