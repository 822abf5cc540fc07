#!/usr/bin/env bash
# Installs what strata's demo, tests and benchmarks need on a Debian/Ubuntu machine, idempotently:
# apt runs (with one `apt-get update` first) only when a command or package is missing, so a
# second run takes well under a second. Also makes sure /dev/fuse exists and a Rust toolchain is
# there (it does not install Rust: use rustup).
#
#   scripts/setup.sh        (as root, or as a user with sudo)
set -euo pipefail

# command -> the Debian package that provides it
declare -A by_command=(
  [fusermount3]=fuse3        # FUSE mount helper (AutoUnmount, rootless mounts)
  [setfattr]=attr            # layers' xattrs (opaque dirs, whiteouts)
  [getfattr]=attr
  [fuse-overlayfs]=fuse-overlayfs  # the peer strata is compared with
  [fio]=fio                  # benchmarks
  [hyperfine]=hyperfine
  [gnuplot]=gnuplot-nox      # benchmark chart (SVG/PNG)
  [tar]=tar
  [stat]=coreutils
  [mknod]=coreutils
  [find]=findutils
  [mount]=mount
  [mountpoint]=util-linux
  [setpriv]=util-linux       # tests: run as another user
  [unshare]=util-linux       # tests: rootless runs in a private mount namespace
  [prlimit]=util-linux       # tests: strata under a small RLIMIT_NOFILE (fd_limit)
  [python3]=python3          # benchmark fixture builder and report
  [bc]=bc
  [cc]=gcc                   # the linker cargo uses
  [git]=git                  # tests: pipeline git substitutions ($COMMIT_SHA, $BRANCH_NAME, ...)
  [skopeo]=skopeo            # tests: exported OCI layouts read back; registry interop
  [docker-registry]=docker-registry  # tests: a real registry server (CNCF distribution 2.8)
  [htpasswd]=apache2-utils   # tests: bcrypt htpasswd for the registry's auth
  [umoci]=umoci              # tests: exported OCI layouts unpacked
  [podman]=podman            # tests: strata as podman's / buildah's mount program
  [buildah]=buildah          # tests and benchmark: strata build's reference (buildah bud --layers)
  [runc]=runc                # the OCI runtime those tests name (--runtime runc)
  [conmon]=conmon
  [newuidmap]=uidmap         # rootless podman/buildah: the user's subuid range
  [newgidmap]=uidmap
  [slirp4netns]=slirp4netns  # rootless podman's network helper
  [mkfs.xfs]=xfsprogs        # tests: the xfs layout (reflink copy-up; scripts/layouts.sh)
  [mkfs.btrfs]=btrfs-progs   # tests: the btrfs layout
)
# packages checked by name (their command may come from another package)
by_package=(
  busybox-static             # a static busybox for test root filesystems
  containers-storage         # /etc/containers/storage.conf and the storage man pages
)

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

missing=()
add() { local p; for p in "${missing[@]}"; do [ "$p" = "$1" ] && return; done; missing+=("$1"); }
for cmd in "${!by_command[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || add "${by_command[$cmd]}"
done
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${by_package[@]}"; do installed "$pkg" || add "$pkg"; done
fi

if ((${#missing[@]} == 0)); then
  echo "setup: system packages present"
else
  echo "setup: missing packages: ${missing[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get here: install the packages above (names are Debian's) by hand" >&2
    exit 1
  fi
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "setup: need root to install packages (run as root or install sudo)" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "setup: apt-get update"
  "${sudo[@]}" apt-get update -qq
  echo "setup: apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: installed ${missing[*]}"
fi

# /dev/fuse: the kernel module may not be loaded yet (modprobe may also be absent: then warn).
if [ ! -c /dev/fuse ]; then
  echo "setup: /dev/fuse missing: modprobe fuse"
  modprobe fuse 2>/dev/null || true
  if [ ! -c /dev/fuse ]; then
    echo "setup: warning: /dev/fuse still missing; tests that mount will print SKIP" >&2
  fi
fi

# Rust: cargo is expected to be installed already (rustup or the distribution's packages).
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install a Rust toolchain (https://rustup.rs, or apt-get install cargo)" >&2
  exit 1
fi
cargo fmt --version >/dev/null 2>&1 \
  || echo "setup: warning: cargo fmt missing (CI needs it: rustup component add rustfmt)" >&2
cargo clippy --version >/dev/null 2>&1 \
  || echo "setup: warning: cargo clippy missing (CI needs it: rustup component add clippy)" >&2
echo "setup: $(cargo --version)"
