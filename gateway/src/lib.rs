//! qrelay: the firmware of a mail gateway that delivers outgoing mail only with the
//! transport protection each message needs, and can prove how every message left.
//!
//! One module per concern, named for its one job (like Postfix's programs):
//! - [`config`]: the TOML configuration file.
//! - [`smtp`]: the inbound SMTP server for the LAN (Postfix: smtpd).
//! - [`spool`]: the durable queue on disk.
//! - [`queue`]: the scheduler: retries, expiry, DSN triggers (Postfix: qmgr).
//! - [`deliver`]: one outbound SMTP transaction (Postfix: smtp).
//! - [`dns`]: MX and address lookups.
//! - [`dane`]: DANE for SMTP: TLSA records, the per-connection verifier (RFC 7672).
//! - [`tls`]: rustls configurations for the inbound server and outbound client.
//! - [`mtasts`]: MTA-STS (RFC 8461): recipient domains' HTTPS-published MX policies, cached.
//! - [`policy`]: what transport a recipient gets, decided in one place.
//! - [`classify`]: a message's risk class (DSK guidance) from its sender, header
//!   marks and REQUIRETLS; the recipient-domain rules.
//! - [`evidence`]: the tamper-evident, signed log of every delivery attempt.
//! - [`tlsrpt`]: TLS-RPT (RFC 8460): daily reports to recipient domains.
//! - [`check`]: `qrelay check DOMAIN`, the delivery session without the message.
//! - [`bounce`]: delivery status notifications (Postfix: bounce), with the
//!   plain-language German/English notices.
//! - [`control`]: the admin control socket and its protocol.
//! - [`system`]: systemd notification, privileges.

pub mod bounce;
pub mod calendar;
pub mod check;
pub mod classify;
pub mod config;
pub mod control;
pub mod dane;
pub mod deliver;
pub mod dns;
pub mod evidence;
pub mod mtasts;
mod net;
pub mod policy;
pub mod queue;
pub mod smtp;
pub mod spool;
pub mod system;
pub mod tls;
pub mod tlsrpt;

#[cfg(test)]
mod testutil;
