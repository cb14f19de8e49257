//! The memfd lock: `vm.memfd_noexec = 2` in a container's pid namespace, so that no memfd
//! created in it can ever be executed.
//!
//! Why: the seccomp stage answers `CONTINUE` for an exec it resolved to an image file, and a
//! racing thread can then `dup2` a memfd onto the fd of `execveat(fd, "", AT_EMPTY_PATH)` (or
//! rewrite the path to `/proc/self/fd/N`). The exec gate cannot see that file: the kernel
//! refuses fanotify marks on its internal shm mount. A memfd that cannot be executed at all
//! closes that race at the kernel, whatever the timing.
//!
//! Kernel facts this module relies on (Linux source):
//! - `kernel/pid_sysctl.h`, `pid_mfd_noexec_dointvec_minmax`: `vm.memfd_noexec` is read and
//!   written for `task_active_pid_ns(current)`, the writer's *active* pid namespace, and a
//!   write needs `CAP_SYS_ADMIN` over that namespace's user namespace. The lower bound of a
//!   write is the parent's value, so the setting can only be made stricter.
//! - `include/linux/pid_namespace.h`, `pidns_memfd_noexec_scope`: the value in force is the
//!   maximum over the namespace and all its ancestors, so pid namespaces nested inside a locked
//!   container are locked too, whenever they were made (Linux ≥ 6.6; 6.3–6.5 copied the
//!   parent's value into a child at creation).
//! - `mm/memfd.c`, `check_sysctl_memfd_noexec` and `alloc_file`: at 2, a `memfd_create`
//!   without `MFD_EXEC`/`MFD_NOEXEC_SEAL` gets `MFD_NOEXEC_SEAL` (mode `& ~0111` and
//!   `F_SEAL_EXEC`, so it can never be made executable) and one with `MFD_EXEC` fails with
//!   `EACCES`. That is Linux ≥ 6.6 ("memfd: do not -EACCES old memfd_create() users with
//!   vm.memfd_noexec=2"); the first releases with the sysctl (6.3–6.5) refused every
//!   `memfd_create` without `MFD_NOEXEC_SEAL`, which would break ordinary programs. The
//!   sysctl appeared in 6.3 ("mm/memfd: add MFD_NOEXEC_SEAL and MFD_EXEC").
//!
//! How: a process must be *in* the namespace to write the sysctl, and `setns(CLONE_NEWPID)`
//! only changes the namespace of the caller's future children. So the daemon forks; the child
//! joins the container's pid namespace (an fd of `/proc/<pid>/ns/pid` opened before the fork)
//! and forks again; the grandchild, whose active namespace is the container's, reads the
//! value, writes `2` and reads it back. It reports a few bytes over a pipe and exits. Between
//! fork and exit only async-signal-safe system calls run (the daemon is multi-threaded): no
//! allocation, no locks, no Rust I/O. The child closes every other fd of the daemon and makes
//! itself non-dumpable first, since the grandchild is visible inside the container for the
//! moment it lives.
//!
//! Before the first lock, a probe does the same in a new, empty pid namespace of its own and
//! checks the kernel's semantics there (a plain memfd is created sealed, `MFD_EXEC` fails): a
//! kernel with the 6.3–6.5 behaviour is never locked.
//!
//! The supervisor locks a container's namespace before it serves the container's notify fd, so
//! the container's first exec waits for the lock, and only when the container's policy denies
//! the *fileless* class ([`Lockdown::apply`]).
//!
//! Invariants: the daemon's own pid namespace is never locked (a pod with `hostPID` shares it:
//! locking it would lock the host, and runc executes itself from a memfd); a pid whose root is
//! not the container's overlay is never locked (a replayed hand-off's pid may be recycled).
//!
//! Limits: the lock is per pid namespace, so containers that share one (a pod with
//! `shareProcessNamespace`, or `hostPID`) share it: the first container whose policy blocks
//! fileless execs locks the whole pod. It cannot be undone: a policy later changed to alert or
//! ignore keeps the lock for the namespace's lifetime, and a policy changed to block reaches a
//! running container only at its next hand-off (`runc exec`). A memfd created outside the
//! namespace (passed in over a unix socket by another pod or a host process) is not sealed.
//! A program in the container that asks for `MFD_EXEC` gets `EACCES`; such an exec would have
//! been denied as fileless anyway. An allow-list entry for a memfd path is not consulted (the
//! lock asks the policy about `/memfd:`, before any memfd exists). On kernels before 6.6 the
//! lock is not applied and the race stays open. The daemon needs `CAP_SYS_ADMIN` and a
//! writable `/proc/sys`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use driftguard_policy::{Outcome, VerdictClass};
use rustix::fs::{self as rfs, Mode, OFlags};
use tracing::{debug, info, warn};

use crate::container::Container;
use crate::decide::{Decider, ExecFacts};

/// The sysctl, as the host's procfs shows it.
pub const SYSCTL: &str = "/proc/sys/vm/memfd_noexec";

/// The same path for the forked children, which may not allocate.
const SYSCTL_C: &std::ffi::CStr = c"/proc/sys/vm/memfd_noexec";

/// The path the policy is asked about: a memfd's name as the kernel shows it starts with it.
const MEMFD_PATH: &str = "/memfd:";

/// What [`lock_pid_namespace`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// The namespace was at 0 or 1 and is now at 2.
    Now,
    /// The namespace (or an ancestor) was at 2 already; nothing was written.
    Already,
}

/// Why a pid namespace was not locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The process shares the daemon's pid namespace (a `hostPID` pod).
    #[error("pid {pid} is in the daemon's own pid namespace (hostPID): locking it would lock the host, whose runtime executes memfds")]
    OwnNamespace {
        /// The process.
        pid: u32,
    },
    /// The kernel has no `vm.memfd_noexec` (Linux < 6.3).
    #[error("{SYSCTL} does not exist (Linux < 6.3): memfds stay executable")]
    Unsupported,
    /// The kernel's semantics at 2 are those of Linux 6.3–6.5 (or unknown).
    #[error("the kernel's memfd_noexec=2 does not behave as on Linux >= 6.6 ({0}): not applied")]
    Semantics(String),
    /// The process is not (provably) the container's.
    #[error("pid {pid} is not in container {container}: {reason}")]
    NotContainer {
        /// The process.
        pid: u32,
        /// Container id.
        container: String,
        /// Why not.
        reason: &'static str,
    },
    /// The process could not be inspected.
    #[error("{what} of pid {pid}: {source}")]
    Process {
        /// What was read.
        what: &'static str,
        /// The process.
        pid: u32,
        /// The error.
        source: io::Error,
    },
    /// A step of the forked children failed.
    #[error("memfd lock of the pid namespace of pid {pid}: {step}: {source}")]
    Step {
        /// The process whose namespace was to be locked.
        pid: u32,
        /// The step that failed.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The value read back after the write was not 2.
    #[error("memfd lock of the pid namespace of pid {pid}: reads {found:?} after writing 2")]
    NotVerified {
        /// The process.
        pid: u32,
        /// The value read back.
        found: char,
    },
}

/// Sets `vm.memfd_noexec = 2` in the pid namespace of process `pid` (see the module doc).
/// Refuses the daemon's own namespace and kernels without the sysctl or with the 6.3–6.5
/// semantics.
pub fn lock_pid_namespace(pid: u32) -> Result<Locked, LockError> {
    let ns = rfs::open(
        format!("/proc/{pid}/ns/pid"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LockError::Process {
        what: "pid namespace",
        pid,
        source: e.into(),
    })?;
    lock_namespace_fd(pid, ns.as_fd())
}

/// [`lock_pid_namespace`] on an open `/proc/<pid>/ns/pid`.
fn lock_namespace_fd(pid: u32, ns: BorrowedFd<'_>) -> Result<Locked, LockError> {
    if same_file(ns, "/proc/self/ns/pid").map_err(|e| LockError::Process {
        what: "pid namespace",
        pid,
        source: e,
    })? {
        return Err(LockError::OwnNamespace { pid });
    }
    if !Path::new(SYSCTL).exists() {
        return Err(LockError::Unsupported);
    }
    probe()?;
    let report =
        run_in_pid_namespace(Namespace::Join(ns.as_raw_fd()), lock_job).map_err(|source| {
            LockError::Step {
                pid,
                step: "fork",
                source,
            }
        })?;
    match report.outcome {
        OUTCOME_DONE if report.value == b'2' => Ok(Locked::Now),
        OUTCOME_DONE => Err(LockError::NotVerified {
            pid,
            found: char::from(report.value),
        }),
        OUTCOME_ALREADY => Ok(Locked::Already),
        _ => Err(LockError::Step {
            pid,
            step: step_name(report.step),
            source: io::Error::from_raw_os_error(report.errno),
        }),
    }
}

/// Whether the open fd and the file at `path` are the same inode.
fn same_file(fd: BorrowedFd<'_>, path: &str) -> io::Result<bool> {
    let ours = rfs::fstat(fd)?;
    let theirs = rfs::stat(path)?;
    Ok(ours.st_dev == theirs.st_dev && ours.st_ino == theirs.st_ino)
}

/// The kernel's behaviour at 2, checked once per daemon in a throwaway pid namespace.
fn probe() -> Result<(), LockError> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    let probed = PROBED.get_or_init(|| {
        let report = run_in_pid_namespace(Namespace::New, probe_job)
            .map_err(|e| format!("probe: fork: {e}"))?;
        match report.outcome {
            OUTCOME_DONE => Ok(()),
            OUTCOME_PLAIN_REFUSED => Err(format!(
                "a plain memfd_create fails with {}",
                io::Error::from_raw_os_error(report.errno)
            )),
            OUTCOME_NOT_SEALED => Err("a plain memfd is not exec-sealed".into()),
            OUTCOME_EXEC_ALLOWED => Err("memfd_create(MFD_EXEC) succeeds".into()),
            _ => Err(format!(
                "probe: {}: {}",
                step_name(report.step),
                io::Error::from_raw_os_error(report.errno)
            )),
        }
    });
    probed.clone().map_err(LockError::Semantics)
}

/// The supervisor's side: which containers to lock, a record of those locked, and the logs.
#[derive(Debug, Default)]
pub struct Lockdown {
    /// (container id, pid namespace inode) → the container, for the containers locked (or
    /// found locked) already: a later hand-off of the same container (`runc exec`) costs no
    /// fork.
    locked: Mutex<HashMap<(String, u64), Weak<Container>>>,
}

impl Lockdown {
    /// Locks the pid namespace of `container` when its policy denies fileless execs, trying
    /// `pids` in order (the hand-off's process, then the container's init). Failures are
    /// logged with the container id and the reason; the container runs on either way.
    pub fn apply(&self, container: &Arc<Container>, decider: &dyn Decider, pids: &[i64]) {
        if !blocks_fileless(container, decider) {
            debug!(container_id = %container.id,
                   "policy does not block fileless execs; memfd lock not applied");
            return;
        }
        let mut last = None;
        for pid in pids.iter().filter_map(|&pid| u32::try_from(pid).ok()) {
            match self.lock_container(container, pid) {
                Ok(locked) => {
                    log_locked(container, pid, locked);
                    return;
                }
                Err(err @ (LockError::NotContainer { .. } | LockError::Process { .. })) => {
                    last = Some(err)
                }
                Err(err) => return log_refused(container, &err),
            }
        }
        let reason = last
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no pid".into());
        warn!(container_id = %container.id, reason = %reason,
              "memfd lock not applied: a racing memfd exec can run");
    }

    /// Checks that `pid` is one of the container's processes and locks its pid namespace.
    fn lock_container(&self, container: &Arc<Container>, pid: u32) -> Result<Locked, LockError> {
        let fail = |what, source| LockError::Process { what, pid, source };
        // Everything is read through one directory fd: if the pid dies and is reused, the
        // lookups fail instead of reading another process.
        let proc_dir = rfs::open(
            format!("/proc/{pid}"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("/proc entry", e.into()))?;
        let ns = rfs::openat(
            &proc_dir,
            "ns/pid",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("pid namespace", e.into()))?;
        let ns_ino = rfs::fstat(&ns)
            .map_err(|e| fail("pid namespace", e.into()))?
            .st_ino;
        let key = (container.id.clone(), ns_ino);
        if self.is_recorded(&key) {
            return Ok(Locked::Already);
        }
        let mountinfo = read_at(&proc_dir, "mountinfo").map_err(|e| fail("mountinfo", e))?;
        if let Err(reason) = in_container(container, &mountinfo) {
            return Err(LockError::NotContainer {
                pid,
                container: container.id.clone(),
                reason,
            });
        }
        let locked = lock_namespace_fd(pid, ns.as_fd())?;
        let mut records = self.records();
        records.retain(|_, weak| weak.strong_count() > 0);
        records.insert(key, Arc::downgrade(container));
        Ok(locked)
    }

    fn is_recorded(&self, key: &(String, u64)) -> bool {
        self.records()
            .get(key)
            .is_some_and(|weak| weak.strong_count() > 0)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Weak<Container>>> {
        crate::lock(&self.locked)
    }
}

/// Whether the container's policy denies a fileless exec.
fn blocks_fileless(container: &Container, decider: &dyn Decider) -> bool {
    let facts = ExecFacts {
        class: VerdictClass::Fileless,
        path: MEMFD_PATH,
        hash: None,
        on_volume: false,
    };
    decider.decide(&container.scope, &facts).outcome == Outcome::Deny
}

/// A process belongs to the container when its root is the container's overlay (known by its
/// upper layer); without a known overlay any process outside the daemon's namespace is taken.
fn in_container(container: &Container, mountinfo: &str) -> Result<(), &'static str> {
    let Some(upper) = container.layers.as_ref().and_then(|l| l.upperdir.as_ref()) else {
        return Ok(());
    };
    match crate::mountinfo::overlay_at(mountinfo, Path::new("/")) {
        Some(root) if root.upperdir.as_ref() == Some(upper) => Ok(()),
        _ => Err("its root is not the container's overlay"),
    }
}

fn read_at(dir: &OwnedFd, name: &str) -> io::Result<String> {
    let file = rfs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    io::read_to_string(std::fs::File::from(file))
}

fn log_locked(container: &Container, pid: u32, locked: Locked) {
    match locked {
        Locked::Now => info!(container_id = %container.id, pid,
                             "memfd lock: vm.memfd_noexec=2 in the container's pid namespace"),
        Locked::Already => debug!(container_id = %container.id, pid,
                                  "memfd lock: pid namespace already at vm.memfd_noexec=2"),
    }
}

fn log_refused(container: &Container, err: &LockError) {
    static UNSUPPORTED_LOGGED: AtomicBool = AtomicBool::new(false);
    let once = matches!(err, LockError::Unsupported | LockError::Semantics(_));
    if once && UNSUPPORTED_LOGGED.swap(true, Ordering::Relaxed) {
        return;
    }
    warn!(container_id = %container.id, reason = %err,
          "memfd lock not applied: a racing memfd exec can run");
}

// ----- the forked children: async-signal-safe code only below this line -----

/// Which pid namespace the grandchild runs in.
#[derive(Clone, Copy)]
enum Namespace {
    /// The namespace of this open `/proc/<pid>/ns/pid`.
    Join(RawFd),
    /// A new, empty one (the probe).
    New,
}

/// What the grandchild (or the child, for its own steps) reports over the pipe.
#[derive(Debug, Clone, Copy)]
struct Report {
    outcome: u8,
    step: u8,
    value: u8,
    errno: i32,
}

const OUTCOME_DONE: u8 = 1;
const OUTCOME_ALREADY: u8 = 2;
const OUTCOME_FAILED: u8 = 3;
const OUTCOME_PLAIN_REFUSED: u8 = 4;
const OUTCOME_NOT_SEALED: u8 = 5;
const OUTCOME_EXEC_ALLOWED: u8 = 6;

const STEP_ENTER: u8 = 1;
const STEP_FORK: u8 = 2;
const STEP_OPEN: u8 = 3;
const STEP_READ: u8 = 4;
const STEP_WRITE: u8 = 5;
const STEP_MEMFD: u8 = 6;
const STEP_NO_REPORT: u8 = 7;

fn step_name(step: u8) -> &'static str {
    match step {
        STEP_ENTER => "entering the pid namespace",
        STEP_FORK => "forking into the pid namespace",
        STEP_OPEN => "opening /proc/sys/vm/memfd_noexec",
        STEP_READ => "reading /proc/sys/vm/memfd_noexec",
        STEP_WRITE => "writing /proc/sys/vm/memfd_noexec",
        STEP_MEMFD => "memfd_create",
        STEP_NO_REPORT => "the forked process reported nothing",
        _ => "unknown step",
    }
}

impl Report {
    fn failed(step: u8, errno: i32) -> Report {
        Report {
            outcome: OUTCOME_FAILED,
            step,
            value: 0,
            errno,
        }
    }

    fn outcome(outcome: u8, value: u8) -> Report {
        Report {
            outcome,
            step: 0,
            value,
            errno: 0,
        }
    }

    fn to_bytes(self) -> [u8; 8] {
        let e = self.errno.to_ne_bytes();
        [
            self.outcome,
            self.step,
            self.value,
            0,
            e[0],
            e[1],
            e[2],
            e[3],
        ]
    }

    fn from_bytes(b: [u8; 8]) -> Report {
        Report {
            outcome: b[0],
            step: b[1],
            value: b[2],
            errno: i32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Runs `job` in a grandchild whose active pid namespace is `target` and returns its report.
fn run_in_pid_namespace(target: Namespace, job: fn() -> Report) -> io::Result<Report> {
    let (rx, tx) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )?;
    // SAFETY: fork has no memory-safety preconditions; in the child only async-signal-safe
    // system calls run (child_main) until _exit, as a fork of a multi-threaded process needs.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        child_main(target, tx.as_raw_fd(), job);
    }
    drop(tx);
    wait_for(child)?;
    let mut bytes = [0u8; 8];
    // Both children have exited: the report, if any, is in the pipe (8 bytes, written at once).
    match rustix::io::read(&rx, &mut bytes) {
        Ok(8) => Ok(Report::from_bytes(bytes)),
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(Report::failed(STEP_NO_REPORT, 0)),
        Err(err) => Err(err.into()),
    }
}

fn wait_for(child: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: waitpid on our own child with a null status pointer writes no memory.
        let waited = unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        if waited == child {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// The child: drops the daemon's fds, enters the namespace, forks the grandchild that runs
/// `job`, waits for it and exits. Never returns.
fn child_main(target: Namespace, report: RawFd, job: fn() -> Report) -> ! {
    let keep = match target {
        Namespace::Join(fd) => fd,
        Namespace::New => report,
    };
    close_all_but(report, keep);
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only; it keeps processes of the
    // container from reading this copy of the daemon's memory while it lives there.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let entered = match target {
        // SAFETY: setns on an fd this process owns; integers only.
        Namespace::Join(fd) => unsafe { libc::setns(fd, libc::CLONE_NEWPID) },
        // SAFETY: unshare takes a flag word only.
        Namespace::New => unsafe { libc::unshare(libc::CLONE_NEWPID) },
    };
    if entered != 0 {
        send(report, Report::failed(STEP_ENTER, errno()));
        exit_now();
    }
    // SAFETY: the child is single-threaded; the grandchild, like it, runs only system calls.
    let grandchild = unsafe { libc::fork() };
    if grandchild < 0 {
        send(report, Report::failed(STEP_FORK, errno()));
        exit_now();
    }
    if grandchild == 0 {
        send(report, job());
        exit_now();
    }
    let _ = wait_for(grandchild);
    exit_now();
}

/// Closes every fd except `a` and `b` (`close_range`, Linux ≥ 5.9; best effort).
fn close_all_but(a: RawFd, b: RawFd) {
    let (low, high) = (a.min(b) as libc::c_uint, a.max(b) as libc::c_uint);
    let mut ranges = [None; 3];
    if low > 0 {
        ranges[0] = Some((0, low - 1));
    }
    if high > low + 1 {
        ranges[1] = Some((low + 1, high - 1));
    }
    ranges[2] = Some((high + 1, libc::c_uint::MAX));
    for (first, last) in ranges.into_iter().flatten() {
        // SAFETY: close_range takes integers; the fds it closes belong to this process, which
        // uses none of them again.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    }
}

fn send(fd: RawFd, report: Report) {
    let bytes = report.to_bytes();
    // SAFETY: write from a live local buffer of the given length.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn exit_now() -> ! {
    // SAFETY: _exit ends the process without running the daemon's atexit handlers or
    // destructors, which must not run in a fork.
    unsafe { libc::_exit(0) }
}

/// The first byte of the sysctl in the caller's active pid namespace.
fn read_sysctl() -> Result<u8, Report> {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe { libc::open(SYSCTL_C.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Report::failed(STEP_OPEN, errno()));
    }
    let mut buf = [0u8; 4];
    // SAFETY: read into a live local buffer of the given length, from our own fd.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let err = errno();
    // SAFETY: closes our own fd.
    unsafe { libc::close(fd) };
    if n < 1 {
        return Err(Report::failed(STEP_READ, err));
    }
    Ok(buf[0])
}

fn write_sysctl() -> Result<(), Report> {
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe { libc::open(SYSCTL_C.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Report::failed(STEP_OPEN, errno()));
    }
    let value = b"2\n";
    // SAFETY: write from a static buffer of the given length, to our own fd.
    let n = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
    let err = errno();
    // SAFETY: closes our own fd.
    unsafe { libc::close(fd) };
    if n != value.len() as isize {
        return Err(Report::failed(STEP_WRITE, err));
    }
    Ok(())
}

/// In the container's namespace: nothing to do at 2, else write 2 and read it back.
fn lock_job() -> Report {
    let run = || -> Result<Report, Report> {
        if read_sysctl()? == b'2' {
            return Ok(Report::outcome(OUTCOME_ALREADY, b'2'));
        }
        write_sysctl()?;
        Ok(Report::outcome(OUTCOME_DONE, read_sysctl()?))
    };
    run().unwrap_or_else(|failed| failed)
}

/// In a throwaway namespace: at 2, a plain memfd must be created exec-sealed and
/// `memfd_create(MFD_EXEC)` must fail.
fn probe_job() -> Report {
    let run = || -> Result<Report, Report> {
        write_sysctl()?;
        // SAFETY: a static NUL-terminated name; flags only.
        let plain = unsafe { libc::memfd_create(c"dg-probe".as_ptr(), libc::MFD_CLOEXEC) };
        if plain < 0 {
            return Ok(Report {
                errno: errno(),
                ..Report::outcome(OUTCOME_PLAIN_REFUSED, 0)
            });
        }
        // SAFETY: fcntl(F_GET_SEALS) on our own fd, then close it.
        let seals = unsafe { libc::fcntl(plain, libc::F_GET_SEALS) };
        // SAFETY: closes our own fd.
        unsafe { libc::close(plain) };
        if seals < 0 || seals & libc::F_SEAL_EXEC == 0 {
            return Ok(Report::outcome(OUTCOME_NOT_SEALED, 0));
        }
        let flags = libc::MFD_CLOEXEC | libc::MFD_EXEC;
        // SAFETY: a static NUL-terminated name; flags only.
        let exec = unsafe { libc::memfd_create(c"dg-probe".as_ptr(), flags) };
        if exec >= 0 {
            // SAFETY: closes our own fd.
            unsafe { libc::close(exec) };
            return Ok(Report::outcome(OUTCOME_EXEC_ALLOWED, 0));
        }
        Ok(Report::outcome(OUTCOME_DONE, b'2'))
    };
    run().unwrap_or_else(|failed| failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_bytes_round_trip() {
        let report = Report {
            outcome: OUTCOME_FAILED,
            step: STEP_WRITE,
            value: b'1',
            errno: libc::EROFS,
        };
        let back = Report::from_bytes(report.to_bytes());
        assert_eq!(back.outcome, OUTCOME_FAILED);
        assert_eq!(back.step, STEP_WRITE);
        assert_eq!(back.value, b'1');
        assert_eq!(back.errno, libc::EROFS);
    }

    #[test]
    fn the_daemons_own_namespace_is_refused() {
        let own = std::process::id();
        assert!(matches!(
            lock_pid_namespace(own),
            Err(LockError::OwnNamespace { pid }) if pid == own
        ));
    }

    #[test]
    fn a_missing_process_is_an_error_with_its_pid() {
        let err = lock_pid_namespace(u32::MAX - 1).expect_err("no such pid");
        assert!(
            err.to_string().contains(&format!("{}", u32::MAX - 1)),
            "{err}"
        );
    }
}
