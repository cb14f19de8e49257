#!/bin/bash
# e2e.sh: driftguard's end-to-end benchmark, a protected node against a plain one, in one run.
#
# Usage (as root): contrib/bench/e2e.sh [dg-bench options, e.g. --pods 40 --execs 250]
#
# Builds driftguard and dg-bench in release mode, brings up two private containerd instances
# (the protected node with the driftguard runc wrapper and daemon, and a plain one), runs
# dg-bench (pod start and exec latency side by side, daemon memory), and always takes both
# instances down again with `runtime.sh down`. The report goes to stdout and to
# $DG_BENCH_OUT (default <node instance>/bench-<UTC time>.md).
#
# The protected node's supervisor and fd holder sockets live in a directory below /run that
# test kits have shared between protected test nodes of one containerd version. The script
# therefore runs itself in a private mount namespace with a tmpfs over that directory: the bench's daemon and
# everything it starts (containerd, shims, runc) see only their own sockets, and the host's
# directory is left alone. Copies of other instances' mounts are dropped from that namespace so
# it never keeps their filesystems busy.
#
# Settings (environment):
#   DG_BENCH_NODE_DIR   instance directory of the protected node (/var/lib/driftguard-dev-bench)
#   DG_BENCH_PLAIN_DIR  instance directory of the plain runtime (/var/lib/driftguard-dev-bench-plain)
#   DG_CONTAINERD, DG_RUNC  as for contrib/dev/runtime.sh (2.1.9, 1.1.5)
#   CARGO_TARGET_DIR    cargo's target directory (default <repo>/target)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
export DG_CONTAINERD=${DG_CONTAINERD:-2.1.9}
NODE_DIR=${DG_BENCH_NODE_DIR:-/var/lib/driftguard-dev-bench}
PLAIN_DIR=${DG_BENCH_PLAIN_DIR:-/var/lib/driftguard-dev-bench-plain}
# Socket directories a protected node may use: the shared test one and the per-instance one.
RUN_DIRS="/run/driftguard-test-$DG_CONTAINERD /run/$(basename "$NODE_DIR")-$DG_CONTAINERD"

log() { printf 'e2e.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (containerd, overlay mounts and runc need it)"

if [ -z "${DG_BENCH_PRIVATE_NS:-}" ]; then
    # shellcheck disable=SC2086
    mkdir -p $RUN_DIRS
    exec unshare --mount --propagation private env DG_BENCH_PRIVATE_NS=1 "$0" "$@"
fi

# ------------------------------------------------------------------ inside the private namespace

# Other instances' mounts were copied into this namespace; unmount the copies (here only).
for m in $(awk '{ print $5 }' /proc/self/mountinfo | grep '^/var/lib/driftguard-dev' | sort -r); do
    case "$m" in
        "$NODE_DIR"/*|"$PLAIN_DIR"/*) ;;
        *) umount -l "$m" 2>/dev/null || true ;;
    esac
done
for d in $RUN_DIRS; do
    mount -t tmpfs -o mode=0700,size=16m driftguard-bench "$d" || die "cannot mount a tmpfs on $d"
done

down() {
    log "taking both instances down"
    DG_DEV_DIR=$NODE_DIR "$REPO/contrib/dev/runtime.sh" down || log "node instance: down failed"
    DG_DEV_DIR=$PLAIN_DIR "$REPO/contrib/dev/runtime.sh" down || log "plain instance: down failed"
}
trap down EXIT

log "building driftguard and dg-bench (release) in $CARGO_TARGET_DIR"
(cd "$REPO" && cargo build -q --release -p driftguard --bin driftguard \
    -p driftguard-testkit --bin dg-bench) || die "release build failed"

OUT=${DG_BENCH_OUT:-$NODE_DIR/bench-$(date -u +%Y%m%dT%H%M%SZ).md}
mkdir -p "$(dirname "$OUT")"
log "running dg-bench $*; report: $OUT"
"$CARGO_TARGET_DIR/release/dg-bench" \
    --driftguard "$CARGO_TARGET_DIR/release/driftguard" \
    --node-dev-dir "$NODE_DIR" --plain-dev-dir "$PLAIN_DIR" "$@" | tee "$OUT"
echo "command: contrib/bench/e2e.sh $*" | tee -a "$OUT"
