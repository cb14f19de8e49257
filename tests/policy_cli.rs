//! `driftguard policy …` and `driftguard events` run as a user would: the built binary on
//! files in a scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use driftguard_policy::{Action, Policy};

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "driftguard-policy-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        Scratch(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("policy.yaml")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(args)
        .output()
        .expect("run driftguard")
}

fn ok(args: &[&str]) -> String {
    let out = dg(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = dg(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(path: &Path) -> Vec<String> {
    let p = Policy::load(path).expect("written file re-validates");
    p.all_rules().map(|r| r.name.clone()).collect()
}

fn init() -> (Scratch, String) {
    let s = Scratch::new();
    let f = s.file().display().to_string();
    ok(&["policy", "init", "--file", &f]);
    (s, f)
}

#[test]
fn add_edit_duplicate_move_delete_round_trip() {
    let (s, f) = init();
    let out = ok(&[
        "policy",
        "add",
        "shop",
        "--action",
        "block",
        "--when",
        "namespace equals shop",
        "--when",
        "podLabels equals app=web",
        "--allow",
        "/opt/apm/bin/*",
        "--description",
        "Shop web",
        "--file",
        &f,
    ]);
    assert!(out.contains("added at position 2"), "{out}");
    assert_eq!(names(&s.file()), ["kube-system", "shop", "default"]);
    assert!(
        s.0.join("policy.yaml.bak").exists(),
        "previous version kept"
    );

    ok(&[
        "policy",
        "add",
        "first",
        "--action",
        "alert",
        "--position",
        "1",
        "--file",
        &f,
    ]);
    assert_eq!(
        names(&s.file()),
        ["first", "kube-system", "shop", "default"]
    );

    let hash = "ab".repeat(32);
    let allow = format!("/usr/local/bin/migrate@blake3:{hash}");
    ok(&[
        "policy",
        "edit",
        "shop",
        "--rename",
        "shop-web",
        "--action",
        "alert",
        "--unwhen",
        "podLabels equals app=web",
        "--when",
        "imageName glob registry.local/*",
        "--allow",
        &allow,
        "--disallow",
        "/opt/apm/bin/*",
        "--file",
        &f,
    ]);
    let p = Policy::load(&s.file()).expect("valid");
    let r = p.rule("shop-web").expect("renamed");
    assert_eq!(r.action, Action::Alert);
    let conds: Vec<String> = r.conditions.iter().map(ToString::to_string).collect();
    assert_eq!(
        conds,
        ["namespace equals shop", "imageName glob registry.local/*"]
    );
    assert_eq!(r.allow.len(), 1);
    assert_eq!(r.allow[0].hash(), Some([0xab; 32]));

    ok(&[
        "policy",
        "duplicate",
        "shop-web",
        "--as",
        "shop-api",
        "--file",
        &f,
    ]);
    assert_eq!(
        names(&s.file()),
        ["first", "kube-system", "shop-web", "shop-api", "default"]
    );
    ok(&["policy", "move", "shop-api", "--to", "1", "--file", &f]);
    ok(&["policy", "move", "first", "--down", "--file", &f]);
    ok(&["policy", "move", "kube-system", "--up", "--file", &f]);
    assert_eq!(
        names(&s.file()),
        ["kube-system", "shop-api", "first", "shop-web", "default"]
    );
    ok(&["policy", "delete", "first", "--file", &f]);
    assert_eq!(
        names(&s.file()),
        ["kube-system", "shop-api", "shop-web", "default"]
    );

    // The default rule: editable, not deletable, not movable, no scope.
    ok(&[
        "policy", "edit", "default", "--action", "block", "--file", &f,
    ]);
    assert_eq!(
        Policy::load(&s.file())
            .expect("valid")
            .default_rule()
            .action,
        Action::Block
    );
    assert!(fails(&["policy", "delete", "default", "--file", &f]).contains("default rule"));
    assert!(
        fails(&["policy", "move", "default", "--to", "1", "--file", &f]).contains("default rule")
    );
    let err = fails(&[
        "policy",
        "edit",
        "default",
        "--when",
        "namespace equals x",
        "--file",
        &f,
    ]);
    assert!(
        err.contains("default rule cannot be given a scope"),
        "{err}"
    );

    // Refused edits leave the file as it was.
    let before = std::fs::read(s.file()).expect("read");
    assert!(
        fails(&["policy", "add", "shop-web", "--action", "block", "--file", &f])
            .contains("already exists")
    );
    assert!(fails(&[
        "policy",
        "add",
        "x",
        "--action",
        "block",
        "--when",
        "namespace is x",
        "--file",
        &f
    ])
    .contains("unknown operator"));
    assert!(
        fails(&["policy", "edit", "nope", "--action", "block", "--file", &f])
            .contains("no rule named")
    );
    assert!(
        fails(&["policy", "move", "shop-web", "--to", "9", "--file", &f]).contains("out of range")
    );
    assert_eq!(std::fs::read(s.file()).expect("read"), before);
    ok(&["policy", "validate", &f]);
}

#[test]
fn list_show_and_explain() {
    let (_s, f) = init();
    ok(&[
        "policy",
        "add",
        "web",
        "--action",
        "block",
        "--when",
        "namespace startsWith shop",
        "--when",
        "podLabels equals app=web",
        "--allow",
        "/opt/x",
        "--file",
        &f,
    ]);
    let list = ok(&["policy", "list", "--file", &f]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("PRIORITY") && lines[0].contains("ALLOW"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("1") && lines[1].contains("kube-system"),
        "{list}"
    );
    assert!(lines[2].contains("web") && lines[2].contains("block") && lines[2].contains("/opt/x"));
    assert!(lines[2].contains("namespace startsWith shop and podLabels equals app=web"));
    assert!(
        lines[3].starts_with("default") && lines[3].contains("ignore"),
        "{list}"
    );

    let show = ok(&["policy", "show", "web", "--file", &f]);
    assert!(
        show.contains("priority:    2") && show.contains("/opt/x"),
        "{show}"
    );

    let ex = ok(&[
        "policy",
        "explain",
        "--namespace",
        "shop-eu",
        "--pod",
        "web-1",
        "--labels",
        "app=web,tier=front",
        "--container",
        "nginx",
        "--image",
        "nginx:1",
        "--file",
        &f,
    ]);
    assert!(ex.contains("rule `kube-system` (alert): no match"), "{ex}");
    assert!(
        ex.contains("[fails] namespace equals kube-system  (observed: \"shop-eu\")"),
        "{ex}"
    );
    assert!(ex.contains("[holds] podLabels equals app=web"), "{ex}");
    assert!(ex.contains("=> rule `web` applies: action block"), "{ex}");

    let ex = ok(&["policy", "explain", "--namespace", "blog", "--file", &f]);
    assert!(ex.contains("[fails] namespace startsWith shop"), "{ex}");
    assert!(
        ex.contains("=> rule `default` applies: action ignore"),
        "{ex}"
    );
}

#[test]
fn bad_files_give_one_line_located_errors() {
    let s = Scratch::new();
    let head = "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nspec:\n";
    let cases = [
        ("syntax", "  rules: [\n", "4:"),
        ("unknown-field", "  defaultRule:\n    action: ignore\n  extra: 1\n", "6:3: unknown field `extra`"),
        (
            "operator",
            "  rules:\n    - name: a\n      action: block\n      scope:\n        - field: namespace\n          operator: matches\n          value: x\n  defaultRule:\n    action: ignore\n",
            "9:21: unknown operator `matches`",
        ),
        (
            "duplicate",
            "  rules:\n    - name: a\n      action: block\n    - name: a\n      action: alert\n  defaultRule:\n    action: ignore\n",
            "7:13: duplicate rule name `a`",
        ),
        (
            "default-scope",
            "  defaultRule:\n    action: ignore\n    scope:\n      - field: namespace\n        operator: equals\n        value: x\n",
            "the default rule cannot have a scope",
        ),
    ];
    for (name, body, want) in cases {
        let path = s.0.join(format!("{name}.yaml"));
        std::fs::write(&path, format!("{head}{body}")).expect("write");
        let out = dg(&["policy", "validate", &path.display().to_string()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: one line: {err}");
        let prefix = format!("{}:", path.display());
        assert!(
            err.starts_with(&prefix) && err.contains(want),
            "{name}: {err}"
        );
        assert!(err.contains("(hint: "), "{name}: {err}");
        // Every editing verb refuses to touch a broken file.
        let f = path.display().to_string();
        let err = fails(&["policy", "delete", "a", "--file", &f]);
        assert!(err.contains(&prefix), "{name}: {err}");
    }
}

fn root() -> bool {
    // /proc/self/status lists real, effective, saved and filesystem uids.
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn failed_write_leaves_the_old_file_intact() {
    let (s, f) = init();
    let before = std::fs::read(s.file()).expect("read");

    // A read-only directory. Root ignores permission bits, so as root the directory is made
    // read-only with a read-only bind mount in a private mount namespace.
    let bin = env!("CARGO_BIN_EXE_driftguard");
    let dir = s.0.display().to_string();
    let out = if root() {
        let script = format!(
            "mount --bind {dir} {dir} && mount -o remount,bind,ro {dir} && \
             {bin} policy add new --action block --file {f}"
        );
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .output()
            .expect("unshare")
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.0, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let out = dg(&["policy", "add", "new", "--action", "block", "--file", &f]);
        std::fs::set_permissions(&s.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        out
    };
    assert!(
        !out.status.success(),
        "write into a read-only directory must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write policy; file left unchanged"),
        "{err}"
    );
    assert_eq!(std::fs::read(s.file()).expect("read"), before);

    // A backup path that cannot be written (a directory): the target is still untouched and
    // no temporary file is left behind.
    std::fs::create_dir(s.0.join("policy.yaml.bak")).expect("mkdir");
    let err = fails(&["policy", "add", "new", "--action", "block", "--file", &f]);
    assert!(err.contains("file left unchanged"), "{err}");
    assert_eq!(std::fs::read(s.file()).expect("read"), before);
    let leftovers: Vec<_> = std::fs::read_dir(&s.0)
        .expect("readdir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files removed");
    ok(&["policy", "validate", &f]);
}

#[test]
fn events_shows_the_last_alerts() {
    let s = Scratch::new();
    let path = s.0.join("events.jsonl");
    let mut text = String::new();
    for pid in 1..=30 {
        text.push_str(&format!(
            "{{\"time\":\"2025-01-01T00:00:{pid:02}Z\",\"severity\":\"high\",\"rule\":\"r\",\"class\":\"new file\",\"outcome\":\"deny\",\"action\":\"block\",\"container_id\":\"c\",\"container_name\":\"nginx\",\"pod\":\"web\",\"namespace\":\"shop\",\"image\":\"nginx:1\",\"node\":\"n\",\"cluster\":\"k\",\"pid\":{pid},\"path\":\"/tmp/p{pid}\",\"argv\":[]}}\n"
        ));
    }
    text.push_str("{\"time\":\"2025-01-01T00:01:00Z\",\"severity\":\"low\",\"suppressed\":12}\n");
    std::fs::write(&path, text).expect("write");
    let f = path.display().to_string();
    let out = ok(&["events", "--file", &f, "-n", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("/tmp/p29") && lines[0].contains("Drift blocked"),
        "{out}"
    );
    assert!(lines[2].contains("12 alerts suppressed"), "{out}");
    let raw = ok(&["events", "--file", &f, "-n", "1", "--json"]);
    assert!(raw.starts_with("{\"time\""), "{raw}");
}

#[test]
fn a_change_says_when_it_drops_comments() {
    let s = Scratch::new();
    let f = s.file().display().to_string();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/policy/default.yaml");
    std::fs::copy(&shipped, s.file()).expect("copy the shipped policy");
    let out = dg(&["policy", "add", "x", "--action", "alert", "--file", &f]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("comment line(s)") && stderr.contains("policy.yaml.bak"),
        "{stderr}"
    );
    // The rendered file has only its own header: nothing more to warn about.
    let out = dg(&["policy", "add", "y", "--action", "alert", "--file", &f]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dg_with_config(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(args)
        .env("DRIFTGUARD_CONFIG", config)
        .output()
        .expect("run driftguard")
}

#[test]
fn verbs_default_to_the_configured_policy_path() {
    let s = Scratch::new();
    let config = s.0.join("config.yaml");
    let policy = s.0.join("configured.yaml");
    std::fs::write(&config, format!("policyPath: {}\n", policy.display())).expect("write");
    let run = |args: &[&str]| {
        let out = dg_with_config(&config, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["policy", "init"]);
    assert!(policy.exists(), "init did not write the configured policy");
    run(&["policy", "add", "shop", "--action", "block"]);
    assert_eq!(names(&policy), ["kube-system", "shop", "default"]);
    let listed = run(&["policy", "list"]);
    assert!(listed.contains("shop"), "{listed}");

    // A configuration that cannot be read is named, with the way around it.
    let missing = s.0.join("missing-config.yaml");
    let out = dg_with_config(&missing, &["policy", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("--file"),
        "{err}"
    );
}

#[test]
fn each_error_is_said_once() {
    let (s, f) = init();
    let missing = s.0.join("missing.yaml").display().to_string();
    let err = fails(&["policy", "list", "--file", &missing]);
    assert!(err.contains(&missing), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let err = fails(&[
        "policy",
        "add",
        "bad name!",
        "--action",
        "block",
        "--file",
        &f,
    ]);
    assert_eq!(err.matches("invalid rule name").count(), 1, "{err}");
}

#[test]
fn two_documents_and_bytes_that_are_not_utf8_are_located() {
    let (s, f) = init();
    let text = std::fs::read_to_string(&f).expect("read");
    let two = s.0.join("two.yaml");
    std::fs::write(&two, format!("{text}---\n{text}")).expect("write");
    // The `---` line that starts the second document.
    let second = text.lines().count() + 1;
    let err =
        String::from_utf8_lossy(&dg(&["policy", "validate", &two.display().to_string()]).stderr)
            .into_owned();
    assert!(
        err.contains(&format!(
            "the file has more than one YAML document (line {second}); a policy is one document"
        )),
        "{err}"
    );
    assert!(!err.contains("from_str"), "{err}");

    let bad = s.0.join("bad.yaml");
    std::fs::write(
        &bad,
        b"apiVersion: driftguard.dev/v1\nkind: DriftPolicy\n# \xff\n",
    )
    .expect("write");
    let out = dg(&["policy", "validate", &bad.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("offset 50 (line 3)"), "{err}");
}

#[test]
fn direct_loader_is_listed_and_set_and_one_rule_is_singular() {
    let (_s, f) = init();
    let listed = ok(&["policy", "list", "--file", &f]);
    assert!(listed.contains(" directLoader=allow "), "{listed}");
    ok(&[
        "policy",
        "options",
        "--direct-loader",
        "block",
        "--file",
        &f,
    ]);
    let listed = ok(&["policy", "list", "--file", &f]);
    assert!(listed.contains(" directLoader=block "), "{listed}");
    let text = std::fs::read_to_string(&f).expect("read");
    assert!(text.contains("directLoader: block"), "{text}");
    let out = ok(&["policy", "validate", &f]);
    assert!(out.contains("with 1 rule above"), "{out}");
}

#[test]
fn events_follow_loses_nothing_across_rotations() {
    let s = Scratch::new();
    let path = s.0.join("events.jsonl");
    let numbered = |n: u32| s.0.join(format!("events.jsonl.{n}"));
    let line = |pid: u32| format!("{{\"time\":\"t\",\"pid\":{pid}}}\n");
    let append = |from: u32, to: u32| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        for pid in from..=to {
            f.write_all(line(pid).as_bytes()).expect("write");
        }
    };
    append(1, 3);
    let f = path.display().to_string();
    let mut follower = Command::new(env!("CARGO_BIN_EXE_driftguard"))
        .args(["events", "--file", &f, "-n", "10", "--json", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("follow");
    std::thread::sleep(std::time::Duration::from_millis(700));
    // Two rotations inside one of the follower's sleeps, with lines written before each.
    append(4, 5);
    std::fs::rename(&path, numbered(1)).expect("rotate");
    append(6, 8);
    std::fs::rename(numbered(1), numbered(2)).expect("rotate .1");
    std::fs::rename(&path, numbered(1)).expect("rotate");
    append(9, 10);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    append(11, 11);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    follower.kill().expect("stop the follower");
    let out = follower.wait_with_output().expect("output");
    let pids: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["pid"].as_u64())
        .collect();
    assert_eq!(pids, (1..=11).collect::<Vec<u64>>());
}
