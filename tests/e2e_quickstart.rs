//! The product end to end, in its smallest form: on a node protected by driftguard, an image
//! binary runs, a binary dropped into the container is denied before it runs, and a
//! high-severity alert names the pod, the file and the rule.

#![allow(clippy::unwrap_used)] // a failed step must fail the test at once

use std::path::Path;
use std::time::Duration;

use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::{ContainerSpec, Node, PodSpec};

const BLOCK_ALL: &str = "\
apiVersion: driftguard.dev/v1
kind: DriftPolicy
metadata:
  name: e2e
spec:
  failurePolicy: closed
  rules: []
  defaultRule:
    name: block-drift
    action: block
";

#[test]
fn dropped_binary_is_denied_and_alerted() {
    let node = Node::start(Path::new(env!("CARGO_BIN_EXE_driftguard")), BLOCK_ALL).unwrap();
    let cri = node.runtime.cri().unwrap();
    let pod = cri
        .run_pod(&PodSpec::new("quickstart", "shop").label("app", "web"))
        .unwrap();
    let ctr = pod
        .start_container(&ContainerSpec::shell("web", BUSYBOX, "sleep 600"))
        .unwrap();

    let ok = ctr
        .sh("/bin/ls /etc && /bin/cat /etc/driftguard-layer2.txt")
        .unwrap();
    assert_eq!(ok.exit_code, 0, "an image binary must run: {ok:?}");

    let drift = ctr
        .sh("cat /bin/busybox /etc/passwd > /tmp/dropped && chmod +x /tmp/dropped && /tmp/dropped echo ran")
        .unwrap();
    assert_ne!(drift.exit_code, 0, "the dropped binary ran: {drift:?}");
    assert!(
        drift.stderr.contains("Operation not permitted"),
        "{drift:?}"
    );
    assert!(!drift.stdout.contains("ran"), "{drift:?}");

    let alert = node
        .wait_event(ctr.id(), "/tmp/dropped", Duration::from_secs(5))
        .unwrap();
    assert_eq!(alert["rule"], "block-drift", "{alert}");
    assert_eq!(alert["class"], "new file", "{alert}");
    assert_eq!(alert["outcome"], "deny", "{alert}");
    assert_eq!(alert["severity"], "high", "{alert}");
    assert_eq!(alert["pod"], pod_name(&pod), "{alert}");
    assert_eq!(alert["namespace"], "shop", "{alert}");
    assert_eq!(alert["image"], BUSYBOX, "{alert}");
}

fn pod_name(pod: &driftguard_testkit::cri::Pod<'_>) -> String {
    pod.log_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}
