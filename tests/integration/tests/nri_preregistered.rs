//! driftguard as a pre-registered NRI plugin: containerd launches the `driftguard` binary from
//! its plugin directory (a symlink named `10-driftguard`) with no arguments and an empty
//! environment, and passes `10-driftguard.conf` (a driftguard configuration document) in
//! Configure.
//!
//! Runs on a private containerd instance of its own (`DG_DEV_DIR=/var/lib/driftguard-dev-prereg`)
//! because containerd launches pre-registered plugins only at its start: the plugin and its
//! configuration are put in place before `up`, and the instance is taken down at the end.
//! Checked: containerd reports the plugin registered; the plugin logs its registration and
//! configuration to its state directory; a new container's `config.json` carries the identity
//! annotations with the cluster from the conf.d document and the rule from the policy file it
//! names; a policy edit is picked up by the running plugin. Synchronization is not required:
//! containerd 1.7.24 sent none to the plugin at its start (no pods existed), 2.1.9 did.
//! `DG_CONTAINERD=1.7.24` runs it against containerd 1.7.24.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::runtime::{repo_root, runtime_sh};
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};

const DEV_DIR: &str = "/var/lib/driftguard-dev-prereg";
const PLUGIN: &str = "10-driftguard";
const NAMESPACE: &str = "prereg-tests";

fn env() -> [(&'static str, &'static str); 1] {
    [("DG_DEV_DIR", DEV_DIR)]
}

/// Builds the `driftguard` binary into this test's own target directory and returns its path.
fn driftguard_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // <target>/debug/deps/nri_preregistered-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a cargo target directory")?;
    let target_dir = profile_dir.parent().context("cargo target directory")?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "driftguard", "--bin", "driftguard"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(repo_root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the driftguard binary failed");
    }
    Ok(profile_dir.join("driftguard"))
}

fn policy(rule: &str) -> String {
    format!(
        "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nspec:\n  rules:\n    - name: {rule}\n      \
         action: alert\n      scope:\n        - field: namespace\n          operator: equals\n          \
         value: {NAMESPACE}\n  defaultRule:\n    name: default\n    action: ignore\n"
    )
}

/// The instance, taken down (and its plugin removed) when the test ends, whatever the outcome.
struct Instance {
    plugin_link: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(err) = runtime_sh(&["down"], &env()) {
            eprintln!("nri_preregistered: runtime.sh down: {err:#}");
        }
        let _ = std::fs::remove_file(&self.plugin_link);
    }
}

/// Waits until `file` contains `needle` after byte `from`.
fn wait_for_text(file: &Path, from: usize, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read(file).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
        if tail.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let lines: Vec<&str> = tail.lines().collect();
            let last = lines[lines.len().saturating_sub(20)..].join("\n");
            bail!(
                "{} has no {needle:?} after {timeout:?}; last lines:\n{last}",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn annotations_of(
    rt: &Runtime,
    container_id: &str,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let config = rt.config_json(container_id)?;
    config["annotations"]
        .as_object()
        .cloned()
        .context("config.json has no annotations")
}

fn annotation<'a>(ann: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    ann.get(key).and_then(|v| v.as_str()).unwrap_or("<missing>")
}

#[test]
fn containerd_launches_the_preregistered_plugin_with_its_conf_d_configuration() -> Result<()> {
    let binary = driftguard_binary()?;

    // containerd launches plugins only when it starts: stop a leftover instance first.
    runtime_sh(&["down"], &env())?;
    let paths = Runtime::from_env_output(&runtime_sh(&["env"], &env())?)?;
    let plugin_dir = paths.nri_plugin_dir.clone();
    let conf_dir = plugin_dir
        .parent()
        .context("plugin dir has no parent")?
        .join("conf.d");
    let state_dir = Path::new(DEV_DIR).join("prereg-state");
    let _ = std::fs::remove_dir_all(&state_dir);
    for dir in [&plugin_dir, &conf_dir, &state_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    let policy_path = state_dir.join("policy.yaml");
    std::fs::write(&policy_path, policy("prereg-rule"))?;
    let conf = format!(
        "cluster: prereg-lab\nstateDir: {state}\npolicyPath: {policy}\nsupervisorSocket: \
         {state}/supervisor.sock\nnri:\n  enabled: false\n",
        state = state_dir.display(),
        policy = policy_path.display()
    );
    std::fs::write(conf_dir.join(format!("{PLUGIN}.conf")), conf)?;
    let plugin_link = plugin_dir.join(PLUGIN);
    let _ = std::fs::remove_file(&plugin_link);
    std::os::unix::fs::symlink(&binary, &plugin_link)?;
    let instance = Instance { plugin_link };

    let log_start = std::fs::metadata(&paths.log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let rt = Runtime::up(&env())?;
    // containerd logs `plugin "pre-connected:10-driftguard[PID]" registered as "10-driftguard"`.
    wait_for_text(
        &rt.log,
        log_start,
        &format!("registered as \\\"{PLUGIN}\\\""),
        Duration::from_secs(30),
    )?;
    let plugin_log = state_dir.join("nri-plugin.log");
    wait_for_text(
        &plugin_log,
        0,
        "plugin configuration applied",
        Duration::from_secs(10),
    )?;
    wait_for_text(
        &plugin_log,
        0,
        "registered with the runtime",
        Duration::from_secs(10),
    )?;

    let cri = rt.cri()?;
    let spec = PodSpec::new("prereg", NAMESPACE).label("app", "web");
    let pod_name = spec.name.clone();
    let pod = cri.run_pod(&spec)?;
    let ctr = pod.start_container(&ContainerSpec::shell("app", BUSYBOX, "sleep 30"))?;
    let ann = annotations_of(&rt, ctr.id())?;
    assert_eq!(annotation(&ann, "driftguard.dev/cluster"), "prereg-lab");
    assert_eq!(annotation(&ann, "driftguard.dev/namespace"), NAMESPACE);
    assert_eq!(annotation(&ann, "driftguard.dev/pod-name"), pod_name);
    assert_eq!(annotation(&ann, "driftguard.dev/container-name"), "app");
    assert_eq!(annotation(&ann, "driftguard.dev/image-name"), BUSYBOX);
    assert_eq!(annotation(&ann, "driftguard.dev/rule"), "prereg-rule");
    assert_eq!(annotation(&ann, "driftguard.dev/monitored"), "true");
    assert_eq!(annotation(&ann, "driftguard.dev/seccomp-path"), "wrapper");

    // The plugin watches the policy file its configuration names.
    let before = std::fs::metadata(&plugin_log)?.len() as usize;
    let staged = state_dir.join("policy.yaml.new");
    std::fs::write(&staged, policy("prereg-rule-2"))?;
    std::fs::rename(&staged, &policy_path)?;
    wait_for_text(
        &plugin_log,
        before,
        "policy reloaded",
        Duration::from_secs(10),
    )?;
    let second = pod.start_container(&ContainerSpec::shell("second", BUSYBOX, "sleep 30"))?;
    let ann = annotations_of(&rt, second.id())?;
    assert_eq!(annotation(&ann, "driftguard.dev/rule"), "prereg-rule-2");

    drop(second);
    drop(ctr);
    drop(pod);
    drop(instance);
    Ok(())
}
