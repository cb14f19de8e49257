//! `driftguard daemon`: one process that wires the NRI plugin, the exec supervisor, the policy
//! watcher, the image index cache and the alert sinks together.
//!
//! Start-up order matters: the policy is loaded first (a broken policy file stops the start
//! with its error, since there is no older version to keep), then the sinks and metrics, then
//! the fd holder (started when none answers, so it outlives this process), then the supervisor
//! socket, and only then the NRI plugin, so no container is announced before its execs can be
//! answered. SIGTERM and SIGINT stop everything cleanly; the fd holder keeps every notify fd,
//! so containers keep their filters and a restarted daemon resumes serving them.
//!
//! Limits: the daemon runs the NRI plugin in external mode only; as a pre-registered plugin
//! (`/opt/nri/plugins/NN-driftguard`) the same binary runs `driftguard nri-plugin`, which talks
//! to a running daemon's policy file but not to its memory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use driftguard_image_index::IndexCache;
use driftguard_nri::{ContainerPolicy, NoHooks, Plugin, PluginConfig};
use driftguard_policy::alerts::{Alerts, AlertsConfig, HttpSinkConfig};
use driftguard_policy::event::{DriftEvent, ParentProcess};
use driftguard_policy::{
    Action, FailurePolicy, Metrics, Policy, PolicyStore, PolicyWatcher, Scope, VerdictClass,
};
use driftguard_seccomp::{Decider, EventSink, ExecEvent, ExecFacts, Supervisor, SupervisorConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;

/// How long the daemon waits for its supervisor to serve (taking back a holder's fds included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long shutdown waits for the NRI plugin and for queued alerts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let node = config.node_name();
    let metrics = Metrics::new();
    let store = PolicyStore::new(initial_policy(&config.policy_path)?);
    let _watcher = PolicyWatcher::start(&config.policy_path, store.clone(), Some(metrics.clone()))
        .with_context(|| format!("watching {}", config.policy_path.display()))?;
    if !config.metrics_address.is_empty() {
        let addr = config.metrics_address.parse().context("metricsAddress")?;
        let bound = metrics.serve(addr).await.context("serving metrics")?;
        info!(address = %bound, "metrics endpoint listening");
    }
    let (alerts, alert_tasks) = Alerts::start(alerts_config(&config, &node), Some(metrics.clone()))
        .await
        .context("starting the alert sinks")?;
    if config.start_holder {
        ensure_holder(&config)?;
    }

    let cancel = CancellationToken::new();
    tokio::spawn(signal_to_cancel(cancel.clone()));
    let supervisor = Supervisor::new(
        supervisor_config(&config),
        Arc::new(MeteredDecider {
            store: store.clone(),
            metrics: metrics.clone(),
        }),
        Arc::new(IndexCache::new(config.state_dir.join("index"))),
        Arc::new(AlertSink {
            alerts,
            cluster: config.cluster.clone(),
            node,
        }),
    );
    let mut ready = supervisor.ready();
    let served = tokio::spawn({
        let cancel = cancel.clone();
        async move { supervisor.run(cancel.cancelled_owned()).await }
    });
    // Ready means this process's supervisor serves: a liveness socket of another daemon (or
    // one a killed daemon left) must not count. An error ends the wait as well.
    match tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|serving| *serving)).await {
        Err(_) => anyhow::bail!(
            "the supervisor did not start serving {} within {READY_TIMEOUT:?}",
            config.supervisor_socket.display()
        ),
        // It stopped before serving (another one serves the socket, say): nothing else starts,
        // NRI included.
        Ok(Err(_)) => {
            served
                .await
                .context("supervisor task")?
                .context("supervisor")?;
            anyhow::bail!("the supervisor stopped before it served")
        }
        Ok(Ok(_)) => {}
    }

    let nri = if config.nri.enabled {
        Some(start_nri(&config, &store, &cancel))
    } else {
        None
    };
    info!(policy = %config.policy_path.display(), "driftguard daemon running");
    let result = served.await.context("supervisor task")?;
    cancel.cancel();
    if let Some(nri) = nri {
        if tokio::time::timeout(SHUTDOWN_GRACE, nri).await.is_err() {
            warn!("the NRI plugin did not stop in time");
        }
    }
    // Notification tasks of running containers keep a handle on the sinks until their fds
    // close, so queued alerts get a bounded time to drain instead of an unbounded wait.
    if tokio::time::timeout(SHUTDOWN_GRACE, alert_tasks.join())
        .await
        .is_err()
    {
        warn!("alert sinks did not drain in time");
    }
    info!("driftguard daemon stopped");
    result.context("supervisor")
}

/// The policy at start: the file when it exists (errors stop the start), else the default
/// policy, which the watcher replaces as soon as the file appears.
fn initial_policy(path: &Path) -> Result<Policy> {
    if path.exists() {
        return Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    warn!(path = %path.display(), "policy file missing; using the default policy until it appears");
    Ok(Policy::default_policy())
}

fn alerts_config(config: &Config, node: &str) -> AlertsConfig {
    let file = &config.alerts.file;
    let url = &config.alerts.falcosidekick_url;
    AlertsConfig {
        stdout: config.alerts.stdout,
        file: (!file.as_os_str().is_empty()).then(|| file.clone()),
        http: (!url.is_empty()).then(|| HttpSinkConfig::new(url)),
        hostname: node.to_string(),
        file_max_bytes: config.alerts.file_max_mib.saturating_mul(1 << 20),
        file_keep: config.alerts.file_keep,
        ..AlertsConfig::default()
    }
}

fn supervisor_config(config: &Config) -> SupervisorConfig {
    let mut sc = SupervisorConfig::new(
        config.supervisor_socket.clone(),
        Some(config.holder_socket.clone()),
    );
    sc.decision_timeout = Duration::from_millis(config.decision_timeout_ms);
    sc.exec_gate = config.exec_gate;
    sc.memfd_lockdown = config.memfd_lockdown;
    sc
}

/// Starts `driftguard fd-holder` in its own process group unless one already answers, and
/// records its pid in `<stateDir>/fd-holder.pid`.
fn ensure_holder(config: &Config) -> Result<()> {
    let socket = &config.holder_socket;
    std::fs::create_dir_all(&config.state_dir)?;
    // Two daemons starting at once must not both start a holder: the check and the start
    // happen under a lock (released when this function returns or the process dies).
    let lock_path = config.state_dir.join("fd-holder.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if driftguard_seccomp::holder::is_running(socket) {
        info!(socket = %socket.display(), "fd holder already running");
        return Ok(());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.state_dir.join("fd-holder.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .args(["fd-holder", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the fd holder")?;
    std::fs::write(
        config.state_dir.join("fd-holder.pid"),
        format!("{}\n", child.id()),
    )?;
    for _ in 0..100 {
        if driftguard_seccomp::holder::is_running(socket) {
            info!(pid = child.id(), socket = %socket.display(), "fd holder started");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "the fd holder (pid {}) did not open {}",
        child.id(),
        socket.display()
    )
}

fn start_nri(
    config: &Config,
    store: &PolicyStore,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let listener = config.supervisor_socket.display().to_string();
    let plugin = Plugin::new(
        PluginConfig {
            cluster: config.cluster.clone(),
            listener_path: config.nri.native_seccomp.then_some(listener),
            ..PluginConfig::default()
        },
        Arc::new(PolicyRules(store.clone())),
        Arc::new(NoHooks),
    );
    let (socket, name, idx) = (
        config.nri.socket.clone(),
        config.nri.plugin_name.clone(),
        config.nri.plugin_index.clone(),
    );
    let plugin_cancel = plugin.cancel_token();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::spawn(async move {
            cancel.cancelled().await;
            plugin_cancel.cancel();
        });
        if let Err(err) = plugin.run_external(&socket, &name, &idx).await {
            error!(error = %err, "NRI plugin stopped");
        }
    })
}

/// Cancels `cancel` on SIGTERM or SIGINT.
pub(crate) async fn signal_to_cancel(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => info!(signal = "SIGINT", "shutting down"),
    }
    cancel.cancel();
}

/// The NRI plugin's policy question, answered from the live policy.
///
/// Every container is monitored (gets the notify filter) whatever its rule, so a later policy
/// change reaches running containers; `ignore` is applied when an exec is decided.
pub(crate) struct PolicyRules(pub(crate) PolicyStore);

impl ContainerPolicy for PolicyRules {
    fn rule_for(&self, scope: &Scope) -> (String, Action) {
        let policy = self.0.current();
        let rule = policy.evaluate(scope);
        (rule.name.clone(), rule.action)
    }

    fn monitored(&self, _scope: &Scope) -> bool {
        true
    }
}

/// Decides with the live policy and records each decision's latency and outcome.
struct MeteredDecider {
    store: PolicyStore,
    metrics: Metrics,
}

impl Decider for MeteredDecider {
    fn decide(&self, scope: &Scope, facts: &ExecFacts<'_>) -> driftguard_policy::Decision {
        let started = Instant::now();
        self.metrics.exec_seen();
        let decision = self.store.current().decide(scope, facts);
        self.metrics.record_decision(&decision, started.elapsed());
        decision
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.store.current().failure_policy()
    }
}

/// Turns the supervisor's exec events into alerts.
struct AlertSink {
    alerts: Alerts,
    cluster: String,
    node: String,
}

impl EventSink for AlertSink {
    fn emit(&self, event: ExecEvent) {
        let alert = drift_event(event, &self.cluster, &self.node);
        self.alerts.send(alert);
    }
}

fn drift_event(event: ExecEvent, cluster: &str, node: &str) -> DriftEvent {
    let scope = Scope {
        cluster: cluster.to_string(),
        namespace: event.namespace,
        pod_name: event.pod,
        container_name: event.container,
        image_name: event.image,
        ..Scope::default()
    };
    let decision = driftguard_policy::Decision {
        rule: if event.rule.is_empty() {
            "failure-policy".into()
        } else {
            event.rule
        },
        action: event.action.unwrap_or(Action::Block),
        class: event.class.unwrap_or(VerdictClass::Undecided),
        outcome: event.outcome,
        allow_listed: event.allow_listed,
    };
    let mut alert = DriftEvent::from_decision(&decision, &scope);
    alert.container_id = event.container_id;
    alert.node = node.to_string();
    alert.pid = event.pid;
    alert.path = event.path;
    alert.set_argv(event.argv);
    alert.hash = event.hash;
    alert.error = event.error;
    alert.exec_gate = event.exec_gate;
    alert.parent = event.parent.map(|(pid, exe)| ParentProcess {
        pid,
        exe: (!exe.is_empty()).then_some(exe),
    });
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_event(exec_gate: bool) -> ExecEvent {
        ExecEvent {
            container_id: "c1".into(),
            namespace: "demo".into(),
            pod: "web-0".into(),
            container: "app".into(),
            image: "registry.example/web:1".into(),
            pid: 4242,
            path: "/tmp/evil".into(),
            argv: vec!["/tmp/evil".into(), "-x".into()],
            class: Some(VerdictClass::NewFile),
            hash: Some("ab".repeat(32)),
            rule: "block-demo".into(),
            action: Some(Action::Block),
            outcome: driftguard_policy::Outcome::Deny,
            allow_listed: false,
            error: None,
            parent: Some((4000, "/bin/busybox".into())),
            exec_gate,
        }
    }

    #[test]
    fn alerts_carry_every_field_of_the_supervisor_event() {
        let alert = drift_event(exec_event(true), "prod", "node-a");
        assert_eq!(alert.rule, "block-demo");
        assert_eq!(alert.class, VerdictClass::NewFile);
        assert_eq!((alert.pid, alert.path.as_str()), (4242, "/tmp/evil"));
        assert_eq!(
            (alert.cluster.as_str(), alert.node.as_str()),
            ("prod", "node-a")
        );
        assert_eq!(alert.parent.as_ref().map(|p| p.pid), Some(4000));
        assert!(alert.exec_gate);
        let json = serde_json::to_value(&alert).expect("json");
        assert_eq!(json["exec_gate"], true);
        assert_eq!(
            alert.to_falco("node-a")["output_fields"]["driftguard.exec_gate"],
            true
        );
        assert!(!drift_event(exec_event(false), "prod", "node-a").exec_gate);
    }

    #[test]
    fn a_failure_policy_answer_is_reported_as_such() {
        let mut event = exec_event(false);
        event.rule.clear();
        event.class = None;
        event.action = None;
        event.error = Some("decision timed out after 2s".into());
        let alert = drift_event(event, "prod", "node-a");
        assert_eq!(alert.rule, "failure-policy");
        assert_eq!(alert.class, VerdictClass::Undecided);
        assert_eq!(alert.error.as_deref(), Some("decision timed out after 2s"));
    }
}
