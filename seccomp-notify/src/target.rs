//! Decoding an exec notification and reading its arguments from the caller's memory.
//!
//! The caller is hostile: a path may lack its NUL, end at an unmapped page, be longer than the
//! kernel accepts, or change while it is read. Reading is page by page with
//! `process_vm_readv`, bounded by `PATH_MAX` for a path and by [`MAX_ARGV`] entries for argv;
//! what comes back is an error the kernel would also give (`EFAULT`, `ENAMETOOLONG`), never a
//! guess. The caller re-checks the notification id after reading (the pid could have been
//! recycled); this module does not.
//!
//! Limits: the x86_64 family (native, i386, x32) and the aarch64 family (native, arm) are
//! decoded; any other calling convention is refused.

use crate::sys::{self, SeccompData};

/// Longest path the kernel accepts, NUL included.
pub const PATH_MAX: usize = 4096;
/// Most argv entries read for an event or a loader check.
pub const MAX_ARGV: usize = 16;
/// Longest argv string kept.
const MAX_ARG_LEN: usize = 1024;
/// `AT_FDCWD`.
pub const AT_FDCWD: i32 = -100;
/// `AT_EMPTY_PATH`.
pub const AT_EMPTY_PATH: u32 = 0x1000;
/// `AT_SYMLINK_NOFOLLOW`.
pub const AT_SYMLINK_NOFOLLOW: u32 = 0x100;

const PAGE: u64 = 4096;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
const X32_BIT: i32 = 0x4000_0000;

/// Which exec syscall a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecCall {
    /// `execve(path, argv, envp)`.
    Execve {
        /// Address of the path string.
        path: u64,
        /// Address of the argv array.
        argv: u64,
    },
    /// `execveat(dirfd, path, argv, envp, flags)`.
    Execveat {
        /// Directory fd (or `AT_FDCWD`).
        dirfd: i32,
        /// Address of the path string.
        path: u64,
        /// Address of the argv array.
        argv: u64,
        /// `AT_*` flags.
        flags: u32,
    },
}

/// The calling convention of a notification: syscall numbers and pointer width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi {
    execve: i32,
    execveat: i32,
    /// Pointer size in bytes (4 for compat ABIs).
    pub pointer: usize,
    /// The x32 convention (its syscalls reach the filter even on a kernel without x32).
    pub x32: bool,
}

impl Abi {
    fn of(data: &SeccompData) -> Option<Abi> {
        match data.arch {
            AUDIT_ARCH_X86_64 if data.nr & X32_BIT != 0 => Some(Abi {
                execve: X32_BIT | 520,
                execveat: X32_BIT | 545,
                pointer: 4,
                x32: true,
            }),
            AUDIT_ARCH_X86_64 => Some(Abi {
                execve: 59,
                execveat: 322,
                pointer: 8,
                x32: false,
            }),
            AUDIT_ARCH_I386 => Some(Abi {
                execve: 11,
                execveat: 358,
                pointer: 4,
                x32: false,
            }),
            AUDIT_ARCH_AARCH64 => Some(Abi {
                execve: 221,
                execveat: 281,
                pointer: 8,
                x32: false,
            }),
            AUDIT_ARCH_ARM => Some(Abi {
                execve: 11,
                execveat: 387,
                pointer: 4,
                x32: false,
            }),
            _ => None,
        }
    }
}

/// Decodes the syscall of a notification; `None` for anything that is not an exec syscall of
/// a known calling convention.
pub fn decode(data: &SeccompData) -> Option<(ExecCall, Abi)> {
    let abi = Abi::of(data)?;
    let arg = |i: usize| {
        if abi.pointer == 4 {
            data.args[i] & 0xffff_ffff
        } else {
            data.args[i]
        }
    };
    let call = if data.nr == abi.execve {
        ExecCall::Execve {
            path: arg(0),
            argv: arg(1),
        }
    } else if data.nr == abi.execveat {
        ExecCall::Execveat {
            // dirfd is an int in every ABI: the low 32 bits carry its sign.
            dirfd: data.args[0] as u32 as i32,
            path: arg(1),
            argv: arg(2),
            flags: data.args[4] as u32,
        }
    } else {
        return None;
    };
    Some((call, abi))
}

/// Why an argument could not be read; each maps to the errno the kernel would return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The string runs into unmapped memory (or the address is bad).
    #[error("argument not readable in the caller's memory")]
    Fault,
    /// No NUL within the limit.
    #[error("path longer than PATH_MAX")]
    TooLong,
    /// The process is gone.
    #[error("caller exited")]
    Gone,
}

impl ReadError {
    /// The errno the exec would have failed with.
    pub fn errno(self) -> i32 {
        match self {
            ReadError::Fault => libc::EFAULT,
            ReadError::TooLong => libc::ENAMETOOLONG,
            ReadError::Gone => libc::ESRCH,
        }
    }
}

/// Reads a NUL-terminated string of at most `max` bytes (NUL included) at `addr`.
pub fn read_cstring(pid: u32, addr: u64, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let mut addr = addr;
    let mut chunk = [0u8; PAGE as usize];
    while out.len() < max {
        // Never cross a page in one request: a partial read then means "unmapped".
        let room = (PAGE - addr % PAGE) as usize;
        let want = room.min(max - out.len());
        let got = sys::read_remote(pid, addr, &mut chunk[..want]).map_err(|err| {
            if err.raw_os_error() == Some(libc::ESRCH) {
                ReadError::Gone
            } else {
                ReadError::Fault
            }
        })?;
        if let Some(end) = chunk[..got].iter().position(|b| *b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        if got < want {
            return Err(ReadError::Fault);
        }
        out.extend_from_slice(&chunk[..got]);
        addr = addr.checked_add(got as u64).ok_or(ReadError::Fault)?;
    }
    Err(ReadError::TooLong)
}

/// Bytes from a container (a path, an argument) as text for events and policy: valid UTF-8 as it
/// is, a backslash doubled, and every byte of an invalid sequence as `\xNN`, so two different
/// names never show the same (a lossy conversion would print both as `�`).
pub fn shown(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Reads up to [`MAX_ARGV`] argv strings (each cut at 1 KiB); a bad pointer ends the list.
pub fn read_argv(pid: u32, argv: u64, abi: Abi) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..MAX_ARGV as u64 {
        let Some(slot) = argv.checked_add(i * abi.pointer as u64) else {
            break;
        };
        let mut raw = [0u8; 8];
        let width = abi.pointer;
        match sys::read_remote(pid, slot, &mut raw[..width]) {
            Ok(n) if n == width => {}
            _ => break,
        }
        let ptr = if width == 4 {
            u64::from(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]))
        } else {
            u64::from_ne_bytes(raw)
        };
        if ptr == 0 {
            break;
        }
        match read_cstring(pid, ptr, MAX_ARG_LEN) {
            Ok(arg) => out.push(arg),
            Err(ReadError::TooLong) => out.push(b"<truncated>".to_vec()),
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn shown_names_are_distinct_and_readable() {
        assert_eq!(shown(b"/usr/bin/env"), "/usr/bin/env");
        assert_eq!(shown("/tmp/caf\u{e9}".as_bytes()), "/tmp/caf\u{e9}");
        assert_eq!(shown(b"/tmp/a\xffb"), "/tmp/a\\xffb");
        assert_eq!(shown(b"/tmp/a\\xffb"), "/tmp/a\\\\xffb");
        assert_ne!(shown(b"/tmp/\xfe"), shown(b"/tmp/\xff"));
        assert_eq!(shown(b"a\nb"), "a\nb");
    }

    #[test]
    fn decodes_native_and_compat_exec_calls() {
        let mut data = SeccompData {
            nr: 59,
            arch: AUDIT_ARCH_X86_64,
            ..Default::default()
        };
        data.args = [10, 20, 30, 0, 0, 0];
        assert_eq!(
            decode(&data).map(|d| d.0),
            Some(ExecCall::Execve { path: 10, argv: 20 })
        );

        data.nr = 322;
        data.args = [0xffff_ff9c, 5, 6, 7, 0x1000, 0];
        let (call, _) = decode(&data).expect("execveat");
        assert_eq!(
            call,
            ExecCall::Execveat {
                dirfd: AT_FDCWD,
                path: 5,
                argv: 6,
                flags: 0x1000
            }
        );

        let i386 = SeccompData {
            nr: 11,
            arch: AUDIT_ARCH_I386,
            ..Default::default()
        };
        assert_eq!(decode(&i386).map(|d| d.1.pointer), Some(4));
        let x32 = SeccompData {
            nr: X32_BIT | 545,
            arch: AUDIT_ARCH_X86_64,
            ..Default::default()
        };
        assert!(matches!(decode(&x32), Some((ExecCall::Execveat { .. }, _))));
        let open = SeccompData {
            nr: 2,
            arch: AUDIT_ARCH_X86_64,
            ..Default::default()
        };
        assert_eq!(decode(&open), None);
    }

    #[test]
    fn reads_strings_with_and_without_nul() {
        let text = b"/usr/bin/env\0junk";
        assert_eq!(
            read_cstring(me(), text.as_ptr() as u64, PATH_MAX),
            Ok(b"/usr/bin/env".to_vec())
        );
        let no_nul = vec![b'a'; 3 * PAGE as usize];
        let got = read_cstring(me(), no_nul.as_ptr() as u64, PATH_MAX);
        assert_eq!(got, Err(ReadError::TooLong));
        assert_eq!(read_cstring(me(), 16, PATH_MAX), Err(ReadError::Fault));
    }

    #[test]
    fn reads_argv_arrays() {
        let a = b"ls\0";
        let b = b"-l\0";
        let argv: [u64; 3] = [a.as_ptr() as u64, b.as_ptr() as u64, 0];
        let abi = Abi {
            execve: 59,
            execveat: 322,
            pointer: 8,
            x32: false,
        };
        let got = read_argv(me(), argv.as_ptr() as u64, abi);
        assert_eq!(got, vec![b"ls".to_vec(), b"-l".to_vec()]);
    }
}
