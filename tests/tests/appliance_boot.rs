//! The appliance image in QEMU (issue 5, tests 1-3): boot to "relay ready" and relay
//! over STARTTLS, the console banner, the service watchdog, the factory reset, the
//! hardware watchdog.
//!
//! The image is `image/build-test-image --test-hooks` (built once per run, cached);
//! see `qrelay_tests::vm` for the driver. Skipped without QEMU/OVMF unless
//! `QRELAY_REQUIRE_VM` is set. The VMs run one at a time ([`vm::vm_lock`]): the
//! host peers' ports are fixed and the machine has two cores.

use std::time::{Duration, Instant};

use qrelay_tests::vm::{self, HostPeers, Tools, Vm, VmOptions};
use qrelay_tests::{build_message, send_mail, token, wait_until};

/// Power-on to health gate: ~1 min with KVM, a few minutes with TCG on a busy machine.
fn boot_timeout() -> Duration {
    match vm::accel() {
        Some(vm::Accel::Kvm) => Duration::from_secs(180),
        _ => Duration::from_secs(600),
    }
}

fn setup(test: &str) -> Option<(Tools, qrelay_tests::infra::FileLock)> {
    let tools = vm::require_vm(test)?;
    // Build before taking the VM lock: the builder has its own lock.
    vm::test_image().expect("build the test image");
    let lock = vm::vm_lock().expect("VM lock");
    Some((tools, lock))
}

fn main_pid(vm: &mut Vm) -> u32 {
    let out = vm
        .sh_ok("systemctl show -p MainPID --value qrelay-relay.service")
        .expect("MainPID");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("MainPID {out:?}"))
}

#[test]
fn i5_boot_to_relay_ready_and_relay_over_starttls() {
    let _serial = qrelay_tests::vm::serial();
    let Some((tools, _lock)) = setup("i5_boot_to_relay_ready_and_relay_over_starttls") else {
        return;
    };
    let peers = HostPeers::start().expect("host DNS and MX");
    let mut vm = Vm::boot(&tools, VmOptions::default()).expect("boot");
    let ready = vm.wait_ready(1, boot_timeout()).expect("relay ready");
    eprintln!("power-on to SMTP ready: {ready:.1?} ({:?})", vm.accel);

    // The first boot made the data partition, the spool and the inbound certificate,
    // and the health gate marked slot A good (A_TRY back to 0).
    let env = vm
        .sh_ok("grub-editenv /boot/efi/EFI/BOOT/grubenv list")
        .unwrap();
    assert!(
        env.contains("A_OK=1") && env.contains("A_TRY=0"),
        "grubenv after mark-good:\n{env}"
    );
    let spool = vm
        .sh_ok("stat -c '%U %a' /data/qrelay; ls /data/qrelay/tls; findmnt -no FSTYPE,OPTIONS /")
        .unwrap();
    assert!(spool.starts_with("qrelay 750"), "spool: {spool}");
    assert!(
        spool.contains("squashfs") && spool.contains("ro"),
        "root: {spool}"
    );

    let tok = token("vm-relay");
    let to = format!("someone@{}", vm::VM_DOMAIN);
    let msg = build_message(
        "sender@lan.example",
        &[&to],
        &tok,
        "Hello through the appliance.",
    );
    let t = send_mail(vm.smtp_addr(), "sender@lan.example", &[&to], &msg).expect("submit");
    assert!(t.accepted(), "not accepted: {:?}", t.codes());

    let got = peers
        .wait_for(&tok, Duration::from_secs(180))
        .unwrap_or_else(|e| {
            let log = vm.sh(
                "journalctl -u qrelay-relay --no-pager | tail -n 30",
                Duration::from_secs(30),
            );
            panic!("{e:#}\nrelay journal: {log:?}")
        });
    assert!(got.tls, "the box delivered without STARTTLS");
    assert_eq!(got.rcpt_to, vec![format!("<{to}>")]);

    // No login on the console: it shows the box's address (QEMU's DHCP gives
    // 10.0.2.15) and the fingerprint of the certificate on port 25, which must be
    // the very certificate STARTTLS presents.
    let shown = console_fingerprint(&vm, 1);
    assert_eq!(
        shown,
        starttls_fingerprint(vm.smtp_addr()),
        "the console shows another certificate than port 25 presents"
    );
    let banner = vm
        .wait_serial(1, "| address: ", Duration::from_secs(60))
        .unwrap();
    assert!(banner.contains("address: 10.0.2.15"), "banner: {banner}");
    // systemd-timesyncd set the clock from the host's SNTP server (HostPeers), and
    // the console says so.
    vm.wait_serial(1, "clock: synchronised", Duration::from_secs(120))
        .expect("the clock synchronised");
    vm.quit().unwrap();
}

/// The SMTP certificate fingerprint the console banner printed last in boot `boot`.
fn console_fingerprint(vm: &Vm, boot: usize) -> String {
    wait_until(
        "the SMTP certificate fingerprint on the console",
        Duration::from_secs(60),
        || {
            vm.boot_output(boot)
                .lines()
                .rev()
                .filter_map(|l| l.split("SMTP certificate SHA-256: ").nth(1))
                .map(|fp| fp.trim().to_string())
                .find(|fp| fp.len() == 95)
        },
    )
    .unwrap()
}

/// SHA-256 of the certificate a STARTTLS handshake on `addr` shows (openssl, as an
/// admin would check it).
fn starttls_fingerprint(addr: std::net::SocketAddr) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -starttls smtp </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fp = text.trim().rsplit('=').next().unwrap_or("").to_string();
    assert_eq!(fp.len(), 95, "openssl: {text:?} {out:?}");
    fp
}

#[test]
fn i5_service_watchdog_restarts_a_frozen_relay() {
    let _serial = qrelay_tests::vm::serial();
    let Some((tools, _lock)) = setup("i5_service_watchdog_restarts_a_frozen_relay") else {
        return;
    };
    let mut vm = Vm::boot(&tools, VmOptions::default()).expect("boot");
    vm.wait_ready(1, boot_timeout()).expect("relay ready");
    // No host peers in this test, so no time source: the relay holds back what
    // needs certificate checks (done before the frozen-relay part, which restarts it).
    unsynchronised_clock_defers_certificate_checked_mail(&mut vm);
    let before = main_pid(&mut vm);
    vm.sh_ok(&format!("kill -STOP {before}")).unwrap();
    let frozen = Instant::now();

    // WatchdogSec=10s: systemd kills the frozen relay and starts a new one.
    let after = wait_until("a new relay process", Duration::from_secs(90), || {
        let pid = main_pid(&mut vm);
        let active = vm
            .sh(
                "systemctl is-active qrelay-relay.service",
                Duration::from_secs(30),
            )
            .ok()?;
        (pid != 0 && pid != before && active.1.trim() == "active").then_some(pid)
    })
    .unwrap();
    eprintln!(
        "relay restarted after {:.1?}: pid {before} -> {after}",
        frozen.elapsed()
    );
    let journal = vm
        .sh_ok("journalctl -u qrelay-relay --no-pager | grep -i watchdog || true")
        .unwrap();
    assert!(
        journal.to_lowercase().contains("watchdog"),
        "no watchdog timeout in the journal:\n{journal}"
    );
    let greeting = wait_until(
        "SMTP greeting after the restart",
        Duration::from_secs(60),
        || vm::smtp_greeting(vm.smtp_addr()).ok(),
    )
    .unwrap();
    assert!(greeting.starts_with("220"), "{greeting}");

    // Factory reset (on the same VM, saving a boot): `qrelay system factory-reset`
    // arms the one-shot GRUB flag; the next boot wipes data and starts afresh.
    factory_reset_wipes_data_on_the_next_boot(&mut vm);
    vm.quit().unwrap();
}

/// The box's `[system] require_time_sync`: without a synchronised clock a message of
/// class `high` (level verified) is deferred with the reason, and the console warns.
fn unsynchronised_clock_defers_certificate_checked_mail(vm: &mut Vm) {
    let banner = vm
        .wait_serial(1, "clock: NOT synchronised", Duration::from_secs(60))
        .expect("the console warns about the clock");
    assert!(banner.contains("certificates wait"), "{banner}");
    let tok = token("vm-clock");
    let to = format!("someone@{}", vm::VM_DOMAIN);
    let msg = build_message(
        "sender@lan.example",
        &[&to],
        &tok,
        "Needs a verified server.",
    )
    .replacen("Subject: ", "Subject: [vertraulich] ", 1);
    assert!(msg.contains("[vertraulich]"), "{msg}");
    let t = send_mail(vm.smtp_addr(), "sender@lan.example", &[&to], &msg).expect("submit");
    assert!(t.accepted(), "not accepted: {:?}", t.codes());
    let id = t.queue_id().expect("queue id in the 250 reply");
    let show = wait_until("the deferral", Duration::from_secs(60), || {
        let out = vm
            .sh_ok(&format!(
                "qrelay --config /etc/qrelay/qrelay.toml queue show {id}"
            ))
            .ok()?;
        out.contains("not synchronised").then_some(out)
    })
    .unwrap();
    assert!(show.contains("Class:        high"), "{show}");
    assert!(show.contains("Status:         4.4.0"), "{show}");
}

fn factory_reset_wipes_data_on_the_next_boot(vm: &mut Vm) {
    const QRELAY: &str = "qrelay --config /etc/qrelay/qrelay.toml";
    let before_fp = vm
        .sh_ok(&format!("{QRELAY} tls show --fingerprint"))
        .unwrap();
    let before_id = vm.sh_ok("cat /data/machine-id").unwrap();
    vm.sh_ok("echo customer data >/data/qrelay/marker && sync")
        .unwrap();
    let armed = vm
        .sh_ok(&format!("{QRELAY} system factory-reset --yes"))
        .unwrap();
    assert!(armed.contains("factory reset armed"), "{armed}");

    let boot = vm.reboot(boot_timeout()).expect("reboot");
    vm.wait_ready(boot, boot_timeout())
        .expect("ready after the factory reset");
    let wiped = vm
        .wait_serial(boot, "FACTORY RESET", Duration::from_secs(5))
        .expect("the wipe on the console");
    assert!(wiped.contains("wiping the data partition"), "{wiped}");
    let state = vm
        .sh_ok(
            "cat /proc/cmdline; grub-editenv /boot/efi/EFI/BOOT/grubenv list; \
             ls /data/qrelay/marker 2>&1; cat /data/machine-id",
        )
        .unwrap();
    assert!(state.contains("qrelay.factory_reset=1"), "{state}");
    assert!(
        state.contains("QRELAY_FACTORY_RESET=0"),
        "the flag is one-shot: {state}"
    );
    assert!(
        state.contains("A_OK=1") && state.contains("A_TRY=0"),
        "{state}"
    );
    assert!(
        state.contains("No such file"),
        "data survived the reset: {state}"
    );
    assert!(
        !state.contains(before_id.trim()),
        "the machine-id survived the reset: {state}"
    );
    let after_fp = vm
        .sh_ok(&format!("{QRELAY} tls show --fingerprint"))
        .unwrap();
    assert_ne!(
        after_fp.trim(),
        before_fp.trim(),
        "the certificate survived the reset"
    );
    assert_eq!(console_fingerprint(vm, boot), after_fp.trim());
}

#[test]
fn i5_hardware_watchdog_resets_a_hung_kernel() {
    let _serial = qrelay_tests::vm::serial();
    let Some((tools, _lock)) = setup("i5_hardware_watchdog_resets_a_hung_kernel") else {
        return;
    };
    let mut vm = Vm::boot(&tools, VmOptions::default()).expect("boot");
    vm.wait_ready(1, boot_timeout()).expect("relay ready");
    let wd = vm
        .sh_ok("cat /sys/class/watchdog/watchdog0/identity /sys/class/watchdog/watchdog0/timeout")
        .unwrap();
    assert!(wd.contains("i6300ESB"), "watchdog device: {wd}");

    // Crash the kernel: panic=0 on the command line, so it hangs instead of
    // rebooting; only the i6300esb (RuntimeWatchdogSec=30s) can bring it back.
    let _ = vm.sh("echo c > /proc/sysrq-trigger", Duration::from_secs(5));
    let crashed = Instant::now();
    vm.reset_channel();
    vm.wait_serial(1, "Kernel panic", Duration::from_secs(60))
        .expect("kernel panic on the console");
    wait_until(
        "the watchdog reset (a second boot)",
        Duration::from_secs(180),
        || (vm.boots() >= 2).then_some(()),
    )
    .unwrap();
    eprintln!("watchdog reset {:.1?} after the crash", crashed.elapsed());
    assert_eq!(vm.status().unwrap(), "running");
    vm.wait_ready(2, boot_timeout())
        .expect("relay ready after the reset");
    vm.quit().unwrap();
}
