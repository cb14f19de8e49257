//! The two NRI services, typed: [`PluginService`] (implemented by a plugin, served with
//! [`PluginServer`]) and [`RuntimeClient`] (calls into the runtime).
//!
//! Every plugin method has a default body answering `Unimplemented` (code 12): from NRI v0.12
//! the runtime calls the dedicated event methods first and falls back to `StateChange` only on
//! that code, so a plugin implementing `state_change` alone keeps working there. A request for
//! a method or service this crate does not know is answered `Unimplemented` as well.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::api::{self, PLUGIN_SERVICE, RUNTIME_SERVICE};
use crate::rpc::{Client, Handler, RpcError, Status};

macro_rules! plugin_service {
    ($( $(#[$doc:meta])* $name:literal => $func:ident($req:ty) -> $resp:ty; )*) => {
        /// The NRI plugin service. Implement the methods for the events you subscribe to.
        #[async_trait::async_trait]
        pub trait PluginService: Send + Sync + 'static {
            $(
                $(#[$doc])*
                async fn $func(&self, req: $req) -> Result<$resp, Status> {
                    let _ = req;
                    Err(Status::unimplemented(concat!("plugin does not implement ", $name)))
                }
            )*
        }

        async fn dispatch<T: PluginService + ?Sized>(
            svc: &T,
            method: &str,
            payload: Bytes,
        ) -> Result<Vec<u8>, Status> {
            match method {
                $(
                    $name => {
                        let req = <$req>::decode(payload).map_err(|e| {
                            Status::invalid_argument(format!("decoding {} request: {e}", $name))
                        })?;
                        Ok(svc.$func(req).await?.encode_to_vec())
                    }
                )*
                other => Err(Status::unimplemented(format!("unknown method {PLUGIN_SERVICE}/{other}"))),
            }
        }
    };
}

plugin_service! {
    /// The runtime hands over configuration; the reply subscribes to events.
    "Configure" => configure(api::ConfigureRequest) -> api::ConfigureResponse;
    /// Existing pods and containers, possibly in several chunks (`more`).
    "Synchronize" => synchronize(api::SynchronizeRequest) -> api::SynchronizeResponse;
    /// The runtime is shutting NRI down.
    "Shutdown" => shutdown(api::Empty) -> api::Empty;
    /// A pod sandbox is being started (NRI v0.12+).
    "RunPodSandbox" => run_pod_sandbox(api::RunPodSandboxRequest) -> api::RunPodSandboxResponse;
    /// A pod's resources are being updated (NRI v0.10+).
    "UpdatePodSandbox" =>
        update_pod_sandbox(api::UpdatePodSandboxRequest) -> api::UpdatePodSandboxResponse;
    /// A pod's resources were updated (NRI v0.12+).
    "PostUpdatePodSandbox" => post_update_pod_sandbox(api::PostUpdatePodSandboxRequest)
        -> api::PostUpdatePodSandboxResponse;
    /// A pod sandbox is stopping (NRI v0.12+).
    "StopPodSandbox" =>
        stop_pod_sandbox(api::StopPodSandboxRequest) -> api::StopPodSandboxResponse;
    /// A pod sandbox was removed (NRI v0.12+).
    "RemovePodSandbox" =>
        remove_pod_sandbox(api::RemovePodSandboxRequest) -> api::RemovePodSandboxResponse;
    /// A container is being created; the reply adjusts it.
    "CreateContainer" =>
        create_container(api::CreateContainerRequest) -> api::CreateContainerResponse;
    /// A container was created (NRI v0.12+).
    "PostCreateContainer" => post_create_container(api::PostCreateContainerRequest)
        -> api::PostCreateContainerResponse;
    /// A container is starting (NRI v0.12+).
    "StartContainer" =>
        start_container(api::StartContainerRequest) -> api::StartContainerResponse;
    /// A container started (NRI v0.12+).
    "PostStartContainer" => post_start_container(api::PostStartContainerRequest)
        -> api::PostStartContainerResponse;
    /// A container's resources are being updated.
    "UpdateContainer" =>
        update_container(api::UpdateContainerRequest) -> api::UpdateContainerResponse;
    /// A container's resources were updated (NRI v0.12+).
    "PostUpdateContainer" => post_update_container(api::PostUpdateContainerRequest)
        -> api::PostUpdateContainerResponse;
    /// A container is stopping.
    "StopContainer" => stop_container(api::StopContainerRequest) -> api::StopContainerResponse;
    /// A container was removed (NRI v0.12+).
    "RemoveContainer" =>
        remove_container(api::RemoveContainerRequest) -> api::RemoveContainerResponse;
    /// Any event without a dedicated method on this runtime.
    "StateChange" => state_change(api::StateChangeEvent) -> api::Empty;
    /// Validation of the combined adjustment of all plugins (NRI v0.10+).
    "ValidateContainerAdjustment" => validate_container_adjustment(
        api::ValidateContainerAdjustmentRequest) -> api::ValidateContainerAdjustmentResponse;
}

/// Serves a [`PluginService`] as a ttrpc [`Handler`].
pub struct PluginServer<T: ?Sized>(pub Arc<T>);

#[async_trait::async_trait]
impl<T: PluginService + ?Sized> Handler for PluginServer<T> {
    async fn handle(&self, service: &str, method: &str, payload: Bytes) -> Result<Vec<u8>, Status> {
        if service != PLUGIN_SERVICE {
            return Err(Status::unimplemented(format!("unknown service {service}")));
        }
        dispatch(&*self.0, method, payload).await
    }
}

/// Client of the runtime service.
#[derive(Debug, Clone)]
pub struct RuntimeClient {
    client: Client,
}

impl RuntimeClient {
    /// Wraps a ttrpc client on the runtime-service connection.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Registers the plugin with the runtime.
    pub async fn register_plugin(
        &self,
        req: &api::RegisterPluginRequest,
        timeout: Duration,
    ) -> Result<(), RpcError> {
        let payload = req.encode_to_vec();
        self.client
            .call(RUNTIME_SERVICE, "RegisterPlugin", payload, timeout)
            .await?;
        Ok(())
    }

    /// Asks the runtime to update or evict containers outside of an event.
    pub async fn update_containers(
        &self,
        req: &api::UpdateContainersRequest,
        timeout: Duration,
    ) -> Result<api::UpdateContainersResponse, RpcError> {
        let payload = req.encode_to_vec();
        let reply = self
            .client
            .call(RUNTIME_SERVICE, "UpdateContainers", payload, timeout)
            .await?;
        api::UpdateContainersResponse::decode(reply).map_err(|source| RpcError::Decode {
            what: "UpdateContainers reply",
            stream_id: 0,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::code;

    struct OnlyConfigure;

    #[async_trait::async_trait]
    impl PluginService for OnlyConfigure {
        async fn configure(
            &self,
            req: api::ConfigureRequest,
        ) -> Result<api::ConfigureResponse, Status> {
            assert_eq!(req.runtime_name, "containerd");
            Ok(api::ConfigureResponse { events: 0x8 })
        }
    }

    #[tokio::test]
    async fn dispatches_known_methods_and_refuses_others_with_unimplemented() {
        let server = PluginServer(Arc::new(OnlyConfigure));
        let req = api::ConfigureRequest {
            runtime_name: "containerd".into(),
            ..Default::default()
        };
        let reply = server
            .handle(
                PLUGIN_SERVICE,
                "Configure",
                Bytes::from(req.encode_to_vec()),
            )
            .await
            .expect("configure");
        assert_eq!(
            api::ConfigureResponse::decode(&reply[..])
                .expect("decode")
                .events,
            0x8
        );

        for method in ["RunPodSandbox", "StateChange", "NoSuchMethod"] {
            let err = server
                .handle(PLUGIN_SERVICE, method, Bytes::new())
                .await
                .expect_err(method);
            assert_eq!(err.code, code::UNIMPLEMENTED, "{method}");
        }
        let err = server
            .handle("other.Service", "Configure", Bytes::new())
            .await
            .expect_err("svc");
        assert_eq!(err.code, code::UNIMPLEMENTED);
    }

    #[tokio::test]
    async fn undecodable_payload_is_invalid_argument() {
        let server = PluginServer(Arc::new(OnlyConfigure));
        let err = server
            .handle(
                PLUGIN_SERVICE,
                "Configure",
                Bytes::from_static(&[0xff, 0xff, 0xff]),
            )
            .await
            .expect_err("garbage");
        assert_eq!(err.code, code::INVALID_ARGUMENT);
        assert!(err.message.contains("Configure"));
    }
}
