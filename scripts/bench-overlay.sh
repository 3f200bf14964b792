#!/usr/bin/env bash
# Benchmark (not a test) of weftd's VXLAN overlay, in throwaway network
# namespaces. Prints a Markdown report on stdout (progress on stderr).
#
# Usage (as root):  scripts/bench-overlay.sh [options]
#   --parts LIST        comma list of converge,scale,dataplane,hostgw (default all)
#   --leases N          convergence: fake leases written one at a time (100)
#   --scale N           scale: fake leases preloaded before weftd starts (5000)
#   --scale-leases N    scale: then N more leases one at a time, convergence
#                       measured with the big table in place (20)
#   --scale-runs N      scale: fresh nodes started one after the other; the
#                       median is reported (3)
#   --floor-runs N      scale: ip/bridge -batch floor repetitions (3)
#   --baseline BIN      scale: also run this weftd binary (an older build),
#                       interleaved with ours (ABBA), same cluster and leases;
#                       reported as its own rows and as new/baseline ratios
#   --iperf-time S      data plane: seconds per iperf3 run (10)
#   --iperf-reps N      data plane: runs per side, in ABBA order (4)
#   --masq              run weftd with --ip-masq (flannel's usual setup; adds
#                       nftables masquerade + conntrack on the weft side only)
#   --keep              keep the cluster state dir and logs
#   -o, --out FILE      also write the report to FILE
#   -h, --help          this text
#
# Parts:
#   converge   2 nodes run weftd (scripts/lib/cluster.sh). N fake leases
#              (10.244.150+i.0/24, PublicIP 203.0.113.i+1, VtepMAC
#              02:cc:..) are written into etcd one at a time from node n2's
#              netns; per lease, latency = (netlink event of the last of its
#              route, permanent neighbour and FDB entry on n2's flannel.1)
#              - (just before the etcd put request was sent).
#   scale      N fake leases (/29s, or /30s above 7,900, of 10.244.0.0/16 under the separate
#              prefix /weft-bench/scale, PublicIPs in the RFC 2544 range
#              198.18.0.0/15) are loaded into etcd; then weftd starts on a
#              fresh node and we time start -> all 3N entries seen (netlink
#              events, cross-checked with ip/bridge and /metrics). Floor:
#              the same 3N operations with `ip -batch`/`bridge -batch` on an
#              identical, hand-made flannel.1 in another fresh netns.
#              Peak RSS = weftd's VmHWM after programming.
#   dataplane  iperf3 (TCP) pod -> pod across two nodes through weft (pods
#              via the flannel CNI plugin), against two hand-made nodes with
#              the same layout built with `ip` only (vxlan flannel.1 +
#              neighbour/FDB/onlink route, bridge cni0, veth pods, same MTU,
#              same underlay), runs alternating.
#   hostgw     iperf3 (TCP) pod -> pod across two nodes (n21, n22) whose
#              weftd runs host-gw (its own etcd prefix /weft-bench/hostgw),
#              against the same pods and nodes with weftd stopped and its
#              routes replaced by hand-made `ip route` ones, and against
#              weft's vxlan pods on n1/n2; the three alternate per round.
#
# Isolation: every netns is named wc-bo<pid>-* (the lib's prefix) and hangs
# off a private underlay 198.51.100.0/24 with no default route anywhere; the
# fake public IPs (203.0.113.0/24, 198.18.0.0/15) only appear in FDB
# entries and never receive a packet. The root namespace's links, routes and
# firewall are never touched. An EXIT trap kills what we started and tears
# the cluster down, on success or failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helper="$root/scripts/bench_overlay.py"

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

parts=converge,scale,dataplane,hostgw
n_leases=100 n_conv_scale=20 n_scale=5000 scale_runs=3 floor_runs=3 iperf_time=10 iperf_reps=4
masq=0 keep=0 out="" baseline=""
while (($# > 0)); do
    case "$1" in
        --parts) parts="${2:?}"; shift 2 ;;
        --leases) n_leases="${2:?}"; shift 2 ;;
        --scale-leases) n_conv_scale="${2:?}"; shift 2 ;;
        --scale) n_scale="${2:?}"; shift 2 ;;
        --scale-runs) scale_runs="${2:?}"; shift 2 ;;
        --floor-runs) floor_runs="${2:?}"; shift 2 ;;
        --baseline) baseline="$(realpath -- "${2:?}")"; shift 2 ;;
        --iperf-time) iperf_time="${2:?}"; shift 2 ;;
        --iperf-reps) iperf_reps="${2:?}"; shift 2 ;;
        --masq) masq=1; shift ;;
        --keep) keep=1; shift ;;
        -o | --out) out="$(realpath -m -- "${2:?}")"; shift 2 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
for v in n_leases n_conv_scale n_scale scale_runs floor_runs iperf_time iperf_reps; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
((n_conv_scale <= 100)) || die "--scale-leases is at most 100"
((n_leases <= 100)) || die "--leases is at most 100 (10.244.150-249.0/24)"
((n_scale <= 16000)) || die "--scale is at most 16000 (/30s of 10.244.0.0/16)"
[[ -z $baseline || -x $baseline ]] || die "--baseline $baseline is not an executable"
want() { [[ ,$parts, == *,$1,* ]]; }
[[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
for t in ip bridge nsenter etcd curl jq python3 iperf3; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (scripts/setup.sh; apt-get install iperf3)"
done
cd "$root"

bin="${WC_BIN:-$root/target/x86_64-unknown-linux-gnu/release}"
if [[ ! -x $bin/weftd || ! -x $bin/flannel ]]; then
    log "building release binaries"
    cargo build --release --workspace >&2
fi

# --- the cluster library ------------------------------------------------------
# shellcheck source=lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
export WC_QUIET=${WC_QUIET:-1}
# weftd's defaults (reconcile every 10 s), masquerade only with --masq.
if ((masq)); then WC_WEFTD_ARGS="--ip-masq"; else WC_WEFTD_ARGS=""; fi
export WC_WEFTD_ARGS

res=$(mktemp -d /tmp/weft-bench-overlay.XXXXXX)
cluster_init "bo$$" "/run/weft-cluster/bo$$"
PIDS=() # our own background processes (iperf3 servers, netlink watchers)

cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if ((keep)); then WC_KEEP_STATE=1; fi
    WC_KEEP_STATE=${WC_KEEP_STATE:-0} cluster_teardown 2>/dev/null
    if ((keep)); then log "kept: results in $res, cluster state in $WC_STATE"; else rm -rf "$res"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn NETNS LOG CMD...: background CMD in NETNS; sets SPAWNED to its pid.
spawn() {
    local ns=$1 lg=$2; shift 2
    nsenter --net="/run/netns/$ns" -- "$@" </dev/null >"$lg" 2>"$lg.err" &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}
now_ns() { date +%s%N; }
# Other work on the machine (CPU, or netns churn holding the global RTNL
# lock) skews every figure here: record the load average per part.
loads=()
note_load() { loads+=("$1 $(cut -d' ' -f1 /proc/loadavg)"); }
py() { python3 "$helper" "$@"; }

# The hub, etcd and the network config (10.244.0.0/16, /24s, vxlan).
log "creating the underlay and etcd (netns prefix $WC_PREFIX)"
cluster_create
cluster_write_config

# extra_node NAME ADDR HUBPORT: a bare netns on the underlay (for the
# hand-made reference nodes and the floor), torn down with the cluster.
extra_node() {
    _wc_netns_add "$1"
    _wc_attach "$1" "$2" "$3"
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
}

# make_vxlan NETNS LOCAL_IP SUBNET_NET_ADDR: flannel.1 as weftd makes it
# (VNI 1, port 8472, nolearning, underlay MTU - 50, lease .0/32, up).
make_vxlan() {
    local ns=$1 local_ip=$2 addr=$3
    ip -n "$ns" link add flannel.1 type vxlan id 1 local "$local_ip" dev eth0 dstport 8472 nolearning
    ip -n "$ns" link set flannel.1 mtu 1450
    ip netns exec "$ns" sysctl -qw net/ipv6/conf/flannel.1/accept_ra=0
    ip -n "$ns" addr add "$addr/32" dev flannel.1
    ip -n "$ns" link set flannel.1 up
}

need_nodes() { # start weft nodes 1 and 2 once
    [[ -e /run/netns/$(cluster_node_ns 1) ]] && return 0
    log "starting weftd on n1 and n2"
    cluster_node_add 1
    cluster_node_add 2
    cluster_wait_converged 30
}

# --- 1. convergence -------------------------------------------------------------
if want converge; then
    need_nodes
    note_load converge
    log "convergence: $n_leases leases, one at a time, measured on n2"
    ip netns exec "$(cluster_node_ns 2)" python3 "$helper" converge --etcd "$WC_ETCD_EP" \
        --prefix "$WC_ETCD_PREFIX" --n "$n_leases" >"$res/converge.json"
    jq -r '"bench: convergence p50 \(.samples_ms | sort | .[length/2|floor]) ms, missing \(.missing | length)"' \
        "$res/converge.json" >&2
    # Sanity: every fake lease is fully present on n2 per ip(8)/bridge(8).
    bad=0
    for ((i = 0; i < n_leases; i++)); do
        sub=10.244.$((150 + i)).0/24
        # (no pipefail: the lib's `cmd | grep -q` would fail on SIGPIPE)
        if ! (set +o pipefail; cluster_node_has_peer 2 "$sub" "203.0.113.$((i + 1))"); then
            bad=$((bad + 1))
            log "WARNING: $sub not fully present on n2 per ip/bridge: $(ip -n "$(cluster_node_ns 2)" route show "$sub"); $(ip -n "$(cluster_node_ns 2)" neigh show dev flannel.1 "${sub%/*}"); $(bridge -n "$(cluster_node_ns 2)" fdb show dev flannel.1 | grep -F "dst 203.0.113.$((i + 1)) ")"
        fi
    done
    ((bad == 0)) || log "WARNING: $bad fake leases not fully present on n2 per ip/bridge"
fi

# --- 2. data plane -----------------------------------------------------------------
if want dataplane; then
    need_nodes
    note_load dataplane
    log "data plane: pods on n1 and n2 (flannel CNI), hand-made reference nodes r1/r2"
    for n in 1 2; do
        if ((!masq)); then
            # No masquerade anywhere (the reference has no netfilter either).
            jq -c '.delegate.ipMasq = false' "$(cluster_node_dir $n)/cni.conf" >"$res/cni.conf"
            cp "$res/cni.conf" "$(cluster_node_dir $n)/cni.conf"
        fi
        cluster_pod_add $n a >/dev/null
    done
    wip=$(cluster_pod_ip 2 a)
    cluster_ping 1 a 2 a 3 || die "weft pods cannot ping each other"

    # Reference: r1 (198.51.100.201, pods 10.244.201.0/24) and r2 (.202,
    # 10.244.202.0/24), the same L3 layout weft builds, with ip(8) only.
    declare -A rmac
    for r in 1 2; do
        ns=${WC_PREFIX}r$r
        extra_node "$ns" "198.51.100.20$r" "v-r$r"
        make_vxlan "$ns" "198.51.100.20$r" "10.244.20$r.0"
        rmac[$r]=$(ip netns exec "$ns" cat /sys/class/net/flannel.1/address)
        ip -n "$ns" link add cni0 type bridge
        ip -n "$ns" addr add "10.244.20$r.1/24" dev cni0
        ip -n "$ns" link set cni0 up
        pns=${WC_PREFIX}r$r-a
        _wc_netns_add "$pns"
        ip -n "$ns" link add "veth-r$r" mtu 1450 type veth peer name eth0 netns "$pns" mtu 1450
        ip -n "$ns" link set "veth-r$r" master cni0 up
        bridge -n "$ns" link set dev "veth-r$r" hairpin on # as weft's delegate (hairpinMode)
        ip -n "$pns" addr add "10.244.20$r.2/24" dev eth0
        ip -n "$pns" link set eth0 up
        ip -n "$pns" route add 10.244.0.0/16 via "10.244.20$r.1"
        ip -n "$pns" route add default via "10.244.20$r.1"
    done
    for r in 1 2; do
        o=$((3 - r)) ns=${WC_PREFIX}r$r
        ip -n "$ns" neigh replace "10.244.20$o.0" lladdr "${rmac[$o]}" dev flannel.1 nud permanent
        bridge -n "$ns" fdb replace "${rmac[$o]}" dev flannel.1 dst "198.51.100.20$o" self permanent
        ip -n "$ns" route replace "10.244.20$o.0/24" via "10.244.20$o.0" dev flannel.1 onlink
    done
    ip netns exec "${WC_PREFIX}r1-a" ping -c3 -i0.2 -W2 -q 10.244.202.2 >/dev/null ||
        die "reference pods cannot ping each other"

    # Same device parameters on both sides? (names/addresses/MACs masked)
    norm() { ip -n "$1" -d link show flannel.1 | sed -E 's/[0-9a-f]{2}(:[0-9a-f]{2}){5}/MAC/g; s/^[0-9]+: //; s/local [0-9.]+/local X/; s/link-netns [^ ]+//; s/@if[0-9]+//; s/ (ifindex|gso|gro|tso)[^ ]* [0-9]+//g'; }
    norm "$(cluster_node_ns 1)" >"$res/vxlan-weft.txt"
    norm "${WC_PREFIX}r1" >"$res/vxlan-ref.txt"
    [[ -s $res/vxlan-weft.txt && -s $res/vxlan-ref.txt ]] || die "cannot read flannel.1 attributes"
    if ! diff "$res/vxlan-weft.txt" "$res/vxlan-ref.txt" >"$res/vxlan.diff"; then
        log "NOTE: flannel.1 differs between weft and the reference:"; cat "$res/vxlan.diff" >&2
    fi

    spawn "$(cluster_pod_ns 2 a)" "$res/iperf-srv-weft.log" iperf3 -s -B "$wip"
    spawn "${WC_PREFIX}r2-a" "$res/iperf-srv-ref.log" iperf3 -s -B 10.244.202.2
    # Wait until both servers listen (iperf3's default port 5201).
    listening() { ip netns exec "$1" ss -Hltn 'sport = :5201' | grep -q .; }
    _wc_wait 10 listening "$(cluster_pod_ns 2 a)" && _wc_wait 10 listening "${WC_PREFIX}r2-a" ||
        die "iperf3 servers did not start listening"
    files=()
    for ((k = 1; k <= iperf_reps; k++)); do
        # ABBA order, so neither side always runs first.
        order="weft ref"
        ((k % 2 == 1)) || order="ref weft"
        for side in $order; do
            if [[ $side == weft ]]; then cns=$(cluster_pod_ns 1 a) dst=$wip; else cns=${WC_PREFIX}r1-a dst=10.244.202.2; fi
            f="$res/$side-$k.json"
            ip netns exec "$cns" iperf3 -c "$dst" -t "$iperf_time" -O 1 -J >"$f" || log "iperf3 $side run $k failed"
            files+=("$f")
            log "iperf3 $side #$k: $(jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | floor / 100' "$f" 2>/dev/null) Gbit/s"
        done
    done
    py iperf "${files[@]}" >"$res/iperf.json"
fi

# --- 2b. host-gw data plane ------------------------------------------------------------
# hostgw_env CMD...: CMD with the host-gw nodes' etcd prefix and backend
# (dynamic scope; weftd stays a child of this shell, so it can be waited for).
hostgw_env() {
    local WC_ETCD_PREFIX=/weft-bench/hostgw WC_BACKEND=host-gw
    "$@"
}

# hostgw_routes WHO: who programs the two host-gw nodes' pod routes: weft
# (weftd running) or hand (weftd stopped, routes deleted and re-added by ip).
hostgw_routes() {
    local n o
    if [[ $1 == weft ]]; then
        for n in 21 22; do hostgw_env cluster_weftd_start $n; done
        for n in 21 22; do cluster_node_wait_ready $n; done
        _wc_wait 20 cluster_ping 21 a 22 a 1 || die "host-gw pods cannot ping each other"
        return
    fi
    for n in 21 22; do cluster_weftd_stop $n || true; done
    for n in 21 22; do
        o=$((43 - n))
        w=$(ip -n "$(cluster_node_ns $n)" route show "${hgw_subnet[$o]}")
        ip -n "$(cluster_node_ns $n)" route del "${hgw_subnet[$o]}" 2>/dev/null || true
        ip -n "$(cluster_node_ns $n)" route add "${hgw_subnet[$o]}" via "$(cluster_node_ip $o)" dev eth0
        h=$(ip -n "$(cluster_node_ns $n)" route show "${hgw_subnet[$o]}")
        # Same route both ways? (weft's may be absent if weftd was already stopped)
        [[ -z $w || $w == "$h" ]] || log "NOTE: n$n: weft's route '$w' differs from the hand-made '$h'"
    done
}

if want hostgw; then
    need_nodes
    note_load hostgw
    log "host-gw: nodes n21/n22 with weftd on /weft-bench/hostgw, pods via the flannel CNI plugin"
    hostgw_env cluster_write_config
    hostgw_env cluster_node_add 21
    hostgw_env cluster_node_add 22
    declare -A hgw_subnet
    for n in 21 22; do
        s=$(sed -n 's/^FLANNEL_SUBNET=//p' "$(cluster_node_dir $n)/subnet.env")
        g=${s%/*}
        hgw_subnet[$n]="${g%.*}.$((${g##*.} - 1))/${s#*/}"
    done
    for n in 1 2 21 22; do
        if [[ ! -s $(cluster_node_dir $n)/pods/a.ip ]]; then
            jq -c '.delegate.ipMasq = false' "$(cluster_node_dir $n)/cni.conf" >"$res/cni.conf"
            cp "$res/cni.conf" "$(cluster_node_dir $n)/cni.conf"
            cluster_pod_add $n a >/dev/null
        fi
    done
    _wc_wait 20 cluster_ping 21 a 22 a 1 || die "host-gw pods cannot ping each other"
    hip=$(cluster_pod_ip 22 a) vip=$(cluster_pod_ip 2 a)
    spawn "$(cluster_pod_ns 22 a)" "$res/iperf-srv-hgw.log" iperf3 -s -B "$hip"
    [[ -n ${wip:-} ]] || spawn "$(cluster_pod_ns 2 a)" "$res/iperf-srv-vx.log" iperf3 -s -B "$vip"
    sleep 0.5
    hfiles=()
    sides=(weft hand vxlan)
    for ((k = 1; k <= iperf_reps; k++)); do
        # Rotate the order so no side always runs first.
        for ((j = 0; j < 3; j++)); do
            side=${sides[(j + k) % 3]}
            case $side in
                weft | hand) hostgw_routes "$side"; cns=$(cluster_pod_ns 21 a) dst=$hip ;;
                vxlan) cns=$(cluster_pod_ns 1 a) dst=$vip ;;
            esac
            f="$res/hgw-$side-$k.json"
            ip netns exec "$cns" iperf3 -c "$dst" -t "$iperf_time" -O 1 -J >"$f" || log "iperf3 $side run $k failed"
            hfiles+=("$f")
            log "iperf3 host-gw/$side #$k: $(jq -r '.end.sum_received.bits_per_second / 1e9 * 100 | floor / 100' "$f" 2>/dev/null) Gbit/s"
        done
    done
    hostgw_routes weft
    py iperf "${hfiles[@]}" >"$res/iperf-hostgw.json"
fi

# --- 3. scale -------------------------------------------------------------------------
if want scale; then
    note_load scale
    sprefix=/weft-bench/scale
    # /29 leases up to 7,900 peers, /30 (SubnetLen's limit) beyond: room for
    # the preloaded leases plus the ones written one at a time after them.
    slen=29; ((n_scale <= 7900)) || slen=30
    log "scale: loading $n_scale leases under $sprefix"
    cluster_etcd_put "$sprefix/config" "{\"Network\":\"10.244.0.0/16\",\"SubnetLen\":$slen,\"Backend\":{\"Type\":\"vxlan\"}}"
    ip netns exec "$WC_ETCD_NS" python3 "$helper" load --etcd "$WC_ETCD_EP" --prefix "$sprefix" \
        --n "$n_scale" --subnet-len "$slen" >"$res/load.json"
    log "loaded in $(jq -r '.seconds * 100 | floor / 100' "$res/load.json") s"
    target=$((3 * n_scale))

    # Floor: the same operations with ip/bridge -batch on a hand-made flannel.1.
    py batch --n "$n_scale" --subnet-len "$slen" --ip "$res/neigh.batch" --bridge "$res/fdb.batch" \
        --routes "$res/route.batch"
    fns=${WC_PREFIX}floor
    extra_node "$fns" 198.51.100.203 v-floor
    floors=()
    for ((k = 1; k <= floor_runs; k++)); do
        ip -n "$fns" link del flannel.1 2>/dev/null || true
        make_vxlan "$fns" 198.51.100.203 10.244.255.248
        t0=$(now_ns)
        ip -n "$fns" -batch "$res/neigh.batch"
        bridge -n "$fns" -batch "$res/fdb.batch"
        ip -n "$fns" -batch "$res/route.batch"
        t1=$(now_ns)
        c=$(($(ip -n "$fns" -4 route show dev flannel.1 | wc -l) + $(ip -n "$fns" neigh show dev flannel.1 nud permanent | wc -l) + $(bridge -n "$fns" fdb show dev flannel.1 | wc -l)))
        ((c == target)) || die "floor run $k: $c entries, expected $target"
        floors+=("$(((t1 - t0) / 1000))")
        log "floor #$k: $(((t1 - t0) / 1000000)) ms for $target operations"
    done

    weft_runs=() base_runs=()
    # Which binary each run uses: ours only, or ours and --baseline in ABBA
    # order (so neither always runs first); the first run is always ours.
    sides=()
    for ((k = 1; k <= scale_runs; k++)); do
        if [[ -z $baseline ]]; then sides+=(weft)
        elif ((k % 2 == 1)); then sides+=(weft base)
        else sides+=(base weft); fi
    done
    for ((k = 1; k <= ${#sides[@]}; k++)); do
        side=${sides[k - 1]} wbin=$bin/weftd
        [[ $side == weft ]] || wbin=$baseline
        n=$((2 + k))
        ns=$(cluster_node_ns "$n") dir=$(cluster_node_dir "$n")
        log "scale run $k ($side): fresh node n$n, $wbin on $sprefix"
        mkdir -p "$dir"
        _wc_netns_add "$ns"
        _wc_attach "$ns" "$(cluster_node_ip "$n")" "v-n$n"
        spawn "$ns" "$res/count-$k.json" python3 "$helper" count --target "$target" \
            --ready "$res/count-$k.ready" --timeout 300
        cpid=$SPAWNED
        _wc_wait 10 test -s "$res/count-$k.ready" || die "netlink watcher did not start"
        port=$(cluster_node_healthz_port "$n")
        t0=$(now_ns)
        _wc_spawn "weftd-n$n" "$ns" "$WC_STATE/logs/weftd-n$n.log" \
            "$wbin" --etcd-endpoints="$WC_ETCD_EP" --etcd-prefix="$sprefix" \
            --iface=eth0 --subnet-file="$dir/subnet.env" \
            --healthz-ip=127.0.0.1 --healthz-port="$port"
        wpid=$(cluster_weftd_pid "$n")
        wait "$cpid" || true
        hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$wpid/status")
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$wpid/status")
        done_ns=$(jq -r '.done_ns // empty' "$res/count-$k.json")
        first_ns=$(jq -r '.first_ns // empty' "$res/count-$k.json")
        [[ -n $done_ns ]] || die "weftd on n$n did not program $target entries: $(cat "$res/count-$k.json")"
        # Cross-check with ip(8)/bridge(8) and weftd's own gauge.
        routes=$(ip -n "$ns" -4 route show dev flannel.1 | wc -l)
        neighs=$(ip -n "$ns" neigh show dev flannel.1 nud permanent | wc -l)
        fdbs=$(bridge -n "$ns" fdb show dev flannel.1 | wc -l)
        ((routes + neighs + fdbs == target)) ||
            log "WARNING: ip/bridge count $routes routes + $neighs neigh + $fdbs fdb != $target"
        _wc_wait 20 bash -c "ip netns exec $ns curl -sf http://127.0.0.1:$port/metrics | grep -qx 'weftd_entries_programmed $target'" ||
            log "WARNING: weftd_entries_programmed never reached $target"
        ms=$(((done_ns - t0) / 1000000)) first_ms=$(((first_ns - t0) / 1000000))
        log "weftd #$k ($side): all $target entries after $ms ms (first entry after $first_ms ms), VmHWM ${hwm} KiB"
        run="{\"total_us\":$(((done_ns - t0) / 1000)),\"first_us\":$(((first_ns - t0) / 1000)),\"hwm_kib\":$hwm,\"rss_kib\":$rss}"
        if [[ $side == weft ]]; then weft_runs+=("$run"); else base_runs+=("$run"); fi
        if ((k == 1)); then
            # Convergence with the big table in place (informational).
            log "convergence at scale: $n_conv_scale more leases, one at a time, measured on n$n"
            ip netns exec "$ns" python3 "$helper" converge --etcd "$WC_ETCD_EP" --prefix "$sprefix" \
                --subnet-len "$slen" --first $((n_scale + 200)) --n "$n_conv_scale" --cleanup >"$res/converge-scale.json"
        fi
        cp "$WC_STATE/logs/weftd-n$n.log" "$res/weftd-scale-$k.log"
        cluster_weftd_stop "$n"
        # Leave etcd as we found it for the next run: drop this node's lease.
        # (FLANNEL_SUBNET is network+1 / len; cluster_node_subnet assumes /24s.)
        s=$(sed -n 's/^FLANNEL_SUBNET=//p' "$dir/subnet.env")
        g=${s%/*}
        cluster_etcd_del "$sprefix/subnets/${g%.*}.$((${g##*.} - 1))-${s#*/}"
    done
    jq -n --argjson n "$n_scale" --argjson runs "[$(IFS=,; echo "${weft_runs[*]}")]" \
        --argjson base "[$(IFS=,; echo "${base_runs[*]}")]" \
        --argjson floors "[$(IFS=,; echo "${floors[*]}")]" '
        def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
        { leases: $n,
          weft_s: ($runs | map(.total_us) | median / 1e6),
          weft_first_entry_s: ($runs | map(.first_us) | median / 1e6),
          floor_s: ($floors | median / 1e6),
          floor_runs_s: ($floors | map(. / 1e6)),
          weft_runs_s: ($runs | map(.total_us / 1e6)),
          hwm_kib: ($runs | map(.hwm_kib) | max),
          rss_kib: ($runs | map(.rss_kib) | max) }
        + if ($base | length) > 0 then
            { baseline_s: ($base | map(.total_us) | median / 1e6),
              baseline_runs_s: ($base | map(.total_us / 1e6)),
              baseline_hwm_kib: ($base | map(.hwm_kib) | max) } else {} end' >"$res/scale.json"
fi

note_load end

# --- report -------------------------------------------------------------------------------
{
    echo "## Overlay benchmark"
    echo
    py report --dir "$res"
    echo
    echo "Environment: kernel $(uname -r), $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/^Mem/ {print $2}') GiB RAM; weftd $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet -- daemon netlink 2>/dev/null || echo ' (+ local changes)'), etcd $(etcd --version | sed -n 's/^etcd Version: //p'), iperf3 $(iperf3 --version | awk 'NR==1 {print $2}'), $( ((masq)) && echo 'weftd --ip-masq' || echo 'no masquerade'); 1-min load average at the start of each part: $(IFS=,; echo "${loads[*]}" | sed 's/,/, /g')."
    echo
    echo "Reproduce: \`sudo scripts/bench-overlay.sh --parts $parts --leases $n_leases --scale $n_scale --scale-leases $n_conv_scale --scale-runs $scale_runs --floor-runs $floor_runs --iperf-time $iperf_time --iperf-reps $iperf_reps$( ((masq)) && echo ' --masq')$([[ -z $baseline ]] || echo " --baseline $baseline")\`"
} >"$res/report.md"
cat "$res/report.md"
[[ -z $out ]] || cp "$res/report.md" "$out"
