//! The plugin service of one connection: answers Configure, Synchronize and the subscribed
//! events, and queues what it learns for the hooks.
//!
//! One [`Session`] exists per connection, because what the runtime can do is learned at each
//! Configure. Subscribed events: CreateContainer and RemoveContainer ([`EVENTS`]); both are
//! answered through their dedicated NRI v0.12 methods and through `StateChange` (older
//! runtimes, and v0.12 runtimes falling back on `Unimplemented`).
//!
//! Configure runs the plugin's [`ConfigureHook`](crate::plugin::ConfigureHook), when one is
//! set, on the runtime's plugin configuration; its settings (cluster, listener path) then
//! replace the plugin's own for this connection.
//!
//! Invariant: every handler except Configure answers from memory; hooks run on their own task.

use std::sync::{Arc, Mutex};

use driftguard_proto::api::{self, Event};
use driftguard_proto::service::PluginService;
use driftguard_proto::Status;

use crate::adjust::{create_container, describe, AdjustContext};
use crate::hooks::{EventQueue, PluginEvent, PodInfo};
use crate::plugin::{PluginConfig, Shared};
use crate::runtime::RuntimeInfo;

/// The events the plugin subscribes to.
pub const EVENTS: [Event; 2] = [Event::CreateContainer, Event::RemoveContainer];

/// Plugin service state for one connection.
pub(crate) struct Session {
    shared: Arc<Shared>,
    queue: EventQueue,
    runtime: Mutex<Option<RuntimeInfo>>,
    /// Settings from the configure hook; the plugin's own until then.
    config: Mutex<Option<PluginConfig>>,
    /// Chunks of a split Synchronize, gathered until the last one.
    pending_sync: Mutex<(Vec<api::PodSandbox>, Vec<api::Container>)>,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, queue: EventQueue) -> Session {
        Session {
            shared,
            queue,
            runtime: Mutex::new(None),
            config: Mutex::new(None),
            pending_sync: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    fn runtime(&self) -> RuntimeInfo {
        let guard = self.runtime.lock().ok().and_then(|g| g.clone());
        // A CreateContainer before Configure cannot happen; assume the oldest API if it does.
        guard.unwrap_or_else(|| RuntimeInfo::from_configure("", "", ""))
    }

    /// The settings in force on this connection.
    fn config(&self) -> PluginConfig {
        let guard = self.config.lock().ok().and_then(|g| g.clone());
        guard.unwrap_or_else(|| self.shared.config.clone())
    }

    /// Runs the configure hook, if any, on the runtime's plugin configuration.
    async fn apply_runtime_config(&self, runtime_config: String) -> Result<(), Status> {
        let Some(hook) = self.shared.on_configure.get().cloned() else {
            if !runtime_config.is_empty() {
                tracing::debug!(
                    bytes = runtime_config.len(),
                    "runtime passed plugin config; not used"
                );
            }
            return Ok(());
        };
        let base = self.shared.config.clone();
        let result = tokio::task::spawn_blocking(move || hook.configure(&runtime_config, &base))
            .await
            .map_err(|_| Status::internal("the configure hook panicked"))?;
        let config = result.map_err(|msg| {
            tracing::error!(error = %msg, "plugin configuration rejected");
            Status::invalid_argument(msg)
        })?;
        if let Ok(mut guard) = self.config.lock() {
            *guard = Some(config);
        }
        Ok(())
    }

    fn synchronized(&self, pods: Vec<api::PodSandbox>, containers: Vec<api::Container>) {
        let config = self.config();
        let cluster = &config.cluster;
        let policy = &*self.shared.policy;
        let infos: Vec<_> = containers
            .iter()
            .map(|c| {
                describe(
                    cluster,
                    policy,
                    pods.iter().find(|p| p.id == c.pod_sandbox_id),
                    c,
                )
            })
            .collect();
        let pods: Vec<_> = pods
            .into_iter()
            .map(|p| PodInfo {
                id: p.id,
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
            })
            .collect();
        tracing::info!(
            pods = pods.len(),
            containers = infos.len(),
            "nri plugin synchronized"
        );
        self.queue.push(PluginEvent::Synchronized {
            pods,
            containers: infos,
        });
    }

    fn removed(&self, container: Option<api::Container>) {
        if let Some(c) = container {
            tracing::debug!(container_id = %c.id, "container removed");
            self.queue.push(PluginEvent::Removed { container_id: c.id });
        }
    }
}

#[async_trait::async_trait]
impl PluginService for Session {
    async fn configure(
        &self,
        req: api::ConfigureRequest,
    ) -> Result<api::ConfigureResponse, Status> {
        let info =
            RuntimeInfo::from_configure(&req.runtime_name, &req.runtime_version, &req.nri_version);
        let mask = api::event_mask(&EVENTS) & api::valid_events(info.last_event());
        tracing::info!(
            runtime = %info.name, runtime_version = %info.version, nri_version = %info.nri_version,
            nri_version_stated = info.nri_version_stated,
            seccomp_adjustment = info.applies_seccomp_adjustment(),
            "nri plugin configured"
        );
        self.apply_runtime_config(req.config).await?;
        if let Ok(mut guard) = self.runtime.lock() {
            *guard = Some(info.clone());
        }
        self.queue.push(PluginEvent::Configured(info));
        Ok(api::ConfigureResponse { events: mask })
    }

    async fn synchronize(
        &self,
        req: api::SynchronizeRequest,
    ) -> Result<api::SynchronizeResponse, Status> {
        let Ok(mut pending) = self.pending_sync.lock() else {
            return Err(Status::internal("synchronization state poisoned"));
        };
        pending.0.extend(req.pods);
        pending.1.extend(req.containers);
        if req.more {
            return Ok(api::SynchronizeResponse {
                update: vec![],
                more: true,
            });
        }
        let (pods, containers) = std::mem::take(&mut *pending);
        drop(pending);
        self.synchronized(pods, containers);
        Ok(api::SynchronizeResponse {
            update: vec![],
            more: false,
        })
    }

    async fn shutdown(&self, _req: api::Empty) -> Result<api::Empty, Status> {
        tracing::info!("runtime is shutting nri down");
        Ok(api::Empty {})
    }

    async fn create_container(
        &self,
        req: api::CreateContainerRequest,
    ) -> Result<api::CreateContainerResponse, Status> {
        if req.container.is_none() {
            return Err(Status::invalid_argument(
                "CreateContainer without a container",
            ));
        }
        let runtime = self.runtime();
        let config = self.config();
        let ctx = AdjustContext {
            cluster: &config.cluster,
            listener_path: config.listener_path.as_deref(),
            runtime: &runtime,
        };
        let (response, info) = create_container(&ctx, &*self.shared.policy, &req);
        tracing::debug!(container_id = %info.id, rule = %info.rule, monitored = info.monitored,
            seccomp_path = info.seccomp_path, "container adjusted");
        self.queue.push(PluginEvent::Created(Box::new(info)));
        Ok(response)
    }

    async fn remove_container(
        &self,
        req: api::RemoveContainerRequest,
    ) -> Result<api::RemoveContainerResponse, Status> {
        self.removed(req.container);
        Ok(api::RemoveContainerResponse {})
    }

    async fn state_change(&self, req: api::StateChangeEvent) -> Result<api::Empty, Status> {
        if req.event == Event::RemoveContainer as i32 {
            self.removed(req.container);
        }
        Ok(api::Empty {})
    }
}
