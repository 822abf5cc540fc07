#!/usr/bin/env bash
# The main job: builds strata, makes three sample image layers using every kind of whiteout and
# opaque directory, mounts them as one tree and shows what each layer holds and what the merged
# view shows. Then a writable mount shows where changes go. Each claim the demo makes is checked:
# it exits non-zero if the merged view is not what it says.
#
#   scripts/demo.sh        (as root, on Debian/Ubuntu: installs what it needs via scripts/setup.sh)
set -euo pipefail
# Byte-wise names and sorting: the demo includes a file name that is not UTF-8.
export LC_ALL=C
cd "$(dirname "$0")/.."

echo "== Preparing: system packages (scripts/setup.sh) and a release build of strata"
scripts/setup.sh
cargo build --release -q
strata="$PWD/target/release/strata"

demo=$(mktemp -d /tmp/strata-demo.XXXXXX)
mounts=("$demo/merged" "$demo/merged-rw")
cleanup() {
  local m ok=1
  for m in "${mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      "$strata" umount "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" || ok=0
    fi
  done
  # Never remove the temp dir while something is still mounted inside it.
  if ((ok)); then rm -rf "$demo"; else echo "demo: could not unmount; left $demo" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
cd "$demo"
mkdir -p base mid top merged

# ---------------------------------------------------------------------------------------------
# The layers. base is an image's first layer; mid and top are later layers stacked on it.
mkdir -p base/etc base/usr/bin base/var/log base/opt/app base/srv/data
echo "base os 1.0" > base/etc/os-release
echo "root:x:0:0:root:/root:/bin/sh" > base/etc/passwd
printf '#!/bin/sh\necho tool\n' > base/usr/bin/tool
chmod 755 base/usr/bin/tool
echo "old log" > base/var/log/old.log
echo "deleted by a kernel whiteout" > base/etc/motd
echo "deleted by an OCI whiteout" > base/etc/issue
echo "hidden by an xattr-opaque dir" > base/opt/app/v1.conf
echo "hidden by an OCI opaque marker" > base/srv/data/old.db

# mid deletes etc/motd (kernel format: a char device 0/0), etc/issue (OCI format: a
# `.wh.issue` file), and replaces opt/app and srv/data with opaque directories (kernel xattr
# format and OCI `.wh..wh..opq` format): nothing below them shows through.
mkdir -p mid/etc mid/opt/app mid/srv/data
mknod mid/etc/motd c 0 0
touch mid/etc/.wh.issue
setfattr -n trusted.overlay.opaque -v y mid/opt/app
echo "app config v2" > mid/opt/app/v2.conf
touch mid/srv/data/.wh..wh..opq
echo "fresh database" > mid/srv/data/new.db

# top replaces etc/os-release, adds a symlink and a file whose name is not valid UTF-8.
mkdir -p top/etc top/usr/bin
echo "base os 2.0" > top/etc/os-release
ln -s ../../etc/os-release top/usr/bin/release-link
nonutf8="caf$(printf '\351')"   # "café" in Latin-1: byte 0xE9 is not UTF-8
printf 'bytes\n' > "top/etc/$nonutf8"

# ---------------------------------------------------------------------------------------------
# What an entry is, in a few words (whiteouts and opaque markers named as such).
kind() {
  local p=$1 name
  name=$(basename -- "$p")
  if [ -L "$p" ]; then
    echo "symlink -> $(readlink -- "$p")"
  elif [ -d "$p" ]; then
    if [ "$(getfattr --only-values -n trusted.overlay.opaque -- "$p" 2>/dev/null)" = y ]; then
      echo "dir, OPAQUE (xattr trusted.overlay.opaque=y)"
    elif [ -e "$p/.wh..wh..opq" ]; then
      echo "dir, OPAQUE (contains .wh..wh..opq)"
    else
      echo "dir"
    fi
  elif [ -c "$p" ]; then
    local dev
    dev=$(stat -c '%Hr/%Lr' -- "$p")
    if [ "$dev" = 0/0 ]; then echo "char dev 0/0 = WHITEOUT (kernel format)"; else echo "char dev $dev"; fi
  elif [ "$name" = .wh..wh..opq ]; then
    echo "opaque marker (OCI format)"
  elif [[ $name == .wh.* ]]; then
    echo "WHITEOUT of '${name#.wh.}' (OCI format)"
  else
    echo "file, $(stat -c %s -- "$p") bytes"
  fi
}
# The layers an entry of the merged view comes from: the first one for a file; for a directory,
# every layer holding it, top down, until one where it is opaque.
origin() {
  local p=$1 l from=()
  for l in top mid base; do
    [ -e "$demo/$l/$p" ] || [ -L "$demo/$l/$p" ] || continue
    from+=("$l")
    if [ -L "$demo/$l/$p" ] || [ ! -d "$demo/$l/$p" ]; then break; fi
    case "$(kind "$demo/$l/$p")" in *OPAQUE*) break ;; esac
  done
  echo "${from[*]}"
}
# A tree listing: path (non-printable bytes escaped), what it is, and optionally its origin.
show() {
  local dir=$1 with_origin=${2:-} p q
  (cd "$dir" && find . -mindepth 1 -print0 | sort -z | while IFS= read -r -d '' p; do
    q=$(printf '%q' "${p#./}")
    if [ -n "$with_origin" ]; then
      printf '  %-24s %-32s from: %s\n' "$q" "$(kind "$p")" "$(origin "${p#./}")"
    else
      printf '  %-24s %s\n' "$q" "$(kind "$p")"
    fi
  done)
}
failures=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then printf '  ok    %s\n' "$what"; else printf '  FAIL  %s\n' "$what"; failures=$((failures + 1)); fi
}
absent() { local p; for p; do [ ! -e "$p" ] && [ ! -L "$p" ] || return 1; done; }
refuses_writes() { ! touch "$1/new-file" 2>/dev/null; }
same() { [ "$1" = "$2" ]; }
deleted_in_upper() { # a whiteout in upper (either format), the lower copy untouched
  { [ -c "upper/$1" ] || [ -e "upper/$(dirname "$1")/.wh.$(basename "$1")" ]; } && [ -f "base/$1" ]
}

echo
echo "== The three layers, as plain directories on disk (top layer last)"
for l in base mid top; do
  echo "-- $l/"
  show "$l"
done

echo
echo "== Mounting them as one tree, top layer first:"
echo "   strata -o lowerdir=top:mid:base $demo/merged"
echo "   (same as: strata mount --lower top --lower mid --lower base MNT)"
"$strata" -o lowerdir=top:mid:base "$demo/merged"
m="$demo/merged"

echo
echo "== The merged view (find | sort): whiteouts and opaque markers are gone, and with them"
echo "   what they hide; directories present in several layers are merged"
show "$m" with-origin

echo
echo "== What that means"
echo "cat etc/os-release   -> $(cat "$m/etc/os-release")    (top's copy replaces base's 'base os 1.0')"
echo "cat usr/bin/release-link -> $(cat "$m/usr/bin/release-link")    (a symlink in top, followed by the reader)"
check "etc/os-release comes from top" same "$(cat "$m/etc/os-release")" "base os 2.0"
check "etc/passwd and usr/bin/tool still show through from base" test -f "$m/etc/passwd" -a -x "$m/usr/bin/tool"
check "etc/motd is gone (char 0/0 whiteout in mid)" absent "$m/etc/motd"
check "etc/issue is gone (.wh.issue in mid), and .wh.issue itself is not shown" \
  absent "$m/etc/issue" "$m/etc/.wh.issue"
check "opt/app shows only v2.conf: base's v1.conf is hidden by the opaque xattr" \
  same "$(ls -A "$m/opt/app")" "v2.conf"
check "srv/data shows only new.db: base's old.db is hidden by .wh..wh..opq" \
  same "$(ls -A "$m/srv/data")" "new.db"
check "the non-UTF-8 name $(printf '%q' "$nonutf8") is listed byte for byte" \
  same "$(cat "$m/etc/$nonutf8")" "bytes"
check "usr/bin/release-link is a symlink" test -L "$m/usr/bin/release-link"
check "the mount is read-only without an upper layer" refuses_writes "$m"

"$strata" umount "$m"
echo "   unmounted: strata umount $m"

echo
echo "== A writable mount: the same layers plus an upper layer and its work dir"
echo "   strata -o lowerdir=top:mid:base,upperdir=upper,workdir=work $demo/merged-rw"
mkdir -p upper work merged-rw
"$strata" -o "lowerdir=top:mid:base,upperdir=$demo/upper,workdir=$demo/work" "$demo/merged-rw"
m="$demo/merged-rw"
echo "   then: append to etc/passwd, rm var/log/old.log, mkdir home/user"
echo "user:x:1000:1000::/home/user:/bin/sh" >> "$m/etc/passwd"
rm "$m/var/log/old.log"
mkdir -p "$m/home/user"
"$strata" umount "$m"
echo
echo "== The upper layer afterwards: the copied-up file, a whiteout for the deletion, the new dir."
echo "   The lower layers are never written."
show upper
check "etc/passwd was copied up with the new line" same "$(wc -l < upper/etc/passwd)" 2
check "base/etc/passwd is unchanged" same "$(wc -l < base/etc/passwd)" 1
check "the deletion is a whiteout in upper, base/var/log/old.log is still there" \
  deleted_in_upper var/log/old.log

echo
echo "== A container on the same layers: strata run (namespaces, cgroup limits, throwaway layer)"
if [ -x /bin/busybox ]; then
  cp /bin/busybox base/usr/bin/busybox
  for app in sh cat ls hostname; do ln -sf busybox "base/usr/bin/$app"; done
  mkdir -p base/bin base/proc base/dev base/sys
  ln -sf ../usr/bin/busybox base/bin/sh
  echo "   strata run --lower top --lower mid --lower base --hostname demo --memory 64M --pids 32 -- /bin/sh -c '...'"
  out=$("$strata" run --lower top --lower mid --lower base --hostname demo --memory 64M --pids 32 \
    -- /bin/sh -c 'echo "pid $$ on $(hostname): $(cat /etc/os-release)"; rm /etc/passwd; ls /etc')
  echo "$out" | sed 's/^/   | /'
  check "the command runs as PID 2 under strata's init, with its own hostname" \
    same "$(echo "$out" | head -n 1)" "pid 2 on demo: base os 2.0"
  check "the container's deletion stayed in its throwaway layer" test -f base/etc/passwd
else
  echo "   (skipped: /bin/busybox missing; scripts/setup.sh installs busybox-static)"
fi

echo
if ((failures)); then
  echo "demo: $failures check(s) FAILED"
  exit 1
fi
echo "demo: every check passed. Mount points are unmounted and $demo is removed on exit."
