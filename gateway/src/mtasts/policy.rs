//! The policy document (RFC 8461 section 3.2) and MX pattern matching (section 4.1).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest `max_age` RFC 8461 allows: one year, in seconds (section 3.2).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// What the policy domain asks senders to do (RFC 8461 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Deliver only to MX hosts that match a pattern and present a PKIX-valid
    /// certificate for their name; otherwise do not deliver to that host.
    Enforce,
    /// Deliver as without MTA-STS, but report what would have failed (TLS-RPT).
    Testing,
    /// The domain has withdrawn its policy: treat it as having none.
    None,
}

impl Mode {
    /// The spelling of the policy file and of TLS-RPT's `policy-string`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a policy body was rejected (TLS-RPT: `sts-policy-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is not UTF-8 text")]
    NotText,
    #[error("line {line}: not a `key: value` field")]
    Syntax { line: usize },
    #[error("field `{0}` appears more than once")]
    Duplicate(&'static str),
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("unsupported version {0:?} (only STSv1)")]
    Version(String),
    #[error("unknown mode {0:?} (enforce, testing or none)")]
    Mode(String),
    #[error("max_age {0:?} is not a number of seconds (1 to 10 digits)")]
    MaxAge(String),
    #[error("mx pattern {0:?} is not a host name or `*.` followed by one")]
    MxPattern(String),
    #[error("mode {0} needs at least one mx pattern")]
    NoMx(Mode),
}

/// A parsed MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds the policy may be cached, at most [`MAX_AGE_LIMIT`].
    pub max_age: u32,
    /// The allowed MX patterns, lower-case, without trailing dot: `mx.example.com`
    /// or `*.example.com`.
    pub mx: Vec<String>,
}

impl Policy {
    /// Parse a policy body (RFC 8461 section 3.2).
    ///
    /// - Lines end in CRLF or LF; each is `key: value` with optional white space
    ///   after the colon and at the end. Empty lines are tolerated.
    /// - `version` must be `STSv1`; `mode` `enforce`, `testing` or `none`;
    ///   `max_age` 1 to 10 digits. These three are mandatory and may appear once.
    /// - `max_age` above one year (31557600) is *clamped* to one year: the RFC
    ///   defines max_age as the time a sender may cache the policy "up to", so caching
    ///   for less is always within the rules, while rejecting the whole policy would
    ///   throw away an otherwise valid `enforce` policy (a downgrade).
    /// - `mx` may repeat; each value is a host name or `*.` plus a host name. `enforce`
    ///   and `testing` need at least one; `none` needs none.
    /// - Unknown keys are ignored (section 3.2: "unknown fields MUST be ignored").
    pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
        let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
        let mut version: Option<&str> = None;
        let mut mode: Option<Mode> = None;
        let mut max_age: Option<u32> = None;
        let mut mx = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim_matches(is_wsp).is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or(PolicyError::Syntax { line: i + 1 })?;
            if !valid_key(key) {
                return Err(PolicyError::Syntax { line: i + 1 });
            }
            let value = value.trim_matches(is_wsp);
            match key {
                "version" if version.replace(value).is_some() => {
                    return Err(PolicyError::Duplicate("version"));
                }
                "version" => {}
                "mode" => {
                    let m = match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(PolicyError::Mode(other.to_string())),
                    };
                    if mode.replace(m).is_some() {
                        return Err(PolicyError::Duplicate("mode"));
                    }
                }
                "max_age" => {
                    if value.is_empty()
                        || value.len() > 10
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(PolicyError::MaxAge(value.to_string()));
                    }
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| PolicyError::MaxAge(value.to_string()))?;
                    let clamped = secs.min(u64::from(MAX_AGE_LIMIT)) as u32;
                    if max_age.replace(clamped).is_some() {
                        return Err(PolicyError::Duplicate("max_age"));
                    }
                }
                "mx" => mx.push(parse_mx_pattern(value)?),
                // Section 3.2: unknown fields are ignored (extensions).
                _ => {}
            }
        }
        match version {
            None => return Err(PolicyError::Missing("version")),
            Some("STSv1") => {}
            Some(other) => return Err(PolicyError::Version(other.to_string())),
        }
        let mode = mode.ok_or(PolicyError::Missing("mode"))?;
        let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx(mode));
        }
        Ok(Policy { mode, max_age, mx })
    }

    /// How long the policy may be cached.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(u64::from(self.max_age))
    }

    /// Whether an MX host name is covered by one of the policy's patterns
    /// (RFC 8461 section 4.1): case-insensitive, a trailing dot is ignored, and a
    /// pattern `*.example.com` matches exactly one further label on the left
    /// (`mx1.example.com`, but neither `example.com` nor `a.b.example.com`).
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return false;
        }
        self.mx.iter().any(|p| pattern_matches(p, &host))
    }
}

fn pattern_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        // `suffix` keeps its leading dot: ".example.com".
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == host,
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `sts-policy-ext-name`: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `sts-policy-mx-value = ["*."] Domain`: the wildcard only as the whole left-most
/// label. Returned lower-case without a trailing dot.
fn parse_mx_pattern(value: &str) -> Result<String, PolicyError> {
    let bad = || PolicyError::MxPattern(value.to_string());
    let v = value.trim_end_matches('.').to_ascii_lowercase();
    let name = v.strip_prefix("*.").unwrap_or(&v);
    if !valid_host_name(name) {
        return Err(bad());
    }
    Ok(v)
}

/// A DNS host name in A-label form: dot-separated labels of letters, digits and
/// hyphens (underscores tolerated), 1 to 63 characters, not starting or ending with
/// a hyphen, at most 253 characters in all.
pub(crate) fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text.as_bytes())
    }

    #[test]
    fn e3_policy_with_crlf_lines() {
        let p = policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86400);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age(), Duration::from_secs(86400));
    }

    #[test]
    fn e3_policy_with_lf_lines_whitespace_and_no_final_newline() {
        let p = policy("version: STSv1\nmode:testing\t\nmx:   MX.Example.COM.\nmax_age: 604800")
            .unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, ["mx.example.com"]);
    }

    #[test]
    fn e3_unknown_keys_are_ignored() {
        let p = policy(
            "version: STSv1\nmode: enforce\nfuture_key: anything: goes\nmx: mx.example.com\nmax_age: 100\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
    }

    #[test]
    fn e3_mode_none_needs_no_mx() {
        let p = policy("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        assert!(p.mx.is_empty());
        assert_eq!(
            policy("version: STSv1\nmode: enforce\nmax_age: 86400\n"),
            Err(PolicyError::NoMx(Mode::Enforce))
        );
    }

    #[test]
    fn e3_version_and_mode_must_be_known() {
        assert!(matches!(
            policy("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Version(_))
        ));
        assert!(matches!(
            policy("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Mode(_))
        ));
        assert_eq!(
            policy("mode: enforce\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Missing("version"))
        );
        assert_eq!(
            policy("version: STSv1\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Missing("mode"))
        );
        assert_eq!(
            policy("version: STSv1\nmode: enforce\nmx: a.example\n"),
            Err(PolicyError::Missing("max_age"))
        );
        assert_eq!(
            policy("version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Duplicate("mode"))
        );
    }

    #[test]
    fn e3_max_age_above_one_year_is_clamped() {
        let p =
            policy("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
        let p =
            policy("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557600\n").unwrap();
        assert_eq!(p.max_age, 31_557_600);
        // More than 10 digits, a sign or a fraction violate the grammar.
        for bad in ["12345678901", "-1", "1.5", "", "1d"] {
            let text = format!("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {bad}\n");
            assert!(
                matches!(policy(&text), Err(PolicyError::MaxAge(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn e3_wildcard_only_as_whole_leftmost_label() {
        for bad in [
            "mx*.example.com",
            "*mx.example.com",
            "a.*.example.com",
            "*.*.example.com",
            "*",
            "*.",
            "mx..example.com",
            "-mx.example.com",
        ] {
            let text = format!("version: STSv1\nmode: enforce\nmx: {bad}\nmax_age: 1\n");
            assert!(
                matches!(policy(&text), Err(PolicyError::MxPattern(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn e3_garbage_is_invalid() {
        assert!(matches!(
            policy("<html>not a policy</html>"),
            Err(PolicyError::Syntax { line: 1 })
        ));
        assert_eq!(Policy::parse(&[0xff, 0xfe]), Err(PolicyError::NotText));
        assert!(matches!(
            policy("version: STSv1\n mode: enforce\n"),
            Err(PolicyError::Syntax { line: 2 })
        ));
    }

    fn mxs(patterns: &[&str]) -> Policy {
        Policy {
            mode: Mode::Enforce,
            max_age: 86400,
            mx: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn e3_wildcard_matches_exactly_one_label() {
        let p = mxs(&["*.example.com"]);
        assert!(p.matches_mx("mx1.example.com"));
        assert!(p.matches_mx("MX1.Example.Com."));
        assert!(!p.matches_mx("example.com"), "the wildcard needs a label");
        assert!(!p.matches_mx("a.b.example.com"), "exactly one label");
        assert!(!p.matches_mx("mx1.example.com.evil"));
        assert!(!p.matches_mx("mx1example.com"));
        assert!(!p.matches_mx(".example.com"));
    }

    #[test]
    fn e3_exact_pattern_matches_case_insensitively_with_trailing_dot() {
        let p = mxs(&["mail.example.com", "backup.example.net"]);
        assert!(p.matches_mx("mail.example.com"));
        assert!(p.matches_mx("MAIL.EXAMPLE.COM."));
        assert!(p.matches_mx("backup.example.net"));
        assert!(!p.matches_mx("sub.mail.example.com"));
        assert!(!p.matches_mx("example.com"));
        assert!(!p.matches_mx(""));
        assert!(!p.matches_mx("."));
    }
}
