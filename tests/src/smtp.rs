//! A small SMTP client for tests: plain text, no pipelining, one command at a time,
//! so each reply can be checked. Async (tokio) for bursts; [`send_mail`] is a
//! blocking convenience wrapper.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One SMTP reply (possibly multi-line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The queue ID from `250 2.0.0 Ok: queued as ID`.
    pub fn queue_id(&self) -> Option<String> {
        let t = self.text();
        let i = t.find("queued as")?;
        let id = t[i + "queued as".len()..]
            .split_whitespace()
            .next()?
            .trim_matches(|c| c == '<' || c == '>');
        Some(id.to_string())
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

pub struct SmtpClient {
    stream: BufReader<TcpStream>,
    timeout: Duration,
    pub greeting: Reply,
}

impl SmtpClient {
    /// Connect (optionally from a given local address) and read the greeting.
    pub async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> Result<SmtpClient> {
        let timeout = Duration::from_secs(30);
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = bind {
            sock.bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = tokio::time::timeout(timeout, sock.connect(addr))
            .await
            .with_context(|| format!("connect {addr}: timeout"))?
            .with_context(|| format!("connect {addr}"))?;
        let mut c = SmtpClient {
            stream: BufReader::new(stream),
            timeout,
            greeting: Reply {
                code: 0,
                lines: vec![],
            },
        };
        c.greeting = c.read_reply().await.context("greeting")?;
        Ok(c)
    }

    pub async fn read_reply(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
                .await
                .context("reply timeout")??;
            if n == 0 {
                bail!("connection closed (after {lines:?})");
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            if line.len() < 3 {
                bail!("bad reply line {line:?}");
            }
            let code: u16 = line[..3]
                .parse()
                .with_context(|| format!("bad reply line {line:?}"))?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        tokio::time::timeout(self.timeout, self.stream.get_mut().write_all(data))
            .await
            .context("write timeout")??;
        Ok(())
    }

    /// Send one command line (CRLF added) and read the reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        self.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply()
            .await
            .with_context(|| format!("reply to {line:?}"))
    }

    pub async fn ehlo(&mut self, name: &str) -> Result<Reply> {
        self.command(&format!("EHLO {name}")).await
    }

    /// DATA, the dot-stuffed message, the final dot. Returns (reply to DATA, final
    /// reply if DATA was accepted).
    pub async fn data(&mut self, message: &str) -> Result<(Reply, Option<Reply>)> {
        let r = self.command("DATA").await?;
        if r.code != 354 {
            return Ok((r, None));
        }
        let mut buf = String::with_capacity(message.len() + 64);
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                buf.push('.');
            }
            buf.push_str(line);
            buf.push_str("\r\n");
        }
        if message.ends_with("\r\n") {
            // split produced a trailing empty piece: remove its extra CRLF
            buf.truncate(buf.len() - 2);
        }
        buf.push_str(".\r\n");
        self.write_all(buf.as_bytes()).await?;
        let fin = self.read_reply().await.context("reply to end of data")?;
        Ok((r, Some(fin)))
    }

    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }

    /// A whole transaction on this connection (after EHLO): MAIL, RCPTs, DATA.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &str,
    ) -> Result<Transaction> {
        let mail = self.command(&format!("MAIL FROM:<{from}>")).await?;
        let mut rcpt = Vec::new();
        for r in rcpts {
            rcpt.push(self.command(&format!("RCPT TO:<{r}>")).await?);
        }
        let mut t = Transaction {
            mail,
            rcpt,
            data: None,
            end: None,
        };
        if t.mail.is_positive() && t.rcpt.iter().any(|r| r.is_positive()) {
            let (d, end) = self.data(message).await?;
            t.data = Some(d);
            t.end = end;
        } else {
            let _ = self.command("RSET").await;
        }
        Ok(t)
    }
}

/// The replies of one mail transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail: Reply,
    pub rcpt: Vec<Reply>,
    pub data: Option<Reply>,
    /// The reply after the final dot (None if DATA was never reached).
    pub end: Option<Reply>,
}

impl Transaction {
    /// True if the message was accepted (final 250).
    pub fn accepted(&self) -> bool {
        self.end.as_ref().is_some_and(|r| r.code == 250)
    }

    pub fn queue_id(&self) -> Option<String> {
        self.end.as_ref().filter(|r| r.code == 250)?.queue_id()
    }

    /// Every reply code of the transaction, in order.
    pub fn codes(&self) -> Vec<u16> {
        let mut v = vec![self.mail.code];
        v.extend(self.rcpt.iter().map(|r| r.code));
        v.extend(self.data.iter().map(|r| r.code));
        v.extend(self.end.iter().map(|r| r.code));
        v
    }
}

/// Build a simple RFC 5322 message with CRLF line ends. `token` goes into the
/// Subject and an `X-Test-Token` header so the copy at the MX can be found.
pub fn build_message(from: &str, to: &[&str], token: &str, body: &str) -> String {
    let mut m = String::new();
    m.push_str(&format!("From: <{from}>\r\n"));
    m.push_str(&format!("To: {}\r\n", to.join(", ")));
    m.push_str(&format!("Subject: qrelay system test {token}\r\n"));
    m.push_str(&format!("Message-ID: <{token}@lan.test>\r\n"));
    m.push_str("Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n");
    m.push_str(&format!("X-Test-Token: {token}\r\n"));
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m
}

/// Connect, EHLO, one transaction, QUIT. Blocking (runs its own small runtime), so
/// call it from plain `#[test]` functions, not from inside async code.
pub fn send_mail(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    message: &str,
) -> Result<Transaction> {
    block_on(async {
        let mut c = SmtpClient::connect(addr, None).await?;
        let e = c.ehlo("client.lan.test").await?;
        if e.code != 250 {
            bail!("EHLO refused: {e}");
        }
        let t = c.transaction(from, rcpts, message).await?;
        c.quit().await;
        Ok(t)
    })
}

/// Run a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
