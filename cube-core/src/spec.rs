//! The task spec: what a user asks cube to run, and its validation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::DurationSpec;
use crate::resources::{ByteSize, Resources};

/// What a user submits: the container to run and the resources it needs.
///
/// Unknown fields are rejected so that a misspelt field is an error rather than silently
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Display label. Container names derive from the task id and attempt, not from it.
    pub name: String,
    /// Container image reference, such as `cube-test/busybox:latest`.
    pub image: String,
    /// When the worker pulls the image.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Command and arguments; empty keeps the image's default command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables set in the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU in cores; fractional values such as 0.25 are allowed.
    #[serde(default = "default_cpu")]
    pub cpu: f64,
    /// Memory limit in bytes (task files may write `"64MiB"`).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Disk the task needs on its node, in bytes; 0 reserves none.
    #[serde(default)]
    pub disk: ByteSize,
    /// Container ports to publish on the node.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// What happens when the container exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// HTTP health check run by the task's worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Time between SIGTERM and SIGKILL when the task is stopped.
    #[serde(default = "default_stop_grace_period")]
    pub stop_grace_period: DurationSpec,
    /// User labels, copied onto the container. Keys starting with `cube.` are reserved.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_cpu() -> f64 {
    0.1
}

fn default_memory() -> ByteSize {
    ByteSize::mib(64)
}

fn default_stop_grace_period() -> DurationSpec {
    DurationSpec::from_secs(10)
}

/// When a worker pulls a task's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Never pull: the task fails when the image is not on the node.
    Never,
}

/// Transport protocol of a port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A container port to publish, on a fixed host port or on one chosen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port inside the container.
    pub container_port: u16,
    /// Host port; absent means a dynamic port chosen at placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Protocol of both ports.
    #[serde(default)]
    pub protocol: Protocol,
}

/// The restart policy of a task, applied by the task's worker.
///
/// When an attempt ends (its container exits, vanishes or fails to start) and [`RestartMode`]
/// calls for a restart, the worker waits the back-off delay and starts a new attempt. The
/// delay before restart `n` (from 1) is `backoff × 2^(n-1)`, capped at `max_backoff`, then
/// moved at random by up to ±[`RESTART_JITTER`] of itself and capped again. A stop the user
/// asked for never leads to a restart. Once `max_attempts` restarts are used up, the task
/// ends as its last attempt did: `completed` after exit code 0, `failed` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// When to restart.
    #[serde(default)]
    pub mode: RestartMode,
    /// Maximum number of restarts before the task ends `failed`; the first start is not
    /// counted, so a task runs at most `max_attempts + 1` containers.
    #[serde(default = "default_max_restarts")]
    pub max_attempts: u32,
    /// Delay before the first restart, doubled for each later one up to `max_backoff`.
    #[serde(default = "default_backoff")]
    pub backoff: DurationSpec,
    /// Upper bound of the restart delay.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: DurationSpec,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::default(),
            max_attempts: default_max_restarts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// Largest share of a restart delay that jitter adds or removes: 0.2 is ±20 %.
///
/// Jitter keeps tasks that failed together, such as on a shared dependency, from restarting
/// in lockstep.
pub const RESTART_JITTER: f64 = 0.2;

/// Largest accepted [`RestartPolicy::max_attempts`].
pub const MAX_RESTART_ATTEMPTS: u32 = 10_000;

/// Largest accepted [`RestartPolicy::max_backoff`].
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(3600);

impl RestartPolicy {
    /// Returns whether an attempt that ended as `failed` (or not) is restarted, given the
    /// restarts already made. The caller excludes a stop that the user requested.
    pub fn should_restart(&self, failed: bool, restarts_so_far: u32) -> bool {
        self.mode.restarts_after(failed) && restarts_so_far < self.max_attempts
    }

    /// Returns the delay before restart number `restart` (1 for the first), without jitter.
    pub fn base_delay(&self, restart: u32) -> Duration {
        let doublings = restart.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let backoff = self.backoff.get();
        let delay = u32::try_from(factor)
            .ok()
            .and_then(|factor| backoff.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        delay.min(self.max_backoff.get())
    }

    /// Returns the delay before restart number `restart`, moved by `jitter` (from -1.0 to 1.0)
    /// times [`RESTART_JITTER`] of itself and capped at `max_backoff`.
    ///
    /// A caller passes a random `jitter`; values outside -1.0 to 1.0 are clamped.
    pub fn delay(&self, restart: u32, jitter: f64) -> Duration {
        let base = self.base_delay(restart);
        let jitter = if jitter.is_finite() {
            jitter.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        base.mul_f64(1.0 + jitter * RESTART_JITTER)
            .min(self.max_backoff.get())
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts > MAX_RESTART_ATTEMPTS {
            return Err(FieldError::new(
                "restart_policy.max_attempts",
                format!(
                    "{} is out of range: expected 0 to {MAX_RESTART_ATTEMPTS}",
                    self.max_attempts
                ),
            ));
        }
        if self.backoff.get().is_zero() {
            return Err(FieldError::new(
                "restart_policy.backoff",
                "must be more than 0, such as \"1s\"",
            ));
        }
        if self.max_backoff.get() > MAX_RESTART_BACKOFF {
            return Err(FieldError::new(
                "restart_policy.max_backoff",
                format!("{} is out of range: expected at most 1h", self.max_backoff),
            ));
        }
        if self.max_backoff < self.backoff {
            return Err(FieldError::new(
                "restart_policy.max_backoff",
                format!(
                    "{} is less than restart_policy.backoff {}",
                    self.max_backoff, self.backoff
                ),
            ));
        }
        Ok(())
    }
}

fn default_max_restarts() -> u32 {
    3
}

fn default_backoff() -> DurationSpec {
    DurationSpec::from_secs(1)
}

fn default_max_backoff() -> DurationSpec {
    DurationSpec::from_secs(60)
}

/// When a task's container is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Never restart: the task ends with its container.
    Never,
    /// Restart when the container exits with a non-zero code, vanishes or fails to start.
    #[default]
    OnFailure,
    /// Restart whenever the container exits, unless the user stopped the task.
    Always,
}

impl RestartMode {
    /// Returns whether this mode restarts an attempt that ended as `failed` (or not).
    pub fn restarts_after(self, failed: bool) -> bool {
        match self {
            RestartMode::Never => false,
            RestartMode::OnFailure => failed,
            RestartMode::Always => true,
        }
    }
}

/// An HTTP health check run against the task's published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Request path, starting with `/`.
    pub path: String,
    /// Container port to probe; it must be one of the task's ports.
    pub port: u16,
    /// Time between two checks.
    #[serde(default = "default_health_interval")]
    pub interval: DurationSpec,
    /// Time a check may take before it counts as failed.
    #[serde(default = "default_health_timeout")]
    pub timeout: DurationSpec,
    /// Consecutive failed checks after which the task is unhealthy.
    #[serde(default = "default_health_failures")]
    pub failure_threshold: u32,
}

/// Largest accepted [`HealthCheck::interval`].
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(3600);

const MAX_HEALTH_PATH_LEN: usize = 1024;

impl HealthCheck {
    /// Checks every field against the task's `ports`, since the probed port must be one of
    /// its TCP container ports.
    fn validate(&self, ports: &[PortSpec]) -> Result<(), FieldError> {
        let path = &self.path;
        if !path.starts_with('/') {
            return Err(FieldError::new(
                "health_check.path",
                format!("'{path}' must start with '/', such as \"/health\""),
            ));
        }
        if path.len() > MAX_HEALTH_PATH_LEN
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                "health_check.path",
                format!("must be at most {MAX_HEALTH_PATH_LEN} bytes without spaces"),
            ));
        }

        let tcp_ports: Vec<u16> = ports
            .iter()
            .filter(|port| port.protocol == Protocol::Tcp)
            .map(|port| port.container_port)
            .collect();
        if !tcp_ports.contains(&self.port) {
            let listed: Vec<String> = tcp_ports.iter().map(u16::to_string).collect();
            return Err(FieldError::new(
                "health_check.port",
                format!(
                    "{} is not one of the task's TCP container ports [{}]",
                    self.port,
                    listed.join(", ")
                ),
            ));
        }

        if self.interval.get().is_zero() {
            return Err(FieldError::new(
                "health_check.interval",
                "must be more than 0, such as \"10s\"",
            ));
        }
        if self.interval.get() > MAX_HEALTH_INTERVAL {
            return Err(FieldError::new(
                "health_check.interval",
                format!("{} is out of range: expected at most 1h", self.interval),
            ));
        }

        if self.timeout.get().is_zero() {
            return Err(FieldError::new(
                "health_check.timeout",
                "must be more than 0, such as \"2s\"",
            ));
        }
        if self.timeout > self.interval {
            return Err(FieldError::new(
                "health_check.timeout",
                format!(
                    "{} is more than health_check.interval {}",
                    self.timeout, self.interval
                ),
            ));
        }

        if self.failure_threshold == 0 {
            return Err(FieldError::new(
                "health_check.failure_threshold",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn default_health_interval() -> DurationSpec {
    DurationSpec::from_secs(10)
}

fn default_health_timeout() -> DurationSpec {
    DurationSpec::from_secs(2)
}

fn default_health_failures() -> u32 {
    3
}

/// Upper bounds that a task's resource requests are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpecLimits {
    /// Maximum CPU in cores.
    pub max_cpu: f64,
    /// Maximum memory in bytes.
    pub max_memory: ByteSize,
    /// Maximum disk in bytes.
    pub max_disk: ByteSize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_cpu: 256.0,
            max_memory: ByteSize::gib(1024),
            max_disk: ByteSize::gib(64 * 1024),
        }
    }
}

/// A spec field that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field '{field}': {message}")]
pub struct FieldError {
    /// Path of the field, such as `memory` or `ports[1].host_port`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl FieldError {
    /// Creates an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

const MAX_NAME_LEN: usize = 128;
const MAX_IMAGE_LEN: usize = 255;
/// Label keys with this prefix are set by cube itself.
pub const RESERVED_LABEL_PREFIX: &str = "cube.";

impl TaskSpec {
    /// Creates a spec for `image` with default resources and no ports.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            pull_policy: PullPolicy::default(),
            command: Vec::new(),
            env: BTreeMap::new(),
            cpu: default_cpu(),
            memory: default_memory(),
            disk: ByteSize(0),
            ports: Vec::new(),
            restart_policy: RestartPolicy::default(),
            health_check: None,
            stop_grace_period: default_stop_grace_period(),
            labels: BTreeMap::new(),
        }
    }

    /// The resources this task requests.
    pub fn resources(&self) -> Resources {
        Resources {
            cpu: self.cpu,
            memory: self.memory,
            disk: self.disk,
        }
    }

    /// Checks every field and returns the first invalid one.
    ///
    /// # Errors
    ///
    /// Returns a [`FieldError`] naming the field and the accepted values.
    pub fn validate(&self, limits: &SpecLimits) -> Result<(), FieldError> {
        self.validate_identity()?;
        self.validate_resources(limits)?;
        self.validate_ports()?;
        self.validate_policies()?;
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), FieldError> {
        if self.name.trim().is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if self.name.len() > MAX_NAME_LEN || self.name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "name",
                format!("must be at most {MAX_NAME_LEN} bytes without control characters"),
            ));
        }
        if self.image.is_empty() {
            return Err(FieldError::new("image", "must not be empty"));
        }
        if self.image.len() > MAX_IMAGE_LEN || !is_image_reference(&self.image) {
            return Err(FieldError::new(
                "image",
                format!(
                    "'{}' is not an image reference: expected [HOST[:PORT]/]NAME[:TAG][@DIGEST] \
                     with a lowercase NAME, at most {MAX_IMAGE_LEN} bytes",
                    self.image
                ),
            ));
        }
        for (index, arg) in self.command.iter().enumerate() {
            if arg.contains('\0') {
                return Err(FieldError::new(
                    format!("command[{index}]"),
                    "must not contain NUL",
                ));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(FieldError::new(
                    format!("env.{key}"),
                    "names must be non-empty without '=' or NUL, and values without NUL",
                ));
            }
        }
        for key in self.labels.keys() {
            if key.starts_with(RESERVED_LABEL_PREFIX) {
                return Err(FieldError::new(
                    format!("labels.{key}"),
                    format!("keys starting with '{RESERVED_LABEL_PREFIX}' are reserved for cube"),
                ));
            }
            if key.is_empty() {
                return Err(FieldError::new("labels", "keys must not be empty"));
            }
        }
        Ok(())
    }

    fn validate_resources(&self, limits: &SpecLimits) -> Result<(), FieldError> {
        if !self.cpu.is_finite() || self.cpu <= 0.0 || self.cpu > limits.max_cpu {
            return Err(FieldError::new(
                "cpu",
                format!(
                    "{} is out of range: expected more than 0 and at most {} cores",
                    self.cpu, limits.max_cpu
                ),
            ));
        }
        if self.memory.0 == 0 || self.memory > limits.max_memory {
            return Err(FieldError::new(
                "memory",
                format!(
                    "{} bytes is out of range: expected 1 to {} bytes ({})",
                    self.memory.0, limits.max_memory.0, limits.max_memory
                ),
            ));
        }
        if self.disk > limits.max_disk {
            return Err(FieldError::new(
                "disk",
                format!(
                    "{} bytes is out of range: expected 0 to {} bytes ({})",
                    self.disk.0, limits.max_disk.0, limits.max_disk
                ),
            ));
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), FieldError> {
        let mut container_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (index, port) in self.ports.iter().enumerate() {
            if port.container_port == 0 {
                return Err(FieldError::new(
                    format!("ports[{index}].container_port"),
                    "must be 1 to 65535",
                ));
            }
            if !container_ports.insert((port.protocol, port.container_port)) {
                return Err(FieldError::new(
                    format!("ports[{index}].container_port"),
                    format!(
                        "container port {}/{} is listed twice",
                        port.container_port, port.protocol
                    ),
                ));
            }
            if let Some(host_port) = port.host_port {
                if host_port == 0 {
                    return Err(FieldError::new(
                        format!("ports[{index}].host_port"),
                        "must be 1 to 65535; leave it out for a dynamic port",
                    ));
                }
                if !host_ports.insert((port.protocol, host_port)) {
                    return Err(FieldError::new(
                        format!("ports[{index}].host_port"),
                        format!("host port {host_port}/{} is listed twice", port.protocol),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_policies(&self) -> Result<(), FieldError> {
        self.restart_policy.validate()?;
        if let Some(health_check) = &self.health_check {
            health_check.validate(&self.ports)?;
        }
        if self.stop_grace_period.get() > Duration::from_secs(3600) {
            return Err(FieldError::new("stop_grace_period", "must be at most 1h"));
        }
        Ok(())
    }
}

/// Checks `reference` against the grammar of Docker image references:
/// `[HOST[:PORT]/]COMPONENT[/COMPONENT...][:TAG][@ALGORITHM:HEX]`, where components are
/// lowercase letters and digits joined by `.`, `_`, `__` or dashes.
fn is_image_reference(reference: &str) -> bool {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return false;
        };
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |at| at + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(at) => (&rest[..last_slash + at], Some(&rest[last_slash + at + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !first_ok || !rest_ok || tag.len() > 128 {
            return false;
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let host = components[0];
        if host.contains('.') || host.contains(':') || host == "localhost" {
            if !is_registry_host(host) {
                return false;
            }
            components.remove(0);
        }
    }
    components
        .iter()
        .all(|component| is_path_component(component))
}

fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok());
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    port_ok && name_ok
}

fn is_path_component(component: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = component.as_bytes();
    if component.is_empty()
        || !alphanumeric(bytes[0] as char)
        || !alphanumeric(bytes[bytes.len() - 1] as char)
    {
        return false;
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    component
        .split(|c: char| alphanumeric(c))
        .filter(|separator| !separator.is_empty())
        .all(|separator| {
            matches!(separator, "." | "_" | "__") || separator.chars().all(|c| c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> TaskSpec {
        TaskSpec::new("web", "cube-test/busybox:latest")
    }

    fn field_of(spec: &TaskSpec) -> String {
        spec.validate(&SpecLimits::default()).unwrap_err().field
    }

    #[test]
    fn spec_defaults_are_valid() {
        assert_eq!(valid().validate(&SpecLimits::default()), Ok(()));
    }

    #[test]
    fn spec_parses_minimal_json() {
        let spec: TaskSpec =
            serde_json::from_str(r#"{"name":"w","image":"i:1","memory":"64MiB"}"#).unwrap();
        assert_eq!(spec.memory, ByteSize::mib(64));
        assert_eq!(spec.pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(spec.stop_grace_period, DurationSpec::from_secs(10));
    }

    #[test]
    fn spec_rejects_unknown_field() {
        let error =
            serde_json::from_str::<TaskSpec>(r#"{"name":"w","image":"i","memroy":1}"#).unwrap_err();
        assert!(error.to_string().contains("memroy"), "{error}");
    }

    #[test]
    fn image_reference_grammar() {
        let valid = [
            "busybox",
            "cube-test/busybox:latest",
            "127.0.0.1:5000/team/app:v1.2",
            "localhost/app",
            "registry.example.com/a__b/c-d.e:1",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ];
        for image in valid {
            assert!(is_image_reference(image), "{image} should be accepted");
        }
        let invalid = [
            "UPPER/Case::bad",
            "app:",
            "app:-tag",
            "/app",
            "app/",
            "a..b",
            "Busybox",
            "app@sha256:xyz",
            "host:99999/app",
        ];
        for image in invalid {
            assert!(!is_image_reference(image), "{image} should be rejected");
        }
    }

    #[test]
    fn spec_rejects_empty_name_and_image() {
        let mut spec = valid();
        spec.name = " ".into();
        assert_eq!(field_of(&spec), "name");
        let mut spec = valid();
        spec.image = String::new();
        assert_eq!(field_of(&spec), "image");
        let mut spec = valid();
        spec.image = "has space".into();
        assert_eq!(field_of(&spec), "image");
    }

    #[test]
    fn spec_rejects_out_of_range_resources() {
        let limits = SpecLimits::default();
        for cpu in [0.0, -0.5, 1e30, f64::NAN] {
            let mut spec = valid();
            spec.cpu = cpu;
            assert_eq!(
                spec.validate(&limits).unwrap_err().field,
                "cpu",
                "cpu {cpu}"
            );
        }
        let mut spec = valid();
        spec.memory = ByteSize(0);
        assert_eq!(field_of(&spec), "memory");
        let mut spec = valid();
        spec.memory = ByteSize(limits.max_memory.0 + 1);
        assert_eq!(field_of(&spec), "memory");
        let mut spec = valid();
        spec.disk = ByteSize(u64::MAX);
        assert_eq!(field_of(&spec), "disk");
    }

    #[test]
    fn spec_rejects_repeated_ports() {
        let mut spec = valid();
        spec.ports = vec![
            PortSpec {
                container_port: 80,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            },
            PortSpec {
                container_port: 81,
                host_port: Some(8080),
                protocol: Protocol::Tcp,
            },
        ];
        assert_eq!(field_of(&spec), "ports[1].host_port");

        spec.ports[1].protocol = Protocol::Udp;
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));

        spec.ports[1] = PortSpec {
            container_port: 80,
            host_port: None,
            protocol: Protocol::Tcp,
        };
        assert_eq!(field_of(&spec), "ports[1].container_port");
    }

    #[test]
    fn spec_rejects_zero_ports() {
        let mut spec = valid();
        spec.ports = vec![PortSpec {
            container_port: 0,
            host_port: None,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(field_of(&spec), "ports[0].container_port");
        spec.ports = vec![PortSpec {
            container_port: 80,
            host_port: Some(0),
            protocol: Protocol::Tcp,
        }];
        assert_eq!(field_of(&spec), "ports[0].host_port");
    }

    fn with_health_check() -> TaskSpec {
        let mut spec = valid();
        spec.ports = vec![PortSpec {
            container_port: 80,
            host_port: None,
            protocol: Protocol::Tcp,
        }];
        spec.health_check = Some(HealthCheck {
            path: "/health".into(),
            port: 80,
            interval: DurationSpec::from_secs(5),
            timeout: DurationSpec::from_secs(1),
            failure_threshold: 3,
        });
        spec
    }

    fn health_field_of(change: impl FnOnce(&mut HealthCheck)) -> String {
        let mut spec = with_health_check();
        change(spec.health_check.as_mut().unwrap());
        field_of(&spec)
    }

    #[test]
    fn health_check_accepts_valid_fields() {
        assert_eq!(with_health_check().validate(&SpecLimits::default()), Ok(()));
        let mut spec = with_health_check();
        let check = spec.health_check.as_mut().unwrap();
        check.timeout = check.interval;
        check.failure_threshold = 1;
        check.path = "/ready?verbose=1".into();
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));
    }

    #[test]
    fn health_check_parses_with_defaults() {
        let spec: TaskSpec = serde_json::from_str(
            r#"{"name":"w","image":"i","ports":[{"container_port":80}],
                "health_check":{"path":"/","port":80}}"#,
        )
        .unwrap();
        let check = spec.health_check.as_ref().unwrap();
        assert_eq!(check.interval, DurationSpec::from_secs(10));
        assert_eq!(check.timeout, DurationSpec::from_secs(2));
        assert_eq!(check.failure_threshold, 3);
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));
    }

    #[test]
    fn health_check_rejects_bad_path() {
        for path in ["health", "", "/a b", "/a\nb"] {
            let field = health_field_of(|check| check.path = path.into());
            assert_eq!(field, "health_check.path", "path {path:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_HEALTH_PATH_LEN));
        assert_eq!(
            health_field_of(|check| check.path = long),
            "health_check.path"
        );
    }

    #[test]
    fn health_check_rejects_port_outside_spec() {
        let mut spec = with_health_check();
        spec.health_check.as_mut().unwrap().port = 8080;
        let error = spec.validate(&SpecLimits::default()).unwrap_err();
        assert_eq!(error.field, "health_check.port");
        assert!(error.message.contains("8080"), "{}", error.message);
        assert!(error.message.contains("[80]"), "{}", error.message);

        // An HTTP check cannot probe a UDP port.
        let mut spec = with_health_check();
        spec.ports[0].protocol = Protocol::Udp;
        assert_eq!(field_of(&spec), "health_check.port");

        let mut spec = with_health_check();
        spec.ports.clear();
        assert_eq!(field_of(&spec), "health_check.port");
    }

    #[test]
    fn health_check_rejects_zero_or_huge_interval() {
        let zero = health_field_of(|check| check.interval = DurationSpec::from_millis(0));
        assert_eq!(zero, "health_check.interval");
        let huge = health_field_of(|check| check.interval = DurationSpec::from_secs(3601));
        assert_eq!(huge, "health_check.interval");
    }

    #[test]
    fn health_check_rejects_zero_timeout() {
        let field = health_field_of(|check| check.timeout = DurationSpec::from_millis(0));
        assert_eq!(field, "health_check.timeout");
    }

    #[test]
    fn health_check_rejects_timeout_above_interval() {
        let mut spec = with_health_check();
        let check = spec.health_check.as_mut().unwrap();
        check.interval = DurationSpec::from_secs(1);
        check.timeout = DurationSpec::from_millis(1500);
        let error = spec.validate(&SpecLimits::default()).unwrap_err();
        assert_eq!(error.field, "health_check.timeout");
        assert!(error.message.contains("1500ms"), "{}", error.message);
    }

    #[test]
    fn health_check_rejects_zero_failure_threshold() {
        let field = health_field_of(|check| check.failure_threshold = 0);
        assert_eq!(field, "health_check.failure_threshold");
    }

    #[test]
    fn restart_policy_defaults_to_on_failure() {
        let spec: TaskSpec = serde_json::from_str(r#"{"name":"w","image":"i"}"#).unwrap();
        assert_eq!(spec.restart_policy.mode, RestartMode::OnFailure);
        assert_eq!(spec.restart_policy.max_attempts, 3);
        assert_eq!(spec.restart_policy.backoff, DurationSpec::from_secs(1));
        assert_eq!(spec.restart_policy.max_backoff, DurationSpec::from_secs(60));
        assert_eq!(spec.restart_policy, RestartPolicy::default());
    }

    #[test]
    fn restart_policy_accepts_every_mode() {
        for mode in [
            RestartMode::Never,
            RestartMode::OnFailure,
            RestartMode::Always,
        ] {
            let mut spec = valid();
            spec.restart_policy.mode = mode;
            assert_eq!(spec.validate(&SpecLimits::default()), Ok(()), "{mode:?}");
        }
        let spec: TaskSpec = serde_json::from_str(
            r#"{"name":"w","image":"i","restart_policy":{"mode":"always","backoff":"250ms"}}"#,
        )
        .unwrap();
        assert_eq!(spec.restart_policy.mode, RestartMode::Always);
        assert_eq!(spec.restart_policy.backoff, DurationSpec::from_millis(250));
    }

    #[test]
    fn restart_policy_rejects_unknown_mode() {
        let error = serde_json::from_str::<TaskSpec>(
            r#"{"name":"w","image":"i","restart_policy":{"mode":"sometimes"}}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("sometimes"), "{error}");
    }

    #[test]
    fn restart_policy_rejects_zero_backoff() {
        let mut spec = valid();
        spec.restart_policy.backoff = DurationSpec::from_millis(0);
        assert_eq!(field_of(&spec), "restart_policy.backoff");
    }

    #[test]
    fn restart_policy_rejects_cap_below_backoff() {
        let mut spec = valid();
        spec.restart_policy.backoff = DurationSpec::from_secs(10);
        spec.restart_policy.max_backoff = DurationSpec::from_secs(5);
        let error = spec.validate(&SpecLimits::default()).unwrap_err();
        assert_eq!(error.field, "restart_policy.max_backoff");
        assert!(error.message.contains("10s"), "{}", error.message);

        spec.restart_policy.max_backoff = DurationSpec::from_secs(10);
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));
    }

    #[test]
    fn restart_policy_rejects_cap_above_one_hour() {
        let mut spec = valid();
        spec.restart_policy.max_backoff = DurationSpec::from_secs(3601);
        assert_eq!(field_of(&spec), "restart_policy.max_backoff");
    }

    #[test]
    fn restart_policy_bounds_max_attempts() {
        let mut spec = valid();
        spec.restart_policy.max_attempts = MAX_RESTART_ATTEMPTS;
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));
        spec.restart_policy.max_attempts = MAX_RESTART_ATTEMPTS + 1;
        assert_eq!(field_of(&spec), "restart_policy.max_attempts");
        spec.restart_policy.max_attempts = 0;
        assert_eq!(spec.validate(&SpecLimits::default()), Ok(()));
    }

    #[test]
    fn restart_mode_decides_by_outcome() {
        assert!(!RestartMode::Never.restarts_after(true));
        assert!(!RestartMode::Never.restarts_after(false));
        assert!(RestartMode::OnFailure.restarts_after(true));
        assert!(!RestartMode::OnFailure.restarts_after(false));
        assert!(RestartMode::Always.restarts_after(true));
        assert!(RestartMode::Always.restarts_after(false));
    }

    #[test]
    fn restart_policy_stops_at_max_attempts() {
        let policy = RestartPolicy {
            mode: RestartMode::Always,
            max_attempts: 2,
            ..RestartPolicy::default()
        };
        assert!(policy.should_restart(false, 0));
        assert!(policy.should_restart(true, 1));
        assert!(!policy.should_restart(true, 2));
        assert!(!policy.should_restart(false, 3));
    }

    #[test]
    fn restart_delay_doubles_up_to_cap() {
        let policy = RestartPolicy {
            mode: RestartMode::OnFailure,
            max_attempts: 100,
            backoff: DurationSpec::from_millis(100),
            max_backoff: DurationSpec::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6)
            .map(|restart| policy.base_delay(restart).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.base_delay(0), Duration::from_millis(100));
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn restart_delay_jitter_stays_within_bounds() {
        let policy = RestartPolicy {
            mode: RestartMode::OnFailure,
            max_attempts: 10,
            backoff: DurationSpec::from_secs(1),
            max_backoff: DurationSpec::from_secs(4),
        };
        assert_eq!(policy.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(1, -1.0), Duration::from_millis(800));
        assert_eq!(policy.delay(1, 1.0), Duration::from_millis(1200));
        assert_eq!(policy.delay(1, 7.0), Duration::from_millis(1200), "clamped");
        assert_eq!(policy.delay(1, f64::NAN), Duration::from_secs(1));
        // At the cap, jitter can only shorten the delay.
        assert_eq!(policy.delay(5, 1.0), Duration::from_secs(4));
        assert_eq!(policy.delay(5, -1.0), Duration::from_millis(3200));
    }

    #[test]
    fn spec_rejects_reserved_labels() {
        let mut spec = valid();
        spec.labels.insert("cube.task".into(), "x".into());
        assert_eq!(field_of(&spec), "labels.cube.task");
    }
}
