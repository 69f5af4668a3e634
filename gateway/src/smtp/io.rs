//! Buffered line I/O for one SMTP connection, plain or TLS.
//!
//! Replies are collected in a write buffer and sent when the server is about to
//! wait for more input (RFC 2920 section 3.2: a server flushes its replies
//! before it blocks reading), which is what makes PIPELINING work. Every read has a
//! deadline; lines have a maximum length and an over-long line is discarded up to
//! its end without being kept in memory.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};

const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IoError {
    #[error("connection closed by the client")]
    Eof,
    #[error("timeout")]
    Timeout,
    #[error("server shutting down")]
    Shutdown,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What [`Conn::read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A whole line (including its LF) is in the output buffer.
    Complete,
    /// The line was longer than allowed and was discarded; `crlf` tells whether it
    /// ended with CRLF (needed to find the end of DATA correctly).
    TooLong { crlf: bool },
}

pub(crate) struct Conn<T> {
    io: T,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    scratch: Box<[u8]>,
    write_timeout: Duration,
}

/// Resolves when the shutdown flag becomes true; never if the sender is gone.
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Conn<T> {
    pub fn new(io: T, write_timeout: Duration) -> Self {
        Conn {
            io,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
            write_timeout,
        }
    }

    pub fn into_inner(self) -> T {
        self.io
    }

    /// Queue one reply line (CRLF is added).
    pub fn push(&mut self, line: &str) {
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    /// Queue a multi-line reply (RFC 5321 section 4.2.1): `code-text` lines and a
    /// final `code text`.
    pub fn push_multi(&mut self, code: &str, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.push(&format!("{code}{sep}{l}"));
        }
    }

    /// Send what is queued.
    pub async fn flush(&mut self) -> Result<(), IoError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let io = &mut self.io;
        let buf = &self.wbuf;
        timeout(self.write_timeout, async {
            io.write_all(buf).await?;
            io.flush().await
        })
        .await
        .map_err(|_| IoError::Timeout)??;
        self.wbuf.clear();
        Ok(())
    }

    /// Flush and close the write side (sends TLS close_notify when over TLS).
    pub async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = timeout(self.write_timeout, self.io.shutdown()).await;
        }
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.rbuf.len() - self.rpos
    }

    /// Throw away input received but not yet consumed; returns how much.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buffered();
        self.rbuf.clear();
        self.rpos = 0;
        n
    }

    /// Read one line (up to and including LF) into `out`, which is cleared first.
    /// Lines longer than `max` bytes are consumed up to their LF and discarded.
    /// The whole line must arrive before `deadline`. With `shutdown`, a shutdown
    /// while waiting for input ends the read (only between commands).
    pub async fn read_line(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
        deadline: Instant,
        mut shutdown: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Line, IoError> {
        out.clear();
        let mut too_long = false;
        let mut last_discarded = 0u8;
        loop {
            let avail = &self.rbuf[self.rpos..];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                let chunk = &avail[..=i];
                if !too_long && out.len() + chunk.len() <= max {
                    out.extend_from_slice(chunk);
                    self.rpos += i + 1;
                    return Ok(Line::Complete);
                }
                let crlf = if i > 0 {
                    avail[i - 1] == b'\r'
                } else if !out.is_empty() {
                    out.last() == Some(&b'\r')
                } else {
                    last_discarded == b'\r'
                };
                out.clear();
                self.rpos += i + 1;
                return Ok(Line::TooLong { crlf });
            }
            if !avail.is_empty() {
                if !too_long && out.len() + avail.len() <= max {
                    out.extend_from_slice(avail);
                } else {
                    too_long = true;
                    last_discarded = avail[avail.len() - 1];
                    out.clear();
                }
            }
            self.rbuf.clear();
            self.rpos = 0;
            // About to block: replies to pipelined commands go out now.
            self.flush().await?;
            let read = timeout_at(deadline, self.io.read(&mut self.scratch));
            let n = match shutdown.as_deref_mut() {
                Some(rx) => tokio::select! {
                    biased;
                    r = read => r,
                    _ = wait_shutdown(rx) => return Err(IoError::Shutdown),
                },
                None => read.await,
            }
            .map_err(|_| IoError::Timeout)??;
            if n == 0 {
                return Err(IoError::Eof);
            }
            self.rbuf.extend_from_slice(&self.scratch[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_split_and_over_long_lines_are_discarded() {
        let (client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(server, Duration::from_secs(5));
        let writer = tokio::spawn(async move {
            let mut client = client;
            client.write_all(b"short\r\n").await.unwrap();
            client.write_all(&[b'x'; 200]).await.unwrap();
            client.write_all(b"\r\nbare\nnext\r\n").await.unwrap();
            client
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        assert_eq!(
            conn.read_line(&mut out, 50, deadline, None).await.unwrap(),
            Line::Complete
        );
        assert_eq!(out, b"short\r\n");
        assert_eq!(
            conn.read_line(&mut out, 50, deadline, None).await.unwrap(),
            Line::TooLong { crlf: true }
        );
        assert!(out.is_empty());
        conn.read_line(&mut out, 50, deadline, None).await.unwrap();
        assert_eq!(out, b"bare\n");
        conn.read_line(&mut out, 50, deadline, None).await.unwrap();
        assert_eq!(out, b"next\r\n");
        drop(writer.await.unwrap());
        assert!(matches!(
            conn.read_line(&mut out, 50, deadline, None).await,
            Err(IoError::Eof)
        ));
    }
}
