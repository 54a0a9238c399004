#!/usr/bin/env bash
# The systemd files: `cmake --install` puts them in place (into a staging DESTDIR here), the unit
# passes `systemd-analyze verify` (its ExecStart pointed at the built berthd, since nothing is
# installed system-wide by a test), and the tmpfiles entry creates berthd's directories.
# Usage: systemd_test.sh BUILD_DIR BERTHD
set -euo pipefail
build=$1
berthd=$2
stage=$(mktemp -d /tmp/berth-systemd-XXXXXX)
trap 'rm -rf "$stage"' EXIT

DESTDIR="$stage/root" cmake --install "$build" --component Unspecified > "$stage/install.log"
unit="$stage/root/lib/systemd/system/berthd.service"
tmpfiles="$stage/root/usr/lib/tmpfiles.d/berth.conf"
test -f "$unit" || { echo "not installed: $unit"; exit 1; }
test -f "$tmpfiles" || { echo "not installed: $tmpfiles"; exit 1; }
test -x "$stage/root/usr/local/sbin/berthd" || { echo "berthd not installed"; exit 1; }
grep -q '^Type=notify$' "$unit"
grep -q '^Restart=on-failure$' "$unit"
grep -q '^After=docker.service' "$unit"

mkdir -p "$stage/verify"
sed "s|^ExecStart=.*|ExecStart=$berthd|" "$unit" > "$stage/verify/berthd.service"
systemd-analyze verify --man=no "$stage/verify/berthd.service"

systemd-tmpfiles --create --root="$stage/tmpfs" "$tmpfiles"
test -d "$stage/tmpfs/run/berth" && test -d "$stage/tmpfs/var/lib/berth"
echo "systemd files install, verify and create their directories"
