#!/usr/bin/env bash
# The test command: lint, then every test of the workspace against a private containerd + runc,
# then the runtime matrix and a bounded fuzz run.
#
#   contrib/test.sh            (as root, on Debian 12)
#
# Everything the tests need is unpacked or built by the run itself: containerd and runc from
# Debian packages (contrib/dev/runtime.sh), the test images (built locally), protoc (vendored
# crate). The private runtimes are stopped when the run ends, whatever its result. Settings:
#   DG_DEV_ROOT=DIR    where the private runtimes live (default /var/lib)
#   DG_MATRIX=0        skip the containerd 1.7.24 / runc 1.3.6 matrix runs
#   DG_FUZZ_SECONDS=N  fuzz time (default 60; 0 skips)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "contrib/test.sh: the integration tests need root" >&2; exit 1; }

step() {
    printf '\n==> %s (%s, %s free for the build)\n' "$*" "$(date +%T)" \
        "$(df -h --output=avail "$(dirname "${CARGO_TARGET_DIR:-$ROOT/target}")" 2>/dev/null | tail -1 | tr -d ' ' \
            || echo '?')"
}
# A one-off run gains nothing from incremental state; it only costs disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || {
    step "installing gcc and libc6-dev (the test images contain static C programs)"
    apt-get update -q && apt-get install -y -q gcc libc6-dev
}

cleanup() {
    local ctd dir
    local root=${DG_DEV_ROOT:-/var/lib}
    for dir in "$root"/driftguard-dev "$root"/driftguard-dev-*; do
        [ -d "$dir" ] || continue
        for ctd in 2.1.9 1.7.24; do
            DG_DEV_DIR=$dir DG_CONTAINERD=$ctd contrib/dev/runtime.sh down || true
        done
    done
}
trap cleanup EXIT

step "rustfmt"
cargo fmt --all --check
step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests: containerd 2.1.9 + runc 1.1.5"
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${DG_TEST_THREADS:-2}"

if [ "${DG_MATRIX:-1}" != 0 ]; then
    step "tests: containerd 1.7.24 + runc 1.1.5"
    DG_CONTAINERD=1.7.24 cargo test -p driftguard-testkit \
        --test runtime_harness --test nri_plugin --test nri_preregistered --test image_index \
        -- --test-threads=2
    step "end-to-end scenarios 1, 2, 6, 13: containerd 1.7.24 + runc 1.3.6"
    DG_CONTAINERD=1.7.24 DG_RUNC=1.3.6 cargo test -p driftguard --test e2e_scenarios -- \
        scenario_01 scenario_02 scenario_06 scenario_13
    DG_CONTAINERD=1.7.24 contrib/dev/runtime.sh down
fi

if [ "${DG_FUZZ_SECONDS:-60}" != 0 ]; then
    step "fuzz: NRI frame decoder for ${DG_FUZZ_SECONDS:-60} s"
    contrib/ci/fuzz.sh "${DG_FUZZ_SECONDS:-60}"
fi
step "all tests passed"
