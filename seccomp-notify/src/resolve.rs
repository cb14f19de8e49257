//! Opening the file an exec would run, the way the kernel would find it for the caller.
//!
//! The caller's root (`/proc/PID/root`) is the root of the lookup: an absolute path is
//! resolved with `openat2(RESOLVE_IN_ROOT)` on it, so neither `..` nor a symlink can leave the
//! container. A relative path is resolved below the caller's cwd (or `dirfd` for `execveat`)
//! with `RESOLVE_BENEATH`; when it climbs out of that directory (`..`, an absolute symlink) it
//! is re-resolved from the root as `<dir's path>/<path>`, after checking that the directory
//! really is that path inside the root (a directory from outside the container, such as a
//! leaked host fd, is refused rather than re-interpreted). `AT_EMPTY_PATH` opens the caller's
//! fd itself through `/proc/PID/fd/N`. `/proc/self` and `/proc/thread-self` name the caller,
//! not the supervisor, so paths below them are mapped to `/proc/PID` of the host, but only
//! when `/proc` inside the caller's root is a procfs mount (`fstatfs`): in a chroot whose
//! `/proc` is a plain directory the kernel finds an ordinary file there, and so does this
//! module, which resolves such a path like any other.
//!
//! Every file is opened `O_PATH` (no open side effects on fifos or devices) and described by
//! `fstat`; the caller of this module re-checks the notification id before trusting it.
//!
//! Limits: magic links other than `/proc/self/...` and `/proc/PID/...` paths of the caller's
//! own pid namespace are not followed (`RESOLVE_IN_ROOT` refuses them); such an exec gets the
//! errno of the failed lookup. The procfs check looks at `/proc` itself: a caller that may
//! mount (`CAP_SYS_ADMIN`) could mount over `/proc/self` inside a real procfs, which this module
//! does not detect.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};

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

    /// Opens the exec target; errors carry the errno the exec would fail with.
    pub fn resolve(&self, lookup: &Lookup) -> io::Result<Opened> {
        let (file, from_fd) = match lookup {
            Lookup::Fd(fd) => (self.open_proc(&format!("fd/{fd}"), false)?, true),
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
        })
    }

    fn open_path(&self, dir: Dir, path: &[u8], nofollow: bool) -> io::Result<OwnedFd> {
        if path.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if path.first() == Some(&b'/') {
            return self.open_absolute(path, nofollow);
        }
        let base = match dir {
            Dir::Cwd => self.open_proc("cwd", false)?,
            Dir::Fd(fd) => self.open_proc(&format!("fd/{fd}"), false)?,
        };
        match open_how(&base, path, nofollow, ResolveFlags::BENEATH) {
            Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                let base_path = self.path_in_root(&base)?;
                let mut joined = base_path.into_os_string().into_encoded_bytes();
                joined.push(b'/');
                joined.extend_from_slice(path);
                self.open_absolute(&joined, nofollow)
            }
            other => other,
        }
    }

    fn open_absolute(&self, path: &[u8], nofollow: bool) -> io::Result<OwnedFd> {
        if let Some(rest) = self_proc_suffix(path) {
            if self.root_has_procfs()? {
                return self.open_proc(rest, nofollow);
            }
        }
        open_how(&self.root, path, nofollow, ResolveFlags::IN_ROOT)
    }

    /// Whether `/proc` inside the caller's root is a procfs mount, so that the kernel gives
    /// `/proc/self` its magic meaning for this caller. In a chroot whose `/proc` is an
    /// ordinary directory, `/proc/self/exe` is just a file of that directory.
    fn root_has_procfs(&self) -> io::Result<bool> {
        let proc_dir = match open_how(&self.root, b"/proc", false, ResolveFlags::IN_ROOT) {
            Ok(fd) => fd,
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(false);
            }
            Err(err) => return Err(err),
        };
        Ok(rfs::fstatfs(&proc_dir)?.f_type == rfs::PROC_SUPER_MAGIC)
    }

    /// Opens `/proc/PID/<rest>` of the host, following the final magic link unless `nofollow`.
    fn open_proc(&self, rest: &str, nofollow: bool) -> io::Result<OwnedFd> {
        let mut flags = OFlags::PATH | OFlags::CLOEXEC;
        if nofollow {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = rfs::open(format!("/proc/{}/{rest}", self.pid), flags, Mode::empty())?;
        Ok(fd)
    }

    /// The path of a directory of the caller, as seen from the caller's root, after checking
    /// that resolving that path from the root gives the same directory.
    fn path_in_root(&self, dir: &OwnedFd) -> io::Result<PathBuf> {
        let path = fd_path(dir)?;
        let again = open_how(
            &self.root,
            path.as_os_str().as_bytes(),
            false,
            ResolveFlags::IN_ROOT,
        )?;
        let (a, b) = (rfs::fstat(dir)?, rfs::fstat(&again)?);
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        Ok(path)
    }
}

fn open_how(
    dir: &OwnedFd,
    path: &[u8],
    nofollow: bool,
    scope: ResolveFlags,
) -> io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    let resolve = scope | ResolveFlags::NO_MAGICLINKS;
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
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// `/proc/self/x` or `/proc/thread-self/x` → `x`; `/proc/self` → `""`.
fn self_proc_suffix(path: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(path).ok()?;
    let trimmed = text.trim_start_matches('/');
    for prefix in ["proc/self", "proc/thread-self"] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                let rest = rest.trim_start_matches('/');
                // Only plain names below: no `..`, no further magic.
                if rest.split('/').all(|c| c != ".." && c != ".") {
                    return Some(rest);
                }
            }
        }
    }
    None
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
    fn proc_self_is_the_caller() {
        assert_eq!(self_proc_suffix(b"/proc/self/exe"), Some("exe"));
        assert_eq!(self_proc_suffix(b"//proc/thread-self/fd/3"), Some("fd/3"));
        assert_eq!(self_proc_suffix(b"/proc/self/../1/exe"), None);
        assert_eq!(self_proc_suffix(b"/proc/selfish"), None);
        assert_eq!(self_proc_suffix(b"/bin/sh"), None);
    }

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
}
