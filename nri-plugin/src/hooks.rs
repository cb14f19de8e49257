//! What the plugin tells the rest of the daemon, off the request path.
//!
//! The plugin queues a [`PluginEvent`] for each lifecycle step and container it learns about; a
//! worker task hands them to [`PluginHooks::on_event`] in order. The daemon starts background
//! work there (layer indexing of a new container, forgetting a removed one).
//!
//! Invariant: an NRI request never waits for a hook. The queue holds [`EVENT_QUEUE`] events;
//! when it is full the event is dropped and a warning logged, because the runtime's request
//! deadline matters more than a late index (the supervisor indexes on demand as well).

use std::collections::BTreeMap;
use std::sync::Arc;

use driftguard_policy::{Action, Scope};
use tokio::sync::mpsc;

use crate::runtime::RuntimeInfo;

/// Events queued for the hooks before new ones are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// A container as the plugin saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Container id (also the runtime's snapshot key).
    pub id: String,
    /// Id of its pod sandbox.
    pub pod_id: String,
    /// Its policy scope.
    pub scope: Scope,
    /// The rule that matched.
    pub rule: String,
    /// The rule's action.
    pub action: Action,
    /// Whether driftguard monitors it.
    pub monitored: bool,
    /// How exec notification reaches the supervisor: `"nri"` when the plugin's seccomp
    /// adjustment carries it, `"wrapper"` when the runc wrapper must add it, `"none"` when the
    /// container is not monitored.
    pub seccomp_path: &'static str,
    /// The container's annotations as the runtime reported them.
    pub annotations: BTreeMap<String, String>,
}

/// A pod sandbox as reported at synchronization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Sandbox id.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// One thing the plugin learned.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginEvent {
    /// Connected, registered and configured by a runtime.
    Configured(RuntimeInfo),
    /// The runtime's state at (re)connection: every pod and container that already exists.
    Synchronized {
        /// Existing pods.
        pods: Vec<PodInfo>,
        /// Existing containers.
        containers: Vec<ContainerInfo>,
    },
    /// A container is being created with the plugin's adjustment.
    Created(Box<ContainerInfo>),
    /// A container was removed.
    Removed {
        /// Container id.
        container_id: String,
    },
    /// The connection to the runtime ended (the plugin may reconnect).
    Disconnected {
        /// Why, in words.
        reason: String,
    },
}

/// Receives the plugin's events.
pub trait PluginHooks: Send + Sync {
    /// Called for every event, in order, on a worker task (never on the request path).
    fn on_event(&self, event: PluginEvent);
}

/// Hooks that ignore every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl PluginHooks for NoHooks {
    fn on_event(&self, _event: PluginEvent) {}
}

/// Sending side of the event queue.
#[derive(Debug, Clone)]
pub(crate) struct EventQueue {
    tx: mpsc::Sender<PluginEvent>,
}

impl EventQueue {
    /// Starts the worker that feeds `hooks`.
    pub(crate) fn start(hooks: Arc<dyn PluginHooks>) -> EventQueue {
        let (tx, mut rx) = mpsc::channel::<PluginEvent>(EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let hooks = hooks.clone();
                // A hook may block briefly; keep it off the async workers.
                if tokio::task::spawn_blocking(move || hooks.on_event(event))
                    .await
                    .is_err()
                {
                    tracing::warn!("a plugin hook panicked; event dropped");
                }
            }
        });
        EventQueue { tx }
    }

    /// Queues an event without waiting.
    pub(crate) fn push(&self, event: PluginEvent) {
        if let Err(err) = self.tx.try_send(event) {
            tracing::warn!(error = %err, "plugin event queue full or closed; event dropped");
        }
    }
}
