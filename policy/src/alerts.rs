//! Alert delivery: JSON lines on stdout and to a file, and a Falco-compatible HTTP sink for
//! falcosidekick.
//!
//! [`Alerts::send`] never blocks and never allocates more than one `Arc` per event: each sink
//! has its own bounded queue and its own Tokio task, and an event that finds a sink's queue
//! full is dropped for that sink and counted. Each sink reports what it dropped as one
//! "N alerts suppressed" record once its queue has room again (and at least every second), so
//! a flood costs bounded memory and still leaves a trace. The HTTP sink retries a failed post
//! a bounded number of times with exponential backoff, and gives up on a 4xx answer other than
//! 408 and 429.
//!
//! The file sink rotates by size: before a line would take the file past
//! [`AlertsConfig::file_max_bytes`], `events.jsonl` becomes `events.jsonl.1` (`.1` becomes `.2`,
//! and so on; the oldest beyond [`AlertsConfig::file_keep`] is removed) and a new file is
//! started, so a flood of alerts cannot fill the node's disk. A rotation that fails (read-only
//! directory, say) is logged and the sink keeps appending to the file it has.
//!
//! Limits: the HTTP sink speaks plain `http://` (falcosidekick in the same cluster); TLS is not
//! supported. Size is counted by this process: lines other writers append (the runc wrapper's
//! "started unfiltered" records) are seen only when a rotation is due, since the file's real
//! size is read then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::event::{now_rfc3339, DriftEvent};
use crate::metrics::Metrics;

/// Where `driftguard events` looks for the JSON lines file unless told otherwise.
pub const DEFAULT_EVENTS_FILE: &str = "/var/lib/driftguard/events.jsonl";

/// Which sinks to run.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Write JSON lines to stdout.
    pub stdout: bool,
    /// Append JSON lines to this file.
    pub file: Option<PathBuf>,
    /// Post Falco-compatible payloads here.
    pub http: Option<HttpSinkConfig>,
    /// Host name reported in Falco payloads (the node name).
    pub hostname: String,
    /// Queue length of the stdout and file sinks.
    pub queue_capacity: usize,
    /// Rotate the file before it grows past this many bytes; 0 never rotates.
    pub file_max_bytes: u64,
    /// Rotated files kept (`file.1` … `file.N`); 0 keeps none (the file starts over).
    pub file_keep: u32,
}

/// Default size at which the events file is rotated: 64 MiB.
pub const DEFAULT_FILE_MAX_BYTES: u64 = 64 << 20;
/// Default number of rotated events files kept.
pub const DEFAULT_FILE_KEEP: u32 = 3;

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            stdout: false,
            file: None,
            http: None,
            hostname: String::new(),
            queue_capacity: 4096,
            file_max_bytes: DEFAULT_FILE_MAX_BYTES,
            file_keep: DEFAULT_FILE_KEEP,
        }
    }
}

/// The falcosidekick sink.
#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    /// `http://host:port/path` of falcosidekick (its root path accepts Falco payloads).
    pub url: String,
    /// Time limit for connecting and for the answer, per attempt.
    pub timeout: Duration,
    /// Attempts per alert (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Alerts waiting for delivery before new ones are suppressed.
    pub queue_capacity: usize,
}

impl HttpSinkConfig {
    /// Checks the URL exactly as the sink will parse it when it starts.
    pub fn check_url(&self) -> Result<(), AlertError> {
        HttpSink::new(self).map(drop)
    }

    /// Defaults for `url`: 5 s timeout, 3 attempts, 200 ms backoff, 1024 queued alerts.
    pub fn new(url: &str) -> HttpSinkConfig {
        HttpSinkConfig {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff: Duration::from_millis(200),
            queue_capacity: 1024,
        }
    }
}

/// Why the alert sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The events file could not be opened.
    #[error("{}: cannot open events file: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The falcosidekick URL is not `http://host[:port][/path]`.
    #[error("invalid alert url `{url}`: {reason} (hint: use http://host:port/)")]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

struct SinkQueue {
    name: &'static str,
    tx: mpsc::Sender<Arc<DriftEvent>>,
    suppressed: Arc<AtomicU64>,
}

/// Handle the supervisor sends events into (cheap to clone). When every clone is dropped,
/// the sink tasks deliver what is queued and finish.
#[derive(Clone)]
pub struct Alerts {
    sinks: Arc<Vec<SinkQueue>>,
    metrics: Option<Metrics>,
    suppressed_total: Arc<AtomicU64>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.sinks.iter().map(|s| s.name).collect();
        f.debug_struct("Alerts").field("sinks", &names).finish()
    }
}

/// The sink tasks; await [`AlertTasks::join`] after dropping every [`Alerts`] to flush.
#[derive(Debug)]
pub struct AlertTasks {
    handles: Vec<JoinHandle<()>>,
}

impl AlertTasks {
    /// Waits until every sink has delivered its queue and stopped.
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Alerts {
    /// Starts the configured sinks as tasks of the current Tokio runtime (call from inside
    /// one).
    pub async fn start(
        config: AlertsConfig,
        metrics: Option<Metrics>,
    ) -> Result<(Alerts, AlertTasks), AlertError> {
        let mut sinks = Vec::new();
        let mut handles = Vec::new();
        let ctx = SinkContext {
            hostname: config.hostname.clone(),
            metrics: metrics.clone(),
        };
        if config.stdout {
            let sink = JsonLines::new(tokio::io::stdout());
            let (q, h) = spawn_sink("stdout", config.queue_capacity, sink, ctx.clone());
            sinks.push(q);
            handles.push(h);
        }
        if let Some(path) = &config.file {
            let sink = RotatingFile::open(path, config.file_max_bytes, config.file_keep).await?;
            let (q, h) = spawn_sink("file", config.queue_capacity, sink, ctx.clone());
            sinks.push(q);
            handles.push(h);
        }
        if let Some(http) = &config.http {
            let sink = HttpSink::new(http)?;
            let (q, h) = spawn_sink("http", http.queue_capacity, sink, ctx.clone());
            sinks.push(q);
            handles.push(h);
        }
        let alerts = Alerts {
            sinks: Arc::new(sinks),
            metrics,
            suppressed_total: Arc::new(AtomicU64::new(0)),
        };
        Ok((alerts, AlertTasks { handles }))
    }

    /// Queues `event` for every sink without blocking. Returns false when at least one sink's
    /// queue was full (the event is counted as suppressed there).
    pub fn send(&self, event: DriftEvent) -> bool {
        let event = Arc::new(event);
        let mut all = true;
        for sink in self.sinks.iter() {
            if sink.tx.try_send(Arc::clone(&event)).is_err() {
                all = false;
                sink.suppressed.fetch_add(1, Ordering::Relaxed);
                self.suppressed_total.fetch_add(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.alert_suppressed(sink.name);
                }
            }
        }
        all
    }

    /// Alerts dropped by full queues since start, summed over sinks.
    pub fn suppressed(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

async fn open_append(path: &Path) -> Result<tokio::fs::File, AlertError> {
    let err = |source| AlertError::File {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)
}

#[derive(Clone)]
struct SinkContext {
    hostname: String,
    metrics: Option<Metrics>,
}

/// One destination for alerts.
trait Sink: Send + 'static {
    /// Delivers one event; an error means it is lost (after the sink's own retries).
    fn deliver(
        &mut self,
        event: &DriftEvent,
        ctx: &SinkContext,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;

    /// Reports `count` events dropped by a full queue.
    fn report_suppressed(
        &mut self,
        count: u64,
        ctx: &SinkContext,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

fn spawn_sink<S: Sink>(
    name: &'static str,
    capacity: usize,
    sink: S,
    ctx: SinkContext,
) -> (SinkQueue, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let suppressed = Arc::new(AtomicU64::new(0));
    let handle = tokio::spawn(run_sink(name, sink, rx, Arc::clone(&suppressed), ctx));
    (
        SinkQueue {
            name,
            tx,
            suppressed,
        },
        handle,
    )
}

async fn run_sink<S: Sink>(
    name: &'static str,
    mut sink: S,
    mut rx: mpsc::Receiver<Arc<DriftEvent>>,
    suppressed: Arc<AtomicU64>,
    ctx: SinkContext,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let open = tokio::select! {
            event = rx.recv() => match event {
                Some(event) => {
                    match sink.deliver(&event, &ctx).await {
                        Ok(()) => count(&ctx, name, true),
                        Err(error) => {
                            count(&ctx, name, false);
                            tracing::warn!(sink = name, %error, "alert lost");
                        }
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        let dropped = suppressed.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(sink = name, dropped, "alerts suppressed by a full queue");
            if let Err(error) = sink.report_suppressed(dropped, &ctx).await {
                tracing::warn!(sink = name, %error, "suppression notice lost");
            }
        }
        if !open {
            return;
        }
    }
}

fn count(ctx: &SinkContext, name: &'static str, ok: bool) {
    if let Some(m) = &ctx.metrics {
        if ok {
            m.alert_delivered(name);
        } else {
            m.alert_failed(name);
        }
    }
}

/// JSON lines to any async writer (stdout, a file).
struct JsonLines<W> {
    out: W,
}

impl<W: AsyncWrite + Unpin + Send + 'static> JsonLines<W> {
    fn new(out: W) -> Self {
        JsonLines { out }
    }

    async fn line(&mut self, value: &impl serde::Serialize) -> Result<(), String> {
        let mut buf = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        buf.push(b'\n');
        self.write(&buf).await
    }

    async fn write(&mut self, buf: &[u8]) -> Result<(), String> {
        self.out.write_all(buf).await.map_err(|e| e.to_string())?;
        self.out.flush().await.map_err(|e| e.to_string())
    }
}

/// The record a JSON lines sink writes for alerts dropped by a full queue.
fn suppressed_notice(count: u64, ctx: &SinkContext) -> serde_json::Value {
    json!({
        "time": now_rfc3339(),
        "severity": "low",
        "suppressed": count,
        "node": ctx.hostname,
        "message": format!("{count} alerts suppressed"),
    })
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for JsonLines<W> {
    async fn deliver(&mut self, event: &DriftEvent, _ctx: &SinkContext) -> Result<(), String> {
        self.line(event).await
    }

    async fn report_suppressed(&mut self, count: u64, ctx: &SinkContext) -> Result<(), String> {
        self.line(&suppressed_notice(count, ctx)).await
    }
}

/// JSON lines appended to a file that is rotated by size (see the module documentation).
struct RotatingFile {
    path: PathBuf,
    lines: JsonLines<tokio::fs::File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    async fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<RotatingFile, AlertError> {
        let path = path.to_path_buf();
        let file = open_append(&path).await?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            lines: JsonLines::new(file),
            size,
            max_bytes,
            keep,
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Rotates when `len` more bytes would pass the limit; errors are logged, never fatal.
    async fn make_room(&mut self, len: u64) {
        if self.max_bytes == 0 || self.size + len <= self.max_bytes {
            return;
        }
        // Other writers (or a copy-truncate tool) may have changed the file: use its real size.
        if let Ok(meta) = self.lines.out.metadata().await {
            self.size = meta.len();
        }
        if self.size == 0 || self.size + len <= self.max_bytes {
            return;
        }
        match self.rotate().await {
            Ok(file) => {
                tracing::info!(file = %self.path.display(), bytes = self.size, "events file rotated");
                self.lines = JsonLines::new(file);
                self.size = 0;
            }
            Err(error) => {
                tracing::warn!(file = %self.path.display(), %error,
                               "events file not rotated; appending to it");
                self.size = 0;
            }
        }
    }

    async fn rotate(&self) -> Result<tokio::fs::File, AlertError> {
        let err = |source| AlertError::File {
            path: self.path.clone(),
            source,
        };
        if self.keep == 0 {
            tokio::fs::remove_file(&self.path).await.map_err(err)?;
        } else {
            for n in (1..self.keep).rev() {
                match tokio::fs::rename(self.numbered(n), self.numbered(n + 1)).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                    _ => {}
                }
            }
            tokio::fs::rename(&self.path, self.numbered(1))
                .await
                .map_err(err)?;
        }
        open_append(&self.path).await
    }

    async fn line(&mut self, value: &impl serde::Serialize) -> Result<(), String> {
        let mut buf = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        buf.push(b'\n');
        self.make_room(buf.len() as u64).await;
        self.lines.write(&buf).await?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

impl Sink for RotatingFile {
    async fn deliver(&mut self, event: &DriftEvent, _ctx: &SinkContext) -> Result<(), String> {
        self.line(event).await
    }

    async fn report_suppressed(&mut self, count: u64, ctx: &SinkContext) -> Result<(), String> {
        self.line(&suppressed_notice(count, ctx)).await
    }
}

/// Falco-compatible posts to falcosidekick.
struct HttpSink {
    authority: String,
    path: String,
    timeout: Duration,
    max_attempts: u32,
    backoff: Duration,
}

impl HttpSink {
    fn new(cfg: &HttpSinkConfig) -> Result<HttpSink, AlertError> {
        let bad = |reason: &str| AlertError::Url {
            url: cfg.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = cfg.url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(HttpSink {
            authority: format!("{}:{port}", authority.host()),
            path: uri
                .path_and_query()
                .map_or("/".into(), |p| p.as_str().to_string()),
            timeout: cfg.timeout,
            max_attempts: cfg.max_attempts.max(1),
            backoff: cfg.backoff,
        })
    }

    async fn post_once(&self, body: Bytes) -> Result<StatusCode, String> {
        let connect = tokio::net::TcpStream::connect(&self.authority);
        let stream = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| "answer timed out".to_string())?
            .map_err(|e| format!("request: {e}"))?;
        Ok(resp.status())
    }

    async fn post(&self, payload: &serde_json::Value) -> Result<(), String> {
        let body = Bytes::from(serde_json::to_vec(payload).map_err(|e| e.to_string())?);
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.max_attempts {
            match self.post_once(body.clone()).await {
                Ok(s) if s.is_success() => return Ok(()),
                Ok(s) if s.is_client_error() && s != 408 && s != 429 => {
                    return Err(format!("rejected with {s}"));
                }
                Ok(s) => last = format!("answered {s}"),
                Err(e) => last = e,
            }
            if attempt < self.max_attempts {
                tracing::debug!(attempt, error = %last, "alert post failed, retrying");
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        Err(format!(
            "{} attempts failed, last: {last}",
            self.max_attempts
        ))
    }
}

impl Sink for HttpSink {
    async fn deliver(&mut self, event: &DriftEvent, ctx: &SinkContext) -> Result<(), String> {
        self.post(&event.to_falco(&ctx.hostname)).await
    }

    async fn report_suppressed(&mut self, count: u64, ctx: &SinkContext) -> Result<(), String> {
        let time = now_rfc3339();
        let payload = json!({
            "output": format!("{time} driftguard: {count} alerts suppressed (queue full)"),
            "priority": "Notice",
            "rule": "Alerts suppressed",
            "time": time,
            "output_fields": { "driftguard.suppressed": count },
            "source": "driftguard",
            "hostname": ctx.hostname,
            "tags": ["driftguard"],
        });
        self.post(&payload).await
    }
}
