//! Test kit for driftguard's integration tests.
//!
//! - [`runtime`]: the private containerd + runc (from `contrib/dev/runtime.sh`), brought up once
//!   per test process;
//! - [`cri`]: a blocking CRI client whose pods and containers clean up on drop;
//! - [`node`]: a node protected by driftguard (wrapper as runc, a running daemon);
//! - [`oci`] and [`images`]: OCI image-layout archives built from directories, and the test
//!   images (pause, busybox, the multi-layer scenario image).
//!
//! The `dg-testkit` binary exposes the image builder and CRI housekeeping to shell scripts.

pub mod cri;
pub mod images;
pub mod node;
pub mod oci;
pub mod runtime;

pub use cri::{ContainerSpec, Cri, PodSpec};
pub use node::Node;
pub use runtime::Runtime;
