//! What a recipient's delivery requires: the class that applies to it, the level
//! and TLS profile that class demands, and whether an exception lowers that level
//! (standards.md A1, A4, G3). Decided here, in one place, every time a recipient
//! is tried, so that a changed configuration (a new exception, an expired one, a
//! new partner rule) applies to mail already in the queue.

use std::time::SystemTime;

use crate::config::{Config, ExceptionConfig, Level, RiskClass};
use crate::spool::record::{domain_of, Envelope};
use crate::tls::profile::Profile;

/// The requirement for one recipient of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The message's class, raised by a recipient-domain rule when that is higher.
    pub class: RiskClass,
    /// Why the recipient-domain rule raised the class, if it did.
    pub raised_by: Option<String>,
    /// The level this delivery needs (the class's, or an exception's).
    pub level: Level,
    pub profile: Profile,
    /// The exception that lowered the level, if one did.
    pub exception: Option<ExceptionConfig>,
    /// `TLS-Required: No` (or a TLS-RPT report) applies: DANE and MTA-STS are not
    /// enforced and the level is `may`.
    pub tls_optional: bool,
}

impl Requirement {
    /// Recipients with equal requirements can share one SMTP transaction.
    pub fn key(&self) -> (Level, Profile, bool, Option<&str>) {
        (
            self.level,
            self.profile,
            self.tls_optional,
            self.exception.as_ref().map(|e| e.id.as_str()),
        )
    }
}

/// The requirement for `address`, a recipient of `env`, at time `now`.
pub fn requirement(cfg: &Config, env: &Envelope, address: &str, now: SystemTime) -> Requirement {
    let domain = domain_of(address);
    let mut class = env.class;
    let mut raised_by = None;
    // A1: a per-recipient-domain rule (e.g. a contract that requires `verified`)
    // raises the class for this recipient; it never lowers it.
    if let Some((rule, why)) = crate::classify::recipient_class(&cfg.classify, &domain) {
        if rule > class {
            raised_by = Some(why);
            class = rule;
        }
    }
    let mut level = cfg.class_level(class);
    let profile = cfg.class_tls_profile(class);

    // G3: `TLS-Required: No` only where the admin allows it (checked when the
    // message was accepted) and never for `high` or `secret`.
    let tls_optional = env.tls_optional && class <= RiskClass::Normal;
    if tls_optional {
        level = Level::May;
    }

    // A4: an exception lowers the level for its recipient while it is in force;
    // none lowers `secret`.
    let mut exception = None;
    if class < RiskClass::Secret && !tls_optional {
        if let Some(e) = cfg.exception_for(address, now) {
            if e.level < level {
                level = e.level;
                exception = Some(e.clone());
            }
        }
    }
    Requirement {
        class,
        raised_by,
        level,
        profile: if profile.allowed_for(level) {
            profile
        } else {
            Profile::default_for(level)
        },
        exception,
        tls_optional,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{ClientInfo, QueueId, Recipient, RECORD_VERSION};
    use std::path::Path;
    use std::time::Duration;

    fn env(class: RiskClass) -> Envelope {
        Envelope {
            record_version: RECORD_VERSION,
            id: QueueId::generate(),
            received_at: 0,
            sender: "a@lan.example".into(),
            ret: None,
            envid: None,
            body: Default::default(),
            smtputf8: false,
            requiretls: false,
            size: 1,
            class,
            class_reasons: vec![],
            tls_optional: false,
            expires_at: None,
            client: ClientInfo::default(),
            message_id: None,
            recipients: vec![Recipient::new("x@partner.example".into(), None, None, 0)],
        }
    }

    const EXCEPTIONS: &str = r#"
[classify]
recipient_domains = { "partner.example" = "high" }

[[exception]]
id = "broken-dane"
domain = "other.example"
level = "encrypted"
reason = "TLSA record of other.example broken, ticket 4711"
approver = "DPO"
created = "2026-01-01T00:00:00Z"
expires = "2026-02-01T00:00:00Z"

[[exception]]
id = "one-person"
address = "boss@partner.example"
level = "trusted"
reason = "contract partner, waiting for their DANE"
approver = "DPO"
created = "2026-01-01T00:00:00Z"
expires = "2026-02-01T00:00:00Z"
"#;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a1_recipient_domain_rule_raises_the_class() {
        let cfg = Config::parse(EXCEPTIONS, Path::new("t")).unwrap();
        let now = at("2025-06-01T00:00:00Z");
        let r = requirement(&cfg, &env(RiskClass::Normal), "x@Partner.Example", now);
        assert_eq!(r.class, RiskClass::High);
        assert_eq!(r.level, Level::Verified);
        assert!(r.raised_by.unwrap().contains("partner.example"));
        // Never lowered by it.
        let r = requirement(&cfg, &env(RiskClass::Secret), "x@partner.example", now);
        assert_eq!(r.class, RiskClass::Secret);
        assert!(r.raised_by.is_none());
    }

    #[test]
    fn a4_exception_lowers_only_while_in_force_and_never_secret() {
        let cfg = Config::parse(EXCEPTIONS, Path::new("t")).unwrap();
        let inside = at("2026-01-15T00:00:00Z");
        let r = requirement(&cfg, &env(RiskClass::High), "a@other.example", inside);
        assert_eq!(r.level, Level::Encrypted);
        assert_eq!(r.exception.as_ref().unwrap().id, "broken-dane");
        // Expired: the class's level again.
        let after = inside + Duration::from_secs(40 * 24 * 3600);
        let r = requirement(&cfg, &env(RiskClass::High), "a@other.example", after);
        assert_eq!(r.level, Level::Verified);
        assert!(r.exception.is_none());
        // Not yet in force.
        let before = at("2025-12-31T00:00:00Z");
        assert!(
            requirement(&cfg, &env(RiskClass::High), "a@other.example", before)
                .exception
                .is_none()
        );
        // Secret is never lowered.
        let r = requirement(&cfg, &env(RiskClass::Secret), "a@other.example", inside);
        assert_eq!(r.level, Level::Verified);
        assert!(r.exception.is_none());
        // An address exception covers that address only.
        let r = requirement(
            &cfg,
            &env(RiskClass::Normal),
            "boss@partner.example",
            inside,
        );
        assert_eq!((r.class, r.level), (RiskClass::High, Level::Trusted));
        let r = requirement(&cfg, &env(RiskClass::Normal), "x@partner.example", inside);
        assert_eq!(r.level, Level::Verified);
        // An exception never raises a level.
        let r = requirement(&cfg, &env(RiskClass::None), "a@other.example", inside);
        assert_eq!(r.level, Level::May);
        assert!(r.exception.is_none());
    }

    #[test]
    fn g3_tls_required_no_only_up_to_normal() {
        let cfg = Config::parse(EXCEPTIONS, Path::new("t")).unwrap();
        let now = at("2025-06-01T00:00:00Z");
        let mut e = env(RiskClass::Normal);
        e.tls_optional = true;
        let r = requirement(&cfg, &e, "a@elsewhere.example", now);
        assert!(r.tls_optional);
        assert_eq!(r.level, Level::May);
        // The partner rule makes it high: TLS-Required: No no longer applies.
        let r = requirement(&cfg, &e, "a@partner.example", now);
        assert!(!r.tls_optional);
        assert_eq!(r.level, Level::Verified);
        e.class = RiskClass::High;
        let r = requirement(&cfg, &e, "a@elsewhere.example", now);
        assert!(!r.tls_optional);
        assert_eq!(r.level, Level::Verified);
    }
}
