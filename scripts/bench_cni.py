#!/usr/bin/env python3
"""Timing driver for scripts/bench-cni.sh (do not run directly).

Runs inside the benchmark's "node" network namespace (the wrapper starts it
with `ip netns exec <node> python3 ...`, so every plugin exec below is a
plain posix_spawn + wait4 with no `ip netns exec` in between). It alternates
the two implementations run by run, times each bridge ADD and DEL with
perf_counter_ns around posix_spawn+wait4, verifies every operation, then
times host-local and VERSION on their own, measures peak RSS in separate
runs under /usr/bin/time (see Runner.run for why), and prints a Markdown
report on stdout. Progress and errors go to stderr.
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


# ---------------------------------------------------------------- static

STATIC_IPAM = {
    "type": "static",
    "addresses": [{"address": "10.244.0.10/24", "gateway": "10.244.0.1"},
                  {"address": "fd00:10:244::10/64", "gateway": "fd00:10:244::1"}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
}


def static_bench(args, runner, impls, prefix):
    """`--static`: the static IPAM plugin alone, weft against Go, ADD then
    DEL alternating implementations, plus peak RSS under /usr/bin/time."""
    conf = {"cniVersion": "1.0.0", "name": NET_NAME, "ipam": STATIC_IPAM}
    conf_path = os.path.join(args.tmp, "conf-static.json")
    with open(conf_path, "w") as f:
        json.dump(conf, f)
    times = {impl.label: {"ADD": [], "DEL": []} for impl in impls}
    rss = {impl.label: [] for impl in impls}
    results = {}
    pod = Pod(f"{prefix}-st")
    try:
        n = args.iterations
        for i in range(2 * (n + args.warmup + args.rss_runs)):
            impl = impls[i % 2]
            binary = os.path.join(impl.dir, "static")
            mode = ("warm" if i < 2 * args.warmup else
                    "time" if i < 2 * (args.warmup + n) else "rss")
            for op in ("ADD", "DEL"):
                env = cni_env(op, f"{prefix}-st-{i}", pod.path, impl.dir)
                ns, rc, kib, _, out, err = runner.run(binary, env, conf_path,
                                                      rss=mode == "rss")
                if rc != 0:
                    raise BenchError(f"{impl.label} static {op}: exit {rc}: "
                                     f"{out.strip()} {err.strip()}")
                if op == "ADD":
                    results[impl.label] = json.loads(out)
                if mode == "time":
                    times[impl.label][op].append(ns)
                elif mode == "rss":
                    rss[impl.label].append(kib)
    finally:
        pod.delete()
    weft, go = (impl.label for impl in impls)
    strip = lambda r: {k: v for k, v in r.items() if v != {}}
    if strip(results[weft]) != strip(results[go]):
        raise BenchError(f"static results differ: {results[weft]} vs {results[go]}")
    L = ["### static IPAM: weft vs the Go reference plugin\n",
         f"ipam `static` with two addresses, two routes and dns, cniVersion "
         f"1.0.0, exec'd directly in the node netns; {n} ADD+DEL pairs per "
         "implementation, alternating; the two results are identical (checked).\n",
         "| operation | weft median | Go median | ratio weft/Go | weft p90 | Go p90 |",
         "|---|---:|---:|---:|---:|---:|"]
    for op in ("ADD", "DEL"):
        wt, gt = times[weft][op], times[go][op]
        L.append(f"| static {op} | {ms(med(wt))} | {ms(med(gt))} | "
                 f"**{med(wt) / med(gt):.2f}×** | {ms(pct(wt, 90))} | {ms(pct(gt, 90))} |")
    L += ["", f"Peak RSS (max over {args.rss_runs} ADD+DEL pairs under "
          "`/usr/bin/time -f %M`):\n", "| binary | peak RSS |", "|---|---:|"]
    for label in (weft, go):
        L.append(f"| {label} static | {mib(max(rss[label]))} |")
    ok = max(rss[weft]) < 3 * 1024
    L += ["", f"- weft static peak RSS < 3 MiB: {'**met**' if ok else '**not met**'}",
          "", "Reproduce (as root, from the repository root):\n", "```sh",
          args.repro, "```"]
    return "\n".join(L)


# ---------------------------------------------------------------- report

def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def med(xs):
    return statistics.median(xs)


def ms(ns):
    return f"{ns / 1e6:.2f} ms"


def mib(kib):
    return f"{kib / 1024:.2f} MiB"


def report(args, weft, go, meta):
    L = []
    w = L.append
    n_pairs = len(weft.samples["bridge ADD"])
    walls = lambda impl, key: [s[0] for s in impl.samples[key]]
    cpus = lambda impl, key: [s[1] for s in impl.samples[key]]

    w("### CNI plugin latency and memory: weft vs the Go reference plugins\n")
    w("bridge + host-local (IPv4), cniVersion 1.0.0, `isGateway: true`, "
      "`ipMasq: false`, host-local `subnet` "
      f"{args.subnet}. {n_pairs} ADD+DEL pairs per implementation, run "
      "alternately (weft, Go, weft, Go, ...), each ADD into a fresh pod "
      "netns; bridge `cni0` already exists (steady state: "
      f"{args.warmup} untimed warm-up pairs per implementation). Time = wall "
      "clock of the plugin process from posix_spawn to wait4 "
      "(`perf_counter_ns`), plugins exec'd directly inside a dedicated node "
      "netns; DEL gets the ADD result as `prevResult`.\n")
    w("| operation | weft median | Go median | ratio weft/Go | weft p90 | Go p90 |")
    w("|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for key, name in (("bridge ADD", "ADD"), ("bridge DEL", "DEL")):
        wt, gt = walls(weft, key), walls(go, key)
        ratios[key] = med(wt) / med(gt)
        w(f"| {name} (bridge + host-local) | {ms(med(wt))} | {ms(med(gt))} | "
          f"**{ratios[key]:.2f}×** | {ms(pct(wt, 90))} | {ms(pct(gt, 90))} |")
    w("")

    m = len(weft.samples["host-local ADD"])
    w(f"Breakdown ({m} runs per implementation, same timing method; host-local "
      "exec'd directly by the driver; VERSION = exec + runtime start-up, no "
      "netlink or IPAM work; CPU = user+sys from wait4, which for bridge "
      "includes its host-local child):\n")
    w("| operation | weft median | Go median | ratio | weft CPU median | Go CPU median |")
    w("|---|---:|---:|---:|---:|---:|")
    for key in ("bridge ADD", "bridge DEL", "host-local ADD", "host-local DEL",
                "bridge VERSION", "host-local VERSION"):
        wt, gt = walls(weft, key), walls(go, key)
        w(f"| {key} | {ms(med(wt))} | {ms(med(gt))} | {med(wt) / med(gt):.2f}× | "
          f"{ms(med(cpus(weft, key)))} | {ms(med(cpus(go, key)))} |")
    w(f"| exec floor: `/bin/true` | {ms(meta['floor_ns'])} | | | | |")
    w("")

    peaks = {}
    r = len(weft.rss["bridge ADD"])
    w(f"Peak RSS: max `ru_maxrss` over {r} ADD+DEL pairs through bridge, {r} "
      f"host-local ADD+DEL pairs and {r} VERSION runs per binary, each plugin "
      "run under `/usr/bin/time -f %M` (separate from the timed runs):\n")
    w("| binary | peak RSS | size on disk |")
    w("|---|---:|---:|")
    for impl in (weft, go):
        hl = max(max(impl.rss[k]) for k in
                 ("host-local ADD", "host-local DEL", "host-local VERSION"))
        tree = max(max(impl.rss[k]) for k in ("bridge ADD", "bridge DEL"))
        alone = max(impl.rss["bridge VERSION"])
        peaks[impl.label] = max(tree, hl)
        # For bridge ADD/DEL wait4 reports max(bridge, reaped host-local):
        # if that exceeds host-local's own peak it is bridge's own peak;
        # otherwise bridge's own peak lies between its VERSION peak and it.
        br = mib(tree) if tree > hl else f"{mib(alone)} – {mib(tree)}"
        w(f"| {impl.label} bridge | {br} | "
          f"{os.path.getsize(impl.bridge) / 1048576:.1f} MiB |")
        w(f"| {impl.label} host-local | {mib(hl)} | "
          f"{os.path.getsize(impl.host_local) / 1048576:.1f} MiB |")
    w("")
    w("How to read it: Linux reports, for a reaped process, the larger of its "
      "own peak and that of the children it reaped, so bridge ADD/DEL "
      "measures max(bridge, host-local); a range means host-local was the "
      "larger one, and bridge's own peak is at least its VERSION peak. "
      "`ru_maxrss` also includes the pre-exec copy of GNU time "
      f"(`/bin/true` under the same method: {mib(meta['floor_kib'])}), so "
      "numbers at that level are a ceiling, not a measurement.\n")

    w("Targets:\n")
    add_ok = ratios["bridge ADD"] <= 0.4
    del_ok = ratios["bridge DEL"] <= 0.4
    wpk = peaks[weft.label]
    rss_ok = wpk < 5 * 1024
    yes = lambda ok: "**met**" if ok else "**not met**"
    w(f"- ADD median weft ≤ 0.4× Go: {ratios['bridge ADD']:.2f}× → {yes(add_ok)}")
    w(f"- DEL median weft ≤ 0.4× Go: {ratios['bridge DEL']:.2f}× → {yes(del_ok)}")
    w(f"- weft peak RSS < 5 MiB (largest weft value above: {mib(wpk)}) → "
      f"{yes(rss_ok)}")
    w("")

    w("Environment:\n")
    w(f"- kernel {os.uname().release} ({os.uname().machine}), "
      f"{os.cpu_count()} CPUs ({args.cpu_model})")
    built = time.strftime("%Y-%m-%d %H:%M:%S %Z",
                          time.localtime(max(os.path.getmtime(weft.bridge),
                                             os.path.getmtime(weft.host_local))))
    w(f"- weft: `{weft.dir}` ({args.weft_rev}; binaries built {built})")
    w(f"- Go: `{go.dir}` ({args.go_version})")
    w(f"- host-local dataDir: `{args.tmp}` ({args.datadir_fs})")
    w(f"- {n_pairs} iterations per implementation; benchmark took "
      f"{meta['elapsed']:.0f} s, started {meta['started']}; 1-min load "
      f"average {meta['load'][0]:.2f} at start, {meta['load'][1]:.2f} at end")
    w("")
    w("Reproduce (as root, from the repository root):\n")
    w("```sh")
    w(args.repro)
    w("```")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--weft-dir", required=True)
    ap.add_argument("--go-dir", required=True)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rss-runs", type=int, default=10)
    ap.add_argument("--subnet", default="10.244.0.0/24")
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("--raw", default="")
    ap.add_argument("--repro", default="")
    ap.add_argument("--weft-rev", default="")
    ap.add_argument("--go-version", default="")
    ap.add_argument("--cpu-model", default="")
    ap.add_argument("--datadir-fs", default="")
    ap.add_argument("--static", action="store_true",
                    help="benchmark the static IPAM plugin only")
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
    runner = Runner(args.tmp, args.time_bin)
    prefix = args.prefix
    if args.static:
        print(static_bench(args, runner, impls, prefix))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = os.getloadavg()[0]
    t_start = time.monotonic()
    seq = 0

    # 1. Warm-up (untimed): the first ADD creates cni0; page cache etc.
    for _ in range(args.warmup):
        for impl in impls:
            seq += 1
            bridge_pair(runner, impl, prefix, seq, None)

    # 2. The benchmark proper: full bridge ADD + DEL, alternating.
    n = args.iterations
    for i in range(2 * n):
        seq += 1
        bridge_pair(runner, impls[i % 2], prefix, seq, "time")
        if (i + 1) % 100 == 0 or i + 1 == 2 * n:
            log(f"{(i + 2) // 2}/{n} pairs per implementation "
                f"({time.monotonic() - t_start:.0f} s)")

    # 3. Breakdown: host-local on its own, VERSION (exec + runtime start-up),
    #    and the exec floor.
    m = max(20, n // 5)
    floor = []
    pod = Pod(f"{prefix}-hl")
    try:
        for i in range(2 * m):
            impl = impls[i % 2]
            seq += 1
            host_local_pair(runner, impl, prefix, seq, pod.path, "time")
            version_run(runner, impl, impl.bridge, "bridge VERSION", "time")
            version_run(runner, impl, impl.host_local, "host-local VERSION", "time")
            ns, rc, _, _, _, _ = runner.run("/bin/true", {}, "/dev/null")
            floor.append(ns)

        # 4. Memory runs under /usr/bin/time (not timed).
        for i in range(2 * args.rss_runs):
            impl = impls[i % 2]
            seq += 1
            bridge_pair(runner, impl, prefix, seq, "rss")
            seq += 1
            host_local_pair(runner, impl, prefix, seq, pod.path, "rss")
            version_run(runner, impl, impl.bridge, "bridge VERSION", "rss")
            version_run(runner, impl, impl.host_local, "host-local VERSION", "rss")
        _, rc, floor_kib, _, _, _ = runner.run("/bin/true", {}, "/dev/null",
                                               rss=True)
    finally:
        pod.delete()
    log(f"done ({time.monotonic() - t_start:.0f} s)")

    if args.raw:
        with open(args.raw, "w") as f:
            f.write("impl,operation,index,wall_ns,cpu_ns\n")
            for impl in impls:
                for key, samples in impl.samples.items():
                    for idx, (ns, cpu) in enumerate(samples):
                        f.write(f"{impl.label},{key},{idx},{ns},{cpu}\n")
        log(f"raw samples written to {args.raw}")

    meta = {"started": started, "elapsed": time.monotonic() - t_start,
            "floor_ns": med(floor), "floor_kib": floor_kib,
            "load": (load_start, os.getloadavg()[0])}
    print(report(args, weft, go, meta))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ABORT: {e}")
        sys.exit(2)
