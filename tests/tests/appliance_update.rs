//! Issue 5: signed RAUC updates of the appliance.
//!
//! The host-side tests build real verity bundles with `image/make-bundle` and check
//! them with the `rauc` command line under the box's signature rules
//! (`image/rauc/host.conf`: code-signing certificates only, verity bundles only).
//! They need only Debian's `rauc`, `squashfs-tools` and `openssl`, no VM.
//!
//! What the host cannot show (a wrong `compatible` and a downgrade are decided by the
//! box's `system.conf` and pre-install handler at install time) is tested in QEMU
//! below, on the image from `image/build-test-image`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's top directory (the tests crate lives in `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (apt-get install rauc squashfs-tools openssl)")
    })
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

/// A tiny slot image: a squashfs with the version file the pre-install handler reads.
fn slot_image(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("rootfs-{version}"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("etc/qrelay-version"), format!("{version}\n")).unwrap();
    // Incompressible data for many verity blocks, so a flipped payload byte lands in
    // a data block and not only in the hash tree.
    let mut filler = vec![0u8; 256 * 1024];
    rand::Rng::fill(&mut rand::rng(), &mut filler[..]);
    std::fs::write(root.join("boot/filler"), filler).unwrap();
    let image = dir.join(format!("rootfs-{version}.squashfs"));
    run_ok(Command::new("mksquashfs").arg(&root).arg(&image).args([
        "-noappend",
        "-no-xattrs",
        "-quiet",
        "-comp",
        "gzip",
    ]));
    image
}

/// `image/make-bundle` with the dev keys unless `extra` names other ones.
fn make_bundle(slot: &Path, version: &str, output: &Path, extra: &[&str]) -> Output {
    run(Command::new(repo().join("image/make-bundle"))
        .arg("--rootfs")
        .arg(slot)
        .args(["--version", version])
        .arg("--output")
        .arg(output)
        .args(extra))
}

fn good_bundle(dir: &Path, version: &str) -> PathBuf {
    let slot = slot_image(dir, version);
    let bundle = dir.join(format!("qrelay-{version}.raucb"));
    let out = make_bundle(&slot, version, &bundle, &[]);
    assert!(out.status.success(), "make-bundle failed:\n{}", text(&out));
    bundle
}

/// `rauc info` under the box's rules, trusting only the dev keyring (the keyring of
/// the test image).
fn rauc_info(bundle: &Path) -> Output {
    let repo = repo();
    run(Command::new("rauc")
        .arg("-c")
        .arg(repo.join("image/rauc/host.conf"))
        .arg("--keyring")
        .arg(repo.join("image/keys/dev-keyring.pem"))
        .args(["info", "--output-format=shell"])
        .arg(bundle))
}

/// `rauc extract` reads the whole payload; for a verity bundle it checks every block
/// against the signed root hash, as dm-verity does on the box during `rauc install`.
fn rauc_extract(bundle: &Path, into: &Path) -> Output {
    let repo = repo();
    run(Command::new("rauc")
        .arg("-c")
        .arg(repo.join("image/rauc/host.conf"))
        .arg("--keyring")
        .arg(repo.join("image/keys/dev-keyring.pem"))
        .arg("extract")
        .arg(bundle)
        .arg(into))
}

fn flip_byte(file: &Path, offset: u64) {
    let mut data = std::fs::read(file).unwrap();
    let i = usize::try_from(offset).unwrap();
    data[i] ^= 0x5a;
    std::fs::write(file, data).unwrap();
}

#[test]
fn update_bundle_signed_with_the_dev_key_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path(), "7.1.0");
    let out = rauc_info(&bundle);
    let info = text(&out);
    assert!(out.status.success(), "good bundle refused:\n{info}");
    assert!(
        info.contains("RAUC_MF_COMPATIBLE='qrelay-x86_64'"),
        "{info}"
    );
    assert!(info.contains("RAUC_MF_VERSION='7.1.0'"), "{info}");
    // Inline signature = the manifest is inside the CMS blob (verity format).
    assert!(
        info.contains("Verified inline signature by 'O = qrelay development (NOT FOR PRODUCTION), CN = qrelay DEV-ONLY RAUC signing'"),
        "{info}"
    );
    let out = rauc_extract(&bundle, &dir.path().join("extracted"));
    assert!(
        out.status.success(),
        "payload of a good bundle refused:\n{}",
        text(&out)
    );
    let slot = std::fs::read(dir.path().join("rootfs-7.1.0.squashfs")).unwrap();
    let extracted = std::fs::read(dir.path().join("extracted/rootfs.img")).unwrap();
    assert!(
        slot == extracted,
        "the bundle does not carry the slot image unchanged"
    );
}

#[test]
fn update_bundle_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A complete second PKI made by the same script: same subject names, other keys.
    // Only the keys may decide, never the names.
    let other = dir.path().join("other-keys");
    run_ok(Command::new(repo().join("image/keys/make-dev-keys")).arg(&other));
    let slot = slot_image(dir.path(), "7.2.0");
    let bundle = dir.path().join("foreign.raucb");
    let out = make_bundle(
        &slot,
        "7.2.0",
        &bundle,
        &[
            "--cert",
            other.join("dev.cert.pem").to_str().unwrap(),
            "--key",
            other.join("dev.key.pem").to_str().unwrap(),
            "--keyring",
            other.join("dev-keyring.pem").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "make-bundle (other key):\n{}",
        text(&out)
    );
    let out = rauc_info(&bundle);
    let info = text(&out);
    assert!(!out.status.success(), "foreign signature accepted:\n{info}");
    assert!(
        info.contains("signature verification failed"),
        "unclear refusal:\n{info}"
    );
}

#[test]
fn update_bundle_signed_by_a_non_code_signing_certificate_is_refused() {
    // A certificate from our own CA, but issued for TLS: system.conf's
    // check-purpose=codesign must keep it from signing firmware.
    let dir = tempfile::tempdir().unwrap();
    let keys = repo().join("image/keys");
    let (key, csr, cert, ext) = (
        dir.path().join("tls.key.pem"),
        dir.path().join("tls.csr"),
        dir.path().join("tls.cert.pem"),
        dir.path().join("ext.cnf"),
    );
    std::fs::write(
        &ext,
        "[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=qrelay.example.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "30", "-extensions", "v3"])
            .arg("-extfile")
            .arg(&ext)
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(keys.join("dev-ca.cert.pem"))
            .arg("-CAkey")
            .arg(keys.join("dev-ca.key.pem"))
            .arg("-set_serial")
            .arg("4242")
            .arg("-out")
            .arg(&cert),
    );
    let slot = slot_image(dir.path(), "7.3.0");
    let bundle = dir.path().join("tls-signed.raucb");
    // make-bundle itself refuses: it checks the fresh bundle under the box's rules.
    let out = make_bundle(
        &slot,
        "7.3.0",
        &bundle,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--keyring",
            keys.join("dev-keyring.pem").to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success(),
        "make-bundle signed with a TLS certificate:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("unsuitable certificate purpose"),
        "{}",
        text(&out)
    );
    // Signed without that check (plain `rauc bundle`), the box still refuses it.
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(&slot, input.join("rootfs.img")).unwrap();
    let manifest = std::fs::read_to_string(repo().join("image/rauc/manifest.raucm.in"))
        .unwrap()
        .replace("@COMPATIBLE@", "qrelay-x86_64")
        .replace("@VERSION@", "7.3.0")
        .replace("@BUILD@", "test");
    std::fs::write(input.join("manifest.raucm"), manifest).unwrap();
    run_ok(
        Command::new("rauc")
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .arg("bundle")
            .arg(&input)
            .arg(&bundle),
    );
    let out = rauc_info(&bundle);
    assert!(
        !out.status.success(),
        "TLS-signed bundle accepted:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("unsuitable certificate purpose"),
        "{}",
        text(&out)
    );
}

#[test]
fn update_bundle_with_modified_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path(), "7.4.0");
    let tampered = dir.path().join("tampered.raucb");
    std::fs::copy(&bundle, &tampered).unwrap();
    // Inside the squashfs payload (the bundle starts with it), in the slot image's
    // data. The signed manifest is untouched, so `rauc info` (signature only) still
    // passes; reading the payload must fail at the first modified block, which is
    // what dm-verity does on the box while `rauc install` copies the slot.
    let data = std::fs::read(&tampered).unwrap();
    // bytes_used of the payload squashfs (superblock offset 40, little endian).
    let payload_len = u64::from_le_bytes(data[40..48].try_into().unwrap());
    assert!(
        payload_len > 200 * 1024,
        "payload unexpectedly small: {payload_len}"
    );
    flip_byte(&tampered, payload_len / 2);
    let out = rauc_extract(&tampered, &dir.path().join("extracted"));
    let msg = text(&out);
    assert!(!out.status.success(), "modified payload accepted:\n{msg}");
    assert!(
        msg.contains("bundle payload is corrupted"),
        "unclear refusal:\n{msg}"
    );
    assert!(
        !dir.path().join("extracted/rootfs.img").exists(),
        "a modified slot image was unpacked"
    );
}

#[test]
fn update_bundle_with_modified_signature_or_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = good_bundle(dir.path(), "7.5.0");
    // A verity bundle ends with the CMS blob (inline-signed manifest, which holds the
    // payload's root hash) followed by its size as a big-endian u64.
    let data = std::fs::read(&bundle).unwrap();
    let cms_len = u64::from_be_bytes(data[data.len() - 8..].try_into().unwrap());
    let cms_end = data.len() as u64 - 8;
    let cms_start = cms_end - cms_len;
    // Three places: inside the signed content, in the signature, near the end.
    for offset in [
        cms_start + cms_len / 4,
        cms_start + cms_len / 2,
        cms_end - 40,
    ] {
        let tampered = dir.path().join(format!("tampered-{offset}.raucb"));
        std::fs::copy(&bundle, &tampered).unwrap();
        flip_byte(&tampered, offset);
        let out = rauc_info(&tampered);
        assert!(
            !out.status.success(),
            "bundle with byte {offset} of the signature area modified accepted:\n{}",
            text(&out)
        );
    }
    // And the intact one still passes, so the loop above tested the modification.
    assert!(rauc_info(&bundle).status.success());
}

#[test]
fn update_plain_bundle_format_is_refused() {
    // Plain bundles are checked only once, before use; the box accepts verity only.
    let dir = tempfile::tempdir().unwrap();
    let slot = slot_image(dir.path(), "7.6.0");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(&slot, input.join("rootfs.img")).unwrap();
    let manifest = std::fs::read_to_string(repo().join("image/rauc/manifest.raucm.in"))
        .unwrap()
        .replace("@COMPATIBLE@", "qrelay-x86_64")
        .replace("@VERSION@", "7.6.0")
        .replace("@BUILD@", "test")
        .replace("format=verity", "format=plain");
    std::fs::write(input.join("manifest.raucm"), manifest).unwrap();
    let keys = repo().join("image/keys");
    let bundle = dir.path().join("plain.raucb");
    run_ok(
        Command::new("rauc")
            .arg("-c")
            .arg(repo().join("image/rauc/host.conf"))
            .arg(format!("--cert={}", keys.join("dev.cert.pem").display()))
            .arg(format!("--key={}", keys.join("dev.key.pem").display()))
            .arg("bundle")
            .arg(&input)
            .arg(&bundle),
    );
    let out = rauc_info(&bundle);
    assert!(
        !out.status.success(),
        "plain bundle accepted:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("Bundle format 'plain' not allowed"),
        "{}",
        text(&out)
    );
}

/// Runs the box's pre-install handler as RAUC would, with the running version and the
/// flag file redirected into `dir`.
fn pre_install(dir: &Path, running: &str, bundle_version: &str, env: &[(&str, &str)]) -> Output {
    std::fs::write(dir.join("qrelay-version"), format!("{running}\n")).unwrap();
    let mut cmd = Command::new(repo().join("image/overlay/usr/lib/rauc/qrelay-pre-install"));
    cmd.env("QRELAY_VERSION_FILE", dir.join("qrelay-version"))
        .env("QRELAY_DOWNGRADE_FLAG", dir.join("allow-downgrade"))
        .env("RAUC_MF_VERSION", bundle_version)
        .env_remove("QRELAY_ALLOW_DOWNGRADE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn update_downgrade_is_refused_without_the_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (running, new, allowed) in [
        ("2.1", "2.2", true),
        ("2.9", "2.10", true), // numeric, not lexical
        ("2.1", "2.1", true),  // reinstall repairs the other slot
        ("2.1", "3", true),
        ("2.1", "2.0.9", false),
        ("2.10", "2.9", false),
        ("2.1", "2.1-rc1", false), // a pre-release sorts before its release
        ("2.1-rc1", "2.1", true),
    ] {
        let out = pre_install(d, running, new, &[]);
        assert_eq!(
            out.status.success(),
            allowed,
            "{running} -> {new}: {}",
            text(&out)
        );
        if !allowed {
            assert!(text(&out).contains("refusing downgrade"), "{}", text(&out));
        }
    }
    // The flag file allows exactly one downgrade.
    std::fs::write(d.join("allow-downgrade"), "").unwrap();
    let out = pre_install(d, "2.1", "1.0", &[]);
    assert!(
        out.status.success(),
        "flagged downgrade refused: {}",
        text(&out)
    );
    assert!(
        !d.join("allow-downgrade").exists(),
        "the flag was not consumed"
    );
    assert!(!pre_install(d, "2.1", "1.0", &[]).status.success());
    // So does the variable in RAUC's environment.
    let out = pre_install(d, "2.1", "1.0", &[("QRELAY_ALLOW_DOWNGRADE", "1")]);
    assert!(out.status.success(), "{}", text(&out));
    // A bundle without a version, or a box without one, fails closed.
    assert!(!pre_install(d, "2.1", "", &[]).status.success());
    std::fs::remove_file(d.join("qrelay-version")).unwrap();
    let mut cmd = Command::new(repo().join("image/overlay/usr/lib/rauc/qrelay-pre-install"));
    cmd.env("QRELAY_VERSION_FILE", d.join("qrelay-version"))
        .env("QRELAY_DOWNGRADE_FLAG", d.join("allow-downgrade"))
        .env("RAUC_MF_VERSION", "2.2")
        .env_remove("QRELAY_ALLOW_DOWNGRADE");
    let out = run(&mut cmd);
    assert!(
        !out.status.success(),
        "unknown running version accepted: {}",
        text(&out)
    );
}

/// The value of `key` in `[section]` of an INI file (RAUC's format).
fn ini_value(ini: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in ini.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].to_string();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

#[test]
fn update_config_agrees_with_manifest_keyring_and_grub() {
    let repo = repo();
    let conf = std::fs::read_to_string(repo.join("image/overlay/etc/rauc/system.conf")).unwrap();
    let get =
        |s: &str, k: &str| ini_value(&conf, s, k).unwrap_or_else(|| panic!("[{s}] {k} missing"));
    assert_eq!(get("system", "compatible"), "qrelay-x86_64");
    assert_eq!(get("system", "bootloader"), "grub");
    assert_eq!(get("system", "bundle-formats"), "-plain");
    assert_eq!(get("keyring", "path"), "/etc/rauc/keyring.pem");
    assert_eq!(get("keyring", "check-purpose"), "codesign");
    assert_eq!(get("slot.rootfs.0", "bootname"), "A");
    assert_eq!(get("slot.rootfs.1", "bootname"), "B");
    assert_eq!(
        get("slot.rootfs.0", "device"),
        "/dev/disk/by-partlabel/rootfs-A"
    );
    assert_eq!(
        get("slot.rootfs.1", "device"),
        "/dev/disk/by-partlabel/rootfs-B"
    );
    // The handler is shipped in the same overlay, executable.
    let handler = get("handlers", "pre-install");
    let meta = std::fs::metadata(
        repo.join("image/overlay")
            .join(handler.trim_start_matches('/')),
    )
    .expect("pre-install handler missing from the overlay");
    use std::os::unix::fs::PermissionsExt;
    assert!(
        meta.permissions().mode() & 0o111 != 0,
        "{handler} is not executable"
    );
    // The status file is on the data partition: the root is read-only.
    assert!(get("system", "statusfile").starts_with("/data/"));
    // The bundle template and the host config name the same board.
    let manifest = std::fs::read_to_string(repo.join("image/rauc/manifest.raucm.in")).unwrap();
    assert_eq!(
        ini_value(&manifest, "bundle", "format").as_deref(),
        Some("verity")
    );
    let host = std::fs::read_to_string(repo.join("image/rauc/host.conf")).unwrap();
    assert_eq!(
        ini_value(&host, "system", "compatible"),
        Some(get("system", "compatible"))
    );
    // RAUC and GRUB must use the same environment file. grub.cfg names it relative to
    // the ESP; system.conf through the ESP's mount point.
    let grubenv = get("system", "grubenv");
    let grub_cfg = repo.join("image/grub/grub.cfg");
    if let Ok(cfg) = std::fs::read_to_string(&grub_cfg) {
        let file = grubenv.rsplit('/').next().unwrap();
        assert!(cfg.contains(file), "grub.cfg does not load {file}");
        for var in ["ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"] {
            assert!(cfg.contains(var), "grub.cfg does not use {var}");
        }
    }
}
