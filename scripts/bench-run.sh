#!/usr/bin/env bash
# Startup-to-exit latency of a container running /bin/true on a busybox root: strata run
# (union mount + namespaces + exec + teardown; also with cgroup limits) beside
# `bwrap --unshare-all` and `crun run` on the same root. Medians of RUNS (default 50) runs.
#
#   scripts/bench-run.sh            # prints a markdown table
#   RUNS=100 scripts/bench-run.sh
#
# crun refuses hybrid cgroup hosts while /sys/fs/cgroup/unified is mounted, so it runs in a
# private mount namespace with that mount removed (the host is not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-50}

scripts/setup.sh >/dev/null
echo "building strata (release)..." >&2
cargo build --release --quiet
strata=$PWD/target/release/strata

work=/var/tmp/strata-bench-run
root=$work/rootfs
if [ ! -x "$root/bin/true" ]; then
  echo "building the busybox root in $root..." >&2
  rm -rf "$work"
  mkdir -p "$root"/{bin,proc,dev,sys,tmp,etc}
  cp /bin/busybox "$root/bin/"
  for app in sh true; do ln -s busybox "$root/bin/$app"; done
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
median() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; print('%.1f' % (r['median']*1000))" "$1"; }
bench() { # name, command...
  local name=$1; shift
  echo "measuring $name ($runs runs)..." >&2
  hyperfine -N -w 5 -r "$runs" --export-json "$out/$name.json" "$*" >/dev/null
}

bench strata "$strata run --lower $root -- /bin/true"
bench strata-limits "$strata run --lower $root --memory 256M --cpus 1 --pids 64 -- /bin/true"
if command -v bwrap >/dev/null; then
  bench bwrap "bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev /bin/true"
fi
if command -v crun >/dev/null; then
  bundle=$work/bundle
  if [ ! -f "$bundle/config.json" ]; then
    mkdir -p "$bundle"
    (cd "$bundle" && crun spec --rootless >/dev/null 2>&1 || crun spec)
    python3 - "$bundle/config.json" "$root" <<'EOF'
import json, sys
p, root = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["root"] = {"path": root, "readonly": True}
c["process"]["args"] = ["/bin/true"]
c["process"]["terminal"] = False
c.setdefault("linux", {})["resources"] = {"memory": {"limit": 268435456}, "cpu": {"quota": 100000, "period": 100000}, "pids": {"limit": 64}}
json.dump(c, open(p, "w"), indent=1)
EOF
  fi
  echo "measuring crun ($runs runs)..." >&2
  unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; cd $bundle && hyperfine -N -w 5 -r $runs --export-json $out/crun.json 'crun run bench-\$\$' >/dev/null" || true
  # hyperfine's {} is not used: crun needs a unique name per run only if one is left behind.
fi

echo
echo "| runtime | median ms (startup to exit of /bin/true) |"
echo "|---|---|"
for n in strata strata-limits bwrap crun; do
  [ -f "$out/$n.json" ] && echo "| $n | $(median "$out/$n.json") |"
done
