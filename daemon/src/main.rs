//! weftd: weft's node agent, a flanneld-compatible etcd (v3) subnet manager
//! with vxlan (optionally DirectRouting) and host-gw backends.
//!
//! What it does, in order:
//! 1. reads `<prefix>/config` from etcd (waits while it is missing; exits
//!    non-zero on an invalid config; `Backend.Type` vxlan [DirectRouting]
//!    or host-gw, see `backends`;
//!    dual stack via `EnableIPv6` + `IPv6Network` [+ `IPv6SubnetLen/Min/Max`]
//!    with flannel's defaults; IPv6-only `EnableIPv4=false` is refused);
//! 2. acquires a subnet lease under `<prefix>/subnets/` atomically (etcd Txn,
//!    24h etcd lease), reusing our previous lease (same PublicIP, or a
//!    reservation) or the subnet recorded in `--subnet-file`; when dual-stack,
//!    a v4 and a v6 subnet together in one key `10.5.1.0-24&fd00:5:0:1::-64`
//!    whose value adds PublicIPv6 and BackendV6Data{VNI,VtepMAC} (a lost
//!    race on either subnet is detected after the create and retried);
//! 3. with `--ip-masq`, installs flannel's masquerade/forward rules under
//!    flannel's names (nftables table `ip flannel-ipv4` [+ `ip6 flannel-ipv6`,
//!    ff00::/8], or iptables [+ ip6tables] chains FLANNEL-POSTRTG/FLANNEL-FWD
//!    via iptables-restore), and waits until they are in;
//! 4. then writes `--subnet-file` atomically (FLANNEL_NETWORK, FLANNEL_SUBNET,
//!    [FLANNEL_IPV6_NETWORK, FLANNEL_IPV6_SUBNET,] FLANNEL_MTU, FLANNEL_IPMASQ;
//!    dual-stack FLANNEL_MTU is the smaller of the two devices' MTUs);
//! 5. (vxlan; host-gw programs `<subnet> via <PublicIP> dev <iface>` per
//!    on-link peer instead) creates/keeps `flannel.<VNI>` (MTU underlay − 50) and programs, per
//!    remote lease that passes validation (inside Network, clear of our
//!    subnet, the underlay and older leases, usable PublicIP/VtepMAC),
//!    neighbour + FDB + onlink route; when dual-stack the same
//!    on `flannel-v6.<VNI>` (local = PublicIPv6, MTU underlay − 70, our v6
//!    subnet base as /128) from peers' v6 subnets, PublicIPv6 and v6 VtepMAC,
//!    with the same family-generic diff; it reconciles kernel state against
//!    etcd every `--reconcile-interval` seconds without ever flushing;
//! 6. renews the lease (compare-and-swap) `--subnet-lease-renew-margin`
//!    minutes before expiry, and re-acquires if the lease is deleted.
//!
//! Usage (every flag also reads `FLANNELD_<FLAG_NAME>` when not given):
//! ```text
//! weftd --etcd-endpoints=http://10.0.0.1:2379 [--etcd-prefix=/coreos.com/network]
//!       [--iface=eth0|--iface=198.51.100.7] [--public-ip=IP] [--public-ipv6=IP6] [--ip-masq]
//!       [--subnet-file=/run/flannel/subnet.env] [--healthz-ip=0.0.0.0 --healthz-port=8081]
//!       [--etcd-cafile=ca.pem --etcd-certfile=c.pem --etcd-keyfile=k.pem]
//!       [--subnet-lease-renew-margin=60] [--subnet-lease-ttl=86400] [--reconcile-interval=10]
//! ```
//! Config example: `etcdctl put /coreos.com/network/config
//! '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'`; dual stack:
//! `'{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}'`
//! (`--public-ipv6` defaults to the interface's first global IPv6 address).
//!
//! Endpoints (when `--healthz-port` != 0): `/healthz` (process alive),
//! `/readyz` (200 while subnet.env is written, masquerade rules with
//! `--ip-masq` are in place and peers are programmed; 503 names the gap),
//! `/metrics` (Prometheus text), served by hyper. Logs: logfmt lines on stderr
//! through tracing (tonic's and h2's too), filtered by `RUST_LOG`.
//! Other flags: `--etcd-username/--etcd-password`, `--ip-masq-fully-random-disable`,
//! `--iptables-forward-rules=false`, `--iptables-resync=5`, `--masq-backend=auto|nftables|iptables`,
//! `-v` (debug logs). Single-dash Go-style flags (`-iface eth0`) are accepted too.
//!
//! Tests: `cargo test -p weftd` (unit, no root); as root the end-to-end
//! suites tests/overlay.rs (leases, subnet.env, programming, overlay ping,
//! drift repair, restart, reservations, renewal, etcd outage, masq, dual
//! stack, etcd mTLS), tests/cluster.rs and tests/weftd.rs, all over
//! scripts/lib/cluster.sh.
//!
//! Exit: 0 on SIGTERM/SIGINT (kernel state and the lease are kept, so a
//! restart is hitless), 1 on a fatal error, 2 on bad flags.

mod agent;
mod backends;
mod backoff;
mod config;
mod flags;
mod local;
mod logging;
mod masq;
mod masq_events;
mod reconcile;
mod store;
mod subnet_env;

// `crate::metrics` and `crate::health` for the modules that name them so.
use local::{health, metrics};

use anyhow::{bail, Context};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let args = flags::normalize_args(std::env::args());
    let flags = match flags::Flags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad flags");
            eprintln!("weftd: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    if let Err(e) = flags.validate() {
        eprintln!("weftd: {e}");
        std::process::exit(2);
    }
    logging::init(flags.verbose);
    // Blocking start-up work (files, nft/iptables probes) before the async
    // runtime exists, so no tokio worker ever blocks on it.
    let pre = match Prepared::new(&flags) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weftd: {e:#}");
            std::process::exit(1);
        }
    };
    // One thread is plenty for etcd, the watch and the local HTTP server
    // (the data plane and the kernel watch have their own threads), and
    // every extra worker that allocates gets its own malloc arena, whose
    // freed memory the other threads cannot reuse (the same start with
    // MALLOC_ARENA_MAX=1 peaked ~7 MiB lower at 10,000 peers).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let state_file = pre.state_file.clone();
    if let Err(e) = rt.block_on(run(flags, pre, metrics.clone())) {
        eprintln!("weftd: {e:#}");
        metrics.status.fatal(&format!("{e:#}"));
        if let Some(f) = &state_file {
            metrics.status.flush(f, &metrics);
        }
        std::process::exit(1);
    }
}

/// What weftd reads or probes once before the runtime starts.
struct Prepared {
    tls: Option<store::etcd::TlsFiles>,
    /// The masquerade backend, when `--ip-masq` is set.
    masq: Option<masq::Backend>,
    previous: Option<(Option<ipnetwork::Ipv4Network>, ipnetwork::Ipv4Network)>,
    previous6: Option<(Option<ipnetwork::Ipv6Network>, ipnetwork::Ipv6Network)>,
    /// The state file, locked for weftd's lifetime (None if it cannot be made).
    state_file: Option<Arc<weft_node_state::StateFile>>,
}

impl Prepared {
    fn new(f: &flags::Flags) -> anyhow::Result<Prepared> {
        let masq = if f.ip_masq {
            let b = masq::detect(&f.masq_backend)
                .with_context(|| format!("--ip-masq (--masq-backend={})", f.masq_backend))?;
            info!("ip masquerade enabled", backend = format!("{b:?}"));
            Some(b)
        } else {
            None
        };
        let previous = subnet_env::read_previous(&f.subnet_file);
        Ok(Prepared {
            state_file: open_state_file(f),
            tls: read_tls(f)?,
            masq,
            previous: previous.as_ref().and_then(subnet_env::previous_v4),
            previous6: previous.as_ref().and_then(subnet_env::previous_v6),
        })
    }
}

impl Prepared {
    /// The subnets subnet.env recorded, when they belong to this config's networks.
    fn previous_subnets(
        &self,
        cfg: &config::NetConfig,
    ) -> (
        Option<ipnetwork::Ipv4Network>,
        Option<ipnetwork::Ipv6Network>,
    ) {
        let previous = self
            .previous
            .filter(|(net, _)| net.is_none() || *net == Some(cfg.network))
            .map(|(_, s)| s);
        if let Some(p) = previous {
            info!("previous subnet from subnet file", subnet = p);
        }
        let previous6 = cfg.ipv6.as_ref().and_then(|c6| {
            self.previous6
                .filter(|(net, _)| net.is_none() || *net == Some(c6.network))
                .map(|(_, s)| s)
        });
        (previous, previous6)
    }
}

/// The state file, locked for weftd's lifetime.
fn open_state_file(f: &flags::Flags) -> Option<Arc<weft_node_state::StateFile>> {
    let path = f
        .state_file
        .clone()
        .unwrap_or_else(|| weft_node_state::path_for_subnet_file(&f.subnet_file));
    match weft_node_state::StateFile::open(&path) {
        Ok(s) => Some(Arc::new(s)),
        // Also when another weftd holds it (a second daemon on the same
        // subnet file): that one keeps reporting; this one serves /state only.
        Err(e) => {
            warn!(
                "weftctl and the flannel plugin will not see weftd's state",
                error = e
            );
            None
        }
    }
}

fn read_tls(f: &flags::Flags) -> anyhow::Result<Option<store::etcd::TlsFiles>> {
    if !f.uses_tls() {
        return Ok(None);
    }
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let ca = f.etcd_cafile.as_ref().map(read).transpose()?;
    let cert_key = match (&f.etcd_certfile, &f.etcd_keyfile) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    Ok(Some(store::etcd::TlsFiles { ca, cert_key }))
}

async fn connect(
    f: &flags::Flags,
    tls: Option<store::etcd::TlsFiles>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    status: &local::status::Status,
) -> anyhow::Result<Option<etcd_client::Client>> {
    let user = f.etcd_username.clone().zip(f.etcd_password.clone());
    let endpoints: Vec<String> = f
        .etcd_endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let mut backoff = backoff::Backoff::etcd();
    loop {
        let opts = store::etcd::connect_options(tls.clone(), user.clone());
        match etcd_client::Client::connect(&endpoints, Some(opts)).await {
            Ok(c) => return Ok(Some(c)),
            Err(e @ etcd_client::Error::InvalidArgs(_))
            | Err(e @ etcd_client::Error::InvalidUri(_)) => {
                bail!("etcd endpoints {}: {e}", endpoints.join(","))
            }
            Err(e) => {
                status.etcd_failed(&e);
                warn!(
                    "cannot connect to etcd; retrying",
                    endpoints = endpoints.join(","),
                    error = e
                );
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
        }
    }
}

/// SIGTERM/SIGINT flip the returned flag.
fn on_signals() -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("signal received; exiting (kernel state and lease are kept)");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// The underlay interface and our public IP.
async fn underlay(
    f: &flags::Flags,
    status: &local::status::Status,
) -> anyhow::Result<(backends::underlay::Underlay, std::net::Ipv4Addr)> {
    let ifaces = f.iface.clone();
    let underlay = tokio::task::spawn_blocking(move || {
        let mut nl = weft_netlink::Netlink::new()?;
        backends::underlay::find_underlay(&mut nl, &ifaces)
    })
    .await?
    .inspect_err(|e| status.interface_not_found(&f.iface, e))?;
    status.underlay(&underlay.name, underlay.ip, underlay.mtu);
    let public_ip = f.public_ip.unwrap_or(underlay.ip);
    info!(
        "using interface",
        iface = underlay.name,
        ip = underlay.ip,
        public_ip = public_ip,
        mtu = underlay.mtu
    );
    Ok((underlay, public_ip))
}

async fn serve_health(f: &flags::Flags, metrics: &Arc<metrics::Metrics>) -> anyhow::Result<()> {
    if f.healthz_port == 0 {
        return Ok(());
    }
    let addr = std::net::SocketAddr::new(f.healthz_ip, f.healthz_port);
    let l = health::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for /healthz"))?;
    info!("serving /healthz /readyz /metrics", addr = addr);
    tokio::spawn(health::serve(l, metrics.clone()));
    Ok(())
}

/// `<prefix>/config`, waited for while it is missing; `None` on shutdown.
async fn network_config(
    reg: &mut store::etcd::Registry,
    stop_rx: &mut tokio::sync::watch::Receiver<bool>,
    status: &local::status::Status,
) -> anyhow::Result<Option<config::NetConfig>> {
    let key = store::keys::config_key(&reg.prefix);
    let mut backoff = backoff::Backoff::etcd();
    let raw = loop {
        match reg.get_config().await {
            Ok(Some(c)) => break c,
            Ok(None) => {
                status.config_missing(&key);
                warn!("network config not found in etcd; waiting", key = key)
            }
            Err(e) => {
                status.lease_failed(&e);
                warn!("reading network config failed; retrying", error = e)
            }
        }
        tokio::select! {
            _ = backoff.wait() => {}
            _ = stop_rx.changed() => return Ok(None),
        }
    };
    let cfg = config::parse_config(&raw)
        .inspect_err(|e| status.invalid_config(&key, e))
        .with_context(|| format!("invalid {key}"))?;
    status.etcd_ok();
    status.config(&reg.prefix, &cfg);
    info!(
        "network config",
        network = cfg.network,
        subnet_len = cfg.subnet_len,
        subnet_min = cfg.subnet_min,
        subnet_max = cfg.subnet_max,
        vni = cfg.backend.vni,
        port = cfg.backend.port
    );
    Ok(Some(cfg))
}

async fn run(f: flags::Flags, pre: Prepared, metrics: Arc<metrics::Metrics>) -> anyhow::Result<()> {
    let status = start_status(&f, &pre, &metrics)?;
    let mut stop_rx = on_signals();
    // The underlay does not depend on etcd: find it first so a bad --iface fails fast.
    let (underlay, public_ip) = underlay(&f, &status).await?;
    serve_health(&f, &metrics).await?;

    let Some(client) = connect(&f, pre.tls.clone(), &mut stop_rx, &status).await? else {
        return Ok(());
    };
    let mut reg = store::etcd::Registry {
        client,
        prefix: f.etcd_prefix.trim_end_matches('/').to_string(),
        ttl: f.subnet_lease_ttl,
    };
    if reg.prefix.is_empty() {
        reg.prefix = "/".into();
    }
    let Some(cfg) = network_config(&mut reg, &mut stop_rx, &status).await? else {
        return Ok(());
    };
    let public_ipv6 = cfg.ipv6.as_ref().and(f.public_ipv6.or(underlay.ip6));
    let backend: Arc<dyn backends::Backend> =
        backends::from_config(&cfg, &underlay, public_ip, public_ipv6)?.into();
    info!("backend", kind = backend.kind(), mtu = backend.mtu());
    if let Some(c6) = &cfg.ipv6 {
        info!(
            "dual stack",
            ipv6_network = c6.network,
            ipv6_subnet_len = c6.subnet_len,
            ipv6_subnet_min = c6.subnet_min,
            ipv6_subnet_max = c6.subnet_max,
            public_ipv6 = public_ipv6.map(|ip| ip.to_string()).unwrap_or_default()
        );
    }
    let scopes = reconcile::peers::Scopes::new(
        cfg.network,
        cfg.ipv6.as_ref().map(|c6| c6.network),
        &underlay.nets,
        public_ip,
        public_ipv6,
    );
    let pod_networks = std::iter::once(ipnetwork::IpNetwork::V4(cfg.network))
        .chain(
            cfg.ipv6
                .as_ref()
                .map(|c6| ipnetwork::IpNetwork::V6(c6.network)),
        )
        .collect();
    let interval = Duration::from_secs(f.reconcile_interval);
    let dp_tx = start_dataplane(
        backend.clone(),
        underlay,
        pod_networks,
        metrics.clone(),
        interval,
    )?;
    let masq_tx = start_masq(&f, pre.masq, &metrics)?;

    let (previous, previous6) = pre.previous_subnets(&cfg);
    let agent = agent::Agent {
        reg,
        cfg,
        backend,
        public_ip,
        subnet_file: f.subnet_file.clone(),
        ip_masq: f.ip_masq,
        renew_margin_secs: i64::from(f.subnet_lease_renew_margin) * 60,
        previous,
        previous6,
        dataplane: dp_tx,
        masq: masq_tx,
        masq_forward: f.iptables_forward_rules,
        masq_fully_random: !f.ip_masq_fully_random_disable,
        metrics,
        scopes,
        rejections: reconcile::peers::Rejections::default(),
        sent: None,
    };
    agent.run(stop_rx).await
}

/// weftd's state as known before anything runs, and the thread that
/// keeps the state file current.
fn start_status(
    f: &flags::Flags,
    pre: &Prepared,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<local::status::Status> {
    let status = metrics.status.clone();
    status.start(&f.etcd_endpoints, &f.etcd_prefix, &f.subnet_file);
    if let Some(b) = pre.masq {
        status.masq_enabled(&format!("{b:?}"));
    }
    if let Some(file) = &pre.state_file {
        status
            .spawn_writer(file.clone(), metrics.clone())
            .context("spawning the state-file thread")?;
    }
    Ok(status)
}

/// The data-plane thread and the kernel-watch thread that wakes it.
fn start_dataplane(
    backend: Arc<dyn backends::Backend>,
    underlay: backends::underlay::Underlay,
    pod_networks: Vec<ipnetwork::IpNetwork>,
    metrics: Arc<metrics::Metrics>,
    interval: Duration,
) -> anyhow::Result<std::sync::mpsc::Sender<reconcile::Command>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mtu = backend.mtu();
    let dp = reconcile::Dataplane::new(backend, underlay, pod_networks, metrics.clone())?;
    let (scope, wake) = (dp.watch_scope(), tx.clone());
    metrics.status.devices(scope.devices.clone(), mtu);
    std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || dp.run(rx, interval))
        .context("spawning the data plane thread")?;
    std::thread::Builder::new()
        .name("kernel-watch".into())
        .spawn(move || reconcile::kernel::watch(scope, wake))
        .context("spawning the kernel-watch thread")?;
    Ok(tx)
}

/// The masquerade thread, when `--ip-masq` is set.
fn start_masq(
    f: &flags::Flags,
    backend: Option<masq::Backend>,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<Option<std::sync::mpsc::Sender<masq::Request>>> {
    let Some(backend) = backend else {
        return Ok(None);
    };
    let (tx, rx) = std::sync::mpsc::channel::<masq::Request>();
    let resync = Duration::from_secs(f.iptables_resync);
    let m = metrics.clone();
    m.masq_enabled
        .store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::Builder::new()
        .name("masq".into())
        .spawn(move || masq::worker(masq::Masq::new(backend), rx, resync, m))
        .context("spawning the masq thread")?;
    Ok(Some(tx))
}
