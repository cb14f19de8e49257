//! The raw fanotify interface of the exec gate: one permission group, its marks, its events and
//! their answers.
//!
//! Everything `unsafe` of the gate is here, each block with the invariant it relies on; the
//! rest of the crate sees [`Group`], [`PermissionEvent`] and [`MarkKind`].
//!
//! Invariants: the group is created with `FAN_CLASS_CONTENT` (permission events) and only ever
//! marked for `FAN_OPEN_EXEC_PERM`; every [`PermissionEvent`] read from it keeps its event fd
//! open until it is answered, so the kernel can match the answer to the waiting exec. An event
//! that is dropped unanswered would leave its exec waiting until the group closes: callers
//! answer every event exactly once ([`Group::answer`] consumes it).
//!
//! Limits: needs `CAP_SYS_ADMIN` and Linux ≥ 5.0 (`FAN_OPEN_EXEC_PERM`); events with info
//! records (FID groups) are not used and not parsed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// How much of a filesystem a mark covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// One mount (`FAN_MARK_MOUNT`): only opens through that very mount report.
    Mount,
    /// The whole superblock (`FAN_MARK_FILESYSTEM`): every mount of it, now and later.
    Filesystem,
}

/// One exec waiting for an answer.
#[derive(Debug)]
pub struct PermissionEvent {
    /// The file the kernel opened for the exec (read-only, owned by the gate).
    pub file: OwnedFd,
    /// Thread id of the thread that is executing (in the daemon's pid namespace; the group
    /// reports thread ids, `FAN_REPORT_TID`): the id its exec notification carried, and one
    /// that stays valid while the thread waits even when its group leader has exited.
    pub pid: i32,
}

/// A fanotify group of class content, marked for exec permission events.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

/// `sizeof(struct fanotify_event_metadata)`.
const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

impl Group {
    /// Creates a non-blocking permission group (`FAN_CLASS_CONTENT`) that reports thread ids
    /// (`FAN_REPORT_TID`), with no limit on its marks (`FAN_UNLIMITED_MARKS`): the per-user
    /// limit (`fs.fanotify.max_user_marks`) is shared by every root fanotify user of the node,
    /// and a container that makes thousands of mounts must not use it up for the others.
    pub fn new() -> io::Result<Group> {
        let flags = libc::FAN_CLASS_CONTENT
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_TID
            | libc::FAN_UNLIMITED_MARKS;
        let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint;
        // SAFETY: fanotify_init takes two flag words and returns a new fd or -1; no memory is
        // shared with the kernel.
        let raw = unsafe { libc::fanotify_init(flags, event_flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd returned by the kernel and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Group { fd })
    }

    /// Marks the mount or filesystem of an open file or directory for `FAN_OPEN_EXEC_PERM`.
    ///
    /// The target is named as `/proc/self/fd/N`, which the kernel resolves to the very object
    /// `target` refers to (an `O_PATH` fd works; the mark lands on its mount or superblock).
    pub fn mark(&self, kind: MarkKind, target: BorrowedFd<'_>) -> io::Result<()> {
        let kind_flag = match kind {
            MarkKind::Mount => libc::FAN_MARK_MOUNT,
            MarkKind::Filesystem => libc::FAN_MARK_FILESYSTEM,
        };
        let path = CString::new(format!("/proc/self/fd/{}", target.as_raw_fd()))
            .map_err(io::Error::other)?;
        // SAFETY: the group fd is open for the lifetime of `self`, `path` is a NUL-terminated
        // string that outlives the call, and the kernel only reads it.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | kind_flag,
                libc::FAN_OPEN_EXEC_PERM,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the pending events (none when `EAGAIN`). Events without a file (queue overflow)
    /// are skipped: permission events are never merged or dropped by the kernel.
    pub fn read(&self) -> io::Result<Vec<PermissionEvent>> {
        let mut buf = vec![0u8; 64 * METADATA_LEN];
        // SAFETY: `buf` is a writable buffer of `buf.len()` bytes that lives across the call;
        // the kernel writes at most that many bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Vec::new()),
                _ => Err(err),
            };
        }
        Ok(parse_events(&buf[..n as usize]))
    }

    /// Answers one event: `FAN_ALLOW` or `FAN_DENY` (the exec then fails with `EPERM`). The
    /// event's fd is closed afterwards.
    pub fn answer(&self, event: PermissionEvent, allow: bool) -> io::Result<()> {
        let response = libc::fanotify_response {
            fd: event.file.as_raw_fd(),
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        let size = std::mem::size_of::<libc::fanotify_response>();
        // SAFETY: `response` is a plain repr(C) struct of `size` bytes that outlives the call;
        // the kernel only reads it.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&response as *const libc::fanotify_response).cast(),
                size,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Splits a read buffer into events; each event's fd becomes owned here. Parsing stops at a
/// record of an unknown version or length.
fn parse_events(mut buf: &[u8]) -> Vec<PermissionEvent> {
    let mut events = Vec::new();
    while buf.len() >= METADATA_LEN {
        // SAFETY: at least METADATA_LEN bytes remain; read_unaligned copies them into a plain
        // repr(C) struct of integers, for which every bit pattern is valid.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = meta.event_len as usize;
        if meta.vers != libc::FANOTIFY_METADATA_VERSION || len < METADATA_LEN || len > buf.len() {
            // The rest cannot be trusted; the events already taken over still get answered.
            tracing::warn!(
                version = meta.vers,
                length = len,
                "unreadable fanotify event"
            );
            break;
        }
        if meta.fd >= 0 {
            // SAFETY: the kernel installed this fd in our table for this event; nothing else
            // refers to it, so it is owned from here on.
            let file = unsafe { OwnedFd::from_raw_fd(meta.fd) };
            events.push(PermissionEvent {
                file,
                pid: meta.pid,
            });
        }
        buf = &buf[len..];
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_rejects_garbage() {
        let devnull = std::fs::File::open("/dev/null").expect("open");
        let raw = std::os::fd::IntoRawFd::into_raw_fd(devnull);
        let meta = libc::fanotify_event_metadata {
            event_len: METADATA_LEN as u32,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: METADATA_LEN as u16,
            mask: libc::FAN_OPEN_EXEC_PERM,
            fd: raw,
            pid: 42,
        };
        // SAFETY: viewing a plain repr(C) struct as bytes for the length of this test.
        let bytes = unsafe {
            std::slice::from_raw_parts((&meta as *const _ as *const u8).cast::<u8>(), METADATA_LEN)
        };
        let events = parse_events(bytes);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].pid, 42);
        assert_eq!(events[0].file.as_raw_fd(), raw);

        let mut bad = bytes.to_vec();
        bad[4] = 99;
        assert!(parse_events(&bad).is_empty());
    }
}
