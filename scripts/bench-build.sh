#!/usr/bin/env bash
# strata build against buildah bud --layers (overlay + fuse-overlayfs, and vfs), in one run:
# cold build, no-change rebuild and one-file rebuild of three projects, and the time to commit
# a RUN touching one file on a 1k- and a 60k-file base. Results in bench-results/build/
# (results.md, results.json, chart.svg). As root.
#
#   scripts/bench-build.sh               # full fixtures, 3 reps
#   scripts/bench-build.sh --quick       # small fixtures, 1 rep: a smoke test, not numbers
#   STRATA=/path/to/strata scripts/bench-build.sh --reps 5
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 quick=() out=bench-results/build
while (($#)); do
  case "$1" in
    --quick) quick=(--quick); reps=1 ;;
    --reps) reps=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "bench-build: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
scripts/setup.sh >/dev/null
if [ -z "${STRATA:-}" ]; then
  cargo build --release --quiet
  STRATA=$PWD/target/release/strata
fi
# buildah names pulled layouts after their paths, which must be lowercase.
work=/var/tmp/strata-bench-build-$$
mkdir "$work"
# buildah's vfs and overlay stores hold read-only copies: remove them with buildah's help.
cleanup() {
  for s in buildah-overlay-fuse:overlay buildah-vfs:vfs; do
    buildah --root "$work/${s%%:*}/root" --runroot "$work/${s%%:*}/run" \
      --storage-driver "${s##*:}" rm --all >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
python3 scripts/bench_build.py --strata "$STRATA" --work "$work" --out "$out" --reps "$reps" "${quick[@]}"
echo "bench-build: results in $out/results.md"
