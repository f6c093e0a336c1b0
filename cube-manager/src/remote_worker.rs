//! The RemoteWorker bridge actor: drives a worker in another process over its HTTP API.
//!
//! A [`RemoteWorker`] handles the same messages as an in-process Worker actor
//! ([`StartTask`], [`StopTask`], [`ListTasks`], [`DescribeNode`], [`SubscribeReports`]), so
//! the [`crate::Manager`] reaches it through an ordinary [`WorkerHandle`] and does not need
//! to know that the worker is remote. Each command is one HTTP request with a timeout.
//! Reports are read from the worker's `GET /events?after=SEQ` stream (one JSON
//! [`WorkerReport`] per line) and forwarded to the subscribed weak recipient. After a
//! dropped connection the bridge reconnects with back-off and resumes after the last sequence
//! number it forwarded, so no report is lost or repeated. A bridge made with
//! [`RemoteWorker::connect_watched`] also sends [`ReportStreamChanged`] when the stream is
//! lost and when it opens again, so that the manager can skip the node in between.
//!
//! The worker's API, as this bridge uses it:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /tasks` with a [`StartTask`] body | 202 `{}` |
//! | `DELETE /tasks/{task_id}?attempt=UUID&reason=TEXT` | 202 `{}` |
//! | `GET /tasks` | `[WorkerTask]` |
//! | `GET /node` | [`NodeDescription`] |
//! | `GET /events?after=SEQ` | `application/x-ndjson`, kept open |
//!
//! Errors come as [`ErrorBody`]: a 4xx or 5xx answer becomes [`CommandError::Rejected`] with
//! its message; a connection failure [`CommandError::Unreachable`]; an expired timeout
//! [`CommandError::TimedOut`].

use std::fmt;
use std::time::{Duration, Instant};

use actix::WeakRecipient;
use actix::prelude::*;
use futures_util::StreamExt;
use log::{debug, info, warn};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde::de::{DeserializeOwned, IgnoredAny};

use cube_core::ids::NodeId;
use cube_core::messages::{
    CommandError, DescribeNode, ListTasks, StartTask, StopTask, SubscribeReports, WorkerHandle,
    WorkerReport,
};
use cube_core::node::NodeDescription;
use cube_core::wire::{ErrorBody, WORKER_INSTANCE_HEADER};
use cube_core::worker_task::WorkerTask;

/// First delay before reconnecting the event stream or retrying `GET /node`; it doubles up
/// to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Maximum delay between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Time between two checks whether anyone still holds a handle to the bridge.
const USERS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of a [`RemoteWorker`].
#[derive(Debug, Clone, Copy)]
pub struct RemoteWorkerConfig {
    /// Time each command request may take, connection included.
    pub request_timeout: Duration,
    /// How long [`RemoteWorker::connect`] keeps retrying a worker that is not up yet.
    pub connect_deadline: Duration,
    /// Silence on the event stream after which the bridge reconnects; workers send
    /// heartbeats, so a silent stream is a dead connection.
    pub stream_idle_timeout: Duration,
}

impl Default for RemoteWorkerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_deadline: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The report stream of a remote worker was lost or opened again.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ReportStreamChanged {
    /// The worker's node.
    pub node: NodeId,
    /// Whether the stream is open now.
    pub connected: bool,
    /// Why the stream was lost; empty when it opened.
    pub reason: String,
    /// Whether the stream opened on a new worker process, whose sequence numbers started
    /// again from 1; the bridge then replays that process's reports from the first.
    pub worker_restarted: bool,
}

/// Failure of [`RemoteWorker::connect`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address is not an HTTP URL or `host:port`.
    #[error("invalid worker address '{address}': {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to build the HTTP client for worker {url}")]
    Client {
        /// The worker's base URL.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// `GET /node` did not succeed before the deadline.
    #[error("failed to describe worker at {url} within {deadline_ms} ms: {reason}")]
    Describe {
        /// The worker's base URL.
        url: String,
        /// The deadline that expired.
        deadline_ms: u64,
        /// The last failure.
        reason: String,
    },
}

/// Forwards worker messages to a worker's HTTP API.
///
/// Handles [`StartTask`], [`StopTask`], [`ListTasks`], [`DescribeNode`] and
/// [`SubscribeReports`]; sends [`WorkerReport`]s to the subscribed recipient.
pub struct RemoteWorker {
    node: NodeId,
    base: Url,
    client: Client,
    stream_client: Client,
    config: RemoteWorkerConfig,
    stream: Option<SpawnHandle>,
    watcher: Option<WeakRecipient<ReportStreamChanged>>,
}

impl fmt::Debug for RemoteWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteWorker")
            .field("node", &self.node)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl RemoteWorker {
    /// Connects to the worker at `address` (`http://host:port` or `host:port`) and starts a
    /// bridge actor for it.
    ///
    /// Retries `GET /node` with back-off until `config.connect_deadline`, so a manager
    /// started before its workers still finds them. Must be called inside a running actix
    /// `System`.
    ///
    /// # Errors
    ///
    /// Returns [`ConnectError`] for a bad address, or when the worker did not describe
    /// itself before the deadline. A 4xx or 5xx answer fails at once without retrying.
    pub async fn connect(
        address: &str,
        config: RemoteWorkerConfig,
    ) -> Result<WorkerHandle, ConnectError> {
        Self::start_bridge(address, config, None).await
    }

    /// Connects as [`RemoteWorker::connect`] does, and sends `watcher` a
    /// [`ReportStreamChanged`] each time the report stream is lost or opens again.
    ///
    /// # Errors
    ///
    /// Returns what [`RemoteWorker::connect`] returns.
    pub async fn connect_watched(
        address: &str,
        config: RemoteWorkerConfig,
        watcher: WeakRecipient<ReportStreamChanged>,
    ) -> Result<WorkerHandle, ConnectError> {
        Self::start_bridge(address, config, Some(watcher)).await
    }

    async fn start_bridge(
        address: &str,
        config: RemoteWorkerConfig,
        watcher: Option<WeakRecipient<ReportStreamChanged>>,
    ) -> Result<WorkerHandle, ConnectError> {
        let base = parse_base_url(address)?;
        let client_error = |source| ConnectError::Client {
            url: base.to_string(),
            source,
        };
        let client = Client::builder()
            .no_proxy()
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(client_error)?;
        let stream_client = Client::builder()
            .no_proxy()
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(client_error)?;

        let description = describe_until(&client, &base, config).await?;
        let node = description.id.clone();
        info!("remote worker connected node_id={node} url={base}");
        let actor = RemoteWorker {
            node: node.clone(),
            base,
            client,
            stream_client,
            config,
            stream: None,
            watcher,
        }
        .start();
        Ok(WorkerHandle::from_addr(node, &actor))
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("relative paths join onto an http base URL")
    }
}

impl Actor for RemoteWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The event stream keeps the actor alive, so stop it here once every handle is gone,
        // such as when the manager replaced it; otherwise two bridges would forward reports.
        ctx.run_interval(USERS_CHECK_INTERVAL, |act, ctx| {
            if !ctx.connected() {
                debug!(
                    "remote worker bridge has no users left node_id={}",
                    act.node
                );
                ctx.stop();
            }
        });
    }
}

impl Handler<StartTask> for RemoteWorker {
    type Result = ResponseFuture<Result<(), CommandError>>;

    fn handle(&mut self, msg: StartTask, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.post(self.url("tasks")).json(&msg);
        let (node, timeout) = (self.node.clone(), self.config.request_timeout);
        Box::pin(async move {
            call::<IgnoredAny>(request, timeout)
                .await
                .map(|_| ())
                .map_err(|failure| failure.into_command_error(node, timeout))
        })
    }
}

impl Handler<StopTask> for RemoteWorker {
    type Result = ResponseFuture<Result<(), CommandError>>;

    fn handle(&mut self, msg: StopTask, _: &mut Context<Self>) -> Self::Result {
        let mut url = self.url(&format!("tasks/{}", msg.task_id));
        {
            let mut query = url.query_pairs_mut();
            if let Some(attempt) = msg.attempt {
                query.append_pair("attempt", &attempt.to_string());
            }
            query.append_pair("reason", &msg.reason);
        }
        let request = self.client.delete(url);
        let (node, timeout) = (self.node.clone(), self.config.request_timeout);
        Box::pin(async move {
            call::<IgnoredAny>(request, timeout)
                .await
                .map(|_| ())
                .map_err(|failure| failure.into_command_error(node, timeout))
        })
    }
}

impl Handler<ListTasks> for RemoteWorker {
    type Result = ResponseFuture<Result<Vec<WorkerTask>, CommandError>>;

    fn handle(&mut self, _: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.get(self.url("tasks"));
        let (node, timeout) = (self.node.clone(), self.config.request_timeout);
        Box::pin(async move {
            call(request, timeout)
                .await
                .map_err(|failure| failure.into_command_error(node, timeout))
        })
    }
}

impl Handler<DescribeNode> for RemoteWorker {
    type Result = ResponseFuture<Result<NodeDescription, CommandError>>;

    fn handle(&mut self, _: DescribeNode, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.get(self.url("node"));
        let (node, timeout) = (self.node.clone(), self.config.request_timeout);
        Box::pin(async move {
            call(request, timeout)
                .await
                .map_err(|failure| failure.into_command_error(node, timeout))
        })
    }
}

impl Handler<SubscribeReports> for RemoteWorker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeReports, ctx: &mut Context<Self>) {
        if let Some(previous) = self.stream.take() {
            ctx.cancel_future(previous);
        }
        let follower = EventFollower {
            client: self.stream_client.clone(),
            url: self.url("events"),
            node: self.node.clone(),
            recipient: msg.recipient,
            after: msg.after,
            idle_timeout: self.config.stream_idle_timeout,
            watcher: self.watcher.clone(),
            lost: false,
            instance: None,
        };
        // Spawned on this actor's context, so the stream closes when the bridge stops.
        self.stream = Some(ctx.spawn(actix::fut::wrap_future(follower.run())));
    }
}

// === event stream ===

/// Reads a worker's event stream and forwards each report, reconnecting as needed.
struct EventFollower {
    client: Client,
    url: Url,
    node: NodeId,
    recipient: WeakRecipient<WorkerReport>,
    /// Sequence number of the last report forwarded.
    after: u64,
    idle_timeout: Duration,
    watcher: Option<WeakRecipient<ReportStreamChanged>>,
    /// Whether the watcher was last told that the stream is lost.
    lost: bool,
    /// The worker process's instance, from the last stream's response header.
    instance: Option<String>,
}

/// Why one connection to the event stream ended.
enum StreamEnd {
    /// The subscriber is gone; stop following.
    SubscriberGone,
    /// The connection failed or ended; reconnect.
    Disconnected {
        /// What happened.
        reason: String,
        /// Whether the stream had been opened before it ended.
        connected: bool,
    },
}

impl StreamEnd {
    fn before_connecting(reason: String) -> Self {
        StreamEnd::Disconnected {
            reason,
            connected: false,
        }
    }

    fn after_connecting(reason: String) -> Self {
        StreamEnd::Disconnected {
            reason,
            connected: true,
        }
    }
}

impl EventFollower {
    async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        let mut failures = 0_u32;
        loop {
            if self.recipient.upgrade().is_none() {
                return;
            }
            let reason = match self.follow_once().await {
                StreamEnd::SubscriberGone => return,
                StreamEnd::Disconnected { reason, connected } => {
                    if connected {
                        backoff = INITIAL_BACKOFF;
                        failures = 0;
                    }
                    reason
                }
            };
            failures += 1;
            // Log and report the first failure in a row, repeats only at debug level.
            if failures == 1 {
                warn!(
                    "event stream of worker lost, reconnecting node_id={} after={} error={reason}",
                    self.node, self.after
                );
                self.tell_watcher(false, reason.clone());
            } else {
                debug!(
                    "event stream of worker still down node_id={} attempts={failures} error={reason}",
                    self.node
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens the stream after `self.after`.
    async fn open(&self) -> Result<reqwest::Response, StreamEnd> {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("after", &self.after.to_string());
        match self.client.get(url).send().await {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(StreamEnd::before_connecting(format!(
                "status {}",
                response.status()
            ))),
            Err(error) => Err(StreamEnd::before_connecting(error_text(&error))),
        }
    }

    /// Records the worker process named by `response`; returns whether it changed.
    fn note_instance(&mut self, response: &reqwest::Response) -> bool {
        let instance = response
            .headers()
            .get(WORKER_INSTANCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let Some(instance) = instance else {
            return false;
        };
        let previous = self.instance.replace(instance);
        previous.is_some_and(|previous| Some(previous) != self.instance)
    }

    /// Follows one connection until it ends.
    async fn follow_once(&mut self) -> StreamEnd {
        let mut response = match self.open().await {
            Ok(response) => response,
            Err(end) => return end,
        };
        if self.note_instance(&response) {
            // The new process numbers its reports from 1 again: read them all.
            info!(
                "worker process restarted, replaying its reports node_id={} after={}",
                self.node, self.after
            );
            drop(response);
            self.after = 0;
            response = match self.open().await {
                Ok(response) => response,
                Err(end) => return end,
            };
            self.note_instance(&response);
            self.tell_watcher_restarted();
        } else if self.lost {
            self.tell_watcher(true, String::new());
        }

        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Err(_) => {
                    return StreamEnd::after_connecting(format!(
                        "no data for {} ms",
                        self.idle_timeout.as_millis()
                    ));
                }
                Ok(None) => return StreamEnd::after_connecting("stream ended".to_owned()),
                Ok(Some(Err(error))) => return StreamEnd::after_connecting(error_text(&error)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(newline) = buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = buffer.drain(..=newline).collect();
                if let Err(end) = self.forward_line(&line).await {
                    return end;
                }
            }
        }
    }

    /// Sends the watcher, if any, whether the stream is open now.
    fn tell_watcher(&mut self, connected: bool, reason: String) {
        self.lost = !connected;
        let Some(watcher) = self.watcher.as_ref().and_then(WeakRecipient::upgrade) else {
            return;
        };
        watcher.do_send(ReportStreamChanged {
            node: self.node.clone(),
            connected,
            reason,
            worker_restarted: false,
        });
    }

    /// Tells the watcher that the stream is open on a new worker process, before any of
    /// that process's reports is forwarded.
    fn tell_watcher_restarted(&mut self) {
        self.lost = false;
        let Some(watcher) = self.watcher.as_ref().and_then(WeakRecipient::upgrade) else {
            return;
        };
        // NOTE: the watcher and the report recipient are the same manager mailbox, so this
        // arrives before the replayed reports, which are sent after it.
        watcher.do_send(ReportStreamChanged {
            node: self.node.clone(),
            connected: true,
            reason: String::new(),
            worker_restarted: true,
        });
    }

    /// Parses one NDJSON line and forwards the report unless it was already forwarded.
    async fn forward_line(&mut self, line: &[u8]) -> Result<(), StreamEnd> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        let report: WorkerReport = match serde_json::from_slice(line) {
            Ok(report) => report,
            Err(error) => {
                warn!(
                    "invalid report on event stream skipped node_id={} error={error}",
                    self.node
                );
                return Ok(());
            }
        };
        if report.seq <= self.after {
            return Ok(());
        }
        let seq = report.seq;
        let Some(recipient) = self.recipient.upgrade() else {
            return Err(StreamEnd::SubscriberGone);
        };
        // `send` waits for room in the manager's mailbox, which bounds what is in flight.
        if recipient.send(report).await.is_err() {
            return Err(StreamEnd::SubscriberGone);
        }
        self.after = seq;
        Ok(())
    }
}

// === HTTP helpers ===

/// Why one HTTP call to a worker failed.
#[derive(Debug)]
enum HttpFailure {
    TimedOut,
    Transport(String),
    Status(StatusCode, String),
    /// The worker answered with the command error itself.
    Command(CommandError),
}

impl HttpFailure {
    fn into_command_error(self, node: NodeId, timeout: Duration) -> CommandError {
        match self {
            HttpFailure::TimedOut => CommandError::TimedOut {
                node,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
            HttpFailure::Transport(reason) => CommandError::Unreachable { node, reason },
            HttpFailure::Status(status, reason) => CommandError::Rejected {
                node,
                reason: format!("status {}: {reason}", status.as_u16()),
            },
            HttpFailure::Command(error) => error,
        }
    }
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFailure::TimedOut => f.write_str("timed out"),
            HttpFailure::Transport(reason) => f.write_str(reason),
            HttpFailure::Status(status, reason) => {
                write!(f, "status {}: {reason}", status.as_u16())
            }
            HttpFailure::Command(error) => write!(f, "{error}"),
        }
    }
}

/// Sends `request` with `timeout` and decodes a successful JSON answer.
async fn call<T: DeserializeOwned>(
    request: RequestBuilder,
    timeout: Duration,
) -> Result<T, HttpFailure> {
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(transport_failure)?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody {
                command_error: Some(error @ CommandError::PortInUse { .. }),
                ..
            }) => HttpFailure::Command(error),
            Ok(body) => HttpFailure::Status(status, body.error),
            Err(_) => HttpFailure::Status(status, text),
        });
    }
    response.json::<T>().await.map_err(|error| {
        if error.is_timeout() {
            HttpFailure::TimedOut
        } else {
            HttpFailure::Transport(format!("invalid answer: {}", error_text(&error)))
        }
    })
}

fn transport_failure(error: reqwest::Error) -> HttpFailure {
    if error.is_timeout() {
        HttpFailure::TimedOut
    } else {
        HttpFailure::Transport(error_text(&error))
    }
}

/// reqwest's Display hides the cause ("error sending request"); append the chain.
fn error_text(error: &reqwest::Error) -> String {
    crate::error::error_chain(error)
}

/// Retries `GET /node` until it succeeds, a worker rejects it, or the deadline passes.
async fn describe_until(
    client: &Client,
    base: &Url,
    config: RemoteWorkerConfig,
) -> Result<NodeDescription, ConnectError> {
    let url = base
        .join("node")
        .expect("relative path joins onto an http URL");
    let deadline = Instant::now() + config.connect_deadline;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let failure = match call(client.get(url.clone()), config.request_timeout).await {
            Ok(description) => return Ok(description),
            Err(failure) => failure,
        };
        let retryable = !matches!(failure, HttpFailure::Status(..));
        if !retryable || Instant::now() + backoff >= deadline {
            return Err(ConnectError::Describe {
                url: base.to_string(),
                deadline_ms: u64::try_from(config.connect_deadline.as_millis()).unwrap_or(u64::MAX),
                reason: failure.to_string(),
            });
        }
        debug!("worker not reachable yet, retrying url={base} error={failure}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Returns the base URL of the worker at `address` (`http://host:port[/prefix]` or
/// `host:port`), ending in `/`, so that two spellings of one address compare equal.
///
/// # Errors
///
/// Returns [`ConnectError::InvalidAddress`] for an address that is not an HTTP URL with a
/// host.
pub fn normalize_address(address: &str) -> Result<String, ConnectError> {
    parse_base_url(address).map(String::from)
}

/// Turns `http://host:port[/prefix]` or `host:port` into a base URL ending in `/`.
fn parse_base_url(address: &str) -> Result<Url, ConnectError> {
    cube_core::address::http_base_url(address).map_err(|reason| ConnectError::InvalidAddress {
        address: address.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_host_port_and_urls() {
        let cases = [
            ("127.0.0.1:5556", "http://127.0.0.1:5556/"),
            ("http://127.0.0.1:5556", "http://127.0.0.1:5556/"),
            (
                "http://127.0.0.1:5556/worker",
                "http://127.0.0.1:5556/worker/",
            ),
        ];
        for (address, expected) in cases {
            let url = parse_base_url(address).expect(address);
            assert_eq!(url.as_str(), expected, "{address}");
        }
    }

    #[test]
    fn base_url_rejects_other_schemes() {
        let error = parse_base_url("https://127.0.0.1:5556").unwrap_err();
        assert!(error.to_string().contains("scheme 'https'"), "{error}");
    }

    #[test]
    fn status_failure_becomes_rejected() {
        let node = NodeId::new("w1").unwrap();
        let error = HttpFailure::Status(StatusCode::BAD_REQUEST, "bad spec".to_owned())
            .into_command_error(node.clone(), Duration::from_secs(1));
        assert_eq!(
            error,
            CommandError::Rejected {
                node,
                reason: "status 400: bad spec".to_owned()
            }
        );
    }
}
