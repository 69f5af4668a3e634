//! The inbound SMTP server for the LAN (Postfix: smtpd).
//!
//! The company's mail server (or a copier, or a hosted server's smarthost setting)
//! hands every outgoing message to this listener. The protocol is ESMTP (RFC 5321):
//!
//! ```text
//! S: 220 relay.example ESMTP qrelay
//! C: EHLO mail.lan.example          S: 250-... PIPELINING SIZE 8BITMIME SMTPUTF8
//!                                         ENHANCEDSTATUSCODES DSN STARTTLS
//! C: STARTTLS                       S: 220 2.0.0 Ready to start TLS
//!    <TLS handshake; everything said before is forgotten (RFC 3207 section 4.2)>
//! C: EHLO mail.lan.example          S: 250-... REQUIRETLS, AUTH PLAIN LOGIN
//! C: AUTH PLAIN ...                 S: 235 2.7.0 (optional; users outside relay_networks)
//! C: MAIL FROM:<a@ours.example> SIZE=1234 RET=HDRS ENVID=x   S: 250 2.1.0 Ok
//! C: RCPT TO:<b@theirs.example> NOTIFY=FAILURE ORCPT=rfc822;b@theirs.example
//!                                   S: 250 2.1.5 Ok
//! C: DATA                           S: 354 ...
//! C: <message> CRLF.CRLF            S: 250 2.0.0 Ok: queued as 0123456789ABCDEF
//! C: QUIT                           S: 221 2.0.0 Bye
//! ```
//!
//! Decisions, with their reasons:
//! - **Never an open relay.** The box has no local mailboxes, so every recipient is
//!   relayed; RCPT is accepted only from clients in `smtp.relay_networks` or
//!   authenticated with AUTH PLAIN/LOGIN, which is offered and accepted only after
//!   STARTTLS (RFC 4954 section 4). Everybody else gets `550 5.7.1 Relaying denied`.
//!   Hostile address forms (source routes, `%`, `!`, extra `@`) are refused from
//!   everybody ([`address`]).
//! - **REQUIRETLS** (RFC 8689) is advertised and accepted only on a TLS session
//!   (standards.md G1); it is recorded in the envelope for delivery to enforce.
//! - **STARTTLS** resets the session and discards anything pipelined after the
//!   command in plaintext (the CVE-2011-0411 injection).
//! - **End of data** is only CRLF.CRLF; messages with bare CR or LF are refused
//!   (SMTP smuggling, see [`data`]).
//! - **A 250 after DATA means on disk**: the message is acknowledged only after
//!   [`crate::queue::Queue::commit`] returns, which is after content and envelope
//!   are fsynced. A nearly full disk gives `452 4.3.1` at MAIL (asked before the
//!   data is sent), at DATA, or at the end.
//! - **Bounded memory per connection**: the content is streamed into the spool
//!   while it arrives. A session holds the header section (at most 1 MiB, see
//!   [`data`]), one line, and a 64 KiB write batch, never the whole message; a
//!   refused or abandoned message leaves no file behind.
//! - **Limits** answer clearly and never store what exceeds them: size (`552
//!   5.3.4`), recipients (`452 4.5.3`), connections (`421 4.7.0` at the greeting),
//!   timeouts (`421 4.4.2`), line length (`500 5.5.2` for commands, `552 5.3.4` for
//!   message lines), errors per session, failed AUTH attempts.
//! - The content is stored as received (CRLF, dot-unstuffed) with a `Received`
//!   header (RFC 5321 section 4.4, RFC 3848 protocol keywords, the inbound TLS
//!   version and cipher) and, when missing, a `Message-ID` prepended.
//!
//! Logs carry the client IP; every line about a message carries `queue_id`.
//! Passwords and SASL payloads are never logged.

mod address;
mod auth;
mod data;
mod io;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::config::Config;
use crate::queue::Queue;
use data::TlsInfo;
use io::Conn;
use session::{Flow, Session};

pub use auth::hash_password;

/// Protocol knobs that are not in the configuration file.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Wait before answering a failed AUTH (slows down password guessing).
    pub auth_failure_delay: Duration,
    /// Failed AUTH attempts after which the connection is closed.
    pub max_auth_failures: u32,
    /// Error replies after which the connection is closed.
    pub max_errors: u32,
    /// After shutdown, how long running sessions may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            auth_failure_delay: Duration::from_secs(2),
            max_auth_failures: 3,
            max_errors: 20,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What every session shares.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub acceptor: TlsAcceptor,
    pub hostname: String,
    pub tuning: Tuning,
    limits: Arc<ConnLimits>,
}

/// Counts of open connections, in total and per client IP.
struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<LimitState>,
}

#[derive(Default)]
struct LimitState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its slot back when dropped.
struct Permit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // Every update completes under the lock, so a poisoned state is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `ip`, or why there is none.
    fn acquire(limits: &Arc<ConnLimits>, ip: IpAddr) -> Result<Permit, &'static str> {
        let mut st = limits.lock();
        if st.total >= limits.max_total {
            return Err("too many connections");
        }
        let n = st.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= limits.max_per_ip {
            return Err("too many connections from your address");
        }
        st.total += 1;
        st.per_ip.insert(ip, n + 1);
        Ok(Permit {
            limits: limits.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.limits.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The inbound SMTP server. Cheap to clone; clones share the connection limits,
/// so give every listener a clone of one `Server`.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    pub fn new(config: Arc<Config>, queue: Queue, tls: Arc<rustls::ServerConfig>) -> Server {
        Server::with_tuning(config, queue, tls, Tuning::default())
    }

    pub(crate) fn with_tuning(
        config: Arc<Config>,
        queue: Queue,
        tls: Arc<rustls::ServerConfig>,
        tuning: Tuning,
    ) -> Server {
        let limits = Arc::new(ConnLimits {
            max_total: config.smtp.max_connections,
            max_per_ip: config.smtp.max_connections_per_ip,
            state: Mutex::new(LimitState::default()),
        });
        Server {
            shared: Arc::new(Shared {
                hostname: config.hostname(),
                config,
                queue,
                acceptor: TlsAcceptor::from(tls),
                tuning,
                limits,
            }),
        }
    }

    /// Accept connections until `shutdown` becomes true, then stop accepting, let
    /// the sessions finish (idle ones are told `421 4.3.2` and closed at once) for
    /// up to 30 seconds, and abort what is still running. A message whose `250`
    /// was not yet sent is not lost: the client still has it and retries.
    pub async fn run(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let local = listener.local_addr().ok();
        tracing::info!(listen = ?local, "SMTP listener ready");
        let session_shutdown = shutdown.clone();
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = io::wait_shutdown(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let server = self.clone();
                        let rx = session_shutdown.clone();
                        tasks.spawn(async move { server.serve(stream, peer, rx).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listen = ?local, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(listener);
        tracing::info!(listen = ?local, sessions = tasks.len(), "SMTP listener stopped");
        let grace = self.shared.tuning.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                sessions = tasks.len(),
                "aborting SMTP sessions still running"
            );
            tasks.shutdown().await;
        }
    }

    /// Serve one connection (already accepted) from `peer` to its end, including
    /// the connection limits. Public so tests and tools can drive a session over
    /// any stream.
    pub async fn serve<T>(&self, io: T, peer: SocketAddr, shutdown: watch::Receiver<bool>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // The span puts the client on every line logged during the session,
        // including the queue's own "queued" line.
        let span = tracing::info_span!("smtp", client = %peer.ip().to_canonical());
        self.serve_inner(io, peer, shutdown).instrument(span).await
    }

    async fn serve_inner<T>(&self, io: T, peer: SocketAddr, shutdown: watch::Receiver<bool>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let sh = &self.shared;
        let ip = peer.ip().to_canonical();
        let write_timeout = sh.config.smtp.command_timeout;
        let _permit = match ConnLimits::acquire(&sh.limits, ip) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(client = %ip, reason = why, "connection refused");
                let mut conn = Conn::new(io, Duration::from_secs(10).min(write_timeout));
                conn.push(&format!(
                    "421 4.7.0 {} Error: {why}, try again later",
                    sh.hostname
                ));
                conn.close().await;
                return;
            }
        };
        tracing::info!(client = %ip, port = peer.port(), "connect");
        let mut session = Session::new(sh.clone(), ip, shutdown);
        let mut conn = Conn::new(io, write_timeout);
        conn.push(&format!("220 {} ESMTP qrelay", sh.hostname));
        match session.run(&mut conn).await {
            Flow::StartTls => {
                let handshake = sh.acceptor.accept(conn.into_inner());
                match tokio::time::timeout(write_timeout, handshake).await {
                    Ok(Ok(tls)) => {
                        let info = TlsInfo::of(tls.get_ref().1);
                        tracing::info!(
                            client = %ip,
                            version = %info.version,
                            cipher = %info.cipher,
                            group = info.group.as_deref().unwrap_or(""),
                            "TLS established"
                        );
                        session.tls_started(info);
                        let mut conn = Conn::new(tls, write_timeout);
                        // A second STARTTLS is refused inside the session.
                        let _ = session.run(&mut conn).await;
                        conn.close().await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(client = %ip, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::info!(client = %ip, "TLS handshake timed out"),
                }
            }
            Flow::Close | Flow::Continue => conn.close().await,
        }
        tracing::info!(client = %ip, messages = session.accepted, "disconnect");
    }
}

#[cfg(test)]
mod tests;
