//! The QEMU driver of the appliance tests: boots the test image built by
//! `image/build-test-image --test-hooks` and observes it from outside.
//!
//! - [`test_image`] builds the image once per test run (the builder caches its Debian
//!   base and skips the assembly when nothing changed; its own lock serialises test
//!   processes). `QRELAY_IMAGE_BIN` names the relay binary to put in (relative to the
//!   workspace; default: the builder's, `target/release/qrelay`).
//! - [`Vm::boot`] starts `qemu-system-x86_64` (q35, OVMF, i6300esb with
//!   `-action watchdog=reset`, virtio disk on a copy-on-write overlay of the image,
//!   user networking with the box's port 25 forwarded to a free host port), with the
//!   serial console written to a file, QMP on a Unix socket, and the test channel.
//! - KVM when it works, TCG otherwise: on some machines here KVM is a paravirtual
//!   variant on which OVMF stops with "KVM internal error". The first VM of a process
//!   tries KVM and watches for GRUB's first line; on an error, an early exit or
//!   silence it retries with TCG and remembers the choice ([`accel`]).
//!   `QRELAY_VM_ACCEL=kvm|tcg` forces one.
//! - The test channel (test image only): a root shell on the virtio serial port
//!   `org.qrelay.test` ([`Vm::sh`]). The product image has neither the port's unit nor
//!   any other way in: no SSH, no getty, root locked.
//! - [`HostPeers`]: what the box talks to on the host, reached at 10.0.2.2 (QEMU's
//!   user-net alias of the host's 127.0.0.1): a DNS server for `vm.test` on
//!   127.0.0.1:40053 (MX `mx.vm.test` = 10.0.2.2) and a receiving MX with STARTTLS on
//!   127.0.0.1:40025. The test image's relay config points there (fixed ports, so
//!   [`vm_lock`] serialises VM tests across test processes).
//! - [`require_vm`] decides whether the VM tests run: without QEMU or OVMF they are
//!   skipped with a message, unless `QRELAY_REQUIRE_VM` is set (the README's test
//!   command sets it), when the missing tool is an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader as TokioBufReader,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::infra::FileLock;
use crate::json::Json;

/// Host port of the DNS server for `vm.test` (the test image's `[dns] servers`).
pub const HOST_DNS_PORT: u16 = 40053;
/// Host port of the receiving MX (the test image's `[delivery] port`).
pub const HOST_MX_PORT: u16 = 40025;
/// The host's NTP port: the test image's timesyncd asks 10.0.2.2, which QEMU's user
/// network maps to the host's 127.0.0.1 (the NTP port cannot be moved in timesyncd).
pub const HOST_NTP_PORT: u16 = 123;
/// The recipient domain routed to the host's MX.
pub const VM_DOMAIN: &str = "vm.test";
/// Size of the VM's disk (the image is ~1 GB; the rest becomes data).
pub const DISK_SIZE: &str = "4G";
/// The line the health gate prints once the slot is marked good and the relay answers.
pub const READY_LINE: &str = "relay ready";
/// The health gate's line when it fails.
pub const FAILED_LINE: &str = "qrelay-health: FAILED";
/// GRUB's line at the start of every boot.
pub const BOOT_LINE: &str = "qrelay-boot: slot ";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// QEMU and the firmware the VM tests need.
#[derive(Debug, Clone)]
pub struct Tools {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn find_tools() -> Result<Tools, String> {
    let qemu = which("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 not found (Debian package qemu-system-x86)")?;
    let qemu_img = which("qemu-img").ok_or("qemu-img not found (Debian package qemu-utils)")?;
    let dir = Path::new("/usr/share/OVMF");
    let pair = [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ]
    .into_iter()
    .map(|(c, v)| (dir.join(c), dir.join(v)))
    .find(|(c, v)| c.is_file() && v.is_file())
    .ok_or("OVMF not found in /usr/share/OVMF (Debian package ovmf)")?;
    Ok(Tools {
        qemu,
        qemu_img,
        ovmf_code: pair.0,
        ovmf_vars: pair.1,
    })
}

/// Runs the tests of one appliance test binary one at a time, preparation
/// included: under TCG on two cores, a guest starved by a concurrent squashfs or
/// bundle build stalls (RCU stalls, missed timers) and a test times out.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tools, or `None` when the VM tests are to be skipped (a message says why).
/// With `QRELAY_REQUIRE_VM` set, a missing tool panics instead: in CI a missing
/// QEMU must fail loudly, not pass silently.
pub fn require_vm(test: &str) -> Option<Tools> {
    match find_tools() {
        Ok(t) => Some(t),
        Err(why) if std::env::var_os("QRELAY_REQUIRE_VM").is_some() => {
            panic!("{test}: QRELAY_REQUIRE_VM is set but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}; set QRELAY_REQUIRE_VM=1 to make this an error");
            None
        }
    }
}

/// The built test image.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub disk: PathBuf,
    pub rootfs: PathBuf,
    pub version: String,
    pub dir: PathBuf,
}

static IMAGE: OnceLock<std::result::Result<TestImage, String>> = OnceLock::new();

/// Build (or reuse) `target/image-test/` with `build-test-image --test-hooks`, once
/// per process. Needs root (mmdebstrap, chroot).
pub fn test_image() -> Result<TestImage> {
    IMAGE
        .get_or_init(|| build_test_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_test_image() -> Result<TestImage> {
    let top = workspace();
    let dir = top.join("target/image-test");
    let start = Instant::now();
    let mut cmd = Command::new(top.join("image/build-test-image"));
    // QRELAY_IMAGE_BIN (the binary to put into the image, e.g. the dev build the test
    // command already has): a relative path means one in the workspace, whatever
    // directory cargo runs this test in.
    if let Some(bin) = std::env::var_os("QRELAY_IMAGE_BIN").filter(|b| !b.is_empty()) {
        cmd.env("QRELAY_IMAGE_BIN", top.join(bin));
    }
    let out = cmd
        .arg("--test-hooks")
        .arg("--out")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .context("run image/build-test-image")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("image/build-test-image failed ({}):\n{stderr}", out.status);
    }
    eprintln!(
        "test image ready in {:.0?}:\n{}",
        start.elapsed(),
        stderr.trim_end()
    );
    Ok(TestImage {
        disk: dir.join("qrelay-x86_64.img"),
        rootfs: dir.join("rootfs.squashfs"),
        version: std::fs::read_to_string(dir.join("version"))?
            .trim()
            .to_string(),
        dir,
    })
}

/// Serialises the VM tests across test processes (the host peers' ports are fixed).
pub fn vm_lock() -> Result<FileLock> {
    FileLock::acquire(&workspace().join("target/image-test/vm.lock"))
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=multi",
        }
    }
}

static ACCEL: Mutex<Option<Accel>> = Mutex::new(None);

/// The accelerator chosen so far (None before the first VM of this process).
pub fn accel() -> Option<Accel> {
    *ACCEL.lock().expect("accel")
}

/// Options of one VM.
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// Boot this disk (a copy-on-write overlay is put on top; the file is not changed).
    /// Default: the test image.
    pub disk: Option<PathBuf>,
    /// Keep the overlay in this directory instead of a fresh temporary one, so a
    /// second VM can boot the same (changed) disk, e.g. after a power cut.
    pub state_dir: Option<PathBuf>,
    /// Host files handed to the guest read-only as extra virtio disks, the i-th with
    /// the serial `qfile{i}` (in the guest: [`attached_device`]`(i)`). Much faster
    /// than any network copy under TCG, e.g. for update bundles. A disk is a whole
    /// number of 512-byte sectors: the guest reads the file's exact length with
    /// `head -c` (see [`Vm::copy_attached`]).
    pub files: Vec<PathBuf>,
}

/// The guest's device of the `i`-th file of [`VmOptions::files`].
pub fn attached_device(i: usize) -> String {
    format!("/dev/disk/by-id/virtio-qfile{i}")
}

/// A running VM.
pub struct Vm {
    child: Option<Child>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    serial: PathBuf,
    qmp: Option<BufReader<UnixStream>>,
    test: Option<UnixStream>,
    test_buf: Vec<u8>,
    smtp_port: u16,
    pub accel: Accel,
    started: Instant,
    nonce: u64,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl Vm {
    /// Start a VM and connect QMP and the test channel. Returns once GRUB printed its
    /// slot line (so the firmware works with the chosen accelerator); wait for
    /// readiness with [`Vm::wait_ready`].
    pub fn boot(tools: &Tools, opts: VmOptions) -> Result<Vm> {
        let forced = match std::env::var("QRELAY_VM_ACCEL").as_deref() {
            Ok("kvm") => Some(Accel::Kvm),
            Ok("tcg") => Some(Accel::Tcg),
            _ => None,
        };
        let known = forced.or_else(accel);
        let first = known.unwrap_or(if kvm_usable() { Accel::Kvm } else { Accel::Tcg });
        match Vm::start(tools, &opts, first) {
            Ok(vm) => {
                *ACCEL.lock().expect("accel") = Some(first);
                Ok(vm)
            }
            Err(e) if first == Accel::Kvm && known.is_none() => {
                eprintln!("KVM did not boot the VM ({e:#}); falling back to TCG");
                let vm = Vm::start(tools, &opts, Accel::Tcg)?;
                *ACCEL.lock().expect("accel") = Some(Accel::Tcg);
                Ok(vm)
            }
            Err(e) => Err(e),
        }
    }

    fn start(tools: &Tools, opts: &VmOptions, accel: Accel) -> Result<Vm> {
        let (dir, tmp) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("qrelay-vm-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let disk = match &opts.disk {
            Some(d) => d.clone(),
            None => test_image()?.disk,
        };
        let overlay = dir.join("disk.qcow2");
        if !overlay.exists() {
            let st = Command::new(&tools.qemu_img)
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&disk)
                .arg(&overlay)
                // A disk larger than the image, like a real one: the first boot grows
                // the data partition to the end (the relay wants 200 MB free).
                .arg(DISK_SIZE)
                .status()?;
            if !st.success() {
                bail!("qemu-img create failed for {}", overlay.display());
            }
        }
        let vars = dir.join("OVMF_VARS.fd");
        if !vars.exists() {
            std::fs::copy(&tools.ovmf_vars, &vars)?;
        }
        let serial = dir.join("serial.log");
        let qmp_path = dir.join("qmp.sock");
        let test_path = dir.join("test.sock");
        for p in [&qmp_path, &test_path] {
            let _ = std::fs::remove_file(p);
        }
        // A fresh serial log per start, the previous one kept for the report.
        if serial.exists() {
            let _ = std::fs::rename(&serial, dir.join("serial.prev.log"));
        }
        let smtp_port = free_port()?;
        let stderr = std::fs::File::create(dir.join("qemu.stderr"))?;
        let mut cmd = Command::new(&tools.qemu);
        cmd.args(["-machine", "q35", "-cpu", "max", "-m", "1024", "-smp", "2"])
            .args(["-accel", accel.arg()])
            .args(["-display", "none", "-no-user-config", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                tools.ovmf_code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk0,format=qcow2,file={}",
                overlay.display()
            ))
            // The firmware boots the appliance disk, never an attached file.
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
            .args(["-device", "i6300esb", "-action", "watchdog=reset"])
            .arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{smtp_port}-:25"
            ))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=qtest,path={},server=on,wait=off",
                test_path.display()
            ))
            .args([
                "-device",
                "virtserialport,chardev=qtest,name=org.qrelay.test",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (i, file) in opts.files.iter().enumerate() {
            let path = file
                .canonicalize()
                .with_context(|| format!("file for the guest {}", file.display()))?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=none,id=qfile{i},format=raw,read-only=on,file={}",
                    path.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=qfile{i},serial=qfile{i}"));
        }
        let child = cmd.spawn().context("start qemu-system-x86_64")?;
        let mut vm = Vm {
            child: Some(child),
            dir,
            _tmp: tmp,
            serial,
            qmp: None,
            test: None,
            test_buf: Vec::new(),
            smtp_port,
            accel,
            started: Instant::now(),
            nonce: 0,
        };
        vm.connect_sockets(&qmp_path, &test_path)?;
        // The firmware and GRUB must get to the slot choice; with a broken KVM they
        // stop with "KVM internal error" or print nothing.
        let deadline = match accel {
            Accel::Kvm => Duration::from_secs(30),
            Accel::Tcg => Duration::from_secs(120),
        };
        let start = Instant::now();
        loop {
            if vm.serial_text().contains(BOOT_LINE) {
                break;
            }
            let stderr = std::fs::read_to_string(vm.dir.join("qemu.stderr")).unwrap_or_default();
            if stderr.contains("KVM internal error") {
                vm.kill();
                bail!(
                    "QEMU: {}",
                    stderr.lines().next().unwrap_or("KVM internal error")
                );
            }
            if let Some(st) = vm.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                vm.child = None;
                bail!("QEMU exited ({st}):\n{}", tail(&stderr, 20));
            }
            if start.elapsed() > deadline {
                let serial = vm.serial_text();
                vm.kill();
                bail!(
                    "no GRUB slot line on the serial console within {deadline:?} ({accel:?}); serial:\n{}\nstderr:\n{}",
                    tail(&serial, 20),
                    tail(&stderr, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(vm)
    }

    fn connect_sockets(&mut self, qmp_path: &Path, test_path: &Path) -> Result<()> {
        let start = Instant::now();
        let qmp = loop {
            match UnixStream::connect(qmp_path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(20) => {
                    let stderr =
                        std::fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default();
                    self.kill();
                    bail!(
                        "QMP socket {}: {e}; QEMU stderr:\n{stderr}",
                        qmp_path.display()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        qmp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut r = BufReader::new(qmp);
        let mut greeting = String::new();
        r.read_line(&mut greeting).context("QMP greeting")?;
        self.qmp = Some(r);
        self.qmp("qmp_capabilities", None)?;
        let test = UnixStream::connect(test_path).context("connect the test channel")?;
        self.test = Some(test);
        Ok(())
    }

    /// The directory with the overlay disk, serial log, sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// 127.0.0.1:PORT forwarded to the box's port 25.
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.smtp_port))
    }

    /// Everything the serial console printed since this QEMU started.
    pub fn serial_text(&self) -> String {
        let bytes = std::fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of boots so far (GRUB's slot line, printed once per boot).
    pub fn boots(&self) -> usize {
        boot_segments(&self.serial_text()).len() - 1
    }

    /// The serial output of boot number `boot` (1-based) so far, starting with the
    /// rest of GRUB's slot line (e.g. "A (try 1 of 3; ..."); empty before that boot.
    pub fn boot_output(&self, boot: usize) -> String {
        boot_segments(&self.serial_text())
            .get(boot)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Wait until the serial console has `needle` in the output of boot number
    /// `boot` (1-based, counted by GRUB's slot line); returns that line.
    pub fn wait_serial(&self, boot: usize, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = self.serial_text();
            let parts = boot_segments(&text);
            if let Some(part) = parts.get(boot) {
                if needle == READY_LINE {
                    if let Some(i) = part.find(FAILED_LINE) {
                        let end = part[i..].find('\n').map(|e| i + e).unwrap_or(part.len());
                        bail!(
                            "the health gate failed in boot {boot}: {}\nlast lines:\n{}",
                            part[i..end].trim(),
                            tail(&text, 40)
                        );
                    }
                }
                if let Some(i) = part.find(needle) {
                    let line_end = part[i..].find('\n').map(|e| i + e).unwrap_or(part.len());
                    let line_start = part[..i].rfind('\n').map(|s| s + 1).unwrap_or(0);
                    return Ok(part[line_start..line_end].trim().to_string());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {needle:?} in boot {boot} on the serial console ({:?}); last lines:\n{}",
                    self.accel,
                    tail(&text, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Wait until boot number `boot` passed the health gate and the relay answers
    /// with a 220 greeting through the host port. Returns the time since QEMU started.
    pub fn wait_ready(&self, boot: usize, timeout: Duration) -> Result<Duration> {
        self.wait_serial(boot, READY_LINE, timeout)?;
        let start = Instant::now();
        let greeting =
            crate::wait_until("SMTP greeting via hostfwd", Duration::from_secs(30), || {
                smtp_greeting(self.smtp_addr()).ok()
            })?;
        if start.elapsed() > Duration::from_secs(3) {
            eprintln!(
                "boot {boot}: SMTP greeting via hostfwd only after {:.1?}",
                start.elapsed()
            );
        }
        if !greeting.starts_with("220") {
            bail!("unexpected greeting {greeting:?}");
        }
        Ok(self.started.elapsed())
    }

    /// One QMP command; events before the answer are skipped.
    pub fn qmp(&mut self, command: &str, arguments: Option<&str>) -> Result<Json> {
        let r = self
            .qmp
            .as_mut()
            .ok_or_else(|| anyhow!("QMP not connected"))?;
        let msg = match arguments {
            Some(a) => format!("{{\"execute\":\"{command}\",\"arguments\":{a}}}\n"),
            None => format!("{{\"execute\":\"{command}\"}}\n"),
        };
        r.get_mut().write_all(msg.as_bytes())?;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                bail!("QMP closed during {command}");
            }
            let v = Json::parse(line.trim()).with_context(|| format!("QMP reply {line:?}"))?;
            if !matches!(v.get("event"), Json::Null) {
                continue;
            }
            if !matches!(v.get("error"), Json::Null) {
                bail!("QMP {command}: {line}");
            }
            return Ok(v.get("return").clone());
        }
    }

    /// QMP `query-status`: "running", "paused", ...
    pub fn status(&mut self) -> Result<String> {
        Ok(self
            .qmp("query-status", None)?
            .get("status")
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Run a shell command as root in the guest through the test channel (test
    /// image only). Returns exit status and combined output.
    pub fn sh(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        self.nonce += 1;
        let marker = format!("__QRELAY_DONE_{}_{}__", std::process::id(), self.nonce);
        let line = format!("{{ {command}\n}} </dev/null 2>&1; echo \"{marker} $?\"\n");
        let s = self
            .test
            .as_mut()
            .ok_or_else(|| anyhow!("test channel not connected"))?;
        s.write_all(line.as_bytes())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let start = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&self.test_buf).into_owned();
            if let Some(i) = text.find(&format!("{marker} ")) {
                let rest = &text[i + marker.len() + 1..];
                if let Some(nl) = rest.find('\n') {
                    let code: i32 = rest[..nl].trim().parse().unwrap_or(-1);
                    let output = text[..i].to_string();
                    let consumed = i + marker.len() + 1 + nl + 1;
                    self.test_buf = text.as_bytes()[consumed..].to_vec();
                    return Ok((code, output));
                }
            }
            if start.elapsed() > timeout {
                bail!("guest command {command:?} did not finish within {timeout:?}; output so far: {text:?}");
            }
            let mut buf = [0u8; 4096];
            let s = self.test.as_mut().expect("test channel");
            match s.read(&mut buf) {
                Ok(0) => bail!("test channel closed"),
                Ok(n) => self.test_buf.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Copy the `i`-th of [`VmOptions::files`] (`host` is that file) to `guest_path`
    /// in the guest, exactly its length, and check its SHA-256 there.
    pub fn copy_attached(&mut self, i: usize, host: &Path, guest_path: &str) -> Result<()> {
        let len = std::fs::metadata(host)?.len();
        let want = sha256_hex(host)?;
        let dev = attached_device(i);
        let (code, out) = self.sh(
            &format!("udevadm settle; head -c {len} {dev} >{guest_path} && sha256sum {guest_path}"),
            Duration::from_secs(300),
        )?;
        if code != 0 {
            bail!("copying {dev} to {guest_path} in the guest: {out}");
        }
        if !out.contains(&want) {
            bail!(
                "{} arrived damaged in the guest ({guest_path}): {out}",
                host.display()
            );
        }
        Ok(())
    }

    /// [`Vm::sh`] that must succeed; returns the output.
    pub fn sh_ok(&mut self, command: &str) -> Result<String> {
        let (code, out) = self.sh(command, Duration::from_secs(60))?;
        if code != 0 {
            bail!("guest command {command:?} exited {code}: {out}");
        }
        Ok(out)
    }

    /// Reboot from inside (`systemctl reboot`) and wait for the next boot's GRUB
    /// line; returns that boot's number.
    pub fn reboot(&mut self, timeout: Duration) -> Result<usize> {
        let next = self.boots() + 1;
        let _ = self.sh("systemctl --no-block reboot", Duration::from_secs(30));
        self.reset_channel();
        self.wait_serial(next, "", timeout)?;
        Ok(next)
    }

    /// Forget what the test channel received so far (after a reset the old shell
    /// is gone; its unfinished output is useless).
    pub fn reset_channel(&mut self) {
        self.test_buf.clear();
    }

    /// Power off at once (QMP `quit`: no shutdown in the guest, like a power cut).
    pub fn quit(&mut self) -> Result<()> {
        let _ = self.qmp("quit", None);
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait()?.is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` lines of the serial console (for failure messages).
    pub fn serial_tail(&self, n: usize) -> String {
        tail(&self.serial_text(), n)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        // Keep the serial log of a failed test where a person can find it.
        if std::thread::panicking() {
            let keep = workspace().join("target/image-test/failed-serial.log");
            let _ = std::fs::copy(&self.serial, &keep);
            eprintln!("serial console of the failed VM: {}", keep.display());
        }
    }
}

/// The serial output split at GRUB's slot line: element 0 is before the first boot,
/// element N the output of boot N. Only the slot choice ("qrelay-boot: slot A (try
/// 1 of 3; ...") starts a boot; GRUB's other lines with the same prefix ("slot A used
/// up its tries, skipped") stay inside the output they belong to. GRUB writes to the
/// serial port and to the EFI console, which OVMF also sends to the serial port, so
/// the slot line comes twice in a row; the first copy (no line end before the second)
/// is dropped.
fn boot_segments(text: &str) -> Vec<&str> {
    let starts: Vec<usize> = text
        .match_indices(BOOT_LINE)
        .map(|(i, _)| i)
        .filter(|&i| is_slot_choice(&text[i + BOOT_LINE.len()..]))
        .collect();
    let mut parts = Vec::with_capacity(starts.len() + 1);
    parts.push(&text[..starts.first().copied().unwrap_or(text.len())]);
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let part = &text[start + BOOT_LINE.len()..end];
        if part.contains('\n') {
            parts.push(part);
        }
    }
    parts
}

/// "A (try " / "B (try ": the rest of GRUB's slot-choice line.
fn is_slot_choice(rest: &str) -> bool {
    let b = rest.as_bytes();
    b.len() > 7 && b[0].is_ascii_alphanumeric() && rest[1..].starts_with(" (try ")
}

fn sha256_hex(file: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("run sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", file.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(64)
        .collect())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Read the first line the server sends on `addr`.
pub fn smtp_greeting(addr: SocketAddr) -> Result<String> {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        bail!("connection closed without a greeting");
    }
    let _ = r.get_mut().write_all(b"QUIT\r\n");
    Ok(line.trim_end().to_string())
}

/// A message the host MX accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
    /// Whether STARTTLS was on for the transaction.
    pub tls: bool,
}

/// The box's peers on the host: DNS for `vm.test`, its MX with STARTTLS, and an
/// SNTP server for the box's clock. A VM booted without them has no time source.
pub struct HostPeers {
    received: Arc<Mutex<Vec<Received>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl HostPeers {
    /// Bind 127.0.0.1:[`HOST_DNS_PORT`], 127.0.0.1:[`HOST_MX_PORT`] (TCP) and
    /// 127.0.0.1:[`HOST_NTP_PORT`] (UDP); hold [`vm_lock`] while they run.
    pub fn start() -> Result<HostPeers> {
        let dir = tempfile::Builder::new().prefix("qrelay-vm-mx-").tempdir()?;
        let tls = Arc::new(mx_tls_config(dir.path())?);
        let dns = std::net::TcpListener::bind(("127.0.0.1", HOST_DNS_PORT))
            .with_context(|| format!("bind 127.0.0.1:{HOST_DNS_PORT} (DNS for the VM)"))?;
        let mx = std::net::TcpListener::bind(("127.0.0.1", HOST_MX_PORT))
            .with_context(|| format!("bind 127.0.0.1:{HOST_MX_PORT} (MX for the VM)"))?;
        let ntp = std::net::UdpSocket::bind(("127.0.0.1", HOST_NTP_PORT)).with_context(|| {
            format!("bind UDP 127.0.0.1:{HOST_NTP_PORT} (NTP for the VM; is an NTP server running on this host?)")
        })?;
        dns.set_nonblocking(true)?;
        mx.set_nonblocking(true)?;
        ntp.set_nonblocking(true)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let received = received.clone();
            std::thread::Builder::new()
                .name("vm-host-peers".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("host peers runtime");
                    rt.block_on(async move {
                        let dns = tokio::net::TcpListener::from_std(dns).expect("dns listener");
                        let mx = tokio::net::TcpListener::from_std(mx).expect("mx listener");
                        let dns_task = tokio::spawn(async move {
                            while let Ok((s, _)) = dns.accept().await {
                                tokio::spawn(serve_dns(s));
                            }
                        });
                        let mx_task = tokio::spawn(async move {
                            while let Ok((s, _)) = mx.accept().await {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                                let received = received.clone();
                                tokio::spawn(async move {
                                    if let Err(e) = serve_smtp(s, acceptor, received).await {
                                        eprintln!("host MX: session ended: {e:#}");
                                    }
                                });
                            }
                        });
                        let ntp = tokio::net::UdpSocket::from_std(ntp).expect("ntp socket");
                        let ntp_task = tokio::spawn(serve_sntp(ntp));
                        let _ = rx.await;
                        dns_task.abort();
                        mx_task.abort();
                        ntp_task.abort();
                    });
                })?
        };
        Ok(HostPeers {
            received,
            shutdown: Some(tx),
            thread: Some(thread),
            _dir: dir,
        })
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received").clone()
    }

    /// Wait for a message whose content contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Received> {
        crate::wait_until(
            &format!("a message with {needle:?} at the host MX"),
            timeout,
            || {
                self.received()
                    .into_iter()
                    .find(|m| m.data.contains(needle))
            },
        )
    }
}

impl Drop for HostPeers {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A minimal SNTP server (RFC 4330): answers every client request with the host's
/// clock, stratum 2, so that the box's systemd-timesyncd synchronises.
async fn serve_sntp(sock: tokio::net::UdpSocket) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        if let Some(reply) = sntp_reply(&buf[..n], std::time::SystemTime::now()) {
            let _ = sock.send_to(&reply, from).await;
        }
    }
}

/// The server's answer to a client (mode 3) request, or `None` for anything else.
pub fn sntp_reply(request: &[u8], now: std::time::SystemTime) -> Option<[u8; 48]> {
    if request.len() < 48 || request[0] & 0x07 != 3 {
        return None;
    }
    let version = (request[0] >> 3) & 0x07;
    let since_1970 = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    // NTP time: seconds since 1900 and a 32-bit binary fraction.
    let secs = (since_1970.as_secs() + 2_208_988_800) as u32;
    let frac = ((u64::from(since_1970.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let mut ts = [0u8; 8];
    ts[..4].copy_from_slice(&secs.to_be_bytes());
    ts[4..].copy_from_slice(&frac.to_be_bytes());
    let mut r = [0u8; 48];
    r[0] = (version.clamp(3, 4) << 3) | 4; // leap 0 (synchronised), mode 4 (server)
    r[1] = 2; // stratum
    r[2] = request[2]; // poll
    r[3] = (-20i8) as u8; // precision: ~1 microsecond
    r[8..12].copy_from_slice(&0x0000_0010u32.to_be_bytes()); // root dispersion ~0.25 ms
    r[12..16].copy_from_slice(&[127, 0, 0, 1]); // reference id
    r[16..24].copy_from_slice(&ts); // reference time
    r[24..32].copy_from_slice(&request[40..48]); // originate = the client's transmit
    r[32..40].copy_from_slice(&ts); // receive
    r[40..48].copy_from_slice(&ts); // transmit
    Some(r)
}

/// A self-signed P-256 certificate for `mx.vm.test` (level `encrypted` does not
/// authenticate the MX; the test checks that TLS was used).
fn mx_tls_config(dir: &Path) -> Result<rustls::ServerConfig> {
    let key = dir.join("mx.key");
    let cert = dir.join("mx.pem");
    crate::openssl_self_signed("mx.vm.test", &cert, &key)?;
    let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

/// Answer one TCP DNS connection (length-prefixed messages, RFC 1035 4.2.2).
async fn serve_dns(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if s.read_exact(&mut q).await.is_err() {
            return;
        }
        let Some(reply) = dns_answer(&q) else { return };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

const RR_A: u16 = 1;
const RR_MX: u16 = 15;

/// The zone: `vm.test. MX 10 mx.vm.test.`, `mx.vm.test. A 10.0.2.2`; other names
/// in vm.test are NXDOMAIN, names outside it REFUSED (so the relay's DNSSEC probe
/// finds DNSSEC unavailable and looks up unvalidated, as with a home router).
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question name.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = *q.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + l)?).to_ascii_lowercase());
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    q.get(..question_end)?;
    let name = labels.join(".");
    let rd = q[2] & 0x01;
    let (rcode, answer): (u8, Option<Vec<u8>>) = if name == VM_DOMAIN {
        (
            0,
            (qtype == RR_MX).then(|| {
                let mut rdata = 10u16.to_be_bytes().to_vec();
                for l in ["mx", "vm", "test"] {
                    rdata.push(l.len() as u8);
                    rdata.extend_from_slice(l.as_bytes());
                }
                rdata.push(0);
                rr(RR_MX, &rdata)
            }),
        )
    } else if name == format!("mx.{VM_DOMAIN}") {
        (0, (qtype == RR_A).then(|| rr(RR_A, &[10, 0, 2, 2])))
    } else if name.ends_with(&format!(".{VM_DOMAIN}")) {
        (3, None)
    } else {
        (5, None)
    };
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | rd); // QR, AA
    r.push(rcode);
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answer.is_some() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..question_end]);
    if let Some(a) = answer {
        r.extend_from_slice(&a);
    }
    Some(r)
}

fn rr(rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = vec![0xc0, 0x0c];
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&60u32.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// `<path>` out of " FROM:<path> PARAMS" / " TO:<path>".
fn path_arg(rest: &str) -> String {
    let rest = rest.trim_start();
    let rest = rest
        .split_once(':')
        .map(|(_, r)| r)
        .unwrap_or(rest)
        .trim_start();
    rest.split_whitespace().next().unwrap_or("").to_string()
}

/// One SMTP session of the host MX: plaintext until STARTTLS, then TLS.
async fn serve_smtp(
    s: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<()> {
    let mut s = TokioBufReader::new(s);
    s.get_mut()
        .write_all(b"220 mx.vm.test ESMTP qrelay test MX\r\n")
        .await?;
    if smtp_phase(&mut s, false, &received).await? {
        let tls = acceptor.accept(s.into_inner()).await?;
        let mut t = TokioBufReader::new(tls);
        smtp_phase(&mut t, true, &received).await?;
    }
    Ok(())
}

/// Returns true when the client asked for STARTTLS (and got the 220).
async fn smtp_phase<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut TokioBufReader<S>,
    tls: bool,
    received: &Arc<Mutex<Vec<Received>>>,
) -> Result<bool> {
    let mut mail_from = String::new();
    let mut rcpts = Vec::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await? == 0 {
            return Ok(false);
        }
        let cmd = line.trim_end().to_string();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" if tls => "250-mx.vm.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n".into(),
            "EHLO" => {
                "250-mx.vm.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
                    .into()
            }
            "HELO" => "250 mx.vm.test\r\n".into(),
            "STARTTLS" if !tls => {
                s.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
                return Ok(true);
            }
            "MAIL" => {
                mail_from = path_arg(&cmd[4..]);
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                rcpts.push(path_arg(&cmd[4..]));
                "250 2.1.5 Ok\r\n".into()
            }
            "DATA" => {
                s.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if s.read_line(&mut l).await? == 0 {
                        return Ok(false);
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                received.lock().expect("received").push(Received {
                    mail_from: mail_from.clone(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data,
                    tls,
                });
                "250 2.0.0 Ok: queued\r\n".into()
            }
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                s.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(false);
            }
            _ => "502 5.5.2 Command not recognized\r\n".into(),
        };
        s.get_mut().write_all(reply.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_segments_count_slot_choices_only() {
        let text = "firmware\n\
            qrelay-boot: slot A (try 3 of 3; ORDER=A B)qrelay-boot: slot A (try 3 of 3; ORDER=A B)\n\
            qrelay-health: FAILED on slot A\n\
            qrelay-boot: slot A used up its tries (TRY=3), skippedqrelay-boot: slot A used up its tries (TRY=3), skipped\n\
            qrelay-boot: slot B (try 1 of 3; ORDER=A B)qrelay-boot: slot B (try 1 of 3; ORDER=A B)\n\
            relay ready\n";
        let parts = boot_segments(text);
        assert_eq!(parts.len(), 3, "{parts:#?}");
        assert_eq!(parts[0], "firmware\n");
        assert!(parts[1].starts_with("A (try 3 of 3"));
        assert!(parts[1].contains("used up its tries"));
        assert!(parts[2].starts_with("B (try 1 of 3"));
        assert!(parts[2].contains("relay ready"));
    }

    #[test]
    fn sntp_reply_echoes_the_client_timestamp_and_gives_the_time() {
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3; // version 4, client
        req[2] = 6;
        req[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let now = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let r = sntp_reply(&req, now).expect("a reply");
        assert_eq!(r[0], (4 << 3) | 4, "leap 0, version 4, server");
        assert_eq!(r[1], 2);
        assert_eq!(r[2], 6);
        assert_eq!(&r[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let secs = u32::from_be_bytes(r[40..44].try_into().unwrap());
        assert_eq!(u64::from(secs), 1_700_000_000 + 2_208_988_800);
        let frac = u32::from_be_bytes(r[44..48].try_into().unwrap());
        assert_eq!(frac, 1 << 31, "half a second");
        // Not a client request: no answer.
        req[0] = (4 << 3) | 4;
        assert!(sntp_reply(&req, now).is_none());
        assert!(sntp_reply(&req[..40], now).is_none());
    }
}
