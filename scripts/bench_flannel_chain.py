#!/usr/bin/env python3
"""Driver for `scripts/bench-cni.sh --kube-flannel` / `--k3s` (do not run
directly).

Runs inside the benchmark's node netns like bench_cni.py and reuses its
runner. A whole conflist (kube-flannel's `conf/10-weft.conflist` or k3s's
`tests/conflists/k3s-10-flannel.conflist`) is driven the way libcni does
for containerd: ADD runs each plugin in turn with the list's `name` and
`cniVersion` injected, the previous plugin's result as `prevResult` and
`runtimeConfig` for the capabilities the plugin declares, with go-cni's
capitalised keys (HostPort ..., IngressRate ...); DEL runs them in reverse,
with the cached result as `prevResult` only from cniVersion 0.4.0 on. CNI_ARGS
are containerd's. Each round is one pod (a fresh netns), one implementation;
weft and Go alternate. The chain's time is the sum of its plugins' exec
times (posix_spawn to wait4; flannel's includes its bridge + host-local
delegates). Peak RSS comes from separate runs under /usr/bin/time, the
delegates wrapped the same way through CNI_PATH. Prints Markdown.
"""

import argparse
import json
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cni as b  # noqa: E402

# What containerd 1.6 sends for `hostPort: 8080 -> 80` and the
# kubernetes.io/{ingress,egress}-bandwidth annotations 8M / 16M.
RUNTIME_CONFIG = {
    "portMappings": [{"HostPort": 8080, "ContainerPort": 80,
                      "Protocol": "tcp", "HostIP": ""}],
    "bandwidth": {"IngressRate": 8_000_000, "IngressBurst": 4294967295,
                  "EgressRate": 16_000_000, "EgressBurst": 4294967295},
}
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def version_tuple(v):
    return tuple(int(x) for x in v.split("."))


class Chain:
    """One conflist, with flannel's subnetFile, dataDir and host-local's
    dataDir pointed into the run's private temp dir (the only change)."""

    def __init__(self, path, tmp):
        with open(path) as f:
            self.list = json.load(f)
        self.path = path
        self.name = self.list["name"]
        self.version = self.list["cniVersion"]
        self.plugins = [p["type"] for p in self.list["plugins"]]
        self.confs = []
        for p in self.list["plugins"]:
            p = dict(p)
            if p["type"] == "flannel":
                p["subnetFile"] = os.path.join(tmp, "subnet.env")
                p["dataDir"] = os.path.join(tmp, "flannel")
                p["ipam"] = {"dataDir": os.path.join(tmp, "ipam")}
            self.confs.append(p)
        with open(os.path.join(tmp, "subnet.env"), "w") as f:
            f.write(SUBNET_ENV)

    def plugin_conf(self, conf, prev):
        """libcni's buildOneConfig: name, cniVersion, runtimeConfig for the
        declared capabilities, prevResult; re-serialised (Go sorts keys)."""
        c = dict(conf, name=self.name, cniVersion=self.version)
        caps = {k: v for k, v in RUNTIME_CONFIG.items()
                if conf.get("capabilities", {}).get(k)}
        if caps:
            c["runtimeConfig"] = caps
        if prev is not None:
            c["prevResult"] = prev
        return c


def cni_env(command, cid, netns, cni_path):
    env = b.cni_env(command, cid, netns, cni_path)
    env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                       f"K8S_POD_NAME={cid};K8S_POD_INFRA_CONTAINER_ID={cid};"
                       f"K8S_POD_UID=00000000-0000-0000-0000-{abs(hash(cid)) % 10**12:012d}")
    return env


def exec_plugin(runner, impl, key, env, conf, mode):
    path = os.path.join(runner.tmp, "stdin.json")
    with open(path, "w") as f:
        json.dump(conf, f, sort_keys=True)
    binary = os.path.join(impl.dir, conf["type"])
    ns, rc, rss, cpu, out, err = runner.run(binary, env, path, rss=mode == "rss")
    if rc != 0:
        raise b.BenchError(f"{impl.label} {key} failed: exit {rc}\n"
                           f"  stdout: {out.strip()[:2000]}\n"
                           f"  stderr: {err.strip()[:2000]}")
    impl.add_sample(key, mode, ns, rss, cpu)
    return ns, out


def chain_round(runner, chain, impl, tmp, seq, mode):
    """ADD then DEL of the whole list for one pod; checks the pod got its
    address and that DEL left nothing (reservations, flannel's file, ports
    on cni0, ifbs)."""
    cid = f"{impl.prefix}-{impl.label.lower()}-{seq}"
    pod = b.Pod(f"{impl.prefix}-k{seq}")
    try:
        cni_path = impl.rss_cni_path if mode == "rss" else impl.dir
        env = cni_env("ADD", cid, pod.path, cni_path)
        prev, total = None, 0
        for conf in chain.confs:
            ns, out = exec_plugin(runner, impl, f"{conf['type']} ADD", env,
                                  chain.plugin_conf(conf, prev), mode)
            prev, total = json.loads(out), total + ns
        impl.add_sample("chain ADD", mode, total, None, 0)
        ip = prev["ips"][0]["address"].split("/")[0]
        if ip not in b.sh("ip", "-n", pod.name, "-4", "addr", "show", "dev", b.IFNAME):
            raise b.BenchError(f"{impl.label}: pod has no {ip}")
        env["CNI_COMMAND"] = "DEL"
        cached = prev if version_tuple(chain.version) >= (0, 4, 0) else None
        total = 0
        for conf in reversed(chain.confs):
            ns, _ = exec_plugin(runner, impl, f"{conf['type']} DEL", env,
                                chain.plugin_conf(conf, cached), mode)
            total += ns
        impl.add_sample("chain DEL", mode, total, None, 0)
        leftovers(impl, tmp, cid)
    finally:
        pod.delete()


def leftovers(impl, tmp, cid):
    left = []
    ipam = os.path.join(tmp, "ipam", "cbr0")
    if os.path.isdir(ipam):
        left += [f for f in os.listdir(ipam)
                 if f != "lock" and not f.startswith("last_reserved_ip")]
    if os.path.exists(os.path.join(tmp, "flannel", cid)):
        left.append(f"flannel/{cid}")
    left += [p["ifname"] for p in
             json.loads(b.sh("ip", "-j", "link", "show", "master", "cni0") or "[]")]
    left += [l["ifname"] for l in json.loads(b.sh("ip", "-j", "-d", "link", "show") or "[]")
             if l.get("linkinfo", {}).get("info_kind") == "ifb"]
    if left:
        raise b.BenchError(f"{impl.label} DEL of {cid} left {left}")


def rss_wrappers(impl, tmp, time_bin):
    """A CNI_PATH whose bridge and host-local run under /usr/bin/time, so
    flannel's delegates get their own peak RSS (appended to <name>.rss)."""
    d = os.path.join(tmp, f"rss-{impl.label.lower()}")
    os.makedirs(d, exist_ok=True)
    for name in ("bridge", "host-local"):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec {time_bin} -a -f %M -o {d}/{name}.rss "
                    f"{os.path.join(impl.dir, name)} \"$@\"\n")
        os.chmod(path, stat.S_IRWXU)
    impl.rss_cni_path = d


def delegate_rss(impl, name):
    """GNU time prints 'Command exited with non-zero status' lines too."""
    with open(os.path.join(impl.rss_cni_path, f"{name}.rss")) as f:
        return max(int(l) for l in f.read().split() if l.isdigit())


def report(args, chain, weft, go, meta):
    L = []
    w = L.append
    wall = lambda impl, key: [s[0] for s in impl.samples[key]]
    n = len(wall(weft, "chain ADD"))
    w(f"### {args.label}'s chain: weft vs the Go plugins\n")
    w(f"`{os.path.relpath(chain.path, args.root)}` ({' + '.join(chain.plugins)}, "
      f"flannel delegating to bridge + host-local; cniVersion {chain.version}), "
      "driven as libcni drives it for containerd (prevResult passed on, "
      f"runtimeConfig `{json.dumps({k: v for k, v in RUNTIME_CONFIG.items() if k in meta['caps']})}`"
      f", containerd's CNI_ARGS; DEL in reverse"
      f"{', with prevResult' if version_tuple(chain.version) >= (0, 4, 0) else ', no prevResult (0.3.1)'}). "
      f"{n} pods per implementation, alternating, each in a fresh netns; plugins exec'd "
      "inside a node netns; chain time = sum of its plugins' posix_spawn-to-wait4 times. "
      "Go side: Debian's reference plugins and, for flannel, `scripts/go-flannel` "
      "(no Go flannel plugin is packaged; see there). "
      f"{args.go_version}; {meta['elapsed']:.0f} s.\n")
    w("| operation | weft median | Go median | weft / Go | weft p90 | Go p90 |")
    w("|---|---:|---:|---:|---:|---:|")
    keys = ["chain ADD", "chain DEL"]
    keys += [f"{p} {c}" for c in ("ADD", "DEL") for p in chain.plugins]
    ratios = {}
    for key in keys:
        wt, gt = wall(weft, key), wall(go, key)
        ratios[key] = b.med(wt) / b.med(gt)
        bold = "**" if key.startswith("chain") else ""
        w(f"| {bold}{key}{bold} | {b.ms(b.med(wt))} | {b.ms(b.med(gt))} | "
          f"{bold}{ratios[key]:.2f}×{bold} | {b.ms(b.pct(wt, 90))} | {b.ms(b.pct(gt, 90))} |")
    w("")
    r = args.rss_runs
    w(f"Peak RSS over {r} pods per implementation under `/usr/bin/time -f %M` "
      "(flannel's bridge and host-local wrapped the same way through CNI_PATH; "
      "Linux folds reaped children into a parent's figure, so flannel's is "
      "max(flannel, bridge, host-local) and bridge's max(bridge, host-local)):\n")
    w("| plugin | weft peak RSS | Go peak RSS |")
    w("|---|---:|---:|")
    for plugin in chain.plugins + ["bridge", "host-local"]:
        def peak(impl):
            if plugin in ("bridge", "host-local"):
                return delegate_rss(impl, plugin)
            return max(max(impl.rss[f"{plugin} {c}"]) for c in ("ADD", "DEL"))
        w(f"| {plugin} | {b.mib(peak(weft))} | {b.mib(peak(go))} |")
    w("")
    if args.target:
        yes = lambda ok: "**met**" if ok else "**not met**"
        for key in ("chain ADD", "chain DEL"):
            w(f"- {key} weft ≤ 0.4× Go: {ratios[key]:.2f}× → {yes(ratios[key] <= 0.4)}")
        w("")
    w(f"Load: `uptime` at start: `{meta['uptime'][0]}`; at end: `{meta['uptime'][1]}` "
      f"({os.cpu_count()} CPUs shared with other work).\n")
    w(f"Reproduce: `{args.repro}` ({args.weft_rev})")
    return "\n".join(L)


def uptime():
    return b.sh("uptime").strip()


def main():
    ap = argparse.ArgumentParser()
    for a in ("--prefix", "--tmp", "--weft-dir", "--go-dir", "--conflist",
              "--label", "--root"):
        ap.add_argument(a, required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--rss-runs", type=int, default=10)
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("--target", action="store_true")
    for a in ("--repro", "--go-version", "--weft-rev"):
        ap.add_argument(a, default="")
    args, _ = ap.parse_known_args()

    chain = Chain(args.conflist, args.tmp)
    weft, go = b.Impl("weft", args.weft_dir, args.tmp), b.Impl("Go", args.go_dir, args.tmp)
    for impl in (weft, go):
        impl.prefix = args.prefix
        rss_wrappers(impl, args.tmp, args.time_bin)
    runner = b.Runner(args.tmp, args.time_bin)
    caps = {k for c in chain.confs for k, v in c.get("capabilities", {}).items() if v}
    meta = {"uptime": [uptime()], "caps": caps}
    t0 = time.monotonic()
    seq = 0
    for mode, n in ((None, 3), ("time", args.iterations), ("rss", args.rss_runs)):
        for i in range(2 * n):
            seq += 1
            chain_round(runner, chain, (weft, go)[i % 2], args.tmp, seq, mode)
        b.log(f"{mode or 'warm-up'}: {n} pods per implementation done "
              f"({time.monotonic() - t0:.0f} s)")
    meta["uptime"].append(uptime())
    meta["elapsed"] = time.monotonic() - t0
    print(report(args, chain, weft, go, meta))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except b.BenchError as e:
        b.log(f"ABORT: {e}")
        sys.exit(2)
