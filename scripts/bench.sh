#!/usr/bin/env bash
# The union-filesystem benchmark: strata, kernel overlayfs and fuse-overlayfs (and any other
# program with fuse-overlayfs's command line) over the same layered fixture, in one run,
# interleaved and repeated, each workload on a freshly mounted, empty upper layer.
#
#   scripts/bench.sh [--quick] [--reps N] [--only W1,W2,...] [--out DIR] [--list]   (as root)
#
#   --quick       small fixture (~7k entries, 64 MiB big file), 1 rep: a smoke test, not numbers
#   --dirs        the directory-heavy fixture (~13k directories in ~75k entries, node_modules
#                 style) and the metadata workloads that run on it (walks, readdir, create,
#                 untar, rm, parallel, rss, mount)
#   --reps N      repetitions of every measurement (default 3; REPS=N works too)
#   --only LIST   a subset of the workloads, comma-separated (see --list)
#   --out DIR     where results go (default bench-results/)
#   --list        list the workloads and exit
#
# Environment:
#   CANDIDATES="kernel fuse-overlayfs strata"   the default; a name is a program on PATH or a
#                 path (taking `-o lowerdir=..,upperdir=..,workdir=.. MNT`), LABEL=PATH names one;
#                 strata-lower is strata with -o passthrough=lower; fuse-overlayfs2 on PATH
#                 (fuse-overlayfs 2.0) is added to the default as fo2
#   STRATA=PATH   the strata binary to measure (default: a release build of this checkout)
#   STRATA_BENCH_DIR=/var/tmp   where the fixture is cached (strata-bench-vN-full|quick) and
#                 the mounts are made; it must be a real disk filesystem (the upper goes there)
#
# Output in DIR: results.md (the table of medians with ratios to kernel overlayfs), results.json
# (every rep of every measurement, medians, and the run's details), ratios.svg and ratios.png
# (each candidate's cost relative to the kernel per workload), raw.jsonl, and the log.
# The README's "Benchmarks" section says what each workload measures.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C PYTHONDONTWRITEBYTECODE=1
repo=$PWD

# ---- workloads: id -> one line of description ------------------------------------------------
workloads=(mount walk walk-ro readdir seqread seqread-ro randread copyup-big copyup-small chmod chown
  create untar rm sha256 parallel rss)
declare -A about=(
  [mount]="time for the mount command to return with the mount live"
  [walk]="stat of every entry (find -printf '%i %s'), caches dropped, then again warm"
  [walk-ro]="the same on a mount of the lower layers only (no upper)"
  [readdir]="ls -f and ls -l of the 10k-entry directory spread over the layers, cold and warm"
  [seqread]="dd bs=1M of the big lower file, cold and warm (GB/s)"
  [seqread-ro]="the same on a mount of the lower layers only (no upper; FUSE passthrough territory)"
  [randread]="fio 4k random reads of the big lower file from cold caches, 1 job and 4 jobs (IOPS)"
  [copyup-big]="open O_WRONLY + write 1 byte + fsync + close on the big lower file, then sync"
  [copyup-small]="first write of 1 byte to 10k small lower files, then sync"
  [chmod]="chmod -R over the tree of large lower files, then sync"
  [chown]="chown -R over the tree of large lower files, then sync"
  [create]="create and write 10k new 1000-byte files in 100 new directories"
  [untar]="tar -x of a 20k-file tarball into the mount"
  [rm]="rm -rf of a lower subtree spread over the layers (whiteouts)"
  [sha256]="find -type f | xargs sha256sum over usr/share (~23k small files), cold"
  [parallel]="two cold walks of disjoint halves one after the other, then concurrently"
  [rss]="daemon VmRSS after mount, after a walk of the whole tree, after the kernel forgets inodes"
)

reps="${REPS:-3}"
out=bench-results
only=""
scale=full
while (($#)); do
  case "$1" in
    --quick) scale=quick; reps="${REPS:-1}" ;;
    --dirs) scale=dirs ;;
    --reps) reps="${2:?--reps needs a number}"; shift ;;
    --reps=*) reps="${1#*=}" ;;
    --only) only="${2:?--only needs a list}"; shift ;;
    --only=*) only="${1#*=}" ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --out=*) out="${1#*=}" ;;
    --list) for w in "${workloads[@]}"; do printf '%-13s %s\n' "$w" "${about[$w]}"; done; exit 0 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --reps wants a positive number, not '$reps'" >&2; exit 2; }
# The directory-heavy fixture has no large files: the data workloads do not run on it.
dirs_workloads=" mount walk walk-ro readdir create untar rm parallel rss "
if [ "$scale" = dirs ]; then
  [ -n "$only" ] || only=$(tr ' ' '\n' <<< "$dirs_workloads" | grep . | paste -sd,)
fi
if [ -n "$only" ]; then
  IFS=, read -r -a chosen <<< "$only"
  for w in "${chosen[@]}"; do
    [ -n "${about[$w]:-}" ] || { echo "bench.sh: unknown workload '$w' (--list shows them)" >&2; exit 2; }
    [ "$scale" != dirs ] || [[ "$dirs_workloads" == *" $w "* ]] ||
      { echo "bench.sh: workload '$w' does not run on the --dirs fixture" >&2; exit 2; }
  done
  workloads=("${chosen[@]}")
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: needs root (kernel overlay mounts, dropping caches, whiteout devices)" >&2
  exit 1
fi

say() { printf '%s\n' "$*" >&2; }
say "== bench.sh: setup (scripts/setup.sh) and a release build of strata"
scripts/setup.sh > /dev/null
strata_note=" (${STRATA:-})"
if [ -z "${STRATA:-}" ]; then
  cargo build --release -q
  STRATA="$repo/target/release/strata"
  strata_note=""
fi

# ---- candidates: label -> program ("kernel" is the kernel's overlay) -------------------------
# fuse-overlayfs 2.0 (the Rust rewrite) joins the default run when it is on PATH as
# fuse-overlayfs2 (build it from github.com/containers/fuse-overlayfs, outside this tree).
default_candidates="kernel fuse-overlayfs strata"
command -v fuse-overlayfs2 > /dev/null && default_candidates="kernel fuse-overlayfs fo2=fuse-overlayfs2 strata"
read -r -a cand_args <<< "${CANDIDATES:-$default_candidates}"
declare -A prog=() extra=()
candidates=()
for a in "${cand_args[@]}"; do
  label="${a%%=*}" bin="${a#*=}"
  case "$label" in
    kernel) bin=kernel ;;
    strata) [ "$a" = strata ] && bin="$STRATA" ;;
    # strata with -o passthrough=lower (lower files read through FUSE passthrough, see README)
    strata-lower) [ "$a" = strata-lower ] && bin="$STRATA"; extra[$label]=",passthrough=lower" ;;
    *) [ "$a" = "$label" ] && label=$(basename "$a") ;;
  esac
  if [ "$bin" != kernel ] && ! bin=$(command -v "$bin"); then
    echo "bench.sh: candidate '$a': no such program" >&2
    exit 2
  fi
  prog[$label]="$bin"
  candidates+=("$label")
done

# ---- the fixture, built once per version and scale ------------------------------------------
fixture_version=3 # bump when bench_tool.py's layout changes
base_dir="${STRATA_BENCH_DIR:-/var/tmp}"
fixture="$base_dir/strata-bench-v$fixture_version-$scale"
if [ ! -e "$fixture/.done" ]; then
  say "== building the $scale fixture in $fixture (once; later runs reuse it)"
  rm -rf "$fixture" "$fixture.tmp"
  python3 scripts/bench_tool.py fixture "$fixture.tmp" "$scale"
  sync
  date -u +%Y-%m-%dT%H:%M:%SZ > "$fixture.tmp/.done"
  mv "$fixture.tmp" "$fixture"
fi
lowers="$fixture/top:$fixture/mid:$fixture/base"
big_bytes=$(stat -c %s "$fixture/base/big.img" 2>/dev/null || echo 0)
small_list="$fixture/lists/copyup-small.txt"

# ---- run directory, cleanup -----------------------------------------------------------------
mkdir -p "$out"
out=$(cd "$out" && pwd)
run=$(mktemp -d "$base_dir/strata-bench-run.XXXXXX")
mnt="$run/m"
raw="$out/raw.jsonl"
log="$out/bench.log"
: > "$raw"
: > "$log"

unmount() { # unmount $mnt, retrying while busy; lazily as a last resort
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    mountpoint -q "$mnt" 2>/dev/null || return 0
    umount "$mnt" 2>/dev/null && return 0
    sleep 0.3
  done
  mountpoint -q "$mnt" 2>/dev/null || return 0
  umount -l "$mnt"
}
stop_daemon() { # a foreground daemon we started (rss workload), once its mount is gone
  local pid i
  [ -f "$run/daemon.pid" ] || return 0
  pid=$(cat "$run/daemon.pid")
  rm -f "$run/daemon.pid"
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
}
cleanup() {
  local st=$?
  unmount || true
  stop_daemon
  if mountpoint -q "$mnt" 2>/dev/null; then
    say "bench.sh: could not unmount $mnt; left $run"
  else
    rm -rf "$run"
  fi
  exit "$st"
}
trap cleanup EXIT
trap 'say "bench.sh: interrupted"; exit 130' INT TERM HUP

# ---- measuring --------------------------------------------------------------------------------
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now_us() { echo "${EPOCHREALTIME/./}"; }
secs() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }
# timed CMD...: runs CMD, sets $elapsed (seconds); fails if CMD fails
timed() {
  local t0 t1
  t0=$(now_us)
  "$@"
  t1=$(now_us)
  elapsed=$(secs $((t1 - t0)))
}
# rec METRIC VALUE: one measurement of the current candidate and rep
rec() {
  printf '{"rep":%d,"candidate":"%s","workload":"%s","metric":"%s","value":%s}\n' \
    "$rep" "$cand" "$wl" "$1" "$2" >> "$raw"
  printf '  %-16s %-44s %s\n' "$cand" "$1" "$2" >&2
}
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

# mount_cand [ro]: mount the current candidate at $mnt over a fresh, empty upper (or lowers only)
mount_cand() {
  local o="lowerdir=$lowers"
  rm -rf "$run/u" "$run/w"
  mkdir -p "$run/u" "$run/w" "$mnt"
  [ "${1:-}" = ro ] || o="$o,upperdir=$run/u,workdir=$run/w"
  if [ "$cand" = kernel ]; then
    [ "${1:-}" = ro ] || o="$o,redirect_dir=on,index=on"
    mount -t overlay overlay -o "$o" "$mnt"
  else
    "${prog[$cand]}" -o "$o${extra[$cand]:-}" "$mnt" >> "$log" 2>&1
  fi
  mountpoint -q "$mnt"
}
# mount_fg: the FUSE daemon in the foreground, in the background of this shell: its pid is $daemon
mount_fg() {
  local i
  rm -rf "$run/u" "$run/w"
  mkdir -p "$run/u" "$run/w" "$mnt"
  "${prog[$cand]}" -f -o "lowerdir=$lowers,upperdir=$run/u,workdir=$run/w${extra[$cand]:-}" "$mnt" >> "$log" 2>&1 &
  daemon=$!
  echo "$daemon" > "$run/daemon.pid"
  for i in $(seq 200); do
    mountpoint -q "$mnt" && return 0
    kill -0 "$daemon" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
umount_cand() { unmount; }

walk() { find "$1" -printf '%i %s\n' | wc -l; }
# The timed steps of the write workloads. Kernel overlayfs fsyncs every file it copies up, so
# copy-ups are timed until durable (sync) for everyone.
first_write_big() { printf x | dd of="$mnt/big.img" bs=1 count=1 conv=notrunc,fsync status=none; sync; }
first_write_small() { python3 scripts/bench_tool.py write-each "$mnt" "$small_list"; sync; }
chmod_large() { chmod -R g+w "$mnt/opt/large"; sync; }
chown_large() { chown -R 1000:1000 "$mnt/opt/large"; sync; }
sha_tree() { find "$mnt/usr/share" -type f -print0 | xargs -0 -n 2000 sha256sum > /dev/null; }
two_walks() {
  local p
  walk "$mnt/usr/share" > /dev/null &
  p=$!
  walk "$mnt/usr/lib" > /dev/null
  wait "$p"
}

# ---- the workloads (each runs in a subshell with set -e; $cand, $rep, $wl are set) -----------
wl_mount() {
  drop
  timed mount_cand
  rec "mount (s)" "$elapsed"
  umount_cand
}
stat_walk() { # stat_walk [ro]
  local sfx=""
  [ "${1:-}" = ro ] && sfx=", lowers only"
  drop
  mount_cand "${1:-}"
  timed walk "$mnt" > "$run/count"
  rec "stat walk cold$sfx (s)" "$elapsed"
  timed walk "$mnt" > /dev/null
  rec "stat walk warm$sfx (s)" "$elapsed"
  rec "entries in the merged tree (count)" "$(cat "$run/count")"
  umount_cand
}
wl_walk() { stat_walk; }
wl_walk-ro() { stat_walk ro; }
ls_times() { # ls_times FLAG LABEL: cold once, then warm as the mean of 5
  local dir="$mnt/usr/share/dir10k" i t0 t1
  drop
  mount_cand
  timed ls "$1" "$dir" > /dev/null
  rec "$2 cold (s)" "$elapsed"
  t0=$(now_us)
  for i in 1 2 3 4 5; do ls "$1" "$dir" > /dev/null; done
  t1=$(now_us)
  rec "$2 warm (s)" "$(secs $(((t1 - t0) / 5)))"
  [ "$1" != -f ] || rec "entries in dir10k (count)" "$(find "$dir" -mindepth 1 -maxdepth 1 | wc -l)"
  umount_cand
}
wl_readdir() {
  ls_times -f "readdir 10k: ls -f"
  ls_times -l "readdir+stat 10k: ls -l"
}
seq_read() { # seq_read [ro]
  local sfx=""
  [ "${1:-}" = ro ] && sfx=", lowers only"
  drop
  mount_cand "${1:-}"
  timed dd if="$mnt/big.img" of=/dev/null bs=1M status=none
  rec "seq read cold$sfx (GB/s)" "$(calc "$big_bytes / 1e9 / $elapsed")"
  timed dd if="$mnt/big.img" of=/dev/null bs=1M status=none
  rec "seq read warm$sfx (GB/s)" "$(calc "$big_bytes / 1e9 / $elapsed")"
  umount_cand
}
wl_seqread() { seq_read; }
wl_seqread-ro() { seq_read ro; }
fio_run() { # fio_run JOBS -> IOPS
  fio --name=randread --filename="$mnt/big.img" --readonly --rw=randread --bs=4k \
    --ioengine=psync --numjobs="$1" --group_reporting --time_based --runtime="$fio_runtime" \
    --output-format=json > "$run/fio.json" 2>> "$log"
  python3 scripts/bench_tool.py fio-iops "$run/fio.json"
}
wl_randread() {
  local one four
  drop
  mount_cand
  one=$(fio_run 1)
  rec "randread 4k, 1 job (IOPS)" "$one"
  umount_cand
  drop
  mount_cand
  four=$(fio_run 4)
  rec "randread 4k, 4 jobs (IOPS)" "$four"
  rec "randread scaling, 4 jobs / 1 (x)" "$(calc "$four / $one")"
  umount_cand
}
wl_copyup-big() {
  drop
  cat "$fixture/base/big.img" > /dev/null # the source warm: measure the copy, not the disk
  mount_cand
  timed first_write_big
  rec "copy-up big file, 1-byte write (s)" "$elapsed"
  umount_cand
}
wl_copyup-small() {
  drop
  mount_cand
  timed first_write_small
  rec "copy-up 10k small files (s)" "$elapsed"
  umount_cand
}
wl_chmod() {
  drop
  mount_cand
  timed chmod_large
  rec "chmod -R large files (s)" "$elapsed"
  umount_cand
}
wl_chown() {
  drop
  mount_cand
  timed chown_large
  rec "chown -R large files (s)" "$elapsed"
  umount_cand
}
wl_create() {
  drop
  mount_cand
  mkdir "$mnt/new"
  timed python3 scripts/bench_tool.py create "$mnt/new" "$n_create"
  rec "create+write 10k files (s)" "$elapsed"
  umount_cand
}
wl_untar() {
  drop
  cat "$fixture/untar.tar" > /dev/null
  mount_cand
  mkdir "$mnt/untar"
  timed tar -xf "$fixture/untar.tar" -C "$mnt/untar"
  rec "untar 20k files (s)" "$elapsed"
  umount_cand
}
wl_rm() {
  drop
  mount_cand
  timed rm -rf "$mnt/var/lib/rmtree"
  rec "rm -rf lower subtree (s)" "$elapsed"
  [ ! -e "$mnt/var/lib/rmtree" ]
  umount_cand
}
wl_sha256() {
  drop
  mount_cand
  timed sha_tree
  rec "sha256sum small files cold (s)" "$elapsed"
  umount_cand
}
wl_parallel() {
  local a b
  drop
  mount_cand
  timed walk "$mnt/usr/share" > /dev/null
  a=$elapsed
  timed walk "$mnt/usr/lib" > /dev/null
  b=$elapsed
  rec "2 walks one after the other, cold (s)" "$(calc "$a + $b")"
  umount_cand
  drop
  mount_cand
  timed two_walks
  rec "2 walks concurrently, cold (s)" "$elapsed"
  rec "walk scaling, 2 concurrent (x)" "$(calc "($a + $b) / $elapsed")"
  umount_cand
}
wl_rss() {
  [ "$cand" != kernel ] || return 0
  drop
  mount_fg
  rec "daemon RSS after mount (MiB)" "$(python3 scripts/bench_tool.py rss "$daemon")"
  walk "$mnt" > /dev/null
  rec "daemon RSS after full walk (MiB)" "$(python3 scripts/bench_tool.py rss "$daemon")"
  sync
  echo 2 > /proc/sys/vm/drop_caches # the kernel forgets dentries and inodes: FORGETs
  sleep 1
  rec "daemon RSS after forget (MiB)" "$(python3 scripts/bench_tool.py rss "$daemon")"
  umount_cand
  wait "$daemon" || true
  rm -f "$run/daemon.pid"
}

if [ "$scale" = quick ]; then fio_runtime=1; n_create=1000; else fio_runtime=3; n_create=10000; fi

# ---- the run ------------------------------------------------------------------------------------
commit() { # the strata build measured: HEAD, plus "-dirty" when the sources differ from it
  local c
  c=$(git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git diff-index --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || c="$c-dirty"
  echo "$c"
}
real_root=false
# The initial user namespace maps every id to itself; passthrough needs CAP_SYS_ADMIN there.
if [ "$(awk '{print $1, $2, $3}' /proc/self/uid_map)" = "0 0 4294967295" ]; then real_root=true; fi
versions=""
for c in "${candidates[@]}"; do
  case "$c" in
    kernel) v="overlay, Linux $(uname -r)" ;;
    strata) v="strata $(commit)$strata_note" ;;
    *)
      v=$("${prog[$c]}" --version 2>&1 || true)
      v=$(grep -i -m1 "$(basename "${prog[$c]}").*version" <<< "$v" || grep -i -m1 version <<< "$v" || head -1 <<< "$v")
      ;;
  esac
  versions+="$c=$v"$'\n'
done
started=$SECONDS
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "== $((${#workloads[@]})) workloads x ${#candidates[@]} candidates x $reps reps; fixture $fixture"
say "   candidates: ${candidates[*]}; strata as real root (FUSE passthrough possible): $real_root"
say "   load average at start: $load_at_start (other load makes numbers noisy)"
failures=0
for rep in $(seq "$reps"); do
  # Rotate the candidates' order every rep so none always runs first.
  order=()
  for i in "${!candidates[@]}"; do
    order+=("${candidates[$(((i + rep - 1) % ${#candidates[@]}))]}")
  done
  for wl in "${workloads[@]}"; do
    say "-- rep $rep/$reps: $wl ($((SECONDS - started)) s)"
    for cand in "${order[@]}"; do
      printf '== rep %s %s %s\n' "$rep" "$wl" "$cand" >> "$log"
      set +e
      (
        set -e
        "wl_$wl"
      )
      st=$?
      set -e
      if ((st != 0)); then
        ((st == 130)) && exit 130
        say "  $cand: $wl FAILED (exit $st; see $log)"
        printf '%s %s rep %s: FAILED (exit %s)\n' "$cand" "$wl" "$rep" "$st" >> "$log"
        failures=$((failures + 1))
      fi
      unmount
      stop_daemon
    done
  done
done
elapsed_total=$((SECONDS - started))
say "== done in $elapsed_total s"

python3 scripts/bench_report.py --raw "$raw" --out "$out" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --meta "kernel=$(uname -r)" \
  --meta "cpus=$(nproc)" \
  --meta "strata_commit=$(commit)" \
  --meta "strata_real_root=$real_root" \
  --meta "scale=$scale" \
  --meta "reps=$reps" \
  --meta "fixture=$fixture" \
  --meta "big_file_bytes=$big_bytes" \
  --meta "seconds=$elapsed_total" \
  --meta "failures=$failures" \
  --meta "load_at_start=$load_at_start" \
  --meta "load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --meta "versions=$versions" \
  --candidates "${candidates[*]}"
say "results: $out/results.md, $out/results.json, $out/ratios.svg (raw: $out/raw.jsonl, log: $out/bench.log)"
