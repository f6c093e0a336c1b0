//! The container runtime interface: the operations a worker needs from a container engine.
//!
//! [`ContainerRuntime`] is object-safe and used as `Arc<dyn ContainerRuntime>`, so the worker
//! runs unchanged on Docker ([`crate::docker::DockerRuntime`]) or on the simulated engine of
//! actor tests ([`crate::simulated::SimulatedRuntime`]). Every method returns a `'static`
//! boxed future that owns what it needs, so an actor can await it with `into_actor`.
//!
//! Contract shared by the implementations:
//! - [`ContainerRuntime::start_container`] either returns a running container with every
//!   requested port bound, or fails and leaves no container behind.
//! - [`ContainerRuntime::stop_container`] and [`ContainerRuntime::remove_container`] succeed
//!   when the container is already gone.
//! - [`ContainerRuntime::wait_container`] resolves when the container stops running, with its
//!   exit code, or with [`ContainerExit::Vanished`] when it no longer exists.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cube_core::{
    AttemptId, ByteSize, ContainerId, PortBinding, PortMapping, Protocol, PullPolicy, TaskId,
};
use futures_util::future::BoxFuture;

/// The boxed error a runtime keeps as the source of an engine failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything needed to create and start one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// Container name, unique on the engine; see [`container_name`].
    pub name: String,
    /// Image reference, such as `cube-test/busybox:latest`.
    pub image: String,
    /// Command and arguments; empty keeps the image's default command.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// CPU limit in cores; fractional values are allowed.
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory: ByteSize,
    /// Labels set on the container, cube's own included.
    pub labels: BTreeMap<String, String>,
    /// Container ports to publish, each on a fixed or an engine-chosen host port.
    pub ports: Vec<PortMapping>,
    /// Host address the ports are published on.
    pub publish_address: IpAddr,
}

/// A container that was created and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedContainer {
    /// The engine's id of the container.
    pub id: ContainerId,
    /// The host ports bound, one per requested port, read back from the engine.
    pub host_ports: Vec<PortBinding>,
}

/// The way a container stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerExit {
    /// Its main process exited with this code (137 after SIGKILL, 143 after SIGTERM).
    Exited {
        /// The exit code.
        code: i64,
    },
    /// The container no longer exists, for example because it was removed by someone else.
    Vanished,
}

/// The lifecycle state of a container as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerStatus {
    /// Created but never started.
    Created,
    /// Running, or paused or restarting by the engine.
    Running,
    /// Being stopped or removed.
    Stopping,
    /// Its main process ended.
    Exited,
    /// The engine failed to stop or remove it.
    Dead,
    /// A state this crate does not know.
    Unknown,
}

/// The engine's view of one container, from a list or an inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The engine's id.
    pub id: ContainerId,
    /// The container name, without Docker's leading `/`.
    pub name: String,
    /// The image it was created from.
    pub image: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its lifecycle state.
    pub status: ContainerStatus,
    /// The exit code, once it exited.
    pub exit_code: Option<i64>,
    /// Host ports bound to it; empty from a list, filled by an inspect.
    pub host_ports: Vec<PortBinding>,
}

/// Failure of a container runtime operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The container engine could not be reached.
    #[error("failed to connect to the container engine at {endpoint}")]
    Connect {
        /// The socket path or URL tried.
        endpoint: String,
        /// The transport error.
        #[source]
        source: BoxError,
    },
    /// The image is absent and the pull policy forbids pulling it.
    #[error("image {image} is not present on the node and the pull policy is never")]
    ImageNotFound {
        /// The image reference.
        image: String,
    },
    /// Pulling the image failed.
    #[error("failed to pull image {image}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// The engine's error.
        #[source]
        source: BoxError,
    },
    /// A requested port was not bound after the container started; the container was removed.
    #[error(
        "container {container} started without port {container_port}/{protocol} published \
         on {publish_address}; the engine may lack a bridge network"
    )]
    PortNotPublished {
        /// The container's name or id.
        container: String,
        /// The container port that is missing.
        container_port: u16,
        /// Its protocol.
        protocol: Protocol,
        /// The host address it should have been published on.
        publish_address: IpAddr,
    },
    /// The container does not exist.
    #[error("container {container} not found")]
    ContainerNotFound {
        /// The container's name or id.
        container: String,
    },
    /// The engine refused or failed an operation on a container.
    #[error("failed to {action} container {container}")]
    Container {
        /// The operation, such as "create" or "stop".
        action: &'static str,
        /// The container's name or id.
        container: String,
        /// The engine's error.
        #[source]
        source: BoxError,
    },
    /// The engine failed an operation that concerns no single container.
    #[error("container engine failed to {action}")]
    Engine {
        /// The operation, such as "list containers".
        action: String,
        /// The engine's error.
        #[source]
        source: BoxError,
    },
    /// A simulated runtime was configured to fail this start.
    #[error("simulated start of container {container} failed: {reason}")]
    Simulated {
        /// The container's name.
        container: String,
        /// The configured reason.
        reason: String,
    },
}

/// A container engine as the worker uses it.
///
/// Implementations are cheap to share (`Arc<dyn ContainerRuntime>`) and must be used from
/// the actix `System` that created them, since engine clients are bound to their runtime.
pub trait ContainerRuntime: Send + Sync + fmt::Debug {
    /// Makes sure `image` is present: with [`PullPolicy::Never`] an absent image fails with
    /// [`RuntimeError::ImageNotFound`]; with [`PullPolicy::IfNotPresent`] it is pulled only
    /// when absent.
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// Creates and starts a container, then reads its bound ports back.
    ///
    /// On failure no container is left behind, including when a requested port was not
    /// published ([`RuntimeError::PortNotPublished`]).
    fn start_container(
        &self,
        config: ContainerConfig,
    ) -> BoxFuture<'static, Result<StartedContainer, RuntimeError>>;

    /// Resolves once the container stops running.
    fn wait_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerExit, RuntimeError>>;

    /// Sends SIGTERM, waits up to `grace`, then kills the container. A container that is
    /// gone or already stopped counts as stopped.
    fn stop_container(
        &self,
        id: &ContainerId,
        grace: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// Removes the container, killing it if it still runs. A container that is gone counts
    /// as removed.
    fn remove_container(&self, id: &ContainerId) -> BoxFuture<'static, Result<(), RuntimeError>>;

    /// Lists every container, running or not, that carries label `key`, and when `value` is
    /// given, with that value.
    fn list_containers(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, RuntimeError>>;

    /// Reads one container's state; [`RuntimeError::ContainerNotFound`] when it is gone.
    fn inspect_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerInfo, RuntimeError>>;
}

/// A shared handle to a container runtime.
pub type SharedRuntime = Arc<dyn ContainerRuntime>;

/// Returns the container name for one attempt of a task: `cube-<task id>-<first 8 hex digits of the
/// attempt>`.
///
/// Names derive from ids only, never from the spec's display name, so they are valid for
/// the engine and unique per attempt.
pub fn container_name(task_id: TaskId, attempt: AttemptId) -> String {
    let attempt = attempt.0.simple().to_string();
    format!("cube-{task_id}-{}", &attempt[..8])
}

/// Formats `error` with its chain of sources, such as
/// "failed to pull image x: connection refused", for reasons shown to users.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's text in their own; print it once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn container_name_uses_task_and_attempt() {
        let task = TaskId(Uuid::parse_str("6f1c1a8e-2b47-4d3e-9a51-0c2f8e9d7b10").unwrap());
        let attempt = AttemptId(Uuid::parse_str("a1b2c3d4-0000-4000-8000-000000000000").unwrap());
        assert_eq!(
            container_name(task, attempt),
            "cube-6f1c1a8e-2b47-4d3e-9a51-0c2f8e9d7b10-a1b2c3d4"
        );
    }

    #[test]
    fn error_chain_appends_sources_once() {
        let error = RuntimeError::ImagePull {
            image: "127.0.0.1:1/x:1".into(),
            source: "connection refused".into(),
        };
        assert_eq!(
            error_chain(&error),
            "failed to pull image 127.0.0.1:1/x:1: connection refused"
        );
        let repeated = RuntimeError::Engine {
            action: "list containers".into(),
            source: "container engine failed to list containers".into(),
        };
        assert_eq!(
            error_chain(&repeated),
            "container engine failed to list containers"
        );
    }
}
