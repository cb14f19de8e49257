//! Test kit for driftguard's integration tests: a private containerd + runc runtime driven by
//! `contrib/dev/runtime.sh`, an OCI image-layout builder for test images, and a CRI client.
