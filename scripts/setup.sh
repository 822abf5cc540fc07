#!/usr/bin/env bash
# Installs the system packages strata's demo and tests need, idempotently: apt runs only when
# something is missing.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [fusermount3]=fuse3
  [setfattr]=attr
  [fuse-overlayfs]=fuse-overlayfs
  [fio]=fio
  [hyperfine]=hyperfine
  [busybox]=busybox-static
  [bc]=bc
  [python3]=python3
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install packages (run with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: system packages present"
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || echo "setup: warning: /dev/fuse is missing; mount tests will skip"
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
