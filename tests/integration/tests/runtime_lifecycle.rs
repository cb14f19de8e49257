//! `runtime.sh` on its own instance: `up` is idempotent, recovers after containerd was killed
//! (stale sockets, running shims and mounts left behind), and `down` leaves no mount and no
//! process of the instance.

#![allow(clippy::unwrap_used)] // a failed step must fail the test at once

use std::path::Path;
use std::time::Duration;

use driftguard_testkit::images::BUSYBOX;
use driftguard_testkit::runtime::runtime_sh;
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};

fn dev_dir() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::var("DG_DEV_ROOT").unwrap_or_else(|_| "/var/lib".into());
        format!("{root}/driftguard-dev-lifecycle")
    })
}

fn env() -> [(&'static str, &'static str); 1] {
    [("DG_DEV_DIR", dev_dir())]
}

fn containerd_pid() -> Option<u32> {
    let out = runtime_sh(&["status"], &env()).ok()?;
    out.split("pid ")
        .nth(1)?
        .trim_end_matches([')', '\n'])
        .parse()
        .ok()
}

fn mounts_below(dir: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir))
        .map(String::from)
        .collect()
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = entry.path().join("cmdline");
        if let Ok(raw) = std::fs::read(&cmdline) {
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            if text.contains(needle) && !text.contains("runtime_lifecycle") {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    assert!(status.unwrap().success());
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_sleeping_pod(rt: &Runtime) {
    let cri = rt.cri().unwrap();
    let pod = cri.run_pod(&PodSpec::new("lifecycle", "default")).unwrap();
    let ctr = pod
        .start_container(&ContainerSpec::shell("s", BUSYBOX, "sleep 600"))
        .unwrap();
    assert_eq!(ctr.sh("echo alive").unwrap().stdout, "alive\n");
    // Leave pod and container running, as a crash would.
    std::mem::forget(ctr);
    std::mem::forget(pod);
}

#[test]
fn up_is_idempotent_survives_a_crash_and_down_cleans_everything() {
    let rt = Runtime::up(&env()).unwrap();
    let first = containerd_pid().expect("containerd runs after up");
    let again = Runtime::up(&env()).unwrap();
    assert_eq!(
        containerd_pid(),
        Some(first),
        "a second up must reuse the running containerd"
    );
    assert_eq!(again.cri_socket, rt.cri_socket);

    // A crash leaves the socket files, the shim, the container and its mounts behind.
    run_sleeping_pod(&rt);
    kill9(first);
    assert!(
        rt.cri_socket.exists(),
        "the crashed containerd left its socket behind"
    );
    let rt = Runtime::up(&env()).unwrap();
    let second = containerd_pid().unwrap();
    assert_ne!(second, first);
    run_sleeping_pod(&rt);

    // Crash again with pods running; `down` must clean up after it.
    kill9(second);
    assert!(
        !mounts_below(dev_dir()).is_empty(),
        "pods should have left mounts behind"
    );
    runtime_sh(&["down"], &env()).unwrap();
    assert_eq!(mounts_below(dev_dir()), Vec::<String>::new());
    let socket = rt.cri_socket.display().to_string();
    assert_eq!(processes_mentioning(&socket), Vec::<String>::new());
    assert!(containerd_pid().is_none());
    assert!(!rt.cri_socket.exists());

    // `down` twice is fine, and so is `purge`.
    runtime_sh(&["down"], &env()).unwrap();
    runtime_sh(&["purge"], &env()).unwrap();
    let instance = Path::new(dev_dir()).join(format!("ctd-{}", rt.containerd_version));
    assert!(!instance.exists(), "purge left {}", instance.display());
}
