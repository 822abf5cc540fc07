#!/usr/bin/env bash
# The soak and stress suite (issue 18): figures, not timed assertions. Needs root and /dev/fuse.
#
#   scripts/stress.sh           full: 1M lookups/creates/unlinks, a 100k-file walk x3 with
#                               drop_caches between, one directory of 1M entries listed, 8 writers for STRESS_MINUTES (default 5),
#                               concurrent `strata run` while images come and go, 10,000
#                               differential sequences (release), 10 min per fuzz target
#   scripts/stress.sh --quick   the same at small sizes (well under 2 minutes, debug build)
#
#   STRATA=PATH            the binary (default: target/debug/strata quick, target/release full)
#   STRESS_MINUTES=N       how long the 8 writers run in the full form
#   STRESS_DIR=/var/tmp    where the layers, uppers and mounts go (a real disk filesystem)
#   STRESS_OPS, STRESS_WALK, STRESS_BIGDIR, STRESS_CASES, STRESS_FUZZ_SECS   override the
#                          sizes (STRESS_CASES=0: no differential run; STRESS_FUZZ_SECS=0: no fuzzing)
#
# Prints one table row per phase: what ran, how much, the result, the daemon's peak and final
# RSS and open fds. Exits non-zero if any phase failed (a hang, a tree that differs from kernel
# overlayfs over the same upper, a failed container, a failed test, a fuzz crash).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "stress.sh: unknown argument '$arg' (only --quick)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ]; then
  echo "SKIP stress: needs root and /dev/fuse"
  exit 0
fi
if ((quick)); then
  OPS=10000 WALK=5000 WALKS=3 BIGDIR=20000 WRITER_SECS=5 RUNS=6 CASES=20 FUZZ_SECS=0 profile=debug
else
  OPS=1000000 WALK=100000 WALKS=3 BIGDIR=1000000 WRITER_SECS=$((${STRESS_MINUTES:-5} * 60)) RUNS=200 CASES=10000
  FUZZ_SECS=600 profile=release
fi
OPS=${STRESS_OPS:-$OPS} WALK=${STRESS_WALK:-$WALK} CASES=${STRESS_CASES:-$CASES} BIGDIR=${STRESS_BIGDIR:-$BIGDIR}
FUZZ_SECS=${STRESS_FUZZ_SECS:-$FUZZ_SECS}
if [ -z "${STRATA:-}" ]; then
  if [ "$profile" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
  STRATA="$PWD/target/$profile/strata"
fi
work=$(mktemp -d "${STRESS_DIR:-/var/tmp}/strata-stress.XXXXXX")
mounts=()
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
# STRESS_KEEP=1 keeps the work directory (logs, trees) for a look after a failure.
[ -n "${STRESS_KEEP:-}" ] && trap 'for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; echo "kept $work"' EXIT
rows=()
status=0
row() { rows+=("$(printf '%-34s %-28s %-8s %10s %10s %5s' "$@")"); }
fail() { status=1; echo "stress: FAILED: $*" >&2; }

# strata mount -f in the background; sets $daemon.
mount_strata() {
  local mnt=$1; shift
  mkdir -p "$mnt"
  "$STRATA" mount -f "$@" "$mnt" 2> "$mnt.log" &
  daemon=$!
  pids+=("$daemon")
  mounts+=("$mnt")
  for _ in $(seq 100); do mountpoint -q "$mnt" && return 0; sleep 0.1; done
  echo "strata did not mount $mnt: $(cat "$mnt.log")" >&2
  return 1
}
unmount_strata() {
  umount "$1"
  wait "$daemon" 2>/dev/null || true
}

# Samples the daemon's VmRSS (kB) and fd count every 0.2 s into FILE until the daemon is gone.
sample() {
  local pid=$1 out=$2
  while [ -d "/proc/$pid" ]; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "${rss:-0} $fds" >> "$out"
    sleep 0.2
  done
}
peak() { awk 'BEGIN {m = 0} $1 > m {m = $1} END {printf "%d MB", m / 1024}' "$1"; }
last() { tail -n 1 "$1" | awk '{printf "%d MB", $1 / 1024}'; }
lastfd() { tail -n 1 "$1" | awk '{print $2}'; }
maxfd() { awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$1"; }

py() { python3 - "$@"; }

# ---- 1+2: soak (lookups, creates, unlinks) and repeated walks, one daemon ----
lower="$work/soak-lower"
py "$lower" "$WALK" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "w") as f:
        f.write("x")
EOF
mkdir -p "$work/soak-upper" "$work/soak-work"
mount_strata "$work/soak-mnt" --lower "$lower" --upper "$work/soak-upper" --work "$work/soak-work"
samples="$work/soak.samples"
sample "$daemon" "$samples" &
pids+=($!)
t0=$SECONDS
if py "$work/soak-mnt" "$OPS" "$WALK" <<'EOF'
import os, sys
mnt, n, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    j = i % files
    os.lstat(os.path.join(mnt, "d%03d" % (j % 100), "f%06d" % j))
    p = os.path.join(mnt, "d%03d" % (i % 100), "new%d" % i)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    os.unlink(p)
EOF
then r=ok; else r=FAILED; fail "soak ops"; fi
cp "$samples" "$work/soak-ops.samples"
row "soak: lookup+create+unlink" "$OPS each in $((SECONDS - t0)) s" "$r" "$(peak "$samples")" "$(last "$samples")" "$(lastfd "$samples")"
t0=$SECONDS
r=ok
for _ in $(seq "$WALKS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches
  got=$(find "$work/soak-mnt" -type f | wc -l)
  [ "$got" = "$WALK" ] || { r=FAILED; fail "walk saw $got files, not $WALK"; }
done
row "walk, drop_caches between" "${WALKS}x $WALK files, $((SECONDS - t0)) s" "$r" "$(peak "$samples")" "$(last "$samples")" "$(maxfd "$samples")/$(lastfd "$samples")"
unmount_strata "$work/soak-mnt"

# ---- 2b: one directory of BIGDIR entries listed through the union (daemon memory bounded?) ----
big="$work/big-lower"
py "$big/big" "$BIGDIR" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(root)
for i in range(n):
    os.close(os.open(os.path.join(root, "entry-%07d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
EOF
mkdir -p "$work/big-upper" "$work/big-work"
mount_strata "$work/big-mnt" --lower "$big" --upper "$work/big-upper" --work "$work/big-work"
samples="$work/big.samples"
sample "$daemon" "$samples" &
pids+=($!)
t0=$SECONDS
got=$(ls -f "$work/big-mnt/big" | wc -l)
sync; echo 3 > /proc/sys/vm/drop_caches
got2=$(find "$work/big-mnt/big" -mindepth 1 | wc -l)
r=ok
[ "$got" = $((BIGDIR + 2)) ] && [ "$got2" = "$BIGDIR" ] || { r=FAILED; fail "one big directory: listed $got and $got2 of $BIGDIR"; }
sleep 0.5
row "one directory, ls -f + find" "$BIGDIR entries, $((SECONDS - t0)) s" "$r" "$(peak "$samples")" "$(last "$samples")" "$(maxfd "$samples")"
unmount_strata "$work/big-mnt"
rm -rf "$big"

# ---- 3: 8 concurrent writers, watchdog, then kernel overlayfs over strata's upper ----
wl="$work/w-lower"
py "$wl" 2000 <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%d" % (i % 20))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%d" % i), "wb") as f:
        f.write(os.urandom(64 + i % 4096))
EOF
mkdir -p "$work/w-upper" "$work/w-work"
mount_strata "$work/w-mnt" --lower "$wl" --upper "$work/w-upper" --work "$work/w-work"
samples="$work/w.samples"
sample "$daemon" "$samples" &
pids+=($!)
writer() {
  py "$work/w-mnt" "$1" "$WRITER_SECS" <<'EOF'
import errno, os, random, sys, time
mnt, me, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rnd = random.Random(me)
end, ops = time.time() + secs, 0
def p():
    return os.path.join(mnt, "d%d" % rnd.randrange(20), "f%d" % rnd.randrange(2000))
while time.time() < end:
    a, b = p(), p()
    try:
        k = rnd.randrange(8)
        if k == 0:
            with open(a, "ab") as f: f.write(b"w%d" % me)
        elif k == 1: os.rename(a, b)
        elif k == 2: os.unlink(a)
        elif k == 3: os.link(a, b)
        elif k == 4: os.chmod(a, 0o600 + rnd.randrange(0o100))
        elif k == 5:
            with open(a, "wb") as f: f.write(os.urandom(rnd.randrange(8192)))
        elif k == 6: os.mkdir(a)
        else: os.listdir(os.path.dirname(a))
    except OSError as e:
        # What random names legitimately get; anything else (EIO, ENOTCONN...) is a failure.
        if e.errno not in (errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                           errno.ENOTEMPTY, errno.EXDEV, errno.EPERM, errno.EINVAL):
            print("writer %d: op %d: %s" % (me, k, e), file=sys.stderr)
            sys.exit(1)
    ops += 1
print(ops)
EOF
}
t0=$SECONDS
wpids=()
for i in $(seq 8); do
  timeout --signal=KILL $((WRITER_SECS + 60)) bash -c "$(declare -f writer py); work='$work' WRITER_SECS=$WRITER_SECS writer $i" > "$work/writer$i.out" 2>&1 &
  wpids+=($!)
done
r=ok
for p in "${wpids[@]}"; do
  wait "$p" || { rc=$?; r=FAILED; ((rc == 137)) && fail "a writer hung (watchdog)" || fail "a writer failed: $(tail -n 2 "$work"/writer*.out)"; }
done
total=$(cat "$work"/writer*.out | awk '$1 ~ /^[0-9]+$/ {s += $1} END {print s + 0}')
snap() {
  py "$1" <<'EOF'
import hashlib, os, stat, sys
root = sys.argv[1]
def boom(e):
    raise e
for d, dirs, files in sorted(os.walk(root, onerror=boom)):
    for n in sorted(dirs + files):
        p = os.path.join(d, n)
        st = os.lstat(p)
        h = ""
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()[:16]
        print(os.path.relpath(p, root), oct(st.st_mode), st.st_nlink if stat.S_ISREG(st.st_mode) else "-", st.st_size, h)
EOF
}
snap "$work/w-mnt" > "$work/w-strata.tree"
kill -0 "$daemon" 2>/dev/null || { r=FAILED; fail "the daemon died"; }
grep -qi panick "$work/w-mnt.log" && { r=FAILED; fail "the daemon panicked"; }
unmount_strata "$work/w-mnt"
# strata writes origin, redirect and metacopy xattrs as the kernel does with these options.
mkdir -p "$work/k-mnt" "$work/k-work"
mount -t overlay overlay -o "lowerdir=$wl,upperdir=$work/w-upper,workdir=$work/k-work,redirect_dir=on,index=on,metacopy=on" "$work/k-mnt"
mounts+=("$work/k-mnt")
snap "$work/k-mnt" > "$work/w-kernel.tree"
umount "$work/k-mnt"
if ! diff -q "$work/w-strata.tree" "$work/w-kernel.tree" > /dev/null; then
  r=FAILED; fail "kernel overlayfs over strata's upper differs: $(diff "$work/w-strata.tree" "$work/w-kernel.tree" | head -n 5)"
fi
row "8 writers, random ops" "$total ops in $((SECONDS - t0)) s" "$r" "$(peak "$samples")" "$(last "$samples")" "$(maxfd "$samples")"
row "  kernel overlay over the upper" "$(wc -l < "$work/w-kernel.tree") entries compared" "$r" "-" "-" "-"

# ---- 4: concurrent strata run on shared lowers while images are imported and removed ----
if [ -x /bin/busybox ]; then
  py "$work/layout" "$work/layout2" <<'EOF'
import hashlib, io, json, os, sys, tarfile
def blob(root, data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(root, "blobs/sha256"), exist_ok=True)
    open(os.path.join(root, "blobs/sha256", d), "wb").write(data)
    return "sha256:" + d
def layout(root, extra):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add("/bin/busybox", "bin/busybox")
        for a in ["sh", "ls", "cat", "echo"]:
            i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; t.addfile(i)
        data = ("root:x:0:0::/root:/bin/sh\n" + extra).encode()
        i = tarfile.TarInfo("etc/passwd"); i.size = len(data); t.addfile(i, io.BytesIO(data))
    tar = buf.getvalue()
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [blob(root, tar)]}}).encode()
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(root, cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + hashlib.sha256(tar).hexdigest(), "size": len(tar)}]}).encode()
    idx = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(root, m), "size": len(m)}]}
    open(os.path.join(root, "index.json"), "w").write(json.dumps(idx))
    open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
layout(sys.argv[1], "")
layout(sys.argv[2], "churn:x:1:1::/:/bin/sh\n")
EOF
  store="$work/store"
  mkdir -p "$work/run"
  export STRATA_RUN_DIR="$work/run"
  "$STRATA" --root "$store" image import "$work/layout" --name shared:1 > /dev/null
  t0=$SECONDS
  ( for i in $(seq "$RUNS"); do
      "$STRATA" --root "$store" image import "$work/layout2" --name "churn:$i" > /dev/null &&
        "$STRATA" --root "$store" image rm "churn:$i" > /dev/null || echo "churn $i failed"
    done ) > "$work/churn.out" 2>&1 &
  churn=$!
  fails=0
  for i in $(seq "$RUNS"); do
    for j in 1 2 3 4; do
      "$STRATA" --root "$store" run shared:1 -- /bin/sh -c 'ls /bin > /dev/null && cat /etc/passwd' > "$work/run$j.out" 2>&1 &
      rp[j]=$!
    done
    for j in 1 2 3 4; do
      wait "${rp[j]}" && grep -q '^root:' "$work/run$j.out" || { fails=$((fails + 1)); tail -n 2 "$work/run$j.out" >&2; }
    done
  done
  wait "$churn" || true
  churn_fails=$(grep -c failed "$work/churn.out" || true)
  r=ok
  ((fails == 0 && churn_fails == 0)) || { r=FAILED; fail "$fails runs and $churn_fails import/rm cycles failed"; }
  "$STRATA" --root "$store" image check > "$work/check.out" 2>&1 || { r=FAILED; fail "image check: $(tail -n 3 "$work/check.out")"; }
  left=$(find "$work/run" -mindepth 1 | wc -l)
  ((left == 0)) || { r=FAILED; fail "$left entries left in STRATA_RUN_DIR"; }
  row "run x4 while import/rm churn" "$((RUNS * 4)) runs, $RUNS churns, $((SECONDS - t0)) s" "$r" "-" "-" "-"
else
  row "run x4 while import/rm churn" "SKIP: no /bin/busybox" "skip" "-" "-" "-"
fi

# ---- 5: the long differential run ----
t0=$SECONDS
prof=(); [ "$profile" = release ] && prof=(--release)
if ((CASES == 0)); then
  row "differential (prop_ops)" "SKIP: STRESS_CASES=0" "skip" "-" "-" "-"
elif PROPTEST_CASES=$CASES cargo test "${prof[@]}" --quiet --test prop_ops > "$work/prop.out" 2>&1; then r=ok; else r=FAILED; fail "prop_ops: $(grep -A5 -m1 panicked "$work/prop.out")"
fi
((CASES == 0)) || row "differential (prop_ops)" "$CASES cases, $((SECONDS - t0)) s" "$r" "-" "-" "-"

# ---- 6: fuzzing ----
if ((FUZZ_SECS > 0)) && command -v cargo-fuzz > /dev/null 2>&1; then
  for f in fuzz/fuzz_targets/*.rs; do
    t=$(basename "$f" .rs)
    if scripts/fuzz.sh "$t" "$FUZZ_SECS" > "$work/fuzz-$t.out" 2>&1; then r=ok; else r=FAILED; fail "fuzz $t"; fi
    row "fuzz $t" "$(grep -oE '^Done [0-9]+ runs' "$work/fuzz-$t.out" | tail -n 1)" "$r" "-" "-" "-"
  done
elif ((FUZZ_SECS > 0)); then
  row "fuzz (each target ${FUZZ_SECS}s)" "SKIP: cargo-fuzz not installed" "skip" "-" "-" "-"
fi

printf '\n%-34s %-28s %-8s %10s %10s %5s\n' PHASE AMOUNT RESULT "PEAK RSS" "FINAL RSS" FDS
printf '%s\n' "${rows[@]}"
exit "$status"
