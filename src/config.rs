//! The daemon's configuration file (`/etc/driftguard/config.yaml` by default).
//!
//! One YAML document; every key is optional and has the default shown in
//! `contrib/config/config.yaml`. Unknown keys are errors (a typo must not silently fall back to
//! a default), reported with the file, line and column. The runc wrapper reads the same file to
//! learn the supervisor socket, the real runc and the policy (for its failure policy).
//!
//! Values are checked by one function, [`Config::validate`]: `driftguard config check`, the
//! daemon and the external NRI plugin refuse a configuration it rejects, naming the file, the
//! key and the bad value. The runc wrapper only parses the file: it must go on starting the
//! exempt namespaces' pods whatever an unrelated value (say `metricsAddress`) says.
//!
//! Limits: a bad value is reported by key path, not by line (the line is given for documents
//! that do not parse).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use driftguard_policy::alerts::{AlertError, HttpSinkConfig};
use serde::{Deserialize, Serialize};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/driftguard/config.yaml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "DRIFTGUARD_CONFIG";

/// The daemon's configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Cluster name put into every scope and alert.
    pub cluster: String,
    /// Node name in alerts; the host name when empty.
    pub node: String,
    /// Directory for the image index cache and other state.
    pub state_dir: PathBuf,
    /// The drift policy file (watched and reloaded).
    pub policy_path: PathBuf,
    /// The supervisor's hand-off socket (`listenerPath` of every monitored container).
    pub supervisor_socket: PathBuf,
    /// The fd holder's socket.
    pub holder_socket: PathBuf,
    /// Start the fd holder when none answers on `holder_socket`.
    pub start_holder: bool,
    /// Longest exec decision in milliseconds before the failure policy answers.
    pub decision_timeout_ms: u64,
    /// Re-check the file each allowed exec really opens with fanotify (the exec gate), so a
    /// racing thread cannot swap it after the seccomp check.
    pub exec_gate: bool,
    /// Set `vm.memfd_noexec = 2` in the pid namespace of every container whose policy blocks
    /// fileless execs (Linux >= 6.6), so a memfd swapped in after an allowed exec cannot run.
    pub memfd_lockdown: bool,
    /// Namespaces whose containers never get the exec filter, whatever the policy: driftguard's
    /// own, so that its pods can start while the supervisor is down (after a node reboot, with
    /// the failure policy `closed`, nothing else could start them).
    pub exempt_namespaces: Vec<String>,
    /// NRI plugin settings.
    pub nri: NriConfig,
    /// The real runc the wrapper executes.
    pub runc: RuncConfig,
    /// Alert sinks.
    pub alerts: AlertsSection,
    /// Prometheus metrics listen address; empty disables.
    pub metrics_address: String,
}

/// How the daemon connects to the runtime's NRI.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NriConfig {
    /// Connect to the NRI socket (external plugin).
    pub enabled: bool,
    /// The runtime's NRI socket.
    pub socket: PathBuf,
    /// Plugin name.
    pub plugin_name: String,
    /// Plugin index (two digits).
    pub plugin_index: String,
    /// Let the plugin put the seccomp policy into the adjustment on runtimes that accept it.
    pub native_seccomp: bool,
}

/// The runc wrapper's settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuncConfig {
    /// Path of the real runc.
    pub path: PathBuf,
}

/// Where alerts go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsSection {
    /// JSON lines on stdout.
    pub stdout: bool,
    /// JSON lines appended to this file; empty disables.
    pub file: PathBuf,
    /// Rotate the file before it grows past this many MiB; 0 never rotates.
    pub file_max_mib: u64,
    /// Rotated files kept (`events.jsonl.1` … `.N`).
    pub file_keep: u32,
    /// falcosidekick URL (`http://host:port/`); empty disables.
    pub falcosidekick_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: String::new(),
            node: String::new(),
            state_dir: "/var/lib/driftguard".into(),
            policy_path: "/etc/driftguard/policy.yaml".into(),
            supervisor_socket: "/run/driftguard/supervisor.sock".into(),
            holder_socket: "/run/driftguard/fd-holder.sock".into(),
            start_holder: true,
            decision_timeout_ms: 2000,
            exec_gate: true,
            memfd_lockdown: true,
            exempt_namespaces: vec!["driftguard".into()],
            nri: NriConfig::default(),
            runc: RuncConfig::default(),
            alerts: AlertsSection::default(),
            metrics_address: "127.0.0.1:9477".into(),
        }
    }
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enabled: true,
            socket: "/var/run/nri/nri.sock".into(),
            plugin_name: "driftguard".into(),
            plugin_index: "10".into(),
            native_seccomp: true,
        }
    }
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig {
            path: "/usr/sbin/runc".into(),
        }
    }
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            stdout: true,
            file: "/var/lib/driftguard/events.jsonl".into(),
            file_max_mib: driftguard_policy::alerts::DEFAULT_FILE_MAX_BYTES >> 20,
            file_keep: driftguard_policy::alerts::DEFAULT_FILE_KEEP,
            falcosidekick_url: String::new(),
        }
    }
}

impl Config {
    /// Parses a configuration document; `origin` names it in errors. Values are not checked
    /// (see [`Config::validate`]).
    pub fn from_yaml(src: &str, origin: &str) -> Result<Config> {
        if src.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(src).map_err(|e| {
            let rendered = e.render_with_options(serde_saphyr::render_options! {
                source_name: Some(origin),
            });
            anyhow::anyhow!("{origin}: {rendered}")
        })
    }

    /// Reads and parses `path`; values are not checked (see [`Config::load_valid`]).
    pub fn load(path: &Path) -> Result<Config> {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Config::from_yaml(&src, &path.display().to_string())
    }

    /// Reads, parses and checks `path`: what `driftguard config check` accepts.
    pub fn load_valid(path: &Path) -> Result<Config> {
        let config = Config::load(path)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// The file [`Config::resolve`] reads: `explicit`, else `$DRIFTGUARD_CONFIG`, else the
    /// default path when it exists; `None` means the built-in defaults.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            return Some(PathBuf::from(path));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        default.exists().then(|| default.to_path_buf())
    }

    /// The configuration from `explicit`, else `$DRIFTGUARD_CONFIG`, else the default path;
    /// the built-in defaults when the default path does not exist. Values are not checked.
    pub fn resolve(explicit: Option<&Path>) -> Result<Config> {
        match Config::locate(explicit) {
            Some(path) => Config::load(&path),
            None => Ok(Config::default()),
        }
    }

    /// Like [`Config::resolve`], and checks the values: what a daemon starts from.
    pub fn resolve_valid(explicit: Option<&Path>) -> Result<Config> {
        match Config::locate(explicit) {
            Some(path) => Config::load_valid(&path),
            None => Ok(Config::default()),
        }
    }

    /// Checks every value; the error has one line per bad value, each naming `origin`, the
    /// key and the value, and saying what is expected.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = problems.iter().map(|p| format!("{origin}: {p}")).collect();
        anyhow::bail!("{}", lines.join("\n"))
    }

    /// The effective configuration as a YAML document with the file's key names.
    pub fn to_yaml(&self) -> Result<String> {
        let mut text =
            serde_saphyr::to_string(self).context("rendering the configuration as YAML")?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }

    fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        absolute(&mut out, "stateDir", &self.state_dir);
        absolute(&mut out, "policyPath", &self.policy_path);
        // The supervisor also binds `<supervisorSocket>.alive`.
        socket(
            &mut out,
            "supervisorSocket",
            &self.supervisor_socket,
            ".alive".len(),
        );
        socket(&mut out, "holderSocket", &self.holder_socket, 0);
        if self.decision_timeout_ms == 0 {
            out.push(Problem::new(
                "decisionTimeoutMs",
                "0",
                "must be more than 0 milliseconds (default 2000)",
            ));
        }
        for ns in &self.exempt_namespaces {
            if !is_dns_label(ns) {
                out.push(Problem::new(
                    "exemptNamespaces",
                    &format!("{ns:?}"),
                    "is not a Kubernetes namespace name (1 to 63 of a-z, 0-9 and '-', \
                     starting and ending with a letter or digit)",
                ));
            }
        }
        self.nri.problems(&mut out);
        absolute(&mut out, "runc.path", &self.runc.path);
        self.alerts.problems(&mut out);
        if !self.metrics_address.is_empty() && self.metrics_address.parse::<SocketAddr>().is_err() {
            out.push(Problem::new(
                "metricsAddress",
                &format!("{:?}", self.metrics_address),
                "is not IP:PORT (e.g. 127.0.0.1:9477 or [::1]:9477; \"\" disables the endpoint)",
            ));
        }
        out
    }

    /// The node name: configured, else the host name.
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    }
}

impl NriConfig {
    fn problems(&self, out: &mut Vec<Problem>) {
        socket(out, "nri.socket", &self.socket, 0);
        if !driftguard_nri::plugin::valid_name(&self.plugin_name) {
            out.push(Problem::new(
                "nri.pluginName",
                &format!("{:?}", self.plugin_name),
                "must be letters, digits, '_', '.', '+' or '-' (NRI refuses other names)",
            ));
        }
        let index = &self.plugin_index;
        if !driftguard_nri::plugin::valid_index(index) {
            out.push(Problem::new(
                "nri.pluginIndex",
                &format!("{index:?}"),
                "must be two digits, e.g. \"10\" (NRI orders plugins by it)",
            ));
        }
    }
}

impl AlertsSection {
    fn problems(&self, out: &mut Vec<Problem>) {
        if !self.file.as_os_str().is_empty() {
            absolute(out, "alerts.file", &self.file);
        }
        let url = &self.falcosidekick_url;
        if url.is_empty() {
            return;
        }
        if let Err(why) = check_http_url(url) {
            out.push(Problem::new(
                "alerts.falcosidekickUrl",
                &format!("{url:?}"),
                &format!("{why} (e.g. http://falcosidekick.falco:2801/; \"\" disables)"),
            ));
        }
    }
}

/// One bad value: its key path, the value as written and what is expected.
struct Problem {
    key: &'static str,
    value: String,
    expected: String,
}

impl Problem {
    fn new(key: &'static str, value: &str, expected: &str) -> Problem {
        Problem {
            key,
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.key, self.value, self.expected)
    }
}

/// Longest path a unix socket can bind (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

fn absolute(out: &mut Vec<Problem>, key: &'static str, path: &Path) {
    if !path.is_absolute() {
        out.push(Problem::new(
            key,
            &format!("{:?}", path.display().to_string()),
            "must be an absolute path (starting with /)",
        ));
    }
}

/// An absolute socket path short enough to bind, with `suffix` more bytes for a sibling.
fn socket(out: &mut Vec<Problem>, key: &'static str, path: &Path, suffix: usize) {
    absolute(out, key, path);
    let max = MAX_SOCKET_PATH - suffix;
    if path.as_os_str().len() > max {
        out.push(Problem::new(
            key,
            &format!("{:?}", path.display().to_string()),
            &format!("is longer than the {max} bytes a unix socket path may have here"),
        ));
    }
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let edge = |b: Option<&u8>| b.is_some_and(|b| *b != b'-');
    !name.is_empty() && name.len() <= 63 && inner_ok && edge(bytes.first()) && edge(bytes.last())
}

/// What the alert sink accepts (`http://host[:port][/path]`), checked by the sink's own parser.
fn check_http_url(url: &str) -> Result<(), String> {
    match HttpSinkConfig::new(url).check_url() {
        Ok(()) => Ok(()),
        Err(AlertError::Url { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_defaults() {
        let c = Config::from_yaml("", "c.yaml").unwrap();
        assert_eq!(
            c.supervisor_socket,
            PathBuf::from("/run/driftguard/supervisor.sock")
        );
        assert!(c.nri.enabled);
    }

    #[test]
    fn partial_document_keeps_other_defaults() {
        let c = Config::from_yaml("cluster: prod\nnri:\n  socket: /x/nri.sock\n", "c").unwrap();
        assert_eq!(c.cluster, "prod");
        assert_eq!(c.nri.socket, PathBuf::from("/x/nri.sock"));
        assert_eq!(c.nri.plugin_index, "10");
    }

    #[test]
    fn exec_gate_is_on_unless_turned_off() {
        assert!(Config::from_yaml("", "c").unwrap().exec_gate);
        assert!(
            !Config::from_yaml("execGate: false\n", "c")
                .unwrap()
                .exec_gate
        );
    }

    #[test]
    fn memfd_lockdown_is_on_unless_turned_off() {
        assert!(Config::from_yaml("", "c").unwrap().memfd_lockdown);
        let off = Config::from_yaml("memfdLockdown: false\n", "c").unwrap();
        assert!(!off.memfd_lockdown);
    }

    #[test]
    fn unknown_key_is_an_error_with_a_location() {
        let err = Config::from_yaml("cluster: a\nsupervisorSockt: /x\n", "c.yaml").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("c.yaml") && text.contains("supervisorSockt"),
            "{text}"
        );
        assert!(text.contains("line 2"), "{text}");
    }
    #[test]
    fn defaults_are_valid_and_each_bad_value_is_one_line() {
        Config::default().validate("c.yaml").unwrap();
        let c = Config::from_yaml(
            "metricsAddress: nothere\nnri:\n  pluginIndex: \"1\"\nrunc:\n  path: runc\n",
            "c.yaml",
        )
        .unwrap();
        let text = c.validate("c.yaml").unwrap_err().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.starts_with("c.yaml: ")), "{text}");
        assert!(text.contains("nri.pluginIndex: \"1\""), "{text}");
    }

    #[test]
    fn url_and_namespace_checks() {
        assert!(check_http_url("http://falco:2801/").is_ok());
        assert!(check_http_url("http://10.0.0.1").is_ok());
        assert!(check_http_url("https://falco/").is_err());
        assert!(check_http_url("falco:2801").is_err());
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("-x") && !is_dns_label("A") && !is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
