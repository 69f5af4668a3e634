//! `bench`: qrelay and Postfix side by side on this machine, under the same load,
//! in one run; prints a table with ratios. Entry point: `scripts/bench [--quick]`.
//!
//! The project keeps speed and memory targets out of timed tests: they live here,
//! measured relative to Postfix on the same box in the same run, so a slow CI
//! machine shifts both columns and the ratio stays meaningful.
//!
//! Method (also printed with the results):
//! - Load: Postfix's `smtp-source` (independent of qrelay), N messages of a fixed
//!   body size over 10 parallel sessions, one message per session (its default).
//! - Relay scenarios: the relay under test delivers to a sink on loopback.
//!   Plaintext sink: `smtp-sink`, which counts received messages; the time runs
//!   from starting smtp-source until the sink has counted all N. TLS sink: a
//!   Postfix smtpd offering STARTTLS whose before-queue proxy
//!   (`smtpd_proxy_filter`) is that same smtp-sink, so the sink Postfix writes no
//!   queue files and the count is the same.
//! - Acceptance scenario: the same burst while the destination is down (its MX
//!   address has no listener), i.e. receive + durable spool only; the time runs
//!   until smtp-source has its last 250.
//! - Every run starts a fresh relay (empty queue) and stops it afterwards. qrelay
//!   runs with its defaults except the listen address, the spool dir, Knot as
//!   resolver and the transport level; Postfix with its defaults except its own
//!   queue/log, `mynetworks`, `relayhost` and `smtp_tls_security_level`.
//! - CPU: user+system ticks from /proc, from before smtp-source starts until the
//!   relay's queue is empty again. qrelay: the process (all threads). Postfix:
//!   master (own + reaped children) + every live child.
//! - Memory: qrelay's VmHWM; for Postfix the sum of VmHWM over every process of
//!   the instance seen during the run (sampled every 100 ms). Also the peak of
//!   the summed Pss (sampled), which counts shared pages once.
//! - Each measurement is repeated and the median reported; qrelay and Postfix
//!   alternate in which goes first.

mod proc;

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use qrelay_tests::infra::{
    state_dir, ExtraPostfix, FileLock, BENCH_DOWN_IP, BENCH_SINK_IP, BENCH_TLS_SINK_IP,
};
use qrelay_tests::relay::qrelay_bin;
use qrelay_tests::{Infra, Relay};

/// Where the Postfix relay under test listens (qrelay gets a free port on 127.0.0.1).
const POSTFIX_RELAY_ADDR: &str = "127.0.40.10:25";
/// Name of the Postfix relay instance (`<state>/postfix/<name>`).
const POSTFIX_RELAY_NAME: &str = "bench-relay";
/// Name of the TLS sink instance.
const TLS_SINK_NAME: &str = "bench-tls-sink";
/// Parallel SMTP sessions of smtp-source.
const SESSIONS: usize = 10;

fn usage() -> ! {
    eprintln!(
        "usage: bench [--quick] [--reps N] [--messages N]\n\
         \n  --quick       a few hundred messages, 1 repetition, 10 KiB scenarios only (< 60 s)\
         \n  --reps N      repetitions of each measurement (default 3; median reported)\
         \n  --messages N  messages per 10 KiB run (default 2000; 100 KiB runs use N/2)"
    );
    std::process::exit(2)
}

struct Opts {
    quick: bool,
    reps: usize,
    messages: usize,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        quick: false,
        reps: 3,
        messages: 2000,
    };
    let mut args = std::env::args().skip(1);
    let mut explicit = (None, None);
    while let Some(a) = args.next() {
        let mut num = || -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--reps" => explicit.0 = Some(num()),
            "--messages" => explicit.1 = Some(num()),
            _ => usage(),
        }
    }
    if o.quick {
        o.reps = 1;
        o.messages = 300;
    }
    o.reps = explicit.0.unwrap_or(o.reps);
    o.messages = explicit.1.unwrap_or(o.messages);
    o
}

// ------------------------------------------------------------------- scenarios

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// smtp-sink, no STARTTLS; relays at level `may`.
    Plain,
    /// Postfix STARTTLS front of smtp-sink; relays must encrypt.
    Tls,
    /// Nothing listens: delivery impossible, acceptance only.
    Down,
}

impl Dest {
    /// The recipient domain (its MX in Knot points at the destination; qrelay
    /// looks it up, Postfix is given the address as relayhost).
    fn domain(self) -> &'static str {
        match self {
            Dest::Plain => "bench.example.test",
            Dest::Tls => "bench-tls.example.test",
            Dest::Down => "bench-down.example.test",
        }
    }

    fn ip(self) -> &'static str {
        match self {
            Dest::Plain => BENCH_SINK_IP,
            Dest::Tls => BENCH_TLS_SINK_IP,
            Dest::Down => BENCH_DOWN_IP,
        }
    }

    fn qrelay_level(self) -> &'static str {
        match self {
            Dest::Tls => "encrypted",
            Dest::Plain | Dest::Down => "may",
        }
    }

    fn postfix_level(self) -> &'static str {
        match self {
            Dest::Tls => "encrypt",
            Dest::Plain | Dest::Down => "may",
        }
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    dest: Dest,
    /// Body bytes per message (smtp-source -l; headers come on top).
    size: usize,
    messages: usize,
}

impl Scenario {
    fn new(dest: Dest, kib: usize, messages: usize) -> Scenario {
        let what = match dest {
            Dest::Plain => "relay, plaintext sink (may)",
            Dest::Tls => "relay, STARTTLS sink (encrypted / encrypt)",
            Dest::Down => "acceptance only, MX down",
        };
        Scenario {
            name: format!("{what}, {messages} x {kib} KiB"),
            dest,
            size: kib * 1024,
            messages,
        }
    }

    fn relays(&self) -> bool {
        self.dest != Dest::Down
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mta {
    Qrelay,
    Postfix,
}

impl Mta {
    fn name(self) -> &'static str {
        match self {
            Mta::Qrelay => "qrelay",
            Mta::Postfix => "Postfix",
        }
    }
}

/// One run of one scenario against one relay.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Messages per second: delivered (relay scenarios) or accepted.
    rate: f64,
    /// CPU milliseconds (user + system) per message.
    cpu_ms_per_msg: f64,
    mem: proc::MemPeak,
    /// Sessions the sink saw (how much the relay reuses connections).
    sink_sessions: usize,
}

// ------------------------------------------------------------------- the relays

/// A relay under test, freshly started for one run.
enum Target {
    Qrelay(Relay),
    Postfix(ExtraPostfix),
}

impl Target {
    fn start(mta: Mta, infra: &Infra, dest: Dest) -> Result<Target> {
        Ok(match mta {
            Mta::Qrelay => {
                // The harness's test config with qrelay's shipped defaults put back
                // for everything that affects speed (see example.toml).
                let overrides = format!(
                    r#"
[spool]
min_free_bytes = 209715200
[delivery]
concurrency = 20
connect_timeout = "30s"
command_timeout = "5m"
retry_schedule = ["5m", "10m", "20m", "40m", "1h", "2h", "4h"]
queue_lifetime = "5d"
delay_warning = "4h"
[log]
level = "info"
[class.normal]
level = "{level}"
"#,
                    level = dest.qrelay_level()
                );
                Target::Qrelay(Relay::start(&overrides)?)
            }
            Mta::Postfix => {
                let relayhost = format!("[{}]:25", dest.ip());
                Target::Postfix(ExtraPostfix::start(
                    infra,
                    POSTFIX_RELAY_NAME,
                    POSTFIX_RELAY_ADDR,
                    &[
                        ("myhostname", "postfix-relay.lan.test"),
                        ("mynetworks", "127.0.0.0/8"),
                        ("relayhost", &relayhost),
                        ("smtp_tls_security_level", dest.postfix_level()),
                    ],
                )?)
            }
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Target::Qrelay(r) => r.listen,
            Target::Postfix(_) => POSTFIX_RELAY_ADDR.parse().expect("literal"),
        }
    }

    /// Lists the relay's processes (for the memory sampler).
    fn pid_lister(&self) -> Result<impl Fn() -> Vec<i32> + Send + 'static> {
        let (root, with_children) = match self {
            Target::Qrelay(r) => (r.pid().context("qrelay not running")? as i32, false),
            Target::Postfix(p) => (p.master_pid().context("no Postfix master pid")?, true),
        };
        Ok(move || {
            let mut pids = vec![root];
            if with_children {
                pids.extend(proc::children(root));
            }
            pids
        })
    }

    /// CPU ticks used so far by the relay (see the module doc).
    fn cpu_ticks(&self) -> Result<u64> {
        let root = match self {
            Target::Qrelay(r) => r.pid().context("qrelay not running")? as i32,
            Target::Postfix(p) => p.master_pid().context("no Postfix master pid")?,
        };
        let s = proc::stat(root).context("relay process vanished")?;
        let mut ticks = s.own_ticks + s.children_ticks;
        if let Target::Postfix(_) = self {
            ticks += proc::children(root)
                .into_iter()
                .filter_map(proc::stat)
                .map(|c| c.own_ticks + c.children_ticks)
                .sum::<u64>();
        }
        Ok(ticks)
    }

    /// Messages in the relay's queue. For qrelay the content files (`msg/`):
    /// they are written before the envelope is committed and removed after it,
    /// and unlike `env/` they are not re-created by a late envelope update
    /// (see [`Target::orphan_envelopes`]).
    fn queued(&self) -> usize {
        match self {
            Target::Qrelay(r) => count_dir(&r.spool_dir.join("queue/msg")),
            Target::Postfix(p) => p.queued(),
        }
    }

    /// qrelay envelopes without content: an envelope written again after the
    /// message was removed (a race seen once in a work-in-progress queue).
    /// Reported as a warning, not hidden by the "queue empty" check.
    fn orphan_envelopes(&self) -> usize {
        match self {
            Target::Qrelay(r) => {
                let q = r.spool_dir.join("queue");
                std::fs::read_dir(q.join("env"))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| !q.join("msg").join(e.file_name()).exists())
                            .count()
                    })
                    .unwrap_or(0)
            }
            Target::Postfix(_) => 0,
        }
    }

    fn log_file(&self) -> std::path::PathBuf {
        match self {
            Target::Qrelay(r) => r.log_file.clone(),
            Target::Postfix(p) => p.dir.join("maillog"),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Target::Qrelay(r) => r.log_tail(30),
            Target::Postfix(p) => p.log_tail(30),
        }
    }
}

fn count_dir(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

// ----------------------------------------------------------- load and the sink

/// Spawn a helper process that dies with us (SIGKILL when this thread exits), so
/// an interrupted benchmark leaves no load generator or sink behind.
fn spawn_tied(cmd: &mut Command) -> Result<Child> {
    // SAFETY: only an async-signal-safe prctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    cmd.spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))
}

/// Postfix's `smtp-sink` on BENCH_SINK_IP:25, counting what it receives.
struct Sink {
    child: Child,
    counts: Arc<SinkCounts>,
    reader: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct SinkCounts {
    messages: AtomicUsize,
    sessions: AtomicUsize,
    /// When `messages` first reached `target`.
    reached: OnceLock<Instant>,
    target: usize,
}

impl Sink {
    fn start(target: usize) -> Result<Sink> {
        let listen = format!("{BENCH_SINK_IP}:25");
        // -c: a counter line "sess=S quit=Q mesg=M" (CR-terminated) on stdout
        // after every session end, QUIT and final "."; -u: drop root after bind.
        let mut child = spawn_tied(
            Command::new("smtp-sink")
                .args(["-c", "-u", "postfix", &listen, "256"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )?;
        let counts = Arc::new(SinkCounts {
            target,
            ..SinkCounts::default()
        });
        let mut out = child.stdout.take().context("sink stdout")?;
        let c = counts.clone();
        // The reader timestamps the moment the last message arrived; reading the
        // pipe as it fills keeps that precise to the scheduler, not a poll interval.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut line = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b != b'\r' && b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    for field in String::from_utf8_lossy(&line).split_whitespace() {
                        let value = |k: &str| field.strip_prefix(k)?.parse::<usize>().ok();
                        if let Some(m) = value("mesg=") {
                            c.messages.store(m, Ordering::SeqCst);
                            if m >= c.target {
                                let _ = c.reached.set(Instant::now());
                            }
                        }
                        if let Some(s) = value("sess=") {
                            c.sessions.store(s, Ordering::SeqCst);
                        }
                    }
                    line.clear();
                }
            }
        });
        let addr: SocketAddr = listen.parse()?;
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("smtp-sink does not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe is one session; sessions_after_close() leaves it out.
        Ok(Sink {
            child,
            counts,
            reader: Some(reader),
        })
    }

    /// Sessions the sink has seen end, once the count has stopped changing
    /// (the relay has just closed its connections), minus the readiness probe.
    fn sessions_after_close(&self) -> usize {
        let read = || self.counts.sessions.load(Ordering::SeqCst);
        let mut last = read();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            let now = read();
            if now == last {
                break;
            }
            last = now;
        }
        last.saturating_sub(1)
    }

    fn messages(&self) -> usize {
        self.counts.messages.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Run smtp-source against `addr`; returns when it has exited.
fn smtp_source(addr: SocketAddr, sc: &Scenario) -> Result<Child> {
    let to = format!("bench@{}", sc.dest.domain());
    spawn_tied(
        Command::new("smtp-source")
            .args(["-s", &SESSIONS.to_string()])
            .args(["-m", &sc.messages.to_string()])
            .args(["-l", &sc.size.to_string()])
            .args(["-f", "bench@lan.test", "-t", &to])
            .args(["-M", "client.lan.test", "-S", "qrelay benchmark"])
            .arg(format!("{}:{}", addr.ip(), addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// Wait for `child` with a deadline; Err (and the child killed) on timeout or a
/// non-zero exit.
fn wait_child(child: &mut Child, what: &str, deadline: Instant) -> Result<Instant> {
    loop {
        if let Some(st) = child.try_wait()? {
            let at = Instant::now();
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("{what} failed ({st}): {}", err.trim());
            }
            return Ok(at);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) -> Result<()> {
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

// -------------------------------------------------------------------- one run

fn run_once(infra: &Infra, sc: &Scenario, mta: Mta, hz: f64) -> Result<Run> {
    // Generous: the slowest run seen is far faster than 50 messages/s.
    let limit = Duration::from_secs(30) + Duration::from_millis(20) * sc.messages as u32;
    let sink = if sc.relays() {
        Some(Sink::start(sc.messages)?)
    } else {
        None
    };
    let target = Target::start(mta, infra, sc.dest)?;
    let mut result = measure(&target, sink.as_ref(), sc, hz, limit);
    if let (Ok(run), Some(sink)) = (&mut result, &sink) {
        // smtp-sink counts a session when it ends, and Postfix keeps idle
        // connections cached for a while: stop the relay first, then count.
        drop(target);
        run.sink_sessions = sink.sessions_after_close();
        return result;
    }
    if result.is_err() {
        // The relay's directory goes away with it: keep its log for a post-mortem.
        let kept = state_dir().join(format!("bench-failed-{}.log", mta.name()));
        let _ = std::fs::copy(target.log_file(), &kept);
        eprintln!(
            "---- {} log, last lines (all of it in {}) ----\n{}",
            mta.name(),
            kept.display(),
            target.log_tail()
        );
    }
    result
}

fn measure(
    target: &Target,
    sink: Option<&Sink>,
    sc: &Scenario,
    hz: f64,
    limit: Duration,
) -> Result<Run> {
    let sampler = proc::Sampler::start(target.pid_lister()?);
    let cpu_before = target.cpu_ticks()?;
    let t0 = Instant::now();
    let deadline = t0 + limit;
    let mut source = smtp_source(target.addr(), sc)?;
    let accepted_at = wait_child(&mut source, "smtp-source", deadline)?;
    let done_at = match sink {
        Some(sink) => {
            wait_for("the sink to receive every message", deadline, || {
                sink.counts.reached.get().is_some()
            })
            .with_context(|| format!("sink has {} of {}", sink.messages(), sc.messages))?;
            // CPU counts until the relay has finished its bookkeeping too.
            wait_for("the relay's queue to empty", deadline, || {
                target.queued() == 0
            })
            .with_context(|| format!("{} still queued", target.queued()))?;
            *sink.counts.reached.get().expect("checked")
        }
        None => {
            // Every 250 means a durable queue entry; check they are all there.
            wait_for("every accepted message in the queue", deadline, || {
                target.queued() >= sc.messages
            })
            .with_context(|| format!("{} queued", target.queued()))?;
            accepted_at
        }
    };
    let cpu_ticks = target.cpu_ticks()?.saturating_sub(cpu_before);
    let mem = sampler.finish();
    if let Some(sink) = sink {
        if sink.messages() != sc.messages {
            eprintln!(
                "warning: the sink counted {} messages for {} sent (duplicates?)",
                sink.messages(),
                sc.messages
            );
        }
    }
    let orphans = target.orphan_envelopes();
    if orphans > 0 {
        eprintln!(
            "warning: qrelay left {orphans} envelope(s) without content in queue/env \
             (an envelope rewritten after its message was removed)"
        );
    }
    let secs = done_at.duration_since(t0).as_secs_f64();
    Ok(Run {
        rate: sc.messages as f64 / secs,
        cpu_ms_per_msg: cpu_ticks as f64 / hz * 1000.0 / sc.messages as f64,
        mem,
        // Filled in by the caller once the relay is stopped.
        sink_sessions: 0,
    })
}

// ---------------------------------------------------------------- reporting

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Row {
    scenario: String,
    metric: &'static str,
    qrelay: f64,
    postfix: f64,
    decimals: usize,
    better: &'static str,
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | metric | qrelay | Postfix | qrelay/Postfix | better |\n\
         |---|---|---:|---:|---:|---|\n",
    );
    let mut last = "";
    for r in rows {
        let scenario = if r.scenario == last { "" } else { &r.scenario };
        last = &r.scenario;
        let _ = writeln!(
            s,
            "| {scenario} | {} | {:.d$} | {:.d$} | {:.2} | {} |",
            r.metric,
            r.qrelay,
            r.postfix,
            r.qrelay / r.postfix,
            r.better,
            d = r.decimals
        );
    }
    s
}

fn command_output(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn machine_facts() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)?
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "?".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let fs = command_output("stat", &["-f", "-c", "%T", &state_dir().to_string_lossy()]);
    let tmp_fs = command_output(
        "stat",
        &["-f", "-c", "%T", &std::env::temp_dir().to_string_lossy()],
    );
    format!(
        "machine: {nproc} CPUs ({cpu}), {mem} RAM, kernel {}\n\
         software: {} ({}), Postfix {} (Debian package {}), smtp-source/smtp-sink from that package\n\
         spools: qrelay in {} ({tmp_fs}), Postfix in {} ({fs})\n\
         workspace: git {}\n",
        read("/proc/sys/kernel/osrelease").trim(),
        command_output(&qrelay_bin().to_string_lossy(), &["--version"]),
        qrelay_bin().display(),
        command_output("postconf", &["-d", "-h", "mail_version"]),
        command_output("dpkg-query", &["-W", "-f", "${Version}", "postfix"]),
        std::env::temp_dir().display(),
        state_dir().join("postfix").display(),
        command_output(
            "git",
            &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]
        ),
    )
}

const METHOD: &str = "\
method:
- load: smtp-source, 10 parallel sessions, one message per session, fixed body size;
  the same for both relays. Each run starts the relay fresh with an empty queue.
- relay scenarios: time from starting smtp-source until the sink has counted all N
  messages. Plaintext sink: smtp-sink. STARTTLS sink: a Postfix smtpd with STARTTLS
  (test-CA certificate) whose before-queue proxy is that smtp-sink (no queue files).
  qrelay finds the sink through an MX lookup at Knot (hickory caches it); Postfix
  has it as a static relayhost [ip]:25 (no DNS).
- acceptance: the same burst while the destination MX has no listener (connection
  refused); time until smtp-source has its last 250; then every message is checked
  to be in the queue.
- both relays fsync what they accept before the 250 (their normal durability).
- defaults for both: qrelay delivery.concurrency 20, max_connections 200; Postfix
  default_process_limit 100, default_destination_concurrency_limit 20 (relay
  ramps up from initial_destination_concurrency 5), connection cache on demand.
- CPU: user+sys ticks from /proc/PID/stat from start until the relay's queue is
  empty; Postfix: master (own + reaped children) + live children.
- RSS: qrelay VmHWM; Postfix: sum of VmHWM over every process of the instance
  seen during the run (sampled every 100 ms: an upper bound, shared pages and
  successive processes counted separately). PSS: largest sum of Pss over one
  100 ms sample (shared pages counted once), for both.
- medians over the repetitions; qrelay and Postfix alternate in going first.
- smtp-source, smtp-sink, the TLS sink and the sampler share the same CPUs.
";

// ---------------------------------------------------------------------- main

fn main() {
    let opts = parse_args();
    match run(&opts) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(opts: &Opts) -> Result<()> {
    for tool in ["smtp-source", "smtp-sink", "postfix", "knotd"] {
        if !["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists())
        {
            bail!("{tool} not found (install the Debian packages postfix and knot)");
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("must run as root (port 25, Postfix instances)");
    }
    let started = Instant::now();
    let infra = Infra::get();
    // One benchmark at a time: they would share ports and instance names.
    let _lock = FileLock::acquire(&state_dir().join("bench.lock"))?;
    let hz = proc::ticks_per_second();

    let n = opts.messages;
    let mut scenarios = vec![
        Scenario::new(Dest::Plain, 10, n),
        Scenario::new(Dest::Tls, 10, n),
    ];
    if !opts.quick {
        scenarios.push(Scenario::new(Dest::Plain, 100, (n / 2).max(1)));
    }
    scenarios.push(Scenario::new(Dest::Down, 10, n));
    if !opts.quick {
        scenarios.push(Scenario::new(Dest::Down, 100, (n / 2).max(1)));
    }

    print!("{}", machine_facts());
    if qrelay_bin().components().any(|c| c.as_os_str() == "debug") {
        println!("note: qrelay is a debug build: a smoke run, not representative numbers");
    }
    println!(
        "runs: {} repetition(s) of {} scenarios x 2 relays\n",
        opts.reps,
        scenarios.len()
    );

    // The TLS sink lives for the whole benchmark: both relays meet the same one.
    let tls_sink = if scenarios.iter().any(|s| s.dest == Dest::Tls) {
        let certs = infra.certs();
        let cert = certs.join("mx-ca-chain.pem");
        let key = certs.join("mx-ca.key");
        let proxy = format!("{BENCH_SINK_IP}:25");
        Some(ExtraPostfix::start(
            infra,
            TLS_SINK_NAME,
            &format!("{BENCH_TLS_SINK_IP}:25"),
            &[
                ("myhostname", "mx-bench-tls.example.test"),
                ("mynetworks", "127.0.0.0/8"),
                ("smtpd_tls_security_level", "may"),
                ("smtpd_tls_cert_file", &cert.to_string_lossy()),
                ("smtpd_tls_key_file", &key.to_string_lossy()),
                ("smtpd_proxy_filter", &proxy),
            ],
        )?)
    } else {
        None
    };

    // results[scenario][mta] = runs
    let mut results: Vec<[Vec<Run>; 2]> = scenarios.iter().map(|_| [vec![], vec![]]).collect();
    for rep in 0..opts.reps {
        for (i, sc) in scenarios.iter().enumerate() {
            let order = if rep % 2 == 0 {
                [Mta::Qrelay, Mta::Postfix]
            } else {
                [Mta::Postfix, Mta::Qrelay]
            };
            for mta in order {
                let r = run_once(infra, sc, mta, hz)
                    .with_context(|| format!("{} with {}", sc.name, mta.name()))?;
                let extra = if sc.relays() {
                    format!(
                        ", {:.2} ms CPU/msg, RSS {:.1} MiB ({} process(es)), PSS {:.1} MiB, {} sink sessions",
                        r.cpu_ms_per_msg,
                        mib(r.mem.hwm_sum_kib),
                        r.mem.processes,
                        mib(r.mem.pss_sum_max_kib),
                        r.sink_sessions
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "[{:>5.1}s] rep {}/{} {:<7} {}: {:.0} msg/s{extra}",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    opts.reps,
                    mta.name(),
                    sc.name,
                    r.rate,
                );
                results[i][mta as usize].push(r);
            }
        }
    }
    drop(tls_sink);

    let mut rows = Vec::new();
    for (sc, [q, p]) in scenarios.iter().zip(&results) {
        let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let mut row = |metric, f: fn(&Run) -> f64, decimals, better| {
            rows.push(Row {
                scenario: sc.name.clone(),
                metric,
                qrelay: med(q, f),
                postfix: med(p, f),
                decimals,
                better,
            })
        };
        if sc.relays() {
            row("delivered msg/s", |r| r.rate, 0, "higher");
            row("CPU ms/msg (user+sys)", |r| r.cpu_ms_per_msg, 2, "lower");
            row("peak RSS MiB", |r| mib(r.mem.hwm_sum_kib), 1, "lower");
            row("peak PSS MiB", |r| mib(r.mem.pss_sum_max_kib), 1, "lower");
            row(
                "connections to the sink",
                |r| r.sink_sessions as f64,
                0,
                "lower (reuse)",
            );
        } else {
            row("accepted msg/s", |r| r.rate, 0, "higher");
        }
    }
    println!("{}", table(&rows));
    print!("{METHOD}");
    println!(
        "total benchmark time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
