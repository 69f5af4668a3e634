//! How the queue is shown to a person (`qrelay queue list` / `show`).
//!
//! Everything printed from an envelope passes through [`safe`]: addresses and server
//! replies come from outside, and a control character in them must not be able to
//! drive the admin's terminal.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::protocol::{DnssecState, StatusReport};
use crate::spool::record::{
    Attempt, AuthFacts, BodyType, Envelope, Notify, RcptState, Recipient, Ret,
};

/// Longest last reply shown per recipient in the list.
const REPLY_WIDTH: usize = 70;

/// Replace control characters (ESC, CR, LF, ...) by '?' so text cannot move the
/// cursor or fake lines.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

/// A span as its two largest units: "45s", "4m", "1h 5m", "2d 3h".
fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// A future time relative to `now`: "in 4m", or "now" when already due.
fn until(t: u64, now: u64) -> String {
    if t <= now {
        "now".into()
    } else {
        format!("in {}", span(t - now))
    }
}

/// A past time relative to `now`: "2h ago".
fn ago(t: u64, now: u64) -> String {
    if t >= now {
        "just now".into()
    } else {
        format!("{} ago", span(now - t))
    }
}

/// UTC, RFC 3339 to the second: "2025-02-13T10:00:00Z".
fn absolute(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn size(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < K * K {
        format!("{:.1} KiB", b / K)
    } else if b < K * K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.1} GiB", b / (K * K * K))
    }
}

fn sender(env: &Envelope) -> String {
    if env.sender.is_empty() {
        "<> (delivery notice)".into()
    } else {
        safe(&env.sender)
    }
}

fn state(r: &Recipient) -> &'static str {
    match r.state {
        RcptState::Pending => "pending",
        RcptState::Delivered => "delivered",
        RcptState::Failed => "failed",
        RcptState::Held => "held",
    }
}

fn next(r: &Recipient, now: u64) -> String {
    match r.state {
        RcptState::Pending => until(r.next_attempt, now),
        RcptState::Delivered | RcptState::Failed | RcptState::Held => "-".into(),
    }
}

/// The queue as a table: one line per message, one per recipient below it.
pub fn format_list(envs: &[Envelope], now: u64) -> String {
    if envs.is_empty() {
        return "The queue is empty.\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:<32}  {:>10}  SENDER",
        "QUEUE ID", "ARRIVED", "SIZE"
    );
    let _ = writeln!(
        out,
        "    {:<9}  {:>5}  {:<11}  RECIPIENT / LAST REPLY",
        "STATE", "TRIES", "NEXT RETRY"
    );
    let mut pending = 0usize;
    let mut rcpts = 0usize;
    for env in envs {
        let arrived = format!(
            "{} ({})",
            absolute(env.received_at),
            ago(env.received_at, now)
        );
        let _ = writeln!(
            out,
            "{:<16}  {:<32}  {:>10}  {}",
            env.id,
            arrived,
            size(env.size),
            sender(env)
        );
        for r in &env.recipients {
            rcpts += 1;
            if r.state == RcptState::Pending {
                pending += 1;
            }
            let _ = writeln!(
                out,
                "    {:<9}  {:>5}  {:<11}  {}",
                state(r),
                r.attempts,
                next(r, now),
                safe(&r.address)
            );
            if let Some(last) = r.last.as_ref().filter(|a| !a.reply.is_empty()) {
                let _ = writeln!(
                    out,
                    "    {:<9}  {:>5}  {:<11}  {}",
                    "",
                    "",
                    "",
                    truncate(&safe(last.reply.trim()), REPLY_WIDTH)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} message{}, {} recipient{} ({} pending)",
        envs.len(),
        if envs.len() == 1 { "" } else { "s" },
        rcpts,
        if rcpts == 1 { "" } else { "s" },
        pending
    );
    out
}

fn notify_words(n: Option<Notify>) -> String {
    match n {
        None => "default (failure, delay)".into(),
        Some(n) => n.keywords().join(", ").to_ascii_lowercase(),
    }
}

fn attempt(out: &mut String, a: &Attempt, now: u64) {
    let p = "      ";
    let _ = writeln!(
        out,
        "    Last attempt:   {} ({})",
        absolute(a.at),
        ago(a.at, now)
    );
    let mx = if a.mx.is_empty() { "-" } else { a.mx.as_str() };
    let ip = if a.ip.is_empty() { "-" } else { a.ip.as_str() };
    let _ = writeln!(out, "{p}MX / IP:      {} / {}", safe(mx), safe(ip));
    let verdict = a.verdict.map(|v| v.as_str()).unwrap_or("-");
    let _ = writeln!(out, "{p}Verdict:      {verdict}");
    match &a.tls {
        Some(t) => {
            let _ = writeln!(out, "{p}TLS profile:  {}", safe(&t.profile));
            let _ = writeln!(out, "{p}TLS version:  {}", safe(&t.version));
            let _ = writeln!(out, "{p}Cipher:       {}", safe(&t.cipher));
            let _ = writeln!(
                out,
                "{p}Group:        {}",
                safe(t.group.as_deref().unwrap_or("-"))
            );
            let key = match (&t.peer_key_type, t.peer_key_bits) {
                (Some(kind), Some(bits)) => format!("{} {bits} bits", safe(kind)),
                (Some(kind), None) => safe(kind),
                (None, _) => "-".into(),
            };
            let _ = writeln!(out, "{p}Peer key:     {key}");
            let _ = writeln!(
                out,
                "{p}Cert SHA-256: {}",
                safe(t.peer_cert_sha256.as_deref().unwrap_or("-"))
            );
            let _ = writeln!(
                out,
                "{p}SPKI SHA-256: {}",
                safe(t.peer_spki_sha256.as_deref().unwrap_or("-"))
            );
            let _ = writeln!(
                out,
                "{p}PKIX:         {}",
                if t.pkix_verified {
                    "verified (chain and host name)"
                } else {
                    "not verified"
                }
            );
        }
        None => {
            let _ = writeln!(out, "{p}TLS:          none");
        }
    }
    if let Some(auth) = &a.auth {
        auth_facts(out, auth);
    }
    let _ = writeln!(out, "{p}Reply:        {}", safe(a.reply.trim()));
}

/// How the host was authenticated and the DNS / policy facts behind it (A5).
fn auth_facts(out: &mut String, auth: &AuthFacts) {
    let p = "      ";
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            safe(s)
        }
    };
    let _ = writeln!(out, "{p}Mechanism:    {}", auth.mechanism);
    if !auth.basis.is_empty() {
        let _ = writeln!(out, "{p}Why:          {}", safe(&auth.basis));
    }
    let _ = writeln!(
        out,
        "{p}DNSSEC:       MX {}, address {}, TLSA {}",
        dash(&auth.mx_dnssec),
        dash(&auth.address_dnssec),
        auth.tlsa
            .as_ref()
            .map_or("not looked up".to_string(), |t| dash(&t.dnssec))
    );
    if let Some(t) = auth.tlsa.as_ref().filter(|t| !t.records.is_empty()) {
        let _ = writeln!(out, "{p}TLSA at:      _25._tcp.{}", safe(&t.base_domain));
        for r in &t.records {
            let mark = if t.matched.as_deref() == Some(r.as_str()) {
                "  (matched)"
            } else {
                ""
            };
            let _ = writeln!(out, "{p}  TLSA        {}{mark}", safe(r));
        }
    }
    match &auth.mta_sts {
        Some(m) => {
            let _ = writeln!(
                out,
                "{p}MTA-STS:      mode {}, id {}, MX {}",
                safe(&m.mode),
                safe(&m.id),
                if m.covered { "covered" } else { "not covered" }
            );
        }
        None => {
            let _ = writeln!(out, "{p}MTA-STS:      no policy");
        }
    }
}

/// One message with everything the spool knows about it.
pub fn format_show(env: &Envelope, now: u64) -> String {
    let mut out = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "Queue ID:     {}", env.id);
    let _ = writeln!(
        out,
        "Arrived:      {} ({})",
        absolute(env.received_at),
        ago(env.received_at, now)
    );
    let _ = writeln!(out, "Sender:       {}", sender(env));
    let _ = writeln!(out, "Size:         {} ({} bytes)", size(env.size), env.size);
    let _ = writeln!(out, "Class:        {}", env.class);
    for reason in &env.class_reasons {
        let _ = writeln!(out, "  because     {}", safe(reason));
    }
    if env.tls_optional {
        let _ = writeln!(
            out,
            "TLS policy:   not enforced (TLS-Required: No allowed by the admin, or a TLS-RPT report)"
        );
    }
    let _ = writeln!(
        out,
        "Message-ID:   {}",
        safe(env.message_id.as_deref().unwrap_or("-"))
    );
    let body = match env.body {
        BodyType::SevenBit => "7BIT",
        BodyType::EightBitMime => "8BITMIME",
        BodyType::BinaryMime => "BINARYMIME",
    };
    let _ = writeln!(out, "Body:         {body}");
    let _ = writeln!(out, "SMTPUTF8:     {}", yes_no(env.smtputf8));
    let _ = writeln!(out, "REQUIRETLS:   {}", yes_no(env.requiretls));
    let ret = match env.ret {
        None => "-",
        Some(Ret::Full) => "FULL",
        Some(Ret::Headers) => "HDRS",
    };
    let _ = writeln!(out, "DSN RET:      {ret}");
    let _ = writeln!(
        out,
        "DSN ENVID:    {}",
        safe(env.envid.as_deref().unwrap_or("-"))
    );
    let c = &env.client;
    let _ = writeln!(
        out,
        "Client:       {} (HELO {})",
        safe(if c.addr.is_empty() { "-" } else { &c.addr }),
        safe(if c.helo.is_empty() { "-" } else { &c.helo })
    );
    let _ = writeln!(
        out,
        "Client TLS:   {}",
        safe(c.tls.as_deref().unwrap_or("none"))
    );
    let _ = writeln!(
        out,
        "Client auth:  {}",
        safe(c.auth_user.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(out, "Recipients:   {}", env.recipients.len());
    for r in &env.recipients {
        let _ = writeln!(out);
        let _ = writeln!(out, "  {}", safe(&r.address));
        let _ = writeln!(out, "    State:          {}", state(r));
        let _ = writeln!(
            out,
            "    Status:         {}",
            safe(r.status.as_deref().unwrap_or("-"))
        );
        let _ = writeln!(out, "    Attempts:       {}", r.attempts);
        if r.state == RcptState::Pending {
            let _ = writeln!(
                out,
                "    Next retry:     {} ({})",
                absolute(r.next_attempt),
                until(r.next_attempt, now)
            );
        }
        let _ = writeln!(
            out,
            "    ORCPT:          {}",
            safe(r.orcpt.as_deref().unwrap_or("-"))
        );
        let _ = writeln!(out, "    NOTIFY:         {}", notify_words(r.notify));
        let _ = writeln!(out, "    Remote DSN:     {}", yes_no(r.remote_dsn));
        let _ = writeln!(
            out,
            "    Notices:        delay {}, final {}",
            if r.delay_notified { "sent" } else { "not sent" },
            if r.final_notice_done {
                "done"
            } else {
                "not done"
            }
        );
        if let Some(p) = r.last.as_ref().and_then(|a| a.problem.as_ref()) {
            let _ = writeln!(out, "    Problem:        {:?}: {}", p.kind, safe(&p.detail));
        }
        match &r.last {
            Some(a) => attempt(&mut out, a, now),
            None => {
                let _ = writeln!(out, "    Last attempt:   none yet");
            }
        }
    }
    out
}

/// `qrelay status`.
pub fn format_status(s: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "qrelay {}", safe(&s.version));
    let _ = writeln!(
        out,
        "running since {} (up {})",
        absolute(s.started_at),
        span(s.now.saturating_sub(s.started_at))
    );
    let q = &s.queue;
    let _ = writeln!(
        out,
        "queue: {} message{}; recipients: {} pending, {} held, {} delivered, {} failed",
        q.messages,
        if q.messages == 1 { "" } else { "s" },
        q.pending,
        q.held,
        q.delivered,
        q.failed
    );
    let upstreams = safe(&s.dnssec.upstreams);
    let line = match &s.dnssec.state {
        DnssecState::Unknown => format!("DNSSEC: not probed yet (upstream resolvers {upstreams})"),
        DnssecState::Available { checked_at } => format!(
            "DNSSEC: available through upstream resolvers {upstreams} (last probe {})",
            ago(*checked_at, s.now)
        ),
        DnssecState::Unavailable { reason, checked_at } => format!(
            "DNSSEC unavailable through upstream resolvers {upstreams}: {} (last probe {}); deliveries that need DNSSEC are deferred",
            safe(reason),
            ago(*checked_at, s.now)
        ),
        DnssecState::Disabled => "DNSSEC: validation off".to_string(),
        DnssecState::NotReported => "DNSSEC: not reported by the relay".to_string(),
    };
    let _ = writeln!(out, "{line}");
    if !s.evidence_key.is_empty() {
        let _ = writeln!(out, "evidence log key: {}", safe(&s.evidence_key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_sizes() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(240), "4m");
        assert_eq!(span(3900), "1h 5m");
        assert_eq!(span(7200), "2h");
        assert_eq!(span(2 * 86_400 + 3 * 3600 + 5), "2d 3h");
        assert_eq!(until(10, 20), "now");
        assert_eq!(ago(10, 70), "1m ago");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(truncate("abcdef", 5), "ab...");
        assert_eq!(safe("a\x1b[2Jb\r\n"), "a?[2Jb??");
    }

    #[test]
    fn h_show_lists_the_authentication_facts() {
        use crate::spool::record::{Mechanism, MtaStsFacts, TlsaFacts, TransportVerdict};
        let record = format!("3 1 1 {}", "ab".repeat(32));
        let a = Attempt {
            at: 100,
            mx: "mx1.example.org".into(),
            ip: "192.0.2.25".into(),
            tls: None,
            verdict: Some(TransportVerdict::Verified),
            reply: "250 2.0.0 Ok".into(),
            auth: Some(AuthFacts {
                mechanism: Mechanism::DaneEe,
                basis: "TLSA record matched".into(),
                mx_dnssec: "secure".into(),
                address_dnssec: "secure".into(),
                tlsa: Some(TlsaFacts {
                    dnssec: "secure".into(),
                    base_domain: "mx1.example.org".into(),
                    records: vec![record.clone(), format!("2 0 1 {}", "cd".repeat(32))],
                    matched: Some(record.clone()),
                }),
                mta_sts: Some(MtaStsFacts {
                    id: "20260101".into(),
                    mode: "enforce".into(),
                    covered: true,
                }),
            }),
            problem: None,
            requiretls: false,
        };
        let mut out = String::new();
        attempt(&mut out, &a, 160);
        for line in [
            "Verdict:      verified",
            "Mechanism:    dane-ee",
            "Why:          TLSA record matched",
            "DNSSEC:       MX secure, address secure, TLSA secure",
            "TLSA at:      _25._tcp.mx1.example.org",
            &format!("TLSA        {record}  (matched)"),
            "MTA-STS:      mode enforce, id 20260101, MX covered",
        ] {
            assert!(out.contains(line), "{line:?} missing in\n{out}");
        }
    }
}
