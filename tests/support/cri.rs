//! A small CRI client: the kubelet's side of the Container Runtime Interface
//! (`runtime.v1.RuntimeService` over gRPC on a unix socket), just the RPCs
//! that start, inspect and remove pod sandboxes (proto/cri-runtime-v1.proto).
//!
//! The API is synchronous: each client owns a tokio current-thread runtime
//! and blocks on it, so no async code leaks into the tests or the harness.
//!
//! ```no_run
//! use weft_tests::cri::{CriClient, SandboxSpec};
//! let cri = CriClient::connect("/tmp/x/containerd.sock".as_ref()).unwrap();
//! let id = cri
//!     .run_pod_sandbox(&SandboxSpec::new("web").port(8080, 80).cgroup_parent("/weft-x"))
//!     .unwrap();
//! println!("{}", cri.sandbox_status(&id).unwrap().ip);
//! cri.stop_pod_sandbox(&id).unwrap();
//! cri.remove_pod_sandbox(&id).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

/// The generated messages and client of `runtime.v1` (only what the proto
/// file declares).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use proto::runtime_service_client::RuntimeServiceClient;

/// The CRI API version the kubelet announces in `Version`.
pub const CRI_API_VERSION: &str = "v1";

/// How long one RPC may take (RunPodSandbox runs the whole CNI chain).
pub const CRI_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot start the client's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to the CRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{rpc}: {status}")]
    Rpc {
        rpc: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{rpc}: no answer within {timeout:?}")]
    Timeout {
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("{rpc}: the runtime's answer has no {field}")]
    Missing {
        rpc: &'static str,
        field: &'static str,
    },
}

impl CriError {
    /// The gRPC status code, for an RPC the runtime refused.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CriError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// A protocol and port pair of a pod's `hostPort` mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: proto::Protocol,
    pub container_port: u16,
    pub host_port: u16,
    /// Empty: every host address.
    pub host_ip: String,
}

/// What the kubelet puts in a `PodSandboxConfig`, reduced to what matters
/// for networking. Built with [`SandboxSpec::new`] and the setters.
#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub cgroup_parent: String,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub dns_servers: Vec<String>,
}

impl SandboxSpec {
    /// A pod `name` in namespace `default`, its UID derived from the name
    /// (unique enough per node and test), hostname = name.
    pub fn new(name: &str) -> SandboxSpec {
        SandboxSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: format!("uid-{name}"),
            attempt: 0,
            hostname: name.to_string(),
            cgroup_parent: String::new(),
            port_mappings: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            dns_servers: Vec::new(),
        }
    }

    pub fn namespace(mut self, ns: &str) -> SandboxSpec {
        self.namespace = ns.to_string();
        self
    }

    pub fn uid(mut self, uid: &str) -> SandboxSpec {
        self.uid = uid.to_string();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> SandboxSpec {
        self.attempt = attempt;
        self
    }

    /// The pods' cgroup parent (cgroupfs path, e.g. `/weft-ctrd-<node>`).
    pub fn cgroup_parent(mut self, parent: &str) -> SandboxSpec {
        self.cgroup_parent = parent.to_string();
        self
    }

    /// A TCP `hostPort` mapping.
    pub fn port(self, host_port: u16, container_port: u16) -> SandboxSpec {
        self.port_mapping(PortMapping {
            protocol: proto::Protocol::Tcp,
            container_port,
            host_port,
            host_ip: String::new(),
        })
    }

    pub fn port_mapping(mut self, m: PortMapping) -> SandboxSpec {
        self.port_mappings.push(m);
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> SandboxSpec {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> SandboxSpec {
        self.annotations.insert(k.to_string(), v.to_string());
        self
    }

    pub fn dns_server(mut self, ip: &str) -> SandboxSpec {
        self.dns_servers.push(ip.to_string());
        self
    }

    fn to_config(&self) -> proto::PodSandboxConfig {
        let map = |m: &BTreeMap<String, String>| -> HashMap<String, String> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: self.attempt,
            }),
            hostname: self.hostname.clone(),
            log_directory: String::new(),
            dns_config: (!self.dns_servers.is_empty()).then(|| proto::DnsConfig {
                servers: self.dns_servers.clone(),
                searches: Vec::new(),
                options: Vec::new(),
            }),
            port_mappings: self
                .port_mappings
                .iter()
                .map(|m| proto::PortMapping {
                    protocol: m.protocol.into(),
                    container_port: i32::from(m.container_port),
                    host_port: i32::from(m.host_port),
                    host_ip: m.host_ip.clone(),
                })
                .collect(),
            labels: map(&self.labels),
            annotations: map(&self.annotations),
            linux: Some(proto::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                // The kubelet's defaults for a pod: its own network, PID
                // and IPC namespaces.
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        network: proto::NamespaceMode::Pod.into(),
                        pid: proto::NamespaceMode::Pod.into(),
                        ipc: proto::NamespaceMode::Pod.into(),
                        target_id: String::new(),
                    }),
                    privileged: false,
                }),
                sysctls: HashMap::new(),
            }),
        }
    }
}

/// The parts of `PodSandboxStatus` (verbose) the tests and the CLI use.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub ready: bool,
    /// The pod's primary IP (empty before networking is set up).
    pub ip: String,
    pub additional_ips: Vec<String>,
    /// The sandbox process, from the verbose info (containerd: `info.pid`);
    /// its `/proc/<pid>/ns/net` is the pod's network namespace.
    pub pid: Option<u32>,
    /// The verbose info, each value parsed as JSON where it is JSON.
    pub info: BTreeMap<String, Value>,
}

/// One entry of `ListPodSandbox`.
#[derive(Clone, Debug)]
pub struct SandboxSummary {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub ready: bool,
    pub created_at: i64,
}

/// The runtime's `Status`: its conditions as (type, status, reason, message).
#[derive(Clone, Debug)]
pub struct RuntimeConditions(pub Vec<(String, bool, String, String)>);

impl RuntimeConditions {
    /// The status of condition `kind` (`RuntimeReady`, `NetworkReady`).
    pub fn is(&self, kind: &str) -> Option<bool> {
        self.0.iter().find(|c| c.0 == kind).map(|c| c.1)
    }
}

/// A connection to one CRI runtime.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// Connects to the runtime's socket (e.g. containerd's `[grpc] address`).
    pub fn connect(socket: &Path) -> Result<CriClient, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let connect_error = |source| CriError::Connect {
            path: socket.to_path_buf(),
            source,
        };
        let endpoint = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(5));
        let channel = rt.block_on(endpoint.connect()).map_err(connect_error)?;
        Ok(CriClient {
            rt,
            client: RuntimeServiceClient::new(channel),
            timeout: CRI_TIMEOUT,
        })
    }

    /// Each RPC fails with [`CriError::Timeout`] after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> CriClient {
        self.timeout = timeout;
        self
    }

    /// Runs one RPC to completion on the client's runtime.
    fn call<T, F>(
        &self,
        rpc: &'static str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, CriError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        let timeout = self.timeout;
        self.rt.block_on(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(resp)) => Ok(resp.into_inner()),
                Ok(Err(status)) => Err(CriError::Rpc {
                    rpc,
                    status: Box::new(status),
                }),
                Err(_) => Err(CriError::Timeout { rpc, timeout }),
            }
        })
    }

    /// `Version`: (runtime name, runtime version, runtime API version).
    pub fn version(&self) -> Result<(String, String, String), CriError> {
        let v = self.call("Version", |mut c| async move {
            c.version(proto::VersionRequest {
                version: CRI_API_VERSION.to_string(),
            })
            .await
        })?;
        Ok((v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// `Status`: the runtime's conditions.
    pub fn status(&self) -> Result<RuntimeConditions, CriError> {
        let s = self.call("Status", |mut c| async move {
            c.status(proto::StatusRequest { verbose: false }).await
        })?;
        let conditions = s
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.r#type, c.status, c.reason, c.message))
            .collect();
        Ok(RuntimeConditions(conditions))
    }

    /// `RunPodSandbox`: the new sandbox's id. Networking (CNI ADD) is done
    /// when this returns.
    pub fn run_pod_sandbox(&self, spec: &SandboxSpec) -> Result<String, CriError> {
        let config = spec.to_config();
        let r = self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        Ok(r.pod_sandbox_id)
    }

    /// `PodSandboxStatus` with `verbose` (for the sandbox pid).
    pub fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, CriError> {
        let id = id.to_string();
        let r = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(proto::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })?;
        let status = r.status.ok_or(CriError::Missing {
            rpc: "PodSandboxStatus",
            field: "status",
        })?;
        let info: BTreeMap<String, Value> = r
            .info
            .into_iter()
            .map(|(k, v)| {
                let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
                (k, parsed)
            })
            .collect();
        let pid = info
            .get("info")
            .and_then(|i| i.get("pid"))
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0);
        let network = status.network.unwrap_or_default();
        let meta = status.metadata.unwrap_or_default();
        Ok(SandboxStatus {
            ready: status.state == i32::from(proto::PodSandboxState::SandboxReady),
            id: status.id,
            name: meta.name,
            namespace: meta.namespace,
            ip: network.ip,
            additional_ips: network.additional_ips.into_iter().map(|i| i.ip).collect(),
            pid,
            info,
        })
    }

    /// `ListPodSandbox` without a filter.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<SandboxSummary>, CriError> {
        let r = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(r.items
            .into_iter()
            .map(|s| {
                let meta = s.metadata.unwrap_or_default();
                SandboxSummary {
                    ready: s.state == i32::from(proto::PodSandboxState::SandboxReady),
                    id: s.id,
                    name: meta.name,
                    namespace: meta.namespace,
                    created_at: s.created_at,
                }
            })
            .collect())
    }

    /// `StopPodSandbox`: the sandbox's processes are killed and its network
    /// torn down (CNI DEL).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(proto::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        Ok(())
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        Ok(())
    }
}
