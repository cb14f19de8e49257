//! Conformance table for rule matching and decisions: every field × every operator,
//! first-match-wins, the default rule, empty scopes, allow lists and the `decide` table.

use std::collections::BTreeMap;

use driftguard_policy::{
    Action, AllowEntry, Condition, Decision, ExecFacts, Field, Operator, Outcome, Policy, Rule,
    Scope, Treatment, VerdictClass,
};

fn scope() -> Scope {
    Scope {
        cluster: "prod-eu".into(),
        namespace: "shop".into(),
        pod_name: "web-7d9f".into(),
        pod_uid: "uid-1".into(),
        pod_labels: BTreeMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "frontend".into()),
        ]),
        container_name: "nginx".into(),
        image_name: "registry.local/shop/nginx:1.27".into(),
    }
}

fn holds(field: Field, op: Operator, value: &str) -> bool {
    Condition::new(field, op, value)
        .expect("valid condition")
        .matches(&scope())
}

/// (field, operator, value, expected) for every field × operator, each with a hit and a miss.
#[test]
fn every_field_with_every_operator() {
    use Field::*;
    use Operator::*;
    let table: &[(Field, Operator, &str, bool)] = &[
        (Cluster, Equals, "prod-eu", true),
        (Cluster, Equals, "prod", false),
        (Cluster, StartsWith, "prod", true),
        (Cluster, StartsWith, "eu", false),
        (Cluster, EndsWith, "-eu", true),
        (Cluster, EndsWith, "prod", false),
        (Cluster, Contains, "od-e", true),
        (Cluster, Contains, "us", false),
        (Cluster, Glob, "prod-*", true),
        (Cluster, Glob, "dev-*", false),
        (Namespace, Equals, "shop", true),
        (Namespace, Equals, "sho", false),
        (Namespace, StartsWith, "sh", true),
        (Namespace, StartsWith, "op", false),
        (Namespace, EndsWith, "op", true),
        (Namespace, EndsWith, "sh", false),
        (Namespace, Contains, "ho", true),
        (Namespace, Contains, "x", false),
        (Namespace, Glob, "s?op", true),
        (Namespace, Glob, "s?p", false),
        (PodName, Equals, "web-7d9f", true),
        (PodName, Equals, "web", false),
        (PodName, StartsWith, "web-", true),
        (PodName, StartsWith, "api-", false),
        (PodName, EndsWith, "7d9f", true),
        (PodName, EndsWith, "web", false),
        (PodName, Contains, "-7d", true),
        (PodName, Contains, "api", false),
        (PodName, Glob, "web-[0-9a-f]*", true),
        (PodName, Glob, "web-[xyz]*", false),
        (PodLabels, Equals, "app=web", true),
        (PodLabels, Equals, "app=api", false),
        (PodLabels, StartsWith, "tier=", true),
        (PodLabels, StartsWith, "team=", false),
        (PodLabels, EndsWith, "=frontend", true),
        (PodLabels, EndsWith, "=backend", false),
        (PodLabels, Contains, "front", true),
        (PodLabels, Contains, "back", false),
        (PodLabels, Glob, "app=w*", true),
        (PodLabels, Glob, "app=a*", false),
        (ContainerName, Equals, "nginx", true),
        (ContainerName, Equals, "nginx-sidecar", false),
        (ContainerName, StartsWith, "ng", true),
        (ContainerName, StartsWith, "gi", false),
        (ContainerName, EndsWith, "inx", true),
        (ContainerName, EndsWith, "ng", false),
        (ContainerName, Contains, "gin", true),
        (ContainerName, Contains, "apache", false),
        (ContainerName, Glob, "{nginx,envoy}", true),
        (ContainerName, Glob, "{istio,envoy}", false),
        (ImageName, Equals, "registry.local/shop/nginx:1.27", true),
        (ImageName, Equals, "nginx:1.27", false),
        (ImageName, StartsWith, "registry.local/", true),
        (ImageName, StartsWith, "docker.io/", false),
        (ImageName, EndsWith, ":1.27", true),
        (ImageName, EndsWith, ":latest", false),
        (ImageName, Contains, "/shop/", true),
        (ImageName, Contains, "/ops/", false),
        (ImageName, Glob, "registry.local/*:1.*", true),
        (ImageName, Glob, "registry.local/*:2.*", false),
    ];
    for field in Field::ALL {
        for op in Operator::ALL {
            let rows = table.iter().filter(|r| r.0 == field && r.1 == op).count();
            assert_eq!(rows, 2, "table lacks a hit and a miss for {field} {op}");
        }
    }
    for &(field, op, value, want) in table {
        assert_eq!(holds(field, op, value), want, "{field} {op} {value}");
    }
}

#[test]
fn pod_labels_match_when_any_label_does_and_never_without_labels() {
    let mut s = scope();
    let cond = Condition::new(Field::PodLabels, Operator::Equals, "tier=frontend").expect("valid");
    assert!(cond.matches(&s));
    s.pod_labels.clear();
    assert!(!cond.matches(&s));
}

#[test]
fn invalid_conditions_are_refused() {
    assert!(Condition::new(Field::Namespace, Operator::Equals, "").is_err());
    assert!(Condition::new(Field::PodLabels, Operator::Equals, "app").is_err());
    assert!(Condition::new(Field::ImageName, Operator::Glob, "nginx[").is_err());
    assert!(Field::parse("labels").is_err());
    assert!(Operator::parse("regex").is_err());
}

fn rule(name: &str, action: Action, conds: &[(Field, Operator, &str)]) -> Rule {
    let mut r = Rule::new(name, action);
    r.conditions = conds
        .iter()
        .map(|&(f, o, v)| Condition::new(f, o, v).expect("valid"))
        .collect();
    r
}

fn policy_with(rules: Vec<Rule>, default: Action) -> Policy {
    let mut p = Policy::default_policy();
    p.delete_rule("kube-system").expect("present");
    for r in rules {
        p.add_rule(r, None).expect("unique");
    }
    let edit = driftguard_policy::RuleEdit {
        action: Some(default),
        ..Default::default()
    };
    p.edit_rule("default", edit).expect("default editable");
    p
}

#[test]
fn first_match_wins_and_all_conditions_must_hold() {
    let p = policy_with(
        vec![
            rule(
                "shop-nginx",
                Action::Block,
                &[
                    (Field::Namespace, Operator::Equals, "shop"),
                    (Field::ContainerName, Operator::Equals, "nginx"),
                ],
            ),
            rule(
                "shop",
                Action::Alert,
                &[(Field::Namespace, Operator::Equals, "shop")],
            ),
            rule(
                "shop-other",
                Action::Ignore,
                &[(Field::Namespace, Operator::Equals, "shop")],
            ),
        ],
        Action::Ignore,
    );
    let mut s = scope();
    assert_eq!(p.evaluate(&s).name, "shop-nginx");
    s.container_name = "php".into();
    assert_eq!(
        p.evaluate(&s).name,
        "shop",
        "first of two matching rules wins"
    );
    s.namespace = "blog".into();
    assert_eq!(p.evaluate(&s).name, "default");
}

#[test]
fn default_rule_applies_when_nothing_matches_and_its_action_counts() {
    for action in [Action::Alert, Action::Block, Action::Ignore] {
        let p = policy_with(
            vec![rule(
                "other",
                Action::Block,
                &[(Field::Namespace, Operator::Equals, "x")],
            )],
            action,
        );
        let d = p.decide(&scope(), &facts(VerdictClass::NewFile, "/tmp/x", None));
        assert_eq!(d.rule, "default");
        assert_eq!(d.action, action);
        let want = match action {
            Action::Alert => Outcome::Alert,
            Action::Block => Outcome::Deny,
            Action::Ignore => Outcome::Allow,
        };
        assert_eq!(d.outcome, want);
    }
}

#[test]
fn empty_scope_matches_everything() {
    let p = policy_with(vec![rule("all", Action::Block, &[])], Action::Ignore);
    assert_eq!(p.evaluate(&Scope::default()).name, "all");
    assert_eq!(p.evaluate(&scope()).name, "all");
}

#[test]
fn new_policy_ships_kube_system_alert_above_ignore_default() {
    let p = Policy::default_policy();
    let mut s = scope();
    s.namespace = "kube-system".into();
    assert_eq!(p.evaluate(&s).name, "kube-system");
    assert_eq!(p.evaluate(&s).action, Action::Alert);
    assert_eq!(p.evaluate(&scope()).name, "default");
    assert_eq!(p.evaluate(&scope()).action, Action::Ignore);
}

fn facts(class: VerdictClass, path: &str, hash: Option<[u8; 32]>) -> ExecFacts<'_> {
    ExecFacts {
        class,
        path,
        hash,
        on_volume: false,
    }
}

#[test]
fn allow_list_in_a_blocking_rule() {
    let pinned = [7u8; 32];
    let mut r = rule(
        "shop",
        Action::Block,
        &[(Field::Namespace, Operator::Equals, "shop")],
    );
    r.allow = vec![
        AllowEntry::new("/opt/agent/bin/*", None).expect("valid"),
        AllowEntry::new("/usr/local/bin/migrate", Some(&hex(pinned))).expect("valid"),
        AllowEntry::new("/srv/**/hook", None).expect("valid"),
    ];
    let p = policy_with(vec![r], Action::Ignore);
    let s = scope();
    let cases: &[(&str, Option<[u8; 32]>, Outcome, bool)] = &[
        ("/opt/agent/bin/collector", None, Outcome::Allow, true),
        ("/opt/agent/bin/sub/collector", None, Outcome::Deny, false),
        ("/usr/local/bin/migrate", Some(pinned), Outcome::Allow, true),
        (
            "/usr/local/bin/migrate",
            Some([8u8; 32]),
            Outcome::Deny,
            false,
        ),
        ("/usr/local/bin/migrate", None, Outcome::Deny, false),
        ("/srv/a/b/hook", None, Outcome::Allow, true),
        ("/tmp/payload", None, Outcome::Deny, false),
    ];
    for &(path, hash, outcome, listed) in cases {
        let d = p.decide(&s, &facts(VerdictClass::NewFile, path, hash));
        assert_eq!(
            (d.outcome, d.allow_listed),
            (outcome, listed),
            "{path} {hash:?}"
        );
    }
}

fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_options(
    action: Action,
    mode: Treatment,
    relocated: Treatment,
    volume: Treatment,
) -> Policy {
    let mut p = policy_with(vec![rule("r", action, &[])], Action::Ignore);
    let mut o = p.options();
    o.mode_drift = mode;
    o.relocated_image_binaries = relocated;
    o.volume_files = volume;
    p.set_options(o);
    p
}

fn outcome(p: &Policy, class: VerdictClass, on_volume: bool) -> Decision {
    let exec = ExecFacts {
        class,
        path: "/x",
        hash: None,
        on_volume,
    };
    p.decide(&scope(), &exec)
}

#[test]
fn image_files_and_metadata_copy_ups_are_always_allowed() {
    use Treatment::*;
    let p = with_options(Action::Block, Block, Block, Block);
    for class in [VerdictClass::ImageFile, VerdictClass::MetadataCopyUp] {
        for vol in [false, true] {
            let d = outcome(&p, class, vol);
            assert_eq!(d.outcome, Outcome::Allow, "{class} on_volume={vol}");
            assert!(!d.allow_listed);
        }
    }
}

#[test]
fn ignore_rule_allows_every_class() {
    use Treatment::*;
    let p = with_options(Action::Ignore, Block, Block, Block);
    // Every class a rule decides (`Undecided` is the failure policy's).
    for class in VerdictClass::ALL
        .into_iter()
        .filter(|c| *c != VerdictClass::Undecided)
    {
        assert_eq!(outcome(&p, class, false).outcome, Outcome::Allow, "{class}");
        assert_eq!(outcome(&p, class, true).outcome, Outcome::Allow, "{class}");
    }
}

fn expected(t: Treatment, action: Action) -> Outcome {
    match (t, action) {
        (Treatment::Allow, _) => Outcome::Allow,
        (Treatment::Alert, _) => Outcome::Alert,
        (Treatment::Block, _) => Outcome::Deny,
        (Treatment::Drift, Action::Block) => Outcome::Deny,
        (Treatment::Drift, Action::Alert) => Outcome::Alert,
        (Treatment::Drift, Action::Ignore) => Outcome::Allow,
    }
}

/// The option-driven classes under every treatment and both acting rule actions.
#[test]
fn options_decide_mode_drift_relocated_binaries_and_volume_files() {
    use Treatment::*;
    for action in [Action::Block, Action::Alert] {
        for t in [Allow, Alert, Block, Drift] {
            let p = with_options(action, t, t, t);
            let cases = [
                (VerdictClass::ModeDrift, false),
                (VerdictClass::RelocatedImageBinary, false),
                (VerdictClass::RelocatedImageBinary, true),
                (VerdictClass::NewFile, true),
                (VerdictClass::ModifiedImageFile, true),
            ];
            for (class, vol) in cases {
                let d = outcome(&p, class, vol);
                assert_eq!(
                    d.outcome,
                    expected(t, action),
                    "{class} vol={vol} {t} {action:?}"
                );
            }
        }
    }
}

#[test]
fn option_defaults_alert_alert_drift() {
    let o = Policy::default_policy().options();
    assert_eq!(o.mode_drift, Treatment::Alert);
    assert_eq!(o.relocated_image_binaries, Treatment::Alert);
    assert_eq!(o.volume_files, Treatment::Drift);
    assert_eq!(o.failure_policy, driftguard_policy::FailurePolicy::Closed);
    let p = policy_with(vec![rule("r", Action::Block, &[])], Action::Ignore);
    assert_eq!(
        outcome(&p, VerdictClass::ModeDrift, false).outcome,
        Outcome::Alert
    );
    assert_eq!(
        outcome(&p, VerdictClass::RelocatedImageBinary, false).outcome,
        Outcome::Alert
    );
    assert_eq!(
        outcome(&p, VerdictClass::NewFile, true).outcome,
        Outcome::Deny
    );
}

#[test]
fn drift_classes_follow_the_rule_action_off_volumes() {
    use Treatment::*;
    let drift = [
        VerdictClass::ModifiedImageFile,
        VerdictClass::NewFile,
        VerdictClass::Fileless,
        VerdictClass::LoaderTrick,
    ];
    for (action, want) in [
        (Action::Block, Outcome::Deny),
        (Action::Alert, Outcome::Alert),
    ] {
        // Options set to allow must not leak into the plain drift classes.
        let p = with_options(action, Allow, Allow, Allow);
        for class in drift {
            let d = outcome(&p, class, false);
            assert_eq!((d.outcome, d.rule.as_str(), d.class), (want, "r", class));
        }
        // Fileless and loader tricks are never "on a volume" files: volumeFiles does not apply.
        for class in [VerdictClass::Fileless, VerdictClass::LoaderTrick] {
            assert_eq!(outcome(&p, class, true).outcome, want);
        }
    }
}

#[test]
fn allow_list_beats_option_treatments() {
    let mut p = with_options(
        Action::Block,
        Treatment::Block,
        Treatment::Block,
        Treatment::Block,
    );
    let edit = driftguard_policy::RuleEdit {
        add_allow: vec![AllowEntry::new("/x", None).expect("valid")],
        ..Default::default()
    };
    p.edit_rule("r", edit).expect("edit");
    for class in [VerdictClass::ModeDrift, VerdictClass::RelocatedImageBinary] {
        let d = outcome(&p, class, false);
        assert_eq!((d.outcome, d.allow_listed), (Outcome::Allow, true));
    }
}

#[test]
fn explain_reports_each_condition() {
    let p = policy_with(
        vec![
            rule(
                "a",
                Action::Block,
                &[
                    (Field::Namespace, Operator::Equals, "shop"),
                    (Field::PodLabels, Operator::Equals, "app=api"),
                ],
            ),
            rule(
                "b",
                Action::Alert,
                &[(Field::ImageName, Operator::Contains, "nginx")],
            ),
            rule("c", Action::Ignore, &[]),
        ],
        Action::Ignore,
    );
    let e = p.explain(&scope());
    assert_eq!(e.rules.len(), 2, "rules below the match are not evaluated");
    assert!(!e.matched_default);
    assert_eq!(e.matched().name, "b");
    let a = &e.rules[0];
    assert!(!a.matched);
    assert!(a.conditions[0].holds);
    assert!(!a.conditions[1].holds);
    assert_eq!(a.conditions[1].observed, "app=web,tier=frontend");
}

#[test]
fn direct_loader_runs_are_allowed_unless_the_option_says_otherwise() {
    for action in [Action::Block, Action::Alert] {
        let p = with_options(action, Treatment::Alert, Treatment::Alert, Treatment::Drift);
        let d = outcome(&p, VerdictClass::DirectLoader, false);
        assert_eq!(
            (d.outcome, d.class),
            (Outcome::Allow, VerdictClass::DirectLoader)
        );
    }
    for (treatment, action, want) in [
        (Treatment::Drift, Action::Block, Outcome::Deny),
        (Treatment::Drift, Action::Alert, Outcome::Alert),
        (Treatment::Block, Action::Alert, Outcome::Deny),
        (Treatment::Alert, Action::Block, Outcome::Alert),
    ] {
        let mut p = with_options(action, Treatment::Alert, Treatment::Alert, Treatment::Drift);
        let mut o = p.options();
        o.direct_loader = treatment;
        p.set_options(o);
        let d = outcome(&p, VerdictClass::DirectLoader, false);
        assert_eq!(d.outcome, want, "directLoader {treatment} under {action:?}");
    }
    // The option is read from the policy file and written back.
    let yaml = "apiVersion: driftguard.dev/v1\nkind: DriftPolicy\nmetadata:\n  name: t\n\
                spec:\n  directLoader: drift\n  defaultRule:\n    name: d\n    action: block\n";
    let p = Policy::from_yaml(yaml, "t.yaml").expect("valid");
    assert_eq!(p.options().direct_loader, Treatment::Drift);
    let d = p.decide(
        &scope(),
        &ExecFacts {
            class: VerdictClass::DirectLoader,
            path: "/lib64/ld-linux-x86-64.so.2",
            hash: None,
            on_volume: false,
        },
    );
    assert_eq!(d.outcome, Outcome::Deny);
    let bad = yaml.replace("directLoader: drift", "directLoader: sometimes");
    let err = Policy::from_yaml(&bad, "t.yaml").expect_err("invalid treatment");
    assert!(err.to_string().contains("t.yaml:6"), "{err}");
}
