//! Privileged runc tests of the memfd lock (`vm.memfd_noexec = 2` in a blocking container's pid
//! namespace): a memfd swapped in under an allowed `execveat(fd, "", AT_EMPTY_PATH)` never runs
//! with the lock and does run without it (the control); `memfd_create(MFD_EXEC)` fails and
//! plain memfds are exec-sealed inside a locked container while its image binaries, `runc exec`
//! and the host are unaffected; a policy that only alerts on fileless execs gets no lock.

mod support;

use std::process::{Command, Stdio};

use driftguard_seccomp::memfd::{self, LockError, Locked};
use support::{Bundle, Running};

/// Racing tries per swap.
const TRIES: usize = 300;

/// The swaps: a memfd `dup2`ed onto the fd of `execveat(fd, "", AT_EMPTY_PATH)`, and the exec
/// path rewritten to `/proc/self/fd/N` of a memfd.
const MODES: [&str; 2] = ["memfd", "memfd-path"];

/// A policy whose every rule alerts: fileless execs run and are reported.
const ALERT_POLICY: &str = "apiVersion: driftguard.dev/v1
kind: DriftPolicy
spec:
  defaultRule:
    name: alert-drift
    action: alert
";

/// Prints the sysctl as the container sees it, what memfd_create gives, then races a memfd
/// copy of a dropped binary (exits 42 when it runs) against an exec of the image's `/bin/tiny`
/// in each of [`MODES`].
fn race_script() -> String {
    format!(
        "echo noexec=$(cat /proc/sys/vm/memfd_noexec)\n\
         /bin/xat mfd-flags\n\
         cp /bin/xat /tmp/evil; echo x >> /tmp/evil; chmod 755 /tmp/evil\n\
         /bin/xat swap memfd /bin/tiny /tmp/evil {TRIES}\n\
         /bin/xat swap-memfd-path /bin/tiny /tmp/evil {TRIES}\n"
    )
}

fn host_value() -> String {
    std::fs::read_to_string(memfd::SYSCTL)
        .expect("vm.memfd_noexec (Linux >= 6.3)")
        .trim()
        .to_string()
}

/// Runs the race script in a container under a supervisor with the lock on or off (exec gate
/// on in both) and the given policy.
async fn race(lockdown: bool, policy: &str) -> String {
    let runc = support::runc("1.1.5").expect("runc");
    let supervisor = Running::start_configured(None, policy, |config| {
        config.exec_gate = true;
        config.memfd_lockdown = lockdown;
    })
    .await
    .expect("supervisor");
    let script = race_script();
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", &script]).expect("bundle");
    support::run_to_end(bundle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_on_no_racing_memfd_runs_and_memfds_are_sealed() {
    let host_before = host_value();
    let output = race(true, support::BLOCK_POLICY).await;
    support::expect_line(&output, "noexec=2");
    support::expect_line(&output, &format!("mfd-exec errno={}", libc::EACCES));
    support::expect_line(&output, "mfd-plain exec-sealed=1");
    for mode in MODES {
        let (image, drift, denied, other) = support::swap_counts(&output, mode);
        println!("lock on, swap {mode}: image={image} memfd={drift} denied={denied} other={other}");
        assert_eq!(
            drift, 0,
            "a swapped-in memfd ran under the lock ({mode}):\n{output}"
        );
        assert!(image > 0, "the image binary never ran ({mode}):\n{output}");
    }
    assert_eq!(host_value(), host_before, "the host's own value changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_off_racing_memfds_run() {
    let output = race(false, support::BLOCK_POLICY).await;
    support::expect_line(&output, "mfd-exec ok");
    let mut ran = 0;
    for mode in MODES {
        let (image, drift, denied, other) = support::swap_counts(&output, mode);
        println!(
            "lock off, swap {mode}: image={image} memfd={drift} denied={denied} other={other}"
        );
        ran += drift;
    }
    assert!(
        ran > 0,
        "the memfd race never won without the lock; the lock test proves nothing:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_policy_gets_no_lock() {
    let output = race(true, ALERT_POLICY).await;
    support::expect_line(&output, "mfd-exec ok");
    support::expect_line(&output, "mfd-plain exec-sealed=0");
    assert!(
        !output.lines().any(|l| l.trim() == "noexec=2"),
        "an alert-only policy locked the container:\n{output}"
    );
}

const IMAGE_LOOP: &str = "(echo noexec=$(cat /proc/sys/vm/memfd_noexec)
/bin/xat loop /bin/true 1000
/bin/xat loop /bin/tiny 1000
/bin/xat loop /usr/bin/gnu-true 300
/bin/xat loop /opt/scenario/hello.sh 300) > /tmp/out 2>&1
echo finished >> /tmp/out; sleep 60
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_container_runs_image_binaries_and_runc_exec() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start_configured(None, support::BLOCK_POLICY, |config| {
        config.memfd_lockdown = true;
    })
    .await
    .expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", IMAGE_LOOP]).expect("bundle");
    let (exec, loops) = support::blocking(move || {
        bundle.start_detached()?;
        // runc exec re-executes runc from a memfd it creates in the host's pid namespace, then
        // joins the locked container: it must keep working.
        let exec = bundle.exec(&["/bin/xat", "loop", "/bin/true", "50"])?;
        let mut loops = String::new();
        for _ in 0..1500 {
            loops = support::text(&bundle.exec(&["/bin/cat", "/tmp/out"])?);
            if loops.lines().any(|l| l == "finished") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(40));
        }
        drop(bundle);
        anyhow::Ok((exec, loops))
    })
    .await
    .expect("runc");
    assert!(exec.status.success(), "{}", support::text(&exec));
    support::expect_line(&support::text(&exec), "loop done failed=0");
    support::expect_line(&loops, "noexec=2");
    support::expect_line(&loops, "finished");
    let done: Vec<&str> = loops
        .lines()
        .filter(|l| l.starts_with("loop done"))
        .collect();
    assert_eq!(done, ["loop done failed=0"; 4], "{loops}");
    let events = supervisor.drain_events();
    assert!(events.is_empty(), "image binaries alerted: {events:#?}");
}

#[test]
fn lock_pid_namespace_locks_a_child_namespace_once_and_never_the_host() {
    let host_before = host_value();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    // The sleep is unshare's child, the first process of the new pid namespace.
    let mut sleeper = None;
    for _ in 0..200 {
        let children =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
                .unwrap_or_default();
        sleeper = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok());
        if sleeper.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let sleeper: u32 = sleeper.expect("unshare's child");
    let first = memfd::lock_pid_namespace(sleeper);
    let second = memfd::lock_pid_namespace(sleeper);
    let own = memfd::lock_pid_namespace(std::process::id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first.expect("first lock"), Locked::Now);
    assert_eq!(second.expect("second lock"), Locked::Already);
    assert!(
        matches!(own, Err(LockError::OwnNamespace { .. })),
        "{own:?}"
    );
    assert_eq!(host_value(), host_before, "the host's own value changed");
}
