//! Shared fixture of the end-to-end scenarios: one protected node per test binary, the test
//! policy, and the checks every scenario repeats (denied, ran, alerted, silent).
//!
//! Invariants:
//! - the node ([`driftguard_testkit::Node`]) is started once, on first use, and lives in a
//!   static `RwLock`: scenarios that only run pods take it shared ([`shared`]); scenarios that
//!   rewrite the policy or restart the daemon take it exclusively ([`exclusive`]) and leave the
//!   node with the base policy ([`Knobs::default`]) and a running daemon;
//! - each scenario runs its own pod in its own namespace, so alerts are told apart by
//!   container id;
//! - a static is never dropped, so the daemon is stopped by a process exit hook instead of
//!   `Node`'s `Drop`.
//!
//! Limits: "silent" is checked with a sentinel — a dropped binary executed after the exec under
//! test, whose alert must arrive — so it relies on the alert sink writing one container's alerts
//! in decision order; in pods whose rule ignores drift no sentinel can alert and a fixed wait
//! ([`quiet_period`]) is used instead.

#![allow(dead_code)] // each test binary uses a different part of the support module

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use driftguard_testkit::cri::{Container, ExecResult};
use driftguard_testkit::images::SCENARIO;
use driftguard_testkit::{ContainerSpec, Node};
use serde_json::Value;

/// Name of the test policy's default rule (action `block`).
pub const DEFAULT_RULE: &str = "block-drift";
/// Namespace whose drift an `ignore` rule lets through.
pub const IGNORED_NAMESPACE: &str = "e2e-s12-ignore";
/// Pod label (`key=value`) whose drift an `ignore` rule lets through.
pub const IGNORED_LABEL: (&str, &str) = ("driftguard-e2e", "ignore-drift");
/// Namespace of the `block` rule with an allow list.
pub const ALLOWLIST_NAMESPACE: &str = "e2e-s12-allow";
/// The allow-listed path of [`ALLOWLIST_NAMESPACE`]'s rule.
pub const ALLOWLISTED_PATH: &str = "/tmp/busybox-allowed";
/// Namespace of the rule whose action scenario 13 changes while its pod runs.
pub const RELOAD_NAMESPACE: &str = "e2e-s13";
/// How long an alert may take to reach the alert file.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of the test policy that scenarios change.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// `spec.relocatedImageBinaries`.
    pub relocated: &'static str,
    /// Action of the rule scoped to [`RELOAD_NAMESPACE`].
    pub reload_action: &'static str,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            relocated: "alert",
            reload_action: "block",
        }
    }
}

/// The test policy: scoped rules for scenarios 12 and 13 above a blocking default rule.
pub fn policy(knobs: Knobs) -> String {
    let scoped = |name: &str, action: &str, field: &str, value: &str| {
        format!(
            "    - name: {name}\n      action: {action}\n      scope:\n        - field: {field}\n\
             \x20         operator: equals\n          value: {value}\n"
        )
    };
    let mut rules = String::new();
    rules += &scoped(
        "s12-ignore-namespace",
        "ignore",
        "namespace",
        IGNORED_NAMESPACE,
    );
    let label = format!("{}={}", IGNORED_LABEL.0, IGNORED_LABEL.1);
    rules += &scoped("s12-ignore-label", "ignore", "podLabels", &label);
    rules += &scoped("s12-allowlist", "block", "namespace", ALLOWLIST_NAMESPACE);
    rules += &format!("      allow:\n        - path: {ALLOWLISTED_PATH}\n");
    rules += &scoped(
        "s13-hot-reload",
        knobs.reload_action,
        "namespace",
        RELOAD_NAMESPACE,
    );
    format!(
        "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nmetadata:\n  name: e2e-scenarios\n\
         spec:\n  failurePolicy: closed\n  relocatedImageBinaries: {relocated}\n  rules:\n\
         {rules}  defaultRule:\n    name: {DEFAULT_RULE}\n    action: block\n",
        relocated = knobs.relocated,
    )
}

static NODE: OnceLock<RwLock<Node>> = OnceLock::new();

fn node() -> &'static RwLock<Node> {
    NODE.get_or_init(|| {
        let binary = Path::new(env!("CARGO_BIN_EXE_driftguard"));
        let node = match Node::start(binary, &policy(Knobs::default())) {
            Ok(node) => node,
            Err(err) => panic!("the protected node did not start: {err:#}"),
        };
        // SAFETY: atexit only records the function pointer; the callback takes no arguments,
        // never unwinds and only touches the static node after every test has finished.
        let rc = unsafe { atexit(stop_node_at_exit) };
        assert_eq!(rc, 0, "atexit refused the node's exit hook");
        RwLock::new(node)
    })
}

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Stops the daemon when the test process exits (the static node is never dropped).
extern "C" fn stop_node_at_exit() {
    let Some(lock) = NODE.get() else { return };
    let mut node = match lock.try_write() {
        Ok(node) => node,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    if let Err(err) = node.stop_daemon() {
        eprintln!("e2e: stopping the driftguard daemon: {err:#}");
    }
}

/// The node, shared with other scenarios that leave the policy and the daemon alone.
pub fn shared() -> RwLockReadGuard<'static, Node> {
    node().read().unwrap_or_else(|p| p.into_inner())
}

/// The node, for a scenario that changes the policy or restarts the daemon.
pub fn exclusive() -> RwLockWriteGuard<'static, Node> {
    node().write().unwrap_or_else(|p| p.into_inner())
}

/// Writes a policy and waits until the daemon logs that it reloaded it.
pub fn set_policy_and_wait(node: &Node, yaml: &str) -> Result<()> {
    let reloads = || {
        std::fs::read_to_string(node.daemon_log())
            .unwrap_or_default()
            .matches("policy reloaded")
            .count()
    };
    if std::fs::read_to_string(&node.policy_path).is_ok_and(|cur| cur == yaml) {
        return Ok(()); // the watcher reloads on content changes only
    }
    let before = reloads();
    node.set_policy(yaml)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads() == before {
        if Instant::now() > deadline {
            bail!(
                "the daemon did not reload {} within 5 s",
                node.policy_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Puts the base policy back when dropped (also when the scenario that changed it fails).
pub struct RestorePolicy<'a>(pub &'a Node);

impl Drop for RestorePolicy<'_> {
    fn drop(&mut self) {
        if let Err(err) = set_policy_and_wait(self.0, &policy(Knobs::default())) {
            eprintln!("e2e: restoring the base policy: {err:#}");
        }
    }
}

/// A long-running container of the scenario image.
pub fn scenario_container() -> ContainerSpec {
    ContainerSpec::shell("main", SCENARIO, "exec /bin/sleep 3600")
}

/// Shell commands that write a new executable at `path`: busybox plus a few extra bytes, so
/// its content is in no image layer. Busybox picks its applet from the program's name, so a
/// copy that should run `busybox-… APPLET ARGS` needs a name starting with `busybox`.
pub fn drop_binary(path: &str) -> String {
    format!("/bin/cat /bin/busybox /etc/passwd > {path} && /bin/chmod 755 {path}")
}

/// An exec result for a failure message, with long outputs cut to their last lines.
pub fn brief(res: &ExecResult) -> String {
    let cut = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        match lines.len() {
            n if n > 6 => format!("[{} lines cut] {}", n - 6, lines[n - 6..].join("\n")),
            _ => s.to_string(),
        }
    };
    format!(
        "exit {}, stdout {:?}, stderr {:?}",
        res.exit_code,
        cut(&res.stdout),
        cut(&res.stderr)
    )
}

/// Asserts that an exec was refused by driftguard (EPERM) and the program did not print
/// `marker`.
#[track_caller]
pub fn assert_denied(res: &ExecResult, marker: &str) {
    assert_ne!(res.exit_code, 0, "the exec was not refused: {}", brief(res));
    assert!(
        res.stderr.contains("Operation not permitted"),
        "the exec failed, but not with EPERM: {}",
        brief(res)
    );
    assert!(
        !res.stdout.contains(marker),
        "the program ran ({marker:?} printed): {}",
        brief(res)
    );
}

/// Asserts that a command succeeded and printed `marker`.
#[track_caller]
pub fn assert_ran(res: &ExecResult, marker: &str) {
    assert_eq!(res.exit_code, 0, "the command failed: {}", brief(res));
    assert!(
        res.stdout.contains(marker),
        "{marker:?} not printed: {}",
        brief(res)
    );
}

/// Waits for an alert of `container_id` that satisfies `pred`.
pub fn wait_alert(
    node: &Node,
    container_id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + ALERT_TIMEOUT;
    loop {
        if let Some(e) = node.events_of(container_id).into_iter().find(&pred) {
            return Ok(e);
        }
        if Instant::now() > deadline {
            bail!(
                "no alert ({what}) for container {container_id} after {ALERT_TIMEOUT:?}; \
                 its alerts: {:?}",
                node.events_of(container_id)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the alert of the exec of `path` and checks its rule, class and outcome.
pub fn expect_alert(
    node: &Node,
    ctr: &Container<'_>,
    path: &str,
    rule: &str,
    class: &str,
    outcome: &str,
) -> Result<Value> {
    let alert = node
        .wait_event(ctr.id(), path, ALERT_TIMEOUT)
        .with_context(|| format!("expected a `{class}` alert for {path}"))?;
    check_alert(&alert, rule, class, outcome);
    Ok(alert)
}

/// Checks an alert's rule, class, outcome and severity.
#[track_caller]
pub fn check_alert(alert: &Value, rule: &str, class: &str, outcome: &str) {
    assert_eq!(alert["rule"], rule, "rule of {alert}");
    assert_eq!(alert["class"], class, "class of {alert}");
    assert_eq!(alert["outcome"], outcome, "outcome of {alert}");
    assert_eq!(alert["severity"], "high", "severity of {alert}");
}

const SENTINEL_PREFIX: &str = "/tmp/.sentinel-";

/// Runs a sentinel drift exec (denied, alerted) in a container whose rule blocks, waits for
/// its alert, and returns the container's other alerts: everything the execs before it
/// reported.
pub fn alerts_before_sentinel(node: &Node, ctr: &Container<'_>) -> Result<Vec<Value>> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = format!("{SENTINEL_PREFIX}{}", SEQ.fetch_add(1, Ordering::Relaxed));
    let res = ctr.sh(&format!(
        "{} && {path} echo sentinel-ran",
        drop_binary(&path)
    ))?;
    assert_denied(&res, "sentinel-ran");
    node.wait_event(ctr.id(), &path, ALERT_TIMEOUT)
        .context("the sentinel's alert")?;
    Ok(node
        .events_of(ctr.id())
        .into_iter()
        .filter(|e| {
            !e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(SENTINEL_PREFIX))
        })
        .collect())
}

/// Asserts that no alert names one of `paths` (checked behind a sentinel).
pub fn assert_silent(node: &Node, ctr: &Container<'_>, paths: &[&str]) -> Result<()> {
    let alerts = alerts_before_sentinel(node, ctr)?;
    let loud: Vec<&Value> = alerts
        .iter()
        .filter(|e| paths.iter().any(|p| e["path"] == *p))
        .collect();
    assert!(loud.is_empty(), "expected no alert for {paths:?}: {loud:?}");
    Ok(())
}

/// The wait used where no sentinel can alert (a rule that ignores drift).
pub fn quiet_period() {
    std::thread::sleep(Duration::from_millis(1500));
}
