//! `driftguard nri-plugin` (the NRI plugin alone) and `driftguard config check|show`.
//!
//! The NRI plugin can run inside the daemon (external mode, `nri.enabled: true`) or as its own
//! process. As its own process it has two modes:
//!
//! - **pre-registered**: containerd starts every executable in its NRI `plugin_path`
//!   (`/opt/nri/plugins/10-driftguard`, a symlink to this binary) with no arguments, stdout and
//!   stderr on `/dev/null`, and an environment of only `NRI_PLUGIN_NAME`, `NRI_PLUGIN_IDX` and
//!   `NRI_PLUGIN_SOCKET=3`. `main` recognises that (no subcommand and `NRI_PLUGIN_SOCKET` set)
//!   and comes here. The configuration is the YAML document containerd passes in Configure (the
//!   content of `<plugin_config_path>/10-driftguard.conf`); when that file is absent or empty,
//!   `$DRIFTGUARD_CONFIG` or `/etc/driftguard/config.yaml` is used, else the built-in defaults.
//!   Logs go to `<stateDir>/nri-plugin.log`; lines written before Configure names the state
//!   directory are kept in memory and written there once it is known.
//! - **external**: `driftguard nri-plugin [--config FILE]` from a terminal or a unit connects to
//!   `nri.socket` and reconnects until SIGTERM, logging to stderr.
//!
//! Either way the plugin answers from the policy file named by `policyPath`, watched and
//! reloaded; it shares no memory with the daemon, which then runs with `nri.enabled: false`.
//!
//! Limits: containerd does not restart a pre-registered plugin that exits; the process ends
//! when containerd closes the connection (containerd restart) and containerd starts a new one.
//! A configuration that does not parse fails Configure, and containerd drops the plugin; the
//! reason is in containerd's log and in the plugin's log.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Args, Subcommand};
use driftguard_nri::{ConfigureHook, NoHooks, Plugin, PluginConfig};
use driftguard_policy::{Policy, PolicyStore, PolicyWatcher};
use tracing::{error, info, warn};

use crate::config::Config;

/// Environment variable containerd sets for a plugin it launched itself.
const LAUNCHED_ENV: &str = "NRI_PLUGIN_SOCKET";
/// Log file of a pre-registered plugin, in the configuration's `stateDir`.
const LOG_FILE: &str = "nri-plugin.log";
/// Log bytes kept in memory before the log file is known.
const EARLY_LOG_LIMIT: usize = 256 * 1024;

/// Arguments of `driftguard nri-plugin`.
#[derive(Debug, Args, Default)]
pub struct NriPluginArgs {
    /// Configuration file (default: $DRIFTGUARD_CONFIG, else /etc/driftguard/config.yaml when it
    /// exists, else built-in defaults). A pre-registered plugin's conf.d file takes precedence.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Arguments of `driftguard config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file: unknown keys and bad values are errors, one line each with
    /// the file, the key and the value.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the effective configuration as YAML: the file's values over the built-in defaults.
    Show {
        /// The configuration file; the built-in defaults when absent.
        file: Option<PathBuf>,
    },
}

/// Whether containerd launched this process as a pre-registered NRI plugin.
pub fn launched_by_runtime() -> bool {
    std::env::var_os(LAUNCHED_ENV).is_some()
}

/// Whether `command` sets up its own logging instead of the usual stderr logs.
pub fn owns_logging(command: &super::Command) -> bool {
    matches!(command, super::Command::NriPlugin(_)) && launched_by_runtime()
}

/// Runs `driftguard config`.
pub fn run_config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Check { file } => {
            Config::load_valid(&file)?;
            println!("{}: valid", file.display());
        }
        ConfigCommand::Show { file } => {
            let config = match file {
                Some(file) => Config::load_valid(&file)?,
                None => Config::default(),
            };
            print!("{}", config.to_yaml()?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `driftguard nri-plugin`: pre-registered when launched by the runtime, else external.
pub fn run(args: NriPluginArgs) -> anyhow::Result<ExitCode> {
    if launched_by_runtime() {
        return Ok(run_launched(args.config));
    }
    let config = Config::resolve_valid(args.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run_external(config))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_external(config: Config) -> anyhow::Result<()> {
    let plugin = new_plugin(Ok(config.clone()), None);
    let cancel = plugin.cancel_token();
    tokio::spawn(crate::daemon::signal_to_cancel(cancel));
    info!(socket = %config.nri.socket.display(), "driftguard nri plugin starting");
    let (name, idx) = (&config.nri.plugin_name, &config.nri.plugin_index);
    plugin.run_external(&config.nri.socket, name, idx).await?;
    Ok(())
}

/// Runs as a plugin containerd launched from its plugin directory; never writes to stderr.
pub fn run_launched(explicit: Option<PathBuf>) -> ExitCode {
    let log = PluginLog::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(log.clone())
        .init();
    let fallback = Config::resolve(explicit.as_deref());
    let fallback_dir = fallback
        .as_ref()
        .map(|c| c.state_dir.clone())
        .unwrap_or_else(|_| Config::default().state_dir);
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(serve_launched(fallback, log.clone())),
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    };
    // Configure never came (or named no usable directory): keep the lines somewhere.
    log.open_in(&fallback_dir);
    code
}

async fn serve_launched(fallback: anyhow::Result<Config>, log: PluginLog) -> ExitCode {
    let plugin = new_plugin(fallback.map_err(|e| format!("{e:#}")), Some(log));
    tokio::spawn(crate::daemon::signal_to_cancel(plugin.cancel_token()));
    info!(
        pid = std::process::id(),
        "driftguard nri plugin launched by the runtime"
    );
    match plugin.run_preregistered().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            info!(reason = %err, "driftguard nri plugin stopped");
            ExitCode::FAILURE
        }
    }
}

/// The plugin with a default policy until Configure, when [`FromConfig`] loads the real one.
fn new_plugin(fallback: Result<Config, String>, log: Option<PluginLog>) -> Plugin {
    let store = PolicyStore::new(Policy::default_policy());
    let cluster = fallback
        .as_ref()
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let plugin = Plugin::new(
        PluginConfig {
            cluster,
            ..PluginConfig::default()
        },
        Arc::new(crate::daemon::PolicyRules(store.clone())),
        Arc::new(NoHooks),
    );
    plugin.set_configure_hook(Arc::new(FromConfig {
        fallback,
        store,
        watcher: Mutex::new(None),
        log,
    }));
    plugin
}

/// Reads the configuration at Configure: the runtime's document when it is not empty, else the
/// configuration resolved at start; then loads and watches its policy file.
struct FromConfig {
    fallback: Result<Config, String>,
    store: PolicyStore,
    watcher: Mutex<Option<PolicyWatcher>>,
    log: Option<PluginLog>,
}

impl ConfigureHook for FromConfig {
    fn configure(
        &self,
        runtime_config: &str,
        current: &PluginConfig,
    ) -> Result<PluginConfig, String> {
        let config = if runtime_config.trim().is_empty() {
            self.fallback.clone()?
        } else {
            let origin = "the runtime's plugin configuration (conf.d)";
            let config = Config::from_yaml(runtime_config, origin).map_err(|e| format!("{e:#}"))?;
            config.validate(origin).map_err(|e| format!("{e:#}"))?;
            config
        };
        if let Some(log) = &self.log {
            log.open_in(&config.state_dir);
        }
        let path = &config.policy_path;
        let policy = if path.exists() {
            Policy::load(path).map_err(|e| e.to_string())?
        } else {
            warn!(path = %path.display(), "policy file missing; default policy until it appears");
            Policy::default_policy()
        };
        self.store.replace(policy);
        let watcher = PolicyWatcher::start(path, self.store.clone(), None)
            .map_err(|e| format!("watching {}: {e}", path.display()))?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(watcher);
        }
        info!(cluster = %config.cluster, policy = %path.display(), "plugin configuration applied");
        let listener = config.supervisor_socket.display().to_string();
        Ok(PluginConfig {
            cluster: config.cluster.clone(),
            listener_path: config.nri.native_seccomp.then_some(listener),
            ..current.clone()
        })
    }
}

/// Log destination of a launched plugin: memory until [`PluginLog::open_in`], then a file.
#[derive(Clone, Default)]
struct PluginLog(Arc<Mutex<LogTarget>>);

enum LogTarget {
    Early(Vec<u8>),
    File(File),
}

impl Default for LogTarget {
    fn default() -> Self {
        LogTarget::Early(Vec::new())
    }
}

impl PluginLog {
    /// Switches to `<dir>/nri-plugin.log` (appending) and writes what was kept in memory;
    /// does nothing once a file is open or when it cannot be opened.
    fn open_in(&self, dir: &Path) {
        let Ok(mut target) = self.0.lock() else {
            return;
        };
        let LogTarget::Early(early) = &*target else {
            return;
        };
        let opened = std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(LOG_FILE))
        });
        if let Ok(mut file) = opened {
            let _ = file.write_all(early);
            *target = LogTarget::File(file);
        }
    }
}

impl Write for PluginLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Ok(mut target) = self.0.lock() else {
            return Ok(buf.len());
        };
        match &mut *target {
            LogTarget::File(file) => file.write(buf),
            LogTarget::Early(early) => {
                if early.len() + buf.len() <= EARLY_LOG_LIMIT {
                    early.extend_from_slice(buf);
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().as_deref_mut() {
            Ok(LogTarget::File(file)) => file.flush(),
            _ => Ok(()),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for PluginLog {
    type Writer = PluginLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftguard_nri::ContainerPolicy;

    #[test]
    fn early_lines_reach_the_file_once_the_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PluginLog::default();
        log.write_all(b"before\n").unwrap();
        log.open_in(&dir.path().join("state"));
        log.write_all(b"after\n").unwrap();
        log.open_in(dir.path());
        let text = std::fs::read_to_string(dir.path().join("state").join(LOG_FILE)).unwrap();
        assert_eq!(text, "before\nafter\n");
        assert!(!dir.path().join(LOG_FILE).exists());
    }

    #[test]
    fn runtime_document_wins_over_the_fallback_and_loads_its_policy() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nspec:\n  rules: []\n  \
             defaultRule:\n    name: everything\n    action: block\n",
        )
        .unwrap();
        let hook = FromConfig {
            fallback: Ok(Config::default()),
            store: PolicyStore::new(Policy::default_policy()),
            watcher: Mutex::new(None),
            log: None,
        };
        let doc = format!(
            "cluster: conf-d\npolicyPath: {}\nnri:\n  nativeSeccomp: false\n",
            policy.display()
        );
        let out = hook.configure(&doc, &PluginConfig::default()).unwrap();
        assert_eq!(out.cluster, "conf-d");
        assert_eq!(out.listener_path, None);
        let rules = crate::daemon::PolicyRules(hook.store.clone());
        assert_eq!(
            rules.rule_for(&driftguard_nri::Scope::default()).0,
            "everything"
        );

        let err = hook
            .configure("clustr: x\n", &PluginConfig::default())
            .unwrap_err();
        assert!(err.contains("conf.d") && err.contains("clustr"), "{err}");
    }

    #[test]
    fn empty_document_uses_the_fallback_and_reports_its_error() {
        let hook = FromConfig {
            fallback: Err("/etc/driftguard/config.yaml: line 3: bad".into()),
            store: PolicyStore::new(Policy::default_policy()),
            watcher: Mutex::new(None),
            log: None,
        };
        let err = hook
            .configure("  \n", &PluginConfig::default())
            .unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }
}
