//! What the index records about one path of a layer or of an image.
//!
//! Invariants: `FileEntry::mode` holds only the permission and special bits (`st_mode & 0o7777`);
//! the file type is the [`Entry`] variant. Paths and symlink targets are raw bytes (Linux paths
//! need not be UTF-8) and are serialized as bytes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;

/// A regular file of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes from `stat`.
    pub size: u64,
    /// BLAKE3 of the content; `None` when the file could not be read (see `read_error`).
    pub hash: Option<ContentHash>,
    /// Any of the three execute bits is set.
    pub exec_bits: bool,
    /// The content starts with the ELF magic or `#!`, whatever its mode.
    pub looks_executable: bool,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Why the content could not be read, when `hash` is `None`.
    pub read_error: Option<String>,
}

impl FileEntry {
    /// The content hash as lower-case hex, or `None` for an unreadable file.
    pub fn hash_hex(&self) -> Option<String> {
        self.hash.map(hex::encode)
    }
}

/// The kinds of non-regular, non-directory, non-symlink files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device other than an overlayfs whiteout.
    CharDevice {
        /// Device number.
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number.
        rdev: u64,
    },
}

/// One path of a layer or of the merged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A regular file.
    File(FileEntry),
    /// A symbolic link and its target, as stored (not resolved).
    Symlink {
        /// The link's target bytes.
        #[serde(with = "raw_path")]
        target: PathBuf,
    },
    /// A directory.
    Dir,
    /// A fifo, socket or device node.
    Special {
        /// Which kind of special file.
        kind: SpecialKind,
        /// Permission and special bits.
        mode: u32,
    },
}

impl Entry {
    /// The regular file, if this is one.
    pub fn as_file(&self) -> Option<&FileEntry> {
        match self {
            Entry::File(file) => Some(file),
            _ => None,
        }
    }

    /// A short lower-case name of the kind of entry (`file`, `symlink`, `dir`, `fifo`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Entry::File(_) => "file",
            Entry::Symlink { .. } => "symlink",
            Entry::Dir => "dir",
            Entry::Special { kind, .. } => match kind {
                SpecialKind::Fifo => "fifo",
                SpecialKind::Socket => "socket",
                SpecialKind::CharDevice { .. } => "char-device",
                SpecialKind::BlockDevice { .. } => "block-device",
            },
        }
    }
}

/// Serde helpers that store a path as its raw bytes.
pub(crate) mod raw_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a path as a byte string.
    pub fn serialize<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(path.as_os_str().as_bytes())
    }

    /// Deserializes a path from a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
        let bytes = <Vec<u8>>::deserialize(deserializer)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}
