#!/usr/bin/env bash
# quickstart.sh: driftguard on a private containerd, from nothing to a denied drifted binary.
#
#   contrib/quickstart.sh        (as root, on Debian 12)
#
# 1. builds driftguard and the test kit;
# 2. brings up a private containerd (Debian packages, unpacked, never installed) whose runc is
#    the driftguard wrapper, and starts `driftguard daemon` next to it;
# 3. runs a pod from a locally built busybox image in namespace `demo`, where the policy blocks;
# 4. executes an image binary (it runs), copies in a new binary and executes it (denied:
#    "Operation not permitted"), and prints the alert as one JSON line;
# 5. tears everything down.
# Exits 0 only when all of that happened. Everything lives in /var/lib/driftguard-quickstart.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export DG_DEV_DIR=/var/lib/driftguard-quickstart
CTD=${DG_CONTAINERD:-2.1.9}
NODE=$DG_DEV_DIR/ctd-$CTD/node
RUN=/run/driftguard-quickstart
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\nquickstart FAILED: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (containerd, runc and overlay mounts need it)"

teardown() {
    say "tearing down"
    if [ -n "${DAEMON_PID:-}" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    contrib/dev/runtime.sh down || true
}
trap teardown EXIT

if ! command -v gcc >/dev/null || [ ! -f /usr/lib/x86_64-linux-gnu/libc.a ]; then
    say "installing gcc and libc6-dev (the test images contain small static C programs)"
    apt-get update -q && apt-get install -y -q gcc libc6-dev
fi

say "building driftguard"
cargo build -q --bin driftguard -p driftguard
cargo build -q --bin dg-testkit -p driftguard-testkit
DG=$TARGET/debug/driftguard
TESTKIT=$TARGET/debug/dg-testkit

say "writing the node configuration and the policy to $NODE"
mkdir -p "$NODE/state"
ln -sf "$DG" "$NODE/driftguard-runc"
RUNC=$(contrib/dev/runtime.sh runc-path "${DG_RUNC:-1.1.5}")
cat > "$NODE/policy.yaml" <<'EOF'
apiVersion: driftguard.dev/v1
kind: DriftPolicy
metadata:
  name: quickstart
spec:
  failurePolicy: closed
  rules:
    - name: block-demo
      description: Drift in the demo namespace is denied
      action: block
      scope:
        - field: namespace
          operator: equals
          value: demo
    - name: kube-system
      action: alert
      scope:
        - field: namespace
          operator: equals
          value: kube-system
  defaultRule:
    name: default
    action: ignore
EOF
"$DG" policy validate "$NODE/policy.yaml"
: > "$NODE/events.jsonl"
cat > "$NODE/config.yaml" <<EOF
cluster: quickstart
stateDir: $NODE/state
policyPath: $NODE/policy.yaml
supervisorSocket: $RUN/supervisor.sock
holderSocket: $RUN/fd-holder.sock
nri:
  socket: $DG_DEV_DIR/ctd-$CTD/run/nri.sock
runc:
  path: $RUNC
alerts:
  stdout: false
  file: $NODE/events.jsonl
metricsAddress: ""
EOF

say "starting a private containerd $CTD whose runc is the driftguard wrapper"
DG_RUNTIME_BINARY=$NODE/driftguard-runc DRIFTGUARD_CONFIG=$NODE/config.yaml contrib/dev/runtime.sh up
eval "$(contrib/dev/runtime.sh env)"

say "starting driftguard daemon (log: $NODE/daemon.log)"
"$DG" daemon --config "$NODE/config.yaml" > "$NODE/daemon.log" 2>&1 &
DAEMON_PID=$!
echo "$DAEMON_PID" >> "$DG_DEV_DIR/ctd-$CTD/owned.pids"
for _ in $(seq 1 300); do
    grep -q "nri plugin synchronized" "$NODE/daemon.log" && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$NODE/daemon.log"; fail "the daemon exited"; }
    sleep 0.1
done
grep -q "nri plugin synchronized" "$NODE/daemon.log" || fail "the daemon did not connect to NRI"
if [ -f "$NODE/state/fd-holder.pid" ]; then
    echo "$(cat "$NODE/state/fd-holder.pid")" >> "$DG_DEV_DIR/ctd-$CTD/owned.pids"
fi
grep -E "registered|running" "$NODE/daemon.log" | sed 's/^/    /'

say "running pod web (namespace demo) from localhost/driftguard/busybox:1"
CTR=$("$TESTKIT" run-pod --endpoint "$DG_CRI_ENDPOINT" --pods-dir "$DG_PODS_DIR" --name web \
    --namespace demo --image localhost/driftguard/busybox:1 /bin/sh -c 'sleep 3600')
echo "    container $CTR"
in_pod() { "$TESTKIT" exec --endpoint "$DG_CRI_ENDPOINT" --container "$CTR" /bin/sh -c "$1"; }

say "executing an image binary: /bin/ls /etc"
in_pod '/bin/ls /etc' || fail "an image binary did not run"

say "copying in a new binary and executing it: /tmp/dropped"
set +e
OUT=$(in_pod 'cat /bin/busybox /etc/passwd > /tmp/dropped && chmod +x /tmp/dropped && /tmp/dropped echo "drift ran"' 2>&1)
RC=$?
set -e
echo "$OUT" | sed 's/^/    /'
echo "    exit code $RC"
[ "$RC" -ne 0 ] || fail "the dropped binary was not denied"
grep -q "Operation not permitted" <<<"$OUT" || fail "the shell did not report 'Operation not permitted'"
if grep -q "drift ran" <<<"$OUT"; then fail "the dropped binary ran"; fi

say "the alert"
ALERT=""
for _ in $(seq 1 50); do
    ALERT=$(grep "\"container_id\":\"$CTR\"" "$NODE/events.jsonl" | grep '"/tmp/dropped"' | head -1 || true)
    [ -n "$ALERT" ] && break
    sleep 0.1
done
[ -n "$ALERT" ] || fail "no alert was written to $NODE/events.jsonl"
echo "$ALERT"
grep -q '"rule":"block-demo"' <<<"$ALERT" || fail "the alert does not name the rule block-demo"

say "quickstart passed: the image binary ran, the dropped binary was denied and alerted"
