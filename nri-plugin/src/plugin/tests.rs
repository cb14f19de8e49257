//! A scripted runtime on the other end of a socketpair drives the whole lifecycle.

use super::*;
use crate::hooks::PluginEvent;
use crate::policy::FixedPolicy;
use driftguard_policy::scope::{ANN_POD_NAME, ANN_RULE};
use driftguard_policy::Action;
use driftguard_proto::api::{self, PLUGIN_SERVICE};
use driftguard_proto::rpc::{code, serve, Handler};
use driftguard_proto::Status;
use prost::Message;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// The runtime side: serves RegisterPlugin on conn 2 and calls the plugin on conn 1.
struct FakeRuntime {
    registered: mpsc::UnboundedSender<api::RegisterPluginRequest>,
}

#[async_trait::async_trait]
impl Handler for FakeRuntime {
    async fn handle(
        &self,
        service: &str,
        method: &str,
        payload: bytes::Bytes,
    ) -> Result<Vec<u8>, Status> {
        assert_eq!(service, api::RUNTIME_SERVICE);
        assert_eq!(method, "RegisterPlugin");
        let req = api::RegisterPluginRequest::decode(payload)
            .map_err(|e| Status::internal(e.to_string()))?;
        let _ = self.registered.send(req);
        Ok(api::Empty {}.encode_to_vec())
    }
}

struct Recorder(Mutex<mpsc::UnboundedSender<PluginEvent>>);

impl PluginHooks for Recorder {
    fn on_event(&self, event: PluginEvent) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(event);
        }
    }
}

struct Harness {
    plugin: Arc<Plugin>,
    client: Client,
    registered: mpsc::UnboundedReceiver<api::RegisterPluginRequest>,
    events: mpsc::UnboundedReceiver<PluginEvent>,
    run: tokio::task::JoinHandle<Result<(), PluginError>>,
    _mux: Mux,
}

fn start() -> Harness {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let (events_tx, events) = mpsc::unbounded_channel();
    let config = PluginConfig {
        cluster: "lab".into(),
        listener_path: Some("/run/driftguard/notify.sock".into()),
        ..Default::default()
    };
    let policy = Arc::new(FixedPolicy {
        rule: "default".into(),
        action: Action::Block,
    });
    let plugin = Arc::new(Plugin::new(
        config,
        policy,
        Arc::new(Recorder(Mutex::new(events_tx))),
    ));
    let run = tokio::spawn({
        let plugin = plugin.clone();
        async move { plugin.run_on_stream(ours, "driftguard", "10").await }
    });
    let (mux, mut conns) = Mux::spawn(theirs, &[1, 2]);
    let runtime_service = conns.pop().expect("conn 2");
    let plugin_conn = conns.pop().expect("conn 1");
    let (reg_tx, registered) = mpsc::unbounded_channel();
    tokio::spawn(serve(
        runtime_service,
        Arc::new(FakeRuntime { registered: reg_tx }),
    ));
    Harness {
        plugin,
        client: Client::new(plugin_conn),
        registered,
        events,
        run,
        _mux: mux,
    }
}

async fn call<R: Message + Default>(
    client: &Client,
    method: &str,
    req: impl Message,
) -> Result<R, RpcError> {
    let reply = client
        .call(
            PLUGIN_SERVICE,
            method,
            req.encode_to_vec(),
            Duration::from_secs(2),
        )
        .await?;
    Ok(R::decode(reply).expect("reply decodes"))
}

fn pod(id: &str, name: &str) -> api::PodSandbox {
    api::PodSandbox {
        id: id.into(),
        name: name.into(),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    }
}

fn container(id: &str, pod_id: &str) -> api::Container {
    api::Container {
        id: id.into(),
        pod_sandbox_id: pod_id.into(),
        name: "app".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn registers_configures_synchronizes_in_chunks_and_adjusts() {
    let mut h = start();
    let reg = h.registered.recv().await.expect("registration");
    assert_eq!(
        (reg.plugin_name.as_str(), reg.plugin_idx.as_str()),
        ("driftguard", "10")
    );

    let configure = api::ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: "2.1.9+unknown".into(),
        ..Default::default()
    };
    let reply: api::ConfigureResponse = call(&h.client, "Configure", configure)
        .await
        .expect("configure");
    assert_eq!(reply.events, 0x408);
    assert!(matches!(
        h.events.recv().await,
        Some(PluginEvent::Configured(_))
    ));

    let first = api::SynchronizeRequest {
        pods: vec![pod("p1", "old")],
        containers: vec![],
        more: true,
    };
    let reply: api::SynchronizeResponse =
        call(&h.client, "Synchronize", first).await.expect("sync 1");
    assert!(reply.more && reply.update.is_empty());
    let last = api::SynchronizeRequest {
        pods: vec![],
        containers: vec![container("c0", "p1")],
        more: false,
    };
    let reply: api::SynchronizeResponse =
        call(&h.client, "Synchronize", last).await.expect("sync 2");
    assert!(!reply.more);
    match h.events.recv().await {
        Some(PluginEvent::Synchronized { pods, containers }) => {
            assert_eq!(pods.len(), 1);
            assert_eq!(containers[0].scope.pod_name, "old");
        }
        other => panic!("expected Synchronized, got {other:?}"),
    }

    let create = api::CreateContainerRequest {
        pod: Some(pod("p2", "new")),
        container: Some(container("c1", "p2")),
    };
    let reply: api::CreateContainerResponse = call(&h.client, "CreateContainer", create)
        .await
        .expect("create");
    let ann = reply.adjust.expect("adjust").annotations;
    assert_eq!(ann.get(ANN_POD_NAME).map(String::as_str), Some("new"));
    assert_eq!(ann.get(ANN_RULE).map(String::as_str), Some("default"));
    assert!(matches!(h.events.recv().await, Some(PluginEvent::Created(c)) if c.id == "c1"));

    let removed = api::StateChangeEvent {
        event: api::Event::RemoveContainer as i32,
        container: Some(container("c1", "p2")),
        ..Default::default()
    };
    let _: api::Empty = call(&h.client, "StateChange", removed)
        .await
        .expect("state change");
    assert!(
        matches!(h.events.recv().await, Some(PluginEvent::Removed { container_id }) if container_id == "c1")
    );

    // Dedicated v0.12 methods we do not need answer Unimplemented so the runtime falls back.
    let err = call::<api::Empty>(
        &h.client,
        "StartContainer",
        api::StartContainerRequest::default(),
    )
    .await
    .expect_err("unimplemented");
    assert!(
        matches!(err, RpcError::Status { ref status, .. } if status.code == code::UNIMPLEMENTED),
        "{err}"
    );

    h.plugin.cancel_token().cancel();
    h.run.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn nri_0_12_runtime_gets_the_larger_mask_bound_and_seccomp() {
    let mut h = start();
    h.registered.recv().await.expect("registration");
    let configure = api::ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: "v2.3.0".into(),
        nri_version: "v0.12.0".into(),
        ..Default::default()
    };
    let reply: api::ConfigureResponse = call(&h.client, "Configure", configure)
        .await
        .expect("configure");
    assert_eq!(reply.events, 0x408);
    let create = api::CreateContainerRequest {
        pod: Some(pod("p", "n")),
        container: Some(container("c9", "p")),
    };
    let reply: api::CreateContainerResponse = call(&h.client, "CreateContainer", create)
        .await
        .expect("create");
    let seccomp = reply
        .adjust
        .and_then(|a| a.linux)
        .and_then(|l| l.seccomp_policy)
        .expect("seccomp");
    assert_eq!(seccomp.listener_path, "/run/driftguard/notify.sock");
    assert_eq!(seccomp.listener_metadata, "c9");
}

#[tokio::test]
async fn runtime_hangup_ends_the_session_with_an_error_and_an_event() {
    let mut h = start();
    h.registered.recv().await.expect("registration");
    drop(h._mux);
    let end = h.run.await.expect("join");
    assert!(
        matches!(end, Err(PluginError::Trunk(MuxError::PeerClosed))),
        "{end:?}"
    );
}

#[tokio::test]
async fn external_mode_reconnects_after_the_runtime_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nri.sock");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let policy = Arc::new(FixedPolicy {
        rule: "r".into(),
        action: Action::Alert,
    });
    let plugin = Arc::new(Plugin::new(
        PluginConfig::default(),
        policy,
        Arc::new(Recorder(Mutex::new(events_tx))),
    ));
    let run = tokio::spawn({
        let (plugin, socket) = (plugin.clone(), socket.clone());
        async move { plugin.run_external(&socket, "driftguard", "10").await }
    });
    for round in 0..2 {
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let (stream, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
            .await
            .expect("plugin reconnects in time")
            .expect("accept");
        let (mux, mut conns) = Mux::spawn(stream, &[1, 2]);
        let runtime_service = conns.pop().expect("conn 2");
        let (reg_tx, mut registered) = mpsc::unbounded_channel();
        tokio::spawn(serve(
            runtime_service,
            Arc::new(FakeRuntime { registered: reg_tx }),
        ));
        registered.recv().await.expect("registered");
        if round == 1 {
            break;
        }
        // The runtime goes away: socket removed, connection dropped.
        drop(mux);
        drop(listener);
        std::fs::remove_file(&socket).expect("unlink");
        loop {
            match events.recv().await.expect("event") {
                PluginEvent::Disconnected { .. } => break,
                _ => continue,
            }
        }
    }
    plugin.cancel_token().cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("stops")
        .expect("join")
        .expect("ok");
}

#[test]
fn identities_are_checked_like_the_runtime_does() {
    assert!(check_identity("driftguard", "10").is_ok());
    assert!(check_identity("", "10").is_err());
    assert!(check_identity("drift guard", "10").is_err());
    assert!(check_identity("driftguard", "1").is_err());
    assert!(check_identity("driftguard", "ab").is_err());
}

/// Takes the cluster name from the runtime's plugin configuration; rejects "bad".
struct ClusterFromConfig;

impl ConfigureHook for ClusterFromConfig {
    fn configure(
        &self,
        runtime_config: &str,
        current: &PluginConfig,
    ) -> Result<PluginConfig, String> {
        if runtime_config == "bad" {
            return Err("line 1: not a configuration".into());
        }
        Ok(PluginConfig {
            cluster: runtime_config.to_string(),
            ..current.clone()
        })
    }
}

#[tokio::test]
async fn configure_hook_settings_reach_the_adjustment_and_its_errors_fail_configure() {
    let mut h = start();
    assert!(h.plugin.set_configure_hook(Arc::new(ClusterFromConfig)));
    h.registered.recv().await.expect("registration");
    let configure = |config: &str| api::ConfigureRequest {
        config: config.into(),
        runtime_name: "containerd".into(),
        runtime_version: "2.1.9".into(),
        ..Default::default()
    };
    let err = call::<api::ConfigureResponse>(&h.client, "Configure", configure("bad"))
        .await
        .expect_err("rejected");
    assert!(err.to_string().contains("not a configuration"), "{err}");

    let _: api::ConfigureResponse = call(&h.client, "Configure", configure("from-conf-d"))
        .await
        .expect("configure");
    let create = api::CreateContainerRequest {
        pod: Some(pod("p3", "n")),
        container: Some(container("c3", "p3")),
    };
    let reply: api::CreateContainerResponse = call(&h.client, "CreateContainer", create)
        .await
        .expect("create");
    let ann = reply.adjust.expect("adjust").annotations;
    assert_eq!(
        ann.get(driftguard_policy::scope::ANN_CLUSTER)
            .map(String::as_str),
        Some("from-conf-d")
    );
}
