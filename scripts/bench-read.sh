#!/usr/bin/env bash
# Read-path benchmark: kernel overlayfs, fuse-overlayfs and strata side by side, in one run,
# over the same layered tree (~20k files in 3 layers, with whiteouts and an opaque dir, plus a
# 1 GiB file). Cold runs drop the page cache first. Each measurement is repeated (REPS, default
# 3) interleaving the candidates; the table shows medians and the ratio to the kernel.
#
#   scripts/bench-read.sh [OUTDIR]      (root; results in OUTDIR, default target/bench)
#
# By default the stacks are read-only (lowers only: the read path). WITH_UPPER=1 mounts each
# with a fresh upper and workdir instead (strata then reads lower files through the daemon and
# the page cache, not passthrough: see README).
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
reps="${REPS:-3}"
out="${1:-target/bench}"
fixture="${STRATA_BENCH_FIXTURE:-/var/tmp/strata-bench-read}"
scripts/setup.sh >/dev/null
cargo build --release -q
strata="$PWD/target/release/strata"
mkdir -p "$out"

if [ ! -f "$fixture/.done" ]; then
  echo "building fixture in $fixture (once)"
  rm -rf "$fixture"
  mkdir -p "$fixture"/{base,mid,top}
  python3 - "$fixture" <<'EOF'
import os, sys
root = sys.argv[1]
def put(layer, i, n):
    d = f"{root}/{layer}/usr/share/d{i % 50}/s{i % 9}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/{layer}{i}", "w") as f:
        f.write("x" * (i % 2000))
for i in range(14000): put("base", i, 14000)
for i in range(3000): put("mid", i, 3000)
for i in range(3000): put("top", i, 3000)
# whiteouts and an opaque directory in the middle layer
for i in range(0, 1000, 10):
    d = f"{root}/mid/usr/share/d{i % 50}/s{i % 9}"
    os.makedirs(d, exist_ok=True)
    os.mknod(f"{d}/base{i}", 0o600 | 0o020000, 0)
os.makedirs(f"{root}/mid/usr/share/d7", exist_ok=True)
os.setxattr(f"{root}/mid/usr/share/d7", "trusted.overlay.opaque", b"y")
EOF
  dd if=/dev/urandom of="$fixture/base/big" bs=1M count=1024 status=none
  touch "$fixture/.done"
fi
lowers="$fixture/top:$fixture/mid:$fixture/base"

mnt=$(mktemp -d /tmp/strata-bench.XXXXXX)
cleanup() { mountpoint -q "$mnt/m" 2>/dev/null && umount "$mnt/m"; rm -rf "$mnt"; }
trap cleanup EXIT

mount_one() { # candidate -> mounts at $mnt/m (with a fresh upper if WITH_UPPER=1)
  rm -rf "$mnt/u" "$mnt/w"; mkdir -p "$mnt/u" "$mnt/w" "$mnt/m"
  local o="lowerdir=$lowers"
  [ "${WITH_UPPER:-0}" = 1 ] && o="$o,upperdir=$mnt/u,workdir=$mnt/w"
  case "$1" in
    kernel) mount -t overlay overlay -o "$o" "$mnt/m" ;;
    fuse-overlayfs) fuse-overlayfs -o "$o" "$mnt/m" 2>/dev/null ;;
    strata) "$strata" -o "$o" "$mnt/m" ;;
  esac
}
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
walk() { find "$mnt/m" -printf '%i %s\n' > /dev/null; }
timeit() { local a b; a=$(now); "$@"; b=$(now); echo "$b - $a" | bc; }

results="$out/bench-read${WITH_UPPER:+-upper}.tsv"
: > "$results"
candidates=(kernel fuse-overlayfs strata)
for r in $(seq "$reps"); do
  for c in "${candidates[@]}"; do
    echo "run $r/$reps: $c" >&2
    drop
    t=$(timeit mount_one "$c"); echo -e "$c\tmount\t$t" >> "$results"
    t=$(timeit walk); echo -e "$c\tstat walk cold (s)\t$t" >> "$results"
    t=$(timeit walk); echo -e "$c\tstat walk warm (s)\t$t" >> "$results"
    drop
    t=$(timeit dd if="$mnt/m/big" of=/dev/null bs=1M status=none)
    echo -e "$c\t1 GiB read cold (GB/s)\t$(echo "1.073741824 / $t" | bc -l)" >> "$results"
    t=$(timeit dd if="$mnt/m/big" of=/dev/null bs=1M status=none)
    echo -e "$c\t1 GiB read warm (GB/s)\t$(echo "1.073741824 / $t" | bc -l)" >> "$results"
    umount "$mnt/m"
  done
done

python3 - "$results" "${results%.tsv}.json" <<'EOF'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
for c, w, v in rows:
    data.setdefault(w, {}).setdefault(c, []).append(float(v))
json.dump(data, open(sys.argv[2], "w"), indent=1)
cands = ["kernel", "fuse-overlayfs", "strata"]
print("| workload | " + " | ".join(cands) + " | strata / kernel | fuse-overlayfs / kernel |")
print("|---|" + "---|" * (len(cands) + 2))
for w, per in data.items():
    med = {c: statistics.median(per[c]) for c in cands if c in per}
    cells = [f"{med[c]:.3f}" if c in med else "-" for c in cands]
    ratio = lambda c: f"{med[c] / med['kernel']:.2f}x" if c in med and med.get("kernel") else "-"
    print(f"| {w} | " + " | ".join(cells) + f" | {ratio('strata')} | {ratio('fuse-overlayfs')} |")
EOF
echo "raw: $results, ${results%.tsv}.json"
