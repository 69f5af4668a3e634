//! The admin control socket: how `qrelay queue list|show|retry|delete` and the web
//! UI talk to the running relay.
//!
//! Transport: a Unix stream socket (by default `<spool.dir>/control.sock`, see
//! [`crate::config::Config::control_socket`]). Access control is the file system's:
//! the socket is made mode 0660 right after it is bound, so only the relay's user
//! and group can connect (connecting to a Unix socket needs write permission on
//! it). The web UI's user is a member of that group.
//!
//! Framing: each message is a 4-byte big-endian payload length followed by the
//! payload, a postcard encoding of [`protocol::Request`] or [`protocol::Response`].
//! Frames larger than [`protocol::MAX_FRAME`] are refused before anything is
//! allocated for them. A connection carries any number of request/response pairs,
//! strictly in turn.
//!
//! Versioning: every request begins with [`protocol::PROTOCOL_VERSION`]. The daemon
//! reads that first field on its own, so a client of another version gets a clear
//! error naming both versions rather than garbage.
//!
//! Robustness: a malformed or oversized frame is answered with
//! [`protocol::Response::Error`] and that connection is closed (the byte stream can
//! no longer be trusted to be in step); the server itself keeps serving. Handler
//! calls run on the blocking thread pool, since they may touch the spool on disk.

mod format;
pub mod protocol;
#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::spool::record::{Envelope, QueueId};

pub use format::{format_list, format_show, format_status};
pub use protocol::{
    Command, DnssecReport, DnssecState, QueueCounts, Request, Response, StatusReport, MAX_FRAME,
    PROTOCOL_VERSION,
};

/// Permissions of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// How long the daemon waits for the next request on an open connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client waits for the relay's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the relay (is the relay running? socket {})", path.display())]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on the control socket {} (run as root or as a member of the socket's group)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("another relay is already listening on the control socket {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot {op} the control socket {}: {source}", path.display())]
    Bind {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "not a queue id: {0:?} (expected 16 hexadecimal digits, as shown by `qrelay queue list`)"
    )]
    BadId(String),
    #[error("control frame of {size} bytes is larger than the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("control connection closed in the middle of a frame")]
    Truncated,
    #[error("the relay closed the connection without answering")]
    Closed,
    #[error("the relay did not answer within {} seconds", .0.as_secs())]
    Timeout(Duration),
    #[error("malformed control message: {0}")]
    Decode(String),
    #[error("cannot encode control message: {0}")]
    Encode(String),
    #[error("control socket I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What the daemon does for each command. Implemented by the queue; the calls are
/// synchronous and run on tokio's blocking pool.
pub trait ControlHandler: Send + Sync + 'static {
    /// Every message in the queue, with its full state.
    fn list(&self) -> Vec<Envelope>;
    fn show(&self, id: &QueueId) -> Option<Envelope>;
    /// Make one message (`Some`) or every message (`None`) due now; returns how
    /// many messages were rescheduled.
    fn retry(&self, id: Option<&QueueId>) -> usize;
    /// Remove a message; `Ok(false)` when there is no such message.
    fn delete(&self, id: &QueueId) -> Result<bool, String>;
    /// Make a message's held recipients pending and due now; returns how many
    /// were released (`None`: no such message).
    fn release(&self, id: &QueueId) -> Option<usize>;
    /// `qrelay tls-rpt send`: send one UTC day's TLS-RPT reports now and say what
    /// happened. The default: this handler does not send reports.
    fn tls_rpt_send(&self, day: &str) -> Result<String, String> {
        Err(format!(
            "this relay does not send TLS-RPT reports (asked for {day})"
        ))
    }
    /// Messages and recipients by state.
    fn counts(&self) -> QueueCounts {
        count(&self.list())
    }
    /// `qrelay status`. The default knows the queue only; the daemon's handler
    /// adds its start time and DNSSEC health.
    fn status(&self) -> StatusReport {
        let now = crate::spool::record::now_secs();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            now,
            queue: self.counts(),
            dnssec: DnssecReport {
                upstreams: String::new(),
                state: DnssecState::NotReported,
            },
            evidence_key: String::new(),
        }
    }
}

/// Count messages and recipients by state.
pub fn count<'a>(envs: impl IntoIterator<Item = &'a Envelope>) -> QueueCounts {
    use crate::spool::record::RcptState;
    let mut c = QueueCounts::default();
    for env in envs {
        c.messages += 1;
        for r in &env.recipients {
            match r.state {
                RcptState::Pending => c.pending += 1,
                RcptState::Delivered => c.delivered += 1,
                RcptState::Failed => c.failed += 1,
                RcptState::Held => c.held += 1,
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// Write one frame: length (u32, big-endian), then the payload.
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), ControlError> {
    if payload.len() > MAX_FRAME {
        return Err(ControlError::FrameTooLarge {
            size: payload.len(),
            max: MAX_FRAME,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| ControlError::FrameTooLarge {
        size: payload.len(),
        max: MAX_FRAME,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame. `Ok(None)` when the peer closed the connection cleanly between
/// frames; a length over [`MAX_FRAME`] is refused before its payload is read.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ControlError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < len_buf.len() {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ControlError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_FRAME {
        return Err(ControlError::FrameTooLarge {
            size: len,
            max: MAX_FRAME,
        });
    }
    // Grow with the data actually received rather than trusting the length.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let n = r.take(len as u64).read_to_end(&mut payload).await?;
    if n < len {
        return Err(ControlError::Truncated);
    }
    Ok(Some(payload))
}

// ---------------------------------------------------------------------------
// Daemon side
// ---------------------------------------------------------------------------

/// Bind the control socket at `path` and serve `handler` until `shutdown` turns
/// true (or its sender is dropped). A stale socket file left by a previous run is
/// removed; a live one (another relay answering) is an error. The socket file is
/// removed again on shutdown.
pub async fn serve(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControlError> {
    let listener = bind(path).await?;
    tracing::info!(socket = %path.display(), "control socket listening");
    let mut conns = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, handler.clone()));
                }
                Err(e) => {
                    // E.g. out of file descriptors: keep serving, but do not spin.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    drop(listener);
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove control socket");
        }
    }
    Ok(())
}

async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(ControlError::AlreadyRunning {
                    path: path.to_owned(),
                })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                ) =>
            {
                // Nobody listens: the file is left over from a crash.
                std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                    op: "remove stale",
                    path: path.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(ControlError::Bind {
                    op: "probe",
                    path: path.to_owned(),
                    source,
                })
            }
        },
        Ok(_) => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ControlError::Bind {
                op: "inspect",
                path: path.to_owned(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        op: "bind",
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| ControlError::Bind {
            op: "set permissions of",
            path: path.to_owned(),
            source,
        },
    )?;
    Ok(listener)
}

/// One client connection: requests in turn until the client closes, goes idle,
/// or sends something we cannot read.
async fn connection(stream: UnixStream, handler: Arc<dyn ControlHandler>) {
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut rd)).await {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(frame))) => frame,
            Ok(Err(e)) => {
                let _ = send(&mut wr, &Response::Error(format!("bad request frame: {e}"))).await;
                return;
            }
        };
        let (response, keep_open) = answer(&frame, &handler).await;
        if send(&mut wr, &response).await.is_err() || !keep_open {
            return;
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, response: &Response) -> Result<(), ControlError> {
    let mut payload =
        postcard::to_allocvec(response).map_err(|e| ControlError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        let too_big = Response::Error(format!(
            "the answer ({} bytes) is larger than the control frame limit ({MAX_FRAME} bytes); ask for single messages with `show`",
            payload.len()
        ));
        payload =
            postcard::to_allocvec(&too_big).map_err(|e| ControlError::Encode(e.to_string()))?;
    }
    write_frame(w, &payload).await
}

/// Decode and carry out one request. The bool says whether the connection may
/// carry further requests.
async fn answer(frame: &[u8], handler: &Arc<dyn ControlHandler>) -> (Response, bool) {
    // The version is the first field of every request, of every protocol version.
    let version = match postcard::take_from_bytes::<u16>(frame) {
        Ok((v, _)) => v,
        Err(e) => return (Response::Error(format!("malformed request: {e}")), false),
    };
    if version != PROTOCOL_VERSION {
        return (
            Response::Error(format!(
                "control protocol version mismatch: the client speaks version {version}, this relay speaks version {PROTOCOL_VERSION}; use the qrelay binary that matches the running relay"
            )),
            false,
        );
    }
    let request: Request = match postcard::from_bytes(frame) {
        Ok(r) => r,
        Err(e) => return (Response::Error(format!("malformed request: {e}")), false),
    };
    (execute(request.command, handler.clone()).await, true)
}

async fn execute(command: Command, handler: Arc<dyn ControlHandler>) -> Response {
    let parse = |s: &str| QueueId::parse(s).ok_or_else(|| ControlError::BadId(s.to_string()));
    let work = move || -> Response {
        match command {
            Command::List => Response::Messages(handler.list()),
            Command::Show(id) => match parse(&id) {
                Err(e) => Response::Error(e.to_string()),
                Ok(id) => match handler.show(&id) {
                    Some(env) => Response::Message(env),
                    None => Response::Error(format!("no message {id} in the queue")),
                },
            },
            Command::Retry(which) if which.trim().eq_ignore_ascii_case("all") => {
                let n = handler.retry(None);
                Response::Done(format!(
                    "{n} message{} scheduled for immediate delivery",
                    if n == 1 { "" } else { "s" }
                ))
            }
            Command::Retry(id) => match parse(&id) {
                Err(e) => Response::Error(e.to_string()),
                Ok(id) => match handler.retry(Some(&id)) {
                    0 => Response::Error(format!("no message {id} in the queue")),
                    _ => Response::Done(format!("message {id} scheduled for immediate delivery")),
                },
            },
            Command::Status => Response::Status(handler.status()),
            Command::TlsRptSend { day } => match handler.tls_rpt_send(&day) {
                Ok(summary) => Response::Done(summary),
                Err(e) => Response::Error(e),
            },
            Command::Release(id) => match parse(&id) {
                Err(e) => Response::Error(e.to_string()),
                Ok(id) => match handler.release(&id) {
                    None => Response::Error(format!("no message {id} in the queue")),
                    Some(0) => Response::Error(format!("message {id} has no held recipients")),
                    Some(n) => Response::Done(format!(
                        "message {id}: {n} held recipient(s) released for immediate delivery"
                    )),
                },
            },
            Command::Delete(id) => match parse(&id) {
                Err(e) => Response::Error(e.to_string()),
                Ok(id) => match handler.delete(&id) {
                    Ok(true) => Response::Done(format!("message {id} deleted")),
                    Ok(false) => Response::Error(format!("no message {id} in the queue")),
                    Err(e) => Response::Error(format!("cannot delete message {id}: {e}")),
                },
            },
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "control handler failed");
            Response::Error("internal error in the relay while handling the command".into())
        }
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A connection to the relay's control socket; several commands may be sent in
/// turn over one connection.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connect, with a clear error when the relay is not running or the socket is
    /// not ours to use.
    pub async fn connect(path: &Path) -> Result<Client, ControlError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| connect_error(path, e))?;
        Ok(Client {
            stream,
            path: path.to_owned(),
        })
    }

    /// Send one command and wait for its answer. Queue ids are checked (and
    /// normalized) here, before anything is sent.
    pub async fn call(&mut self, command: Command) -> Result<Response, ControlError> {
        let command = check_ids(command)?;
        let payload = postcard::to_allocvec(&Request::new(command))
            .map_err(|e| ControlError::Encode(e.to_string()))?;
        let exchange = async {
            write_frame(&mut self.stream, &payload).await?;
            let frame = read_frame(&mut self.stream)
                .await?
                .ok_or(ControlError::Closed)?;
            postcard::from_bytes::<Response>(&frame)
                .map_err(|e| ControlError::Decode(e.to_string()))
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => {
                tracing::debug!(socket = %self.path.display(), "control request timed out");
                Err(ControlError::Timeout(CLIENT_TIMEOUT))
            }
        }
    }
}

/// Name the likely cause of a failed connect for the admin.
fn connect_error(path: &Path, e: io::Error) -> ControlError {
    match e.kind() {
        // No socket file, or a file nobody listens on: the relay is not running.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ControlError::NotRunning {
            path: path.to_owned(),
        },
        io::ErrorKind::PermissionDenied => ControlError::PermissionDenied {
            path: path.to_owned(),
        },
        _ => ControlError::Connect {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Connect, send one command, return the answer.
pub async fn request(path: &Path, command: Command) -> Result<Response, ControlError> {
    let command = check_ids(command)?;
    Client::connect(path).await?.call(command).await
}

/// Only well-formed queue ids (or "all" for retry) leave the client.
fn check_ids(command: Command) -> Result<Command, ControlError> {
    let id = |s: String| {
        QueueId::parse(&s)
            .map(|q| q.as_str().to_string())
            .ok_or(ControlError::BadId(s))
    };
    Ok(match command {
        Command::List => Command::List,
        Command::Status => Command::Status,
        Command::Show(s) => Command::Show(id(s)?),
        Command::Retry(s) if s.trim().eq_ignore_ascii_case("all") => Command::Retry("all".into()),
        Command::Retry(s) => Command::Retry(id(s)?),
        Command::Delete(s) => Command::Delete(id(s)?),
        Command::Release(s) => Command::Release(id(s)?),
        Command::TlsRptSend { day } => Command::TlsRptSend { day },
    })
}
