//! The configuration file: one TOML file a person reads and edits.
//!
//! Every key has a documented default (see `example.toml`, printed by
//! `qrelay config example`). Unknown keys are errors, so a typo never silently
//! turns a security setting off; `qrelay config check FILE` names the bad key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::tls::profile::{Profile, BSI_MIN_RSA_BITS};

/// The commented example configuration; every key with its default.
pub const EXAMPLE: &str = include_str!("example.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The transport level a message needs (standards.md section H).
///
/// Ordered from weakest to strongest; the per-destination `dane_only` rule
/// ([`DestinationConfig`]) comes on top of any level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// TLS when the peer offers it, plaintext otherwise (opportunistic).
    May,
    /// TLS >= 1.2 mandatory, peer not authenticated. Never plaintext.
    Encrypted,
    /// Additionally a PKIX chain to a trusted root and the MX host name in the certificate.
    Trusted,
    /// The MX is authenticated against DNS forgery (standards.md A3): DANE; PKIX on
    /// an MX allowed by an MTA-STS enforce policy; PKIX with a certificate name in
    /// the recipient domain; or PKIX on a DNSSEC-secure MX name.
    Verified,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::May => "may",
            Level::Encrypted => "encrypted",
            Level::Trusted => "trusted",
            Level::Verified => "verified",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub spool: SpoolConfig,
    pub dns: DnsConfig,
    pub tls: TlsConfig,
    pub delivery: DeliveryConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    /// MTA-STS (RFC 8461): policy discovery, fetch and cache.
    pub mta_sts: MtaStsConfig,
    /// Risk classes by name. Every message is `normal` for now.
    pub class: BTreeMap<String, ClassConfig>,
    /// Rules for particular recipient domains (`[[destination]]`).
    pub destination: Vec<DestinationConfig>,
}

/// A rule for one recipient domain, whatever the message's class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The recipient domain (exactly this domain, not its subdomains).
    pub domain: String,
    /// Deliver only to an MX host authenticated by DANE (standards.md D11, Postfix
    /// `dane-only`): a domain without usable TLSA records is deferred, never sent
    /// with a weaker check.
    #[serde(default)]
    pub dane_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Addresses the LAN-side SMTP listener binds to.
    pub listen: Vec<SocketAddr>,
    /// Name in the greeting, EHLO reply, Received header and DSNs. Empty: the system's host name.
    pub hostname: String,
    /// Clients in these networks may relay without authentication.
    pub relay_networks: Vec<IpNet>,
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most simultaneous inbound connections, in total and per client IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Longest command or message line accepted, in bytes including CRLF.
    pub max_line_length: usize,
    /// Idle time allowed while waiting for a command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Time allowed for the whole DATA phase.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Certificate chain and key (PEM) for inbound STARTTLS. Empty: a self-signed
    /// certificate is generated on first start and kept in `<spool.dir>/tls/`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Users who may relay from anywhere after SMTP AUTH (PLAIN/LOGIN, only over TLS).
    pub users: Vec<SmtpUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpUser {
    pub name: String,
    /// An argon2 PHC string (`qrelay config hash-password` makes one).
    pub password_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Data directory: spool, generated keys, control socket.
    pub dir: PathBuf,
    /// New mail is refused with 452 when less than this many bytes are free.
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Upstream resolvers (ip:port). Empty: the system's (/etc/resolv.conf).
    pub servers: Vec<SocketAddr>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// DNSSEC trust anchor: a file with root DS or DNSKEY lines in zone-file format.
    /// None: the IANA root KSKs built into qrelay.
    pub trust_anchor: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Extra PEM trust anchors for PKIX, added to the built-in (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// The least RSA key size (bits) the `bsi` TLS profile accepts from a server
    /// (TR-02102-2: 3000). Between 2048 and 8192.
    pub bsi_min_rsa_bits: u32,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            bsi_min_rsa_bits: BSI_MIN_RSA_BITS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// TCP port of recipient MX hosts (25; tests use their own).
    pub port: u16,
    /// Name we announce in EHLO. Empty: `smtp.hostname`.
    pub helo_name: String,
    /// Most simultaneous outbound transactions.
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Waits between attempts; the last one repeats until the queue lifetime ends.
    #[serde(with = "humantime_serde_vec")]
    pub retry_schedule: Vec<Duration>,
    /// A recipient still undelivered after this long is bounced.
    #[serde(with = "humantime_serde")]
    pub queue_lifetime: Duration,
    /// A delay DSN is sent once a recipient has waited this long (0 = never).
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The admin control socket. Empty: `<spool.dir>/control.sock`.
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "qrelay=debug".
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    /// Look up and apply recipient domains' MTA-STS policies.
    pub enabled: bool,
    /// TCP port of the policy hosts `mta-sts.<domain>` (443; tests use their own).
    pub port: u16,
    /// Time allowed for one whole policy fetch: connect, TLS, request and body.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Largest policy body accepted, in bytes (at most 65536, standards.md E2).
    pub max_policy_size: usize,
    /// How often the background task looks for cached policies to refresh.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// After a failed fetch, wait this long before fetching that domain's policy again.
    #[serde(with = "humantime_serde")]
    pub retry_after_failure: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The minimum transport level for messages of this class.
    pub level: Level,
    /// The TLS profile for outbound sessions (`bsi`, `modern`, `compat`). Not set:
    /// `compat` for level `may`, `modern` above. `compat` only for `may` (B7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_profile: Option<Profile>,
}

mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec!["127.0.0.1:2525".parse().expect("literal")],
            hostname: String::new(),
            relay_networks: vec!["127.0.0.0/8".parse().expect("literal")],
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 200,
            max_connections_per_ip: 50,
            max_line_length: 8192,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            tls_cert: None,
            tls_key: None,
            users: Vec::new(),
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("qrelay-data"),
            min_free_bytes: 200 * 1024 * 1024,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(10),
            trust_anchor: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let m = |mins: u64| Duration::from_secs(mins * 60);
        DeliveryConfig {
            port: 25,
            helo_name: String::new(),
            concurrency: 20,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            retry_schedule: vec![m(5), m(10), m(20), m(40), m(60), m(120), m(240)],
            queue_lifetime: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Duration::from_secs(4 * 3600),
        }
    }
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            port: 443,
            fetch_timeout: Duration::from_secs(60),
            max_policy_size: 64 * 1024,
            refresh_interval: Duration::from_secs(3600),
            retry_after_failure: Duration::from_secs(300),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut class = BTreeMap::new();
        class.insert(
            "normal".to_string(),
            ClassConfig {
                level: Level::Encrypted,
                tls_profile: None,
            },
        );
        Config {
            smtp: SmtpConfig::default(),
            spool: SpoolConfig::default(),
            dns: DnsConfig::default(),
            tls: TlsConfig::default(),
            delivery: DeliveryConfig::default(),
            control: ControlConfig::default(),
            log: LogConfig::default(),
            mta_sts: MtaStsConfig::default(),
            class,
            destination: Vec::new(),
        }
    }
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // A class table given in the file adds to the built-in classes rather than
        // replacing them, so `normal` always exists.
        cfg.class.entry("normal".into()).or_insert(ClassConfig {
            level: Level::Encrypted,
            tls_profile: None,
        });
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.smtp.listen.is_empty() {
            return Err(bad("smtp.listen", "at least one address is needed"));
        }
        if self.smtp.max_message_size < 1024 {
            return Err(bad("smtp.max_message_size", "must be at least 1024 bytes"));
        }
        if self.smtp.max_recipients == 0 {
            return Err(bad("smtp.max_recipients", "must be at least 1"));
        }
        if self.smtp.max_connections == 0 || self.smtp.max_connections_per_ip == 0 {
            return Err(bad("smtp.max_connections", "must be at least 1"));
        }
        if self.smtp.max_line_length < 1000 {
            return Err(bad(
                "smtp.max_line_length",
                "must be at least 1000 (RFC 5321 section 4.5.3.1.6)",
            ));
        }
        if self.smtp.tls_cert.is_some() != self.smtp.tls_key.is_some() {
            return Err(bad(
                "smtp.tls_cert",
                "tls_cert and tls_key must be given together",
            ));
        }
        for (i, u) in self.smtp.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(bad(&format!("smtp.users[{i}].name"), "must not be empty"));
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                return Err(bad(
                    &format!("smtp.users[{i}].password_hash"),
                    "not an argon2 PHC string (make one with `qrelay config hash-password`)",
                ));
            }
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(bad("spool.dir", "must not be empty"));
        }
        if self.delivery.concurrency == 0 {
            return Err(bad("delivery.concurrency", "must be at least 1"));
        }
        if self.delivery.retry_schedule.is_empty() {
            return Err(bad(
                "delivery.retry_schedule",
                "needs at least one interval",
            ));
        }
        if self.delivery.retry_schedule.iter().any(|d| d.is_zero()) {
            return Err(bad("delivery.retry_schedule", "intervals must be > 0"));
        }
        if self.delivery.queue_lifetime.is_zero() {
            return Err(bad("delivery.queue_lifetime", "must be > 0"));
        }
        if self.mta_sts.port == 0 {
            return Err(bad("mta_sts.port", "must not be 0"));
        }
        if self.mta_sts.fetch_timeout.is_zero() {
            return Err(bad("mta_sts.fetch_timeout", "must be > 0"));
        }
        if self.mta_sts.max_policy_size == 0 || self.mta_sts.max_policy_size > 64 * 1024 {
            return Err(bad(
                "mta_sts.max_policy_size",
                "must be between 1 and 65536 bytes (RFC 8461 section 3.3)",
            ));
        }
        if self.mta_sts.refresh_interval.is_zero() {
            return Err(bad("mta_sts.refresh_interval", "must be > 0"));
        }
        if !(2048..=8192).contains(&self.tls.bsi_min_rsa_bits) {
            return Err(bad(
                "tls.bsi_min_rsa_bits",
                "must be between 2048 and 8192 (TR-02102-2 recommends 3000)",
            ));
        }
        for (name, class) in &self.class {
            if let Some(profile) = class.tls_profile {
                if !profile.allowed_for(class.level) {
                    return Err(bad(
                        &format!("class.{name}.tls_profile"),
                        &format!(
                            "profile {profile} is weaker than modern and allowed only for level may, not {} (BSI TR-03108 B7)",
                            class.level
                        ),
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.destination.iter().enumerate() {
            let key = format!("destination[{i}].domain");
            let domain = d.domain.trim_end_matches('.');
            if domain.is_empty() || domain.contains('@') || domain.contains(char::is_whitespace) {
                return Err(bad(
                    &key,
                    "must be a domain name such as \"partner.example\"",
                ));
            }
            if !seen.insert(domain.to_ascii_lowercase()) {
                return Err(bad(&key, &format!("{domain} is listed twice")));
            }
        }
        if let Some(ca) = &self.tls.ca_file {
            if !ca.exists() {
                return Err(bad(
                    "tls.ca_file",
                    &format!("{} does not exist", ca.display()),
                ));
            }
        }
        Ok(())
    }

    /// The host name used in greetings, Received headers and DSNs.
    pub fn hostname(&self) -> String {
        if !self.smtp.hostname.is_empty() {
            return self.smtp.hostname.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    pub fn helo_name(&self) -> String {
        if self.delivery.helo_name.is_empty() {
            self.hostname()
        } else {
            self.delivery.helo_name.clone()
        }
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("control.sock"))
    }

    /// The TLS profile of a class: its `tls_profile`, else the default for its level.
    /// Unknown classes get the strictest profile any class uses (never silently
    /// weaker), like [`Config::class_level`].
    pub fn class_tls_profile(&self, class: &str) -> Profile {
        let of = |c: &ClassConfig| c.tls_profile.unwrap_or(Profile::default_for(c.level));
        match self.class.get(class) {
            Some(c) => of(c),
            None => self
                .class
                .values()
                .map(of)
                .max()
                .unwrap_or(Profile::Modern)
                .max(Profile::default_for(self.class_level(class))),
        }
    }

    /// The `[[destination]]` rule for a recipient domain, if any (case-insensitive,
    /// exact domain).
    pub fn destination(&self, domain: &str) -> Option<&DestinationConfig> {
        let domain = domain.trim_end_matches('.');
        self.destination
            .iter()
            .find(|d| d.domain.trim_end_matches('.').eq_ignore_ascii_case(domain))
    }

    /// Whether mail for `domain` may only go to DANE-authenticated hosts (D11).
    pub fn dane_only(&self, domain: &str) -> bool {
        self.destination(domain).is_some_and(|d| d.dane_only)
    }

    /// The level a class demands; unknown classes get the strictest configured one
    /// (never silently weaker).
    pub fn class_level(&self, class: &str) -> Level {
        match self.class.get(class) {
            Some(c) => c.level,
            None => self
                .class
                .values()
                .map(|c| c.level)
                .max()
                .unwrap_or(Level::Encrypted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_equals_defaults() {
        let cfg = Config::parse(EXAMPLE, Path::new("example.toml")).expect("example parses");
        let def = Config::default();
        assert_eq!(cfg.smtp.listen, def.smtp.listen);
        assert_eq!(cfg.smtp.relay_networks, def.smtp.relay_networks);
        assert_eq!(cfg.spool.dir, def.spool.dir);
        assert_eq!(cfg.delivery.retry_schedule, def.delivery.retry_schedule);
        assert_eq!(cfg.delivery.queue_lifetime, def.delivery.queue_lifetime);
        assert_eq!(cfg.smtp.max_message_size, def.smtp.max_message_size);
        assert_eq!(cfg.class_level("normal"), Level::Encrypted);
        assert_eq!(cfg.mta_sts.port, def.mta_sts.port);
        assert_eq!(cfg.mta_sts.fetch_timeout, def.mta_sts.fetch_timeout);
        assert_eq!(cfg.mta_sts.max_policy_size, def.mta_sts.max_policy_size);
        assert_eq!(cfg.mta_sts.refresh_interval, def.mta_sts.refresh_interval);
        assert_eq!(
            cfg.mta_sts.retry_after_failure,
            def.mta_sts.retry_after_failure
        );
    }

    #[test]
    fn mta_sts_limits_are_checked() {
        let err =
            Config::parse("[mta_sts]\nmax_policy_size = 70000\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("mta_sts.max_policy_size"), "{err}");
        let err = Config::parse("[mta_sts]\nfetch_timeout = \"0s\"\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("mta_sts.fetch_timeout"), "{err}");
        let cfg =
            Config::parse("[mta_sts]\nport = 8443\nenabled = false\n", Path::new("x")).unwrap();
        assert_eq!(cfg.mta_sts.port, 8443);
        assert!(!cfg.mta_sts.enabled);
    }

    #[test]
    fn b7_compat_profile_refused_for_levels_above_may() {
        for level in ["encrypted", "trusted"] {
            let text = format!("[class.normal]\nlevel = \"{level}\"\ntls_profile = \"compat\"\n");
            let err = Config::parse(&text, Path::new("x")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("class.normal.tls_profile"), "{msg}");
            assert!(msg.contains("compat"), "{msg}");
            assert!(msg.contains(level), "{msg}");
        }
        let cfg = Config::parse(
            "[class.none]\nlevel = \"may\"\ntls_profile = \"compat\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(cfg.class_tls_profile("none"), Profile::Compat);
        // bsi and modern are fine at every level, including may.
        for p in ["bsi", "modern"] {
            for level in ["may", "encrypted", "trusted"] {
                let text = format!("[class.x]\nlevel = \"{level}\"\ntls_profile = \"{p}\"\n");
                Config::parse(&text, Path::new("x")).unwrap();
            }
        }
    }

    #[test]
    fn tls_profiles_default_by_level_and_can_be_named() {
        let cfg = Config::parse("[class.none]\nlevel = \"may\"\n", Path::new("x")).unwrap();
        assert_eq!(cfg.class_tls_profile("none"), Profile::Compat);
        assert_eq!(cfg.class_tls_profile("normal"), Profile::Modern);
        // Unknown classes: the strictest profile in use, never weaker than modern
        // (their level is the strictest one, encrypted here).
        assert_eq!(cfg.class_tls_profile("unknown"), Profile::Modern);
        let cfg = Config::parse(
            "[tls]\nbsi_min_rsa_bits = 2048\n[class.normal]\nlevel = \"trusted\"\ntls_profile = \"bsi\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(cfg.class_tls_profile("normal"), Profile::Bsi);
        assert_eq!(cfg.class_tls_profile("unknown"), Profile::Bsi);
        assert_eq!(cfg.tls.bsi_min_rsa_bits, 2048);
        let example = Config::parse(EXAMPLE, Path::new("example.toml")).unwrap();
        assert_eq!(example.tls.bsi_min_rsa_bits, BSI_MIN_RSA_BITS);
        assert_eq!(example.class_tls_profile("normal"), Profile::Modern);
        assert!(EXAMPLE.contains("# tls_profile = \"bsi\""));
        let err = Config::parse("[tls]\nbsi_min_rsa_bits = 1024\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("tls.bsi_min_rsa_bits"), "{err}");
        let err = Config::parse(
            "[class.normal]\nlevel = \"encrypted\"\ntls_profile = \"tr03108\"\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tr03108"), "{err}");
    }

    #[test]
    fn empty_file_is_the_default() {
        let cfg = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(cfg.delivery.port, 25);
        assert_eq!(cfg.class_level("normal"), Level::Encrypted);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[smtp]\nlisen = []\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[delivery]\nretry_schedule = []\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("delivery.retry_schedule"), "{err}");
        let err =
            Config::parse("[class.normal]\nlevel = \"sometimes\"\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn issue_keys_parse() {
        let text = r#"
[smtp]
listen = ["127.0.0.1:2525"]
relay_networks = ["127.0.0.0/8"]
[spool]
dir = "qrelay-data"
[dns]
servers = ["127.0.10.54:53"]
[delivery]
port = 25
[class.normal]
level = "trusted"
"#;
        let cfg = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(cfg.dns.servers, vec!["127.0.10.54:53".parse().unwrap()]);
        assert_eq!(cfg.class_level("normal"), Level::Trusted);
        assert_eq!(cfg.class_level("unknown"), Level::Trusted);
    }

    #[test]
    fn h_level_verified_and_d11_dane_only_destinations() {
        let text = r#"
[class.normal]
level = "verified"

[[destination]]
domain = "Partner.Example"
dane_only = true

[[destination]]
domain = "other.example"
"#;
        let cfg = Config::parse(text, Path::new("t.toml")).expect("parses");
        assert_eq!(cfg.class_level("normal"), Level::Verified);
        assert!(Level::Verified > Level::Trusted);
        assert!(cfg.dane_only("partner.example"));
        assert!(cfg.dane_only("PARTNER.example."));
        assert!(!cfg.dane_only("other.example"));
        assert!(!cfg.dane_only("sub.partner.example"));
        let dup =
            "[[destination]]\ndomain = \"a.example\"\n[[destination]]\ndomain = \"A.example\"\n";
        let e = Config::parse(dup, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("destination[1].domain") && e.contains("twice"),
            "{e}"
        );
        let typo = "[[destination]]\ndomain = \"a.example\"\ndane-only = true\n";
        assert!(Config::parse(typo, Path::new("t.toml")).is_err());
    }
}
