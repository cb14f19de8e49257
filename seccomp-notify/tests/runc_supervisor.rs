//! Privileged end-to-end tests: busybox bundles on a real overlay rootfs run under runc with the
//! notify profile pointing at a supervisor that uses the project's policy store and image index.

mod support;

use driftguard_policy::{Outcome, VerdictClass};
use support::{blocking, text, Bundle, Running};

const DRIFT_SCRIPT: &str = r#"
/bin/ls / >/dev/null && echo ls-ok
cp /bin/busybox /root/evil; echo drift >> /root/evil; chmod 755 /root/evil
/root/evil true; echo upper-rc=$?
cp /root/evil /tmp/evil; chmod 755 /tmp/evil
/tmp/evil true; echo tmpfs-rc=$?
mkdir /root/bin; cp /bin/busybox /root/bin/true; /root/bin/true; echo reloc-rc=$?
cd /bin && ./busybox true; echo rel-img-rc=$?
cd /tmp && ./evil true; echo rel-evil-rc=$?
cd /bin && ../tmp/evil true; echo dotdot-rc=$?
cd /; /bin/../tmp/evil true; echo abs-dotdot-rc=$?
mkdir /tmp/up; ln -s ../../../../../../bin/busybox /tmp/up/true; /tmp/up/true; echo symlink-up-rc=$?
ln -s /../../../../usr/bin/env /tmp/out; /tmp/out true; echo symlink-out-rc=$?
/bin/xat dirfd /bin busybox true; echo xat-dirfd-img-rc=$?
/bin/xat dirfd /tmp evil true; echo xat-dirfd-evil-rc=$?
/bin/xat fd /bin/busybox true; echo xat-fd-img-rc=$?
/bin/xat fd /tmp/evil true; echo xat-fd-evil-rc=$?
/bin/xat memfd /bin/busybox true; echo memfd-rc=$?
touch /bin/busybox; /bin/busybox true; echo touched-rc=$?
"#;

async fn drift_is_denied_and_image_binaries_run(version: &str) {
    let runc = support::runc(version).expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", DRIFT_SCRIPT]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    for line in [
        "ls-ok",
        "upper-rc=126",
        "tmpfs-rc=126",
        "reloc-rc=0",
        "rel-img-rc=0",
        "rel-evil-rc=126",
        "dotdot-rc=126",
        "abs-dotdot-rc=126",
        "symlink-up-rc=0",
        "symlink-out-rc=127",
        "xat-dirfd-img-rc=0",
        "xat-dirfd-evil-rc=126",
        "xat-fd-img-rc=0",
        "xat-fd-evil-rc=126",
        "memfd-rc=126",
        "touched-rc=0",
    ] {
        support::expect_line(&output, line);
    }
    assert!(
        output.contains("/root/evil: Operation not permitted"),
        "{output}"
    );

    let events = supervisor.drain_events();
    let denied = |path: &str, class: VerdictClass| support::denied(&events, path, class);
    assert!(denied("/root/evil", VerdictClass::NewFile), "{events:#?}");
    assert!(denied("/tmp/evil", VerdictClass::NewFile), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.class == Some(VerdictClass::Fileless)),
        "{events:#?}"
    );
    let reloc = events
        .iter()
        .find(|e| e.path == "/root/bin/true")
        .expect("relocated event");
    assert_eq!(reloc.class, Some(VerdictClass::RelocatedImageBinary));
    assert_eq!(reloc.outcome, Outcome::Alert);
    assert_eq!(reloc.namespace, "tests");
    assert_eq!(reloc.pod, "pod-1");
    assert!(reloc.hash.is_some());
    assert!(
        !events.iter().any(|e| e.path == "/bin/busybox"),
        "image files and a metadata-only copy-up are silent: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_1_1_5_drift_is_denied_and_image_binaries_run() {
    drift_is_denied_and_image_binaries_run("1.1.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_1_3_6_drift_is_denied_and_image_binaries_run() {
    drift_is_denied_and_image_binaries_run("1.3.6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_exec_hands_off_a_second_fd_that_is_served() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let bundle = Bundle::new(&runc, &supervisor.socket, &["/bin/sleep", "60"]).expect("bundle");
    let out = blocking(move || {
        bundle.start_detached()?;
        let script = "/bin/true; echo img-rc=$?; cp /bin/busybox /root/x; echo x >> /root/x; \
                      chmod 755 /root/x; /root/x true; echo drift-rc=$?";
        let out = bundle.exec(&["/bin/sh", "-c", script]);
        drop(bundle);
        out
    })
    .await
    .expect("runc exec");
    let output = text(&out);
    support::expect_line(&output, "img-rc=0");
    support::expect_line(&output, "drift-rc=126");
    let events = supervisor.drain_events();
    assert!(
        events
            .iter()
            .any(|e| e.path == "/root/x" && e.outcome == Outcome::Deny),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_a_verdict_and_serving_goes_on() {
    let runc = support::runc("1.1.5").expect("runc");
    let supervisor = Running::start(None).await.expect("supervisor");
    let script = r#"
/bin/xat nonul; echo nonul-rc=$?
/bin/xat long; echo long-rc=$?
ln -s loop2 /tmp/loop1; ln -s loop1 /tmp/loop2; /tmp/loop1; echo loop-rc=$?
cp /bin/busybox /root/big; echo x >> /root/big; chmod 755 /root/big
/bin/xat race /root/big 40; echo race-rc=$?
/bin/xat race /bin/true 40
/bin/true; echo after-rc=$?
/root/big true; echo big-rc=$?
"#;
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    support::expect_line(
        &output,
        &format!("execve-nonul errno={} (Bad address)", libc::EFAULT),
    );
    support::expect_line(
        &output,
        &format!(
            "execve-long errno={} (File name too long)",
            libc::ENAMETOOLONG
        ),
    );
    assert!(
        output.contains("/tmp/loop1: Too many levels of symbolic links"),
        "{output}"
    );
    support::expect_line(&output, "race-rc=0");
    support::expect_line(&output, "after-rc=0");
    support::expect_line(&output, "big-rc=126");
}

/// A copy of an image binary is allowed (relocated image binary, alerted), then rewritten in
/// place through a shared mapping: on tmpfs (`/dev`) that leaves its identity unchanged, and on
/// the overlay (`/root`) a mapping written before the check changes it later without a new stamp. Either
/// way the rewritten file must be judged again (new file: denied), not answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rewritten_through_a_mapping_are_judged_again() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let script = "cp /bin/xat /dev/z; /dev/z ran; echo tmpfs-first-rc=$?
/bin/xat mmpatch /dev/z; /dev/z marker; echo tmpfs-patched-rc=$?
cp /bin/xat /root/w; /bin/xat prefault-patch /root/w; /root/w marker; echo upper-patched-rc=$?
/dev/z ran; echo tmpfs-again-rc=$?
cp /bin/xat /root/m; /bin/xat hold-dirty /root/m & H=$!
while [ ! -e /root/m.ready ]; do :; done
/root/m marker; echo dirty-first-rc=$?
touch /root/m.go; while [ ! -e /root/m.patched ]; do :; done
/root/m marker; echo dirty-patched-rc=$?
touch /root/m.done; wait $H
/root/m marker; echo mapped-after-rc=$?
cp /bin/xat /root/c; /root/c marker >/dev/null; echo cached-first-rc=$?
/bin/xat hold-clean /root/c & H=$!
while [ ! -e /root/c.ready ]; do :; done
/root/c marker; echo cached-mapped-rc=$?
touch /root/c.go /root/c.done; wait $H";
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    let events = supervisor.drain_events();
    for line in [
        "tmpfs-first-rc=42",
        "patched",
        "tmpfs-patched-rc=126",
        "prefault-exec-rc=26",
        "upper-patched-rc=126",
        "tmpfs-again-rc=126",
        // Overlayfs maps the upper file itself, and the kernel lets such a file run while
        // another process has it mapped writable; driftguard refuses it as the kernel does
        // elsewhere (text file busy), and judges the content again once the mapping is gone.
        "dirty-first-rc=126",
        "dirty-patched-rc=126",
        "mapped-after-rc=126",
        // A verdict cached before the file was mapped writable does not let it run.
        "cached-first-rc=0",
        "cached-mapped-rc=126",
    ] {
        support::expect_line(&output, line);
    }
    assert!(
        !output.contains("marker:EVIL"),
        "a rewritten file ran:\n{output}"
    );
    assert!(
        !output.contains("marker:good"),
        "a file mapped writable ran:\n{output}"
    );
    assert_eq!(
        output.matches("Text file busy").count(),
        3,
        "the mapped files are refused as busy:\n{output}"
    );
    for path in ["/dev/z", "/root/w", "/root/m"] {
        assert!(
            support::denied(&events, path, VerdictClass::NewFile),
            "{path} not denied as a new file: {events:#?}"
        );
    }
}

/// An x32 `execve` reaches the filter even on a kernel built without x32: the container gets
/// what the kernel gives the same call outside any filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x32_execs_get_the_kernels_answer() {
    let runc = support::runc("1.1.5").expect("runc");
    let supervisor = Running::start(None).await.expect("supervisor");
    let layer = support::layer().expect("layer");
    let host = std::process::Command::new(layer.join("bin/xat"))
        .args(["x32", "/bin/true"])
        .output()
        .expect("xat on the host");
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/xat", "x32", "/bin/true"]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    if host.is_empty() {
        // The kernel serves x32 and ran /bin/true: the container must run it too.
        assert!(!output.contains("execve-x32 errno"), "{output}");
    } else {
        support::expect_line(&output, &host);
    }
}

/// An image script replaced over and over by a same-content copy (`cp` + `mv`, as deployment
/// tools do) keeps running: a file unlinked between resolution and classification is resolved
/// again, never taken for a fileless exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_replaced_by_rename_keeps_running() {
    let runc = support::runc("1.1.5").expect("runc");
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let script = "cp /opt/scenario/hello.sh /root/orig
(while [ ! -e /root/stop ]; do cp /root/orig /root/s.new; mv /root/s.new /opt/scenario/hello.sh; done) &
i=0; f=0
while [ $i -lt 400 ]; do /opt/scenario/hello.sh >/dev/null || f=$((f+1)); i=$((i+1)); done
echo replaced-failures=$f
touch /root/stop; wait";
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", script]).expect("bundle");
    let output = support::run_to_end(bundle).await;
    let events = supervisor.drain_events();
    support::expect_line(&output, "replaced-failures=0");
    assert!(
        !events
            .iter()
            .any(|e| e.class == Some(VerdictClass::Fileless)),
        "{events:#?}"
    );
}
