//! Image layer index.
//!
//! Walks container image layer directories (overlayfs snapshot `fs` dirs or unpacked OCI
//! layers), records every file with its mode, size and BLAKE3 content hash, honours whiteouts
//! and opaque directories, and answers for an ordered list of layers which file the image has
//! at a path and which image paths have a given content. Layer indexes are cached on disk so a
//! shared layer is hashed once per node.
