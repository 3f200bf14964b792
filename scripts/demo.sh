#!/usr/bin/env bash
# weft demo: a 3-node pod network in network namespaces, end to end.
#
#   sudo scripts/demo.sh            # setup, cluster up, show, ping, tear down
#   sudo BACKEND=host-gw scripts/demo.sh    # the same with host-gw routes
#   sudo BACKEND=directrouting scripts/demo.sh   # vxlan with DirectRouting
#   sudo KEEP=1 scripts/demo.sh     # leave it running; later:
#                                   #   sudo NAME=demo scripts/cluster.sh down
#
# What it does:
#   1. scripts/setup.sh (packages, cargo build --release --workspace);
#   2. an underlay bridge (198.51.100.0/24), etcd, and the network config
#      {"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}} (or
#      "host-gw", or vxlan with "DirectRouting":true) at
#      /coreos.com/network/config, exactly as for flanneld;
#   3. 3 nodes, each running weftd (lease, subnet.env, flannel.1 unless
#      host-gw);
#   4. 2 pods per node started through containerd's CRI, as a kubelet
#      starts them: one containerd per node (scripts/lib/containerd.sh),
#      kube-flannel's conflist, weft's plugins; where containerd cannot run,
#      it says why and calls the flannel plugin directly instead;
#   5. prints the leases, each node's routes / FDB / neighbours on flannel.1,
#      and pings every pod from every pod on another node (both ways),
#      printing each ping's own round-trip time.
# Exits non-zero if any step or any ping fails. Nothing in the root network
# namespace is changed; everything is removed at the end (unless KEEP=1).
#
# Environment: BACKEND (vxlan, host-gw or directrouting; default vxlan),
# NODES (default 3), PODS (per node, default 2), NAME (default demo),
# SKIP_SETUP=1, KEEP=1.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/cluster.sh
source "$here/lib/cluster.sh"
# shellcheck source=lib/containerd.sh
source "$here/lib/containerd.sh"

NAME=${NAME:-demo}
NODES=${NODES:-3}
PODS=${PODS:-2}
t_start=$SECONDS

step() { printf '\n\033[1m### %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh needs root (network namespaces): sudo $0" >&2
    exit 1
fi

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    step "setup (scripts/setup.sh)"
    "$here/setup.sh" || exit 1
fi

export WC_BACKEND=${BACKEND:-vxlan}
cluster_init "$NAME" || exit 1
if [ -e "/run/netns/$WC_HUB" ]; then
    echo "a cluster named $NAME is already up: NAME=$NAME $here/cluster.sh down" >&2
    exit 1
fi

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${KEEP:-0}" = 1 ]; then
        echo
        echo "KEEP=1: cluster '$NAME' left running (state $WC_STATE)."
        echo "  inspect: ip netns exec $(cluster_node_ns 1) ip route; NAME=$NAME $here/cluster.sh status"
        echo "  remove:  NAME=$NAME $here/cluster.sh down"
    else
        ctrd_cluster_teardown
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "demo failed: $*" >&2; exit 1; }

step "cluster '$NAME': etcd + $NODES nodes running weftd (backend $WC_BACKEND)"
cluster_create || fail "underlay/etcd"
cluster_write_config || fail "config"
for ((n = 1; n <= NODES; n++)); do cluster_node_add "$n" || fail "node $n"; done

if why=$(ctrd_check); then
    step "pods through containerd's CRI, as a kubelet starts them ($PODS per node)"
    echo "containerd $(containerd --version | awk '{print $3}') on every node (its own netns and mount namespace),"
    echo "CNI config: kube-flannel's conf/10-weft.conflist, unchanged; weft's plugins in its bin_dir"
    for ((n = 1; n <= NODES; n++)); do
        ctrd_node_start "$n" || fail "containerd on n$n"
        for ((p = 1; p <= PODS; p++)); do ctrd_pod_add "$n" "p$p" >/dev/null || fail "pod p$p on n$n"; done
    done
    echo "what containerd ran for pod p1 on n1 (recorded in its bin_dir):"
    for f in "$(ctrd_node_dir 1)"/calls/*.json; do
        jq -r '"  \(.env.CNI_COMMAND) \(.plugin) \(.env.CNI_IFNAME) exit \(.rc)"' "$f"
    done | head -n 5
else
    step "pods through the flannel CNI plugin ($PODS per node)"
    echo "containerd cannot run here ($why): calling the plugins directly instead"
    for ((n = 1; n <= NODES; n++)); do
        for ((p = 1; p <= PODS; p++)); do cluster_pod_add "$n" "p$p" >/dev/null || fail "pod p$p on n$n"; done
    done
    echo "flannel plugin config on n1 (stdin of CNI ADD):"
    jq . "$(cluster_node_dir 1)/cni.conf"
fi
echo "subnet.env written by weftd on n1:"
sed 's/^/  /' "$(cluster_node_subnet_file 1)"
cluster_wait_converged || fail "overlay did not converge"
echo
cluster_status

step "leases, and each node's routes (and flannel.1's FDB / neighbours)"
cluster_show_all

step "cross-node pod-to-pod pings"
cluster_ping_all
rc=$?
echo "demo took $((SECONDS - t_start)) s"
exit $rc
