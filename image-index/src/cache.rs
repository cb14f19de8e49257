//! [`IndexCache`]: the asynchronous front of the index, shared by the daemon's tasks.
//!
//! A request for an image (its layer directories, top first) computes each layer's
//! [`LayerKey`], then for each layer either loads its index from the state directory or walks
//! and hashes it, then merges the layers into an [`ImageView`].
//!
//! Invariants: walking, hashing, loading and merging run on tokio's blocking pool (hashing
//! fans out on the rayon pool), never on an async worker; concurrent requests for the same
//! layer in this process share one walk; a layer's in-flight entry is removed only after its
//! cache file is written, so a later request loads the file instead of walking again; a view
//! is shared by every request for the same layer list while anyone holds it.
//!
//! Limits: without a state directory ([`IndexCache::ephemeral`]) nothing is kept between
//! requests except views still in use; a walk that has started runs to completion even if
//! every caller waiting for it went away.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use rayon::prelude::*;

use crate::error::IndexError;
use crate::layer::{index_layer, LayerIndex};
use crate::store::{LayerKey, LayerStore, Lookup};
use crate::view::ImageView;

/// Where a layer comes from: its directory and, when known, its chain id or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerSource {
    /// The layer directory (snapshot `fs` dir or unpacked layer).
    pub dir: PathBuf,
    /// A content address of the layer (e.g. its chain id); preferred as cache key when set.
    pub digest: Option<String>,
}

impl LayerSource {
    /// A layer known by its directory only.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        LayerSource {
            dir: dir.into(),
            digest: None,
        }
    }

    /// The layer's cache key: its digest if known, else its directory identity.
    pub fn key(&self) -> Result<LayerKey, IndexError> {
        match &self.digest {
            Some(digest) => {
                let meta =
                    std::fs::metadata(&self.dir).map_err(|e| IndexError::io(&self.dir, e))?;
                if !meta.is_dir() {
                    return Err(IndexError::NotADirectory {
                        path: self.dir.clone(),
                    });
                }
                Ok(LayerKey::Digest(digest.clone()))
            }
            None => LayerKey::for_dir(&self.dir),
        }
    }
}

/// How a layer index was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Walked and hashed now.
    Walked,
    /// Loaded from a valid cache file.
    Cached,
}

/// Loads a layer's index from `store`, or walks the layer and saves the result. Blocking.
///
/// A cache file that fails any check is logged and replaced; failing to write the cache is
/// logged and does not fail the request.
pub fn load_or_index(
    store: Option<&LayerStore>,
    dir: &Path,
    key: &LayerKey,
) -> Result<(LayerIndex, Origin), IndexError> {
    if let Some(store) = store {
        let cache_file = store.path_of(key);
        match store.load(key) {
            Lookup::Hit(index) => {
                tracing::debug!(layer = %dir.display(), "layer index loaded from cache");
                return Ok((index, Origin::Cached));
            }
            Lookup::Miss => {}
            Lookup::Invalid(problem) => tracing::warn!(
                layer = %dir.display(), path = %cache_file.display(), %problem,
                "cache file rejected, indexing the layer again"
            ),
            Lookup::Unreadable(err) => tracing::warn!(
                layer = %dir.display(), path = %cache_file.display(), error = %err,
                "cache file unreadable, indexing the layer again"
            ),
        }
    }
    let started = Instant::now();
    let index = index_layer(dir)?;
    let stats = index.stats();
    tracing::info!(
        layer = %dir.display(), files = stats.files, bytes = stats.bytes_hashed,
        unreadable = stats.unreadable, elapsed_ms = started.elapsed().as_millis() as u64,
        "layer indexed"
    );
    if let Some(store) = store {
        if let Err(err) = store.save(key, &index) {
            tracing::warn!(layer = %dir.display(), error = %err, "cannot write layer cache file");
        }
    }
    Ok((index, Origin::Walked))
}

/// Builds the view of an image synchronously: layers are loaded or walked in parallel on the
/// rayon pool, then merged. Returns how each layer (top first) was obtained. Blocking; for
/// command-line tools and benchmarks, where no async runtime is running.
pub fn image_blocking(
    store: Option<&LayerStore>,
    layers_top_first: &[LayerSource],
) -> Result<(ImageView, Vec<Origin>), IndexError> {
    if layers_top_first.is_empty() {
        return Err(IndexError::NoLayers);
    }
    let loaded: Vec<(LayerIndex, Origin)> = layers_top_first
        .par_iter()
        .map(|source| load_or_index(store, &source.dir, &source.key()?))
        .collect::<Result<_, _>>()?;
    let (layers, origins): (Vec<LayerIndex>, Vec<Origin>) = loaded.into_iter().unzip();
    Ok((ImageView::merge(&layers), origins))
}

type SharedLayer = Shared<BoxFuture<'static, Result<Arc<LayerIndex>, IndexError>>>;

/// How many layer indexes an [`IndexCache`] obtained each way since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Layers walked and hashed.
    pub walked: u64,
    /// Layers loaded from a valid cache file.
    pub loaded: u64,
}

struct Inner {
    store: Option<LayerStore>,
    walked: AtomicU64,
    loaded: AtomicU64,
    inflight: Mutex<HashMap<LayerKey, SharedLayer>>,
    views: Mutex<HashMap<Vec<LayerKey>, Weak<ImageView>>>,
}

/// Shared, cloneable access to layer indexes and merged image views.
#[derive(Clone)]
pub struct IndexCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl IndexCache {
    /// A cache persisting layer indexes in `state_dir` (created when first needed).
    pub fn new(state_dir: PathBuf) -> Self {
        Self::with_store(Some(LayerStore::new(state_dir)))
    }

    /// A cache that keeps nothing on disk.
    pub fn ephemeral() -> Self {
        Self::with_store(None)
    }

    fn with_store(store: Option<LayerStore>) -> Self {
        let inner = Inner {
            store,
            walked: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            inflight: Mutex::default(),
            views: Mutex::default(),
        };
        IndexCache {
            inner: Arc::new(inner),
        }
    }

    /// How many layers were walked or loaded so far.
    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            walked: self.inner.walked.load(Ordering::Relaxed),
            loaded: self.inner.loaded.load(Ordering::Relaxed),
        }
    }

    /// The merged view of the layer directories, top first (overlayfs `lowerdir` order).
    pub async fn image(
        &self,
        lowerdirs_top_first: Vec<PathBuf>,
    ) -> Result<Arc<ImageView>, IndexError> {
        self.image_of(
            lowerdirs_top_first
                .into_iter()
                .map(LayerSource::dir)
                .collect(),
        )
        .await
    }

    /// The merged view of layers given with optional digests, top first.
    pub async fn image_of(&self, layers: Vec<LayerSource>) -> Result<Arc<ImageView>, IndexError> {
        if layers.is_empty() {
            return Err(IndexError::NoLayers);
        }
        let first = layers[0].dir.clone();
        let keyed = blocking(&first, move || {
            layers
                .into_iter()
                .map(|s| s.key().map(|k| (s, k)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        let keys: Vec<LayerKey> = keyed.iter().map(|(_, k)| k.clone()).collect();
        if let Some(view) = lock(&self.inner.views).get(&keys).and_then(Weak::upgrade) {
            return Ok(view);
        }
        let walks = keyed
            .into_iter()
            .map(|(source, key)| self.layer_shared(source.dir, key));
        let layers = futures::future::try_join_all(walks).await?;
        let view = Arc::new(blocking(&first, move || ImageView::merge(&layers)).await?);
        let mut views = lock(&self.inner.views);
        // A concurrent request may have stored its view meanwhile: hand out that one.
        if let Some(existing) = views.get(&keys).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        views.retain(|_, weak| weak.strong_count() > 0);
        views.insert(keys, Arc::downgrade(&view));
        Ok(view)
    }

    /// The index of one layer.
    pub async fn layer(&self, source: LayerSource) -> Result<Arc<LayerIndex>, IndexError> {
        let dir = source.dir.clone();
        let key = blocking(&dir, move || source.key()).await??;
        self.layer_shared(dir, key).await
    }

    /// Starts building the view of an image in the background and returns at once.
    ///
    /// Needs a tokio runtime; without one it logs a warning and does nothing.
    pub fn prefetch(&self, lowerdirs_top_first: Vec<PathBuf>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("image index prefetch outside a tokio runtime ignored");
            return;
        };
        let cache = self.clone();
        runtime.spawn(async move {
            let first = lowerdirs_top_first.first().cloned().unwrap_or_default();
            if let Err(err) = cache.image(lowerdirs_top_first).await {
                tracing::warn!(layer = %first.display(), error = %err, "image index prefetch failed");
            }
        });
    }

    /// The one in-flight walk of a layer, started if none is running.
    fn layer_shared(&self, dir: PathBuf, key: LayerKey) -> SharedLayer {
        let mut inflight = lock(&self.inner.inflight);
        if let Some(walk) = inflight.get(&key) {
            return walk.clone();
        }
        let inner = Arc::clone(&self.inner);
        let task_key = key.clone();
        let task_dir = dir.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = load_or_index(inner.store.as_ref(), &task_dir, &task_key);
            // Only now that the cache file exists may a new request skip this walk.
            lock(&inner.inflight).remove(&task_key);
            let (index, origin) = result?;
            let counter = match origin {
                Origin::Walked => &inner.walked,
                Origin::Cached => &inner.loaded,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(Arc::new(index))
        });
        let walk = async move {
            task.await.map_err(|e| IndexError::Task {
                path: dir,
                message: e.to_string(),
            })?
        }
        .boxed()
        .shared();
        inflight.insert(key, walk.clone());
        walk
    }
}

/// Runs blocking work on tokio's blocking pool; a panic becomes an error naming `path`.
async fn blocking<T, F>(path: &Path, work: F) -> Result<T, IndexError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| IndexError::Task {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}
