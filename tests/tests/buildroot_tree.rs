//! The production Buildroot tree (buildroot/) is checked statically by
//! scripts/check-buildroot: Buildroot and its sources cannot be downloaded here, so
//! this is what CI has instead of a real build. The check must pass on the tree, and
//! must catch the mistakes a real build would stumble over, which are made here on a
//! copy of the tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

struct Outcome {
    ok: bool,
    text: String,
}

fn run_check(root: &Path) -> Outcome {
    let out = Command::new(repo_root().join("scripts/check-buildroot"))
        .arg(root)
        .output()
        .expect("scripts/check-buildroot runs (python3)");
    Outcome {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A copy of what the check reads: the br2-external tree, the shared image
/// definition and the workspace manifests (the package's site and licence file).
fn copy_of_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    for entry in [
        "buildroot",
        "image",
        "Cargo.toml",
        "Cargo.lock",
        "LICENSE-APACHE",
        "LICENSE-MIT",
    ] {
        // cp -a keeps the execute bits the check looks at.
        let status = Command::new("cp")
            .arg("-a")
            .arg(root.join(entry))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "copying {entry}");
    }
    // Build products that may sit in the checkout are not part of the tree.
    let _ = fs::remove_dir_all(dir.path().join("buildroot/output"));
    dir
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = fs::read_to_string(path).unwrap();
    fs::write(path, f(text)).unwrap();
}

fn line_count(path: &Path) -> usize {
    fs::read_to_string(path).unwrap().lines().count()
}

fn assert_fails_with(root: &Path, needles: &[&str]) {
    let out = run_check(root);
    assert!(
        !out.ok,
        "the check passed but should not have:\n{}",
        out.text
    );
    for needle in needles {
        assert!(
            out.text.contains(needle),
            "the check's output lacks {needle:?}:\n{}",
            out.text
        );
    }
}

#[test]
fn buildroot_tree_passes_the_static_check() {
    let out = run_check(&repo_root());
    assert!(out.ok, "scripts/check-buildroot failed:\n{}", out.text);
    // The shared image/ files the production build uses are all there.
    for path in [
        "image/overlay",
        "image/genimage.cfg",
        "image/grub/grub.cfg",
        "image/keys/dev-keyring.pem",
        "image/make-bundle",
    ] {
        assert!(
            out.text.contains(&format!("ok      {path}\n")),
            "{path} not reported as referenced and present:\n{}",
            out.text
        );
    }
}

#[test]
fn buildroot_copy_of_tree_passes_before_any_change() {
    // Guards the negative tests below: each must fail because of its own change.
    let dir = copy_of_tree();
    let out = run_check(dir.path());
    assert!(out.ok, "{}", out.text);
}

#[test]
fn buildroot_missing_board_file_is_named_with_its_reference() {
    let dir = copy_of_tree();
    fs::remove_file(
        dir.path()
            .join("buildroot/board/qrelay/x86_64/linux.fragment"),
    )
    .unwrap();
    assert_fails_with(
        dir.path(),
        &[
            "buildroot/configs/qrelay_x86_64_defconfig:",
            "buildroot/board/qrelay/x86_64/linux.fragment does not exist",
        ],
    );
}

#[test]
fn buildroot_missing_shared_image_file_fails_the_check() {
    let dir = copy_of_tree();
    fs::remove_file(dir.path().join("image/genimage.cfg")).unwrap();
    assert_fails_with(
        dir.path(),
        &[
            "buildroot/board/qrelay/common/post-image.sh:",
            "image/genimage.cfg does not exist",
            "MISSING image/genimage.cfg",
        ],
    );
}

#[test]
fn buildroot_unknown_defconfig_symbol_is_refused() {
    let dir = copy_of_tree();
    let defconfig = dir
        .path()
        .join("buildroot/configs/qrelay_aarch64_defconfig");
    edit(&defconfig, |t| t + "BR2_PACKAGE_NO_SUCH_PACKAGE=y\n");
    let line = line_count(&defconfig);
    assert_fails_with(
        dir.path(),
        &[&format!(
            "buildroot/configs/qrelay_aarch64_defconfig:{line}: BR2_PACKAGE_NO_SUCH_PACKAGE is neither defined"
        )],
    );
}

#[test]
fn buildroot_duplicate_defconfig_symbol_is_refused() {
    let dir = copy_of_tree();
    let defconfig = dir.path().join("buildroot/configs/qrelay_x86_64_defconfig");
    // The second setting contradicts the first; kconfig would silently keep one.
    edit(&defconfig, |t| t + "# BR2_PACKAGE_RAUC is not set\n");
    let line = line_count(&defconfig);
    assert_fails_with(
        dir.path(),
        &[&format!(
            "buildroot/configs/qrelay_x86_64_defconfig:{line}: BR2_PACKAGE_RAUC set twice"
        )],
    );
}

#[test]
fn buildroot_mk_without_cargo_package_eval_is_refused() {
    let dir = copy_of_tree();
    let mk = dir.path().join("buildroot/package/qrelay/qrelay.mk");
    edit(&mk, |t| t.replace("$(eval $(cargo-package))\n", ""));
    assert_fails_with(
        dir.path(),
        &[
            "buildroot/package/qrelay/qrelay.mk:",
            "must end with $(eval $(cargo-package))",
        ],
    );
}

#[test]
fn buildroot_mk_with_unprefixed_variable_and_dangling_hook_is_refused() {
    let dir = copy_of_tree();
    let mk = dir.path().join("buildroot/package/qrelay/qrelay.mk");
    edit(&mk, |t| {
        t.replace("QRELAY_SITE_METHOD = local", "SITE_METHOD = local")
            .replace("define QRELAY_USE_VENDORED_CRATES", "define QRELAY_VENDOR")
    });
    assert_fails_with(
        dir.path(),
        &[
            "SITE_METHOD: variables of package qrelay start with QRELAY_",
            "QRELAY_SITE_METHOD is not set",
            "hook QRELAY_USE_VENDORED_CRATES is not defined",
        ],
    );
}

#[test]
fn buildroot_ssh_server_and_root_login_violate_the_policy() {
    let dir = copy_of_tree();
    let defconfig = dir.path().join("buildroot/configs/qrelay_x86_64_defconfig");
    edit(&defconfig, |t| {
        t.replace(
            "# BR2_PACKAGE_DROPBEAR is not set",
            "BR2_PACKAGE_DROPBEAR=y",
        )
        .replace(
            "# BR2_TARGET_ENABLE_ROOT_LOGIN is not set",
            "BR2_TARGET_ENABLE_ROOT_LOGIN=y",
        )
    });
    assert_fails_with(
        dir.path(),
        &[
            "BR2_PACKAGE_DROPBEAR must not be set (no SSH server on the box)",
            "BR2_TARGET_ENABLE_ROOT_LOGIN must not be set",
        ],
    );
}

#[test]
fn buildroot_shell_syntax_error_is_reported() {
    let dir = copy_of_tree();
    let script = dir
        .path()
        .join("buildroot/board/qrelay/common/post-build.sh");
    edit(&script, |t| t + "if true; then\n");
    assert_fails_with(
        dir.path(),
        &["buildroot/board/qrelay/common/post-build.sh: bash -n:"],
    );
}
