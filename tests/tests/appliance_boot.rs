//! The appliance image in QEMU (issue 5, tests 1-3): boot to "relay ready" and relay
//! over STARTTLS, the service watchdog, the hardware watchdog.
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
    vm.quit().unwrap();
}

#[test]
fn i5_service_watchdog_restarts_a_frozen_relay() {
    let _serial = qrelay_tests::vm::serial();
    let Some((tools, _lock)) = setup("i5_service_watchdog_restarts_a_frozen_relay") else {
        return;
    };
    let mut vm = Vm::boot(&tools, VmOptions::default()).expect("boot");
    vm.wait_ready(1, boot_timeout()).expect("relay ready");
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
    vm.quit().unwrap();
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
