//! The daemon's configuration file (`/etc/driftguard/config.yaml` by default).
//!
//! One YAML document; every key is optional and has the default shown in
//! `contrib/config/config.yaml`. Unknown keys are errors (a typo must not silently fall back to
//! a default), reported with the file, line and column. The runc wrapper reads the same file to
//! learn the supervisor socket, the real runc and the policy (for its failure policy).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/driftguard/config.yaml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "DRIFTGUARD_CONFIG";

/// The daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RuncConfig {
    /// Path of the real runc.
    pub path: PathBuf,
}

/// Where alerts go.
#[derive(Debug, Clone, Deserialize)]
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
    /// Parses a configuration document; `origin` names it in errors.
    pub fn from_yaml(src: &str, origin: &str) -> Result<Config> {
        if src.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(src).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        Config::from_yaml(&src, &path.display().to_string())
    }

    /// The configuration from `explicit`, else `$DRIFTGUARD_CONFIG`, else the default path;
    /// the built-in defaults when the default path does not exist.
    pub fn resolve(explicit: Option<&Path>) -> Result<Config> {
        if let Some(path) = explicit {
            return Config::load(path);
        }
        if let Some(path) = std::env::var_os(CONFIG_ENV) {
            return Config::load(Path::new(&path));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            Config::load(default)
        } else {
            Ok(Config::default())
        }
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
}
