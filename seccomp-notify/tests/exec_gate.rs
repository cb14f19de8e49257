//! Privileged runc tests of the exec gate: racing execs that swap the file behind an allowed
//! exec (path buffer rewrite, symlink rename, fd-number swap) run a dropped binary with the
//! seccomp stage alone, and never with the gate; image binaries keep running with the gate on.
//! The same holds for a file on the filesystem of an unmonitored neighbour in the container's
//! pid namespace (a pod's sandbox when the pod shares its process namespace).

mod support;

use driftguard_policy::Outcome;
use driftguard_seccomp::ExecEvent;
use support::{Bundle, Running};

/// Racing tries per swap mode.
const TRIES: usize = 300;

/// The swaps the gate closes; `-lx`: the exec comes from a second thread after the thread
/// group leader has exited (a zombie leader has no namespaces to look up).
const GATED: [&str; 6] = ["path", "link", "fd", "path-lx", "link-lx", "fd-lx"];

/// Drops `/tmp/evil` (a modified copy of the test helper that exits 42 when it runs) and races
/// an exec of the image's `/bin/tiny` against a swap to it, in each mode.
fn race_script(modes: &[&str]) -> String {
    let mut script = String::from(
        "cp /bin/xat /tmp/evil; echo x >> /tmp/evil; chmod 755 /tmp/evil\n\
         /tmp/evil ran; echo direct-rc=$?\n",
    );
    for mode in modes {
        script.push_str(&format!(
            "/bin/xat swap {mode} /bin/tiny /tmp/evil {TRIES} /tmp/lnk\n"
        ));
    }
    script
}

/// Races `modes` under a block policy; with `second_stages` off the seccomp stage works alone
/// (no exec gate, no memfd lock), the control that shows the races win.
async fn race(second_stages: bool, modes: &[&str]) -> (String, Vec<ExecEvent>) {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start_configured(None, support::BLOCK_POLICY, |config| {
        config.exec_gate = second_stages;
        config.memfd_lockdown = second_stages;
    })
    .await
    .expect("supervisor");
    let script = race_script(modes);
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", &script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    support::expect_line(&output, "direct-rc=126");
    (output, supervisor.drain_events())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_on_no_racing_drifted_exec_runs_and_the_race_is_reported() {
    let (output, events) = race(true, &GATED).await;
    let mut caught_total = 0;
    for mode in GATED {
        let (image, drift, denied, _) = support::swap_counts(&output, mode);
        println!("gate on, swap {mode}: image={image} drift={drift} denied={denied}");
        assert_eq!(
            drift, 0,
            "a swapped-in drifted binary ran ({mode}):\n{output}"
        );
        assert!(image > 0, "the image binary never ran ({mode}):\n{output}");
        caught_total += denied;
    }
    let caught: Vec<&ExecEvent> = events.iter().filter(|e| e.exec_gate).collect();
    assert!(
        !caught.is_empty(),
        "no exec was caught by the gate (seccomp stage denied {caught_total}):\n{output}"
    );
    for event in &caught {
        assert_eq!(event.outcome, Outcome::Deny, "{event:#?}");
        assert_eq!(event.path, "/tmp/evil", "{event:#?}");
        assert_eq!(event.namespace, "tests");
    }
    println!("gate on: {} execs caught by the gate", caught.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_off_racing_drifted_execs_run() {
    let modes = [&GATED[..], &["memfd"]].concat();
    let (output, events) = race(false, &modes).await;
    let mut drifted = 0;
    for mode in &modes {
        let (image, drift, denied, _) = support::swap_counts(&output, mode);
        println!("gate off, swap {mode}: image={image} drift={drift} denied={denied}");
        drifted += drift;
    }
    assert!(
        drifted > 0,
        "the race never won without the gate; the gate test proves nothing:\n{output}"
    );
    assert!(!events.iter().any(|e| e.exec_gate), "{events:#?}");
}

const IMAGE_LOOP: &str = r#"
/bin/xat loop /bin/true 1000
/bin/xat loop /bin/tiny 1000
/bin/xat loop /usr/bin/gnu-true 300
/bin/xat loop /opt/scenario/hello.sh 300
cd /bin && ./busybox true; echo rel-rc=$?
touch /bin/busybox; /bin/xat loop /bin/true 200
mkdir /tmp/r; cp /bin/busybox /tmp/r/true; chmod 755 /tmp/r/true; /tmp/r/true; echo reloc-rc=$?
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_on_image_binaries_never_fail() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start_with(None, true).await.expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", IMAGE_LOOP]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    let loops = output
        .lines()
        .filter(|l| l.starts_with("loop done"))
        .count();
    assert_eq!(loops, 5, "{output}");
    assert!(
        output
            .lines()
            .all(|l| !l.starts_with("loop done") || l == "loop done failed=0"),
        "{output}"
    );
    for line in ["rel-rc=0", "reloc-rc=0"] {
        support::expect_line(&output, line);
    }
    let events = supervisor.drain_events();
    assert!(!events.iter().any(|e| e.exec_gate), "{events:#?}");
    assert!(
        events.iter().all(|e| e.path == "/tmp/r/true"),
        "only the relocated binary alerts: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_execs_on_marked_filesystems_are_allowed() {
    let runc = support::runc("1.1.5").expect("runc");
    let supervisor = Running::start_with(None, true).await.expect("supervisor");
    let script = "cp /bin/xat /root/evil; echo x >> /root/evil; chmod 755 /root/evil; \
                  /root/evil ran; echo rc=$? > /root/done; sleep 60";
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let status = support::blocking(move || {
        bundle.start_detached()?;
        let done = bundle.rootfs().join("root/done");
        for _ in 0..500 {
            if done.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let inside = std::fs::read_to_string(&done)?;
        // The same dropped file, executed by a host process through the host's view of the
        // container's overlay (a filesystem mark of the gate covers it): allowed at once.
        let host = std::process::Command::new(bundle.rootfs().join("root/evil"))
            .arg("ran")
            .status()?;
        drop(bundle);
        anyhow::Ok((inside, host))
    })
    .await
    .expect("host exec");
    assert_eq!(
        status.0.trim(),
        "rc=126",
        "inside the container drift is denied"
    );
    assert_eq!(status.1.code(), Some(42), "the host exec ran");
}

/// [`support::BLOCK_POLICY`] with direct runs of the image's loader refused (`directLoader`).
const STRICT_LOADER_POLICY: &str = "apiVersion: driftguard.dev/v1
kind: DriftPolicy
spec:
  directLoader: drift
  defaultRule:
    name: block-drift
    action: block
";

/// Runs the image's loader directly, then races swaps of the exec path to the loader (which,
/// given the program `ran`, fails with 127 when it runs: counted `rc127`): from `/bin/tiny`
/// (static), from `/usr/bin/gnu-true` (dynamic: the loader is also its announced interpreter),
/// and, once the loader is copied up by `touch`, from `/bin/tiny` again.
const LOADER_SCRIPT: &str = "/lib64/ld-linux-x86-64.so.2 /usr/bin/gnu-true; echo direct-rc=$?
/bin/xat swap path /bin/tiny /lib64/ld-linux-x86-64.so.2 300
/bin/xat swap link /usr/bin/gnu-true /lib64/ld-linux-x86-64.so.2 300 /root/lnk
touch /lib64/ld-linux-x86-64.so.2
/bin/xat swap path-lx /bin/tiny /lib64/ld-linux-x86-64.so.2 300\n";

/// The swaps of [`LOADER_SCRIPT`].
const LOADER_SWAPS: [&str; 3] = ["path", "link", "path-lx"];

async fn loader_run(policy: &str, second_stages: bool) -> (String, Vec<ExecEvent>) {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start_configured(None, policy, |config| {
        config.exec_gate = second_stages;
        config.memfd_lockdown = second_stages;
    })
    .await
    .expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", LOADER_SCRIPT]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    (output, supervisor.drain_events())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_loader_runs_follow_the_policy_option_even_through_a_race() {
    // Default: the loader runs an image program; no event.
    let (output, events) = loader_run(support::BLOCK_POLICY, true).await;
    support::expect_line(&output, "direct-rc=0");
    assert!(events.is_empty(), "{events:#?}");

    // directLoader: drift under a block rule: refused at the seccomp stage, and a swap of the
    // path to the loader after the check is refused by the gate: the loader never runs.
    let (output, events) = loader_run(STRICT_LOADER_POLICY, true).await;
    support::expect_line(&output, "direct-rc=126");
    for mode in LOADER_SWAPS {
        let (image, _, denied, _) = support::swap_counts(&output, mode);
        let ran = support::swap_field(&output, mode, "rc127");
        println!("strict loader, gate on, {mode}: image={image} denied={denied} loader ran={ran}");
        assert_eq!(
            ran, 0,
            "the loader ran past both stages ({mode}):\n{output}"
        );
        assert!(image > 0, "{output}");
    }
    let refused = |e: &&ExecEvent| {
        e.class == Some(driftguard_policy::VerdictClass::DirectLoader) && e.outcome == Outcome::Deny
    };
    assert!(
        events.iter().filter(refused).any(|e| !e.exec_gate),
        "{events:#?}"
    );

    // Control: the seccomp stage alone lets some of the swaps run the loader.
    let (output, _) = loader_run(STRICT_LOADER_POLICY, false).await;
    let ran: usize = LOADER_SWAPS
        .iter()
        .map(|mode| support::swap_field(&output, mode, "rc127"))
        .sum();
    println!("strict loader, gate off: loader ran={ran}");
    assert!(ran > 0, "the race never won without the gate:\n{output}");
}

/// Races path and symlink swaps from a process that moved to a mount namespace of its own
/// (`unshare(CLONE_NEWNS)`, with `CAP_SYS_ADMIN` granted): the gate places it by its cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_in_a_mount_namespace_of_its_own_is_still_gated() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let script = format!(
        "cp /bin/xat /tmp/evil; echo x >> /tmp/evil; chmod 755 /tmp/evil\n\
         /bin/xat unshare-swap path /bin/tiny /tmp/evil {TRIES}\n\
         /bin/xat unshare-swap link /bin/tiny /tmp/evil {TRIES} /tmp/lnk\n"
    );
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", &script]).expect("bundle");
    support::grant(&bundle, "CAP_SYS_ADMIN", "unshare")
        .and_then(|config| support::write_config(&bundle, &config))
        .expect("unshare allowed");
    let output = support::run_to_end(bundle).await;
    for mode in ["path", "link"] {
        let (image, drift, denied, _) = support::swap_counts(&output, mode);
        println!("own mount namespace, swap {mode}: image={image} drift={drift} denied={denied}");
        assert_eq!(
            drift, 0,
            "a swapped-in drifted binary ran ({mode}):\n{output}"
        );
        assert!(image > 0, "{output}");
    }
    let events = supervisor.drain_events();
    assert!(
        events.iter().any(|e| e.exec_gate),
        "the gate caught nothing: {events:#?}"
    );
}

/// A pod that shares its process namespace: an unfiltered "sandbox" owns the pid namespace, the
/// monitored container joins it, drops a binary into the sandbox's `/tmp` through
/// `/proc/1/root` and races an exec of an image binary against a swap to that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_dropped_on_a_pod_neighbours_filesystem_never_runs() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let sandbox = Bundle::unfiltered(&runc, &["/bin/sleep", "120"]).expect("sandbox bundle");
    sandbox.start_detached().expect("sandbox started");
    let sandbox_pid = sandbox.init_pid().expect("sandbox pid");
    let script = format!(
        "cp /bin/xat /proc/1/root/tmp/evil; echo x >> /proc/1/root/tmp/evil\n\
         chmod 755 /proc/1/root/tmp/evil\n\
         /bin/xat swap path /bin/tiny /proc/1/root/tmp/evil {TRIES}\n"
    );
    // The race is won by chance: rounds until the gate has caught a swap (each round must let
    // no dropped binary run).
    let mut caught = 0;
    let mut last = String::new();
    for round in 1..=4 {
        let bundle =
            Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", &script]).expect("bundle");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.dir.join("config.json")).expect("config"))
                .expect("config json");
        for ns in config["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
        {
            if ns["type"] == "pid" {
                ns["path"] = format!("/proc/{sandbox_pid}/ns/pid").into();
            }
        }
        support::write_config(&bundle, &config).expect("write config");
        let output = support::run_to_end(bundle).await;
        let (image, drift, denied, _) = support::swap_counts(&output, "path");
        println!("neighbour swap, round {round}: image={image} drift={drift} denied={denied}");
        assert!(image > 0, "the image binary never ran:\n{output}");
        assert_eq!(drift, 0, "the neighbour's dropped binary ran:\n{output}");
        caught += supervisor
            .drain_events()
            .into_iter()
            .filter(|e| e.exec_gate && e.outcome == Outcome::Deny)
            .count();
        last = output;
        if caught > 0 {
            break;
        }
    }
    drop(sandbox);
    assert!(caught > 0, "the gate caught nothing in 4 rounds:\n{last}");
}
