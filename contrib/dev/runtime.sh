#!/bin/bash
# runtime.sh: a private containerd (CRI + NRI) and runc for driftguard's tests and demos.
#
# Usage (as root):
#   contrib/dev/runtime.sh up            unpack the runtime, build and import the test images,
#                                        start containerd, wait until CRI is ready
#   contrib/dev/runtime.sh down          remove every pod and container, stop containerd and
#                                        its shims (by PID), unmount what they left behind
#   contrib/dev/runtime.sh purge         down, then delete images, snapshots and state
#   contrib/dev/runtime.sh env           print the environment tests need (export lines)
#   contrib/dev/runtime.sh runc-path V   print the path of a runnable runc V (1.1.5|1.1.15|1.3.6)
#   contrib/dev/runtime.sh busybox-path  print the path of a static busybox binary
#   contrib/dev/runtime.sh status        say whether containerd runs
#
# Settings (environment):
#   DG_CONTAINERD    2.1.9 (default) or 1.7.24
#   DG_RUNC          1.1.5 (default; runs on Debian 12's libc) or 1.1.15 or 1.3.6 (copies patched
#                    with patchelf to use a private glibc 2.41)
#   DG_DEV_DIR       where everything lives (default $DG_DEV_ROOT/driftguard-dev, DG_DEV_ROOT
#                    defaulting to /var/lib); one containerd instance per containerd version below it
#   DG_RUNTIME_BINARY  the runc runtime's BinaryName (default: the selected runc); the
#                    driftguard runc wrapper goes here
#   DG_DEBS          folder of Debian packages to prefer (default: ../shared/runtime-debs from
#                    the repository root); anything missing is fetched with apt-get download
#
# Nothing is installed into the system: packages are unpacked with dpkg -x into a private
# prefix, and their SHA-256 sums are checked against the pins below before use. When a package
# must be downloaded and the machine's apt sources lack its suite, a source for that suite is
# added with a negative pin priority, so apt can download from it but never installs from it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DG_DEV_DIR=${DG_DEV_DIR:-${DG_DEV_ROOT:-/var/lib}/driftguard-dev}
DG_CONTAINERD=${DG_CONTAINERD:-2.1.9}
DG_RUNC=${DG_RUNC:-1.1.5}
DG_DEBS=${DG_DEBS:-$REPO/../shared/runtime-debs}
DEB_CACHE=$DG_DEV_DIR/debs
PREFIX=$DG_DEV_DIR/prefix
LAB=$DG_DEV_DIR/ctd-$DG_CONTAINERD
RUN=$LAB/run
SOCK=$RUN/containerd.sock
NRI_SOCK=$RUN/nri.sock
IMAGES=$DG_DEV_DIR/images
PAUSE_IMAGE=localhost/driftguard/pause:1

# package -> "debian-version suite sha256", pinned.
declare -A PKG=(
    [containerd-2.1.9]="2.1.9+ds1-5 sid 2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591"
    [containerd-1.7.24]="1.7.24~ds1-6+deb13u1 trixie ed708deb96fe476a3bce4efa5c0538dfbcf717ab9a7c7944ba7260342c25899c"
    [runc-1.1.5]="1.1.5+ds1-1+deb12u1 bookworm a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5"
    [runc-1.1.15]="1.1.15+ds1-2+b4 trixie fad4f807a369677f0954bd4c61e56ddb2dd8b3f4aec30c3834c3165fc6d3c19f"
    [runc-1.3.6]="1.3.6+ds1-1 sid 8e95d7bdfd22242ae4d48d58e3c277ba2b69dffc4ed8e573b837e6e93925d911"
    [libc6-2.41]="2.41-12+deb13u5 trixie b59b0625cd1a791375d40dab23a4d5d3d0641e3d0a773501becdc3725b7f99cf"
    [libseccomp2-2.6.0]="2.6.0-2 trixie 89d5138e05fb6a86b9afd8b54dc0fb4b14f4c27c05e6c5f767c2132bdf808531"
    [patchelf-0.14.3]="0.14.3-1+b1 bookworm 0364b90e81faabbb9569076063952c7bcbf07f83d954a2f2602a163d65be60e6"
    [busybox-static-1.37.0]="1:1.37.0-6+b9 sid 598a3fd92bdafc34cd81196b2952ad36e910e47a4ecf162f8ce5e8e262598e53"
)

log() { printf 'runtime.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (containerd, overlay mounts and runc need it)"

# ------------------------------------------------------------------------------ packages

# deb_file NAME-VERSION: path of the verified .deb, fetched into the cache if needed.
deb_file() {
    local key=$1 name=${1%-*} ver suite sum file
    read -r ver suite sum <<<"${PKG[$key]:?unknown package $key}"
    file="${name}_${ver/:/%3a}_amd64.deb"
    mkdir -p "$DEB_CACHE"
    if [ ! -f "$DEB_CACHE/$file" ]; then
        if [ -f "$DG_DEBS/$file" ]; then
            cp "$DG_DEBS/$file" "$DEB_CACHE/$file.tmp"
        else
            apt_download "$name" "$ver" "$suite"
        fi
        echo "$sum  $DEB_CACHE/$file.tmp" | sha256sum -c --quiet - \
            || { rm -f "$DEB_CACHE/$file.tmp"; die "checksum mismatch for $file"; }
        mv "$DEB_CACHE/$file.tmp" "$DEB_CACHE/$file"
    else
        echo "$sum  $DEB_CACHE/$file" | sha256sum -c --quiet - \
            || { rm -f "$DEB_CACHE/$file"; die "cached $file is corrupt and was removed; run again"; }
    fi
    echo "$DEB_CACHE/$file"
}

# apt_download NAME VERSION SUITE: download one package version into the cache as *.tmp.
apt_download() {
    local name=$1 ver=$2 suite=$3 dir added=""
    if ! apt-cache madison "$name" 2>/dev/null | grep -qF " $ver "; then
        add_suite "$suite"
        added=$suite
    fi
    dir=$(mktemp -d)
    if ! (cd "$dir" && apt-get download -q "$name=$ver" >&2); then
        rm -rf "$dir"
        [ -z "$added" ] || remove_suite "$added"
        die "apt-get download $name=$ver failed"
    fi
    [ -z "$added" ] || remove_suite "$added"
    mv "$dir"/*.deb "$DEB_CACHE/${name}_${ver/:/%3a}_amd64.deb.tmp"
    rmdir "$dir"
}

# remove_suite SUITE: take back what add_suite added to apt's configuration (its package lists
# go at the next `apt-get update`).
remove_suite() {
    rm -f "/etc/apt/sources.list.d/driftguard-dev-$1.sources" "/etc/apt/preferences.d/driftguard-dev-$1"
}

# add_suite SUITE: let apt download (never install) from a Debian suite.
add_suite() {
    local suite=$1
    local src=/etc/apt/sources.list.d/driftguard-dev-$suite.sources
    local pin=/etc/apt/preferences.d/driftguard-dev-$suite
    if [ ! -f "$src" ]; then
        log "adding apt source for Debian $suite (download only, pinned to -1)"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$suite" > "$src"
        printf 'Package: *\nPin: release n=%s\nPin-Priority: -1\n' "$suite" > "$pin"
    fi
    apt-get update -q >&2 || die "apt-get update failed"
}

# unpack NAME-VERSION: dpkg -x the package into $PREFIX/NAME-VERSION once; print that dir.
unpack() {
    local key=$1 dest=$PREFIX/$1
    if [ ! -f "$dest/.unpacked" ]; then
        mkdir -p "$PREFIX"
        (
            flock 8
            if [ ! -f "$dest/.unpacked" ]; then
                deb=$(deb_file "$key")
                rm -rf "$dest"
                mkdir -p "$dest"
                dpkg -x "$deb" "$dest"
                touch "$dest/.unpacked"
            fi
        ) 8> "$PREFIX/.lock"
    fi
    echo "$dest"
}

# runc_path VERSION: a runc binary of that version that runs on this machine.
runc_path() {
    local ver=$1 dir bin glibc patchelf
    [ -n "${PKG[runc-$ver]:-}" ] || die "unknown runc version $ver (want 1.1.5, 1.1.15 or 1.3.6)"
    dir=$(unpack "runc-$ver")
    bin=$dir/usr/sbin/runc
    if "$bin" --version >/dev/null 2>&1; then
        echo "$bin"
        return
    fi
    if [ ! -x "$bin.privlibc" ] || ! "$bin.privlibc" --version >/dev/null 2>&1; then
        glibc=$(unpack libc6-2.41)
        # libseccomp 2.6 goes next to the private libc so the patched runc finds both.
        cp -a "$(unpack libseccomp2-2.6.0)"/usr/lib/x86_64-linux-gnu/. "$glibc/usr/lib/x86_64-linux-gnu/"
        patchelf=$(unpack patchelf-0.14.3)/usr/bin/patchelf
        local g=$glibc/usr/lib/x86_64-linux-gnu
        cp "$bin" "$bin.privlibc.tmp.$$"
        "$patchelf" --set-interpreter "$g/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$g" \
            "$bin.privlibc.tmp.$$"
        mv "$bin.privlibc.tmp.$$" "$bin.privlibc"
        "$bin.privlibc" --version >/dev/null || die "patched runc $ver does not run"
    fi
    echo "$bin.privlibc"
}

busybox_path() {
    echo "$(unpack busybox-static-1.37.0)/usr/bin/busybox"
}

ctd_bin() { echo "$(unpack "containerd-$DG_CONTAINERD")/usr/bin"; }

# ------------------------------------------------------------------------------ images

# build_images: the test images as OCI archives, built by the test kit (no docker needed).
build_images() {
    mkdir -p "$IMAGES"
    testkit build-images --busybox "$(busybox_path)" --out "$IMAGES" >&2 \
        || die "building the test images failed"
}

import_images() {
    local ctr; ctr="$(ctd_bin)/ctr --address $SOCK -n k8s.io"
    local img
    for img in pause busybox scenario; do
        $ctr images import "$IMAGES/$img.oci.tar" >/dev/null || die "importing $img failed"
    done
    # ctr 1.7 has no `import --label`; `images label` works on both.
    $ctr images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
}

# ------------------------------------------------------------------------------ config

write_config() {
    local bin runtime_bin restrict=false major capeff
    bin=$(ctd_bin)
    runtime_bin=${DG_RUNTIME_BINARY:-$(runc_path "$DG_RUNC")}
    # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj for the pause container.
    capeff=$(awk '/^CapEff/{print $2}' /proc/self/status)
    if (( (16#$capeff >> 24 & 1) == 0 )); then restrict=true; fi
    major=${DG_CONTAINERD%%.*}
    mkdir -p "$LAB"/{root,state,tmp,opt,runc-root,cni/bin,cni/net.d,nri/plugins,nri/conf.d,logs,pods,etc} "$RUN"
    chmod 0700 "$RUN"
    if [ "$major" -ge 2 ]; then
        config_v3 "$runtime_bin" "$restrict" > "$LAB/etc/config.toml"
    else
        config_v2 "$runtime_bin" "$restrict" > "$LAB/etc/config.toml"
    fi
    "$bin/containerd" -c "$LAB/etc/config.toml" config dump > "$LAB/etc/config.effective.toml" \
        || die "containerd rejects $LAB/etc/config.toml"
}

common_config() {
    cat <<EOF
root = "$LAB/root"
state = "$LAB/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$RUN/debug.sock"
  level = "info"
[metrics]
  address = ""
EOF
}

nri_config() {
    cat <<EOF
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    disable_connections = false
    socket_path = "$NRI_SOCK"
    plugin_path = "$LAB/nri/plugins"
    plugin_config_path = "$LAB/nri/conf.d"
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "2s"
EOF
}

config_v3() {
    echo "version = 3"
    echo "temp = \"$LAB/tmp\""
    common_config
    cat <<EOF

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$LAB/opt"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = $2
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$1"
          Root = "$LAB/runc-root"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$LAB/cni/bin"]
      conf_dir = "$LAB/cni/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
    nri_config
}

config_v2() {
    echo "version = 2"
    common_config
    cat <<EOF

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$LAB/opt"
  [plugins.'io.containerd.grpc.v1.cri']
    sandbox_image = "$PAUSE_IMAGE"
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = $2
    enable_cdi = false
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins.'io.containerd.grpc.v1.cri'.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc.options]
          BinaryName = "$1"
          Root = "$LAB/runc-root"
          SystemdCgroup = false
    [plugins.'io.containerd.grpc.v1.cri'.cni]
      bin_dir = "$LAB/cni/bin"
      conf_dir = "$LAB/cni/net.d"
EOF
    nri_config
}

# ------------------------------------------------------------------------------ lifecycle

containerd_pid() {
    local pid
    [ -f "$LAB/containerd.pid" ] || return 1
    pid=$(cat "$LAB/containerd.pid")
    # The pid file is ours only while that pid still runs our containerd binary.
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$LAB/etc/config.toml" \
        || return 1
    echo "$pid"
}

# shim_pids: runc shims started by this instance (they carry our socket in their arguments).
shim_pids() {
    local p
    for p in /proc/[0-9]*; do
        [ -r "$p/cmdline" ] || continue
        if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "containerd-shim-runc-v2 .*-address $SOCK "; then
            echo "${p#/proc/}"
        fi
    done
}

# our_mounts: mount points below this instance's directory, deepest first.
our_mounts() {
    awk -v lab="$LAB/" 'index($5, lab) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

start_containerd() {
    local pid bin
    if pid=$(containerd_pid); then
        log "containerd $DG_CONTAINERD already running (pid $pid)"
    else
        bin=$(ctd_bin)
        # A crash can leave sockets behind; containerd refuses to bind over a live one only.
        rm -f "$SOCK" "$SOCK.ttrpc" "$RUN/debug.sock" "$NRI_SOCK"
        # The daemon must not inherit the lock (fd 9), or it would hold it for its lifetime.
        PATH="$bin:$PATH" setsid "$bin/containerd" -c "$LAB/etc/config.toml" \
            >> "$LAB/logs/containerd.log" 2>&1 < /dev/null 9>&- &
        echo $! > "$LAB/containerd.pid"
        log "containerd $DG_CONTAINERD started (pid $!), log $LAB/logs/containerd.log"
    fi
    wait_cri_ready
}

wait_cri_ready() {
    local i
    for i in $(seq 1 300); do
        if cri_ready; then
            [ -S "$NRI_SOCK" ] || die "containerd runs but has no NRI socket at $NRI_SOCK"
            return 0
        fi
        containerd_pid >/dev/null || die "containerd exited; see $LAB/logs/containerd.log"
        sleep 0.1
    done
    die "containerd CRI not ready after 30 s; see $LAB/logs/containerd.log"
}

cri_ready() {
    "$(ctd_bin)/ctr" --address "$SOCK" version >/dev/null 2>&1 || return 1
    testkit cri-ready --endpoint "$SOCK" >/dev/null 2>&1
}

# testkit ARGS: run the test kit's helper binary (built by `up`).
testkit() {
    "${CARGO_TARGET_DIR:-$REPO/target}/debug/dg-testkit" "$@"
}

cmd_up() {
    log "containerd $DG_CONTAINERD, runc ${DG_RUNTIME_BINARY:-$DG_RUNC}, in $LAB"
    (cd "$REPO" && cargo build -q -p driftguard-testkit --bin dg-testkit) || die "building dg-testkit failed"
    runc_path "$DG_RUNC" >/dev/null
    build_images
    write_config
    start_containerd
    import_images
    log "ready: CRI at $SOCK, NRI at $NRI_SOCK"
}

# stop_owned: processes a test fixture started for this instance (daemon, fd holder), listed
# in owned.pids; a pid is only signalled while it still runs a driftguard binary.
stop_owned() {
    local p
    [ -f "$LAB/owned.pids" ] || return 0
    while read -r p; do
        if [ -r "/proc/$p/cmdline" ] && tr '\0' ' ' < "/proc/$p/cmdline" | grep -q driftguard; then
            kill -9 "$p" 2>/dev/null || true
        fi
    done < "$LAB/owned.pids"
    rm -f "$LAB/owned.pids"
}

cmd_down() {
    local pid i p
    [ -d "$LAB" ] || return 0
    stop_owned
    if pid=$(containerd_pid); then
        testkit cri-rm-all --endpoint "$SOCK" >&2 || log "could not remove pods through CRI; stopping anyway"
        kill "$pid"
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then log "containerd $pid ignores SIGTERM, killing"; kill -9 "$pid"; fi
        log "containerd $pid stopped"
    fi
    rm -f "$LAB/containerd.pid"
    # Containers still running (containerd crashed or ignored them) die with their runc state.
    local runc; runc=$(runc_path "$DG_RUNC")
    if [ -d "$LAB/runc-root" ]; then
        for i in $("$runc" --root "$LAB/runc-root" list -q 2>/dev/null); do
            "$runc" --root "$LAB/runc-root" delete -f "$i" >/dev/null 2>&1 || true
        done
    fi
    for p in $(shim_pids); do kill -9 "$p" 2>/dev/null || true; done
    for p in $(our_mounts); do umount -l "$p" 2>/dev/null || true; done
    rm -f "$SOCK" "$SOCK.ttrpc" "$RUN/debug.sock" "$NRI_SOCK"
    [ -z "$(our_mounts)" ] || die "mounts left below $LAB: $(our_mounts | tr '\n' ' ')"
    [ -z "$(shim_pids)" ] || die "shims still running: $(shim_pids | tr '\n' ' ')"
}

cmd_purge() {
    cmd_down
    rm -rf "$LAB"
    # runc leaves the empty cgroupfs parents of the containers behind.
    rmdir /sys/fs/cgroup/*/k8s.io 2>/dev/null || true
    log "purged $LAB"
}

cmd_env() {
    cat <<EOF
export DG_CONTAINERD_VERSION=$DG_CONTAINERD
export DG_CRI_ENDPOINT=$SOCK
export DG_NRI_SOCKET=$NRI_SOCK
export DG_CTD_ROOT=$LAB/root
export DG_CTD_STATE=$LAB/state
export DG_CTD_LOG=$LAB/logs/containerd.log
export DG_NRI_PLUGIN_DIR=$LAB/nri/plugins
export DG_CTR="$(ctd_bin)/ctr --address $SOCK -n k8s.io"
export DG_RUNC_BIN=$(runc_path "$DG_RUNC")
export DG_RUNC_ROOT=$LAB/runc-root
export DG_IMAGES_DIR=$IMAGES
export DG_PODS_DIR=$LAB/pods
EOF
}

# Every state-changing command holds one lock per instance.
with_lock() {
    mkdir -p "$DG_DEV_DIR"
    exec 9> "$DG_DEV_DIR/instance-$DG_CONTAINERD.lock"
    flock 9
    "$@"
}

case "${1:-}" in
    up) with_lock cmd_up ;;
    down) with_lock cmd_down ;;
    purge) with_lock cmd_purge ;;
    env) with_lock cmd_env ;;
    status) if pid=$(containerd_pid); then echo "running (pid $pid)"; else echo "stopped"; exit 1; fi ;;
    runc-path) [ -n "${2:-}" ] || die "usage: runtime.sh runc-path VERSION"; runc_path "$2" ;;
    busybox-path) busybox_path ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
