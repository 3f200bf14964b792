//! The plugin entry point: read the environment and stdin, validate all of
//! it before the plugin may change anything, dispatch the command, and print
//! exactly one result or error object on stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use weft_netlink::{self as netlink, Netns};

use crate::error::Error;
use crate::result::CniResult;
use crate::validate;
use crate::version::{Version, LATEST, SUPPORTED};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, Error> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            "" => return Err(Error::env("CNI_COMMAND is not set")),
            other => {
                return Err(Error::env(format!(
                "CNI_COMMAND \"{}\" is unknown; expected ADD, DEL, CHECK, GC, STATUS or VERSION",
                other.escape_debug()
            )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// ADD, CHECK and DEL act on one attachment and need its identity.
    fn has_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    pub version: Version,
    /// Network name from the config.
    pub name: String,
    pub container_id: String,
    /// CNI_NETNS; for DEL it may name a namespace that is already gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// Raw CNI_ARGS; parse with [`crate::args::CniArgs`].
    pub args: String,
    pub cni_path: Vec<PathBuf>,
    /// The config exactly as received, for delegation.
    pub stdin: Vec<u8>,
    pub config: Value,
}

impl Request {
    /// Decode the plugin's own view of the config; errors name the field.
    pub fn parse_config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_path_to_error::deserialize(&self.config).map_err(|e| {
            let path = e.path().to_string();
            Error::decode(format!(
                "invalid network config: field \"{path}\": {}",
                e.into_inner()
            ))
        })
    }

    /// The previous plugin's result, in whatever version it was written.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        match self.config.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v).map(Some).map_err(|e| match e {
                Error::Spec { code, msg, details } => Error::Spec {
                    code,
                    msg: format!("prevResult: {msg}"),
                    details,
                },
                other => other,
            }),
        }
    }

    /// The netns path, which ADD and CHECK are guaranteed to have.
    pub fn netns_path(&self) -> Result<&Path, Error> {
        self.netns
            .as_deref()
            .ok_or_else(|| Error::env("CNI_NETNS is not set"))
    }

    /// GC's `cni.dev/valid-attachments` as (containerID, ifname) pairs. The
    /// older key `cni.dev/attachments` is read too (libcni sends both); a
    /// missing or null list means no attachment is valid. A malformed entry
    /// is an error: guessing could release a live attachment.
    pub fn valid_attachments(&self) -> Result<Vec<(String, String)>, Error> {
        let mut valid = Vec::new();
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let items = match self.config.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(Error::config(format!(
                        "\"{key}\" must be a list, not {other}"
                    )))
                }
            };
            for (i, item) in items.iter().enumerate() {
                let field = |name: &str| match item.get(name) {
                    Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(Error::config(format!(
                        "{key}[{i}].{name} must be a non-empty string; refusing to GC"
                    ))),
                };
                valid.push((field("containerID")?, field("ifname")?));
            }
        }
        Ok(valid)
    }

    /// Whether CNI_NETNS still holds a network namespace (DEL must cope
    /// when it does not).
    pub fn netns_exists(&self) -> bool {
        self.netns
            .as_deref()
            .is_some_and(|p| Netns::open(p).is_ok())
    }
}

/// The commands a plugin implements. GC and STATUS default to success, as
/// for a plugin that holds no state and is always ready.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error>;
    fn del(&self, req: &Request) -> Result<(), Error>;
    fn check(&self, req: &Request) -> Result<(), Error>;
    fn gc(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
    fn status(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
}

/// What a run printed and how it exited.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub exit_code: u8,
    pub stdout: Option<Value>,
}

/// Entry point for a plugin binary.
pub fn main<P: Plugin>(plugin: &P) -> ExitCode {
    let mut stdin = Vec::new();
    let input = std::io::stdin();
    // VERSION may be run by hand from a terminal with nothing on stdin.
    if !input.is_terminal() {
        if let Err(e) = input.lock().read_to_end(&mut stdin) {
            let err = Error::io("cannot read the network config from stdin", &e);
            return emit(&Outcome {
                exit_code: 1,
                stdout: Some(err.to_json(LATEST)),
            });
        }
    }
    let outcome = run(plugin, &|key| std::env::var(key).ok(), &stdin);
    emit(&outcome)
}

fn emit(outcome: &Outcome) -> ExitCode {
    if let Some(v) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing useful can be done if stdout is closed.
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    ExitCode::from(outcome.exit_code)
}

/// Run one invocation against an injected environment and stdin.
pub fn run<P: Plugin>(plugin: &P, env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let requested = requested_version(stdin);
    match dispatch(plugin, env, stdin) {
        Ok(stdout) => Outcome {
            exit_code: 0,
            stdout,
        },
        Err(err) => {
            crate::log::error(&format!(
                "{}: {err}",
                env("CNI_COMMAND").unwrap_or_default()
            ));
            Outcome {
                exit_code: 1,
                stdout: Some(err.to_json(requested)),
            }
        }
    }
}

/// The version to answer errors in: the request's, when weft speaks it.
fn requested_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(|s| Version::parse(s).ok())
        })
        .map_or(LATEST, Version::as_str)
}

fn dispatch<P: Plugin>(
    plugin: &P,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, Error> {
    let command = Command::parse(&env("CNI_COMMAND").unwrap_or_default())?;
    if command == Command::Version {
        return Ok(Some(
            json!({ "cniVersion": requested_version(stdin), "supportedVersions": SUPPORTED }),
        ));
    }
    let req = build_request(command, env, stdin)?;
    match command {
        Command::Add => plugin.add(&req).map(|r| Some(r.to_json(req.version))),
        Command::Del => plugin.del(&req).map(|()| None),
        Command::Check => plugin.check(&req).map(|()| None),
        Command::Gc => plugin.gc(&req).map(|()| None),
        Command::Status => plugin.status(&req).map(|()| None),
        Command::Version => Ok(None),
    }
}

fn build_request(
    command: Command,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Request, Error> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::decode("no network config on stdin"));
    }
    let config: Value = serde_json::from_slice(stdin)
        .map_err(|e| Error::decode(format!("network config on stdin is not valid JSON: {e}")))?;
    if !config.is_object() {
        return Err(Error::decode(
            "network config on stdin must be a JSON object",
        ));
    }
    let version = Version::parse(
        config
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )?;
    let gate = match command {
        Command::Check => Some(Version::V0_4_0),
        Command::Gc | Command::Status => Some(Version::V1_1_0),
        _ => None,
    };
    if let Some(min) = gate {
        if version < min {
            return Err(Error::version(format!(
                "{} needs cniVersion {min} or later; the config has {version}",
                command.as_str()
            )));
        }
    }
    let name = match config.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Error::config(format!(
                "network name must be a string, not {other}"
            )))
        }
        None => String::new(),
    };
    validate::network_name(&name)?;

    let var = |key: &str| env(key).unwrap_or_default();
    let cni_path = std::env::split_paths(&var("CNI_PATH"))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let mut req = Request {
        command,
        version,
        name,
        container_id: var("CNI_CONTAINERID"),
        netns: Some(PathBuf::from(var("CNI_NETNS"))).filter(|p| !p.as_os_str().is_empty()),
        ifname: var("CNI_IFNAME"),
        args: var("CNI_ARGS"),
        cni_path,
        stdin: stdin.to_vec(),
        config,
    };
    if command.has_attachment() {
        validate::container_id(&req.container_id)?;
        validate::interface_name(&req.ifname)?;
        let override_own = matches!(var("CNI_NETNS_OVERRIDE").as_str(), "1" | "true");
        check_netns(command, req.netns.as_deref(), override_own)?;
    } else {
        req.netns = None;
    }
    Ok(req)
}

/// ADD and CHECK need a live network namespace; DEL accepts one that is
/// gone, including a placeholder file whose bind mount was already removed.
/// None may be the plugin's own namespace: acting there would reconfigure
/// the host (kubernetes#100648).
fn check_netns(command: Command, netns: Option<&Path>, override_own: bool) -> Result<(), Error> {
    let Some(path) = netns else {
        return match command {
            Command::Del => Ok(()),
            _ => Err(Error::env("CNI_NETNS is not set")),
        };
    };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(e) if command == Command::Del && is_gone(&e) => return Ok(()),
        Err(e @ netlink::Error::NotNetns(_)) => return Err(Error::env(format!("CNI_NETNS {e}"))),
        Err(e) => {
            return Err(Error::env(format!(
                "CNI_NETNS \"{}\" cannot be opened: {e}",
                path.display()
            )))
        }
    };
    if !override_own && Netns::current().is_ok_and(|own| own.id() == ns.id()) {
        return Err(Error::env(format!(
            "CNI_NETNS \"{}\" is the plugin's own network namespace; refusing to act on the host",
            path.display()
        )));
    }
    Ok(())
}

/// A netns path that no longer holds a network namespace.
fn is_gone(e: &netlink::Error) -> bool {
    matches!(e, netlink::Error::NotNetns(_)) || e.is_not_found()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, req: &Request) -> Result<CniResult, Error> {
            Ok(req.prev_result()?.unwrap_or_default())
        }
        fn del(&self, _: &Request) -> Result<(), Error> {
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<(), Error> {
            Ok(())
        }
    }

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(&Echo, &|k| map.get(k).cloned(), stdin.as_bytes())
    }

    fn code(o: &Outcome) -> u64 {
        assert_eq!(o.exit_code, 1, "{o:?}");
        o.stdout.as_ref().and_then(|v| v["code"].as_u64()).unwrap()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"net","type":"echo"}"#;

    #[test]
    fn version_echoes_the_request() {
        let o = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.exit_code, 0);
        let v = o.stdout.unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
        let o = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(o.stdout.unwrap()["cniVersion"], LATEST);
    }

    #[test]
    fn bad_environment_and_input_codes() {
        assert_eq!(code(&run_with(&[], CONF)), 4);
        assert_eq!(code(&run_with(&[("CNI_COMMAND", "FOO")], CONF)), 4);
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run_with(&del, "{not json")), 6);
        assert_eq!(code(&run_with(&del, "")), 6);
        assert_eq!(code(&run_with(&del, "[1]")), 6);
        assert_eq!(
            code(&run_with(&del, r#"{"cniVersion":"9.9.9","name":"n"}"#)),
            1
        );
        assert_eq!(code(&run_with(&del, r#"{"name":"n"}"#)), 1);
        assert_eq!(code(&run_with(&del, r#"{"cniVersion":"1.0.0"}"#)), 7);
        assert_eq!(
            code(&run_with(&del, r#"{"cniVersion":"1.0.0","name":"a b"}"#)),
            7
        );
        let bad_id = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(code(&run_with(&bad_id, CONF)), 4);
        let no_id = [("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")];
        assert_eq!(code(&run_with(&no_id, CONF)), 3);
        let bad_if = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "way-too-long-name0"),
        ];
        assert_eq!(code(&run_with(&bad_if, CONF)), 4);
        let add_missing_ns = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent/ns"),
        ];
        assert_eq!(code(&run_with(&add_missing_ns, CONF)), 4);
        let add_not_ns = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/status"),
        ];
        assert_eq!(code(&run_with(&add_not_ns, CONF)), 4);
        let add_own_ns = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/proc/self/ns/net"),
        ];
        assert_eq!(code(&run_with(&add_own_ns, CONF)), 4);
    }

    #[test]
    fn del_tolerates_a_missing_netns() {
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent/ns"),
        ];
        assert_eq!(run_with(&del, CONF).exit_code, 0);
    }

    #[test]
    fn version_gates() {
        let check = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(
            code(&run_with(&check, r#"{"cniVersion":"0.3.1","name":"n"}"#)),
            1
        );
        for cmd in ["GC", "STATUS"] {
            assert_eq!(code(&run_with(&[("CNI_COMMAND", cmd)], CONF)), 1);
            let ok = run_with(
                &[("CNI_COMMAND", cmd)],
                r#"{"cniVersion":"1.1.0","name":"n"}"#,
            );
            assert_eq!(
                ok,
                Outcome {
                    exit_code: 0,
                    stdout: None
                }
            );
        }
    }

    #[test]
    fn valid_attachments_accepts_both_keys_and_null() {
        let req = |conf: Value| {
            build_request(
                Command::Gc,
                &|k| (k == "CNI_COMMAND").then(|| "GC".into()),
                conf.to_string().as_bytes(),
            )
            .unwrap()
        };
        let base = json!({"cniVersion": "1.1.0", "name": "n"});
        assert!(req(base.clone()).valid_attachments().unwrap().is_empty());
        let mut with_null = base.clone();
        with_null["cni.dev/valid-attachments"] = Value::Null;
        assert!(req(with_null).valid_attachments().unwrap().is_empty());
        let mut both = base.clone();
        both["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        both["cni.dev/attachments"] = json!([{"containerID": "b", "ifname": "eth1"}]);
        let v = req(both).valid_attachments().unwrap();
        assert!(
            v.contains(&("a".into(), "eth0".into())) && v.contains(&("b".into(), "eth1".into()))
        );
        let mut bad = base.clone();
        bad["cni.dev/valid-attachments"] = json!("nope");
        assert_eq!(req(bad).valid_attachments().unwrap_err().code(), 7);
        let mut no_ifname = base;
        no_ifname["cni.dev/valid-attachments"] =
            json!([{"containerID": "a"}, {"containerID": "b", "ifname": ""}]);
        let e = req(no_ifname).valid_attachments().unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string()
                .contains("cni.dev/valid-attachments[0].ifname"),
            "{e}"
        );
    }

    #[test]
    fn errors_answer_in_the_requested_version() {
        let o = run_with(
            &[("CNI_COMMAND", "BAD")],
            r#"{"cniVersion":"0.3.1","name":"n"}"#,
        );
        assert_eq!(o.stdout.unwrap()["cniVersion"], "0.3.1");
    }
}
