//! One evidence record: everything standards.md A5 asks to keep about one delivery
//! attempt for one recipient, as plain strings so an auditor's CSV or JSON export is
//! a flat table. An empty string means "not applicable" (no TLS, no TLSA lookup...).

use serde::{Deserialize, Serialize};

use crate::config::{ExceptionConfig, Level};
use crate::spool::record::{Attempt, Envelope, RcptState, Recipient};

/// The A5 facts of one delivery attempt to one recipient.
///
/// The field order is the column order of the CSV export and the key order of the
/// JSON export. postcard encodes the fields in this order too, so a change here is a
/// change of the log format (see [`super::FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AttemptEvidence {
    /// When the attempt was made (Unix seconds).
    pub at: u64,
    pub queue_id: String,
    /// The Message-ID header, as received (empty when the message had none).
    pub message_id: String,
    /// The envelope sender; `<>` for the null sender (bounces).
    pub sender: String,
    pub recipient: String,
    /// The risk class (A1): none, normal, high, secret.
    pub class: String,
    /// Why the message has that class, one reason per source that applied.
    pub class_reasons: Vec<String>,
    /// The transport level the recipient required for this attempt (after an
    /// exception, if one was used).
    pub required_level: String,
    /// The exception (A4) used for this attempt: id, approver, reason, level and
    /// expiry; empty when none.
    pub exception: String,
    /// The MX host and the address the attempt went to.
    pub mx: String,
    pub ip: String,
    /// DNSSEC status of the MX, address and TLSA answers ("secure", "insecure",
    /// "bogus", "indeterminate", "unvalidated"; TLSA also "secure denial", "failed").
    pub mx_dnssec: String,
    pub address_dnssec: String,
    pub tlsa_dnssec: String,
    /// The TLSA RRset, "usage selector matching hex" per record.
    pub tlsa_records: Vec<String>,
    /// The TLSA record that authenticated the server.
    pub tlsa_matched: String,
    /// The MTA-STS policy id and mode (enforce, testing, none) that applied.
    pub mta_sts_id: String,
    pub mta_sts_mode: String,
    /// The TLS session: version, cipher suite, key-exchange group, the profile the
    /// client offered (B6), and the peer's SPKI and certificate SHA-256 (hex).
    pub tls_version: String,
    pub cipher: String,
    pub group: String,
    pub tls_profile: String,
    pub peer_spki_sha256: String,
    pub peer_cert_sha256: String,
    /// What the transport achieved (plaintext, encrypted, trusted, verified) and
    /// what authenticated the server (none, pkix, mta-sts, dane-ee, dane-ta).
    pub verdict: String,
    pub mechanism: String,
    /// "not requested", "requested, passed on" or "requested, not passed on"
    /// (RFC 8689).
    pub requiretls: String,
    /// The recipient's state after the attempt: delivered, deferred, failed, held.
    pub outcome: String,
    /// The enhanced status code, e.g. "2.0.0".
    pub status: String,
    /// The server's final reply to this recipient, or our reason when none came.
    pub reply: String,
}

impl AttemptEvidence {
    /// The evidence of attempt `a` for recipient `r` of `env`. Call it after the
    /// recipient's state and status were updated with the attempt's result, so the
    /// outcome is the one the attempt led to. `required` is the level the attempt had
    /// to reach; `exception` the exception that lowered it, if any.
    pub fn from_attempt(
        env: &Envelope,
        r: &Recipient,
        a: &Attempt,
        required: Level,
        exception: Option<&ExceptionConfig>,
    ) -> AttemptEvidence {
        let auth = a.auth.as_ref();
        let tlsa = auth.and_then(|f| f.tlsa.as_ref());
        let sts = auth.and_then(|f| f.mta_sts.as_ref());
        let tls = a.tls.as_ref();
        let text = |s: Option<&String>| s.cloned().unwrap_or_default();
        AttemptEvidence {
            at: a.at,
            queue_id: env.id.to_string(),
            message_id: env.message_id.clone().unwrap_or_default(),
            sender: if env.sender.is_empty() {
                "<>".to_string()
            } else {
                env.sender.clone()
            },
            recipient: r.address.clone(),
            class: env.class.as_str().to_string(),
            class_reasons: env.class_reasons.clone(),
            required_level: required.as_str().to_string(),
            exception: exception.map(describe_exception).unwrap_or_default(),
            mx: a.mx.clone(),
            ip: a.ip.clone(),
            mx_dnssec: auth.map(|f| f.mx_dnssec.clone()).unwrap_or_default(),
            address_dnssec: auth.map(|f| f.address_dnssec.clone()).unwrap_or_default(),
            tlsa_dnssec: tlsa.map(|t| t.dnssec.clone()).unwrap_or_default(),
            tlsa_records: tlsa.map(|t| t.records.clone()).unwrap_or_default(),
            tlsa_matched: text(tlsa.and_then(|t| t.matched.as_ref())),
            mta_sts_id: sts.map(|s| s.id.clone()).unwrap_or_default(),
            mta_sts_mode: sts.map(|s| s.mode.clone()).unwrap_or_default(),
            tls_version: tls.map(|t| t.version.clone()).unwrap_or_default(),
            cipher: tls.map(|t| t.cipher.clone()).unwrap_or_default(),
            group: text(tls.and_then(|t| t.group.as_ref())),
            tls_profile: tls.map(|t| t.profile.clone()).unwrap_or_default(),
            peer_spki_sha256: text(tls.and_then(|t| t.peer_spki_sha256.as_ref())),
            peer_cert_sha256: text(tls.and_then(|t| t.peer_cert_sha256.as_ref())),
            verdict: a
                .verdict
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            mechanism: auth
                .map(|f| f.mechanism.as_str().to_string())
                .unwrap_or_default(),
            requiretls: requiretls_status(env.requiretls, a.requiretls).to_string(),
            outcome: outcome(r.state).to_string(),
            status: r.status.clone().unwrap_or_default(),
            reply: a.reply.clone(),
        }
    }

    /// The CSV columns: every field by name, in declaration order, lists joined
    /// with " | ". The names equal the JSON keys (a unit test holds them together).
    pub fn columns(&self) -> [(&'static str, String); 30] {
        let list = |v: &[String]| v.join(" | ");
        [
            ("at", self.at.to_string()),
            ("queue_id", self.queue_id.clone()),
            ("message_id", self.message_id.clone()),
            ("sender", self.sender.clone()),
            ("recipient", self.recipient.clone()),
            ("class", self.class.clone()),
            ("class_reasons", list(&self.class_reasons)),
            ("required_level", self.required_level.clone()),
            ("exception", self.exception.clone()),
            ("mx", self.mx.clone()),
            ("ip", self.ip.clone()),
            ("mx_dnssec", self.mx_dnssec.clone()),
            ("address_dnssec", self.address_dnssec.clone()),
            ("tlsa_dnssec", self.tlsa_dnssec.clone()),
            ("tlsa_records", list(&self.tlsa_records)),
            ("tlsa_matched", self.tlsa_matched.clone()),
            ("mta_sts_id", self.mta_sts_id.clone()),
            ("mta_sts_mode", self.mta_sts_mode.clone()),
            ("tls_version", self.tls_version.clone()),
            ("cipher", self.cipher.clone()),
            ("group", self.group.clone()),
            ("tls_profile", self.tls_profile.clone()),
            ("peer_spki_sha256", self.peer_spki_sha256.clone()),
            ("peer_cert_sha256", self.peer_cert_sha256.clone()),
            ("verdict", self.verdict.clone()),
            ("mechanism", self.mechanism.clone()),
            ("requiretls", self.requiretls.clone()),
            ("outcome", self.outcome.clone()),
            ("status", self.status.clone()),
            ("reply", self.reply.clone()),
        ]
    }
}

/// An exception in one line: who allowed what, why, and until when (A4: every use
/// of an exception is recorded).
fn describe_exception(e: &ExceptionConfig) -> String {
    format!(
        "{}; approved by {}; reason: {}; level {} until {}",
        e.id,
        e.approver,
        e.reason,
        e.level,
        humantime::format_rfc3339_seconds(e.expires)
    )
}

/// RFC 8689: whether the sender asked for REQUIRETLS and whether it went on to the
/// next hop in MAIL FROM.
fn requiretls_status(requested: bool, passed_on: bool) -> &'static str {
    match (requested, passed_on) {
        (false, _) => "not requested",
        (true, true) => "requested, passed on",
        (true, false) => "requested, not passed on",
    }
}

fn outcome(state: RcptState) -> &'static str {
    match state {
        RcptState::Pending => "deferred",
        RcptState::Delivered => "delivered",
        RcptState::Failed => "failed",
        RcptState::Held => "held",
    }
}
