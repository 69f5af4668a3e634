//! What kind of problem kept a host from carrying a message at its level: the
//! category behind [`super::plan`]'s and [`super::decide`]'s plain-language reason.
//!
//! The reason text says everything to an admin; the category is what the sender's
//! notice explains in German and English ([`crate::bounce::notice`]) and what
//! TLS-RPT counts (RFC 8460 result types, [`ProblemKind::rpt_result_type`]). It is
//! derived here from the same facts the decision used, in the same order of rules,
//! so that the two never disagree about *which* rule stopped the host.

use super::{Action, Decision, HostFacts, Inputs, Plan, TlsOutcome};
use crate::dns::Security;
use crate::spool::record::ProblemKind;
use crate::tls::client::TlsFailure;

/// The category of a [`Plan::SkipHost`] or [`Plan::DeferDomain`]; `None` when the
/// plan connects.
pub fn of_plan(f: &HostFacts<'_>, plan: &Plan) -> Option<ProblemKind> {
    if matches!(plan, Plan::Connect { .. }) {
        return None;
    }
    let forged = |s: Security| matches!(s, Security::Bogus | Security::Indeterminate);
    Some(if forged(f.mx_security) || forged(f.address_security) {
        // D1: a bogus or unvalidatable MX or address answer.
        ProblemKind::DnssecInvalid
    } else if matches!(f.dane, crate::dane::DaneRequirement::SkipHost { .. }) {
        // D4: the TLSA lookup of a secure host failed validation or timed out.
        ProblemKind::DnssecInvalid
    } else if f.dane_only && !f.dane.authentication_required() {
        // D11.
        ProblemKind::DaneRequired
    } else {
        // E5: the enforce policy does not list the host.
        ProblemKind::StsMxNotListed
    })
}

/// The category of a decision that does not send; `None` for [`Action::Send`] and
/// the `may` plaintext retry.
pub fn of_decision(inputs: &Inputs<'_>, decision: &Decision) -> Option<ProblemKind> {
    match decision.action {
        Action::Send | Action::RetryPlaintext { .. } => return None,
        Action::SkipHost { .. } | Action::DeferDomain { .. } => {}
    }
    let f = &inputs.facts;
    let plan = super::plan(f);
    if let Some(kind) = of_plan(f, &plan) {
        return Some(kind);
    }
    let dane = f.dane.authentication_required();
    Some(match &inputs.tls {
        TlsOutcome::NotAttempted => ProblemKind::StarttlsNotSupported,
        TlsOutcome::Failed(e) | TlsOutcome::PlaintextRetry(e) if e.is_profile_failure() => {
            ProblemKind::TlsProfile
        }
        // B3, D6: the DANE verifier refused the chain (or TLS failed on a DANE host).
        TlsOutcome::Failed(_) | TlsOutcome::PlaintextRetry(_) if dane => ProblemKind::TlsaInvalid,
        TlsOutcome::Failed(e) | TlsOutcome::PlaintextRetry(e) => of_tls_failure(e),
        TlsOutcome::Established(e) if !matches!(e.version.as_str(), "TLSv1.2" | "TLSv1.3") => {
            ProblemKind::TlsProfile
        }
        TlsOutcome::Established(e) if dane && e.dane.is_none() => ProblemKind::TlsaInvalid,
        // The certificate itself failed PKIX: say why (expired, unknown CA, name).
        TlsOutcome::Established(e) => match &e.pkix {
            Err(x) => of_tls_failure(x),
            // PKIX is fine, but nothing authenticates the MX name (level verified).
            Ok(()) => ProblemKind::NotAuthenticated,
        },
    })
}

/// The category of a TLS failure.
pub fn of_tls_failure(e: &TlsFailure) -> ProblemKind {
    match e {
        TlsFailure::Expired => ProblemKind::CertificateExpired,
        TlsFailure::NotTrusted => ProblemKind::CertificateNotTrusted,
        TlsFailure::NameMismatch => ProblemKind::CertificateHostMismatch,
        TlsFailure::Profile(_)
        | TlsFailure::NoCommonParameters { .. }
        | TlsFailure::OutsideProfile { .. } => ProblemKind::TlsProfile,
        TlsFailure::BadSignature | TlsFailure::Other(_) => ProblemKind::HandshakeFailed,
    }
}
