//! Privileged end-to-end tests of what the kernel loads inside one exec besides the named file:
//! `#!` interpreters and the ELF program interpreter (dynamic loader), under real runc over a
//! real overlay, with the supervisor blocking drift.

mod support;

use driftguard_policy::VerdictClass;
use support::{Bundle, Running};

const SCRIPT: &str = r#"
/opt/scenario/hello.sh; echo hello-rc=$?
cd / && /opt/scenario/relative.sh; echo relative-img-rc=$?
/usr/bin/gnu-true; echo gnu-true-rc=$?
/opt/scenario/nest2; echo nest-four-rc=$?
/opt/scenario/nest1; echo nest-five-rc=$?
cp /bin/busybox /tmp/drift; echo drift >> /tmp/drift; chmod 755 /tmp/drift
cp /usr/bin/gnu-true /tmp/drift-dyn; echo drift >> /tmp/drift-dyn; chmod 755 /tmp/drift-dyn
cp /lib64/ld-linux-x86-64.so.2 /tmp/myld; chmod 755 /tmp/myld
/tmp/myld /usr/bin/gnu-true; echo myld-img-rc=$?
/tmp/myld /tmp/drift-dyn; echo myld-drift-rc=$?
mkdir /tmp/bin; cp /tmp/drift /tmp/bin/sh
cd /tmp && /opt/scenario/relative.sh; echo relative-drift-rc=$?
cd /
cp /bin/tiny /tmp/tiny; echo drift >> /tmp/tiny
cat /tmp/tiny > /lib64/ld-linux-x86-64.so.2
/usr/bin/gnu-true; echo swapped-loader-rc=$?
ln -sf /tmp/drift /bin/sh
/opt/scenario/hello.sh; echo swapped-sh-rc=$?
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_interpreters_and_copied_loaders_are_denied() {
    let runc = support::runc("1.3.6").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", SCRIPT]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    for line in [
        "hello-from-script",
        "hello-rc=0",
        "relative-from-script",
        "relative-img-rc=0",
        "gnu-true-rc=0",
        "nested-5",
        "nest-four-rc=0",
        "nest-five-rc=126",
        "myld-img-rc=0",
        "myld-drift-rc=126",
        "relative-drift-rc=126",
        "swapped-loader-rc=126",
        "swapped-sh-rc=126",
    ] {
        support::expect_line(&output, line);
    }
    assert!(
        output.contains("/opt/scenario/hello.sh: Operation not permitted"),
        "{output}"
    );
    assert!(
        output.contains("/usr/bin/gnu-true: Operation not permitted"),
        "{output}"
    );

    let events = supervisor.drain_events();
    let denied = |path: &str, class: VerdictClass| support::denied(&events, path, class);
    assert!(denied("/tmp/drift", VerdictClass::NewFile), "{events:#?}");
    assert!(denied("/tmp/bin/sh", VerdictClass::NewFile), "{events:#?}");
    assert!(
        denied("/tmp/drift-dyn", VerdictClass::LoaderTrick),
        "{events:#?}"
    );
    assert!(
        denied(
            "/lib64/ld-linux-x86-64.so.2",
            VerdictClass::ModifiedImageFile
        ),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.path == "/bin/busybox" || e.path == "/usr/bin/gnu-true"),
        "image files run silently: {events:#?}"
    );
}

/// A policy that only alerts on files of volumes (the test's `/tmp` is a tmpfs mount).
const VOLUME_ALERT_POLICY: &str = "apiVersion: driftguard.dev/v1
kind: DriftPolicy
spec:
  volumeFiles: alert
  defaultRule:
    name: block-drift
    action: block
";

/// A script whose `#!` line runs the image's loader with a dropped program as its argument:
/// the script may run (an alert, on a volume), but the program the loader would load is judged
/// as a loader trick and the exec denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_named_by_a_script_line_is_checked_for_its_program() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start_configured(None, VOLUME_ALERT_POLICY, |_| {})
        .await
        .expect("supervisor");
    let script = "cp /bin/xat /root/evil; echo x >> /root/evil; chmod 755 /root/evil
/root/evil ran; echo direct-rc=$?
printf '#!/lib64/ld-linux-x86-64.so.2 /root/evil\\necho no\\n' > /tmp/s; chmod 755 /tmp/s
/tmp/s; echo script-rc=$?";
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    support::expect_line(&output, "direct-rc=126");
    support::expect_line(&output, "script-rc=126");
    let events = supervisor.drain_events();
    assert!(
        support::denied(&events, "/root/evil", VerdictClass::LoaderTrick),
        "{events:#?}"
    );
}
