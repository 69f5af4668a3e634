//! Harness for qrelay's system tests: real, independent peers on loopback.
//!
//! - [`Infra::get`] starts (or reuses) Knot DNS on 127.0.10.54:53, the receiving
//!   Postfix MX instances on 127.0.20.1-4:25 and the LAN's sending Postfix on
//!   127.0.30.1:25, plus a test CA. See `infra.rs` for the zones and addresses.
//! - [`Relay::start`] runs the `qrelay` daemon with a test config.
//! - [`smtp`] is a small SMTP client; [`relay::swaks`] drives swaks.
//! - [`Mailbox`] reads what a Postfix MX delivered.

pub mod infra;
pub mod json;
pub mod mailbox;
pub mod peer;
pub mod relay;
pub mod scenario;
pub mod smtp;
pub mod vm;

pub use infra::{Infra, Mx};
pub use mailbox::{Mailbox, Message};
pub use relay::{level, swaks, token, Relay};
pub use smtp::{build_message, send_mail, SmtpClient};

use std::time::{Duration, Instant};

/// Poll `f` every 200 ms until it returns `Some`, or fail after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A self-signed P-256 certificate for `name` (CN and subjectAltName, 30 days) made
/// with the openssl command, as an admin would make one: `cert` and `key` in PEM.
pub fn openssl_self_signed(
    name: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
