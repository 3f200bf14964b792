#!/usr/bin/env bash
# Benchmark (not a test): weft's bridge + host-local CNI plugins against the
# Go reference plugins (/usr/lib/cni), full ADD and full DEL, alternating
# implementations run by run. Prints a Markdown report on stdout (progress on
# stderr).
#
# Usage (as root):  scripts/bench-cni.sh [-n ITERATIONS] [--raw FILE]
#   -n, --iterations N   ADD+DEL pairs per implementation (default 200,
#                        or $BENCH_ITERATIONS)
#   --raw FILE           also write every sample as CSV to FILE
#   --static             benchmark the static IPAM plugin alone (ADD, DEL,
#                        peak RSS) instead of bridge + host-local
#   --portmap            instead: portmap ADD and DEL with 1,000 mappings
#                        present against none, weft and Go interleaved
#                        (scripts/bench_portmap.py)
#   --chain              instead: bandwidth and tuning chained after weft's
#                        bridge, weft against Go (scripts/bench_chain.py)
#   --kube-flannel       instead: kube-flannel's whole conflist (flannel +
#                        portmap) ADD and DEL, weft against Go, as libcni
#                        drives it (scripts/bench_flannel_chain.py)
#   --k3s                the same with k3s's (flannel + portmap + bandwidth)
# Environment:
#   BENCH_ITERATIONS     same as -n
#   WEFT_CNI_DIR         weft plugin dir (default target/x86_64-unknown-linux-gnu/release)
#   GO_CNI_DIR           Go plugin dir (default /usr/lib/cni)
#   TMPDIR               where the per-run directory (and so host-local's
#                        dataDir) goes (default /tmp); fsync cost depends on it
#
# Isolation: everything happens in network namespaces named wb<pid>-*: one
# "node" netns (lo up) where the plugins run and the bridge cni0 lives, and
# one fresh pod netns per ADD. The root namespace's links, routes and
# firewall are never touched (ipMasq is false). Pod addresses come from
# 10.244.0.0/24; host-local's dataDir is in a per-run temporary directory.
# An EXIT trap removes the namespaces and the directory on success or
# failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

iterations="${BENCH_ITERATIONS:-200}"
raw=""
mode_args=()
portmap=""
chain=""
flannel_chain=""
while (($# > 0)); do
    case "$1" in
        -n | --iterations) iterations="${2:?-n needs a number}"; shift 2 ;;
        --iterations=*) iterations="${1#*=}"; shift ;;
        --portmap) portmap=1; shift ;;
        --chain) chain=1; shift ;;
        --kube-flannel | --k3s) flannel_chain="${1#--}"; shift ;;
        --raw) raw="$(realpath -m -- "${2:?--raw needs a file}")"; shift 2 ;;
        --static) mode_args+=(--static); shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
cd "$root"
[[ $iterations =~ ^[1-9][0-9]*$ ]] || die "iterations must be a positive integer, got '$iterations'"
[[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
if [[ ! -x /usr/bin/time ]]; then
    log "/usr/bin/time missing (needed for peak RSS): apt-get install time"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >&2
fi
for tool in ip python3 /usr/bin/time; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

weft_dir="${WEFT_CNI_DIR:-$root/target/x86_64-unknown-linux-gnu/release}"
go_dir="${GO_CNI_DIR:-/usr/lib/cni}"

# --- idempotent setup ---------------------------------------------------------
if [[ ! -x $go_dir/bridge || ! -x $go_dir/host-local ]]; then
    [[ $go_dir == /usr/lib/cni ]] || die "no Go plugins in $go_dir"
    log "Go reference plugins missing: apt-get install containernetworking-plugins"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends containernetworking-plugins >&2 || {
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends containernetworking-plugins >&2
    }
fi
if [[ ! -x $weft_dir/bridge || ! -x $weft_dir/host-local ]]; then
    [[ -z ${WEFT_CNI_DIR:-} ]] || die "no weft plugins in $weft_dir"
    [[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"
    log "weft plugins missing: cargo build --release -p bridge -p host-local -p loopback"
    cargo build --release -p bridge -p host-local -p loopback >&2
fi

# --- per-run namespaces and tmp dir, removed on any exit -------------------------
prefix="wb$$"
node="$prefix-node"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")"
driver=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n $driver ]] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        wait "$driver" 2>/dev/null || true
    fi
    # Only our own namespaces: names start with "wb<pid>-".
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == "$prefix"-* ]] && ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf -- "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

ip netns add "$node"
ip -n "$node" link set lo up

# --- metadata for the report -----------------------------------------------------
weft_rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    weft_rev+=", uncommitted changes"
fi
weft_rev="git $weft_rev"
go_version="$(dpkg-query -W -f='containernetworking-plugins ${Version}' containernetworking-plugins 2>/dev/null || echo unknown)"
datadir_fs="$(findmnt -n -o FSTYPE,SOURCE --target "$tmp" 2>/dev/null | head -n 1 | awk '{print $1 " on " $2}')"
cpu_model="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
repro="sudo"
[[ -n ${WEFT_CNI_DIR:-} ]] && repro+=" WEFT_CNI_DIR=$WEFT_CNI_DIR"
[[ -n ${GO_CNI_DIR:-} ]] && repro+=" GO_CNI_DIR=$GO_CNI_DIR"
repro+=" scripts/bench-cni.sh -n $iterations${mode_args[*]:+ ${mode_args[*]}}${chain:+ --chain}"

log "$iterations ADD+DEL pairs per implementation; netns prefix $prefix; tmp $tmp"
log "weft: $weft_dir"
log "Go:   $go_dir"

if [[ -n $portmap ]]; then
    ip netns add "$prefix-pod"
    # Two nodes: one stays empty, one gets the 1,000 mappings, so probes of
    # all four cells (weft/Go x none/full) interleave. Each has the pods'
    # bridge, so portmap finds the link towards them (route_localnet).
    ip netns add "$prefix-full"
    ip -n "$prefix-full" link set lo up
    for ns in "$node" "$prefix-full"; do
        ip -n "$ns" link add cni0 type bridge
        ip -n "$ns" addr add 10.244.0.1/16 dev cni0
        ip -n "$ns" link set cni0 up
    done
    ip netns exec "$node" python3 "$root/scripts/bench_portmap.py" \
        --tmp "$tmp" --netns "/run/netns/$prefix-pod" --full-node "/run/netns/$prefix-full" \
        --weft-dir "$weft_dir" --go-dir "$go_dir" --iterations "$iterations" \
        --repro "sudo scripts/bench-cni.sh --portmap -n $iterations ($weft_rev, $go_version)" &
    driver=$!
    wait "$driver"
    exit 0
fi

if [[ -n $flannel_chain ]]; then
    # No Go flannel plugin is packaged: build scripts/go-flannel against
    # Debian's libcni sources (as setup.sh builds the libcni driver) and put
    # it beside symlinks to the Go plugins, so its delegates are Go's too.
    command -v go >/dev/null 2>&1 || die "go not found (scripts/setup.sh installs golang-go)"
    gotmp="${WEFT_GOPATH:-${TMPDIR:-/tmp}/weft-gopath}"
    mkdir -p "$tmp/go-cni" "$gotmp"
    ln -s "$go_dir"/* "$tmp/go-cni/"
    rm -f "$tmp/go-cni/flannel"
    (cd "$root/scripts/go-flannel" && GO111MODULE=off GOPATH="/usr/share/gocode:$gotmp" \
        GOFLAGS= GOCACHE="${GOCACHE:-$gotmp/cache}" CGO_ENABLED=0 \
        go build -o "$tmp/go-cni/flannel" .) >&2
    if [[ $flannel_chain == k3s ]]; then
        conflist="$root/tests/conflists/k3s-10-flannel.conflist" label=k3s target=""
    else
        conflist="$root/conf/10-weft.conflist" label=kube-flannel target=--target
    fi
    ip netns exec "$node" python3 "$root/scripts/bench_flannel_chain.py" \
        --prefix "$prefix" --tmp "$tmp" --root "$root" \
        --weft-dir "$weft_dir" --go-dir "$tmp/go-cni" --iterations "$iterations" \
        --conflist "$conflist" --label "$label" $target \
        --repro "sudo scripts/bench-cni.sh --$flannel_chain -n $iterations" \
        --weft-rev "$weft_rev" --go-version "$go_version" &
    driver=$!
    wait "$driver"
    exit 0
fi

# The driver runs inside the node netns (entered once): each plugin exec is
# then a plain posix_spawn + wait4. `ip netns exec` also gives the driver a
# private mount namespace with the node netns' /sys; the pod netns it
# creates are mounted there, so they vanish with the driver at the latest.
# Started in the background so the trap runs as soon as a signal arrives.
driver_py=bench_cni.py
[[ -n $chain ]] && driver_py=bench_chain.py
ip netns exec "$node" python3 "$root/scripts/$driver_py" \
    --prefix "$prefix" --tmp "$tmp" \
    --weft-dir "$weft_dir" --go-dir "$go_dir" \
    --iterations "$iterations" ${raw:+--raw "$raw"} "${mode_args[@]}" \
    --repro "$repro" --weft-rev "$weft_rev" --go-version "$go_version" \
    --cpu-model "$cpu_model" --datadir-fs "${datadir_fs:-unknown}" &
driver=$!
wait "$driver"
