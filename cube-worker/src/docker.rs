//! [`DockerRuntime`]: the container runtime on a Docker Engine, through bollard.
//!
//! This is the only module that imports bollard. Behaviours of bollard 0.21 and the Docker
//! API that the code below works around:
//! - The client timeout is kept in whole seconds and covers the wait for response headers.
//!   A stop blocks until the grace period ends, so stops use a client clone whose timeout is
//!   the grace period plus [`STOP_TIMEOUT_MARGIN`].
//! - `wait_container` reports a non-zero exit code as an `Err` carrying the code.
//! - Without a bridge network, publishing a port silently does nothing, so the bound ports
//!   are read back after start and a missing one fails the start.
//! - Pulling with an image name but no tag pulls every tag, so a reference is split into
//!   repository and tag (`latest` when absent) before a pull.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, HostConfig, PortBinding as DockerPortBinding, PortMap,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use cube_core::{ContainerId, PortBinding, Protocol, PullPolicy};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::runtime::{
    ContainerConfig, ContainerExit, ContainerInfo, ContainerRuntime, ContainerStatus, RuntimeError,
    StartedContainer,
};

/// Extra client timeout on top of a stop's grace period, for the kill and the response.
pub const STOP_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// Default client timeout of every other Docker call.
pub const DEFAULT_DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// Connection settings of the Docker Engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// A socket path (`/var/run/docker.sock`), or a URL (`unix://…`, `tcp://…`,
    /// `http://…`). `None` uses `DOCKER_HOST` when set, else the local default socket.
    pub host: Option<String>,
    /// Client timeout of each call, rounded down to whole seconds by bollard (at least 1 s).
    pub timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            timeout: DEFAULT_DOCKER_TIMEOUT,
        }
    }
}

/// A [`ContainerRuntime`] backed by a Docker Engine.
///
/// The client is bound to the tokio runtime it was created on: create one per actix
/// `System`.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

// === impl DockerRuntime ===

impl DockerRuntime {
    /// Connects to the engine named by `config` and negotiates the API version.
    ///
    /// # Errors
    ///
    /// Returns [`RuntimeError::Connect`] when the socket is missing or the engine does not
    /// respond.
    pub async fn connect(config: &DockerConfig) -> Result<Self, RuntimeError> {
        let timeout_secs = config.timeout.as_secs().max(1);
        let env_host = std::env::var("DOCKER_HOST").ok();
        let endpoint = config
            .host
            .clone()
            .or(env_host)
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let connect_error = |source: DockerError| RuntimeError::Connect {
            endpoint: endpoint.clone(),
            source: Box::new(source),
        };

        let docker = if endpoint.starts_with('/') || endpoint.starts_with("unix://") {
            Docker::connect_with_unix(&endpoint, timeout_secs, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_host(&endpoint)
        }
        .map_err(connect_error)?
        .with_timeout(Duration::from_secs(timeout_secs));

        let docker = docker.negotiate_version().await.map_err(connect_error)?;
        log::info!(
            "connected to Docker Engine at {endpoint} (API {})",
            docker.client_version()
        );
        Ok(Self { docker })
    }

    async fn image_present(docker: &Docker, image: &str) -> Result<bool, RuntimeError> {
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) if status_code(&error) == Some(404) => Ok(false),
            Err(error) => Err(RuntimeError::Engine {
                action: format!("inspect image {image}"),
                source: Box::new(error),
            }),
        }
    }

    async fn pull_image(docker: &Docker, image: &str) -> Result<(), RuntimeError> {
        let (repository, tag) = split_image_reference(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(repository)
            .tag(tag)
            .build();
        let pull_error = |source: String| RuntimeError::ImagePull {
            image: image.to_string(),
            source: source.into(),
        };

        log::info!("pulling image {image}");
        let mut progress = docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            let info = item.map_err(|error| pull_error(error.to_string()))?;
            if let Some(detail) = info.error_detail {
                return Err(pull_error(detail.message.unwrap_or_default()));
            }
        }
        Ok(())
    }

    async fn create_and_start(
        docker: Docker,
        config: ContainerConfig,
    ) -> Result<StartedContainer, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&config.name)
            .build();
        let created = docker
            .create_container(Some(options), container_body(&config))
            .await
            .map_err(|error| container_error("create", &config.name, error))?;
        let id = ContainerId(created.id);

        if let Err(error) = docker
            .start_container(&id.0, None::<StartContainerOptions>)
            .await
        {
            remove_quietly(&docker, &id).await;
            return Err(container_error("start", &config.name, error));
        }

        match Self::read_bound_ports(&docker, &id, &config).await {
            Ok(host_ports) => Ok(StartedContainer { id, host_ports }),
            Err(error) => {
                log::warn!(
                    "removing container {} after a failed start: {error}",
                    id.short()
                );
                remove_quietly(&docker, &id).await;
                Err(error)
            }
        }
    }

    /// Reads the bound host ports after start, one per requested port, in request order.
    async fn read_bound_ports(
        docker: &Docker,
        id: &ContainerId,
        config: &ContainerConfig,
    ) -> Result<Vec<PortBinding>, RuntimeError> {
        let inspect = docker
            .inspect_container(&id.0, None::<InspectContainerOptions>)
            .await
            .map_err(|error| container_error("inspect", &config.name, error))?;
        let published = inspect.network_settings.and_then(|settings| settings.ports);

        let mut bound = Vec::with_capacity(config.ports.len());
        for mapping in &config.ports {
            let key = port_key(mapping.container_port, mapping.protocol);
            let bindings = published
                .as_ref()
                .and_then(|ports| ports.get(&key).cloned().flatten())
                .unwrap_or_default();
            let found = pick_binding(&bindings, config.publish_address).ok_or_else(|| {
                RuntimeError::PortNotPublished {
                    container: config.name.clone(),
                    container_port: mapping.container_port,
                    protocol: mapping.protocol,
                    publish_address: config.publish_address,
                }
            })?;
            bound.push(PortBinding {
                container_port: mapping.container_port,
                protocol: mapping.protocol,
                host_ip: found.0,
                host_port: found.1,
            });
        }
        Ok(bound)
    }

    async fn wait_for_exit(docker: Docker, id: ContainerId) -> Result<ContainerExit, RuntimeError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut responses = docker.wait_container(&id.0, Some(options));
        match responses.next().await {
            Some(Ok(response)) => Ok(ContainerExit::Exited {
                code: response.status_code,
            }),
            // bollard turns a non-zero exit code into an error; it is still an exit.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                Ok(ContainerExit::Exited { code })
            }
            Some(Err(error)) if status_code(&error) == Some(404) => Ok(ContainerExit::Vanished),
            Some(Err(error)) => Err(container_error("wait for", id.short(), error)),
            None => Self::exit_from_inspect(&docker, &id).await,
        }
    }

    /// Decides how a container ended when the wait stream closed without a response.
    async fn exit_from_inspect(
        docker: &Docker,
        id: &ContainerId,
    ) -> Result<ContainerExit, RuntimeError> {
        let info = match docker
            .inspect_container(&id.0, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => container_info(inspect),
            Err(error) if status_code(&error) == Some(404) => return Ok(ContainerExit::Vanished),
            Err(error) => return Err(container_error("inspect", id.short(), error)),
        };
        match (info.status, info.exit_code) {
            (ContainerStatus::Exited | ContainerStatus::Dead, Some(code)) => {
                Ok(ContainerExit::Exited { code })
            }
            _ => Err(container_error(
                "wait for",
                id.short(),
                "the wait stream ended while the container still runs",
            )),
        }
    }
}

impl ContainerRuntime for DockerRuntime {
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let docker = self.docker.clone();
        let image = image.to_string();
        Box::pin(async move {
            if Self::image_present(&docker, &image).await? {
                return Ok(());
            }
            match policy {
                PullPolicy::Never => Err(RuntimeError::ImageNotFound { image }),
                PullPolicy::IfNotPresent => Self::pull_image(&docker, &image).await,
            }
        })
    }

    fn start_container(
        &self,
        config: ContainerConfig,
    ) -> BoxFuture<'static, Result<StartedContainer, RuntimeError>> {
        Box::pin(Self::create_and_start(self.docker.clone(), config))
    }

    fn wait_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerExit, RuntimeError>> {
        Box::pin(Self::wait_for_exit(self.docker.clone(), id.clone()))
    }

    fn stop_container(
        &self,
        id: &ContainerId,
        grace: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        // Docker takes whole seconds; rounding up never cuts a grace period short.
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let client_timeout = Duration::from_secs(grace_secs) + STOP_TIMEOUT_MARGIN;
        let docker = self.docker.clone().with_timeout(client_timeout);
        let id = id.clone();
        Box::pin(async move {
            let t = i32::try_from(grace_secs).unwrap_or(i32::MAX);
            let options = StopContainerOptionsBuilder::default().t(t).build();
            match docker.stop_container(&id.0, Some(options)).await {
                Ok(()) => Ok(()),
                // 304: already stopped; 404: already gone.
                Err(error) if matches!(status_code(&error), Some(304 | 404)) => Ok(()),
                Err(error) => Err(container_error("stop", id.short(), error)),
            }
        })
    }

    fn remove_container(&self, id: &ContainerId) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let docker = self.docker.clone();
        let id = id.clone();
        Box::pin(async move {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match docker.remove_container(&id.0, Some(options)).await {
                Ok(()) => Ok(()),
                Err(error) if status_code(&error) == Some(404) => Ok(()),
                // Docker answers 409 while another removal of the same container runs, as
                // after a `docker rm -f` from outside; that removal finishes the job.
                Err(error)
                    if status_code(&error) == Some(409)
                        && error.to_string().contains("already in progress") =>
                {
                    log::debug!("container {} is already being removed", id.short());
                    Ok(())
                }
                Err(error) => Err(container_error("remove", id.short(), error)),
            }
        })
    }

    fn list_containers(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, RuntimeError>> {
        let docker = self.docker.clone();
        let filter = match value {
            Some(value) => format!("{key}={value}"),
            None => key.to_string(),
        };
        Box::pin(async move {
            let filters = HashMap::from([("label", vec![filter.clone()])]);
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let summaries = docker
                .list_containers(Some(options))
                .await
                .map_err(|error| RuntimeError::Engine {
                    action: format!("list containers labelled {filter}"),
                    source: Box::new(error),
                })?;
            Ok(summaries.into_iter().map(summary_info).collect())
        })
    }

    fn inspect_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerInfo, RuntimeError>> {
        let docker = self.docker.clone();
        let id = id.clone();
        Box::pin(async move {
            match docker
                .inspect_container(&id.0, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => Ok(container_info(inspect)),
                Err(error) if status_code(&error) == Some(404) => {
                    Err(RuntimeError::ContainerNotFound { container: id.0 })
                }
                Err(error) => Err(container_error("inspect", id.short(), error)),
            }
        })
    }
}

// === helpers ===

/// Returns the HTTP status of an error response from the engine, if it is one.
fn status_code(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn container_error(
    action: &'static str,
    container: &str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> RuntimeError {
    RuntimeError::Container {
        action,
        container: container.to_string(),
        source: source.into(),
    }
}

/// Removes a container after a failed start; a failure here is logged, since the start
/// error is the one to report.
async fn remove_quietly(docker: &Docker, id: &ContainerId) {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    if let Err(error) = docker.remove_container(&id.0, Some(options)).await
        && status_code(&error) != Some(404)
    {
        log::error!(
            "failed to remove container {} after a failed start: {error}",
            id.short()
        );
    }
}

/// Builds the create request for `config`: limits, ports on the publish address, labels, and no
/// engine restarts, since the worker owns restarts.
fn container_body(config: &ContainerConfig) -> ContainerCreateBody {
    let mut exposed_ports = Vec::with_capacity(config.ports.len());
    let mut port_bindings = PortMap::new();
    for mapping in &config.ports {
        let key = port_key(mapping.container_port, mapping.protocol);
        exposed_ports.push(key.clone());
        // An empty host port lets the engine choose a free one.
        let host_port = mapping.host_port.map(|p| p.to_string()).unwrap_or_default();
        let binding = DockerPortBinding {
            host_ip: Some(config.publish_address.to_string()),
            host_port: Some(host_port),
        };
        port_bindings.insert(key, Some(vec![binding]));
    }

    let memory = i64::try_from(config.memory.bytes()).unwrap_or(i64::MAX);
    let host_config = HostConfig {
        memory: Some(memory),
        // Equal to the memory limit, so the container gets no swap beyond its limit.
        memory_swap: Some(memory),
        nano_cpus: Some((config.cpu * 1e9).round() as i64),
        port_bindings: Some(port_bindings),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(config.image.clone()),
        cmd: (!config.command.is_empty()).then(|| config.command.clone()),
        env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(config.labels.clone().into_iter().collect()),
        exposed_ports: Some(exposed_ports),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn port_key(container_port: u16, protocol: Protocol) -> String {
    format!("{container_port}/{protocol}")
}

/// Parses Docker's `80/tcp` port key.
fn parse_port_key(key: &str) -> Option<(u16, Protocol)> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    Some((port.parse().ok()?, protocol))
}

/// Picks the binding on `publish_address` (Docker may list one per address family), else
/// the first one with a host port.
fn pick_binding(bindings: &[DockerPortBinding], publish_address: IpAddr) -> Option<(String, u16)> {
    let parsed: Vec<(String, u16)> = bindings
        .iter()
        .filter_map(|binding| {
            let port = binding.host_port.as_deref()?.parse::<u16>().ok()?;
            (port != 0).then(|| (binding.host_ip.clone().unwrap_or_default(), port))
        })
        .collect();
    let wanted = publish_address.to_string();
    parsed
        .iter()
        .find(|(ip, _)| *ip == wanted)
        .or_else(|| parsed.first())
        .cloned()
}

/// Splits an image reference into the repository and the tag or digest to pull.
fn split_image_reference(image: &str) -> (&str, &str) {
    if let Some((repository, digest)) = image.split_once('@') {
        return (repository, digest);
    }
    // A ':' before the last '/' belongs to a registry host, as in 127.0.0.1:5000/x.
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => {
            let split = name_start + colon;
            (&image[..split], &image[split + 1..])
        }
        None => (image, "latest"),
    }
}

fn summary_info(summary: ContainerSummary) -> ContainerInfo {
    let status = match summary.state {
        Some(ContainerSummaryStateEnum::CREATED) => ContainerStatus::Created,
        Some(
            ContainerSummaryStateEnum::RUNNING
            | ContainerSummaryStateEnum::PAUSED
            | ContainerSummaryStateEnum::RESTARTING,
        ) => ContainerStatus::Running,
        Some(ContainerSummaryStateEnum::REMOVING | ContainerSummaryStateEnum::STOPPING) => {
            ContainerStatus::Stopping
        }
        Some(ContainerSummaryStateEnum::EXITED) => ContainerStatus::Exited,
        Some(ContainerSummaryStateEnum::DEAD) => ContainerStatus::Dead,
        Some(ContainerSummaryStateEnum::EMPTY) | None => ContainerStatus::Unknown,
    };
    let name = summary
        .names
        .and_then(|names| names.into_iter().next())
        .unwrap_or_default();
    ContainerInfo {
        id: ContainerId(summary.id.unwrap_or_default()),
        name: name.trim_start_matches('/').to_string(),
        image: summary.image.unwrap_or_default(),
        labels: summary.labels.unwrap_or_default().into_iter().collect(),
        status,
        exit_code: None,
        host_ports: Vec::new(),
    }
}

fn container_info(inspect: ContainerInspectResponse) -> ContainerInfo {
    let state = inspect.state.unwrap_or_default();
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::RESTARTING,
        ) => ContainerStatus::Running,
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING) => {
            ContainerStatus::Stopping
        }
        Some(ContainerStateStatusEnum::EXITED) => ContainerStatus::Exited,
        Some(ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
        Some(ContainerStateStatusEnum::EMPTY) | None => ContainerStatus::Unknown,
    };
    let exit_code = matches!(status, ContainerStatus::Exited | ContainerStatus::Dead)
        .then_some(state.exit_code)
        .flatten();
    let labels: BTreeMap<String, String> = inspect
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let host_ports = inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .map(published_ports)
        .unwrap_or_default();
    ContainerInfo {
        id: ContainerId(inspect.id.unwrap_or_default()),
        name: inspect
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: inspect.image.unwrap_or_default(),
        labels,
        status,
        exit_code,
        host_ports,
    }
}

fn published_ports(ports: PortMap) -> Vec<PortBinding> {
    let mut bound = Vec::new();
    for (key, bindings) in ports {
        let Some((container_port, protocol)) = parse_port_key(&key) else {
            continue;
        };
        for binding in bindings.unwrap_or_default() {
            let Some(host_port) = binding.host_port.and_then(|p| p.parse().ok()) else {
                continue;
            };
            bound.push(PortBinding {
                container_port,
                protocol,
                host_ip: binding.host_ip.unwrap_or_default(),
                host_port,
            });
        }
    }
    bound.sort_by_key(|binding| (binding.container_port, binding.host_port));
    bound
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cube_core::{ByteSize, PortMapping};

    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "cube-t-a".into(),
            image: "cube-test/busybox:latest".into(),
            command: vec!["sleep".into(), "5".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            cpu: 0.25,
            memory: ByteSize::mib(32),
            labels: BTreeMap::from([("cube.task".into(), "t".into())]),
            ports: vec![
                PortMapping {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_port: None,
                },
                PortMapping {
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_port: Some(15353),
                },
            ],
            publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    #[test]
    fn image_reference_splits_tag_and_registry() {
        let cases = [
            ("busybox", ("busybox", "latest")),
            ("cube-test/busybox:latest", ("cube-test/busybox", "latest")),
            ("127.0.0.1:1/cube/x", ("127.0.0.1:1/cube/x", "latest")),
            ("127.0.0.1:1/cube/x:v2", ("127.0.0.1:1/cube/x", "v2")),
            ("repo/x@sha256:abc", ("repo/x", "sha256:abc")),
        ];
        for (image, expected) in cases {
            assert_eq!(split_image_reference(image), expected, "{image}");
        }
    }

    #[test]
    fn create_body_sets_limits_ports_and_labels() {
        let body = container_body(&config());
        let host = body.host_config.expect("host config");
        assert_eq!(host.memory, Some(32 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(
            host.restart_policy.and_then(|policy| policy.name),
            Some(RestartPolicyNameEnum::NO)
        );
        let bindings = host.port_bindings.expect("port bindings");
        let dynamic = bindings["80/tcp"].as_ref().unwrap()[0].clone();
        assert_eq!(dynamic.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(dynamic.host_port.as_deref(), Some(""));
        let fixed = bindings["53/udp"].as_ref().unwrap()[0].clone();
        assert_eq!(fixed.host_port.as_deref(), Some("15353"));
        assert_eq!(
            body.exposed_ports,
            Some(vec!["80/tcp".to_string(), "53/udp".to_string()])
        );
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
        assert_eq!(body.labels.unwrap()["cube.task"], "t");
        assert_eq!(body.cmd, Some(vec!["sleep".to_string(), "5".to_string()]));
    }

    #[test]
    fn create_body_keeps_image_command_when_empty() {
        let mut config = config();
        config.command.clear();
        assert_eq!(container_body(&config).cmd, None);
    }

    #[test]
    fn binding_prefers_publish_address() {
        let bindings = vec![
            DockerPortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some("32768".into()),
            },
            DockerPortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("32769".into()),
            },
        ];
        let picked = pick_binding(&bindings, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(picked, Some(("127.0.0.1".to_string(), 32769)));
        assert_eq!(pick_binding(&[], IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
    }

    #[test]
    fn port_key_round_trips() {
        assert_eq!(port_key(80, Protocol::Tcp), "80/tcp");
        assert_eq!(parse_port_key("53/udp"), Some((53, Protocol::Udp)));
        assert_eq!(parse_port_key("80/sctp"), None);
    }
}
