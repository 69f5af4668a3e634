//! The evidence log (standards.md A5): how every message left, kept so that an
//! auditor can rely on it.
//!
//! Every delivery attempt for every recipient becomes one [`AttemptEvidence`]
//! record with the facts A5 lists (message, class and why, required level, MX and
//! IP, DNSSEC status, TLSA and MTA-STS facts, TLS parameters, peer key, verdict,
//! REQUIRETLS, the final reply). The records are appended to `<spool.dir>/evidence/log`:
//!
//! - **A hash chain.** Each entry carries the SHA-256 of the entry before it, so
//!   editing, removing or reordering any entry breaks every link after it.
//! - **Signed checkpoints.** Every `[evidence] sign_interval` (and at shutdown) the
//!   relay appends a checkpoint: the device's Ed25519 signature over the newest
//!   entry's number and hash. Whoever rewrites the chain needs the device key.
//! - **A pinned key.** The first entry (genesis) pins the device's public key; the
//!   key in `device-ed25519.pk8` must still be that key, and an auditor who noted
//!   its fingerprint (`qrelay evidence verify` prints it) can demand it with
//!   `--expect-key`, which also catches a log re-created from scratch with a new key.
//! - **A signed head outside the log.** `head` names the last checkpoint; a log that
//!   no longer contains it was cut short.
//!
//! What this cannot do: entries after the last checkpoint (at most one
//! `sign_interval` of them) are not signed yet, so cutting exactly those off the end
//! goes unnoticed; `verify` reports how many there are. And someone holding the
//! device key and write access can rewrite history consistently; the fingerprint an
//! auditor noted and the heads they exported earlier are the outside anchors.
//!
//! The log is only appended to. Records are written without an fsync each (the
//! spool already fsyncs the delivery state they describe); a checkpoint fsyncs.
//! After a crash the relay cuts an incomplete last frame and records that it did
//! ([`Body::Resumed`]); any other damage stops the relay's start with an error that
//! names the record, because continuing a tampered log would hide the tampering.

mod chain;
mod export;
mod record;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_lc_rs::signature::Ed25519KeyPair;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::watch;

pub use chain::{Body, Entry, Head, FORMAT};
pub use export::{export, parse_bound, verify, ExportFormat, VerifyReport};
pub use record::AttemptEvidence;

use crate::spool::record::now_secs;
use chain::{Hash, Paths};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no evidence log at {0} (the relay creates it when it starts)")]
    Missing(PathBuf),
    #[error("the log {log} is missing or empty, but {head} shows it existed: the log was removed")]
    LogRemoved { log: PathBuf, head: PathBuf },
    #[error(
        "the device key {0} is missing, but the log exists: without the key the log \
         cannot be continued (restore the key from its backup)"
    )]
    KeyMissing(PathBuf),
    #[error("the device key {path} is unusable: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the device key file {path} holds a different key (fingerprint {file}) than the one \
         pinned in the log's first record ({pinned}): the signing key was replaced"
    )]
    KeyReplaced {
        path: PathBuf,
        file: String,
        pinned: String,
    },
    #[error(
        "the log is signed by the key with fingerprint {found}, not by the expected key \
         {expected}: the log was re-created or rewritten with another key"
    )]
    KeyMismatch { expected: String, found: String },
    #[error("record {seq} (at byte {offset}) is damaged: {reason}")]
    Corrupt {
        seq: u64,
        offset: u64,
        reason: String,
    },
    #[error(
        "expected record {expected} at byte {offset} but found record {found}: records were \
         removed or reordered"
    )]
    OutOfOrder {
        expected: u64,
        found: u64,
        offset: u64,
    },
    #[error(
        "record {seq} (at byte {offset}) does not continue the chain: the hash of the \
         previous record it carries does not match. The record before it was edited, or \
         records were removed, replaced or reordered"
    )]
    BrokenLink { seq: u64, offset: u64 },
    #[error("record {seq} is a checkpoint with a bad signature: {reason}")]
    BadSignature { seq: u64, reason: String },
    #[error(
        "the log holds {records} records, but the signed head in {head} names record \
         {checkpoint}: records were cut off the end of the log"
    )]
    Truncated {
        records: u64,
        checkpoint: u64,
        head: PathBuf,
    },
    #[error("record {seq}: {reason}")]
    HeadMismatch { seq: u64, reason: String },
    #[error(
        "{0} is missing: the file that pins the last signed checkpoint was removed, so \
         records cut off the end of the log would go unnoticed"
    )]
    HeadMissing(PathBuf),
    #[error("{path} is damaged: {reason}")]
    HeadDamaged { path: PathBuf, reason: String },
    #[error("{0} is in use by another qrelay process")]
    Locked(PathBuf),
    #[error("cannot encode an evidence record: {0}")]
    Encode(String),
    #[error(
        "the evidence log stopped after a write that failed and could not be undone \
         ({0}); restart the relay, which repairs the end of the log"
    )]
    Unusable(String),
    #[error("cannot write the export: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    BadArgument(String),
}

/// The open evidence log of the running relay. Cheap to clone; all clones append
/// to the same chain.
#[derive(Clone)]
pub struct EvidenceLog {
    inner: Arc<Mutex<Inner>>,
    fingerprint: Arc<str>,
}

struct Inner {
    paths: Paths,
    /// The log, opened for appending and locked against a second relay.
    file: Flock<File>,
    key: Ed25519KeyPair,
    /// The seq the next entry gets, the hash of the last one, the log's length.
    next_seq: u64,
    last_hash: Hash,
    len: u64,
    /// The seq of the last checkpoint entry.
    last_checkpoint: u64,
    /// Set when a failed write could not be undone: the end of the file is not a
    /// frame boundary any more, and appending more would break the chain.
    broken: Option<String>,
}

impl EvidenceLog {
    /// Open the evidence log in `dir`, creating the directory, the device key and
    /// the log on first use. An existing log is read to its end and checked (chain,
    /// signatures, key, head); an incomplete last frame from a crash is cut and the
    /// cut recorded. Any other damage is an error that names the record.
    pub fn open(dir: &Path) -> Result<EvidenceLog, EvidenceError> {
        let paths = Paths::new(dir);
        fs::create_dir_all(dir)
            .and_then(|_| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|source| EvidenceError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let log_exists = fs::metadata(&paths.log).is_ok_and(|m| m.len() > 0);
        let key = match chain::read_key(&paths.key)? {
            Some(k) => k,
            None if log_exists => return Err(EvidenceError::KeyMissing(paths.key)),
            None => {
                let k = chain::create_key(&paths.key)?;
                tracing::info!(key = %paths.key.display(), "evidence: created the device key");
                k
            }
        };
        let inner = if log_exists {
            Inner::resume(paths, key)?
        } else if paths.head.exists() {
            let pending = paths.pending();
            if !pending.exists() {
                return Err(EvidenceError::LogRemoved {
                    log: paths.log,
                    head: paths.head,
                });
            }
            // A crash during creation, after the head was written: finish it. The
            // new log is checked against the head like any other.
            fs::rename(&pending, &paths.log).map_err(io_err(&paths.log))?;
            chain::sync_dir(dir)?;
            Inner::resume(paths, key)?
        } else {
            Inner::create(paths, key)?
        };
        let fingerprint = chain::fingerprint(&chain::public_key(&inner.key));
        tracing::info!(
            log = %inner.paths.log.display(),
            records = inner.next_seq,
            key = %fingerprint,
            "evidence log open"
        );
        Ok(EvidenceLog {
            inner: Arc::new(Mutex::new(inner)),
            fingerprint: fingerprint.into(),
        })
    }

    /// Append one attempt record. Blocking file I/O (call it from the blocking
    /// pool); no fsync: the next checkpoint makes it durable.
    pub fn append(&self, rec: AttemptEvidence) -> Result<(), EvidenceError> {
        let queue_id = rec.queue_id.clone();
        let mut inner = self.lock();
        let seq = inner.append(chain::Body::Attempt(Box::new(rec)))?;
        tracing::debug!(%queue_id, seq, "evidence recorded");
        Ok(())
    }

    /// Make everything appended so far durable and signed: fsync the log, append a
    /// signed checkpoint if anything was appended since the last one, fsync again,
    /// and record the checkpoint in `head`. Blocking.
    pub fn checkpoint(&self) -> Result<(), EvidenceError> {
        self.lock().checkpoint()
    }

    /// Sign the chain every `interval` until `shutdown` turns true (or its sender
    /// goes away), then once more, so a clean stop leaves nothing unsigned.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now() + interval;
        let mut tick = tokio::time::interval_at(start, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => self.checkpoint_blocking().await,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        self.checkpoint_blocking().await;
    }

    async fn checkpoint_blocking(&self) {
        let log = self.clone();
        match tokio::task::spawn_blocking(move || log.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "evidence: cannot sign the log"),
            Err(e) => tracing::error!(error = %e, "evidence: the signing task failed"),
        }
    }

    /// Hex SHA-256 of the device's public key: what `qrelay status` shows and an
    /// auditor notes, to check later with `qrelay evidence verify --expect-key`.
    pub fn public_key_fingerprint(&self) -> String {
        self.fingerprint.to_string()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is only updated after a write fully succeeded, so it is
        // consistent even if a thread panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for EvidenceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceLog")
            .field("key", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path, create: bool) -> Result<Flock<File>, EvidenceError> {
    let file = OpenOptions::new()
        .append(true)
        .create(create)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            EvidenceError::Locked(path.to_path_buf())
        } else {
            io_err(path)(std::io::Error::from(errno))
        }
    })
}

impl Inner {
    /// A new log: the genesis entry and a first checkpoint, written to `log.new`,
    /// then the head, then `log.new` renamed to `log`. So a log never exists without
    /// its head: a crash before the head leaves a fresh start, a crash after it a
    /// `log.new` that [`EvidenceLog::open`] renames into place.
    fn create(paths: Paths, key: Ed25519KeyPair) -> Result<Inner, EvidenceError> {
        let now = now_secs();
        let genesis = Entry {
            seq: 0,
            at: now,
            prev: [0; 32],
            body: Body::Genesis {
                format: FORMAT,
                public_key: chain::public_key(&key),
                created: now,
            },
        };
        let g = chain::encode_frame(&genesis)?;
        let g_hash = chain::hash(&g);
        let (c, head) = signed_checkpoint(&key, 1, now, 0, g_hash)?;
        let mut bytes = g;
        bytes.extend_from_slice(&c);
        let pending = paths.pending();
        chain::write_atomic(&pending, &bytes, 0o600)?;
        head.write(&paths.head)?;
        fs::rename(&pending, &paths.log).map_err(io_err(&paths.log))?;
        chain::sync_dir(paths.log.parent().unwrap_or(Path::new(".")))?;
        let file = open_append(&paths.log, false)?;
        tracing::info!(log = %paths.log.display(), "evidence: created a new log");
        Ok(Inner {
            paths,
            file,
            key,
            next_seq: 2,
            last_hash: head.checkpoint_hash,
            len: bytes.len() as u64,
            last_checkpoint: 1,
            broken: None,
        })
    }

    /// Continue an existing log: check it completely, cut a torn last frame, and
    /// bring `head` up to date if a crash came between a checkpoint and its head.
    fn resume(paths: Paths, key: Ed25519KeyPair) -> Result<Inner, EvidenceError> {
        // Lock first: nobody else may append while we read and repair.
        let file = open_append(&paths.log, false)?;
        let head = Head::read(&paths.head)?;
        let file_key = chain::public_key(&key);
        let key_path = paths.key.clone();
        let scan = chain::scan(&paths.log, None, head.as_ref(), &mut |entry| {
            if let Body::Genesis { public_key, .. } = &entry.body {
                if *public_key != file_key {
                    return Err(EvidenceError::KeyReplaced {
                        path: key_path.clone(),
                        file: chain::fingerprint(&file_key),
                        pinned: chain::fingerprint(public_key),
                    });
                }
            }
            Ok(())
        })?;
        chain::check_head(&paths, head.as_ref(), &scan)?;
        let Some(last) = scan.last_checkpoint.clone() else {
            return Err(EvidenceError::HeadMissing(paths.head));
        };
        if head.as_ref() != Some(&last) {
            // The checkpoint reached the log (fsynced) but the head was not renamed
            // into place before the crash.
            last.write(&paths.head)?;
            tracing::info!(
                checkpoint = last.checkpoint_seq,
                "evidence: head brought up to date"
            );
        }
        if scan.torn_bytes > 0 {
            tracing::warn!(
                torn_bytes = scan.torn_bytes,
                offset = scan.valid_len,
                "evidence: cutting an incomplete last record left by a crash"
            );
            file.set_len(scan.valid_len)
                .and_then(|_| file.sync_all())
                .map_err(io_err(&paths.log))?;
        }
        let mut inner = Inner {
            paths,
            file,
            key,
            next_seq: scan.next_seq,
            last_hash: scan.last_hash,
            len: scan.valid_len,
            last_checkpoint: last.checkpoint_seq,
            broken: None,
        };
        if scan.torn_bytes > 0 {
            inner.append(Body::Resumed {
                torn_bytes: scan.torn_bytes,
            })?;
            inner.checkpoint()?;
        }
        Ok(inner)
    }

    /// Append one entry; returns its seq. A failed write is undone (the file cut
    /// back to where it was), so the chain never continues after half a frame.
    fn append(&mut self, body: Body) -> Result<u64, EvidenceError> {
        if let Some(why) = &self.broken {
            return Err(EvidenceError::Unusable(why.clone()));
        }
        let seq = self.next_seq;
        let entry = Entry {
            seq,
            at: now_secs(),
            prev: self.last_hash,
            body,
        };
        let frame = chain::encode_frame(&entry)?;
        if let Err(e) = self.file.write_all(&frame) {
            let err = io_err(&self.paths.log)(e);
            if let Err(undo) = self.file.set_len(self.len) {
                let why = format!("{err}; cutting it back failed: {undo}");
                tracing::error!(error = %why, "evidence: log unusable until restart");
                self.broken = Some(why);
            }
            return Err(err);
        }
        self.len += frame.len() as u64;
        self.last_hash = chain::hash(&frame);
        self.next_seq += 1;
        Ok(seq)
    }

    fn checkpoint(&mut self) -> Result<(), EvidenceError> {
        if let Some(why) = &self.broken {
            return Err(EvidenceError::Unusable(why.clone()));
        }
        if self.next_seq == self.last_checkpoint + 1 {
            return Ok(());
        }
        // Everything the signature covers must be on disk before the signature.
        self.file.sync_data().map_err(io_err(&self.paths.log))?;
        let head_seq = self.next_seq - 1;
        let head_hash = self.last_hash;
        let signature = chain::sign(&self.key, head_seq, &head_hash);
        let seq = self.append(Body::Checkpoint {
            head_seq,
            head_hash,
            signature: signature.clone(),
        })?;
        self.file.sync_data().map_err(io_err(&self.paths.log))?;
        self.last_checkpoint = seq;
        let head = Head {
            checkpoint_seq: seq,
            checkpoint_hash: self.last_hash,
            head_seq,
            head_hash,
            signature,
        };
        head.write(&self.paths.head)?;
        tracing::debug!(seq, signed = head_seq, "evidence: checkpoint signed");
        Ok(())
    }
}

/// A checkpoint entry with seq `seq` over (`head_seq`, `head_hash`): its frame and
/// the head that names it.
fn signed_checkpoint(
    key: &Ed25519KeyPair,
    seq: u64,
    at: u64,
    head_seq: u64,
    head_hash: Hash,
) -> Result<(Vec<u8>, Head), EvidenceError> {
    let signature = chain::sign(key, head_seq, &head_hash);
    let entry = Entry {
        seq,
        at,
        prev: head_hash,
        body: Body::Checkpoint {
            head_seq,
            head_hash,
            signature: signature.clone(),
        },
    };
    let frame = chain::encode_frame(&entry)?;
    let head = Head {
        checkpoint_seq: seq,
        checkpoint_hash: chain::hash(&frame),
        head_seq,
        head_hash,
        signature,
    };
    Ok((frame, head))
}
