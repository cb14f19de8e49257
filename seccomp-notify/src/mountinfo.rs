//! Finding a container's overlay rootfs in the host's mount table.
//!
//! containerd (and the test bundles) mount the container's rootfs as overlayfs at
//! `<bundle>/rootfs` in the host mount namespace before runc starts. Its super options name
//! the image layers (`lowerdir`, top layer first) and the container's writable layer
//! (`upperdir`). Both spellings the kernel prints are understood: one `lowerdir=a:b:c` (with
//! `\:` for a colon inside a path) and the repeated `lowerdir+=` / `datadir+=` of newer
//! kernels. Octal escapes (`\040`, `\054`, ...) are decoded.
//!
//! Limits: a rootfs that is not overlayfs (a plain directory, a different snapshotter) yields
//! no layers; the supervisor then classifies every exec by content against nothing and treats
//! it as drift unless policy says otherwise.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The layers of an overlay mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    /// Image layers, top first (overlayfs order).
    pub lowerdirs: Vec<PathBuf>,
    /// The container's writable layer, when the mount has one.
    pub upperdir: Option<PathBuf>,
}

/// Returns the layers of the overlay mounted at `mount_point`, reading `mountinfo` text (the
/// content of `/proc/self/mountinfo`). The last matching line wins (the mount on top).
pub fn overlay_at(mountinfo: &str, mount_point: &Path) -> Option<OverlayLayers> {
    let wanted = mount_point.as_os_str().as_encoded_bytes();
    mountinfo
        .lines()
        .filter_map(parse_line)
        .rfind(|m| m.mount_point == wanted && m.fstype == "overlay")
        .map(|m| layers_from_options(&m.super_options))
}

struct MountLine {
    mount_point: Vec<u8>,
    fstype: String,
    super_options: String,
}

fn parse_line(line: &str) -> Option<MountLine> {
    let (head, tail) = line.split_once(" - ")?;
    let mount_point = head.split(' ').nth(4)?;
    let mut tail = tail.split(' ');
    let fstype = tail.next()?.to_string();
    let _source = tail.next()?;
    let super_options = tail.next().unwrap_or_default().to_string();
    Some(MountLine {
        mount_point: unescape(mount_point),
        fstype,
        super_options,
    })
}

fn layers_from_options(options: &str) -> OverlayLayers {
    let mut layers = OverlayLayers {
        lowerdirs: Vec::new(),
        upperdir: None,
    };
    for option in options.split(',') {
        let Some((key, value)) = option.split_once('=') else {
            continue;
        };
        match key {
            "lowerdir" => layers.lowerdirs.extend(split_lowerdir(value)),
            "lowerdir+" => layers.lowerdirs.push(to_path(unescape(value))),
            "upperdir" => layers.upperdir = Some(to_path(unescape(value))),
            _ => {}
        }
    }
    layers
}

/// Splits `a:b\:c::d` into layer paths (the `::` separator of data-only layers included).
fn split_lowerdir(value: &str) -> Vec<PathBuf> {
    let raw = unescape(value);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => current.extend(bytes.next()),
            b':' => {
                if !current.is_empty() {
                    out.push(to_path(std::mem::take(&mut current)));
                }
            }
            _ => current.push(b),
        }
    }
    if !current.is_empty() {
        out.push(to_path(current));
    }
    out
}

/// Decodes the kernel's `\ooo` octal escapes; a backslash not followed by three octal digits
/// stays as it is (the colon escape `\:` of lowerdir is left for [`split_lowerdir`]).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn to_path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
512 22 0:70 / /run/ctd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/3/fs:/s/2/fs:/s/1/fs,upperdir=/s/4/fs,workdir=/s/4/work
513 22 0:71 / /tmp/b\\040x/rootfs rw - overlay overlay rw,lowerdir+=/l/a\\054b,lowerdir+=/l/c,datadir+=/d,upperdir=/u,workdir=/w
514 22 0:72 / /tmp/colon/rootfs rw - overlay overlay rw,lowerdir=/l/x\\:y:/l/z,upperdir=/u2,workdir=/w2
";

    #[test]
    fn finds_layers_top_first() {
        let layers = overlay_at(
            SAMPLE,
            Path::new("/run/ctd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs"),
        )
        .expect("overlay");
        let want: Vec<PathBuf> = ["/s/3/fs", "/s/2/fs", "/s/1/fs"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(layers.lowerdirs, want);
        assert_eq!(layers.upperdir, Some(PathBuf::from("/s/4/fs")));
    }

    #[test]
    fn decodes_escapes_and_the_new_option_spelling() {
        let layers = overlay_at(SAMPLE, Path::new("/tmp/b x/rootfs")).expect("overlay");
        assert_eq!(
            layers.lowerdirs,
            vec![PathBuf::from("/l/a,b"), PathBuf::from("/l/c")]
        );
        let layers = overlay_at(SAMPLE, Path::new("/tmp/colon/rootfs")).expect("overlay");
        assert_eq!(
            layers.lowerdirs,
            vec![PathBuf::from("/l/x:y"), PathBuf::from("/l/z")]
        );
        assert_eq!(overlay_at(SAMPLE, Path::new("/")), None);
    }
}
