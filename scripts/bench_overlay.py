#!/usr/bin/env python3
"""Helper for scripts/bench-overlay.sh (not meant to be run by hand).

Subcommands (each prints one JSON object on stdout unless noted):
  converge   run inside a node netns: write N fake leases to etcd one at a
             time and time each until its route, neighbour and FDB entry
             are all seen on flannel.1 (netlink multicast events).
  load       write N fake leases to etcd in batched transactions.
  count      run inside a node netns: follow netlink events until flannel.1
             holds TARGET managed entries; reports first/last event times.
  batch      write the ip/bridge -batch files for the kernel floor.
  iperf      summarise iperf3 -J outputs.
  report     print the Markdown report from the collected JSON files.

Only the standard library is used; netlink is parsed by hand.
"""

import argparse
import base64
import errno
import http.client
import ipaddress
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

# --- netlink -----------------------------------------------------------------
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x40
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME = 3
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x4
AF_INET, AF_BRIDGE = 2, 7
SO_RCVBUFFORCE = 33


def attrs(buf, off, end):
    out = {}
    while off + 4 <= end:
        ln, ty = struct.unpack_from("HH", buf, off)
        if ln < 4:
            break
        out[ty & 0x3FFF] = buf[off + 4 : off + ln]
        off += (ln + 3) & ~3
    return out


def mac_str(b):
    return ":".join(f"{x:02x}" for x in b)


class Events:
    """A NETLINK_ROUTE socket subscribed to link, neighbour and IPv4 route events."""

    def __init__(self, dev="flannel.1"):
        self.dev = dev
        self.index = None
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        try:
            self.s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
        except OSError:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 20)
        self.s.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))
        self.overflow = False
        try:
            self.index = socket.if_nametoindex(dev)
        except OSError:
            self.index = None

    def read(self, timeout):
        """Wait up to `timeout` s; return [(t_ns, kind, op, key, info)]."""
        r, _, _ = select.select([self.s], [], [], max(timeout, 0))
        if not r:
            return []
        out = []
        while True:
            try:
                data = self.s.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflow = True
                    continue
                raise
            t = time.monotonic_ns()
            out.extend(self.parse(data, t))
        return out

    def parse(self, data, t):
        off = 0
        res = []
        while off + 16 <= len(data):
            ln, ty, _fl, _seq, _pid = struct.unpack_from("IHHII", data, off)
            if ln < 16:
                break
            end = off + ln
            p = off + 16
            if ty in (RTM_NEWLINK, RTM_DELLINK):
                _fam, _ty, idx, _f, _c = struct.unpack_from("BxHiII", data, p)
                a = attrs(data, p + 16, end)
                name = a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
                if name == self.dev:
                    self.index = idx if ty == RTM_NEWLINK else None
            elif ty in (RTM_NEWROUTE, RTM_DELROUTE):
                fam, dlen, _sl, _tos, table, _pr, _sc, _rt, flags = struct.unpack_from(
                    "BBBBBBBBI", data, p)
                a = attrs(data, p + 12, end)
                if RTA_TABLE in a:
                    table = struct.unpack("I", a[RTA_TABLE])[0]
                oif = struct.unpack("i", a[RTA_OIF])[0] if RTA_OIF in a else None
                if fam == AF_INET and table == 254 and RTA_DST in a and oif == self.index \
                        and oif is not None:
                    dst = f"{socket.inet_ntoa(a[RTA_DST])}/{dlen}"
                    ok = bool(flags & RTNH_F_ONLINK) and RTA_GATEWAY in a
                    res.append((t, "route", "add" if ty == RTM_NEWROUTE else "del", dst, ok))
            elif ty in (RTM_NEWNEIGH, RTM_DELNEIGH):
                fam, idx, state, nflags, _nt = struct.unpack_from("BxxxiHBB", data, p)
                a = attrs(data, p + 12, end)
                if idx == self.index and self.index is not None:
                    op = "add" if ty == RTM_NEWNEIGH else "del"
                    perm = bool(state & NUD_PERMANENT)
                    if fam == AF_INET and NDA_DST in a:
                        res.append((t, "neigh", op, socket.inet_ntoa(a[NDA_DST]),
                                    perm and NDA_LLADDR in a))
                    elif fam == AF_BRIDGE and NDA_LLADDR in a and NDA_DST in a:
                        res.append((t, "fdb", op, mac_str(a[NDA_LLADDR]), perm))
            off += (ln + 3) & ~3
        return res


# --- fake leases ---------------------------------------------------------------
def conv_lease(i):
    """Lease i (0..99) for the convergence part: /24 in 10.244.150+i, 203.0.113.x."""
    subnet = ipaddress.ip_network(f"10.244.{150 + i}.0/24")
    mac = f"02:cc:00:00:{i >> 8:02x}:{i & 255:02x}"
    pub = f"203.0.113.{i + 1}"
    return subnet, mac, pub


def scale_lease(i, subnet_len):
    """Lease i (0..n-1) for the scale part: 10.244.0.0/16 cut into /subnet_len,
    skipping the first subnet (SubnetMin); public IPs in 198.18.0.0/15 (RFC 2544)."""
    size = 1 << (32 - subnet_len)
    base = int(ipaddress.ip_address("10.244.0.0"))
    subnet = ipaddress.ip_network(f"{ipaddress.ip_address(base + size * (i + 1))}/{subnet_len}")
    mac = f"02:bb:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
    pub = str(ipaddress.ip_address(int(ipaddress.ip_address("198.18.0.0")) + i + 1))
    return subnet, mac, pub


def lease_kv(prefix, subnet, mac, pub):
    key = f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    val = json.dumps({"PublicIP": pub, "PublicIPv6": None, "BackendType": "vxlan",
                      "BackendData": {"VNI": 1, "VtepMAC": mac}}, separators=(",", ":"))
    return key, val


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self, endpoint):
        u = endpoint.split("://", 1)[-1]
        host, port = u.rsplit(":", 1)
        self.c = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, path, body):
        self.c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {r.status}: {data[:200]!r}")
        return json.loads(data)

    def put(self, key, val):
        return self.post("/v3/kv/put", {"key": b64(key), "value": b64(val)})

    def txn_put(self, kvs):
        ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in kvs]
        r = self.post("/v3/kv/txn", {"success": ops})
        if not r.get("succeeded", False):
            raise RuntimeError(f"txn failed: {r}")


# --- subcommands ---------------------------------------------------------------
def cmd_converge(a):
    ev = Events(a.dev)
    etcd = Etcd(a.etcd)
    etcd.post("/v3/kv/range", {"key": b64(a.prefix + "/config")})  # warm the connection
    seen = {}  # (kind, key) -> first monotonic ns seen present and correct
    lat = []
    missing = []

    def absorb(events):
        for t, kind, op, key, ok in events:
            if op == "add" and ok:
                seen.setdefault((kind, key), t)
            elif op == "del":
                seen.pop((kind, key), None)

    absorb(ev.read(0))
    for i in range(a.first, a.first + a.n):
        subnet, mac, pub = conv_lease(i) if a.subnet_len is None else scale_lease(i, a.subnet_len)
        want = [("route", str(subnet)), ("neigh", str(subnet.network_address)), ("fdb", mac)]
        k, v = lease_kv(a.prefix, subnet, mac, pub)
        # Stamp just before the request is sent: the watch event can reach
        # weftd (and the kernel) before the put's response reaches us.
        t0 = time.monotonic_ns()
        etcd.put(k, v)
        deadline = t0 + int(a.timeout * 1e9)
        while not all(w in seen for w in want):
            now = time.monotonic_ns()
            if now >= deadline:
                break
            absorb(ev.read((deadline - now) / 1e9))
        if all(w in seen for w in want):
            lat.append((max(seen[w] for w in want) - t0) / 1e6)
        else:
            missing.append(str(subnet))
        time.sleep(a.gap)
    if a.cleanup:
        for i in range(a.first, a.first + a.n):
            subnet, mac, pub = conv_lease(i) if a.subnet_len is None else scale_lease(i, a.subnet_len)
            etcd.post("/v3/kv/deleterange", {"key": b64(lease_kv(a.prefix, subnet, mac, pub)[0])})
    print(json.dumps({"samples_ms": lat, "missing": missing, "overflow": ev.overflow}))


def cmd_load(a):
    etcd = Etcd(a.etcd)
    t0 = time.monotonic()
    kvs = [lease_kv(a.prefix, *scale_lease(i, a.subnet_len)) for i in range(a.n)]
    for j in range(0, len(kvs), a.batch):
        etcd.txn_put(kvs[j : j + a.batch])
    print(json.dumps({"leases": a.n, "seconds": time.monotonic() - t0}))


def ip_counts(dev):
    def n(cmd):
        return sum(1 for l in subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
                   if l.strip())
    return (n(["ip", "-4", "route", "show", "dev", dev]),
            n(["ip", "-4", "neigh", "show", "dev", dev, "nud", "permanent"]),
            n(["bridge", "fdb", "show", "dev", dev]))


def cmd_count(a):
    ev = Events(a.dev)
    sets = {"route": set(), "neigh": set(), "fdb": set()}
    first = last = None
    with open(a.ready, "w") as f:
        f.write("ready\n")
    deadline = time.monotonic() + a.timeout
    total = 0
    polled = False
    while time.monotonic() < deadline:
        for t, kind, op, key, ok in ev.read(0.5):
            if op == "add" and ok:
                sets[kind].add(key)
            else:
                sets[kind].discard(key)
            if first is None:
                first = time.time_ns()
            last = time.time_ns()
        total = sum(len(s) for s in sets.values())
        if ev.overflow:
            # Lost events: fall back to polling the kernel with ip(8).
            polled = True
            c = ip_counts(a.dev)
            total = sum(c)
            if total >= a.target:
                last = time.time_ns()
        if total >= a.target:
            break
    print(json.dumps({"first_ns": first, "done_ns": last if total >= a.target else None,
                      "entries": total, "overflow": ev.overflow, "polled": polled}))


def cmd_batch(a):
    with open(a.ip, "w") as ipf, open(a.bridge, "w") as brf, open(a.routes, "w") as rf:
        for i in range(a.n):
            subnet, mac, pub = scale_lease(i, a.subnet_len)
            gw = subnet.network_address
            ipf.write(f"neigh replace {gw} lladdr {mac} dev {a.dev} nud permanent\n")
            brf.write(f"fdb replace {mac} dev {a.dev} dst {pub} self permanent\n")
            rf.write(f"route replace {subnet} via {gw} dev {a.dev} onlink\n")


def cmd_iperf(a):
    out = {}
    for path in a.files:
        name = os.path.basename(path).rsplit("-", 1)[0]
        try:
            with open(path) as f:
                j = json.load(f)
            bps = j["end"]["sum_received"]["bits_per_second"]
            retr = j["end"]["sum_sent"].get("retransmits", 0)
        except (OSError, KeyError, ValueError):
            bps, retr = None, None
        out.setdefault(name, []).append({"gbps": bps / 1e9 if bps else None, "retr": retr})
    print(json.dumps(out))


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def cmd_report(a):
    d = a.dir
    rows = []

    def load(name):
        try:
            with open(os.path.join(d, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def yes(b):
        return "yes" if b else "**no**"

    conv = load("converge.json")
    notes = []
    if conv:
        s = conv["samples_ms"]
        n = len(s) + len(conv["missing"])
        if s:
            p50, p99 = pct(s, 50), pct(s, 99)
            rows.append(("Convergence: lease written to etcd → route + neighbour + FDB on "
                         f"another node, p50 / p99 ({len(s)}/{n} leases)",
                         f"{p50:.1f} / {p99:.1f} ms", "—", "—", "p99 < 50 ms",
                         yes(p99 < 50 and not conv["missing"])))
            notes.append(f"convergence: min {min(s):.1f} ms, mean {statistics.mean(s):.1f} ms, "
                         f"max {max(s):.1f} ms")
        if conv["missing"]:
            notes.append(f"convergence: {len(conv['missing'])} leases never converged: "
                         f"{conv['missing'][:5]}")
    cs = load("converge-scale.json")
    if cs and cs["samples_ms"]:
        s = cs["samples_ms"]
        n = len(s) + len(cs["missing"])
        lease_count = (load("scale.json") or {}).get("leases", "?")
        base = conv["samples_ms"] if conv else []
        if base:
            ratio = pct(s, 50) / pct(base, 50)
            rows.append((f"Per-event cost: lease → kernel with {lease_count} leases programmed "
                         f"vs an empty node, p50 / p99 ({len(s)}/{n} and {len(base)} leases)",
                         f"{pct(s, 50):.2f} / {pct(s, 99):.2f} ms",
                         f"{pct(base, 50):.2f} / {pct(base, 99):.2f} ms (empty node)",
                         f"{ratio:.2f}×", "≤ 1.5× (p50)", yes(ratio <= 1.5)))
        else:
            rows.append((f"Convergence with {lease_count} leases programmed, p50 / p99 "
                         f"({len(s)}/{n} leases)", f"{pct(s, 50):.2f} / {pct(s, 99):.2f} ms",
                         "—", "—", "(info)", "—"))
    sc = load("scale.json")
    if sc:
        n = sc["leases"]
        if sc.get("weft_s") is not None:
            ratio = sc["weft_s"] / sc["floor_s"]
            rows.append((f"Scale: weftd start → {3 * n} entries programmed ({n} leases)",
                         f"{sc['weft_s']:.2f} s", f"{sc['floor_s']:.2f} s (`ip`/`bridge -batch`)",
                         f"{ratio:.2f}×", "≤ 1.2×", yes(ratio <= 1.2)))
        else:
            rows.append((f"Scale: weftd start → {3 * n} entries programmed ({n} leases)",
                         f"not done ({sc.get('entries')} entries)", f"{sc['floor_s']:.2f} s",
                         "—", "≤ 1.2×", "**no**"))
        rss = sc.get("hwm_kib")
        if rss:
            rows.append((f"weftd peak RSS (VmHWM) after programming {n} leases",
                         f"{rss / 1024:.1f} MiB", "—", "—", "< 25 MiB", yes(rss < 25 * 1024)))
        if sc.get("baseline_s") is not None:
            rows.append((f"Baseline weftd (`--baseline`), interleaved: start → {3 * n} entries",
                         f"{sc['weft_s']:.2f} s, VmHWM {sc['hwm_kib'] / 1024:.1f} MiB",
                         f"{sc['baseline_s']:.2f} s, VmHWM {sc['baseline_hwm_kib'] / 1024:.1f} MiB"
                         " (baseline)", f"{sc['weft_s'] / sc['baseline_s']:.2f}× time, "
                         f"{sc['hwm_kib'] / sc['baseline_hwm_kib']:.2f}× RSS", "(info)", "—"))
        notes.append("scale: " + ", ".join(f"{k}={v}" for k, v in sc.items()))
    dp = load("iperf.json")
    if dp:
        w = [x["gbps"] for x in dp.get("weft", []) if x["gbps"]]
        r = [x["gbps"] for x in dp.get("ref", []) if x["gbps"]]
        if w and r:
            mw, mr = statistics.median(w), statistics.median(r)
            rows.append((f"Pod↔pod TCP throughput across nodes (iperf3, median of {len(w)})",
                         f"{mw:.2f} Gbit/s", f"{mr:.2f} Gbit/s (hand-made kernel VXLAN)",
                         f"{mw / mr:.2f}×", "≥ 0.95×", yes(mw / mr >= 0.95)))
            notes.append("iperf3 weft Gbit/s: " + ", ".join(f"{x:.2f}" for x in w)
                         + "; reference: " + ", ".join(f"{x:.2f}" for x in r)
                         + "; retransmits weft/ref: "
                         + f"{sum(x['retr'] or 0 for x in dp['weft'])}/"
                         + f"{sum(x['retr'] or 0 for x in dp['ref'])}")
    hg = load("iperf-hostgw.json")
    if hg:
        med = {k: statistics.median([x["gbps"] for x in v if x["gbps"]] or [float("nan")])
               for k, v in hg.items()}
        w, h, v = (med.get(k, float("nan")) for k in ("hgw-weft", "hgw-hand", "hgw-vxlan"))
        reps = len(hg.get("hgw-weft", []))
        rows.append((f"host-gw pod↔pod TCP throughput across nodes (iperf3, median of {reps})",
                     f"{w:.2f} Gbit/s", f"{h:.2f} Gbit/s (same nodes and pods, hand-made routes)",
                     f"{w / h:.2f}×", "≥ 0.97×", yes(w / h >= 0.97)))
        rows.append(("host-gw against weft's vxlan (same run, same iperf3 settings)",
                     f"{w:.2f} Gbit/s", f"{v:.2f} Gbit/s (weft vxlan, MTU 1450)",
                     f"{w / v:.2f}×", "(info)", "—"))
        notes.append("iperf3 host-gw Gbit/s: " + "; ".join(
            f"{k}: " + ", ".join(f"{x['gbps']:.2f}" for x in vals if x["gbps"])
            for k, vals in sorted(hg.items())))
    print("| metric | weft | reference / floor | ratio | target | met? |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for n in notes:
        print(f"- {n}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("converge")
    c.add_argument("--etcd", required=True)
    c.add_argument("--prefix", required=True)
    c.add_argument("--n", type=int, default=100)
    c.add_argument("--dev", default="flannel.1")
    c.add_argument("--timeout", type=float, default=5.0)
    c.add_argument("--gap", type=float, default=0.02)
    c.add_argument("--cleanup", action="store_true", help="delete the leases afterwards")
    c.add_argument("--first", type=int, default=0, help="index of the first lease")
    c.add_argument("--subnet-len", type=int, default=None,
                   help="use the scale part's lease scheme (/LEN subnets, 198.18.0.0/15)")
    c = sub.add_parser("load")
    c.add_argument("--etcd", required=True)
    c.add_argument("--prefix", required=True)
    c.add_argument("--n", type=int, default=5000)
    c.add_argument("--subnet-len", type=int, default=29)
    c.add_argument("--batch", type=int, default=100)
    c = sub.add_parser("count")
    c.add_argument("--dev", default="flannel.1")
    c.add_argument("--target", type=int, required=True)
    c.add_argument("--ready", required=True)
    c.add_argument("--timeout", type=float, default=120)
    c = sub.add_parser("batch")
    c.add_argument("--n", type=int, default=5000)
    c.add_argument("--subnet-len", type=int, default=29)
    c.add_argument("--dev", default="flannel.1")
    c.add_argument("--ip", required=True)
    c.add_argument("--bridge", required=True)
    c.add_argument("--routes", required=True)
    c = sub.add_parser("iperf")
    c.add_argument("files", nargs="*")
    c = sub.add_parser("report")
    c.add_argument("--dir", required=True)
    a = p.parse_args()
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
