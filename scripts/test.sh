#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests that mount strata and kernel overlayfs for
# real (they need root and /dev/fuse, and print `SKIP ...` without them), property tests, and a
# 20-second fuzz smoke run of each parser (-o options, layer tars, image references, registry
# manifests, Dockerfiles, pipeline configs) when cargo-fuzz is installed.
#
#   scripts/test.sh          quick profile (the property tests' own default case counts)
#   scripts/test.sh --long   long profile: PROPTEST_CASES=2000
#   STRATA_PROPTEST_CASES=N scripts/test.sh   any count (also with --long)
#   STRATA_LAYOUTS="ext4-tmpfs xfs" scripts/test.sh   which extra filesystem layouts the mount
#                            tests run in after the first pass (default: all of them; "" none;
#                            see scripts/layouts.sh)
#
# Ends with one line 'tests: N passed, N failed, N skipped'; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

long=0
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument '$arg' (only --long)" >&2; exit 2 ;;
  esac
done
if [ -n "${STRATA_PROPTEST_CASES:-}" ]; then
  export PROPTEST_CASES="$STRATA_PROPTEST_CASES"
elif ((long)); then
  export PROPTEST_CASES=2000
fi

step=0
banner() { step=$((step + 1)); printf '\n========== [%d] %s ==========\n' "$step" "$*"; }
started=$SECONDS

banner "setup: system packages (scripts/setup.sh)"
scripts/setup.sh

banner "build: cargo build --all-targets"
cargo build --all-targets

log=$(mktemp)
fuzz_log=$(mktemp)
# shellcheck source=scripts/layouts.sh
. scripts/layouts.sh
trap 'layout_down; rm -f "$log" "$fuzz_log"' EXIT
banner "tests: cargo test --all-targets --no-fail-fast (PROPTEST_CASES=${PROPTEST_CASES:-default}; root: $([ "$(id -u)" = 0 ] && echo yes || echo no), /dev/fuse: $([ -c /dev/fuse ] && echo yes || echo no))"
set +e
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log"
test_status=${PIPESTATUS[0]}
set -e

# The mount tests again with layers and upper on other filesystems (scripts/layouts.sh): a
# suite that passes in one layout proves one layout.
matrix_tests=(--test cow --test crash --test faults --test merged_view --test mount_options --test passthrough --test prop_layers --test prop_ops
  --test rootless --test run)
read -r -a layouts <<< "${STRATA_LAYOUTS-ext4-tmpfs tmpfs-ext4 tmpfs-tmpfs xfs btrfs ro-tmpfs}"
for name in "${layouts[@]}"; do
  banner "layout $name: cargo test ${matrix_tests[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "SKIP layout $name: needs root to mount its filesystems" | tee -a "$log"
    continue
  fi
  if ! layout_up "$name" > "$fuzz_log" 2>&1; then
    echo "SKIP layout $name: $(tail -n 1 "$fuzz_log")" | tee -a "$log"
    layout_down
    continue
  fi
  cat "$fuzz_log"
  set +e
  cargo test --no-fail-fast "${matrix_tests[@]}" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
  layout_down
  ((status == 0)) || { test_status=$status; echo "layout $name FAILED (exit $status)"; }
done

# The soak and stress suite at small sizes (scripts/stress.sh --quick: well under 2 minutes).
banner "stress: scripts/stress.sh --quick"
set +e
scripts/stress.sh --quick 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
((status == 0)) || { test_status=$status; echo "stress --quick FAILED (exit $status)"; }

fuzz_status=0
if command -v cargo-fuzz >/dev/null 2>&1; then
  # The parsers of outside input: mount options, image layer tars, image references, registry
  # manifests, Dockerfiles and pipeline configs.
  for target in mount_options unpack reference manifest dockerfile pipeline_config; do
    banner "fuzz smoke: scripts/fuzz.sh $target 20"
    set +e
    scripts/fuzz.sh "$target" 20 > "$fuzz_log" 2>&1
    status=$?
    set -e
    if ((status == 0)); then
      grep -E '^Done [0-9]+ runs' "$fuzz_log" || tail -n 3 "$fuzz_log"
    else
      fuzz_status=$status
      tail -n 60 "$fuzz_log"
      echo "fuzz smoke FAILED (exit $status); the input is saved under fuzz/artifacts/$target/"
    fi
  done
else
  banner "fuzz smoke: skipped (cargo-fuzz is not installed; scripts/fuzz.sh installs it)"
fi

banner "summary ($((SECONDS - started)) s)"
passed=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c '^SKIP ' "$log" || true)
((test_status == 0)) || echo "cargo test FAILED (exit $test_status)"
((fuzz_status == 0)) || echo "fuzz smoke FAILED (exit $fuzz_status)"
echo "tests: $passed passed, $failed failed, $skipped skipped"
((test_status == 0 && fuzz_status == 0))
