# shellcheck shell=bash
# scripts/lib/cluster.sh: a throwaway weft/flannel cluster in network
# namespaces, as sourceable bash functions. Needs root, iproute2, etcd,
# etcdctl, curl, jq, python3 and weft's release binaries.
#
#   source scripts/lib/cluster.sh
#   cluster_init demo                 # state in /run/weft-cluster/demo
#   cluster_create                    # hub bridge + etcd netns, etcd running
#   cluster_write_config              # <prefix>/config, flannel's JSON
#   cluster_node_add 1; cluster_node_add 2
#   cluster_pod_add 1 a; cluster_pod_add 2 a
#   cluster_ping 1 a 2 a
#   cluster_teardown                  # every netns, process and file
#
# Topology (all names start with the cluster's netns prefix, default
# "wc-<name>-"; nothing is created in or changed in the root namespace):
#   <p>hub        bridge br0, the underlay 198.51.100.0/24 (no address)
#   <p>etcd       eth0 198.51.100.1, etcd on :2379
#   <p>n<N>       node N: eth0 198.51.100.(10+N), weftd, cni0, flannel.1
#   <p>n<N>-<pod> a pod on node N, eth0 set up by the flannel CNI plugin
# Nodes and etcd have no default route, so nothing can leave the underlay.
# Two segments joined by a router (for host-gw and DirectRouting across a
# router): node numbers 101..200 sit on a second underlay,
#   <p>hub2       bridge br0, the underlay 203.0.113.0/24
#   <p>router     eth0 198.51.100.254 (on hub), eth1 203.0.113.254 (on hub2),
#                 forwarding; created with the first such node
#   <p>n<N>       N >= 101: eth0 203.0.113.(N-90), route to 198.51.100.0/24
#                 via the router (and segment-1 nodes and etcd get the way back)
#
# State (WC_STATE, default /run/weft-cluster/<name>) records everything
# created, so `cluster_init <name>; cluster_teardown` works from any shell:
#   prefix, etcd_prefix,  netns prefix, etcd key prefix, weftd flags
#   weftd_args            (fixed when the cluster is first initialised)
#   netns/<name>          one marker per namespace created
#   pids/<label>          "pid starttime" of etcd and each weftd
#   logs/                 etcd.log, weftd-n<N>.log
#   etcd/                 etcd's data dir
#   nodes/<N>/            subnet.env, ipam/ (host-local dataDir), flannel/
#                         (flannel plugin dataDir), cni.conf, weftd.args,
#                         pods/<pod>.{json,ip}
#
# Knobs (environment):
#   WC_BIN           dir with weftd, flannel, bridge, host-local, loopback
#                    (default <repo>/target/x86_64-unknown-linux-gnu/release)
#   WC_PREFIX        netns prefix (default wc-<name>-)         \ read by the first
#   WC_ETCD_PREFIX   etcd key prefix (default /coreos.com/network) | cluster_init,
#   WC_WEFTD_ARGS    weftd flags for every node                 / then kept in
#                    (default "--reconcile-interval=2 --ip-masq")   the state dir
#                    on top of the fixed --etcd-endpoints --etcd-prefix
#                    --iface=eth0 --public-ip --subnet-file --healthz-ip/port
#   WC_BACKEND       vxlan (default), host-gw or directrouting (vxlan with
#                    DirectRouting): the default network config and what
#                    cluster_node_has_peer checks; kept in the state dir
#   WC_CNI_VERSION   cniVersion of the pod network config (default 1.0.0)
#   WC_TIMEOUT       seconds to wait for readiness (default 30)
#   WC_QUIET=1       no progress lines on stderr
#   WC_KEEP_LEASE=1  cluster_node_remove leaves the node's lease in etcd
#   WC_KEEP_STATE=1  cluster_teardown keeps the state dir (logs)
#
# Functions (names are stable; other scripts and tests source this file):
#   cluster_init NAME [STATE]   cluster_create   cluster_teardown   cluster_status
#   cluster_etcd_start/_stop/_running   cluster_etcdctl ARGS   cluster_etcd_put/get/del
#   cluster_write_config [JSON]   cluster_lease_put SUBNET IP MAC [VNI]   cluster_lease_del SUBNET
#   cluster_leases (table)   cluster_leases_raw ("SUBNET LEASEHEX VALUE")
#   cluster_node_add N [ARGS]   cluster_node_create N   cluster_node_remove N
#   cluster_weftd_start N [ARGS]   cluster_weftd_stop N [SIG]   cluster_weftd_pid N
#   cluster_node_wait_ready N [T]   cluster_node_ns/_ip/_dir/_subnet/_subnet_file/_lease_key N
#   cluster_nodes   cluster_nodes_up   cluster_node_show N   cluster_show_all
#   cluster_node_has_peer N SUBNET IP   cluster_node_lacks_peer N SUBNET IP
#   cluster_converged   cluster_wait_converged [T]
#   cluster_pod_add N POD (prints IP)   cluster_pod_del N POD   cluster_pod_ns/_ip/_cid N POD
#   cluster_pods ("N POD IP")   cluster_pods_of N   cluster_cni N CMD [POD [IFNAME]]
#   cluster_libcni N CMD POD CONFLIST [CAP]   cluster_chain_pod_add/_del N POD CONFLIST [CAP]
#   cluster_node_var_lib_cni N
#   cluster_ping N1 POD1 N2 POD2 [COUNT]   cluster_ping_all
#   cluster_node_etcd_cut N   cluster_node_etcd_restore N

WC_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WC_REPO=$(cd "$WC_LIB_DIR/../.." && pwd)
WC_UNDERLAY=198.51.100
WC_ETCD_IP=$WC_UNDERLAY.1
WC_ETCD_EP=http://$WC_ETCD_IP:2379
WC_NETWORK_CONFIG_DEFAULT='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
WC_UNDERLAY2=203.0.113
WC_ROUTER_IP=$WC_UNDERLAY.254
WC_ROUTER_IP2=$WC_UNDERLAY2.254

# _wc_network_config: the default config for the cluster's backend.
_wc_network_config() {
    case "$WC_BACKEND" in
    host-gw) echo '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}' ;;
    directrouting) echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}' ;;
    *) echo "$WC_NETWORK_CONFIG_DEFAULT" ;;
    esac
}

_wc_log() { [ "${WC_QUIET:-0}" = 1 ] || printf '[cluster %s] %s\n' "${WC_NAME:-?}" "$*" >&2; }
_wc_die() { printf '[cluster %s] error: %s\n' "${WC_NAME:-?}" "$*" >&2; return 1; }
_wc_need_init() { [ -n "${WC_STATE:-}" ] && [ -d "$WC_STATE" ] || _wc_die "call cluster_init NAME first"; }
_wc_bin() { echo "${WC_BIN:-$WC_REPO/target/x86_64-unknown-linux-gnu/release}"; }

# _wc_wait SECONDS CMD...: retry CMD every 0.2 s until it succeeds.
_wc_wait() {
    local t=$1; shift
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.2
    done
}

# --- processes --------------------------------------------------------------
# Each background process is recorded as "pid starttime" so that a later
# shell never signals a recycled pid.
_wc_starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
_wc_pid_state() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1; }

# _wc_pid LABEL: the recorded pid if that process still runs (not a zombie).
_wc_pid() {
    local f=$WC_STATE/pids/$1 pid st
    [ -f "$f" ] || return 1
    read -r pid st <"$f" || return 1
    [ -n "$pid" ] && [ "$(_wc_starttime "$pid")" = "$st" ] || return 1
    [ "$(_wc_pid_state "$pid")" != Z ] || return 1
    echo "$pid"
}

_wc_record_pid() { mkdir -p "$WC_STATE/pids"; echo "$2 $(_wc_starttime "$2")" >"$WC_STATE/pids/$1"; }

# _wc_stop LABEL [SIGNAL]: signal the process, wait up to 5 s, then SIGKILL.
_wc_stop() {
    local label=$1 sig=${2:-TERM} pid i
    if pid=$(_wc_pid "$label"); then
        kill -"$sig" "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            _wc_pid "$label" >/dev/null || break
            sleep 0.1
        done
        if _wc_pid "$label" >/dev/null; then
            kill -KILL "$pid" 2>/dev/null
            sleep 0.1
        fi
        wait "$pid" 2>/dev/null
    fi
    rm -f "$WC_STATE/pids/$label"
}

# _wc_spawn LABEL NETNS LOG CMD...: start CMD in NETNS in the background.
_wc_spawn() {
    local label=$1 ns=$2 log=$3; shift 3
    nsenter --net="/run/netns/$ns" -- "$@" </dev/null >>"$log" 2>&1 &
    _wc_record_pid "$label" $!
}

# --- namespaces ---------------------------------------------------------------
_wc_netns_add() {
    mkdir -p "$WC_STATE/netns"
    : >"$WC_STATE/netns/$1"
    ip netns add "$1" || return 1
    ip -n "$1" link set lo up
}

_wc_netns_del() {
    local ns=$1 pid
    if [ -e "/run/netns/$ns" ]; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    fi
    rm -f "$WC_STATE/netns/$ns"
}

# Names this cluster may have created (markers, plus a strict name match in
# case a marker was lost).
_wc_our_netns() {
    {
        [ -d "$WC_STATE/netns" ] && ls "$WC_STATE/netns"
        ip netns list 2>/dev/null | awk '{print $1}' | while read -r n; do
            case "$n" in "$WC_PREFIX"*) ;; *) continue ;; esac
            [[ ${n#"$WC_PREFIX"} =~ ^(hub|hub2|router|etcd|n[0-9]+(-[A-Za-z0-9_.]+)?)$ ]] && echo "$n"
        done
    } | sort -u
}

# --- init -------------------------------------------------------------------------
# cluster_init NAME [STATE_DIR]: select (and create the state dir of) a
# cluster. Creates no namespace. Idempotent; reloads an existing cluster.
cluster_init() {
    local name=${1:?cluster_init NAME [STATE_DIR]}
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$ ]] || { _wc_die "bad cluster name '$name'"; return 1; }
    WC_NAME=$name
    WC_STATE=${2:-/run/weft-cluster/$name}
    mkdir -p "$WC_STATE" || return 1
    [ -s "$WC_STATE/prefix" ] || echo "${WC_PREFIX:-wc-$name-}" >"$WC_STATE/prefix"
    [ -s "$WC_STATE/etcd_prefix" ] || echo "${WC_ETCD_PREFIX:-/coreos.com/network}" >"$WC_STATE/etcd_prefix"
    [ -e "$WC_STATE/weftd_args" ] || echo "${WC_WEFTD_ARGS---reconcile-interval=2 --ip-masq}" >"$WC_STATE/weftd_args"
    [ -s "$WC_STATE/backend" ] || echo "${WC_BACKEND:-vxlan}" >"$WC_STATE/backend"
    WC_BACKEND=$(cat "$WC_STATE/backend")
    case "$WC_BACKEND" in vxlan | host-gw | directrouting) ;; *)
        _wc_die "WC_BACKEND must be vxlan, host-gw or directrouting, not '$WC_BACKEND'"
        return 1
        ;;
    esac
    WC_PREFIX=$(cat "$WC_STATE/prefix")
    WC_ETCD_PREFIX=$(cat "$WC_STATE/etcd_prefix")
    WC_HUB=${WC_PREFIX}hub
    WC_HUB2=${WC_PREFIX}hub2
    WC_ROUTER=${WC_PREFIX}router
    WC_ETCD_NS=${WC_PREFIX}etcd
    mkdir -p "$WC_STATE/logs" "$WC_STATE/nodes" "$WC_STATE/pids" "$WC_STATE/netns"
}

# cluster_check_tools: fail with a hint when something is missing.
cluster_check_tools() {
    local t b missing=()
    [ "$(id -u)" = 0 ] || { _wc_die "needs root"; return 1; }
    for t in ip bridge nsenter etcd etcdctl curl jq ping; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    for b in weftd flannel bridge host-local loopback; do
        [ -x "$(_wc_bin)/$b" ] || missing+=("$(_wc_bin)/$b")
    done
    [ ${#missing[@]} -eq 0 ] || { _wc_die "missing: ${missing[*]} (run scripts/setup.sh)"; return 1; }
}

# --- underlay + etcd ---------------------------------------------------------
# _wc_attach NS ADDR HUBPORT [HUB [IFNAME]]: veth HUBPORT (in HUB, default
# the first segment's, on br0) <-> IFNAME (default eth0, in NS).
_wc_attach() {
    local ns=$1 addr=$2 port=$3 hub=${4:-$WC_HUB} ifname=${5:-eth0}
    ip link add "$port" netns "$hub" type veth peer name "$ifname" netns "$ns" || return 1
    ip -n "$hub" link set "$port" master br0 up &&
        ip -n "$ns" addr add "$addr/24" dev "$ifname" &&
        ip -n "$ns" link set "$ifname" up
}

cluster_router_exists() { [ -e "/run/netns/$WC_ROUTER" ]; }

# cluster_router_create: the second segment (hub2, 203.0.113.0/24) and the
# router joining it to the first; etcd and the first segment's nodes get a
# route to it. Idempotent.
cluster_router_create() {
    _wc_need_init || return 1
    cluster_router_exists && return 0
    _wc_log "creating segment $WC_UNDERLAY2.0/24 (netns $WC_HUB2) and router $WC_ROUTER"
    _wc_netns_add "$WC_HUB2" || return 1
    ip -n "$WC_HUB2" link add br0 type bridge && ip -n "$WC_HUB2" link set br0 up || return 1
    _wc_netns_add "$WC_ROUTER" || return 1
    _wc_attach "$WC_ROUTER" "$WC_ROUTER_IP" v-router "$WC_HUB" eth0 &&
        _wc_attach "$WC_ROUTER" "$WC_ROUTER_IP2" v-router "$WC_HUB2" eth1 || return 1
    ip netns exec "$WC_ROUTER" sysctl -qw net.ipv4.ip_forward=1
    local ns n
    for ns in "$WC_ETCD_NS" $(for n in $(cluster_nodes); do [ "$n" -le 100 ] && cluster_node_ns "$n"; done); do
        [ -e "/run/netns/$ns" ] && ip -n "$ns" route replace "$WC_UNDERLAY2.0/24" via "$WC_ROUTER_IP"
    done
    return 0
}

# cluster_create: hub netns with bridge br0, etcd netns, etcd started.
cluster_create() {
    _wc_need_init || return 1
    cluster_check_tools || return 1
    if [ ! -e "/run/netns/$WC_HUB" ]; then
        _wc_log "creating underlay $WC_UNDERLAY.0/24 (netns $WC_HUB)"
        _wc_netns_add "$WC_HUB" || return 1
        ip -n "$WC_HUB" link add br0 type bridge &&
            ip -n "$WC_HUB" link set br0 up || return 1
    fi
    if [ ! -e "/run/netns/$WC_ETCD_NS" ]; then
        _wc_netns_add "$WC_ETCD_NS" || return 1
        _wc_attach "$WC_ETCD_NS" "$WC_ETCD_IP" v-etcd || return 1
    fi
    cluster_etcd_start
}

cluster_etcd_running() { _wc_pid etcd >/dev/null; }

# cluster_etcd_start: start etcd (keeps its data dir across restarts).
cluster_etcd_start() {
    _wc_need_init || return 1
    cluster_etcd_running && return 0
    _wc_log "starting etcd at $WC_ETCD_EP"
    mkdir -p "$WC_STATE/etcd"
    _wc_spawn etcd "$WC_ETCD_NS" "$WC_STATE/logs/etcd.log" \
        etcd --name weft --data-dir "$WC_STATE/etcd" \
        --listen-client-urls "$WC_ETCD_EP" --advertise-client-urls "$WC_ETCD_EP" \
        --listen-peer-urls "http://$WC_ETCD_IP:2380" \
        --initial-advertise-peer-urls "http://$WC_ETCD_IP:2380" \
        --initial-cluster "weft=http://$WC_ETCD_IP:2380" \
        --heartbeat-interval 50 --election-timeout 500 --snapshot-count 10000
    if ! _wc_wait "${WC_TIMEOUT:-30}" ip netns exec "$WC_ETCD_NS" curl -sf --max-time 1 "$WC_ETCD_EP/health"; then
        tail -n 20 "$WC_STATE/logs/etcd.log" >&2
        _wc_die "etcd did not become healthy"
        return 1
    fi
}

# cluster_etcd_stop: stop etcd (SIGTERM); data is kept.
cluster_etcd_stop() {
    _wc_need_init || return 1
    _wc_log "stopping etcd"
    _wc_stop etcd TERM
}

# cluster_etcdctl ARGS...: etcdctl (v3) against the cluster's etcd.
cluster_etcdctl() {
    ip netns exec "$WC_ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints="$WC_ETCD_EP" \
        --dial-timeout=2s --command-timeout=5s "$@"
}
cluster_etcd_put() { cluster_etcdctl put "$1" "$2" >/dev/null; }
cluster_etcd_get() { cluster_etcdctl get --print-value-only "$1"; }
cluster_etcd_del() { cluster_etcdctl del "$1" >/dev/null; }

# cluster_write_config [JSON]: <prefix>/config in flannel's format.
cluster_write_config() {
    _wc_need_init || return 1
    local cfg=${1:-$(_wc_network_config)}
    _wc_log "config $WC_ETCD_PREFIX/config = $cfg"
    cluster_etcd_put "$WC_ETCD_PREFIX/config" "$cfg"
}

# cluster_lease_put SUBNET PUBLIC_IP VTEP_MAC [VNI]: a lease written by hand in
# flannel's format, e.g. cluster_lease_put 10.244.77.0/24 198.51.100.77 02:..:77
# (with WC_BACKEND=host-gw a host-gw lease; the MAC is then unused).
cluster_lease_put() {
    local subnet=$1 ip=$2 mac=$3 vni=${4:-1} value
    if [ "$WC_BACKEND" = host-gw ]; then
        value="{\"PublicIP\":\"$ip\",\"PublicIPv6\":null,\"BackendType\":\"host-gw\"}"
    else
        value="{\"PublicIP\":\"$ip\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":$vni,\"VtepMAC\":\"$mac\"}}"
    fi
    cluster_etcd_put "$WC_ETCD_PREFIX/subnets/${subnet%/*}-${subnet#*/}" "$value"
}
cluster_lease_del() { cluster_etcd_del "$WC_ETCD_PREFIX/subnets/${1%/*}-${1#*/}"; }

# cluster_leases_raw: lines "SUBNET LEASE_ID_HEX VALUE" of every lease.
cluster_leases_raw() {
    _wc_need_init || return 1
    cluster_etcdctl get --prefix "$WC_ETCD_PREFIX/subnets/" -w json |
        python3 -c 'import sys, json, base64
for kv in json.load(sys.stdin).get("kvs", []):
    s = base64.b64decode(kv["key"]).decode().rsplit("/", 1)[-1]
    v = base64.b64decode(kv.get("value", "")).decode()
    print(s.rsplit("-", 1)[0] + "/" + s.rsplit("-", 1)[-1], "%x" % int(kv.get("lease", 0)), v)'
}

# cluster_leases: a table of the leases in etcd.
cluster_leases() {
    _wc_need_init || return 1
    local subnet lease value ttl node ip mac
    printf '%-16s %-15s %-6s %-18s %-8s %s\n' SUBNET PUBLIC_IP NODE VTEP_MAC TTL KEY
    cluster_leases_raw | while read -r subnet lease value; do
        ip=$(jq -r '.PublicIP // "-"' <<<"$value")
        mac=$(jq -r '.BackendData.VtepMAC // "-"' <<<"$value")
        node=-
        [[ $ip == "$WC_UNDERLAY".* ]] && [ -d "$WC_STATE/nodes/$((${ip##*.} - 10))" ] && node=n$((${ip##*.} - 10))
        if [ "$lease" = 0 ]; then
            ttl=none
        else
            ttl=$(cluster_etcdctl lease timetolive "$lease" 2>/dev/null | sed -n 's/.*remaining(\(-\?[0-9]*\)s).*/\1s/p')
        fi
        printf '%-16s %-15s %-6s %-18s %-8s %s\n' "$subnet" "$ip" "$node" "$mac" "${ttl:-?}" \
            "$WC_ETCD_PREFIX/subnets/${subnet%/*}-${subnet#*/}"
    done
}

# --- nodes ------------------------------------------------------------------------
cluster_node_ns() { echo "${WC_PREFIX}n$1"; }
cluster_node_ip() {
    if [ "$1" -gt 100 ]; then echo "$WC_UNDERLAY2.$(($1 - 90))"; else echo "$WC_UNDERLAY.$((10 + $1))"; fi
}
cluster_node_dir() { echo "$WC_STATE/nodes/$1"; }
cluster_node_subnet_file() { echo "$WC_STATE/nodes/$1/subnet.env"; }
cluster_node_healthz_port() { echo $((10000 + $1)); }
cluster_nodes() { [ -d "$WC_STATE/nodes" ] && ls "$WC_STATE/nodes" | sort -n; }

# cluster_node_subnet N: the node's lease subnet from subnet.env (10.244.X.0/24).
cluster_node_subnet() {
    local s
    s=$(sed -n 's/^FLANNEL_SUBNET=//p' "$(cluster_node_subnet_file "$1")" 2>/dev/null) || return 1
    [ -n "$s" ] || return 1
    # subnet.env holds the gateway (network + 1) with the lease prefix.
    python3 -c 'import ipaddress,sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$s"
}
cluster_node_lease_key() {
    local s
    s=$(cluster_node_subnet "$1") || return 1
    echo "$WC_ETCD_PREFIX/subnets/${s%/*}-${s#*/}"
}

# cluster_node_create N [WEFTD_ARGS...]: node netns on the underlay and its
# CNI config, weftd not started (see cluster_weftd_start).
cluster_node_create() {
    _wc_need_init || return 1
    local n=${1:?cluster_node_create N [weftd args]}; shift
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || { _wc_die "node number 1..200"; return 1; }
    local ns dir
    ns=$(cluster_node_ns "$n") dir=$(cluster_node_dir "$n")
    [ -e "/run/netns/$ns" ] && { _wc_die "node $n exists"; return 1; }
    _wc_log "adding node n$n ($(cluster_node_ip "$n"), netns $ns)"
    mkdir -p "$dir/ipam" "$dir/flannel" "$dir/pods"
    _wc_netns_add "$ns" || return 1
    if [ "$n" -gt 100 ]; then
        cluster_router_create || return 1
        _wc_attach "$ns" "$(cluster_node_ip "$n")" "v-n$n" "$WC_HUB2" || return 1
        ip -n "$ns" route add "$WC_UNDERLAY.0/24" via "$WC_ROUTER_IP2" || return 1
    else
        _wc_attach "$ns" "$(cluster_node_ip "$n")" "v-n$n" || return 1
        if cluster_router_exists; then
            ip -n "$ns" route add "$WC_UNDERLAY2.0/24" via "$WC_ROUTER_IP" || return 1
        fi
    fi
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    jq -cn --arg sf "$dir/subnet.env" --arg dd "$dir/flannel" --arg ipam "$dir/ipam" \
        --arg v "${WC_CNI_VERSION:-1.0.0}" \
        '{cniVersion:$v, name:"cbr0", type:"flannel", subnetFile:$sf, dataDir:$dd,
          ipam:{dataDir:$ipam}, delegate:{hairpinMode:true, isDefaultGateway:true}}' >"$dir/cni.conf"
    : >"$dir/weftd.args"
    [ $# -eq 0 ] || printf '%s\n' "$@" >"$dir/weftd.args"
}

# cluster_node_add N [WEFTD_ARGS...]: node netns on the underlay, weftd
# started (fixed flags, WC_WEFTD_ARGS, then these); waits until weftd wrote
# subnet.env and /readyz answers.
cluster_node_add() {
    cluster_node_create "$@" || return 1
    cluster_weftd_start "$1" || return 1
    cluster_node_wait_ready "$1"
}

# cluster_weftd_start N [WEFTD_ARGS...]: (re)start weftd on node N, with the
# args given now, else those given to cluster_node_add.
cluster_weftd_start() {
    _wc_need_init || return 1
    local n=$1; shift
    local dir args=()
    dir=$(cluster_node_dir "$n")
    _wc_pid "weftd-n$n" >/dev/null && return 0
    if [ $# -gt 0 ]; then
        args=("$@")
    elif [ -s "$dir/weftd.args" ]; then
        mapfile -t args < <(grep . "$dir/weftd.args")
    fi
    local defaults
    read -ra defaults <<<"$(cat "$WC_STATE/weftd_args")"
    echo "--- $(date '+%F %T') weftd start" >>"$WC_STATE/logs/weftd-n$n.log"
    _wc_spawn "weftd-n$n" "$(cluster_node_ns "$n")" "$WC_STATE/logs/weftd-n$n.log" \
        "$(_wc_bin)/weftd" --etcd-endpoints="$WC_ETCD_EP" --etcd-prefix="$WC_ETCD_PREFIX" \
        --iface=eth0 --public-ip="$(cluster_node_ip "$n")" --subnet-file="$dir/subnet.env" \
        --healthz-ip=0.0.0.0 --healthz-port="$(cluster_node_healthz_port "$n")" \
        "${defaults[@]}" "${args[@]}"
}

# cluster_weftd_stop N [SIGNAL]: stop weftd on node N (kernel state and
# lease are kept by weftd on SIGTERM).
cluster_weftd_stop() { _wc_need_init && _wc_stop "weftd-n$1" "${2:-TERM}"; }
cluster_weftd_pid() { _wc_pid "weftd-n$1"; }

cluster_node_ready() {
    ip netns exec "$(cluster_node_ns "$1")" curl -sf --max-time 1 \
        "http://127.0.0.1:$(cluster_node_healthz_port "$1")/readyz" >/dev/null
}

# cluster_node_wait_ready N [TIMEOUT]: subnet.env written and /readyz 200.
cluster_node_wait_ready() {
    local n=$1 t=${2:-${WC_TIMEOUT:-30}} end
    end=$((SECONDS + t))
    until [ -s "$(cluster_node_subnet_file "$n")" ] && cluster_node_ready "$n"; do
        if ! _wc_pid "weftd-n$n" >/dev/null; then
            tail -n 20 "$WC_STATE/logs/weftd-n$n.log" >&2
            _wc_die "weftd on n$n exited"
            return 1
        fi
        if [ "$SECONDS" -ge "$end" ]; then
            tail -n 20 "$WC_STATE/logs/weftd-n$n.log" >&2
            _wc_die "weftd on n$n not ready after ${t}s"
            return 1
        fi
        sleep 0.2
    done
    _wc_log "node n$n ready: subnet $(cluster_node_subnet "$n")"
}

# cluster_node_remove N: the node leaves: weftd stopped, its lease deleted
# (unless WC_KEEP_LEASE=1), its pods and netns removed.
cluster_node_remove() {
    _wc_need_init || return 1
    local n=$1 key pod
    key=$(cluster_node_lease_key "$n")
    _wc_log "removing node n$n"
    cluster_weftd_stop "$n"
    if [ -n "$key" ] && [ "${WC_KEEP_LEASE:-0}" != 1 ] && cluster_etcd_running; then
        cluster_etcd_del "$key"
    fi
    for pod in $(cluster_pods_of "$n"); do _wc_netns_del "$(cluster_pod_ns "$n" "$pod")"; done
    _wc_netns_del "$(cluster_node_ns "$n")"
    rm -rf "$(cluster_node_dir "$n")"
}

# --- pods (through the flannel CNI plugin, as a runtime would) -------------
cluster_pod_ns() { echo "${WC_PREFIX}n$1-$2"; }
cluster_pod_cid() { echo "${WC_NAME}-n$1-$2"; }
cluster_pod_ip() { cat "$(cluster_node_dir "$1")/pods/$2.ip" 2>/dev/null; }
cluster_pods_of() { local d; d="$(cluster_node_dir "$1")/pods"; [ -d "$d" ] && ls "$d" | sed -n 's/\.ip$//p'; }
# cluster_pods: lines "N POD IP" for every pod.
cluster_pods() {
    local n p
    for n in $(cluster_nodes); do
        for p in $(cluster_pods_of "$n"); do echo "$n $p $(cluster_pod_ip "$n" "$p")"; done
    done
}

# cluster_cni N COMMAND POD [IFNAME]: run the flannel plugin in node N's
# netns with the node's network config on stdin (WC_CNI_CONF overrides it);
# prints the plugin's stdout and returns its exit status.
cluster_cni() {
    local n=$1 cmd=$2 pod=$3 ifname=${4:-eth0} conf
    conf=${WC_CNI_CONF:-$(cat "$(cluster_node_dir "$n")/cni.conf")}
    local env=(CNI_COMMAND="$cmd" CNI_PATH="$(_wc_bin)" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    if [ -n "$pod" ]; then
        env+=(CNI_CONTAINERID="$(cluster_pod_cid "$n" "$pod")" CNI_NETNS="/run/netns/$(cluster_pod_ns "$n" "$pod")" CNI_IFNAME="$ifname")
    fi
    ip netns exec "$(cluster_node_ns "$n")" env -i "${env[@]}" "$(_wc_bin)/flannel" <<<"$conf"
}

# cluster_pod_add N POD: pod netns + loopback + flannel ADD; prints its IP.
cluster_pod_add() {
    _wc_need_init || return 1
    local n=$1 pod=$2 ns dir out ip
    [[ $pod =~ ^[A-Za-z0-9_.]{1,20}$ ]] || { _wc_die "bad pod name '$pod'"; return 1; }
    ns=$(cluster_pod_ns "$n" "$pod") dir=$(cluster_node_dir "$n")
    [ -e "/run/netns/$ns" ] && { _wc_die "pod $pod exists on n$n"; return 1; }
    _wc_netns_add "$ns" || return 1
    ip netns exec "$(cluster_node_ns "$n")" env -i CNI_COMMAND=ADD CNI_CONTAINERID="$(cluster_pod_cid "$n" "$pod")" \
        CNI_NETNS="/run/netns/$ns" CNI_IFNAME=lo CNI_PATH="$(_wc_bin)" \
        "$(_wc_bin)/loopback" <<<'{"cniVersion":"1.0.0","name":"lo","type":"loopback"}' >/dev/null ||
        { _wc_die "loopback ADD failed for $pod on n$n"; return 1; }
    if ! out=$(cluster_cni "$n" ADD "$pod"); then
        _wc_die "flannel ADD failed for $pod on n$n: $out"
        return 1
    fi
    ip=$(jq -r '.ips[0].address' <<<"$out")
    ip=${ip%/*}
    [ -n "$ip" ] && [ "$ip" != null ] || { _wc_die "no IP in result: $out"; return 1; }
    echo "$out" >"$dir/pods/$pod.json"
    echo "$ip" >"$dir/pods/$pod.ip"
    _wc_log "pod $pod on n$n: $ip"
    echo "$ip"
}

# cluster_pod_del N POD: flannel DEL, then the pod netns is removed.
cluster_pod_del() {
    _wc_need_init || return 1
    local n=$1 pod=$2 out rc=0
    out=$(cluster_cni "$n" DEL "$pod") || { rc=1; _wc_die "flannel DEL failed for $pod on n$n: $out"; }
    _wc_netns_del "$(cluster_pod_ns "$n" "$pod")"
    rm -f "$(cluster_node_dir "$n")/pods/$pod".{json,ip}
    return $rc
}

# --- pods through a whole conflist (libcni) -----------------------------------
# A node as a runtime sees it: an unchanged conflist (kube-flannel's, k3s's)
# reads flannel's defaults /run/flannel/subnet.env and /var/lib/cni, so the
# libcni driver runs in a private mount namespace of node N where
# /run/flannel is the node's dir (its subnet.env) and /var/lib/cni is
# nodes/N/var-lib-cni (host-local's store, flannel's delegate files,
# libcni's result cache). CNI_PATH is WC_CNI_PATH (default WC_BIN).

# cluster_node_var_lib_cni N: what node N's plugins see as /var/lib/cni.
cluster_node_var_lib_cni() { echo "$WC_STATE/nodes/$1/var-lib-cni"; }

# cluster_libcni N COMMAND POD CONFLIST [CAP_ARGS_JSON]: libcni-driver
# COMMAND (add, check, del) for POD's eth0 on node N; prints its stdout.
# DEL without the pod's netns when it is gone.
cluster_libcni() {
    _wc_need_init || return 1
    local n=$1 cmd=$2 pod=$3 conflist=$4 cap=${5:-} dir vlc ns args
    dir=$(cluster_node_dir "$n") vlc=$(cluster_node_var_lib_cni "$n") ns=$(cluster_pod_ns "$n" "$pod")
    mkdir -p "$vlc"
    args=(--conflist "$conflist" --cni-path "${WC_CNI_PATH:-$(_wc_bin)}" --cache-dir /var/lib/cni
        --container-id "$(cluster_pod_cid "$n" "$pod")" --ifname eth0)
    [ -e "/run/netns/$ns" ] && args+=(--netns "/run/netns/$ns")
    [ -n "$cap" ] && args+=(--cap-args "$cap")
    # The mount points must exist (empty) on a fresh host, as containerd.sh
    # makes its own.
    mkdir -p /run/flannel /var/lib/cni || return 1
    # shellcheck disable=SC2016 # expanded by the inner sh
    ip netns exec "$(cluster_node_ns "$n")" unshare -m --propagation private sh -c \
        'mount --bind "$1" /run/flannel && mount --bind "$2" /var/lib/cni && shift 2 &&
         exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' \
        sh "$dir" "$vlc" "${WC_LIBCNI_DRIVER:-$WC_REPO/tests/libcni-driver/bin/libcni-driver}" "$cmd" "${args[@]}"
}

# cluster_chain_pod_add N POD CONFLIST [CAP_ARGS_JSON]: pod netns (lo up)
# + libcni ADD of the conflist; records the result and prints the pod's IP.
cluster_chain_pod_add() {
    _wc_need_init || return 1
    local n=$1 pod=$2 ns dir out ip
    [[ $pod =~ ^[A-Za-z0-9_.]{1,20}$ ]] || { _wc_die "bad pod name '$pod'"; return 1; }
    ns=$(cluster_pod_ns "$n" "$pod") dir=$(cluster_node_dir "$n")
    [ -e "/run/netns/$ns" ] && { _wc_die "pod $pod exists on n$n"; return 1; }
    _wc_netns_add "$ns" || return 1
    out=$(cluster_libcni "$n" add "$pod" "${@:3}") || { _wc_die "libcni ADD failed for $pod on n$n: $out"; return 1; }
    ip=$(jq -r '.ips[0].address' <<<"$out")
    ip=${ip%/*}
    [ -n "$ip" ] && [ "$ip" != null ] || { _wc_die "no IP in result: $out"; return 1; }
    echo "$out" >"$dir/pods/$pod.json"
    echo "$ip" >"$dir/pods/$pod.ip"
    echo "$ip"
}

# cluster_chain_pod_del N POD CONFLIST [CAP_ARGS_JSON]: libcni DEL, then the
# pod netns is removed.
cluster_chain_pod_del() {
    _wc_need_init || return 1
    local n=$1 pod=$2 out rc=0
    out=$(cluster_libcni "$1" del "$2" "${@:3}") || { rc=1; _wc_die "libcni DEL failed for $pod on n$n: $out"; }
    _wc_netns_del "$(cluster_pod_ns "$n" "$pod")"
    rm -f "$(cluster_node_dir "$n")/pods/$pod".{json,ip}
    return $rc
}

# --- checks -------------------------------------------------------------------
# cluster_ping N1 POD1 N2 POD2 [COUNT]: ping POD2's IP from POD1's netns.
cluster_ping() {
    local c=${5:-1}
    ip netns exec "$(cluster_pod_ns "$1" "$2")" ping -n -q -c "$c" -i 0.2 -W 2 "$(cluster_pod_ip "$3" "$4")" >/dev/null 2>&1
}

# cluster_ping_rtt N1 POD1 N2 POD2: one ping; prints its own round-trip
# time in ms as ping measured it (not the time the whole command took).
cluster_ping_rtt() {
    ip netns exec "$(cluster_pod_ns "$1" "$2")" ping -n -c 1 -W 2 "$(cluster_pod_ip "$3" "$4")" 2>/dev/null |
        sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' | grep .
}

# cluster_node_peer_form N PUBLIC_IP: how node N should reach that peer:
# "direct" (a route via the public IP on eth0: host-gw, or DirectRouting to
# an on-link peer) or "vxlan" (neighbour, FDB entry and onlink route).
cluster_node_peer_form() {
    case "$WC_BACKEND" in
    host-gw) echo direct ;;
    directrouting)
        if ip -n "$(cluster_node_ns "$1")" route get "$2" | grep -q ' via '; then echo vxlan; else echo direct; fi
        ;;
    *) echo vxlan ;;
    esac
}

# cluster_node_has_peer N SUBNET PUBLIC_IP: the entries of the lease's form
# (see cluster_node_peer_form) present on node N, and none of the other form.
cluster_node_has_peer() {
    local ns gw
    ns=$(cluster_node_ns "$1") gw=${2%/*}
    if [ "$(cluster_node_peer_form "$1" "$3")" = direct ]; then
        ip -n "$ns" route show "$2" | grep -x "$2 via $3 dev eth0 *" >/dev/null &&
            ! ip -n "$ns" neigh show dev flannel.1 "$gw" 2>/dev/null | grep . >/dev/null &&
            ! bridge -n "$ns" fdb show dev flannel.1 2>/dev/null | grep "dst $3 " >/dev/null
        return
    fi
    ip -n "$ns" route show "$2" | grep "via $gw dev flannel.1 .*onlink" >/dev/null &&
        ip -n "$ns" neigh show dev flannel.1 "$gw" | grep 'PERMANENT' >/dev/null &&
        bridge -n "$ns" fdb show dev flannel.1 | grep "dst $3 self permanent" >/dev/null
}

# cluster_node_lacks_peer N SUBNET PUBLIC_IP: no entry for it, in either form.
cluster_node_lacks_peer() {
    local ns gw
    ns=$(cluster_node_ns "$1") gw=${2%/*}
    ! ip -n "$ns" route show "$2" | grep . >/dev/null &&
        ! ip -n "$ns" neigh show dev flannel.1 "$gw" 2>/dev/null | grep . >/dev/null &&
        ! bridge -n "$ns" fdb show dev flannel.1 2>/dev/null | grep "dst $3 " >/dev/null
}

# cluster_nodes_up: nodes whose weftd wrote subnet.env.
cluster_nodes_up() {
    local n
    for n in $(cluster_nodes); do [ -s "$(cluster_node_subnet_file "$n")" ] && echo "$n"; done
}

# cluster_converged: every node (with a subnet) has every other's entries.
cluster_converged() {
    local a b
    for a in $(cluster_nodes_up); do
        for b in $(cluster_nodes_up); do
            [ "$a" = "$b" ] && continue
            cluster_node_has_peer "$a" "$(cluster_node_subnet "$b")" "$(cluster_node_ip "$b")" || return 1
        done
    done
}

# cluster_wait_converged [TIMEOUT]: every node has every other node's entries.
cluster_wait_converged() {
    _wc_wait "${1:-${WC_TIMEOUT:-30}}" cluster_converged || { _wc_die "nodes did not converge"; return 1; }
}

# cluster_node_show N: flannel.1's routes, FDB and neighbours on node N.
cluster_node_show() {
    local ns
    ns=$(cluster_node_ns "$1")
    echo "== n$1 ($(cluster_node_ip "$1"), subnet $(cluster_node_subnet "$1"), netns $ns)"
    echo "-- routes (10.244.0.0/16):"
    ip -n "$ns" -4 route show | grep '^10\.244\.' | sed 's/^/   /'
    ip -n "$ns" link show flannel.1 >/dev/null 2>&1 || return 0
    echo "-- fdb flannel.1:"
    bridge -n "$ns" fdb show dev flannel.1 | grep -v '^33:33\|^01:00' | sed 's/^/   /'
    echo "-- neigh flannel.1:"
    ip -n "$ns" neigh show dev flannel.1 | sed 's/^/   /'
}

# cluster_ping_all: every ordered pair of pods on different nodes; prints
# one line per pair and a summary; fails if any ping fails.
cluster_ping_all() {
    local ok=0 fail=0 a b na pa ia nb pb ib rtt
    local all
    mapfile -t all < <(cluster_pods)
    for a in "${all[@]}"; do
        read -r na pa ia <<<"$a"
        for b in "${all[@]}"; do
            read -r nb pb ib <<<"$b"
            [ "$na" = "$nb" ] && continue
            if rtt=$(cluster_ping_rtt "$na" "$pa" "$nb" "$pb"); then
                ok=$((ok + 1))
                printf '  ok    n%s/%-3s %-12s -> n%s/%-3s %-12s rtt %s ms\n' "$na" "$pa" "$ia" "$nb" "$pb" "$ib" "$rtt"
            else
                fail=$((fail + 1))
                printf '  FAIL  n%s/%-3s %-12s -> n%s/%-3s %s\n' "$na" "$pa" "$ia" "$nb" "$pb" "$ib"
            fi
        done
    done
    echo "cross-node pod pings: $ok ok, $fail failed, $((ok + fail)) total"
    [ "$fail" -eq 0 ] && [ "$ok" -gt 0 ]
}

# cluster_show_all: leases, config and every node's flannel.1 entries.
cluster_show_all() {
    echo "### leases in etcd ($WC_ETCD_PREFIX/subnets/)"
    cluster_leases
    echo
    echo "### config: $(cluster_etcd_get "$WC_ETCD_PREFIX/config")"
    local n
    for n in $(cluster_nodes); do
        echo
        cluster_node_show "$n"
    done
}

# cluster_status: what runs and what exists.
cluster_status() {
    _wc_need_init || return 1
    local n p
    echo "cluster $WC_NAME: state $WC_STATE, netns prefix $WC_PREFIX"
    if p=$(_wc_pid etcd); then echo "etcd: pid $p, $WC_ETCD_EP"; else echo "etcd: not running"; fi
    for n in $(cluster_nodes); do
        if p=$(_wc_pid "weftd-n$n"); then p="weftd pid $p"; else p="weftd not running"; fi
        echo "n$n: $(cluster_node_ip "$n") subnet $(cluster_node_subnet "$n" || echo -) $p, pods: $(cluster_pods_of "$n" | while read -r q; do printf '%s=%s ' "$q" "$(cluster_pod_ip "$n" "$q")"; done)"
    done
    echo "netns: $(_wc_our_netns | tr '\n' ' ')"
}

# cluster_teardown: kill weftd and etcd, delete every netns, remove the
# state dir (kept with WC_KEEP_STATE=1, e.g. for the logs).
cluster_teardown() {
    _wc_need_init || return 1
    local f ns
    _wc_log "tearing down"
    for f in "$WC_STATE"/pids/weftd-*; do [ -e "$f" ] && _wc_stop "${f##*/}" TERM; done
    _wc_stop etcd TERM
    # Pods first, nodes, then etcd, the router and the hubs.
    for ns in $(_wc_our_netns | sort -r); do _wc_netns_del "$ns"; done
    if [ "${WC_KEEP_STATE:-0}" = 1 ]; then
        _wc_log "state and logs kept in $WC_STATE"
    else
        rm -rf "$WC_STATE"
    fi
}

# --- faults ---------------------------------------------------------------------
# cluster_node_etcd_cut N: node N can no longer reach etcd (its packets to
# and from etcd's client port are dropped by an nftables table inside the
# node netns only); the underlay, VXLAN and the other nodes are untouched.
cluster_node_etcd_cut() {
    _wc_need_init || return 1
    _wc_log "cutting n$1 off from etcd"
    ip netns exec "$(cluster_node_ns "$1")" nft -f - <<EOF
table inet weft-etcd-cut {
    chain out { type filter hook output priority 0; policy accept; ip daddr $WC_ETCD_IP tcp dport 2379 drop; }
    chain in { type filter hook input priority 0; policy accept; ip saddr $WC_ETCD_IP tcp sport 2379 drop; }
}
EOF
}

# cluster_node_etcd_restore N: undo cluster_node_etcd_cut (no-op if not cut).
cluster_node_etcd_restore() {
    _wc_need_init || return 1
    local ns
    ns=$(cluster_node_ns "$1")
    ip netns exec "$ns" nft list table inet weft-etcd-cut >/dev/null 2>&1 || return 0
    _wc_log "reconnecting n$1 to etcd"
    ip netns exec "$ns" nft delete table inet weft-etcd-cut
}
