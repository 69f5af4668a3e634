//! rustls configurations: the inbound server's (STARTTLS for the LAN) and the
//! outbound client's per transport level and TLS profile ([`profile`]: `bsi`,
//! `modern`, `compat`). Always the aws-lc-rs provider.

pub mod client;
pub mod peer_key;
pub mod profile;
pub mod server;

/// The negotiated parameters of a TLS session (either direction), named the way
/// logs, Received headers and delivery records show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// "TLSv1.2" / "TLSv1.3".
    pub version: String,
    /// The suite as rustls names it, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The key-exchange group, e.g. "X25519MLKEM768", "secp384r1".
    pub group: Option<String>,
}

impl Negotiated {
    pub fn of(conn: &rustls::CommonState) -> Negotiated {
        Negotiated {
            version: conn
                .protocol_version()
                .map(version_name)
                .unwrap_or_else(|| "unknown".into()),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_else(|| "unknown".into()),
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
        }
    }

    /// The short form kept in `ClientInfo.tls`, e.g. "TLSv1.3 TLS13_AES_256_GCM_SHA384".
    pub fn summary(&self) -> String {
        format!("{} {}", self.version, self.cipher)
    }
}

pub fn version_name(v: rustls::ProtocolVersion) -> String {
    use rustls::ProtocolVersion;
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        ProtocolVersion::TLSv1_0 => "TLSv1.0".into(),
        other => format!("{other:?}"),
    }
}
