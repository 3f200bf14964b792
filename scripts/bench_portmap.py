#!/usr/bin/env python3
"""portmap driver for scripts/bench-cni.sh --portmap (do not run directly).

Runs inside the benchmark's node netns. For weft's portmap and the Go
reference (/usr/lib/cni/portmap), side by side in one run, times one ADD
and its DEL of a one-mapping attachment (posix_spawn + wait4) on a node
with no mapping and on a second node (--full-node, entered with setns
between probes) with --pods x --per-pod mappings (1,000 by default) of
each implementation already present, each in its own tables (weft: inet
weft_portmap; Go: the iptables nat table). Probes of all four cells
interleave (implementation and node order alternate), so load from other
work on the machine hits every cell alike. Peak RSS of weft's ADD and DEL
comes from separate runs under /usr/bin/time. Prints a Markdown report on
stdout.
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

NET = "weft-bench-pm"


CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


class Node:
    """A node netns the (single-threaded) driver can switch into, so the
    plugins it spawns run there."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)

    def enter(self):
        if LIBC.setns(self.fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def prev_result(netns, n):
    ip = f"10.244.{n // 250}.{n % 250 + 2}/16"
    return {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0"},
            {"name": f"veth{n:08x}"},
            {"name": "eth0", "sandbox": netns},
        ],
        "ips": [{"address": ip, "gateway": "10.244.0.1", "interface": 2}],
    }


def conf(netns, n, ports):
    return {
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "portmap",
        "runtimeConfig": {
            "portMappings": [
                {"hostPort": p, "containerPort": 80, "protocol": "tcp"} for p in ports
            ]
        },
        "prevResult": prev_result(netns, n),
    }


class Plugin:
    def __init__(self, label, path, tmp, netns):
        self.label, self.path, self.tmp, self.netns = label, path, tmp, netns
        self.stdin = os.path.join(tmp, f"stdin-{label}")

    def call(self, command, cid, config, rss=False, path_env="/usr/sbin:/usr/bin:/sbin:/bin"):
        with open(self.stdin, "w") as f:
            json.dump(config, f)
        env = {
            "PATH": path_env,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": os.path.dirname(self.path),
        }
        argv = [self.path]
        if rss:
            argv = ["/usr/bin/time", "-f", "%M", "-o", os.path.join(self.tmp, "rss"), self.path]
        fin = os.open(self.stdin, os.O_RDONLY)
        null = os.open(os.devnull, os.O_WRONLY)
        actions = [(os.POSIX_SPAWN_DUP2, fin, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
        try:
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
            _, status, _ = os.wait4(pid, 0)
            t1 = time.perf_counter_ns()
        finally:
            os.close(fin)
            os.close(null)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bench: {self.label} portmap {command} {cid} failed")
        if rss:
            with open(os.path.join(self.tmp, "rss")) as f:
                return int(f.read().split()[-1])
        return t1 - t0

    def probe(self, i):
        """(ADD, DEL) nanoseconds of one one-mapping attachment."""
        cid = f"probe{i}"
        c = conf(self.netns, 5000, [30000])
        return self.call("ADD", cid, c), self.call("DEL", cid, c)

    def fill(self, pods, per_pod):
        for n in range(pods):
            ports = range(10000 + n * per_pod, 10000 + (n + 1) * per_pod)
            self.call("ADD", f"fill{n}", conf(self.netns, n, ports))

    def drain(self, pods):
        for n in range(pods):
            self.call("DEL", f"fill{n}", conf(self.netns, n, []))


def med_ms(xs):
    return statistics.median(xs) / 1e6


def interleaved(weft, go, nodes, iterations):
    """{(label, node): {"ADD": [...], "DEL": [...]}}, probes alternating
    the implementations and the nodes."""
    out = {(p.label, n): {"ADD": [], "DEL": []} for p in (weft, go) for n in nodes}
    for i in range(iterations + 2):
        for p in (weft, go) if i % 2 == 0 else (go, weft):
            for n in nodes if i % 4 < 2 else list(reversed(nodes)):
                nodes[n].enter()
                add, dele = p.probe(i)
                if i >= 2:  # warm-up
                    out[(p.label, n)]["ADD"].append(add)
                    out[(p.label, n)]["DEL"].append(dele)
    return out


def weft_rss(p, tmp, netns):
    """Peak RSS (KiB), max of 5: ADD with `nft` replaced by /usr/bin/true
    (GNU time reports the largest of the plugin and its children, so this
    is portmap's own), ADD with the real nft, and DEL (which runs no nft
    when ADD recorded its rules' handles)."""
    fake = os.path.join(tmp, "fake-nft")
    os.makedirs(fake, exist_ok=True)
    subprocess.run(["cp", "/usr/bin/true", os.path.join(fake, "nft")], check=True)
    own, with_nft, dele = [], [], []
    for i in range(5):
        c = conf(netns, 6000, [31000])
        with_nft.append(p.call("ADD", f"rss{i}", c, rss=True))
        dele.append(p.call("DEL", f"rss{i}", c, rss=True))
        own.append(p.call("ADD", f"own{i}", c, rss=True, path_env=f"{fake}:/usr/bin:/bin"))
        p.call("DEL", f"own{i}", c)  # its pending record
    return max(own), max(with_nft), max(dele)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--full-node", required=True)
    ap.add_argument("--weft-dir", required=True)
    ap.add_argument("--go-dir", required=True)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--per-pod", type=int, default=10)
    ap.add_argument("--repro", default="")
    args = ap.parse_args()
    weft = Plugin("weft", os.path.join(args.weft_dir, "portmap"), args.tmp, args.netns)
    go = Plugin("Go", os.path.join(args.go_dir, "portmap"), args.tmp, args.netns)
    load_before = os.getloadavg()
    nodes = {"none": Node("/proc/self/ns/net"), "full": Node(args.full_node)}
    mappings = args.pods * args.per_pod
    nodes["full"].enter()
    for p in (weft, go):
        log(f"{p.label}: filling {mappings} mappings ({args.pods} x {args.per_pod})")
        p.fill(args.pods, args.per_pod)
    log(f"{args.iterations} probe ADD+DEL per cell, interleaved")
    cells = interleaved(weft, go, nodes, args.iterations)
    nodes["full"].enter()
    rss = weft_rss(weft, args.tmp, args.netns)
    for p in (weft, go):
        log(f"{p.label}: draining")
        p.drain(args.pods)
    print(f"## portmap ADD and DEL with {mappings:,} mappings present vs none\n")
    load_after = os.getloadavg()
    print(f"`{args.repro}`, {args.iterations} probes per cell, median; load average "
          f"(1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} at the start, "
          f"{'/'.join(f'{x:.1f}' for x in load_after)} at the end, on {os.cpu_count()} CPUs\n")
    print(f"| | command | none present | {mappings:,} present | ratio |")
    print("|---|---|---|---|---|")
    for command in ("ADD", "DEL"):
        for label in ("weft", "Go"):
            e = med_ms(cells[(label, "none")][command])
            f = med_ms(cells[(label, "full")][command])
            print(f"| {label} | {command} | {e:.2f} ms | {f:.2f} ms | {f / e:.2f}x |")
    for command in ("ADD", "DEL"):
        e = med_ms(cells[("weft", "none")][command]) / med_ms(cells[("Go", "none")][command])
        f = med_ms(cells[("weft", "full")][command]) / med_ms(cells[("Go", "full")][command])
        print(f"\nweft / Go {command}: {e:.2f}x with none present, {f:.2f}x with {mappings:,} present.")
    print(f"\nPeak RSS with {mappings:,} mappings present, max of 5 runs: weft's portmap ADD "
          f"{rss[0] / 1024:.2f} MiB (nft stubbed by /usr/bin/true), {rss[1] / 1024:.2f} MiB "
          f"with the real nft on PATH (run only for conditionsV4/V6); DEL {rss[2] / 1024:.2f} MiB (it runs no nft)")


if __name__ == "__main__":
    main()
