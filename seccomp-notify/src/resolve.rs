//! Opening the file an exec would run, the way the kernel would find it for the caller.
//!
//! The caller's root (`/proc/PID/root`) is the root of every lookup. The common case is one
//! `openat2`: an absolute path with `RESOLVE_IN_ROOT` on the root, a relative one with
//! `RESOLVE_BENEATH` below the caller's cwd (or `dirfd` for `execveat`), both with
//! `RESOLVE_NO_MAGICLINKS`. When that fails in a way only procfs or a climb out of the start
//! directory explains (`ELOOP`, `EXDEV`, or `ENOENT` on a path naming `self` or passing a
//! symlink), the lookup is walked again component by component as the kernel's path walk does:
//! `..` stops at the root, an absolute symlink restarts there, at most 40 links are followed.
//! On procfs (`fstatfs`, never a name), `self` and `thread-self` name the caller's own ids in
//! that procfs instance's pid namespace (each candidate of the caller's namespace chain is
//! checked to be the caller, none gives `ENOENT`), and a magic link (`/proc/N/root`, `cwd`,
//! `exe`, `fd/M`) is opened through that same instance, so `/proc/N` is the `N` the caller sees.
//! A magic link to a file ends the walk on that file (a memfd stays a memfd); one to a
//! directory is followed only when the caller's root contains that directory (its printed path
//! below the root, reopened through real directories, has the same identity); otherwise the
//! lookup fails with [`OutsideRoot`] and the exec gets the failure policy. The start directory of
//! a walked relative path is checked the same way. `AT_EMPTY_PATH` opens the caller's fd itself
//! through `/proc/PID/fd/N`; a closed or negative fd is `EBADF`.
//!
//! Every file is opened `O_PATH` (no open side effects on fifos or devices) and described by
//! `fstat`; the caller of this module re-checks the notification id before trusting it.
//!
//! Limits: permissions are those of the supervisor, not the caller: a lookup the kernel would
//! refuse (search permission, `ptrace` access to another process's magic links, `hidepid`)
//! resolves here, and the exec then fails in the kernel after `CONTINUE`, or is denied with
//! `EPERM` where the kernel says `EACCES`. A magic link to a directory outside the caller's root
//! (a chrooted caller reaching the container's root through `/proc/1/root`, a host procfs mounted
//! into the container) is refused although the kernel follows it. A caller that may mount
//! (`CAP_SYS_ADMIN`) and renames directories during a walk can make `..` differ from the kernel's
//! answer, never leave the root.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};

use crate::target::{AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW};

/// What to resolve for one exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A path relative to `dir` (absolute paths ignore it).
    Path {
        /// The directory of a relative path.
        dir: Dir,
        /// The path bytes as the caller passed them.
        path: Vec<u8>,
        /// `AT_SYMLINK_NOFOLLOW`: a symlink as last component fails with `ELOOP`.
        nofollow: bool,
    },
    /// `execveat(fd, "", AT_EMPTY_PATH)`: the caller's open file.
    Fd(i32),
}

/// The directory a relative path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The caller's working directory.
    Cwd,
    /// One of the caller's fds.
    Fd(i32),
}

impl Lookup {
    /// The lookup of an `execveat(dirfd, path, .., flags)`.
    pub fn execveat(dirfd: i32, path: Vec<u8>, flags: u32) -> Lookup {
        if path.is_empty() && flags & AT_EMPTY_PATH != 0 {
            return Lookup::Fd(dirfd);
        }
        let dir = if dirfd == AT_FDCWD {
            Dir::Cwd
        } else {
            Dir::Fd(dirfd)
        };
        Lookup::Path {
            dir,
            path,
            nofollow: flags & AT_SYMLINK_NOFOLLOW != 0,
        }
    }

    /// The lookup of an `execve(path, ..)`.
    pub fn execve(path: Vec<u8>) -> Lookup {
        Lookup::Path {
            dir: Dir::Cwd,
            path,
            nofollow: false,
        }
    }
}

/// An opened exec target.
#[derive(Debug)]
pub struct Opened {
    /// `O_PATH` fd of the file.
    pub file: OwnedFd,
    /// Its `fstat`.
    pub stat: rfs::Stat,
    /// Whether it came from the caller's fd (`AT_EMPTY_PATH`).
    pub from_fd: bool,
    /// The kernel opened it for an exec and it lost its last link only afterwards (the exec
    /// gate's file, replaced by a `rename` while the exec went on): it is judged by its content
    /// at the path it had, not as fileless.
    pub unlinked_after_open: bool,
}

/// A lookup that would leave the caller's root: a magic link or a directory fd that leads to
/// a directory the caller's root does not contain. The kernel may follow it; the supervisor
/// refuses to, so the exec gets the failure policy.
#[derive(Debug, thiserror::Error)]
#[error("{what} of pid {pid} leads to {target}, outside the caller's root")]
pub struct OutsideRoot {
    /// What led there (`magic link exe`, `start directory`).
    pub what: String,
    /// Caller pid.
    pub pid: u32,
    /// The directory's path as the kernel prints it.
    pub target: String,
}

/// Most symlinks, magic links included, one lookup follows before `ELOOP` (`MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;
/// Inode number of the root directory of every procfs instance (`PROC_ROOT_INO`).
const PROC_ROOT_INO: u64 = 1;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn has_errno(err: &io::Error, codes: &[i32]) -> bool {
    err.raw_os_error().is_some_and(|code| codes.contains(&code))
}

/// The caller's filesystem context, opened once per notification.
pub struct Caller {
    pid: u32,
    root: OwnedFd,
}

impl Caller {
    /// Opens `/proc/PID/root`. Re-check the notification id after this: the pid may have been
    /// recycled between the notification and the open.
    pub fn open(pid: u32) -> io::Result<Caller> {
        let root = rfs::open(
            format!("/proc/{pid}/root"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Caller { pid, root })
    }

    /// `st_dev` of the caller's root: the container's rootfs.
    pub fn root_dev(&self) -> io::Result<u64> {
        Ok(rfs::fstat(&self.root)?.st_dev)
    }

    /// Opens the exec target; errors carry the errno the exec would fail with, or wrap
    /// [`OutsideRoot`].
    pub fn resolve(&self, lookup: &Lookup) -> io::Result<Opened> {
        let (file, from_fd) = match lookup {
            Lookup::Fd(fd) => (self.open_fd(*fd)?, true),
            Lookup::Path {
                dir,
                path,
                nofollow,
            } => (self.open_path(*dir, path, *nofollow)?, false),
        };
        let stat = rfs::fstat(&file)?;
        Ok(Opened {
            file,
            stat,
            from_fd,
            unlinked_after_open: false,
        })
    }

    /// The caller's fd `fd` (its cwd for `AT_FDCWD`); a closed or negative fd is `EBADF`.
    fn open_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        if fd == AT_FDCWD {
            return self.open_proc("cwd");
        }
        if fd < 0 {
            return Err(errno(libc::EBADF));
        }
        self.open_proc(&format!("fd/{fd}")).map_err(|err| {
            // The caller is alive (its notification was valid): a missing entry is a closed fd.
            if has_errno(&err, &[libc::ENOENT]) {
                errno(libc::EBADF)
            } else {
                err
            }
        })
    }

    fn open_path(&self, dir: Dir, path: &[u8], nofollow: bool) -> io::Result<OwnedFd> {
        if path.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        let (base, scope) = if path.first() == Some(&b'/') {
            (None, ResolveFlags::IN_ROOT)
        } else {
            let base = match dir {
                Dir::Cwd => self.open_fd(AT_FDCWD)?,
                Dir::Fd(fd) => self.open_fd(fd)?,
            };
            (Some(base), ResolveFlags::BENEATH)
        };
        let at = base.as_ref().unwrap_or(&self.root);
        match open_fast(at, path, nofollow, scope) {
            Err(err) if needs_walk(&err, at, path, nofollow, scope) => {
                let start = match base {
                    Some(base) => self.place(&base, "start directory")?,
                    None => (self.reopen(&[])?, Vec::new()),
                };
                Walk::new(self, start, path, nofollow).run()
            }
            other => other,
        }
    }

    /// Opens `/proc/PID/<rest>` of the host, following a final magic link.
    fn open_proc(&self, rest: &str) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        Ok(rfs::open(
            format!("/proc/{}/{rest}", self.pid),
            flags,
            Mode::empty(),
        )?)
    }

    /// Opens a directory by its components below the caller's root, through real directories
    /// only (no symlink, no magic link, never above the root).
    fn reopen(&self, at: &[Vec<u8>]) -> io::Result<OwnedFd> {
        let mut path = b"/".to_vec();
        path.extend_from_slice(&at.join(&b'/'));
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS;
        let fd = open_flags(
            &self.root,
            &path,
            OFlags::DIRECTORY | OFlags::NOFOLLOW,
            resolve,
        )?;
        Ok(fd)
    }

    /// Where a directory the caller can reach (cwd, dirfd, magic link target) is inside the
    /// caller's root: its path there, checked by opening that path from the root through real
    /// directories and comparing identities, and the directory so opened. A directory the root
    /// does not contain (another mount namespace, the host, above a chroot) is [`OutsideRoot`].
    fn place(&self, dir: &OwnedFd, what: &str) -> io::Result<(OwnedFd, Vec<Vec<u8>>)> {
        let target = fd_path(dir)?;
        let outside = || {
            io::Error::other(OutsideRoot {
                what: what.to_string(),
                pid: self.pid,
                target: target.display().to_string(),
            })
        };
        let root = fd_path(&self.root)?;
        let Ok(rel) = target.strip_prefix(&root) else {
            return Err(outside());
        };
        let at: Vec<Vec<u8>> = rel
            .as_os_str()
            .as_bytes()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if at.iter().any(|c| c == b"." || c == b"..") {
            return Err(outside());
        }
        let Ok(again) = self.reopen(&at) else {
            return Err(outside());
        };
        let (a, b) = (rfs::fstat(dir)?, rfs::fstat(&again)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(outside());
        }
        Ok((again, at))
    }

    /// What `self` (or `thread-self`) of the procfs instance at `proc_root` names for the
    /// caller: its thread-group id (and thread id) in that instance's pid namespace, which is
    /// one of the ids of the caller's namespace chain. Each candidate is checked to be the
    /// caller (same pid namespace, same id in it); none is `ENOENT`, as for a caller the
    /// instance does not show.
    fn self_link(&self, proc_root: &OwnedFd, thread: bool) -> io::Result<Vec<u8>> {
        let status = std::fs::read(format!("/proc/{}/status", self.pid))?;
        let tgids = status_ids(&status, b"NStgid:");
        let tids = status_ids(&status, b"NSpid:");
        let own_ns = rfs::readlink(format!("/proc/{}/ns/pid", self.pid), Vec::new())?;
        let (Some(&own_tgid), true) = (tgids.last(), tgids.len() == tids.len()) else {
            return Err(errno(libc::ENOENT));
        };
        for (tgid, tid) in tgids.iter().zip(&tids).rev() {
            let ns = rfs::readlinkat(proc_root, format!("{tgid}/ns/pid"), Vec::new());
            if ns.ok().as_ref() != Some(&own_ns) {
                continue;
            }
            let Ok(seen) = read_at(proc_root, &format!("{tgid}/status")) else {
                continue;
            };
            if status_ids(&seen, b"NStgid:").last() == Some(&own_tgid) {
                let text = match thread {
                    true => format!("{tgid}/task/{tid}"),
                    false => tgid.to_string(),
                };
                return Ok(text.into_bytes());
            }
        }
        Err(errno(libc::ENOENT))
    }
}

/// Whether a failed fast lookup may have met what only the component walk handles: a magic
/// link (`ELOOP`), a climb above the start directory (`EXDEV`), or procfs's `self` seen from
/// the supervisor's pid namespace (`ENOENT` on a path with `self` or through a symlink).
fn needs_walk(
    err: &io::Error,
    at: &OwnedFd,
    path: &[u8],
    nofollow: bool,
    scope: ResolveFlags,
) -> bool {
    if has_errno(err, &[libc::ELOOP, libc::EXDEV]) {
        return true;
    }
    if !has_errno(err, &[libc::ENOENT]) {
        return false;
    }
    if path.windows(4).any(|w| w == b"self") {
        return true;
    }
    // A missing name reached before any symlink is missing for the kernel too.
    let probe = open_how(at, path, nofollow, scope | ResolveFlags::NO_SYMLINKS);
    matches!(probe, Err(err) if has_errno(&err, &[libc::ELOOP, libc::EXDEV]))
}

/// One lookup walked component by component, as the kernel's path walk does, for paths that
/// meet magic links, procfs's `self` or a `..` above their start directory.
///
/// The walk stands in a directory `dir` whose path below the caller's root is `at`; `..`
/// never goes above the root; an absolute symlink restarts at the root; a magic link is
/// opened through the procfs instance it lives in (the caller's own view) and the walk goes on
/// from its target only when the caller's root contains it ([`Caller::place`]).
struct Walk<'c> {
    caller: &'c Caller,
    dir: OwnedFd,
    at: Vec<Vec<u8>>,
    /// Components still to walk, the next one last; `true` when a `/` follows it (it must be a
    /// directory, and a symlink there is followed even with `nofollow`).
    pending: Vec<(Vec<u8>, bool)>,
    links: u32,
    nofollow: bool,
}

impl<'c> Walk<'c> {
    fn new(
        caller: &'c Caller,
        (dir, at): (OwnedFd, Vec<Vec<u8>>),
        path: &[u8],
        nofollow: bool,
    ) -> Walk<'c> {
        let mut walk = Walk {
            caller,
            dir,
            at,
            pending: Vec::new(),
            links: 0,
            nofollow,
        };
        walk.push_text(path, false);
        walk
    }

    /// Queues the components of `text` in front of the pending ones.
    fn push_text(&mut self, text: &[u8], then_dir: bool) {
        let names: Vec<&[u8]> = text
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let trailing = text.ends_with(b"/") || then_dir;
        for (i, name) in names.iter().enumerate().rev() {
            let more = i + 1 < names.len() || trailing;
            self.pending.push((name.to_vec(), more));
        }
    }

    fn run(mut self) -> io::Result<OwnedFd> {
        while let Some((name, more)) = self.pending.pop() {
            match name.as_slice() {
                b"." => {}
                b".." => self.up()?,
                _ => {
                    if let Some(file) = self.step(&name, more)? {
                        return Ok(file);
                    }
                }
            }
        }
        Ok(self.dir)
    }

    /// `..`: the parent directory, reopened from the root; the root is its own parent.
    fn up(&mut self) -> io::Result<()> {
        if self.at.pop().is_some() {
            self.dir = self.caller.reopen(&self.at)?;
        }
        Ok(())
    }

    /// Walks one name; returns the final file when the walk ends on a non-directory.
    fn step(&mut self, name: &[u8], more: bool) -> io::Result<Option<OwnedFd>> {
        let last = self.pending.is_empty() && !more;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        let entry = open_flags(&self.dir, name, OFlags::NOFOLLOW, resolve)?;
        let stat = rfs::fstat(&entry)?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                self.dir = entry;
                self.at.push(name.to_vec());
                Ok(None)
            }
            FileType::Symlink => {
                if last && self.nofollow {
                    return Err(errno(libc::ELOOP));
                }
                self.links += 1;
                if self.links > MAX_SYMLINKS {
                    return Err(errno(libc::ELOOP));
                }
                self.follow(&entry, name, more)
            }
            _ if !self.pending.is_empty() || more => Err(errno(libc::ENOTDIR)),
            _ => Ok(Some(entry)),
        }
    }

    /// Follows the symlink `name` of the current directory (opened as `link`).
    fn follow(&mut self, link: &OwnedFd, name: &[u8], more: bool) -> io::Result<Option<OwnedFd>> {
        if rfs::fstatfs(&self.dir)?.f_type != rfs::PROC_SUPER_MAGIC {
            return self.expand(link, more);
        }
        let in_proc_root = rfs::fstat(&self.dir)?.st_ino == PROC_ROOT_INO;
        if in_proc_root && (name == b"self" || name == b"thread-self") {
            let text = self.caller.self_link(&self.dir, name == b"thread-self")?;
            self.push_text(&text, more);
            return Ok(None);
        }
        if !is_magic(&self.dir, name) {
            return self.expand(link, more);
        }
        self.jump(name, more)
    }

    /// Continues with an ordinary symlink's text (an absolute one from the caller's root).
    fn expand(&mut self, link: &OwnedFd, more: bool) -> io::Result<Option<OwnedFd>> {
        let text = rfs::readlinkat(link, "", Vec::new())?;
        let text = text.as_bytes();
        if text.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if text.first() == Some(&b'/') {
            self.dir = self.caller.reopen(&[])?;
            self.at.clear();
        }
        self.push_text(text, more);
        Ok(None)
    }

    /// Follows a procfs magic link: the kernel opens its target (a file, or the root, cwd or
    /// an fd of a process this procfs instance shows) with a plain open of that one name.
    fn jump(&mut self, name: &[u8], more: bool) -> io::Result<Option<OwnedFd>> {
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let target = rfs::openat(&self.dir, OsStr::from_bytes(name), flags, Mode::empty())?;
        let stat = rfs::fstat(&target)?;
        let rest = !self.pending.is_empty() || more;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return match rest {
                true => Err(errno(libc::ENOTDIR)),
                false => Ok(Some(target)),
            };
        }
        if !rest {
            // The walk ends on a directory: the exec fails with EACCES wherever it is.
            return Ok(Some(target));
        }
        if stat.st_nlink == 0 {
            // A removed directory (a deleted cwd) has no names left.
            return Err(errno(libc::ENOENT));
        }
        let what = format!("magic link {}", String::from_utf8_lossy(name));
        (self.dir, self.at) = self.caller.place(&target, &what)?;
        Ok(None)
    }
}

/// Whether the procfs symlink `name` of `dir` is a magic link (the kernel jumps to its target
/// instead of reading a path); ordinary procfs symlinks (`mounts`, `net`) are not.
fn is_magic(dir: &OwnedFd, name: &[u8]) -> bool {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let probe = open_flags(dir, name, OFlags::empty(), resolve);
    matches!(probe, Err(err) if has_errno(&err, &[libc::ELOOP]))
}

/// The ids of a `/proc/PID/status` line such as `NStgid:\t1234\t1`, outermost first.
fn status_ids(status: &[u8], key: &[u8]) -> Vec<u32> {
    let Some(line) = status.split(|b| *b == b'\n').find(|l| l.starts_with(key)) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&line[key.len()..]).into_owned();
    text.split_whitespace()
        .map_while(|id| id.parse().ok())
        .collect()
}

fn read_at(dir: &OwnedFd, path: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let fd = rfs::openat(dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(64 * 1024)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// [`open_how`], with a final symlink under `nofollow` refused as the kernel refuses it
/// (`O_PATH | O_NOFOLLOW` would open the link itself).
fn open_fast(
    dir: &OwnedFd,
    path: &[u8],
    nofollow: bool,
    scope: ResolveFlags,
) -> io::Result<OwnedFd> {
    let fd = open_how(dir, path, nofollow, scope)?;
    if nofollow && FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Err(errno(libc::ELOOP));
    }
    Ok(fd)
}

fn open_how(
    dir: &OwnedFd,
    path: &[u8],
    nofollow: bool,
    scope: ResolveFlags,
) -> io::Result<OwnedFd> {
    let flags = match nofollow {
        true => OFlags::NOFOLLOW,
        false => OFlags::empty(),
    };
    open_flags(dir, path, flags, scope | ResolveFlags::NO_MAGICLINKS)
}

/// `openat2(dir, path, O_PATH | O_CLOEXEC | extra, resolve)`.
fn open_flags(
    dir: &OwnedFd,
    path: &[u8],
    extra: OFlags,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::CLOEXEC | extra;
    // openat2 returns EAGAIN when a concurrent rename could have let `..` escape; retry.
    for _ in 0..8 {
        match rfs::openat2(
            dir.as_fd(),
            OsStr::from_bytes(path),
            flags,
            Mode::empty(),
            resolve,
        ) {
            Err(rustix::io::Errno::AGAIN) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
    Err(errno(libc::EAGAIN))
}

/// The path the kernel prints for an open file (`readlink /proc/self/fd/N`): for a file of a
/// container, the path inside the container's mount namespace.
pub fn fd_path(fd: &impl AsFd) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    let link = rfs::readlink(
        format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()),
        Vec::new(),
    )?;
    Ok(PathBuf::from(OsStr::from_bytes(link.as_bytes())))
}

/// Whether a path names a `memfd` (`/memfd:NAME (deleted)`).
pub fn is_memfd_path(path: &Path) -> bool {
    path.as_os_str().as_bytes().starts_with(b"/memfd:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execveat_lookups() {
        assert_eq!(
            Lookup::execveat(5, Vec::new(), AT_EMPTY_PATH),
            Lookup::Fd(5)
        );
        assert_eq!(
            Lookup::execveat(AT_FDCWD, b"x".to_vec(), AT_SYMLINK_NOFOLLOW),
            Lookup::Path {
                dir: Dir::Cwd,
                path: b"x".to_vec(),
                nofollow: true
            }
        );
    }

    fn caller_in(root: &Path) -> Caller {
        Caller {
            pid: std::process::id(),
            root: rfs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).expect("root"),
        }
    }

    fn key(opened: &Opened) -> (u64, u64) {
        (opened.stat.st_dev, opened.stat.st_ino)
    }

    #[test]
    fn proc_self_is_the_caller_only_where_proc_is_procfs() {
        let own_exe = std::fs::metadata("/proc/self/exe").expect("own exe");
        let own = (
            std::os::unix::fs::MetadataExt::dev(&own_exe),
            std::os::unix::fs::MetadataExt::ino(&own_exe),
        );
        let host = caller_in(Path::new("/"));
        let mapped = host
            .resolve(&Lookup::execve(b"/proc/self/exe".to_vec()))
            .expect("host /proc/self/exe");
        assert_eq!(key(&mapped), own);

        let fake = tempfile::tempdir().expect("tempdir");
        for dir in ["proc/self/fd", "proc/thread-self"] {
            std::fs::create_dir_all(fake.path().join(dir)).expect("mkdir");
        }
        for file in ["proc/self/exe", "proc/thread-self/exe", "proc/self/fd/7"] {
            std::fs::write(fake.path().join(file), file).expect("write");
        }
        let chrooted = caller_in(fake.path());
        for file in ["proc/self/exe", "proc/thread-self/exe", "proc/self/fd/7"] {
            let opened = chrooted
                .resolve(&Lookup::execve(format!("/{file}").into_bytes()))
                .expect("literal file");
            let literal = std::fs::metadata(fake.path().join(file)).expect("stat");
            assert_eq!(
                key(&opened),
                (
                    std::os::unix::fs::MetadataExt::dev(&literal),
                    std::os::unix::fs::MetadataExt::ino(&literal)
                ),
                "{file} must be the chroot's own file"
            );
        }
        let missing = caller_in(tempfile::tempdir().expect("tempdir").path())
            .resolve(&Lookup::execve(b"/proc/self/exe".to_vec()))
            .expect_err("no /proc at all");
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn resolves_in_own_root_and_never_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        std::fs::write(dir.path().join("bin/tool"), b"x").expect("write");
        std::os::unix::fs::symlink("/../../bin/tool", dir.path().join("link")).expect("symlink");
        let caller = Caller {
            pid: std::process::id(),
            root: rfs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                .expect("root"),
        };
        let direct = caller
            .resolve(&Lookup::execve(b"/bin/tool".to_vec()))
            .expect("direct");
        let via_dots = caller
            .resolve(&Lookup::execve(b"/../../../bin/tool".to_vec()))
            .expect("dots");
        let via_link = caller
            .resolve(&Lookup::execve(b"/link".to_vec()))
            .expect("link");
        for other in [&via_dots, &via_link] {
            assert_eq!(
                (direct.stat.st_dev, direct.stat.st_ino),
                (other.stat.st_dev, other.stat.st_ino)
            );
        }
        let err = caller
            .resolve(&Lookup::execve(b"/bin/none".to_vec()))
            .expect_err("missing");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    fn own(path: &str) -> (u64, u64) {
        let meta = std::fs::metadata(path).expect("stat");
        (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        )
    }

    fn errno_of(result: io::Result<Opened>) -> Option<i32> {
        result.err().and_then(|err| err.raw_os_error())
    }

    #[test]
    fn status_lines_give_namespace_chains() {
        let status = b"Name:\tsh\nTgid:\t77\nNStgid:\t77\t1\nNSpid:\t78\t2\n";
        assert_eq!(status_ids(status, b"NStgid:"), vec![77, 1]);
        assert_eq!(status_ids(status, b"NSpid:"), vec![78, 2]);
        assert!(status_ids(status, b"NSsid:").is_empty());
    }

    /// A tree of real directories, symlinks of every kind and a loop.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        for sub in ["bin", "usr/lib", "a/b"] {
            std::fs::create_dir_all(p.join(sub)).expect("mkdir");
        }
        std::fs::write(p.join("bin/tool"), b"x").expect("write");
        for (link, text) in [
            ("bin/rel", "tool"),
            ("bin/abs", "/bin/tool"),
            ("bin/up", "../../../../bin/tool"),
            ("a/b/dirlink", "../../bin"),
            ("a/b/slash", "/bin/tool/"),
            ("a/empty-ish", "a/missing"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
        ] {
            std::os::unix::fs::symlink(text, p.join(link)).expect("symlink");
        }
        dir
    }

    #[test]
    fn the_walk_agrees_with_openat2_on_ordinary_paths() {
        let dir = tree();
        let caller = caller_in(dir.path());
        let paths = [
            "/bin/tool",
            "/bin/rel",
            "/bin/abs",
            "/bin/up",
            "/a/b/dirlink/tool",
            "/a/b/dirlink/../bin/abs",
            "/a/b/../../../bin/./tool",
            "/a/b/slash",
            "/bin/tool/",
            "/bin/tool/x",
            "/bin/none",
            "/a/empty-ish",
            "/loop1",
            "/",
            "/a/b/..",
        ];
        for path in paths {
            for nofollow in [false, true] {
                let fast = open_fast(
                    &caller.root,
                    path.as_bytes(),
                    nofollow,
                    ResolveFlags::IN_ROOT,
                );
                let start = (caller.reopen(&[]).expect("root"), Vec::new());
                let walked = Walk::new(&caller, start, path.as_bytes(), nofollow).run();
                match (fast, walked) {
                    (Ok(a), Ok(b)) => {
                        let (a, b) = (rfs::fstat(&a).expect("a"), rfs::fstat(&b).expect("b"));
                        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino), "{path}");
                    }
                    (Err(a), Err(b)) => {
                        assert_eq!(a.raw_os_error(), b.raw_os_error(), "{path} {nofollow}")
                    }
                    (a, b) => panic!("{path} nofollow={nofollow}: openat2 {a:?}, walk {b:?}"),
                }
            }
        }
    }

    #[test]
    fn magic_links_lead_where_the_kernel_goes() {
        let dir = tree();
        let host = caller_in(Path::new("/"));
        let inside = dir.path().display().to_string();
        let tool = own(&format!("{inside}/bin/tool"));
        let me = std::process::id();
        for path in [
            format!("/proc/self/root{inside}/bin/tool"),
            format!("/proc/thread-self/root{inside}/a/b/../../bin/rel"),
            format!("/proc/{me}/root/../..{inside}/bin/rel"),
            format!("/proc/self/cwd/../../../../../../..{inside}/a/b/dirlink/tool"),
        ] {
            let opened = host.resolve(&Lookup::execve(path.clone().into_bytes()));
            assert_eq!(key(&opened.expect(&path)), tool, "{path}");
        }
        let link = dir.path().join("via-proc");
        std::os::unix::fs::symlink(format!("/proc/self/root{inside}/bin/rel"), &link)
            .expect("symlink");
        let opened = host.resolve(&Lookup::execve(link.display().to_string().into_bytes()));
        assert_eq!(key(&opened.expect("symlink into /proc/self/root")), tool);
        let exe = host.resolve(&Lookup::execve(b"/proc/self/exe".to_vec()));
        assert_eq!(key(&exe.expect("exe")), own("/proc/self/exe"));
        let nofollow = host.resolve(&Lookup::execveat(
            AT_FDCWD,
            b"/proc/self/exe".to_vec(),
            AT_SYMLINK_NOFOLLOW,
        ));
        assert_eq!(errno_of(nofollow), Some(libc::ELOOP));
        let slash = host.resolve(&Lookup::execve(b"/proc/self/exe/".to_vec()));
        assert_eq!(errno_of(slash), Some(libc::ENOTDIR));
    }

    #[test]
    fn relative_paths_from_a_procfs_directory() {
        use std::os::fd::AsRawFd;
        let dir = tree();
        let host = caller_in(Path::new("/"));
        let proc_self = std::fs::File::open("/proc/self").expect("open /proc/self");
        let fd = proc_self.as_raw_fd();
        let exe = host.resolve(&Lookup::execveat(fd, b"exe".to_vec(), 0));
        assert_eq!(key(&exe.expect("./exe")), own("/proc/self/exe"));
        let inside = dir.path().display().to_string();
        let rooted = host.resolve(&Lookup::execveat(
            fd,
            format!("./root{inside}/bin/tool").into_bytes(),
            0,
        ));
        assert_eq!(
            key(&rooted.expect("./root/...")),
            own(&format!("{inside}/bin/tool"))
        );
    }

    #[test]
    fn an_fd_of_a_memfd_stays_fileless() {
        let memfd =
            rustix::fs::memfd_create("payload", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        let host = caller_in(Path::new("/"));
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
        let opened = host
            .resolve(&Lookup::execve(path.into_bytes()))
            .expect("memfd");
        assert!(is_memfd_path(&fd_path(&opened.file).expect("path")));
    }

    #[test]
    fn bad_fds_are_ebadf() {
        let host = caller_in(Path::new("/"));
        let closed = 1_000_000;
        assert_eq!(
            errno_of(host.resolve(&Lookup::Fd(closed))),
            Some(libc::EBADF)
        );
        assert_eq!(errno_of(host.resolve(&Lookup::Fd(-5))), Some(libc::EBADF));
        let relative = Lookup::execveat(closed, b"bin/sh".to_vec(), 0);
        assert_eq!(errno_of(host.resolve(&relative)), Some(libc::EBADF));
        let absolute = Lookup::execveat(closed, b"/proc/self/exe".to_vec(), 0);
        assert!(
            host.resolve(&absolute).is_ok(),
            "an absolute path ignores dirfd"
        );
        let cwd = host.resolve(&Lookup::execveat(AT_FDCWD, Vec::new(), AT_EMPTY_PATH));
        assert!(
            !classify_dir(&cwd.expect("cwd")),
            "AT_FDCWD with an empty path is the cwd"
        );
    }

    fn classify_dir(opened: &Opened) -> bool {
        FileType::from_raw_mode(opened.stat.st_mode) != FileType::Directory
    }

    #[test]
    fn a_chroot_climbs_only_to_its_own_root_and_refuses_outside_directories() {
        use std::os::fd::AsRawFd;
        let dir = tree();
        let chrooted = caller_in(dir.path());
        let bin = std::fs::File::open(dir.path().join("a/b")).expect("open a/b");
        let climb = Lookup::execveat(bin.as_raw_fd(), b"../../../../../bin/rel".to_vec(), 0);
        let opened = chrooted.resolve(&climb).expect("climb");
        assert_eq!(
            key(&opened),
            own(&dir.path().join("bin/tool").display().to_string())
        );
        let host_proc = std::fs::File::open("/proc").expect("open /proc");
        let outside = Lookup::execveat(host_proc.as_raw_fd(), b"self/exe".to_vec(), 0);
        let err = chrooted
            .resolve(&outside)
            .expect_err("host /proc is outside");
        assert!(
            err.to_string().contains("outside the caller's root"),
            "{err}"
        );
        let loops = chrooted.resolve(&Lookup::execve(b"/loop1".to_vec()));
        assert_eq!(errno_of(loops), Some(libc::ELOOP));
    }
}
