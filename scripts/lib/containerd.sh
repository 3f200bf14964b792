# shellcheck shell=bash
# scripts/lib/containerd.sh: containerd (Debian's 1.6, with its CRI plugin)
# run safely once per simulated node, as sourceable bash functions. Needs
# root, containerd, ctr, runc, unshare, nsenter, jq and busybox-static.
#
#   source scripts/lib/containerd.sh
#   ctrd_check || echo "no containerd here"   # prints the reason
#   ctrd_cni_install DIR/bin "" flannel=/path/flannel portmap=/usr/lib/cni/portmap
#   ctrd_start DIR NETNS [SRC:DST ...]        # containerd inside NETNS
#   ctrd_cri DIR run --name web --port 8080:80  # the weft-cri CLI against it
#   ctrd_stop DIR                             # containerd, shims, pods: all gone
#
# One containerd per DIR, started inside the network namespace NETNS with
# `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
# cgroup mounts runc needs), in a mount namespace of its own (propagation
# slave: the host's later mounts, e.g. new netns, are seen; none of ours
# leaks out). That mount namespace is held by a small holder process, so a
# restarted containerd (ctrd_restart) enters the same one and still sees
# the pods' netns mounts. Inside it:
#   DIR/cni     is bind-mounted on /var/lib/cni (libcni's result cache, the
#               host-local store and flannel's delegate configs: fixed paths)
#   DIR/run     is bind-mounted on /run/containerd (the shims' sockets go to
#               /run/containerd/s, a path containerd hard-codes)
#   SRC:DST     further bind mounts (e.g. a node's subnet.env dir on /run/flannel)
# The empty mount points (/var/lib/cni, /run/containerd, DST) are created on
# the host if missing; nothing is ever mounted there on the host, and the
# host's own containerd (if any) is never contacted.
#
# Layout of DIR (everything of this containerd lives here):
#   config.toml containerd.sock containerd.log  its config, socket, log
#   root/ state/ runc/ opt/                     containerd's root and state, runc's state root
#   bin/ net.d/                                 CNI bin_dir and conf_dir
#   pids/{holder,containerd}                    "pid starttime"
#   netns, cgroup_parent                        the node netns; the pods' cgroup parent
# Pod netns are mounted under state/ (netns_mounts_under_state_dir) and are
# visible only inside containerd's mount namespace: reach a pod through its
# sandbox pid (`ctrd_cri DIR ip|pid ID`, nsenter --net=/proc/PID/ns/net).
#
# Functions:
#   ctrd_check                 why containerd cannot run here (returns 1), or nothing
#   ctrd_pause_image FILE      builds the sandbox image tarball (OCI, busybox-static)
#   ctrd_cni_install BIN_DIR LOG_DIR TYPE=PATH...   plugin links, or recording wrappers
#   ctrd_start DIR NETNS [SRC:DST...]   ctrd_restart DIR   ctrd_stop DIR
#   ctrd_running DIR   ctrd_pid DIR   ctrd_socket DIR   ctrd_ctr DIR ARGS
#   ctrd_cri DIR ARGS          weft-cri (tests/cri-cli) against this containerd
#   ctrd_sandbox_pids DIR      pids of the pods' processes (the cgroup's tasks)
#   ctrd_pids DIR              those, the shims, containerd and the holder
#
# Knobs: CTRD_IMAGE (sandbox image name, default weft.local/pause:busybox),
# CTRD_TIMEOUT (seconds to wait for the socket, default 20), CTRD_CRI (the
# weft-cri binary), WC_QUIET=1 (no progress lines).

CTRD_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CTRD_REPO=$(cd "$CTRD_LIB_DIR/../.." && pwd)
CTRD_IMAGE=${CTRD_IMAGE:-weft.local/pause:busybox}

_ctrd_log() { [ "${WC_QUIET:-0}" = 1 ] || printf '[containerd] %s\n' "$*" >&2; }
_ctrd_die() { printf '[containerd] error: %s\n' "$*" >&2; return 1; }

_ctrd_starttime() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
_ctrd_record() { mkdir -p "$1/pids" && echo "$3 $(_ctrd_starttime "$3")" >"$1/pids/$2"; }
# _ctrd_pid DIR LABEL: the recorded pid if that very process still runs.
_ctrd_pid() {
    local pid st
    read -r pid st 2>/dev/null <"$1/pids/$2" || return 1
    [ -n "$pid" ] && [ "$(_ctrd_starttime "$pid")" = "$st" ] || return 1
    [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] || return 1
    echo "$pid"
}

# _ctrd_kill DIR LABEL SIGNAL: signal, wait up to 10 s, then SIGKILL.
_ctrd_kill() {
    local pid i
    pid=$(_ctrd_pid "$1" "$2") || { rm -f "$1/pids/$2"; return 0; }
    kill -"$3" "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        _ctrd_pid "$1" "$2" >/dev/null || break
        sleep 0.1
    done
    _ctrd_pid "$1" "$2" >/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    rm -f "$1/pids/$2"
}

ctrd_socket() { echo "$1/containerd.sock"; }
ctrd_pid() { _ctrd_pid "$1" containerd; }
ctrd_running() { ctrd_pid "$1" >/dev/null; }
ctrd_ctr() { local d=$1; shift; ctr --address "$(ctrd_socket "$d")" --namespace k8s.io "$@"; }

# ctrd_check: prints why containerd cannot run on this machine and returns
# 1; prints nothing and returns 0 when it can.
ctrd_check() {
    local t missing=()
    [ "$(id -u)" = 0 ] || { echo "not root"; return 1; }
    for t in containerd ctr runc containerd-shim-runc-v2 unshare nsenter jq tar sha256sum; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ -x /bin/busybox ] || missing+=("/bin/busybox (busybox-static)")
    [ ${#missing[@]} -eq 0 ] || { echo "missing: ${missing[*]} (scripts/setup.sh installs them)"; return 1; }
    ldd /bin/busybox >/dev/null 2>&1 && { echo "/bin/busybox is not static (install busybox-static)"; return 1; }
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || grep -qw overlay /proc/filesystems ||
        { echo "the kernel has no overlayfs (containerd's snapshotter)"; return 1; }
    [ -d /sys/fs/cgroup ] && [ -n "$(ls /sys/fs/cgroup 2>/dev/null)" ] || { echo "no cgroup filesystem at /sys/fs/cgroup"; return 1; }
    unshare --mount --propagation slave true 2>/dev/null || { echo "cannot create a mount namespace (unshare --mount)"; return 1; }
}

# ctrd_pause_image FILE: an OCI image archive with one layer holding
# busybox-static as /bin/busybox, entrypoint `busybox sleep` (CRI kills the
# sandbox with SIGKILL, so it needs no signal handling), named $CTRD_IMAGE.
# Nothing is pulled. Reuses FILE if it is newer than /bin/busybox.
ctrd_pause_image() {
    local out=${1:?ctrd_pause_image FILE} work blobs layer cfg man digest
    [ -s "$out" ] && [ "$out" -nt /bin/busybox ] && return 0
    work=$(mktemp -d "${TMPDIR:-/tmp}/weft-pause.XXXXXX") || return 1
    (
        set -e
        blobs=$work/oci/blobs/sha256
        mkdir -p "$work/rootfs/bin" "$blobs"
        cp /bin/busybox "$work/rootfs/bin/busybox"
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/rootfs" -cf "$work/layer.tar" bin
        layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
        mv "$work/layer.tar" "$blobs/$layer"
        jq -cn --arg l "sha256:$layer" '{architecture:"amd64", os:"linux",
            config:{Entrypoint:["/bin/busybox","sleep","2147483647"], WorkingDir:"/"},
            rootfs:{type:"layers", diff_ids:[$l]}}' >"$work/config.json"
        cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
        jq -cn --arg c "sha256:$cfg" --argjson cs "$(stat -c %s "$work/config.json")" \
            --arg l "sha256:$layer" --argjson ls "$(stat -c %s "$blobs/$layer")" \
            '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
              config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$c, size:$cs},
              layers:[{mediaType:"application/vnd.oci.image.layer.v1.tar", digest:$l, size:$ls}]}' >"$work/manifest.json"
        mv "$work/config.json" "$blobs/$cfg"
        man=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
        digest=$man
        jq -cn --arg m "sha256:$digest" --argjson ms "$(stat -c %s "$work/manifest.json")" --arg name "$CTRD_IMAGE" \
            '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",
              digest:$m, size:$ms, platform:{architecture:"amd64", os:"linux"},
              annotations:{"io.containerd.image.name":$name}}]}' >"$work/oci/index.json"
        mv "$work/manifest.json" "$blobs/$man"
        echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
        tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/oci" -cf "$out.tmp" oci-layout index.json blobs
        mv -f "$out.tmp" "$out"
    )
    local rc=$?
    rm -rf "$work"
    return $rc
}

# ctrd_cni_install BIN_DIR LOG_DIR TYPE=PATH...: fills a CNI bin_dir. With
# an empty LOG_DIR each TYPE is a symlink to PATH; otherwise a recording
# wrapper that writes LOG_DIR/<start ns>.<pid>.json ({plugin, real, env (the
# CNI_* variables), stdin, stdout, rc, start, end}) and passes the real
# plugin's stdout and exit status through. Delegated calls (flannel ->
# bridge -> host-local) go through the wrappers too, since CNI_PATH is
# BIN_DIR.
ctrd_cni_install() {
    local bin=${1:?ctrd_cni_install BIN_DIR LOG_DIR TYPE=PATH...} log=$2 spec type real
    shift 2
    mkdir -p "$bin" || return 1
    [ -z "$log" ] || mkdir -p "$log" || return 1
    for spec in "$@"; do
        type=${spec%%=*} real=${spec#*=}
        [ -x "$real" ] || { _ctrd_die "no plugin binary $real"; return 1; }
        rm -f "$bin/$type"
        if [ -z "$log" ]; then
            ln -s "$real" "$bin/$type" || return 1
        else
            _ctrd_wrapper "$real" "$log" >"$bin/$type.tmp" && chmod 755 "$bin/$type.tmp" &&
                mv -f "$bin/$type.tmp" "$bin/$type" || return 1
        fi
    done
}

_ctrd_wrapper() {
    cat <<EOF
#!/bin/sh
# Records one CNI call (environment, stdin, stdout, exit status), then
# passes the real plugin's answer through. Written by ctrd_cni_install.
real='$1' log='$2'
start=\$(date +%s%N)
f=\$log/\$start.\$\$
cat >"\$f.stdin"
"\$real" <"\$f.stdin" >"\$f.stdout"
rc=\$?
end=\$(date +%s%N)
jq -n --arg plugin "\${0##*/}" --arg real "\$real" --rawfile stdin "\$f.stdin" --rawfile stdout "\$f.stdout" \\
    --argjson rc "\$rc" --argjson t0 "\$start" --argjson t1 "\$end" \\
    '{plugin: \$plugin, real: \$real, rc: \$rc, start: \$t0, end: \$t1, stdin: \$stdin, stdout: \$stdout,
      env: (\$ENV | with_entries(select(.key | startswith("CNI_"))))}' >"\$f.tmp" && mv "\$f.tmp" "\$f.json"
cat "\$f.stdout"
rm -f "\$f.stdin" "\$f.stdout"
exit \$rc
EOF
}

# _ctrd_config DIR: containerd's config (version 2). Everything under DIR;
# the plugins that would look at the host's paths or devices are disabled.
_ctrd_config() {
    local d=$1
    cat <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "$d/runc-v1"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$CTRD_IMAGE"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$d/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$d/bin"
    conf_dir = "$d/net.d"
    max_conf_num = 1
EOF
}

# ctrd_start DIR NETNS [SRC:DST...]: containerd inside NETNS (a name under
# /run/netns), state in DIR (created), the sandbox image imported; waits
# until its CRI answers. The CNI bin_dir and conf_dir are DIR/bin and
# DIR/net.d: fill them first (ctrd_cni_install, a conflist).
ctrd_start() {
    local d=${1:?ctrd_start DIR NETNS [SRC:DST...]} ns=${2:?ctrd_start DIR NETNS} bind binds=() why
    shift 2
    why=$(ctrd_check) || { _ctrd_die "$why"; return 1; }
    [ -e "/run/netns/$ns" ] || { _ctrd_die "no netns $ns"; return 1; }
    mkdir -p "$d" || return 1
    d=$(cd "$d" && pwd)
    ctrd_running "$d" && { _ctrd_die "containerd already runs for $d"; return 1; }
    mkdir -p "$d/root" "$d/state" "$d/runc" "$d/opt" "$d/bin" "$d/net.d" "$d/cni" "$d/run" "$d/pids" || return 1
    echo "$ns" >"$d/netns"
    echo "/weft-ctrd-$ns" >"$d/cgroup_parent"
    _ctrd_config "$d" >"$d/config.toml" || return 1
    binds=("$d/cni:/var/lib/cni" "$d/run:/run/containerd" "$@")
    for bind in "${binds[@]}"; do mkdir -p "${bind#*:}" || return 1; done
    _ctrd_holder_start "$d" "${binds[@]}" || return 1
    _ctrd_daemon_start "$d" || return 1
    ctrd_pause_image "$d/pause.tar" || { _ctrd_die "cannot build the sandbox image"; return 1; }
    ctrd_ctr "$d" images import --no-unpack=false "$d/pause.tar" >>"$d/containerd.log" 2>&1 ||
        { tail -n 5 "$d/containerd.log" >&2; _ctrd_die "ctr images import failed"; return 1; }
    _ctrd_log "containerd $(ctrd_pid "$d") in netns $ns, socket $(ctrd_socket "$d")"
}

# _ctrd_holder_start DIR SRC:DST...: a process that owns containerd's mount
# namespace (made with the bind mounts), so that it outlives containerd.
_ctrd_holder_start() {
    local d=$1 script='set -e' bind i
    shift
    for bind in "$@"; do
        script+="; mount --bind '${bind%%:*}' '${bind#*:}'"
    done
    # The holder reports "ready" once its mounts are in place, then waits.
    rm -f "$d/holder.ready"
    unshare --mount --propagation slave -- sh -c "$script; : >'$d/holder.ready'; exec sleep 2147483647" \
        </dev/null >>"$d/containerd.log" 2>&1 &
    _ctrd_record "$d" holder $!
    disown $! 2>/dev/null # no "Killed" job notice when ctrd_stop ends it
    for ((i = 0; i < 100; i++)); do
        [ -e "$d/holder.ready" ] && return 0
        _ctrd_pid "$d" holder >/dev/null || break
        sleep 0.05
    done
    tail -n 5 "$d/containerd.log" >&2
    _ctrd_die "could not set up containerd's mount namespace"
}

_ctrd_daemon_start() {
    local d=$1 holder end
    holder=$(_ctrd_pid "$d" holder) || { _ctrd_die "mount namespace holder is gone"; return 1; }
    echo "--- $(date '+%F %T') containerd start" >>"$d/containerd.log"
    nsenter --mount="/proc/$holder/ns/mnt" --net="/run/netns/$(cat "$d/netns")" -- \
        containerd --config "$d/config.toml" </dev/null >>"$d/containerd.log" 2>&1 &
    _ctrd_record "$d" containerd $!
    end=$((SECONDS + ${CTRD_TIMEOUT:-20}))
    until [ -S "$d/containerd.sock" ] && ctrd_ctr "$d" version >/dev/null 2>&1; do
        if ! ctrd_running "$d" || [ "$SECONDS" -ge "$end" ]; then
            tail -n 20 "$d/containerd.log" >&2
            _ctrd_die "containerd did not start (log: $d/containerd.log)"
            return 1
        fi
        sleep 0.1
    done
}

# ctrd_restart DIR: containerd stopped (SIGTERM; shims and pods keep
# running) and started again in the same namespaces.
ctrd_restart() {
    local d=${1:?ctrd_restart DIR}
    _ctrd_log "restarting containerd for $d"
    _ctrd_kill "$d" containerd TERM
    _ctrd_daemon_start "$d"
}

# _ctrd_shim_pids DIR: shims started by this containerd (they carry its
# socket in their -address argument).
_ctrd_shim_pids() {
    local sock p
    sock=$(ctrd_socket "$1")
    for p in /proc/[0-9]*; do
        tr '\0' '\n' 2>/dev/null <"$p/cmdline" | grep -qxF -- "$sock" &&
            tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q 'containerd-shim' && echo "${p#/proc/}"
    done
}

# _ctrd_cgroup_dirs DIR: the pods' cgroup parent in every hierarchy.
_ctrd_cgroup_dirs() {
    local parent c
    parent=$(cat "$1/cgroup_parent" 2>/dev/null) || return 0
    [ -n "$parent" ] || return 0
    for c in /sys/fs/cgroup /sys/fs/cgroup/*; do
        [ -d "$c$parent" ] && echo "$c$parent"
    done
}

# ctrd_sandbox_pids DIR: every process in the pods' cgroups.
ctrd_sandbox_pids() {
    local c
    for c in $(_ctrd_cgroup_dirs "$1"); do
        find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

# ctrd_pids DIR: every process of this containerd: the namespace holder,
# containerd, its shims and the pods' processes.
ctrd_pids() {
    { _ctrd_pid "$1" holder; ctrd_pid "$1"; _ctrd_shim_pids "$1"; ctrd_sandbox_pids "$1"; } 2>/dev/null | sort -un
}

# ctrd_stop DIR: containerd, its shims, every pod process, the mount
# namespace (and with it every mount containerd made) and the pods' cgroups
# are gone afterwards. A kubelet would stop and remove the pods first
# (CNI DEL); this also cleans up after a crash.
ctrd_stop() {
    local d=${1:?ctrd_stop DIR} p c i
    [ -d "$d" ] || return 0
    _ctrd_log "stopping containerd for $d"
    _ctrd_kill "$d" containerd TERM
    for p in $(_ctrd_shim_pids "$d"); do kill -KILL "$p" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        p=$(ctrd_sandbox_pids "$d")
        [ -z "$p" ] && break
        # shellcheck disable=SC2086
        kill -KILL $p 2>/dev/null
        sleep 0.1
    done
    _ctrd_kill "$d" holder KILL
    for c in $(_ctrd_cgroup_dirs "$d"); do
        find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$c" ] && _ctrd_log "warning: cgroup $c not removed"
    done
    rm -f "$d/containerd.sock" "$d/containerd.sock.ttrpc" "$d/holder.ready"
    return 0
}

# ctrd_cri DIR ARGS...: the weft-cri CLI against this containerd, with the
# pods' cgroup parent set.
ctrd_cri() {
    local d=$1 bin
    shift
    bin=${CTRD_CRI:-$CTRD_REPO/target/x86_64-unknown-linux-gnu/release/weft-cri}
    [ -x "$bin" ] || { _ctrd_die "no $bin (cargo build --release -p weft-tests)"; return 1; }
    "$bin" --socket "$(ctrd_socket "$d")" --cgroup-parent "$(cat "$d/cgroup_parent")" "$@"
}

# --- one containerd per node of a scripts/lib/cluster.sh cluster --------------
# The node's pods are started through CRI instead of cluster_pod_add. Its
# CNI config is kube-flannel's conflist (conf/10-weft.conflist) unchanged:
# the flannel plugin reads /run/flannel/subnet.env (the node dir, where
# weftd writes it, is bind-mounted there) and keeps its delegate configs and
# host-local's store under /var/lib/cni (DIR/cni), both at their defaults.
#   ctrd_node_dir N          $(cluster_node_dir N)/containerd
#   ctrd_node_start N [CONFLIST_FILE]   ctrd_node_stop N   ctrd_cluster_teardown
#   ctrd_pod_add N POD       a pod through CRI (prints its IP)
#   ctrd_node_plugins        the TYPE=PATH list of its bin_dir
# Knobs: CTRD_RECORD=0 (plain links instead of recording wrappers; by
# default every call is recorded in DIR/calls), CTRD_CHAIN_BIN (where
# portmap and bandwidth come from; default: weft's when built, else the
# reference plugins in /usr/lib/cni).

ctrd_node_dir() { echo "$(cluster_node_dir "$1")/containerd"; }

# ctrd_chain_plugin TYPE: weft's TYPE if it is built, else the reference one.
ctrd_chain_plugin() {
    local dir=${CTRD_CHAIN_BIN:-}
    if [ -z "$dir" ]; then
        dir=/usr/lib/cni
        [ -x "$(_wc_bin)/$1" ] && dir=$(_wc_bin)
    fi
    echo "$dir/$1"
}

ctrd_node_plugins() {
    local b t
    b=$(_wc_bin)
    for t in flannel bridge host-local loopback; do echo "$t=$b/$t"; done
    for t in portmap bandwidth; do echo "$t=$(ctrd_chain_plugin "$t")"; done
}

# ctrd_node_start N [CONFLIST_FILE]: containerd in node N's netns, its CNI
# conf_dir holding CONFLIST_FILE (default conf/10-weft.conflist), bin_dir
# weft's plugins (ctrd_node_plugins).
ctrd_node_start() {
    _wc_need_init || return 1
    local n=${1:?ctrd_node_start N [CONFLIST]} conf=${2:-$CTRD_REPO/conf/10-weft.conflist} d log=
    local plugins
    d=$(ctrd_node_dir "$n")
    mkdir -p "$d/net.d" || return 1
    [ "${CTRD_RECORD:-1}" = 0 ] || log=$d/calls
    mapfile -t plugins < <(ctrd_node_plugins)
    ctrd_cni_install "$d/bin" "$log" "${plugins[@]}" || return 1
    cp "$conf" "$d/net.d/${conf##*/}" || return 1
    ctrd_start "$d" "$(cluster_node_ns "$n")" "$(cluster_node_dir "$n"):/run/flannel"
}

# ctrd_pod_add N POD: pod POD on node N through its containerd's CRI
# (RunPodSandbox, as the kubelet does); its netns is also named
# $(cluster_pod_ns N POD) on the host and its IP recorded like
# cluster_pod_add's, so cluster_ping, cluster_ping_all and cluster_teardown
# work on it. Prints the IP.
ctrd_pod_add() {
    _wc_need_init || return 1
    local n=$1 pod=$2 d id ip pid ns
    d=$(ctrd_node_dir "$n") ns=$(cluster_pod_ns "$n" "$pod")
    id=$(ctrd_cri "$d" run --name "$pod" --uid "$WC_NAME-n$n-$pod") || return 1
    ip=$(ctrd_cri "$d" ip "$id" | head -n 1) && pid=$(ctrd_cri "$d" pid "$id") || return 1
    mkdir -p "$WC_STATE/netns" && : >"$WC_STATE/netns/$ns" && ip netns attach "$ns" "$pid" || return 1
    echo "$id" >"$(cluster_node_dir "$n")/pods/$pod.id"
    echo "$ip" >"$(cluster_node_dir "$n")/pods/$pod.ip"
    echo "$ip"
}

ctrd_node_stop() { _wc_need_init && ctrd_stop "$(ctrd_node_dir "$1")"; }

# ctrd_cluster_teardown: every node's containerd (and pods), then the cluster.
ctrd_cluster_teardown() {
    _wc_need_init || return 1
    local n
    for n in $(cluster_nodes); do
        [ -d "$(ctrd_node_dir "$n")" ] && ctrd_node_stop "$n"
    done
    cluster_teardown
}
