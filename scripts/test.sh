#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests that mount strata and kernel overlayfs
# for real, property tests. `--long` runs the long property-test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--long" ]; then
  export PROPTEST_CASES="${STRATA_PROPTEST_CASES:-2000}"
elif [ -n "${STRATA_PROPTEST_CASES:-}" ]; then
  export PROPTEST_CASES="$STRATA_PROPTEST_CASES"
fi
echo "== setup"; scripts/setup.sh
echo "== build"; cargo build --all-targets
echo "== tests"; cargo test --all-targets
