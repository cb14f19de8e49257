//! The drift scenarios end to end, on one node protected by driftguard (private containerd whose
//! runc is the driftguard wrapper, plus a running daemon): each scenario runs its own pod of the
//! scenario image in its own namespace, runs commands in it with CRI `ExecSync`, and checks the
//! verdict (ran, or refused with EPERM) and the alert the daemon wrote (rule, class, outcome).
//!
//! The test policy blocks drift by default; scoped rules above the default serve scenarios 12
//! (ignore by namespace and by pod label, an allow list) and 13 (a rule changed while its pod
//! runs). Scenarios that rewrite the policy or restart the daemon hold the node exclusively;
//! the others share it (see `e2e_support`).
//!
//! Limits: the matrix (containerd 2.1.9 + runc 1.1.5 by default, `DG_CONTAINERD` / `DG_RUNC`
//! otherwise) is chosen per run; one run covers one combination.

#![allow(clippy::unwrap_used)] // a failed step must fail the test at once

mod e2e_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use driftguard_testkit::runtime::runtime_sh;
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};
use e2e_support::*;

/// A new executable that came from the host: the static busybox the images were built from,
/// plus a marker, so no image layer has its content.
fn host_binary() -> Result<Vec<u8>> {
    let busybox = runtime_sh(&["busybox-path"], &[])?;
    let mut bytes = fs::read(busybox.trim()).with_context(|| format!("reading {busybox}"))?;
    bytes.extend_from_slice(b"\ndriftguard e2e: a binary dropped from the host\n");
    Ok(bytes)
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The two drifts of scenario 1 on one runtime: a binary written into the container's upper
/// dir from the host, and one created inside the container. Returns both exec results.
fn new_binaries(
    runtime: &Runtime,
    ctr: &driftguard_testkit::cri::Container<'_>,
) -> Result<[driftguard_testkit::cri::ExecResult; 2]> {
    let upper = runtime.rootfs_mount(ctr.id())?.upperdir;
    write_executable(&upper.join("busybox-from-host"), &host_binary()?)?;
    let from_host = ctr.sh("/busybox-from-host echo from-host-ran")?;
    let created = ctr.sh(&format!(
        "{} && /tmp/busybox-created echo created-ran",
        drop_binary("/tmp/busybox-created")
    ))?;
    Ok([from_host, created])
}

#[test]
fn scenario_01_new_binary_is_denied() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s01", "e2e-s01"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let [from_host, created] = new_binaries(&node.runtime, &ctr)?;
    assert_denied(&from_host, "from-host-ran");
    expect_alert(
        &node,
        &ctr,
        "/busybox-from-host",
        DEFAULT_RULE,
        "new file",
        "deny",
    )?;
    assert_denied(&created, "created-ran");
    let alert = expect_alert(
        &node,
        &ctr,
        "/tmp/busybox-created",
        DEFAULT_RULE,
        "new file",
        "deny",
    )?;
    assert_eq!(alert["namespace"], "e2e-s01", "{alert}");

    // Control: the same drifts on the plain runtime (no driftguard) run.
    let plain = Runtime::shared();
    let plain_cri = plain.cri()?;
    let plain_pod = plain_cri.run_pod(&PodSpec::new("s01-plain", "e2e-s01"))?;
    let plain_ctr = plain_pod.start_container(&scenario_container())?;
    let [from_host, created] = new_binaries(plain, &plain_ctr)?;
    assert_ran(&from_host, "from-host-ran");
    assert_ran(&created, "created-ran");
    Ok(())
}

#[test]
fn scenario_02a_relocated_image_binary_runs_with_alert() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s02a", "e2e-s02a"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/bin/cp /bin/busybox /tmp/busybox-x && /tmp/busybox-x echo relocated-ran")?;
    assert_ran(&res, "relocated-ran");
    let class = "relocated image binary";
    expect_alert(&node, &ctr, "/tmp/busybox-x", DEFAULT_RULE, class, "alert")?;
    Ok(())
}

#[test]
fn scenario_02b_relocated_image_binary_is_denied_when_blocked() -> Result<()> {
    let node = exclusive();
    let _restore = RestorePolicy(&node);
    let knobs = Knobs {
        relocated: "block",
        ..Knobs::default()
    };
    set_policy_and_wait(&node, &policy(knobs))?;
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s02b", "e2e-s02b"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/bin/cp /bin/busybox /tmp/busybox-y && /tmp/busybox-y echo relocated-ran")?;
    assert_denied(&res, "relocated-ran");
    let class = "relocated image binary";
    expect_alert(&node, &ctr, "/tmp/busybox-y", DEFAULT_RULE, class, "deny")?;
    Ok(())
}

#[test]
fn scenario_03_metadata_change_of_image_binary_is_silent() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s03", "e2e-s03"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/bin/touch /opt/scenario/changing && /opt/scenario/changing")?;
    assert_ran(&res, "changing: version 2 from update");
    let res =
        ctr.sh("/bin/chmod 755 /usr/bin/gnu-true && /usr/bin/gnu-true && echo gnu-true-ran")?;
    assert_ran(&res, "gnu-true-ran");
    // Both files were copied up: the execs really ran from the upper layer.
    let upper = node.runtime.rootfs_mount(ctr.id())?.upperdir;
    for copied in ["opt/scenario/changing", "usr/bin/gnu-true"] {
        assert!(upper.join(copied).is_file(), "{copied} was not copied up");
    }
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(alerts.is_empty(), "metadata changes alerted: {alerts:?}");
    Ok(())
}

#[test]
fn scenario_04_modified_image_binary_is_denied() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s04", "e2e-s04"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("printf x >> /opt/scenario/changing && /opt/scenario/changing")?;
    assert_denied(&res, "changing: version");
    let class = "modified image file";
    expect_alert(
        &node,
        &ctr,
        "/opt/scenario/changing",
        DEFAULT_RULE,
        class,
        "deny",
    )?;
    Ok(())
}

#[test]
fn scenario_05_mode_drift_runs_with_alert() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s05", "e2e-s05"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/bin/chmod +x /opt/scenario/noexec-elf && /opt/scenario/noexec-elf")?;
    assert_ran(&res, "noexec-elf: shipped without x bits");
    let path = "/opt/scenario/noexec-elf";
    expect_alert(&node, &ctr, path, DEFAULT_RULE, "mode drift", "alert")?;
    Ok(())
}

#[test]
fn scenario_06_memfd_exec_is_denied() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s06", "e2e-s06"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let cmd = ["/usr/bin/memfd-exec", "/bin/busybox", "echo", "memfd-ran"];
    let res = ctr.exec_sync(&cmd, Duration::from_secs(30))?;
    assert_eq!(res.exit_code, 126, "memfd-exec was not refused: {res:?}");
    assert_denied(&res, "memfd-ran");
    let alert = wait_alert(&node, ctr.id(), "fileless", |e| e["class"] == "fileless")?;
    check_alert(&alert, DEFAULT_RULE, "fileless", "deny");
    Ok(())
}

#[test]
fn scenario_07_binaries_on_dev_shm_and_volumes_are_denied() -> Result<()> {
    let node = shared();
    let volume = tempfile::Builder::new()
        .prefix("e2e-s07-volume-")
        .tempdir_in(&node.dir)?;
    write_executable(&volume.path().join("busybox-host-tool"), &host_binary()?)?;
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s07", "e2e-s07"))?;
    let spec = ContainerSpec {
        mounts: vec![(volume.path().to_path_buf(), "/data".into(), false)],
        ..scenario_container()
    };
    let ctr = pod.start_container(&spec)?;
    for path in ["/dev/shm/busybox-shm", "/data/busybox-volume"] {
        let res = ctr.sh(&format!("{} && {path} echo drift-ran", drop_binary(path)))?;
        assert_denied(&res, "drift-ran");
        expect_alert(&node, &ctr, path, DEFAULT_RULE, "new file", "deny")?;
    }
    let res = ctr.sh("/data/busybox-host-tool echo drift-ran")?;
    assert_denied(&res, "drift-ran");
    let path = "/data/busybox-host-tool";
    expect_alert(&node, &ctr, path, DEFAULT_RULE, "new file", "deny")?;
    Ok(())
}

#[test]
fn scenario_08_image_applet_symlinks_are_silent() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s08", "e2e-s08"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/bin/cat /etc/scenario-release && /bin/ls /opt/scenario && /bin/true")?;
    assert_ran(&res, "scenario 1");
    assert!(res.stdout.contains("hello.sh"), "{res:?}");
    let res = ctr.exec_sync(&["/bin/echo", "applet-ran"], Duration::from_secs(30))?;
    assert_ran(&res, "applet-ran");
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(alerts.is_empty(), "image applets alerted: {alerts:?}");
    Ok(())
}

#[test]
fn scenario_09_dropped_script_is_denied_image_script_runs() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s09", "e2e-s09"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/opt/scenario/hello.sh")?;
    assert_ran(&res, "hello from the image script");
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(alerts.is_empty(), "the image script alerted: {alerts:?}");

    let res = ctr.sh(
        r#"printf '#!/bin/sh\necho dropped-script-ran\n' > /tmp/dropped.sh &&
           /bin/chmod 755 /tmp/dropped.sh && /tmp/dropped.sh"#,
    )?;
    assert_denied(&res, "dropped-script-ran");
    expect_alert(
        &node,
        &ctr,
        "/tmp/dropped.sh",
        DEFAULT_RULE,
        "new file",
        "deny",
    )?;
    Ok(())
}

#[test]
fn scenario_10_loader_with_dropped_program_is_denied() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s10", "e2e-s10"))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh("/lib64/ld-linux-x86-64.so.2 /usr/bin/gnu-true && echo loader-image-ran")?;
    assert_ran(&res, "loader-image-ran");
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(
        alerts.is_empty(),
        "the loader with an image program alerted: {alerts:?}"
    );

    let res = ctr.sh(
        "/bin/cat /usr/bin/gnu-true > /tmp/dyn && printf x >> /tmp/dyn && \
         /lib64/ld-linux-x86-64.so.2 /tmp/dyn && echo loader-trick-ran",
    )?;
    assert_denied(&res, "loader-trick-ran");
    let alert = wait_alert(&node, ctr.id(), "loader trick", |e| {
        e["class"] == "loader trick"
    })?;
    check_alert(&alert, DEFAULT_RULE, "loader trick", "deny");
    Ok(())
}

#[test]
fn scenario_11_whited_out_binary_recreated_is_denied() -> Result<()> {
    let node = shared();
    let stage = tempfile::Builder::new()
        .prefix("e2e-s11-stage-")
        .tempdir_in(&node.dir)?;
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s11", "e2e-s11"))?;
    let spec = ContainerSpec {
        mounts: vec![(stage.path().to_path_buf(), "/stage".into(), true)],
        ..scenario_container()
    };
    let ctr = pod.start_container(&spec)?;

    let res = ctr.sh("/opt/scenario/changing")?;
    assert_ran(&res, "changing: version 2 from update");
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(
        alerts.is_empty(),
        "the updated image file alerted: {alerts:?}"
    );

    // The old bytes of `doomed`, from the layer that shipped it.
    let mount = node.runtime.rootfs_mount(ctr.id())?;
    let old = mount
        .lowerdirs
        .iter()
        .map(|l| l.join("opt/scenario/doomed"))
        .find(|p| p.is_file())
        .context("no lower layer holds opt/scenario/doomed")?;
    fs::copy(&old, stage.path().join("doomed"))?;
    let res = ctr.sh(
        "test ! -e /opt/scenario/doomed && /bin/cp /stage/doomed /opt/scenario/doomed && \
         /bin/chmod 755 /opt/scenario/doomed && /opt/scenario/doomed",
    )?;
    assert_denied(&res, "doomed: shipped");
    let path = "/opt/scenario/doomed";
    expect_alert(&node, &ctr, path, DEFAULT_RULE, "new file", "deny")?;
    Ok(())
}

#[test]
fn scenario_12_ignore_rules_and_allow_list() -> Result<()> {
    let node = shared();
    let cri = node.runtime.cri()?;
    let drift = format!(
        "{} && /tmp/busybox-drift echo drift-ran",
        drop_binary("/tmp/busybox-drift")
    );

    let by_namespace = cri.run_pod(&PodSpec::new("s12-ns", IGNORED_NAMESPACE))?;
    let (key, value) = IGNORED_LABEL;
    let by_label = cri.run_pod(&PodSpec::new("s12-label", "e2e-s12-label").label(key, value))?;
    let mut ignored = Vec::new();
    for pod in [&by_namespace, &by_label] {
        let ctr = pod.start_container(&scenario_container())?;
        assert_ran(&ctr.sh(&drift)?, "drift-ran");
        ignored.push(ctr);
    }
    quiet_period();
    for ctr in &ignored {
        let alerts = node.events_of(ctr.id());
        assert!(alerts.is_empty(), "an ignored drift alerted: {alerts:?}");
    }

    let pod = cri.run_pod(&PodSpec::new("s12-allow", ALLOWLIST_NAMESPACE))?;
    let ctr = pod.start_container(&scenario_container())?;
    let res = ctr.sh(&format!(
        "{} && {ALLOWLISTED_PATH} echo allowed-ran",
        drop_binary(ALLOWLISTED_PATH)
    ))?;
    assert_ran(&res, "allowed-ran");
    let res = ctr.sh(&format!(
        "{} && /tmp/busybox-other echo other-ran",
        drop_binary("/tmp/busybox-other")
    ))?;
    assert_denied(&res, "other-ran");
    expect_alert(
        &node,
        &ctr,
        "/tmp/busybox-other",
        "s12-allowlist",
        "new file",
        "deny",
    )?;
    for e in node.events_of(ctr.id()) {
        if e["path"] == ALLOWLISTED_PATH {
            assert_eq!(e["outcome"], "allow", "allow-listed exec reported as {e}");
            assert_eq!(e["allow_listed"], true, "{e}");
        }
    }
    Ok(())
}

const RELOAD_LOOP: &str = "i=0; while [ $i -lt 1000 ]; do \
     if /tmp/busybox-reload echo reload-ran; then exit 0; fi; \
     i=$((i+1)); /bin/usleep 20000; done; exit 1";

#[test]
fn scenario_13_policy_change_applies_to_running_pod() -> Result<()> {
    let node = exclusive();
    let _restore = RestorePolicy(&node);
    set_policy_and_wait(&node, &policy(Knobs::default()))?;
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s13", RELOAD_NAMESPACE))?;
    let ctr = pod.start_container(&scenario_container())?;
    let path = "/tmp/busybox-reload";
    let res = ctr.sh(&format!("{} && {path} echo reload-ran", drop_binary(path)))?;
    assert_denied(&res, "reload-ran");
    expect_alert(&node, &ctr, path, "s13-hot-reload", "new file", "deny")?;

    let alerting = policy(Knobs {
        reload_action: "alert",
        ..Knobs::default()
    });
    let (res, latency) = std::thread::scope(|s| -> Result<_> {
        let looping =
            s.spawn(|| ctr.exec_sync(&["/bin/sh", "-c", RELOAD_LOOP], Duration::from_secs(60)));
        // The loop is running once its own execs are denied too.
        let denials = || {
            node.events_of(ctr.id())
                .iter()
                .filter(|e| e["path"] == path && e["outcome"] == "deny")
                .count()
        };
        let deadline = Instant::now() + ALERT_TIMEOUT;
        while denials() < 3 {
            anyhow::ensure!(Instant::now() < deadline, "the reload loop is not denied");
            std::thread::sleep(Duration::from_millis(10));
        }
        node.set_policy(&alerting)?;
        let changed = Instant::now();
        let res = looping.join().unwrap()?;
        Ok((res, changed.elapsed()))
    })?;
    println!(
        "scenario 13: block -> alert in force {} ms after the policy file changed \
         (upper bound: includes the ExecSync return)",
        latency.as_millis()
    );
    assert_ran(&res, "reload-ran");
    assert!(
        latency <= Duration::from_secs(2),
        "hot reload took {latency:?}"
    );
    let alert = wait_alert(&node, ctr.id(), "the allowed exec", |e| {
        e["path"] == path && e["outcome"] == "alert"
    })?;
    check_alert(&alert, "s13-hot-reload", "new file", "alert");
    Ok(())
}

/// Loops fork+exec of an image binary, recording failed execs and the shell's errors.
const EXEC_LOOP: &str = "exec 2>/tmp/loop.err; i=0; while true; do \
     /bin/true || echo \"exec $i failed with $?\" >> /tmp/loop.fail; \
     i=$((i+1)); echo $i > /tmp/loop.count; done";

/// The loop's iteration count (the file is rewritten each round: an empty read is retried).
fn loop_count(ctr: &driftguard_testkit::cri::Container<'_>) -> Result<u64> {
    for _ in 0..20 {
        let res = ctr.exec_sync(&["/bin/cat", "/tmp/loop.count"], Duration::from_secs(30))?;
        if let Ok(n) = res.stdout.trim().parse() {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the exec loop's count stays unreadable")
}

#[test]
fn scenario_14_exec_sync_is_silent_and_daemon_restart_loses_no_exec() -> Result<()> {
    let mut node = exclusive();
    let cri = node.runtime.cri()?;
    let pod = cri.run_pod(&PodSpec::new("s14", "e2e-s14"))?;
    let ctr = pod.start_container(&ContainerSpec::shell(
        "main",
        driftguard_testkit::images::SCENARIO,
        EXEC_LOOP,
    ))?;
    for cmd in [
        &["/bin/ls", "/opt/scenario"][..],
        &["/usr/bin/gnu-true"],
        &["/bin/cat", "/etc/scenario-release"],
        &["/opt/scenario/hello.sh"],
    ] {
        let res = ctr.exec_sync(cmd, Duration::from_secs(30))?;
        assert_eq!(res.exit_code, 0, "{cmd:?}: {res:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while loop_count(&ctr).unwrap_or(0) < 50 {
        assert!(Instant::now() < deadline, "the exec loop does not run");
        std::thread::sleep(Duration::from_millis(100));
    }

    let before = loop_count(&ctr)?;
    node.kill_daemon()?;
    // An exec into the container while no daemon runs (a probe, `kubectl exec`) waits for the
    // next daemon instead of failing: the fd holder keeps the hand-off socket listening.
    let waiting = {
        let cri = node.runtime.cri()?;
        let id = ctr.id().to_string();
        std::thread::spawn(move || {
            let cmd = ["/bin/cat", "/etc/scenario-release"];
            cri.exec_sync(&id, &cmd, Duration::from_secs(60))
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !waiting.is_finished(),
        "an exec started while the daemon was down ended before the restart: {:?}",
        waiting.join()
    );
    node.start_daemon()?;
    let res = waiting.join().expect("exec thread")?;
    assert_eq!(res.exit_code, 0, "exec across the restart: {res:?}");
    let restarted = loop_count(&ctr)?;
    std::thread::sleep(Duration::from_secs(1));
    let after = loop_count(&ctr)?;
    println!("scenario 14: execs before kill {before}, at restart {restarted}, 1 s later {after}");
    assert!(after > restarted, "the exec loop stalled after the restart");

    let res = ctr.sh("/bin/cat /tmp/loop.fail /tmp/loop.err 2>/dev/null; true")?;
    assert!(
        !res.stdout.contains("failed") && !res.stdout.contains("Function not implemented"),
        "execs failed around the restart: {res:?}"
    );
    assert!(
        res.stdout.trim().is_empty(),
        "the exec loop reported errors: {res:?}"
    );

    // The sentinel is a drift after the restart: it must still be denied and alerted.
    let alerts = alerts_before_sentinel(&node, &ctr)?;
    assert!(alerts.is_empty(), "image execs alerted: {alerts:?}");
    let sandbox = node.events_of(pod.id());
    assert!(
        sandbox.is_empty(),
        "the pause container alerted: {sandbox:?}"
    );
    Ok(())
}
