#!/usr/bin/env bash
# Runs the NRI frame decoder fuzz target for a bounded time (default 60 s).
#
#   contrib/ci/fuzz.sh [SECONDS]
#
# Uses cargo-fuzz (installed on demand). The machine has only a stable toolchain, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags; the address sanitizer is on by default.
# Exits non-zero when the fuzzer finds a crash; the reproducer lands in fuzz/artifacts/.
set -euo pipefail

SECONDS_TO_RUN=${1:-${DG_FUZZ_SECONDS:-60}}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
mkdir -p corpus/frame_decoder
# Seed: one small request frame on connection 1, so the fuzzer starts from valid structure.
printf '\x07\x00\x00\x00\x01\x00\x00\x00\x0c\x00\x00\x00\x02\x00\x00\x00\x01\x01\x00\x0a\x00' \
    > corpus/frame_decoder/seed-request

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${DG_FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
cargo fuzz run frame_decoder corpus/frame_decoder -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048
