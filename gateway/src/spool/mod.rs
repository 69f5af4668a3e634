//! The durable queue on disk.
//!
//! Layout under `<spool.dir>/queue/`:
//! - `tmp/`: files being written; anything here after a crash was never acknowledged.
//! - `msg/<ID>`: the message content, raw bytes as they will be sent.
//! - `env/<ID>`: the envelope and per-recipient state ([`record::Envelope`], postcard).
//! - `corrupt/`: records that could not be read back, kept for a person to look at.
//!
//! Durability protocol (design.md "Durability"): content is written to `tmp/`,
//! fsynced, renamed into `msg/`, and `msg/` is fsynced; then the envelope goes the
//! same way into `env/`. The envelope's rename is the commit point: the SMTP 250 is
//! sent only after it is durable. Hence on recovery an envelope always has its
//! content, and content without an envelope was never acknowledged and is removed.
//! Removal deletes the envelope first for the same reason.
//!
//! # Streaming new messages in
//!
//! A message may be tens of MiB and the SMTP server runs hundreds of sessions, so
//! content is never required to be in memory as a whole. [`Spool::incoming`] opens
//! `tmp/<ID>.msg`; the caller appends to it with [`Incoming::write_all`] (buffered,
//! at most [`WRITE_BUFFER`] bytes held) while the data arrives; [`Spool::commit`]
//! then runs the protocol above (fsync, rename into `msg/`, fsync `msg/`, envelope
//! into `env/`). Until the commit nothing outside `tmp/` exists, and an [`Incoming`]
//! dropped without a commit removes its file, so a refused or abandoned message
//! leaves nothing behind; after a crash, recovery removes whatever `tmp/` holds.
//! [`Spool::store`], for small messages built in memory (DSNs), is the same path.
//!
//! The free-space margin is checked before a message is started (by the caller,
//! with the declared size), every [`MARGIN_CHECK_INTERVAL`] bytes while it is being
//! written, and before the commit; ENOSPC and EDQUOT count as "disk full" too.
//!
//! # Streaming messages out
//!
//! Delivery reads the content the same way it came in: never as a whole. Up to
//! `delivery.concurrency` attempts run at once, each for a message of up to
//! `smtp.max_message_size`, so reading whole files would need that product in RAM.
//! [`Spool::open_content`] gives a [`ContentFile`]: an open file with its length,
//! read at explicit offsets (`pread`), so every connection of an attempt can send
//! it from the start without sharing a file position. A file stays readable through
//! an open handle even if the admin deletes the message meanwhile. Delivery status
//! notifications need only the beginning of a message: [`ContentFile::read_prefix`]
//! and [`ContentFile::read_header_section`] read at most a given number of bytes.
//!
//! All functions here do blocking file I/O; async callers use `spawn_blocking`.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use record::{Envelope, QueueId, RECORD_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Too little space left to accept more mail safely (answer 452).
    #[error("the spool disk is nearly full ({free} bytes free, {needed} needed)")]
    DiskFull { free: u64, needed: u64 },
    #[error("spool I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("spool record {path} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A caller bug: committing content under another message's envelope.
    #[error("envelope {envelope} cannot commit the content of message {content}")]
    Mismatch { content: QueueId, envelope: QueueId },
}

impl SpoolError {
    /// True when the failure is for lack of space (ENOSPC, EDQUOT, or our own margin).
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::DiskFull { .. } => true,
            SpoolError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT
            ),
            SpoolError::Corrupt { .. } | SpoolError::Mismatch { .. } => false,
        }
    }
}

type Result<T> = std::result::Result<T, SpoolError>;

/// Bytes an [`Incoming`] collects before it writes to its file.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// Writes at least this large go to the file directly when nothing is buffered:
/// copying them first saves no system call worth having, and costs memory.
const DIRECT_WRITE: usize = 4 * 1024;

/// While content is being written, the free-space margin is checked again after
/// this many bytes, so a large message cannot eat into the room kept for state
/// updates and DSNs.
pub const MARGIN_CHECK_INTERVAL: u64 = 1024 * 1024;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path = path.to_owned();
    move |source| SpoolError::Io { op, path, source }
}

/// What recovery found in the spool at start-up.
#[derive(Debug, Default)]
pub struct Recovery {
    pub envelopes: Vec<Envelope>,
    /// Content files without an envelope (never acknowledged), removed.
    pub orphans_removed: usize,
    /// Half-written temporary files, removed.
    pub temp_removed: usize,
    /// Records moved to `corrupt/` because they could not be read.
    pub quarantined: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    min_free_bytes: u64,
}

impl Spool {
    /// Open (creating if needed) the spool under `data_dir`.
    pub fn open(data_dir: &Path, min_free_bytes: u64) -> Result<Spool> {
        let root = data_dir.join("queue");
        for sub in ["tmp", "msg", "env", "corrupt"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        Ok(Spool {
            root,
            min_free_bytes,
        })
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    fn msg_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("msg").join(id.as_str())
    }

    fn env_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("env").join(id.as_str())
    }

    /// Bytes available to us on the spool's file system.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| SpoolError::Io {
            op: "statvfs",
            path: self.root.clone(),
            source: io::Error::from_raw_os_error(e as i32),
        })?;
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// Whether a message of `size` bytes can be accepted while keeping the safety
    /// margin (room for state updates and DSNs). Checked before MAIL is accepted
    /// and again before storing.
    pub fn check_room(&self, size: u64) -> Result<()> {
        let free = self.free_bytes()?;
        let needed = self.min_free_bytes.saturating_add(size);
        if free < needed {
            return Err(SpoolError::DiskFull { free, needed });
        }
        Ok(())
    }

    /// Start a new message: creates `tmp/<ID>.msg`, to be filled with
    /// [`Incoming::write_all`] and made durable with [`Spool::commit`].
    pub fn incoming(&self, id: &QueueId) -> Result<Incoming> {
        let path = self.dir("tmp").join(format!("{id}.msg"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(Incoming {
            spool: self.clone(),
            id: id.clone(),
            path,
            file,
            buf: Vec::new(),
            len: 0,
            unchecked: 0,
            renamed: false,
        })
    }

    /// Durably store a message whose content was written through `incoming`. When
    /// this returns Ok, the message survives a crash or power loss; only then may
    /// the client be told 250. On error nothing of the message is left.
    pub fn commit(&self, mut incoming: Incoming, env: &Envelope) -> Result<()> {
        if incoming.id != env.id {
            return Err(SpoolError::Mismatch {
                content: incoming.id.clone(),
                envelope: env.id.clone(),
            });
        }
        let id = &env.id;
        let res = self
            .commit_content(&mut incoming)
            .and_then(|_| self.write_envelope(env));
        if let Err(e) = res {
            // Nothing was acknowledged: leave no half-stored message behind.
            let _ = fs::remove_file(self.env_path(id));
            let _ = fs::remove_file(self.msg_path(id));
            let _ = fs::remove_file(self.dir("tmp").join(format!("{id}.env")));
            // `incoming` removes its temporary file when dropped, if still there.
            return Err(e);
        }
        Ok(())
    }

    /// Flush, fsync, rename into `msg/`, fsync `msg/`.
    fn commit_content(&self, incoming: &mut Incoming) -> Result<()> {
        incoming.flush_buffer()?;
        // The content already takes its room; the margin must still be there.
        self.check_room(0)?;
        incoming
            .file
            .sync_all()
            .map_err(io_err("fsync", &incoming.path))?;
        let target = self.msg_path(&incoming.id);
        fs::rename(&incoming.path, &target).map_err(io_err("rename", &target))?;
        incoming.renamed = true;
        sync_dir(&self.dir("msg"))
    }

    /// Durably store a new message held in memory (DSNs); the same path as
    /// [`Spool::incoming`] and [`Spool::commit`].
    pub fn store(&self, env: &Envelope, content: &[u8]) -> Result<()> {
        self.check_room(content.len() as u64)?;
        let mut incoming = self.incoming(&env.id)?;
        incoming.write_all(content)?;
        self.commit(incoming, env)
    }

    /// Durably replace the envelope (state changes after a delivery attempt).
    pub fn update(&self, env: &Envelope) -> Result<()> {
        self.write_envelope(env)
    }

    fn write_envelope(&self, env: &Envelope) -> Result<()> {
        let bytes = postcard::to_stdvec(env).map_err(|e| SpoolError::Corrupt {
            path: self.env_path(&env.id),
            message: format!("cannot encode: {e}"),
        })?;
        self.write_durably(&format!("{}.env", env.id), &bytes, &self.env_path(&env.id))
    }

    /// tmp file -> write -> fsync -> rename -> fsync the target directory.
    fn write_durably(&self, tmp_name: &str, bytes: &[u8], target: &Path) -> Result<()> {
        let tmp = self.dir("tmp").join(tmp_name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, target).map_err(io_err("rename", target))?;
        let dir = target.parent().unwrap_or(Path::new("."));
        sync_dir(dir)
    }

    /// Read a message's whole content into memory. For small messages and tools;
    /// delivery and notices use [`Spool::open_content`] and read bounded pieces.
    pub fn content(&self, id: &QueueId) -> Result<Vec<u8>> {
        let p = self.msg_path(id);
        fs::read(&p).map_err(io_err("read", &p))
    }

    /// Open a message's content for reading in pieces (see the module docs).
    pub fn open_content(&self, id: &QueueId) -> Result<ContentFile> {
        let path = self.msg_path(id);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        Ok(ContentFile { file, len, path })
    }

    /// The first `max` bytes of a message's content (all of it when shorter) and
    /// its full length. Never reads more than `max` bytes.
    pub fn read_prefix(&self, id: &QueueId, max: usize) -> Result<(Vec<u8>, u64)> {
        let content = self.open_content(id)?;
        Ok((content.read_prefix(max)?, content.len()))
    }

    /// A message's header section (see [`ContentFile::read_header_section`]) and
    /// its full length. Never reads more than `max` bytes.
    pub fn read_header_section(&self, id: &QueueId, max: usize) -> Result<(Vec<u8>, u64)> {
        let content = self.open_content(id)?;
        Ok((content.read_header_section(max)?, content.len()))
    }

    /// Remove a message (delivered, bounced or deleted by the admin).
    pub fn remove(&self, id: &QueueId) -> Result<()> {
        // Envelope first: a crash in between leaves only an unacknowledged-looking
        // content file, which recovery removes.
        let env = self.env_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &env)(e)),
        }
        sync_dir(&self.dir("env"))?;
        let msg = self.msg_path(id);
        match fs::remove_file(&msg) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &msg)(e)),
        }
    }

    /// Read back everything a previous run left, whatever state a crash left it in.
    pub fn recover(&self) -> Result<Recovery> {
        let mut out = Recovery::default();
        // 1. Temporary files were never renamed into place: never acknowledged.
        for entry in read_dir(&self.dir("tmp"))? {
            let _ = fs::remove_file(&entry);
            out.temp_removed += 1;
        }
        // 2. Envelopes are the commit records.
        let mut with_env = std::collections::HashSet::new();
        for path in read_dir(&self.dir("env"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parsed = QueueId::parse(name)
                .ok_or_else(|| "file name is not a queue id".to_string())
                .and_then(|id| {
                    let bytes = fs::read(&path).map_err(|e| e.to_string())?;
                    // The version is the first field: check it before decoding a
                    // layout it may not have (postcard is not self-describing).
                    let (version, _) = postcard::take_from_bytes::<u16>(&bytes)
                        .map_err(|e| format!("decode: {e}"))?;
                    if version != RECORD_VERSION {
                        return Err(format!(
                            "record version {version}; this firmware reads version {RECORD_VERSION}"
                        ));
                    }
                    let env: Envelope =
                        postcard::from_bytes(&bytes).map_err(|e| format!("decode: {e}"))?;
                    if env.id != id {
                        return Err("envelope id differs from file name".into());
                    }
                    if !self.msg_path(&id).exists() {
                        return Err("content file missing".into());
                    }
                    Ok(env)
                });
            match parsed {
                Ok(env) => {
                    with_env.insert(env.id.clone());
                    out.envelopes.push(env);
                }
                Err(message) => {
                    tracing::error!(path = %path.display(), %message, "spool record unreadable, moved to corrupt/");
                    out.quarantined.push(self.quarantine(&path)?);
                }
            }
        }
        // 3. Content without an envelope: the 250 was never sent.
        for path in read_dir(&self.dir("msg"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match QueueId::parse(name) {
                Some(id) if with_env.contains(&id) => {}
                _ => {
                    let _ = fs::remove_file(&path);
                    out.orphans_removed += 1;
                }
            }
        }
        out.envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn quarantine(&self, path: &Path) -> Result<PathBuf> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let dest = self
            .dir("corrupt")
            .join(format!("{}.{}", name, record::now_secs()));
        fs::rename(path, &dest).map_err(io_err("quarantine", path))?;
        // Keep its content next to it, if any, so nothing is lost.
        if let Some(id) = QueueId::parse(&name) {
            let msg = self.msg_path(&id);
            if msg.exists() {
                let _ = fs::rename(&msg, dest.with_extension("msg"));
            }
        }
        Ok(dest)
    }
}

/// A new message's content being written to `tmp/` (see the module docs). Dropping
/// it without [`Spool::commit`] removes the file: nothing was acknowledged.
#[derive(Debug)]
pub struct Incoming {
    spool: Spool,
    id: QueueId,
    /// `tmp/<ID>.msg`.
    path: PathBuf,
    file: File,
    /// Small writes collected up to [`WRITE_BUFFER`] bytes.
    buf: Vec<u8>,
    /// Bytes of content accepted so far (written or buffered).
    len: u64,
    /// Bytes written to the file since the margin was last checked.
    unchecked: u64,
    /// The file was renamed into `msg/`; no longer ours to remove.
    renamed: bool,
}

impl Incoming {
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

    /// Append to the content. Fails with a disk-full error (see
    /// [`SpoolError::is_disk_full`]) when the disk or the margin runs out.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        if self.buf.len() + bytes.len() > WRITE_BUFFER {
            self.flush_buffer()?;
        }
        if bytes.len() >= WRITE_BUFFER || (self.buf.is_empty() && bytes.len() >= DIRECT_WRITE) {
            self.write_file(bytes)?;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn flush_buffer(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.write_file(&buf);
        // Keep the allocation for the next round.
        self.buf = buf;
        self.buf.clear();
        res
    }

    fn write_file(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.path))?;
        self.unchecked += bytes.len() as u64;
        if self.unchecked >= MARGIN_CHECK_INTERVAL {
            self.unchecked = 0;
            self.spool.check_room(0)?;
        }
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.renamed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(queue_id = %self.id, path = %self.path.display(), error = %e, "cannot remove abandoned temporary file; recovery will");
                }
            }
        }
    }
}

/// Bytes [`ContentFile::read_header_section`] reads per system call while it looks
/// for the end of the header section (most header sections fit in one).
const HEADER_READ_STEP: usize = 16 * 1024;

/// A stored message's content, open for reading (see [`Spool::open_content`]).
/// Reads take an explicit offset and never move a shared position, so one
/// `ContentFile` can serve several readers one after the other or at once.
#[derive(Debug)]
pub struct ContentFile {
    file: File,
    /// The length when it was opened; content files never change once stored.
    len: u64,
    path: PathBuf,
}

impl ContentFile {
    /// The content's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the
    /// content (0 = end). Interrupted reads are retried.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// The first `max` bytes (all of the content when it is shorter).
    pub fn read_prefix(&self, max: usize) -> Result<Vec<u8>> {
        let want = usize::try_from(self.len).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0; want];
        let n = self
            .read_at(&mut buf, 0)
            .map_err(io_err("read", &self.path))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The header section (RFC 5322 2.1): everything up to and including the empty
    /// line that ends it, or the whole content when it has no body. Reads at most
    /// `max` bytes; when the header section is longer, the result is cut after the
    /// last complete line within them (or at `max` if there is none).
    pub fn read_header_section(&self, max: usize) -> Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::new();
        let limit = usize::try_from(self.len).unwrap_or(usize::MAX).min(max);
        while buf.len() < limit {
            let start = buf.len();
            let step = HEADER_READ_STEP.min(limit - start);
            buf.resize(start + step, 0);
            let n = self
                .read_at(&mut buf[start..], start as u64)
                .map_err(io_err("read", &self.path))?;
            buf.truncate(start + n);
            // The empty line may straddle the previous step: look from 3 bytes back.
            if let Some(end) = header_end(&buf, start.saturating_sub(3)) {
                buf.truncate(end);
                return Ok(buf);
            }
            if n < step {
                break;
            }
        }
        if buf.len() as u64 >= self.len {
            // No empty line: the whole (short enough) content is header.
            return Ok(buf);
        }
        // Cut short by `max`: end at a line boundary so no field is half there.
        if let Some(p) = buf.iter().rposition(|&b| b == b'\n') {
            buf.truncate(p + 1);
        }
        Ok(buf)
    }
}

/// Where the header section in `buf` ends (just after its empty line), looking for
/// the empty line from `from` on. CRLF and bare LF line ends are both understood.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let p = buf[i..].iter().position(|&b| b == b'\n')? + i;
        // `p` ends a line; an empty line follows if the next line is only CRLF / LF.
        match buf.get(p + 1..) {
            Some([b'\n', ..]) => return Some(p + 2),
            Some([b'\r', b'\n', ..]) => return Some(p + 3),
            _ => {}
        }
        i = p + 1;
    }
    None
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        v.push(e.path());
    }
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::record::*;
    use super::*;

    fn envelope(n: usize) -> Envelope {
        Envelope {
            record_version: RECORD_VERSION,
            id: QueueId::generate(),
            received_at: now_secs(),
            sender: "a@lan.example".into(),
            ret: None,
            envid: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            size: 10,
            class: crate::config::RiskClass::Normal,
            class_reasons: Vec::new(),
            tls_optional: false,
            expires_at: None,
            client: ClientInfo::default(),
            message_id: None,
            recipients: (0..n)
                .map(|i| Recipient::new(format!("r{i}@x.example"), None, None, 0))
                .collect(),
        }
    }

    #[test]
    fn store_recover_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let mut e = envelope(2);
        spool.store(&e, b"Subject: x\r\n\r\nhi\r\n").unwrap();
        e.recipients[0].state = RcptState::Delivered;
        spool.update(&e).unwrap();
        let rec = Spool::open(dir.path(), 0).unwrap().recover().unwrap();
        assert_eq!(rec.envelopes, vec![e.clone()]);
        assert_eq!(spool.content(&e.id).unwrap(), b"Subject: x\r\n\r\nhi\r\n");
        spool.remove(&e.id).unwrap();
        assert!(spool.recover().unwrap().envelopes.is_empty());
    }

    #[test]
    fn recovery_cleans_whatever_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let good = envelope(1);
        spool.store(&good, b"x").unwrap();
        // Crash after the content rename, before the envelope: never acknowledged.
        let orphan = QueueId::generate();
        fs::write(dir.path().join("queue/msg").join(orphan.as_str()), b"y").unwrap();
        // Crash mid-write of a temporary file.
        fs::write(dir.path().join("queue/tmp/ABC.env"), b"half").unwrap();
        // A damaged envelope: kept aside, never silently dropped.
        let bad = QueueId::generate();
        fs::write(dir.path().join("queue/env").join(bad.as_str()), b"\xff\xff").unwrap();
        fs::write(dir.path().join("queue/msg").join(bad.as_str()), b"z").unwrap();

        let rec = spool.recover().unwrap();
        assert_eq!(rec.envelopes.len(), 1);
        assert_eq!(rec.envelopes[0].id, good.id);
        assert_eq!(rec.orphans_removed, 1);
        assert_eq!(rec.temp_removed, 1);
        assert_eq!(rec.quarantined.len(), 1);
        let corrupt: Vec<_> = fs::read_dir(dir.path().join("queue/corrupt"))
            .unwrap()
            .collect();
        assert_eq!(corrupt.len(), 2, "envelope and its content kept aside");
        assert!(fs::read_dir(dir.path().join("queue/tmp"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn other_record_version_is_quarantined_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let mut e = envelope(1);
        e.record_version = RECORD_VERSION - 1;
        spool.store(&e, b"Subject: x\r\n\r\nhi\r\n").unwrap();
        let rec = Spool::open(dir.path(), 0).unwrap().recover().unwrap();
        assert!(rec.envelopes.is_empty());
        assert_eq!(rec.quarantined.len(), 1);
    }

    #[test]
    fn refuses_when_margin_not_available() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), u64::MAX / 2).unwrap();
        let err = spool.store(&envelope(1), b"x").unwrap_err();
        assert!(err.is_disk_full());
        assert!(spool.recover().unwrap().envelopes.is_empty());
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        read_dir(dir).unwrap()
    }

    /// Bytes that are not a repeating pattern, so misplaced chunks show.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn streamed_content_is_stored_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let e = envelope(1);
        let content = pattern(5 * 1024 * 1024 + 123);
        let mut incoming = spool.incoming(&e.id).unwrap();
        // Small, odd and larger-than-buffer writes, as a session produces them.
        let mut rest = &content[..];
        for size in [1usize, 77, 1000, WRITE_BUFFER - 3, 3 * WRITE_BUFFER + 5]
            .into_iter()
            .cycle()
        {
            if rest.is_empty() {
                break;
            }
            let n = size.min(rest.len());
            incoming.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        assert_eq!(incoming.len(), content.len() as u64);
        // Nothing outside tmp/ before the commit.
        assert!(entries(&dir.path().join("queue/msg")).is_empty());
        spool.commit(incoming, &e).unwrap();
        assert_eq!(spool.content(&e.id).unwrap(), content);
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());
        assert_eq!(spool.recover().unwrap().envelopes, vec![e]);
    }

    #[test]
    fn content_is_read_by_offset_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let e = envelope(1);
        let content = pattern(3 * 64 * 1024 + 11);
        spool.store(&e, &content).unwrap();
        let file = spool.open_content(&e.id).unwrap();
        assert_eq!(file.len(), content.len() as u64);
        // Two readers interleaved: no shared position.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        while (a.len() as u64) < file.len() {
            let n = file.read_at(&mut buf, a.len() as u64).unwrap();
            a.extend_from_slice(&buf[..n]);
            let n = file.read_at(&mut buf[..1000], b.len() as u64).unwrap();
            b.extend_from_slice(&buf[..n]);
        }
        assert_eq!(a, content);
        assert_eq!(b, content[..b.len()]);
        assert_eq!(file.read_at(&mut buf, file.len()).unwrap(), 0);
        // Still readable through the open handle after the message is removed.
        spool.remove(&e.id).unwrap();
        assert_eq!(file.read_at(&mut buf[..5], 0).unwrap(), 5);
        assert_eq!(buf[..5], content[..5]);
        assert!(spool.open_content(&e.id).is_err());
    }

    #[test]
    fn bounded_reads_for_notices() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        // A 3 MiB message whose header section is longer than one read step, with
        // its empty line cut by a step boundary in each possible place.
        let mut content = Vec::new();
        for shift in 0..4 {
            let mut header = Vec::new();
            while header.len() + 100 < HEADER_READ_STEP {
                header.extend_from_slice(b"X-Filler: 01234567890123456789012345678\r\n");
            }
            header.extend_from_slice(b"X-Last: ");
            header.resize(HEADER_READ_STEP - 4 + shift, b'z');
            header.extend_from_slice(b"\r\n\r\n");
            content = header.clone();
            content.extend_from_slice(b".body starts here\r\n\r\nmore\r\n");
            content.resize(3 * 1024 * 1024, b'b');
            let e = envelope(1);
            spool.store(&e, &content).unwrap();

            let (h, len) = spool.read_header_section(&e.id, 1024 * 1024).unwrap();
            assert_eq!(len, content.len() as u64);
            assert!(h == header, "shift {shift}: exactly the header section");
        }
        let e = envelope(1);
        spool.store(&e, &content).unwrap();

        let (p, len) = spool.read_prefix(&e.id, 1000).unwrap();
        assert_eq!(
            (p.as_slice(), len),
            (&content[..1000], content.len() as u64)
        );
        let (p, _) = spool.read_prefix(&e.id, 10 * 1024 * 1024).unwrap();
        assert!(p == content, "all of it when shorter than the bound");

        // A header section longer than the bound: cut after the last whole line.
        let (h, _) = spool.read_header_section(&e.id, 1000).unwrap();
        assert!(h.len() <= 1000 && h.ends_with(b"\r\n"), "{}", h.len());
        assert!(content.starts_with(&h));

        // No empty line at all: the whole (short) content is header.
        let e2 = envelope(1);
        spool.store(&e2, b"Subject: only\r\nX: y\r\n").unwrap();
        let (h, _) = spool.read_header_section(&e2.id, 1000).unwrap();
        assert_eq!(h, b"Subject: only\r\nX: y\r\n");
        // Bare LF line ends are understood too.
        let e3 = envelope(1);
        spool.store(&e3, b"Subject: lf\n\nbody\n").unwrap();
        let (h, _) = spool.read_header_section(&e3.id, 1000).unwrap();
        assert_eq!(h, b"Subject: lf\n\n");
    }

    #[test]
    fn abandoned_incoming_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let mut incoming = spool.incoming(&QueueId::generate()).unwrap();
        incoming.write_all(&pattern(200_000)).unwrap();
        assert_eq!(entries(&dir.path().join("queue/tmp")).len(), 1);
        drop(incoming);
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());

        // A crash mid-write (no destructor runs): recovery removes the file.
        let mut incoming = spool.incoming(&QueueId::generate()).unwrap();
        incoming.write_all(b"Subject: half\r\n").unwrap();
        std::mem::forget(incoming);
        let rec = spool.recover().unwrap();
        assert_eq!(rec.temp_removed, 1);
        assert!(rec.envelopes.is_empty());
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());
    }

    #[test]
    fn failed_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 0).unwrap();
        let e = envelope(1);
        // The envelope cannot be renamed into place: content must not stay in msg/.
        let env_dir = dir.path().join("queue/env");
        fs::remove_dir(&env_dir).unwrap();
        fs::write(&env_dir, b"not a directory").unwrap();
        let mut incoming = spool.incoming(&e.id).unwrap();
        incoming.write_all(b"Subject: x\r\n\r\nhi\r\n").unwrap();
        assert!(spool.commit(incoming, &e).is_err());
        assert!(entries(&dir.path().join("queue/msg")).is_empty());
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());

        let other = spool.incoming(&QueueId::generate()).unwrap();
        let err = spool.commit(other, &e).unwrap_err();
        assert!(matches!(err, SpoolError::Mismatch { .. }), "{err}");
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());
    }

    #[test]
    fn margin_is_checked_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), u64::MAX / 2).unwrap();
        let mut incoming = spool.incoming(&QueueId::generate()).unwrap();
        let chunk = pattern(WRITE_BUFFER);
        let err = (0..)
            .take(64)
            .find_map(|_| incoming.write_all(&chunk).err())
            .expect("refused once the margin is checked");
        assert!(err.is_disk_full());
        assert!(incoming.len() <= MARGIN_CHECK_INTERVAL + WRITE_BUFFER as u64);
        drop(incoming);
        assert!(entries(&dir.path().join("queue/tmp")).is_empty());
    }
}
