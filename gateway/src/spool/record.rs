//! What the spool keeps about a message besides its content: the envelope and the
//! per-recipient delivery state. Stored with postcard; `RECORD_VERSION` guards the
//! format so a future firmware can read (or migrate) what an older one wrote.

use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::config::RiskClass;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bumped whenever the layout of [`Envelope`] changes. postcard is not
/// self-describing, so a record of another version cannot be read with this layout;
/// recovery checks the version (the first field) before decoding the rest.
///
/// 2: [`TlsFacts`] gained `profile`, `peer_key_type` and `peer_key_bits`. No
/// version 1 spool was ever deployed, so there is no migration.
/// 3: [`TransportVerdict::Verified`]; [`Attempt`] gained `auth` ([`AuthFacts`]: the
/// mechanism, DNSSEC status of the lookups, TLSA and MTA-STS facts). No version 2
/// spool was deployed either; recovery quarantines records of other versions.
/// 4: risk classes ([`Envelope::class`] a [`RiskClass`], `class_reasons`,
/// `tls_required_no`, `expires_at`), [`RcptState::Held`], [`Attempt`] gained
/// `problem` and `requiretls`. No version 3 spool was deployed.
pub const RECORD_VERSION: u16 = 4;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A queue id: 16 upper-case hex digits, time-ordered (microseconds since the epoch,
/// 52 bits) with 12 random bits, so ids sort by arrival and never collide in practice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(String);

impl QueueId {
    pub fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let rnd: u64 = rand::random::<u64>() & 0xfff;
        QueueId(format!("{:013X}{:03X}", micros & 0xF_FFFF_FFFF_FFFF, rnd))
    }

    /// Parse an id given by a person or read from a file name; only the id alphabet
    /// is accepted, so an id can never name a path outside the spool.
    pub fn parse(s: &str) -> Option<QueueId> {
        let s = s.trim();
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(QueueId(s.to_ascii_uppercase()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3461 RET: how much of the original a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Headers,
}

/// RFC 3461 NOTIFY. `None` in [`Recipient::notify`] means "not given": the
/// default of failure + delay notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// The RFC 3461 keywords: `["NEVER"]`, or some of SUCCESS, FAILURE, DELAY.
    pub fn keywords(&self) -> Vec<&'static str> {
        if self.never {
            return vec!["NEVER"];
        }
        [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect()
    }

    pub fn wants_success(n: Option<Notify>) -> bool {
        n.is_some_and(|n| !n.never && n.success)
    }
    pub fn wants_failure(n: Option<Notify>) -> bool {
        n.is_none_or(|n| !n.never && n.failure)
    }
    pub fn wants_delay(n: Option<Notify>) -> bool {
        n.is_none_or(|n| !n.never && n.delay)
    }
}

/// The body type declared in MAIL FROM (RFC 6152 / RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// Where a message came from (for the Received header, logs and evidence).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    pub addr: String,
    pub helo: String,
    /// e.g. "TLSv1.3 TLS13_AES_256_GCM_SHA384"; None = plaintext.
    pub tls: Option<String>,
    pub auth_user: Option<String>,
}

/// What one TLS handshake to a recipient server established. Recorded for every
/// delivery and logged; the evidence log (later) builds on the same facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// "TLSv1.2" / "TLSv1.3".
    pub version: String,
    /// IANA-style suite name as rustls prints it, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// Key-exchange group, e.g. "X25519MLKEM768", "secp384r1".
    pub group: Option<String>,
    /// SHA-256 of the peer's end-entity certificate (DER), hex.
    pub peer_cert_sha256: Option<String>,
    /// SHA-256 of the peer's SubjectPublicKeyInfo (DER), hex.
    pub peer_spki_sha256: Option<String>,
    /// Whether the PKIX chain and the MX host name verified (the `trusted` level).
    pub pkix_verified: bool,
    /// The TLS profile the client offered: "bsi", "modern" or "compat"
    /// (standards.md B6, C).
    pub profile: String,
    /// The peer's public key type: "RSA", "EC secp384r1", "Ed25519"...
    pub peer_key_type: Option<String>,
    /// Its size in bits: the RSA modulus, the EC field size (standards.md C6).
    pub peer_key_bits: Option<u32>,
}

/// What the transport to the recipient server achieved, in the stable vocabulary of
/// standards.md section H.
/// Ordered from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransportVerdict {
    /// No TLS.
    Plaintext,
    /// TLS >= 1.2 with an accepted suite; the server is not authenticated.
    Encrypted,
    /// PKIX chain and the MX name in the certificate, but the MX name came from
    /// unauthenticated DNS (Postfix "Trusted").
    Trusted,
    /// The MX is authenticated against DNS forgery (standards.md A3): DANE, MTA-STS
    /// enforce + PKIX, a certificate name within the recipient domain, or PKIX on a
    /// DNSSEC-secure MX name (Postfix "Verified").
    Verified,
}

impl TransportVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportVerdict::Plaintext => "plaintext",
            TransportVerdict::Encrypted => "encrypted",
            TransportVerdict::Trusted => "trusted",
            TransportVerdict::Verified => "verified",
        }
    }
}

/// What authenticated the server (the `mechanism` of the evidence and of
/// `qrelay check --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Mechanism {
    /// Not authenticated (plaintext, or TLS without a verified identity).
    #[default]
    None,
    /// A PKIX chain to a trusted root and a name check (the MX name, or a name
    /// within the recipient domain).
    Pkix,
    /// PKIX on an MX host allowed by the domain's MTA-STS enforce policy.
    MtaSts,
    /// A DANE-EE(3) TLSA record matched.
    DaneEe,
    /// The chain led to a DANE-TA(2) TLSA record.
    DaneTa,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::None => "none",
            Mechanism::Pkix => "pkix",
            Mechanism::MtaSts => "mta-sts",
            Mechanism::DaneEe => "dane-ee",
            Mechanism::DaneTa => "dane-ta",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the MX host of an attempt was (or was not) authenticated, and the DNS and
/// policy facts the decision rested on (standards.md A5).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuthFacts {
    pub mechanism: Mechanism,
    /// In plain language: what authenticated the host, or what was missing.
    pub basis: String,
    /// DNSSEC status of the MX answer: "secure", "insecure", "bogus",
    /// "indeterminate", "unvalidated" (empty: no MX lookup, e.g. an address literal).
    pub mx_dnssec: String,
    /// DNSSEC status of the host's address answer (same words).
    pub address_dnssec: String,
    /// The TLSA lookup; `None` when none was made (DANE did not apply).
    pub tlsa: Option<TlsaFacts>,
    /// The recipient domain's MTA-STS policy, when one applied.
    pub mta_sts: Option<MtaStsFacts>,
}

/// The TLSA answer for one MX host (standards.md A5: "the TLSA RRset and the
/// matching record").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TlsaFacts {
    /// "secure", "secure denial", "insecure", "failed".
    pub dnssec: String,
    /// The TLSA base domain (`_25._tcp.<base>`), the SNI under DANE.
    pub base_domain: String,
    /// The RRset in presentation form, "usage selector matching hex".
    pub records: Vec<String>,
    /// The record that authenticated the server.
    pub matched: Option<String>,
}

/// The MTA-STS policy that applied to an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MtaStsFacts {
    /// The policy id from the `_mta-sts` TXT record.
    pub id: String,
    /// "enforce", "testing" or "none".
    pub mode: String,
    /// The MX host matches one of the policy's `mx` patterns.
    pub covered: bool,
}

/// What kept a message from its level, in categories a sender can be told about
/// in plain language ([`crate::bounce::notice`]) and TLS-RPT counts (RFC 8460
/// section 4.3 result types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProblemKind {
    /// The server does not offer STARTTLS.
    StarttlsNotSupported,
    /// The server's certificate is outside its validity period.
    CertificateExpired,
    /// The certificate chain does not lead to a trusted root.
    CertificateNotTrusted,
    /// The certificate does not name the server.
    CertificateHostMismatch,
    /// The DANE (TLSA) records do not match the server's certificate.
    TlsaInvalid,
    /// A DNS answer failed DNSSEC validation (forged or broken signatures).
    DnssecInvalid,
    /// The destination requires DANE, but the server has no usable TLSA records.
    DaneRequired,
    /// The MTA-STS policy could not be fetched / was invalid / its host's
    /// certificate failed.
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
    /// The MTA-STS enforce policy does not list the MX host.
    StsMxNotListed,
    /// The server could not be authenticated against DNS forgery (no DANE, no
    /// MTA-STS, no DNSSEC): level `verified` not reachable.
    NotAuthenticated,
    /// The TLS parameters or the server key fall outside the TLS profile.
    TlsProfile,
    /// The handshake failed otherwise (bad signature, protocol error).
    HandshakeFailed,
    /// The message was sent with REQUIRETLS and the server does not support it.
    RequireTlsNotSupported,
}

impl ProblemKind {
    /// The RFC 8460 result type, for problems that are TLS policy failures.
    pub fn rpt_result_type(self) -> Option<&'static str> {
        Some(match self {
            ProblemKind::StarttlsNotSupported => "starttls-not-supported",
            ProblemKind::CertificateExpired => "certificate-expired",
            ProblemKind::CertificateNotTrusted => "certificate-not-trusted",
            ProblemKind::CertificateHostMismatch => "certificate-host-mismatch",
            ProblemKind::TlsaInvalid => "tlsa-invalid",
            ProblemKind::DnssecInvalid => "dnssec-invalid",
            ProblemKind::DaneRequired => "dane-required",
            ProblemKind::StsPolicyFetchError => "sts-policy-fetch-error",
            ProblemKind::StsPolicyInvalid => "sts-policy-invalid",
            ProblemKind::StsWebpkiInvalid => "sts-webpki-invalid",
            ProblemKind::StsMxNotListed => "validation-failure",
            ProblemKind::TlsProfile | ProblemKind::HandshakeFailed => "validation-failure",
            ProblemKind::NotAuthenticated | ProblemKind::RequireTlsNotSupported => return None,
        })
    }
}

/// The problem of an attempt: its kind, our technical reason (English), and for
/// an expired certificate the end of its validity (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
    pub date: Option<u64>,
}

/// One delivery attempt that reached a server (or failed trying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: u64,
    /// MX host name and address used (empty when none was reached).
    pub mx: String,
    pub ip: String,
    pub tls: Option<TlsFacts>,
    pub verdict: Option<TransportVerdict>,
    /// The server's reply to this recipient, or our own reason when no reply came.
    pub reply: String,
    /// How the host was authenticated and the facts behind it; `None` when no host
    /// was chosen (DNS failure before any host).
    pub auth: Option<AuthFacts>,
    /// Why the host could not carry the message at its level, when that was the
    /// reason it was not used.
    pub problem: Option<Problem>,
    /// REQUIRETLS was passed on to the server in MAIL FROM (RFC 8689 section 4.2.1).
    pub requiretls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// Not yet delivered; retried at `next_attempt`.
    Pending,
    /// Accepted by the recipient's server.
    Delivered,
    /// Permanently failed (5xx, null MX, expired); a failure DSN is due.
    Failed,
    /// Its level could not be met within the class's grace period and the class
    /// says `hold`: not retried until an admin releases (or deletes) it.
    Held,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path as given in RCPT TO, without angle brackets.
    pub address: String,
    /// RFC 3461 ORCPT, as "addr-type;address" (xtext decoded).
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    pub state: RcptState,
    pub attempts: u32,
    /// Unix seconds of the next attempt while pending.
    pub next_attempt: u64,
    /// The last attempt's details (server reply, TLS facts).
    pub last: Option<Attempt>,
    /// The enhanced status code of the final state or the last failure, e.g. "5.1.1".
    pub status: Option<String>,
    /// Whether the remote server accepted our DSN parameters (it now owns notices).
    pub remote_dsn: bool,
    /// A delay DSN was sent for this recipient.
    pub delay_notified: bool,
    /// The final state's DSN (failure or success) has been queued, or none was wanted.
    pub final_notice_done: bool,
}

impl Recipient {
    pub fn new(address: String, orcpt: Option<String>, notify: Option<Notify>, now: u64) -> Self {
        Recipient {
            address,
            orcpt,
            notify,
            state: RcptState::Pending,
            attempts: 0,
            next_attempt: now,
            last: None,
            status: None,
            remote_dsn: false,
            delay_notified: false,
            final_notice_done: false,
        }
    }

    /// The domain part of the address, lower-cased (the delivery destination).
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// The domain part of an address (after the last '@'), lower-cased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub record_version: u16,
    pub id: QueueId,
    /// Unix seconds when the message was accepted.
    pub received_at: u64,
    /// Reverse-path without angle brackets; empty for the null sender (bounces).
    pub sender: String,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub requiretls: bool,
    /// Size of the stored content in bytes.
    pub size: u64,
    /// The risk class (standards.md A1), decided when the message was accepted.
    pub class: RiskClass,
    /// Why it has that class, one reason per source that applied, e.g.
    /// "subject tag [vertraulich]" (recorded in the evidence).
    pub class_reasons: Vec<String>,
    /// The sender asked with `TLS-Required: No` to deliver even without TLS and an
    /// admin rule allows it (RFC 8689 section 3, G3); also set for TLS-RPT report
    /// mails, which must not enforce DANE or MTA-STS (RFC 8460 section 3).
    pub tls_optional: bool,
    /// Give up delivering at this time (Unix seconds) instead of after the queue
    /// lifetime (TLS-RPT reports: 24 hours).
    pub expires_at: Option<u64>,
    pub client: ClientInfo,
    pub message_id: Option<String>,
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// The envelope of a message the gateway makes itself (a DSN, a TLS-RPT
    /// report): one recipient, no DSN parameters, from "local"; `why` is its
    /// class reason. Callers adjust what differs (body type, class, expiry).
    pub fn generated(
        sender: &str,
        recipient: &str,
        size: u64,
        hostname: &str,
        class: RiskClass,
        why: &str,
    ) -> Envelope {
        let now = now_secs();
        Envelope {
            record_version: RECORD_VERSION,
            id: QueueId::generate(),
            received_at: now,
            sender: sender.to_string(),
            ret: None,
            envid: None,
            body: BodyType::default(),
            smtputf8: false,
            requiretls: false,
            size,
            class,
            class_reasons: vec![why.to_string()],
            tls_optional: false,
            expires_at: None,
            client: ClientInfo {
                addr: "local".into(),
                helo: hostname.into(),
                tls: None,
                auth_user: None,
            },
            message_id: None,
            recipients: vec![Recipient::new(recipient.to_string(), None, None, now)],
        }
    }

    /// True when every recipient reached a final state and its notice is done:
    /// the message can leave the spool.
    pub fn is_finished(&self) -> bool {
        self.recipients.iter().all(|r| {
            !matches!(r.state, RcptState::Pending | RcptState::Held) && r.final_notice_done
        })
    }

    /// The earliest next attempt among pending recipients.
    pub fn next_due(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .map(|r| r.next_attempt)
            .min()
    }

    pub fn is_bounce(&self) -> bool {
        self.sender.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_ordered_and_parse_back() {
        let a = QueueId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = QueueId::generate();
        assert!(a < b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(QueueId::parse(&a.as_str().to_lowercase()), Some(a));
        assert_eq!(QueueId::parse("../../etc/passwd"), None);
        assert_eq!(QueueId::parse("0123456789ABCDEG"), None);
    }

    #[test]
    fn notify_defaults() {
        assert!(Notify::wants_failure(None));
        assert!(Notify::wants_delay(None));
        assert!(!Notify::wants_success(None));
        let never = Notify {
            never: true,
            ..Default::default()
        };
        assert!(!Notify::wants_failure(Some(never)));
        let succ = Notify {
            success: true,
            ..Default::default()
        };
        assert!(Notify::wants_success(Some(succ)));
        assert!(!Notify::wants_failure(Some(succ)));
    }

    #[test]
    fn domain_is_after_last_at() {
        assert_eq!(domain_of("a@B.Example."), "b.example");
        assert_eq!(domain_of("\"x@y\"@example.org"), "example.org");
        assert_eq!(domain_of("postmaster"), "");
    }
}
