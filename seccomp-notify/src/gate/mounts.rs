//! Mount tables for the exec gate: parsing `/proc/PID/mountinfo`, which mounts can hold
//! executables, which filesystems the host has (those get mount marks, not filesystem marks),
//! and the other mount namespaces of a container's pid namespace (its pod neighbours).
//!
//! Limits: an unreadable mount table or procfs entry counts as empty; a mountinfo line that
//! does not parse is skipped.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs as rfs;

use crate::fanotify::MarkKind;

/// Filesystem types from which nothing can be executed.
const PSEUDO_FS: [&str; 13] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "configfs",
    "pstore",
    "fusectl",
];

/// Devices of every filesystem mounted outside containers: in the daemon's own mount table and
/// in that of the host's init (they differ when the daemon runs in a pod with the host's pid
/// namespace). An unreadable table adds nothing.
pub(super) fn host_devices() -> HashSet<String> {
    ["/proc/self/mountinfo", "/proc/1/mountinfo"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| parse_mountinfo(&text))
        .map(|mount| mount.dev)
        .collect()
}

/// One process of each mount namespace other than `own` that has processes in the pid
/// namespace `pid_ns` (all of the host's processes are listed in `/proc` of the daemon, which
/// runs in the host's pid namespace).
pub(super) fn pid_ns_neighbours(pid_ns: u64, own: u64) -> Vec<(u64, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u64, u32)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let ns_of = |kind: &str| rfs::stat(format!("/proc/{pid}/ns/{kind}")).map(|s| s.st_ino);
        if ns_of("pid").ok() != Some(pid_ns) {
            continue;
        }
        match ns_of("mnt") {
            Ok(ns) if ns != own && !found.iter().any(|(seen, _)| *seen == ns) => {
                found.push((ns, pid))
            }
            _ => {}
        }
    }
    found
}

/// The inode of a process's mount namespace.
pub(super) fn mount_ns(pid: u32) -> io::Result<u64> {
    Ok(rfs::stat(format!("/proc/{pid}/ns/mnt"))?.st_ino)
}

/// One line of a mountinfo file, the fields the gate needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountEntry {
    pub(super) id: u64,
    pub(super) dev: String,
    pub(super) mount_point: PathBuf,
    pub(super) options: String,
    pub(super) fstype: String,
}

impl MountEntry {
    /// Whether a file on this mount could be executed.
    pub(super) fn executable(&self) -> bool {
        let noexec = self.options.split(',').any(|o| o == "noexec");
        !noexec && !PSEUDO_FS.contains(&self.fstype.as_str())
    }

    /// Filesystem marks for the container's own overlay rootfs and for filesystems that exist
    /// only inside the container; mount marks for anything the host also has mounted.
    pub(super) fn mark_kind(&self, host_devs: &HashSet<String>) -> MarkKind {
        let rootfs = self.mount_point == Path::new("/") && self.fstype == "overlay";
        if rootfs || !host_devs.contains(&self.dev) {
            MarkKind::Filesystem
        } else {
            MarkKind::Mount
        }
    }
}

/// Parses mountinfo text (proc_pid_mountinfo(5)); unreadable lines are skipped.
pub(super) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mount_line).collect()
}

fn parse_mount_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let fields: Vec<&str> = head.split(' ').collect();
    let fstype = tail.split(' ').next()?;
    Some(MountEntry {
        id: fields.first()?.parse().ok()?,
        dev: fields.get(2)?.to_string(),
        mount_point: PathBuf::from(unescape(fields.get(4)?)),
        options: fields.get(5)?.to_string(),
        fstype: fstype.to_string(),
    })
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
pub(super) fn unescape(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}
