//! Privileged end-to-end test of `/proc/self` inside a chroot: busybox under real runc with the
//! supervisor. A dropped binary placed at `<dir>/proc/self/exe` and run with
//! `chroot <dir> /proc/self/exe` is an ordinary new file there (the chroot has no procfs), so it
//! is denied; `/proc/self/exe` and `/proc/self/fd/N` of the container itself still name the
//! caller's own (image) binary and run.

mod support;

use driftguard_policy::{Outcome, VerdictClass};
use support::{Bundle, Running};

const SCRIPT: &str = r#"
/proc/self/exe true; echo self-exe-rc=$?
/proc/thread-self/exe true; echo thread-self-exe-rc=$?
exec 7</bin/busybox; /proc/self/fd/7 true; echo self-fd-rc=$?
env -i /bin/sh -c 'sh -c "echo standalone-ok"'
cp /bin/busybox /tmp/drift; echo drift >> /tmp/drift; chmod 755 /tmp/drift
mkdir -p /tmp/fake/proc/self/fd /tmp/fake/proc/thread-self
cp /tmp/drift /tmp/fake/proc/self/exe; cp /tmp/drift /tmp/fake/proc/thread-self/exe
cp /tmp/drift /tmp/fake/proc/self/fd/7
chroot /tmp/fake /proc/self/exe true; echo chroot-self-rc=$?
chroot /tmp/fake /proc/thread-self/exe true; echo chroot-thread-self-rc=$?
chroot /tmp/fake /proc/self/fd/7 true; echo chroot-fd-rc=$?
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_self_in_a_chroot_is_an_ordinary_file_and_is_denied() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", SCRIPT]).expect("bundle");
    support::allow_chroot(&bundle)
        .and_then(|config| support::write_config(&bundle, &config))
        .expect("chroot allowed");
    let output = support::run_to_end(bundle).await;
    // The container's own busybox runs (as an unknown applet name: 127, not a denial's 126).
    for line in [
        "self-exe-rc=127",
        "thread-self-exe-rc=127",
        "self-fd-rc=127",
        "standalone-ok",
    ] {
        support::expect_line(&output, line);
    }
    assert!(output.contains("exe: applet not found"), "{output}");
    for line in [
        "chroot-self-rc=126",
        "chroot-thread-self-rc=126",
        "chroot-fd-rc=126",
    ] {
        support::expect_line(&output, line);
    }
    assert!(
        output.contains("can't execute '/proc/self/exe': Operation not permitted"),
        "{output}"
    );

    let events = supervisor.drain_events();
    for path in ["/proc/self/exe", "/proc/thread-self/exe", "/proc/self/fd/7"] {
        assert!(
            events.iter().any(|e| e.path.ends_with(path)
                && e.class == Some(VerdictClass::NewFile)
                && e.outcome == Outcome::Deny),
            "no new-file denial for {path}: {events:#?}"
        );
    }
    assert!(
        !events.iter().any(|e| e.path == "/bin/busybox"),
        "the container's own binary is silent: {events:#?}"
    );
}
