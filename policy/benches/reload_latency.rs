//! Reload latency: time from a policy file change to the new policy being in force.
//!
//! Measures both update patterns the watcher supports (an editor's rename-over and the
//! ConfigMap `..data` symlink swap), 20 rounds each, and prints min / median / max next to the
//! baseline cost of parsing the same document, so the watcher's own overhead (settle delay,
//! event delivery) is visible as a ratio. Run with `cargo bench -p driftguard-policy`.

use std::path::Path;
use std::time::{Duration, Instant};

use driftguard_policy::{Policy, PolicyStore, PolicyWatcher};

const ROUNDS: usize = 20;

fn policy_text(round: usize) -> String {
    let mut p = Policy::default_policy();
    let rule =
        driftguard_policy::Rule::new(&format!("round-{round}"), driftguard_policy::Action::Block);
    p.add_rule(rule, None).expect("unique name");
    p.to_yaml()
}

fn wait_for(store: &PolicyStore, ok_before: u64) -> Duration {
    let start = Instant::now();
    while store.reloads_ok() == ok_before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reload not seen within 10 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    start.elapsed()
}

fn rename_over(dir: &Path, file: &Path, text: &str) {
    let tmp = dir.join(".policy.yaml.new");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, file).expect("rename");
}

fn symlink_swap(dir: &Path, round: usize, text: &str) {
    let data = dir.join(format!("..2024_round_{round}"));
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join("policy.yaml"), text).expect("write");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().expect("name"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap");
}

fn report(name: &str, mut samples: Vec<Duration>, baseline: Duration) {
    samples.sort();
    let med = samples[samples.len() / 2];
    println!(
        "{name:<14} min {:>9.3?}  median {:>9.3?}  max {:>9.3?}  median/parse {:>8.1}x",
        samples[0],
        med,
        samples[samples.len() - 1],
        med.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn main() {
    let text = policy_text(0);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        Policy::from_yaml(&text, "bench").expect("valid");
    }
    let parse = start.elapsed() / ROUNDS as u32;
    println!("baseline parse {parse:>9.3?} per document");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, &text).expect("write");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let watcher = PolicyWatcher::start(&file, store.clone(), None).expect("watch");
    let mut samples = Vec::new();
    for round in 1..=ROUNDS {
        let before = store.reloads_ok();
        rename_over(dir.path(), &file, &policy_text(round));
        samples.push(wait_for(&store, before));
    }
    drop(watcher);
    report("rename-over", samples, parse);

    let dir = tempfile::tempdir().expect("tempdir");
    symlink_swap(dir.path(), 0, &text);
    let file = dir.path().join("policy.yaml");
    std::os::unix::fs::symlink("..data/policy.yaml", &file).expect("symlink");
    let store = PolicyStore::new(Policy::load(&file).expect("valid"));
    let _watcher = PolicyWatcher::start(&file, store.clone(), None).expect("watch");
    let mut samples = Vec::new();
    for round in 1..=ROUNDS {
        let before = store.reloads_ok();
        symlink_swap(dir.path(), round, &policy_text(round));
        samples.push(wait_for(&store, before));
    }
    report("configmap-swap", samples, parse);
}
