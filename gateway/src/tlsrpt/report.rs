//! The aggregate and the report document (RFC 8460 section 4, standards.md F2).
//!
//! A report covers one policy domain and one period (a UTC day). It lists each
//! policy that applied (`policy-type` `tlsa`, `sts` or `no-policy-found`, with the
//! policy text and MX patterns) with the number of successful and failed sessions,
//! and the failures grouped by result type, sending and receiving address and MX
//! host. The in-memory aggregate uses the report's own structures, so what is
//! persisted in `<spool>/tlsrpt/<day>.json` reads like the report it becomes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::{PolicyApplied, SessionResult};

/// Distinct `failure-details` entries kept per policy; further failures are
/// still counted in the summary. Bounds memory when a domain fails in many ways
/// (many MX addresses, varying messages).
pub const MAX_FAILURE_DETAILS: usize = 100;
/// Distinct policies kept per domain and day (a TLSA RRset per MX host, a new
/// MTA-STS policy after a change).
pub const MAX_POLICIES: usize = 50;

/// The report document, field names as in RFC 8460 section 4.4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    /// RFC 3339, UTC: `2025-03-01T00:00:00Z`.
    pub start_datetime: String,
    pub end_datetime: String,
}

/// One applied policy with its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: PolicyDesc,
    pub summary: Summary,
    #[serde(default)]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyDesc {
    /// `tlsa`, `sts` or `no-policy-found`.
    pub policy_type: String,
    /// The TLSA records ("3 1 1 ab..") or the MTA-STS policy lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    /// MTA-STS: the policy's `mx` patterns; DANE: the MX host the TLSA RRset is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

/// Failed sessions of one kind (section 4.3); all but the count identify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    /// One of [`RESULT_TYPES`].
    pub result_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_helo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

impl FailureDetail {
    fn same_kind(&self, other: &FailureDetail) -> bool {
        self.result_type == other.result_type
            && self.sending_mta_ip == other.sending_mta_ip
            && self.receiving_mx_hostname == other.receiving_mx_hostname
            && self.receiving_mx_helo == other.receiving_mx_helo
            && self.receiving_ip == other.receiving_ip
            && self.additional_information == other.additional_information
            && self.failure_reason_code == other.failure_reason_code
    }
}

/// The result types of RFC 8460 section 4.3 (standards.md F2).
pub const RESULT_TYPES: [&str; 11] = [
    // Negotiation failures (4.3.1).
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    // Policy failures: DANE (4.3.2.1).
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    // Policy failures: MTA-STS (4.3.2.2).
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// Everything recorded for one UTC day (or the part of it after an earlier
/// report for that day was sent on request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayAggregate {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Unix seconds where the next report of this day begins: the start of the
    /// day, or just after the end of a report already sent for it.
    pub begin: u64,
    /// Policy domain -> its policies.
    pub domains: BTreeMap<String, Vec<PolicyReport>>,
}

impl DayAggregate {
    pub fn new(day: &str, begin: u64) -> DayAggregate {
        DayAggregate {
            day: day.to_string(),
            begin,
            domains: BTreeMap::new(),
        }
    }

    /// Count one session result (its domain already normalised).
    pub fn add(&mut self, domain: &str, s: &SessionResult) {
        let desc = policy_desc(domain, &s.policy, &s.mx_host);
        let policies = self.domains.entry(domain.to_string()).or_default();
        let idx = match policies.iter().position(|p| p.policy == desc) {
            Some(i) => i,
            None if policies.len() >= MAX_POLICIES => {
                tracing::debug!(
                    domain,
                    "TLS-RPT: too many policies for one day, session not counted"
                );
                return;
            }
            None => {
                policies.push(PolicyReport {
                    policy: desc,
                    summary: Summary::default(),
                    failure_details: Vec::new(),
                });
                policies.len() - 1
            }
        };
        let p = &mut policies[idx];
        let Some(f) = &s.failure else {
            p.summary.total_successful_session_count += 1;
            return;
        };
        p.summary.total_failure_session_count += 1;
        let nonempty = |v: &str| (!v.is_empty()).then(|| v.to_string());
        let detail = FailureDetail {
            result_type: f.result_type.to_string(),
            sending_mta_ip: s.sending_ip.map(|ip| ip.to_string()),
            receiving_mx_hostname: nonempty(&s.mx_host),
            receiving_mx_helo: s.receiving_helo.as_deref().and_then(nonempty),
            receiving_ip: s.receiving_ip.map(|ip| ip.to_string()),
            failed_session_count: 1,
            additional_information: nonempty(&f.additional_information),
            failure_reason_code: f.failure_reason_code.as_deref().and_then(nonempty),
        };
        if let Some(d) = p.failure_details.iter_mut().find(|d| d.same_kind(&detail)) {
            d.failed_session_count += 1;
        } else if p.failure_details.len() < MAX_FAILURE_DETAILS {
            p.failure_details.push(detail);
        }
    }
}

/// The `policy` object for a session: what applied to it.
fn policy_desc(domain: &str, policy: &PolicyApplied, mx_host: &str) -> PolicyDesc {
    match policy {
        PolicyApplied::Tlsa { records } => PolicyDesc {
            policy_type: "tlsa".into(),
            policy_string: records.clone(),
            policy_domain: domain.to_string(),
            mx_host: if mx_host.is_empty() {
                Vec::new()
            } else {
                vec![mx_host.to_string()]
            },
        },
        PolicyApplied::Sts {
            policy_string,
            mx_patterns,
        } => PolicyDesc {
            policy_type: "sts".into(),
            policy_string: policy_string.clone(),
            policy_domain: domain.to_string(),
            mx_host: mx_patterns.clone(),
        },
        PolicyApplied::None => PolicyDesc {
            policy_type: "no-policy-found".into(),
            policy_string: Vec::new(),
            policy_domain: domain.to_string(),
            mx_host: Vec::new(),
        },
    }
}

/// Serialize and gzip a report (section 5: reports are gzip-compressed JSON).
pub fn gzip_json(report: &Report) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&json)?;
    enc.finish()
}

/// Gunzip (tests, and checking what was sent).
pub fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// UTC days
// ---------------------------------------------------------------------------

pub const DAY_SECS: u64 = 86_400;

/// The UTC day of a Unix time: `YYYY-MM-DD`.
pub fn utc_day(secs: u64) -> String {
    let (y, m, d) = crate::calendar::civil_from_days((secs / DAY_SECS) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix seconds of 00:00:00 UTC of a `YYYY-MM-DD` day; `None` unless it is a
/// real date in that exact form.
pub fn day_start(day: &str) -> Option<u64> {
    let b = day.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &day[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let days = crate::calendar::days_from_civil(y, m as u32, d as u32);
    // Reject 2025-02-30 and the like: the date must come back unchanged.
    let start = u64::try_from(days).ok()? * DAY_SECS;
    (utc_day(start) == day).then_some(start)
}
pub use crate::calendar::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f2_utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(1_739_440_800), "2025-02-13");
        assert_eq!(day_start("2025-02-13"), Some(1_739_404_800));
        assert_eq!(day_start("2000-02-29"), Some(951_782_400));
        assert_eq!(day_start("1970-01-01"), Some(0));
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "2025-1-01",
            "20250213",
            "2025-02-1x",
            "",
            "1969-12-31",
        ] {
            assert_eq!(day_start(bad), None, "{bad}");
        }
        assert_eq!(
            rfc3339(1_739_404_800 + DAY_SECS - 1),
            "2025-02-13T23:59:59Z"
        );
    }

    #[test]
    fn f2_gzip_round_trip() {
        let r = Report {
            organization_name: "Org".into(),
            date_range: DateRange {
                start_datetime: rfc3339(0),
                end_datetime: rfc3339(DAY_SECS - 1),
            },
            contact_info: "postmaster@relay.example".into(),
            report_id: "x@relay.example".into(),
            policies: Vec::new(),
        };
        let gz = gzip_json(&r).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        let back: Report = serde_json::from_slice(&gunzip(&gz).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
