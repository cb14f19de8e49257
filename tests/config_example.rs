//! The configuration file against the built binary: `contrib/config/config.yaml` parses,
//! states exactly the built-in defaults and names every key the daemon reads; `config show`
//! prints YAML with the file's key names; bad values are refused by `config check` and by the
//! daemon, naming the file, the key and the value.

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

/// The key paths of a YAML mapping, nested keys as `section.key`.
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = value.as_object() else {
        return;
    };
    for (key, inner) in map {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        out.push(path.clone());
        key_paths(inner, &path, out);
    }
}

fn shown_config(args: &[&str]) -> serde_json::Value {
    let shown = stdout_of(args);
    serde_saphyr::from_str(&shown)
        .unwrap_or_else(|e| panic!("`config show` is not YAML: {e}\n{shown}"))
}

#[test]
fn example_config_names_every_key() {
    let text = std::fs::read_to_string(example()).expect("read the example");
    let example: serde_json::Value = serde_saphyr::from_str(&text).expect("parse the example");
    let mut in_example = Vec::new();
    key_paths(&example, "", &mut in_example);
    let mut shown = Vec::new();
    key_paths(&shown_config(&["config", "show"]), "", &mut shown);
    for key in &shown {
        assert!(
            in_example.contains(key),
            "contrib/config/config.yaml lacks `{key}`"
        );
    }
    assert!(
        shown.len() >= 15,
        "too few keys in `config show`: {shown:?}"
    );
}

#[test]
fn config_show_prints_yaml_with_the_file_key_names_and_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "cluster: prod\nnri:\n  pluginIndex: \"07\"\n").expect("write");
    let path = file.to_str().expect("utf-8 path");
    let shown = stdout_of(&["config", "show", path]);
    let value: serde_json::Value = serde_saphyr::from_str(&shown).expect("YAML");
    assert_eq!(value["cluster"], "prod", "{shown}");
    assert_eq!(value["nri"]["pluginIndex"], "07", "{shown}");
    assert_eq!(value["decisionTimeoutMs"], 2000, "{shown}");
    assert!(!shown.contains("plugin_index"), "{shown}");

    // The printed configuration is itself a valid file with the same effect.
    let again = dir.path().join("shown.yaml");
    std::fs::write(&again, &shown).expect("write");
    let again = again.to_str().expect("utf-8 path");
    assert!(stdout_of(&["config", "check", again]).contains("valid"));
    assert_eq!(stdout_of(&["config", "show", again]), shown);
}

#[test]
fn a_parse_error_snippet_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "cluster: a\nbogus: 1\n").expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = dg(&["config", "check", path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{path}:2:1")), "{err}");
    assert!(!err.contains("<input>"), "{err}");
}

/// Documents with one bad value each, the key named in the error and the value shown.
const BAD_VALUES: &[(&str, &str, &str)] = &[
    ("metricsAddress: nothere\n", "metricsAddress", "nothere"),
    (
        "alerts:\n  falcosidekickUrl: https://falco:2801/\n",
        "alerts.falcosidekickUrl",
        "https://falco:2801/",
    ),
    (
        "alerts:\n  file: events.jsonl\n",
        "alerts.file",
        "events.jsonl",
    ),
    (
        "nri:\n  pluginName: \"bad name\"\n",
        "nri.pluginName",
        "bad name",
    ),
    ("nri:\n  pluginIndex: \"abc\"\n", "nri.pluginIndex", "abc"),
    ("nri:\n  pluginIndex: \"1\"\n", "nri.pluginIndex", "\"1\""),
    ("nri:\n  socket: nri.sock\n", "nri.socket", "nri.sock"),
    (
        "runc:\n  path: relative/runc\n",
        "runc.path",
        "relative/runc",
    ),
    ("stateDir: state\n", "stateDir", "state"),
    ("policyPath: policy.yaml\n", "policyPath", "policy.yaml"),
    ("supervisorSocket: s.sock\n", "supervisorSocket", "s.sock"),
    ("holderSocket: h.sock\n", "holderSocket", "h.sock"),
    ("decisionTimeoutMs: 0\n", "decisionTimeoutMs", "0"),
    (
        "exemptNamespaces: [Kube_System]\n",
        "exemptNamespaces",
        "Kube_System",
    ),
];

#[test]
fn config_check_rejects_bad_values_naming_file_key_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    let path = file.to_str().expect("utf-8 path");
    for (doc, key, value) in BAD_VALUES {
        std::fs::write(&file, doc).expect("write");
        let out = dg(&["config", "check", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{doc:?} was accepted");
        assert!(
            err.contains(&format!("{path}: {key}: ")) && err.contains(value),
            "{doc:?}: {err}"
        );
    }
    let long = format!("supervisorSocket: /{}\n", "s".repeat(110));
    std::fs::write(&file, long).expect("write");
    let out = dg(&["config", "check", path]);
    assert!(
        !out.status.success(),
        "a socket path too long to bind was accepted"
    );
}

/// A configuration whose every path is under `dir`, with `top` and `nri` lines added.
fn private_config(dir: &std::path::Path, top: &str, nri: &str) -> String {
    let d = dir.display();
    format!(
        "stateDir: {d}/state\npolicyPath: {d}/policy.yaml\nsupervisorSocket: {d}/s.sock\n\
         holderSocket: {d}/h.sock\nstartHolder: false\nnri:\n  socket: {d}/nri.sock\n{nri}\
         alerts:\n  stdout: false\n  file: {d}/events.jsonl\n{top}"
    )
}

/// Runs `driftguard daemon --config FILE`; a daemon still running after 20 s is killed.
fn daemon_with(file: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(["daemon", "--config"])
        .arg(file)
        .env_remove("DRIFTGUARD_CONFIG")
        .env_remove("NRI_PLUGIN_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut exited = false;
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !exited {
        child.kill().expect("kill the daemon");
    }
    let out = child.wait_with_output().expect("daemon output");
    (
        exited && !out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_daemon_refuses_bad_values_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    let path = file.to_str().expect("utf-8 path");
    for (top, nri, key, value) in [
        ("metricsAddress: nothere\n", "", "metricsAddress", "nothere"),
        (
            "",
            "  pluginName: \"bad name\"\n",
            "nri.pluginName",
            "bad name",
        ),
    ] {
        let doc = private_config(dir.path(), top, nri);
        std::fs::write(&file, doc).expect("write");
        let (refused, err) = daemon_with(&file);
        assert!(refused, "the daemon ran with {key}: {value}: {err}");
        assert!(
            err.contains(&format!("{path}: {key}: ")) && err.contains(value),
            "{err}"
        );
    }
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

/// Parses one YAML file of `contrib/kubernetes` into JSON values, one per `---` document.
fn manifests(name: &str) -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/kubernetes")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read manifest");
    let mut docs = Vec::new();
    for (i, doc) in text.split("\n---\n").enumerate() {
        let value: serde_json::Value = serde_saphyr::from_str(doc)
            .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
        assert!(
            value["apiVersion"].is_string(),
            "{name} #{i}: no apiVersion"
        );
        assert!(value["kind"].is_string(), "{name} #{i}: no kind");
        docs.push(value);
    }
    docs
}

fn str_at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
}

#[test]
fn kubernetes_configmap_holds_a_valid_config_and_the_default_policy() {
    let cm = &manifests("configmap.yaml")[0];
    assert_eq!(cm["kind"], "ConfigMap");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&config, str_at(cm, "/data/config.yaml")).expect("write");
    std::fs::write(&policy, str_at(cm, "/data/policy.yaml")).expect("write");
    stdout_of(&["config", "check", config.to_str().expect("utf-8")]);
    stdout_of(&["policy", "validate", policy.to_str().expect("utf-8")]);

    let default_policy =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/policy/default.yaml");
    let default_policy = std::fs::read_to_string(default_policy).expect("read default policy");
    assert_eq!(str_at(cm, "/data/policy.yaml"), default_policy);
    let shown = shown_config(&["config", "show", config.to_str().expect("utf-8")]);
    assert_eq!(shown["startHolder"], false, "{shown}");
    let exempt = shown["exemptNamespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        exempt.contains(&serde_json::Value::from("driftguard")),
        "the ConfigMap's config must exempt the driftguard namespace: {shown}"
    );
}

/// Every mount names a volume of the pod; a host path shared with processes outside the pod
/// (runc, containerd) is mounted at the same path.
fn check_pod_mounts(name: &str, pod: &serde_json::Value) {
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let containers = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().cloned().unwrap_or_default());
    for container in containers {
        for mount in container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{name}: mount {} has no volume", mount["name"]));
            let host = str_at(volume, "/hostPath/path");
            let shared = [
                "/run/driftguard",
                "/var/run/nri",
                "/run/containerd",
                "/var/lib/containerd",
            ];
            if shared.contains(&host) {
                assert_eq!(
                    mount["mountPath"], host,
                    "{name}: {host} must keep its path"
                );
            }
        }
    }
}

#[test]
fn kubernetes_daemonsets_mount_what_the_agent_needs_at_the_node_paths() {
    let agent = &manifests("daemonset.yaml")[0];
    let holder = &manifests("fd-holder.yaml")[0];
    for (name, ds) in [("daemonset.yaml", agent), ("fd-holder.yaml", holder)] {
        assert_eq!(ds["kind"], "DaemonSet", "{name}");
        let pod = &ds["spec"]["template"]["spec"];
        check_pod_mounts(name, pod);
        // The wrapper starts only exempt namespaces' pods while the supervisor is down; no
        // annotation opts a pod out.
        assert_eq!(
            str_at(ds, "/metadata/namespace"),
            "driftguard",
            "{name}: must run in the exempt namespace driftguard"
        );
        let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations.get("driftguard.dev/monitored").is_none(),
            "{name}: driftguard.dev/monitored is no opt-out"
        );
    }
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let mounts: Vec<&str> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap_or_default())
        .collect();
    for needed in [
        "/etc/driftguard",
        "/run/driftguard",
        "/var/lib/driftguard",
        "/var/run/nri",
        "/run/containerd",
        "/var/lib/containerd",
    ] {
        assert!(mounts.contains(&needed), "daemonset.yaml lacks {needed}");
    }
    assert_eq!(holder["spec"]["updateStrategy"]["type"], "OnDelete");
    let namespace = &manifests("namespace.yaml")[0];
    assert_eq!(namespace["kind"], "Namespace");
    assert_eq!(str_at(namespace, "/metadata/name"), "driftguard");
    let cm = &manifests("configmap.yaml")[0];
    assert_eq!(str_at(cm, "/metadata/namespace"), "driftguard");
}

#[test]
fn a_second_daemon_on_the_same_socket_exits_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        private_config(dir.path(), "metricsAddress: \"\"\n", ""),
    )
    .expect("write");
    let mut first = Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(["daemon", "--config"])
        .arg(&file)
        .env_remove("DRIFTGUARD_CONFIG")
        .env_remove("NRI_PLUGIN_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the first daemon");
    let alive = dir.path().join("s.sock.alive");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !alive.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (refused, err) = daemon_with(&file);
    let first_runs = first.try_wait().expect("wait").is_none();
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        alive.exists() || !first_runs,
        "the first daemon never served"
    );
    assert!(refused, "a second daemon kept running: {err}");
    assert!(err.contains("already serves"), "{err}");
    assert!(
        !err.contains("daemon running") && !err.contains("nri"),
        "the second daemon started more than its supervisor: {err}"
    );
    assert!(first_runs, "the first daemon stopped");
}
