//! The relay daemon: wires the spool, queue, SMTP listeners, delivery scheduler and
//! control socket together and runs until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use qrelay::config::Config;
use qrelay::control::{self, ControlHandler, DnssecReport, QueueCounts, StatusReport};
use qrelay::deliver::client::Deliverer;
use qrelay::dns::DnssecStatus;
use qrelay::evidence::EvidenceLog;
use qrelay::mtasts::MtaSts;
use qrelay::queue::Queue;
use qrelay::spool::record::{Envelope, QueueId};
use qrelay::spool::Spool;
use qrelay::system;
use qrelay::tlsrpt::TlsRpt;

/// How long shutdown waits for SMTP sessions and the scheduler to wind down.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> Result<()> {
    // Spool files hold mail: never readable by other users.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let config = Arc::new(config);
    for w in config.warnings(std::time::SystemTime::now()) {
        tracing::warn!("configuration: {w}");
    }
    let data = &config.spool.dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create data directory {}", data.display()))?;

    let spool = Spool::open(data, config.spool.min_free_bytes)
        .with_context(|| format!("cannot open the spool in {}", data.display()))?;
    let recovery = spool.recover().context("spool recovery failed")?;
    tracing::info!(
        messages = recovery.envelopes.len(),
        orphans_removed = recovery.orphans_removed,
        temp_removed = recovery.temp_removed,
        quarantined = recovery.quarantined.len(),
        "spool recovered"
    );
    let queue = Queue::new(spool, config.clone(), recovery.envelopes);
    // A5: every attempt goes into the hash-chained, signed evidence log. A log
    // whose chain does not verify stops the start: continuing it would hide the
    // tampering behind new, validly signed records.
    let evidence_dir = data.join("evidence");
    let evidence = EvidenceLog::open(&evidence_dir).with_context(|| {
        format!(
            "cannot open the evidence log in {} (check it with `qrelay evidence verify`)",
            evidence_dir.display()
        )
    })?;
    queue.set_evidence(evidence.clone());

    let tls = qrelay::tls::server::load_or_generate(&config)
        .context("cannot set up the inbound TLS certificate")?;
    let deliverer = Deliverer::new(config.clone()).context("cannot set up delivery")?;
    // DNSSEC health (issue 3): probe the root DNSKEY through the upstreams now and
    // every ten minutes. The status is the delivery resolver's own (shared by its
    // clones, MTA-STS's included): while DNSSEC is unavailable its lookups are
    // unvalidated, which is logged loudly (see `qrelay::dns`); the control socket
    // reports it too.
    let probe_resolver = deliverer.resolver().clone();
    let dnssec_status = probe_resolver.dnssec_status().clone();
    let deliverer_upstreams = probe_resolver.upstreams();
    tokio::spawn(qrelay::dns::monitor_dnssec(
        probe_resolver,
        dnssec_status.clone(),
        qrelay::dns::PROBE_INTERVAL,
    ));
    // MTA-STS (E4-E7): the policy cache survives restarts; the refresher renews
    // policies ahead of their expiry. Same resolver and PKIX roots as delivery.
    let roots = qrelay::mtasts::pkix_roots(config.tls.ca_file.as_deref())
        .context("cannot load the PKIX roots for MTA-STS")?;
    let mta_sts = Arc::new(
        MtaSts::new(&config, deliverer.resolver().clone(), roots)
            .context("cannot set up MTA-STS")?,
    );
    let sts_refresher = mta_sts.spawn_refresher();
    let deliverer = deliverer.with_mta_sts(mta_sts);
    // TLS-RPT (B4): sessions are counted per recipient domain and UTC day, kept
    // across restarts, and reported daily to domains that publish `_smtp._tls`.
    let tls_rpt = if config.tls_rpt.enabled {
        let dir = TlsRpt::dir_in(data);
        Some(
            TlsRpt::open(config.clone(), &dir, deliverer.resolver().clone())
                .with_context(|| format!("cannot set up TLS-RPT in {}", dir.display()))?,
        )
    } else {
        None
    };
    let deliverer = match &tls_rpt {
        Some(t) => deliverer.with_tls_rpt(t.clone()),
        None => deliverer,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Signs the chain head periodically, and once more when told to stop: after
    // the scheduler has finished, so the last attempts' records are signed too.
    let (evidence_stop, evidence_stop_rx) = watch::channel(false);
    let evidence_signer = tokio::spawn(
        evidence
            .clone()
            .run(config.evidence.sign_interval, evidence_stop_rx),
    );

    let server = qrelay::smtp::Server::new(config.clone(), queue.clone(), tls);
    for addr in &config.smtp.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "SMTP listening");
        let server = server.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move { server.run(listener, stop).await });
    }

    let socket = config.control_socket();
    let handler: Arc<dyn ControlHandler> = Arc::new(DaemonControl {
        queue: queue.clone(),
        evidence_key: evidence.public_key_fingerprint(),
        tls_rpt: tls_rpt.clone(),
        dnssec: dnssec_status.clone(),
        upstreams: deliverer_upstreams,
        started_at: qrelay::spool::record::now_secs(),
    });
    {
        let stop = stop_rx.clone();
        let socket = socket.clone();
        tasks.spawn(async move {
            if let Err(e) = control::serve(&socket, handler, stop).await {
                tracing::error!(error = %e, "control socket failed");
            }
        });
    }

    let watchdog_limit = system::watchdog_interval();
    if let Some(w) = watchdog_limit {
        queue.set_max_idle(w / 4);
    }
    let scheduler = tokio::spawn(queue.clone().run(Arc::new(deliverer), stop_rx.clone()));
    if let Some(t) = tls_rpt {
        tasks.spawn(t.run(queue.clone(), stop_rx.clone()));
    }

    system::notify_ready();
    system::notify_status(&format!("{} messages queued", queue.len()));
    // The watchdog is pinged only while the scheduler loop keeps going round (it
    // wakes at least every quarter interval) and the queue lock can be taken: a
    // wedged scheduler or a deadlock stops the pings and systemd restarts us.
    let health_queue = queue.clone();
    let watchdog = system::spawn_watchdog(move || {
        let _ = health_queue.len();
        let age = health_queue.heartbeat_age();
        match watchdog_limit {
            Some(limit) if age > limit / 2 => {
                tracing::error!(
                    "the scheduler has not gone round for {age:?}; withholding the watchdog ping"
                );
                false
            }
            _ => true,
        }
    });
    tracing::info!(hostname = %config.hostname(), "qrelay ready");

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    system::notify_stopping();
    let _ = stop_tx.send(true);
    if let Some(w) = watchdog {
        w.abort();
    }
    sts_refresher.abort();
    let wind_down = async {
        while tasks.join_next().await.is_some() {}
        let _ = scheduler.await;
    };
    if tokio::time::timeout(STOP_TIMEOUT, wind_down).await.is_err() {
        tracing::warn!("shutdown timed out; unfinished work stays queued");
    }
    let _ = evidence_stop.send(true);
    let _ = evidence_signer.await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// The control socket's handler: the queue's commands, and `status` with what only
/// the daemon knows (its start time, the DNSSEC probe).
struct DaemonControl {
    queue: Queue,
    evidence_key: String,
    tls_rpt: Option<TlsRpt>,
    dnssec: DnssecStatus,
    upstreams: String,
    started_at: u64,
}

impl ControlHandler for DaemonControl {
    fn list(&self) -> Vec<Envelope> {
        self.queue.list()
    }
    fn show(&self, id: &QueueId) -> Option<Envelope> {
        self.queue.show(id)
    }
    fn retry(&self, id: Option<&QueueId>) -> usize {
        self.queue.retry(id)
    }
    fn delete(&self, id: &QueueId) -> Result<bool, String> {
        self.queue.delete(id)
    }
    fn release(&self, id: &QueueId) -> Option<usize> {
        self.queue.release(id)
    }
    fn tls_rpt_send(&self, day: &str) -> Result<String, String> {
        match &self.tls_rpt {
            Some(t) => t.control_send(day, &self.queue),
            None => Err("TLS-RPT is disabled ([tls_rpt] enabled = false)".into()),
        }
    }
    fn counts(&self) -> QueueCounts {
        self.queue.counts()
    }
    fn status(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at,
            now: qrelay::spool::record::now_secs(),
            queue: self.counts(),
            dnssec: DnssecReport::from_health(self.upstreams.clone(), &self.dnssec.get()),
            evidence_key: self.evidence_key.clone(),
        }
    }
}
