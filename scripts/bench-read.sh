#!/usr/bin/env bash
# Read-path benchmark: kernel overlayfs, fuse-overlayfs and strata side by side, in one run, over
# the same layered tree: ~20k files in 3 lower layers (a deep base, a middle layer with char 0/0
# whiteouts and an opaque directory, a top layer adding and replacing files) plus a 1 GiB file.
#
#   scripts/bench-read.sh [OUTDIR]      (as root; results in OUTDIR, default target/bench)
#
# Workloads, each run on a fresh mount:
#   mount (s)               time for the mount command to return with the mount live
#   stat walk cold (s)      page, dentry and inode caches dropped, then `find -printf '%i %s'`
#                           (one stat of every entry)
#   stat walk warm (s)      the same walk again
#   1 GiB read cold (GB/s)  caches dropped, then `dd bs=1M` of the big file
#   1 GiB read warm (GB/s)  the same read again
# Every measurement is taken REPS times (default 3), interleaving the candidates (kernel,
# fuse-overlayfs, strata, kernel, ...); the table shows medians and the ratios to the kernel
# (for seconds lower is better, for GB/s higher is better).
#
# Environment:
#   REPS=N                  repetitions (default 3)
#   WITH_UPPER=1            mount each candidate with a fresh empty upper and workdir instead of
#                           read-only (lowers only); strata then reads lower files through the
#                           daemon and the page cache rather than passthrough (see README)
#   CANDIDATES="kernel strata"  a subset
#   STRATA_BENCH_FIXTURE=DIR    where the layers are built once and reused
#                               (default /var/tmp/strata-bench; delete it to rebuild)
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
reps="${REPS:-3}"
out="${1:-target/bench}"
fixture="${STRATA_BENCH_FIXTURE:-/var/tmp/strata-bench}"
read -r -a candidates <<< "${CANDIDATES:-kernel fuse-overlayfs strata}"
upper="${WITH_UPPER:-0}"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-read.sh: needs root (kernel overlay mounts, dropping caches)" >&2
  exit 1
fi
scripts/setup.sh > /dev/null
cargo build --release -q
strata="$PWD/target/release/strata"
mkdir -p "$out"

# ---- the fixture, built once ---------------------------------------------------------------
fixture_version=2 # bump when the layout below changes
if [ "$(cat "$fixture/.done" 2>/dev/null)" != "$fixture_version" ]; then
  echo "building the fixture in $fixture (once; reused by later runs)"
  rm -rf "$fixture"
  mkdir -p "$fixture"/{base,mid,top}
  python3 - "$fixture" <<'EOF'
import os, sys
root = sys.argv[1]

def put(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)

# base: 14,000 small files: 10,000 in a wide tree (usr/share/dNN/sN), 4,000 in deep
# directories (usr/lib/pkgNN/a/b/c/d/e/f/...), like a distribution's first layer.
for i in range(10000):
    put(f"{root}/base/usr/share/d{i % 50}/s{i % 9}/base{i}", i % 2000)
for i in range(4000):
    deep = "/".join("abcdefgh"[: 1 + i % 8])
    put(f"{root}/base/usr/lib/pkg{i % 40}/{deep}/lib{i}.so", i % 4096)
# mid: 3,000 files of its own, 100 char 0/0 whiteouts over base files, and usr/share/d7
# made opaque (hides base's ~200 files there).
for i in range(3000):
    put(f"{root}/mid/usr/share/d{i % 50}/s{i % 9}/mid{i}", i % 2000)
for i in range(0, 1000, 10):
    d = f"{root}/mid/usr/share/d{i % 50}/s{i % 9}"
    os.makedirs(d, exist_ok=True)
    if i % 50 != 7:
        os.mknod(f"{d}/base{i}", 0o600 | 0o020000, 0)
os.setxattr(f"{root}/mid/usr/share/d7", "trusted.overlay.opaque", b"y")
# top: 2,500 new files and 500 replacing base files.
for i in range(2500):
    put(f"{root}/top/usr/share/d{i % 50}/s{i % 9}/top{i}", i % 2000)
for i in range(1, 1000, 2):
    put(f"{root}/top/usr/share/d{i % 50}/s{i % 9}/base{i}", 100)
EOF
  echo "writing the 1 GiB file"
  dd if=/dev/urandom of="$fixture/base/big" bs=1M count=1024 status=none
  sync
  echo "$fixture_version" > "$fixture/.done"
fi
lowers="$fixture/top:$fixture/mid:$fixture/base"

# ---- mounting --------------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/strata-bench.XXXXXX)
mnt="$tmp/m"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
  fi
  mountpoint -q "$mnt" 2>/dev/null || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mount_one() { # candidate -> mounted at $mnt (with a fresh upper and workdir if WITH_UPPER=1)
  rm -rf "$tmp/u" "$tmp/w"
  mkdir -p "$tmp/u" "$tmp/w" "$mnt"
  local o="lowerdir=$lowers"
  [ "$upper" = 1 ] && o="$o,upperdir=$tmp/u,workdir=$tmp/w"
  case "$1" in
    kernel) mount -t overlay overlay -o "$o" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "$o" "$mnt" ;;
    strata) "$strata" -o "$o" "$mnt" ;;
    *) echo "unknown candidate $1" >&2; return 1 ;;
  esac
}
unmount() {
  umount "$mnt" 2>/dev/null || { sleep 0.2; umount "$mnt"; }
}
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
walk() { find "$mnt" -printf '%i %s\n' > /dev/null; }
readbig() { dd if="$mnt/big" of=/dev/null bs=1M status=none; }
timeit() { local a b; a=$(now); "$@" || return; b=$(now); echo "$b - $a" | bc; }
gbps() { echo "scale=3; 1.073741824 / $1" | bc -l; }

suffix=""
[ "$upper" = 1 ] && suffix="-upper"
raw="$out/bench-read$suffix.tsv"
json="$out/bench-read$suffix.json"
: > "$raw"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$raw"; }

declare -A entries=() failed=()
for r in $(seq "$reps"); do
  for c in "${candidates[@]}"; do
    [ -n "${failed[$c]:-}" ] && continue
    echo "run $r/$reps: $c" >&2
    drop
    if ! t=$(timeit mount_one "$c"); then
      echo "  $c: mount FAILED; left out of this run" >&2
      failed[$c]=1
      continue
    fi
    record "$c" "mount (s)" "$t"
    t=$(timeit walk)
    record "$c" "stat walk cold (s)" "$t"
    t=$(timeit walk)
    record "$c" "stat walk warm (s)" "$t"
    drop
    t=$(timeit readbig)
    record "$c" "1 GiB read cold (GB/s)" "$(gbps "$t")"
    t=$(timeit readbig)
    record "$c" "1 GiB read warm (GB/s)" "$(gbps "$t")"
    # The candidates must show the same tree: count the entries once each.
    [ -n "${entries[$c]:-}" ] || entries[$c]=$(find "$mnt" | wc -l)
    unmount
  done
done

echo
echo "entries in the merged tree (must be equal):"
for c in "${candidates[@]}"; do echo "  $c: ${entries[$c]:-mount failed}"; done
uniq_counts=$(printf '%s\n' "${entries[@]}" | sort -u | wc -l)
if [ "$uniq_counts" -gt 1 ]; then echo "WARNING: the candidates disagree on the merged tree"; fi
echo

commit() { # the strata build measured: HEAD, plus "-dirty" when the sources differ from it
  local c
  c=$(git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git diff-index --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || c="$c-dirty"
  echo "$c"
}
meta=$(printf '{"date":"%s","kernel":"%s","strata_commit":"%s","fuse_overlayfs":"%s","reps":%s,"with_upper":%s,"fixture":"%s","cpus":%s}' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$(commit)" \
  "$(fuse-overlayfs --version 2>&1 | sed -n 's/^fuse-overlayfs: version //p' | head -1)" \
  "$reps" "$([ "$upper" = 1 ] && echo true || echo false)" "$fixture" "$(nproc)")
entries_json=$(for c in "${!entries[@]}"; do printf '"%s":%s\n' "$c" "${entries[$c]}"; done | paste -sd, -)
python3 - "$raw" "$json" "$meta" "{${entries_json}}" "${candidates[@]}" <<'EOF'
import json, statistics, sys
raw, out, meta, entries, cands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5:]
data = {}
for line in open(raw):
    c, w, v = line.rstrip("\n").split("\t")
    data.setdefault(w, {}).setdefault(c, []).append(float(v))
med = {w: {c: statistics.median(v) for c, v in per.items()} for w, per in data.items()}
json.dump({"meta": meta, "entries": entries, "raw": data, "median": med}, open(out, "w"), indent=1)
others = sorted((c for c in cands if c != "kernel"), key=lambda c: c != "strata")
print("| workload (median of %d) | " % meta["reps"] + " | ".join(cands) + " | "
      + " | ".join(f"{c} / kernel" for c in others) + " |")
print("|---" * (1 + len(cands) + len(others)) + "|")
for w, m in med.items():
    cells = [f"{m[c]:.3f}" if c in m else "-" for c in cands]
    ratios = [f"{m[c] / m['kernel']:.2f}x" if c in m and m.get("kernel") else "-" for c in others]
    print(f"| {w} | " + " | ".join(cells + ratios) + " |")
EOF
echo
echo "raw numbers: $raw and $json"
