#!/usr/bin/env bash
# Buildroot post-build script of the qrelay appliance (BR2_ROOTFS_POST_BUILD_SCRIPT).
#
#   post-build.sh TARGET_DIR BOARD_DIR
#
# Runs after the packages and the rootfs overlay (image/overlay) are in TARGET_DIR and
# before the squashfs slot image is made. BOARD_DIR (BR2_ROOTFS_POST_SCRIPT_ARGS) is
# board/qrelay/<arch>, whose board.env describes the board.
#
# It finishes what the overlay, being shared with the offline test image, cannot know:
#   - the firmware version, /etc/qrelay-version (read by RAUC's pre-install handler for
#     downgrade protection, and by image/make-bundle's caller);
#   - the RAUC keyring, /etc/rauc/keyring.pem: $QRELAY_RAUC_KEYRING (production), else
#     the DEV-ONLY image/keys/dev-keyring.pem with a loud warning; with
#     QRELAY_REQUIRE_PRODUCTION_KEYS=1 the dev keyring is refused;
#   - the board's RAUC `compatible` in /etc/rauc/system.conf;
#   - the kernel and initrd inside the slot, /boot/vmlinuz and /boot/initrd.img, where
#     image/grub/grub.cfg loads them from;
#   - the units: the overlay's units enabled as their [Install] sections say, every
#     login prompt masked (no login on the box; the console shows its address), and
#     a preset file so that a later `systemctl preset-all` keeps it that way;
#   - mount points a read-only root cannot create at run time.
#
# Environment: QRELAY_VERSION (default: [workspace.package] version of Cargo.toml),
# QRELAY_RAUC_KEYRING, QRELAY_REQUIRE_PRODUCTION_KEYS; BINARIES_DIR is set by Buildroot.
set -euo pipefail

die() { echo "post-build: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 TARGET_DIR BOARD_DIR (set BR2_ROOTFS_POST_SCRIPT_ARGS)"
target_dir=$1
board_dir=$2
QRELAY_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)
: "${BINARIES_DIR:?post-build: BINARIES_DIR is not set (run from Buildroot)}"

[ -f "$board_dir/board.env" ] || die "no board.env in $board_dir"
# shellcheck source=../x86_64/board.env
. "$board_dir/board.env"
: "${QRELAY_COMPATIBLE:?}" "${QRELAY_KERNEL_IMAGE:?}"

# --- version --------------------------------------------------------------------
workspace_version() {
    sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' \
        "$QRELAY_TOP/Cargo.toml" | head -n 1
}
version=${QRELAY_VERSION:-$(workspace_version)}
[ -n "$version" ] || die "no version: set QRELAY_VERSION"
# Same rule as image/make-bundle: the version lands in an INI file and in shell
# comparisons on the box.
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z.+~-]*$ ]] || die "bad version: $version"
printf '%s\n' "$version" >"$target_dir/etc/qrelay-version"
# post-image.sh names the bundle after the same version.
printf '%s\n' "$version" >"$BINARIES_DIR/qrelay-version"

os_release=$target_dir/usr/lib/os-release
if [ -f "$os_release" ]; then
    sed -i -e '/^IMAGE_ID=/d' -e '/^IMAGE_VERSION=/d' "$os_release"
    printf 'IMAGE_ID=%s\nIMAGE_VERSION=%s\n' "$QRELAY_COMPATIBLE" "$version" >>"$os_release"
fi

# --- RAUC keyring ---------------------------------------------------------------
keyring=${QRELAY_RAUC_KEYRING:-}
if [ -z "$keyring" ]; then
    if [ "${QRELAY_REQUIRE_PRODUCTION_KEYS:-0}" = 1 ]; then
        die "QRELAY_REQUIRE_PRODUCTION_KEYS=1 but QRELAY_RAUC_KEYRING is not set"
    fi
    keyring=$QRELAY_TOP/image/keys/dev-keyring.pem
    echo "post-build: WARNING: installing the DEV-ONLY RAUC keyring ($keyring):" >&2
    echo "post-build: WARNING: this image accepts bundles signed with the public dev key." >&2
fi
[ -f "$keyring" ] || die "no such keyring: $keyring"
grep -q -- '-----BEGIN CERTIFICATE-----' "$keyring" || die "$keyring holds no PEM certificate"
install -D -m 0644 "$keyring" "$target_dir/etc/rauc/keyring.pem"

# --- RAUC compatible ------------------------------------------------------------
system_conf=$target_dir/etc/rauc/system.conf
[ -f "$system_conf" ] || die "$system_conf is missing (image/overlay/etc/rauc/system.conf)"
grep -q '^compatible=' "$system_conf" || die "$system_conf has no compatible= line"
sed -i "s|^compatible=.*|compatible=$QRELAY_COMPATIBLE|" "$system_conf"

# --- kernel and initrd inside the slot ------------------------------------------
kernel=$BINARIES_DIR/$QRELAY_KERNEL_IMAGE
[ -f "$kernel" ] || die "no kernel image $kernel (BR2_LINUX_KERNEL)"
install -D -m 0644 "$kernel" "$target_dir/boot/vmlinuz"
# The Buildroot kernel has everything needed to mount the root built in, so its
# initrd is an empty cpio archive: with no /init in it, the kernel goes on to mount
# root= itself. It exists only so that the one grub.cfg serves both builders (the
# Debian-based test image needs a real initramfs).
cpio --quiet -o -H newc </dev/null >"$target_dir/boot/initrd.img"

# --- mount points ---------------------------------------------------------------
# The root is a read-only squashfs: mount points must be in the image.
mkdir -p "$target_dir/data" "$target_dir/boot/efi"

# --- units ----------------------------------------------------------------------
# What `systemctl enable` would do, done by hand: the build host's systemctl (if any)
# is not the target's, and the root is read-only at run time. Same set as
# image/build-test-image enables and masks.
unit_dir=$target_dir/etc/systemd/system
preset=$target_dir/usr/lib/systemd/system-preset/20-qrelay.preset
mkdir -p "$(dirname "$preset")"
{
    echo "# qrelay appliance (buildroot/board/qrelay/common/post-build.sh)"
    for u in systemd-networkd.service systemd-networkd-wait-online.service \
        systemd-resolved.service systemd-timesyncd.service; do
        echo "enable $u"
    done
} >"$preset"
enabled=0
for unit in "$QRELAY_TOP"/image/overlay/etc/systemd/system/*.service \
    "$QRELAY_TOP"/image/overlay/etc/systemd/system/*.mount \
    "$QRELAY_TOP"/image/overlay/etc/systemd/system/*.timer; do
    [ -f "$unit" ] || continue
    name=${unit##*/}
    for t in $(sed -n 's/^\(WantedBy\|RequiredBy\)=//p' "$unit"); do
        kind=wants
        grep -q "^RequiredBy=.*$t" "$unit" && kind=requires
        mkdir -p "$unit_dir/$t.$kind"
        ln -sfn "/etc/systemd/system/$name" "$unit_dir/$t.$kind/$name"
        enabled=$((enabled + 1))
    done
    echo "enable $name" >>"$preset"
done
[ "$enabled" -gt 0 ] || die "no unit of image/overlay/etc/systemd/system has an [Install] section"
for u in getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyAMA0.service \
    console-getty.service; do
    ln -sfn /dev/null "$unit_dir/$u"
    echo "disable $u" >>"$preset"
done
