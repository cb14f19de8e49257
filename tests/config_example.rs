//! `contrib/config/config.yaml` against the built binary: it parses, it states exactly the
//! built-in defaults, and it names every key the daemon reads.

use std::path::PathBuf;
use std::process::{Command, Output};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/config/config.yaml")
}

fn dg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(args)
        .env_remove("DRIFTGUARD_CONFIG")
        .env_remove("NRI_PLUGIN_SOCKET")
        .output()
        .expect("run driftguard")
}

fn stdout_of(args: &[&str]) -> String {
    let out = dg(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `state_dir` → `stateDir`, as serde's `rename_all = "camelCase"` does.
fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn example_config_is_valid() {
    let path = example();
    let out = stdout_of(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn example_config_states_the_built_in_defaults() {
    let path = example();
    let from_file = stdout_of(&["config", "show", path.to_str().expect("utf-8 path")]);
    let defaults = stdout_of(&["config", "show"]);
    assert_eq!(from_file, defaults);
}

#[test]
fn example_config_names_every_key() {
    let text = std::fs::read_to_string(example()).expect("read the example");
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect();
    // `config show` prints the Debug form: one `field: value` line per key, nested sections
    // as `field: Type {`.
    let shown = stdout_of(&["config", "show"]);
    let mut fields = 0;
    for line in shown.lines().map(str::trim) {
        let Some((field, _)) = line.split_once(": ") else {
            continue;
        };
        fields += 1;
        let key = camel(field);
        assert!(
            keys.contains(&key.as_str()),
            "contrib/config/config.yaml lacks `{key}`"
        );
    }
    assert!(fields >= 15, "too few fields in `config show`: {shown}");
}

#[test]
fn a_misspelt_key_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "cluster: a\nnri:\n  enabeld: false\n").expect("write");
    let out = dg(&["config", "check", file.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enabeld") && err.contains("line 3"), "{err}");
}
