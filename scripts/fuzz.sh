#!/usr/bin/env bash
# Runs a cargo-fuzz target for SECONDS (default: mount_options, 60 s), installing cargo-fuzz
# into ~/.cargo/bin first if it is missing (`cargo install cargo-fuzz --locked`, a few minutes).
#
#   scripts/fuzz.sh [TARGET] [SECONDS] [-- LIBFUZZER_ARGS...]
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, so no nightly toolchain is needed. A crash exits non-zero and
# leaves the input in fuzz/artifacts/TARGET/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-mount_options}"
secs="${2:-60}"
shift $(($# < 2 ? $# : 2))
[ "${1:-}" = "--" ] && shift
case "$secs" in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac
if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
  names=(fuzz/fuzz_targets/*.rs); names=("${names[@]##*/}")
  echo "fuzz.sh: no target '$target'; targets: ${names[*]%.rs}" >&2
  exit 2
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

args=(-max_total_time="$secs")
[ -f "fuzz/$target.dict" ] && args+=(-dict="$PWD/fuzz/$target.dict")
# New inputs go to fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET (committed) starts it.
mkdir -p "fuzz/corpus/$target"
corpora=("fuzz/corpus/$target")
[ -d "fuzz/seeds/$target" ] && corpora+=("fuzz/seeds/$target")
echo "fuzz.sh: RUSTC_BOOTSTRAP=1 cargo fuzz run $target ${corpora[*]} -- ${args[*]} $*"
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "${corpora[@]}" -- "${args[@]}" "$@"
