//! A small, blocking CRI client for tests: pods, containers, logs and exec.
//!
//! It speaks the Kubernetes CRI (`runtime.v1`) over containerd's unix socket with tonic. Every
//! call is blocking and runs on the client's own single-threaded tokio runtime on a scoped
//! thread, so tests call it from plain `#[test]` functions and from async tests alike.
//!
//! Pods and containers are guards: dropping a [`Pod`] stops and removes its sandbox (and with it
//! its containers), dropping a [`Container`] removes it, so a failing test leaves nothing
//! running. Pods run with host networking and an empty hostname, as kubelet does for
//! `hostNetwork` pods (runc refuses a hostname without a private UTS namespace).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Generated CRI `runtime.v1` types and clients.
#[allow(missing_docs, clippy::all)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;

/// A connection to a CRI runtime endpoint.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    pods_dir: PathBuf,
}

/// What a pod sandbox looks like.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: HashMap<String, String>,
    /// Pod annotations.
    pub annotations: HashMap<String, String>,
}

impl PodSpec {
    /// A pod with a unique name derived from `prefix`, in namespace `namespace`.
    pub fn new(prefix: &str, namespace: &str) -> Self {
        PodSpec {
            name: unique_name(prefix),
            namespace: namespace.into(),
            ..Default::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// What a container looks like.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command (the image's entrypoint is replaced when set).
    pub command: Vec<String>,
    /// Arguments.
    pub args: Vec<String>,
    /// Host bind mounts: (host path, container path, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Run without any seccomp profile instead of the runtime default.
    pub unconfined: bool,
}

impl ContainerSpec {
    /// A container running `sh -c script` from `image`.
    pub fn shell(name: &str, image: &str, script: &str) -> Self {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }
}

/// Output of [`Container::exec_sync`].
#[derive(Debug, Clone)]
pub struct ExecResult {
    /// Exit code of the command.
    pub exit_code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A running pod sandbox; stopped and removed on drop.
pub struct Pod<'a> {
    cri: &'a Cri,
    id: String,
    config: api::PodSandboxConfig,
    log_dir: PathBuf,
}

/// A container in a pod; removed on drop.
pub struct Container<'a> {
    pod: &'a Pod<'a>,
    id: String,
    log_path: PathBuf,
}

impl Cri {
    /// Connects to the CRI socket at `socket`; pod logs go below `pods_dir`.
    pub fn connect(socket: &Path, pods_dir: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = run_on(&rt, async move {
            Endpoint::try_from("http://cri.invalid")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .context("connecting to the CRI socket")
        })
        .with_context(|| format!("CRI endpoint {}", socket.display()))?;
        Ok(Cri {
            rt,
            channel,
            pods_dir: pods_dir.to_path_buf(),
        })
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn block<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        run_on(&self.rt, fut)
    }

    /// The runtime's name and version.
    pub fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime();
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        Ok(self
            .block(async move { c.version(req).await })?
            .into_inner())
    }

    /// Whether the runtime reports `RuntimeReady`.
    pub fn runtime_ready(&self) -> Result<bool> {
        let mut c = self.runtime();
        let status =
            self.block(async move { c.status(api::StatusRequest { verbose: false }).await });
        let status = status?.into_inner().status.unwrap_or_default();
        Ok(status
            .conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status))
    }

    /// Names of the images the runtime knows.
    pub fn image_names(&self) -> Result<Vec<String>> {
        let mut c = ImageServiceClient::new(self.channel.clone());
        let images =
            self.block(async move { c.list_images(api::ListImagesRequest::default()).await });
        Ok(images?
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect())
    }

    /// Runs a pod sandbox.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<Pod<'_>> {
        let log_dir = self.pods_dir.join(&spec.name);
        std::fs::create_dir_all(&log_dir)?;
        let config = pod_config(spec, &log_dir);
        let mut c = self.runtime();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        };
        let id = self
            .block(async move { c.run_pod_sandbox(req).await })
            .with_context(|| format!("RunPodSandbox {}", spec.name))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            cri: self,
            id,
            config,
            log_dir,
        })
    }

    /// Runs a command in any running container by id (CRI `ExecSync`).
    pub fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecResult> {
        let mut c = self.runtime();
        let req = api::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        let resp = self
            .block(async move { c.exec_sync(req).await })
            .with_context(|| format!("ExecSync {cmd:?}"))?
            .into_inner();
        Ok(ExecResult {
            exit_code: resp.exit_code,
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
        })
    }

    /// Stops and removes every pod sandbox; returns how many there were.
    pub fn remove_all_pods(&self) -> Result<usize> {
        let mut c = self.runtime();
        let req = api::ListPodSandboxRequest::default();
        let pods = self
            .block(async move { c.list_pod_sandbox(req).await })?
            .into_inner()
            .items;
        for pod in &pods {
            self.stop_and_remove_pod(&pod.id)?;
        }
        Ok(pods.len())
    }

    fn stop_and_remove_pod(&self, id: &str) -> Result<()> {
        let mut c = self.runtime();
        let id = id.to_string();
        self.block(async move {
            c.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
            c.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        Ok(())
    }
}

impl<'a> Pod<'a> {
    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The directory that holds the pod's container logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Creates (but does not start) a container.
    pub fn create_container(&'a self, spec: &ContainerSpec) -> Result<Container<'a>> {
        let log_name = format!("{}.log", spec.name);
        let config = container_config(spec, &log_name);
        let req = api::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        let mut c = self.cri.runtime();
        let id = self
            .cri
            .block(async move { c.create_container(req).await })
            .with_context(|| format!("CreateContainer {}", spec.name))?
            .into_inner()
            .container_id;
        Ok(Container {
            pod: self,
            id,
            log_path: self.log_dir.join(log_name),
        })
    }

    /// Creates and starts a container.
    pub fn start_container(&'a self, spec: &ContainerSpec) -> Result<Container<'a>> {
        let container = self.create_container(spec)?;
        container.start()?;
        Ok(container)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Err(err) = self.cri.stop_and_remove_pod(&self.id) {
            eprintln!("testkit: removing pod {}: {err:#}", self.id);
        }
    }
}

impl Container<'_> {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the container.
    pub fn start(&self) -> Result<()> {
        let mut c = self.pod.cri.runtime();
        let req = api::StartContainerRequest {
            container_id: self.id.clone(),
        };
        self.pod
            .cri
            .block(async move { c.start_container(req).await })
            .context("StartContainer")?;
        Ok(())
    }

    /// The container's status.
    pub fn status(&self) -> Result<api::ContainerStatus> {
        let mut c = self.pod.cri.runtime();
        let req = api::ContainerStatusRequest {
            container_id: self.id.clone(),
            verbose: false,
        };
        let resp = self
            .pod
            .cri
            .block(async move { c.container_status(req).await })?;
        resp.into_inner()
            .status
            .context("ContainerStatus returned no status")
    }

    /// Waits until the container exits; returns its exit code.
    pub fn wait_exit(&self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status()?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status.exit_code);
            }
            if Instant::now() > deadline {
                bail!("container {} still running after {timeout:?}", self.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's output so far, decoded from the CRI log format.
    pub fn logs(&self) -> Result<String> {
        let raw = std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        Ok(decode_cri_log(&raw))
    }

    /// Runs a command in the container and waits for it (CRI `ExecSync`).
    pub fn exec_sync(&self, cmd: &[&str], timeout: Duration) -> Result<ExecResult> {
        self.pod.cri.exec_sync(&self.id, cmd, timeout)
    }

    /// Runs `sh -c script` in the container.
    pub fn sh(&self, script: &str) -> Result<ExecResult> {
        self.exec_sync(&["/bin/sh", "-c", script], Duration::from_secs(30))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let mut c = self.pod.cri.runtime();
        let id = self.id.clone();
        let res = self.pod.cri.block(async move {
            c.stop_container(api::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await?;
            c.remove_container(api::RemoveContainerRequest { container_id: id })
                .await
        });
        if let Err(err) = res {
            eprintln!("testkit: removing container {}: {err:#}", self.id);
        }
    }
}

/// Runs a future to completion on `rt` from a scoped thread, so it works inside or outside
/// another tokio runtime.
fn run_on<F: Future + Send>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn pod_config(spec: &PodSpec, log_dir: &Path) -> api::PodSandboxConfig {
    use api::NamespaceMode;
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: spec.name.clone(),
            uid: format!("uid-{}", spec.name),
            namespace: spec.namespace.clone(),
            attempt: 0,
        }),
        hostname: String::new(),
        log_directory: log_dir.display().to_string(),
        labels: spec.labels.clone(),
        annotations: spec.annotations.clone(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(runtime_default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(spec: &ContainerSpec, log_name: &str) -> api::ContainerConfig {
    let seccomp = if spec.unconfined {
        api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::Unconfined as i32,
            ..Default::default()
        }
    } else {
        runtime_default()
    };
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: spec.name.clone(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: spec.image.clone(),
            ..Default::default()
        }),
        command: spec.command.clone(),
        args: spec.args.clone(),
        log_path: log_name.into(),
        mounts: spec
            .mounts
            .iter()
            .map(|(host, ctr, ro)| api::Mount {
                host_path: host.display().to_string(),
                container_path: ctr.clone(),
                readonly: *ro,
                ..Default::default()
            })
            .collect(),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: Some(seccomp),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn runtime_default() -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    }
}

/// Decodes the CRI log format (`TIMESTAMP STREAM P|F CONTENT`) into the raw output.
pub fn decode_cri_log(raw: &str) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_ts, _stream, tag) = (parts.next(), parts.next(), parts.next());
        out.push_str(parts.next().unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// A name unique to this process and moment, for pods and containers.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_full_and_partial_lines() {
        let raw = "2026-01-01T00:00:00Z stdout F hello\n\
                   2026-01-01T00:00:00Z stdout P par\n\
                   2026-01-01T00:00:00Z stdout F tial\n\
                   2026-01-01T00:00:00Z stderr F \n";
        assert_eq!(decode_cri_log(raw), "hello\npartial\n\n");
    }
}
