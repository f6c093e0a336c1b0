//! HTTP client of the manager's API, used by `run`, `stop`, `status` and `node`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cube_core::wire::{ErrorBody, NodeView, TaskView};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// Time allowed for one request to the manager.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one manager.
#[derive(Debug, Clone)]
pub struct ManagerClient {
    base_url: String,
    http: reqwest::Client,
}

/// A task as submitted: 201 for a new task, 200 for an identical repeat of a known id.
#[derive(Debug)]
pub struct Submitted {
    /// The stored task.
    pub task: TaskView,
    /// Whether the manager created it now.
    pub created: bool,
}

impl ManagerClient {
    /// Creates a client for `address`, given as `host:port` or as an `http://` URL.
    ///
    /// # Errors
    ///
    /// Returns an error when the address is neither.
    pub fn new(address: &str) -> Result<Self> {
        let base_url = base_url(address)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Self { base_url, http })
    }

    /// Submits a task spec given as raw JSON.
    pub async fn submit(&self, body: Vec<u8>) -> Result<Submitted> {
        let response = self
            .request(Method::POST, "/tasks")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        let created = response.status() == StatusCode::CREATED;
        let task = self.decode(response, "submit the task").await?;
        Ok(Submitted { task, created })
    }

    /// Asks the manager to stop task `id`.
    pub async fn stop(&self, id: &str) -> Result<TaskView> {
        check_task_id(id)?;
        let response = self
            .request(Method::DELETE, &format!("/tasks/{id}"))
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        self.decode(response, &format!("stop task {id}")).await
    }

    /// Fetches every task.
    pub async fn tasks(&self) -> Result<Vec<TaskView>> {
        self.get("/tasks", "list tasks").await
    }

    /// Fetches task `id`.
    pub async fn task(&self, id: &str) -> Result<TaskView> {
        check_task_id(id)?;
        self.get(&format!("/tasks/{id}"), &format!("get task {id}"))
            .await
    }

    /// Fetches every node.
    pub async fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get("/nodes", "list nodes").await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, action: &str) -> Result<T> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|error| self.unreachable(error))?;
        self.decode(response, action).await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
    }

    fn unreachable(&self, error: reqwest::Error) -> anyhow::Error {
        let what = if error.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        anyhow!(
            "request to manager {} {what}: {error}; check that `cube manager` or `cube dev` \
             runs there, or pass -m ADDR / set CUBE_MANAGER",
            self.base_url
        )
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        action: &str,
    ) -> Result<T> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("failed to read the manager's answer to '{action}'"))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "manager {} sent an unreadable answer to '{action}'",
                    self.base_url
                )
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => match body.field {
                Some(field) => bail!("failed to {action}: {} (field '{field}')", body.error),
                None => bail!("failed to {action}: {}", body.error),
            },
            Err(_) => bail!(
                "failed to {action}: manager answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ),
        }
    }
}

/// Rejects an id that cannot be a task id before it reaches a URL path.
fn check_task_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        bail!("task id is empty; `cube status` lists the ids");
    }
    if id.contains('/') || id.contains('?') || id.contains('#') {
        bail!("invalid task id '{id}'; `cube status` lists the ids");
    }
    Ok(())
}

/// Turns `host:port` or a URL into a base URL without a trailing slash.
fn base_url(address: &str) -> Result<String> {
    let address = address.trim().trim_end_matches('/');
    if address.is_empty() {
        bail!("manager address is empty; pass -m HOST:PORT or set CUBE_MANAGER");
    }
    if let Some(rest) = address.strip_prefix("https://") {
        bail!(
            "manager address 'https://{rest}' uses TLS, which cube does not support yet; use http://"
        );
    }
    let url = if address.starts_with("http://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let authority = &url["http://".len()..];
    let Some((host, port)) = authority.rsplit_once(':') else {
        bail!("manager address '{address}' has no port; use HOST:PORT, such as 127.0.0.1:5555");
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("manager address '{address}' is invalid; use HOST:PORT, such as 127.0.0.1:5555");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_host_port_and_url() {
        assert_eq!(base_url("127.0.0.1:5555").unwrap(), "http://127.0.0.1:5555");
        assert_eq!(
            base_url("http://localhost:80/").unwrap(),
            "http://localhost:80"
        );
    }

    #[test]
    fn base_url_rejects_bad_addresses() {
        for address in ["", "localhost", ":5555", "host:notaport", "https://x:1"] {
            assert!(base_url(address).is_err(), "{address:?} should be rejected");
        }
    }
}
