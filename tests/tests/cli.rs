//! The `qrelay config` commands (no peers needed).

use std::process::Command;

use qrelay_tests::relay::qrelay_bin;

#[test]
fn config_example_passes_config_check() {
    let out = Command::new(qrelay_bin())
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for section in ["[smtp]", "[spool]", "[dns]", "[delivery]", "[class.normal]"] {
        assert!(text.contains(section), "example lacks {section}:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = Command::new(qrelay_bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[smtp]\nlisten_adress = [\"127.0.0.1:2525\"]\n").unwrap();
    let out = Command::new(qrelay_bin())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen_adress"), "{text}");
}

#[test]
fn system_factory_reset_needs_confirmation_and_arms_the_boot_flag() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("grubenv");
    let ok = Command::new("grub-editenv")
        .arg(&env)
        .arg("create")
        .status()
        .expect("grub-editenv (Debian package grub-common)");
    assert!(ok.success());
    let config = dir.path().join("qrelay.toml");
    std::fs::write(
        &config,
        format!("[system]\ngrubenv = \"{}\"\n", env.display()),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(qrelay_bin())
            .args(["system", "factory-reset", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    let list = || {
        let out = Command::new("grub-editenv")
            .arg(&env)
            .arg("list")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Without --yes: refused, nothing armed.
    let out = run(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{out:?}"
    );
    assert!(!list().contains("QRELAY_FACTORY_RESET"));
    // Confirmed: the flag the boot loader reads is set.
    let out = run(&["--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert!(list().contains("QRELAY_FACTORY_RESET=1"), "{}", list());
}

/// `qrelay tls show` reads the certificate files only (no relay needed) and prints the
/// fingerprint the box's console shows; it must be the one `openssl` computes.
#[test]
fn tls_show_prints_the_certificate_fingerprint_openssl_computes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = dir.path().join("qrelay.toml");
    std::fs::write(&config, format!("[spool]\ndir = \"{}\"\n", spool.display())).unwrap();
    let show = |extra: &[&str]| {
        Command::new(qrelay_bin())
            .args(["tls", "show", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    // Before the relay's first start there is nothing to show, and nothing is made.
    let out = show(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no certificate yet"),
        "{out:?}"
    );
    assert!(!spool.join("tls").exists());

    // A certificate as the relay keeps it (made with openssl here).
    let tls = spool.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let cert = tls.join("smtp-cert.pem");
    qrelay_tests::openssl_self_signed("box.example", &cert, &tls.join("smtp-key.pem")).unwrap();
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let openssl = String::from_utf8_lossy(&openssl.stdout);
    let want = openssl.trim().rsplit('=').next().unwrap().to_string();
    assert_eq!(want.len(), 95, "{openssl}");

    let out = show(&["--fingerprint"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    let out = show(&[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("generated on first start"), "{text}");
    assert!(text.contains("names:       box.example"), "{text}");
    assert!(text.contains(&format!("SHA-256:     {want}")), "{text}");
}
