//! Image layer index.
//!
//! Walks container image layer directories (overlayfs snapshot `fs` dirs or unpacked OCI
//! layers), records every file with its mode, size and BLAKE3 content hash, honours whiteouts
//! and opaque directories, and answers for an ordered list of layers which file the image has
//! at a path and which image paths have a given content. Layer indexes are cached on disk so a
//! shared layer is hashed once per node.
//!
//! Modules: [`hash`] (content hashing), [`layer`] (one layer's walk), [`view`] (the merged
//! image and path resolution inside it), [`store`] (the on-disk cache format), [`cache`]
//! (the asynchronous, deduplicating front used by the daemon).
//!
//! Limits: see each module; in short, layer files are assumed immutable while hashed, and
//! overlayfs `redirect_dir`/`metacopy` layers are not supported.

#![deny(unsafe_code)]

pub mod cache;
pub mod entry;
pub mod error;
pub mod hash;
pub mod layer;
pub mod store;
pub mod view;

pub use cache::{image_blocking, load_or_index, CacheCounters, IndexCache, LayerSource, Origin};
pub use entry::{Entry, FileEntry, SpecialKind};
pub use error::IndexError;
pub use hash::{hash_file, ContentHash};
pub use layer::{index_layer, LayerIndex, LayerNode, LayerRecord, LayerStats, WalkProblem};
pub use store::{CacheProblem, LayerKey, LayerStore};
pub use view::{ImageView, PathStatus, ViewEntry};
