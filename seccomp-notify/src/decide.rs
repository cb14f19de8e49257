//! What the supervisor needs from policy, image index and alerting, as small traits.
//!
//! The daemon implements these with driftguard-policy (`PolicyStore`), driftguard-image-index
//! (`IndexCache`) and its event sinks; tests implement them with the same crates or with small
//! real stand-ins. Keeping them as traits keeps the notification loop free of those crates'
//! internals.

use std::path::PathBuf;
use std::sync::Arc;

use driftguard_policy::{Action, FailurePolicy, Outcome, Scope, VerdictClass};
use serde::Serialize;

use crate::classify::ImageLookup;

/// Facts about one exec and the policy's answer are the policy crate's own types, so the
/// supervisor and the policy can never disagree on their meaning.
pub use driftguard_policy::{Decision, ExecFacts};

/// Turns facts into a decision (implemented for the policy store).
pub trait Decider: Send + Sync + 'static {
    /// Decides one exec of a container.
    fn decide(&self, scope: &Scope, facts: &ExecFacts<'_>) -> Decision;
    /// What to answer when no decision can be made.
    fn failure_policy(&self) -> FailurePolicy;
}

/// Builds a container's image view from its layers (implemented for the image index cache).
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// The merged image of these layers, top first.
    async fn image(
        &self,
        lowerdirs_top_first: Vec<PathBuf>,
    ) -> Result<Arc<dyn ImageLookup>, String>;
}

/// One exec that is not a silent allow.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecEvent {
    /// Container id.
    pub container_id: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Image name.
    pub image: String,
    /// Host pid of the caller.
    pub pid: u32,
    /// Resolved path inside the container (or the requested path when resolution failed).
    pub path: String,
    /// The first arguments of the exec.
    pub argv: Vec<String>,
    /// Verdict class, absent when the supervisor could not classify.
    pub class: Option<VerdictClass>,
    /// BLAKE3 as hex.
    pub hash: Option<String>,
    /// Matched rule (empty for failure-policy answers).
    pub rule: String,
    /// The rule's action.
    pub action: Option<Action>,
    /// What happened to the exec.
    pub outcome: Outcome,
    /// The allow list exempted it.
    pub allow_listed: bool,
    /// Why the failure policy answered, when it did.
    pub error: Option<String>,
    /// The caller's parent process (host pid and executable as seen from the host), when it
    /// could be read.
    pub parent: Option<(u32, String)>,
    /// The exec gate caught it: the file the kernel opened for the exec was not the one the
    /// seccomp stage allowed (a race), or no stage had classified it.
    pub exec_gate: bool,
}

/// Receives exec events.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event; must not block.
    fn emit(&self, event: ExecEvent);
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<ExecEvent> {
    fn emit(&self, event: ExecEvent) {
        // A closed receiver means the daemon is shutting down; the event has nowhere to go.
        let _ = self.send(event);
    }
}
