# Package recipes of the qrelay br2-external tree. Listed one by one (no wildcard)
# so that scripts/check-buildroot can tell a forgotten recipe from a deliberate one.
include $(BR2_EXTERNAL_QRELAY_PATH)/package/qrelay/qrelay.mk
