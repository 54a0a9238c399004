#!/usr/bin/env bash
# The systemd files: `cmake --install` puts them in place (into a staging DESTDIR here), the unit
# passes `systemd-analyze verify` (its ExecStart pointed at the built berthd, since nothing is
# installed system-wide by a test), the tmpfiles entry creates berthd's directories and the
# sysusers entry the admin group `berth`.
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
sysusers="$stage/root/usr/lib/sysusers.d/berth.conf"
test -f "$sysusers" || { echo "not installed: $sysusers"; exit 1; }
test -x "$stage/root/usr/local/bin/berthctl" || { echo "berthctl not installed"; exit 1; }
test -x "$stage/root/usr/local/sbin/berthd" || { echo "berthd not installed"; exit 1; }
grep -q '^Type=notify$' "$unit"
grep -q '^Restart=on-failure$' "$unit"
grep -q '^After=docker.service' "$unit"

mkdir -p "$stage/verify"
sed "s|^ExecStart=.*|ExecStart=$berthd|" "$unit" > "$stage/verify/berthd.service"
systemd-analyze verify --man=no "$stage/verify/berthd.service"

systemd-tmpfiles --create --root="$stage/tmpfs" "$tmpfiles"
test -d "$stage/tmpfs/run/berth" && test -d "$stage/tmpfs/var/lib/berth"
# The admin group, made in a staging root: its /etc/group gains `berth`.
mkdir -p "$stage/users/etc"
systemd-sysusers --root="$stage/users" "$sysusers"
grep -q '^berth:' "$stage/users/etc/group" || { echo "sysusers made no berth group"; exit 1; }
echo "systemd files install, verify, and create their directories and the berth group"
