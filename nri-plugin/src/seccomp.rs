//! The native seccomp path: a container's seccomp policy with exec notification merged in, as
//! an NRI `LinuxSeccomp` adjustment.
//!
//! The merge itself is [`driftguard_seccomp::oci::merge_seccomp`], a function over the OCI
//! `linux.seccomp` JSON shared with the runc wrapper. This module converts NRI's
//! `LinuxSeccomp` to that JSON ([`oci_from_nri`], the section the runtime had) and back
//! ([`nri_from_oci`]), decides from the runtime's capabilities whether and from what base to
//! build the adjustment ([`seccomp_adjustment`]), and reproduces how an NRI v0.10–v0.12 runtime
//! turns the adjustment into the spec it hands to runc ([`runtime_applied_oci`]: NRI's
//! `AdjustSeccompPolicy`, which replaces the whole section and drops `defaultErrnoRet`).
//!
//! Which base the merge starts from:
//! - NRI ≥ v0.12 (containerd ≥ 2.3): `LinuxContainer.seccomp_policy`; its absence means an
//!   unconfined or privileged container, which gets a fresh allow-all section;
//! - NRI v0.10/v0.11 (containerd 2.2.x): the policy is not reported; only an `UNCONFINED`
//!   `seccomp_profile` is known exactly (fresh section). For `RUNTIME_DEFAULT` and `LOCALHOST`
//!   profiles (or no profile information, 2.2.0) no adjustment is sent and the runc wrapper
//!   must inject; rules there never carry `errno_ret` (NRI v0.10/v0.11 crash on it);
//! - older NRI: no seccomp adjustment exists; the runc wrapper injects.
//!
//! Limits: on containerd 2.2.x a merged policy loses every `errno_ret` (such rules return the
//! default errno instead, e.g. EPERM for `clone3` where the default profile says ENOSYS);
//! `defaultErrnoRet` is dropped by every NRI runtime when it applies the adjustment.

use driftguard_proto::api::{
    security_profile::ProfileType, Container, LinuxSeccomp, LinuxSeccompArg, LinuxSyscall,
    OptionalUInt32,
};
use driftguard_seccomp::oci::{merge_seccomp, ListenerTarget, MergeError};
use serde_json::{json, Map, Value};

use crate::runtime::RuntimeInfo;

/// Why a seccomp adjustment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The merge refused the container's policy.
    #[error("container {container_id}: {source}")]
    Merge {
        /// Container id.
        container_id: String,
        /// The merge error.
        #[source]
        source: MergeError,
    },
    /// The merged section did not convert back to NRI.
    #[error("container {container_id}: merged seccomp section: {what}")]
    Convert {
        /// Container id.
        container_id: String,
        /// What is wrong.
        what: String,
    },
}

/// The outcome for one container.
#[derive(Debug, Clone, PartialEq)]
pub enum SeccompPlan {
    /// Send this policy as `LinuxContainerAdjustment.seccomp_policy`.
    Adjust(Box<LinuxSeccomp>),
    /// Send nothing; the runc wrapper injects. The reason says why.
    Wrapper(&'static str),
    /// The policy already denies both exec syscalls; nothing to supervise.
    ExecDenied,
}

/// Decides and builds the seccomp adjustment of `container`.
pub fn seccomp_adjustment(
    container: &Container,
    runtime: &RuntimeInfo,
    target: &ListenerTarget,
) -> Result<SeccompPlan, SeccompError> {
    if !runtime.applies_seccomp_adjustment() {
        return Ok(SeccompPlan::Wrapper(
            "the runtime's NRI has no seccomp adjustment",
        ));
    }
    let linux = container.linux.as_ref();
    let reported = linux.and_then(|l| l.seccomp_policy.as_ref());
    let base = match reported {
        Some(policy) => Some(oci_from_nri(policy)),
        None if runtime.reports_seccomp_policy() => None,
        None => {
            let profile = linux.and_then(|l| l.seccomp_profile.as_ref());
            match profile.map(|p| p.profile_type()) {
                Some(ProfileType::Unconfined) => None,
                Some(_) => {
                    return Ok(SeccompPlan::Wrapper(
                        "the runtime does not report the policy",
                    ))
                }
                None => {
                    return Ok(SeccompPlan::Wrapper(
                        "the runtime reports no seccomp profile",
                    ))
                }
            }
        }
    };
    let merged = merge_seccomp(base.as_ref(), target).map_err(|source| SeccompError::Merge {
        container_id: container.id.clone(),
        source,
    })?;
    if merged.notified.is_empty() {
        return Ok(SeccompPlan::ExecDenied);
    }
    let mut policy = nri_from_oci(&merged.seccomp).map_err(|what| SeccompError::Convert {
        container_id: container.id.clone(),
        what,
    })?;
    if !runtime.accepts_errno_ret() {
        policy.syscalls.iter_mut().for_each(|s| s.errno_ret = None);
    }
    Ok(SeccompPlan::Adjust(Box::new(policy)))
}

/// The OCI `linux.seccomp` section an NRI policy describes (every field kept).
pub fn oci_from_nri(policy: &LinuxSeccomp) -> Value {
    let mut section = Map::new();
    section.insert("defaultAction".into(), json!(policy.default_action));
    if let Some(errno) = &policy.default_errno {
        section.insert("defaultErrnoRet".into(), json!(errno.value));
    }
    insert_nonempty(&mut section, "architectures", json!(policy.architectures));
    insert_nonempty(&mut section, "flags", json!(policy.flags));
    insert_nonempty(&mut section, "listenerPath", json!(policy.listener_path));
    insert_nonempty(
        &mut section,
        "listenerMetadata",
        json!(policy.listener_metadata),
    );
    let syscalls: Vec<Value> = policy.syscalls.iter().map(syscall_to_oci).collect();
    insert_nonempty(&mut section, "syscalls", Value::Array(syscalls));
    Value::Object(section)
}

/// The `linux.seccomp` section an NRI runtime writes for a `seccomp_policy` adjustment
/// (NRI `AdjustSeccompPolicy` + `ToOCILinuxSyscalls`, v0.12): a full replacement with
/// `defaultAction`, `architectures`, `listenerPath`, `listenerMetadata`, `flags` and
/// `syscalls`; `defaultErrnoRet` is not carried over. Empty fields are omitted as Go's
/// `omitempty` does.
pub fn runtime_applied_oci(policy: &LinuxSeccomp) -> Value {
    let mut section = oci_from_nri(policy);
    if let Some(map) = section.as_object_mut() {
        map.remove("defaultErrnoRet");
    }
    section
}

fn syscall_to_oci(syscall: &LinuxSyscall) -> Value {
    let mut rule = Map::new();
    rule.insert("names".into(), json!(syscall.names));
    rule.insert("action".into(), json!(syscall.action));
    if let Some(errno) = &syscall.errno_ret {
        rule.insert("errnoRet".into(), json!(errno.value));
    }
    let args: Vec<Value> = syscall.args.iter().map(arg_to_oci).collect();
    insert_nonempty(&mut rule, "args", Value::Array(args));
    Value::Object(rule)
}

fn arg_to_oci(arg: &LinuxSeccompArg) -> Value {
    let mut out = Map::new();
    out.insert("index".into(), json!(arg.index));
    out.insert("value".into(), json!(arg.value));
    if arg.value_two != 0 {
        out.insert("valueTwo".into(), json!(arg.value_two));
    }
    out.insert("op".into(), json!(arg.op));
    Value::Object(out)
}

fn insert_nonempty(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if !empty {
        map.insert(key.into(), value);
    }
}

/// Converts an OCI `linux.seccomp` section to NRI's `LinuxSeccomp`.
///
/// Errors name the field that has the wrong type.
pub fn nri_from_oci(section: &Value) -> Result<LinuxSeccomp, String> {
    let obj = section.as_object().ok_or("the section is not an object")?;
    let syscalls = match obj.get("syscalls") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(rules)) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| syscall_from_oci(r).map_err(|e| format!("syscalls[{i}]{e}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("syscalls is not an array".into()),
    };
    Ok(LinuxSeccomp {
        default_action: str_field(obj, "defaultAction")?,
        default_errno: opt_u32(obj, "defaultErrnoRet")?.map(|value| OptionalUInt32 { value }),
        architectures: str_list(obj, "architectures")?,
        flags: str_list(obj, "flags")?,
        listener_path: str_field(obj, "listenerPath")?,
        listener_metadata: str_field(obj, "listenerMetadata")?,
        syscalls,
    })
}

fn syscall_from_oci(rule: &Value) -> Result<LinuxSyscall, String> {
    let obj = rule.as_object().ok_or(" is not an object")?;
    let args = match obj.get("args") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(args)) => args
            .iter()
            .enumerate()
            .map(|(i, a)| arg_from_oci(a).map_err(|e| format!(".args[{i}]{e}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(".args is not an array".into()),
    };
    Ok(LinuxSyscall {
        names: str_list(obj, "names").map_err(|e| format!(".{e}"))?,
        action: str_field(obj, "action").map_err(|e| format!(".{e}"))?,
        errno_ret: opt_u32(obj, "errnoRet")
            .map_err(|e| format!(".{e}"))?
            .map(|value| OptionalUInt32 { value }),
        args,
    })
}

fn arg_from_oci(arg: &Value) -> Result<LinuxSeccompArg, String> {
    let obj = arg.as_object().ok_or(" is not an object")?;
    let num = |key: &str| -> Result<u64, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_u64()
                .ok_or(format!(".{key} is not an unsigned integer")),
        }
    };
    let index = u32::try_from(num("index")?).map_err(|_| ".index is out of range".to_string())?;
    Ok(LinuxSeccompArg {
        index,
        value: num("value")?,
        value_two: num("valueTwo")?,
        op: str_field(obj, "op").map_err(|e| format!(".{e}"))?,
    })
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key} is not a string")),
    }
}

fn str_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(format!("{key} holds a non-string"))
            })
            .collect(),
        Some(_) => Err(format!("{key} is not an array")),
    }
}

fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or(format!("{key} is not a 32-bit unsigned integer")),
    }
}

#[cfg(test)]
mod tests;
