#!/usr/bin/env python3
"""Chained-plugin driver for `scripts/bench-cni.sh --chain` (do not run
directly).

Runs inside the benchmark's node netns like bench_cni.py and reuses its
runner. Each round attaches a fresh pod with weft's bridge + host-local
(untimed, the same for both implementations), then times the chained
plugins of one implementation on it: bandwidth ADD and DEL (ingress and
egress limits, so an ifb and three qdiscs are made and removed) and tuning
ADD and DEL (a sysctl, the MTU and promisc, which Debian's Go 1.1.1 plugin
knows too). weft and Go alternate round by round.
Peak RSS comes from separate runs under /usr/bin/time. Prints Markdown.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cni as b  # noqa: E402

LIMITS = {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
          "egressRate": 100_000_000, "egressBurst": 1_000_000}
TUNING = {"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"},
          "mtu": 1400, "promisc": True}
KEYS = ["bandwidth ADD", "bandwidth DEL", "tuning ADD", "tuning DEL"]


def write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return path


def run_ok(runner, impl, key, binary, env, conf_path, mode):
    ns, rc, rss, cpu, out, err = runner.run(binary, env, conf_path,
                                            rss=mode == "rss")
    if rc != 0:
        raise b.BenchError(f"{impl.label} {key} failed: exit {rc}\n"
                           f"  stdout: {out.strip()[:2000]}\n"
                           f"  stderr: {err.strip()[:2000]}")
    impl.add_sample(key, mode, ns, rss, cpu)
    return out


def ifbs():
    links = json.loads(b.sh("ip", "-j", "-d", "link", "show") or "[]")
    return [l["ifname"] for l in links
            if l.get("linkinfo", {}).get("info_kind") == "ifb"]


def round_(runner, bridge, impl, tmp, seq, mode):
    cid = f"chain-{impl.label.lower()}-{seq}"
    pod = b.Pod(f"{impl.prefix}-c{seq}")
    try:
        env = b.cni_env("ADD", cid, pod.path, bridge.dir)
        _, rc, _, _, out, err = runner.run(bridge.bridge, env, bridge.conf_path)
        prev, _ = b.check_result(bridge, "bridge ADD", cid, rc, out, err)
        base = {"cniVersion": "1.0.0", "name": b.NET_NAME, "prevResult": prev}
        bw = write(os.path.join(tmp, "bw.json"),
                   dict(base, type="bandwidth", **LIMITS))
        tu = write(os.path.join(tmp, "tu.json"),
                   dict(base, type="tuning",
                        dataDir=os.path.join(tmp, "tuning"), **TUNING))
        for cmd in ("ADD", "DEL"):
            env["CNI_COMMAND"] = cmd
            run_ok(runner, impl, f"bandwidth {cmd}", impl.bandwidth, env, bw, mode)
            if cmd == "ADD" and len(ifbs()) != 1:
                raise b.BenchError(f"{impl.label} bandwidth ADD made no ifb")
        if ifbs():
            raise b.BenchError(f"{impl.label} bandwidth DEL left {ifbs()}")
        for cmd in ("ADD", "DEL"):
            env["CNI_COMMAND"] = cmd
            run_ok(runner, impl, f"tuning {cmd}", impl.tuning, env, tu, mode)
        env["CNI_COMMAND"] = "DEL"
        runner.run(bridge.bridge, env, write(os.path.join(tmp, "del.json"),
                                             dict(json.load(open(bridge.conf_path)),
                                                  prevResult=prev)))
    finally:
        pod.delete()


def report(args, weft, go, elapsed):
    L = []
    w = L.append
    wall = lambda impl, key: [s[0] for s in impl.samples[key]]
    w("### Chained plugins: weft vs the Go reference plugins\n")
    w(f"Each plugin chained after weft's bridge + host-local, cniVersion 1.0.0; "
      f"bandwidth with ingress and egress limits, tuning with {json.dumps(TUNING)}. "
      f"{len(wall(weft, KEYS[0]))} rounds per implementation, alternating; "
      f"{args.go_version}; {elapsed:.0f} s.\n")
    w("| operation | weft median | Go median | weft / Go | weft p90 | Go p90 |")
    w("|---|---|---|---|---|---|")
    for key in KEYS:
        wm, gm = b.med(wall(weft, key)), b.med(wall(go, key))
        w(f"| {key} | {b.ms(wm)} | {b.ms(gm)} | {wm / gm:.2f}x | "
          f"{b.ms(b.pct(wall(weft, key), 90))} | {b.ms(b.pct(wall(go, key), 90))} |")
    w("\n| plugin | weft peak RSS | Go peak RSS |")
    w("|---|---|---|")
    for plugin in ("bandwidth", "tuning"):
        peak = lambda impl: max(max(impl.rss[f"{plugin} {c}"]) for c in ("ADD", "DEL"))
        w(f"| {plugin} | {b.mib(peak(weft))} | {b.mib(peak(go))} |")
    w(f"\nReproduce: `{args.repro}`")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    for a in ("--prefix", "--tmp", "--weft-dir", "--go-dir"):
        ap.add_argument(a, required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--rss-runs", type=int, default=10)
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("--repro", default="")
    ap.add_argument("--go-version", default="")
    args, _ = ap.parse_known_args()

    bridge = b.Impl("bridge", args.weft_dir, args.tmp)
    bridge.conf["ipam"]["subnet"] = "10.244.0.0/24"
    write(bridge.conf_path, bridge.conf)
    weft, go = b.Impl("weft", args.weft_dir, args.tmp), b.Impl("Go", args.go_dir, args.tmp)
    for impl in (weft, go):
        impl.prefix = args.prefix
        impl.bandwidth = os.path.join(impl.dir, "bandwidth")
        impl.tuning = os.path.join(impl.dir, "tuning")
    runner = b.Runner(args.tmp, args.time_bin)
    t0 = time.monotonic()
    seq = 0
    for mode, n in ((None, 2), ("time", args.iterations), ("rss", args.rss_runs)):
        for i in range(2 * n):
            seq += 1
            round_(runner, bridge, (weft, go)[i % 2], args.tmp, seq, mode)
        b.log(f"{mode or 'warm-up'}: {n} rounds per implementation done")
    print(report(args, weft, go, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except b.BenchError as e:
        b.log(f"ABORT: {e}")
        sys.exit(2)
