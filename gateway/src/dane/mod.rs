//! DANE for SMTP: authenticating a recipient's mail server through DNSSEC-signed
//! TLSA records (RFC 7672, which applies RFC 6698 as updated by RFC 7671).
//!
//! # The problem DANE solves
//!
//! SMTP between mail servers finds the next hop through DNS (MX records) and then
//! upgrades the connection with STARTTLS. Without more, an attacker on the path
//! can strip STARTTLS from the server's reply or present any certificate: the
//! sender cannot tell, because nothing says which certificate the recipient's
//! server should have and whether it offers TLS at all. Web PKI does not help
//! either: the MX name comes from (forgeable) DNS, and most MX certificates do not
//! name the MX host anyway. DANE puts the answer into DNS, protected by DNSSEC: a
//! signed TLSA record at `_25._tcp.<mx-host>` says both "this host offers TLS"
//! (downgrade resistance) and "its certificate is this one" (authentication).
//!
//! # TLSA records
//!
//! A TLSA record ([`Tlsa`]) is four fields, written e.g. `3 1 1 <hex>`:
//!
//! - **usage**: what the record pins.
//!   - `3` DANE-EE: the server's own certificate or key. Only the match counts:
//!     the names in the certificate, its dates and its issuer are not looked at
//!     (RFC 7672 section 3.1.1) — the DNSSEC signature over the record, with its
//!     own expiry, is what vouches for the key. The most common usage; a
//!     self-signed certificate is fine.
//!   - `2` DANE-TA: a trust anchor — the operator's own CA or the CA it buys
//!     certificates from. The server's certificate must chain up to that anchor,
//!     be within its validity dates and carry an expected name, like PKIX with one
//!     single root chosen by the domain owner (RFC 7672 section 3.1.2, RFC 7671
//!     section 5.2). The server must send the anchor's certificate in its chain.
//!   - `0` PKIX-TA and `1` PKIX-EE: like 2 and 3, but *in addition* the chain must
//!     pass PKIX to a public root. An MTA has no agreed set of "public roots" with
//!     the receiving side, so RFC 7672 section 3.1.3 tells SMTP clients to treat
//!     these records as **unusable** (standards.md D5).
//! - **selector**: which part of the certificate is pinned: `0` the whole
//!   certificate (DER), `1` only its SubjectPublicKeyInfo (the key; survives
//!   renewals that keep the key).
//! - **matching type**: how it is compared: `0` the bytes themselves ("Full"),
//!   `1` their SHA-256 (32 bytes), `2` their SHA-512 (64 bytes). A digest of the
//!   wrong length makes the record unusable, it does not "just not match".
//!
//! # Usable records and digest agility
//!
//! [`TlsaSet::usable`] keeps the usable records (D5) and then applies digest
//! algorithm agility (RFC 7671 section 9, D9): per usage and selector only the
//! strongest digest present is used, so publishing SHA-512 next to SHA-256 retires
//! SHA-256 for clients that know SHA-512. Full(0) is no digest and always stays.
//! If a DNSSEC-secure TLSA RRset has no usable record, TLS is still mandatory but
//! unauthenticated (D5); with at least one, authentication must succeed or the host
//! is not used (D6) — see [`DaneRequirement`].
//!
//! # Which DNS answers count (the steps before the handshake)
//!
//! DANE is only as good as the DNSSEC chain it rests on (RFC 7672 section 2.2):
//!
//! 1. The MX RRset must be DNSSEC-secure (D2), otherwise an attacker could name his
//!    own MX host with his own TLSA records. A bogus MX answer defers the domain,
//!    a bogus address answer skips the host (D1). See [`precondition`].
//! 2. The host's address records must be secure (D3); only then is a TLSA lookup
//!    made.
//! 3. The **TLSA base domain** is the name whose `_25._tcp` TLSA records are used:
//!    the MX host name, or — if the address lookup followed a *secure* CNAME chain
//!    — first the chain's final target, then the original name (RFC 7672 section
//!    2.2.3, RFC 7671 section 7). See [`tlsa_candidates`].
//! 4. A failed TLSA lookup (SERVFAIL, bogus) skips the host; a proven absence means
//!    no DANE for it (D4). See [`tlsa_step`] and [`requirement`].
//!
//! # During the handshake
//!
//! rustls lets a client replace certificate verification. [`DaneVerifier`] is such
//! a replacement, built per connection from the host's usable records:
//!
//! - SNI is the TLSA base domain (RFC 7672 section 8.1, D10): a server hosting
//!   several domains picks the certificate its TLSA records describe. The verifier
//!   refuses to run for any other connection name.
//! - DANE-EE: the leaf certificate or its key matches a usage-3 record (D7).
//! - DANE-TA: a certificate of the presented chain matches a usage-2 record; the
//!   leaf validates to it as the only trust anchor (rustls-webpki), dates checked,
//!   and the leaf names the TLSA base domain or the MX host name — the reference
//!   identifiers of RFC 7672 section 3.2.3 (D8). Wildcards as in RFC 6125.
//! - The handshake signature is **always** verified by the provider's code (D10).
//!   A certificate is public: anyone can present the one a TLSA record pins. Only
//!   the signature over the handshake (TLS 1.3 CertificateVerify, TLS 1.2
//!   ServerKeyExchange) proves the server holds its private key. A DANE client
//!   that matched the certificate but skipped the signature would accept a replay.
//! - Which record matched, and how, is left in an [`OutcomeSlot`] for the evidence.
//!
//! [`client_config`] builds the per-connection rustls configuration (no session
//! resumption: every DANE session is a fully verified handshake).
//!
//! # For the delivery code, step by step
//!
//! ```text
//! for each MX host (preference order):
//!   match precondition(host, mx_security, address_security) {
//!     DeferDomain -> defer the whole message (4.7.5), stop
//!     SkipHost    -> next host
//!     NotApplicable -> DaneRequirement::None: MTA-STS / PKIX / level rules decide
//!     LookUpTlsa  -> for c in tlsa_candidates(host, secure_cname_target):
//!                      answer = dns TLSA query of c.qname, classified as TlsaAnswer
//!                      if let Some(req) = tlsa_step(&c, answer) { break with req }
//!                    (none ended the search -> DaneRequirement::None)
//!   }
//!   match requirement {
//!     SkipHost     -> next host (defer when none is left)
//!     TlsRequired  -> STARTTLS mandatory (no STARTTLS = skip host, B3);
//!                     verdict at most "encrypted"
//!     Authenticate -> STARTTLS mandatory; slot = OutcomeSlot::new();
//!                     v = Arc::new(DaneVerifier::new(&usable, &base_domain, host,
//!                                                    profile_provider, slot.clone())?);
//!                     cfg = client_config(profile_provider, versions, v.clone())?;
//!                     TlsConnector::from(cfg).connect(v.server_name(), tcp)
//!                     ok  -> verdict "verified", evidence: slot.get() + tlsa RRset
//!                     err -> skip host (B3: never send to it), reason from the error
//!     None         -> not DANE's business
//!   }
//! ```

mod lookup;
mod tlsa;
mod verifier;

#[cfg(test)]
mod tests;

pub use lookup::{
    precondition, requirement, tlsa_candidates, tlsa_step, DaneRequirement, Precondition,
    TlsaAnswer, TlsaCandidate, STATUS_DANE_TEMPORARY,
};
pub use tlsa::{
    Tlsa, TlsaParseError, TlsaSet, Unusable, UsableTlsa, MATCHING_FULL, MATCHING_SHA256,
    MATCHING_SHA512, SELECTOR_CERT, SELECTOR_SPKI, USAGE_DANE_EE, USAGE_DANE_TA, USAGE_PKIX_EE,
    USAGE_PKIX_TA,
};
pub use verifier::{
    client_config, DaneMechanism, DaneOutcome, DaneVerifier, LeafCheck, OutcomeSlot, TlsaMismatch,
};

/// Why a DANE verifier or configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneError {
    /// The caller should not build a DANE verifier from an RRset without usable
    /// records (D5: that case is TLS without authentication).
    #[error("no usable TLSA record: DANE authentication is not possible")]
    NoUsableRecords,
    #[error("{name:?} is not a valid DNS host name")]
    InvalidName { name: String },
    #[error("cannot build the DANE TLS client configuration: {0}")]
    Config(String),
}

/// Host names compare in lower case without the root's final dot.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
