//! Merging the exec notify rules into an OCI spec's `linux.seccomp` section.
//!
//! Both injection paths use this module: the runc wrapper (which rewrites `config.json` before
//! runc reads it) and the NRI plugin on runtimes that accept a seccomp adjustment. The functions
//! work on [`serde_json::Value`] so that no field of the spec, known or unknown, is ever dropped
//! or reordered away: only `linux.seccomp` changes.
//!
//! What a merged section looks like:
//! - `execve` and `execveat` are removed from every other rule; a rule that names other syscalls
//!   too is split, the others keep their action, arguments and errno;
//! - one rule `{"names": [...], "action": "SCMP_ACT_NOTIFY"}` names the exec syscalls;
//! - `listenerPath` and `listenerMetadata` are set;
//! - `defaultAction`, `defaultErrnoRet`, `architectures` and every other field stay as they were;
//!   a container without a section gets `defaultAction: SCMP_ACT_ALLOW` and the native
//!   architecture family, so that a 32-bit `execve` cannot slip past the filter;
//! - `flags` is removed: runc 1.1.x refuses any seccomp flag ("seccomp flags are not yet
//!   supported by runc"), and none of the flags it would know changes exec supervision.
//!
//! Invariants: merging is idempotent (merging a merged section changes nothing); an exec
//! syscall the profile denies unconditionally (listed without arguments in an `SCMP_ACT_ERRNO`,
//! `SCMP_ACT_KILL*` or `SCMP_ACT_TRAP` rule, or not listed at all under a denying
//! `defaultAction`) keeps that denial and gets no notify rule, because the supervisor could only
//! weaken it; `SCMP_ACT_NOTIFY` is never the default action.
//!
//! Limits: a denying rule on an exec syscall that has argument conditions is kept as it is next
//! to the notify rule, and libseccomp decides how the two combine; no shipped profile has such a
//! rule. A profile that already sends other syscalls to a notify listener is refused: the
//! supervisor serves only exec syscalls and a filter has one listener.

use serde_json::{json, Map, Value};
use thiserror::Error;

/// The syscalls the supervisor answers.
pub const EXEC_SYSCALLS: [&str; 2] = ["execve", "execveat"];

/// The action that sends a syscall to the listener.
pub const ACT_NOTIFY: &str = "SCMP_ACT_NOTIFY";

const ACT_ALLOW: &str = "SCMP_ACT_ALLOW";

/// Actions that make a syscall fail (or kill the caller) without running it.
const DENYING_ACTIONS: [&str; 5] = [
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
];

/// Where the runtime must hand the notify fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTarget {
    /// Absolute path of the supervisor's hand-off socket (`listenerPath`).
    pub listener_path: String,
    /// Opaque string the runtime passes back in the hand-off (`listenerMetadata`); driftguard
    /// puts the container id here.
    pub listener_metadata: String,
}

/// A merged seccomp section and what it sends to the listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The new `linux.seccomp` value.
    pub seccomp: Value,
    /// The exec syscalls that now notify the listener; empty when the profile denies both
    /// unconditionally (then the section has no listener either).
    pub notified: Vec<&'static str>,
}

/// Why a seccomp section cannot be merged.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MergeError {
    /// A field has the wrong JSON type.
    #[error("linux.seccomp{field}: expected {expected}")]
    WrongType {
        /// JSON path below `linux.seccomp`, e.g. `.syscalls[3].names`.
        field: String,
        /// What the field must be.
        expected: &'static str,
    },
    /// The profile's default action is `SCMP_ACT_NOTIFY`, which runc refuses.
    #[error("linux.seccomp.defaultAction is SCMP_ACT_NOTIFY; runc refuses it and driftguard cannot serve it")]
    NotifyDefault,
    /// The profile already hands its notify fd to another listener.
    #[error("linux.seccomp.listenerPath is already {existing:?}; a filter has one listener and driftguard's is {ours:?}")]
    ForeignListener {
        /// The listener path in the profile.
        existing: String,
        /// driftguard's listener path.
        ours: String,
    },
    /// The profile sends syscalls other than exec to a listener.
    #[error("linux.seccomp.syscalls[{index}] sends {names:?} to a notify listener; driftguard serves only execve and execveat")]
    ForeignNotifyRule {
        /// Index of the rule in `syscalls`.
        index: usize,
        /// The non-exec syscalls it names.
        names: Vec<String>,
    },
    /// The listener path is not absolute (crun and runc require it).
    #[error("listener path {0:?} is not absolute")]
    RelativeListener(String),
    /// The document has no object where the section must go.
    #[error("config.json: {0} is not a JSON object")]
    NotAnObject(&'static str),
}

/// Merges the exec notify rules into `existing` (the value of `linux.seccomp`, or `None` when
/// the spec has no section) and returns the new section.
pub fn merge_seccomp(
    existing: Option<&Value>,
    target: &ListenerTarget,
) -> Result<Merged, MergeError> {
    if !target.listener_path.starts_with('/') {
        return Err(MergeError::RelativeListener(target.listener_path.clone()));
    }
    let mut section = match existing {
        None | Some(Value::Null) => new_section(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(wrong_type("", "an object")),
    };
    check_default_action(&section)?;
    check_listener(&section, target)?;

    let rules = take_rules(&mut section)?;
    let denied = unconditionally_denied(&section, &rules)?;
    let mut kept = Vec::with_capacity(rules.len() + 1);
    for (index, rule) in rules.into_iter().enumerate() {
        if let Some(rule) = strip_exec_names(rule, index, &denied)? {
            kept.push(rule);
        }
    }

    let notified: Vec<&'static str> = EXEC_SYSCALLS
        .iter()
        .copied()
        .filter(|name| !denied.contains(name))
        .collect();
    if notified.is_empty() {
        section.remove("listenerPath");
        section.remove("listenerMetadata");
    } else {
        kept.push(json!({ "names": notified, "action": ACT_NOTIFY }));
        section.insert(
            "listenerPath".into(),
            Value::String(target.listener_path.clone()),
        );
        section.insert(
            "listenerMetadata".into(),
            Value::String(target.listener_metadata.clone()),
        );
    }
    section.insert("syscalls".into(), Value::Array(kept));
    section.remove("flags");
    Ok(Merged {
        seccomp: Value::Object(section),
        notified,
    })
}

/// Merges the exec notify rules into a whole `config.json` document in place, creating
/// `linux` and `linux.seccomp` when they are missing. Returns the exec syscalls that notify.
pub fn merge_into_config(
    config: &mut Value,
    target: &ListenerTarget,
) -> Result<Vec<&'static str>, MergeError> {
    let root = config
        .as_object_mut()
        .ok_or(MergeError::NotAnObject("the document"))?;
    let linux = root
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()));
    let linux = linux
        .as_object_mut()
        .ok_or(MergeError::NotAnObject("linux"))?;
    let merged = merge_seccomp(linux.get("seccomp"), target)?;
    linux.insert("seccomp".into(), merged.seccomp);
    Ok(merged.notified)
}

/// The section for a container that had none: allow everything, on the native architecture
/// family.
fn new_section() -> Map<String, Value> {
    let mut section = Map::new();
    section.insert("defaultAction".into(), Value::String(ACT_ALLOW.into()));
    let arches = native_architectures();
    if !arches.is_empty() {
        section.insert("architectures".into(), json!(arches));
    }
    section
}

/// The libseccomp architecture names a process of this machine can use.
pub fn native_architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &[]
    }
}

fn wrong_type(field: &str, expected: &'static str) -> MergeError {
    MergeError::WrongType {
        field: field.to_string(),
        expected,
    }
}

fn default_action(section: &Map<String, Value>) -> Result<&str, MergeError> {
    match section.get("defaultAction") {
        None => Ok(ACT_ALLOW),
        Some(Value::String(action)) => Ok(action),
        Some(_) => Err(wrong_type(".defaultAction", "a string")),
    }
}

fn check_default_action(section: &Map<String, Value>) -> Result<(), MergeError> {
    if default_action(section)? == ACT_NOTIFY {
        return Err(MergeError::NotifyDefault);
    }
    Ok(())
}

fn check_listener(section: &Map<String, Value>, target: &ListenerTarget) -> Result<(), MergeError> {
    match section.get("listenerPath") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(path)) if path.is_empty() || *path == target.listener_path => Ok(()),
        Some(Value::String(path)) => Err(MergeError::ForeignListener {
            existing: path.clone(),
            ours: target.listener_path.clone(),
        }),
        Some(_) => Err(wrong_type(".listenerPath", "a string")),
    }
}

fn take_rules(section: &mut Map<String, Value>) -> Result<Vec<Value>, MergeError> {
    match section.remove("syscalls") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(rules)) => Ok(rules),
        Some(_) => Err(wrong_type(".syscalls", "an array")),
    }
}

fn rule_names(rule: &Value, index: usize) -> Result<Vec<String>, MergeError> {
    let field = || format!(".syscalls[{index}].names");
    let names = match rule.get("names") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(names)) => names,
        Some(_) => return Err(wrong_type(&field(), "an array of strings")),
    };
    names
        .iter()
        .map(|name| {
            name.as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong_type(&field(), "an array of strings"))
        })
        .collect()
}

fn rule_action(rule: &Value, index: usize) -> Result<&str, MergeError> {
    rule.get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| wrong_type(&format!(".syscalls[{index}].action"), "a string"))
}

fn has_conditions(rule: &Value) -> bool {
    rule.get("args")
        .and_then(Value::as_array)
        .is_some_and(|args| !args.is_empty())
}

/// The exec syscalls the profile denies whatever their arguments.
fn unconditionally_denied(
    section: &Map<String, Value>,
    rules: &[Value],
) -> Result<Vec<&'static str>, MergeError> {
    let default_denies = DENYING_ACTIONS.contains(&default_action(section)?);
    let mut denied = Vec::new();
    for syscall in EXEC_SYSCALLS {
        let mut listed = false;
        let mut denied_here = false;
        for (index, rule) in rules.iter().enumerate() {
            if !rule_names(rule, index)?.iter().any(|name| name == syscall) {
                continue;
            }
            // A notify rule for an exec syscall is an earlier merge: it stays supervised.
            let action = rule_action(rule, index)?;
            listed = true;
            denied_here |= DENYING_ACTIONS.contains(&action) && !has_conditions(rule);
        }
        if denied_here || (default_denies && !listed) {
            denied.push(syscall);
        }
    }
    Ok(denied)
}

/// Removes the exec syscalls from one rule; `None` when nothing is left of it.
///
/// Kept as they are: unconditional denials of an exec syscall (see [`unconditionally_denied`])
/// and denying rules with argument conditions.
fn strip_exec_names(
    mut rule: Value,
    index: usize,
    denied: &[&str],
) -> Result<Option<Value>, MergeError> {
    let names = rule_names(&rule, index)?;
    let action = rule_action(&rule, index)?.to_string();
    if action == ACT_NOTIFY {
        let foreign: Vec<String> = names
            .iter()
            .filter(|name| !EXEC_SYSCALLS.contains(&name.as_str()))
            .cloned()
            .collect();
        if !foreign.is_empty() {
            return Err(MergeError::ForeignNotifyRule {
                index,
                names: foreign,
            });
        }
        return Ok(None);
    }
    let keep_exec = DENYING_ACTIONS.contains(&action.as_str())
        && (has_conditions(&rule) || names.iter().any(|name| denied.contains(&name.as_str())));
    if keep_exec
        || !names
            .iter()
            .any(|name| EXEC_SYSCALLS.contains(&name.as_str()))
    {
        return Ok(Some(rule));
    }
    let others: Vec<Value> = names
        .into_iter()
        .filter(|name| !EXEC_SYSCALLS.contains(&name.as_str()))
        .map(Value::String)
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    if let Some(map) = rule.as_object_mut() {
        map.insert("names".into(), Value::Array(others));
    }
    Ok(Some(rule))
}

#[cfg(test)]
mod tests;
