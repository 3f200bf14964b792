#!/usr/bin/env bash
# Dual-stack integration test for weftd in throwaway network namespaces
# (needs root, etcd, iproute2, nft; never touches the root netns).
#
# Topology: a "hub" netns with bridge br0; an "etcd" netns (198.51.100.1)
# and node netns n1..n3 (198.51.100.11..13 and 2001:db8:100::11..13, static,
# nodad) hang off the bridge. Each node runs weftd with
# {"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}
# and gets a "pod" netns wired with a veth (v4 + v6 address from its subnets).
#
# Usage: sudo daemon/tests/dualstack.sh [path/to/weftd]
set -euo pipefail

WEFTD=${1:-$(dirname "$0")/../../target/x86_64-unknown-linux-gnu/debug/weftd}
WEFTD=$(readlink -f "$WEFTD")
ID=$$
HUB=wdshub$ID ETCDNS=wdsetcd$ID
NODES=(wdsn1$ID wdsn2$ID wdsn3$ID)
PODS=(wdsp1$ID wdsp2$ID wdsp3$ID)
TMP=$(mktemp -d /tmp/weftd-ds.XXXXXX)
PREFIX=/coreos.com/network
EP=http://198.51.100.1:2379
PIDS=()
PASS=0 FAIL=0

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for ns in "${PODS[@]}" "${NODES[@]}" "$ETCDNS" "$HUB"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

ok()   { PASS=$((PASS+1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL+1)); echo "FAIL - $*"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
wait_for() { local t=$1; shift; local end=$((SECONDS+t)); until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.3; done; }
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

b64() { printf '%s' "$1" | base64 -w0; }
etcd_put() { inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/put" -d "{\"key\":\"$(b64 "$1")\",\"value\":\"$(b64 "$2")\"}" >/dev/null; }
etcd_del() { inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/deleterange" -d "{\"key\":\"$(b64 "$1")\"}" >/dev/null; }
etcd_leases() {
    local k; k=$(b64 "$PREFIX/subnets/"); local e; e=$(b64 "$PREFIX/subnets0")
    inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/range" -d "{\"key\":\"$k\",\"range_end\":\"$e\"}" |
        python3 -c 'import sys,json,base64
for kv in json.load(sys.stdin).get("kvs",[]):
    print(base64.b64decode(kv["key"]).decode(), kv.get("lease","0"), base64.b64decode(kv["value"]).decode())'
}
subnet_of()  { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/\(.*\)$/\1.0\/\2/p' "$TMP/$1.env"; }
subnet6_of() { sed -n 's/^FLANNEL_IPV6_SUBNET=\(.*\)1\/\(.*\)$/\1\/\2/p' "$TMP/$1.env"; }

# --- topology ---------------------------------------------------------------
ip netns add "$HUB"
inns "$HUB" ip link add br0 type bridge
inns "$HUB" ip link set br0 up
attach() { # ns addr [addr6]
    local ns=$1 addr=$2 addr6=${3:-}; local hv=h${ns: -6}$RANDOM
    ip netns add "$ns"
    ip link add "$hv" netns "$HUB" type veth peer name eth0 netns "$ns"
    inns "$HUB" ip link set "$hv" master br0 up
    inns "$ns" ip link set lo up
    inns "$ns" ip link set eth0 up
    inns "$ns" ip addr add "$addr/24" dev eth0
    [ -z "$addr6" ] || inns "$ns" ip -6 addr add "$addr6/64" dev eth0 nodad
}
attach "$ETCDNS" 198.51.100.1
for i in 0 1 2; do
    attach "${NODES[$i]}" 198.51.100.1$((i+1)) 2001:db8:100::1$((i+1))
    inns "${NODES[$i]}" ip route add default via 198.51.100.1
    inns "${NODES[$i]}" sysctl -qw net.ipv4.ip_forward=1
    inns "${NODES[$i]}" sysctl -qw net.ipv6.conf.all.forwarding=1
done

nsenter --net="/run/netns/$ETCDNS" etcd --name it --data-dir "$TMP/etcd" \
    --listen-client-urls "$EP" --advertise-client-urls "$EP" \
    --listen-peer-urls http://198.51.100.1:2380 --initial-advertise-peer-urls http://198.51.100.1:2380 \
    --initial-cluster it=http://198.51.100.1:2380 >>"$TMP/etcd.log" 2>&1 &
PIDS+=($!)
wait_for 20 inns "$ETCDNS" curl -sf "$EP/health" || { echo "etcd did not start"; cat "$TMP/etcd.log"; exit 1; }

start_node() { # index extra-args...
    local i=$1; shift
    local ns=${NODES[$i]} n=n$((i+1))
    nsenter --net="/run/netns/$ns" "$WEFTD" --etcd-endpoints="$EP" --subnet-file="$TMP/$n.env" \
        --healthz-ip=127.0.0.1 --healthz-port=8081 --reconcile-interval=2 --iptables-resync=2 "$@" \
        >>"$TMP/$n.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$n=$!"
}

# A "pod": netns + veth, ${sub}.10 and ${sub6}a, default routes via the node.
add_pod() { # index
    local i=$1 n=n$(($1+1)); local node=${NODES[$i]} pod=${PODS[$i]}
    local s4 s6; s4=$(subnet_of "$n") s6=$(subnet6_of "$n")
    local hv=vp$i$RANDOM
    ip netns add "$pod"
    ip link add "$hv" netns "$node" type veth peer name eth0 netns "$pod"
    inns "$pod" ip link set lo up
    inns "$pod" ip link set eth0 up
    inns "$pod" ip addr add "${s4%.0/*}.10/32" dev eth0
    inns "$pod" ip -6 addr add "${s6%/*}a/128" dev eth0 nodad
    inns "$node" ip link set "$hv" up
    inns "$node" ip -6 addr add fe80::1/64 dev "$hv" nodad
    inns "$node" ip addr add 169.254.1.1/32 dev "$hv"
    inns "$node" ip route add "${s4%.0/*}.10/32" dev "$hv"
    inns "$node" ip -6 route add "${s6%/*}a/128" dev "$hv"
    inns "$pod" ip route add 169.254.1.1/32 dev eth0
    inns "$pod" ip route add default via 169.254.1.1 dev eth0
    inns "$pod" ip -6 route add default via fe80::1 dev eth0
    inns "$node" sysctl -qw "net.ipv4.conf.$hv.proxy_arp=1"
}

# --- config checks ------------------------------------------------------------
etcd_put "$PREFIX/config" '{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}'
set +e
out=$(inns "${NODES[0]}" timeout 20 "$WEFTD" --etcd-endpoints="$EP" --subnet-file="$TMP/bad.env" 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$out" | tail -1 | grep -q 'IPv6Network is missing' && ok "EnableIPv6 without IPv6Network rejected: $(echo "$out" | tail -1)" || bad "missing IPv6Network: rc=$rc $out"

etcd_put "$PREFIX/config" '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}'
start_node 0 --ip-masq
start_node 1
start_node 2 --public-ipv6=2001:db8:100::13
for n in n1 n2 n3; do check "$n subnet.env written" wait_for 20 test -s "$TMP/$n.env"; done
echo "--- n1.env:"; cat "$TMP/n1.env"
echo "--- leases:"; etcd_leases
check "env order (flannel's)" bash -c "cut -d= -f1 '$TMP/n1.env' | tr '\n' ' ' | grep -qx 'FLANNEL_NETWORK FLANNEL_SUBNET FLANNEL_IPV6_NETWORK FLANNEL_IPV6_SUBNET FLANNEL_MTU FLANNEL_IPMASQ '"
check "FLANNEL_IPV6_NETWORK" grep -qx FLANNEL_IPV6_NETWORK=fd00:10:244::/56 "$TMP/n1.env"
check "FLANNEL_IPV6_SUBNET is a /64 gateway" grep -qE '^FLANNEL_IPV6_SUBNET=fd00:10:244:[0-9a-f]+::1/64$' "$TMP/n1.env"
check "FLANNEL_MTU=1430 (the smaller of 1450 and 1430)" grep -qx FLANNEL_MTU=1430 "$TMP/n1.env"
S1=$(subnet_of n1) S2=$(subnet_of n2) S3=$(subnet_of n3)
T1=$(subnet6_of n1) T2=$(subnet6_of n2) T3=$(subnet6_of n3)
check "v6 subnets differ ($T1 $T2 $T3)" bash -c "[ '$T1' != '$T2' ] && [ '$T2' != '$T3' ] && [ '$T1' != '$T3' ]"
K1="$PREFIX/subnets/${S1%/*}-24&${T1%/*}-64"
check "n1 lease key is dual-stack ($K1)" bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -qF '$K1 '"
check "n1 lease value has PublicIPv6 and BackendV6Data" bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -F '$K1 ' | grep -q '\"PublicIPv6\":\"2001:db8:100::11\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"[0-9a-f:]*\"},\"BackendV6Data\":{\"VNI\":1,\"VtepMAC\":\"[0-9a-f:]*\"}'"
check "n3 uses --public-ipv6" bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -q '\"PublicIPv6\":\"2001:db8:100::13\"'"

B1=${T1%/*} B2=${T2%/*} B3=${T3%/*}
N1=${NODES[0]}
check "flannel-v6.1 mtu 1430" wait_for 10 bash -c "ip netns exec $N1 ip link show flannel-v6.1 | grep -q 'mtu 1430'"
check "flannel-v6.1 local 2001:db8:100::11, port 8472" bash -c "ip netns exec $N1 ip -d link show flannel-v6.1 | grep -q 'local 2001:db8:100::11 .*dstport 8472'"
check "flannel.1 mtu still 1450" bash -c "ip netns exec $N1 ip link show flannel.1 | grep -q 'mtu 1450'"
check "flannel-v6.1 has $B1/128" bash -c "ip netns exec $N1 ip -6 addr show dev flannel-v6.1 | grep -q 'inet6 $B1/128'"
for j in 2 3; do
    T=T$j B=B$j; T=${!T} B=${!B}
    check "n1 v6 route to n$j ($T via $B dev flannel-v6.1 onlink)" wait_for 15 bash -c "ip netns exec $N1 ip -6 route show $T | grep -q 'via $B dev flannel-v6.1.*onlink'"
    check "n1 permanent v6 neighbour for n$j" bash -c "ip netns exec $N1 ip -6 neigh show dev flannel-v6.1 | grep -q '^$B lladdr .* PERMANENT'"
    check "n1 v6 fdb entry to 2001:db8:100::1$j" bash -c "ip netns exec $N1 bridge fdb show dev flannel-v6.1 | grep -q 'dst 2001:db8:100::1$j self permanent'"
done
check "n1 v4 route to n2 unchanged" bash -c "ip netns exec $N1 ip route show $S2 | grep -q 'via ${S2%/*} dev flannel.1 onlink'"
check "overlay ping6 n1 -> n2 ($B1 -> $B2)" wait_for 10 inns "$N1" ping -6 -c1 -W1 -I "$B1" "$B2"
check "overlay ping6 n3 -> n1 ($B3 -> $B1)" wait_for 10 inns "${NODES[2]}" ping -6 -c1 -W1 -I "$B3" "$B1"
check "overlay ping (v4) n1 -> n2" inns "$N1" ping -c1 -W2 -I "${S1%/*}" "${S2%/*}"
check "n1 nft ip6 flannel-ipv6 masq with ff00::/8" wait_for 10 bash -c "ip netns exec $N1 nft list table ip6 flannel-ipv6 | grep -q 'ip6 daddr != ff00::/8 masquerade'"
check "n1 nft ip flannel-ipv4 still present" bash -c "ip netns exec $N1 nft list table ip flannel-ipv4 | grep -q masquerade"
check "readyz 200" wait_for 10 inns "$N1" curl -sf http://127.0.0.1:8081/readyz

# --- pod to pod across nodes ----------------------------------------------
add_pod 0; add_pod 1
P2V6="${B2}a"
check "pod-to-pod ping6 n1 pod -> n2 pod ($P2V6)" wait_for 10 inns "${PODS[0]}" ping -6 -c1 -W1 "$P2V6"
check "pod-to-pod ping (v4) n1 pod -> n2 pod" wait_for 10 inns "${PODS[0]}" ping -c1 -W1 "${S2%.0/*}.10"

# --- drift repair on the v6 side ----------------------------------------------
inns "$N1" ip -6 route del "$T2"
check "deleted v6 route is restored" wait_for 10 bash -c "ip netns exec $N1 ip -6 route show $T2 | grep -q onlink"
inns "$N1" ip link del flannel-v6.1
check "deleted flannel-v6.1 recreated with entries" wait_for 15 bash -c "ip netns exec $N1 ip -6 route show $T2 | grep -q onlink && ip netns exec $N1 bridge fdb show dev flannel-v6.1 | grep -q 2001:db8:100::12"
check "ping6 after recreation" wait_for 10 inns "$N1" ping -6 -c1 -W1 -I "$B1" "$B2"

# --- restart keeps both subnets ------------------------------------------------
kill "$PID_n2"; sleep 0.5
start_node 1
sleep 3
check "n2 same v4 and v6 subnets after restart" bash -c "[ '$(subnet_of n2)' = '$S2' ] && [ \"\$(sed -n 's/^FLANNEL_IPV6_SUBNET=\(.*\)1\/\(.*\)$/\1\/\2/p' $TMP/n2.env)\" = '$T2' ]"
check "still exactly 3 leases" test "$(etcd_leases | wc -l)" -eq 3

# --- node leaves: peers drop its v6 entries too -------------------------------
kill "$PID_n3"; sleep 0.3
etcd_del "$PREFIX/subnets/${S3%/*}-24&${T3%/*}-64"
check "n1 removes n3's v6 route" wait_for 10 bash -c "! ip netns exec $N1 ip -6 route show | grep -q '^$T3'"
check "n1 removes n3's v6 neighbour" bash -c "! ip netns exec $N1 ip -6 neigh show dev flannel-v6.1 | grep -q '^$B3 '"
check "n1 removes n3's v6 fdb" bash -c "! ip netns exec $N1 bridge fdb show dev flannel-v6.1 | grep -q 2001:db8:100::13"
check "n1 removes n3's v4 route" bash -c "! ip netns exec $N1 ip route show | grep -q '^$S3'"

echo "--- n1 log tail:"; tail -n 12 "$TMP/n1.log"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
