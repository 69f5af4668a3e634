//! The hash chain on disk: frames, entries, the signed head, and the one reader
//! that both the relay (at start) and `qrelay evidence verify` use, so what the
//! relay accepts and what an auditor checks can never differ.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use super::record::AttemptEvidence;
use super::EvidenceError;

/// The version of the log format, pinned in the genesis entry.
pub const FORMAT: u16 = 1;

/// The largest frame accepted. An attempt record is a few KiB at most (a TLSA RRset
/// of a dozen records, long replies); a larger length is damage, not data.
pub const MAX_FRAME: u32 = 1 << 20;

/// What a checkpoint signature covers is prefixed with this, so a signature of the
/// device key made for anything else can never pass as a checkpoint.
const CHECKPOINT_DOMAIN: &[u8] = b"qrelay evidence checkpoint v1\0";

/// First line of the `head` file.
const HEAD_MAGIC: &str = "qrelay-evidence-head 1";

pub type Hash = [u8; 32];

/// One entry of the log. Its hash is the SHA-256 of its whole frame (length prefix
/// and postcard bytes), and the next entry carries that hash in `prev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 0 for the genesis entry, then +1 per entry, without gaps.
    pub seq: u64,
    /// When the entry was written (Unix seconds).
    pub at: u64,
    /// The hash of the previous entry; zeros for the genesis entry.
    pub prev: Hash,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// The first entry: pins the device's Ed25519 public key (raw 32 bytes), which
    /// signs every checkpoint of this log.
    Genesis {
        format: u16,
        public_key: Vec<u8>,
        created: u64,
    },
    /// One delivery attempt to one recipient (standards.md A5).
    /// (Boxed: far larger than the other entries.)
    Attempt(Box<AttemptEvidence>),
    /// The device key's signature over the entry before it (`head_seq` = this
    /// entry's seq - 1, `head_hash` = this entry's `prev`): everything up to there is
    /// vouched for by the device.
    Checkpoint {
        head_seq: u64,
        head_hash: Hash,
        signature: Vec<u8>,
    },
    /// The relay started after a crash and cut an incomplete last frame of this many
    /// bytes (a write that never finished). Recorded so the cut is visible.
    Resumed { torn_bytes: u64 },
}

/// The frame of an entry: u32 big-endian length, then the postcard bytes.
pub fn encode_frame(entry: &Entry) -> Result<Vec<u8>, EvidenceError> {
    let body = postcard::to_stdvec(entry).map_err(|e| EvidenceError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_FRAME)
        .ok_or_else(|| EvidenceError::Encode(format!("record too large ({} bytes)", body.len())))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub fn hash(frame: &[u8]) -> Hash {
    let d = digest::digest(&digest::SHA256, frame);
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(head_seq: u64, head_hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&head_seq.to_be_bytes());
    m.extend_from_slice(head_hash);
    m
}

/// Hex SHA-256 of a raw public key: how people compare keys.
pub fn fingerprint(public_key: &[u8]) -> String {
    hex::encode(hash(public_key))
}

/// The device key's signature of a checkpoint over (`head_seq`, `head_hash`).
pub fn sign(key: &Ed25519KeyPair, head_seq: u64, head_hash: &Hash) -> Vec<u8> {
    key.sign(&checkpoint_message(head_seq, head_hash))
        .as_ref()
        .to_vec()
}

pub fn verify_signature(public_key: &[u8], head_seq: u64, head_hash: &Hash, sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&checkpoint_message(head_seq, head_hash), sig)
        .is_ok()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsync a directory, so a rename or a new file in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), EvidenceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Write `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the
/// directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EvidenceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = &path.with_extension("tmp");
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, path)
    };
    write().map_err(io_err(path))?;
    sync_dir(dir)
}

/// The device key file: PKCS#8, readable by its owner only.
pub fn read_key(path: &Path) -> Result<Option<Ed25519KeyPair>, EvidenceError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ed25519KeyPair::from_pkcs8(&bytes)
        .map(Some)
        .map_err(|e| EvidenceError::Key {
            path: path.to_path_buf(),
            reason: format!("not an Ed25519 PKCS#8 key ({e})"),
        })
}

/// Create a new device key (mode 0600; never overwrites an existing file).
pub fn create_key(path: &Path) -> Result<Ed25519KeyPair, EvidenceError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| EvidenceError::Key {
        path: path.to_path_buf(),
        reason: "cannot generate a key".into(),
    })?;
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(doc.as_ref())?;
        f.sync_all()
    };
    write().map_err(io_err(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| EvidenceError::Key {
        path: path.to_path_buf(),
        reason: format!("generated key does not parse ({e})"),
    })
}

pub fn public_key(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// The `head` file: the last checkpoint the relay wrote, kept outside the log so
/// that cutting records off the end of the log is noticed (the log must still
/// contain this checkpoint). A text file, so an auditor can read and note it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The seq and hash of the checkpoint entry itself.
    pub checkpoint_seq: u64,
    pub checkpoint_hash: Hash,
    /// What it signs: the entry before it.
    pub head_seq: u64,
    pub head_hash: Hash,
    pub signature: Vec<u8>,
}

impl Head {
    pub fn encode(&self) -> String {
        format!(
            "{HEAD_MAGIC}\ncheckpoint {} {}\nsigned {} {}\nsignature {}\n",
            self.checkpoint_seq,
            hex::encode(self.checkpoint_hash),
            self.head_seq,
            hex::encode(self.head_hash),
            hex::encode(&self.signature)
        )
    }

    pub fn parse(text: &str) -> Result<Head, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEAD_MAGIC) {
            return Err(format!("the first line is not `{HEAD_MAGIC}`"));
        }
        let mut field = |name: &str| -> Result<Vec<String>, String> {
            let line = lines
                .next()
                .ok_or(format!("the `{name}` line is missing"))?;
            let mut words = line.split(' ');
            if words.next() != Some(name) {
                return Err(format!("expected a `{name}` line, found {line:?}"));
            }
            Ok(words.map(str::to_string).collect())
        };
        let seq_hash = |w: Vec<String>, name: &str| -> Result<(u64, Hash), String> {
            match w.as_slice() {
                [seq, h] => Ok((
                    seq.parse()
                        .map_err(|_| format!("bad {name} number {seq:?}"))?,
                    hex_hash(h).ok_or(format!("bad {name} hash {h:?}"))?,
                )),
                _ => Err(format!("the `{name}` line needs a number and a hash")),
            }
        };
        let (checkpoint_seq, checkpoint_hash) = seq_hash(field("checkpoint")?, "checkpoint")?;
        let (head_seq, head_hash) = seq_hash(field("signed")?, "signed")?;
        let signature = match field("signature")?.as_slice() {
            [s] => hex::decode(s).map_err(|_| "bad signature hex".to_string())?,
            _ => return Err("the `signature` line needs one hex value".into()),
        };
        Ok(Head {
            checkpoint_seq,
            checkpoint_hash,
            head_seq,
            head_hash,
            signature,
        })
    }

    pub fn read(path: &Path) -> Result<Option<Head>, EvidenceError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        Head::parse(&text)
            .map(Some)
            .map_err(|reason| EvidenceError::HeadDamaged {
                path: path.to_path_buf(),
                reason,
            })
    }

    pub fn write(&self, path: &Path) -> Result<(), EvidenceError> {
        write_atomic(path, self.encode().as_bytes(), 0o600)
    }
}

fn hex_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

/// The result of reading a whole log.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The seq the next entry gets (= the number of entries).
    pub next_seq: u64,
    /// The hash of the last entry.
    pub last_hash: Hash,
    /// Bytes of complete, valid frames.
    pub valid_len: u64,
    /// An incomplete last frame (a write cut short by a crash, or bytes being
    /// written right now): its size. Whether that is acceptable depends on the
    /// signed head, which the caller checks.
    pub torn_bytes: u64,
    /// The pinned device key (raw) from the genesis entry.
    pub public_key: Vec<u8>,
    /// The genesis entry's creation time.
    pub created: u64,
    /// The last checkpoint entry, as a head.
    pub last_checkpoint: Option<Head>,
    /// The checkpoint named by the `head` file was found in the log and equals it.
    pub head_found: bool,
}

/// Read every frame of `log` (up to `limit` bytes), check framing, seq continuity,
/// the hash links, the genesis entry and every checkpoint signature, and hand each
/// entry to `visit`. `head` is the `head` file's content: its checkpoint must be in
/// the log, exactly.
///
/// The first problem is returned as an error naming the record and what is wrong.
pub fn scan(
    path: &Path,
    limit: Option<u64>,
    head: Option<&Head>,
    visit: &mut dyn FnMut(&Entry) -> Result<(), EvidenceError>,
) -> Result<Scan, EvidenceError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let len = limit.map_or(file_len, |l| l.min(file_len));
    let mut r = BufReader::with_capacity(256 * 1024, file.take(len));
    let mut scan = Scan {
        next_seq: 0,
        last_hash: [0; 32],
        valid_len: 0,
        torn_bytes: 0,
        public_key: Vec::new(),
        created: 0,
        last_checkpoint: None,
        head_found: false,
    };
    let mut frame = Vec::new();
    loop {
        let offset = scan.valid_len;
        let remaining = len - offset;
        if remaining == 0 {
            break;
        }
        let seq = scan.next_seq;
        let corrupt = |reason: String| EvidenceError::Corrupt {
            seq,
            offset,
            reason,
        };
        if remaining < 4 {
            scan.torn_bytes = remaining;
            break;
        }
        let mut len_bytes = [0u8; 4];
        r.read_exact(&mut len_bytes).map_err(io_err(path))?;
        let n = u32::from_be_bytes(len_bytes);
        if u64::from(n) > remaining - 4 {
            // Runs past the end: the last write never finished (or the end was cut
            // off; the signed head tells which).
            scan.torn_bytes = remaining;
            break;
        }
        if n == 0 || n > MAX_FRAME {
            // A crash can leave a file extended with zeros (the size reached the
            // disk, the data did not): an all-zero tail is a torn write too.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).map_err(io_err(path))?;
            if n == 0 && rest.iter().all(|&b| b == 0) {
                scan.torn_bytes = remaining;
                break;
            }
            return Err(corrupt(format!("impossible length {n}")));
        }
        frame.clear();
        frame.extend_from_slice(&len_bytes);
        frame.resize(4 + n as usize, 0);
        r.read_exact(&mut frame[4..]).map_err(io_err(path))?;
        let entry = match postcard::take_from_bytes::<Entry>(&frame[4..]) {
            Ok((e, [])) => e,
            Ok(_) => return Err(corrupt("it has bytes after its end".into())),
            Err(e) => return Err(corrupt(format!("it cannot be decoded ({e})"))),
        };
        let h = hash(&frame);
        check_entry(&entry, seq, offset, &mut scan)?;
        if let Some(head) = head.filter(|h| h.checkpoint_seq == seq) {
            let same = match &entry.body {
                Body::Checkpoint {
                    head_seq,
                    head_hash,
                    signature,
                } => {
                    h == head.checkpoint_hash
                        && *head_seq == head.head_seq
                        && *head_hash == head.head_hash
                        && *signature == head.signature
                }
                _ => false,
            };
            if !same {
                return Err(EvidenceError::HeadMismatch {
                    seq,
                    reason: "the head file names a different checkpoint at this position: \
                             the log was rewritten from here on"
                        .into(),
                });
            }
            scan.head_found = true;
        }
        visit(&entry)?;
        if let Body::Checkpoint {
            head_seq,
            head_hash,
            signature,
        } = entry.body
        {
            scan.last_checkpoint = Some(Head {
                checkpoint_seq: seq,
                checkpoint_hash: h,
                head_seq,
                head_hash,
                signature,
            });
        }
        scan.last_hash = h;
        scan.next_seq += 1;
        scan.valid_len = offset + frame.len() as u64;
    }
    Ok(scan)
}

/// The rules every entry must follow, given what came before it.
fn check_entry(entry: &Entry, seq: u64, offset: u64, scan: &mut Scan) -> Result<(), EvidenceError> {
    if entry.seq != seq {
        return Err(EvidenceError::OutOfOrder {
            expected: seq,
            found: entry.seq,
            offset,
        });
    }
    if entry.prev != scan.last_hash {
        return Err(EvidenceError::BrokenLink { seq, offset });
    }
    match &entry.body {
        Body::Genesis {
            format,
            public_key,
            created,
        } => {
            if seq != 0 {
                return Err(EvidenceError::Corrupt {
                    seq,
                    offset,
                    reason: "a second first record (genesis) in the middle of the log".into(),
                });
            }
            if *format != FORMAT {
                return Err(EvidenceError::Corrupt {
                    seq,
                    offset,
                    reason: format!("log format {format}, this qrelay reads format {FORMAT} only"),
                });
            }
            scan.public_key = public_key.clone();
            scan.created = *created;
        }
        _ if seq == 0 => {
            return Err(EvidenceError::Corrupt {
                seq,
                offset,
                reason: "the log does not start with its first record (genesis, which pins \
                         the device key)"
                    .into(),
            })
        }
        Body::Checkpoint {
            head_seq,
            head_hash,
            signature,
        } => {
            if *head_seq + 1 != seq || *head_hash != entry.prev {
                return Err(EvidenceError::BadSignature {
                    seq,
                    reason: format!("it signs record {head_seq}, not the record right before it"),
                });
            }
            if !verify_signature(&scan.public_key, *head_seq, head_hash, signature) {
                return Err(EvidenceError::BadSignature {
                    seq,
                    reason: "the signature is not valid for the device key pinned in record 0"
                        .into(),
                });
            }
        }
        Body::Attempt(_) | Body::Resumed { .. } => {}
    }
    Ok(())
}

/// Paths inside the evidence directory.
pub struct Paths {
    pub log: PathBuf,
    pub key: PathBuf,
    pub head: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Paths {
        Paths {
            log: dir.join("log"),
            key: dir.join("device-ed25519.pk8"),
            head: dir.join("head"),
        }
    }

    /// A new log before it is complete (see `Inner::create`).
    pub fn pending(&self) -> PathBuf {
        self.log.with_extension("new")
    }
}

/// The log must still hold the checkpoint the head file names; a log without a
/// head file has lost its protection against truncation (the relay never leaves a
/// log without one, see `Inner::create`).
pub fn check_head(paths: &Paths, head: Option<&Head>, scan: &Scan) -> Result<(), EvidenceError> {
    match head {
        Some(h) if !scan.head_found => Err(EvidenceError::Truncated {
            records: scan.next_seq,
            checkpoint: h.checkpoint_seq,
            head: paths.head.clone(),
        }),
        Some(_) => Ok(()),
        None if scan.next_seq == 0 => Err(EvidenceError::Corrupt {
            seq: 0,
            offset: 0,
            reason: "the log holds no complete record".into(),
        }),
        None => Err(EvidenceError::HeadMissing(paths.head.clone())),
    }
}
