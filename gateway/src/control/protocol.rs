//! The messages exchanged over the control socket.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. A request starts with the protocol version (postcard encodes the first
//! field first), so a daemon can read the version of any client, old or new, before
//! it tries to understand the rest, and answer a mismatch with an error that names
//! both versions instead of a decoding failure.

use serde::{Deserialize, Serialize};

use crate::spool::record::Envelope;

/// The version of this protocol. Bump it whenever [`Request`], [`Command`] or
/// [`Response`] (including the [`Envelope`] record they carry) change shape.
/// 2: the TLS facts in [`Envelope`] carry the TLS profile and the peer key.
/// 3: attempts carry the verdict `verified` and their authentication facts
/// (mechanism, DNSSEC status, TLSA, MTA-STS; spool record version 3).
/// 4: [`Command::Status`] and [`Response::Status`].
/// 5: risk classes in the envelope (spool record version 4), [`Command::Release`],
/// held recipients in [`QueueCounts`], [`Command::TlsRptSend`].
pub const PROTOCOL_VERSION: u16 = 5;

/// The largest frame either side accepts (the payload, without the length prefix).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// One request; a connection may carry several, each answered by one [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Must be the first field: see the module documentation.
    pub version: u16,
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Every message in the queue.
    List,
    /// One message by queue id.
    Show(String),
    /// Try one message (queue id) or every message ("all") now.
    Retry(String),
    /// Remove a message from the queue without a notice to its sender.
    Delete(String),
    /// The relay's version, uptime, queue counts and DNSSEC health.
    Status,
    /// Release a message's held recipients (class action `hold`): try them again now.
    Release(String),
    /// Send the TLS-RPT reports of one UTC day (`YYYY-MM-DD`) now.
    TlsRptSend { day: String },
}

// A response lives only between decoding and printing; boxing the envelope would
// buy nothing but an indirection in every caller's match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Messages(Vec<Envelope>),
    Message(Envelope),
    /// The command was carried out; a sentence for the admin.
    Done(String),
    /// The command failed; a sentence for the admin.
    Error(String),
    Status(StatusReport),
}

/// What `qrelay status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The relay's version (Cargo package version).
    pub version: String,
    /// Unix seconds when the relay started.
    pub started_at: u64,
    /// Unix seconds when this report was made.
    pub now: u64,
    pub queue: QueueCounts,
    pub dnssec: DnssecReport,
    /// SHA-256 of the evidence log's signing key (hex), for an auditor to note and
    /// check with `qrelay evidence verify --expect-key`; empty when not known.
    pub evidence_key: String,
}

/// Messages and recipients in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub messages: u64,
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Recipients held because their level could not be met (class action `hold`).
    pub held: u64,
}

/// The last DNSSEC probe of the daemon (see [`crate::dns::DnssecHealth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnssecReport {
    /// The upstream resolvers probed, e.g. "127.0.10.54:53".
    pub upstreams: String,
    pub state: DnssecState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnssecState {
    /// No probe has finished yet.
    Unknown,
    Available {
        checked_at: u64,
    },
    Unavailable {
        reason: String,
        checked_at: u64,
    },
    /// Validation is off.
    Disabled,
    /// The relay does not report it (a handler without a DNSSEC monitor).
    NotReported,
}

impl DnssecReport {
    /// From the daemon's shared probe state.
    pub fn from_health(upstreams: String, health: &crate::dns::DnssecHealth) -> DnssecReport {
        use crate::dns::DnssecHealth;
        let secs = |t: &std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let state = match health {
            DnssecHealth::Unknown => DnssecState::Unknown,
            DnssecHealth::Available { checked_at } => DnssecState::Available {
                checked_at: secs(checked_at),
            },
            DnssecHealth::Unavailable { reason, checked_at } => DnssecState::Unavailable {
                reason: reason.clone(),
                checked_at: secs(checked_at),
            },
            DnssecHealth::Disabled => DnssecState::Disabled,
        };
        DnssecReport { upstreams, state }
    }
}
