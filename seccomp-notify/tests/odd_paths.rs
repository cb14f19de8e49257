//! Privileged end-to-end tests of exec paths that go through procfs: magic links
//! (`/proc/PID/root`, `/proc/self/cwd`, `/proc/self/fd/N`), a cwd inside procfs, symlinks into
//! `/proc/self`, and bad fds. Busybox bundles run under real runc with the supervisor; each route
//! runs an image binary and denies a dropped one, as the kernel finds them. A magic link to a
//! host directory (the host's procfs bind-mounted into the container) is refused.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use driftguard_policy::{Outcome, VerdictClass};
use support::{Bundle, Running};

/// Exec calls the shell cannot make: bad fds and a memfd reached by a `/proc/self/fd` path.
const HELPER: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
extern char **environ;
static char *args[] = {"true", NULL};
static int report(const char *what) {
    printf("%s errno=%d\n", what, errno);
    fflush(stdout);
    return 126;
}
static int memfd_of(const char *path) {
    int src = open(path, O_RDONLY), mfd = memfd_create("payload", 0);
    char buf[65536]; ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0) write(mfd, buf, n);
    return mfd;
}
int main(int argc, char **argv) {
    char path[64];
    if (argc < 3) return 2;
    if (!strcmp(argv[1], "badfd") && argc >= 4) {
        int fd = atoi(argv[2]);
        close(fd);
        syscall(SYS_execveat, fd, argv[3], args, environ, 0);
        return report("execveat-badfd");
    }
    if (!strcmp(argv[1], "emptyfd")) {
        int fd = atoi(argv[2]);
        close(fd);
        syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
        return report("execveat-emptyfd");
    }
    if (!strcmp(argv[1], "memfd-path")) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", memfd_of(argv[2]));
        execve(path, args, environ);
        return report("memfd-path");
    }
    if (!strcmp(argv[1], "memfd-rel")) {
        snprintf(path, sizeof path, "./%d", memfd_of(argv[2]));
        if (chdir("/proc/self/fd") != 0) return report("chdir");
        execve(path, args, environ);
        return report("memfd-rel");
    }
    return 2;
}
"#;

/// Builds `/bin/oddx` into the image layer once, before any bundle mounts it.
fn helper() -> &'static Path {
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let layer = support::layer().expect("image layer");
        let src = layer.join("oddx.c");
        std::fs::write(&src, HELPER).expect("helper source");
        let out = layer.join("bin/oddx");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc -static");
        assert!(status.success(), "gcc -static failed for {}", src.display());
        std::fs::remove_file(&src).expect("remove helper source");
        out
    })
}

/// Lets the container chroot, gives it the host's procfs read-only at `/hostproc` and this
/// test process's pid as `HOSTPID`.
fn grant(bundle: &Bundle) -> anyhow::Result<()> {
    let path = bundle.dir.join("config.json");
    let mut config = support::allow_chroot(bundle)?;
    config["mounts"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no mounts in {}", path.display()))?
        .push(serde_json::json!({
            "destination": "/hostproc", "type": "bind", "source": "/proc",
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]
        }));
    config["process"]["env"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no env in {}", path.display()))?
        .push(format!("HOSTPID={}", std::process::id()).into());
    support::write_config(bundle, &config)
}

const SCRIPT: &str = r#"
cp /bin/busybox /tmp/evil; echo drift >> /tmp/evil; chmod 755 /tmp/evil
sleep 30 & S=$!
/proc/1/root/bin/ls / >/dev/null; echo p1-root-ls-rc=$?
/proc/self/root/bin/ls / >/dev/null; echo self-root-ls-rc=$?
/proc/$S/root/bin/ls / >/dev/null; echo pid-root-ls-rc=$?
/proc/1/root/tmp/evil true; echo p1-root-evil-rc=$?
/proc/self/root/tmp/evil true; echo self-root-evil-rc=$?
/proc/$S/root/tmp/evil true; echo pid-root-evil-rc=$?
exec 7</tmp/evil 8</bin/busybox
(cd /proc/self && ./exe true); echo rel-exe-rc=$?
(cd /proc/self && ./root/bin/ls / >/dev/null); echo rel-root-ls-rc=$?
(cd /proc/self && ./root/tmp/evil true); echo rel-root-evil-rc=$?
(cd /proc/self/fd && ./8 true); echo rel-fd-img-rc=$?
(cd /proc/self/fd && ./7 true); echo rel-fd-evil-rc=$?
mkdir /tmp/l
ln -s /proc/self/root/bin/ls /tmp/l/ls; /tmp/l/ls / >/dev/null; echo link-root-ls-rc=$?
ln -s /proc/self/exe /tmp/l/selfexe; /tmp/l/selfexe; echo link-exe-rc=$?
ln -s /proc/self/root/tmp/evil /tmp/l/evil; /tmp/l/evil true; echo link-root-evil-rc=$?
ln -s /proc/self/fd/7 /tmp/l/fd7; /tmp/l/fd7 true; echo link-fd-evil-rc=$?
/bin/oddx badfd 57 busybox
/bin/oddx emptyfd 57
/bin/oddx memfd-path /bin/busybox
/bin/oddx memfd-rel /bin/busybox
mkdir -p /tmp/jail/bin; cp /bin/busybox /tmp/jail/bin/sleep; cp /tmp/evil /tmp/jail/bin/ls
chroot /tmp/jail /bin/sleep 30 & J=$!
(cd /tmp && exec sleep 30) & C=$!
sleep 0.5
/proc/$J/root/bin/ls true; echo jail-evil-rc=$?
/proc/$J/root/../../bin/ls / >/dev/null; echo jail-dotdot-ls-rc=$?
/proc/$C/cwd/evil true; echo cwd-evil-rc=$?
/proc/$C/cwd/../bin/ls / >/dev/null; echo cwd-dotdot-ls-rc=$?
/hostproc/$HOSTPID/root/bin/true; echo host-root-rc=$?
/hostproc/$HOSTPID/cwd/../../bin/true; echo host-cwd-rc=$?
kill $S $J $C
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procfs_routes_run_image_binaries_and_deny_drift() {
    let runc = support::runc("1.1.5").expect("runc");
    helper();
    let mut supervisor = Running::start(None).await.expect("supervisor");
    let bundle =
        Bundle::new(&runc, &supervisor.socket, &["/bin/sh", "-c", SCRIPT]).expect("bundle");
    grant(&bundle).expect("bundle grants");
    let output = support::run_to_end(bundle).await;

    // Image binaries run: ls (0) or busybox under an unknown applet name (127, not 126).
    for line in [
        "p1-root-ls-rc=0",
        "self-root-ls-rc=0",
        "pid-root-ls-rc=0",
        "rel-exe-rc=127",
        "rel-root-ls-rc=0",
        "rel-fd-img-rc=127",
        "link-root-ls-rc=0",
        "link-exe-rc=127",
        "jail-dotdot-ls-rc=0",
        "cwd-dotdot-ls-rc=0",
    ] {
        support::expect_line(&output, line);
    }
    // The same routes to a dropped binary are denied.
    for line in [
        "p1-root-evil-rc=126",
        "self-root-evil-rc=126",
        "pid-root-evil-rc=126",
        "rel-root-evil-rc=126",
        "rel-fd-evil-rc=126",
        "link-root-evil-rc=126",
        "link-fd-evil-rc=126",
        "jail-evil-rc=126",
        "cwd-evil-rc=126",
        "host-root-rc=126",
        "host-cwd-rc=126",
    ] {
        support::expect_line(&output, line);
    }
    // Kernel errnos: a closed fd is EBADF; a memfd behind a path is fileless and denied.
    for line in [
        format!("execveat-badfd errno={}", libc::EBADF),
        format!("execveat-emptyfd errno={}", libc::EBADF),
        format!("memfd-path errno={}", libc::EPERM),
        format!("memfd-rel errno={}", libc::EPERM),
    ] {
        support::expect_line(&output, &line);
    }

    let events = supervisor.drain_events();
    for path in ["/tmp/evil", "/tmp/jail/bin/ls"] {
        assert!(
            support::denied(&events, path, VerdictClass::NewFile),
            "no new-file denial of {path}: {events:#?}"
        );
    }
    let fileless = events
        .iter()
        .filter(|e| e.class == Some(VerdictClass::Fileless) && e.outcome == Outcome::Deny)
        .count();
    assert!(fileless >= 2, "memfd paths are fileless: {events:#?}");
    let outside = events
        .iter()
        .filter(|e| {
            e.outcome == Outcome::Deny
                && e.class.is_none()
                && e.error
                    .as_deref()
                    .is_some_and(|err| err.contains("outside the caller's root"))
        })
        .count();
    assert_eq!(outside, 2, "host directories are refused: {events:#?}");
    assert!(
        !events.iter().any(|e| e.path == "/bin/busybox"),
        "image binaries are silent: {events:#?}"
    );
}
