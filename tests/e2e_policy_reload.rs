//! A running daemon and its policy file: a broken new version is rejected with its location
//! and the old policy keeps deciding; a valid new version decides within two seconds.

#![allow(clippy::unwrap_used)] // a failed step must fail the test at once

use std::path::Path;
use std::time::{Duration, Instant};

use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::{ContainerSpec, Node, PodSpec};

fn policy(action: &str) -> String {
    format!(
        "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nmetadata:\n  name: reload\nspec:\n  \
         rules:\n    - name: shop\n      action: {action}\n      scope:\n        - field: namespace\n          \
         operator: equals\n          value: shop\n  defaultRule:\n    name: default\n    action: ignore\n"
    )
}

const BROKEN: &str = "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nmetadata:\n  name: broken\n\
spec:\n  rules:\n    - name: shop\n      action: allow-everything\n  defaultRule:\n    name: default\n    action: ignore\n";

/// A new binary (busybox with bytes appended, named so its applet dispatch still works).
const DRIFT: &str = "mkdir -p /tmp/d && cat /bin/busybox /etc/group > /tmp/d/busybox && \
                     chmod +x /tmp/d/busybox && /tmp/d/busybox echo ran";

#[test]
fn broken_policy_keeps_the_old_one_and_a_valid_change_applies_within_two_seconds() {
    let node = Node::start(
        Path::new(env!("CARGO_BIN_EXE_driftguard")),
        &policy("block"),
    )
    .unwrap();
    let cri = node.runtime.cri().unwrap();
    let pod = cri.run_pod(&PodSpec::new("reload", "shop")).unwrap();
    let ctr = pod
        .start_container(&ContainerSpec::shell("app", BUSYBOX, "sleep 600"))
        .unwrap();
    let denied = ctr.sh(DRIFT).unwrap();
    assert!(
        denied.stderr.contains("Operation not permitted"),
        "{denied:?}"
    );

    // A broken version: rejected with file, line and column; the block rule stays in force.
    node.set_policy(BROKEN).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(node.daemon_log()).unwrap();
        if log.contains("allow-everything") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = log
        .lines()
        .find(|l| l.contains("allow-everything"))
        .expect("no rejection logged");
    assert!(
        line.contains("policy.yaml:8:15:"),
        "the error must name file, line and column: {line}"
    );
    let still = ctr.sh(DRIFT).unwrap();
    assert!(
        still.stderr.contains("Operation not permitted"),
        "old policy lost: {still:?}"
    );

    // A valid version that only alerts: the same exec runs within two seconds, with an alert.
    node.set_policy(&policy("alert")).unwrap();
    let changed = Instant::now();
    let ran = loop {
        let out = ctr.sh(DRIFT).unwrap();
        if out.stdout.contains("ran") || changed.elapsed() > Duration::from_secs(5) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let latency = changed.elapsed();
    println!("policy change applied after {latency:?}");
    assert!(ran.stdout.contains("ran"), "{ran:?}");
    assert!(
        latency <= Duration::from_secs(2),
        "applied after {latency:?}"
    );
    let alerts = node.events_of(ctr.id());
    let last = alerts
        .iter()
        .rev()
        .find(|e| e["path"] == "/tmp/d/busybox")
        .unwrap();
    assert_eq!(last["outcome"], "alert", "{last}");
    assert_eq!(last["rule"], "shop", "{last}");
}
