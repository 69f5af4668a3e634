//! Plain-language notices for the sender, in German and English (standards.md A4).
//!
//! When a recipient's server cannot carry a message at the level its risk class
//! needs, the gateway does not downgrade: after the class's grace period it bounces
//! or holds the message, and tells the sender why. The sender is usually not a
//! technician, so the notice names the server, says in one or two sentences what
//! is wrong with it ("certificate expired on …", "does not offer encryption",
//! "DANE record does not match"), and what the sender can do about it. The
//! technical details stay in the machine-readable part of the DSN and in the
//! evidence log.
//!
//! The facts come from [`Problem`], which the deliverer records per attempt; its
//! categories follow the TLS-RPT result types (RFC 8460 section 4.3), so the same
//! classification feeds the reports to the recipient domain.

use crate::spool::record::{now_secs, Problem, ProblemKind};

/// One explanation in both languages. Each is one paragraph of plain text (no
/// line breaks), ready to be wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub de: String,
    pub en: String,
}

/// What was wrong with the recipient's server `mx` (its host name; empty when
/// unknown), and what the sender can do.
pub fn explain(problem: &Problem, mx: &str) -> Explanation {
    let (de_srv, en_srv) = server(mx);
    let (de, en) = match problem.kind {
        ProblemKind::StarttlsNotSupported => (
            format!("{de_srv} bietet keine Verschlüsselung (STARTTLS) an; die Nachricht hätte ungeschützt übertragen werden müssen."),
            format!("{en_srv} does not offer encryption (STARTTLS); the message would have had to travel unprotected."),
        ),
        ProblemKind::CertificateExpired => match problem.date {
            // A date in the future: the certificate is not valid yet.
            Some(d) if d > now_secs() => (
                format!("Das Zertifikat {} ist erst ab dem {} gültig.", de_gen(mx), de_date(d)),
                format!("The certificate of {} is not valid before {}.", en_name(mx), en_date(d)),
            ),
            Some(d) => (
                format!("Das Zertifikat {} ist am {} abgelaufen.", de_gen(mx), de_date(d)),
                format!("The certificate of {} expired on {}.", en_name(mx), en_date(d)),
            ),
            None => (
                format!("Das Zertifikat {} ist abgelaufen.", de_gen(mx)),
                format!("The certificate of {} has expired.", en_name(mx)),
            ),
        },
        ProblemKind::CertificateNotTrusted => (
            format!("Das Zertifikat {} stammt nicht von einer anerkannten Zertifizierungsstelle; seine Echtheit lässt sich nicht prüfen.", de_gen(mx)),
            format!("The certificate of {} was not issued by a recognised certificate authority, so the server's identity cannot be checked.", en_name(mx)),
        ),
        ProblemKind::CertificateHostMismatch => (
            format!("Das Zertifikat {} ist auf einen anderen Namen ausgestellt.", de_gen(mx)),
            format!("The certificate of {} was issued for a different name.", en_name(mx)),
        ),
        ProblemKind::TlsaInvalid => (
            format!("Der DANE-Eintrag (TLSA) im DNS passt nicht zum Zertifikat {}. Das kann ein Konfigurationsfehler oder ein Angriff sein.", de_gen(mx)),
            format!("The DANE record (TLSA) in the DNS does not match the certificate of {}. This can be a configuration error or an attack.", en_name(mx)),
        ),
        ProblemKind::DnssecInvalid => (
            format!("Die DNS-Einträge für {} haben ungültige DNSSEC-Signaturen; sie könnten gefälscht sein.", de_acc(mx)),
            format!("The DNS records for {} carry invalid DNSSEC signatures; they may have been forged.", en_name(mx)),
        ),
        ProblemKind::DaneRequired => (
            format!("Für diesen Empfänger ist DANE vorgeschrieben, aber für {} gibt es keine gültigen DANE-Einträge (TLSA).", de_acc(mx)),
            format!("DANE is required for this recipient, but {} has no usable DANE records (TLSA).", en_name(mx)),
        ),
        ProblemKind::StsPolicyFetchError => (
            "Die MTA-STS-Richtlinie der Empfängerdomain konnte nicht abgerufen werden.".to_string(),
            "The recipient domain's MTA-STS policy could not be fetched.".to_string(),
        ),
        ProblemKind::StsPolicyInvalid => (
            "Die MTA-STS-Richtlinie der Empfängerdomain ist fehlerhaft.".to_string(),
            "The recipient domain's MTA-STS policy is invalid.".to_string(),
        ),
        ProblemKind::StsWebpkiInvalid => (
            "Das Zertifikat des Webservers, der die MTA-STS-Richtlinie der Empfängerdomain bereitstellt, ist ungültig.".to_string(),
            "The certificate of the web server that publishes the recipient domain's MTA-STS policy is invalid.".to_string(),
        ),
        ProblemKind::StsMxNotListed => (
            format!("{de_srv} steht nicht in der MTA-STS-Richtlinie der Empfängerdomain und ist damit für deren E-Mail nicht zugelassen."),
            format!("{en_srv} is not listed in the recipient domain's MTA-STS policy, so it is not authorised to receive its mail."),
        ),
        ProblemKind::NotAuthenticated => (
            format!("Die Echtheit {} lässt sich nicht sicher prüfen: die Empfängerdomain veröffentlicht weder DANE noch MTA-STS noch DNSSEC-signierte Einträge.", de_gen(mx)),
            format!("The identity of {} cannot be verified reliably: the recipient domain publishes neither DANE, nor MTA-STS, nor DNSSEC-signed records.", en_name(mx)),
        ),
        ProblemKind::TlsProfile => (
            format!("{de_srv} bietet nur veraltete oder zu schwache Verschlüsselung an (Verfahren oder Schlüssellänge unter den BSI-Vorgaben)."),
            format!("{en_srv} offers only outdated or too weak encryption (algorithms or key size below the BSI requirements)."),
        ),
        ProblemKind::HandshakeFailed => (
            format!("Der verschlüsselte Verbindungsaufbau zu {} ist fehlgeschlagen.", de_dat(mx)),
            format!("The encrypted connection to {} could not be established.", en_name(mx)),
        ),
        ProblemKind::RequireTlsNotSupported => (
            format!("Die Nachricht wurde mit REQUIRETLS verschickt (nur geprüft verschlüsselt zu übertragen), aber {} unterstützt REQUIRETLS nicht.", de_srv_lc(mx)),
            format!("The message was sent with REQUIRETLS (to travel only over verified encryption), but {} does not support REQUIRETLS.", en_name(mx)),
        ),
    };
    Explanation {
        de: format!("{de} {}", ADVICE.0),
        en: format!("{en} {}", ADVICE.1),
    }
}

/// The explanation when no problem was recorded: the level could not be reached,
/// for reasons the attempts did not narrow down (e.g. no server answered).
pub fn explain_unrecorded(mx: &str) -> Explanation {
    let (de, en) = if mx.trim().is_empty() {
        (
            "Der Mailserver des Empfängers konnte nicht mit der erforderlichen Sicherheit erreicht werden.".to_string(),
            "The recipient's mail server could not be reached with the required security.".to_string(),
        )
    } else {
        (
            format!(
                "{} konnte nicht mit der erforderlichen Sicherheit erreicht werden.",
                server(mx).0
            ),
            format!(
                "{} could not be reached with the required security.",
                server(mx).1
            ),
        )
    };
    Explanation {
        de: format!("{de} {}", ADVICE.0),
        en: format!("{en} {}", ADVICE.1),
    }
}

/// What a sender can do: the recipient's side has to fix its server; their own
/// administrator can check it and, if justified, set up an exception.
const ADVICE: (&str, &str) = (
    "Was Sie tun können: Bitten Sie die IT-Abteilung des Empfängers, das zu beheben, oder wenden Sie sich an Ihren Administrator.",
    "What you can do: ask the recipient's IT department to fix this, or contact your administrator.",
);

/// The host name as it may appear in the text: only host-name characters, at
/// most 253 of them (it comes from DNS, which an attacker may control).
fn host(mx: &str) -> String {
    mx.trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        .take(253)
        .collect()
}

/// "Der Mailserver X" / "The mail server X" as the subject of a sentence.
fn server(mx: &str) -> (String, String) {
    match host(mx) {
        h if h.is_empty() => (
            "Der Mailserver des Empfängers".into(),
            "The recipient's mail server".into(),
        ),
        h => (
            format!("Der Mailserver {h}"),
            format!("The mail server {h}"),
        ),
    }
}

fn de_srv_lc(mx: &str) -> String {
    match host(mx) {
        h if h.is_empty() => "der Mailserver des Empfängers".into(),
        h => format!("der Mailserver {h}"),
    }
}

/// Genitive: "des Servers X" / "des Mailservers des Empfängers".
fn de_gen(mx: &str) -> String {
    match host(mx) {
        h if h.is_empty() => "des Mailservers des Empfängers".into(),
        h => format!("des Servers {h}"),
    }
}

/// Accusative: "den Server X".
fn de_acc(mx: &str) -> String {
    match host(mx) {
        h if h.is_empty() => "den Mailserver des Empfängers".into(),
        h => format!("den Server {h}"),
    }
}

/// Dative: "dem Server X".
fn de_dat(mx: &str) -> String {
    match host(mx) {
        h if h.is_empty() => "dem Mailserver des Empfängers".into(),
        h => format!("dem Server {h}"),
    }
}

fn en_name(mx: &str) -> String {
    match host(mx) {
        h if h.is_empty() => "the recipient's mail server".into(),
        h => h,
    }
}

fn ymd(secs: u64) -> (i64, u32, u32) {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    crate::calendar::civil_from_days(secs.div_euclid(86_400))
}

/// "01.01.2021" (UTC).
pub(crate) fn de_date(secs: u64) -> String {
    let (y, m, d) = ymd(secs);
    format!("{d:02}.{m:02}.{y}")
}

/// "2021-01-01" (UTC, ISO 8601).
pub(crate) fn en_date(secs: u64) -> String {
    let (y, m, d) = ymd(secs);
    format!("{y}-{m:02}-{d:02}")
}

/// The German name of a risk class, for the notice.
pub(crate) fn de_class(class: crate::config::RiskClass) -> &'static str {
    use crate::config::RiskClass;
    match class {
        RiskClass::None => "keine",
        RiskClass::Normal => "normal",
        RiskClass::High => "hoch",
        RiskClass::Secret => "geheim",
    }
}

/// The German name of a level, for the notice.
pub(crate) fn de_level(level: crate::config::Level) -> &'static str {
    use crate::config::Level;
    match level {
        Level::May => "opportunistisch",
        Level::Encrypted => "verschlüsselt",
        Level::Trusted => "vertrauenswürdig",
        Level::Verified => "geprüft",
    }
}
