#!/usr/bin/env bash
# strata push/pull against skopeo copy on a local docker-registry, side by side in one run:
# push to an empty registry, re-push (HEAD only), pull into an empty store, pull of an image
# sharing its base with one already present. Table, JSON and chart in docs/bench-registry/.
#
#   scripts/bench-registry.sh                 # ~300 MB image, 3 reps
#   scripts/bench-registry.sh --quick         # ~30 MB, 1 rep: a smoke test, not numbers
#   scripts/bench-registry.sh --mb 500 --reps 5 --out /tmp/r
#   STRATA=/path/to/strata scripts/bench-registry.sh   # that binary instead of a release build
set -euo pipefail
cd "$(dirname "$0")/.."

mb=300 reps=3 out=docs/bench-registry
while (($#)); do
  case "$1" in
    --quick) mb=30 reps=1 ;;
    --mb) mb=$2; shift ;;
    --reps) reps=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-registry.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

scripts/setup.sh
if [ -z "${STRATA:-}" ]; then
  cargo build --release
  STRATA=target/release/strata
fi
exec python3 scripts/bench_registry.py --strata "$(realpath "$STRATA")" --out "$out" \
  --reps "$reps" --mb "$mb"
