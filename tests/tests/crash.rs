//! (g) Crash test: a concurrent burst of messages, kill -9 of the relay mid-burst,
//! restart; every message that got 250 must arrive at the MX. Duplicates are
//! allowed (at-least-once) but reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qrelay_tests::{build_message, token, Infra, Mx, Relay, SmtpClient};

const MESSAGES: usize = 400;
const CONNECTIONS: usize = 8;
const KILL_AFTER_ACKS: usize = 150;

#[test]
fn kill9_mid_burst_loses_no_acknowledged_message() {
    let infra = Infra::get();
    // Plaintext MX at level may: this test is about durability, not TLS.
    let mut relay = Relay::start("[class.normal]\nlevel = \"may\"\n").unwrap();
    let run = token("crash");
    let pid = Pid::from_raw(relay.pid().unwrap() as i32);
    let addr = relay.listen;

    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let (next, acked, killed, errors, run) = (
                next.clone(),
                acked.clone(),
                killed.clone(),
                errors.clone(),
                run.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<SmtpClient> = None;
                loop {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= MESSAGES {
                        if let Some(c) = conn.take() {
                            c.quit().await;
                        }
                        return;
                    }
                    let tok = format!("{run}-{i:04}");
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
                                let mut a = acked.lock().unwrap();
                                a.insert(tok);
                                a.len()
                            };
                            if n >= KILL_AFTER_ACKS && !killed.swap(true, Ordering::SeqCst) {
                                let _ = kill(pid, Signal::SIGKILL);
                            }
                        }
                        Ok(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            // Connection broken (the kill, most likely): drop it.
                            errors.fetch_add(1, Ordering::SeqCst);
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
    let acked: BTreeSet<String> = acked.lock().unwrap().clone();
    println!(
        "burst: {} acknowledged, {} failed/refused, killed: {}, {:?}",
        acked.len(),
        errors.load(Ordering::SeqCst),
        killed.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(
        killed.load(Ordering::SeqCst),
        "the relay acknowledged only {} messages; never reached the kill point",
        acked.len()
    );
    relay.kill9(); // reap
    relay.restart().unwrap();

    // Every acknowledged message must arrive; count copies per token.
    let mailbox = infra.mailbox(Mx::Plain);
    let deadline = Instant::now() + Duration::from_secs(240);
    let (counts, missing) = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in mailbox.messages() {
            if let Some(t) = m.header("X-Test-Token") {
                if t.starts_with(&run) {
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
        "after restart: {} distinct delivered, {duplicates} duplicate copies, \
         {unacked_delivered} delivered without a 250 (in flight at the kill), {} missing",
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
}
