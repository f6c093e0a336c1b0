//! Bare container starts through bollard, the baseline that cube's Docker path is compared
//! against, and the removal of a run's containers.
//!
//! This is the only module of the benchmarks that imports bollard. [`BareDocker`] creates
//! and starts a container with the same limits cube's Docker runtime sets (memory with no
//! extra swap, CPU as nano-CPUs, no engine restarts), so the two sides differ only by what
//! cube adds around those two calls.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use cube_core::ByteSize;

use crate::error::BenchError;

/// One container for [`BareDocker::create_and_start`].
#[derive(Debug, Clone)]
pub struct BareContainer {
    /// Container name.
    pub name: String,
    /// Local image.
    pub image: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Labels set on the container.
    pub labels: BTreeMap<String, String>,
    /// CPU limit in cores.
    pub cpu: f64,
    /// Memory limit.
    pub memory: ByteSize,
}

/// A bollard client of the local Docker Engine.
///
/// Like every bollard client it is bound to the runtime that opened its connections: create
/// one per actix `System`.
#[derive(Debug, Clone)]
pub struct BareDocker {
    docker: Docker,
}

impl BareDocker {
    /// Connects to the engine named by `DOCKER_HOST`, else the local socket.
    ///
    /// # Errors
    ///
    /// Returns [`BenchError::Docker`] when the engine cannot be reached.
    pub async fn connect() -> Result<Self, BenchError> {
        let docker_error = |source| BenchError::Docker {
            action: "connect to the Docker Engine".to_owned(),
            source,
        };
        let docker = Docker::connect_with_local_defaults().map_err(docker_error)?;
        let docker = docker.negotiate_version().await.map_err(docker_error)?;
        Ok(Self { docker })
    }

    /// Creates and starts `container`; returns the time the two calls took.
    ///
    /// # Errors
    ///
    /// Returns [`BenchError::Docker`] naming the call and the container when either fails.
    pub async fn create_and_start(
        &self,
        container: &BareContainer,
    ) -> Result<Duration, BenchError> {
        let memory = i64::try_from(container.memory.bytes()).unwrap_or(i64::MAX);
        let body = ContainerCreateBody {
            image: Some(container.image.clone()),
            cmd: Some(container.command.clone()),
            labels: Some(container.labels.clone().into_iter().collect()),
            host_config: Some(HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some((container.cpu * 1e9).round() as i64),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container.name)
            .build();

        let start = Instant::now();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| BenchError::Docker {
                action: format!("create container {}", container.name),
                source,
            })?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(|source| BenchError::Docker {
                action: format!("start container {}", container.name),
                source,
            })?;
        Ok(start.elapsed())
    }

    /// Force-removes every container, running or not, labelled `key=value`; returns how many.
    ///
    /// # Errors
    ///
    /// Returns [`BenchError::Docker`] when listing fails or a removal fails for a reason
    /// other than the container being gone already.
    pub async fn remove_labelled(&self, key: &str, value: &str) -> Result<usize, BenchError> {
        let filter = format!("{key}={value}");
        let filters = HashMap::from([("label", vec![filter.clone()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| BenchError::Docker {
                action: format!("list containers labelled {filter}"),
                source,
            })?;

        let mut removed = 0;
        for id in containers.into_iter().filter_map(|summary| summary.id) {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.docker.remove_container(&id, Some(options)).await {
                Ok(()) => removed += 1,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(source) => {
                    return Err(BenchError::Docker {
                        action: format!("remove container {id}"),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }
}
