//! The private runtime works end to end: a pod and a busybox container through CRI, exec into a
//! running container, and the scenario image's overlay layers as the host sees them.

#![allow(clippy::unwrap_used)] // a failed step must fail the test at once

use std::path::Path;
use std::time::Duration;

use driftguard_testkit::images::{BUSYBOX, SCENARIO};
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};

#[test]
fn busybox_container_runs_and_its_output_is_seen() {
    let rt = Runtime::shared();
    let cri = rt.cri().unwrap();
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_name, "containerd");
    assert!(
        version.runtime_version.starts_with(&rt.containerd_version),
        "{} is not containerd {}",
        version.runtime_version,
        rt.containerd_version
    );

    let pod = cri.run_pod(&PodSpec::new("smoke", "default")).unwrap();
    let spec = ContainerSpec::shell(
        "hello",
        BUSYBOX,
        "echo hello from busybox; cat /etc/driftguard-layer2.txt",
    );
    let ctr = pod.start_container(&spec).unwrap();
    assert_eq!(ctr.wait_exit(Duration::from_secs(20)).unwrap(), 0);
    let logs = ctr.logs().unwrap();
    assert!(logs.contains("hello from busybox"), "logs: {logs:?}");
    assert!(
        logs.contains("layer 2 of the busybox image"),
        "logs: {logs:?}"
    );
}

#[test]
fn exec_sync_runs_in_a_running_container() {
    let rt = Runtime::shared();
    let cri = rt.cri().unwrap();
    let pod = cri.run_pod(&PodSpec::new("exec", "default")).unwrap();
    let ctr = pod
        .start_container(&ContainerSpec::shell("sleeper", BUSYBOX, "sleep 300"))
        .unwrap();
    let out = ctr.sh("echo out; echo err >&2; exit 3").unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn scenario_image_layers_appear_in_mountinfo_top_first() {
    let rt = Runtime::shared();
    let cri = rt.cri().unwrap();
    let pod = cri.run_pod(&PodSpec::new("layers", "default")).unwrap();
    let ctr = pod
        .start_container(&ContainerSpec::shell("scn", SCENARIO, "sleep 300"))
        .unwrap();

    let mount = rt.rootfs_mount(ctr.id()).unwrap();
    assert_eq!(mount.lowerdirs.len(), 3, "{mount:?}");
    let [update, app, base] = [
        &mount.lowerdirs[0],
        &mount.lowerdirs[1],
        &mount.lowerdirs[2],
    ];
    // Top first: the update layer holds the release file and the whiteout of `doomed`.
    assert!(update.join("etc/scenario-release").is_file());
    assert_whiteout(&update.join("opt/scenario/doomed"));
    assert!(app.join("opt/scenario/doomed").is_file());
    assert!(app.join("usr/bin/gnu-true").is_file());
    assert!(base.join("bin/busybox").is_file());
    assert!(!base.join("opt").exists());
    assert!(mount.upperdir.is_dir());
    assert!(rt.bundle_dir(ctr.id()).join("config.json").is_file());

    // Inside the container the merged view is the image's final state.
    let out = ctr
        .sh(
            "test ! -e /opt/scenario/doomed && /opt/scenario/changing && ls /opt/scenario/opaque \
             && /usr/bin/gnu-true && echo dyn-ok",
        )
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert!(
        out.stdout.contains("changing: version 2 from update"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("new-c") && !out.stdout.contains("old-a"),
        "{out:?}"
    );
    assert!(out.stdout.contains("dyn-ok"), "{out:?}");

    // A file written in the container lands in the upper directory.
    assert_eq!(ctr.sh("echo x > /written-at-runtime").unwrap().exit_code, 0);
    assert!(mount.upperdir.join("written-at-runtime").is_file());
}

fn assert_whiteout(path: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} is not an overlay whiteout",
        path.display()
    );
    assert_eq!(meta.rdev(), 0);
}
