//! weft-cri: what the kubelet does to a pod's network, by hand, over CRI.
//!
//! ```text
//! weft-cri --socket DIR/containerd.sock --cgroup-parent /weft-ctrd-NODE \
//!     run --name web --port 8080:80 --annotation kubernetes.io/egress-bandwidth=10M
//! weft-cri --socket ... ip ID | pid ID | inspect ID | list | stop ID | rm ID
//! ```
//!
//! Test-only (built with the tests crate); `scripts/lib/containerd.sh`'s
//! `ctrd_cri DIR ...` fills in the socket and cgroup parent of a node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use weft_tests::cri::{proto::Protocol, CriClient, PortMapping, SandboxSpec};

#[derive(Parser)]
#[command(
    name = "weft-cri",
    about = "Pod sandboxes through a CRI runtime (containerd), as the kubelet starts them"
)]
struct Cli {
    /// The runtime's CRI socket.
    #[arg(long, env = "WEFT_CRI_SOCKET")]
    socket: PathBuf,
    /// cgroup parent of the pods (cgroupfs path).
    #[arg(long, env = "WEFT_CRI_CGROUP_PARENT", default_value = "")]
    cgroup_parent: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runtime name, version and CRI API version.
    Version,
    /// The runtime's conditions (RuntimeReady, NetworkReady).
    Status,
    /// RunPodSandbox; prints the sandbox id.
    Run {
        /// Pod name.
        #[arg(long)]
        name: String,
        /// Pod namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Pod UID (default: derived from the name).
        #[arg(long)]
        uid: Option<String>,
        /// A hostPort: HOST:CONTAINER[/tcp|/udp|/sctp], repeatable.
        #[arg(long = "port", value_parser = parse_port)]
        ports: Vec<PortMapping>,
        /// A pod annotation K=V, repeatable (e.g.
        /// kubernetes.io/ingress-bandwidth=10M).
        #[arg(long = "annotation", value_parser = parse_kv)]
        annotations: Vec<(String, String)>,
        /// A pod label K=V, repeatable.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
    },
    /// The pod's IP (and additional IPs, one a line).
    Ip { id: String },
    /// The sandbox process's pid (enter the pod: nsenter --net=/proc/PID/ns/net).
    Pid { id: String },
    /// PodSandboxStatus (verbose) as JSON.
    Inspect { id: String },
    /// ListPodSandbox: id, state, namespace/name.
    List,
    /// StopPodSandbox (the runtime runs CNI DEL).
    Stop { id: String },
    /// RemovePodSandbox.
    Rm { id: String },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        other => return Err(format!("unknown protocol {other:?}")),
    };
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| format!("expected HOST:CONTAINER, got {s:?}"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("bad port {p:?}"))
    };
    Ok(PortMapping {
        protocol,
        host_port: port(host)?,
        container_port: port(container)?,
        host_ip: String::new(),
    })
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let cri = CriClient::connect(&cli.socket)?;
    match cli.command {
        Command::Version => {
            let (name, version, api) = cri.version()?;
            println!("{name} {version} (CRI {api})");
        }
        Command::Status => {
            for (kind, ok, reason, message) in cri.status()?.0 {
                println!("{kind}={ok} {reason} {message}");
            }
        }
        Command::Run {
            name,
            namespace,
            uid,
            ports,
            annotations,
            labels,
        } => {
            let mut spec = SandboxSpec::new(&name)
                .namespace(&namespace)
                .cgroup_parent(&cli.cgroup_parent);
            if let Some(uid) = uid {
                spec = spec.uid(&uid);
            }
            for p in ports {
                spec = spec.port_mapping(p);
            }
            for (k, v) in &annotations {
                spec = spec.annotation(k, v);
            }
            for (k, v) in &labels {
                spec = spec.label(k, v);
            }
            println!("{}", cri.run_pod_sandbox(&spec)?);
        }
        Command::Ip { id } => {
            let s = cri.sandbox_status(&id)?;
            for ip in std::iter::once(&s.ip).chain(&s.additional_ips) {
                println!("{ip}");
            }
        }
        Command::Pid { id } => match cri.sandbox_status(&id)?.pid {
            Some(pid) => println!("{pid}"),
            None => return Err(format!("sandbox {id} has no running process").into()),
        },
        Command::Inspect { id } => {
            let s = cri.sandbox_status(&id)?;
            let out = json!({"id": s.id, "name": s.name, "namespace": s.namespace,
                "ready": s.ready, "ip": s.ip, "additionalIps": s.additional_ips,
                "pid": s.pid, "info": s.info});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::List => {
            for s in cri.list_pod_sandboxes()? {
                let state = if s.ready { "READY" } else { "NOTREADY" };
                println!("{} {state} {}/{}", s.id, s.namespace, s.name);
            }
        }
        Command::Stop { id } => cri.stop_pod_sandbox(&id)?,
        Command::Rm { id } => cri.remove_pod_sandbox(&id)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-cri: {e}");
            ExitCode::FAILURE
        }
    }
}
