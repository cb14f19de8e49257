//! Errors of the image index.
//!
//! Every variant names the layer directory or cache file it is about. Errors are cheap to
//! clone (I/O errors are shared) so that one failed walk can be reported to every caller that
//! waited for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An error of indexing a layer or assembling an image view.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IndexError {
    /// A layer directory could not be read.
    #[error("cannot read layer directory {path}: {error}")]
    Io {
        /// The layer directory.
        path: PathBuf,
        /// The underlying error (part of the message, so it is not also a `source`).
        error: Arc<io::Error>,
    },
    /// A layer path exists but is not a directory.
    #[error("layer path {path} is not a directory")]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// The image has no layers.
    #[error("an image needs at least one layer directory")]
    NoLayers,
    /// The background task indexing a layer died (panic or runtime shutdown).
    #[error("indexing task for layer {path} failed: {message}")]
    Task {
        /// The layer directory.
        path: PathBuf,
        /// What the runtime reported.
        message: String,
    },
}

impl IndexError {
    /// An I/O error about a layer directory.
    pub fn io(path: &Path, source: io::Error) -> Self {
        IndexError::Io {
            path: path.to_path_buf(),
            error: Arc::new(source),
        }
    }
}
