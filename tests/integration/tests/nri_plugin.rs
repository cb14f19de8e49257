//! The NRI plugin against the private containerd (2.1.9 by default, 1.7.24 with
//! `DG_CONTAINERD=1.7.24`): registration, synchronization of pods that existed before the
//! plugin, CreateContainer with the pod's identity, the annotation adjustment in the
//! container's `config.json`, and recovery from a containerd restart.
//!
//! The two tests run one after the other (a lock): the restart test takes containerd down.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use driftguard_nri::{Action, FixedPolicy, Plugin, PluginConfig, PluginEvent, PluginHooks};
use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::runtime::runtime_sh;
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};

static SERIAL: Mutex<()> = Mutex::new(());
const RULE: &str = "nri-test-rule";

struct Recorder(Mutex<mpsc::Sender<PluginEvent>>);

impl PluginHooks for Recorder {
    fn on_event(&self, event: PluginEvent) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(event);
        }
    }
}

/// The plugin running as an external plugin on its own tokio runtime.
struct Running {
    events: mpsc::Receiver<PluginEvent>,
    plugin: Arc<Plugin>,
    task: tokio::task::JoinHandle<Result<(), driftguard_nri::PluginError>>,
    tokio: tokio::runtime::Runtime,
}

impl Running {
    fn start(rt: &Runtime, idx: &str) -> Result<Running> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (tx, events) = mpsc::channel();
        let config = PluginConfig {
            cluster: "lab".into(),
            listener_path: Some("/run/driftguard/notify.sock".into()),
            ..Default::default()
        };
        let policy = Arc::new(FixedPolicy {
            rule: RULE.into(),
            action: Action::Alert,
        });
        let hooks = Arc::new(Recorder(Mutex::new(tx)));
        let plugin = {
            let _guard = tokio.enter();
            Arc::new(Plugin::new(config, policy, hooks))
        };
        let socket = rt.nri_socket.clone();
        let idx = idx.to_string();
        let task = tokio.spawn({
            let plugin = plugin.clone();
            async move { plugin.run_external(&socket, "driftguard-test", &idx).await }
        });
        Ok(Running {
            events,
            plugin,
            task,
            tokio,
        })
    }

    /// Waits for the first event `pick` accepts.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(PluginEvent) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return Ok(found);
                    }
                }
                Err(_) => bail!("no {what} event within {timeout:?}"),
            }
        }
    }

    fn stop(self) -> Result<()> {
        self.plugin.cancel_token().cancel();
        self.tokio.block_on(self.task)??;
        Ok(())
    }
}

fn configured_and_synchronized(
    plugin: &Running,
    rt: &Runtime,
) -> Result<(
    Vec<driftguard_nri::PodInfo>,
    Vec<driftguard_nri::ContainerInfo>,
)> {
    let info = plugin.wait("Configured", Duration::from_secs(60), |e| match e {
        PluginEvent::Configured(info) => Some(info),
        _ => None,
    })?;
    assert_eq!(info.name, "containerd");
    assert!(
        info.version.starts_with(&rt.containerd_version),
        "{} vs {}",
        info.version,
        rt.containerd_version
    );
    assert!(
        !info.applies_seccomp_adjustment(),
        "containerd {} has no NRI seccomp",
        info.version
    );
    plugin.wait("Synchronized", Duration::from_secs(10), |e| match e {
        PluginEvent::Synchronized { pods, containers } => Some((pods, containers)),
        _ => None,
    })
}

/// Creates a labelled pod with one container and checks the plugin's view and adjustment.
fn create_and_check(plugin: &Running, rt: &Runtime, prefix: &str) -> Result<()> {
    let cri = rt.cri()?;
    let spec = PodSpec::new(prefix, "nri-tests")
        .label("app", "web")
        .label("tier", "front");
    let pod_name = spec.name.clone();
    let pod = cri.run_pod(&spec)?;
    let ctr = pod.start_container(&ContainerSpec::shell("app", BUSYBOX, "sleep 30"))?;
    let created = plugin.wait("Created", Duration::from_secs(10), |e| match e {
        PluginEvent::Created(info) if info.id == ctr.id() => Some(info),
        _ => None,
    })?;
    assert_eq!(created.pod_id, pod.id());
    assert_eq!(created.scope.namespace, "nri-tests");
    assert_eq!(created.scope.pod_name, pod_name);
    assert_eq!(
        created.scope.pod_labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        created.scope.pod_labels.get("tier").map(String::as_str),
        Some("front")
    );
    assert_eq!(created.scope.container_name, "app");
    assert_eq!(created.scope.image_name, BUSYBOX);
    assert_eq!(created.rule, RULE);
    assert_eq!(created.seccomp_path, "wrapper");

    let config = rt.config_json(ctr.id())?;
    let ann = config["annotations"]
        .as_object()
        .context("config.json has no annotations")?;
    let get = |k: &str| {
        ann.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("<missing>")
            .to_string()
    };
    assert_eq!(get("driftguard.dev/cluster"), "lab");
    assert_eq!(get("driftguard.dev/namespace"), "nri-tests");
    assert_eq!(get("driftguard.dev/pod-name"), pod_name);
    assert_eq!(get("driftguard.dev/pod-uid"), created.scope.pod_uid);
    assert_eq!(get("driftguard.dev/container-name"), "app");
    assert_eq!(get("driftguard.dev/image-name"), BUSYBOX);
    assert_eq!(get("driftguard.dev/rule"), RULE);
    assert_eq!(get("driftguard.dev/monitored"), "true");
    assert_eq!(get("driftguard.dev/seccomp-path"), "wrapper");
    let labels: serde_json::Value = serde_json::from_str(&get("driftguard.dev/pod-labels"))?;
    assert_eq!(labels["app"], "web");
    Ok(())
}

#[test]
fn nri_plugin_registers_synchronizes_and_annotates_new_containers() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = Runtime::shared();
    let cri = rt.cri()?;

    // A pod that exists before the plugin starts must come in the synchronization.
    let old_spec = PodSpec::new("nri-old", "nri-tests");
    let old_pod = cri.run_pod(&old_spec)?;
    let old_ctr = old_pod.start_container(&ContainerSpec::shell("old", BUSYBOX, "sleep 30"))?;

    let plugin = Running::start(rt, "91")?;
    let (pods, containers) = configured_and_synchronized(&plugin, rt)?;
    let pod = pods
        .iter()
        .find(|p| p.id == old_pod.id())
        .context("old pod not synchronized")?;
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str()),
        (old_spec.name.as_str(), "nri-tests")
    );
    let ctr = containers
        .iter()
        .find(|c| c.id == old_ctr.id())
        .context("old container not synchronized")?;
    assert_eq!(ctr.scope.pod_name, old_spec.name);
    assert_eq!(ctr.scope.container_name, "old");

    create_and_check(&plugin, rt, "nri-new")?;
    plugin.stop()
}

#[test]
fn nri_plugin_reconnects_after_containerd_restarts() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = Runtime::shared();
    let plugin = Running::start(rt, "92")?;
    configured_and_synchronized(&plugin, rt)?;

    runtime_sh(&["down"], &[])?;
    plugin.wait("Disconnected", Duration::from_secs(30), |e| match e {
        PluginEvent::Disconnected { reason } => Some(reason),
        _ => None,
    })?;
    runtime_sh(&["up"], &[])?;

    configured_and_synchronized(&plugin, rt)?;
    assert!(
        !plugin.task.is_finished(),
        "the plugin stopped instead of reconnecting"
    );
    create_and_check(&plugin, rt, "nri-after-restart")?;
    plugin.stop()
}
