#!/bin/bash
# validate.sh: check the containerd snippets in this directory with real containerd binaries.
#
# Usage: contrib/containerd/validate.sh [PREFIX]
#   PREFIX holds unpacked containerd packages as containerd-<version>/usr/bin/containerd
#   (default /var/lib/driftguard-dev/prefix, where contrib/dev/runtime.sh unpacks them).
#
# For each snippet and the containerd it is written for, the snippet is loaded twice with
# `containerd -c FILE config dump` (which parses and decodes the configuration, starts nothing):
#   1. as the whole configuration (plus root/state in a scratch directory);
#   2. imported (`imports = [...]`) by a minimal main configuration that sets its own runc
#      options (Root, NoPivotRoot), as a drop-in file would be.
# Each run must succeed without "unknown key" warnings, and the effective configuration must
# show NRI enabled on /var/run/nri/nri.sock with /opt/nri/plugins, and the runc runtime's
# BinaryName = /usr/local/bin/driftguard-runc, and no pod_annotations entry passing a pod's
# driftguard.dev/* annotations into config.json. The import run also records how containerd
# merged the main file's runc options with the snippet's (the snippets' comments state it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=${1:-/var/lib/driftguard-dev/prefix}
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
failures=0

fail() { printf 'FAIL %s\n' "$*" >&2; failures=$((failures + 1)); }

# section FILE HEADER_SUFFIX: the lines of the TOML table whose header ends with the suffix.
section() {
    tr "'" '"' < "$1" | awk -v want="$2" '
        /^[[:space:]]*\[/ { inside = (index($0, want) > 0 && substr($0, length($0) - length(want) + 1) == want) ; next }
        inside { gsub(/^[[:space:]]+/, ""); print }'
}

# expect FILE HEADER_SUFFIX LINE WHAT
expect() {
    section "$1" "$2" | grep -qxF "$3" || fail "$4: no '$3' in [..$2"
}

# check VERSION SNIPPET CRI_PLUGIN MODE
check() {
    local version=$1 snippet=$2 cri=$3 mode=$4 bin config out err config_version
    bin=$(ls -d "$PREFIX"/containerd-"$version"*/usr/bin/containerd 2>/dev/null | head -n1 || true)
    [ -x "$bin" ] || { fail "no containerd $version under $PREFIX (run contrib/dev/runtime.sh up)"; return; }
    config_version=$(awk -F' *= *' '$1 == "version" { print $2; exit }' "$snippet")
    config=$SCRATCH/$version-$mode.toml
    out=$SCRATCH/$version-$mode.dump
    err=$SCRATCH/$version-$mode.err
    case $mode in
        whole)
            printf 'root = "%s/root"\nstate = "%s/state"\n' "$SCRATCH" "$SCRATCH" > "$config"
            cat "$snippet" >> "$config"
            ;;
        import)
            cat > "$config" <<TOML
version = $config_version
root = "$SCRATCH/root"
state = "$SCRATCH/state"
imports = ["$snippet"]
[plugins."$cri".containerd.runtimes.runc.options]
  Root = "/var/lib/main-config-runc-root"
  NoPivotRoot = true
TOML
            ;;
    esac
    local found=${bin#"$PREFIX"/containerd-}
    local what="containerd ${found%%/*}, $(basename "$snippet") ($mode)"
    if ! "$bin" -c "$config" config dump > "$out" 2> "$err"; then
        fail "$what: containerd rejects it: $(cat "$err")"
        return
    fi
    if grep -qi "unknown key" "$err"; then fail "$what: $(grep -i 'unknown key' "$err")"; fi
    local nri='plugins."io.containerd.nri.v1.nri"]'
    local runc="plugins.\"$cri\".containerd.runtimes.runc]"
    local opts="plugins.\"$cri\".containerd.runtimes.runc.options]"
    expect "$out" "$nri" 'disable = false' "$what"
    expect "$out" "$nri" 'disable_connections = false' "$what"
    expect "$out" "$nri" 'socket_path = "/var/run/nri/nri.sock"' "$what"
    expect "$out" "$nri" 'plugin_path = "/opt/nri/plugins"' "$what"
    expect "$out" "$nri" 'plugin_config_path = "/etc/nri/conf.d"' "$what"
    expect "$out" "$runc" 'runtime_type = "io.containerd.runc.v2"' "$what"
    if section "$out" "$runc" | grep -q '^pod_annotations = .*driftguard\.dev/'; then
        fail "$what: pod_annotations passes driftguard.dev/* annotations from the pod"
    fi
    expect "$out" "$opts" 'BinaryName = "/usr/local/bin/driftguard-runc"' "$what"
    expect "$out" "$opts" 'SystemdCgroup = true' "$what"
    if [ "$mode" = import ]; then
        if section "$out" "$opts" | grep -qxF 'Root = "/var/lib/main-config-runc-root"'; then
            printf 'ok   %s: main config runc options kept (merged key by key)\n' "$what"
        else
            printf 'ok   %s: main config runc options replaced by the snippet'"'"'s table\n' "$what"
        fi
    else
        printf 'ok   %s\n' "$what"
    fi
}

for mode in whole import; do
    check 1.7 "$HERE/config-v2-containerd-1.7.toml" io.containerd.grpc.v1.cri "$mode"
    check 2. "$HERE/config-v3-containerd-2.x.toml" io.containerd.cri.v1.runtime "$mode"
done
if [ "$failures" -gt 0 ]; then
    printf '%d check(s) failed\n' "$failures" >&2
    exit 1
fi
echo "all containerd snippets valid"
