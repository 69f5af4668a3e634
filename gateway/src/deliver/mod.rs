//! Outbound delivery: one SMTP transaction to a recipient domain's mail server.
//!
//! The scheduler (`queue`) decides *when*; this module does one attempt for all
//! pending recipients of one message in one domain: MX lookup, host order, connect,
//! STARTTLS at the required level, MAIL/RCPT/DATA, and reports per-recipient outcomes
//! plus the TLS facts of the session.
//!
//! The content is not handed over in memory: up to `delivery.concurrency` attempts
//! run at once, each for a message of up to `smtp.max_message_size`. A request
//! carries a [`ContentSource`] (normally the open spool file) that the client reads
//! in pieces of [`client::SEND_CHUNK`] bytes while it sends DATA, so one attempt
//! holds a fixed amount of the message whatever its size.

pub mod client;
pub mod protocol;

use std::io;
use std::sync::Arc;

use crate::config::Level;
use crate::spool::record::{Attempt, BodyType, Notify, QueueId, Ret};
use crate::spool::ContentFile;
use crate::tls::profile::Profile;

/// Message content a delivery reads from, by offset, in pieces. Reads block (they
/// are file I/O): async callers run them on the blocking pool.
pub trait ContentSource: std::fmt::Debug + Send + Sync + 'static {
    /// The content's length in bytes (for SIZE=, RFC 1870).
    fn size(&self) -> u64;
    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end (0 = end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A stored message: the normal source.
impl ContentSource for ContentFile {
    fn size(&self) -> u64 {
        self.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        ContentFile::read_at(self, buf, offset)
    }
}

/// Content built in memory (small generated messages, tests).
impl ContentSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// One recipient in a delivery request.
#[derive(Debug, Clone)]
pub struct RcptRequest {
    pub address: String,
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
}

/// Everything one delivery attempt needs.
#[derive(Debug, Clone)]
pub struct DeliveryRequest {
    pub id: QueueId,
    /// The destination domain (lower-case); all recipients are in it.
    pub domain: String,
    pub sender: String,
    pub recipients: Vec<RcptRequest>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// The minimum transport level (from the message's class).
    pub level: Level,
    /// The TLS profile to offer (from the message's class, `tls_profile`).
    pub tls_profile: Profile,
    /// REQUIRETLS (RFC 8689, G2): only to a host whose MX set is DNSSEC- or
    /// MTA-STS-validated, whose certificate is verified and which advertises
    /// REQUIRETLS; passed on in MAIL FROM; otherwise 5.7.30.
    pub requiretls: bool,
    /// Deliver without applying DANE or MTA-STS (`TLS-Required: No` honoured, or a
    /// TLS-RPT report: RFC 8689 section 3, RFC 8460 section 3). `level` is `may`.
    pub tls_optional: bool,
    /// The message, read in pieces while DATA is sent (see the module docs).
    pub content: Arc<dyn ContentSource>,
}

/// The outcome for one recipient, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server accepted the message for this recipient. `remote_dsn`: the server
    /// took our DSN parameters, so success notices are now its job (RFC 3461 4.1).
    Delivered { reply: String, remote_dsn: bool },
    /// Try again later (4xx, no connection, TLS level not met, DNS outage).
    Deferred { reply: String, status: String },
    /// Permanent failure (5xx, null MX, no such domain); bounce now.
    Failed { reply: String, status: String },
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    pub outcomes: Vec<RcptOutcome>,
    /// The host that carried the transaction (or the last one tried), with TLS facts.
    pub attempt: Attempt,
}

/// Something that can carry out a delivery attempt. The real one is SMTP over the
/// Internet ([`client::Deliverer`]); the scheduler's unit tests use a scripted one.
pub trait Transport: Send + Sync + 'static {
    fn deliver(
        &self,
        req: DeliveryRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryReport> + Send + '_>>;
}
