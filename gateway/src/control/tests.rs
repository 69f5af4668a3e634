//! The control socket over a real Unix socket in a temporary directory.

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::spool::record::{
    Attempt, BodyType, ClientInfo, Recipient, TlsFacts, TransportVerdict, RECORD_VERSION,
};

const NOW: u64 = 1_739_440_800;
const ID1: &str = "0123456789ABCDEF";
const ID2: &str = "0123456789ABCDE0";

fn envelope(id: &str) -> Envelope {
    let mut pending = Recipient::new(
        "bob@example.org".into(),
        Some("rfc822;bob@example.org".into()),
        None,
        NOW,
    );
    pending.attempts = 3;
    pending.next_attempt = NOW + 240;
    pending.status = Some("4.7.5".into());
    pending.last = Some(Attempt {
        at: NOW - 60,
        mx: "mx1.example.org".into(),
        ip: "192.0.2.25".into(),
        tls: Some(TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            group: Some("X25519MLKEM768".into()),
            peer_cert_sha256: Some("ab".repeat(32)),
            peer_spki_sha256: Some("cd".repeat(32)),
            pkix_verified: false,
            profile: "bsi".into(),
            peer_key_type: Some("RSA".into()),
            peer_key_bits: Some(3072),
        }),
        verdict: Some(TransportVerdict::Encrypted),
        reply: format!(
            "certificate does not match the MX host name {}",
            "x".repeat(100)
        ),
        auth: None,
        problem: None,
        requiretls: false,
    });
    let mut delivered = Recipient::new("carol@example.net".into(), None, None, NOW);
    delivered.state = RcptState::Delivered;
    delivered.attempts = 1;
    delivered.last = Some(Attempt {
        at: NOW - 30,
        mx: "mx.example.net".into(),
        ip: "198.51.100.7".into(),
        tls: None,
        verdict: Some(TransportVerdict::Plaintext),
        reply: "250 2.0.0 Ok: queued".into(),
        auth: None,
        problem: None,
        requiretls: false,
    });
    Envelope {
        record_version: RECORD_VERSION,
        id: QueueId::parse(id).expect("id"),
        received_at: NOW - 7200,
        sender: "alice@example.com".into(),
        ret: None,
        envid: Some("ENV-1".into()),
        body: BodyType::EightBitMime,
        smtputf8: false,
        requiretls: false,
        size: 2048,
        class: crate::config::RiskClass::Normal,
        class_reasons: Vec::new(),
        tls_optional: false,
        expires_at: None,
        client: ClientInfo {
            addr: "192.168.1.10".into(),
            helo: "exchange.lan".into(),
            tls: None,
            auth_user: None,
        },
        message_id: Some("<m1@example.com>".into()),
        recipients: vec![pending, delivered],
    }
}

use crate::spool::record::RcptState;

#[derive(Default)]
struct TestHandler {
    envs: Mutex<Vec<Envelope>>,
    retried: Mutex<Vec<Option<QueueId>>>,
}

impl ControlHandler for TestHandler {
    fn list(&self) -> Vec<Envelope> {
        self.envs.lock().expect("lock").clone()
    }
    fn show(&self, id: &QueueId) -> Option<Envelope> {
        // A handler bug must not take the server down.
        assert_ne!(id.as_str(), "DEADDEADDEADDEAD", "handler bug");
        self.envs
            .lock()
            .expect("lock")
            .iter()
            .find(|e| &e.id == id)
            .cloned()
    }
    fn retry(&self, id: Option<&QueueId>) -> usize {
        self.retried.lock().expect("lock").push(id.cloned());
        let envs = self.envs.lock().expect("lock");
        match id {
            None => envs.len(),
            Some(id) => envs.iter().filter(|e| &e.id == id).count(),
        }
    }
    fn release(&self, id: &QueueId) -> Option<usize> {
        let envs = self.envs.lock().expect("lock");
        envs.iter().find(|e| &e.id == id).map(|e| {
            e.recipients
                .iter()
                .filter(|r| r.state == RcptState::Held)
                .count()
        })
    }
    fn delete(&self, id: &QueueId) -> Result<bool, String> {
        if id.as_str() == "FFFFFFFFFFFFFFFF" {
            return Err("disk on fire".into());
        }
        let mut envs = self.envs.lock().expect("lock");
        let before = envs.len();
        envs.retain(|e| &e.id != id);
        Ok(envs.len() != before)
    }
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handler: Arc<TestHandler>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ControlError>>,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.sock");
    let handler = Arc::new(TestHandler::default());
    handler
        .envs
        .lock()
        .expect("lock")
        .extend([envelope(ID1), envelope(ID2)]);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn({
        let path = path.clone();
        let handler: Arc<dyn ControlHandler> = handler.clone();
        async move { serve(&path, handler, rx).await }
    });
    // Wait until the socket accepts connections.
    for _ in 0..200 {
        if UnixStream::connect(&path).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Server {
        _dir: dir,
        path,
        handler,
        stop,
        task,
    }
}

#[tokio::test]
async fn list_show_retry_delete_round_trip() {
    let s = start().await;

    match request(&s.path, Command::List).await.expect("list") {
        Response::Messages(envs) => {
            assert_eq!(envs.len(), 2);
            assert_eq!(envs[0], envelope(ID1));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Lower-case ids are accepted and normalized by the client.
    match request(&s.path, Command::Show(ID1.to_lowercase()))
        .await
        .expect("show")
    {
        Response::Message(env) => assert_eq!(env, envelope(ID1)),
        other => panic!("unexpected {other:?}"),
    }
    match request(&s.path, Command::Show("0000000000000000".into()))
        .await
        .expect("show missing")
    {
        Response::Error(e) => assert!(e.contains("no message 0000000000000000"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    match request(&s.path, Command::Retry("all".into()))
        .await
        .expect("retry all")
    {
        Response::Done(m) => assert!(m.contains("2 messages"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    match request(&s.path, Command::Retry(ID2.into()))
        .await
        .expect("retry one")
    {
        Response::Done(m) => assert!(m.contains(ID2), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        *s.handler.retried.lock().expect("lock"),
        vec![None, QueueId::parse(ID2)]
    );
    match request(&s.path, Command::Delete(ID1.into()))
        .await
        .expect("delete")
    {
        Response::Done(m) => assert!(m.contains("deleted"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    match request(&s.path, Command::Delete(ID1.into()))
        .await
        .expect("delete again")
    {
        Response::Error(e) => assert!(e.contains("no message"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    match request(&s.path, Command::Delete("ffffffffffffffff".into()))
        .await
        .expect("delete failing")
    {
        Response::Error(e) => assert!(e.contains("disk on fire"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    // Several requests on one connection.
    let mut c = Client::connect(&s.path).await.expect("connect");
    for _ in 0..3 {
        match c.call(Command::List).await.expect("list") {
            Response::Messages(envs) => assert_eq!(envs.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    s.stop.send(true).expect("stop");
    s.task.await.expect("join").expect("serve");
    assert!(!s.path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn socket_mode_is_0660_and_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.sock");
    // A stale socket file: bound, then its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let (stop, rx) = watch::channel(false);
    let handler: Arc<dyn ControlHandler> = Arc::new(TestHandler::default());
    let task = tokio::spawn({
        let path = path.clone();
        async move { serve(&path, handler, rx).await }
    });
    let mut ok = false;
    for _ in 0..200 {
        if request(&path, Command::List).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "server answers after replacing the stale socket");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // A second server on the same live socket is refused.
    let (_stop2, rx2) = watch::channel(false);
    let err = serve(&path, Arc::new(TestHandler::default()), rx2)
        .await
        .expect_err("second server");
    assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");

    stop.send(true).expect("stop");
    task.await.expect("join").expect("serve");

    // A regular file in the way is never deleted.
    std::fs::write(&path, b"precious").expect("write");
    let (_stop3, rx3) = watch::channel(false);
    let err = serve(&path, Arc::new(TestHandler::default()), rx3)
        .await
        .expect_err("not a socket");
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
}

async fn raw_exchange(path: &Path, bytes: &[u8]) -> (Option<Response>, bool) {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let response = read_frame(&mut stream)
        .await
        .expect("frame")
        .map(|f| postcard::from_bytes::<Response>(&f).expect("response decodes"));
    // After an error the server closes the connection: the next read sees EOF.
    let mut buf = [0u8; 1];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0))
    );
    (response, closed)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[tokio::test]
async fn wrong_version_is_rejected_naming_both() {
    let s = start().await;
    let req = Request {
        version: 7,
        command: Command::List,
    };
    let bytes = frame(&postcard::to_allocvec(&req).expect("encode"));
    let (resp, closed) = raw_exchange(&s.path, &bytes).await;
    match resp {
        Some(Response::Error(e)) => {
            assert!(e.contains("version 7"), "{e}");
            assert!(e.contains(&format!("version {PROTOCOL_VERSION}")), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(closed);
    // The server still serves.
    assert!(matches!(
        request(&s.path, Command::List).await,
        Ok(Response::Messages(_))
    ));
}

#[tokio::test]
async fn oversized_and_garbage_frames_do_not_kill_the_server() {
    let s = start().await;

    // A length over the limit: refused without reading (or allocating) the payload.
    let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
    let (resp, closed) = raw_exchange(&s.path, &huge).await;
    match resp {
        Some(Response::Error(e)) => assert!(e.contains("larger than the limit"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(closed);

    // Garbage inside a well-formed frame: right version, nonsense command.
    let mut garbage = postcard::to_allocvec(&PROTOCOL_VERSION).expect("encode");
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let (resp, closed) = raw_exchange(&s.path, &frame(&garbage)).await;
    assert!(matches!(resp, Some(Response::Error(e)) if e.contains("malformed")));
    assert!(closed);

    // An empty frame.
    let (resp, _) = raw_exchange(&s.path, &frame(&[])).await;
    assert!(matches!(resp, Some(Response::Error(_))));

    // A truncated frame followed by a hang-up.
    {
        let mut stream = UnixStream::connect(&s.path).await.expect("connect");
        stream.write_all(&[0, 0, 0, 10, 1, 2]).await.expect("write");
    }

    assert!(matches!(
        request(&s.path, Command::List).await,
        Ok(Response::Messages(envs)) if envs.len() == 2
    ));
}

#[tokio::test]
async fn client_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("control.sock");
    let err = request(&path, Command::List).await.expect_err("no server");
    let msg = err.to_string();
    assert!(msg.contains("is the relay running?"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    // Bad ids never leave the client.
    for bad in ["../../etc/passwd", "12345", "all"] {
        let err = request(&path, Command::Show(bad.into()))
            .await
            .expect_err("bad id");
        assert!(matches!(err, ControlError::BadId(_)), "{err}");
        assert!(err.to_string().contains("not a queue id"), "{err}");
    }
    let err = request(&path, Command::Delete("x".into()))
        .await
        .expect_err("bad id");
    assert!(matches!(err, ControlError::BadId(_)));
    // "all" is only for retry; with no server it gets as far as connecting.
    let err = request(&path, Command::Retry("ALL".into()))
        .await
        .expect_err("no server");
    assert!(matches!(err, ControlError::NotRunning { .. }));
}

#[test]
fn connect_errors_name_the_cause() {
    let p = Path::new("/run/qrelay/control.sock");
    let denied = connect_error(p, io::Error::from(io::ErrorKind::PermissionDenied));
    assert!(matches!(denied, ControlError::PermissionDenied { .. }));
    let text = denied.to_string();
    assert!(text.contains("permission denied") && text.contains("/run/qrelay/control.sock"));
    let refused = connect_error(p, io::Error::from(io::ErrorKind::ConnectionRefused));
    assert!(refused
        .to_string()
        .contains("is the relay running? socket /run/qrelay/control.sock"));
}

#[tokio::test]
async fn permission_denied_is_reported() {
    // Root bypasses file permissions; the check is only meaningful for other users.
    if nix::unistd::geteuid().is_root() {
        return;
    }
    let s = start().await;
    std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let err = request(&s.path, Command::List).await.expect_err("denied");
    assert!(
        matches!(err, ControlError::PermissionDenied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[test]
fn list_shows_the_queue() {
    let mut env = envelope(ID1);
    env.recipients[0]
        .last
        .as_mut()
        .expect("last")
        .reply
        .push_str("\x1b[2J");
    let text = format_list(&[env, envelope(ID2)], NOW);
    for want in [
        "QUEUE ID",
        ID1,
        ID2,
        "2025-02-13T08:00:00Z",
        "2h ago",
        "2.0 KiB",
        "alice@example.com",
        "pending",
        "delivered",
        "in 4m",
        "bob@example.org",
        "carol@example.net",
        "certificate does not match",
        "...",
        "250 2.0.0 Ok: queued",
        "2 messages, 4 recipients (2 pending)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains('\x1b'), "control characters are neutralized");
    assert!(text.lines().all(|l| l.chars().count() < 120), "{text}");
    assert_eq!(format_list(&[], NOW), "The queue is empty.\n");
}

#[test]
fn show_has_everything() {
    let text = format_show(&envelope(ID1), NOW);
    for want in [
        ID1,
        "alice@example.com",
        "ENV-1",
        "8BITMIME",
        "192.168.1.10",
        "exchange.lan",
        "bob@example.org",
        "rfc822;bob@example.org",
        "4.7.5",
        "Attempts:       3",
        "in 4m",
        "TLSv1.3",
        "TLS13_AES_256_GCM_SHA384",
        "X25519MLKEM768",
        "TLS profile:  bsi",
        "Peer key:     RSA 3072 bits",
        &"ab".repeat(32),
        &"cd".repeat(32),
        "not verified",
        "encrypted",
        "mx1.example.org / 192.0.2.25",
        "certificate does not match the MX host name",
        "carol@example.net",
        "plaintext",
        "TLS:          none",
        "default (failure, delay)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
#[ignore = "prints sample output for a person to read"]
fn print_sample() {
    println!("{}", format_list(&[envelope(ID1), envelope(ID2)], NOW));
    println!("{}", format_show(&envelope(ID1), NOW));
}

#[tokio::test]
async fn connections_are_served_concurrently_and_handler_panics_are_contained() {
    let s = start().await;
    // An idle client with half a frame sent holds its connection open...
    let mut idle = UnixStream::connect(&s.path).await.expect("connect");
    idle.write_all(&[0, 0]).await.expect("write");
    // ...while other clients are answered.
    let (a, b) = tokio::join!(
        request(&s.path, Command::List),
        request(&s.path, Command::Show(ID2.into()))
    );
    assert!(matches!(a, Ok(Response::Messages(_))));
    assert!(matches!(b, Ok(Response::Message(_))));

    match request(&s.path, Command::Show("deaddeaddeaddead".into())).await {
        Ok(Response::Error(e)) => assert!(e.contains("internal error"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        request(&s.path, Command::List).await,
        Ok(Response::Messages(_))
    ));
    drop(idle);
}

#[tokio::test]
async fn status_round_trip_counts_the_queue() {
    let server = start().await;
    let response = request(&server.path, Command::Status)
        .await
        .expect("status");
    let Response::Status(report) = response else {
        panic!("not a status: {response:?}");
    };
    let envs = server.handler.envs.lock().expect("lock").clone();
    let expected = count(&envs);
    assert_eq!(report.queue, expected);
    assert_eq!(report.queue.messages, 2);
    let recipients: usize = envs.iter().map(|e| e.recipients.len()).sum();
    assert_eq!(
        (report.queue.pending + report.queue.delivered + report.queue.failed) as usize,
        recipients
    );
    assert!(report.queue.pending >= 2 && report.queue.delivered >= 2);
    assert_eq!(report.version, env!("CARGO_PKG_VERSION"));
    // The test handler has no DNSSEC monitor: it says so rather than "available".
    assert_eq!(report.dnssec.state, DnssecState::NotReported);
    let _ = server.stop.send(true);
}

#[test]
fn status_format_names_the_dnssec_problem_and_the_upstreams() {
    let mut report = StatusReport {
        version: "1.2.3".into(),
        started_at: NOW - 3_900,
        now: NOW,
        queue: QueueCounts {
            messages: 3,
            pending: 4,
            delivered: 2,
            held: 0,
            failed: 1,
        },
        dnssec: DnssecReport {
            upstreams: "127.0.10.54:53".into(),
            state: DnssecState::Unavailable {
                reason: "the root DNSKEY RRset is bogus".into(),
                checked_at: NOW - 120,
            },
        },
        evidence_key: "ab12".into(),
    };
    let text = format_status(&report);
    assert!(text.contains("evidence log key: ab12"), "{text}");
    assert!(text.contains("qrelay 1.2.3"), "{text}");
    assert!(text.contains("up 1h 5m"), "{text}");
    assert!(
        text.contains("queue: 3 messages; recipients: 4 pending, 0 held, 2 delivered, 1 failed"),
        "{text}"
    );
    assert!(
        text.contains(
            "DNSSEC unavailable through upstream resolvers 127.0.10.54:53: the root DNSKEY RRset is bogus (last probe 2m ago)"
        ),
        "{text}"
    );
    report.dnssec = DnssecReport::from_health(
        "127.0.10.54:53".into(),
        &crate::dns::DnssecHealth::Available {
            checked_at: std::time::UNIX_EPOCH + Duration::from_secs(NOW - 5),
        },
    );
    let text = format_status(&report);
    assert!(
        text.contains(
            "DNSSEC: available through upstream resolvers 127.0.10.54:53 (last probe 5s ago)"
        ),
        "{text}"
    );
}
