#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests that mount strata and kernel overlayfs
# for real, property tests, and a short fuzz run. `--long` runs the long property-test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--long" ]; then
  export PROPTEST_CASES="${STRATA_PROPTEST_CASES:-2000}"
elif [ -n "${STRATA_PROPTEST_CASES:-}" ]; then
  export PROPTEST_CASES="$STRATA_PROPTEST_CASES"
fi
echo "== setup"; scripts/setup.sh
echo "== build"; cargo build --all-targets
if command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== fuzz smoke (20 s; scripts/fuzz.sh for longer runs)"
  scripts/fuzz.sh mount_options 20 2>&1 | tail -1
else
  echo "== fuzz smoke skipped: cargo-fuzz not installed (cargo install cargo-fuzz)"
fi
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c '^SKIP ' "$log" || true)
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
