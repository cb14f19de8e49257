//! The exec gate: a second, race-free check on the file the kernel actually opens for exec.
//!
//! The seccomp stage answers `CONTINUE` for an exec it resolved to an allowed file, and the
//! kernel then looks the path (or the fd) up again: a racing thread that rewrites the path,
//! swaps a symlink or renames a file over it runs a file the seccomp stage never saw. The gate
//! closes that window with fanotify `FAN_OPEN_EXEC_PERM`: the kernel stops every exec open on a
//! marked mount or filesystem and waits for an answer about the opened file itself, whose
//! identity can no longer change.
//!
//! Design:
//! - **One group for the whole supervisor**, read by one dedicated thread. Each permission
//!   event names the process that executes; its mount namespace (`/proc/PID/ns/mnt`) maps it
//!   to the container that was registered with that namespace ([`Gate::watch`]). Events of
//!   processes in any other namespace (the host, unmonitored containers) are allowed at once.
//!   One group keeps the cost at one thread and one fd per node, and makes overlapping marks
//!   (two containers of a pod sharing a volume) harmless: the verdict depends on who executes,
//!   not on which mark reported it.
//! - **Marks** come from `/proc/<pid>/mountinfo` of a process of the container, each mount
//!   point opened through `/proc/<pid>/root` with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_SYMLINKS)` and accepted only when `statx` reports the mount id that mountinfo
//!   listed (a container cannot redirect the mark to a host path). The overlay rootfs and
//!   filesystems that exist only inside the container (its `/tmp`, `/dev`, `/dev/shm` tmpfs:
//!   their device is in neither the daemon's nor the host init's mount table) get
//!   `FAN_MARK_FILESYSTEM`, which also covers later bind mounts of them; everything else
//!   (volumes and files bind-mounted from host filesystems) gets `FAN_MARK_MOUNT` on the
//!   container's own mount, so host execs on those filesystems never reach the gate. `noexec`
//!   mounts and pseudo filesystems (proc, sysfs, cgroup, devpts, ...) are not marked.
//! - **Neighbours**: a container can reach, through `/proc/PID/root`, the filesystems of every
//!   process it can see, and the pod's sandbox (the pause container) carries no filter of its
//!   own. So the mounts of every other mount namespace with processes in the container's pid
//!   namespace (a pod that shares its process namespace) are marked the same way, when the
//!   container is watched; they are not registered as containers, so their own execs pass.
//! - **Identity of the caller**: the group reports thread ids (`FAN_REPORT_TID`), the id the
//!   exec's seccomp notification carried. A thread whose mount namespace cannot be read (it
//!   waits for this answer, so only a thread being killed can vanish) is denied, never taken
//!   for the host: a thread group whose leader has exited is still placed by the executing
//!   thread's own entry.
//! - **Verdicts**: right before the seccomp stage answers `CONTINUE`, it records for that thread
//!   the identities of the files it allowed the exec to open ([`Gate::expect`]); the kernel's
//!   open of exactly one of those by that thread, within the decision timeout, is allowed at
//!   once, without the namespace lookup (the common case). Otherwise: an untouched image file
//!   (by file identity, in [`Container::cache`]) is allowed without more work. Anything else is classified from the event's fd with the same
//!   code and cache as the seccomp stage (`exec::classify_opened`: layer placement,
//!   bounded hashing, never a lower-layer file) and decided by policy. A file the seccomp stage
//!   classified before it answered is a cache hit: allow and alert pass silently (that stage
//!   reported them). A deny, or an alert for a file no stage had classified (a race the policy
//!   only alerts on), produces one [`ExecEvent`] with `exec_gate` set.
//! - **Failure**: an error or a decision slower than the decision timeout gets the failure
//!   policy (deny with `EPERM` when closed). A decision that cannot finish inline (image view
//!   still building, hashing) runs on the tokio runtime so the gate thread never waits for it.
//!
//! Invariants: a container's namespace is registered before its first mark, and both happen
//! before its notify fd is served, so no exec answered `CONTINUE` by the seccomp stage escapes
//! the gate; every permission event gets exactly one answer.
//!
//! Limits: every exec of a monitored container costs a second round trip to user space (the
//! gate thread), measured in docs/supervisor.md. When the group closes (the daemon dies) the kernel allows every pending and later
//! exec of the marked filesystems; the fd holder keeps only the seccomp stage alive, and a
//! restarted supervisor marks each container again when it takes its notify fd back. The kernel
//! refuses marks on its internal memfd mount (`EINVAL`), so a `memfd` swapped in under an
//! `execveat(fd, "", AT_EMPTY_PATH)` after the seccomp check is not seen by the gate. Mounts
//! made by the container after it started are not marked (only `FAN_MARK_FILESYSTEM` marks
//! follow bind mounts of the marked filesystems). A process that moved to a mount namespace of
//! its own (`unshare -m`, needs `CAP_SYS_ADMIN`) is not mapped to its container and is allowed.
//! The gate decides each opened file on its own: a script's interpreter and an ELF loader are
//! separate events, and a loader trick (`ld.so /tmp/x` opens `/tmp/x` with a plain `open`) is
//! left to the seccomp stage's argv check. Events from the gate carry no argv (the exec has not
//! replaced the old program's arguments yet).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use driftguard_policy::{FailurePolicy, Outcome, VerdictClass};
use futures::FutureExt;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use tracing::{debug, error, info, warn};

use crate::binfmt::{self, Header};
use crate::classify::{self, Classified, FileKey};
use crate::container::Container;
use crate::decide::{Decider, EventSink, ExecEvent, ExecFacts};
use crate::exec;
use crate::fanotify::{Group, MarkKind, PermissionEvent};
use crate::lock;
use crate::resolve::{self, Caller, Lookup, Opened};
use crate::supervisor::SupervisorConfig;

/// Why the gate could not start or watch a container.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No fanotify permission group (needs `CAP_SYS_ADMIN`, Linux ≥ 5.0).
    #[error("fanotify permission group unavailable: {0}")]
    Init(io::Error),
    /// The gate needs a tokio runtime for decisions that wait.
    #[error("the exec gate must be started inside a tokio runtime")]
    NoRuntime,
    /// The gate thread could not be set up.
    #[error("exec gate thread: {0}")]
    Thread(io::Error),
    /// The process is not (provably) one of the container's.
    #[error("pid {pid} is not in container {container}: {reason}")]
    NotContainer {
        /// The process.
        pid: u32,
        /// Container id.
        container: String,
        /// Why not.
        reason: &'static str,
    },
    /// A process of the container could not be inspected.
    #[error("{what} of pid {pid} (container {container}): {source}")]
    Process {
        /// What was read.
        what: &'static str,
        /// The process.
        pid: u32,
        /// Container id.
        container: String,
        /// The error.
        source: io::Error,
    },
}

/// The exec gate of one supervisor (see the module doc).
pub struct Gate {
    inner: Arc<Inner>,
    /// Write end of the stop pipe: closing it ends the gate thread.
    _stop: OwnedFd,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

struct Inner {
    group: Group,
    decider: Arc<dyn Decider>,
    sink: Arc<dyn EventSink>,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// Mount namespace inode → the container registered with it.
    namespaces: Mutex<HashMap<u64, Weak<Container>>>,
    /// cgroup (v2 path as the daemon sees it) → the container registered with it: places a
    /// thread that moved to a mount namespace of its own (`unshare -m`) but cannot leave its
    /// container's cgroup.
    cgroups: Mutex<HashMap<String, Weak<Container>>>,
    /// Thread id → the files the seccomp stage let that thread's latest exec open.
    expected: Mutex<HashMap<u32, Expected>>,
    /// Thread id → the loader a program the gate allowed names as `PT_INTERP`, and when.
    interpreters: Mutex<HashMap<u32, (FileKey, Instant)>>,
}

/// What the seccomp stage allowed one thread's exec to open, and when.
struct Expected {
    /// In the order the kernel opens them: the program, each script interpreter, the loader.
    files: Vec<FileKey>,
    /// How many of them the kernel has opened so far.
    next: usize,
    at: Instant,
}

/// Expected execs kept before old ones are dropped (a thread's entry is replaced by its next
/// exec; entries of threads that never reached the kernel's open expire).
const EXPECTED_LIMIT: usize = 4096;

impl Gate {
    /// Creates the fanotify group and starts the gate thread. Must run inside a tokio runtime.
    pub fn start(
        decider: Arc<dyn Decider>,
        sink: Arc<dyn EventSink>,
        timeout: Duration,
    ) -> Result<Gate, GateError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| GateError::NoRuntime)?;
        let group = Group::new().map_err(GateError::Init)?;
        let (stop_rx, stop_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| GateError::Thread(e.into()))?;
        let inner = Arc::new(Inner {
            group,
            decider,
            sink,
            timeout,
            runtime,
            namespaces: Mutex::new(HashMap::new()),
            cgroups: Mutex::new(HashMap::new()),
            expected: Mutex::new(HashMap::new()),
            interpreters: Mutex::new(HashMap::new()),
        });
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("dg-exec-gate".into())
            .spawn(move || thread_inner.serve(stop_rx))
            .map_err(GateError::Thread)?;
        info!("exec gate started");
        Ok(Gate {
            inner,
            _stop: stop_tx,
        })
    }

    /// The gate a supervisor configuration asks for: `None` when it is off, or when it cannot
    /// start (logged as an error: execs are then decided by the seccomp stage alone).
    pub fn for_config(
        config: &SupervisorConfig,
        decider: &Arc<dyn Decider>,
        sink: &Arc<dyn EventSink>,
    ) -> Option<Gate> {
        if !config.exec_gate {
            return None;
        }
        let started = Gate::start(decider.clone(), sink.clone(), config.decision_timeout);
        started
            .map_err(|err| {
                error!(error = %err, "exec gate unavailable; allowed execs are not re-checked");
            })
            .ok()
    }

    /// Registers the cgroup of `pid` (a process of `container`) for threads that leave the
    /// container's mount namespace. Never the root, the daemon's own or the host init's cgroup:
    /// a prefix of those would take host processes for the container's.
    fn register_cgroup(&self, container: &Arc<Container>, pid: u32) {
        let Some(cgroup) = cgroup_of(&pid.to_string()) else {
            return;
        };
        let shared = ["self", "1"]
            .iter()
            .any(|other| cgroup_of(other).as_deref() == Some(cgroup.as_str()));
        if cgroup == "/" || shared {
            debug!(container_id = %container.id, cgroup, "container cgroup not registered");
            return;
        }
        let mut cgroups = lock(&self.inner.cgroups);
        cgroups.retain(|_, weak| weak.strong_count() > 0);
        cgroups.insert(cgroup, Arc::downgrade(container));
    }

    /// Records, right before the seccomp stage answers `CONTINUE` to thread `tid`, the files it
    /// resolved, classified and allowed for that exec (the executed file and the interpreters
    /// the kernel loads with it). The kernel's exec open of one of exactly these files by that
    /// thread within the decision timeout is allowed without another look; any other file is
    /// decided from scratch. Identity is the file's (device, inode, size, mtime, ctime), so a
    /// file swapped in by a race never matches.
    pub fn expect(&self, tid: u32, files: Vec<FileKey>) {
        let at = Instant::now();
        let mut expected = lock(&self.inner.expected);
        if expected.len() >= EXPECTED_LIMIT {
            let timeout = self.inner.timeout;
            expected.retain(|_, e| at.duration_since(e.at) < timeout);
            if expected.len() >= EXPECTED_LIMIT {
                expected.clear();
            }
        }
        expected.insert(tid, Expected { files, next: 0, at });
    }

    /// [`Gate::watch`] with the first of `pids` (a hand-off's process, then the container's
    /// init: after a restart the first may be gone) that proves to be in the container; a
    /// failure is logged (that container's execs are then decided by the seccomp stage alone).
    pub fn watch_logged(&self, container: &Arc<Container>, pids: &[i64]) {
        let mut last = None;
        for pid in pids.iter().filter_map(|&pid| u32::try_from(pid).ok()) {
            match self.watch(container, pid) {
                Ok(_) => return,
                Err(err) => last = Some(err),
            }
        }
        let error = last
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no pid".into());
        warn!(container_id = %container.id, error = %error,
              "exec gate is not watching a container");
    }

    /// Registers a container by the mount namespace of `pid` (one of its processes) and marks
    /// its mounts; returns how many were marked. A namespace already registered for a live
    /// container is left as it is.
    ///
    /// A pid that may have been recycled (a hand-off replayed after a restart) must not bring
    /// the host under the container's policy: the host's mount namespaces are refused, and when
    /// the container's overlay is known, the process's root must be that overlay.
    pub fn watch(&self, container: &Arc<Container>, pid: u32) -> Result<usize, GateError> {
        let fail = |what, source| GateError::Process {
            what,
            pid,
            container: container.id.clone(),
            source,
        };
        let ns = mount_ns(pid).map_err(|e| fail("mount namespace", e))?;
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .map_err(|e| fail("mountinfo", e))?;
        if let Err(reason) = in_container(container, ns, &mountinfo) {
            return Err(GateError::NotContainer {
                pid,
                container: container.id.clone(),
                reason,
            });
        }
        {
            let mut namespaces = lock(&self.inner.namespaces);
            namespaces.retain(|_, weak| weak.strong_count() > 0);
            if namespaces.get(&ns).and_then(Weak::upgrade).is_some() {
                return Ok(0);
            }
            // Registered before the first mark: an event can only come for a known namespace.
            namespaces.insert(ns, Arc::downgrade(container));
        }
        self.register_cgroup(container, pid);
        let root = rfs::open(
            format!("/proc/{pid}/root"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("root", e.into()))?;
        let host_devs = host_devices();
        let mut marked = 0;
        for mount in parse_mountinfo(&mountinfo) {
            if !mount.executable() {
                continue;
            }
            let kind = mount.mark_kind(&host_devs);
            match self.mark(&root, &mount, kind) {
                Ok(()) => marked += 1,
                Err(err) => {
                    warn!(container_id = %container.id, mount_point = %mount.mount_point.display(),
                                  error = %err, "exec gate could not mark a mount")
                }
            }
        }
        let neighbours = self.mark_neighbours(container, pid, ns, &host_devs);
        info!(container_id = %container.id, pid, mounts = marked, neighbour_mounts = neighbours,
              "exec gate watching");
        Ok(marked + neighbours)
    }

    /// Marks the mounts of the other mount namespaces in `pid`'s pid namespace (see the module
    /// documentation); returns how many were marked. A container in the host's pid namespace
    /// is skipped: it sees the whole node.
    fn mark_neighbours(
        &self,
        container: &Container,
        pid: u32,
        own: u64,
        host_devs: &HashSet<String>,
    ) -> usize {
        let Ok(pid_ns) = rfs::stat(format!("/proc/{pid}/ns/pid")).map(|s| s.st_ino) else {
            return 0;
        };
        let host_ns = |kind: &str| {
            ["self", "1"]
                .iter()
                .filter_map(|p| rfs::stat(format!("/proc/{p}/ns/{kind}")).ok())
                .map(|s| s.st_ino)
                .collect::<Vec<_>>()
        };
        if host_ns("pid").contains(&pid_ns) {
            debug!(container_id = %container.id, "container shares the host's pid namespace");
            return 0;
        }
        let host_mnt = host_ns("mnt");
        let mut marked = 0;
        for (ns, other) in pid_ns_neighbours(pid_ns, own) {
            if host_mnt.contains(&ns) {
                continue;
            }
            let mountinfo = std::fs::read_to_string(format!("/proc/{other}/mountinfo"));
            let root = rfs::open(
                format!("/proc/{other}/root"),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let (Ok(mountinfo), Ok(root)) = (mountinfo, root) else {
                continue;
            };
            for mount in parse_mountinfo(&mountinfo) {
                if !mount.executable() {
                    continue;
                }
                match self.mark(&root, &mount, mount.mark_kind(host_devs)) {
                    Ok(()) => marked += 1,
                    Err(err) => {
                        warn!(container_id = %container.id, neighbour_pid = other,
                              mount_point = %mount.mount_point.display(), error = %err,
                              "exec gate could not mark a neighbour's mount")
                    }
                }
            }
        }
        marked
    }

    /// Opens one mount point inside the container's root and marks it, after checking that the
    /// opened directory (or file) really is that mount.
    fn mark(&self, root: &OwnedFd, mount: &MountEntry, kind: MarkKind) -> io::Result<()> {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let relative = mount
            .mount_point
            .strip_prefix("/")
            .unwrap_or(&mount.mount_point);
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let opened = rfs::openat2(
            root,
            relative,
            OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            how,
        )?;
        let stx = rfs::statx(&opened, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
        if stx.stx_mnt_id != mount.id {
            // Covered by another mount, or the path changed under us: not this mount.
            return Err(io::Error::other(format!(
                "mount point resolves to mount {} instead of {}",
                stx.stx_mnt_id, mount.id
            )));
        }
        self.inner.group.mark(kind, opened.as_fd())?;
        debug!(mount_point = %mount.mount_point.display(), fstype = %mount.fstype, ?kind,
               "exec gate mark");
        Ok(())
    }
}

impl Inner {
    /// The gate thread: waits for permission events (or the stop pipe) and answers them.
    fn serve(self: Arc<Self>, stop: OwnedFd) {
        let _runtime = self.runtime.enter();
        loop {
            let mut fds = [
                PollFd::new(&self.group, PollFlags::IN),
                PollFd::new(&stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    warn!(error = %err, "exec gate poll failed; the gate stops");
                    return;
                }
            }
            if !fds[1].revents().is_empty() {
                debug!("exec gate stopped");
                return;
            }
            match self.group.read() {
                Ok(events) => events.into_iter().for_each(|event| self.handle(event)),
                Err(err) => {
                    warn!(error = %err, "reading exec gate events failed; the gate stops");
                    return;
                }
            }
        }
    }

    /// The container a thread belongs to, by its mount namespace: `None` for a namespace no
    /// container registered (the host, unmonitored containers).
    fn container_of(&self, tid: u32) -> io::Result<Option<Arc<Container>>> {
        let ns = mount_ns(tid)?;
        if let Some(container) = lock(&self.namespaces).get(&ns).and_then(Weak::upgrade) {
            return Ok(Some(container));
        }
        // Not a container's mount namespace: a thread that made one of its own still sits in
        // its container's cgroup (or below it).
        let Some(cgroup) = cgroup_of(&tid.to_string()) else {
            return Ok(None);
        };
        let cgroups = lock(&self.cgroups);
        let placed = cgroups.iter().find(|(path, _)| {
            cgroup == **path
                || cgroup
                    .strip_prefix(path.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        Ok(placed.and_then(|(_, weak)| weak.upgrade()))
    }

    /// Remembers, for an exec open the gate itself allowed, the identity of the `PT_INTERP`
    /// loader the program names, resolved in the thread's root: the kernel opens it for exec
    /// next, and that open is the program's interpreter, not a direct run of the loader.
    fn note_interpreter(&self, container: &Container, tid: u32, file: &OwnedFd, key: FileKey) {
        let header = match container.cache.header(&key) {
            Some(header) => header,
            None => match binfmt::read_header(file) {
                Ok(header) => {
                    container.cache.put_header(key, header.clone());
                    header
                }
                Err(_) => return,
            },
        };
        let Header::Elf {
            interp: Some(interp),
            ..
        } = header
        else {
            return;
        };
        let Ok(caller) = Caller::open(tid) else {
            return;
        };
        if let Ok(opened) = caller.resolve(&Lookup::execve(interp)) {
            let loader = FileKey::of(&opened.stat);
            lock(&self.interpreters).insert(tid, (loader, Instant::now()));
        }
    }

    /// Whether this open is the interpreter [`Inner::note_interpreter`] expects of thread `tid`
    /// (each note answers one open).
    fn take_interpreter(&self, tid: u32, key: &FileKey) -> bool {
        let mut interpreters = lock(&self.interpreters);
        if interpreters.len() > EXPECTED_LIMIT {
            interpreters.clear();
        }
        match interpreters.remove(&tid) {
            Some((loader, at)) => loader == *key && at.elapsed() < self.timeout,
            None => false,
        }
    }

    /// Whether the seccomp stage just allowed thread `tid` to exec exactly this file.
    /// Each announced file passes once and only in its turn, so the loader announced as a
    /// program's interpreter cannot pass as the program itself (a race that swaps the exec path
    /// to the loader).
    fn expected(&self, tid: u32, key: &FileKey) -> bool {
        let mut expected = lock(&self.expected);
        let Some(e) = expected.get_mut(&tid) else {
            return false;
        };
        let turn = e.at.elapsed() < self.timeout && e.files.get(e.next) == Some(key);
        if turn {
            e.next += 1;
        }
        turn
    }

    /// Whether an allowed file of class `class` at `path` is the image's loader run directly:
    /// an untouched (or metadata-only copied) loader that is not the interpreter this thread's
    /// program named ([`Inner::take_interpreter`]).
    fn direct_loader(&self, tid: u32, key: &FileKey, path: &str, class: VerdictClass) -> bool {
        matches!(
            class,
            VerdictClass::ImageFile | VerdictClass::MetadataCopyUp
        ) && classify::is_dynamic_loader(Path::new(path))
            && !self.take_interpreter(tid, key)
    }

    fn handle(self: &Arc<Self>, event: PermissionEvent) {
        // A thread id the daemon cannot see (0) or a negative one cannot be identified.
        let pid = u32::try_from(event.pid).unwrap_or(0);
        let stat = rfs::fstat(&event.file);
        // The hot path: the file the seccomp stage allowed this very thread to exec.
        if let Ok(stat) = &stat {
            if pid != 0 && stat.st_nlink > 0 && self.expected(pid, &FileKey::of(stat)) {
                return self.answer(event, true);
            }
        }
        let container = match self.container_of(pid) {
            Ok(Some(container)) => container,
            Ok(None) => return self.answer(event, true),
            Err(err) => {
                // The thread waits for this answer, so its /proc entry exists unless it is
                // being killed; a thread that cannot be placed is not let through.
                warn!(pid, error = %err, "exec gate cannot tell whose exec this is; denied");
                return self.answer(event, false);
            }
        };
        let stat = match stat {
            Ok(stat) => stat,
            Err(err) => return self.fail(&container, event, "", err.to_string()),
        };
        let key = FileKey::of(&stat);
        // An untouched image file, known by identity alone.
        if let Some(path) = (stat.st_nlink > 0)
            .then(|| container.cache.image_file(&key))
            .flatten()
        {
            if !self.direct_loader(pid, &key, &path, VerdictClass::ImageFile) {
                if !classify::is_dynamic_loader(Path::new(&path)) {
                    self.note_interpreter(&container, pid, &event.file, key);
                }
                return self.answer(event, true);
            }
            // The image's loader opened for exec, neither announced by the seccomp stage nor
            // the interpreter of a program this thread just opened: a direct run that reached
            // the kernel past the seccomp check. The policy's `directLoader` option decides.
            let verdict = Classified {
                class: VerdictClass::DirectLoader,
                hash: None,
                on_volume: false,
            };
            self.finish(&container, event, &path, verdict, false);
            return;
        }
        let path = resolve::fd_path(&event.file).unwrap_or_else(|_| PathBuf::from("<unknown>"));
        if let Some(hit) = container.cache.get(&key, &path) {
            let shown = crate::target::shown(path.as_os_str().as_encoded_bytes());
            if exec::upper_writers(&container, &path) == Some(true) {
                // As the seccomp stage: a cached verdict says nothing about a file that is
                // mapped writable now.
                let error = "open for writing or mapped writable (text file busy)".to_string();
                let exec_event = gate_event(&container, pid, &shown, Outcome::Deny, Some(error));
                self.answer(event, false);
                return self.sink.emit(exec_event);
            }
            return self.finish_noting(&container, event, &shown, hit, true, key);
        }
        let opened = match opened_of(&event, stat) {
            Ok(opened) => opened,
            Err(err) => {
                return self.fail(
                    &container,
                    event,
                    &crate::target::shown(path.as_os_str().as_encoded_bytes()),
                    err,
                )
            }
        };
        let inline = classify(&container, pid, &opened).now_or_never();
        match inline {
            Some(Ok((shown, verdict))) => {
                self.finish_noting(&container, event, &shown, verdict, false, key)
            }
            Some(Err(reason)) => self.fail(
                &container,
                event,
                &crate::target::shown(path.as_os_str().as_encoded_bytes()),
                reason,
            ),
            None => self.spawn_decision(container, event, opened, path),
        }
    }

    /// Decides on the runtime when classification has to wait (image view, hashing).
    fn spawn_decision(
        self: &Arc<Self>,
        container: Arc<Container>,
        event: PermissionEvent,
        opened: Opened,
        path: PathBuf,
    ) {
        let inner = self.clone();
        self.runtime.spawn(async move {
            let pid = event.pid as u32;
            let decided = tokio::time::timeout(inner.timeout, classify(&container, pid, &opened))
                .await
                .unwrap_or_else(|_| Err(format!("decision timed out after {:?}", inner.timeout)));
            match decided {
                Ok((shown, verdict)) => {
                    let key = FileKey::of(&opened.stat);
                    inner.finish_noting(&container, event, &shown, verdict, false, key);
                }
                Err(reason) => inner.fail(
                    &container,
                    event,
                    &crate::target::shown(path.as_os_str().as_encoded_bytes()),
                    reason,
                ),
            }
        });
    }

    /// [`Inner::finish`] for a program whose `PT_INTERP` loader the kernel opens next when it
    /// is allowed ([`Inner::note_interpreter`]).
    fn finish_noting(
        &self,
        container: &Container,
        event: PermissionEvent,
        path: &str,
        verdict: Classified,
        seen: bool,
        key: FileKey,
    ) {
        let pid = event.pid as u32;
        let mut verdict = verdict;
        if self.direct_loader(pid, &key, path, verdict.class) {
            verdict.class = VerdictClass::DirectLoader;
        }
        self.note_interpreter(container, pid, &event.file, key);
        if !self.finish(container, event, path, verdict, seen) {
            lock(&self.interpreters).remove(&pid);
        }
    }

    /// Applies policy to a classified file and answers (returns whether it allowed); reports a
    /// deny, and an alert the seccomp stage cannot have reported (`seen` is false: no stage had
    /// classified the file).
    fn finish(
        &self,
        container: &Container,
        event: PermissionEvent,
        path: &str,
        verdict: Classified,
        seen: bool,
    ) -> bool {
        let facts = ExecFacts {
            class: verdict.class,
            path,
            hash: verdict.hash,
            on_volume: verdict.on_volume,
        };
        let decision = self.decider.decide(&container.scope, &facts);
        let outcome = decision.outcome;
        let report = outcome == Outcome::Deny || (outcome == Outcome::Alert && !seen);
        let pid = event.pid as u32;
        let exec_event = report.then(|| {
            let mut out = gate_event(container, pid, path, outcome, None);
            out.class = Some(verdict.class);
            out.hash = verdict.hash.map(hex::encode);
            out.rule = decision.rule.clone();
            out.action = Some(decision.action);
            out.allow_listed = decision.allow_listed;
            out
        });
        debug!(container_id = %container.id, pid, path, class = ?verdict.class, ?outcome, seen,
               "exec gate decision");
        let allowed = outcome != Outcome::Deny;
        self.answer(event, allowed);
        if let Some(exec_event) = exec_event {
            self.sink.emit(exec_event);
        }
        allowed
    }

    /// Answers by the failure policy and reports why.
    fn fail(&self, container: &Container, event: PermissionEvent, path: &str, reason: String) {
        let policy = self.decider.failure_policy();
        let outcome = match policy {
            FailurePolicy::Closed => Outcome::Deny,
            FailurePolicy::Open => Outcome::Alert,
        };
        let pid = event.pid as u32;
        warn!(container_id = %container.id, pid, path, reason = %reason, failure_policy = ?policy,
              "exec gate decided by the failure policy");
        let exec_event = gate_event(container, pid, path, outcome, Some(reason));
        self.answer(event, outcome != Outcome::Deny);
        self.sink.emit(exec_event);
    }

    fn answer(&self, event: PermissionEvent, allow: bool) {
        if let Err(err) = self.group.answer(event, allow) {
            // ENOENT: the exec was interrupted (fatal signal) before the answer.
            if err.raw_os_error() != Some(libc::ENOENT) {
                warn!(error = %err, "answering an exec gate event failed");
            }
        }
    }
}

/// Classifies the opened file with the seccomp stage's code and cache.
async fn classify(
    container: &Arc<Container>,
    pid: u32,
    opened: &Opened,
) -> Result<(String, Classified), String> {
    let caller = Caller::open(pid).map_err(|e| format!("opening /proc/{pid}/root: {e}"))?;
    exec::classify_opened(container, &caller, pid, opened)
        .await
        .map_err(|e| e.to_string())
}

/// The event's file as the classify code takes it (its own fd; the event keeps the original
/// for the answer).
fn opened_of(event: &PermissionEvent, stat: rfs::Stat) -> Result<Opened, String> {
    let file = event
        .file
        .try_clone()
        .map_err(|e| format!("duplicating the exec gate fd: {e}"))?;
    // The kernel opened the file by a name that existed then; a file unlinked since was
    // replaced (or removed) while the exec went on. A file executed through a link that kept
    // it after its deletion never gets here unannounced unless a race swapped it in, and then
    // its content decides as well.
    let unlinked_after_open = stat.st_nlink == 0;
    Ok(Opened {
        file,
        stat,
        from_fd: false,
        unlinked_after_open,
    })
}

/// An event of the gate, without a decision yet (that of the failure policy when `error` is
/// set).
fn gate_event(
    container: &Container,
    pid: u32,
    path: &str,
    outcome: Outcome,
    error: Option<String>,
) -> ExecEvent {
    ExecEvent {
        outcome,
        error,
        exec_gate: true,
        ..container.event(pid, path)
    }
}

/// The cgroup v2 path of a process (`/proc/<pid>/cgroup`, the `0::` line), as the daemon's
/// cgroup namespace shows it; `None` on a cgroup v1 host or when the process is gone.
fn cgroup_of(pid: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// Whether a process with mount namespace `ns` and this mount table belongs to `container`.
fn in_container(container: &Container, ns: u64, mountinfo: &str) -> Result<(), &'static str> {
    let host = ["/proc/self/ns/mnt", "/proc/1/ns/mnt"]
        .iter()
        .filter_map(|path| rfs::stat(*path).ok())
        .any(|stat| stat.st_ino == ns);
    if host {
        return Err("it shares the host's mount namespace");
    }
    let Some(upper) = container.layers.as_ref().and_then(|l| l.upperdir.as_ref()) else {
        return Ok(());
    };
    match crate::mountinfo::overlay_at(mountinfo, Path::new("/")) {
        Some(root) if root.upperdir.as_ref() == Some(upper) => Ok(()),
        _ => Err("its root is not the container's overlay"),
    }
}

mod mounts;
use mounts::{host_devices, mount_ns, parse_mountinfo, pid_ns_neighbours, MountEntry};

#[cfg(test)]
mod tests {
    use super::mounts::unescape;
    use super::*;

    const CONTAINER: &str = "\
1201 1100 0:91 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1202 1201 0:93 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1203 1201 0:94 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1204 1203 0:95 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw
1205 1203 0:96 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1206 1201 0:97 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=65536k,mode=1777
1207 1201 254:1 /var/lib/kubelet/pods/x/volumes/data /data\\040dir rw,relatime - ext4 /dev/vda1 rw
1208 1201 254:1 /etc/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
";

    #[test]
    fn mounts_to_mark_and_how() {
        let host: HashSet<String> = ["254:1".to_string(), "0:91".to_string()].into();
        let mounts = parse_mountinfo(CONTAINER);
        assert_eq!(mounts.len(), 8);
        let marked: Vec<(String, MarkKind)> = mounts
            .iter()
            .filter(|m| m.executable())
            .map(|m| (m.mount_point.display().to_string(), m.mark_kind(&host)))
            .collect();
        assert_eq!(
            marked,
            vec![
                ("/".to_string(), MarkKind::Filesystem),
                ("/dev".to_string(), MarkKind::Filesystem),
                ("/tmp".to_string(), MarkKind::Filesystem),
                ("/data dir".to_string(), MarkKind::Mount),
                ("/etc/hosts".to_string(), MarkKind::Mount),
            ]
        );
        assert_eq!(mounts[0].id, 1201);
    }

    /// A container record without layers (empty host mount table).
    fn container(id: &str) -> Arc<Container> {
        let state = serde_json::json!({
            "pid": 1, "state": {"id": id, "status": "creating", "pid": 1, "bundle": "/nonexistent"}
        });
        let state = serde_json::from_value(state).expect("state");
        let images = Arc::new(driftguard_image_index::IndexCache::new(
            "/nonexistent".into(),
        ));
        Arc::new(Container::from_state(&state, "", images))
    }

    #[tokio::test]
    async fn the_host_is_never_watched_as_a_container() {
        let policy = driftguard_policy::Policy::default_policy();
        let decider: Arc<dyn Decider> = Arc::new(driftguard_policy::PolicyStore::new(policy));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel::<ExecEvent>();
        let sink: Arc<dyn EventSink> = Arc::new(tx);
        let gate = Gate::start(decider, sink, Duration::from_secs(2)).expect("gate (needs root)");
        let host = container("host-pid");
        match gate.watch(&host, std::process::id()) {
            Err(GateError::NotContainer { reason, .. }) => assert!(reason.contains("host")),
            other => panic!("the test process watched as a container: {other:?}"),
        }
        // The host's init: refused as the host, or not even readable in a sandbox.
        assert!(gate.watch(&host, 1).is_err());
        assert!(lock(&gate.inner.namespaces).is_empty());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_mountinfo("nonsense\n12 x\n - ").is_empty());
        assert_eq!(unescape("a\\040b\\"), std::ffi::OsString::from("a b\\"));
    }
}
