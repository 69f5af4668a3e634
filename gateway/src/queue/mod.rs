//! The queue manager (Postfix: qmgr): keeps every spooled message's state in memory,
//! decides when each recipient is tried, applies the results, expires what waited too
//! long, and triggers delivery status notifications.
//!
//! The spool on disk is the truth; this is an index of it rebuilt on start by
//! [`crate::spool::Spool::recover`]. Every state change is written to the spool
//! before it is acted on.

mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify as Wakeup;

use crate::config::Config;
use crate::spool::record::{Envelope, QueueId};
use crate::spool::{Spool, SpoolError};

pub use schedule::RetrySchedule;

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
}

#[derive(Default)]
struct State {
    messages: BTreeMap<QueueId, Entry>,
}

struct Inner {
    spool: Spool,
    config: Arc<Config>,
    state: Mutex<State>,
    wakeup: Wakeup,
}

/// A cheap, clonable handle on the queue, shared by the SMTP server, the scheduler
/// and the control socket.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    /// Open the queue over a spool; `recovered` are the envelopes found at start.
    pub fn new(spool: Spool, config: Arc<Config>, recovered: Vec<Envelope>) -> Queue {
        let mut state = State::default();
        for env in recovered {
            state.messages.insert(
                env.id.clone(),
                Entry {
                    env,
                    in_flight: HashSet::new(),
                },
            );
        }
        Queue {
            inner: Arc::new(Inner {
                spool,
                config,
                state: Mutex::new(state),
                wakeup: Wakeup::new(),
            }),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// Is there room for a message of `size` bytes? Asked at MAIL FROM so a client
    /// hears 452 before it sends the data.
    pub async fn check_room(&self, size: u64) -> Result<(), SubmitError> {
        let spool = self.inner.spool.clone();
        tokio::task::spawn_blocking(move || spool.check_room(size))
            .await
            .map_err(|e| SubmitError::Io(e.to_string()))?
            .map_err(SubmitError::from)
    }

    /// Durably store a new message and schedule it. Returns only after the message
    /// is on disk (fsynced): the caller may then answer 250.
    pub async fn submit(&self, env: Envelope, content: Vec<u8>) -> Result<(), SubmitError> {
        let spool = self.inner.spool.clone();
        let env = tokio::task::spawn_blocking(move || spool.store(&env, &content).map(|_| env))
            .await
            .map_err(|e| SubmitError::Io(e.to_string()))??;
        tracing::info!(queue_id = %env.id, from = %env.sender, nrcpt = env.recipients.len(), size = env.size, "queued");
        self.lock().messages.insert(
            env.id.clone(),
            Entry {
                env,
                in_flight: HashSet::new(),
            },
        );
        self.inner.wakeup.notify_one();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state itself stays usable
        // because every mutation is completed before the lock is released.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of messages in the queue.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
