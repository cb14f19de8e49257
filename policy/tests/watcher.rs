//! Hot reload through the file watcher: a valid change is applied, an invalid one is rejected
//! and counted while the old policy stays, a ConfigMap-style `..data` swap is picked up, and a
//! change is applied while another file in the directory keeps changing.

use std::path::Path;
use std::time::{Duration, Instant};

use driftguard_policy::{Action, Metrics, Policy, PolicyStore, PolicyWatcher, Rule};

/// Generous bound: the watcher's settle delay is 50 ms; the requirement is 2 s.
const BOUND: Duration = Duration::from_secs(2);

fn text_with(rule: &str) -> String {
    let mut p = Policy::default_policy();
    p.add_rule(Rule::new(rule, Action::Block), Some(1))
        .expect("unique");
    p.to_yaml()
}

fn wait(what: &str, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn replace(dir: &Path, file: &Path, text: &str) {
    let tmp = dir.join(".policy.yaml.swp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, file).expect("rename over");
}

#[test]
fn valid_change_applied_invalid_change_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, Policy::default_policy().to_yaml()).expect("write");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let metrics = Metrics::new();
    let _w = PolicyWatcher::start(&file, store.clone(), Some(metrics.clone())).expect("watch");

    // An editor's rename-over.
    replace(dir.path(), &file, &text_with("first"));
    let took = wait("valid change", || store.current().rule("first").is_some());
    println!("rename-over applied after {took:?}");
    assert_eq!(store.reloads_ok(), 1);

    // An in-place write with an error: rejected, counted, old policy kept.
    std::fs::write(
        &file,
        text_with("second").replace("action: block", "action: deny"),
    )
    .expect("write");
    wait("rejection counted", || store.reloads_failed() == 1);
    assert!(store.current().rule("first").is_some(), "old policy stays");
    let err = store.last_error().expect("error kept");
    assert!(
        err.contains("policy.yaml:") && err.contains("unknown action `deny`"),
        "{err}"
    );
    assert!(metrics
        .render()
        .contains("driftguard_policy_reloads_total{result=\"failed\"} 1"));

    // A fixed version is applied again and clears the error.
    replace(dir.path(), &file, &text_with("third"));
    wait("fixed change", || store.current().rule("third").is_some());
    assert_eq!((store.reloads_ok(), store.reloads_failed()), (2, 1));
    assert!(store.last_error().is_none());
    assert!(metrics
        .render()
        .contains("driftguard_policy_reloads_total{result=\"ok\"} 2"));
}

fn configmap_version(dir: &Path, version: &str, text: &str) {
    let data = dir.join(version);
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("policy.yaml"), text).expect("write");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("atomic swap");
}

#[test]
fn configmap_data_symlink_swap_is_picked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    configmap_version(
        dir.path(),
        "..2025_01_01_00_00_00.1",
        &Policy::default_policy().to_yaml(),
    );
    let file = dir.path().join("policy.yaml");
    std::os::unix::fs::symlink("..data/policy.yaml", &file).expect("symlink");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let _w = PolicyWatcher::start(&file, store.clone(), None).expect("watch");

    configmap_version(
        dir.path(),
        "..2025_01_01_00_01_00.2",
        &text_with("from-configmap"),
    );
    let took = wait("configmap swap", || {
        store.current().rule("from-configmap").is_some()
    });
    println!("configmap swap applied after {took:?}");

    // An invalid ConfigMap version is rejected like any other.
    configmap_version(dir.path(), "..2025_01_01_00_02_00.3", "spec: [\n");
    wait("rejection", || store.reloads_failed() == 1);
    assert!(store.current().rule("from-configmap").is_some());
}

#[test]
fn unchanged_content_is_not_reloaded_and_drop_stops_the_watcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    let text = Policy::default_policy().to_yaml();
    std::fs::write(&file, &text).expect("write");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let w = PolicyWatcher::start(&file, store.clone(), None).expect("watch");
    std::fs::write(dir.path().join("unrelated"), "x").expect("write");
    replace(dir.path(), &file, &text);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((store.reloads_ok(), store.reloads_failed()), (0, 0));

    let start = Instant::now();
    drop(w);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "drop returns promptly"
    );
    replace(dir.path(), &file, &text_with("after-drop"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(store.current().rule("after-drop").is_none());
}

#[test]
fn change_is_applied_while_another_file_in_the_directory_keeps_changing() {
    // A busy log or alert file next to the policy produces an event every few milliseconds;
    // the watcher must not wait for a quiet moment that never comes.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, Policy::default_policy().to_yaml()).expect("write");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let _w = PolicyWatcher::start(&file, store.clone(), None).expect("watch");

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let log = dir.path().join("events.jsonl");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(&log, "{}\n").expect("write noise");
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        replace(dir.path(), &file, &text_with("busy"));
        let took = wait("change next to a busy file", || {
            store.current().rule("busy").is_some()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("applied after {took:?} while another file kept changing");
    });
}

#[test]
fn unusable_policy_files_are_rejected_counted_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, text_with("first")).expect("write");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let metrics = Metrics::new();
    let _w = PolicyWatcher::start(&file, store.clone(), Some(metrics.clone())).expect("watch");

    // Not text: the error says where the first bad byte is.
    let mut bytes = text_with("second").into_bytes();
    bytes.extend_from_slice(b"\n# caf\xe9\n");
    std::fs::write(&file, &bytes).expect("write");
    wait("non-UTF-8 file rejected", || store.reloads_failed() == 1);
    let err = store.last_error().expect("error kept");
    assert!(
        err.contains("policy.yaml") && err.contains("not UTF-8") && err.contains("line"),
        "{err}"
    );

    // A directory where the file was.
    std::fs::remove_file(&file).expect("remove");
    std::fs::create_dir(&file).expect("mkdir");
    wait("directory rejected", || store.reloads_failed() == 2);
    assert!(store.current().rule("first").is_some(), "old policy stays");

    // Missing: reported once it is still missing at the next check (a poll, 5 s later).
    std::fs::remove_dir(&file).expect("rmdir");
    let start = Instant::now();
    while store.reloads_failed() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "missing file never reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(store.reloads_failed(), 3, "a missing file is reported once");
    assert!(store.current().rule("first").is_some(), "old policy stays");
    assert!(metrics
        .render()
        .contains("driftguard_policy_reloads_total{result=\"failed\"} 3"));

    // Back: applied.
    std::fs::write(&file, text_with("third")).expect("write");
    wait("restored file applied", || {
        store.current().rule("third").is_some()
    });
    assert!(store.last_error().is_none());
}
