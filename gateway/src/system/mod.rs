//! The daemon's contract with its host: systemd readiness and watchdog (sd-notify),
//! and log set-up.
//!
//! Under systemd (`Type=notify`, `WatchdogSec=`), the relay says READY=1 once its
//! listeners are bound and the spool is recovered, and pings the watchdog only while
//! its queue can still be locked and its runtime still schedules tasks, so a wedged
//! process is restarted instead of silently holding mail. Outside systemd these
//! calls do nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd the service is ready (no-op outside systemd).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
}

/// Tell systemd the service is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Report a one-line status (shown by `systemctl status`).
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// The flag systemd-timesyncd keeps while the clock is synchronised (the same
/// one `systemd-time-wait-sync` waits for).
pub const TIME_SYNC_FLAG: &str = "/run/systemd/timesync/synchronized";

/// Whether the system clock has been synchronised since boot, by the flag file
/// `flag` (normally [`TIME_SYNC_FLAG`]).
pub fn clock_synchronized(flag: &std::path::Path) -> bool {
    flag.exists()
}

/// The watchdog interval systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec))
    } else {
        None
    }
}

/// Ping the watchdog at half its interval while `healthy()` says so. `healthy`
/// must be cheap and must fail if the daemon is wedged (e.g. it takes the queue lock).
pub fn spawn_watchdog<F>(healthy: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> bool + Send + 'static,
{
    let interval = watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if healthy() {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            } else {
                tracing::error!("health check failed; withholding watchdog ping");
            }
        }
    }))
}

/// Set up logging to stderr (journald captures it under systemd). `RUST_LOG`
/// overrides the configured filter.
pub fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let filter = with_quiet_libraries(&filter);
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Libraries whose warnings are about single peers (a DNS answer without NSEC
/// records, a TLS alert from one server), dumped with whole messages: our own log
/// lines already say what such an event means for a delivery. Kept at error level
/// unless the filter names them.
const QUIET_LIBRARIES: [&str; 3] = ["hickory_proto", "hickory_resolver", "rustls"];

fn with_quiet_libraries(filter: &str) -> String {
    let mut out = filter.to_string();
    for lib in QUIET_LIBRARIES {
        if !filter.contains(lib) {
            out.push_str(&format!(",{lib}=error"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_noise_is_quiet_unless_asked_for() {
        assert_eq!(
            with_quiet_libraries("info"),
            "info,hickory_proto=error,hickory_resolver=error,rustls=error"
        );
        assert_eq!(
            with_quiet_libraries("debug,hickory_proto=debug"),
            "debug,hickory_proto=debug,hickory_resolver=error,rustls=error"
        );
        assert!(tracing_subscriber::EnvFilter::try_new(with_quiet_libraries("info")).is_ok());
    }
}
