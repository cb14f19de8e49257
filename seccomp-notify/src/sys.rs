//! The raw kernel interface: seccomp user-notify ioctls and `process_vm_readv`.
//!
//! Everything `unsafe` in the crate is here, each block with the invariant it relies on. The
//! rest of the crate sees safe functions over [`BorrowedFd`] and plain structs.
//!
//! Invariants: a receive buffer is zeroed before every `SECCOMP_IOCTL_NOTIF_RECV` (the kernel
//! refuses a dirty one) and is at least as large as the kernel's `struct seccomp_notif`
//! ([`check_notif_sizes`] verifies it once at start). ioctl numbers follow the asm-generic
//! layout shared by x86_64 and aarch64.
//!
//! Limits: only x86_64 and aarch64 kernels are supported (the ioctl encoding differs on some
//! other architectures).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::event::{PollFd, PollFlags};

/// `SECCOMP_IOCTL_NOTIF_RECV`: `_IOWR('!', 0, struct seccomp_notif)`.
const NOTIF_RECV: u64 = 0xc050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND`: `_IOWR('!', 1, struct seccomp_notif_resp)`.
const NOTIF_SEND: u64 = 0xc018_2101;
/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: `_IOW('!', 2, __u64)` (the Linux ≥ 5.8 number).
const NOTIF_ID_VALID: u64 = 0x4008_2102;
/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS`: `_IOW('!', 4, __u64)` (Linux ≥ 6.6).
const NOTIF_SET_FLAGS: u64 = 0x4008_2104;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`: wake the supervisor on the caller's CPU.
const FD_SYNC_WAKE_UP: u64 = 1;
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`.
const FLAG_CONTINUE: u32 = 1;
/// `F_SETSIG` (`fcntl(2)`, Linux; not exported by the libc crate).
const F_SETSIG: libc::c_int = 10;
/// `seccomp(2)` operation `SECCOMP_GET_NOTIF_SIZES`.
const GET_NOTIF_SIZES: libc::c_uint = 3;

/// `struct seccomp_data`: the syscall as the filter saw it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeccompData {
    /// Syscall number (architecture specific).
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the calling convention.
    pub arch: u32,
    /// Instruction pointer at the syscall.
    pub instruction_pointer: u64,
    /// The six syscall arguments, zero-extended.
    pub args: [u64; 6],
}

/// `struct seccomp_notif`: one pending syscall.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notification {
    /// Cookie that identifies the notification in later ioctls.
    pub id: u64,
    /// Thread id of the caller, in the supervisor's pid namespace (0 when not visible there).
    pub pid: u32,
    /// Unused by the kernel so far.
    pub flags: u32,
    /// The syscall.
    pub data: SeccompData,
}

/// Receive buffer: the UAPI struct plus room for fields a newer kernel may append.
#[repr(C)]
#[derive(Default)]
struct RecvBuffer {
    notif: Notification,
    spare: [u64; 8],
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Debug, Default)]
struct Response {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// `struct seccomp_notif_sizes`.
#[repr(C)]
#[derive(Debug, Default)]
struct NotifSizes {
    notif: u16,
    notif_resp: u16,
    data: u16,
}

/// Checks that the running kernel's notification structs fit the buffers of this module.
pub fn check_notif_sizes() -> io::Result<()> {
    let mut sizes = NotifSizes::default();
    // SAFETY: SECCOMP_GET_NOTIF_SIZES writes exactly one `struct seccomp_notif_sizes` (three
    // u16, the layout of `NotifSizes`) to the pointer, which is valid and exclusively borrowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            GET_NOTIF_SIZES,
            0 as libc::c_uint,
            &mut sizes,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let fits = usize::from(sizes.notif) <= std::mem::size_of::<RecvBuffer>()
        && usize::from(sizes.notif_resp) <= std::mem::size_of::<Response>()
        && usize::from(sizes.data) <= std::mem::size_of::<SeccompData>();
    if !fits {
        return Err(io::Error::other(format!(
            "kernel seccomp notification sizes {sizes:?} exceed the supported layout"
        )));
    }
    Ok(())
}

/// Receives one pending notification. `ENOENT` means the caller was interrupted by a signal
/// and the notification withdrawn (the kernel restarts the syscall with a new one).
pub fn recv(fd: BorrowedFd<'_>) -> io::Result<Notification> {
    let mut buffer = RecvBuffer::default();
    // SAFETY: `buffer` is zeroed (Default) and larger than the kernel's struct seccomp_notif
    // (checked by `check_notif_sizes`); the kernel writes at most that many bytes into it.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            NOTIF_RECV as libc::Ioctl,
            &mut buffer as *mut RecvBuffer,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buffer.notif)
}

/// Whether the notification is still pending (its caller alive and still waiting).
pub fn id_valid(fd: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64 through the pointer, which points to
    // a live local.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            NOTIF_ID_VALID as libc::Ioctl,
            &id as *const u64,
        )
    };
    rc == 0
}

/// Lets the syscall run (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`).
pub fn send_continue(fd: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    send(
        fd,
        Response {
            id,
            val: 0,
            error: 0,
            flags: FLAG_CONTINUE,
        },
    )
}

/// Fails the syscall with `errno` (positive, e.g. `libc::EPERM`).
pub fn send_errno(fd: BorrowedFd<'_>, id: u64, errno: i32) -> io::Result<()> {
    send(
        fd,
        Response {
            id,
            val: 0,
            error: -errno,
            flags: 0,
        },
    )
}

fn send(fd: BorrowedFd<'_>, mut response: Response) -> io::Result<()> {
    // SAFETY: `response` is a fully initialized struct seccomp_notif_resp that the kernel
    // reads (and may write back) through the pointer while it is exclusively borrowed.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            NOTIF_SEND as libc::Ioctl,
            &mut response as *mut Response,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to wake the supervisor on the caller's CPU and the caller on the
/// supervisor's (`SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`, Linux ≥ 6.6): the caller sleeps until
/// the answer anyway, so the round trip needs no cross-CPU wake-up. `EINVAL` on older kernels,
/// which then use ordinary wake-ups.
pub fn set_sync_wake_up(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: SECCOMP_IOCTL_NOTIF_SET_FLAGS takes the flags as the ioctl's integer argument
    // (no pointer is dereferenced); the kernel validates them.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            NOTIF_SET_FLAGS as libc::Ioctl,
            FD_SYNC_WAKE_UP,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What waiting on a notify fd ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A notification is pending (`RECV` will not block).
    Pending,
    /// No process uses the filter any more (`POLLHUP`), or the fd is unusable.
    HungUp,
    /// The stop fd became readable.
    Stopped,
}

/// Blocks until `notify` has a notification or hangs up, or `stop` becomes readable.
/// Interrupted waits are restarted.
pub fn wait(notify: BorrowedFd<'_>, stop: BorrowedFd<'_>) -> io::Result<Wait> {
    loop {
        let mut fds = [
            PollFd::new(&notify, PollFlags::IN),
            PollFd::new(&stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
        if !fds[1].revents().is_empty() {
            return Ok(Wait::Stopped);
        }
        let revents = fds[0].revents();
        if revents.contains(PollFlags::IN) {
            return Ok(Wait::Pending);
        }
        if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
            return Ok(Wait::HungUp);
        }
    }
}

/// Whether any process has `file` open for writing (a writable shared mapping counts: it holds
/// such an open file). Asked the kernel's way: a read lease (`F_SETLEASE`, `F_RDLCK`) on a new
/// read-only open of the file is refused with `EAGAIN` exactly then, and released at once. The
/// lease-break signal is set to `SIGURG`, whose default action is to be ignored, so a writer
/// opening the file in that instant cannot end the daemon with `SIGIO`.
pub fn has_writers(file: BorrowedFd<'_>) -> io::Result<bool> {
    let reader = rustix::fs::open(
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )?;
    let fd = reader.as_raw_fd();
    // SAFETY: F_SETSIG takes a signal number as its integer argument; `fd` is an open
    // descriptor owned by `reader`, which outlives these calls.
    if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETLEASE takes the lease type as its integer argument; `fd` is open read-only.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) => Ok(true),
            _ => Err(err),
        };
    }
    // SAFETY: as above; releases the lease just taken (closing `reader` would too).
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(false)
}

/// Whether the running kernel serves the x32 ABI (`CONFIG_X86_X32_ABI`): asked once, with an
/// x32 `getpid`, which fails with `ENOSYS` on a kernel without it. Always false off x86_64.
pub fn kernel_has_x32() -> bool {
    static X32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *X32.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return false;
        }
        // SAFETY: getpid takes no arguments and touches no memory; the x32 bit only selects
        // the calling convention, which the kernel either serves or refuses with ENOSYS.
        let rc = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        rc >= 0
    })
}

/// Reads from another process's memory at `addr` into `buf`; returns the bytes read, which
/// is less than `buf.len()` only when the remote range is not mapped (then possibly 0).
///
/// The caller keeps each request within one remote page so that a partial read is detected
/// (the kernel never splits one iovec element).
pub fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which is valid for writes of `buf.len()` bytes and
    // exclusively borrowed; `remote` is only an address in the other process, which the kernel
    // validates (EFAULT) and never dereferences in ours.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EFAULT) {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_uapi() {
        assert_eq!(std::mem::size_of::<SeccompData>(), 64);
        assert_eq!(std::mem::size_of::<Notification>(), 80);
        assert_eq!(std::mem::size_of::<Response>(), 24);
        check_notif_sizes().expect("kernel sizes fit");
    }

    #[test]
    fn reads_own_memory_and_stops_at_unmapped_pages() {
        let text = b"/bin/true\0";
        let mut buf = [0u8; 10];
        let n = read_remote(std::process::id(), text.as_ptr() as u64, &mut buf).expect("read");
        assert_eq!(n, 10);
        assert_eq!(&buf, text);
        let n = read_remote(std::process::id(), 8, &mut buf).expect("unmapped");
        assert_eq!(n, 0);
    }
}
