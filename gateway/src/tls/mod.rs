//! rustls configurations: the inbound server's (STARTTLS for the LAN) and the
//! outbound client's per transport level. Always the aws-lc-rs provider.

pub mod client;
pub mod server;
