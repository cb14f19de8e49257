//! NRI wire protocol for driftguard.
//!
//! This crate owns everything needed to speak containerd's Node Resource Interface (NRI) from
//! Rust: the protobuf messages of the `nri.pkg.api.v1alpha1` API, the ttrpc service definitions
//! for the `Plugin` and `Runtime` services, and the connection multiplexer that carries several
//! logical ttrpc connections over one unix stream.
//!
//! Nothing here decides policy; it only encodes, decodes and transports.
