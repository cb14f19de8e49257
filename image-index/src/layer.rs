//! Walking one layer directory into a [`LayerIndex`].
//!
//! A layer directory is a containerd overlayfs snapshot `fs` dir or an unpacked OCI layer.
//! Every path below it is recorded, keyed by its absolute path inside the image (`/bin/sh`):
//! regular files with mode, size, owner and BLAKE3, symlinks with their target, directories,
//! special files, and the layer's deletions:
//! - overlayfs whiteouts (character device 0/0) and OCI whiteouts (`.wh.NAME`) become
//!   [`LayerNode::Whiteout`] at the deleted path;
//! - directories with `trusted.overlay.opaque` or `user.overlay.opaque` set to `y`, or holding
//!   an OCI `.wh..wh..opq` marker, become [`LayerNode::OpaqueDir`].
//!
//! Invariants: records are sorted by path (component order, so a directory's descendants
//! directly follow it); whiteout marker files themselves are not image paths and are not
//! recorded as files; nothing is skipped silently: a file that cannot be read is recorded with
//! `hash: None` and the reason, a directory that cannot be listed or an attribute that cannot
//! be read is listed in [`LayerIndex::problems`].
//!
//! The directory walk itself is sequential; `lstat`, open and hashing of regular files run in
//! parallel on the current rayon pool. Hard-linked paths (same device and inode) are hashed
//! once and each path gets the same entry.
//!
//! Limits: overlayfs `redirect_dir` and `metacopy` xattrs are not interpreted (containerd does
//! not use them for image layers); other aufs `.wh..wh.*` metadata names are reported as
//! problems and otherwise ignored.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::entry::{raw_path, Entry, FileEntry, SpecialKind};
use crate::error::IndexError;
use crate::hash::{hash_layer_file, ContentFacts};

/// OCI whiteout file name prefix.
const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque directory marker.
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of aufs metadata names, of which only the opaque marker has a meaning.
const WH_META_PREFIX: &[u8] = b".wh..wh.";
/// Overlayfs opaque directory attributes (privileged and user-namespace mounts).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// What one layer says about one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerNode {
    /// The layer has this entry at the path.
    Present(Entry),
    /// A directory that hides everything below it in lower layers.
    OpaqueDir,
    /// The path (and everything below it) is deleted from lower layers.
    Whiteout,
}

/// One path of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Absolute path inside the image.
    #[serde(with = "raw_path")]
    pub path: PathBuf,
    /// What the layer has there.
    pub node: LayerNode,
}

/// Something the walk could not read, recorded instead of skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkProblem {
    /// Absolute path inside the image.
    #[serde(with = "raw_path")]
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Counters of one walk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Regular files (each hard-linked path counted).
    pub files: u64,
    /// Directories, opaque ones included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Whiteouts of either form.
    pub whiteouts: u64,
    /// Opaque directories of either form.
    pub opaque_dirs: u64,
    /// Regular files whose content could not be read.
    pub unreadable: u64,
    /// Bytes hashed (hard links counted once).
    pub bytes_hashed: u64,
}

/// The index of one layer directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    records: Vec<LayerRecord>,
    problems: Vec<WalkProblem>,
    stats: LayerStats,
}

impl LayerIndex {
    /// All records, sorted by path.
    pub fn records(&self) -> &[LayerRecord] {
        &self.records
    }

    /// What the layer itself has at `path` (absolute inside the image), without merging.
    pub fn get(&self, path: &Path) -> Option<&LayerNode> {
        let at = self
            .records
            .binary_search_by(|r| r.path.as_path().cmp(path))
            .ok()?;
        Some(&self.records[at].node)
    }

    /// Paths the walk could not read.
    pub fn problems(&self) -> &[WalkProblem] {
        &self.problems
    }

    /// Counters of the walk.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }
}

/// A regular file waiting for its metadata and content hash.
struct PendingFile {
    path: PathBuf,
    host_path: PathBuf,
}

/// A hash result shared by every path of one inode.
type Facts = Result<ContentFacts, String>;

/// One slot per hard-linked inode, so that its content is hashed once.
type InodeSlots = Mutex<HashMap<(u64, u64), Arc<OnceLock<Facts>>>>;

/// Walks `dir` and hashes every regular file below it (on the current rayon pool).
pub fn index_layer(dir: &Path) -> Result<LayerIndex, IndexError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| IndexError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(IndexError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut walk = Walk::default();
    walk.scan(dir);
    let slots = InodeSlots::default();
    let pending = std::mem::take(&mut walk.pending);
    let examined: Vec<io::Result<(Metadata, Facts, bool)>> = pending
        .par_iter()
        .map(|file| examine(file, &slots))
        .collect();
    for (file, result) in pending.into_iter().zip(examined) {
        match result {
            Ok((meta, facts, first)) => walk.add_file(file.path, &meta, facts, first),
            Err(err) => walk.problem(file.path, format!("cannot stat: {err}")),
        }
    }
    let records = walk
        .nodes
        .into_iter()
        .map(|(path, node)| LayerRecord { path, node })
        .collect();
    Ok(LayerIndex {
        records,
        problems: walk.problems,
        stats: walk.stats,
    })
}

/// State of one directory walk.
#[derive(Default)]
struct Walk {
    nodes: BTreeMap<PathBuf, LayerNode>,
    pending: Vec<PendingFile>,
    problems: Vec<WalkProblem>,
    stats: LayerStats,
}

impl Walk {
    /// Records every entry below `root` except regular files, which go to `pending`.
    fn scan(&mut self, root: &Path) {
        for item in walkdir::WalkDir::new(root).follow_links(false) {
            match item {
                Ok(de) => {
                    let rel = de.path().strip_prefix(root).unwrap_or(de.path());
                    self.record(&de, Path::new("/").join(rel));
                }
                Err(err) => {
                    let host = err.path().unwrap_or(root);
                    let rel = host.strip_prefix(root).unwrap_or(host);
                    self.problem(Path::new("/").join(rel), err.to_string());
                }
            }
        }
    }

    fn problem(&mut self, path: PathBuf, message: String) {
        tracing::debug!(path = %path.display(), %message, "layer walk problem");
        self.problems.push(WalkProblem { path, message });
    }

    /// Classifies one entry found by the walk. Regular files are only queued: their `lstat`,
    /// like their hashing, runs in parallel later.
    fn record(&mut self, de: &walkdir::DirEntry, path: PathBuf) {
        let name = path.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if name == WH_OPAQUE {
            self.mark_opaque(parent_of(&path));
            return;
        }
        if name.starts_with(WH_META_PREFIX) {
            self.problem(path, "aufs metadata name ignored".to_string());
            return;
        }
        if let Some(hidden) = name.strip_prefix(WH_PREFIX) {
            let target = parent_of(&path).join(OsStr::from_bytes(hidden));
            self.whiteout(target);
            return;
        }
        let host_path = de.path();
        if de.file_type().is_file() {
            self.pending.push(PendingFile {
                path,
                host_path: host_path.to_path_buf(),
            });
            return;
        }
        let meta = match de.metadata() {
            Ok(meta) => meta,
            Err(err) => return self.problem(path, err.to_string()),
        };
        let file_type = meta.file_type();
        if file_type.is_char_device() && meta.rdev() == 0 {
            self.whiteout(path);
        } else if file_type.is_dir() {
            self.stats.dirs += 1;
            let opaque = self.has_opaque_xattr(host_path, &path);
            self.insert_dir(path, opaque);
        } else if file_type.is_symlink() {
            self.symlink(host_path, path);
        } else {
            let kind = special_kind(&meta);
            self.nodes.insert(
                path,
                LayerNode::Present(Entry::Special {
                    kind,
                    mode: perm(&meta),
                }),
            );
        }
    }

    /// Records a regular file once its metadata and hash are known.
    fn add_file(&mut self, path: PathBuf, meta: &Metadata, facts: Facts, first_of_inode: bool) {
        if first_of_inode {
            self.stats.bytes_hashed += meta.len();
        }
        let entry = file_entry(meta, facts);
        self.stats.files += 1;
        if entry.hash.is_none() {
            self.stats.unreadable += 1;
        }
        self.nodes
            .insert(path, LayerNode::Present(Entry::File(entry)));
    }

    fn symlink(&mut self, host_path: &Path, path: PathBuf) {
        match std::fs::read_link(host_path) {
            Ok(target) => {
                self.stats.symlinks += 1;
                self.nodes
                    .insert(path, LayerNode::Present(Entry::Symlink { target }));
            }
            Err(err) => self.problem(path, format!("cannot read symlink: {err}")),
        }
    }

    /// Inserts a directory; a whiteout already recorded at the same path (OCI `.wh.d` next to a
    /// new `d/`) turns it into an opaque directory.
    fn insert_dir(&mut self, path: PathBuf, opaque: bool) {
        let was_whiteout = matches!(self.nodes.get(&path), Some(LayerNode::Whiteout));
        let node = if opaque || was_whiteout {
            self.stats.opaque_dirs += 1;
            LayerNode::OpaqueDir
        } else {
            LayerNode::Present(Entry::Dir)
        };
        self.nodes.insert(path, node);
    }

    fn mark_opaque(&mut self, dir: PathBuf) {
        if self.nodes.get(&dir) != Some(&LayerNode::OpaqueDir) {
            self.stats.opaque_dirs += 1;
            self.nodes.insert(dir, LayerNode::OpaqueDir);
        }
    }

    /// Records a deletion; an entry of this layer at the same path keeps precedence (a new
    /// directory then becomes opaque).
    fn whiteout(&mut self, path: PathBuf) {
        self.stats.whiteouts += 1;
        match self.nodes.get(&path) {
            None => {
                self.nodes.insert(path, LayerNode::Whiteout);
            }
            Some(LayerNode::Present(Entry::Dir)) => {
                self.stats.opaque_dirs += 1;
                self.nodes.insert(path, LayerNode::OpaqueDir);
            }
            Some(_) => {}
        }
    }

    /// Reads the overlayfs opaque attributes of a directory.
    fn has_opaque_xattr(&mut self, host_path: &Path, path: &Path) -> bool {
        let mut opaque = false;
        for name in OPAQUE_XATTRS {
            let mut value = [0u8; 8];
            match rustix::fs::lgetxattr(host_path, name, &mut value[..]) {
                Ok(len) => opaque |= &value[..len] == b"y",
                Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => {}
                Err(rustix::io::Errno::RANGE) => {}
                Err(err) => self.problem(path.to_path_buf(), format!("cannot read {name}: {err}")),
            }
        }
        opaque
    }
}

/// The parent inside the image (`/` for top-level names).
fn parent_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

fn perm(meta: &Metadata) -> u32 {
    meta.mode() & 0o7777
}

fn special_kind(meta: &Metadata) -> SpecialKind {
    let file_type = meta.file_type();
    if file_type.is_fifo() {
        SpecialKind::Fifo
    } else if file_type.is_socket() {
        SpecialKind::Socket
    } else if file_type.is_block_device() {
        SpecialKind::BlockDevice { rdev: meta.rdev() }
    } else {
        SpecialKind::CharDevice { rdev: meta.rdev() }
    }
}

/// Stats and hashes one file; the first path of a hard-linked inode hashes it, the others
/// wait for and share that result. Returns whether this path was the one that hashed.
fn examine(file: &PendingFile, slots: &InodeSlots) -> io::Result<(Metadata, Facts, bool)> {
    let meta = std::fs::symlink_metadata(&file.host_path)?;
    if meta.nlink() <= 1 {
        let facts = hash_one(&file.host_path, meta.len());
        return Ok((meta, facts, true));
    }
    let slot = {
        let mut slots = slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(slots.entry((meta.dev(), meta.ino())).or_default())
    };
    let mut first = false;
    let facts = slot
        .get_or_init(|| {
            first = true;
            hash_one(&file.host_path, meta.len())
        })
        .clone();
    Ok((meta, facts, first))
}

/// Opens a layer file without following a symlink swapped in, and hashes it.
fn hash_one(host_path: &Path, size: u64) -> Result<ContentFacts, String> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(host_path)
        .map_err(|e| format!("cannot open: {e}"))?;
    hash_layer_file(&file, size).map_err(|e| format!("cannot read: {e}"))
}

/// `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`: never follow a link, never block on a fifo that
/// replaced the file, never acquire a terminal.
fn libc_flags() -> i32 {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    (flags | rustix::fs::OFlags::NOCTTY).bits() as i32
}

fn file_entry(meta: &Metadata, facts: Result<ContentFacts, String>) -> FileEntry {
    let mode = perm(meta);
    let (hash, looks_executable, read_error) = match facts {
        Ok(facts) => (Some(facts.hash), facts.looks_executable, None),
        Err(message) => (None, false, Some(message)),
    };
    FileEntry {
        mode,
        size: meta.len(),
        hash,
        exec_bits: mode & 0o111 != 0,
        looks_executable,
        uid: meta.uid(),
        gid: meta.gid(),
        read_error,
    }
}
