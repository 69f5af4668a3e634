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
    #[serde(deserialize_with = "deserialize_classes")]
    /// The risk classes (standards.md A1): `none`, `normal`, `high`, `secret`, each
    /// with its level, TLS profile, grace period and action. A class not given
    /// here keeps its built-in defaults ([`RiskClass::default_config`]).
    pub class: BTreeMap<RiskClass, ClassConfig>,
    /// How a message gets its class (`[classify]`).
    pub classify: ClassifyConfig,
    /// Rules for particular recipient domains (`[[destination]]`).
    pub destination: Vec<DestinationConfig>,
    /// Explicit, audited exceptions (`[[exception]]`, standards.md A4).
    pub exception: Vec<ExceptionConfig>,
    /// The tamper-evident evidence log (`[evidence]`, standards.md A5).
    pub evidence: EvidenceConfig,
    /// TLS-RPT reports to recipient domains (`[tls_rpt]`, RFC 8460).
    pub tls_rpt: TlsRptConfig,
    /// The appliance around the relay (`[system]`).
    pub system: SystemConfig,
}

/// The appliance around the relay: clock and boot loader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemConfig {
    /// Defer deliveries that check certificates (levels `trusted` and `verified`)
    /// while the system clock is not synchronised (systemd-timesyncd has not yet
    /// created `/run/systemd/timesync/synchronized`): a box that booted with a
    /// wrong clock would otherwise judge certificate validity wrongly. On for the
    /// appliance; off by default for a relay on a general-purpose host.
    pub require_time_sync: bool,
    /// The GRUB environment block on the EFI system partition, where
    /// `qrelay system factory-reset` sets the flag for the next boot.
    pub grubenv: PathBuf,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            require_time_sync: false,
            grubenv: PathBuf::from("/boot/efi/EFI/BOOT/grubenv"),
        }
    }
}

/// A risk class (standards.md A1), ordered from the least to the most protection:
/// when several sources give a message a class, the highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskClass {
    /// Nothing personal: opportunistic TLS is enough.
    None,
    /// Personal data: obligatory transport encryption (A2).
    Normal,
    /// Personal data with a high risk: qualified transport encryption (A3).
    High,
    /// Professional secrecy (§203 StGB): qualified transport encryption plus
    /// content encryption (the fallback container, a later release).
    Secret,
}

impl RiskClass {
    pub const ALL: [RiskClass; 4] = [
        RiskClass::None,
        RiskClass::Normal,
        RiskClass::High,
        RiskClass::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::None => "none",
            RiskClass::Normal => "normal",
            RiskClass::High => "high",
            RiskClass::Secret => "secret",
        }
    }

    /// Parse a class name as written in the configuration or a spool record.
    pub fn parse(s: &str) -> Option<RiskClass> {
        RiskClass::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The built-in settings of a class (standards.md A1-A4).
    pub fn default_config(self) -> ClassConfig {
        let (level, grace) = match self {
            RiskClass::None => (Level::May, None),
            RiskClass::Normal => (Level::Encrypted, None),
            RiskClass::High | RiskClass::Secret => {
                (Level::Verified, Some(Duration::from_secs(3600)))
            }
        };
        ClassConfig {
            level,
            tls_profile: None,
            grace,
            action: LevelAction::Bounce,
        }
    }
}

impl std::fmt::Display for RiskClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a message whose level could not be met when its class's grace
/// period is over (standards.md A4). The sender is told in plain language either
/// way. The fallback issue adds the encrypted-PDF container as a third action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LevelAction {
    /// Return the message to its sender with the reason (a failure DSN).
    #[default]
    Bounce,
    /// Keep the message, stop retrying, and tell the sender; an admin releases
    /// (`qrelay queue release`) or deletes it.
    Hold,
}

impl LevelAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LevelAction::Bounce => "bounce",
            LevelAction::Hold => "hold",
        }
    }
}

/// How a message gets its risk class (`[classify]`). Every source that applies
/// gives a class; the highest wins, and each reason is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// The class of a message no rule matches.
    pub default: RiskClass,
    /// Subject tags (case-insensitive) and their classes. The tag is removed from
    /// the Subject before the message is sent on.
    pub subject_tags: BTreeMap<String, RiskClass>,
    /// Values of Outlook's `Sensitivity:` header (case-insensitive) and their classes.
    pub sensitivity: BTreeMap<String, RiskClass>,
    /// Microsoft Purview sensitivity labels (the label name, or its GUID, from the
    /// `msip_labels` header) and their classes.
    pub purview_labels: BTreeMap<String, RiskClass>,
    /// Senders (`user@domain`) or sender domains (`domain`) and their classes.
    pub senders: BTreeMap<String, RiskClass>,
    /// Recipient domains and the class mail to them needs at least (e.g. a partner
    /// whose contract requires `verified`).
    pub recipient_domains: BTreeMap<String, RiskClass>,
    /// The class of a message submitted with REQUIRETLS (RFC 8689). The REQUIRETLS
    /// rules of G2 apply to it on top of the class.
    pub requiretls: RiskClass,
    /// Honour a `TLS-Required: No` header (RFC 8689 section 3: deliver even without
    /// TLS, ignoring DANE and MTA-STS) for messages of class `none` and `normal`.
    /// Never for `high` or `secret` (G3).
    pub honour_tls_required_no: bool,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        let tags = ["[vertraulich]", "[confidential]", "[secure]"]
            .into_iter()
            .map(|t| (t.to_string(), RiskClass::High))
            .collect();
        let sensitivity = [
            ("private", RiskClass::High),
            ("company-confidential", RiskClass::High),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ClassifyConfig {
            default: RiskClass::Normal,
            subject_tags: tags,
            sensitivity,
            purview_labels: BTreeMap::new(),
            senders: BTreeMap::new(),
            recipient_domains: BTreeMap::new(),
            requiretls: RiskClass::High,
            honour_tls_required_no: false,
        }
    }
}

/// An explicit exception (standards.md A4): mail to a recipient domain or address
/// may go with a lower level than its class requires, for a while, because someone
/// accountable said so. Every use is recorded in the evidence log. No exception
/// lowers `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// A short name that identifies the exception in logs and evidence.
    pub id: String,
    /// The recipient domain (exactly) the exception is for; or `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The recipient address the exception is for; or `domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The level mail to the recipient needs while the exception holds.
    pub level: Level,
    /// Why (e.g. "partner's DANE record broken, ticket 4711").
    pub reason: String,
    /// Who approved it.
    pub approver: String,
    /// When it was made (RFC 3339, e.g. "2026-11-22T10:00:00Z").
    #[serde(with = "rfc3339")]
    pub created: std::time::SystemTime,
    /// When it ends (RFC 3339); an expired exception no longer applies.
    #[serde(with = "rfc3339")]
    pub expires: std::time::SystemTime,
}

impl ExceptionConfig {
    /// Whether the exception covers this recipient address (domain exact,
    /// address case-insensitive).
    pub fn covers(&self, address: &str) -> bool {
        if let Some(a) = &self.address {
            return a.eq_ignore_ascii_case(address);
        }
        if let Some(d) = &self.domain {
            let rd = crate::spool::record::domain_of(address);
            return d.trim_end_matches('.').eq_ignore_ascii_case(&rd);
        }
        false
    }

    pub fn in_force(&self, now: std::time::SystemTime) -> bool {
        self.created <= now && now < self.expires
    }
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(raw.trim_end_matches('Z'))
            .or_else(|_| humantime::parse_rfc3339(&raw))
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{raw:?}: {e} (want e.g. \"2026-11-22T10:00:00Z\")"
                ))
            })
    }
}

/// The evidence log (standards.md A5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    /// How often the head of the hash chain is signed with the device key (and at
    /// shutdown). Records appended since the last signature are covered by the next.
    #[serde(with = "humantime_serde")]
    pub sign_interval: Duration,
    /// Add `X-Qrelay-Transport: verified dane-ee TLSv1.3 ...` to delivered messages.
    pub transport_header: bool,
    /// Put this mark in front of the Subject of messages delivered at level
    /// `verified` (e.g. "🔒 "); empty: no mark.
    pub subject_mark: String,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        EvidenceConfig {
            sign_interval: Duration::from_secs(60),
            transport_header: false,
            subject_mark: String::new(),
        }
    }
}

/// TLS-RPT (RFC 8460): daily reports to domains that publish `_smtp._tls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRptConfig {
    /// Collect results and send reports (standards.md B4).
    pub enabled: bool,
    /// `organization-name` in reports. Empty: the host name.
    pub organization_name: String,
    /// `contact-info` in reports, and the sender of report mails. Empty:
    /// `postmaster@<host name>`.
    pub contact: String,
    /// TCP port for `https:` report URIs (443; tests use their own).
    pub https_port: u16,
    /// How long a report that could not be delivered is retried (RFC 8460: 24h).
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: true,
            organization_name: String::new(),
            contact: String::new(),
            https_port: 443,
            retry_for: Duration::from_secs(24 * 3600),
        }
    }
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassConfig {
    /// The minimum transport level for messages of this class.
    pub level: Level,
    /// The TLS profile for outbound sessions (`bsi`, `modern`, `compat`). Not set:
    /// `compat` for level `may`, `modern` above. `compat` only for `may` (B7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_profile: Option<Profile>,
    /// How long a message whose level cannot be met is retried before `action`
    /// (A4). None: until the queue lifetime ends.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
    /// What happens when the grace period is over.
    pub action: LevelAction,
}

/// A `[class.X]` table as written: every key optional, the rest from the class's
/// built-in defaults (so `[class.high] grace = "2h"` keeps level `verified`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassTable {
    level: Option<Level>,
    tls_profile: Option<Profile>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    action: Option<LevelAction>,
}

fn deserialize_classes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<RiskClass, ClassConfig>, D::Error> {
    let tables = BTreeMap::<RiskClass, ClassTable>::deserialize(d)?;
    let mut out = default_classes();
    for (class, t) in tables {
        let mut c = class.default_config();
        if let Some(level) = t.level {
            c.level = level;
        }
        c.tls_profile = t.tls_profile;
        if t.grace.is_some() {
            c.grace = t.grace.filter(|g| !g.is_zero());
        }
        if let Some(a) = t.action {
            c.action = a;
        }
        out.insert(class, c);
    }
    Ok(out)
}

fn default_classes() -> BTreeMap<RiskClass, ClassConfig> {
    RiskClass::ALL
        .into_iter()
        .map(|c| (c, c.default_config()))
        .collect()
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
        Config {
            smtp: SmtpConfig::default(),
            spool: SpoolConfig::default(),
            dns: DnsConfig::default(),
            tls: TlsConfig::default(),
            delivery: DeliveryConfig::default(),
            control: ControlConfig::default(),
            log: LogConfig::default(),
            mta_sts: MtaStsConfig::default(),
            class: default_classes(),
            classify: ClassifyConfig::default(),
            destination: Vec::new(),
            exception: Vec::new(),
            evidence: EvidenceConfig::default(),
            tls_rpt: TlsRptConfig::default(),
            system: SystemConfig::default(),
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
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
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
        for tag in self.classify.subject_tags.keys() {
            if tag.trim().is_empty() {
                return Err(bad("classify.subject_tags", "a tag must not be empty"));
            }
        }
        for domain in self.classify.recipient_domains.keys() {
            if domain.contains('@') || domain.trim().is_empty() {
                return Err(bad(
                    "classify.recipient_domains",
                    &format!("{domain:?} is not a domain name"),
                ));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, e) in self.exception.iter().enumerate() {
            let key = |k: &str| format!("exception[{i}].{k}");
            if e.id.trim().is_empty() {
                return Err(bad(&key("id"), "must not be empty"));
            }
            if !ids.insert(e.id.clone()) {
                return Err(bad(&key("id"), &format!("{} is used twice", e.id)));
            }
            if e.domain.is_some() == e.address.is_some() {
                return Err(bad(&key("domain"), "give exactly one of domain or address"));
            }
            if e.address.as_deref().is_some_and(|a| !a.contains('@')) {
                return Err(bad(&key("address"), "must be an address user@domain"));
            }
            if e.reason.trim().is_empty() {
                return Err(bad(&key("reason"), "an exception needs a reason (A4)"));
            }
            if e.approver.trim().is_empty() {
                return Err(bad(&key("approver"), "an exception needs an approver (A4)"));
            }
            if e.expires <= e.created {
                return Err(bad(&key("expires"), "must be after created"));
            }
        }
        if self.evidence.sign_interval.is_zero() {
            return Err(bad("evidence.sign_interval", "must be > 0"));
        }
        if self.tls_rpt.https_port == 0 {
            return Err(bad("tls_rpt.https_port", "must not be 0"));
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

    /// Settings that are valid but fall short of the DSK guidance (A2, A3), or
    /// exceptions that no longer apply: said by `qrelay config check` and logged at
    /// start. The levels are the admin's to choose; the shortfall is said plainly.
    pub fn warnings(&self, now: std::time::SystemTime) -> Vec<String> {
        let mut out = Vec::new();
        for (name, class) in &self.class {
            let least = match name {
                RiskClass::None => Level::May,
                RiskClass::Normal => Level::Encrypted,
                RiskClass::High | RiskClass::Secret => Level::Verified,
            };
            if class.level < least {
                out.push(format!(
                    "class {name} has level {}, below the {least} the DSK guidance asks for (standards.md A2/A3)",
                    class.level
                ));
            }
        }
        for e in &self.exception {
            if now >= e.expires {
                out.push(format!(
                    "exception {} expired on {} and no longer applies",
                    e.id,
                    humantime::format_rfc3339_seconds(e.expires)
                ));
            }
        }
        out
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

    /// The settings of a class (its table, or the built-in defaults).
    pub fn class_config(&self, class: RiskClass) -> ClassConfig {
        self.class
            .get(&class)
            .cloned()
            .unwrap_or_else(|| class.default_config())
    }

    /// The TLS profile of a class: its `tls_profile`, else the default for its level.
    pub fn class_tls_profile(&self, class: RiskClass) -> Profile {
        let c = self.class_config(class);
        c.tls_profile.unwrap_or(Profile::default_for(c.level))
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

    /// The level a class demands.
    pub fn class_level(&self, class: RiskClass) -> Level {
        self.class_config(class).level
    }

    /// The exceptions in force now that cover `address`, most recent first.
    pub fn exception_for(
        &self,
        address: &str,
        now: std::time::SystemTime,
    ) -> Option<&ExceptionConfig> {
        self.exception
            .iter()
            .filter(|e| e.in_force(now) && e.covers(address))
            .max_by_key(|e| e.created)
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
        assert_eq!(cfg.class_level(RiskClass::Normal), Level::Encrypted);
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
        assert_eq!(cfg.class_tls_profile(RiskClass::None), Profile::Compat);
        // bsi and modern are fine at every level, including may.
        for p in ["bsi", "modern"] {
            for level in ["may", "encrypted", "trusted"] {
                let text = format!("[class.none]\nlevel = \"{level}\"\ntls_profile = \"{p}\"\n");
                Config::parse(&text, Path::new("x")).unwrap();
            }
        }
    }

    #[test]
    fn tls_profiles_default_by_level_and_can_be_named() {
        let cfg = Config::parse("[class.none]\nlevel = \"may\"\n", Path::new("x")).unwrap();
        assert_eq!(cfg.class_tls_profile(RiskClass::None), Profile::Compat);
        assert_eq!(cfg.class_tls_profile(RiskClass::Normal), Profile::Modern);
        assert_eq!(cfg.class_tls_profile(RiskClass::High), Profile::Modern);
        let cfg = Config::parse(
            "[tls]\nbsi_min_rsa_bits = 2048\n[class.normal]\nlevel = \"trusted\"\ntls_profile = \"bsi\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(cfg.class_tls_profile(RiskClass::Normal), Profile::Bsi);
        assert_eq!(cfg.tls.bsi_min_rsa_bits, 2048);
        let example = Config::parse(EXAMPLE, Path::new("example.toml")).unwrap();
        assert_eq!(example.tls.bsi_min_rsa_bits, BSI_MIN_RSA_BITS);
        assert_eq!(
            example.class_tls_profile(RiskClass::Normal),
            Profile::Modern
        );
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
        assert_eq!(cfg.class_level(RiskClass::Normal), Level::Encrypted);
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
        assert_eq!(cfg.class_level(RiskClass::Normal), Level::Trusted);
        assert_eq!(cfg.class_level(RiskClass::High), Level::Verified);
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
        assert_eq!(cfg.class_level(RiskClass::Normal), Level::Verified);
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

    #[test]
    fn a1_a4_classes_exceptions_and_warnings() {
        let text = r#"
[class.normal]
level = "may"
[class.high]
grace = "2h"
action = "hold"

[[exception]]
id = "old"
domain = "partner.example"
level = "encrypted"
reason = "ticket 1"
approver = "DPO"
created = "2020-01-01T00:00:00Z"
expires = "2020-02-01T00:00:00Z"
"#;
        let cfg = Config::parse(text, Path::new("t")).unwrap();
        // A table keeps the built-in defaults of the keys it does not set.
        let high = cfg.class_config(RiskClass::High);
        assert_eq!(high.level, Level::Verified);
        assert_eq!(high.grace, Some(Duration::from_secs(7200)));
        assert_eq!(high.action, LevelAction::Hold);
        assert_eq!(cfg.class_level(RiskClass::Secret), Level::Verified);
        assert_eq!(cfg.class_level(RiskClass::None), Level::May);
        let w = cfg.warnings(std::time::SystemTime::now()).join("\n");
        assert!(w.contains("class normal has level may"), "{w}");
        assert!(w.contains("exception old expired"), "{w}");
        let clean = Config::parse("", Path::new("t")).unwrap();
        assert!(clean.warnings(std::time::SystemTime::now()).is_empty());
        // Exceptions must say why, who and for whom.
        for (bad, key) in [("reason = \"\"", "reason"), ("approver = \"\"", "approver")] {
            let t = text.replace(
                if key == "reason" {
                    "reason = \"ticket 1\""
                } else {
                    "approver = \"DPO\""
                },
                bad,
            );
            let e = Config::parse(&t, Path::new("t")).unwrap_err().to_string();
            assert!(e.contains(&format!("exception[0].{key}")), "{e}");
        }
        let t = text.replace("domain = \"partner.example\"", "");
        let e = Config::parse(&t, Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("exactly one of domain or address"), "{e}");
        let t = text.replace(
            "expires = \"2020-02-01T00:00:00Z\"",
            "expires = \"2019-02-01T00:00:00Z\"",
        );
        assert!(Config::parse(&t, Path::new("t")).is_err());
        let e = Config::parse("[class.urgent]\nlevel = \"may\"\n", Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("urgent"), "{e}");
    }
}
