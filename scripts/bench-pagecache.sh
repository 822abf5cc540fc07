#!/usr/bin/env bash
# Many containers on one image: page cache growth when N writable mounts of the same lower
# layer each read the same file, and sequential read speed of that lower file under an upper.
# Candidates side by side in one run: kernel overlayfs, fuse-overlayfs, strata (exact default)
# and strata with passthrough=lower.
#
#   scripts/bench-pagecache.sh [--size MIB] [--mounts "1 4 8"] [--reps N] [--out DIR]
#   STRATA=target/release/strata scripts/bench-pagecache.sh
#
# Needs root (drop_caches, mounts; passthrough needs real root). Writes DIR/results.md (the
# table, with the load average), DIR/results.csv and, with gnuplot, DIR/pagecache.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

size=256 mounts="1 4 8" reps=3 out=docs/bench-pagecache
while (($#)); do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --mounts) mounts=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "bench-pagecache.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-pagecache.sh: needs root (drop_caches and mounts)" >&2; exit 2; }
if [ -z "${STRATA:-}" ]; then
  cargo build --release --quiet
  STRATA=$PWD/target/release/strata
fi
cands=(kernel strata strata-lower)
command -v fuse-overlayfs > /dev/null && cands=(kernel fuse-overlayfs strata strata-lower)

work=$(mktemp -d /var/tmp/strata-bench-pc.XXXXXX)
mnts=()
cleanup() {
  for m in "${mnts[@]}"; do umount "$m" 2> /dev/null || umount -l "$m" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/lower" "$out"
head -c "$((size << 20))" /dev/urandom > "$work/lower/img"

# mount_one CAND I: a writable mount of the lower over a fresh upper; its path in $mnt.
mount_one() {
  local c=$1 i=$2 d="$work/$1.$2"
  mkdir -p "$d/u" "$d/w" "$d/m"
  case "$c" in
    kernel) mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    strata) "$STRATA" -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w" "$d/m" ;;
    strata-lower) "$STRATA" -o "lowerdir=$work/lower,upperdir=$d/u,workdir=$d/w,passthrough=lower" "$d/m" ;;
  esac
  mnts+=("$d/m")
  mnt=$d/m
}

umount_all() {
  for m in "${mnts[@]}"; do umount "$m"; done
  mnts=()
  rm -rf "$work"/*.*
}

cached_kib() { awk '/^Cached:/ {print $2}' /proc/meminfo; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

csv="$out/results.csv"
echo "rep,candidate,metric,value" > "$csv"
rec() { echo "$1,$2,$3,$4" >> "$csv"; echo "  rep $1 $2: $3 = $4"; }

for rep in $(seq 1 "$reps"); do
  for c in "${cands[@]}"; do
    for n in $mounts; do
      ms=()
      for i in $(seq 1 "$n"); do mount_one "$c" "$i"; ms+=("$mnt"); done
      drop
      before=$(cached_kib)
      for m in "${ms[@]}"; do cat "$m/img" > /dev/null; done
      after=$(cached_kib)
      rec "$rep" "$c" "page cache growth $n mounts (MiB)" "$(((after - before) / 1024))"
      umount_all
    done
    mount_one "$c" 1
    m=$mnt
    drop
    t0=$(now); cat "$m/img" > /dev/null; t1=$(now); cat "$m/img" > /dev/null; t2=$(now)
    rec "$rep" "$c" "seq read cold (s)" "$(echo "$t1 - $t0" | bc -l | sed 's/^\./0./')"
    rec "$rep" "$c" "seq read warm (s)" "$(echo "$t2 - $t1" | bc -l | sed 's/^\./0./')"
    umount_all
  done
done

python3 - "$csv" "$out" "$size" "$(cut -d' ' -f1-3 /proc/loadavg)" "${cands[*]}" << 'EOF'
import csv, statistics, sys, subprocess, shutil
path, out, size, load, cands = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()
rows = list(csv.DictReader(open(path)))
metrics = list(dict.fromkeys(r["metric"] for r in rows))
med = {(m, c): statistics.median(float(r["value"]) for r in rows if r["metric"] == m and r["candidate"] == c)
       for m in metrics for c in cands}
with open(f"{out}/results.md", "w") as f:
    f.write(f"# Page cache and sequential reads with an upper ({size} MiB lower file)\n\n")
    f.write(f"Medians of {len(set(r['rep'] for r in rows))} reps; load average at the end: {load}. "
            "Ratios to kernel overlayfs in parentheses.\n\n")
    f.write("| metric | " + " | ".join(cands) + " |\n|---|" + "---|" * len(cands) + "\n")
    for m in metrics:
        k = med[(m, "kernel")]
        cells = []
        for c in cands:
            v = med[(m, c)]
            cells.append(f"{v:.4g}" + (f" ({v / k:.2f}x)" if c != "kernel" and k else ""))
        f.write(f"| {m} | " + " | ".join(cells) + " |\n")
print(open(f"{out}/results.md").read())
if shutil.which("gnuplot"):
    pc = [m for m in metrics if m.startswith("page cache")]
    dat = f"{out}/pagecache.dat"
    with open(dat, "w") as f:
        f.write("mounts " + " ".join(cands) + "\n")
        for m in pc:
            n = m.split()[3]
            f.write(n + " " + " ".join(str(med[(m, c)]) for c in cands) + "\n")
    plot = ", ".join(f"'{dat}' using {i + 2}:xtic(1) title '{c}'" for i, c in enumerate(cands))
    subprocess.run(["gnuplot", "-e",
                    f"set terminal svg size 720,400; set output '{out}/pagecache.svg'; "
                    "set style data histograms; set style fill solid; set key left; "
                    f"set ylabel 'page cache growth (MiB)'; set xlabel 'mounts reading one {size} MiB file'; "
                    f"plot {plot}"], check=False)
EOF
