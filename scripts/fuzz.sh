#!/usr/bin/env bash
# Runs a fuzz target: scripts/fuzz.sh [TARGET] [SECONDS]. cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-mount_options}"
secs="${2:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$secs"
