#!/usr/bin/env python3
"""Timing driver for scripts/bench-cni.sh (do not run directly).

Runs inside the benchmark's "node" network namespace (the wrapper starts it
with `ip netns exec <node> python3 ...`, so every plugin exec below is a
plain posix_spawn + wait4 with no `ip netns exec` in between). It alternates
the two implementations run by run, times each bridge ADD and DEL with
perf_counter_ns around posix_spawn+wait4, records ru_maxrss from wait4,
verifies every operation, and prints a Markdown report on stdout. Progress
and errors go to stderr.
"""

import argparse
import ipaddress
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

POD_NET = ipaddress.ip_network("10.244.0.0/16")
IFNAME = "eth0"
NET_NAME = "weft-bench"


class BenchError(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def on_term(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so `finally` blocks remove the
    # current pod netns before the wrapper's trap removes the rest.
    raise SystemExit(128 + signum)


class Impl:
    def __init__(self, label, cni_dir, tmp):
        self.label = label
        self.dir = os.path.realpath(cni_dir)
        self.bridge = os.path.join(self.dir, "bridge")
        self.host_local = os.path.join(self.dir, "host-local")
        self.data_dir = os.path.join(tmp, f"ipam-{label.lower()}")
        self.conf = {
            "cniVersion": "1.0.0",
            "name": NET_NAME,
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "subnet": None,  # filled in by main()
                "dataDir": self.data_dir,
            },
        }
        self.conf_path = os.path.join(tmp, f"conf-{label.lower()}.json")
        self.samples = {}  # key -> [(wall_ns, cpu_ns)] from timed runs
        self.rss = {}  # key -> [maxrss_kib] from /usr/bin/time runs

    def add_sample(self, key, mode, ns, rss, cpu):
        """mode: "time" (timed run), "rss" (memory run) or None (warm-up)."""
        if mode == "time":
            self.samples.setdefault(key, []).append((ns, cpu))
        elif mode == "rss":
            self.rss.setdefault(key, []).append(rss)


class Runner:
    def __init__(self, tmp, time_bin):
        self.tmp = tmp
        self.time_bin = time_bin
        self.out = os.path.join(tmp, "stdout")
        self.err = os.path.join(tmp, "stderr")
        self.rss_file = os.path.join(tmp, "maxrss")

    def run(self, path, env, stdin_path, rss=False):
        """posix_spawn `path` with stdin from stdin_path; return
        (elapsed_ns, exit_code, maxrss_kib, cpu_ns, stdout, stderr).

        Only posix_spawn + wait4 are inside the timed region; the files are
        opened before and read after it.

        Without rss, maxrss_kib is None: the kernel folds the hiwater RSS of
        the pre-exec mm into ru_maxrss, and posix_spawn's child runs on this
        Python process's mm until exec, so wait4 would report Python's RSS.
        With rss=True the plugin runs under `/usr/bin/time -f %M` instead
        (time forks, so the pre-exec mm is a copy of GNU time's small one);
        use those runs for memory only, never for timing."""
        if rss:
            argv = [self.time_bin, "-f", "%M", "-o", self.rss_file, path]
            path = self.time_bin
        else:
            argv = [path]
        fin = os.open(stdin_path, os.O_RDONLY)
        fout = os.open(self.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        ferr = os.open(self.err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        actions = [
            (os.POSIX_SPAWN_DUP2, fin, 0),
            (os.POSIX_SPAWN_DUP2, fout, 1),
            (os.POSIX_SPAWN_DUP2, ferr, 2),
        ]
        try:
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(path, argv, env, file_actions=actions)
            _, status, ru = os.wait4(pid, 0)
            t1 = time.perf_counter_ns()
        finally:
            os.close(fin)
            os.close(fout)
            os.close(ferr)
        with open(self.out, "rb") as f:
            out = f.read().decode(errors="replace")
        with open(self.err, "rb") as f:
            err = f.read().decode(errors="replace")
        cpu_ns = int((ru.ru_utime + ru.ru_stime) * 1e9)
        maxrss = None
        if rss:
            with open(self.rss_file) as f:
                # GNU time prints "Command exited with non-zero status N"
                # before the format when the child fails.
                maxrss = int(f.read().split()[-1])
        return (t1 - t0, os.waitstatus_to_exitcode(status), maxrss,
                cpu_ns, out, err)


def cni_env(command, cid, netns, cni_path):
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": IFNAME,
        "CNI_PATH": cni_path,
    }


def sh(*argv):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed ({r.returncode}): "
                         f"{r.stderr.strip()}")
    return r.stdout


def describe(impl, op, cid, rc, out, err):
    return (f"{impl.label} {op} failed for container {cid} "
            f"({impl.bridge if op.startswith('bridge') else impl.host_local}): "
            f"exit {rc}\n  stdout: {out.strip()[:2000] or '(empty)'}\n"
            f"  stderr: {err.strip()[:2000] or '(empty)'}")


def check_result(impl, op, cid, rc, out, err):
    """An ADD worked iff exit 0 and the result has an IP in 10.244.0.0/16."""
    if rc != 0:
        raise BenchError(describe(impl, op, cid, rc, out, err))
    try:
        res = json.loads(out)
        addr = ipaddress.ip_interface(res["ips"][0]["address"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BenchError(describe(impl, op, cid, rc, out, err)
                         + f"\n  (result has no usable ips[0].address: {e})")
    if addr.ip not in POD_NET:
        raise BenchError(f"{impl.label} {op}: address {addr} outside {POD_NET}")
    return res, addr


def leaked_reservations(impl):
    d = os.path.join(impl.data_dir, NET_NAME)
    if not os.path.isdir(d):
        return []
    return [f for f in os.listdir(d)
            if f != "lock" and not f.startswith("last_reserved_ip")]


class Pod:
    """A fresh pod netns (creation and deletion are not timed)."""

    def __init__(self, name):
        self.name = name
        self.path = f"/run/netns/{name}"
        sh("ip", "netns", "add", name)

    def delete(self):
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.name = None


def bridge_pair(runner, impl, prefix, seq, mode):
    cid = f"{prefix}-{impl.label.lower()}-{seq}"
    pod = Pod(f"{prefix}-p{seq}")
    try:
        env = cni_env("ADD", cid, pod.path, impl.dir)
        ns, rc, rss, cpu, out, err = runner.run(impl.bridge, env, impl.conf_path,
                                                rss=mode == "rss")
        res, addr = check_result(impl, "bridge ADD", cid, rc, out, err)
        impl.add_sample("bridge ADD", mode, ns, rss, cpu)
        # Did the address really land on eth0 inside the pod netns?
        j = json.loads(sh("ip", "-n", pod.name, "-j", "addr", "show",
                          "dev", IFNAME))
        have = {f"{a['local']}/{a['prefixlen']}"
                for link in j for a in link.get("addr_info", [])}
        if str(addr) not in have:
            raise BenchError(f"{impl.label} bridge ADD for {cid} returned "
                             f"{addr} but {IFNAME} in the pod has {sorted(have)}")

        # DEL gets the config plus prevResult (the cached ADD result), as
        # libcni sends it.
        del_conf = dict(impl.conf)
        del_conf["prevResult"] = res
        del_path = os.path.join(runner.tmp, "del.json")
        with open(del_path, "w") as f:
            json.dump(del_conf, f)
        env["CNI_COMMAND"] = "DEL"
        ns, rc, rss, cpu, out, err = runner.run(impl.bridge, env, del_path,
                                                rss=mode == "rss")
        if rc != 0:
            raise BenchError(describe(impl, "bridge DEL", cid, rc, out, err))
        impl.add_sample("bridge DEL", mode, ns, rss, cpu)
        left = leaked_reservations(impl)
        if left:
            raise BenchError(f"{impl.label} bridge DEL for {cid} left IPAM "
                             f"reservations in {impl.data_dir}: {left}")
        ports = json.loads(sh("ip", "-j", "link", "show", "master", "cni0")
                           or "[]")
        if ports:
            raise BenchError(f"{impl.label} bridge DEL for {cid} left ports "
                             f"on cni0: {[p['ifname'] for p in ports]}")
    finally:
        pod.delete()


def host_local_pair(runner, impl, prefix, seq, netns_path, mode):
    """host-local run directly (not via bridge): its own time and rusage."""
    cid = f"{prefix}-hl-{impl.label.lower()}-{seq}"
    env = cni_env("ADD", cid, netns_path, impl.dir)
    ns, rc, rss, cpu, out, err = runner.run(impl.host_local, env, impl.conf_path,
                                            rss=mode == "rss")
    check_result(impl, "host-local ADD", cid, rc, out, err)
    impl.add_sample("host-local ADD", mode, ns, rss, cpu)
    env["CNI_COMMAND"] = "DEL"
    ns, rc, rss, cpu, out, err = runner.run(impl.host_local, env, impl.conf_path,
                                            rss=mode == "rss")
    if rc != 0:
        raise BenchError(describe(impl, "host-local DEL", cid, rc, out, err))
    impl.add_sample("host-local DEL", mode, ns, rss, cpu)
    left = leaked_reservations(impl)
    if left:
        raise BenchError(f"{impl.label} host-local DEL for {cid} left "
                         f"reservations: {left}")


def version_run(runner, impl, binary, key, mode):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
    ns, rc, rss, cpu, out, err = runner.run(binary, env, "/dev/null",
                                            rss=mode == "rss")
    if rc != 0 or "supportedVersions" not in out:
        raise BenchError(describe(impl, key, "-", rc, out, err))
    impl.add_sample(key, mode, ns, rss, cpu)


# ---------------------------------------------------------------- report

def pct(xs, p):
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(ns):
    return f"{ns / 1e6:.2f} ms"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def report(args, weft, go, started, elapsed):
    L = []
    w = L.append
    n_pairs = len(weft.samples["bridge ADD"])
    w(f"### CNI plugin latency: weft vs Go reference plugins\n")
    w("bridge + host-local (IPv4), cniVersion 1.0.0, `isGateway: true`, "
      "`ipMasq: false`, bridge `cni0` already present (steady state, "
      f"{args.warmup} untimed warm-up ADD/DEL per implementation). "
      f"{n_pairs} ADD+DEL pairs per implementation, run alternately "
      "(weft, Go, weft, Go, ...), each in a fresh pod netns. Wall-clock time "
      "of the plugin process (posix_spawn to wait4, `perf_counter_ns`), "
      "plugins exec'd directly inside a dedicated node netns.\n")
    w("| operation | weft median | Go median | ratio weft/Go | weft p90 | Go p90 |")
    w("|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for key in ("bridge ADD", "bridge DEL"):
        wt = [s[0] for s in weft.samples[key]]
        gt = [s[0] for s in go.samples[key]]
        r = statistics.median(wt) / statistics.median(gt)
        ratios[key] = r
        w(f"| {key.split()[1]} (bridge + host-local) | {ms(statistics.median(wt))} | "
          f"{ms(statistics.median(gt))} | **{r:.2f}×** | {ms(pct(wt, 90))} | "
          f"{ms(pct(gt, 90))} |")
    w("")

    w("Breakdown (same timing method; host-local run directly by the driver "
      f"{len(weft.samples['host-local ADD'])}× per implementation, VERSION = "
      "exec + runtime start-up with no netlink or IPAM work; CPU = user+sys "
      "from wait4, which for bridge includes the host-local child):\n")
    w("| operation | weft median | Go median | ratio | weft CPU median | Go CPU median |")
    w("|---|---:|---:|---:|---:|---:|")
    for key in ("host-local ADD", "host-local DEL", "bridge VERSION",
                "host-local VERSION", "bridge ADD", "bridge DEL"):
        wt = [s[0] for s in weft.samples[key]]
        gt = [s[0] for s in go.samples[key]]
        wc = [s[2] for s in weft.samples[key]]
        gc = [s[2] for s in go.samples[key]]
        w(f"| {key} | {ms(statistics.median(wt))} | {ms(statistics.median(gt))} | "
          f"{statistics.median(wt) / statistics.median(gt):.2f}× | "
          f"{ms(statistics.median(wc))} | {ms(statistics.median(gc))} |")
    w("")

    def peak(impl, keys):
        return max(s[1] for k in keys for s in impl.samples[k])

    rss = {}
    w("Peak RSS (max `ru_maxrss` from wait4 over all runs) and binary size:\n")
    w("| binary | peak RSS | size on disk |")
    w("|---|---:|---:|")
    for impl in (weft, go):
        hl = peak(impl, ("host-local ADD", "host-local DEL", "host-local VERSION"))
        br_tree = peak(impl, ("bridge ADD", "bridge DEL"))
        rss[impl.label] = (br_tree, hl)
        # wait4's ru_maxrss for bridge is max(bridge, its reaped host-local
        # child): Linux reports RUSAGE_BOTH when reaping.
        if br_tree > hl:
            br_txt = mib(br_tree)
        else:
            br_txt = f"≤ {mib(br_tree)}"
        w(f"| {impl.label} bridge | {br_txt} | "
          f"{os.path.getsize(impl.bridge) / 1048576:.1f} MiB |")
        w(f"| {impl.label} host-local | {mib(hl)} | "
          f"{os.path.getsize(impl.host_local) / 1048576:.1f} MiB |")
    w("")
    w("RSS note: host-local is measured on its own (direct ADD/DEL/VERSION "
      "runs). For bridge ADD/DEL, the kernel's wait4 `ru_maxrss` is the larger "
      "of bridge's own peak and that of the host-local child it waited for; "
      "when that equals host-local's own peak the bridge row shows `≤`.\n")

    w("Targets:\n")
    add_ok = ratios["bridge ADD"] <= 0.4
    del_ok = ratios["bridge DEL"] <= 0.4
    rss_ok = max(rss[weft.label]) < 5 * 1024
    yes = lambda ok: "**met**" if ok else "**NOT met**"
    w(f"- ADD median weft ≤ 0.4× Go: {ratios['bridge ADD']:.2f}× → {yes(add_ok)}")
    w(f"- DEL median weft ≤ 0.4× Go: {ratios['bridge DEL']:.2f}× → {yes(del_ok)}")
    w(f"- weft peak RSS < 5 MiB (bridge, host-local): "
      f"{mib(rss[weft.label][0])}, {mib(rss[weft.label][1])} → {yes(rss_ok)}")
    w("")

    w("Environment:\n")
    w(f"- kernel: {os.uname().release} ({os.uname().machine})")
    w(f"- CPUs: {os.cpu_count()} ({args.cpu_model})")
    w(f"- weft: `{weft.dir}` ({args.weft_rev})")
    w(f"- Go: `{go.dir}` ({args.go_version})")
    w(f"- iterations: {n_pairs} per implementation; run took {elapsed:.0f} s "
      f"({started})")
    w("")
    w("Reproduce (as root, from the repository root):\n")
    w("```sh")
    w(args.repro)
    w("```")
    return "\n".join(L), (add_ok and del_ok and rss_ok)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--weft-dir", required=True)
    ap.add_argument("--go-dir", required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--subnet", default="10.244.0.0/24")
    ap.add_argument("--raw", default="")
    ap.add_argument("--repro", default="")
    ap.add_argument("--weft-rev", default="")
    ap.add_argument("--go-version", default="")
    ap.add_argument("--cpu-model", default="")
    args = ap.parse_args()

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_term)

    subnet = ipaddress.ip_network(args.subnet)
    if not subnet.subnet_of(POD_NET):
        raise BenchError(f"subnet {subnet} is not inside {POD_NET}")

    weft = Impl("weft", args.weft_dir, args.tmp)
    go = Impl("Go", args.go_dir, args.tmp)
    impls = (weft, go)
    for impl in impls:
        impl.conf["ipam"]["subnet"] = str(subnet)
        with open(impl.conf_path, "w") as f:
            json.dump(impl.conf, f)
    runner = Runner(args.tmp)
    prefix = args.prefix
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    seq = 0

    # Warm-up (untimed): the first ADD creates cni0; page cache, etc.
    for _ in range(args.warmup):
        for impl in impls:
            seq += 1
            bridge_pair(runner, impl, prefix, seq, record=False, verify=True)

    n = args.iterations
    for i in range(2 * n):
        impl = impls[i % 2]
        seq += 1
        bridge_pair(runner, impl, prefix, seq, record=True, verify=True)
        if (i + 1) % 50 == 0:
            log(f"{(i + 1) // 2}/{n} pairs per implementation "
                f"({time.monotonic() - t_start:.0f} s)")

    # host-local on its own, and VERSION (exec + runtime start-up) baselines.
    m = max(20, n // 5)
    pod = Pod(f"{prefix}-hl")
    try:
        for i in range(2 * m):
            impl = impls[i % 2]
            seq += 1
            host_local_pair(runner, impl, prefix, seq, pod.path)
            version_run(runner, impl, impl.bridge, "bridge VERSION")
            version_run(runner, impl, impl.host_local, "host-local VERSION")
    finally:
        pod.delete()
    elapsed = time.monotonic() - t_start

    if args.raw:
        with open(args.raw, "w") as f:
            f.write("impl,operation,index,wall_ns,maxrss_kib,cpu_ns\n")
            for impl in impls:
                for key, samples in impl.samples.items():
                    for idx, (ns, rss, cpu) in enumerate(samples):
                        f.write(f"{impl.label},{key},{idx},{ns},{rss},{cpu}\n")
        log(f"raw samples written to {args.raw}")

    text, ok = report(args, weft, go, started, elapsed)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ABORT: {e}")
        sys.exit(2)
