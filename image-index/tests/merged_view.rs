//! The merged view of layer fixtures gives the final image's answer for every layer feature:
//! add, delete (both whiteout forms), modify, opaque dirs (both forms), symlinks, hard links,
//! executables by mode and by content, unreadable files.

mod fixtures;

use std::fs;
use std::path::{Path, PathBuf};

use driftguard_image_index::{index_layer, Entry, ImageView, LayerIndex, LayerNode, PathStatus};
use fixtures::*;

const BUSYBOX: &[u8] = b"\x7fELF\x02\x01\x01\x00 busybox multi-call";

struct Image {
    _dirs: Vec<tempfile::TempDir>,
    layers: Vec<LayerIndex>,
    view: ImageView,
}

/// Bottom layer: the base image.
fn base_layer(root: &Path) {
    file(root, "bin/busybox", BUSYBOX, 0o755);
    link(root, "bin/sh", "busybox");
    file(root, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    file(
        root,
        "etc/removed-ovl",
        b"deleted by char dev whiteout",
        0o644,
    );
    file(root, "etc/removed-oci", b"deleted by .wh. file", 0o644);
    file(root, "usr/lib/libc.so.6", b"\x7fELF libc", 0o755);
    link(root, "lib", "usr/lib");
    link(root, "escape", "../../../../../etc");
    link(root, "loop1", "loop2");
    link(root, "loop2", "/loop1");
    file(
        root,
        "opt/ovl-opaque/old.txt",
        b"hidden by trusted xattr",
        0o644,
    );
    file(
        root,
        "opt/user-opaque/old.txt",
        b"hidden by user xattr",
        0o644,
    );
    file(
        root,
        "opt/oci-opaque/old.txt",
        b"hidden by opq marker",
        0o644,
    );
    file(root, "opt/deleted-dir/sub/file", b"dir deleted", 0o644);
    file(root, "data/config", b"version=1\n", 0o644);
    let hard = file(root, "bin/hard1", b"hard linked content", 0o755);
    fs::hard_link(hard, root.join("bin/hard2")).expect("hard link");
    file(root, "usr/share/not-exec.elf", ELF, 0o644);
    file(root, "usr/bin/script.sh", b"#!/bin/sh\necho hi\n", 0o755);
    file(root, "usr/bin/plain-exec", b"no magic here", 0o700);
    file(
        root,
        "dir-replaced/child",
        b"under a dir that becomes a file",
        0o644,
    );
    file(root, "secret", b"unreadable without DAC override", 0o000);
}

/// Middle layer: overlayfs-style deletions and additions.
fn middle_layer(root: &Path) {
    overlay_whiteout(root, "etc/removed-ovl");
    file(root, "etc/.wh.removed-oci", b"", 0o644);
    opaque_xattr(root, "opt/ovl-opaque", "trusted.overlay.opaque");
    file(root, "opt/ovl-opaque/new.txt", b"new in opaque dir", 0o644);
    file(root, "dir-replaced", b"now a file", 0o644);
    file(root, "usr/bin/added", b"#!/bin/sh\nadded\n", 0o755);
    file(root, "copy-of-busybox", BUSYBOX, 0o644);
    file(root, "opt/.wh.deleted-dir", b"", 0o644);
}

/// Top layer: modification and OCI-style opaque dir.
fn top_layer(root: &Path) {
    file(root, "data/config", b"version=2\n", 0o600);
    file(root, "opt/oci-opaque/.wh..wh..opq", b"", 0o644);
    file(
        root,
        "opt/oci-opaque/new.txt",
        b"new under opq marker",
        0o644,
    );
    opaque_xattr(root, "opt/user-opaque", "user.overlay.opaque");
}

fn build() -> Image {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    top_layer(dirs[0].path());
    middle_layer(dirs[1].path());
    base_layer(dirs[2].path());
    let layers = vec![
        index_layer(dirs[0].path()).expect("index top"),
        index_layer(dirs[1].path()).expect("index middle"),
        index_without_dac(dirs[2].path()),
    ];
    let view = ImageView::merge(&layers);
    Image {
        _dirs: dirs,
        layers,
        view,
    }
}

fn p(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn file_of<'a>(view: &'a ImageView, path: &str) -> &'a driftguard_image_index::FileEntry {
    match view.lookup(&p(path)) {
        Some(Entry::File(file)) => file,
        other => panic!("{path}: expected a file, got {other:?}"),
    }
}

#[test]
fn added_files_are_present_with_their_layer() {
    let image = build();
    let (resolved, entry) = image
        .view
        .lookup_entry(&p("/usr/bin/added"))
        .expect("added");
    assert_eq!(resolved, p("/usr/bin/added"));
    assert_eq!(entry.layer, 1);
    assert!(matches!(
        image.view.lookup(&p("/etc/passwd")),
        Some(Entry::File(_))
    ));
    assert!(matches!(image.view.lookup(&p("/")), Some(Entry::Dir)));
    assert_eq!(image.view.layer_count(), 3);
}

#[test]
fn overlay_char_device_whiteout_deletes() {
    let image = build();
    assert_eq!(
        image.layers[1].get(&p("/etc/removed-ovl")),
        Some(&LayerNode::Whiteout)
    );
    assert_eq!(image.view.lookup(&p("/etc/removed-ovl")), None);
    assert_eq!(
        image.view.status(&p("/etc/removed-ovl")),
        PathStatus::Deleted { layer: 1 }
    );
}

#[test]
fn oci_whiteout_file_deletes_and_is_not_an_image_path() {
    let image = build();
    assert_eq!(image.view.lookup(&p("/etc/removed-oci")), None);
    assert_eq!(
        image.view.status(&p("/etc/removed-oci")),
        PathStatus::Deleted { layer: 1 }
    );
    assert_eq!(image.view.lookup(&p("/etc/.wh.removed-oci")), None);
    assert_eq!(
        image.view.status(&p("/etc/.wh.removed-oci")),
        PathStatus::Absent
    );
}

#[test]
fn whiteout_of_a_directory_deletes_its_subtree() {
    let image = build();
    assert_eq!(image.view.lookup(&p("/opt/deleted-dir")), None);
    assert_eq!(image.view.lookup(&p("/opt/deleted-dir/sub/file")), None);
    let status = image.view.status(&p("/opt/deleted-dir/sub/file"));
    assert_eq!(status, PathStatus::Deleted { layer: 1 });
}

#[test]
fn later_layer_modification_wins() {
    let image = build();
    let config = file_of(&image.view, "/data/config");
    assert_eq!(config.hash, Some(*blake3::hash(b"version=2\n").as_bytes()));
    assert_eq!(config.mode, 0o600);
    assert_eq!(config.size, 10);
    let old = *blake3::hash(b"version=1\n").as_bytes();
    assert!(
        !image.view.contains_content(&old),
        "the base layer's content is gone"
    );
}

#[test]
fn opaque_dirs_hide_lower_content_in_all_three_forms() {
    let image = build();
    for dir in ["/opt/ovl-opaque", "/opt/user-opaque", "/opt/oci-opaque"] {
        let old = format!("{dir}/old.txt");
        assert_eq!(image.view.lookup(Path::new(&old)), None, "{old}");
        assert!(matches!(
            image.view.status(Path::new(&old)),
            PathStatus::Deleted { .. }
        ));
        assert!(
            matches!(image.view.lookup(Path::new(dir)), Some(Entry::Dir)),
            "{dir}"
        );
    }
    assert!(image.view.lookup(&p("/opt/ovl-opaque/new.txt")).is_some());
    assert!(image.view.lookup(&p("/opt/oci-opaque/new.txt")).is_some());
    assert_eq!(image.view.lookup(&p("/opt/oci-opaque/.wh..wh..opq")), None);
    assert_eq!(
        image.layers[0].get(&p("/opt/oci-opaque")),
        Some(&LayerNode::OpaqueDir)
    );
    assert_eq!(
        image.layers[0].get(&p("/opt/user-opaque")),
        Some(&LayerNode::OpaqueDir)
    );
    assert_eq!(
        image.layers[1].get(&p("/opt/ovl-opaque")),
        Some(&LayerNode::OpaqueDir)
    );
}

#[test]
fn file_in_upper_layer_replaces_directory_tree() {
    let image = build();
    assert_eq!(file_of(&image.view, "/dir-replaced").size, 10);
    assert_eq!(image.view.lookup(&p("/dir-replaced/child")), None);
}

#[test]
fn symlinks_are_recorded_and_resolved_inside_the_image() {
    let image = build();
    let sh = image.view.lookup(&p("/bin/sh"));
    assert_eq!(
        sh,
        Some(&Entry::Symlink {
            target: p("busybox")
        })
    );
    let (resolved, busybox) = image.view.resolve_file(&p("/bin/sh")).expect("sh resolves");
    assert_eq!(resolved, p("/bin/busybox"));
    assert_eq!(busybox.hash, Some(*blake3::hash(BUSYBOX).as_bytes()));

    // Merged-usr directory symlink in the middle of a path.
    let (resolved, _) = image.view.resolve_file(&p("/lib/libc.so.6")).expect("libc");
    assert_eq!(resolved, p("/usr/lib/libc.so.6"));
    assert!(matches!(
        image.view.lookup(&p("/lib/libc.so.6")),
        Some(Entry::File(_))
    ));

    // A relative target climbing above the root stays inside the image.
    let (resolved, _) = image
        .view
        .resolve_file(&p("/escape/passwd"))
        .expect("escape");
    assert_eq!(resolved, p("/etc/passwd"));
    let (resolved, _) = image
        .view
        .resolve_file(&p("/../../etc/./passwd"))
        .expect("dotdot");
    assert_eq!(resolved, p("/etc/passwd"));
}

#[test]
fn symlink_loops_are_bounded() {
    let image = build();
    assert!(matches!(
        image.view.lookup(&p("/loop1")),
        Some(Entry::Symlink { .. })
    ));
    assert_eq!(image.view.resolve_file(&p("/loop1")), None);
    assert_eq!(image.view.lookup(&p("/loop1/x")), None);
}

#[test]
fn hard_links_record_each_path_with_the_same_content() {
    let image = build();
    let one = file_of(&image.view, "/bin/hard1");
    let two = file_of(&image.view, "/bin/hard2");
    assert_eq!(one.hash, two.hash);
    assert_eq!(
        one.hash,
        Some(*blake3::hash(b"hard linked content").as_bytes())
    );
    let paths = image.view.paths_with_content(&one.hash.expect("hash"));
    assert_eq!(paths, vec![p("/bin/hard1"), p("/bin/hard2")]);
    let stats = image.layers[2].stats();
    let base_bytes: u64 = base_bytes_once_per_inode();
    assert_eq!(
        stats.bytes_hashed, base_bytes,
        "hard-linked content hashed once"
    );
}

fn base_bytes_once_per_inode() -> u64 {
    let dir = tempfile::tempdir().expect("tmp");
    base_layer(dir.path());
    walkdir::WalkDir::new(dir.path())
        .into_iter()
        .map(|e| e.expect("walk"))
        .filter(|e| e.file_type().is_file() && e.file_name() != "hard2")
        .map(|e| e.metadata().expect("meta").len())
        .sum()
}

#[test]
fn same_content_at_several_paths() {
    let image = build();
    let hash = *blake3::hash(BUSYBOX).as_bytes();
    assert!(image.view.contains_content(&hash));
    assert_eq!(
        image.view.paths_with_content(&hash),
        vec![p("/bin/busybox"), p("/copy-of-busybox")]
    );
    assert!(!image
        .view
        .contains_content(blake3::hash(b"never stored").as_bytes()));
}

#[test]
fn executables_by_mode_and_by_content() {
    let image = build();
    let elf = file_of(&image.view, "/usr/share/not-exec.elf");
    assert!(
        !elf.exec_bits && elf.looks_executable,
        "non-executable ELF: {elf:?}"
    );
    let script = file_of(&image.view, "/usr/bin/script.sh");
    assert!(
        script.exec_bits && script.looks_executable,
        "shebang script: {script:?}"
    );
    let plain = file_of(&image.view, "/usr/bin/plain-exec");
    assert!(
        plain.exec_bits && !plain.looks_executable,
        "exec bit only: {plain:?}"
    );
    let copy = file_of(&image.view, "/copy-of-busybox");
    assert!(!copy.exec_bits && copy.looks_executable);
}

#[test]
fn unreadable_file_is_recorded_not_skipped() {
    let image = build();
    let secret = file_of(&image.view, "/secret");
    assert_eq!(secret.hash, None);
    assert_eq!(secret.mode, 0);
    assert_eq!(secret.size, 31);
    let reason = secret.read_error.as_deref().expect("reason recorded");
    assert!(reason.contains("Permission denied"), "{reason}");
    assert_eq!(image.layers[2].stats().unreadable, 1);
    assert_eq!(
        image.view.resolve_file(&p("/secret")).map(|(p, _)| p),
        Some(p("/secret"))
    );
}

#[test]
fn whiteout_next_to_new_directory_in_same_layer_makes_it_opaque() {
    let lower = tempfile::tempdir().expect("tmp");
    let upper = tempfile::tempdir().expect("tmp");
    file(lower.path(), "d/old", b"old", 0o644);
    file(upper.path(), ".wh.d", b"", 0o644);
    file(upper.path(), "d/new", b"new", 0o644);
    let layers = [
        index_layer(upper.path()).expect("upper"),
        index_layer(lower.path()).expect("lower"),
    ];
    let view = ImageView::merge(&layers);
    assert_eq!(view.lookup(&p("/d/old")), None);
    assert!(view.lookup(&p("/d/new")).is_some());
}

#[test]
fn a_file_is_not_a_layer_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = file(dir.path(), "plain", b"x", 0o644);
    let err = index_layer(&path).expect_err("not a dir");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = index_layer(&missing).expect_err("missing");
    assert!(err.to_string().contains("missing"), "{err}");
}
