#!/usr/bin/env bash
# Integration test for weftd in throwaway network namespaces (needs root,
# etcd and iproute2; never touches the root netns' links, routes or firewall).
#
# Topology: a "hub" netns with bridge br0; an "etcd" netns (198.51.100.1,
# runs etcd) and node netns n1..n3 (198.51.100.11..13, default route via .1)
# each hang off the bridge with a veth. weftd runs in each node netns.
#
# Usage: sudo daemon/tests/netns.sh [path/to/weftd]
set -euo pipefail

WEFTD=${1:-$(dirname "$0")/../../target/x86_64-unknown-linux-gnu/debug/weftd}
WEFTD=$(readlink -f "$WEFTD")
ID=$$
HUB=wdhub$ID ETCDNS=wdetcd$ID
NODES=(wdn1$ID wdn2$ID wdn3$ID)
TMP=$(mktemp -d /tmp/weftd-it.XXXXXX)
PREFIX=/coreos.com/network
EP=http://198.51.100.1:2379
PIDS=()
PASS=0 FAIL=0

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for ns in "${NODES[@]}" "$ETCDNS" "$HUB"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${KEEP:-}" ]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

ok()   { PASS=$((PASS+1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL+1)); echo "FAIL - $*"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
# wait_for SECONDS CMD...: retry until CMD succeeds.
wait_for() { local t=$1; shift; local end=$((SECONDS+t)); until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.3; done; }
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

b64() { printf '%s' "$1" | base64 -w0; }
etcd_put() { inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/put" -d "{\"key\":\"$(b64 "$1")\",\"value\":\"$(b64 "$2")\"}" >/dev/null; }
etcd_del() { inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/deleterange" -d "{\"key\":\"$(b64 "$1")\"}" >/dev/null; }
# etcd_leases: lines "KEY LEASEID VALUE" under the subnets prefix.
etcd_leases() {
    local k; k=$(b64 "$PREFIX/subnets/"); local e; e=$(b64 "$PREFIX/subnets0")
    inns "$ETCDNS" curl -sf -X POST "$EP/v3/kv/range" -d "{\"key\":\"$k\",\"range_end\":\"$e\"}" |
        python3 -c 'import sys,json,base64
for kv in json.load(sys.stdin).get("kvs",[]):
    print(base64.b64decode(kv["key"]).decode(), kv.get("lease","0"), base64.b64decode(kv["value"]).decode())'
}
subnet_of() { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/\(.*\)$/\1.0\/\2/p' "$TMP/$1.env"; }

# --- topology ---------------------------------------------------------------
ip netns add "$HUB"
inns "$HUB" ip link add br0 type bridge
inns "$HUB" ip link set br0 up
attach() { # ns addr
    local ns=$1 addr=$2; local hv=h${ns: -6}$RANDOM
    ip netns add "$ns"
    ip link add "$hv" netns "$HUB" type veth peer name eth0 netns "$ns"
    inns "$HUB" ip link set "$hv" master br0 up
    inns "$ns" ip link set lo up
    inns "$ns" ip link set eth0 up
    inns "$ns" ip addr add "$addr/24" dev eth0
}
attach "$ETCDNS" 198.51.100.1
for i in 0 1 2; do
    attach "${NODES[$i]}" 198.51.100.1$((i+1))
    inns "${NODES[$i]}" ip route add default via 198.51.100.1
    inns "${NODES[$i]}" sysctl -qw net.ipv4.ip_forward=1
done

start_etcd() {
    nsenter --net="/run/netns/$ETCDNS" etcd --name it --data-dir "$TMP/etcd" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls http://198.51.100.1:2380 --initial-advertise-peer-urls http://198.51.100.1:2380 \
        --initial-cluster it=http://198.51.100.1:2380 >>"$TMP/etcd.log" 2>&1 &
    PIDS+=($!)
    ETCD_PID=$!
    wait_for 20 inns "$ETCDNS" curl -sf "$EP/health" || { echo "etcd did not start"; cat "$TMP/etcd.log"; exit 1; }
}
start_etcd

start_node() { # index extra-args...
    local i=$1; shift
    local ns=${NODES[$i]} n=n$((i+1))
    nsenter --net="/run/netns/$ns" "$WEFTD" --etcd-endpoints="$EP" --subnet-file="$TMP/$n.env" \
        --healthz-ip=127.0.0.1 --healthz-port=8081 --reconcile-interval=2 --iptables-resync=2 "$@" \
        >>"$TMP/$n.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$n=$!"
}

# --- bad flags / bad config -------------------------------------------------
set +e
out=$("$WEFTD" --subnet-lease-renew-margin=0 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] && ok "bad flag: one line, exit $rc ($out)" || bad "bad flag handling: rc=$rc out=$out"

# host-gw is supported now; "udp" (flannel's userspace backend) is not.
etcd_put "$PREFIX/config" '{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}'
set +e
out=$(inns "${NODES[0]}" timeout 20 "$WEFTD" --etcd-endpoints="$EP" --subnet-file="$TMP/bad.env" 2>&1); rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$out" | tail -1 | grep -q 'weft supports "vxlan"' && ok "bad config rejected, exit $rc: $(echo "$out" | tail -1)" || bad "bad config: rc=$rc $out"

# --- two nodes come up ------------------------------------------------------
etcd_put "$PREFIX/config" '{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}'
start_node 0 --ip-masq
start_node 1
check "n1 subnet.env written" wait_for 20 test -s "$TMP/n1.env"
check "n2 subnet.env written" wait_for 20 test -s "$TMP/n2.env"
echo "--- n1.env:"; cat "$TMP/n1.env"
S1=$(subnet_of n1) S2=$(subnet_of n2)
check "subnets differ ($S1, $S2)" test "$S1" != "$S2"
check "env order" bash -c "cut -d= -f1 '$TMP/n1.env' | tr '\n' ' ' | grep -qx 'FLANNEL_NETWORK FLANNEL_SUBNET FLANNEL_MTU FLANNEL_IPMASQ '"
check "n1 FLANNEL_MTU=1450, IPMASQ=true" grep -qx FLANNEL_IPMASQ=true "$TMP/n1.env"
check "env mode 0644" test "$(stat -c %a "$TMP/n1.env")" = 644
echo "--- leases:"; etcd_leases
G2=${S2%.0/*}.0
check "n1 route to n2's subnet" wait_for 15 bash -c "ip netns exec ${NODES[0]} ip route show $S2 | grep -q 'via $G2 dev flannel.1 onlink'"
check "n1 permanent neighbour for n2" bash -c "ip netns exec ${NODES[0]} ip neigh show dev flannel.1 | grep -q '^$G2 lladdr .* PERMANENT'"
check "n1 fdb entry to 198.51.100.12" bash -c "ip netns exec ${NODES[0]} bridge fdb show dev flannel.1 | grep -q 'dst 198.51.100.12 self permanent'"
check "flannel.1 mtu 1450, port 8472, nolearning" bash -c "ip netns exec ${NODES[0]} ip -d link show flannel.1 | grep -q 'mtu 1450' && ip netns exec ${NODES[0]} ip -d link show flannel.1 | grep -q 'dstport 8472.*nolearning'"
check "flannel.1 has ${S1%/*}/32" bash -c "ip netns exec ${NODES[0]} ip -4 addr show flannel.1 | grep -q 'inet ${S1%/*}/32'"
G1=${S1%.0/*}.0
check "overlay ping n1 -> n2 ($G2)" inns "${NODES[0]}" ping -c1 -W2 -I "$G1" "$G2"
check "readyz 200" wait_for 10 inns "${NODES[0]}" curl -sf http://127.0.0.1:8081/readyz
check "healthz 200" inns "${NODES[0]}" curl -sf http://127.0.0.1:8081/healthz
check "metrics leases_known 1" bash -c "ip netns exec ${NODES[0]} curl -sf http://127.0.0.1:8081/metrics | grep -qx 'weftd_leases_known 1'"
check "nft masq table present" bash -c "ip netns exec ${NODES[0]} nft list table ip flannel-ipv4 | grep -q 'masquerade'"

# --- drift repair -------------------------------------------------------------
inns "${NODES[0]}" ip route del "$S2"
check "deleted route is restored" wait_for 10 bash -c "ip netns exec ${NODES[0]} ip route show $S2 | grep -q onlink"
inns "${NODES[0]}" nft flush chain ip flannel-ipv4 postrtg
check "flushed masq chain restored" wait_for 10 bash -c "ip netns exec ${NODES[0]} nft list chain ip flannel-ipv4 postrtg | grep -q masquerade"
inns "${NODES[0]}" ip link del flannel.1
check "deleted device recreated with entries replayed" wait_for 15 bash -c "ip netns exec ${NODES[0]} ip route show $S2 | grep -q onlink && ip netns exec ${NODES[0]} bridge fdb show dev flannel.1 | grep -q 198.51.100.12"
check "overlay ping after recreation" wait_for 10 inns "${NODES[0]}" ping -c1 -W1 -I "$G1" "$G2"

# --- third node joins; reservation ------------------------------------------
etcd_put "$PREFIX/subnets/10.5.200.0-24" '{"PublicIP":"198.51.100.13","PublicIPv6":null}'
start_node 2 --ip-masq --masq-backend=iptables
check "n3 uses its reservation" wait_for 20 grep -qx FLANNEL_SUBNET=10.5.200.1/24 "$TMP/n3.env"
check "reservation still has no etcd lease" bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -q '^$PREFIX/subnets/10.5.200.0-24 0 '"
check "n3 iptables masq chain has flannel's 6 rules" wait_for 10 bash -c "test \$(ip netns exec ${NODES[2]} iptables -w -t nat -S FLANNEL-POSTRTG | grep -c 'flanneld masq') -eq 6"
check "n3 FORWARD accept rules" bash -c "ip netns exec ${NODES[2]} iptables -w -S FLANNEL-FWD | grep -q 'ACCEPT'"
inns "${NODES[2]}" iptables -w -t nat -F FLANNEL-POSTRTG
check "n3 flushed iptables chain restored" wait_for 10 bash -c "test \$(ip netns exec ${NODES[2]} iptables -w -t nat -S FLANNEL-POSTRTG | grep -c 'flanneld masq') -eq 6"
check "n1 learns n3 (route)" wait_for 15 bash -c "ip netns exec ${NODES[0]} ip route show 10.5.200.0/24 | grep -q onlink"
check "overlay ping n1 -> n3" wait_for 10 inns "${NODES[0]}" ping -c1 -W1 -I "$G1" 10.5.200.0

# --- restart keeps subnet and does not flush ---------------------------------
kill "$PID_n2"; sleep 0.5
check "n2 kept routes while down" bash -c "ip netns exec ${NODES[1]} ip route show $S1 | grep -q onlink"
start_node 1
sleep 3
check "n2 same subnet after restart" test "$(subnet_of n2)" = "$S2"
check "still exactly 3 leases" test "$(etcd_leases | wc -l)" -eq 3
check "overlay ping n2 -> n1 after restart" inns "${NODES[1]}" ping -c1 -W2 -I "$G2" "$G1"

# --- lease deleted: node re-acquires, peers follow -------------------------
etcd_del "$PREFIX/subnets/${S2%/*}-${S2#*/}"
check "n2 re-acquires its lease" wait_for 15 bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -q '198.51.100.12'"
check "n1 route to n2 present again" wait_for 15 bash -c "ip netns exec ${NODES[0]} ip route show $S2 | grep -q onlink"

# --- node leaves: its lease vanishes, peers drop all three entries ---------
kill "$PID_n3"; sleep 0.3
etcd_del "$PREFIX/subnets/10.5.200.0-24"
check "n1 removes n3's route" wait_for 10 bash -c "! ip netns exec ${NODES[0]} ip route show | grep -q 10.5.200.0/24"
check "n1 removes n3's neighbour" bash -c "! ip netns exec ${NODES[0]} ip neigh show dev flannel.1 | grep -q '^10.5.200.0 '"
check "n1 removes n3's fdb" bash -c "! ip netns exec ${NODES[0]} bridge fdb show dev flannel.1 | grep -q 198.51.100.13"

# --- short TTL: renewals keep the lease (CAS onto a fresh etcd lease) -----
kill "$PID_n1"; sleep 0.5
start_node 0 --ip-masq --subnet-lease-ttl=10
sleep 13
check "n1 renewed its 10s lease at least twice" test "$(grep -c 'renewed lease' "$TMP/n1.log")" -ge 2
check "n1 kept subnet $S1 across renewals" bash -c "$(declare -f etcd_leases b64 inns); EP=$EP ETCDNS=$ETCDNS PREFIX=$PREFIX; etcd_leases | grep -q '^$PREFIX/subnets/${S1%/*}-${S1#*/} '"

# --- etcd outage: data plane stays, weftd reconnects and catches up -------
kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true
sleep 3
check "route kept while etcd is down" bash -c "ip netns exec ${NODES[0]} ip route show $S2 | grep -q onlink"
start_etcd
etcd_put "$PREFIX/subnets/10.5.201.0-24" '{"PublicIP":"198.51.100.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}'
check "after etcd restart n1 programs a new peer" wait_for 20 bash -c "ip netns exec ${NODES[0]} ip route show 10.5.201.0/24 | grep -q onlink"
check "etcd reconnects counted" bash -c "ip netns exec ${NODES[0]} curl -sf http://127.0.0.1:8081/metrics | grep -q '^weftd_etcd_reconnects_total [1-9]'"
check "n1 fdb for the new peer" bash -c "ip netns exec ${NODES[0]} bridge fdb show dev flannel.1 | grep -q '02:00:00:00:00:99 dst 198.51.100.99 self permanent'"

echo "--- n1 log tail:"; tail -n 15 "$TMP/n1.log"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
