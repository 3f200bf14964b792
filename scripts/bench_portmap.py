#!/usr/bin/env python3
"""portmap driver for scripts/bench-cni.sh --portmap (do not run directly).

Runs inside the benchmark's node netns. For weft's portmap and the Go
reference (/usr/lib/cni/portmap), side by side in one run, times one ADD
of a one-mapping attachment (posix_spawn + wait4) with no mapping present
and with --pods x --per-pod mappings (1,000 by default) already present,
each probe ADD followed by an untimed DEL. The empty phase alternates the
two implementations; the full phases run one after the other, so each sees
only its own 1,000 mappings. Peak RSS of weft's ADD and DEL comes from
separate runs under /usr/bin/time. Prints a Markdown report on stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NET = "weft-bench-pm"


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
        cid = f"probe{i}"
        ns = self.call("ADD", cid, conf(self.netns, 5000, [30000]))
        self.call("DEL", cid, conf(self.netns, 5000, [30000]))
        return ns

    def fill(self, pods, per_pod):
        for n in range(pods):
            ports = range(10000 + n * per_pod, 10000 + (n + 1) * per_pod)
            self.call("ADD", f"fill{n}", conf(self.netns, n, ports))

    def drain(self, pods):
        for n in range(pods):
            self.call("DEL", f"fill{n}", conf(self.netns, n, []))


def med_ms(xs):
    return statistics.median(xs) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--netns", required=True)
    ap.add_argument("--weft-dir", required=True)
    ap.add_argument("--go-dir", required=True)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--per-pod", type=int, default=10)
    ap.add_argument("--repro", default="")
    args = ap.parse_args()
    weft = Plugin("weft", os.path.join(args.weft_dir, "portmap"), args.tmp, args.netns)
    go = Plugin("Go", os.path.join(args.go_dir, "portmap"), args.tmp, args.netns)
    empty = {"weft": [], "Go": []}
    full = {"weft": [], "Go": []}
    log(f"empty: {args.iterations} probe ADDs each, alternating")
    for i in range(args.iterations + 2):
        for p in (weft, go) if i % 2 == 0 else (go, weft):
            ns = p.probe(i)
            if i >= 2:  # warm-up
                empty[p.label].append(ns)
    mappings = args.pods * args.per_pod
    for p in (weft, go):
        log(f"{p.label}: filling {mappings} mappings ({args.pods} x {args.per_pod})")
        p.fill(args.pods, args.per_pod)
        for i in range(args.iterations + 2):
            ns = p.probe(i)
            if i >= 2:
                full[p.label].append(ns)
        if p is weft:
            # GNU time reports the largest of the plugin and the nft it
            # runs; with `nft` replaced by /usr/bin/true (ADD only: DEL
            # needs nft's listing) the figure is portmap's own.
            fake = os.path.join(args.tmp, "fake-nft")
            os.makedirs(fake, exist_ok=True)
            subprocess.run(["cp", "/usr/bin/true", os.path.join(fake, "nft")], check=True)
            with_nft, own, true_rss = [], [], []
            for i in range(5):
                c = conf(args.netns, 6000, [31000])
                with_nft.append(p.call("ADD", f"rss{i}", c, rss=True))
                with_nft.append(p.call("DEL", f"rss{i}", c, rss=True))
                own.append(p.call("ADD", f"own{i}", c, rss=True, path_env=f"{fake}:/usr/bin:/bin"))
            weft_rss = (max(with_nft), max(own))
        log(f"{p.label}: draining")
        p.drain(args.pods)
    print(f"## portmap ADD with {mappings} mappings present vs none\n")
    print(f"`{args.repro}`, {args.iterations} probe ADDs per cell, median\n")
    print("| | ADD, none present | ADD, 1,000 present | ratio |")
    print("|---|---|---|---|")
    for label in ("weft", "Go"):
        e, f = med_ms(empty[label]), med_ms(full[label])
        print(f"| {label} | {e:.2f} ms | {f:.2f} ms | {f / e:.2f}x |")
    e = med_ms(empty["weft"]) / med_ms(empty["Go"])
    f = med_ms(full["weft"]) / med_ms(full["Go"])
    print(f"\nweft / Go: {e:.2f}x with none present, {f:.2f}x with {mappings} present.")
    print(f"Peak RSS with {mappings} mappings present, max of 5 runs: weft's portmap ADD "
          f"{weft_rss[1] / 1024:.2f} MiB (nft stubbed by /usr/bin/true); ADD/DEL including "
          f"the nft they run: {weft_rss[0] / 1024:.2f} MiB")


if __name__ == "__main__":
    main()
