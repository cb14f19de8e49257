//! The answer to CreateContainer: identity annotations and, where the runtime supports it, the
//! seccomp policy with exec notification.
//!
//! Annotations added to every container: [`driftguard_policy::Scope::to_annotations`] (cluster,
//! namespace, pod name, pod uid, pod labels, container name, image name), the matched rule
//! (`driftguard.dev/rule`), whether it is monitored (`driftguard.dev/monitored`), and how exec
//! notification is injected ([`ANN_SECCOMP_PATH`]). The supervisor reads the identity from
//! runc's container state. `driftguard.dev/monitored` is information only: annotations in
//! `config.json` may come from the pod, so the runc wrapper never reads it as an opt-out.
//!
//! Invariant: pure and fast: no I/O, so it always fits the runtime's request deadline.

use std::collections::BTreeMap;

use driftguard_policy::scope::{ANN_MONITORED, ANN_RULE};
use driftguard_proto::api::{
    ContainerAdjustment, CreateContainerRequest, CreateContainerResponse, LinuxContainerAdjustment,
};
use driftguard_seccomp::oci::ListenerTarget;

use crate::hooks::ContainerInfo;
use crate::policy::ContainerPolicy;
use crate::runtime::RuntimeInfo;
use crate::scope::scope_for;
use crate::seccomp::{seccomp_adjustment, SeccompPlan};

/// Annotation: how exec notification reaches the supervisor (`nri`, `wrapper` or `none`).
pub const ANN_SECCOMP_PATH: &str = "driftguard.dev/seccomp-path";

/// Inputs that do not change per container.
#[derive(Debug, Clone)]
pub struct AdjustContext<'a> {
    /// Cluster name for the scope.
    pub cluster: &'a str,
    /// The supervisor's hand-off socket; `None` disables the native seccomp path.
    pub listener_path: Option<&'a str>,
    /// The connected runtime.
    pub runtime: &'a RuntimeInfo,
}

/// Builds the CreateContainer reply and the container's description for the hooks.
pub fn create_container(
    ctx: &AdjustContext<'_>,
    policy: &dyn ContainerPolicy,
    req: &CreateContainerRequest,
) -> (CreateContainerResponse, ContainerInfo) {
    let container = req.container.clone().unwrap_or_default();
    let mut info = describe(ctx.cluster, policy, req.pod.as_ref(), &container);
    let mut seccomp_policy = None;
    if info.monitored {
        let plan = match ctx.listener_path {
            Some(path) => {
                let target = ListenerTarget {
                    listener_path: path.to_string(),
                    listener_metadata: container.id.clone(),
                };
                seccomp_adjustment(&container, ctx.runtime, &target).unwrap_or_else(|err| {
                    tracing::warn!(container_id = %container.id, error = %err,
                        "no native seccomp adjustment; the runc wrapper decides");
                    SeccompPlan::Wrapper("the container's policy cannot be merged")
                })
            }
            None => SeccompPlan::Wrapper("no listener path configured"),
        };
        (info.seccomp_path, seccomp_policy) = match plan {
            SeccompPlan::Adjust(p) => ("nri", Some(*p)),
            SeccompPlan::Wrapper(why) => {
                tracing::debug!(container_id = %container.id, reason = why, "seccomp via wrapper");
                ("wrapper", None)
            }
            SeccompPlan::ExecDenied => ("none", None),
        };
    }
    let mut annotations = info.scope.to_annotations();
    annotations.insert(ANN_RULE.to_string(), info.rule.clone());
    annotations.insert(ANN_MONITORED.to_string(), info.monitored.to_string());
    annotations.insert(ANN_SECCOMP_PATH.to_string(), info.seccomp_path.to_string());
    let linux = seccomp_policy.map(|p| LinuxContainerAdjustment {
        seccomp_policy: Some(p),
        ..Default::default()
    });
    let adjust = ContainerAdjustment {
        annotations,
        linux,
        ..Default::default()
    };
    let response = CreateContainerResponse {
        adjust: Some(adjust),
        ..Default::default()
    };
    (response, info)
}

/// Describes a container (scope, rule) without adjusting it: used at synchronization too.
pub fn describe(
    cluster: &str,
    policy: &dyn ContainerPolicy,
    pod: Option<&driftguard_proto::api::PodSandbox>,
    container: &driftguard_proto::api::Container,
) -> ContainerInfo {
    let scope = scope_for(cluster, pod, container);
    let (rule, action) = policy.rule_for(&scope);
    let monitored = policy.monitored(&scope);
    ContainerInfo {
        id: container.id.clone(),
        pod_id: container.pod_sandbox_id.clone(),
        scope,
        rule,
        action,
        monitored,
        seccomp_path: if monitored { "wrapper" } else { "none" },
        annotations: container.annotations.clone(),
    }
}

/// The annotations of a response (test and log helper).
pub fn annotations_of(response: &CreateContainerResponse) -> BTreeMap<String, String> {
    response
        .adjust
        .as_ref()
        .map(|a| a.annotations.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FixedPolicy;
    use driftguard_policy::scope::{ANN_NAMESPACE, CRI_IMAGE_NAME};
    use driftguard_policy::Action;
    use driftguard_proto::api::{Container, PodSandbox};

    fn request() -> CreateContainerRequest {
        let pod = PodSandbox {
            name: "p".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let container = Container {
            id: "c1".into(),
            name: "app".into(),
            annotations: BTreeMap::from([(CRI_IMAGE_NAME.into(), "img:1".into())]),
            ..Default::default()
        };
        CreateContainerRequest {
            pod: Some(pod),
            container: Some(container),
        }
    }

    fn policy(action: Action) -> FixedPolicy {
        FixedPolicy {
            rule: "r1".into(),
            action,
        }
    }

    #[test]
    fn annotates_identity_and_uses_the_wrapper_on_old_runtimes() {
        let runtime = RuntimeInfo::from_configure("containerd", "2.1.9+unknown", "");
        let ctx = AdjustContext {
            cluster: "c",
            listener_path: Some("/run/dg.sock"),
            runtime: &runtime,
        };
        let (resp, info) = create_container(&ctx, &policy(Action::Block), &request());
        let ann = annotations_of(&resp);
        assert_eq!(ann.get(ANN_NAMESPACE).map(String::as_str), Some("ns"));
        assert_eq!(ann.get(ANN_RULE).map(String::as_str), Some("r1"));
        assert_eq!(ann.get(ANN_MONITORED).map(String::as_str), Some("true"));
        assert_eq!(
            ann.get(ANN_SECCOMP_PATH).map(String::as_str),
            Some("wrapper")
        );
        assert!(resp
            .adjust
            .as_ref()
            .and_then(|a| a.linux.as_ref())
            .is_none());
        assert_eq!(info.scope.image_name, "img:1");
    }

    #[test]
    fn sends_the_seccomp_policy_on_nri_0_12() {
        let runtime = RuntimeInfo::from_configure("containerd", "v2.3.0", "v0.12.0");
        let ctx = AdjustContext {
            cluster: "c",
            listener_path: Some("/run/dg.sock"),
            runtime: &runtime,
        };
        let (resp, info) = create_container(&ctx, &policy(Action::Alert), &request());
        let linux = resp
            .adjust
            .as_ref()
            .and_then(|a| a.linux.as_ref())
            .expect("linux");
        let seccomp = linux.seccomp_policy.as_ref().expect("seccomp");
        assert_eq!(seccomp.listener_metadata, "c1");
        assert_eq!(info.seccomp_path, "nri");
    }

    #[test]
    fn ignored_containers_are_not_monitored() {
        let runtime = RuntimeInfo::from_configure("containerd", "v2.3.0", "v0.12.0");
        let ctx = AdjustContext {
            cluster: "c",
            listener_path: Some("/run/dg.sock"),
            runtime: &runtime,
        };
        let (resp, _) = create_container(&ctx, &policy(Action::Ignore), &request());
        let ann = annotations_of(&resp);
        assert_eq!(ann.get(ANN_MONITORED).map(String::as_str), Some("false"));
        assert_eq!(ann.get(ANN_SECCOMP_PATH).map(String::as_str), Some("none"));
        assert!(resp
            .adjust
            .as_ref()
            .and_then(|a| a.linux.as_ref())
            .is_none());
    }
}
