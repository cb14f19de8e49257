//! The plugin's lifecycle: connect (or take the pre-connected fd), serve, register, and
//! reconnect when the runtime goes away.
//!
//! Per connection: the multiplexer is started, the plugin service is served on connection 1
//! *before* RegisterPlugin is sent on connection 2 (the runtime may call Configure before the
//! registration reply arrives), and the session lasts until the trunk ends or the plugin is
//! cancelled. Registration must reach the runtime within its registration timeout (5 s by
//! default); requests are answered from memory well within the 2 s request timeout.
//!
//! External mode ([`Plugin::run_external`]) reconnects with exponential backoff (0.5 s doubling
//! to 10 s, reset after a session that lasted 30 s) and synchronizes again on each connection.
//! Pre-registered mode ([`Plugin::run_preregistered`]) serves the socket the runtime passed as
//! fd 3 and returns when it ends: the runtime does not relaunch a dead plugin.
//!
//! Logging: one info line per lifecycle change (connected, registered, configured,
//! synchronized, disconnected); a run of failed connection attempts logs its first failure at
//! warn and the rest at debug.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftguard_proto::api::RegisterPluginRequest;
use driftguard_proto::service::{PluginServer, RuntimeClient};
use driftguard_proto::{rpc, Client, Mux, MuxError, RpcError};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::hooks::{EventQueue, PluginEvent, PluginHooks};
use crate::policy::ContainerPolicy;
use crate::service::Session;

/// The NRI API version this plugin speaks (sent at registration; informational for runtimes).
pub const PLUGIN_NRI_VERSION: &str = "v0.12.2";
/// Default socket of containerd's NRI.
pub const DEFAULT_SOCKET: &str = "/var/run/nri/nri.sock";

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Plugin settings.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Cluster name placed in every scope.
    pub cluster: String,
    /// Absolute path of the supervisor's hand-off socket; `None` disables the native seccomp
    /// path (the runc wrapper then injects on every runtime).
    pub listener_path: Option<String>,
    /// Deadline of the RegisterPlugin call.
    pub register_timeout: Duration,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            cluster: String::new(),
            listener_path: None,
            register_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the plugin stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The NRI socket could not be reached.
    #[error("connecting to the nri socket {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime refused or did not answer the registration.
    #[error("registering as {name} (index {idx}): {source}")]
    Register {
        /// Plugin name.
        name: String,
        /// Plugin index.
        idx: String,
        /// The error.
        #[source]
        source: Box<RpcError>,
    },
    /// The connection failed after registration.
    #[error(transparent)]
    Trunk(#[from] MuxError),
    /// The plugin service connection failed (malformed ttrpc from the runtime).
    #[error("nri plugin service: {0}")]
    Serve(#[source] RpcError),
    /// The pre-registered environment is incomplete or wrong.
    #[error("pre-registered plugin environment: {0}")]
    Environment(String),
    /// The plugin name or index is invalid.
    #[error("invalid plugin identity: {0}")]
    Identity(String),
}

/// Turns the configuration the runtime passes in Configure into the settings of that
/// connection.
///
/// containerd passes a pre-registered plugin the content of its `conf.d` file
/// (`<plugin_config_path>/NN-name.conf`, empty when there is none); external plugins get an
/// empty string. The hook runs once per connection, on a blocking thread, inside the runtime's
/// request timeout (2 s by default): reading a small file or two is fine.
pub trait ConfigureHook: Send + Sync {
    /// Returns the settings to use from now on; `current` is the plugin's configuration as
    /// created. An error fails Configure, and the runtime then drops the plugin.
    fn configure(
        &self,
        runtime_config: &str,
        current: &PluginConfig,
    ) -> Result<PluginConfig, String>;
}

/// Everything a session needs that outlives connections.
pub(crate) struct Shared {
    pub(crate) config: PluginConfig,
    pub(crate) policy: Arc<dyn ContainerPolicy>,
    pub(crate) on_configure: std::sync::OnceLock<Arc<dyn ConfigureHook>>,
}

/// The driftguard NRI plugin.
pub struct Plugin {
    shared: Arc<Shared>,
    queue: EventQueue,
    cancel: CancellationToken,
}

impl Plugin {
    /// Creates the plugin. Must be called inside a tokio runtime (it starts the hook worker).
    pub fn new(
        config: PluginConfig,
        policy: Arc<dyn ContainerPolicy>,
        hooks: Arc<dyn PluginHooks>,
    ) -> Plugin {
        Plugin {
            shared: Arc::new(Shared {
                config,
                policy,
                on_configure: std::sync::OnceLock::new(),
            }),
            queue: EventQueue::start(hooks),
            cancel: CancellationToken::new(),
        }
    }

    /// Sets the hook that reads the runtime's plugin configuration at each Configure (once;
    /// later calls are ignored and return `false`).
    pub fn set_configure_hook(&self, hook: Arc<dyn ConfigureHook>) -> bool {
        self.shared.on_configure.set(hook).is_ok()
    }

    /// A token that stops the plugin when cancelled; `run_*` then return `Ok`.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs as an external plugin on `socket`, reconnecting until cancelled.
    ///
    /// Returns `Ok` on cancellation and an error only for an invalid identity.
    pub async fn run_external(
        &self,
        socket: &Path,
        name: &str,
        idx: &str,
    ) -> Result<(), PluginError> {
        check_identity(name, idx)?;
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        while !self.cancel.is_cancelled() {
            let started = Instant::now();
            match self.connect(socket).await {
                Ok(stream) => {
                    failing = false;
                    tracing::info!(socket = %socket.display(), "connected to nri");
                    let end = self.run_on_stream(stream, name, idx).await;
                    self.note_end(&end);
                    if started.elapsed() >= STABLE_SESSION {
                        backoff = MIN_BACKOFF;
                    }
                }
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "nri socket unreachable; retrying");
                }
                Err(err) => tracing::debug!(error = %err, "nri socket still unreachable"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Ok(())
    }

    /// Runs as a plugin launched by the runtime from its plugin directory: identity from
    /// `NRI_PLUGIN_NAME` / `NRI_PLUGIN_IDX`, connection on the fd in `NRI_PLUGIN_SOCKET`
    /// (always 3). Returns when the connection ends or the plugin is cancelled.
    pub async fn run_preregistered(&self) -> Result<(), PluginError> {
        let var = |key: &str| {
            std::env::var(key).map_err(|_| PluginError::Environment(format!("{key} is not set")))
        };
        let (name, idx, fd) = (
            var("NRI_PLUGIN_NAME")?,
            var("NRI_PLUGIN_IDX")?,
            var("NRI_PLUGIN_SOCKET")?,
        );
        check_identity(&name, &idx)?;
        let fd: i32 = fd.parse().map_err(|_| {
            PluginError::Environment(format!("NRI_PLUGIN_SOCKET={fd:?} is not an fd"))
        })?;
        let stream = take_inherited_socket(fd)?;
        tracing::info!(fd, "using the pre-connected nri socket");
        let end = self.run_on_stream(stream, &name, &idx).await;
        self.note_end(&end);
        end
    }

    /// Serves one connection: registers and answers the runtime until the connection ends
    /// (error) or the plugin is cancelled (`Ok`).
    pub async fn run_on_stream(
        &self,
        stream: UnixStream,
        name: &str,
        idx: &str,
    ) -> Result<(), PluginError> {
        let (mut mux, mut conns) = Mux::spawn(stream, &[1, 2]);
        let (Some(runtime_conn), Some(plugin_conn)) = (conns.pop(), conns.pop()) else {
            return Err(PluginError::Trunk(MuxError::Closed));
        };
        let session = Arc::new(Session::new(self.shared.clone(), self.queue.clone()));
        let server = tokio::spawn(rpc::serve(plugin_conn, Arc::new(PluginServer(session))));
        let runtime = RuntimeClient::new(Client::new(runtime_conn));
        let request = RegisterPluginRequest {
            plugin_name: name.to_string(),
            plugin_idx: idx.to_string(),
            nri_version: PLUGIN_NRI_VERSION.to_string(),
        };
        let registered = tokio::select! {
            _ = self.cancel.cancelled() => return Ok(()),
            r = runtime.register_plugin(&request, self.shared.config.register_timeout) => r,
        };
        registered.map_err(|source| PluginError::Register {
            name: name.to_string(),
            idx: idx.to_string(),
            source: Box::new(source),
        })?;
        tracing::info!(plugin = %format!("{idx}-{name}"), "registered with the runtime");
        tokio::select! {
            _ = self.cancel.cancelled() => { mux.close(); Ok(()) }
            end = mux.closed() => end.map_err(PluginError::Trunk),
            served = server => match served {
                Ok(Err(err)) => {
                    // Malformed ttrpc from the runtime: drop the whole connection.
                    mux.close();
                    Err(PluginError::Serve(err))
                }
                // The service ended with the trunk; report the trunk's reason.
                _ => Err(PluginError::Trunk(mux.closed().await.err().unwrap_or(MuxError::Closed))),
            },
        }
    }

    async fn connect(&self, socket: &Path) -> Result<UnixStream, PluginError> {
        UnixStream::connect(socket)
            .await
            .map_err(|source| PluginError::Connect {
                path: socket.to_path_buf(),
                source,
            })
    }

    fn note_end(&self, end: &Result<(), PluginError>) {
        let reason = match end {
            Ok(()) => return,
            Err(err) => err.to_string(),
        };
        tracing::info!(reason = %reason, "nri connection ended");
        self.queue.push(PluginEvent::Disconnected { reason });
    }
}

/// Checks a name and index as the runtime will: a non-empty name of `[A-Za-z0-9_.+-]` and a
/// two-digit index.
pub fn check_identity(name: &str, idx: &str) -> Result<(), PluginError> {
    if !valid_name(name) {
        return Err(PluginError::Identity(format!(
            "name {name:?} must be [A-Za-z0-9_.+-]+"
        )));
    }
    if !valid_index(idx) {
        return Err(PluginError::Identity(format!(
            "index {idx:?} must be two digits"
        )));
    }
    Ok(())
}

/// Whether the runtime accepts `name` as a plugin name: `[A-Za-z0-9_.+-]+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
}

/// Whether the runtime accepts `idx` as a plugin index: two digits.
pub fn valid_index(idx: &str) -> bool {
    idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit())
}

static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the inherited socket `fd` (once per process).
fn take_inherited_socket(fd: i32) -> Result<UnixStream, PluginError> {
    if fd < 3 {
        return Err(PluginError::Environment(format!(
            "NRI_PLUGIN_SOCKET={fd} is a standard stream"
        )));
    }
    if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(PluginError::Environment(
            "the inherited nri socket was already used".into(),
        ));
    }
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table; it has no memory effects.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(PluginError::Environment(format!(
            "fd {fd} from NRI_PLUGIN_SOCKET: {err}"
        )));
    }
    // SAFETY: the fd is open (checked above), was handed to this process by the runtime for
    // this purpose, and INHERITED_TAKEN guarantees it is wrapped (and later closed) only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    let not_socket = |e: std::io::Error| PluginError::Environment(format!("fd {fd}: {e}"));
    std_stream.set_nonblocking(true).map_err(not_socket)?;
    UnixStream::from_std(std_stream).map_err(not_socket)
}

#[cfg(test)]
mod tests;
