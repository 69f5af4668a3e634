//! Running the `qrelay` daemon under test.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::infra::{tail_file, Infra, Mx, DNS_ADDR};
use crate::mailbox::Message;

/// The `qrelay` binary: `$QRELAY_BIN`, else the newest of target/{release,debug}/qrelay
/// in the workspace target directory (`$CARGO_TARGET_DIR` honoured).
pub fn qrelay_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QRELAY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let candidates = [target.join("release/qrelay"), target.join("debug/qrelay")];
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| candidates[0].clone())
}

/// A free TCP port on 127.0.0.1 (bound once by us and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A running relay with its own config, spool and control socket in a tempdir.
/// Killed on drop; its log is printed if the test is panicking.
pub struct Relay {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub config_file: PathBuf,
    pub listen: SocketAddr,
    pub spool_dir: PathBuf,
    pub log_file: PathBuf,
    overrides: String,
}

impl Relay {
    /// Start a relay with the base test config merged with `overrides` (TOML, e.g.
    /// `[class.normal]\nlevel = "trusted"`). The base config: a unique listen
    /// address on 127.0.0.1, Knot as the only resolver, delivery to port 25, the
    /// test CA as extra root, retry every second, no delay warnings.
    pub fn start(overrides: &str) -> Result<Relay> {
        Relay::start_at(SocketAddr::from(([127, 0, 0, 1], free_port())), overrides)
    }

    /// Like [`Relay::start`] with a fixed listen address.
    pub fn start_at(listen: SocketAddr, overrides: &str) -> Result<Relay> {
        let infra = Infra::get();
        let dir = tempfile::Builder::new().prefix("qrelay-test-").tempdir()?;
        let spool_dir = dir.path().join("spool");
        fs::create_dir_all(&spool_dir)?;
        let mut relay = Relay {
            child: None,
            config_file: dir.path().join("qrelay.toml"),
            log_file: dir.path().join("qrelay.log"),
            listen,
            spool_dir,
            overrides: String::new(),
            dir,
        };
        relay.write_config(infra, overrides)?;
        relay.spawn()?;
        Ok(relay)
    }

    /// The tempdir holding config, spool and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&mut self, infra: &Infra, overrides: &str) -> Result<()> {
        let base = format!(
            r#"
[smtp]
listen = ["{listen}"]
hostname = "qrelay.lan.test"
relay_networks = ["127.0.0.0/8"]

[spool]
dir = "{spool}"
min_free_bytes = 1048576

[dns]
servers = ["{dns}"]
timeout = "3s"
trust_anchor = "{anchor}"

[tls]
ca_file = "{ca}"

[delivery]
port = 25
concurrency = 20
connect_timeout = "5s"
command_timeout = "30s"
retry_schedule = ["1s"]
queue_lifetime = "1h"
delay_warning = "0s"

[control]
socket = "{sock}"

[log]
level = "info,qrelay=debug"

[class.normal]
level = "encrypted"
"#,
            listen = self.listen,
            spool = self.spool_dir.display(),
            dns = DNS_ADDR,
            anchor = crate::infra::trust_anchor_file().display(),
            ca = infra.ca_file.display(),
            sock = self.dir.path().join("control.sock").display(),
        );
        let mut table: toml::Table = base.parse().context("base config")?;
        let over: toml::Table = overrides.parse().context("config overrides")?;
        merge(&mut table, over);
        fs::write(&self.config_file, toml::to_string(&table)?)?;
        self.overrides = overrides.to_string();
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)?;
        let bin = qrelay_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&self.config_file)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: only an async-signal-safe prctl between fork and exec. The relay
        // dies with the test thread that started it, so none outlives a killed test.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "qrelay exited during start-up ({st}); log:\n{}",
                    self.log_tail(40)
                );
            }
            if TcpStream::connect_timeout(&self.listen, Duration::from_millis(300)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "qrelay did not accept on {} within {timeout:?}; log:\n{}",
                    self.listen,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Is the daemon process still running?
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop (if running) and start again with the same config and spool.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Stop (if running), rewrite the config with new overrides, start again on
    /// the same spool.
    pub fn restart_with(&mut self, overrides: &str) -> Result<()> {
        self.stop();
        self.write_config(Infra::get(), overrides)?;
        self.spawn()
    }

    /// The current overrides.
    pub fn overrides(&self) -> &str {
        &self.overrides
    }

    /// Run `qrelay <args> --config FILE` (e.g. `["queue", "list"]`).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(qrelay_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config_file)
            .stdin(Stdio::null())
            .output()
            .context("run qrelay CLI")?;
        Ok(out)
    }

    /// `cli` that must succeed; returns stdout + stderr as text.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("qrelay {} failed ({}): {text}", args.join(" "), out.status);
        }
        Ok(text)
    }

    /// `qrelay queue list` output.
    pub fn queue_list(&self) -> Result<String> {
        self.cli_ok(&["queue", "list"])
    }

    /// Poll `queue list` until `pred` holds on its output.
    pub fn wait_queue(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let last = self.queue_list();
            if let Ok(text) = &last {
                if pred(text) {
                    return Ok(text.clone());
                }
            }
            if start.elapsed() > timeout {
                bail!("queue never reached the expected state; last `queue list`: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The last `lines` of the relay's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_file, lines)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- qrelay log ({}), last 80 lines ----\n{}\n---- end of qrelay log ----",
                self.log_file.display(),
                self.log_tail(80)
            );
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Send one message with swaks. Returns swaks' full transcript; Err if swaks
/// reports a failure.
pub fn swaks(
    server: SocketAddr,
    from: &str,
    to: &str,
    subject: &str,
    extra: &[&str],
) -> Result<String> {
    let out = Command::new("swaks")
        .args(["--server", &server.to_string()])
        .args(["--from", from, "--to", to])
        .args(["--helo", "client.lan.test"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--timeout", "30"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("run swaks")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("swaks failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// A unique token for subjects and local parts: `<prefix>-<pid>-<random>`.
/// The configuration override that sets the class `normal` to `level`.
pub fn level(level: &str) -> String {
    format!("[class.normal]\nlevel = \"{level}\"\n")
}

pub fn token(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The queue ID from a swaks transcript (`<-  250 2.0.0 Ok: queued as ID`).
pub fn queued_id(transcript: &str) -> Option<String> {
    transcript
        .lines()
        .rev()
        .filter(|l| l.contains("queued as"))
        .filter_map(|l| {
            l.split("queued as")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(|s| s.trim_matches(|c| c == '<' || c == '>').to_string())
        })
        .next()
}

impl Relay {
    /// Send with swaks through this relay; returns the queue ID of the accepted message.
    /// Send a message from `sender@lan.test` to `<token>@<domain>`, with the token
    /// (made from `tag`) as its subject, and wait until it is in `mx`'s mailbox.
    /// Peers are shared, so tests find their own message by the token.
    pub fn deliver_token(&self, tag: &str, domain: &str, mx: Mx, timeout: Duration) -> Message {
        let tok = token(tag);
        self.swaks("sender@lan.test", &format!("{tok}@{domain}"), &tok)
            .unwrap_or_else(|e| panic!("sending to {domain}: {e:#}"));
        Infra::get()
            .mailbox(mx)
            .wait_for_token(&tok, timeout)
            .unwrap_or_else(|e| panic!("waiting for {tok} at {}: {e:#}", mx.hostname()))
    }

    pub fn swaks(&self, from: &str, to: &str, subject: &str) -> Result<String> {
        let t = swaks(self.listen, from, to, subject, &[])?;
        queued_id(&t).with_context(|| format!("no queue ID in swaks transcript:\n{t}"))
    }

    /// `queue show ID` output (Err if the command fails).
    pub fn queue_show(&self, id: &str) -> Result<String> {
        self.cli_ok(&["queue", "show", id])
    }

    /// Wait until `queue list` shows message `id` and its reason (in `queue list` or
    /// `queue show ID`) mentions one of `needles` (case-insensitive). Returns the
    /// combined text.
    pub fn wait_pending_with_reason(
        &self,
        id: &str,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let list = self.queue_list().unwrap_or_else(|e| format!("{e:#}"));
            let show = self.queue_show(id).unwrap_or_else(|e| format!("{e:#}"));
            let both = format!("{list}\n{show}");
            let lower = both.to_lowercase();
            if list.contains(id) && needles.iter().any(|n| lower.contains(&n.to_lowercase())) {
                return Ok(both);
            }
            if start.elapsed() > timeout {
                bail!(
                    "message {id} never showed as pending with a reason containing one of \
                     {needles:?} within {timeout:?}; last output:\n{both}\nrelay log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A negative check: nothing containing `needle` shows up in `mailbox` during
/// `window` (which must be long enough for a few retries of the relay).
pub fn assert_never_arrives(mailbox: &crate::Mailbox, needle: &str, window: Duration) {
    let start = Instant::now();
    while start.elapsed() < window {
        let found = mailbox.containing(needle);
        assert!(
            found.is_empty(),
            "message {needle} was delivered but must not be: {:?}",
            found.first().map(|m| m.received())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
