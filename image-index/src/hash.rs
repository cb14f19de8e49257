//! BLAKE3 content hashing of single files.
//!
//! Two entry points with different trust in the file:
//! - [`hash_file`] is for files a container can write to (upper layer, volumes, tmpfs). It
//!   uses large `read`s only, never a memory mapping, so a file truncated or rewritten while it
//!   is hashed yields a hash of whatever was read, never a crash.
//! - [`hash_layer_file`] is for files of read-only image layers. Large files are memory mapped
//!   (no copy through a user buffer); small files are read in one go. It also reports whether
//!   the content starts like an executable (ELF magic or `#!`).
//!
//! Limits: a layer file truncated by someone on the host while it is mapped raises `SIGBUS` in
//! the hashing thread; image layer snapshots are immutable by contract, so this is not guarded.

use std::fs::File;
use std::io::{self, Read};

/// A BLAKE3 digest of a file's full content.
pub type ContentHash = [u8; 32];

/// Files at least this large are memory mapped by [`hash_layer_file`].
const MMAP_THRESHOLD: u64 = 256 * 1024;

/// Mapped files at least this large are hashed with BLAKE3's multi-threaded tree mode.
const RAYON_THRESHOLD: usize = 4 * 1024 * 1024;

/// Buffer size of the read loop: large enough for BLAKE3's SIMD multi-chunk path.
const READ_BUF: usize = 256 * 1024;

/// Hashes a file's content from its current offset to end of file with large reads.
///
/// Meant for exec-time hashing of files a container may still be writing: the file is never
/// mapped, so concurrent truncation cannot crash the caller. The caller should pass a freshly
/// opened file (offset 0).
pub fn hash_file(file: &File) -> io::Result<ContentHash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut reader = file;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(*hasher.finalize().as_bytes())
}

/// What hashing a layer file found out about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentFacts {
    /// BLAKE3 of the full content.
    pub hash: ContentHash,
    /// The content starts with the ELF magic or with `#!`.
    pub looks_executable: bool,
    /// Bytes actually hashed (differs from the stat size only if the file changed meanwhile).
    pub len: u64,
}

/// Hashes a file of a read-only image layer; `size` is its size from `stat`.
///
/// Only for files of committed image layers: large files are memory mapped (see the module
/// limits). Use [`hash_file`] for anything a container can write to.
#[allow(unsafe_code)]
pub fn hash_layer_file(file: &File, size: u64) -> io::Result<ContentFacts> {
    if size < MMAP_THRESHOLD {
        return hash_small(file, size);
    }
    // SAFETY: the file belongs to a read-only, immutable image layer (a containerd snapshot
    // that is committed, or an unpacked OCI layer), opened read-only, and the mapping is
    // private and read-only and lives only for this call. Nothing in this process writes to
    // it. If another process on the host truncates it while it is mapped, reading the lost
    // pages raises SIGBUS; layer snapshots are never modified after commit, which is why this
    // function is only used for layer files and `hash_file` (plain reads) for everything else.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(file)? };
    let mut hasher = blake3::Hasher::new();
    if map.len() >= RAYON_THRESHOLD {
        hasher.update_rayon(&map);
    } else {
        hasher.update(&map);
    }
    Ok(ContentFacts {
        hash: *hasher.finalize().as_bytes(),
        looks_executable: looks_executable(&map),
        len: map.len() as u64,
    })
}

/// Reads a small file whole (one extra read to confirm end of file) and hashes it.
fn hash_small(file: &File, size: u64) -> io::Result<ContentFacts> {
    let cap = usize::try_from(size).unwrap_or(0).saturating_add(1);
    let mut buf = Vec::with_capacity(cap);
    let mut reader = file;
    reader.read_to_end(&mut buf)?;
    Ok(ContentFacts {
        hash: *blake3::hash(&buf).as_bytes(),
        looks_executable: looks_executable(&buf),
        len: buf.len() as u64,
    })
}

/// Whether content starts like something the kernel can execute: ELF or a `#!` script.
pub fn looks_executable(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") || head.starts_with(b"#!")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn file_with(content: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut f = File::create(&path).expect("create");
        f.write_all(content).expect("write");
        drop(f);
        let f = File::open(&path).expect("open");
        (dir, f)
    }

    #[test]
    fn read_and_mapped_hashes_agree_with_blake3() {
        for len in [0usize, 5, 300 * 1024, 5 * 1024 * 1024 + 17] {
            let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let expected = *blake3::hash(&content).as_bytes();
            let (_dir, mut f) = file_with(&content);
            assert_eq!(hash_file(&f).expect("hash_file"), expected, "len {len}");
            f.seek(std::io::SeekFrom::Start(0)).expect("rewind");
            let facts = hash_layer_file(&f, len as u64).expect("hash_layer_file");
            assert_eq!(facts.hash, expected, "len {len}");
            assert_eq!(facts.len, len as u64);
        }
    }

    #[test]
    fn sniffs_elf_and_shebang_only() {
        assert!(looks_executable(b"\x7fELF\x02\x01"));
        assert!(looks_executable(b"#!/bin/sh\n"));
        assert!(!looks_executable(b"#"));
        assert!(!looks_executable(b"\x7fEL"));
        assert!(!looks_executable(b"hello"));
    }
}
