//! Joins a manager on the worker's own initiative, as `cube worker --manager ADDR` does.
//!
//! A [`Joiner`] sends the manager `POST /nodes` with the address at which the manager
//! should reach this worker's API (a [`JoinNode`] body), retrying with exponential back-off
//! until the manager accepts it. It then sends `GET /nodes/{id}` every check interval and
//! joins again on a 404, which is what a manager that restarted without its node registry
//! returns. The manager connects back to the advertised address
//! to describe the node and follow its reports; this client carries no reports itself.
//!
//! Every request has a timeout and ignores the `HTTP_PROXY` variables.

use std::time::Duration;

use cube_core::NodeId;
use cube_core::wire::{ErrorBody, JoinNode};
use reqwest::{Client, StatusCode, Url};

/// Default time between two membership checks.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Default time one request may take. Joining includes the manager's own request back to
/// this worker, so it gets more than a plain read.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// First delay before a join is retried; it doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Maximum delay between two join attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Settings of a [`Joiner`].
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The manager's API, as `host:port` or an `http://` URL.
    pub manager: String,
    /// This worker's API as the manager should reach it, such as `http://10.0.0.5:5556`.
    pub advertise: String,
    /// This worker's node id, as its API describes it.
    pub node: NodeId,
    /// Time between two membership checks once joined.
    pub check_interval: Duration,
    /// Time one request may take, connection included.
    pub request_timeout: Duration,
}

impl JoinConfig {
    /// Creates the default settings for `node` joining `manager` as `advertise`.
    pub fn new(manager: impl Into<String>, advertise: impl Into<String>, node: NodeId) -> Self {
        Self {
            manager: manager.into(),
            advertise: advertise.into(),
            node,
            check_interval: DEFAULT_CHECK_INTERVAL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Failure to set up a [`Joiner`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The manager address is not an HTTP URL or `host:port`.
    #[error("invalid manager address '{address}': {reason}")]
    InvalidManagerAddress {
        /// The address as given.
        address: String,
        /// The problem found.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to build the HTTP client for manager {url}")]
    Client {
        /// The manager's base URL.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
}

/// Whether the manager has this node registered, according to `GET /nodes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// The manager answered with the node.
    Known,
    /// The manager answered 404.
    Unknown,
    /// The manager could not be asked; the text says why.
    Unanswered(String),
}

/// Joins one manager and keeps this node known to it.
#[derive(Debug, Clone)]
pub struct Joiner {
    client: Client,
    /// The manager's base URL, ending in `/`.
    base: Url,
    config: JoinConfig,
}

impl Joiner {
    /// Creates a joiner for `config`.
    ///
    /// # Errors
    ///
    /// Returns [`JoinError`] for a manager address that is not an HTTP URL, or when the HTTP
    /// client cannot be built.
    pub fn new(config: JoinConfig) -> Result<Self, JoinError> {
        let base = parse_manager_url(&config.manager)?;
        let client = Client::builder()
            .no_proxy()
            .connect_timeout(config.request_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|source| JoinError::Client {
                url: base.to_string(),
                source,
            })?;
        Ok(Self {
            client,
            base,
            config,
        })
    }

    /// Joins, then checks the membership every check interval and joins again whenever the
    /// manager does not know the node. Runs until the future is dropped.
    pub async fn run(self) {
        self.join_until_accepted().await;
        let mut unanswered = 0_u32;
        loop {
            tokio::time::sleep(self.config.check_interval).await;
            match self.membership().await {
                Membership::Known => unanswered = 0,
                Membership::Unknown => {
                    log::warn!(
                        "manager does not know this node, joining again node_id={} manager={}",
                        self.config.node,
                        self.base
                    );
                    self.join_until_accepted().await;
                }
                Membership::Unanswered(reason) => {
                    unanswered += 1;
                    // The first failure in a row is a warning; repeats are debug lines.
                    if unanswered == 1 {
                        log::warn!(
                            "manager did not answer the membership check manager={} error={reason}",
                            self.base
                        );
                    } else {
                        log::debug!("manager still silent checks={unanswered} error={reason}");
                    }
                }
            }
        }
    }

    /// Sends `POST /nodes` until the manager accepts this node, with exponential back-off.
    pub async fn join_until_accepted(&self) {
        let mut backoff = INITIAL_BACKOFF;
        let mut failures = 0_u32;
        loop {
            match self.join_once().await {
                Ok(()) => {
                    log::info!(
                        "node joined manager node_id={} manager={} advertise={}",
                        self.config.node,
                        self.base,
                        self.config.advertise
                    );
                    return;
                }
                Err(reason) => {
                    failures += 1;
                    if failures == 1 {
                        log::warn!(
                            "failed to join manager, retrying manager={} error={reason}",
                            self.base
                        );
                    } else {
                        log::debug!("join still failing attempts={failures} error={reason}");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Sends one `POST /nodes`; returns why it was not accepted.
    pub async fn join_once(&self) -> Result<(), String> {
        let body = JoinNode {
            address: self.config.advertise.clone(),
        };
        let response = self
            .client
            .post(self.url("nodes"))
            .json(&body)
            .send()
            .await
            .map_err(|error| error_text(&error))?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(failure_text(response).await)
    }

    /// Asks the manager whether it knows this node.
    pub async fn membership(&self) -> Membership {
        let url = self.url(&format!("nodes/{}", self.config.node));
        match self.client.get(url).send().await {
            Ok(response) if response.status().is_success() => Membership::Known,
            Ok(response) if response.status() == StatusCode::NOT_FOUND => Membership::Unknown,
            Ok(response) => Membership::Unanswered(failure_text(response).await),
            Err(error) => Membership::Unanswered(error_text(&error)),
        }
    }
}

impl Joiner {
    fn url(&self, path: &str) -> Url {
        self.base
            .join(path)
            .expect("a relative path joins onto an http base URL")
    }
}

/// Turns `host:port` or `http://host:port[/prefix]` into a base URL ending in `/`.
fn parse_manager_url(address: &str) -> Result<Url, JoinError> {
    cube_core::address::http_base_url(address).map_err(|reason| JoinError::InvalidManagerAddress {
        address: address.to_owned(),
        reason,
    })
}

/// The status and the error text of a failed answer.
async fn failure_text(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<ErrorBody>(&text)
        .map(|body| body.error)
        .unwrap_or(text);
    format!("status {}: {reason}", status.as_u16())
}

/// reqwest's Display hides the cause ("error sending request"); append the chain.
fn error_text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_url_accepts_host_port_and_urls() {
        let cases = [
            ("127.0.0.1:5555", "http://127.0.0.1:5555/"),
            ("http://127.0.0.1:5555", "http://127.0.0.1:5555/"),
            ("http://127.0.0.1:5555/api", "http://127.0.0.1:5555/api/"),
        ];
        for (address, expected) in cases {
            assert_eq!(parse_manager_url(address).unwrap().as_str(), expected);
        }
    }

    #[test]
    fn manager_url_rejects_other_schemes() {
        let error = parse_manager_url("https://127.0.0.1:5555").unwrap_err();
        assert!(error.to_string().contains("scheme 'https'"), "{error}");
    }

    #[test]
    fn joiner_targets_the_nodes_resource() {
        let node = NodeId::new("w1").unwrap();
        let config = JoinConfig::new("127.0.0.1:5555", "http://127.0.0.1:5556", node);
        let joiner = Joiner::new(config).unwrap();
        assert_eq!(joiner.url("nodes").as_str(), "http://127.0.0.1:5555/nodes");
        assert_eq!(
            joiner.url("nodes/w1").as_str(),
            "http://127.0.0.1:5555/nodes/w1"
        );
    }
}
