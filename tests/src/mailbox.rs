//! Reading what a Postfix MX delivered into its Maildir.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// One Maildir (`new/` and `cur/`).
#[derive(Debug, Clone)]
pub struct Mailbox {
    dir: PathBuf,
}

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Message {
    pub path: PathBuf,
    /// The raw message (lossy UTF-8), CRLF or LF line ends as stored (Postfix: LF).
    pub raw: String,
}

impl Mailbox {
    pub fn new(dir: impl Into<PathBuf>) -> Mailbox {
        Mailbox { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every message currently in the Maildir.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let path = e.path();
                if let Ok(bytes) = fs::read(&path) {
                    out.push(Message {
                        path,
                        raw: String::from_utf8_lossy(&bytes).into_owned(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Messages whose raw text contains `needle`.
    pub fn containing(&self, needle: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.raw.contains(needle))
            .collect()
    }

    /// Wait until at least one message matches; returns all matching ones.
    pub fn wait_for(
        &self,
        pred: impl Fn(&Message) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        self.wait_for_count(pred, 1, timeout)
    }

    /// Wait until at least `n` messages match; returns all matching ones.
    pub fn wait_for_count(
        &self,
        pred: impl Fn(&Message) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        let start = Instant::now();
        loop {
            let found: Vec<Message> = self.messages().into_iter().filter(|m| pred(m)).collect();
            if found.len() >= n {
                return Ok(found);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: {} of {n} expected messages arrived within {timeout:?}",
                    self.dir.display(),
                    found.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait for a message containing `needle` (e.g. a unique token in the subject).
    pub fn wait_for_token(&self, needle: &str, timeout: Duration) -> Result<Message> {
        let mut v = self.wait_for(|m| m.raw.contains(needle), timeout)?;
        Ok(v.remove(0))
    }
}

impl Message {
    /// The header section (before the first empty line), unfolded: (name, value).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in self.raw.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = out.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        out
    }

    /// All values of header `name` (case-insensitive), top to bottom.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The first (topmost) value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }

    /// Received headers, newest (topmost) first.
    pub fn received(&self) -> Vec<String> {
        self.header_all("Received")
    }

    /// The Received header the receiving Postfix added: the first one that names
    /// it with "(Postfix)".
    pub fn postfix_received(&self) -> Option<String> {
        self.received()
            .into_iter()
            .find(|r| r.contains("(Postfix)"))
    }

    /// The body (after the first empty line).
    pub fn body(&self) -> &str {
        let raw = self.raw.as_str();
        if let Some(i) = raw.find("\n\n") {
            &raw[i + 2..]
        } else if let Some(i) = raw.find("\r\n\r\n") {
            &raw[i + 4..]
        } else {
            ""
        }
    }
}
