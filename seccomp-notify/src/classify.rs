//! Classifying an opened exec target against the container's image.
//!
//! The invariant that makes the common case cheap and sound: a file of the container's rootfs
//! overlay either lives in the upper (writable) layer or comes untouched from a lower (image)
//! layer. For the canonical container path `p` of the opened file:
//! - if `<upperdir>/p` is a regular file with the opened file's identity, the file is in the
//!   upper layer (copied up or new) and is classified by content;
//! - if `<upperdir>/p` does not exist and the topmost `<lowerdir>/p` is a regular file with the
//!   opened file's identity, the file is an image file, with no hashing at all;
//! - anything else (a whiteout, a race with a rename, a file on another mount) is classified
//!   by content as not coming from the rootfs.
//!
//! Identity is `(st_ino, st_size)` (overlayfs on one filesystem reports the real inode number)
//! or, for overlays that remap inode numbers, `(st_size, st_mtime, st_ctime)` to the
//! nanosecond: a container can set mtime but never ctime. Lower layers are read-only snapshots
//! the container cannot reach, and overlayfs never turns an upper entry back into "nothing"
//! while a lower file exists at that path (it leaves a whiteout), so an upper file can never
//! pass as a lower one.
//!
//! Content classification hashes the opened file (BLAKE3) and asks the image: same content at
//! the same path → metadata-only copy-up (or mode drift when the image file was not
//! executable); same content elsewhere in the image → relocated image binary (or mode drift);
//! an image file at the path with other content → modified image file; otherwise a new file.
//! Results are cached per container by file identity `(dev, ino, size, mtime, ctime)`.
//!
//! Limits: a file larger than [`MAX_HASHED_SIZE`] is not hashed at all, and hashing stops after
//! the supervisor's decision timeout ([`DEFAULT_HASH_TIME`] unless configured); both give the
//! failure policy. Hashing runs on a blocking thread that the decision timeout cannot cancel, so
//! its own deadline is what stops it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use driftguard_policy::VerdictClass;
use rustix::fs::{self as rfs, AtFlags, FileType, Stat, CWD};

use crate::binfmt::Header;
use crate::mountinfo::OverlayLayers;

/// A file of the image, as the image index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFile {
    /// Any execute bit set in the image.
    pub exec_bits: bool,
    /// BLAKE3 of the content, when the index could read it.
    pub hash: Option<[u8; 32]>,
}

/// What the image has with a given content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMatch {
    /// No image file has it.
    None,
    /// Only files without execute bits have it.
    NotExecutable,
    /// At least one executable image file has it.
    Executable,
}

/// Queries on one container's image (implemented for the image index's merged view).
pub trait ImageLookup: Send + Sync {
    /// The regular file at a canonical path of the image.
    fn file_at(&self, path: &Path) -> Option<ImageFile>;
    /// Which image files have this content.
    fn content(&self, hash: &[u8; 32]) -> ContentMatch;
}

/// The outcome of classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// The verdict class.
    pub class: VerdictClass,
    /// BLAKE3 of the file, when it was hashed.
    pub hash: Option<[u8; 32]>,
    /// The file is not on the container's rootfs overlay (volume, tmpfs, `/dev/shm`).
    pub on_volume: bool,
}

/// Where an opened file lives, decided without reading its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Untouched file of an image layer.
    Lower,
    /// The container's writable layer.
    Upper,
    /// Not (provably) on the rootfs overlay.
    Elsewhere,
}

/// Identity of a file version: what a cached verdict is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    /// The key of a `stat`.
    pub fn of(stat: &Stat) -> FileKey {
        FileKey {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: stat.st_size,
            mtime: (stat.st_mtime, stat.st_mtime_nsec as i64),
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        }
    }
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    let by_ino = a.st_ino == b.st_ino && a.st_size == b.st_size;
    let by_times = a.st_size == b.st_size
        && (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec)
        && (a.st_ctime, a.st_ctime_nsec) == (b.st_ctime, b.st_ctime_nsec);
    by_ino || by_times
}

fn lstat(path: &Path) -> io::Result<Stat> {
    Ok(rfs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW)?)
}

fn join(layer: &Path, container_path: &Path) -> PathBuf {
    layer.join(container_path.strip_prefix("/").unwrap_or(container_path))
}

/// Decides where an opened file lives (see the module invariant). `root_dev` is the `st_dev`
/// of the container's rootfs.
pub fn placement(layers: &OverlayLayers, root_dev: u64, path: &Path, stat: &Stat) -> Placement {
    if stat.st_dev != root_dev || !path.is_absolute() {
        return Placement::Elsewhere;
    }
    if let Some(upper) = &layers.upperdir {
        match lstat(&join(upper, path)) {
            Ok(entry) if is_regular(&entry) && same_file(&entry, stat) => return Placement::Upper,
            Ok(_) => return Placement::Elsewhere,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return Placement::Elsewhere,
        }
    }
    for lower in &layers.lowerdirs {
        match lstat(&join(lower, path)) {
            Ok(entry) if is_regular(&entry) && same_file(&entry, stat) => return Placement::Lower,
            Ok(_) => return Placement::Elsewhere,
            Err(_) => continue,
        }
    }
    Placement::Elsewhere
}

/// Whether a stat describes a regular file.
pub fn is_regular(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}

/// Classifies by content (see the module doc). `path` is the canonical container path;
/// `at_path_counts` is false for files off the rootfs, where the image's file at the same path
/// is hidden by the mount.
pub fn by_content(
    image: &dyn ImageLookup,
    path: &Path,
    hash: [u8; 32],
    on_volume: bool,
) -> Classified {
    let at_path = if on_volume { None } else { image.file_at(path) };
    let class = match (at_path, image.content(&hash)) {
        (Some(file), _) if file.hash == Some(hash) && file.exec_bits => {
            VerdictClass::MetadataCopyUp
        }
        (Some(file), _) if file.hash == Some(hash) => VerdictClass::ModeDrift,
        (_, ContentMatch::Executable) => VerdictClass::RelocatedImageBinary,
        (_, ContentMatch::NotExecutable) => VerdictClass::ModeDrift,
        (Some(_), ContentMatch::None) => VerdictClass::ModifiedImageFile,
        (None, ContentMatch::None) => VerdictClass::NewFile,
    };
    Classified {
        class,
        hash: Some(hash),
        on_volume,
    }
}

/// Largest file hashed on the exec path; a larger one fails with `EFBIG` before any read.
pub const MAX_HASHED_SIZE: u64 = 1 << 30;
/// How long hashing may take when no decision timeout is configured (the supervisor's default
/// decision timeout).
pub const DEFAULT_HASH_TIME: Duration = Duration::from_secs(2);

/// Hashes an `O_PATH` file's content by reopening it for reading, within [`MAX_HASHED_SIZE`]
/// bytes and [`DEFAULT_HASH_TIME`].
pub fn hash_opened(file: &OwnedFd) -> io::Result<[u8; 32]> {
    hash_opened_within(file, DEFAULT_HASH_TIME)
}

/// Filesystems whose files get new timestamps when written through a shared mapping (their
/// `page_mkwrite` updates mtime and ctime): ext4, xfs, btrfs, f2fs. tmpfs (and ramfs,
/// hugetlbfs) never do, and network or FUSE filesystems are not relied on.
const TIMESTAMPED_FS: [i64; 4] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010];
/// `OVERLAYFS_SUPER_MAGIC`.
const OVERLAY_FS: i64 = 0x794C_7630;

/// Whether a filesystem magic (`statfs.f_type`) is one of [`TIMESTAMPED_FS`].
pub fn is_timestamped_fs(magic: i64) -> bool {
    TIMESTAMPED_FS.contains(&magic)
}

/// A content hash, and whether the verdict made from it may be cached by file identity.
#[derive(Debug, Clone, Copy)]
pub struct Hashed {
    /// BLAKE3 of the content read.
    pub hash: [u8; 32],
    /// The identity will change with the content: the file is on a filesystem that stamps
    /// every write ([`is_timestamped_fs`]; an overlay when its upper layer is,
    /// `overlay_timestamped`), nobody had it open for writing before or after the read (a
    /// writable mapping made before could change it later without a new stamp), and its
    /// identity did not change while it was read.
    pub cacheable: bool,
}

/// [`hash_opened_within`], and whether its result may be cached (see [`Hashed::cacheable`]).
pub fn hash_for_cache(
    file: &OwnedFd,
    limit: Duration,
    overlay_timestamped: bool,
) -> io::Result<Hashed> {
    let before = FileKey::of(&rfs::fstat(file)?);
    let magic = rfs::fstatfs(file)?.f_type;
    let stamped = is_timestamped_fs(magic) || (magic == OVERLAY_FS && overlay_timestamped);
    let unwritten = || matches!(crate::sys::has_writers(file.as_fd()), Ok(false));
    let quiet_before = stamped && unwritten();
    let hash = hash_opened_within(file, limit)?;
    let cacheable = quiet_before && unwritten() && FileKey::of(&rfs::fstat(file)?) == before;
    Ok(Hashed { hash, cacheable })
}

/// Hashes an `O_PATH` file's content within [`MAX_HASHED_SIZE`] bytes and `limit` (the
/// supervisor passes its decision timeout); too long gives `ETIMEDOUT`.
pub fn hash_opened_within(file: &OwnedFd, limit: Duration) -> io::Result<[u8; 32]> {
    hash_bounded(file, MAX_HASHED_SIZE, Instant::now() + limit)
}

/// Hashes at most `max_size` bytes before `deadline`; a bigger file (checked with `fstat`
/// first, then while reading) fails with `EFBIG`, a missed deadline with `ETIMEDOUT`.
pub fn hash_bounded(file: &OwnedFd, max_size: u64, deadline: Instant) -> io::Result<[u8; 32]> {
    let too_big = || io::Error::from_raw_os_error(libc::EFBIG);
    if rfs::fstat(file)?.st_size as u64 > max_size {
        return Err(too_big());
    }
    let mut reader = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let (mut hasher, mut total) = (blake3::Hasher::new(), 0u64);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_size {
            return Err(too_big());
        }
        if Instant::now() > deadline {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        hasher.update(&buf[..n]);
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Verdicts of one container, keyed by file identity.
///
/// Untouched image files are kept by identity alone: their verdict does not depend on the path
/// they were reached by, so the hot path needs neither the path nor the layer lookups.
#[derive(Debug, Default)]
pub struct VerdictCache {
    entries: Mutex<HashMap<(FileKey, PathBuf), Classified>>,
    image_files: Mutex<HashMap<FileKey, String>>,
    headers: Mutex<HashMap<FileKey, Header>>,
}

/// Most verdicts kept per container; the cache is cleared when it is full.
const CACHE_LIMIT: usize = 4096;

impl VerdictCache {
    /// The path of a known untouched image file (a path it was reached by; hard links share
    /// one entry).
    pub fn image_file(&self, key: &FileKey) -> Option<String> {
        self.image_files.lock().ok()?.get(key).cloned()
    }

    /// Remembers an untouched image file.
    pub fn put_image_file(&self, key: FileKey, path: String) {
        if let Ok(mut files) = self.image_files.lock() {
            if files.len() >= CACHE_LIMIT {
                files.clear();
            }
            files.insert(key, path);
        }
    }

    /// The cached header (script or ELF interpreter) of a file version.
    pub fn header(&self, key: &FileKey) -> Option<Header> {
        self.headers.lock().ok()?.get(key).cloned()
    }

    /// Remembers a file version's header.
    pub fn put_header(&self, key: FileKey, header: Header) {
        if let Ok(mut headers) = self.headers.lock() {
            if headers.len() >= CACHE_LIMIT {
                headers.clear();
            }
            headers.insert(key, header);
        }
    }

    /// A cached verdict for this file version at this path.
    pub fn get(&self, key: &FileKey, path: &Path) -> Option<Classified> {
        let entries = self.entries.lock().ok()?;
        entries.get(&(*key, path.to_path_buf())).cloned()
    }

    /// Remembers a verdict.
    pub fn put(&self, key: FileKey, path: PathBuf, verdict: Classified) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_LIMIT {
                entries.clear();
            }
            entries.insert((key, path), verdict);
        }
    }
}

/// Whether a file name is a dynamic loader (`ld-linux-x86-64.so.2`, `ld-musl-x86_64.so.1`,
/// `ld.so`, `ld-2.36.so`).
pub fn is_dynamic_loader(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name == "ld.so" || (name.starts_with("ld-") && name.contains(".so"))
}

/// The program argument of a dynamic loader command line (`ld.so [OPTIONS] PROGRAM ...`).
pub fn loader_program(argv: &[Vec<u8>]) -> Option<&[u8]> {
    const WITH_VALUE: [&[u8]; 6] = [
        b"--library-path",
        b"--preload",
        b"--argv0",
        b"--audit",
        b"--inhibit-rpath",
        b"--glibc-hwcaps-prepend",
    ];
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_slice()) || arg.as_slice() == b"--glibc-hwcaps-mask" {
            args.next();
        } else if arg.starts_with(b"--") {
            continue;
        } else {
            return Some(arg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Img(HashMap<PathBuf, ImageFile>);
    impl ImageLookup for Img {
        fn file_at(&self, path: &Path) -> Option<ImageFile> {
            self.0.get(path).copied()
        }
        fn content(&self, hash: &[u8; 32]) -> ContentMatch {
            let files: Vec<_> = self.0.values().filter(|f| f.hash == Some(*hash)).collect();
            if files.iter().any(|f| f.exec_bits) {
                ContentMatch::Executable
            } else if files.is_empty() {
                ContentMatch::None
            } else {
                ContentMatch::NotExecutable
            }
        }
    }

    #[test]
    fn content_classes() {
        let img = Img(HashMap::from([
            (
                PathBuf::from("/bin/ls"),
                ImageFile {
                    exec_bits: true,
                    hash: Some([1; 32]),
                },
            ),
            (
                PathBuf::from("/etc/blob"),
                ImageFile {
                    exec_bits: false,
                    hash: Some([2; 32]),
                },
            ),
        ]));
        let class = |p: &str, h: u8, vol| by_content(&img, Path::new(p), [h; 32], vol).class;
        assert_eq!(class("/bin/ls", 1, false), VerdictClass::MetadataCopyUp);
        assert_eq!(class("/etc/blob", 2, false), VerdictClass::ModeDrift);
        assert_eq!(
            class("/tmp/ls", 1, false),
            VerdictClass::RelocatedImageBinary
        );
        assert_eq!(
            class("/bin/ls", 1, true),
            VerdictClass::RelocatedImageBinary
        );
        assert_eq!(class("/tmp/blob", 2, true), VerdictClass::ModeDrift);
        assert_eq!(class("/bin/ls", 9, false), VerdictClass::ModifiedImageFile);
        assert_eq!(class("/tmp/x", 9, false), VerdictClass::NewFile);
    }

    #[test]
    fn loader_arguments() {
        let argv = |a: &[&str]| a.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let got = argv(&[
            "ld.so",
            "--library-path",
            "/x",
            "--inhibit-cache",
            "/tmp/p",
            "a",
        ]);
        assert_eq!(loader_program(&got), Some(&b"/tmp/p"[..]));
        assert_eq!(loader_program(&argv(&["ld.so", "--list"])), None);
        assert!(is_dynamic_loader(Path::new("/lib64/ld-linux-x86-64.so.2")));
        assert!(is_dynamic_loader(Path::new("/lib/ld-musl-x86_64.so.1")));
        assert!(!is_dynamic_loader(Path::new("/bin/ldconfig")));
    }

    #[test]
    fn hashing_stops_at_the_given_limit() {
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), vec![7u8; 4096]).expect("write");
        let fd = rfs::open(file.path(), rfs::OFlags::PATH, rfs::Mode::empty()).expect("open");
        let late = hash_opened_within(&fd, Duration::ZERO).expect_err("no time at all");
        assert_eq!(late.raw_os_error(), Some(libc::ETIMEDOUT));
        let hash = hash_opened_within(&fd, Duration::from_secs(5)).expect("in time");
        assert_eq!(hash, *blake3::hash(&[7u8; 4096]).as_bytes());
    }
}
