//! [`SimulatedRuntime`]: an in-memory container engine for actor tests and benchmarks.
//!
//! It does no I/O. Containers are records with fake ids and fake host ports, and time
//! passes through tokio timers, so tests under paused tokio time run instantly. How a
//! container behaves (start delay, exit, start failure, ignoring SIGTERM) is set per image,
//! with a default for every other image. Counters let tests assert that no container is
//! left running.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cube_core::{ContainerId, PortBinding, PullPolicy};
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::runtime::{
    ContainerConfig, ContainerExit, ContainerInfo, ContainerRuntime, ContainerStatus, RuntimeError,
    StartedContainer,
};

/// Exit code of a simulated process that ends on SIGTERM (128 + 15).
pub const SIGTERM_EXIT_CODE: i64 = 143;
/// Exit code of a simulated process killed after its grace period (128 + 9).
pub const SIGKILL_EXIT_CODE: i64 = 137;
/// First fake host port handed out for a dynamic port.
pub const FIRST_DYNAMIC_PORT: u16 = 32768;

/// Exit behaviour of a simulated container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimulatedExit {
    /// Runs until it is stopped or removed.
    RunUntilStopped,
    /// Exits on its own `delay` after start, with `code`.
    ExitAfter {
        /// Time from start to exit.
        delay: Duration,
        /// The exit code.
        code: i64,
    },
    /// The start fails with `reason` after the start delay, leaving no container.
    FailToStart {
        /// The failure reason.
        reason: String,
    },
}

/// Behaviour of a simulated container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedBehaviour {
    /// Time the start takes (image check, create, start).
    pub start_delay: Duration,
    /// Exit behaviour of the process once started.
    pub exit: SimulatedExit,
    /// Whether the process ignores SIGTERM, so a stop takes the whole grace period and
    /// ends with SIGKILL.
    pub ignores_sigterm: bool,
}

impl SimulatedBehaviour {
    /// Creates a behaviour that starts at once and runs until stopped.
    pub fn run_until_stopped() -> Self {
        Self {
            start_delay: Duration::ZERO,
            exit: SimulatedExit::RunUntilStopped,
            ignores_sigterm: false,
        }
    }

    /// Creates a behaviour that exits with `code` `delay` after the start.
    pub fn exit_after(delay: Duration, code: i64) -> Self {
        Self {
            exit: SimulatedExit::ExitAfter { delay, code },
            ..Self::run_until_stopped()
        }
    }

    /// Creates a behaviour whose start fails with `reason`.
    pub fn fail_to_start(reason: impl Into<String>) -> Self {
        Self {
            exit: SimulatedExit::FailToStart {
                reason: reason.into(),
            },
            ..Self::run_until_stopped()
        }
    }

    /// Returns the same behaviour with a start that takes `delay`.
    pub fn with_start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }

    /// Returns the same behaviour with a process that ignores SIGTERM.
    pub fn ignoring_sigterm(mut self) -> Self {
        self.ignores_sigterm = true;
        self
    }
}

impl Default for SimulatedBehaviour {
    fn default() -> Self {
        Self::run_until_stopped()
    }
}

/// A container engine in memory; clones share the same containers.
#[derive(Debug, Clone, Default)]
pub struct SimulatedRuntime {
    state: Arc<Mutex<EngineState>>,
}

#[derive(Debug, Default)]
struct EngineState {
    default_behaviour: SimulatedBehaviour,
    image_behaviours: HashMap<String, SimulatedBehaviour>,
    missing_images: HashSet<String>,
    /// Host ports that dynamic ports of an image's containers bind, by container port.
    image_host_ports: HashMap<String, HashMap<u16, u16>>,
    containers: HashMap<ContainerId, SimulatedContainer>,
    next_container: u64,
    /// Watch senders of containers removed without waking their waiters.
    silenced: Vec<watch::Sender<()>>,
    next_dynamic_port: u16,
    started_total: u64,
}

#[derive(Debug)]
struct SimulatedContainer {
    config: ContainerConfig,
    host_ports: Vec<PortBinding>,
    behaviour: SimulatedBehaviour,
    /// When the process exits on its own, if it does.
    exits_at: Option<(Instant, i64)>,
    /// Exit code once stopped or exited by hand.
    exit_code: Option<i64>,
    /// Signals waiters that the container changed; dropped on removal.
    changed: watch::Sender<()>,
}

impl SimulatedContainer {
    fn exit_code_at(&self, now: Instant) -> Option<i64> {
        self.exit_code.or(match self.exits_at {
            Some((at, code)) if at <= now => Some(code),
            _ => None,
        })
    }

    fn info(&self, id: &ContainerId, now: Instant) -> ContainerInfo {
        let exit_code = self.exit_code_at(now);
        ContainerInfo {
            id: id.clone(),
            name: self.config.name.clone(),
            image: self.config.image.clone(),
            labels: self.config.labels.clone(),
            status: if exit_code.is_some() {
                ContainerStatus::Exited
            } else {
                ContainerStatus::Running
            },
            exit_code,
            host_ports: self.host_ports.clone(),
        }
    }
}

// === impl SimulatedRuntime ===

impl SimulatedRuntime {
    /// Creates an engine where every image is present and behaves as `behaviour`.
    pub fn new(behaviour: SimulatedBehaviour) -> Self {
        let runtime = Self::default();
        runtime.lock().default_behaviour = behaviour;
        runtime
    }

    /// Makes containers of `image` behave as `behaviour` from now on.
    pub fn set_image_behaviour(&self, image: impl Into<String>, behaviour: SimulatedBehaviour) {
        self.lock().image_behaviours.insert(image.into(), behaviour);
    }

    /// Makes every container of `image` bind `container_port`, when its mapping requests a
    /// dynamic port, to `host_port` instead of a fresh fake port.
    ///
    /// A test points `host_port` at a server of its own, such as an HTTP server on
    /// 127.0.0.1 that stands in for the container's process for health checks.
    pub fn set_image_host_port(
        &self,
        image: impl Into<String>,
        container_port: u16,
        host_port: u16,
    ) {
        let mut state = self.lock();
        let ports = state.image_host_ports.entry(image.into()).or_default();
        ports.insert(container_port, host_port);
    }

    /// Makes `image` absent: a start fails with pull policy `never`, and a pull fails since
    /// the simulated engine has no registry.
    pub fn remove_image(&self, image: impl Into<String>) {
        self.lock().missing_images.insert(image.into());
    }

    /// Containers whose process still runs.
    pub fn running_count(&self) -> usize {
        let now = Instant::now();
        let state = self.lock();
        let running = state.containers.values();
        running.filter(|c| c.exit_code_at(now).is_none()).count()
    }

    /// Containers that exist, running or exited.
    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }

    /// Containers started since the engine was created.
    pub fn started_total(&self) -> u64 {
        self.lock().started_total
    }

    /// Returns every existing container, sorted by name.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let now = Instant::now();
        let state = self.lock();
        let mut containers: Vec<ContainerInfo> = state
            .containers
            .iter()
            .map(|(id, container)| container.info(id, now))
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        containers
    }

    /// Makes a running container's process exit with `code`, as a crash would.
    ///
    /// Returns whether the container existed and was running.
    pub fn exit_container(&self, id: &ContainerId, code: i64) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match state.containers.get_mut(id) {
            Some(container) if container.exit_code_at(now).is_none() => {
                container.exit_code = Some(code);
                container.changed.send_replace(());
                true
            }
            _ => false,
        }
    }

    /// Removes a container without waking its waiters, as an engine that loses a container
    /// without sending any event would: a wait on it stays pending until its exit deadline
    /// passes, if it has one.
    ///
    /// Returns whether the container existed.
    pub fn vanish_container(&self, id: &ContainerId) -> bool {
        let mut state = self.lock();
        let Some(container) = state.containers.remove(id) else {
            return false;
        };
        state.silenced.push(container.changed);
        true
    }

    fn lock(&self) -> MutexGuard<'_, EngineState> {
        // A panic while holding the lock leaves plain data behind, which stays usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn behaviour_for(&self, image: &str) -> SimulatedBehaviour {
        let state = self.lock();
        let behaviour = state.image_behaviours.get(image);
        behaviour.unwrap_or(&state.default_behaviour).clone()
    }

    fn create(
        &self,
        config: ContainerConfig,
        behaviour: SimulatedBehaviour,
    ) -> Result<StartedContainer, RuntimeError> {
        let mut state = self.lock();
        if state
            .containers
            .values()
            .any(|c| c.config.name == config.name)
        {
            return Err(RuntimeError::Container {
                action: "create",
                container: config.name.clone(),
                source: "the name is already in use".into(),
            });
        }

        state.next_container += 1;
        let id = ContainerId(format!("{:064x}", state.next_container));
        let mut host_ports = Vec::with_capacity(config.ports.len());
        for mapping in &config.ports {
            let preset = state
                .image_host_ports
                .get(&config.image)
                .and_then(|ports| ports.get(&mapping.container_port))
                .copied();
            let host_port = match (mapping.host_port, preset) {
                (Some(port), _) | (None, Some(port)) => port,
                (None, None) => state.allocate_dynamic_port(),
            };
            host_ports.push(PortBinding {
                container_port: mapping.container_port,
                protocol: mapping.protocol,
                host_ip: config.publish_address.to_string(),
                host_port,
            });
        }
        let exits_at = match behaviour.exit {
            SimulatedExit::ExitAfter { delay, code } => Some((Instant::now() + delay, code)),
            SimulatedExit::RunUntilStopped | SimulatedExit::FailToStart { .. } => None,
        };

        let (changed, _) = watch::channel(());
        state.started_total += 1;
        state.containers.insert(
            id.clone(),
            SimulatedContainer {
                config,
                host_ports: host_ports.clone(),
                behaviour,
                exits_at,
                exit_code: None,
                changed,
            },
        );
        Ok(StartedContainer { id, host_ports })
    }

    async fn wait_for_exit(self, id: ContainerId) -> ContainerExit {
        loop {
            let (deadline, mut changed) = {
                let state = self.lock();
                let Some(container) = state.containers.get(&id) else {
                    return ContainerExit::Vanished;
                };
                if let Some(code) = container.exit_code_at(Instant::now()) {
                    return ContainerExit::Exited { code };
                }
                (
                    container.exits_at.map(|(at, _)| at),
                    container.changed.subscribe(),
                )
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = changed.changed() => {}
                    }
                }
                // An error means the container was removed, so the next pass returns Vanished.
                None => changed.changed().await.unwrap_or(()),
            }
        }
    }

    async fn stop(self, id: ContainerId, grace: Duration) {
        let ignores_sigterm = {
            let state = self.lock();
            match state.containers.get(&id) {
                Some(container) if container.exit_code_at(Instant::now()).is_none() => {
                    container.behaviour.ignores_sigterm
                }
                _ => return,
            }
        };
        let code = if ignores_sigterm {
            tokio::time::sleep(grace).await;
            SIGKILL_EXIT_CODE
        } else {
            SIGTERM_EXIT_CODE
        };
        self.exit_container(&id, code);
    }
}

impl EngineState {
    fn allocate_dynamic_port(&mut self) -> u16 {
        if self.next_dynamic_port < FIRST_DYNAMIC_PORT {
            self.next_dynamic_port = FIRST_DYNAMIC_PORT;
        }
        let port = self.next_dynamic_port;
        self.next_dynamic_port = self
            .next_dynamic_port
            .checked_add(1)
            .unwrap_or(FIRST_DYNAMIC_PORT);
        port
    }
}

impl ContainerRuntime for SimulatedRuntime {
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let missing = self.lock().missing_images.contains(image);
        let image = image.to_string();
        Box::pin(async move {
            match (missing, policy) {
                (false, _) => Ok(()),
                (true, PullPolicy::Never) => Err(RuntimeError::ImageNotFound { image }),
                (true, PullPolicy::IfNotPresent) => Err(RuntimeError::ImagePull {
                    image,
                    source: "the simulated runtime has no registry".into(),
                }),
            }
        })
    }

    fn start_container(
        &self,
        config: ContainerConfig,
    ) -> BoxFuture<'static, Result<StartedContainer, RuntimeError>> {
        let runtime = self.clone();
        let behaviour = self.behaviour_for(&config.image);
        Box::pin(async move {
            tokio::time::sleep(behaviour.start_delay).await;
            if let SimulatedExit::FailToStart { reason } = &behaviour.exit {
                return Err(RuntimeError::Simulated {
                    container: config.name.clone(),
                    reason: reason.clone(),
                });
            }
            runtime.create(config, behaviour)
        })
    }

    fn wait_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerExit, RuntimeError>> {
        let wait = self.clone().wait_for_exit(id.clone());
        Box::pin(async move { Ok(wait.await) })
    }

    fn stop_container(
        &self,
        id: &ContainerId,
        grace: Duration,
    ) -> BoxFuture<'static, Result<(), RuntimeError>> {
        let stop = self.clone().stop(id.clone(), grace);
        Box::pin(async move {
            stop.await;
            Ok(())
        })
    }

    fn remove_container(&self, id: &ContainerId) -> BoxFuture<'static, Result<(), RuntimeError>> {
        // Dropping the record drops its watch sender, which wakes every waiter.
        self.lock().containers.remove(id);
        Box::pin(async { Ok(()) })
    }

    fn list_containers(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<ContainerInfo>, RuntimeError>> {
        let matching: Vec<ContainerInfo> = self
            .containers()
            .into_iter()
            .filter(|info| match (info.labels.get(key), value) {
                (Some(found), Some(wanted)) => found == wanted,
                (Some(_), None) => true,
                (None, _) => false,
            })
            .map(|mut info| {
                // A list, like Docker's, carries no ports.
                info.host_ports.clear();
                info
            })
            .collect();
        Box::pin(async move { Ok(matching) })
    }

    fn inspect_container(
        &self,
        id: &ContainerId,
    ) -> BoxFuture<'static, Result<ContainerInfo, RuntimeError>> {
        let now = Instant::now();
        let found = self.lock().containers.get(id).map(|c| c.info(id, now));
        let id = id.clone();
        Box::pin(async move { found.ok_or(RuntimeError::ContainerNotFound { container: id.0 }) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use cube_core::{ByteSize, PortMapping, Protocol};

    use super::*;

    fn config(name: &str, image: &str) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: image.into(),
            command: Vec::new(),
            env: BTreeMap::new(),
            cpu: 0.1,
            memory: ByteSize::mib(16),
            labels: BTreeMap::from([("cube.test".into(), "unit".into())]),
            ports: vec![PortMapping {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_port: None,
            }],
            publish_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn container_exits_after_delay_with_code() {
        let runtime =
            SimulatedRuntime::new(SimulatedBehaviour::exit_after(Duration::from_secs(3), 3));
        let started = runtime.start_container(config("a", "img")).await.unwrap();
        assert_eq!(started.host_ports[0].host_port, FIRST_DYNAMIC_PORT);
        assert_eq!(runtime.running_count(), 1);

        let exit = runtime.wait_container(&started.id).await.unwrap();
        assert_eq!(exit, ContainerExit::Exited { code: 3 });
        assert_eq!(runtime.running_count(), 0);
        assert_eq!(runtime.container_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_wait_and_remove_deletes() {
        let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
        let started = runtime.start_container(config("a", "img")).await.unwrap();
        let wait = runtime.wait_container(&started.id);
        runtime
            .stop_container(&started.id, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            wait.await.unwrap(),
            ContainerExit::Exited {
                code: SIGTERM_EXIT_CODE
            }
        );
        runtime.remove_container(&started.id).await.unwrap();
        assert_eq!(runtime.container_count(), 0);
        let vanished = runtime.wait_container(&started.id).await.unwrap();
        assert_eq!(vanished, ContainerExit::Vanished);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_vanish_leaves_wait_pending() {
        let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
        let started = runtime.start_container(config("a", "img")).await.unwrap();
        // The wait must be under way before the vanish, as a supervisor's would be.
        let wait = tokio::spawn(runtime.wait_container(&started.id));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(runtime.vanish_container(&started.id));
        assert!(!runtime.vanish_container(&started.id));
        assert_eq!(runtime.container_count(), 0);
        let pending = tokio::time::timeout(Duration::from_secs(3600), wait).await;
        assert!(pending.is_err(), "wait returned: {pending:?}");
        let inspect = runtime.inspect_container(&started.id).await;
        assert!(matches!(
            inspect,
            Err(RuntimeError::ContainerNotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_of_sigterm_ignoring_process_takes_grace() {
        let runtime =
            SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped().ignoring_sigterm());
        let started = runtime.start_container(config("a", "img")).await.unwrap();
        let before = Instant::now();
        runtime
            .stop_container(&started.id, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(before.elapsed(), Duration::from_secs(2));
        let info = runtime.inspect_container(&started.id).await.unwrap();
        assert_eq!(info.exit_code, Some(SIGKILL_EXIT_CODE));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_start_leaves_no_container() {
        let runtime = SimulatedRuntime::new(SimulatedBehaviour::run_until_stopped());
        runtime.set_image_behaviour("bad", SimulatedBehaviour::fail_to_start("no space"));
        let error = runtime
            .start_container(config("a", "bad"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no space"), "{error}");
        assert_eq!(runtime.container_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn missing_image_fails_per_policy() {
        let runtime = SimulatedRuntime::default();
        runtime.remove_image("gone:1");
        let never = runtime.ensure_image("gone:1", PullPolicy::Never).await;
        assert!(matches!(never, Err(RuntimeError::ImageNotFound { image }) if image == "gone:1"));
        let pull = runtime
            .ensure_image("gone:1", PullPolicy::IfNotPresent)
            .await;
        assert!(matches!(pull, Err(RuntimeError::ImagePull { .. })));
        assert!(
            runtime
                .ensure_image("other:1", PullPolicy::Never)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_name_is_rejected() {
        let runtime = SimulatedRuntime::default();
        runtime.start_container(config("a", "img")).await.unwrap();
        let error = runtime
            .start_container(config("a", "img"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("create container a"), "{error}");
        assert_eq!(runtime.container_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn image_host_port_replaces_dynamic_port() {
        let runtime = SimulatedRuntime::default();
        runtime.set_image_host_port("web", 80, 40123);
        let preset = runtime.start_container(config("a", "web")).await.unwrap();
        assert_eq!(preset.host_ports[0].host_port, 40123);
        let other = runtime.start_container(config("b", "img")).await.unwrap();
        assert_eq!(other.host_ports[0].host_port, FIRST_DYNAMIC_PORT);
    }

    #[tokio::test(start_paused = true)]
    async fn list_filters_by_label() {
        let runtime = SimulatedRuntime::default();
        runtime.start_container(config("a", "img")).await.unwrap();
        let all = runtime.list_containers("cube.test", None).await.unwrap();
        assert_eq!(all.len(), 1);
        let none = runtime
            .list_containers("cube.test", Some("other"))
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
