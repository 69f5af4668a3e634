//! (g) Crash test: a concurrent burst of several hundred messages, kill -9 of the
//! relay mid-burst (twice), restart, finish the burst; every message that got 250
//! must arrive at the MX. Duplicates are allowed (at-least-once) but reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qrelay_tests::{build_message, token, Infra, Mx, Relay, SmtpClient};

const MESSAGES: usize = 500;
const CONNECTIONS: usize = 8;
/// Kill -9 after this many acknowledgements (counted over the whole run).
const KILL_POINTS: [usize; 2] = [120, 260];

struct Burst {
    run: String,
    next: AtomicUsize,
    acked: Mutex<BTreeSet<String>>,
    errors: AtomicUsize,
}

/// Send messages `next..MESSAGES` over `CONNECTIONS` concurrent sessions until all
/// are sent or, with `kill_at = Some((n, pid))`, until the relay was killed after
/// the n-th acknowledgement. Returns whether the kill happened.
fn burst(b: &Arc<Burst>, addr: SocketAddr, kill_at: Option<(usize, Pid)>) -> bool {
    let killed = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let (b, killed) = (b.clone(), killed.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<SmtpClient> = None;
                loop {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = b.next.fetch_add(1, Ordering::SeqCst);
                    if i >= MESSAGES {
                        if let Some(c) = conn.take() {
                            c.quit().await;
                        }
                        return;
                    }
                    let tok = format!("{}-{i:04}", b.run);
                    let rcpt = format!("burst-{i}@plain.example.test");
                    let body = format!("message {i} of the crash burst\n{}", "x".repeat(2000));
                    let msg = build_message("sender@lan.test", &[&rcpt], &tok, &body);
                    let result = async {
                        if conn.is_none() {
                            let mut c = SmtpClient::connect(addr, None).await?;
                            c.ehlo("burst.lan.test").await?;
                            conn = Some(c);
                        }
                        let c = conn.as_mut().expect("connected");
                        c.transaction("sender@lan.test", &[&rcpt], &msg).await
                    }
                    .await;
                    match result {
                        Ok(t) if t.accepted() => {
                            let n = {
                                let mut a = b.acked.lock().unwrap();
                                a.insert(tok);
                                a.len()
                            };
                            if let Some((at, pid)) = kill_at {
                                if n >= at && !killed.swap(true, Ordering::SeqCst) {
                                    let _ = kill(pid, Signal::SIGKILL);
                                }
                            }
                        }
                        Ok(_) => {
                            b.errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            // Connection broken (the kill, most likely): drop it.
                            b.errors.fetch_add(1, Ordering::SeqCst);
                            conn = None;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    killed.load(Ordering::SeqCst)
}

#[test]
fn kill9_mid_burst_loses_no_acknowledged_message() {
    let infra = Infra::get();
    // Plaintext MX at level may: this test is about durability, not TLS.
    let mut relay = Relay::start("[class.normal]\nlevel = \"may\"\n").unwrap();
    let b = Arc::new(Burst {
        run: token("crash"),
        next: AtomicUsize::new(0),
        acked: Mutex::new(BTreeSet::new()),
        errors: AtomicUsize::new(0),
    });
    let started = Instant::now();
    for at in KILL_POINTS {
        let pid = Pid::from_raw(relay.pid().unwrap() as i32);
        let killed = burst(&b, relay.listen, Some((at, pid)));
        let acked = b.acked.lock().unwrap().len();
        println!(
            "kill point {at}: killed: {killed}, {acked} acknowledged so far, {} failed/refused, {:?}",
            b.errors.load(Ordering::SeqCst),
            started.elapsed()
        );
        assert!(
            killed,
            "the relay acknowledged only {acked} messages; never reached the kill point {at}"
        );
        relay.kill9(); // reap
        relay.restart().unwrap();
    }
    // The rest of the burst against the restarted relay.
    burst(&b, relay.listen, None);
    let acked: BTreeSet<String> = b.acked.lock().unwrap().clone();
    println!(
        "burst done: {} of {MESSAGES} acknowledged, {} failed/refused, {:?}",
        acked.len(),
        b.errors.load(Ordering::SeqCst),
        started.elapsed()
    );

    // Every acknowledged message must arrive; count copies per token.
    let mailbox = infra.mailbox(Mx::Plain);
    let deadline = Instant::now() + Duration::from_secs(240);
    let (counts, missing) = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in mailbox.messages() {
            if let Some(t) = m.header("X-Test-Token") {
                if t.starts_with(&b.run) {
                    *counts.entry(t).or_default() += 1;
                }
            }
        }
        let missing: Vec<String> = acked
            .iter()
            .filter(|t| !counts.contains_key(*t))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (counts, missing);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let duplicates: usize = counts.values().map(|c| c.saturating_sub(1)).sum();
    let unacked_delivered = counts.keys().filter(|t| !acked.contains(*t)).count();
    println!(
        "delivered: {} distinct, {duplicates} duplicate copies, {unacked_delivered} \
         without a 250 (in flight at a kill), {} acknowledged but missing",
        counts.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never arrived, e.g. {:?}\nrelay log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        relay.log_tail(40)
    );
    assert!(
        acked.len() >= MESSAGES - 50,
        "only {} of {MESSAGES} messages were acknowledged",
        acked.len()
    );
}
