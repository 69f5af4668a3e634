//! The outbound SMTP client (Postfix: smtp): one delivery attempt for the pending
//! recipients of one message in one domain.
//!
//! The attempt, in order:
//! 1. Route (RFC 5321 5.1): the domain's MX hosts by preference, equal preferences in
//!    random order; an implicit MX; or an address literal (`[192.0.2.1]`, RFC 5321
//!    4.1.3). Null MX (5.1.10) and NXDOMAIN (5.1.2) fail at once; a DNS outage defers
//!    (4.4.3), and so does an MX answer that fails DNSSEC validation (4.7.5, D1). See
//!    [`crate::dns`]. The MX and address answers keep their DNSSEC status
//!    ([`Route`]). The recipient domain's MTA-STS policy is looked up
//!    ([`crate::mtasts::MtaSts::policy_for`]; unavailable = as without a policy).
//! 2. Per host ([`Deliverer::deliver_route`], the same code for the real path and
//!    for tests that hand in resolved DNS facts): the TLSA lookup when the MX and
//!    address answers are DNSSEC-secure (D2-D4, [`crate::dane`]), then
//!    [`crate::policy::plan`]: defer the domain (D1), skip the host (D1 bogus
//!    address, D4 TLSA lookup failure, D11 dane-only without usable TLSA, E5 host
//!    not listed by an enforce policy), or connect, with a DANE verifier when the
//!    host has usable TLSA records (D6, E7).
//! 3. Each address of each host in turn. The next host is tried when the connection
//!    fails or times out, when the greeting or EHLO is refused (RFC 5321 3.1, 5.1:
//!    "try the next MX"), and when the host cannot give the transport the message's
//!    level requires (a DANE mismatch, a missing STARTTLS where TLSA records or an
//!    MTA-STS enforce policy make TLS mandatory, a certificate that is not good
//!    enough for the level).
//! 4. EHLO (RFC 5321 4.1.1.1); HELO only for level `may` after a 5xx to EHLO, since
//!    without EHLO there is no STARTTLS.
//! 5. STARTTLS whenever offered (RFC 3207, standards.md B2), with the TLS profile of
//!    the message's class ([`crate::tls::profile`]: what is offered, which server keys
//!    are accepted), then EHLO again (RFC 3207 4.2: forget what was learned before
//!    TLS). A DANE host is judged inside the handshake by a
//!    [`crate::dane::DaneVerifier`] (SNI = TLSA base domain); for any other host the
//!    handshake accepts the chain (its signature always verified) and PKIX is
//!    checked afterwards, for the MX name and for names within the recipient domain.
//!    [`crate::policy::decide`] judges the result: the verdict (`verified`,
//!    `trusted`, `encrypted`, `plaintext`) and mechanism, then send, skip this host
//!    (defer if none is left), or for `may` only, retry the same address without
//!    TLS (RFC 7435) when nothing makes TLS mandatory. The verdict, mechanism and
//!    the DNS/TLSA/MTA-STS facts are recorded in the attempt ([`AuthFacts`]).
//! 6. MAIL FROM with SIZE (RFC 1870), BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531)
//!    and the DSN parameters RET/ENVID/NOTIFY/ORCPT when the server offers DSN
//!    (RFC 3461); RCPT TO per recipient. With PIPELINING (RFC 2920) MAIL and all RCPTs
//!    go out in one write and the replies are read in order.
//! 7. DATA, the dot-stuffed content, "." (RFC 5321 4.5.2); the final reply applies to
//!    every recipient accepted at RCPT. QUIT. The content is read from its
//!    [`super::ContentSource`] in pieces of [`SEND_CHUNK`] bytes on the blocking pool,
//!    each piece dot-stuffed ([`DotStuffer`] carries line state across pieces) and
//!    written before the next is read: an attempt holds one piece and its encoding,
//!    not the message. If the content cannot be read or the connection fails in the
//!    middle, the connection is closed without the final "." so the server discards
//!    the partial message, and the recipients are deferred.
//!
//! Per-recipient results: 2xx delivered, 4xx deferred, 5xx failed, with the server's
//! reply verbatim and its enhanced status code (or one we derive: 4.4.1 no answer,
//! 4.4.2 connection lost, 4.4.3 DNS, 4.7.5 TLS level not met, 5.1.2, 5.1.10...).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::protocol::{
    xtext, Capabilities, DotStuffer, Reply, ReplyBuilder, ReplyError, MAX_REPLY_LINE,
};
use super::{ContentSource, DeliveryReport, DeliveryRequest, RcptOutcome, Transport};
use crate::config::{Config, Level};
use crate::dane::{
    self, DaneOutcome, DaneRequirement, DaneVerifier, OutcomeSlot, Precondition, TlsaAnswer,
    TlsaMismatch, UsableTlsa,
};
use crate::dns::{DnsSetupError, MxResult, Resolver, Security};
use crate::mtasts::{self, MtaSts, MxCheck, PolicyLookup};
use crate::policy::{self, Action, Decision, Established, HostFacts, Inputs, Plan, TlsOutcome};
use crate::spool::record::{
    now_secs, Attempt, AuthFacts, BodyType, Mechanism, MtaStsFacts, Problem, ProblemKind, Ret,
    TlsFacts, TlsaFacts, TransportVerdict,
};
use crate::tls::client::{session_facts, ClientTls, TlsFailure, TlsSetupError};
use crate::tls::profile::Profile;
use crate::tlsrpt::{PolicyApplied, SessionFailure, SessionResult, TlsRpt};

/// Bytes of content read (and then dot-stuffed and written) at a time while DATA is
/// sent: with the encoded copy, what one attempt holds of a message.
pub const SEND_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeliverSetupError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// One host to try: its name (what the certificate must name) and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mx: String,
    pub addrs: Vec<IpAddr>,
}

/// The DNS facts of one delivery, already resolved: where the real path's DNS
/// steps end and the decisions begin. Tests build one directly (standing in for a
/// signed zone), the real path fills it from the resolver ([`Deliverer::attempt`]);
/// everything after it is the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// DNSSEC status of the MX RRset (of the address answer for an implicit MX).
    pub mx_security: Security,
    /// The hosts in the order to try them.
    pub hosts: Vec<RouteHost>,
}

/// One MX host with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHost {
    pub mx: String,
    pub addrs: Vec<IpAddr>,
    /// DNSSEC status of the A/AAAA answers, CNAMEs included.
    pub address_security: Security,
    /// The CNAME target the address lookup followed, only when every link of the
    /// chain was DNSSEC-secure (the first TLSA base domain to try, D3).
    pub secure_cname: Option<String>,
}

/// Where TLSA answers come from: the resolver, or a table (tests).
#[derive(Debug, Clone, Copy)]
pub enum TlsaSource<'a> {
    Dns(&'a Resolver),
    /// Answers by query name (`_25._tcp.<host>.`); a missing name is a failed lookup.
    Fixed(&'a HashMap<String, TlsaAnswer>),
    /// DANE does not apply to this delivery (`TLS-Required: No`, TLS-RPT reports):
    /// every host is treated as having no TLSA records, without a lookup.
    NotApplied,
}

impl TlsaSource<'_> {
    async fn answer(&self, qname: &str) -> TlsaAnswer {
        match self {
            TlsaSource::Dns(resolver) => resolver.resolve_tlsa(qname).await,
            TlsaSource::NotApplied => TlsaAnswer::Insecure,
            TlsaSource::Fixed(table) => {
                table
                    .get(qname)
                    .cloned()
                    .unwrap_or_else(|| TlsaAnswer::Failed {
                        reason: "no answer".into(),
                    })
            }
        }
    }
}

/// How long a delivery waits for the first DNSSEC probe after a start (the probe
/// takes at most the DNS timeout per upstream; this only bounds a stuck one).
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(30);

/// The real transport: SMTP to the recipient domain's mail servers. Built once at
/// start; cheap to share (`Arc<Deliverer>`) between concurrent deliveries.
pub struct Deliverer {
    config: Arc<Config>,
    resolver: Resolver,
    tls: ClientTls,
    helo: String,
    /// MTA-STS policies (RFC 8461); `None`: not consulted.
    mta_sts: Option<Arc<MtaSts>>,
    /// TLS-RPT (RFC 8460, B4): every TLS session and policy failure of a delivery
    /// is counted for the daily report; `None`: not collected.
    tls_rpt: Option<TlsRpt>,
    /// The file whose existence says the clock is synchronised
    /// ([`crate::system::TIME_SYNC_FLAG`]; tests point it elsewhere).
    time_sync_flag: std::path::PathBuf,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("helo", &self.helo)
            .field("resolver", &self.resolver)
            .field("mta_sts", &self.mta_sts.is_some())
            .finish()
    }
}

impl Transport for Deliverer {
    fn deliver(
        &self,
        req: DeliveryRequest,
    ) -> Pin<Box<dyn Future<Output = DeliveryReport> + Send + '_>> {
        Box::pin(self.attempt(req))
    }
}

/// How one connection ended.
enum SessionEnd {
    /// The transaction ran (or failed for good): these are the outcomes.
    Done(Vec<RcptOutcome>, Attempt),
    /// This host cannot take the message now: try the next one.
    NextHost(HostFailure),
    /// `may` only: the TLS handshake failed; reconnect to the same address without TLS.
    RetryPlaintext(HostFailure, TlsFailure),
}

impl SessionEnd {
    /// The reply or reason that ended the session.
    fn reason(&self) -> &str {
        match self {
            SessionEnd::Done(_, attempt) => &attempt.reply,
            SessionEnd::NextHost(f) | SessionEnd::RetryPlaintext(f, _) => &f.attempt.reply,
        }
    }
}

/// Why a host was given up, for the final deferral when no host is left.
struct HostFailure {
    status: String,
    attempt: Attempt,
}

/// A failure of the conversation itself (not a reply).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("protocol error: {0}")]
    Reply(#[from] ReplyError),
}

/// Why DATA could not be sent to the end.
#[derive(Debug, thiserror::Error)]
enum DataError {
    /// Our own spool could not be read: a local problem, not the server's.
    #[error("local error reading the queued message: {0}")]
    Local(std::io::Error),
    #[error("while sending the message: {0}")]
    Conn(#[from] ConnError),
}

/// How a transaction ended: outcomes, the reply that ended it, and whether the
/// connection can still be closed with QUIT (not after DATA broke off midway).
struct TxEnd {
    outcomes: Vec<RcptOutcome>,
    reply: String,
    clean: bool,
}

trait BufIo: AsyncBufRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncBufRead + AsyncWrite + Unpin + Send> BufIo for T {}

/// The connection, before or after STARTTLS.
enum Conn {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<TlsStream<TcpStream>>>),
}

impl Conn {
    fn io(&mut self) -> &mut dyn BufIo {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        }
    }

    async fn send(&mut self, data: &[u8], limit: Duration) -> Result<(), ConnError> {
        let io = self.io();
        timeout(limit, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await
        .map_err(|_| ConnError::Timeout("while sending", limit))??;
        Ok(())
    }

    async fn read_reply(
        &mut self,
        what: &'static str,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        let io = self.io();
        timeout(limit, async {
            let mut builder = ReplyBuilder::default();
            loop {
                let mut line = Vec::new();
                let n = (&mut *io)
                    .take(MAX_REPLY_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if !line.ends_with(b"\n") {
                    if line.len() > MAX_REPLY_LINE {
                        return Err(ReplyError::LineTooLong.into());
                    }
                    return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if let Some(reply) = builder.push(&line)? {
                    return Ok(reply);
                }
            }
        })
        .await
        .map_err(|_| ConnError::Timeout(what, limit))?
    }

    /// Send one command and read its reply.
    async fn command(
        &mut self,
        line: &str,
        what: &'static str,
        limit: Duration,
    ) -> Result<Reply, ConnError> {
        self.send(format!("{line}\r\n").as_bytes(), limit).await?;
        self.read_reply(what, limit).await
    }

    /// Close without QUIT: in the middle of DATA a QUIT would be read as content.
    /// The server sees the connection end before the final "." and discards the
    /// partial message (RFC 5321 3.8).
    async fn abort(&mut self) {
        let _ = timeout(Duration::from_secs(5), self.io().shutdown()).await;
    }

    /// QUIT politely; the answer does not matter (RFC 5321 4.1.1.10).
    async fn quit(&mut self) {
        let limit = Duration::from_secs(5);
        if self.send(b"QUIT\r\n", limit).await.is_ok() {
            let _ = self.read_reply("to QUIT", limit).await;
        }
        let _ = self.io().shutdown().await;
    }
}

impl Deliverer {
    /// Build the resolver and the TLS client configurations (roots loaded once).
    /// MTA-STS is off until [`Deliverer::with_mta_sts`].
    pub fn new(config: Arc<Config>) -> Result<Deliverer, DeliverSetupError> {
        let resolver = Resolver::from_config(&config.dns)?;
        let tls = ClientTls::from_config(&config.tls)?;
        let helo = config.helo_name();
        Ok(Deliverer {
            config,
            resolver,
            tls,
            helo,
            mta_sts: None,
            tls_rpt: None,
            time_sync_flag: crate::system::TIME_SYNC_FLAG.into(),
        })
    }

    /// Count every delivery session for TLS-RPT.
    pub fn with_tls_rpt(mut self, tls_rpt: TlsRpt) -> Deliverer {
        self.tls_rpt = Some(tls_rpt);
        self
    }

    /// Count one session (or a policy failure before any) for TLS-RPT (B4, F2).
    fn rpt(
        &self,
        domain: &str,
        policy: &PolicyApplied,
        mx: &str,
        ip: Option<IpAddr>,
        failure: Option<(&'static str, String)>,
    ) {
        let Some(t) = &self.tls_rpt else {
            return;
        };
        t.record(SessionResult {
            at: now_secs(),
            domain: domain.to_string(),
            policy: policy.clone(),
            mx_host: mx.to_string(),
            receiving_ip: ip,
            sending_ip: None,
            receiving_helo: None,
            failure: failure.map(|(result_type, info)| SessionFailure {
                result_type,
                additional_information: info,
                failure_reason_code: None,
            }),
        });
    }

    /// Apply recipient domains' MTA-STS policies (E5-E7) from this service.
    pub fn with_mta_sts(mut self, mta_sts: Arc<MtaSts>) -> Deliverer {
        self.mta_sts = Some(mta_sts);
        self
    }

    /// The resolver deliveries use (to share it with the MTA-STS service).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// One attempt for the request's domain (the [`Transport`] implementation):
    /// MX and addresses, the MTA-STS policy, then [`Deliverer::deliver_route`]
    /// (which looks up TLSA records per host).
    pub async fn attempt(&self, req: DeliveryRequest) -> DeliveryReport {
        // Right after a start (a reboot after a power cut, say) the DNSSEC probe has
        // not decided yet whether answers can be validated; wait for it rather than
        // defer the recovered mail on answers that look bogus only until then.
        self.resolver
            .dnssec_status()
            .first_probe(FIRST_PROBE_WAIT)
            .await;
        // Certificate validity depends on the clock: on a box that has not yet
        // synchronised it, levels that check certificates wait (issue 5).
        if self.config.system.require_time_sync
            && req.level >= Level::Trusted
            && !crate::system::clock_synchronized(&self.time_sync_flag)
        {
            let reason = format!(
                "the system clock is not synchronised yet, so certificate validity cannot be judged; level {} waits for time synchronisation",
                req.level
            );
            tracing::warn!(queue_id = %req.id, domain = %req.domain, "{reason}");
            let attempt = attempt_record("", "", None, None, reason.clone(), None);
            return all_same(&req, false, "4.4.0", &reason, attempt);
        }
        let route = match self.resolve_route(&req.domain).await {
            Ok(r) => r,
            Err((permanent, status, reason)) => {
                let attempt = attempt_record("", "", None, None, reason.clone(), None);
                let report = all_same(&req, permanent, &status, &reason, attempt);
                log_attempt(&req, &report);
                return report;
            }
        };
        if req.tls_optional {
            // RFC 8689 section 3 / RFC 8460 section 3: the recipient's DANE and
            // MTA-STS policies are not applied (TLS is still used when offered).
            tracing::info!(queue_id = %req.id, domain = %req.domain, "TLS-Required: No: DANE and MTA-STS not applied");
            let report = self
                .deliver_route(&req, &route, &PolicyLookup::None, TlsaSource::NotApplied)
                .await;
            log_attempt(&req, &report);
            return report;
        }
        let sts = self.mta_sts_policy(&req).await;
        let report = self
            .deliver_route(&req, &route, &sts, TlsaSource::Dns(&self.resolver))
            .await;
        log_attempt(&req, &report);
        report
    }

    /// The recipient domain's MTA-STS policy; a failed lookup delivers as without
    /// a policy (RFC 8461 section 5), which is logged for TLS-RPT.
    async fn mta_sts_policy(&self, req: &DeliveryRequest) -> PolicyLookup {
        let Some(service) = &self.mta_sts else {
            return PolicyLookup::None;
        };
        if address_literal(&req.domain).is_some() {
            return PolicyLookup::None;
        }
        let lookup = service.policy_for(&req.domain).await;
        if let PolicyLookup::TempFail {
            reason,
            rpt_result_type,
        } = &lookup
        {
            tracing::warn!(
                queue_id = %req.id, domain = %req.domain, rpt = %rpt_result_type,
                "MTA-STS policy unavailable ({reason}); delivering as without a policy"
            );
            // RFC 8460 section 4.3.2.3: the policy could not be had; counted as a
            // failure of an (unknown) sts policy, before any session.
            let policy = PolicyApplied::Sts {
                policy_string: Vec::new(),
                mx_patterns: Vec::new(),
            };
            self.rpt(
                &req.domain,
                &policy,
                "",
                None,
                Some((rpt_result_type.as_str(), reason.clone())),
            );
        }
        lookup
    }

    /// Where to connect: an address literal, or the MX hosts with their addresses
    /// and the DNSSEC status of each answer.
    /// Err = (permanent, status, reason) when there is no host to try.
    pub async fn resolve_route(&self, domain: &str) -> Result<Route, (bool, String, String)> {
        if let Some(ip) = address_literal(domain) {
            return Ok(Route {
                mx_security: Security::Unvalidated,
                hosts: vec![RouteHost {
                    mx: domain.to_string(),
                    addrs: vec![ip],
                    address_security: Security::Unvalidated,
                    secure_cname: None,
                }],
            });
        }
        let mx = self.resolver.resolve_mx(domain).await;
        if let Some((permanent, status, reason)) = mx.failure(domain) {
            return Err((permanent, status.to_string(), reason));
        }
        let MxResult::Hosts {
            hosts,
            addresses,
            implicit,
            security: mx_security,
        } = mx
        else {
            return Err((false, "4.4.3".into(), format!("no MX hosts for {domain}")));
        };
        let mut route = Vec::new();
        let mut temp_errors = Vec::new();
        for host in hosts {
            let (addrs, address_security, secure_cname) = if let Some(ip) = host.literal {
                tracing::warn!(domain, mx = %host.name, "MX exchange is an IP address (RFC 2181 10.3); using it");
                (vec![ip], Security::Unvalidated, None)
            } else if implicit {
                (addresses.clone(), mx_security, None)
            } else {
                let found = self.resolver.resolve_addrs(&host.name).await;
                if let Some(canonical) = &found.canonical {
                    tracing::debug!(domain, mx = %host.name, canonical, secure = found.canonical_secure, "MX host is an alias (CNAME)");
                }
                if found.addrs.is_empty() {
                    if matches!(found.security, Security::Bogus | Security::Indeterminate) {
                        temp_errors.push(format!(
                            "{}: the address answer is {} (DNSSEC)",
                            host.name, found.security
                        ));
                    } else if let Some(e) = &found.temp_error {
                        temp_errors.push(format!("{}: {e}", host.name));
                    }
                }
                let cname = found.canonical.filter(|_| found.canonical_secure);
                (found.addrs, found.security, cname)
            };
            if addrs.is_empty() {
                tracing::info!(domain, mx = %host.name, "MX host has no address; skipped");
                continue;
            }
            route.push(RouteHost {
                mx: host.name,
                addrs,
                address_security,
                secure_cname,
            });
        }
        if route.is_empty() {
            let reason = if temp_errors.is_empty() {
                format!("no MX host of {domain} has an address")
            } else {
                format!(
                    "address lookups for the MX hosts of {domain} failed: {}",
                    temp_errors.join("; ")
                )
            };
            let status = if temp_errors.is_empty() {
                "4.4.4"
            } else {
                "4.4.3"
            };
            return Err((false, status.into(), reason));
        }
        Ok(Route {
            mx_security,
            hosts: route,
        })
    }

    /// Try the targets in order, with no DNSSEC, TLSA or MTA-STS facts (the
    /// delivery of the release before; tests of the SMTP conversation).
    #[cfg(test)]
    pub(crate) async fn deliver_to(
        &self,
        req: &DeliveryRequest,
        targets: &[Target],
    ) -> DeliveryReport {
        let route = Route {
            mx_security: Security::Unvalidated,
            hosts: targets
                .iter()
                .map(|t| RouteHost {
                    mx: t.mx.clone(),
                    addrs: t.addrs.clone(),
                    address_security: Security::Unvalidated,
                    secure_cname: None,
                })
                .collect(),
        };
        let no_tlsa = HashMap::new();
        self.deliver_route(
            req,
            &route,
            &PolicyLookup::None,
            TlsaSource::Fixed(&no_tlsa),
        )
        .await
    }

    /// Everything after the MX and address lookups, per host in order: the TLSA
    /// lookup (D2-D4), [`policy::plan`], the connection, [`policy::decide`].
    /// The first host that carries the transaction ends the attempt; when none
    /// does, the message is deferred with the last host's reason.
    pub async fn deliver_route(
        &self,
        req: &DeliveryRequest,
        route: &Route,
        sts: &PolicyLookup,
        tlsa: TlsaSource<'_>,
    ) -> DeliveryReport {
        let dane_only = self.config.dane_only(&req.domain) && !req.tls_optional;
        let mut last: Option<HostFailure> = None;
        for host in &route.hosts {
            let prep = prepare_host(host, route.mx_security, sts, tlsa).await;
            let facts = prep.facts(&req.domain, host, route.mx_security, req.level, dane_only);
            let auth = prep.auth.clone();
            let rpt_policy = rpt_policy(&facts, &auth, sts);
            let plan = policy::plan(&facts);
            let problem = |reason: &str| {
                policy::problem::of_plan(&facts, &plan).map(|kind| Problem {
                    kind,
                    detail: reason.to_string(),
                    date: None,
                })
            };
            let use_dane = match &plan {
                Plan::DeferDomain { status, reason } => {
                    tracing::warn!(queue_id = %req.id, mx = %host.mx, status, "domain deferred: {reason}");
                    let mut attempt =
                        attempt_record(&host.mx, "", None, None, reason.clone(), Some(auth));
                    attempt.problem = problem(reason);
                    return all_same(req, false, status, reason, attempt);
                }
                Plan::SkipHost { status, reason } => {
                    tracing::info!(queue_id = %req.id, mx = %host.mx, status, "host not used: {reason}");
                    let mut attempt =
                        attempt_record(&host.mx, "", None, None, reason.clone(), Some(auth));
                    attempt.problem = problem(reason);
                    if let Some(t) = attempt
                        .problem
                        .as_ref()
                        .and_then(|p| p.kind.rpt_result_type())
                    {
                        self.rpt(
                            &req.domain,
                            &rpt_policy,
                            &host.mx,
                            None,
                            Some((t, reason.clone())),
                        );
                    }
                    last = Some(HostFailure {
                        status: status.to_string(),
                        attempt,
                    });
                    continue;
                }
                Plan::Connect { dane } => *dane,
            };
            let ctx = prep.ctx(facts, use_dane);
            for ip in &host.addrs {
                let mut end = self.session(req, &ctx, *ip, None, &rpt_policy).await;
                if let SessionEnd::RetryPlaintext(failure, tls_failure) = end {
                    tracing::info!(
                        queue_id = %req.id, mx = %host.mx, ip = %ip,
                        "TLS failed ({}); level may: retrying without TLS (RFC 7435)",
                        failure.attempt.reply
                    );
                    end = self
                        .session(req, &ctx, *ip, Some(tls_failure), &rpt_policy)
                        .await;
                }
                match end {
                    SessionEnd::Done(outcomes, attempt) => {
                        return DeliveryReport { outcomes, attempt }
                    }
                    SessionEnd::NextHost(f) | SessionEnd::RetryPlaintext(f, _) => {
                        tracing::info!(
                            queue_id = %req.id, mx = %host.mx, ip = %ip, status = %f.status,
                            "host not used: {}", f.attempt.reply
                        );
                        last = Some(f);
                    }
                }
            }
        }
        match last {
            Some(f) => {
                let reason = f.attempt.reply.clone();
                // Only a REQUIRETLS refusal (5.7.30) is permanent here: the other
                // host failures may heal, and the class's grace period decides.
                let permanent = f.status.starts_with('5') && req.requiretls;
                all_same(req, permanent, &f.status, &reason, f.attempt)
            }
            None => {
                let reason = format!("no host to deliver to for {}", req.domain);
                let attempt = attempt_record("", "", None, None, reason.clone(), None);
                all_same(req, false, "4.4.4", &reason, attempt)
            }
        }
    }

    /// `qrelay check`: [`Deliverer::deliver_route`]'s walk without the message.
    /// Every host gets the same preparation and [`policy::plan`]; every address of
    /// a host that may be contacted gets the same session ([`Deliverer::negotiate`])
    /// with `profile`, at level `may` so that the decision judges only what the
    /// transport achieved; a session ready for mail ends with QUIT (no MAIL FROM).
    /// The caller judges the recorded outcomes for each level with
    /// [`policy::decide`]. Unlike a delivery, every host is contacted.
    pub async fn probe_route(
        &self,
        domain: &str,
        route: &Route,
        sts: &PolicyLookup,
        tlsa: TlsaSource<'_>,
        profile: Profile,
    ) -> Vec<HostProbe> {
        let dane_only = self.config.dane_only(domain);
        let dial = Dial {
            log_id: "check",
            domain,
            level: Level::May,
            profile,
        };
        let mut probes = Vec::new();
        for host in &route.hosts {
            let prep = prepare_host(host, route.mx_security, sts, tlsa).await;
            let facts = prep.facts(domain, host, route.mx_security, Level::May, dane_only);
            let plan = policy::plan(&facts);
            let mut addresses = Vec::new();
            if let Plan::Connect { dane } = plan {
                let ctx = prep.ctx(facts, dane);
                for ip in &host.addrs {
                    let mut seen = Observed::default();
                    let ended = match self.negotiate(&dial, &ctx, *ip, None, &mut seen).await {
                        Ok(ready) => {
                            let mut conn = ready.conn;
                            conn.quit().await;
                            None
                        }
                        Err(end) => Some(end.reason().to_string()),
                    };
                    tracing::debug!(domain, mx = %host.mx, ip = %ip, ended = ?ended, "check: address probed");
                    addresses.push(AddressProbe {
                        ip: *ip,
                        seen,
                        ended,
                    });
                }
            }
            probes.push(HostProbe {
                host: host.clone(),
                prep: prep.clone(),
                plan,
                addresses,
            });
        }
        probes
    }

    /// The configuration deliveries run with.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The MTA-STS service, when deliveries consult one.
    pub fn mta_sts(&self) -> Option<&Arc<MtaSts>> {
        self.mta_sts.as_ref()
    }

    /// One connection to one address. `plaintext_retry`: the earlier handshake with
    /// this address failed this way and the level is `may`; do not try TLS again.
    async fn session(
        &self,
        req: &DeliveryRequest,
        ctx: &HostCtx<'_>,
        ip: IpAddr,
        plaintext_retry: Option<TlsFailure>,
        rpt_policy: &PolicyApplied,
    ) -> SessionEnd {
        let dial = Dial {
            log_id: req.id.as_str(),
            domain: &req.domain,
            level: req.level,
            profile: req.tls_profile,
        };
        let mut seen = Observed::default();
        let mx = ctx.facts.host;
        // The `may` retry without TLS: what made the handshake fail is what TLS-RPT
        // hears about this session.
        let retry_failure = plaintext_retry.as_ref().map(|e| {
            let kind = policy::problem::of_tls_failure(e);
            (
                kind.rpt_result_type().unwrap_or("validation-failure"),
                e.describe(mx),
            )
        });
        let Ready {
            mut conn,
            caps,
            facts,
            verdict,
            auth,
            rpt_failure,
        } = match self
            .negotiate(&dial, ctx, ip, plaintext_retry, &mut seen)
            .await
        {
            Ok(ready) => ready,
            Err(end) => {
                // A TLS policy failure is counted for TLS-RPT; a host that could
                // not be reached at all had no TLS session to count.
                if let SessionEnd::NextHost(f) | SessionEnd::RetryPlaintext(f, _) = &end {
                    if let Some(p) = &f.attempt.problem {
                        if let Some(t) = p.kind.rpt_result_type() {
                            self.rpt(
                                &req.domain,
                                rpt_policy,
                                mx,
                                Some(ip),
                                Some((t, p.detail.clone())),
                            );
                        }
                    }
                }
                return end;
            }
        };
        // The session is good enough to send: a success for TLS-RPT, unless it was
        // plaintext or an MTA-STS `testing` policy would have refused it (E6).
        let failure = rpt_failure.or(retry_failure).or_else(|| {
            facts
                .is_none()
                .then(|| ("starttls-not-supported", format!("{mx} offers no STARTTLS")))
        });
        self.rpt(&req.domain, rpt_policy, mx, Some(ip), failure);
        // G2: a REQUIRETLS message goes only to a host whose MX set is DNSSEC- or
        // MTA-STS-validated, whose certificate is verified, and which advertises
        // REQUIRETLS. Anything else is not tried further for this host (5.7.30).
        if req.requiretls {
            if let Some(kind) = requiretls_refusal(ctx, verdict, &auth, caps.requiretls) {
                conn.quit().await;
                let reason = match kind {
                    ProblemKind::RequireTlsNotSupported => format!(
                        "{mx}[{ip}] does not support REQUIRETLS, which the sender requested (RFC 8689)"
                    ),
                    _ => format!(
                        "{mx}[{ip}] is not authenticated the way REQUIRETLS demands (a DNSSEC- or MTA-STS-validated MX and a verified certificate; here: {}; {})",
                        verdict.map(|v| v.as_str()).unwrap_or("no TLS"),
                        auth.basis
                    ),
                };
                let mut attempt = attempt_record(
                    mx,
                    &ip.to_string(),
                    facts,
                    verdict,
                    reason.clone(),
                    Some(auth),
                );
                attempt.problem = Some(Problem {
                    kind,
                    detail: reason,
                    date: None,
                });
                return SessionEnd::NextHost(HostFailure {
                    status: "5.7.30".into(),
                    attempt,
                });
            }
        }
        let extras = Extras {
            transport_header: self
                .config
                .evidence
                .transport_header
                .then(|| transport_header(verdict, &auth, facts.as_ref(), mx)),
            subject_mark: (verdict == Some(TransportVerdict::Verified)
                && !self.config.evidence.subject_mark.is_empty())
            .then(|| self.config.evidence.subject_mark.clone()),
        };
        let end = self
            .transaction(&mut conn, req, &caps, mx, ip, &extras)
            .await;
        if end.clean {
            conn.quit().await;
        } else {
            conn.abort().await;
        }
        let mut attempt =
            attempt_record(mx, &ip.to_string(), facts, verdict, end.reply, Some(auth));
        attempt.requiretls = req.requiretls;
        SessionEnd::Done(end.outcomes, attempt)
    }

    /// One address of one host, up to the point where mail would be sent: connect,
    /// greeting, EHLO, STARTTLS with `dial.profile` (B2), [`policy::decide`], and
    /// EHLO again after TLS. Delivery goes on with MAIL FROM ([`Deliverer::session`]);
    /// `qrelay check` says QUIT ([`Deliverer::probe_route`]). `seen` collects what
    /// the conversation showed, also when it ends early. `Err`: this address cannot
    /// take mail now (the connection is closed).
    async fn negotiate(
        &self,
        dial: &Dial<'_>,
        ctx: &HostCtx<'_>,
        ip: IpAddr,
        plaintext_retry: Option<TlsFailure>,
        seen: &mut Observed,
    ) -> Result<Ready, SessionEnd> {
        let mx = ctx.facts.host;
        let log_id = dial.log_id;
        let d = &self.config.delivery;
        let cmd = d.command_timeout;
        let addr = SocketAddr::new(ip, d.port);
        let ip_s = ip.to_string();
        let fail = |status: &str,
                    reply: String,
                    tls: Option<TlsFacts>,
                    verdict: Option<TransportVerdict>,
                    auth: AuthFacts| {
            SessionEnd::NextHost(HostFailure {
                status: status.to_string(),
                attempt: attempt_record(mx, &ip_s, tls, verdict, reply, Some(auth)),
            })
        };
        let base_auth = || ctx.auth.clone();

        // Connect and greeting.
        let tcp = match timeout(d.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(fail(
                    "4.4.1",
                    format!("cannot connect to {mx}[{ip}]:{}: {e}", d.port),
                    None,
                    None,
                    base_auth(),
                ))
            }
            Err(_) => {
                return Err(fail(
                    "4.4.1",
                    format!(
                        "no answer from {mx}[{ip}]:{} within {:?}",
                        d.port, d.connect_timeout
                    ),
                    None,
                    None,
                    base_auth(),
                ))
            }
        };
        seen.connected = true;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::Plain(BufReader::new(tcp));
        let greeting = match conn.read_reply("to the greeting", cmd).await {
            Ok(r) => r,
            Err(e) => {
                return Err(fail(
                    "4.4.2",
                    format!("{mx}[{ip}]: {e}"),
                    None,
                    None,
                    base_auth(),
                ))
            }
        };
        seen.greeting = Some(greeting.to_string());
        if !greeting.is_positive() {
            // RFC 5321 3.1: a 554 (or 4xx) greeting means no service here; try the next MX.
            conn.quit().await;
            return Err(fail(
                &greeting.status(),
                format!("{mx}[{ip}] greeting: {greeting}"),
                None,
                None,
                base_auth(),
            ));
        }

        // EHLO (or HELO for `may`).
        let mut caps = match self.hello(&mut conn, dial.level, cmd).await {
            Ok(c) => c,
            Err((status, reply)) => {
                conn.quit().await;
                return Err(fail(
                    &status,
                    format!("{mx}[{ip}]: {reply}"),
                    None,
                    None,
                    base_auth(),
                ));
            }
        };
        seen.starttls_offered = caps.starttls;
        seen.requiretls = caps.requiretls;

        // STARTTLS whenever offered (B2), unless this is the `may` plaintext retry.
        let server_name = server_name_for(mx, ip);
        let mut facts: Option<TlsFacts> = None;
        let tls_outcome = match plaintext_retry {
            Some(f) => TlsOutcome::PlaintextRetry(f),
            None if policy::use_starttls(caps.starttls) => {
                match self
                    .start_tls(conn, dial, ctx, &server_name, cmd, seen)
                    .await
                {
                    Ok((c, f, established)) => {
                        conn = c;
                        facts = Some(f);
                        TlsOutcome::Established(established)
                    }
                    Err((c, f)) => {
                        if let Some(mut c) = c {
                            c.quit().await;
                        }
                        // The connection is no longer usable after a failed handshake.
                        let inputs = Inputs {
                            facts: ctx.facts.clone(),
                            starttls_offered: true,
                            tls: TlsOutcome::Failed(f.clone()),
                        };
                        let decision = policy::decide(&inputs);
                        let problem = problem_of(&inputs, &decision, &seen.chain);
                        seen.outcome = Some(inputs.tls);
                        seen.decision = Some(decision.clone());
                        let auth = evidence(ctx, &decision, None);
                        return Err(with_problem(
                            problem,
                            match decision.action {
                                Action::RetryPlaintext { reason } => SessionEnd::RetryPlaintext(
                                    HostFailure {
                                        status: "4.7.5".into(),
                                        attempt: attempt_record(
                                            mx,
                                            &ip_s,
                                            None,
                                            None,
                                            reason,
                                            Some(auth),
                                        ),
                                    },
                                    f,
                                ),
                                Action::SkipHost { status, reason }
                                | Action::DeferDomain { status, reason } => {
                                    fail(status, reason, None, None, auth)
                                }
                                Action::Send => fail(
                                    "4.7.5",
                                    format!("{mx}[{ip}]: TLS failed: {f}"),
                                    None,
                                    None,
                                    auth,
                                ),
                            },
                        ));
                    }
                }
            }
            None => TlsOutcome::NotAttempted,
        };

        // The decision for this host.
        let dane_outcome = match &tls_outcome {
            TlsOutcome::Established(e) => e.dane.clone(),
            _ => None,
        };
        let inputs = Inputs {
            facts: ctx.facts.clone(),
            starttls_offered: caps.starttls,
            tls: tls_outcome,
        };
        let decision = policy::decide(&inputs);
        let problem = problem_of(&inputs, &decision, &seen.chain);
        // E6: an MTA-STS `testing` failure does not stop the delivery; it is
        // reported (TLS-RPT) with the category of what failed.
        let rpt_failure = decision.report.as_ref().map(|report| {
            tracing::warn!(id = log_id, mx, ip = %ip, "policy failure to report (TLS-RPT): {report}");
            let kind = match &inputs.tls {
                TlsOutcome::Established(Established { pkix: Err(e), .. }) => {
                    policy::problem::of_tls_failure(e)
                }
                TlsOutcome::Established(_) => ProblemKind::StsMxNotListed,
                _ => ProblemKind::StarttlsNotSupported,
            };
            (
                kind.rpt_result_type().unwrap_or("validation-failure"),
                report.clone(),
            )
        });
        seen.outcome = Some(inputs.tls);
        seen.decision = Some(decision.clone());
        seen.tls = facts.clone();
        let auth = evidence(ctx, &decision, dane_outcome.as_ref());
        let verdict = match decision.action {
            Action::Send => decision.verdict,
            Action::SkipHost { status, reason } | Action::DeferDomain { status, reason } => {
                conn.quit().await;
                return Err(with_problem(
                    problem,
                    fail(status, reason, facts, decision.verdict, auth),
                ));
            }
            Action::RetryPlaintext { reason } => {
                conn.quit().await;
                return Err(SessionEnd::RetryPlaintext(
                    HostFailure {
                        status: "4.7.5".into(),
                        attempt: attempt_record(
                            mx,
                            &ip_s,
                            facts,
                            decision.verdict,
                            reason.clone(),
                            Some(auth),
                        ),
                    },
                    TlsFailure::Other(reason),
                ));
            }
        };
        tracing::debug!(
            id = log_id, mx, ip = %ip,
            verdict = verdict.map(|v| v.as_str()).unwrap_or("none"),
            mechanism = %auth.mechanism,
            "host accepted: {}", auth.basis
        );

        // RFC 3207 4.2: after TLS, discard what the server said before and ask again.
        if matches!(conn, Conn::Tls(_)) {
            caps = match conn
                .command(&format!("EHLO {}", self.helo), "to EHLO", cmd)
                .await
            {
                Ok(r) if r.is_positive() => Capabilities::from_ehlo(&r),
                Ok(r) => {
                    conn.quit().await;
                    return Err(fail(
                        &r.status(),
                        format!("{mx}[{ip}] EHLO after STARTTLS: {r}"),
                        facts,
                        verdict,
                        auth,
                    ));
                }
                Err(e) => {
                    return Err(fail(
                        "4.4.2",
                        format!("{mx}[{ip}]: {e}"),
                        facts,
                        verdict,
                        auth,
                    ))
                }
            };
            seen.requiretls = caps.requiretls;
        }
        Ok(Ready {
            conn,
            caps,
            facts,
            verdict,
            auth,
            rpt_failure,
        })
    }

    /// EHLO, with the HELO fallback for `may`. Err = (status, reply text).
    async fn hello(
        &self,
        conn: &mut Conn,
        level: Level,
        cmd: Duration,
    ) -> Result<Capabilities, (String, String)> {
        let io_err = |e: ConnError| ("4.4.2".to_string(), e.to_string());
        let r = conn
            .command(&format!("EHLO {}", self.helo), "to EHLO", cmd)
            .await
            .map_err(io_err)?;
        if r.is_positive() {
            return Ok(Capabilities::from_ehlo(&r));
        }
        if r.is_permanent() && level == Level::May {
            // RFC 5321 3.2: a server that does not know EHLO answers 5xx; HELO works,
            // without extensions (so without STARTTLS), acceptable only for `may`.
            let h = conn
                .command(&format!("HELO {}", self.helo), "to HELO", cmd)
                .await
                .map_err(io_err)?;
            if h.is_positive() {
                return Ok(Capabilities::default());
            }
            return Err((h.status(), format!("HELO refused: {h}")));
        }
        Err((r.status(), format!("EHLO refused: {r}")))
    }

    /// STARTTLS and the handshake with the request's TLS profile. A DANE host is
    /// judged by a [`DaneVerifier`] inside the handshake (SNI = TLSA base domain,
    /// D10); any other host's chain is accepted in the handshake (its signature
    /// always checked) and PKIX is judged afterwards, for the MX name and for
    /// names within the recipient domain. Ok = (TLS connection, facts, what the
    /// session established); Err = (the plain connection if still usable, why).
    async fn start_tls(
        &self,
        mut conn: Conn,
        dial: &Dial<'_>,
        ctx: &HostCtx<'_>,
        server_name: &ServerName<'static>,
        cmd: Duration,
        seen: &mut Observed,
    ) -> Result<(Conn, TlsFacts, Established), (Option<Conn>, TlsFailure)> {
        let profile = dial.profile;
        let mx = ctx.facts.host;
        // The connector first: a DANE verifier that cannot be built fails here,
        // before STARTTLS.
        let (connector, connect_name, slot) = match ctx.dane {
            Some((base_domain, usable)) => {
                let tls_profile = self.tls.profile(profile);
                let slot = OutcomeSlot::new();
                let built = DaneVerifier::new(
                    usable,
                    base_domain,
                    mx,
                    tls_profile.provider(),
                    slot.clone(),
                )
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let v = v.with_leaf_check(Arc::new(move |leaf| tls_profile.check_leaf(leaf)));
                    let name = v.server_name();
                    tls_profile
                        .client_config(Arc::new(v))
                        .map(|cfg| (cfg, name))
                        .map_err(|e| e.to_string())
                });
                match built {
                    Ok((cfg, name)) => (TlsConnector::from(cfg), name, Some(slot)),
                    Err(e) => return Err((Some(conn), TlsFailure::Other(e))),
                }
            }
            None => (
                TlsConnector::from(self.tls.config(Level::Encrypted, profile)),
                server_name.clone(),
                None,
            ),
        };
        let reply = match conn.command("STARTTLS", "to STARTTLS", cmd).await {
            Ok(r) => r,
            Err(e) => return Err((None, TlsFailure::Other(e.to_string()))),
        };
        if !reply.is_positive() {
            return Err((
                Some(conn),
                TlsFailure::Other(format!("STARTTLS refused: {reply}")),
            ));
        }
        let Conn::Plain(reader) = conn else {
            return Err((None, TlsFailure::Other("STARTTLS inside TLS".into())));
        };
        // Anything the server sent after its 220 would be read as if it came through
        // TLS: a plaintext injection (CVE-2011-0411 class). Refuse.
        if !reader.buffer().is_empty() {
            return Err((
                None,
                TlsFailure::Other(
                    "server sent data after its STARTTLS reply (possible injection)".into(),
                ),
            ));
        }
        let tcp = reader.into_inner();
        let stream = match timeout(cmd, connector.connect(connect_name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let failure = match TlsaMismatch::find_in_io(&e) {
                    Some(m) => TlsFailure::Other(m.to_string()),
                    None => TlsFailure::from_handshake(&e, profile),
                };
                return Err((None, failure));
            }
            Err(_) => {
                return Err((
                    None,
                    TlsFailure::Other(format!("handshake not finished within {cmd:?}")),
                ))
            }
        };
        let (_, session) = stream.get_ref();
        let chain = session.peer_certificates();
        seen.chain = chain
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        let pkix = match chain {
            Some(chain) => self.tls.pkix_check(chain, server_name),
            None => Err(TlsFailure::NotTrusted),
        };
        let name_in_domain = match (chain, &slot) {
            (Some(chain), None) => name_in_domain(&self.tls, chain, dial.domain),
            _ => None,
        };
        let facts = session_facts(session, pkix.is_ok(), profile);
        let established = Established {
            version: facts.version.clone(),
            pkix,
            name_in_domain,
            dane: slot.and_then(|s| s.get()),
        };
        Ok((
            Conn::Tls(Box::new(BufReader::new(stream))),
            facts,
            established,
        ))
    }

    /// MAIL, RCPT, DATA.
    async fn transaction(
        &self,
        conn: &mut Conn,
        req: &DeliveryRequest,
        caps: &Capabilities,
        mx: &str,
        ip: IpAddr,
        extras: &Extras,
    ) -> TxEnd {
        let cmd = self.config.delivery.command_timeout;
        let n = req.recipients.len();
        let failed_all = |status: &str, reply: String| TxEnd {
            outcomes: vec![
                RcptOutcome::Failed {
                    reply: reply.clone(),
                    status: status.to_string()
                };
                n
            ],
            reply,
            clean: true,
        };

        // What the message needs that the server must support.
        if req.smtputf8 && !caps.smtputf8 {
            return failed_all(
                "5.6.7",
                format!(
                    "{mx}[{ip}] does not support SMTPUTF8, which this message needs (RFC 6531 3.4)"
                ),
            );
        }
        if req.body == BodyType::BinaryMime {
            return failed_all(
                "5.6.3",
                "the message is BINARYMIME, which cannot be sent without CHUNKING support in this relay".into(),
            );
        }
        let size = req.content.size();
        if let Some(limit) = caps.size.filter(|l| *l > 0 && size > *l) {
            return failed_all(
                "5.3.4",
                format!(
                    "message too big for {mx}: {size} bytes, the server accepts at most {limit}"
                ),
            );
        }

        let mail = mail_from_line(req, caps, extras.added_bytes());
        let rcpts: Vec<String> = req
            .recipients
            .iter()
            .map(|r| rcpt_to_line(r, caps))
            .collect();

        // Per recipient: None = accepted at RCPT, Some = final outcome already.
        let mut results: Vec<Option<RcptOutcome>> = vec![None; n];
        let deferred_all = |status: &str, why: String, results: &[Option<RcptOutcome>]| {
            let outcomes = results
                .iter()
                .map(|r| {
                    r.clone().unwrap_or_else(|| RcptOutcome::Deferred {
                        reply: why.clone(),
                        status: status.to_string(),
                    })
                })
                .collect();
            TxEnd {
                outcomes,
                reply: why,
                clean: true,
            }
        };

        // MAIL and RCPT, pipelined when offered (RFC 2920 3.1).
        let mail_reply;
        let mut rcpt_replies: Vec<Reply> = Vec::with_capacity(n);
        if caps.pipelining {
            let mut batch = format!("{mail}\r\n");
            for r in &rcpts {
                batch.push_str(r);
                batch.push_str("\r\n");
            }
            if let Err(e) = conn.send(batch.as_bytes(), cmd).await {
                return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results);
            }
            mail_reply = match conn.read_reply("to MAIL FROM", cmd).await {
                Ok(r) => r,
                Err(e) => return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results),
            };
            for _ in &rcpts {
                match conn.read_reply("to RCPT TO", cmd).await {
                    Ok(r) => rcpt_replies.push(r),
                    Err(e) => return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results),
                }
            }
        } else {
            mail_reply = match conn.command(&mail, "to MAIL FROM", cmd).await {
                Ok(r) => r,
                Err(e) => return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results),
            };
            if mail_reply.is_positive() {
                for r in &rcpts {
                    match conn.command(r, "to RCPT TO", cmd).await {
                        Ok(reply) => rcpt_replies.push(reply),
                        Err(e) => {
                            // Keep what was decided; the rest waits for the next attempt.
                            for (slot, reply) in results.iter_mut().zip(&rcpt_replies) {
                                *slot = rcpt_outcome(reply, caps);
                            }
                            return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results);
                        }
                    }
                }
            }
        }
        if !mail_reply.is_positive() {
            let text = mail_reply.to_string();
            let outcome = if mail_reply.is_permanent() {
                RcptOutcome::Failed {
                    reply: text.clone(),
                    status: mail_reply.status(),
                }
            } else {
                RcptOutcome::Deferred {
                    reply: text.clone(),
                    status: mail_reply.status(),
                }
            };
            return TxEnd {
                outcomes: vec![outcome; n],
                reply: text,
                clean: true,
            };
        }
        for (slot, reply) in results.iter_mut().zip(&rcpt_replies) {
            *slot = rcpt_outcome(reply, caps);
        }
        if results.iter().all(Option::is_some) {
            // Nobody accepted: no DATA (RFC 5321 3.3). QUIT follows in the caller.
            let last = rcpt_replies
                .last()
                .map(Reply::to_string)
                .unwrap_or_default();
            return TxEnd {
                outcomes: results.into_iter().flatten().collect(),
                reply: last,
                clean: true,
            };
        }

        // DATA.
        let data_reply = match conn.command("DATA", "to DATA", cmd).await {
            Ok(r) => r,
            Err(e) => return deferred_all("4.4.2", format!("{mx}[{ip}]: {e}"), &results),
        };
        if data_reply.code != 354 {
            return finish(results, &data_reply, caps);
        }
        if let Err(e) = send_content(conn, &req.content, extras, cmd).await {
            let (status, why) = match &e {
                DataError::Local(_) => {
                    tracing::error!(queue_id = %req.id, error = %e, "cannot read message content");
                    ("4.3.0", e.to_string())
                }
                DataError::Conn(_) => ("4.4.2", format!("{mx}[{ip}] {e}")),
            };
            // The data is unfinished: end the connection without the final dot.
            return TxEnd {
                clean: false,
                ..deferred_all(status, why, &results)
            };
        }
        // RFC 5321 4.5.3.2.6 suggests 10 minutes for the reply to the final dot: the
        // server may be scanning the message. Never less than the command timeout.
        let final_limit = cmd.max(Duration::from_secs(600)).min(cmd * 4);
        let final_reply = match conn.read_reply("to the end of data", final_limit).await {
            Ok(r) => r,
            Err(e) => {
                return deferred_all(
                    "4.4.2",
                    format!("{mx}[{ip}] after the message was sent: {e}"),
                    &results,
                )
            }
        };
        finish(results, &final_reply, caps)
    }
}

/// The outcome of a RCPT reply: `None` when accepted (its fate is decided at DATA).
fn rcpt_outcome(reply: &Reply, _caps: &Capabilities) -> Option<RcptOutcome> {
    if reply.is_positive() {
        None
    } else if reply.is_permanent() {
        Some(RcptOutcome::Failed {
            reply: reply.to_string(),
            status: reply.status(),
        })
    } else {
        Some(RcptOutcome::Deferred {
            reply: reply.to_string(),
            status: reply.status(),
        })
    }
}

/// Apply the DATA (or final-dot) reply to every recipient accepted at RCPT.
fn finish(results: Vec<Option<RcptOutcome>>, reply: &Reply, caps: &Capabilities) -> TxEnd {
    let text = reply.to_string();
    let outcomes = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                if reply.is_positive() {
                    RcptOutcome::Delivered {
                        reply: text.clone(),
                        remote_dsn: caps.dsn,
                    }
                } else if reply.is_permanent() {
                    RcptOutcome::Failed {
                        reply: text.clone(),
                        status: reply.status(),
                    }
                } else {
                    RcptOutcome::Deferred {
                        reply: text.clone(),
                        status: reply.status(),
                    }
                }
            })
        })
        .collect();
    TxEnd {
        outcomes,
        reply: text,
        clean: true,
    }
}

/// Send the content as DATA: read [`SEND_CHUNK`] bytes at a time on the blocking
/// pool, dot-stuff, write (each write within `limit`, as every command), and end
/// with the terminating ".". Exactly `content.size()` bytes are sent; content that
/// ends early counts as a local read error, so SIZE= was not a lie.
async fn send_content(
    conn: &mut Conn,
    content: &Arc<dyn ContentSource>,
    extras: &Extras,
    limit: Duration,
) -> Result<(), DataError> {
    let size = content.size();
    let mut stuffer = DotStuffer::new();
    let mut buf = vec![0u8; SEND_CHUNK];
    let mut out = Vec::with_capacity(DotStuffer::max_encoded_len(SEND_CHUNK) + 5);
    let mut offset = 0u64;
    if let Some(h) = &extras.transport_header {
        // Our own header line goes first; it is plain ASCII with no leading dot.
        stuffer.push(h.as_bytes(), &mut out);
    }
    loop {
        if offset > 0 || extras.transport_header.is_none() {
            out.clear();
        }
        if offset < size {
            let want = usize::try_from(size - offset).map_or(SEND_CHUNK, |r| r.min(SEND_CHUNK));
            let source = content.clone();
            let mut piece = std::mem::take(&mut buf);
            let (piece, read) = tokio::task::spawn_blocking(move || {
                let read = source.read_at(&mut piece[..want], offset);
                (piece, read)
            })
            .await
            .map_err(|e| DataError::Local(std::io::Error::other(e)))?;
            buf = piece;
            let n = read.map_err(DataError::Local)?;
            if n == 0 {
                return Err(DataError::Local(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("content ends at byte {offset} of {size}"),
                )));
            }
            match extras.subject_mark.as_deref() {
                Some(mark) if offset == 0 => {
                    let marked = mark_subject(&buf[..n], mark);
                    stuffer.push(&marked, &mut out);
                }
                _ => stuffer.push(&buf[..n], &mut out),
            }
            offset += n as u64;
        }
        if offset >= size {
            // The last piece carries the end of data: one write fewer.
            stuffer.finish(&mut out);
            conn.send(&out, limit).await?;
            return Ok(());
        }
        conn.send(&out, limit).await?;
    }
}

/// The policy that applies to a host, as TLS-RPT names it (RFC 8460 section
/// 4.3): DANE when its TLSA records make TLS mandatory, else the domain's MTA-STS
/// policy in enforce or testing mode, else none.
fn rpt_policy(f: &HostFacts<'_>, auth: &AuthFacts, sts: &PolicyLookup) -> PolicyApplied {
    if f.dane.tls_required() {
        if let Some(t) = &auth.tlsa {
            return PolicyApplied::Tlsa {
                records: t.records.clone(),
            };
        }
    }
    match sts.policy() {
        Some(p) if p.mode != mtasts::Mode::None => {
            let mode = match p.mode {
                mtasts::Mode::Enforce => "enforce",
                mtasts::Mode::Testing => "testing",
                mtasts::Mode::None => "none",
            };
            let mut lines = vec!["version: STSv1".to_string(), format!("mode: {mode}")];
            lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
            lines.push(format!("max_age: {}", p.max_age));
            PolicyApplied::Sts {
                policy_string: lines,
                mx_patterns: p.mx.clone(),
            }
        }
        _ => PolicyApplied::None,
    }
}

/// What this session adds to the message on its way out (`[evidence]`).
#[derive(Debug, Default)]
struct Extras {
    /// `X-Qrelay-Transport: ...` with CRLF, put in front of the header section.
    transport_header: Option<String>,
    /// A mark put in front of the Subject (verified deliveries only).
    subject_mark: Option<String>,
}

impl Extras {
    /// How many bytes longer the message gets (for SIZE=).
    fn added_bytes(&self) -> u64 {
        let h = self.transport_header.as_ref().map_or(0, |h| h.len());
        let m = self.subject_mark.as_ref().map_or(0, |m| m.len() + 1);
        (h + m) as u64
    }
}

/// `X-Qrelay-Transport: verified dane-ee TLSv1.3 TLS13_AES_256_GCM_SHA384
/// X25519MLKEM768 mx=mx.example.org`, with CRLF: how this message left, for the
/// recipient to see (off by default).
fn transport_header(
    verdict: Option<TransportVerdict>,
    auth: &AuthFacts,
    tls: Option<&TlsFacts>,
    mx: &str,
) -> String {
    let mut words = vec![
        verdict.map_or("plaintext", |v| v.as_str()).to_string(),
        auth.mechanism.as_str().to_string(),
    ];
    if let Some(t) = tls {
        words.push(t.version.clone());
        words.push(t.cipher.clone());
        if let Some(g) = &t.group {
            words.push(g.clone());
        }
    }
    // Host names are LDH; keep the header a single clean line whatever comes in.
    let mx: String = mx
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        .collect();
    words.push(format!("mx={mx}"));
    format!("X-Qrelay-Transport: {}\r\n", words.join(" "))
}

/// Put `mark` in front of the Subject field of the header section in `head` (the
/// first piece of the message). A Subject beyond the first piece, or none, is left
/// alone: the mark is a courtesy, never a reason to hold the message.
fn mark_subject(head: &[u8], mark: &str) -> Vec<u8> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 2);
    let mut at = 0;
    while at < end {
        let line_end = head[at..end]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(end, |p| at + p + 2);
        let line = &head[at..line_end];
        if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            let mut value = at + 8;
            if head.get(value) == Some(&b' ') {
                value += 1;
            }
            let mut out = Vec::with_capacity(head.len() + mark.len() + 1);
            out.extend_from_slice(&head[..value]);
            out.extend_from_slice(mark.trim_end().as_bytes());
            out.push(b' ');
            out.extend_from_slice(&head[value..]);
            return out;
        }
        at = line_end;
    }
    head.to_vec()
}

/// G2: why a REQUIRETLS message may not go to this host, or `None` when it may.
/// The MX set must be DNSSEC-validated (DANE, or PKIX on a secure MX answer) or
/// MTA-STS-validated, the certificate verified, and REQUIRETLS advertised.
fn requiretls_refusal(
    ctx: &HostCtx<'_>,
    verdict: Option<TransportVerdict>,
    auth: &AuthFacts,
    advertised: bool,
) -> Option<ProblemKind> {
    let authenticated = verdict == Some(TransportVerdict::Verified)
        && match auth.mechanism {
            Mechanism::DaneEe | Mechanism::DaneTa | Mechanism::MtaSts => true,
            // A certificate name within the recipient domain authenticates the
            // server, but not the MX set: that needs a DNSSEC-secure MX answer.
            Mechanism::Pkix => ctx.facts.mx_security == Security::Secure,
            Mechanism::None => false,
        };
    if !authenticated {
        Some(ProblemKind::NotAuthenticated)
    } else if !advertised {
        Some(ProblemKind::RequireTlsNotSupported)
    } else {
        None
    }
}

/// The problem category of a decision that does not send, with its reason and,
/// for an expired certificate, the end of its validity.
fn problem_of(
    inputs: &Inputs<'_>,
    decision: &Decision,
    chain: &[CertificateDer<'static>],
) -> Option<Problem> {
    let kind = policy::problem::of_decision(inputs, decision)?;
    let detail = match &decision.action {
        Action::SkipHost { reason, .. } | Action::DeferDomain { reason, .. } => reason.clone(),
        _ => String::new(),
    };
    let date = (kind == ProblemKind::CertificateExpired)
        .then(|| chain.first().and_then(|c| not_after(c)))
        .flatten();
    Some(Problem { kind, detail, date })
}

/// The end of a certificate's validity (Unix seconds).
fn not_after(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    u64::try_from(parsed.validity().not_after.timestamp()).ok()
}

/// Attach the problem to a host failure's attempt.
fn with_problem(problem: Option<Problem>, end: SessionEnd) -> SessionEnd {
    match end {
        SessionEnd::NextHost(mut f) => {
            f.attempt.problem = problem;
            SessionEnd::NextHost(f)
        }
        SessionEnd::RetryPlaintext(mut f, e) => {
            f.attempt.problem = problem;
            SessionEnd::RetryPlaintext(f, e)
        }
        done => done,
    }
}

/// `MAIL FROM:<...>` with the parameters the server understands.
fn mail_from_line(req: &DeliveryRequest, caps: &Capabilities, added: u64) -> String {
    let mut line = format!("MAIL FROM:<{}>", req.sender);
    if caps.size.is_some() {
        line.push_str(&format!(" SIZE={}", req.content.size() + added));
    }
    // G2: passed on (the session checked that the server advertises it).
    if req.requiretls && caps.requiretls {
        line.push_str(" REQUIRETLS");
    }
    if req.body == BodyType::EightBitMime && caps.eight_bit_mime {
        line.push_str(" BODY=8BITMIME");
    }
    if req.smtputf8 && caps.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match req.ret {
            Some(Ret::Full) => line.push_str(" RET=FULL"),
            Some(Ret::Headers) => line.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &req.envid {
            line.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    line
}

/// `RCPT TO:<...>` with the DSN parameters when the server offers DSN (RFC 3461 4).
fn rcpt_to_line(r: &super::RcptRequest, caps: &Capabilities) -> String {
    let mut line = format!("RCPT TO:<{}>", r.address);
    if caps.dsn {
        if let Some(n) = r.notify {
            let words = n.keywords();
            if !words.is_empty() {
                line.push_str(&format!(" NOTIFY={}", words.join(",")));
            }
        }
        if let Some(orcpt) = &r.orcpt {
            // Stored as "addr-type;address" with the address decoded; encode it again.
            match orcpt.split_once(';') {
                Some((kind, addr)) => line.push_str(&format!(" ORCPT={kind};{}", xtext(addr))),
                None => line.push_str(&format!(" ORCPT=rfc822;{}", xtext(orcpt))),
            }
        }
    }
    line
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3).
fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("ipv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// SNI and the name to verify: the MX host name (RFC 7672 and PKIX both check the
/// name we looked up, never one the server chose); an address literal verifies as IP.
fn server_name_for(mx: &str, ip: IpAddr) -> ServerName<'static> {
    if address_literal(mx).is_some() {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(mx.to_string()).unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}

/// Everything known about one host before connecting.
struct HostCtx<'a> {
    facts: HostFacts<'a>,
    /// The evidence so far (DNS, TLSA, MTA-STS); the outcome is added per session.
    auth: AuthFacts,
    /// DANE authenticates this host: (TLSA base domain, usable records).
    dane: Option<(&'a str, &'a UsableTlsa)>,
}

/// What one session is for: whose log lines, which recipient domain, which level
/// and which TLS profile.
struct Dial<'a> {
    /// The queue id of a delivery; "check" for `qrelay check`.
    log_id: &'a str,
    domain: &'a str,
    level: Level,
    profile: Profile,
}

/// A session ready for MAIL FROM: the decision allowed this host.
struct Ready {
    conn: Conn,
    /// What the server offers (after TLS: what it offered over TLS).
    caps: Capabilities,
    facts: Option<TlsFacts>,
    verdict: Option<TransportVerdict>,
    auth: AuthFacts,
    /// A failure to report through TLS-RPT although the host may be used (E6).
    rpt_failure: Option<(&'static str, String)>,
}

/// What a session showed up to the decision, whether or not it got that far
/// (`qrelay check` reports it).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The TCP connection was established.
    pub connected: bool,
    /// The server's greeting.
    pub greeting: Option<String>,
    /// STARTTLS was in the EHLO reply.
    pub starttls_offered: bool,
    /// REQUIRETLS (RFC 8689) was in the last EHLO reply (over TLS when TLS was up).
    pub requiretls: bool,
    /// The established session's facts.
    pub tls: Option<TlsFacts>,
    /// The server's certificate chain, leaf first (empty without a handshake).
    pub chain: Vec<CertificateDer<'static>>,
    /// The TLS outcome [`policy::decide`] judged; `None` when the session ended
    /// before the decision (no connection, greeting or EHLO refused).
    pub outcome: Option<TlsOutcome>,
    /// The decision made for the session's level.
    pub decision: Option<Decision>,
}

/// One address of one MX host as `qrelay check` saw it.
#[derive(Debug, Clone)]
pub struct AddressProbe {
    pub ip: IpAddr,
    pub seen: Observed,
    /// Why the session ended before it was ready for mail (`None`: it was ready,
    /// and QUIT was sent instead of MAIL FROM).
    pub ended: Option<String>,
}

/// One MX host as `qrelay check` saw it: the same preparation as a delivery
/// (TLSA lookup, MTA-STS check, [`policy::plan`]) and each address's session.
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub host: RouteHost,
    pub prep: HostPrep,
    /// [`policy::plan`]'s answer; the addresses were only contacted on `Connect`.
    pub plan: Plan,
    pub addresses: Vec<AddressProbe>,
}

/// What is known of one MX host before any connection: what DANE requires, what
/// the MTA-STS policy says about it, and the evidence of both.
#[derive(Debug, Clone)]
pub struct HostPrep {
    pub dane: DaneRequirement,
    pub mta_sts: MxCheck,
    pub auth: AuthFacts,
}

impl HostPrep {
    /// The decision's facts for a message of `required` level to `domain`.
    pub fn facts<'a>(
        &'a self,
        domain: &'a str,
        host: &'a RouteHost,
        mx_security: Security,
        required: Level,
        dane_only: bool,
    ) -> HostFacts<'a> {
        HostFacts {
            domain,
            host: &host.mx,
            required,
            dane_only,
            mx_security,
            address_security: host.address_security,
            dane: &self.dane,
            mta_sts: self.mta_sts,
        }
    }

    /// The session context; `use_dane` from [`Plan::Connect`].
    fn ctx<'a>(&'a self, facts: HostFacts<'a>, use_dane: bool) -> HostCtx<'a> {
        let dane = match (&self.dane, use_dane) {
            (
                DaneRequirement::Authenticate {
                    base_domain,
                    usable,
                    ..
                },
                true,
            ) => Some((base_domain.as_str(), usable)),
            _ => None,
        };
        HostCtx {
            facts,
            auth: self.auth.clone(),
            dane,
        }
    }
}

/// The TLSA lookup (D2-D4) and the MTA-STS check (E5) of one host, with their
/// evidence.
async fn prepare_host(
    host: &RouteHost,
    mx_security: Security,
    sts: &PolicyLookup,
    tlsa: TlsaSource<'_>,
) -> HostPrep {
    let (dane, tlsa_facts) = host_requirement(host, mx_security, tlsa).await;
    let mta_sts = mtasts::check_mx(sts.policy(), &host.mx);
    let auth = AuthFacts {
        mechanism: Mechanism::None,
        basis: String::new(),
        mx_dnssec: mx_security.as_str().into(),
        address_dnssec: host.address_security.as_str().into(),
        tlsa: tlsa_facts,
        mta_sts: match sts {
            PolicyLookup::Found { policy, id, .. } => Some(MtaStsFacts {
                id: id.clone(),
                mode: policy.mode.as_str().into(),
                covered: mta_sts.covered,
            }),
            _ => None,
        },
    };
    HostPrep {
        dane,
        mta_sts,
        auth,
    }
}

/// What DANE requires of a host (D2-D4): the TLSA lookups made in order (only
/// when the MX and address answers are secure), and the evidence of the last.
async fn host_requirement(
    host: &RouteHost,
    mx_security: Security,
    source: TlsaSource<'_>,
) -> (DaneRequirement, Option<TlsaFacts>) {
    match dane::precondition(&host.mx, mx_security, host.address_security) {
        Precondition::LookUpTlsa => {}
        Precondition::NotApplicable { reason }
        | Precondition::SkipHost { reason, .. }
        | Precondition::DeferDomain { reason, .. } => {
            return (DaneRequirement::None { reason }, None)
        }
    }
    let mut answers = Vec::new();
    let mut facts = None;
    for candidate in dane::tlsa_candidates(&host.mx, host.secure_cname.as_deref()) {
        let answer = source.answer(&candidate.qname).await;
        facts = Some(tlsa_facts(&candidate.base_domain, &answer));
        let ends = dane::tlsa_step(&candidate, answer.clone()).is_some();
        answers.push((candidate, answer));
        if ends {
            break;
        }
    }
    (dane::requirement(answers), facts)
}

/// The evidence of one TLSA answer.
fn tlsa_facts(base_domain: &str, answer: &TlsaAnswer) -> TlsaFacts {
    let (dnssec, records) = match answer {
        TlsaAnswer::Secure(set) => (
            "secure".to_string(),
            set.records().iter().map(|r| r.to_string()).collect(),
        ),
        TlsaAnswer::SecureDenial => ("secure denial".to_string(), Vec::new()),
        TlsaAnswer::Insecure => ("insecure".to_string(), Vec::new()),
        TlsaAnswer::Failed { reason } => (format!("failed: {reason}"), Vec::new()),
    };
    TlsaFacts {
        dnssec,
        base_domain: base_domain.to_string(),
        records,
        matched: None,
    }
}

/// The host's evidence with the decision's mechanism and the matched TLSA record.
fn evidence(ctx: &HostCtx<'_>, decision: &Decision, dane: Option<&DaneOutcome>) -> AuthFacts {
    let mut auth = ctx.auth.clone();
    auth.mechanism = decision.mechanism;
    auth.basis = decision.basis.clone();
    if let (Some(t), Some(o)) = (auth.tlsa.as_mut(), dane) {
        t.matched = Some(o.record.to_string());
    }
    auth
}

/// A certificate name, PKIX-valid, equal to the recipient `domain` or a subdomain
/// of it (standards.md A3, Postfix `secure` with nexthop:dot-nexthop). The names
/// are the certificate's DNS subject alternative names; each candidate is then
/// checked by PKIX (chain, dates, name) like any server name. A wildcard
/// `*.<base>` counts when `<base>` is within the domain.
fn name_in_domain(tls: &ClientTls, chain: &[CertificateDer<'_>], domain: &str) -> Option<String> {
    if address_literal(domain).is_some() {
        return None;
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let leaf = chain.first()?;
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .ok()?
        .valid_dns_names()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let within = |name: &str| name == domain || name.ends_with(&format!(".{domain}"));
    names.into_iter().find(|name| {
        let probe = match name.strip_prefix("*.") {
            Some(base) if within(base) => format!("qrelay-check.{base}"),
            Some(_) => return false,
            None if within(name) => name.clone(),
            None => return false,
        };
        ServerName::try_from(probe).is_ok_and(|sn| tls.pkix_check(chain, &sn).is_ok())
    })
}

fn attempt_record(
    mx: &str,
    ip: &str,
    tls: Option<TlsFacts>,
    verdict: Option<TransportVerdict>,
    reply: String,
    auth: Option<AuthFacts>,
) -> Attempt {
    Attempt {
        at: now_secs(),
        mx: mx.to_string(),
        ip: ip.to_string(),
        tls,
        verdict,
        reply,
        auth,
        problem: None,
        requiretls: false,
    }
}

/// The same outcome for every recipient (DNS result, no host reachable).
fn all_same(
    req: &DeliveryRequest,
    permanent: bool,
    status: &str,
    reason: &str,
    attempt: Attempt,
) -> DeliveryReport {
    let one = if permanent {
        RcptOutcome::Failed {
            reply: reason.to_string(),
            status: status.to_string(),
        }
    } else {
        RcptOutcome::Deferred {
            reply: reason.to_string(),
            status: status.to_string(),
        }
    };
    DeliveryReport {
        outcomes: vec![one; req.recipients.len()],
        attempt,
    }
}

fn log_attempt(req: &DeliveryRequest, report: &DeliveryReport) {
    let a = &report.attempt;
    let tls = a.tls.as_ref();
    let auth = a.auth.as_ref();
    let (mut delivered, mut deferred, mut failed) = (0, 0, 0);
    for o in &report.outcomes {
        match o {
            RcptOutcome::Delivered { .. } => delivered += 1,
            RcptOutcome::Deferred { .. } => deferred += 1,
            RcptOutcome::Failed { .. } => failed += 1,
        }
    }
    tracing::info!(
        queue_id = %req.id,
        domain = %req.domain,
        level = %req.level,
        mx = %a.mx,
        ip = %a.ip,
        tls_profile = %req.tls_profile,
        tls_version = tls.map(|t| t.version.as_str()).unwrap_or("none"),
        cipher = tls.map(|t| t.cipher.as_str()).unwrap_or(""),
        group = tls.and_then(|t| t.group.as_deref()).unwrap_or(""),
        cert_sha256 = tls.and_then(|t| t.peer_cert_sha256.as_deref()).unwrap_or(""),
        spki_sha256 = tls.and_then(|t| t.peer_spki_sha256.as_deref()).unwrap_or(""),
        peer_key = tls.and_then(|t| t.peer_key_type.as_deref()).unwrap_or(""),
        peer_key_bits = tls.and_then(|t| t.peer_key_bits).unwrap_or(0),
        pkix = tls.is_some_and(|t| t.pkix_verified),
        verdict = a.verdict.map(|v| v.as_str()).unwrap_or("none"),
        mechanism = auth.map(|x| x.mechanism.as_str()).unwrap_or("none"),
        mx_dnssec = auth.map(|x| x.mx_dnssec.as_str()).unwrap_or(""),
        address_dnssec = auth.map(|x| x.address_dnssec.as_str()).unwrap_or(""),
        tlsa = auth.and_then(|x| x.tlsa.as_ref()).map(|t| t.dnssec.as_str()).unwrap_or("not looked up"),
        tlsa_matched = auth.and_then(|x| x.tlsa.as_ref()).and_then(|t| t.matched.as_deref()).unwrap_or(""),
        mta_sts_mode = auth.and_then(|x| x.mta_sts.as_ref()).map(|m| m.mode.as_str()).unwrap_or("none"),
        mta_sts_id = auth.and_then(|x| x.mta_sts.as_ref()).map(|m| m.id.as_str()).unwrap_or(""),
        basis = auth.map(|x| x.basis.as_str()).unwrap_or(""),
        delivered,
        deferred,
        failed,
        reply = %a.reply,
        "delivery attempt"
    );
}

#[cfg(test)]
mod tests;
