//! Deciding one exec notification: read, re-check, resolve, classify, decide.
//!
//! Order (seccomp_unotify(2)): read the path from the caller's memory and open the caller's
//! root, then `SECCOMP_IOCTL_NOTIF_ID_VALID`, and only then use what was read. An exec whose
//! lookup fails (missing file, loop, name too long, unreadable path) is answered with the errno
//! the kernel would have returned, so a file that appears after the check can never run
//! unchecked. A non-regular target gets `EACCES`.
//!
//! The kernel loads more than the named file inside one exec: a `#!` script's interpreter
//! (scripts nest up to [`crate::binfmt::MAX_INTERP_DEPTH`] levels; deeper chains get the
//! failure policy) and the `PT_INTERP` loader of the ELF program finally run. Each of them is
//! resolved in the caller's root (a relative interpreter against its cwd, as the kernel does),
//! classified, and decided too when it is not an untouched image file; the strictest outcome
//! answers. A missing interpreter fails the exec with the lookup's errno, so it cannot appear
//! after the check. They are looked up on every exec (verdicts and headers are cached by file
//! identity only), so a later swap of an interpreter is seen. A dynamic loader run directly is
//! checked for a loader trick (its program argument classified) at its image path and also
//! when a copy of it runs from elsewhere (an `ET_DYN` ELF without `PT_INTERP` whose content is
//! in the image).
//!
//! The caller's memory (the path, argv) is read at most once per notification, through a
//! [`CallerMemory`]: a decision and its event see the same bytes, and the supervisor reads
//! everything on the fd's serving thread before a decision moves to the runtime, so a caller
//! whose memory blocks a read (a `userfaultfd` or FUSE mapping) stalls only its own fd.
//!
//! Limits: `CONTINUE` is advisory (seccomp_unotify(2)): a racing thread can rewrite the path
//! after the check. Denials are race-free; [`crate::gate`] re-checks the file an allowed exec
//! really opens.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use driftguard_policy::VerdictClass;

use crate::binfmt::{self, Header};
use crate::classify::{self, Classified, FileKey, Placement};
use crate::container::Container;
use crate::resolve::{self, Caller, Lookup, Opened};
use crate::sys::{self, Notification};
use crate::target::{self, ExecCall, PATH_MAX};

/// What to answer, before policy.
#[derive(Debug)]
pub enum Assessment {
    /// The notification is gone (caller exited or was interrupted): send nothing useful.
    Gone,
    /// Fail the exec with this errno, as the kernel would have.
    Errno(i32),
    /// A classified exec target.
    Target(Target),
}

/// A classified exec target.
#[derive(Debug)]
pub struct Target {
    /// Canonical path inside the container (for a loader trick: the program argument).
    pub path: String,
    /// Classification.
    pub verdict: Classified,
    /// Other files the kernel loads with this exec (script and ELF interpreters) that are not
    /// untouched image files; each is decided too and the strictest outcome answers.
    pub loaded: Vec<Target>,
    /// Identities of every file the kernel opens for this exec, checked or not: the executed
    /// file, then each interpreter (empty on the entries of `loaded`). The exec gate lets
    /// exactly these through for the caller when the exec is allowed.
    pub opened: Vec<FileKey>,
}

/// Why an exec could not be classified (the failure policy answers).
#[derive(Debug, thiserror::Error)]
pub enum AssessError {
    /// The exec would fail with this errno on a filesystem that enforces it itself (a file
    /// open for writing cannot be executed: `ETXTBSY`).
    #[error("exec refused with errno {0}")]
    Refused(i32),
    /// Not an exec syscall of a known calling convention.
    #[error("notification is not an exec syscall (nr {nr}, arch {arch:#x})")]
    NotExec {
        /// Syscall number.
        nr: i32,
        /// Audit arch.
        arch: u32,
    },
    /// An I/O step failed for a reason the exec itself would not have.
    #[error("{step} for pid {pid}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// Caller pid.
        pid: u32,
        /// The error.
        source: std::io::Error,
    },
    /// The image view is not available.
    #[error("image of container {container} unavailable: {reason}")]
    Image {
        /// Container id.
        container: String,
        /// Why.
        reason: String,
    },
}

/// Errnos of a failed lookup that the exec would have failed with too.
const LOOKUP_ERRNOS: [i32; 6] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::ELOOP,
    libc::ENAMETOOLONG,
    libc::EACCES,
    libc::EBADF,
];

/// What is read from the caller's memory for one notification, each part at most once.
///
/// Reads of another process's memory can block for as long as that process wants (a page
/// behind `userfaultfd` or a FUSE mapping). [`CallerMemory::read_all`] is called on the
/// serving thread of the notify fd before a decision continues on the runtime, so no runtime
/// worker ever reads a caller's memory.
#[derive(Debug)]
pub struct CallerMemory {
    notif: Notification,
    path: OnceLock<Vec<u8>>,
    argv: OnceLock<Vec<Vec<u8>>>,
}

impl CallerMemory {
    /// Nothing read yet.
    pub fn new(notif: Notification) -> CallerMemory {
        CallerMemory {
            notif,
            path: OnceLock::new(),
            argv: OnceLock::new(),
        }
    }

    /// The requested path as the decision read it (empty when unreadable).
    pub fn path(&self) -> &[u8] {
        self.path.get_or_init(|| {
            let addr = match target::decode(&self.notif.data) {
                Some((ExecCall::Execve { path, .. }, _))
                | Some((ExecCall::Execveat { path, .. }, _)) => path,
                None => return Vec::new(),
            };
            target::read_cstring(self.notif.pid, addr, PATH_MAX).unwrap_or_default()
        })
    }

    /// argv (bounded, best effort: the caller may be gone).
    pub fn argv(&self) -> &[Vec<u8>] {
        self.argv.get_or_init(|| {
            let Some((call, abi)) = target::decode(&self.notif.data) else {
                return Vec::new();
            };
            let addr = match call {
                ExecCall::Execve { argv, .. } | ExecCall::Execveat { argv, .. } => argv,
            };
            target::read_argv(self.notif.pid, addr, abi)
        })
    }

    /// The notification.
    pub fn notification(&self) -> &Notification {
        &self.notif
    }

    /// Reads whatever is not read yet.
    pub fn read_all(&self) {
        self.path();
        self.argv();
    }
}

/// Assesses one notification.
pub async fn assess(
    container: &Arc<Container>,
    notify_fd: BorrowedFd<'_>,
    notif: &Notification,
    memory: &CallerMemory,
) -> Result<Assessment, AssessError> {
    let pid = notif.pid;
    let Some((call, abi)) = target::decode(&notif.data) else {
        return Err(AssessError::NotExec {
            nr: notif.data.nr,
            arch: notif.data.arch,
        });
    };
    if abi.x32 && !sys::kernel_has_x32() {
        // The seccomp filter runs before the kernel looks the syscall up: it would fail so.
        return Ok(Assessment::Errno(libc::ENOSYS));
    }
    let lookup = match read_lookup(pid, call, memory) {
        Ok(found) => found,
        Err(err) if sys::id_valid(notify_fd, notif.id) => {
            return Ok(Assessment::Errno(err.errno()))
        }
        Err(_) => return Ok(Assessment::Gone),
    };
    let caller = match Caller::open(pid) {
        Ok(caller) => caller,
        Err(_) if !sys::id_valid(notify_fd, notif.id) => return Ok(Assessment::Gone),
        Err(source) => {
            return Err(AssessError::Io {
                step: "opening /proc/PID/root",
                pid,
                source,
            })
        }
    };
    // Everything read so far belongs to the caller only if the notification is still live.
    if !sys::id_valid(notify_fd, notif.id) {
        return Ok(Assessment::Gone);
    }
    let opened = match resolve_linked(&caller, &lookup) {
        Ok(opened) => opened,
        Err(err) => return lookup_failure(err, pid),
    };
    if !classify::is_regular(&opened.stat) {
        return Ok(Assessment::Errno(libc::EACCES));
    }
    let (path, verdict) = match classify_opened(container, &caller, pid, &opened).await {
        Err(AssessError::Refused(errno)) => return Ok(Assessment::Errno(errno)),
        other => other?,
    };
    let header = header_of(container, &opened, pid)?;
    let mut target = Target {
        path,
        verdict,
        loaded: Vec::new(),
        opened: vec![FileKey::of(&opened.stat)],
    };
    if runs_loader_trick(&target, &header) {
        let argv = memory.argv();
        if let Some(mut program) = loader_program_target(container, &caller, pid, argv).await? {
            // The kernel opens the loader for exec; the loader opens its program itself.
            program.opened = std::mem::take(&mut target.opened);
            if !is_clean(target.verdict.class) {
                program.loaded.push(target);
            }
            return Ok(Assessment::Target(program));
        }
        if is_clean(target.verdict.class) {
            // The image's own loader run directly, its program an image file or nothing it
            // can load: the policy's `directLoader` option decides.
            target.verdict.class = VerdictClass::DirectLoader;
        }
    }
    let chain = Chain {
        container,
        caller: &caller,
        pid,
    };
    chain.follow(target, header).await
}

/// Whether a class means the file is the image's own, unchanged.
fn is_clean(class: VerdictClass) -> bool {
    matches!(
        class,
        VerdictClass::ImageFile | VerdictClass::MetadataCopyUp
    )
}

/// Whether the executed file is one of the image's dynamic loaders: at its image path (by
/// name), or a copy of it elsewhere (its content is in the image and its ELF header is that of
/// a loader: `ET_DYN` without `PT_INTERP`).
fn runs_loader_trick(target: &Target, header: &Header) -> bool {
    let by_name =
        is_clean(target.verdict.class) && classify::is_dynamic_loader(Path::new(&target.path));
    let copied = header.is_loader_like()
        && matches!(
            target.verdict.class,
            VerdictClass::RelocatedImageBinary | VerdictClass::ModeDrift
        );
    by_name || copied
}

/// The header of an opened file, cached by file identity.
fn header_of(container: &Container, opened: &Opened, pid: u32) -> Result<Header, AssessError> {
    let key = FileKey::of(&opened.stat);
    if let Some(header) = container.cache.header(&key) {
        return Ok(header);
    }
    let header = binfmt::read_header(&opened.file).map_err(|source| AssessError::Io {
        step: "reading the exec target's header",
        pid,
        source,
    })?;
    container.cache.put_header(key, header.clone());
    Ok(header)
}

/// Follows what the kernel loads with one exec: `#!` interpreters (nested up to
/// [`binfmt::MAX_INTERP_DEPTH`]) and the ELF interpreter of the program finally run.
struct Chain<'a> {
    container: &'a Arc<Container>,
    caller: &'a Caller,
    pid: u32,
}

impl Chain<'_> {
    async fn follow(
        &self,
        mut target: Target,
        mut header: Header,
    ) -> Result<Assessment, AssessError> {
        for depth in 0.. {
            let (interp, argument, is_script) = match header {
                Header::Script { interp, argument } => (interp, argument, true),
                Header::Elf {
                    interp: Some(interp),
                    ..
                } => (interp, None, false),
                Header::Elf { interp: None, .. } | Header::Other => break,
            };
            if is_script && depth >= binfmt::MAX_INTERP_DEPTH {
                return Err(AssessError::Io {
                    step: "following script interpreters",
                    pid: self.pid,
                    source: std::io::Error::from_raw_os_error(libc::ELOOP),
                });
            }
            if interp.is_empty() {
                // The kernel fails such a script with ENOEXEC; nothing else is loaded.
                break;
            }
            let opened = match self.caller.resolve(&Lookup::execve(interp.clone())) {
                Ok(opened) => opened,
                Err(err) => return lookup_failure(err, self.pid),
            };
            if !classify::is_regular(&opened.stat) {
                return Ok(Assessment::Errno(libc::EACCES));
            }
            let classified = classify_opened(self.container, self.caller, self.pid, &opened).await;
            let (path, verdict) = match classified {
                Err(AssessError::Refused(errno)) => return Ok(Assessment::Errno(errno)),
                other => other?,
            };
            target.opened.push(FileKey::of(&opened.stat));
            let mut verdict = verdict;
            if is_script && is_clean(verdict.class) && classify::is_dynamic_loader(Path::new(&path))
            {
                // `#!/lib64/ld-linux-x86-64.so.2 ARG`: the kernel runs the loader with the
                // line's argument, then the script: a direct loader run, and a loader trick
                // when the program it names is drifted.
                let argv: Vec<Vec<u8>> = [Some(interp), argument, Some(target.path.clone().into())]
                    .into_iter()
                    .flatten()
                    .collect();
                let loaded = loader_program_target(self.container, self.caller, self.pid, &argv);
                if let Some(mut program) = loaded.await? {
                    program.opened = std::mem::take(&mut target.opened);
                    program.loaded.push(target);
                    return Ok(Assessment::Target(program));
                }
                verdict.class = VerdictClass::DirectLoader;
            }
            if !is_clean(verdict.class) {
                target.loaded.push(Target {
                    path,
                    verdict,
                    loaded: Vec::new(),
                    opened: Vec::new(),
                });
            }
            if !is_script {
                break;
            }
            header = header_of(self.container, &opened, self.pid)?;
        }
        Ok(Assessment::Target(target))
    }
}

/// Resolves an exec target; a file found by a path that has no links left by the time it is
/// looked at was replaced in between (an atomic `rename` over it), so the path is resolved
/// again, a few times, as the kernel would find the new file. A file still unlinked after that
/// was reached through a link that keeps it (`/proc/self/fd/N` of a deleted file): fileless.
fn resolve_linked(caller: &Caller, lookup: &Lookup) -> std::io::Result<Opened> {
    let mut opened = caller.resolve(lookup)?;
    for _ in 0..3 {
        if opened.stat.st_nlink > 0 || opened.from_fd {
            break;
        }
        opened = caller.resolve(lookup)?;
    }
    Ok(opened)
}

fn lookup_failure(err: std::io::Error, pid: u32) -> Result<Assessment, AssessError> {
    match err.raw_os_error() {
        Some(errno) if LOOKUP_ERRNOS.contains(&errno) => Ok(Assessment::Errno(errno)),
        _ => Err(AssessError::Io {
            step: "resolving the exec target",
            pid,
            source: err,
        }),
    }
}

fn read_lookup(
    pid: u32,
    call: ExecCall,
    memory: &CallerMemory,
) -> Result<Lookup, target::ReadError> {
    let (ExecCall::Execve { path, .. } | ExecCall::Execveat { path, .. }) = call;
    let path = target::read_cstring(pid, path, PATH_MAX)?;
    let _ = memory.path.set(path.clone());
    Ok(match call {
        ExecCall::Execve { .. } => Lookup::execve(path),
        ExecCall::Execveat { dirfd, flags, .. } => Lookup::execveat(dirfd, path, flags),
    })
}

/// Classifies an opened regular file; returns its container path and verdict.
///
/// A cached verdict is answered before anything else is looked at: `fstat` of the caller's
/// root (its device tells the rootfs from a volume) is only needed for a file not seen before.
pub(crate) async fn classify_opened(
    container: &Arc<Container>,
    caller: &Caller,
    pid: u32,
    opened: &Opened,
) -> Result<(String, Classified), AssessError> {
    let key = FileKey::of(&opened.stat);
    if opened.stat.st_nlink > 0 {
        if let Some(path) = container.cache.image_file(&key) {
            let verdict = Classified {
                class: VerdictClass::ImageFile,
                hash: None,
                on_volume: false,
            };
            return Ok((path, verdict));
        }
    }
    let mut path = resolve::fd_path(&opened.file).unwrap_or_else(|_| PathBuf::from("<unknown>"));
    if opened.unlinked_after_open || opened.stat.st_nlink > 0 {
        // Linked when it was opened, unlinked since (replaced by a rename): judged by content
        // at the path it had (the kernel's " (deleted)" suffix removed).
        let bytes = path.as_os_str().as_encoded_bytes();
        if let Some(stem) = bytes.strip_suffix(b" (deleted)") {
            path = PathBuf::from(std::ffi::OsStr::from_bytes(stem));
        }
    }
    let shown = target::shown(path.as_os_str().as_encoded_bytes());
    let fileless = opened.stat.st_nlink == 0 && !opened.unlinked_after_open;
    if fileless || resolve::is_memfd_path(&path) {
        let verdict = Classified {
            class: VerdictClass::Fileless,
            hash: None,
            on_volume: false,
        };
        return Ok((shown, verdict));
    }
    let root_dev = caller.root_dev().map_err(|source| AssessError::Io {
        step: "stat of root",
        pid,
        source,
    })?;
    if let Some(hit) = container.cache.get(&key, &path) {
        // A writer that maps the upper file after the verdict was cached changes neither the
        // file's identity nor, until it writes, its timestamps.
        if opened.stat.st_dev == root_dev && upper_writers(container, &path) == Some(true) {
            return Err(AssessError::Refused(libc::ETXTBSY));
        }
        return Ok((shown, hit));
    }
    let placement = match &container.layers {
        Some(layers) => classify::placement(layers, root_dev, &path, &opened.stat),
        None => Placement::Elsewhere,
    };
    let (verdict, cacheable) = match placement {
        Placement::Lower => {
            let verdict = Classified {
                class: VerdictClass::ImageFile,
                hash: None,
                on_volume: false,
            };
            (verdict, true)
        }
        Placement::Upper => {
            if upper_writers(container, &path) != Some(false) {
                return Err(AssessError::Refused(libc::ETXTBSY));
            }
            by_content(container, &opened.file, &path, false).await?
        }
        Placement::Elsewhere => {
            let on_volume = opened.stat.st_dev != root_dev;
            by_content(container, &opened.file, &path, on_volume).await?
        }
    };
    if placement == Placement::Lower {
        container.cache.put_image_file(key, shown.clone());
    } else if cacheable {
        container.cache.put(key, path, verdict.clone());
    }
    Ok((shown, verdict))
}

/// Whether the upper-layer file behind a container path is open for writing (or mapped
/// writable) by anyone: `None` when there is no such upper file (or no upper layer), an
/// unanswerable check counts as a writer. Overlayfs maps and writes the upper file itself, so
/// neither the overlay file's lease nor the kernel's own exec check (`ETXTBSY`) sees such a
/// writer; a mapping dirtied before the check could change the program after it without a new
/// timestamp.
pub(crate) fn upper_writers(container: &Container, path: &Path) -> Option<bool> {
    let upper = container.upper_dir.as_ref()?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let how = rustix::fs::ResolveFlags::BENEATH
        | rustix::fs::ResolveFlags::NO_SYMLINKS
        | rustix::fs::ResolveFlags::NO_MAGICLINKS
        | rustix::fs::ResolveFlags::NO_XDEV;
    let real = rustix::fs::openat2(
        upper,
        relative,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
        how,
    );
    match real {
        Ok(real) => Some(!matches!(sys::has_writers(real.as_fd()), Ok(false))),
        Err(rustix::io::Errno::NOENT) => None,
        Err(_) => Some(true),
    }
}

/// Classifies a file by its content; also says whether the verdict may be cached by identity
/// ([`classify::Hashed::cacheable`]: a file that can change without a new identity is hashed
/// again on every exec).
async fn by_content(
    container: &Arc<Container>,
    file: &OwnedFd,
    path: &Path,
    on_volume: bool,
) -> Result<(Classified, bool), AssessError> {
    let image = container
        .image()
        .await
        .map_err(|reason| AssessError::Image {
            container: container.id.clone(),
            reason,
        })?;
    let dup = file
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| AssessError::Io {
            step: "duplicating the target fd",
            pid: 0,
            source,
        })?;
    let limit = container.decision_timeout();
    let upper = container.upper_timestamped;
    let hashed = tokio::task::spawn_blocking(move || classify::hash_for_cache(&dup, limit, upper))
        .await
        .map_err(|err| AssessError::Io {
            step: "hashing",
            pid: 0,
            source: std::io::Error::other(err),
        })?
        .map_err(|source| AssessError::Io {
            step: "hashing the exec target",
            pid: 0,
            source,
        })?;
    let verdict = classify::by_content(image.as_ref(), path, hashed.hash, on_volume);
    Ok((verdict, hashed.cacheable))
}

/// For an image's dynamic loader: the program it was asked to run, when that program is not
/// an image file (a loader trick).
async fn loader_program_target(
    container: &Arc<Container>,
    caller: &Caller,
    pid: u32,
    argv: &[Vec<u8>],
) -> Result<Option<Target>, AssessError> {
    let Some(program) = classify::loader_program(argv) else {
        return Ok(None);
    };
    let Ok(opened) = caller.resolve(&Lookup::execve(program.to_vec())) else {
        return Ok(None);
    };
    if !classify::is_regular(&opened.stat) {
        return Ok(None);
    }
    let (path, verdict) = classify_opened(container, caller, pid, &opened).await?;
    if is_clean(verdict.class) {
        return Ok(None);
    }
    let verdict = Classified {
        class: VerdictClass::LoaderTrick,
        ..verdict
    };
    Ok(Some(Target {
        path,
        verdict,
        loaded: Vec::new(),
        opened: Vec::new(),
    }))
}

/// argv for an event, shown.
pub fn event_argv(memory: &CallerMemory) -> Vec<String> {
    memory.argv().iter().map(|arg| target::shown(arg)).collect()
}

/// The requested path, shown, for events about execs that could not be resolved.
pub fn requested_path(memory: &CallerMemory) -> String {
    target::shown(memory.path())
}
