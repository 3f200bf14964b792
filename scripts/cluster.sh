#!/usr/bin/env bash
# A weft cluster in network namespaces: etcd, N nodes running weftd (VXLAN
# overlay, flannel-compatible leases) and pods attached by the flannel CNI
# plugin. Needs root. Nothing in the root namespace is changed.
#
# Usage:
#   scripts/cluster.sh up [N]     build (scripts/setup.sh) and start N nodes
#                                 (default 3) with PODS pods each (default 2)
#   scripts/cluster.sh status     what runs
#   scripts/cluster.sh show       leases, and each node's flannel.1 entries
#   scripts/cluster.sh ping       every cross-node pod pair, both ways
#   scripts/cluster.sh down       remove every netns, process and state file
#
# Environment: NAME (cluster name, default "weft"), STATE (state dir,
# default /run/weft-cluster/$NAME), PODS, SKIP_SETUP=1 (do not run setup.sh),
# plus the WC_* knobs of scripts/lib/cluster.sh (e.g. WC_WEFTD_ARGS).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/cluster.sh
source "$here/lib/cluster.sh"

NAME=${NAME:-weft}
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

cmd_up() {
    local nodes=${1:-3} pods=${PODS:-2} n p
    [[ $nodes =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 200 ] || { usage; exit 2; }
    if [ "${SKIP_SETUP:-0}" != 1 ]; then
        "$here/setup.sh" >&2 || exit 1
    fi
    cluster_init "$NAME" "${STATE:-}" || exit 1
    [ -e "/run/netns/$WC_HUB" ] && { echo "cluster $NAME is already up (scripts/cluster.sh down first)" >&2; exit 1; }
    fail() { echo "up failed; tearing down (logs: WC_KEEP_STATE=1 keeps them)" >&2; cluster_teardown; exit 1; }
    trap 'echo interrupted >&2; cluster_teardown; exit 130' INT TERM
    cluster_create || fail
    cluster_write_config "${CONFIG:-}" || fail
    for ((n = 1; n <= nodes; n++)); do cluster_node_add "$n" || fail; done
    for ((n = 1; n <= nodes; n++)); do
        for ((p = 1; p <= pods; p++)); do cluster_pod_add "$n" "p$p" >/dev/null || fail; done
    done
    cluster_wait_converged || fail
    trap - INT TERM
    cluster_status
}

cmd=${1:-}
shift || true
case "$cmd" in
up) cmd_up "$@" ;;
down)
    cluster_init "$NAME" "${STATE:-}" && cluster_teardown
    ;;
status) cluster_init "$NAME" "${STATE:-}" && cluster_status ;;
show) cluster_init "$NAME" "${STATE:-}" && cluster_show_all ;;
ping) cluster_init "$NAME" "${STATE:-}" && cluster_ping_all ;;
-h | --help | help) usage ;;
*) usage; exit 2 ;;
esac
