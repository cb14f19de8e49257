//! Privileged tests of supervisor restarts with the fd holder:
//! - the supervisor is killed with SIGKILL while a container loops on execs of an image binary,
//!   and restarted; the holder keeps the notify fd, so no exec fails (none with ENOSYS) and
//!   drift is still denied afterwards;
//! - `runc exec` into a running container while no supervisor runs (stopped with SIGTERM, as in
//!   an upgrade) waits for the next supervisor instead of failing, because the holder keeps the
//!   hand-off listener; also when the socket file is removed meanwhile (the next supervisor
//!   binds a new socket and still serves what waited in the old one);
//! - a second supervisor on the same socket is refused while the first runs;
//! - the fd holder is restarted while the supervisor runs: the supervisor gives the new holder
//!   every notify fd again, so a later kill -9 of the supervisor still loses no exec.
//!
//! The supervisor runs as a separate process: this test binary re-executed with
//! `DG_CHILD_SUPERVISOR` set runs only [`child_supervisor`], which serves until SIGTERM or
//! SIGKILL.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use driftguard_image_index::IndexCache;
use driftguard_policy::{Policy, PolicyStore};
use driftguard_seccomp::{alive_path, Supervisor, SupervisorConfig};
use support::{blocking, text, Bundle};

const CHILD_ENV: &str = "DG_CHILD_SUPERVISOR";
const HOLDER_ENV: &str = "DG_CHILD_HOLDER";

/// Entry of an fd holder child process; does nothing in a normal test run.
#[test]
fn child_holder() {
    if let Some(path) = std::env::var_os(HOLDER_ENV).map(PathBuf::from) {
        let _ = driftguard_seccomp::holder::run_holder(&path);
    }
}

/// An fd holder in a process of its own (so it can be killed), serving once its socket file
/// is a new one.
fn spawn_holder(dir: &std::path::Path) -> Reaped {
    use std::os::unix::fs::MetadataExt;
    let socket = dir.join("holder/holder.sock");
    let before = std::fs::metadata(&socket).ok().map(|m| m.ino());
    let me = std::env::current_exe().expect("test binary");
    let child = Command::new(me)
        .args(["--exact", "child_holder", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn holder");
    for _ in 0..500 {
        let now = std::fs::metadata(&socket).ok().map(|m| m.ino());
        if now.is_some() && now != before {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Reaped(child)
}

/// Entry of the supervisor child process; does nothing in a normal test run.
#[test]
fn child_supervisor() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let policy = Policy::from_yaml(support::BLOCK_POLICY, "test-policy").expect("policy");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let config = SupervisorConfig::new(
            dir.join("run/supervisor.sock"),
            Some(dir.join("holder/holder.sock")),
        );
        let supervisor = Supervisor::new(
            config,
            Arc::new(PolicyStore::new(policy)),
            Arc::new(IndexCache::new(dir.join("index"))),
            Arc::new(tx),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        supervisor
            .run(async move {
                term.recv().await;
            })
            .await
            .expect("supervisor");
    });
}

fn spawn_supervisor(dir: &std::path::Path) -> Child {
    let me = std::env::current_exe().expect("test binary");
    let child = Command::new(me)
        .args([
            "--exact",
            "child_supervisor",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn supervisor");
    // Serving once the liveness socket exists (the hand-off socket may be the holder's).
    let alive = alive_path(&dir.join("run/supervisor.sock"));
    for _ in 0..500 {
        if alive.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

async fn start_holder(dir: &std::path::Path) {
    let holder_socket = dir.join("holder/holder.sock");
    let hs = holder_socket.clone();
    std::thread::spawn(move || driftguard_seccomp::holder::run_holder(&hs));
    for _ in 0..200 {
        if holder_socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const LOOP_SCRIPT: &str = r#"
while [ ! -e /restarted ]; do /bin/xat loop /bin/true 100 || echo LOOPFAIL; done
/bin/xat loop /bin/true 200 || echo LOOPFAIL
cp /bin/busybox /root/evil; echo x >> /root/evil; chmod 755 /root/evil
/root/evil true; echo drift-rc=$?
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_no_exec() {
    let runc = support::runc("1.1.5").expect("runc");
    let dir = tempfile::Builder::new()
        .prefix("dg-restart-")
        .tempdir()
        .expect("tempdir");
    start_holder(dir.path()).await;
    let mut first = spawn_supervisor(dir.path());
    let socket = dir.path().join("run/supervisor.sock");
    let bundle = Bundle::new(&runc, &socket, &["/bin/sh", "-c", LOOP_SCRIPT]).expect("bundle");
    let marker = bundle.rootfs().join("restarted");
    let container = tokio::task::spawn_blocking(move || {
        let out = bundle.run();
        drop(bundle);
        out
    });

    // Let the loop run, kill the supervisor mid-stream, leave execs waiting, restart.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().expect("SIGKILL the supervisor");
    first.wait().expect("reap");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut second = blocking({
        let dir = dir.path().to_path_buf();
        move || spawn_supervisor(&dir)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&marker, b"").expect("marker");

    let out = tokio::time::timeout(Duration::from_secs(60), container)
        .await
        .expect("container finished")
        .expect("join")
        .expect("runc run");
    second.kill().expect("kill second supervisor");
    let _ = second.wait();
    let output = text(&out);
    assert!(
        !output.contains("LOOPFAIL"),
        "an exec failed across the restart:\n{output}"
    );
    assert!(
        !output.contains("failed status"),
        "an exec failed across the restart:\n{output}"
    );
    assert!(output.contains("loop done failed=0"), "{output}");
    assert!(
        output.lines().any(|l| l.trim() == "drift-rc=126"),
        "drift not denied after restart:\n{output}"
    );
}

/// An upgrade: the supervisor stops cleanly and the next one is not there yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_exec_while_no_supervisor_runs_waits_for_the_next_one() {
    exec_across_a_stop(|_| {}).await;
}

/// Starts a container under a supervisor, stops the supervisor with SIGTERM, and starts a
/// `runc exec` that must wait; `between` runs before the next supervisor starts. The exec must
/// then run its image binary and have its drift denied.
async fn exec_across_a_stop(between: impl FnOnce(&std::path::Path)) {
    let runc = support::runc("1.1.5").expect("runc");
    let dir = tempfile::Builder::new()
        .prefix("dg-restart-")
        .tempdir()
        .expect("tempdir");
    start_holder(dir.path()).await;
    let mut first = spawn_supervisor(dir.path());
    let socket = dir.path().join("run/supervisor.sock");
    let bundle = Bundle::new(&runc, &socket, &["/bin/sleep", "120"]).expect("bundle");
    let bundle = blocking(move || bundle.start_detached().map(|()| bundle))
        .await
        .expect("container started");
    let pid = rustix::process::Pid::from_raw(first.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    first.wait().expect("reap");
    assert!(
        socket.exists(),
        "the hand-off socket must stay while the holder keeps it"
    );
    assert!(!alive_path(&socket).exists(), "the liveness socket must go");
    let script = "/bin/true; echo img-rc=$?; cp /bin/busybox /root/x; echo x >> /root/x; \
                  chmod 755 /root/x; /root/x true; echo drift-rc=$?";
    let exec = tokio::task::spawn_blocking(move || {
        let out = bundle.exec(&["/bin/sh", "-c", script]);
        drop(bundle);
        out
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !exec.is_finished(),
        "runc exec ended while no supervisor ran: {:?}",
        exec.await.map(|out| out.map(|out| text(&out)))
    );
    between(&socket);
    let mut second = blocking({
        let dir = dir.path().to_path_buf();
        move || spawn_supervisor(&dir)
    })
    .await;
    let out = tokio::time::timeout(Duration::from_secs(60), exec)
        .await
        .expect("runc exec finished after the restart")
        .expect("join")
        .expect("runc exec");
    second.kill().expect("kill second supervisor");
    let _ = second.wait();
    let output = text(&out);
    assert!(out.status.success(), "runc exec failed:\n{output}");
    support::expect_line(&output, "img-rc=0");
    support::expect_line(&output, "drift-rc=126");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_that_waited_are_served_when_the_socket_file_was_removed() {
    exec_across_a_stop(|socket| std::fs::remove_file(socket).expect("remove the socket file"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_the_same_socket_is_refused() {
    let dir = tempfile::Builder::new()
        .prefix("dg-restart-")
        .tempdir()
        .expect("tempdir");
    start_holder(dir.path()).await;
    let first = Reaped(spawn_supervisor(dir.path()));
    let socket = dir.path().join("run/supervisor.sock");
    assert!(alive_path(&socket).exists(), "the first supervisor serves");
    let policy = Policy::from_yaml(support::BLOCK_POLICY, "test-policy").expect("policy");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let config = SupervisorConfig::new(socket.clone(), Some(dir.path().join("holder/holder.sock")));
    let second = Supervisor::new(
        config,
        Arc::new(PolicyStore::new(policy)),
        Arc::new(IndexCache::new(dir.path().join("index"))),
        Arc::new(tx),
    );
    let result = tokio::time::timeout(Duration::from_secs(10), second.run(std::future::pending()))
        .await
        .expect("the second supervisor returned");
    let err = result.expect_err("a second supervisor must be refused");
    assert!(err.to_string().contains("already serves"), "{err}");
    assert!(
        alive_path(&socket).exists(),
        "the first supervisor still serves"
    );
    drop(first);
}

/// A supervisor child killed and reaped when dropped, also when the test fails first.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_holder_is_given_every_fd_again() {
    let runc = support::runc("1.1.5").expect("runc");
    let dir = tempfile::Builder::new()
        .prefix("dg-restart-")
        .tempdir()
        .expect("tempdir");
    let first_holder = spawn_holder(dir.path());
    let mut supervisor = Reaped(spawn_supervisor(dir.path()));
    let socket = dir.path().join("run/supervisor.sock");
    let bundle = Bundle::new(&runc, &socket, &["/bin/sh", "-c", LOOP_SCRIPT]).expect("bundle");
    let marker = bundle.rootfs().join("restarted");
    let container = tokio::task::spawn_blocking(move || {
        let out = bundle.run();
        drop(bundle);
        out
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The holder is restarted (an upgrade of the holder) while the supervisor serves.
    drop(first_holder);
    let _second_holder = blocking({
        let dir = dir.path().to_path_buf();
        move || spawn_holder(&dir)
    })
    .await;
    // The supervisor looks every 2 s.
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // Now the supervisor dies: only the new holder has the container's notify fd.
    drop(supervisor);
    tokio::time::sleep(Duration::from_millis(700)).await;
    supervisor = Reaped(
        blocking({
            let dir = dir.path().to_path_buf();
            move || spawn_supervisor(&dir)
        })
        .await,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&marker, b"").expect("marker");
    let out = tokio::time::timeout(Duration::from_secs(60), container)
        .await
        .expect("container finished")
        .expect("join")
        .expect("runc run");
    drop(supervisor);
    let output = text(&out);
    assert!(
        !output.contains("LOOPFAIL") && !output.contains("failed status"),
        "an exec failed after the holder restart:\n{output}"
    );
    assert!(output.contains("loop done failed=0"), "{output}");
    assert!(
        output.lines().any(|l| l.trim() == "drift-rc=126"),
        "drift not denied after the restarts:\n{output}"
    );
}
