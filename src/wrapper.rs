//! `driftguard runc …` (also installed as `driftguard-runc`): the runtime wrapper.
//!
//! containerd's runc shim runs the configured `BinaryName` exactly like runc: global flags
//! first (`--root … --log … --log-format json`), then a command and its arguments. For `create`
//! and `run` the wrapper merges the exec notify rules into the bundle's `config.json` (so runc
//! hands the container's notify fd to the supervisor) and then executes the real runc with the
//! unchanged arguments. Every other command (`start`, `exec`, `kill`, `delete`, `state`,
//! `features`, …) is executed at once, before any file is read.
//!
//! Which containers get the filter: all of them, whatever their rule, so a later policy change
//! reaches running containers (`ignore` is applied when an exec is decided) — except pod
//! sandboxes (the pause process never executes anything after its start), containers of the
//! configured `exemptNamespaces` (driftguard's own pods must start while the supervisor is
//! down; whoever may create pods in an exempt namespace is as privileged as driftguard itself),
//! and containers whose seccomp section the runtime already built with driftguard's listener
//! (the native NRI path).
//!
//! No annotation opts a container out: annotations in `config.json` are not authenticated (a
//! runtime configured with `pod_annotations` copies them from the pod), so
//! `driftguard.dev/monitored`, written by the NRI plugin for information, is never read here.
//!
//! When no supervisor runs (its liveness socket, `<supervisorSocket>.alive`, does not answer),
//! the failure policy of the policy file decides: `closed` (the default) refuses the container;
//! `open` starts it without the filter and writes an alert line to the events file. The
//! hand-off socket itself is not a liveness probe: the fd holder keeps it listening while the
//! supervisor restarts, so that `runc exec` into running containers waits instead of failing.
//!
//! Invariants: the real runc always receives the original arguments; `config.json` is replaced
//! atomically (temporary file in the bundle, then rename), never left half-written.
//!
//! Limits: a profile that already sends syscalls to another listener cannot be merged; such a
//! container is refused under `closed` and started unfiltered under `open`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use driftguard_policy::scope::{CRI_CONTAINER_TYPE, CRI_SANDBOX_NAMESPACE};
use driftguard_policy::{FailurePolicy, Policy};
use driftguard_seccomp::oci::{merge_into_config, ListenerTarget};
use serde_json::Value;
use tracing::{info, warn};

use crate::config::Config;

/// Environment variable naming the real runc (overrides the configuration).
pub const RUNC_ENV: &str = "DRIFTGUARD_RUNC";

/// runc's global flags that take a value.
const VALUE_FLAGS: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// A runc command line, as far as the wrapper needs to understand it.
#[derive(Debug, PartialEq, Eq)]
pub struct RuncCall {
    /// The command (`create`, `run`, `start`, …), if any.
    pub command: Option<String>,
    /// The bundle directory of `create`/`run` (`--bundle`, `-b`, else the working directory).
    pub bundle: Option<PathBuf>,
}

/// Finds the command and the bundle in runc's arguments.
pub fn parse_call(args: &[OsString]) -> RuncCall {
    let mut i = 0;
    let mut command = None;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if VALUE_FLAGS.contains(&arg.as_ref()) {
            i += 2;
            continue;
        }
        if !arg.starts_with('-') {
            command = Some(arg.into_owned());
            break;
        }
        i += 1;
    }
    let bundle = match command.as_deref() {
        Some("create" | "run") => Some(bundle_arg(&args[i + 1..]).unwrap_or_else(|| ".".into())),
        _ => None,
    };
    RuncCall { command, bundle }
}

fn bundle_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--bundle" || text == "-b" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(v) = text
            .strip_prefix("--bundle=")
            .or_else(|| text.strip_prefix("-b="))
        {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Why a container is left without the filter, or `None` when it gets it.
pub fn skip_reason(config: &Value, listener: &str, exempt: &[String]) -> Option<&'static str> {
    let annotation = |key: &str| config.pointer("/annotations").and_then(|a| a.get(key));
    if annotation(CRI_CONTAINER_TYPE).and_then(Value::as_str) == Some("sandbox") {
        return Some("pod sandbox");
    }
    let namespace = annotation(CRI_SANDBOX_NAMESPACE).and_then(Value::as_str);
    if namespace.is_some_and(|ns| exempt.iter().any(|e| e == ns)) {
        return Some("exempt namespace");
    }
    let current = config
        .pointer("/linux/seccomp/listenerPath")
        .and_then(Value::as_str);
    if current == Some(listener) {
        return Some("filter already injected by the runtime");
    }
    None
}

/// Runs the wrapper: prepares the bundle when needed, then replaces this process with runc.
pub fn run(args: Vec<OsString>) -> Result<std::process::ExitCode> {
    let call = parse_call(&args);
    if let Some(bundle) = &call.bundle {
        let config = Config::resolve(None)?;
        prepare_bundle(&config, bundle)?;
        return Err(exec_runc(&runc_path(Some(&config)), &args));
    }
    Err(exec_runc(&runc_path(None), &args))
}

/// The real runc: `$DRIFTGUARD_RUNC`, else the configuration's `runc.path`.
fn runc_path(config: Option<&Config>) -> PathBuf {
    if let Some(path) = std::env::var_os(RUNC_ENV) {
        return PathBuf::from(path);
    }
    match config {
        Some(c) => c.runc.path.clone(),
        None => Config::resolve(None)
            .map(|c| c.runc.path)
            .unwrap_or_else(|_| "runc".into()),
    }
}

fn exec_runc(runc: &Path, args: &[OsString]) -> anyhow::Error {
    let err = Command::new(runc).args(args).exec();
    anyhow::anyhow!("executing {}: {err}", runc.display())
}

/// Merges the notify filter into `<bundle>/config.json`, or applies the failure policy.
fn prepare_bundle(config: &Config, bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let listener = config.supervisor_socket.display().to_string();
    let id = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(reason) = skip_reason(&spec, &listener, &config.exempt_namespaces) {
        info!(container_id = %id, reason, "container left without the exec filter");
        return Ok(());
    }
    let failure = failure_policy(config);
    let alive = driftguard_seccomp::alive_path(&config.supervisor_socket);
    if let Err(err) = std::os::unix::net::UnixStream::connect(&alive) {
        return unfiltered(
            config,
            &id,
            failure,
            &format!("no supervisor running ({}: {err})", alive.display()),
        );
    }
    let target = ListenerTarget {
        listener_path: listener,
        listener_metadata: id.clone(),
    };
    if let Err(err) = merge_into_config(&mut spec, &target) {
        return unfiltered(config, &id, failure, &err.to_string());
    }
    write_atomic(&path, &serde_json::to_vec(&spec)?)
}

fn failure_policy(config: &Config) -> FailurePolicy {
    match Policy::load(&config.policy_path) {
        Ok(policy) => policy.failure_policy(),
        Err(_) if !config.policy_path.exists() => Policy::default_policy().failure_policy(),
        Err(err) => {
            warn!(error = %err, "policy unreadable; failing closed");
            FailurePolicy::Closed
        }
    }
}

/// The container cannot get the filter: refuse it (closed) or start it bare and alert (open).
fn unfiltered(config: &Config, id: &str, failure: FailurePolicy, why: &str) -> Result<()> {
    match failure {
        FailurePolicy::Closed => {
            bail!("driftguard: refusing container {id} (failure policy closed): {why}")
        }
        FailurePolicy::Open => {
            warn!(container_id = %id, reason = %why, "starting container without the exec filter");
            record_unfiltered(config, id, why);
            Ok(())
        }
    }
}

/// Appends an alert line for a container started without the filter.
fn record_unfiltered(config: &Config, id: &str, why: &str) {
    let line = serde_json::json!({
        "severity": "high",
        "rule": "failure-policy",
        "class": "undecided",
        "outcome": "alert",
        "container_id": id,
        "node": config.node_name(),
        "cluster": config.cluster,
        "error": format!("container started without the exec filter: {why}"),
    });
    let file = &config.alerts.file;
    if file.as_os_str().is_empty() {
        return;
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(err) = written {
        warn!(path = %file.display(), error = %err, "could not record the unfiltered container");
    }
}

/// Replaces `path` with `bytes` through a temporary file in the same directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("config.json has no directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    let mode = std::fs::metadata(path).map(|m| m.permissions())?;
    std::fs::set_permissions(tmp.path(), mode)?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftguard_policy::scope::ANN_MONITORED;

    fn call(args: &[&str]) -> RuncCall {
        parse_call(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn finds_the_command_after_global_flags() {
        let c = call(&[
            "--root",
            "/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b/c1",
            "--pid-file",
            "/p",
            "c1",
        ]);
        assert_eq!(c.command.as_deref(), Some("create"));
        assert_eq!(c.bundle, Some(PathBuf::from("/b/c1")));
        let c = call(&["--systemd-cgroup", "run", "-b=/x", "id"]);
        assert_eq!(
            (c.command.as_deref(), c.bundle),
            (Some("run"), Some(PathBuf::from("/x")))
        );
        assert_eq!(call(&["run", "id"]).bundle, Some(PathBuf::from(".")));
    }

    #[test]
    fn other_commands_have_no_bundle() {
        for cmd in ["start", "exec", "kill", "delete", "features", "state"] {
            let c = call(&["--root", "/r", cmd, "--bundle", "/not-a-create", "id"]);
            assert_eq!(c.command.as_deref(), Some(cmd));
            assert_eq!(c.bundle, None);
        }
        assert_eq!(call(&["--version"]).command, None);
    }

    #[test]
    fn sandboxes_and_exempt_and_injected_containers_are_skipped() {
        let exempt = vec!["driftguard".to_string()];
        let sandbox = serde_json::json!({"annotations": {CRI_CONTAINER_TYPE: "sandbox"}});
        assert_eq!(
            skip_reason(&sandbox, "/s.sock", &exempt),
            Some("pod sandbox")
        );
        let native = serde_json::json!({"linux": {"seccomp": {"listenerPath": "/s.sock"}}});
        assert!(skip_reason(&native, "/s.sock", &exempt).is_some());
        let own = serde_json::json!({"annotations": {CRI_SANDBOX_NAMESPACE: "driftguard"}});
        assert_eq!(
            skip_reason(&own, "/s.sock", &exempt),
            Some("exempt namespace")
        );
        let app = serde_json::json!({"annotations": {
            CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_NAMESPACE: "shop"}});
        assert_eq!(skip_reason(&app, "/s.sock", &exempt), None);
    }

    #[test]
    fn a_monitored_false_annotation_does_not_opt_out() {
        let exempt = vec!["driftguard".to_string()];
        let opt_out = serde_json::json!({"annotations": {
            CRI_CONTAINER_TYPE: "container",
            CRI_SANDBOX_NAMESPACE: "shop",
            ANN_MONITORED: "false"}});
        assert_eq!(skip_reason(&opt_out, "/s.sock", &exempt), None);
        let bare = serde_json::json!({"annotations": {ANN_MONITORED: "false"}});
        assert_eq!(skip_reason(&bare, "/s.sock", &exempt), None);
    }
}
