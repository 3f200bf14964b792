#!/usr/bin/env bash
# Idempotent developer/CI setup for weft:
#   1. Debian packages (skipped when all are already installed),
#   2. a Rust toolchain (rustup, only when cargo is missing) and
#      cargo-machete (the unused-dependency gate of scripts/test.sh),
#   3. cargo build --release --workspace (static plugin binaries),
#   4. the Go libcni test driver (tests/libcni-driver/bin/libcni-driver).
# Safe to re-run; a re-run with everything in place only runs the builds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '==> %s\n' "$*" >&2; }

# --- 1. Debian packages -----------------------------------------------------
packages=(
    etcd-server containernetworking-plugins golang-go golang-github-appc-cni-dev
    iproute2 iptables nftables iperf3 protobuf-compiler libprotobuf-dev jq time iputils-ping openssl etcd-client python3
    ca-certificates curl build-essential pkg-config strace ethtool
    podman busybox-static containerd runc
)
# libprotobuf-dev: the well-known .proto files etcd-client's build imports
# (a recommends of protobuf-compiler, which --no-install-recommends skips).
# containerd, runc, busybox-static: one containerd per simulated node, its
# sandbox image built from busybox (scripts/lib/containerd.sh); nothing is
# pulled. On a systemd host the package enables the host's own containerd,
# which weft's scripts never use.
# ethtool: weftctl doctor reads VXLAN checksum offload with it (kernels < 5.7).
# build-essential: gcc as linker and libc6-dev's static glibc (crt-static).
missing=()
for p in "${packages[@]}"; do
    if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} > 0)); then
    log "installing Debian packages: ${missing[*]}"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || {
            log "not root and no sudo: install ${missing[*]} yourself"
            exit 1
        }
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages already installed"
fi

# --- 2. Rust toolchain ------------------------------------------------------
if [[ -d "$HOME/.cargo/bin" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: installing the Rust toolchain with rustup"
    if ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable; then
        log "rustup unreachable: need a Rust toolchain (>= 1.85) on PATH"
        exit 1
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
    # The explicit target in .cargo/config.toml must be installed (a no-op
    # on the usual x86_64 host toolchain).
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu ||
        rustup target add x86_64-unknown-linux-gnu
fi

# cargo-machete from crates.io, pinned; scripts/test.sh runs it as a gate.
machete_version=0.9.2
if [[ $(cargo machete --version 2>/dev/null) != "$machete_version" ]]; then
    log "installing cargo-machete $machete_version (cargo install)"
    cargo install --locked --version "$machete_version" cargo-machete
else
    log "cargo-machete $machete_version already installed"
fi

# --- 3. Rust workspace ------------------------------------------------------
log "cargo build --release --workspace"
cargo build --release --workspace

# --- 4. Go libcni driver ----------------------------------------------------
# GOPATH mode against Debian's libcni sources in /usr/share/gocode; no
# network, no go.mod. The private GOPATH holds only the build cache.
driver_src="$root/tests/libcni-driver"
driver_bin="$driver_src/bin/libcni-driver"
gotmp="${WEFT_GOPATH:-${TMPDIR:-/tmp}/weft-gopath}"
mkdir -p "$driver_src/bin" "$gotmp"
log "building $driver_bin"
(
    cd "$driver_src"
    GO111MODULE=off GOPATH="/usr/share/gocode:$gotmp" GOFLAGS= \
        GOCACHE="${GOCACHE:-$gotmp/cache}" CGO_ENABLED=0 \
        go build -o "$driver_bin.tmp" .
    mv -f "$driver_bin.tmp" "$driver_bin"
)

bindir="$root/target/x86_64-unknown-linux-gnu/release"
log "plugins:        $bindir/{bridge,loopback,host-local}"
log "libcni driver:  $driver_bin"
log "reference CNI:  /usr/lib/cni"
for b in bridge loopback host-local; do
    [[ -x "$bindir/$b" ]] || log "warning: $bindir/$b was not built"
done
