use super::*;
use driftguard_proto::api::{LinuxContainer, SecurityProfile};

fn target() -> ListenerTarget {
    ListenerTarget {
        listener_path: "/run/driftguard/notify.sock".into(),
        listener_metadata: "ctr-1".into(),
    }
}

/// A reduced containerd RuntimeDefault policy as NRI v0.12 reports it.
fn runtime_default() -> LinuxSeccomp {
    let allow = LinuxSyscall {
        names: ["read", "write", "execve", "execveat", "clone"]
            .map(String::from)
            .to_vec(),
        action: "SCMP_ACT_ALLOW".into(),
        ..Default::default()
    };
    let clone3 = LinuxSyscall {
        names: vec!["clone3".into()],
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(OptionalUInt32 { value: 38 }),
        ..Default::default()
    };
    let personality = LinuxSyscall {
        names: vec!["personality".into()],
        action: "SCMP_ACT_ALLOW".into(),
        args: vec![LinuxSeccompArg {
            index: 0,
            value: 8,
            value_two: 0,
            op: "SCMP_CMP_EQ".into(),
        }],
        ..Default::default()
    };
    LinuxSeccomp {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno: Some(OptionalUInt32 { value: 1 }),
        architectures: vec!["SCMP_ARCH_X86_64".into(), "SCMP_ARCH_X86".into()],
        syscalls: vec![allow, clone3, personality],
        ..Default::default()
    }
}

fn container(policy: Option<LinuxSeccomp>, profile: Option<ProfileType>) -> Container {
    Container {
        id: "ctr-1".into(),
        linux: Some(LinuxContainer {
            seccomp_policy: policy,
            seccomp_profile: profile.map(|p| SecurityProfile {
                profile_type: p as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime(version: &str, nri: &str) -> RuntimeInfo {
    RuntimeInfo::from_configure("containerd", version, nri)
}

fn adjusted(plan: SeccompPlan) -> LinuxSeccomp {
    match plan {
        SeccompPlan::Adjust(policy) => *policy,
        other => panic!("expected an adjustment, got {other:?}"),
    }
}

#[test]
fn old_runtimes_use_the_wrapper() {
    let c = container(Some(runtime_default()), None);
    for version in ["1.7.24~ds1", "2.1.9+unknown"] {
        let plan = seccomp_adjustment(&c, &runtime(version, ""), &target()).expect("plan");
        assert!(
            matches!(plan, SeccompPlan::Wrapper(_)),
            "{version}: {plan:?}"
        );
    }
}

#[test]
fn merges_notify_into_the_reported_policy_on_nri_0_12() {
    let c = container(Some(runtime_default()), None);
    let policy =
        adjusted(seccomp_adjustment(&c, &runtime("v2.3.0", "v0.12.0"), &target()).expect("p"));
    assert_eq!(policy.default_action, "SCMP_ACT_ERRNO");
    assert_eq!(policy.listener_path, "/run/driftguard/notify.sock");
    assert_eq!(policy.listener_metadata, "ctr-1");
    assert_eq!(policy.architectures, runtime_default().architectures);
    let notify: Vec<_> = policy
        .syscalls
        .iter()
        .filter(|s| s.action == "SCMP_ACT_NOTIFY")
        .collect();
    assert_eq!(notify.len(), 1);
    assert_eq!(notify[0].names, vec!["execve", "execveat"]);
    let allow = &policy.syscalls[0];
    assert_eq!(allow.names, vec!["read", "write", "clone"]);
    let clone3 = policy
        .syscalls
        .iter()
        .find(|s| s.names == ["clone3"])
        .expect("clone3");
    assert_eq!(clone3.errno_ret, Some(OptionalUInt32 { value: 38 }));
    let personality = policy
        .syscalls
        .iter()
        .find(|s| s.names == ["personality"])
        .expect("p");
    assert_eq!(personality.args, runtime_default().syscalls[2].args);
}

#[test]
fn nri_0_12_without_a_policy_means_unconfined() {
    let c = container(None, None);
    let policy =
        adjusted(seccomp_adjustment(&c, &runtime("v2.3.1", "v0.12.0"), &target()).expect("p"));
    assert_eq!(policy.default_action, "SCMP_ACT_ALLOW");
    assert_eq!(policy.syscalls.len(), 1);
}

#[test]
fn containerd_2_2_adjusts_only_what_it_can_see_and_never_sends_errno() {
    let rt = runtime("v2.2.1", "");
    let default = container(None, Some(ProfileType::RuntimeDefault));
    let plan = seccomp_adjustment(&default, &rt, &target()).expect("plan");
    assert!(matches!(plan, SeccompPlan::Wrapper(_)), "{plan:?}");
    let unknown = container(None, None);
    let plan = seccomp_adjustment(&unknown, &runtime("v2.2.0", ""), &target()).expect("plan");
    assert!(matches!(plan, SeccompPlan::Wrapper(_)), "{plan:?}");

    let unconfined = container(None, Some(ProfileType::Unconfined));
    let policy = adjusted(seccomp_adjustment(&unconfined, &rt, &target()).expect("plan"));
    assert_eq!(policy.default_action, "SCMP_ACT_ALLOW");

    // Had the runtime reported a policy with errno rules, none would be sent.
    let reported = container(Some(runtime_default()), None);
    let policy = adjusted(seccomp_adjustment(&reported, &rt, &target()).expect("plan"));
    assert!(policy.syscalls.iter().all(|s| s.errno_ret.is_none()));
}

#[test]
fn a_policy_denying_exec_needs_no_supervision() {
    let mut deny = runtime_default();
    deny.syscalls[0].names.retain(|n| !n.starts_with("exec"));
    let c = container(Some(deny), None);
    let plan = seccomp_adjustment(&c, &runtime("v2.3.0", "v0.12.0"), &target()).expect("plan");
    assert_eq!(plan, SeccompPlan::ExecDenied);
}

#[test]
fn foreign_listener_is_an_error_naming_the_container() {
    let mut policy = runtime_default();
    policy.listener_path = "/run/other.sock".into();
    let c = container(Some(policy), None);
    let err =
        seccomp_adjustment(&c, &runtime("v2.3.0", "v0.12.0"), &target()).expect_err("foreign");
    assert!(err.to_string().contains("ctr-1"), "{err}");
}

#[test]
fn oci_round_trip_keeps_every_field() {
    let mut policy = runtime_default();
    policy.flags = vec!["SECCOMP_FILTER_FLAG_LOG".into()];
    policy.listener_path = "/l".into();
    policy.listener_metadata = "m".into();
    let oci = oci_from_nri(&policy);
    assert_eq!(oci["defaultErrnoRet"], 1);
    assert_eq!(oci["syscalls"][1]["errnoRet"], 38);
    assert_eq!(
        oci["syscalls"][2]["args"][0],
        json!({"index": 0, "value": 8, "op": "SCMP_CMP_EQ"})
    );
    assert_eq!(nri_from_oci(&oci).expect("back"), policy);
}

#[test]
fn runtime_application_replaces_the_section_without_default_errno() {
    let policy = runtime_default();
    let applied = runtime_applied_oci(&policy);
    assert!(applied.get("defaultErrnoRet").is_none());
    assert!(applied.get("listenerPath").is_none());
    assert_eq!(applied["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(
        applied["syscalls"][1],
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
    );
}

#[test]
fn conversion_errors_name_the_field() {
    let bad = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "execve"}]});
    assert_eq!(
        nri_from_oci(&bad).expect_err("bad"),
        "syscalls[0].names is not an array"
    );
    let bad = json!({"defaultAction": 3});
    assert_eq!(
        nri_from_oci(&bad).expect_err("bad"),
        "defaultAction is not a string"
    );
    let bad = json!({"syscalls": [{"names": [], "action": "a", "args": [{"index": -1}]}]});
    assert!(nri_from_oci(&bad)
        .expect_err("bad")
        .starts_with("syscalls[0].args[0]"));
}
