//! The queue manager (Postfix: qmgr): keeps every spooled message's state in memory,
//! decides when each recipient is tried, applies the results, expires what waited too
//! long, and triggers delivery status notifications.
//!
//! The spool on disk is the truth; this is an index of it rebuilt on start by
//! [`crate::spool::Spool::recover`]. Every state change is written to the spool
//! before it is acted on, and a DSN is stored before the flag saying it was sent:
//! a crash may repeat a notice, never lose one.
//!
//! Life of a recipient: `Pending` (tried at `next_attempt`; 4xx and local problems
//! push `next_attempt` along the retry schedule) -> `Delivered` or `Failed` (5xx, null
//! MX, queue lifetime over). Once every recipient is final and its notice (failure
//! DSN, success DSN when NOTIFY=SUCCESS) is queued, the message leaves the spool.
//!
//! New messages come in two ways: [`Queue::submit`] for content built in memory
//! (DSNs), and [`Queue::begin`] / [`IncomingMessage::write`] / [`Queue::commit`] for
//! the SMTP server, which streams the content to disk while it arrives so that a
//! session holds at most [`WRITE_BATCH`] bytes of it, whatever the message size.
//! Both end in the same durable commit ([`crate::spool::Spool::commit`]).
//!
//! Messages go out the same way, never whole in memory: an attempt hands the
//! transport the open spool file ([`crate::spool::Spool::open_content`]), which
//! the SMTP client streams in fixed-size pieces; a DSN reads only what it returns
//! (the whole original only when it is small enough to be returned in full, else
//! its header section; see [`read_original`]).

pub mod requirement;
mod schedule;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify as Wakeup, Semaphore};

use crate::bounce::{self, Dsn, DsnKind, DsnOptions, Original};
use crate::config::{ClassConfig, Config, LevelAction};
use crate::control::ControlHandler;
use crate::deliver::{DeliveryReport, DeliveryRequest, RcptOutcome, RcptRequest, Transport};
use crate::evidence::{AttemptEvidence, EvidenceLog};
use crate::spool::record::{
    now_secs, Attempt, Envelope, Notify, QueueId, RcptState, Recipient, RiskClass,
};
use crate::spool::{Incoming, Spool, SpoolError};

pub use requirement::{requirement, Requirement};
pub use schedule::RetrySchedule;

/// Longest the scheduler sleeps without looking at the queue again (delay notices,
/// clock changes).
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How often every message is looked at for time-based notices (delay DSNs) and
/// notices that could not be queued before.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How long shutdown waits for deliveries under way to finish and record their result.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// A streamed message is collected into batches of this size, each written on the
/// blocking pool in one go (one thread hop per batch, not per line).
pub const WRITE_BATCH: usize = 64 * 1024;

/// Why a message could not be taken into the queue. The SMTP server maps these to
/// replies: `DiskFull` -> 452 4.3.1, `Io` -> 451 4.3.0.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("insufficient system storage")]
    DiskFull,
    #[error("local error in processing: {0}")]
    Io(String),
}

impl From<SpoolError> for SubmitError {
    fn from(e: SpoolError) -> Self {
        if e.is_disk_full() {
            SubmitError::DiskFull
        } else {
            SubmitError::Io(e.to_string())
        }
    }
}

/// One message known to the queue.
struct Entry {
    env: Envelope,
    /// Domains with an attempt under way for this message (never two at once).
    in_flight: HashSet<String>,
    /// A `settle` pass owns this message's notices right now (one at a time, so a
    /// notice is never queued twice).
    settling: bool,
    /// Serialises this message's spool writes and its removal, so a slow write can
    /// neither land out of order nor bring back the record of a removed message.
    /// Taken only on the blocking pool and never while holding the state lock.
    disk: Arc<Mutex<()>>,
}

impl Entry {
    fn new(env: Envelope) -> Entry {
        Entry {
            env,
            in_flight: HashSet::new(),
            settling: false,
            disk: Arc::new(Mutex::new(())),
        }
    }
}

#[derive(Default)]
struct State {
    messages: BTreeMap<QueueId, Entry>,
}

struct Inner {
    spool: Spool,
    config: Arc<Config>,
    schedule: RetrySchedule,
    state: Mutex<State>,
    wakeup: Wakeup,
    /// The evidence log (A5): one record per attempt per recipient. Set once by
    /// the daemon; unit tests of the scheduler run without it.
    evidence: std::sync::OnceLock<EvidenceLog>,
    /// When the scheduler loop last went round (for the watchdog): the loop
    /// proves the queue makes progress, not just that a lock can be taken.
    heartbeat: Mutex<tokio::time::Instant>,
    /// The longest the scheduler sleeps between rounds (see [`Queue::set_max_idle`]).
    max_idle: Mutex<Duration>,
}

/// A cheap, clonable handle on the queue, shared by the SMTP server, the scheduler
/// and the control socket.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// One delivery attempt the scheduler hands to the transport: the recipients of one
/// message in one domain.
struct Job {
    id: QueueId,
    domain: String,
    /// Indices into `Envelope::recipients`, in request order.
    rcpts: Vec<usize>,
    /// What these recipients require (the same for all of them).
    requirement: Requirement,
    request: DeliveryRequest,
}

impl Queue {
    /// Open the queue over a spool; `recovered` are the envelopes found at start.
    pub fn new(spool: Spool, config: Arc<Config>, recovered: Vec<Envelope>) -> Queue {
        let mut state = State::default();
        for env in recovered {
            state.messages.insert(env.id.clone(), Entry::new(env));
        }
        Queue {
            inner: Arc::new(Inner {
                spool,
                schedule: RetrySchedule::new(config.delivery.retry_schedule.clone()),
                config,
                state: Mutex::new(state),
                wakeup: Wakeup::new(),
                evidence: std::sync::OnceLock::new(),
                heartbeat: Mutex::new(tokio::time::Instant::now()),
                max_idle: Mutex::new(MAX_IDLE),
            }),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// Wake the scheduler at least this often (under a systemd watchdog: a
    /// fraction of its interval, so a healthy loop always has a fresh heartbeat).
    pub fn set_max_idle(&self, max: Duration) {
        *self
            .inner
            .max_idle
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = max.min(MAX_IDLE);
    }

    fn beat(&self) {
        *self
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    /// How long ago the scheduler loop last went round.
    pub fn heartbeat_age(&self) -> Duration {
        self.inner
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Record every attempt in this evidence log from now on (A5).
    pub fn set_evidence(&self, log: EvidenceLog) {
        if self.inner.evidence.set(log).is_err() {
            tracing::warn!("evidence log already set; keeping the first");
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// Is there room for a message of `size` bytes? Asked at MAIL FROM so a client
    /// hears 452 before it sends the data.
    pub async fn check_room(&self, size: u64) -> Result<(), SubmitError> {
        let spool = self.inner.spool.clone();
        blocking(move || spool.check_room(size)).await
    }

    /// Durably store a new message and schedule it. Returns only after the message
    /// is on disk (fsynced): the caller may then answer 250. For content built in
    /// memory (DSNs); the SMTP server streams with [`Queue::begin`].
    pub async fn submit(&self, env: Envelope, content: Vec<u8>) -> Result<(), SubmitError> {
        let spool = self.inner.spool.clone();
        let env = blocking(move || spool.store(&env, &content).map(|_| env)).await?;
        self.enqueue(env);
        Ok(())
    }

    /// Start receiving message `id`: its content is written to the spool's `tmp/`
    /// as it arrives, and becomes part of the queue only with [`Queue::commit`].
    pub async fn begin(&self, id: QueueId) -> Result<IncomingMessage, SubmitError> {
        let spool = self.inner.spool.clone();
        let id2 = id.clone();
        let incoming = blocking(move || spool.incoming(&id2)).await?;
        Ok(IncomingMessage {
            id,
            incoming: Some(incoming),
            batch: Vec::with_capacity(WRITE_BATCH),
            len: 0,
        })
    }

    /// Durably store a message received with [`Queue::begin`] under `env`, and
    /// schedule it. Returns only after content and envelope are on disk (fsynced):
    /// the caller may then answer 250. On error nothing of the message is left.
    pub async fn commit(&self, mut msg: IncomingMessage, env: Envelope) -> Result<(), SubmitError> {
        let incoming = msg.incoming.take().ok_or_else(IncomingMessage::abandoned)?;
        let batch = std::mem::take(&mut msg.batch);
        let spool = self.inner.spool.clone();
        let env = blocking(move || {
            let mut incoming = incoming;
            incoming.write_all(&batch)?;
            spool.commit(incoming, &env).map(|_| env)
        })
        .await?;
        self.enqueue(env);
        Ok(())
    }

    /// Take a message that is durably stored into the schedule.
    fn enqueue(&self, env: Envelope) {
        tracing::info!(queue_id = %env.id, from = %env.sender, nrcpt = env.recipients.len(), size = env.size, "queued");
        self.lock().messages.insert(env.id.clone(), Entry::new(env));
        self.inner.wakeup.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation completes before the lock is released, so the state stays
        // consistent even if a holder panicked.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of messages in the queue.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run the scheduler until `shutdown` turns true. Deliveries under way at
    /// shutdown get a grace period to finish and record their result.
    pub async fn run(self, transport: Arc<dyn Transport>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.inner.config.delivery.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        // Notices left pending by a crash (DSN stored but flag not yet written, or
        // the reverse) are settled first.
        self.settle_all().await;
        let mut last_sweep = tokio::time::Instant::now();
        'scheduling: loop {
            if *shutdown.borrow() {
                break;
            }
            self.beat();
            let max_idle = *self
                .inner
                .max_idle
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = now_secs();
            let (jobs, next_due) = self.take_due(now);
            let mut jobs = jobs.into_iter();
            while let Some(job) = jobs.next() {
                // Waiting for a free delivery slot is normal under load (slow
                // servers hold them for minutes): the loop still beats meanwhile.
                let permit = loop {
                    tokio::select! {
                        p = permits.clone().acquire_owned() => break p.expect("semaphore never closed"),
                        _ = shutdown.changed() => {
                            self.release(&job);
                            jobs.for_each(|j| self.release(&j));
                            break 'scheduling;
                        }
                        _ = tokio::time::sleep(max_idle) => self.beat(),
                    }
                };
                let queue = self.clone();
                let transport = transport.clone();
                tasks.spawn(async move {
                    queue.attempt(job, transport.as_ref()).await;
                    drop(permit);
                });
            }
            while tasks.try_join_next().is_some() {}
            // Results are settled right after each attempt; this periodic sweep
            // sends delay notices and retries notices that could not be queued
            // earlier (e.g. while the disk was full).
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                self.settle_all().await;
                last_sweep = tokio::time::Instant::now();
            }
            let sleep = next_due
                .map(|t| Duration::from_secs(t.saturating_sub(now_secs())))
                .unwrap_or(max_idle)
                .min(max_idle);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.wakeup.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
        let grace = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        });
        if grace.await.is_err() {
            tracing::warn!(
                "deliveries still under way at shutdown; they will be retried after restart"
            );
        }
    }

    /// Collect every (message, domain) that is due and not already being tried, and
    /// mark them in flight. Returns the jobs and the earliest future due time.
    fn take_due(&self, now: u64) -> (Vec<Job>, Option<u64>) {
        let cfg = &self.inner.config;
        let mut st = self.lock();
        let mut jobs = Vec::new();
        let mut next: Option<u64> = None;
        for entry in st.messages.values_mut() {
            let env = &entry.env;
            let mut due_domains: BTreeSet<String> = BTreeSet::new();
            // Cheap integer checks first: this scan runs on every wakeup over the
            // whole queue, so nothing is allocated for recipients that are not due.
            for r in env.recipients.iter() {
                if r.state != RcptState::Pending {
                    continue;
                }
                if r.next_attempt > now {
                    next = Some(next.map_or(r.next_attempt, |n| n.min(r.next_attempt)));
                    continue;
                }
                let domain = r.domain();
                if !entry.in_flight.contains(&domain) {
                    due_domains.insert(domain);
                }
            }
            let wall = std::time::SystemTime::now();
            for domain in due_domains {
                // All of a message's pending recipients in one domain go in one
                // transaction, including those not yet due, as long as they require
                // the same (an exception for one address splits them: the others
                // go in the next round, when this one has finished).
                let all = indices(env, |r| {
                    r.state == RcptState::Pending && r.domain() == domain
                });
                let reqs: Vec<Requirement> = all
                    .iter()
                    .map(|&i| requirement(cfg, env, &env.recipients[i].address, wall))
                    .collect();
                let first = reqs[0].clone();
                let rcpts: Vec<usize> = all
                    .iter()
                    .zip(&reqs)
                    .filter(|(_, q)| q.key() == first.key())
                    .map(|(&i, _)| i)
                    .collect();
                if let Some(e) = &first.exception {
                    tracing::info!(
                        queue_id = %env.id, domain = %domain, exception = %e.id,
                        approver = %e.approver, level = %first.level,
                        "exception applies: {}", e.reason
                    );
                }
                let request = DeliveryRequest {
                    id: env.id.clone(),
                    domain: domain.clone(),
                    sender: env.sender.clone(),
                    recipients: rcpts
                        .iter()
                        .map(|&i| {
                            let r = &env.recipients[i];
                            RcptRequest {
                                address: r.address.clone(),
                                orcpt: r.orcpt.clone(),
                                notify: r.notify,
                            }
                        })
                        .collect(),
                    body: env.body,
                    smtputf8: env.smtputf8,
                    ret: env.ret,
                    envid: env.envid.clone(),
                    level: first.level,
                    tls_profile: first.profile,
                    requiretls: env.requiretls,
                    tls_optional: first.tls_optional,
                    // The spool file is opened when the attempt starts.
                    content: Arc::new(Vec::new()),
                };
                jobs.push(Job {
                    id: env.id.clone(),
                    domain,
                    rcpts,
                    requirement: first,
                    request,
                });
            }
            for job in jobs.iter().filter(|j| j.id == entry.env.id) {
                entry.in_flight.insert(job.domain.clone());
            }
        }
        (jobs, next)
    }

    fn release(&self, job: &Job) {
        if let Some(e) = self.lock().messages.get_mut(&job.id) {
            e.in_flight.remove(&job.domain);
        }
    }

    /// Carry out one job and record its result.
    async fn attempt(&self, job: Job, transport: &dyn Transport) {
        let spool = self.inner.spool.clone();
        let id = job.id.clone();
        let report = match blocking(move || spool.open_content(&id)).await {
            Ok(content) => {
                // The request owns the open file; it is closed when the attempt ends.
                let mut request = job.request.clone();
                request.content = Arc::new(content);
                transport.deliver(request).await
            }
            Err(e) => {
                // Could not read our own spool: a local, temporary problem.
                tracing::error!(queue_id = %job.id, error = %e, "cannot read message content");
                local_deferral(&job, format!("4.3.0 local error reading the queue: {e}"))
            }
        };
        self.apply(&job, report, now_secs()).await;
    }

    /// Record the outcome of an attempt, durably, then settle notices.
    async fn apply(&self, job: &Job, report: DeliveryReport, now: u64) {
        let cfg = self.inner.config.clone();
        let mut evidence = Vec::new();
        let updated = {
            let mut st = self.lock();
            let Some(entry) = st.messages.get_mut(&job.id) else {
                // Deleted by the admin while the attempt was under way.
                return;
            };
            entry.in_flight.remove(&job.domain);
            let env = &mut entry.env;
            let expires = env.expires_at.unwrap_or_else(|| {
                env.received_at
                    .saturating_add(cfg.delivery.queue_lifetime.as_secs())
            });
            let class = cfg.class_config(job.requirement.class);
            for (k, &i) in job.rcpts.iter().enumerate() {
                let Some(outcome) = report.outcomes.get(k) else {
                    continue;
                };
                let r = &mut env.recipients[i];
                if r.state != RcptState::Pending {
                    continue;
                }
                apply_outcome(
                    r,
                    outcome,
                    &report.attempt,
                    now,
                    expires,
                    &self.inner.schedule,
                );
                let r = &env.recipients[i];
                if let Some(action) = grace_over(r, &class, env.received_at, now) {
                    let r = &mut env.recipients[i];
                    apply_level_action(r, action, &job.requirement);
                    tracing::warn!(
                        queue_id = %env.id, to = %r.address, class = %job.requirement.class,
                        level = %job.requirement.level, action = action.as_str(),
                        "level not reached within the grace period: {}",
                        r.last.as_ref().map(|a| a.reply.as_str()).unwrap_or("")
                    );
                }
                let r = &env.recipients[i];
                if let (Some(last), Some(_)) = (&r.last, self.inner.evidence.get()) {
                    evidence.push(evidence_record(env, r, last, &job.requirement));
                }
                tracing::info!(
                    queue_id = %env.id,
                    to = %r.address,
                    state = ?r.state,
                    status = r.status.as_deref().unwrap_or(""),
                    attempts = r.attempts,
                    next_attempt_in = r.next_attempt.saturating_sub(now),
                    mx = %report.attempt.mx,
                    verdict = report.attempt.verdict.map(|v| v.as_str()).unwrap_or("none"),
                    reply = %r.last.as_ref().map(|a| a.reply.as_str()).unwrap_or(""),
                    "delivery result"
                );
            }
            env.clone()
        };
        self.record_evidence(&job.id, evidence).await;
        if updated.is_finished() {
            // Nothing left to record or notify: remove at once instead of writing
            // a final state first (saves two fsyncs per delivered message).
            self.finish(&job.id).await;
        } else {
            self.persist(&job.id).await;
            self.settle(&job.id, now).await;
        }
        // Deferred recipients have a new due time the sleeping scheduler must see.
        self.inner.wakeup.notify_one();
    }

    /// Append an attempt's evidence records (A5), off the async threads. A log that
    /// cannot be written is an error for the admin, not a reason to hold mail back:
    /// the message has already gone where the attempt took it.
    async fn record_evidence(&self, id: &QueueId, records: Vec<AttemptEvidence>) {
        let Some(log) = self.inner.evidence.get().cloned() else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let res = tokio::task::spawn_blocking(move || {
            records.into_iter().try_for_each(|rec| log.append(rec))
        })
        .await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot append to the evidence log")
            }
            Err(e) => tracing::error!(queue_id = %id, error = %e, "evidence task failed"),
        }
    }

    /// Write the message's current state to the spool.
    async fn persist(&self, id: &QueueId) {
        let queue = self.clone();
        let id2 = id.clone();
        match tokio::task::spawn_blocking(move || queue.persist_blocking(&id2)).await {
            Ok(Ok(())) => {}
            // The in-memory state is ahead of the disk; after a crash the attempt
            // may be repeated, which can duplicate but never lose a message.
            Ok(Err(e)) => tracing::error!(queue_id = %id, error = %e, "cannot update spool record"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "spool task failed"),
        }
    }

    fn persist_blocking(&self, id: &QueueId) -> Result<(), SpoolError> {
        let Some(disk) = self.lock().messages.get(id).map(|e| e.disk.clone()) else {
            return Ok(());
        };
        let _serial = disk.lock().unwrap_or_else(|p| p.into_inner());
        // Read the state only now, under the disk lock: the newest state is what
        // lands last, and a message removed meanwhile is not written back.
        let Some(env) = self.lock().messages.get(id).map(|e| e.env.clone()) else {
            return Ok(());
        };
        self.inner.spool.update(&env)
    }

    /// Remove a message from memory and disk if `may_remove` agrees, under its disk
    /// lock. Returns whether it was removed.
    fn remove_blocking(
        &self,
        id: &QueueId,
        may_remove: impl Fn(&Entry) -> bool,
    ) -> Result<bool, SpoolError> {
        let Some(disk) = self.lock().messages.get(id).map(|e| e.disk.clone()) else {
            return Ok(false);
        };
        let _serial = disk.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.lock();
            match st.messages.get(id) {
                Some(e) if may_remove(e) => {}
                _ => return Ok(false),
            }
            st.messages.remove(id);
        }
        self.inner.spool.remove(id)?;
        Ok(true)
    }

    async fn settle_all(&self) {
        let now = now_secs();
        let ids: Vec<QueueId> = self.lock().messages.keys().cloned().collect();
        for id in ids {
            self.settle(&id, now).await;
            self.beat();
        }
    }

    /// Send the notices a message's state calls for (failure, success, delay DSNs)
    /// and remove it once everything is final.
    async fn settle(&self, id: &QueueId, now: u64) {
        let env = {
            let mut st = self.lock();
            let Some(entry) = st.messages.get_mut(id) else {
                return;
            };
            if entry.settling {
                return;
            }
            entry.settling = true;
            entry.env.clone()
        };
        self.settle_claimed(id, env, now).await;
        if let Some(entry) = self.lock().messages.get_mut(id) {
            entry.settling = false;
        }
    }

    async fn settle_claimed(&self, id: &QueueId, env: Envelope, now: u64) {
        let cfg = self.inner.config.clone();
        let delay_after = cfg.delivery.delay_warning.as_secs();
        let failed: Vec<usize> = indices(&env, |r| {
            r.state == RcptState::Failed && !r.final_notice_done
        });
        let succeeded: Vec<usize> = indices(&env, |r| {
            r.state == RcptState::Delivered && !r.final_notice_done
        });
        // A4: a recipient held for its level: the sender is told once per hold.
        let held: Vec<usize> =
            indices(&env, |r| r.state == RcptState::Held && !r.final_notice_done);
        let delayed: Vec<usize> =
            if delay_after > 0 && now >= env.received_at.saturating_add(delay_after) {
                indices(&env, |r| r.state == RcptState::Pending && !r.delay_notified)
            } else {
                Vec::new()
            };
        if failed.is_empty() && succeeded.is_empty() && delayed.is_empty() && held.is_empty() {
            if env.is_finished() {
                self.finish(id).await;
            }
            return;
        }

        let (original, original_size) = if env.is_bounce() {
            // No notice is ever sent about a notice (RFC 3461 section 6.2).
            (Vec::new(), 0)
        } else {
            let spool = self.inner.spool.clone();
            let id2 = id.clone();
            let env2 = env.clone();
            let want_full = !failed.is_empty();
            match blocking(move || read_original(&spool, &id2, &env2, want_full)).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot read message for DSN");
                    return;
                }
            }
        };
        let original = Original {
            bytes: &original,
            size: original_size,
        };
        let mut done: Vec<(usize, bool)> = Vec::new(); // (index, is_delay)
        let mta = cfg.hostname();
        for (kind, set) in [
            (DsnKind::Failure, &failed),
            (DsnKind::Success, &succeeded),
            (DsnKind::Delay, &delayed),
            (DsnKind::Held, &held),
        ] {
            if set.is_empty() {
                continue;
            }
            let rcpts: Vec<&Recipient> = set.iter().map(|&i| &env.recipients[i]).collect();
            // The notice names the level the (first) recipient needed: its class,
            // raised by a recipient-domain rule or lowered by an exception.
            let level =
                requirement(&cfg, &env, &rcpts[0].address, std::time::SystemTime::now()).level;
            let opts = DsnOptions {
                retry_until: Some(
                    env.received_at
                        .saturating_add(cfg.delivery.queue_lifetime.as_secs()),
                ),
                level: Some(level),
                ..DsnOptions::default()
            };
            if let Some(dsn) =
                bounce::build_dsn_with(&mta, &env, &rcpts, kind, original, now, &opts)
            {
                let notice = notice_envelope(&dsn, &mta);
                let notice_id = notice.id.clone();
                match self.submit(notice, dsn.content.clone()).await {
                    Ok(()) => {
                        tracing::info!(queue_id = %id, notice_id = %notice_id, kind = ?kind, to = %dsn.recipient, "delivery status notification queued");
                    }
                    Err(e) => {
                        // Keep the flags unset: the next pass tries again.
                        tracing::warn!(queue_id = %id, kind = ?kind, error = %e, "cannot queue DSN, will retry");
                        continue;
                    }
                }
            }
            // Either queued, or none was wanted (NOTIFY, null sender): done.
            done.extend(set.iter().map(|&i| (i, kind == DsnKind::Delay)));
        }
        let updated = {
            let mut st = self.lock();
            let Some(entry) = st.messages.get_mut(id) else {
                return;
            };
            for &(i, is_delay) in &done {
                let r = &mut entry.env.recipients[i];
                if is_delay {
                    r.delay_notified = true;
                } else {
                    r.final_notice_done = true;
                }
            }
            entry.env.clone()
        };
        if updated.is_finished() {
            self.finish(id).await;
        } else {
            self.persist(id).await;
        }
    }

    /// Remove a message whose every recipient is final and notified.
    async fn finish(&self, id: &QueueId) {
        let queue = self.clone();
        let id2 = id.clone();
        let res = tokio::task::spawn_blocking(move || {
            queue.remove_blocking(&id2, |e| e.in_flight.is_empty() && e.env.is_finished())
        })
        .await;
        match res {
            Ok(Ok(true)) => {
                tracing::info!(queue_id = %id, "removed from queue (all recipients final)")
            }
            Ok(Ok(false)) => {}
            // Left on disk in its final state; the next start recovers and removes it.
            Ok(Err(e)) => tracing::error!(queue_id = %id, error = %e, "cannot remove from spool"),
            Err(e) => tracing::error!(queue_id = %id, error = %e, "spool task failed"),
        }
    }
}

/// The evidence record of one recipient's attempt, with the class that applied to
/// it (a recipient-domain rule may have raised the message's) and the exception
/// used, if any.
fn evidence_record(
    env: &Envelope,
    r: &Recipient,
    a: &Attempt,
    req: &Requirement,
) -> AttemptEvidence {
    let mut rec = AttemptEvidence::from_attempt(env, r, a, req.level, req.exception.as_ref());
    rec.class = req.class.to_string();
    if let Some(why) = &req.raised_by {
        rec.class_reasons.push(why.clone());
    }
    if let Some(e) = &req.exception {
        tracing::info!(queue_id = %env.id, to = %r.address, exception = %e.id, approver = %e.approver, "exception used");
    }
    rec
}

/// Update one recipient from the outcome of an attempt.
fn apply_outcome(
    r: &mut Recipient,
    outcome: &RcptOutcome,
    attempt: &Attempt,
    now: u64,
    expires: u64,
    schedule: &RetrySchedule,
) {
    r.attempts += 1;
    let mut last = attempt.clone();
    match outcome {
        RcptOutcome::Delivered { reply, remote_dsn } => {
            last.reply = reply.clone();
            r.state = RcptState::Delivered;
            r.status = Some(status_of(reply).unwrap_or_else(|| "2.0.0".into()));
            r.remote_dsn = *remote_dsn;
            // A success notice is ours to send only if asked for and the next hop
            // did not take over the DSN request (RFC 3461 section 5.2.2).
            r.final_notice_done = !Notify::wants_success(r.notify) || r.remote_dsn;
        }
        RcptOutcome::Failed { reply, status } => {
            last.reply = reply.clone();
            r.state = RcptState::Failed;
            r.status = Some(status.clone());
        }
        RcptOutcome::Deferred { reply, status } => {
            last.reply = reply.clone();
            if now >= expires {
                // Queue lifetime over: the last temporary failure becomes final
                // (RFC 3463 X.4.7 delivery time expired).
                r.state = RcptState::Failed;
                r.status = Some("5.4.7".into());
                last.reply = format!(
                    "delivery time expired; last problem: {}",
                    if reply.is_empty() { status } else { reply }
                );
            } else {
                r.status = Some(status.clone());
                let wait = schedule.wait_after(r.attempts).as_secs();
                // The last attempt happens when the lifetime ends, not after it.
                r.next_attempt = now.saturating_add(wait).min(expires.max(now + 1));
            }
        }
    }
    r.last = Some(last);
}

/// A4: the recipient is still pending because its server could not give the
/// transport its level (the attempt recorded a problem), and the class's grace
/// period is over: the class's action is due.
fn grace_over(
    r: &Recipient,
    class: &ClassConfig,
    received_at: u64,
    now: u64,
) -> Option<LevelAction> {
    if r.state != RcptState::Pending {
        return None;
    }
    let grace = class.grace?;
    let level_problem = r.last.as_ref().is_some_and(|a| a.problem.is_some());
    (level_problem && now >= received_at.saturating_add(grace.as_secs())).then_some(class.action)
}

/// Bounce or hold a recipient whose level could not be met (A4). The notice to
/// the sender (failure or held DSN) explains the problem in plain language.
fn apply_level_action(r: &mut Recipient, action: LevelAction, req: &Requirement) {
    let reason = r.last.as_ref().map(|a| a.reply.clone()).unwrap_or_default();
    let status = r
        .status
        .as_deref()
        .map(|s| format!("5{}", s.get(1..).unwrap_or(".7.5")))
        .unwrap_or_else(|| "5.7.5".into());
    match action {
        LevelAction::Bounce => {
            r.state = RcptState::Failed;
            r.status = Some(status);
            if let Some(a) = r.last.as_mut() {
                a.reply = format!(
                    "level {} (class {}) not reached within the grace period: {reason}",
                    req.level, req.class
                );
            }
        }
        LevelAction::Hold => {
            r.state = RcptState::Held;
            // The held notice is due (sent by `settle`, flagged like a final one).
            r.final_notice_done = false;
        }
    }
}

/// The enhanced status code at the start of an SMTP reply text, if any ("250 2.0.0 Ok").
fn status_of(reply: &str) -> Option<String> {
    reply
        .split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn local_deferral(job: &Job, reason: String) -> DeliveryReport {
    DeliveryReport {
        outcomes: job
            .rcpts
            .iter()
            .map(|_| RcptOutcome::Deferred {
                reply: reason.clone(),
                status: "4.3.0".into(),
            })
            .collect(),
        attempt: Attempt {
            at: now_secs(),
            mx: String::new(),
            ip: String::new(),
            tls: None,
            verdict: None,
            reply: reason,
            auth: None,
            problem: None,
            requiretls: false,
        },
    }
}

/// What a DSN about message `id` needs of it: the whole content when a failure
/// notice is due (`want_full`) and may return it in full, else only the header
/// section; with the full size. Reads at most [`bounce::MAX_FULL_RETURN`] or
/// [`bounce::MAX_HEADER_RETURN`] bytes, whatever the message's size.
fn read_original(
    spool: &Spool,
    id: &QueueId,
    env: &Envelope,
    want_full: bool,
) -> Result<(Vec<u8>, u64), SpoolError> {
    let content = spool.open_content(id)?;
    let opts = DsnOptions::default();
    let bytes = if want_full && bounce::full_return_possible(env, content.len(), &opts) {
        content.read_prefix(opts.max_full_return)?
    } else {
        content.read_header_section(bounce::MAX_HEADER_RETURN)?
    };
    Ok((bytes, content.len()))
}

fn indices(env: &Envelope, pred: impl Fn(&Recipient) -> bool) -> Vec<usize> {
    env.recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| pred(r))
        .map(|(i, _)| i)
        .collect()
}

/// The envelope of a DSN we generate: null sender, one recipient (the original sender).
fn notice_envelope(dsn: &Dsn, hostname: &str) -> Envelope {
    let mut env = Envelope::generated(
        "",
        &dsn.recipient,
        dsn.content.len() as u64,
        hostname,
        RiskClass::Normal,
        "delivery status notification",
    );
    env.body = dsn.body;
    env.smtputf8 = dsn.smtputf8;
    env
}

/// A message being received (see [`Queue::begin`]). Writes are collected into a
/// batch of [`WRITE_BATCH`] bytes, which goes to disk on the blocking pool when
/// full. Dropped without [`Queue::commit`], its temporary file is removed; use
/// [`IncomingMessage::discard`] to wait for that.
pub struct IncomingMessage {
    id: QueueId,
    /// None while nothing can be written any more (a write failed).
    incoming: Option<Incoming>,
    batch: Vec<u8>,
    len: u64,
}

impl IncomingMessage {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Bytes of content so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn abandoned() -> SubmitError {
        SubmitError::Io("message abandoned after an earlier spool error".into())
    }

    /// Append to the content. After an error the message is gone (its file
    /// removed); later writes and the commit fail too.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), SubmitError> {
        if self.incoming.is_none() {
            return Err(Self::abandoned());
        }
        while !bytes.is_empty() {
            let n = (WRITE_BATCH - self.batch.len()).min(bytes.len());
            self.batch.extend_from_slice(&bytes[..n]);
            self.len += n as u64;
            bytes = &bytes[n..];
            if self.batch.len() >= WRITE_BATCH {
                self.write_batch().await?;
            }
        }
        Ok(())
    }

    async fn write_batch(&mut self) -> Result<(), SubmitError> {
        let mut incoming = self.incoming.take().ok_or_else(Self::abandoned)?;
        let mut batch = std::mem::take(&mut self.batch);
        let (incoming, batch) = blocking(move || {
            // On error `incoming` is dropped here, removing the file off the
            // async thread.
            incoming.write_all(&batch)?;
            batch.clear();
            Ok((incoming, batch))
        })
        .await?;
        self.incoming = Some(incoming);
        self.batch = batch;
        Ok(())
    }

    /// Give the message up and wait until its temporary file is removed.
    pub async fn discard(mut self) {
        if let Some(incoming) = self.incoming.take() {
            let id = self.id.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || drop(incoming)).await {
                tracing::warn!(queue_id = %id, error = %e, "removing an abandoned message failed");
            }
        }
    }
}

impl Drop for IncomingMessage {
    fn drop(&mut self) {
        // Not committed (the session ended or was aborted mid-DATA): remove the
        // temporary file, off the async thread when there is a runtime.
        if let Some(incoming) = self.incoming.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(incoming));
                }
                Err(_) => drop(incoming),
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SubmitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SubmitError::Io(format!("spool task failed: {e}")))?
        .map_err(SubmitError::from)
}

/// The admin's view through the control socket.
impl ControlHandler for Queue {
    fn list(&self) -> Vec<Envelope> {
        self.lock()
            .messages
            .values()
            .map(|e| e.env.clone())
            .collect()
    }

    fn show(&self, id: &QueueId) -> Option<Envelope> {
        self.lock().messages.get(id).map(|e| e.env.clone())
    }

    fn counts(&self) -> crate::control::QueueCounts {
        crate::control::count(self.lock().messages.values().map(|e| &e.env))
    }

    fn retry(&self, id: Option<&QueueId>) -> usize {
        let now = now_secs();
        let mut st = self.lock();
        let mut n = 0;
        for (qid, entry) in st.messages.iter_mut() {
            if id.is_some_and(|want| want != qid) {
                continue;
            }
            let mut touched = false;
            for r in entry.env.recipients.iter_mut() {
                if r.state == RcptState::Pending {
                    r.next_attempt = now;
                    touched = true;
                }
            }
            if touched {
                n += 1;
                tracing::info!(queue_id = %qid, "retry requested by admin");
            }
        }
        drop(st);
        self.inner.wakeup.notify_one();
        n
    }

    fn release(&self, id: &QueueId) -> Option<usize> {
        let now = now_secs();
        let n = {
            let mut st = self.lock();
            let entry = st.messages.get_mut(id)?;
            let mut n = 0;
            for r in entry.env.recipients.iter_mut() {
                if r.state == RcptState::Held {
                    r.state = RcptState::Pending;
                    r.next_attempt = now;
                    // The held notice went out (or is moot now).
                    r.final_notice_done = false;
                    r.delay_notified = true;
                    n += 1;
                }
            }
            n
        };
        if n > 0 {
            tracing::info!(queue_id = %id, released = n, "held recipients released by admin");
            let queue = self.clone();
            let id2 = id.clone();
            // Durable before the next attempt could change it again.
            if let Err(e) = queue.persist_blocking(&id2) {
                tracing::error!(queue_id = %id, error = %e, "cannot update spool record");
            }
            self.inner.wakeup.notify_one();
        }
        Some(n)
    }

    fn delete(&self, id: &QueueId) -> Result<bool, String> {
        let removed = self
            .remove_blocking(id, |_| true)
            .map_err(|e| e.to_string())?;
        if removed {
            tracing::info!(queue_id = %id, "deleted by admin");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
