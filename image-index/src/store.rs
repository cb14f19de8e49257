//! The on-disk cache of layer indexes.
//!
//! One file per layer in the state directory, named by the BLAKE3 of the layer's
//! [`LayerKey`]. A layer's key is its chain id or digest when the caller knows it, otherwise
//! the canonical path of its directory with that directory's device, inode and ctime, so a
//! snapshot directory number reused for another layer gets another key.
//!
//! File format (all integers little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `DGLAYIDX` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 8 | payload length |
//! | 32 | BLAKE3 of the payload |
//! | n | payload: postcard encoding of the key and the [`LayerIndex`] |
//!
//! Invariants: a file is written to a temporary file in the same directory, synced, then
//! renamed over the final name, so readers see either the old or the new complete file; a
//! file is trusted only if magic, version, length, checksum, decoding and the stored key all
//! match, otherwise the layer is walked again and the file replaced.
//!
//! Limits: the directory itself is not fsynced after the rename, so a crash right after a
//! write may lose the newest file (it is rebuilt on the next request); files of layers that no
//! longer exist are not removed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::entry::raw_path;
use crate::error::IndexError;
use crate::layer::LayerIndex;

/// Magic bytes at the start of every cache file.
pub const MAGIC: &[u8; 8] = b"DGLAYIDX";
/// Version of the cache file layout and payload encoding.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// The stable identity of a layer, which names its cache file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayerKey {
    /// A layer directory identified by where it is and which inode it is.
    Dir {
        /// Canonical path of the layer directory.
        #[serde(with = "raw_path")]
        path: PathBuf,
        /// Device of the directory.
        dev: u64,
        /// Inode of the directory.
        ino: u64,
        /// Change time of the directory, seconds.
        ctime: i64,
        /// Change time of the directory, nanoseconds.
        ctime_nsec: i64,
    },
    /// A layer identified by a content address the caller knows (chain id or diff id).
    Digest(String),
}

impl LayerKey {
    /// The key of a layer directory from its canonical path, inode and ctime.
    pub fn for_dir(dir: &Path) -> Result<Self, IndexError> {
        let path = fs::canonicalize(dir).map_err(|e| IndexError::io(dir, e))?;
        let meta = fs::metadata(&path).map_err(|e| IndexError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(IndexError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(LayerKey::Dir {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }

    /// The cache file name of this key.
    pub fn file_name(&self) -> String {
        let encoded = postcard::to_stdvec(self).unwrap_or_default();
        format!("{}.idx", blake3::hash(&encoded).to_hex())
    }
}

/// Why a cache file was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheProblem {
    /// Shorter than the header.
    #[error("file is shorter than the header ({len} bytes)")]
    Truncated {
        /// Length found.
        len: usize,
    },
    /// Not a cache file.
    #[error("bad magic")]
    BadMagic,
    /// Written by another format version.
    #[error("format version {found}, expected {FORMAT_VERSION}")]
    Version {
        /// Version found.
        found: u32,
    },
    /// Payload length differs from the header (partial write or appended bytes).
    #[error("payload is {found} bytes, header says {expected}")]
    Length {
        /// Length the header announces.
        expected: u64,
        /// Length present.
        found: u64,
    },
    /// Payload checksum mismatch.
    #[error("payload checksum mismatch")]
    Checksum,
    /// Payload does not decode.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The file belongs to another layer (name collision or renamed file).
    #[error("file holds the index of another layer")]
    KeyMismatch,
}

/// What looking up a layer in the cache found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid index of the layer.
    Hit(LayerIndex),
    /// No cache file.
    Miss,
    /// A cache file that must not be trusted.
    Invalid(CacheProblem),
    /// The cache file exists but cannot be read.
    Unreadable(io::Error),
}

#[derive(Serialize)]
struct PayloadRef<'a> {
    key: &'a LayerKey,
    index: &'a LayerIndex,
}

#[derive(Deserialize)]
struct Payload {
    key: LayerKey,
    index: LayerIndex,
}

/// A directory of cached layer indexes.
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
}

impl LayerStore {
    /// A store in `dir` (created on first save).
    pub fn new(dir: PathBuf) -> Self {
        LayerStore { dir }
    }

    /// The cache file of a layer.
    pub fn path_of(&self, key: &LayerKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Reads and checks the cached index of a layer.
    pub fn load(&self, key: &LayerKey) -> Lookup {
        let bytes = match fs::read(self.path_of(key)) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(err) => return Lookup::Unreadable(err),
        };
        match decode(&bytes, key) {
            Ok(index) => Lookup::Hit(index),
            Err(problem) => Lookup::Invalid(problem),
        }
    }

    /// Writes the index of a layer atomically (temporary file, fsync, rename).
    pub fn save(&self, key: &LayerKey, index: &LayerIndex) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let bytes = encode(key, index)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        let path = self.path_of(key);
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

/// The full cache file bytes of a layer index.
pub fn encode(key: &LayerKey, index: &LayerIndex) -> io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(&PayloadRef { key, index })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks and decodes cache file bytes expected to hold the index of `key`.
pub fn decode(bytes: &[u8], key: &LayerKey) -> Result<LayerIndex, CacheProblem> {
    let Some((header, payload)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(CacheProblem::Truncated { len: bytes.len() });
    };
    let (magic, rest) = header.split_at(8);
    let (version, rest) = rest.split_at(4);
    let (length, checksum) = rest.split_at(8);
    if magic != MAGIC {
        return Err(CacheProblem::BadMagic);
    }
    let found = u32::from_le_bytes(version.try_into().map_err(|_| CacheProblem::BadMagic)?);
    if found != FORMAT_VERSION {
        return Err(CacheProblem::Version { found });
    }
    let expected = u64::from_le_bytes(length.try_into().map_err(|_| CacheProblem::BadMagic)?);
    if expected != payload.len() as u64 {
        return Err(CacheProblem::Length {
            expected,
            found: payload.len() as u64,
        });
    }
    if blake3::hash(payload).as_bytes() != checksum {
        return Err(CacheProblem::Checksum);
    }
    let decoded: Payload =
        postcard::from_bytes(payload).map_err(|e| CacheProblem::Decode(e.to_string()))?;
    if decoded.key != *key {
        return Err(CacheProblem::KeyMismatch);
    }
    Ok(decoded.index)
}
