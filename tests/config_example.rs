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
    let shown = stdout_of(&["config", "show", config.to_str().expect("utf-8")]);
    assert!(shown.contains("start_holder: false"), "{shown}");
    assert!(
        exempt_namespaces(&shown).contains(&"driftguard".to_string()),
        "the ConfigMap's config must exempt the driftguard namespace: {shown}"
    );
}

/// The `exempt_namespaces` list of a `config show` output (the Debug form of the config).
fn exempt_namespaces(shown: &str) -> Vec<String> {
    let (_, rest) = shown
        .split_once("exempt_namespaces: [")
        .unwrap_or_else(|| panic!("no exempt_namespaces in: {shown}"));
    let (list, _) = rest.split_once(']').expect("end of exempt_namespaces");
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
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
