//! flannel: a meta plugin compatible with flannel's own. It turns
//! subnet.env into a bridge + host-local delegate config, stores it under
//! dataDir/<containerID> for DEL, and runs the delegate.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flannel_env::{ReadError, SubnetEnv};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use weft_cni::delegate::Delegate;
use weft_cni::{CniResult, Command, Error, ErrorCode, Plugin, Request};
use weft_node_state::{self as node_state, Observed};

const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FlannelConfig {
    #[serde(default)]
    subnet_file: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
    #[serde(default)]
    ipam: Option<Map<String, Value>>,
}

impl FlannelConfig {
    fn parse(req: &Request) -> Result<FlannelConfig, Error> {
        let config: FlannelConfig = req.parse_config()?;
        if let Some(d) = &config.delegate {
            for key in ["name", "ipam"] {
                if d.contains_key(key) {
                    return Err(Error::config(format!(
                        "delegate must not set \"{key}\"; it is derived"
                    )));
                }
            }
            if d.get("type").is_some_and(|t| !t.is_string()) {
                return Err(Error::config("delegate.type must be a string"));
            }
        }
        Ok(config)
    }

    fn subnet_file(&self) -> &Path {
        self.subnet_file
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_SUBNET_FILE))
    }

    fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    fn stored_config(&self, container_id: &str) -> PathBuf {
        self.data_dir().join(container_id)
    }
}

/// subnet.env, or why not: absent or unreadable means weftd/flanneld has not
/// written it yet (try again later, with weftd's reason), garbage is a
/// config error.
fn read_subnet_env(path: &Path) -> Result<SubnetEnv, Error> {
    SubnetEnv::read(path).map_err(|e| match e {
        ReadError::Io { .. } => Error::new(
            ErrorCode::TryAgainLater,
            format!("{e}: {}", weftd_says(path)),
        ),
        ReadError::Parse { .. } => Error::config(e.to_string()),
    })
}

/// What weftd's state file (next to subnet.env) says, in words.
fn weftd_says(subnet_file: &Path) -> String {
    let state_path = node_state::path_for_subnet_file(subnet_file);
    let now = node_state::now_unix();
    match node_state::observe(&state_path) {
        Ok(Observed::Running(s)) => match s.reason_at(now) {
            Some(why) => format!("weftd is not ready: {why}"),
            None => "weftd is running and ready, yet the file is gone".into(),
        },
        Ok(Observed::Stopped(s)) => {
            let last = s.reason_at(s.updated_at).unwrap_or_else(|| "ready".into());
            format!(
                "weftd is not running (it stopped {} ago; its last state: {last})",
                node_state::format_duration(now.saturating_sub(s.updated_at))
            )
        }
        Ok(Observed::Missing) => format!(
            "weftd is not running (no state at {}); is weftd or flanneld running?",
            state_path.display()
        ),
        Err(e) => format!("weftd's state is unreadable: {e}"),
    }
}

/// STATUS: not available while weftd runs and says it is not ready, even
/// if an earlier run's subnet.env is still there.
fn check_weftd_ready(subnet_file: &Path) -> Result<(), Error> {
    let state_path = node_state::path_for_subnet_file(subnet_file);
    if let Ok(Observed::Running(s)) = node_state::observe(&state_path) {
        if let Some(why) = s.reason_at(node_state::now_unix()) {
            return Err(Error::new(
                ErrorCode::NotAvailable,
                format!("network not ready: weftd is not ready: {why}"),
            ));
        }
    }
    Ok(())
}

/// The delegate config flannel's plugin would build, key for key.
fn build_delegate(req: &Request, config: &FlannelConfig, env: &SubnetEnv) -> Result<Value, Error> {
    let mut delegate = config.delegate.clone().unwrap_or_default();
    delegate.insert("name".into(), json!(req.name));
    let kind = delegate
        .entry("type")
        .or_insert_with(|| json!("bridge"))
        .clone();
    delegate
        .entry("ipMasq")
        .or_insert_with(|| json!(!env.ipmasq));
    delegate.entry("mtu").or_insert_with(|| json!(env.mtu));
    if kind == "bridge" {
        delegate.entry("isGateway").or_insert_with(|| json!(true));
    }
    delegate.insert("cniVersion".into(), json!(req.version.as_str()));

    let mut ipam = config.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let subnets = env
        .subnet
        .iter()
        .map(ToString::to_string)
        .chain(env.ipv6_subnet.iter().map(ToString::to_string));
    let ranges: Vec<Value> = subnets.map(|s| json!([{ "subnet": s }])).collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        Some(Value::Array(r)) => r.clone(),
        None | Some(Value::Null) => vec![],
        Some(_) => return Err(Error::config("ipam.routes must be a list")),
    };
    routes.extend(env.networks.iter().map(|n| json!({ "dst": n.to_string() })));
    routes.extend(
        env.ipv6_networks
            .iter()
            .map(|n| json!({ "dst": n.to_string() })),
    );
    ipam.insert("routes".into(), Value::Array(routes));
    delegate.insert("ipam".into(), Value::Object(ipam));

    for key in ["runtimeConfig", "args"] {
        if let Some(v) = req.config.get(key) {
            delegate.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(delegate))
}

fn delegate_for(req: &Request, delegate: &Value) -> Result<Delegate, Error> {
    let kind = delegate
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge");
    Delegate::find(kind, req)
}

/// Write the delegate config durably before it is used, so DEL can find it.
fn store(path: &Path, delegate: &Value) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), &e))?;
    }
    flannel_env::write_atomic(path, delegate.to_string().as_bytes(), 0o600)
        .map_err(|e| Error::io(format!("store delegate config {}", path.display()), &e))
}

/// The stored delegate config with this request's prevResult, if any.
fn with_prev_result(mut delegate: Value, req: &Request) -> Value {
    if let (Some(prev), Value::Object(map)) = (req.config.get("prevResult"), &mut delegate) {
        map.insert("prevResult".into(), prev.clone());
    }
    delegate
}

fn load(path: &Path) -> Result<Option<Value>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), &e)),
    }
}

struct Flannel;

impl Plugin for Flannel {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let config = FlannelConfig::parse(req)?;
        let env = read_subnet_env(config.subnet_file())?;
        let delegate = build_delegate(req, &config, &env)?;
        let plugin = delegate_for(req, &delegate)?;
        let stored = config.stored_config(&req.container_id);
        store(&stored, &delegate)?;
        // Kept when the delegate fails, as flannel does: its rollback may
        // have failed too, and the runtime's DEL needs this to clean up.
        plugin.add(delegate.to_string().as_bytes())
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let config = FlannelConfig::parse(req)?;
        let stored = config.stored_config(&req.container_id);
        let Some(delegate) = load(&stored)? else {
            return Ok(());
        };
        let delegate = with_prev_result(delegate, req);
        delegate_for(req, &delegate)?.run(Command::Del, delegate.to_string().as_bytes())?;
        std::fs::remove_file(&stored)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::io(format!("remove {}", stored.display()), &e))
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let config = FlannelConfig::parse(req)?;
        let stored = config.stored_config(&req.container_id);
        let delegate = load(&stored)?.ok_or_else(|| {
            Error::new(
                ErrorCode::CheckFailed,
                format!("no stored delegate config at {}", stored.display()),
            )
        })?;
        let delegate = with_prev_result(delegate, req);
        delegate_for(req, &delegate)?.run(Command::Check, delegate.to_string().as_bytes())
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let config = FlannelConfig::parse(req)?;
        let env = read_subnet_env(config.subnet_file())
            .map_err(|e| Error::new(ErrorCode::NotAvailable, format!("network not ready: {e}")))?;
        check_weftd_ready(config.subnet_file())?;
        let delegate = build_delegate(req, &config, &env)?;
        delegate_for(req, &delegate)?.run(Command::Status, delegate.to_string().as_bytes())
    }

    /// Forward GC to the delegate, then drop stored configs of attachments
    /// the runtime no longer lists.
    fn gc(&self, req: &Request) -> Result<(), Error> {
        let config = FlannelConfig::parse(req)?;
        let valid = req.valid_attachments()?;
        let mut errors = Vec::new();
        match read_subnet_env(config.subnet_file())
            .and_then(|env| build_delegate(req, &config, &env))
        {
            Ok(mut delegate) => {
                for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                    if let (Some(v), Value::Object(map)) = (req.config.get(key), &mut delegate) {
                        map.insert(key.into(), v.clone());
                    }
                }
                if let Err(e) = delegate_for(req, &delegate)
                    .and_then(|d| d.run(Command::Gc, delegate.to_string().as_bytes()))
                {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        if let Ok(entries) = std::fs::read_dir(config.data_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // A temp file may belong to an ADD in flight.
                if flannel_env::is_temp_name(&name) {
                    continue;
                }
                if weft_cni::validate::container_id(&name).is_ok()
                    && !valid.iter().any(|(id, _)| *id == name)
                {
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        errors.push(Error::io(format!("remove {}", entry.path().display()), &e));
                    }
                }
            }
        }
        Error::from_list(errors)
    }
}

fn main() -> ExitCode {
    weft_cni::skel::main(&Flannel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config: Value) -> Request {
        Request {
            command: Command::Add,
            version: weft_cni::Version::parse(config["cniVersion"].as_str().unwrap()).unwrap(),
            name: config["name"].as_str().unwrap().into(),
            container_id: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            args: String::new(),
            cni_path: vec![],
            stdin: config.to_string().into_bytes(),
            config,
        }
    }

    fn env() -> SubnetEnv {
        SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap()
    }

    #[test]
    fn builds_flannels_delegate_for_kube_flannel_conf() {
        let req = request(json!({
            "cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
            "delegate": {"hairpinMode": true, "isDefaultGateway": true}
        }));
        let config = FlannelConfig::parse(&req).unwrap();
        let d = build_delegate(&req, &config, &env()).unwrap();
        assert_eq!(
            d,
            json!({
                "name": "cbr0", "type": "bridge", "cniVersion": "0.3.1",
                "hairpinMode": true, "isDefaultGateway": true, "isGateway": true,
                "ipMasq": false, "mtu": 1450,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.3.0/24"}]], "routes": [{"dst": "10.244.0.0/16"}]}
            })
        );
    }

    #[test]
    fn dual_stack_gets_a_range_set_and_a_route_per_family() {
        let req = request(json!({"cniVersion": "1.0.0", "name": "n", "type": "flannel"}));
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let d = build_delegate(&req, &FlannelConfig::parse(&req).unwrap(), &env).unwrap();
        assert_eq!(
            d["ipam"]["ranges"],
            json!([[{"subnet": "10.5.52.0/24"}], [{"subnet": "2001:cafe:42::/64"}]])
        );
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "10.5.0.0/16"}, {"dst": "2001:cafe:42::/56"}])
        );
    }

    #[test]
    fn explicit_delegate_settings_win_and_reserved_keys_are_refused() {
        let req = request(json!({
            "cniVersion": "1.0.0", "name": "n", "type": "flannel",
            "delegate": {"ipMasq": true, "mtu": 1400, "isGateway": false},
            "ipam": {"routes": [{"dst": "192.0.2.0/24"}]}
        }));
        let d = build_delegate(&req, &FlannelConfig::parse(&req).unwrap(), &env()).unwrap();
        assert_eq!(d["ipMasq"], true);
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["isGateway"], false);
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24"}, {"dst": "10.244.0.0/16"}])
        );
        let bad = request(json!({"cniVersion": "1.0.0", "name": "n", "delegate": {"name": "x"}}));
        assert_eq!(FlannelConfig::parse(&bad).unwrap_err().code(), 7);
    }
}
