#!/usr/bin/env bash
# weftd against an etcd that requires client certificates (mTLS), in two
# throwaway netns. Needs root, etcd, openssl, curl. Usage: sudo daemon/tests/tls.sh [weftd]
set -uo pipefail
W=$(readlink -f "${1:-$(dirname "$0")/../../target/x86_64-unknown-linux-gnu/debug/weftd}")
D=$(mktemp -d /tmp/weftd-tls.XXXXXX) E=wtlse$$ N=wtlsn$$ EP= WP= FAIL=0 PASS=0
cleanup() { kill $EP $WP 2>/dev/null; sleep 0.3; ip netns del $E 2>/dev/null; ip netns del $N 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
cd "$D"
printf '[srv]\nsubjectAltName=IP:198.51.100.1\nextendedKeyUsage=serverAuth\n[cli]\nextendedKeyUsage=clientAuth\n' > ext.cnf
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=weft-test-ca 2>/dev/null
for n in srv cli; do
    openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
    openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile ext.cnf -extensions $n 2>/dev/null
done
ip netns add $E; ip netns add $N
ip link add veth$$ netns $E type veth peer name eth0 netns $N
ip -n $E link set veth$$ up; ip -n $E addr add 198.51.100.1/24 dev veth$$; ip -n $E link set lo up
ip -n $N link set eth0 up; ip -n $N addr add 198.51.100.11/24 dev eth0; ip -n $N route add default via 198.51.100.1
U=https://198.51.100.1:2379
# A plain listener on the etcd netns' loopback only, for the test's own curl (etcd 3.4's
# JSON gateway cannot present a client certificate).
nsenter --net=/run/netns/$E etcd --data-dir "$D/etcd" --listen-client-urls $U,http://127.0.0.1:2379 \
    --advertise-client-urls $U --listen-peer-urls http://127.0.0.1:2380 \
    --cert-file srv.pem --key-file srv.key --client-cert-auth --trusted-ca-file ca.pem > etcd.log 2>&1 &
EP=$!
for _ in $(seq 50); do ip netns exec $E curl -sf http://127.0.0.1:2379/health >/dev/null && break; sleep 0.2; done
ip netns exec $E curl -sf -X POST http://127.0.0.1:2379/v3/kv/put \
    -d "{\"key\":\"$(printf /coreos.com/network/config | base64 -w0)\",\"value\":\"$(printf '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}' | base64 -w0)\"}" >/dev/null
nsenter --net=/run/netns/$N "$W" --etcd-endpoints=$U --etcd-cafile=ca.pem --etcd-certfile=cli.pem \
    --etcd-keyfile=cli.key --subnet-file="$D/subnet.env" > w.log 2>&1 &
WP=$!
for _ in $(seq 50); do [ -s subnet.env ] && break; sleep 0.2; done
if grep -q '^FLANNEL_SUBNET=10\.5\.' subnet.env 2>/dev/null; then PASS=$((PASS+1)); echo "ok   - lease over mTLS"; else FAIL=$((FAIL+1)); echo "FAIL - lease over mTLS"; tail w.log; fi
out=$(nsenter --net=/run/netns/$N timeout 4 "$W" --etcd-endpoints=$U --etcd-cafile=ca.pem --subnet-file="$D/s2.env" 2>&1)
# weftd sees the TLS alert (BadCertificate) or, under load, only the closed
# connection; etcd's log says why it refused.
if [ ! -e s2.env ] && { echo "$out" | grep -q BadCertificate || grep -q "from \"198.51.100.11:.*client didn't provide a certificate" etcd.log; }; then PASS=$((PASS+1)); echo "ok   - refused without a client certificate"; else FAIL=$((FAIL+1)); echo "FAIL - no client cert: $out"; fi
echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
