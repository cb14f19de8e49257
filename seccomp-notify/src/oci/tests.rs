use serde_json::json;

use super::*;

fn target() -> ListenerTarget {
    ListenerTarget {
        listener_path: "/run/driftguard/supervisor.sock".into(),
        listener_metadata: "ctr-1".into(),
    }
}

/// containerd's RuntimeDefault profile for amd64 and the default capability set, as containerd
/// 2.x writes it into config.json (rebuilt from `contrib/seccomp/seccomp_default.go`).
fn runtime_default() -> Value {
    let text = include_str!("../../tests/fixtures/containerd-runtime-default.json");
    serde_json::from_str(text).expect("fixture parses")
}

fn rules_naming<'a>(section: &'a Value, name: &str) -> Vec<&'a Value> {
    section["syscalls"]
        .as_array()
        .expect("syscalls")
        .iter()
        .filter(|rule| {
            rule["names"]
                .as_array()
                .expect("names")
                .iter()
                .any(|n| n == name)
        })
        .collect()
}

fn assert_notifies_exec(section: &Value) {
    for name in EXEC_SYSCALLS {
        let rules = rules_naming(section, name);
        assert_eq!(
            rules.len(),
            1,
            "{name} must be in exactly one rule: {rules:?}"
        );
        assert_eq!(rules[0]["action"], ACT_NOTIFY);
    }
    assert_eq!(section["listenerPath"], "/run/driftguard/supervisor.sock");
    assert_eq!(section["listenerMetadata"], "ctr-1");
    assert_ne!(section["defaultAction"], ACT_NOTIFY);
    assert!(section.get("flags").is_none());
}

#[test]
fn runtime_default_profile_keeps_everything_but_exec() {
    let before = runtime_default();
    let merged = merge_seccomp(Some(&before), &target()).expect("merge");
    let after = &merged.seccomp;
    assert_eq!(merged.notified, vec!["execve", "execveat"]);
    assert_notifies_exec(after);
    assert_eq!(after["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(after["defaultErrnoRet"], 1);
    assert_eq!(after["architectures"], before["architectures"]);

    // The big allow rule lost exactly the two exec names; every other rule is untouched.
    let big_before = before["syscalls"][0]["names"]
        .as_array()
        .expect("names")
        .len();
    let big_after = after["syscalls"][0]["names"]
        .as_array()
        .expect("names")
        .len();
    assert_eq!(big_after, big_before - 2);
    assert_eq!(after["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
    let before_rest = &before["syscalls"].as_array().expect("rules")[1..];
    let after_rules = after["syscalls"].as_array().expect("rules");
    assert_eq!(&after_rules[1..after_rules.len() - 1], before_rest);
    assert_eq!(rules_naming(after, "clone3")[0]["errnoRet"], 38);
}

#[test]
fn no_section_gets_an_allow_default_and_native_architectures() {
    for existing in [None, Some(&Value::Null)] {
        let merged = merge_seccomp(existing, &target()).expect("merge");
        assert_notifies_exec(&merged.seccomp);
        assert_eq!(merged.seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                merged.seccomp["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
        }
        assert_eq!(
            merged.seccomp["syscalls"].as_array().expect("rules").len(),
            1
        );
    }
}

#[test]
fn multi_syscall_allow_rule_is_split_and_keeps_its_args() {
    let existing = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "futureField": {"kept": true},
        "syscalls": [
            {"names": ["read", "execve", "write"], "action": "SCMP_ACT_LOG",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GE"}], "comment": "x"},
            {"names": ["execveat"], "action": "SCMP_ACT_ALLOW"}
        ]
    });
    let merged = merge_seccomp(Some(&existing), &target()).expect("merge");
    let s = &merged.seccomp;
    assert_notifies_exec(s);
    assert_eq!(s["futureField"], json!({"kept": true}));
    let rules = s["syscalls"].as_array().expect("rules");
    assert_eq!(
        rules.len(),
        2,
        "the execveat-only rule disappears: {rules:?}"
    );
    assert_eq!(
        rules[0],
        json!({"names": ["read", "write"], "action": "SCMP_ACT_LOG",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GE"}], "comment": "x"})
    );
}

#[test]
fn unconditional_errno_for_execve_is_kept_and_only_execveat_notifies() {
    let existing = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["execve", "ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let merged = merge_seccomp(Some(&existing), &target()).expect("merge");
    assert_eq!(merged.notified, vec!["execveat"]);
    let s = &merged.seccomp;
    assert_eq!(rules_naming(s, "execve")[0]["action"], "SCMP_ACT_ERRNO");
    assert_eq!(rules_naming(s, "execve")[0]["errnoRet"], 1);
    assert_eq!(rules_naming(s, "execveat")[0]["action"], ACT_NOTIFY);
    assert_eq!(s["listenerPath"], "/run/driftguard/supervisor.sock");
}

#[test]
fn denying_default_without_exec_rules_needs_no_listener() {
    let existing = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
    ]});
    let merged = merge_seccomp(Some(&existing), &target()).expect("merge");
    assert!(merged.notified.is_empty());
    assert!(merged.seccomp.get("listenerPath").is_none());
    assert!(rules_naming(&merged.seccomp, "execve").is_empty());
}

#[test]
fn conditional_errno_on_exec_is_kept_next_to_notify() {
    let cond = json!({"names": ["execveat"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 4, "value": 4096, "valueTwo": 4096,
                                "op": "SCMP_CMP_MASKED_EQ"}]});
    let existing = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [cond.clone()]});
    let merged = merge_seccomp(Some(&existing), &target()).expect("merge");
    assert_eq!(merged.notified, vec!["execve", "execveat"]);
    assert_eq!(merged.seccomp["syscalls"][0], cond);
}

#[test]
fn merging_twice_changes_nothing() {
    let once = merge_seccomp(Some(&runtime_default()), &target()).expect("merge");
    let twice = merge_seccomp(Some(&once.seccomp), &target()).expect("merge again");
    assert_eq!(once, twice);
}

#[test]
fn refusals_say_what_is_wrong() {
    let notify_default = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    assert_eq!(
        merge_seccomp(Some(&notify_default), &target()),
        Err(MergeError::NotifyDefault)
    );

    let foreign = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/other.sock"});
    let err = merge_seccomp(Some(&foreign), &target()).expect_err("foreign listener");
    assert!(err.to_string().contains("/run/other.sock"), "{err}");

    let other_notify = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "execve"], "action": "SCMP_ACT_NOTIFY"}]});
    let err = merge_seccomp(Some(&other_notify), &target()).expect_err("mkdir notify");
    assert_eq!(
        err,
        MergeError::ForeignNotifyRule {
            index: 0,
            names: vec!["mkdir".into()]
        }
    );

    let bad_names = json!({"syscalls": [{"names": "execve", "action": "SCMP_ACT_ALLOW"}]});
    let err = merge_seccomp(Some(&bad_names), &target()).expect_err("names not an array");
    assert_eq!(
        err.to_string(),
        "linux.seccomp.syscalls[0].names: expected an array of strings"
    );

    let relative = ListenerTarget {
        listener_path: "x.sock".into(),
        ..target()
    };
    assert!(matches!(
        merge_seccomp(None, &relative),
        Err(MergeError::RelativeListener(_))
    ));
}

#[test]
fn whole_config_keeps_unknown_fields_and_creates_linux() {
    let mut config = json!({"ociVersion": "1.0.2-dev", "process": {"args": ["sh"]},
                            "x-vendor": [1, 2, 3]});
    let notified = merge_into_config(&mut config, &target()).expect("merge");
    assert_eq!(notified.len(), 2);
    assert_eq!(config["x-vendor"], json!([1, 2, 3]));
    assert_eq!(config["process"]["args"], json!(["sh"]));
    assert_notifies_exec(&config["linux"]["seccomp"]);

    let mut with_linux = json!({"linux": {"namespaces": [{"type": "pid"}],
                                          "seccomp": runtime_default()}});
    merge_into_config(&mut with_linux, &target()).expect("merge");
    assert_eq!(with_linux["linux"]["namespaces"], json!([{"type": "pid"}]));
    assert_eq!(
        with_linux["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ERRNO"
    );

    let mut not_object = json!({"linux": 3});
    assert_eq!(
        merge_into_config(&mut not_object, &target()),
        Err(MergeError::NotAnObject("linux"))
    );
}
