//! What else the kernel loads inside one `execve`: a script's interpreter (`#!`) and an ELF
//! program's interpreter (`PT_INTERP`, the dynamic loader).
//!
//! Parsing follows the kernel: `binfmt_script` looks only at the first `BINPRM_BUF_SIZE` (256)
//! bytes, skips spaces and tabs after `#!`, and ends the interpreter path at a space, tab,
//! newline or NUL; `binfmt_elf` reads the program headers at `e_phoff` (at most 64 KiB of them)
//! and takes the first `PT_INTERP` segment, a NUL-terminated path of 2 to `PATH_MAX` bytes.
//! ELF32 and ELF64 headers of either byte order are read.
//!
//! Limits: a file whose headers cannot be read or parsed is reported as [`Header::Other`]; the
//! kernel refuses to run such an ELF file or a script without an interpreter, so nothing more is
//! loaded by it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// `BINPRM_BUF_SIZE`: how much of a script the kernel looks at for its `#!` line.
pub const BINPRM_BUF_SIZE: usize = 256;

/// How deep the kernel nests interpreters (`bprm->interp` recursion limit of `exec_binprm`).
pub const MAX_INTERP_DEPTH: usize = 4;

/// Most bytes of program headers the kernel reads (`ELF_MIN_ALIGN`-independent cap of 64 KiB).
const MAX_PHDRS_BYTES: u64 = 65536;

/// `PT_INTERP`.
const PT_INTERP: u32 = 3;
/// `ET_DYN`.
const ET_DYN: u16 = 3;

/// What an exec target's first bytes say about what the kernel loads with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A `#!` script.
    Script {
        /// The interpreter path (empty when the line names none).
        interp: Vec<u8>,
        /// The line's optional argument ([`script_line`]).
        argument: Option<Vec<u8>>,
    },
    /// An ELF program.
    Elf {
        /// The `PT_INTERP` path, when it has one.
        interp: Option<Vec<u8>>,
        /// `e_type` is `ET_DYN` (a position-independent program or a dynamic loader).
        dyn_type: bool,
    },
    /// Anything else.
    Other,
}

impl Header {
    /// An ELF file of type `ET_DYN` without `PT_INTERP`: what a dynamic loader looks like
    /// (a static position-independent program looks the same).
    pub fn is_loader_like(&self) -> bool {
        matches!(
            self,
            Header::Elf {
                interp: None,
                dyn_type: true
            }
        )
    }
}

/// Reads the header of an `O_PATH` file by reopening it for reading.
pub fn read_header(file: &OwnedFd) -> io::Result<Header> {
    let reader = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let mut buf = [0u8; 64];
    let n = read_full(&reader, &mut buf, 0)?;
    let head = &buf[..n];
    if head.starts_with(b"#!") {
        let mut line = [0u8; BINPRM_BUF_SIZE];
        let n = read_full(&reader, &mut line, 0)?;
        let (interp, argument) = script_line(&line[..n]);
        return Ok(Header::Script {
            interp: interp.to_vec(),
            argument: argument.map(<[u8]>::to_vec),
        });
    }
    match Elf::parse(head) {
        Some(elf) => elf.header(&reader),
        None => Ok(Header::Other),
    }
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}

/// A `#!` line as `binfmt_script` parses it from the first `BINPRM_BUF_SIZE` bytes (`buf`
/// starts with `#!`): the interpreter path, and the optional argument — what follows the path up
/// to the end of the line, without surrounding blanks, passed as one argument.
pub fn script_line(buf: &[u8]) -> (&[u8], Option<&[u8]>) {
    let buf = &buf[..buf.len().min(BINPRM_BUF_SIZE)];
    let line = buf.get(2..).unwrap_or_default();
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        None => line,
    };
    let trim = |bytes: &'_ [u8]| -> usize {
        bytes
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(bytes.len())
    };
    let rest = &line[trim(line)..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | 0))
        .unwrap_or(rest.len());
    let arg = &rest[end..];
    let arg = &arg[trim(arg)..];
    let last = arg.iter().rposition(|&b| b != b' ' && b != b'\t');
    let argument = last
        .map(|last| &arg[..=last])
        .filter(|a| a.first() != Some(&0));
    (&rest[..end], argument)
}

/// The fields of an ELF header needed to find `PT_INTERP`.
#[derive(Debug, Clone, Copy)]
struct Elf {
    wide: bool,
    little: bool,
    e_type: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

impl Elf {
    fn parse(head: &[u8]) -> Option<Elf> {
        if head.len() < 52 || !head.starts_with(b"\x7fELF") {
            return None;
        }
        let wide = match head[4] {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little = match head[5] {
            1 => true,
            2 => false,
            _ => return None,
        };
        let elf = Elf {
            wide,
            little,
            e_type: 0,
            phoff: 0,
            phentsize: 0,
            phnum: 0,
        };
        let (phoff, ph_at) = if wide {
            (elf.u64_at(head, 32)?, 54)
        } else {
            (u64::from(elf.u32_at(head, 28)?), 42)
        };
        Some(Elf {
            e_type: elf.u16_at(head, 16)?,
            phoff,
            phentsize: elf.u16_at(head, ph_at)?,
            phnum: elf.u16_at(head, ph_at + 2)?,
            ..elf
        })
    }

    fn u16_at(&self, buf: &[u8], at: usize) -> Option<u16> {
        let bytes: [u8; 2] = buf.get(at..at + 2)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(bytes)
        } else {
            u16::from_be_bytes(bytes)
        })
    }

    fn u32_at(&self, buf: &[u8], at: usize) -> Option<u32> {
        let bytes: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    }

    fn u64_at(&self, buf: &[u8], at: usize) -> Option<u64> {
        let bytes: [u8; 8] = buf.get(at..at + 8)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(bytes)
        } else {
            u64::from_be_bytes(bytes)
        })
    }

    /// `(p_offset, p_filesz)` of the first `PT_INTERP` in the program headers.
    fn interp_segment(&self, phdrs: &[u8]) -> Option<(u64, u64)> {
        let size = usize::from(self.phentsize);
        for at in (0..usize::from(self.phnum)).map(|i| i * size) {
            if self.u32_at(phdrs, at)? != PT_INTERP {
                continue;
            }
            return if self.wide {
                Some((self.u64_at(phdrs, at + 8)?, self.u64_at(phdrs, at + 32)?))
            } else {
                let offset = self.u32_at(phdrs, at + 4)?;
                Some((u64::from(offset), u64::from(self.u32_at(phdrs, at + 16)?)))
            };
        }
        None
    }

    fn header(&self, file: &File) -> io::Result<Header> {
        let min_entry = if self.wide { 56 } else { 32 };
        let total = u64::from(self.phentsize) * u64::from(self.phnum);
        if usize::from(self.phentsize) < min_entry || total == 0 || total > MAX_PHDRS_BYTES {
            return Ok(Header::Other);
        }
        let mut phdrs = vec![0u8; total as usize];
        if read_full(file, &mut phdrs, self.phoff)? < phdrs.len() {
            return Ok(Header::Other);
        }
        let dyn_type = self.e_type == ET_DYN;
        let Some((offset, size)) = self.interp_segment(&phdrs) else {
            return Ok(Header::Elf {
                interp: None,
                dyn_type,
            });
        };
        if !(2..=crate::target::PATH_MAX as u64).contains(&size) {
            return Ok(Header::Other);
        }
        let mut path = vec![0u8; size as usize];
        if read_full(file, &mut path, offset)? < path.len() || path.last() != Some(&0) {
            return Ok(Header::Other);
        }
        path.pop();
        Ok(Header::Elf {
            interp: Some(path),
            dyn_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_interpreter(buf: &[u8]) -> &[u8] {
        script_line(buf).0
    }

    fn script_argument(buf: &[u8]) -> Option<&[u8]> {
        script_line(buf).1
    }

    #[test]
    fn script_arguments_are_one_trimmed_argument() {
        assert_eq!(script_argument(b"#!/bin/sh\necho"), None);
        assert_eq!(script_argument(b"#! /bin/sh   \n"), None);
        assert_eq!(
            script_argument(b"#!/lib64/ld.so /tmp/evil\n"),
            Some(&b"/tmp/evil"[..])
        );
        assert_eq!(
            script_argument(b"#!/usr/bin/env  python3 -u  \nx"),
            Some(&b"python3 -u"[..])
        );
    }

    fn header_of(bytes: &[u8]) -> Header {
        let mut file = tempfile::NamedTempFile::new().expect("temp");
        std::io::Write::write_all(&mut file, bytes).expect("write");
        let fd = rustix::fs::open(
            file.path(),
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .expect("open");
        read_header(&fd).expect("header")
    }

    #[test]
    fn shebang_lines_parse_like_binfmt_script() {
        assert_eq!(script_interpreter(b"#!/bin/sh\necho"), b"/bin/sh");
        assert_eq!(script_interpreter(b"#! \t/bin/sh -e\n"), b"/bin/sh");
        assert_eq!(
            script_interpreter(b"#!/usr/bin/env\tpython3\n"),
            b"/usr/bin/env"
        );
        assert_eq!(script_interpreter(b"#!rel/interp\n"), b"rel/interp");
        assert_eq!(script_interpreter(b"#!/bin/a\0b\n"), b"/bin/a");
        assert_eq!(script_interpreter(b"#!   \n/bin/sh"), b"");
        let mut long = b"#!/".to_vec();
        long.extend(std::iter::repeat_n(b'x', 400));
        assert_eq!(script_interpreter(&long).len(), BINPRM_BUF_SIZE - 2);
        assert_eq!(
            header_of(b"#!/bin/sh\necho hi\n"),
            Header::Script {
                interp: b"/bin/sh".to_vec(),
                argument: None
            }
        );
    }

    #[test]
    fn host_programs_name_their_loader() {
        let bytes = std::fs::read("/bin/sh").expect("read /bin/sh");
        match header_of(&bytes) {
            Header::Elf {
                interp: Some(interp),
                ..
            } => assert!(interp.starts_with(b"/lib"), "{interp:?}"),
            other => panic!("unexpected header {other:?}"),
        }
        let loader = std::fs::read("/lib64/ld-linux-x86-64.so.2").expect("read loader");
        assert!(header_of(&loader).is_loader_like());
        assert_eq!(header_of(b"plain text"), Header::Other);
    }

    fn elf32_be_with_interp(interp: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 52 + 32];
        f[..6].copy_from_slice(b"\x7fELF\x01\x02");
        f[16..18].copy_from_slice(&2u16.to_be_bytes());
        f[28..32].copy_from_slice(&52u32.to_be_bytes());
        f[42..44].copy_from_slice(&32u16.to_be_bytes());
        f[44..46].copy_from_slice(&1u16.to_be_bytes());
        f[52..56].copy_from_slice(&PT_INTERP.to_be_bytes());
        f[56..60].copy_from_slice(&84u32.to_be_bytes());
        f[68..72].copy_from_slice(&(interp.len() as u32 + 1).to_be_bytes());
        f.extend_from_slice(interp);
        f.push(0);
        f
    }

    #[test]
    fn elf32_big_endian_interp() {
        assert_eq!(
            header_of(&elf32_be_with_interp(b"/lib/ld.so.1")),
            Header::Elf {
                interp: Some(b"/lib/ld.so.1".to_vec()),
                dyn_type: false
            }
        );
        let mut unterminated = elf32_be_with_interp(b"/lib/ld.so.1");
        unterminated.pop();
        unterminated.push(b'x');
        assert_eq!(header_of(&unterminated), Header::Other);
    }
}
