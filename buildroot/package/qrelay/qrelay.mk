################################################################################
#
# qrelay
#
################################################################################

# The source is this repository's own Cargo workspace (one level above the
# br2-external tree): no download, Buildroot rsyncs the checkout into its build
# directory. Must equal [workspace.package] version in Cargo.toml
# (scripts/check-buildroot compares them).
QRELAY_VERSION = 0.1.0
QRELAY_SITE = $(BR2_EXTERNAL_QRELAY_PATH)/..
QRELAY_SITE_METHOD = local
QRELAY_LICENSE = Apache-2.0 or MIT
# The workspace's licence (Cargo.toml: license = "Apache-2.0 OR MIT"), as texts.
QRELAY_LICENSE_FILES = LICENSE-APACHE LICENSE-MIT

# Build products of the checkout must not be copied: target/ holds binaries
# linked against the build machine's glibc (and gigabytes of objects), and a
# Buildroot output or download directory may sit inside the checkout.
QRELAY_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude=/target \
	--exclude=/output \
	--exclude=/buildroot/output \
	--exclude=/dl \
	--exclude=/.cargo

# The workspace root is a virtual manifest: name the package and binary.
QRELAY_CARGO_BUILD_OPTS = --package qrelay-gateway --bin qrelay

QRELAY_VENDOR_DIR = $(call qstrip,$(BR2_PACKAGE_QRELAY_VENDOR_DIR))

# Buildroot vendors crates in its download step, which local packages skip;
# the cargo build below runs with --offline --locked. So the crates come from
# buildroot/vendor-crates, and this hook points cargo at them. It refuses crates
# vendored for another Cargo.lock: cargo would fail later with a less helpful
# "no matching package" message.
define QRELAY_USE_VENDORED_CRATES
	@if [ ! -f $(QRELAY_VENDOR_DIR)/cargo-config.toml ] || \
	    [ ! -f $(QRELAY_VENDOR_DIR)/Cargo.lock.sha256 ]; then \
		echo "qrelay: no vendored crates in $(QRELAY_VENDOR_DIR)." >&2; \
		echo "qrelay: run: buildroot/vendor-crates $(QRELAY_VENDOR_DIR)" >&2; \
		exit 1; \
	fi
	@if [ "$$(cat $(QRELAY_VENDOR_DIR)/Cargo.lock.sha256)" != \
	      "$$(sha256sum < $(@D)/Cargo.lock | cut -d ' ' -f 1)" ]; then \
		echo "qrelay: $(QRELAY_VENDOR_DIR) was vendored for another Cargo.lock." >&2; \
		echo "qrelay: run: buildroot/vendor-crates $(QRELAY_VENDOR_DIR)" >&2; \
		exit 1; \
	fi
	mkdir -p $(@D)/.cargo
	cp $(QRELAY_VENDOR_DIR)/cargo-config.toml $(@D)/.cargo/config.toml
endef
QRELAY_PRE_BUILD_HOOKS += QRELAY_USE_VENDORED_CRATES

# The infrastructure's default install runs "cargo install --path ./", which a
# virtual workspace manifest cannot do (and would compile a second time):
# install the binary the build step produced.
define QRELAY_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)/qrelay \
		$(TARGET_DIR)/usr/bin/qrelay
endef

$(eval $(cargo-package))
