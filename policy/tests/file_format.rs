//! The policy file format: round trips, the shipped examples, and one-line located errors for
//! bad documents.

use driftguard_policy::{Action, Policy, PolicyError, Treatment};

const HEAD: &str = "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nspec:\n";

fn err(body: &str) -> (String, u32, u32) {
    let text = format!("{HEAD}{body}");
    let e = Policy::from_yaml(&text, "bad.yaml").expect_err("document must be rejected");
    let (line, col) = e.location().expect("error has a location");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "error is one line: {msg}");
    assert!(
        msg.starts_with(&format!("bad.yaml:{line}:{col}: ")),
        "{msg}"
    );
    assert!(msg.contains("(hint: "), "error carries a hint: {msg}");
    (msg, line, col)
}

#[test]
fn syntax_error_is_located() {
    let (msg, line, _) = err("  rules: [\n    - name: a\n");
    assert!(line >= 4, "{msg}");
}

#[test]
fn unknown_field_is_located_and_lists_the_known_ones() {
    let (msg, line, col) = err("  defaultRule:\n    action: ignore\n  rulez: []\n");
    assert_eq!((line, col), (6, 3), "{msg}");
    assert!(
        msg.contains("unknown field `rulez`") && msg.contains("rules"),
        "{msg}"
    );
}

#[test]
fn unknown_field_inside_a_rule() {
    let body = "  rules:\n    - name: a\n      action: block\n      namespace: x\n  defaultRule:\n    action: ignore\n";
    let (msg, line, col) = err(body);
    assert_eq!((line, col), (7, 7), "{msg}");
}

#[test]
fn unknown_operator_points_at_the_operator() {
    let body = "  rules:\n    - name: a\n      action: block\n      scope:\n        - field: namespace\n          operator: is\n          value: x\n  defaultRule:\n    action: ignore\n";
    let (msg, line, col) = err(body);
    assert_eq!((line, col), (9, 21), "{msg}");
    assert!(
        msg.contains("unknown operator `is`") && msg.contains("startsWith"),
        "{msg}"
    );
}

#[test]
fn unknown_field_name_and_action() {
    let body = "  rules:\n    - name: a\n      action: deny\n  defaultRule:\n    action: ignore\n";
    let (msg, line, _) = err(body);
    assert_eq!(line, 6, "{msg}");
    assert!(msg.contains("unknown action `deny`"), "{msg}");
    let body = "  rules:\n    - name: a\n      action: block\n      scope:\n        - field: labels\n          operator: equals\n          value: a=b\n  defaultRule:\n    action: ignore\n";
    let (msg, line, _) = err(body);
    assert_eq!(line, 8, "{msg}");
    assert!(msg.contains("podLabels"), "{msg}");
}

#[test]
fn duplicate_rule_names_point_at_the_second() {
    let body = "  rules:\n    - name: a\n      action: block\n    - name: a\n      action: alert\n  defaultRule:\n    action: ignore\n";
    let (msg, line, col) = err(body);
    assert_eq!((line, col), (7, 13), "{msg}");
    assert!(msg.contains("line 5"), "hint names the first: {msg}");
}

#[test]
fn rule_named_like_the_default_rule_is_a_duplicate() {
    let body =
        "  rules:\n    - name: default\n      action: block\n  defaultRule:\n    action: ignore\n";
    let (msg, _, _) = err(body);
    assert!(msg.contains("duplicate rule name `default`"), "{msg}");
}

#[test]
fn default_rule_with_a_scope_is_refused() {
    let body = "  defaultRule:\n    action: ignore\n    scope:\n      - field: namespace\n        operator: equals\n        value: x\n";
    let (msg, line, col) = err(body);
    assert_eq!((line, col), (7, 7), "points at the scope's content: {msg}");
    assert!(msg.contains("default rule cannot have a scope"), "{msg}");
}

#[test]
fn empty_values_are_refused() {
    let cond = |v: &str| {
        format!("  rules:\n    - name: a\n      action: block\n      scope:\n        - field: namespace\n          operator: equals\n          value: {v}\n  defaultRule:\n    action: ignore\n")
    };
    let (msg, line, _) = err(&cond("\"\""));
    assert_eq!(line, 10, "{msg}");
    let (msg, line, _) = err(&cond(""));
    assert_eq!(line, 10, "{msg}");
    let (msg, _, _) = err(
        "  rules:\n    - name: \"\"\n      action: block\n  defaultRule:\n    action: ignore\n",
    );
    assert!(msg.contains("invalid rule name"), "{msg}");
}

#[test]
fn bad_allow_entries_and_options() {
    let (msg, line, _) =
        err("  defaultRule:\n    action: ignore\n    allow:\n      - path: bin/sh\n");
    assert_eq!(line, 7, "{msg}");
    let (msg, line, _) =
        err("  defaultRule:\n    action: ignore\n    allow:\n      - path: /bin/sh\n        hash: abc\n");
    assert_eq!(line, 8, "{msg}");
    let (msg, line, _) = err("  modeDrift: deny\n  defaultRule:\n    action: ignore\n");
    assert_eq!(line, 4, "{msg}");
    let (msg, _, _) = err("  failurePolicy: maybe\n  defaultRule:\n    action: ignore\n");
    assert!(msg.contains("closed"), "{msg}");
}

#[test]
fn wrong_kind_and_missing_default_rule() {
    let text = "apiVersion: v1\nkind: ConfigMap\nspec:\n  defaultRule:\n    action: ignore\n";
    let e = Policy::from_yaml(text, "cm.yaml").expect_err("wrong apiVersion");
    assert!(
        e.to_string()
            .starts_with("cm.yaml:1:13: unsupported apiVersion"),
        "{e}"
    );
    let (msg, _, _) = err("  rules: []\n");
    assert!(msg.contains("missing field `defaultRule`"), "{msg}");
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, format!("{HEAD}  bogus: 1\n")).expect("write");
    let e = Policy::load(&path).expect_err("invalid");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:4:3: ", path.display())),
        "{e}"
    );
    let e = Policy::load(&dir.path().join("absent.yaml")).expect_err("absent");
    assert!(matches!(e, PolicyError::Read { .. }), "{e}");
}

#[test]
fn minimal_document_gets_default_options() {
    let p = Policy::from_yaml(
        &format!("{HEAD}  defaultRule:\n    action: block\n"),
        "m.yaml",
    )
    .expect("valid");
    assert_eq!(p.rules().len(), 0);
    assert_eq!(p.default_rule().name, "default");
    assert_eq!(p.default_rule().action, Action::Block);
    assert_eq!(p.options().volume_files, Treatment::Drift);
}

#[test]
fn rendering_round_trips() {
    let text = std::fs::read_to_string(example("production.yaml")).expect("example");
    let p = Policy::from_yaml(&text, "production.yaml").expect("valid example");
    let again = Policy::from_yaml(&p.to_yaml(), "rendered").expect("rendered parses");
    assert_eq!(again, p);
    let d = Policy::default_policy();
    assert_eq!(
        Policy::from_yaml(&d.to_yaml(), "rendered").expect("valid"),
        d
    );
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/policy")
        .join(name)
}

#[test]
fn shipped_default_equals_default_policy() {
    let p = Policy::load(&example("default.yaml")).expect("valid default.yaml");
    assert_eq!(p, Policy::default_policy());
}

#[test]
fn production_example_is_valid_and_uses_allow_lists() {
    let p = Policy::load(&example("production.yaml")).expect("valid production.yaml");
    assert!(p.rules().len() >= 4);
    assert!(p.rules().iter().any(|r| !r.allow.is_empty()));
    assert!(p.rules().iter().any(|r| r.action == Action::Block));
}
