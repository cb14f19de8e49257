//! The identity of a container as policy sees it, and how it travels between components.
//!
//! The NRI plugin builds a [`Scope`] at container creation and writes it into the container's
//! OCI annotations (keys under [`ANNOTATION_PREFIX`]); the runc wrapper and the supervisor read it
//! back from `config.json` or from the runtime's container state. When the plugin did not see a
//! container, the CRI annotations that containerd always sets give the namespace, pod, container
//! and image names (but not the pod labels).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prefix of every annotation driftguard adds to a container.
pub const ANNOTATION_PREFIX: &str = "driftguard.dev/";
/// Annotation: the cluster name from the daemon's configuration.
pub const ANN_CLUSTER: &str = "driftguard.dev/cluster";
/// Annotation: the pod's namespace.
pub const ANN_NAMESPACE: &str = "driftguard.dev/namespace";
/// Annotation: the pod's name.
pub const ANN_POD_NAME: &str = "driftguard.dev/pod-name";
/// Annotation: the pod's UID.
pub const ANN_POD_UID: &str = "driftguard.dev/pod-uid";
/// Annotation: the pod's labels as a JSON object.
pub const ANN_POD_LABELS: &str = "driftguard.dev/pod-labels";
/// Annotation: the container's name.
pub const ANN_CONTAINER_NAME: &str = "driftguard.dev/container-name";
/// Annotation: the image name the container was created from.
pub const ANN_IMAGE_NAME: &str = "driftguard.dev/image-name";
/// Annotation: the rule that matched at creation (informational; decisions re-evaluate).
pub const ANN_RULE: &str = "driftguard.dev/rule";
/// Annotation: `"true"` when the NRI plugin asked for the container to be monitored.
/// Information only: it may come from the pod, so no component reads it as an opt-out.
pub const ANN_MONITORED: &str = "driftguard.dev/monitored";

/// CRI annotation (set by containerd) with the pod's namespace.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// CRI annotation with the pod's name.
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// CRI annotation with the pod's UID.
pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// CRI annotation with the container's name.
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// CRI annotation with the container's image name.
pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// CRI annotation: `sandbox` for the pause container, `container` otherwise.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Who a container is: the fields a rule's conditions can test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Cluster name from the daemon's configuration.
    pub cluster: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID (identity only; rules do not test it).
    pub pod_uid: String,
    /// Pod labels.
    pub pod_labels: BTreeMap<String, String>,
    /// Container name within the pod.
    pub container_name: String,
    /// Image name as the container was created from (`io.kubernetes.cri.image-name`).
    pub image_name: String,
}

impl Scope {
    /// Encodes the scope as driftguard annotations.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let labels = serde_json::to_string(&self.pod_labels).unwrap_or_else(|_| "{}".into());
        BTreeMap::from([
            (ANN_CLUSTER.to_string(), self.cluster.clone()),
            (ANN_NAMESPACE.to_string(), self.namespace.clone()),
            (ANN_POD_NAME.to_string(), self.pod_name.clone()),
            (ANN_POD_UID.to_string(), self.pod_uid.clone()),
            (ANN_POD_LABELS.to_string(), labels),
            (ANN_CONTAINER_NAME.to_string(), self.container_name.clone()),
            (ANN_IMAGE_NAME.to_string(), self.image_name.clone()),
        ])
    }

    /// Rebuilds a scope from a container's annotations.
    ///
    /// The CRI annotations, which containerd itself writes, win for the fields they carry
    /// (namespace, pod, container, image): a pod cannot claim another namespace through an
    /// annotation of driftguard's name even where the runtime passes pod annotations on.
    /// driftguard's annotations fill what CRI lacks (cluster, pod labels) or where the runtime
    /// is not CRI. Returns the scope and whether driftguard's annotations were present (a
    /// container the NRI plugin saw).
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (Scope, bool) {
        let get = |ours: &str, cri: Option<&str>| {
            cri.and_then(|k| annotations.get(k))
                .or_else(|| annotations.get(ours))
                .cloned()
                .unwrap_or_default()
        };
        let labels = annotations
            .get(ANN_POD_LABELS)
            .and_then(|raw| serde_json::from_str(raw).ok())
            .unwrap_or_default();
        let scope = Scope {
            cluster: get(ANN_CLUSTER, None),
            namespace: get(ANN_NAMESPACE, Some(CRI_SANDBOX_NAMESPACE)),
            pod_name: get(ANN_POD_NAME, Some(CRI_SANDBOX_NAME)),
            pod_uid: get(ANN_POD_UID, Some(CRI_SANDBOX_UID)),
            pod_labels: labels,
            container_name: get(ANN_CONTAINER_NAME, Some(CRI_CONTAINER_NAME)),
            image_name: get(ANN_IMAGE_NAME, Some(CRI_IMAGE_NAME)),
        };
        (scope, annotations.contains_key(ANN_NAMESPACE))
    }
}

/// What a rule does with drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deny the exec and raise a high-severity alert.
    Block,
    /// Allow the exec and raise a high-severity alert.
    Alert,
    /// Allow the exec silently.
    Ignore,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip() {
        let scope = Scope {
            cluster: "prod".into(),
            namespace: "shop".into(),
            pod_name: "web-1".into(),
            pod_uid: "u-1".into(),
            pod_labels: BTreeMap::from([("app".into(), "web".into())]),
            container_name: "nginx".into(),
            image_name: "registry.local/nginx:1".into(),
        };
        let (back, ours) = Scope::from_annotations(&scope.to_annotations());
        assert!(ours);
        assert_eq!(back, scope);
    }

    #[test]
    fn cri_annotations_win_over_ours_for_identity() {
        let mut ann = Scope {
            namespace: "kube-system".into(),
            pod_name: "spoofed".into(),
            ..Scope::default()
        }
        .to_annotations();
        ann.insert(CRI_SANDBOX_NAMESPACE.into(), "tenant".into());
        ann.insert(CRI_SANDBOX_NAME.into(), "real".into());
        let (scope, _) = Scope::from_annotations(&ann);
        assert_eq!(scope.namespace, "tenant");
        assert_eq!(scope.pod_name, "real");
    }

    #[test]
    fn cri_annotations_fill_in_when_ours_are_missing() {
        let ann = BTreeMap::from([
            (CRI_SANDBOX_NAMESPACE.to_string(), "default".to_string()),
            (CRI_SANDBOX_NAME.to_string(), "p".to_string()),
            (CRI_CONTAINER_NAME.to_string(), "c".to_string()),
            (CRI_IMAGE_NAME.to_string(), "img:1".to_string()),
        ]);
        let (scope, ours) = Scope::from_annotations(&ann);
        assert!(!ours);
        assert_eq!(scope.namespace, "default");
        assert_eq!(scope.pod_name, "p");
        assert_eq!(scope.container_name, "c");
        assert_eq!(scope.image_name, "img:1");
        assert!(scope.pod_labels.is_empty());
    }
}
