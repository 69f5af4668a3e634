//! Risk classes (standards.md A1): which class a message gets, and why.
//!
//! Every message gets one of `none < normal < high < secret` before it is delivered;
//! the class decides the minimum transport level (config `[class.*]`). A class can
//! come from several sources at once. Each source that applies gives a class and a
//! reason in plain language; **the highest class wins** and every reason is kept, so
//! the evidence log and `qrelay queue show` can say exactly why a message needed
//! what it needed. Only when no source applies does the message get
//! `classify.default`, with the reason `default class <name>`.
//!
//! The sources (config `[classify]`):
//! - **Sender rules** (`senders`): a key with `@` matches that address exactly; a key
//!   without `@` is a domain and matches senders in that domain *and its
//!   subdomains* (`firma.de` covers `legal.firma.de`), because that is what an admin
//!   who writes "mail from firma.de" means. All matching rules are reasons; a more
//!   specific rule does not hide a broader one, the highest class still wins.
//! - **A subject tag** (`subject_tags`, by default `[vertraulich]`, `[confidential]`,
//!   `[secure]`; case-insensitive). The tag is an instruction to the gateway, not part
//!   of the message: it is removed from the Subject before the message is sent on
//!   ([`scan_header`]).
//! - **Outlook's `Sensitivity:` header** (`sensitivity`; values such as `Private`,
//!   `Company-Confidential`, case-insensitive).
//! - **Microsoft Purview sensitivity labels** (`purview_labels`): Outlook writes
//!   the applied label into the `msip_labels` header as
//!   `MSIP_Label_<GUID>_Enabled=true; MSIP_Label_<GUID>_Name=Confidential; ...`.
//!   A label counts only when its `_Enabled=true`; it is matched by its name or its
//!   GUID (case-insensitive).
//! - **REQUIRETLS** (RFC 8689) from the submitting client (`requiretls`, default
//!   `high`). The REQUIRETLS delivery rules (G2) apply on top of the class.
//! - **Recipient-domain rules** (`recipient_domains`): a partner whose contract
//!   demands `high`. These are per recipient, not per message: the queue combines
//!   [`recipient_class`] with the message's class for each recipient.
//!
//! `TLS-Required: No` (RFC 8689 section 3) is found here too ([`HeaderFindings::
//! tls_required_no`]); whether it is honoured is the queue's decision (G3: only if
//! `honour_tls_required_no` allows it and never for `high`/`secret`).

mod header;
#[cfg(test)]
mod tests;

pub use header::scan_header;

use crate::config::{ClassifyConfig, RiskClass};

/// What the header section of a message says about its class, found by
/// [`scan_header`]. Each entry holds the text found (as a person would recognise
/// it) and the class the configuration gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFindings {
    /// The configured subject tag found in the Subject (the configured spelling),
    /// and its class. When several tags are present, the one with the highest class.
    pub subject_tag: Option<(String, RiskClass)>,
    /// The `Sensitivity:` value (as written in the message) and its class.
    pub sensitivity: Option<(String, RiskClass)>,
    /// Enabled Purview labels that have a class: the label name, or its GUID when
    /// the label has no name in the header or only the GUID is configured.
    pub purview: Vec<(String, RiskClass)>,
    /// The message carries `TLS-Required: No` (RFC 8689 section 3).
    pub tls_required_no: bool,
}

/// A message's risk class and the reasons for it, in plain language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: RiskClass,
    pub reasons: Vec<String>,
}

/// The class of a message from its sender, REQUIRETLS and what [`scan_header`]
/// found. The highest class of all sources that apply wins; without any, the
/// configured default.
pub fn classify(
    cfg: &ClassifyConfig,
    sender: &str,
    requiretls: bool,
    findings: &HeaderFindings,
) -> Classification {
    let mut found: Vec<(RiskClass, String)> = Vec::new();
    for (rule, class) in &cfg.senders {
        if sender_matches(rule, sender) {
            found.push((*class, format!("sender rule {} → {class}", rule.trim())));
        }
    }
    if let Some((tag, class)) = &findings.subject_tag {
        found.push((*class, format!("subject tag \"{tag}\" → {class}")));
    }
    if let Some((value, class)) = &findings.sensitivity {
        found.push((*class, format!("Sensitivity: {value} → {class}")));
    }
    for (label, class) in &findings.purview {
        found.push((*class, format!("Purview label \"{label}\" → {class}")));
    }
    if requiretls {
        let class = cfg.requiretls;
        found.push((
            class,
            format!("REQUIRETLS requested by the client → {class}"),
        ));
    }
    match found.iter().map(|(c, _)| *c).max() {
        Some(class) => Classification {
            class,
            reasons: found.into_iter().map(|(_, r)| r).collect(),
        },
        None => Classification {
            class: cfg.default,
            reasons: vec![format!("default class {}", cfg.default)],
        },
    }
}

/// The class a recipient domain demands at least (`classify.recipient_domains`),
/// with its reason. Exact domain, case-insensitive, a trailing dot ignored: unlike
/// sender rules, a partner contract names the domain mail goes to, and a subdomain
/// may well be another organisation's.
pub fn recipient_class(
    cfg: &ClassifyConfig,
    recipient_domain: &str,
) -> Option<(RiskClass, String)> {
    let domain = recipient_domain.trim().trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    cfg.recipient_domains
        .iter()
        .filter(|(rule, _)| {
            rule.trim()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(domain)
        })
        .max_by_key(|(_, class)| **class)
        .map(|(rule, class)| {
            let rule = rule.trim().trim_end_matches('.');
            (*class, format!("recipient domain rule {rule} → {class}"))
        })
}

/// Whether a sender rule covers `sender`: an address rule matches the address
/// (case-insensitive); a domain rule matches the sender's domain or a subdomain.
fn sender_matches(rule: &str, sender: &str) -> bool {
    let rule = rule.trim().trim_end_matches('.');
    let sender = sender.trim();
    if rule.is_empty() || sender.is_empty() {
        return false;
    }
    // "@firma.de" is written by some admins for the domain.
    let rule = rule.strip_prefix('@').unwrap_or(rule);
    if rule.contains('@') {
        return rule.eq_ignore_ascii_case(sender);
    }
    let Some((_, domain)) = sender.rsplit_once('@') else {
        return false;
    };
    let (domain, rule) = (domain.trim_end_matches('.').as_bytes(), rule.as_bytes());
    domain.eq_ignore_ascii_case(rule)
        || (domain.len() > rule.len()
            && domain[domain.len() - rule.len() - 1] == b'.'
            && domain[domain.len() - rule.len()..].eq_ignore_ascii_case(rule))
}
