//! Scheduler logic with an explicit clock: which recipients are due, how results
//! change state, when notices go out, and that the spool always agrees.

use super::*;
use crate::spool::record::{BodyType, ClientInfo, Notify, RECORD_VERSION};

fn config() -> Arc<Config> {
    Arc::new(Config::default())
}

fn env_for(sender: &str, rcpts: &[&str], received_at: u64) -> Envelope {
    Envelope {
        record_version: RECORD_VERSION,
        id: QueueId::generate(),
        received_at,
        sender: sender.into(),
        ret: None,
        envid: Some("ENV-1".into()),
        body: BodyType::SevenBit,
        smtputf8: false,
        requiretls: false,
        size: 0,
        class: crate::config::RiskClass::Normal,
        class_reasons: Vec::new(),
        tls_optional: false,
        expires_at: None,
        client: ClientInfo::default(),
        message_id: Some("<m1@lan.test>".into()),
        recipients: rcpts
            .iter()
            .map(|a| Recipient::new(a.to_string(), None, None, received_at))
            .collect(),
    }
}

const CONTENT: &[u8] = b"From: a@lan.test\r\nSubject: hello\r\n\r\nbody\r\n";

async fn queue_with(env: &Envelope) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 0).unwrap();
    let q = Queue::new(spool, config(), vec![]);
    q.submit(env.clone(), CONTENT.to_vec()).await.unwrap();
    (dir, q)
}

fn attempt(reply: &str) -> Attempt {
    Attempt {
        at: 0,
        mx: "mx.example.test".into(),
        ip: "127.0.20.1".into(),
        tls: None,
        verdict: None,
        reply: reply.into(),
        auth: None,
        problem: None,
        requiretls: false,
    }
}

fn report(outcomes: Vec<RcptOutcome>) -> DeliveryReport {
    DeliveryReport {
        outcomes,
        attempt: attempt(""),
    }
}

fn delivered() -> RcptOutcome {
    RcptOutcome::Delivered {
        reply: "250 2.0.0 Ok: queued as X".into(),
        remote_dsn: false,
    }
}

fn deferred() -> RcptOutcome {
    RcptOutcome::Deferred {
        reply: "450 4.2.0 try later".into(),
        status: "4.2.0".into(),
    }
}

fn failed() -> RcptOutcome {
    RcptOutcome::Failed {
        reply: "550 5.1.1 no such user".into(),
        status: "5.1.1".into(),
    }
}

fn notices(q: &Queue) -> Vec<Envelope> {
    q.list().into_iter().filter(|e| e.is_bounce()).collect()
}

#[tokio::test]
async fn one_transaction_per_domain_and_never_two_at_once() {
    let env = env_for(
        "a@lan.test",
        &["x@one.test", "y@one.test", "z@two.test"],
        1000,
    );
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    assert_eq!(jobs.len(), 2);
    let one = jobs.iter().find(|j| j.domain == "one.test").unwrap();
    assert_eq!(one.rcpts, vec![0, 1]);
    assert_eq!(one.request.recipients.len(), 2);
    // While in flight, the same domain is not handed out again.
    let (again, _) = q.take_due(1000);
    assert!(again.is_empty());
}

#[tokio::test]
async fn deferral_follows_the_retry_schedule_then_delivery_removes() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (dir, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![deferred()]), 1000).await;
    let r = &q.show(&env.id).unwrap().recipients[0];
    assert_eq!(r.state, RcptState::Pending);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.next_attempt, 1000 + 300, "first wait is 5 minutes");
    assert_eq!(r.last.as_ref().unwrap().reply, "450 4.2.0 try later");
    // The spool agrees with memory (a crash now loses nothing).
    let rec = Spool::open(dir.path(), 0).unwrap().recover().unwrap();
    assert_eq!(rec.envelopes[0].recipients[0].attempts, 1);

    let (jobs, next) = q.take_due(1299);
    assert!(jobs.is_empty());
    assert_eq!(next, Some(1300));
    let (jobs, _) = q.take_due(1300);
    q.apply(&jobs[0], report(vec![deferred()]), 1300).await;
    assert_eq!(
        q.show(&env.id).unwrap().recipients[0].next_attempt,
        1300 + 600,
        "second wait is 10 minutes"
    );
    let (jobs, _) = q.take_due(1900);
    q.apply(&jobs[0], report(vec![delivered()]), 1900).await;
    assert!(
        q.is_empty(),
        "delivered without NOTIFY=SUCCESS: removed, no notice"
    );
    assert!(Spool::open(dir.path(), 0)
        .unwrap()
        .recover()
        .unwrap()
        .envelopes
        .is_empty());
}

#[tokio::test]
async fn permanent_failure_sends_one_failure_dsn_to_the_sender() {
    let env = env_for("a@lan.test", &["x@one.test", "y@one.test"], 1000);
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![failed(), delivered()]), 1000)
        .await;
    assert!(q.show(&env.id).is_none(), "original removed once notified");
    let n = notices(&q);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].recipients[0].address, "a@lan.test");
    let dsn = q.spool().content(&n[0].id).unwrap();
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("x@one.test"));
    assert!(text.contains("5.1.1"));
    assert!(!text.contains("Final-Recipient: rfc822; y@one.test"));
}

#[tokio::test]
async fn never_a_notice_about_a_notice() {
    let env = env_for("", &["a@lan.test"], 1000);
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![failed()]), 1000).await;
    assert!(q.is_empty(), "failed bounce is dropped without a DSN");
}

#[tokio::test]
async fn queue_lifetime_turns_deferral_into_failure() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (_d, q) = queue_with(&env).await;
    let lifetime = config().delivery.queue_lifetime.as_secs();
    let (jobs, _) = q.take_due(1000);
    // Near the end of the lifetime, the next attempt is scheduled at the end exactly.
    q.apply(&jobs[0], report(vec![deferred()]), 1000 + lifetime - 10)
        .await;
    let r = &q.show(&env.id).unwrap().recipients[0];
    assert_eq!(r.next_attempt, 1000 + lifetime);
    let (jobs, _) = q.take_due(1000 + lifetime);
    q.apply(&jobs[0], report(vec![deferred()]), 1000 + lifetime)
        .await;
    assert!(q.show(&env.id).is_none());
    // The delay notice (4 h passed long ago) and the final failure notice.
    let texts: Vec<String> = notices(&q)
        .iter()
        .map(|n| String::from_utf8_lossy(&q.spool().content(&n.id).unwrap()).into_owned())
        .collect();
    assert_eq!(texts.len(), 2);
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("Action: delayed"))
            .count(),
        1
    );
    let failure: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("Action: failed"))
        .collect();
    assert_eq!(failure.len(), 1);
    assert!(failure[0].contains("5.4.7"), "{}", failure[0]);
}

#[tokio::test]
async fn delay_notice_once_after_the_warning_time() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (_d, q) = queue_with(&env).await;
    let warn = config().delivery.delay_warning.as_secs();
    q.settle(&env.id, 1000 + warn - 1).await;
    assert!(notices(&q).is_empty());
    q.settle(&env.id, 1000 + warn).await;
    assert_eq!(notices(&q).len(), 1);
    q.settle(&env.id, 1000 + warn + 60).await;
    assert_eq!(notices(&q).len(), 1, "only one delay notice");
    assert!(q.show(&env.id).unwrap().recipients[0].delay_notified);
}

#[tokio::test]
async fn notify_success_without_remote_dsn_support_sends_relayed_notice() {
    let mut env = env_for("a@lan.test", &["x@one.test"], 1000);
    env.recipients[0].notify = Some(Notify {
        success: true,
        ..Default::default()
    });
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![delivered()]), 1000).await;
    let n = notices(&q);
    assert_eq!(n.len(), 1);
    let text = String::from_utf8_lossy(&q.spool().content(&n[0].id).unwrap()).into_owned();
    assert!(
        text.to_ascii_lowercase().contains("action: relayed"),
        "{text}"
    );
}

#[tokio::test]
async fn notify_success_with_remote_dsn_support_is_left_to_the_remote() {
    let mut env = env_for("a@lan.test", &["x@one.test"], 1000);
    env.recipients[0].notify = Some(Notify {
        success: true,
        ..Default::default()
    });
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    let ok = RcptOutcome::Delivered {
        reply: "250 2.0.0 Ok".into(),
        remote_dsn: true,
    };
    q.apply(&jobs[0], report(vec![ok]), 1000).await;
    assert!(q.is_empty());
}

#[tokio::test]
async fn admin_retry_and_delete() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (dir, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![deferred()]), 1000).await;
    assert_eq!(q.retry(Some(&env.id)), 1);
    assert!(q.show(&env.id).unwrap().recipients[0].next_attempt <= now_secs());
    assert_eq!(q.retry(None), 1);
    assert_eq!(q.delete(&env.id), Ok(true));
    assert_eq!(q.delete(&env.id), Ok(false));
    assert!(Spool::open(dir.path(), 0)
        .unwrap()
        .recover()
        .unwrap()
        .envelopes
        .is_empty());
}

#[tokio::test]
async fn result_for_a_deleted_message_is_ignored() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (_d, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.delete(&env.id).unwrap();
    q.apply(&jobs[0], report(vec![failed()]), 1000).await;
    assert!(q.is_empty());
}

/// The whole content behind a delivery request's handle, read the way the SMTP
/// client reads it: by offset, in pieces.
fn read_all(source: &dyn crate::deliver::ContentSource) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = source.read_at(&mut buf, out.len() as u64).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, source.size());
    out
}

/// A transport that answers from a script, to run the real scheduler loop.
struct Scripted(std::sync::Mutex<Vec<RcptOutcome>>);

impl Transport for Scripted {
    fn deliver(
        &self,
        req: DeliveryRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryReport> + Send + '_>> {
        Box::pin(async move {
            assert_eq!(read_all(req.content.as_ref()), CONTENT);
            let next = self.0.lock().unwrap().remove(0);
            DeliveryReport {
                outcomes: req.recipients.iter().map(|_| next.clone()).collect(),
                attempt: attempt(""),
            }
        })
    }
}

#[tokio::test]
async fn scheduler_loop_delivers_and_stops_on_shutdown() {
    let env = env_for("a@lan.test", &["x@one.test"], now_secs());
    let (_d, q) = queue_with(&env).await;
    let (tx, rx) = watch::channel(false);
    let transport = Arc::new(Scripted(std::sync::Mutex::new(vec![delivered()])));
    let run = tokio::spawn(q.clone().run(transport, rx));
    for _ in 0..100 {
        if q.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(q.is_empty());
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("scheduler stops")
        .unwrap();
}

/// A transport whose deliveries never finish (a server that stalls).
struct Stalled;

impl Transport for Stalled {
    fn deliver(
        &self,
        _req: DeliveryRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DeliveryReport> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn scheduler_heartbeat_stays_fresh_while_idle_and_while_slots_are_busy() {
    // Two domains, one delivery slot that never frees: the loop waits for a slot
    // and must still beat (a busy relay is not a wedged one).
    let env = env_for("a@lan.test", &["x@one.test", "y@two.test"], now_secs());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.delivery.concurrency = 1;
    let q = Queue::new(Spool::open(dir.path(), 0).unwrap(), Arc::new(cfg), vec![]);
    q.submit(env, CONTENT.to_vec()).await.unwrap();
    q.set_max_idle(Duration::from_millis(50));
    let (_tx, rx) = watch::channel(false);
    let run = tokio::spawn(q.clone().run(Arc::new(Stalled), rx));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            q.heartbeat_age() < Duration::from_millis(500),
            "heartbeat {:?} old",
            q.heartbeat_age()
        );
    }
    // The stalled deliveries would hold a clean shutdown for its grace period.
    run.abort();
}

#[test]
fn status_code_is_found_in_replies() {
    assert_eq!(status_of("250 2.0.0 Ok"), Some("2.0.0".into()));
    assert_eq!(status_of("250 Ok"), None);
    assert_eq!(status_of("550 5.7.1 relay denied"), Some("5.7.1".into()));
}

#[tokio::test]
async fn streamed_message_is_committed_in_batches_and_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 0).unwrap();
    let q = Queue::new(spool, config(), vec![]);
    let mut env = env_for("a@lan.test", &["b@remote.test"], now_secs());
    let content: Vec<u8> = (0..3 * WRITE_BATCH + 17).map(|i| (i % 251) as u8).collect();
    let mut msg = q.begin(env.id.clone()).await.unwrap();
    for piece in content.chunks(1000) {
        msg.write(piece).await.unwrap();
    }
    assert_eq!(msg.len(), content.len() as u64);
    env.size = msg.len();
    assert!(q.is_empty(), "not in the queue before the commit");
    q.commit(msg, env.clone()).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q.spool().content(&env.id).unwrap(), content);
    let rec = Spool::open(dir.path(), 0).unwrap().recover().unwrap();
    assert_eq!(rec.envelopes, vec![env]);
    assert_eq!(rec.temp_removed, 0);

    // Given up: its file is gone once discard returns; nothing is queued.
    let mut msg = q.begin(QueueId::generate()).await.unwrap();
    msg.write(&content).await.unwrap();
    msg.discard().await;
    assert!(std::fs::read_dir(dir.path().join("queue/tmp"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(q.len(), 1);
}

#[tokio::test]
async fn dsn_for_a_large_message_reads_and_returns_only_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 0).unwrap();
    let q = Queue::new(spool, config(), vec![]);
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let header = b"From: a@lan.test\r\nSubject: big one\r\nMessage-ID: <big@lan.test>\r\n\r\n";
    let mut content = header.to_vec();
    while content.len() < 3 * 1024 * 1024 {
        content.extend_from_slice(b"BODY-LINE-NOT-TO-BE-RETURNED\r\n");
    }
    q.submit(env.clone(), content.clone()).await.unwrap();

    // What the notice is built from: the header section and the size, no more,
    // although RET allows a full return (the message is over MAX_FULL_RETURN).
    let (bytes, size) = read_original(q.spool(), &env.id, &env, true).unwrap();
    assert_eq!(size, content.len() as u64);
    assert_eq!(bytes, header, "only the header section is read");
    // A small message with a failure due is read whole, RET=HDRS only its header.
    let small = env_for("a@lan.test", &["x@one.test"], 1000);
    q.submit(small.clone(), CONTENT.to_vec()).await.unwrap();
    let (bytes, _) = read_original(q.spool(), &small.id, &small, true).unwrap();
    assert_eq!(bytes, CONTENT);
    let mut hdrs = small.clone();
    hdrs.ret = Some(crate::spool::record::Ret::Headers);
    let (bytes, _) = read_original(q.spool(), &small.id, &hdrs, true).unwrap();
    assert_eq!(bytes, b"From: a@lan.test\r\nSubject: hello\r\n\r\n");
    let (bytes, _) = read_original(q.spool(), &small.id, &small, false).unwrap();
    assert_eq!(bytes, b"From: a@lan.test\r\nSubject: hello\r\n\r\n");

    let (jobs, _) = q.take_due(1000);
    let job = jobs.into_iter().find(|j| j.id == env.id).unwrap();
    q.apply(&job, report(vec![failed()]), 1000).await;
    assert!(q.show(&env.id).is_none(), "original removed once notified");
    let n = notices(&q);
    assert_eq!(n.len(), 1);
    let dsn = q.spool().content(&n[0].id).unwrap();
    assert!(dsn.len() < 64 * 1024, "{} bytes", dsn.len());
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert!(text.contains("Subject: big one"), "{text}");
    assert!(text.contains("In-Reply-To: <big@lan.test>"), "{text}");
    assert!(!text.contains("BODY-LINE-NOT-TO-BE-RETURNED"), "{text}");
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("The headers of your message are attached."));
}

#[tokio::test]
async fn a_late_state_write_never_brings_back_a_removed_message() {
    let env = env_for("a@lan.test", &["x@one.test"], 1000);
    let (dir, q) = queue_with(&env).await;
    let (jobs, _) = q.take_due(1000);
    q.apply(&jobs[0], report(vec![delivered()]), 1000).await;
    assert!(q.is_empty());
    // A state write that lost the race against the removal must write nothing.
    q.persist(&env.id).await;
    let env_dir = dir.path().join("queue/env");
    assert_eq!(std::fs::read_dir(&env_dir).unwrap().count(), 0);
    assert!(Spool::open(dir.path(), 0)
        .unwrap()
        .recover()
        .unwrap()
        .quarantined
        .is_empty());
}
