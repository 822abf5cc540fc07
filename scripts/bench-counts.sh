#!/usr/bin/env bash
# FUSE requests per operation: each workload on a fresh strata mount (over an empty upper,
# caches dropped), with STRATA_OP_COUNTS collecting the daemon's per-opcode counters. A warm
# workload is counted as (its warm-up + it) minus (the warm-up alone).
#
#   scripts/bench-counts.sh [FIXTURE_DIR]   (as root; default: bench.sh's --dirs fixture)
#
# Environment: STRATA=PATH (default target/release/strata of this checkout).
# Prints a markdown table: one column per workload, one row per opcode.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
fixture="${1:-${STRATA_BENCH_DIR:-/var/tmp}/strata-bench-v3-dirs}"
strata="${STRATA:-$PWD/target/release/strata}"
[ -e "$fixture/.done" ] || { echo "bench-counts.sh: no fixture in $fixture (run scripts/bench.sh --dirs once)" >&2; exit 1; }
run=$(mktemp -d /var/tmp/strata-counts.XXXXXX)
mnt="$run/m"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  rm -rf "$run"
}
trap cleanup EXIT

# counted FILE CMD: CMD on a fresh mount; the counts table goes to FILE
counted() {
  local file=$1 i
  shift
  rm -rf "$run/u" "$run/w" "$file"
  mkdir -p "$run/u" "$run/w" "$mnt"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  STRATA_OP_COUNTS="$file" "$strata" -o "lowerdir=$fixture/top:$fixture/mid:$fixture/base,upperdir=$run/u,workdir=$run/w" "$mnt"
  (cd "$mnt" && eval "$*") > /dev/null
  umount "$mnt"
  for i in $(seq 50); do [ -s "$file" ] && return 0; sleep 0.1; done
  echo "bench-counts.sh: no counts written to $file" >&2
  return 1
}
# measure NAME WARMUP OP: the requests of OP after WARMUP
declare -a names=()
measure() {
  counted "$run/$1.a" "$2"
  counted "$run/$1.b" "$2; $3"
  names+=("$1")
}
measure "find warm" "find . >/dev/null" "find ."
measure "stat walk warm" "find . -printf '%s %i\n' >/dev/null" "find . -printf '%s %i\n'"
measure "ls -lU 10k warm" "ls -lU usr/share/dir10k >/dev/null" "ls -lU usr/share/dir10k"
measure "untar 20k" "mkdir untar" "tar -xf $fixture/untar.tar -C untar"
measure "create 10k" "mkdir new" "python3 $OLDPWD/scripts/bench_tool.py create new 10000"
measure "rm -rf lower" "true" "rm -rf usr/lib/node_modules"
python3 - "$run" "${names[@]}" << 'EOF'
import sys
run, names = sys.argv[1], sys.argv[2:]
def load(path):
    counts = {}
    for line in open(path).read().splitlines()[1:]:
        op, n = line.split()
        counts[op] = int(n)
    return counts
cols = []
for n in names:
    a, b = load(f"{run}/{n}.a"), load(f"{run}/{n}.b")
    cols.append({op: b.get(op, 0) - a.get(op, 0) for op in b})
ops = sorted({op for c in cols for op in c if op != "total"}, key=lambda o: -sum(c.get(o, 0) for c in cols))
print("| request | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for op in ops + ["total"]:
    print(f"| {op} | " + " | ".join(f"{c.get(op, 0):,}" for c in cols) + " |")
EOF
