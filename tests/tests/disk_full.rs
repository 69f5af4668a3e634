//! (h) Full disk: the spool on a 4 MiB tmpfs. Filling it yields 452 (no 250, no
//! crash); nothing acknowledged is lost; once space returns, new mail is accepted
//! and everything queued is delivered.
//!
//! Messages go to the MX without STARTTLS at level `encrypted`, so they stay
//! queued (and keep their space) until the relay is restarted at level `may`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qrelay_tests::{build_message, send_mail, token, Infra, Mx, Relay};

const MIN_FREE: u64 = 1024 * 1024;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("qrelay-diskfull-")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (needs root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn avail(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(self.path()).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(self.dir.path()).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn config(spool: &Path, level: &str) -> String {
    format!(
        "[spool]\ndir = \"{}\"\nmin_free_bytes = {MIN_FREE}\n[class.normal]\nlevel = \"{level}\"\n",
        spool.display()
    )
}

#[test]
fn full_spool_gives_452_and_loses_nothing() {
    let infra = Infra::get();
    let fs_ = Tmpfs::mount("4m");
    let spool: PathBuf = fs_.path().join("spool");
    fs::create_dir_all(&spool).unwrap();
    let mut relay = Relay::start(&config(&spool, "encrypted")).unwrap();
    let run = token("diskfull");
    let body = "y".repeat(76) + "\n";
    let body = body.repeat(200 * 1024 / 77); // ~200 KiB

    // Leave roughly 700 KiB above min_free_bytes, then send until refused.
    let filler = fs_.path().join("filler");
    let room = 700 * 1024;
    let avail = fs_.avail();
    let fill = avail.saturating_sub(MIN_FREE + room);
    fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    println!("tmpfs: {avail} bytes free before the filler, filler {fill} bytes");

    let mut accepted: Vec<String> = Vec::new();
    let mut saw_452 = false;
    for i in 0..40 {
        let tok = format!("{run}-{i:03}");
        let rcpt = format!("full-{i}@plain.example.test");
        let msg = build_message("sender@lan.test", &[&rcpt], &tok, &body);
        match send_mail(relay.listen, "sender@lan.test", &[&rcpt], &msg) {
            Ok(t) => {
                let codes = t.codes();
                println!("message {i}: {codes:?} (free {})", fs_.avail());
                if t.accepted() {
                    accepted.push(tok);
                } else {
                    assert!(
                        codes.iter().all(|c| *c < 500),
                        "a full disk must give a temporary error, got {t:?}"
                    );
                    if codes.contains(&452) {
                        saw_452 = true;
                        break;
                    }
                }
            }
            Err(e) => panic!(
                "message {i}: SMTP session failed: {e:#}\n{}",
                relay.log_tail(30)
            ),
        }
        assert!(relay.is_running(), "relay died while the disk filled up");
    }
    assert!(saw_452, "never got 452 although the spool filled up");
    assert!(relay.is_running(), "relay died on a full disk");
    println!("{} messages accepted before 452", accepted.len());

    // Space returns: new mail is accepted again.
    fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = 0;
    while after < 2 {
        let i = 100 + after;
        let tok = format!("{run}-{i:03}");
        let rcpt = format!("full-{i}@plain.example.test");
        let msg = build_message("sender@lan.test", &[&rcpt], &tok, "short one");
        let t = send_mail(relay.listen, "sender@lan.test", &[&rcpt], &msg).unwrap();
        if t.accepted() {
            accepted.push(tok);
            after += 1;
        } else {
            assert!(
                Instant::now() < deadline,
                "still refused after freeing space: {t:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Let it deliver: restart at level `may` on the same spool.
    relay.restart_with(&config(&spool, "may")).unwrap();
    let mailbox = infra.mailbox(Mx::Plain);
    let acc = accepted.clone();
    mailbox
        .wait_for_count(
            |m| m.header("X-Test-Token").is_some_and(|t| acc.contains(&t)),
            accepted.len(),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e:#}\nrelay log:\n{}", relay.log_tail(40)));
    for tok in &accepted {
        assert!(
            !mailbox.containing(tok).is_empty(),
            "acknowledged message {tok} was lost"
        );
    }
    drop(relay);
}
