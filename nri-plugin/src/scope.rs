//! Building a container's policy [`Scope`] from what NRI says about its pod and itself.
//!
//! Sources, in order of preference: the pod sandbox message (namespace, name, uid, labels), the
//! container message (name), the CRI annotations containerd sets on every container
//! (`io.kubernetes.cri.*`), and for the image name the `io.kubernetes.cri.image-name`
//! annotation, then the v0.12.2 `Container.image.name` field.
//!
//! Limits: a runtime other than containerd's CRI sets no `io.kubernetes.cri.image-name`; the
//! image name is then empty unless the runtime fills `Container.image`.

use driftguard_policy::scope::{
    CRI_CONTAINER_NAME, CRI_IMAGE_NAME, CRI_SANDBOX_NAME, CRI_SANDBOX_NAMESPACE, CRI_SANDBOX_UID,
};
use driftguard_policy::Scope;
use driftguard_proto::api::{Container, PodSandbox};

/// The scope of `container` in `pod` on cluster `cluster`.
pub fn scope_for(cluster: &str, pod: Option<&PodSandbox>, container: &Container) -> Scope {
    let ann = &container.annotations;
    let pick = |primary: Option<&String>, key: &str| -> String {
        primary
            .filter(|v| !v.is_empty())
            .or_else(|| ann.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let image_name = ann
        .get(CRI_IMAGE_NAME)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| container.image.as_ref().map(|i| i.name.clone()))
        .unwrap_or_default();
    Scope {
        cluster: cluster.to_string(),
        namespace: pick(pod.map(|p| &p.namespace), CRI_SANDBOX_NAMESPACE),
        pod_name: pick(pod.map(|p| &p.name), CRI_SANDBOX_NAME),
        pod_uid: pick(pod.map(|p| &p.uid), CRI_SANDBOX_UID),
        pod_labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
        container_name: pick(Some(&container.name), CRI_CONTAINER_NAME),
        image_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn takes_pod_fields_and_the_cri_image_annotation() {
        let pod = PodSandbox {
            name: "web-1".into(),
            namespace: "shop".into(),
            uid: "u-1".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ..Default::default()
        };
        let container = Container {
            name: "nginx".into(),
            annotations: BTreeMap::from([(CRI_IMAGE_NAME.into(), "reg/nginx:1".into())]),
            ..Default::default()
        };
        let scope = scope_for("prod", Some(&pod), &container);
        assert_eq!(scope.cluster, "prod");
        assert_eq!(
            (scope.namespace.as_str(), scope.pod_name.as_str()),
            ("shop", "web-1")
        );
        assert_eq!(scope.pod_uid, "u-1");
        assert_eq!(scope.pod_labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(scope.container_name, "nginx");
        assert_eq!(scope.image_name, "reg/nginx:1");
    }

    #[test]
    fn falls_back_to_cri_annotations_and_the_image_field() {
        let container = Container {
            annotations: BTreeMap::from([
                (CRI_SANDBOX_NAMESPACE.into(), "ns".into()),
                (CRI_SANDBOX_NAME.into(), "p".into()),
                (CRI_CONTAINER_NAME.into(), "c".into()),
            ]),
            image: Some(driftguard_proto::api::Image {
                name: "img:2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let scope = scope_for("", None, &container);
        assert_eq!(
            (scope.namespace.as_str(), scope.pod_name.as_str()),
            ("ns", "p")
        );
        assert_eq!(scope.container_name, "c");
        assert_eq!(scope.image_name, "img:2");
    }
}
