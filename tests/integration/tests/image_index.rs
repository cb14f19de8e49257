//! The image index on the real snapshot directories of the scenario image agrees with the
//! running container: every path the container sees from its image is in the merged view with
//! the same type, size, mode and (through the host's view of the rootfs mount) content, and
//! the scenario's special cases (whiteout, modified file, opaque dir, non-executable ELF,
//! script, loader, symlinks) get the final image's answer.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use driftguard_image_index::{hash_file, Entry, ImageView, IndexCache, PathStatus};
use driftguard_testkit::images::SCENARIO;
use driftguard_testkit::{ContainerSpec, PodSpec, Runtime};

/// Paths the runtime adds to the rootfs (mount points, runtime files): compared nowhere.
fn in_upper(upper: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix("/").unwrap_or(path);
    upper.join(rel).symlink_metadata().is_ok()
}

/// `size mode path` of every regular file and `target path` of every symlink, as the
/// container lists them with busybox `find` and `stat`.
fn container_listing(out: &str) -> (BTreeMap<PathBuf, (u64, u32)>, BTreeMap<PathBuf, PathBuf>) {
    let (mut files, mut links) = (BTreeMap::new(), BTreeMap::new());
    for line in out.lines() {
        let mut fields = line.splitn(4, ' ');
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some("F"), Some(size), Some(mode), Some(path)) => {
                let mode = u32::from_str_radix(mode, 8).expect("octal mode");
                files.insert(PathBuf::from(path), (size.parse().expect("size"), mode));
            }
            (Some("L"), Some(path), Some(target), None) => {
                links.insert(PathBuf::from(path), PathBuf::from(target));
            }
            _ => panic!("unexpected listing line {line:?}"),
        }
    }
    (files, links)
}

const LIST: &str = "find / -xdev -type f -exec stat -c 'F %s %a %n' {} + ; \
    find / -xdev -type l | while read l; do echo \"L $l $(readlink \"$l\")\"; done";

fn build_view(lowerdirs: Vec<PathBuf>) -> std::sync::Arc<ImageView> {
    let state = tempfile::tempdir().expect("state dir");
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let cache = IndexCache::new(state.path().to_path_buf());
    let view = runtime
        .block_on(cache.image(lowerdirs.clone()))
        .expect("index scenario layers");
    assert_eq!(cache.counters().walked, 3);
    // A second cache on the same state dir loads every layer instead of walking it.
    let again = IndexCache::new(state.path().to_path_buf());
    let reloaded = runtime.block_on(again.image(lowerdirs)).expect("reload");
    assert_eq!(again.counters().loaded, 3);
    assert_eq!(reloaded.len(), view.len());
    view
}

#[test]
fn scenario_snapshots_index_like_the_container_sees_them() {
    let rt = Runtime::shared();
    let cri = rt.cri().expect("cri");
    let pod = cri.run_pod(&PodSpec::new("index", "default")).expect("pod");
    let spec = ContainerSpec::shell("scn", SCENARIO, "sleep 300");
    let ctr = pod.start_container(&spec).expect("container");
    let mount = rt.rootfs_mount(ctr.id()).expect("rootfs mount");
    assert_eq!(mount.lowerdirs.len(), 3, "{mount:?}");
    let view = build_view(mount.lowerdirs.clone());

    let listing = ctr.sh(LIST).expect("list files in the container");
    assert_eq!(listing.exit_code, 0, "{}", listing.stderr);
    let (files, links) = container_listing(&listing.stdout);
    assert!(
        files.len() > 5 && links.len() > 100,
        "{} files, {} links",
        files.len(),
        links.len()
    );
    let rootfs = rt.bundle_dir(ctr.id()).join("rootfs");
    compare_files(&view, &files, &mount.upperdir, &rootfs);
    compare_links(&view, &links, &mount.upperdir);
    every_image_file_is_seen(&view, &files, &mount.upperdir);
    scenario_cases(&view);
    let doomed = ctr.sh("test -e /opt/scenario/doomed").expect("exec");
    assert_ne!(
        doomed.exit_code, 0,
        "the container must not see the whited-out file"
    );
}

fn compare_files(
    view: &ImageView,
    files: &BTreeMap<PathBuf, (u64, u32)>,
    upper: &Path,
    rootfs: &Path,
) {
    let mut compared = 0;
    for (path, &(size, mode)) in files {
        if in_upper(upper, path) {
            continue;
        }
        let Some(Entry::File(entry)) = view.lookup(path) else {
            panic!(
                "{}: the container has a file the index lacks",
                path.display()
            );
        };
        assert_eq!(entry.size, size, "{}", path.display());
        assert_eq!(entry.mode & 0o7777, mode, "{}", path.display());
        let host = rootfs.join(path.strip_prefix("/").expect("absolute"));
        let content = std::fs::File::open(&host).expect("open through the rootfs mount");
        assert_eq!(
            entry.hash,
            Some(hash_file(&content).expect("hash")),
            "{}",
            path.display()
        );
        let on_host = std::fs::metadata(&host).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(on_host, mode, "{}", path.display());
        compared += 1;
    }
    assert!(compared >= 8, "only {compared} files compared");
}

fn compare_links(view: &ImageView, links: &BTreeMap<PathBuf, PathBuf>, upper: &Path) {
    for (path, target) in links.iter().filter(|(p, _)| !in_upper(upper, p)) {
        match view.lookup(path) {
            Some(Entry::Symlink { target: indexed }) => {
                assert_eq!(indexed, target, "{}", path.display())
            }
            other => panic!(
                "{}: container has a symlink, index has {other:?}",
                path.display()
            ),
        }
    }
}

fn every_image_file_is_seen(view: &ImageView, files: &BTreeMap<PathBuf, (u64, u32)>, upper: &Path) {
    let seen: BTreeSet<&Path> = files.keys().map(PathBuf::as_path).collect();
    for (path, entry) in view.iter() {
        if matches!(entry.entry, Entry::File(_)) && !in_upper(upper, path) {
            assert!(
                seen.contains(path),
                "{}: indexed but not in the container",
                path.display()
            );
        }
    }
}

fn scenario_cases(view: &ImageView) {
    let p = Path::new;
    assert!(matches!(
        view.status(p("/opt/scenario/doomed")),
        PathStatus::Deleted { layer: 0 }
    ));

    let changing = view
        .lookup_entry(p("/opt/scenario/changing"))
        .expect("changing")
        .1;
    assert_eq!(changing.layer, 0, "the update layer's version wins");

    let elf = view
        .resolve_file(p("/opt/scenario/noexec-elf"))
        .expect("noexec-elf")
        .1;
    assert!(!elf.exec_bits && elf.looks_executable, "{elf:?}");
    let script = view
        .resolve_file(p("/opt/scenario/hello.sh"))
        .expect("hello.sh")
        .1;
    assert!(script.exec_bits && script.looks_executable, "{script:?}");

    assert!(view.lookup(p("/opt/scenario/opaque/old-a")).is_none());
    assert!(view.lookup(p("/opt/scenario/opaque/old-b")).is_none());
    assert!(view.lookup(p("/opt/scenario/opaque/new-c")).is_some());

    let (resolved, busybox) = view.resolve_file(p("/bin/sh")).expect("/bin/sh");
    assert_eq!(resolved, p("/bin/busybox"));
    let same = view.paths_with_content(&busybox.hash.expect("busybox readable"));
    assert_eq!(same, vec![PathBuf::from("/bin/busybox")]);

    let loader = view
        .resolve_file(p("/lib64/ld-linux-x86-64.so.2"))
        .expect("loader")
        .1;
    assert!(loader.looks_executable);
    assert!(view.resolve_file(p("/usr/bin/gnu-true")).is_some());
    assert!(view
        .resolve_file(p("/lib/x86_64-linux-gnu/libc.so.6"))
        .is_some());
}
