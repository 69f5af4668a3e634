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
