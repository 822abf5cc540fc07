#!/usr/bin/env bash
# The main job: builds strata, makes three sample layers with every kind of whiteout and
# opaque directory, mounts them, and shows the merged view.
set -euo pipefail
# Byte-wise names: the demo includes a file name that is not UTF-8.
export LC_ALL=C
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q
strata="$PWD/target/release/strata"

demo=$(mktemp -d /tmp/strata-demo.XXXXXX)
mnt="$demo/merged"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && "$strata" umount "$mnt"
  rm -rf "$demo"
}
trap cleanup EXIT
mkdir -p "$demo"/{base,mid,top} "$mnt"
cd "$demo"

# base: a tiny distribution
mkdir -p base/etc base/usr/bin base/var/log base/opt/app base/srv/data
echo "base os 1.0" > base/etc/os-release
echo "root:x:0:0:root:/root:/bin/sh" > base/etc/passwd
echo "#!/bin/sh" > base/usr/bin/tool
echo "old log" > base/var/log/old.log
echo "deleted by a kernel whiteout" > base/etc/motd
echo "deleted by an OCI whiteout" > base/etc/issue
echo "hidden by an xattr-opaque dir" > base/opt/app/v1.conf
echo "hidden by an OCI opaque marker" > base/srv/data/old.db

# mid: deletions in the kernel format and the OCI format, two opaque directories
mknod mid/etc/motd c 0 0 2>/dev/null || { mkdir -p mid/etc && mknod mid/etc/motd c 0 0; }
touch mid/etc/.wh.issue
mkdir -p mid/opt/app mid/srv/data
setfattr -n trusted.overlay.opaque -v y mid/opt/app
echo "v2" > mid/opt/app/v2.conf
touch mid/srv/data/.wh..wh..opq
echo "fresh" > mid/srv/data/new.db

# top: additions and replacements
mkdir -p top/etc top/usr/bin
echo "base os 2.0" > top/etc/os-release
ln -s ../etc/os-release top/usr/bin/release-link
printf 'bytes' > "top/etc/$(printf 'caf\xe9')"   # a non-UTF-8 file name

show() { (cd "$1" && find . -mindepth 1 | sort | while read -r p; do
  printf '  %-28s %s\n' "$p" "$(stat -c '%F' "$p")"; done) }
for l in base mid top; do echo "== layer $l"; show "$l"; done

echo
echo "== mounting: strata -o lowerdir=top:mid:base $mnt"
"$strata" -o lowerdir=top:mid:base "$mnt"
echo "== merged view"; show "$mnt"
echo
echo "etc/os-release (top replaces base):  $(cat "$mnt/etc/os-release")"
echo "etc/motd  (char 0/0 whiteout):       $([ -e "$mnt/etc/motd" ] && echo PRESENT || echo gone)"
echo "etc/issue (.wh.issue whiteout):      $([ -e "$mnt/etc/issue" ] && echo PRESENT || echo gone)"
echo "opt/app   (trusted.overlay.opaque):  $(ls "$mnt/opt/app")"
echo "srv/data  (.wh..wh..opq):            $(ls "$mnt/srv/data")"
echo "usr/bin/release-link -> $(readlink "$mnt/usr/bin/release-link")"
echo
"$strata" umount "$mnt"
echo "== unmounted"
