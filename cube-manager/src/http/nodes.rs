//! The `/nodes` resource: list and read nodes, and let a worker join by itself.
//!
//! `POST /nodes` is how `cube worker --manager ADDR` joins: the body names the worker's API
//! address, the manager connects a watched [`RemoteWorker`] bridge to it (which describes the
//! node) and adds it as [`AddWorker`] does for workers named on the command line. A repeat
//! for an address that is registered already changes nothing, because that node's bridge
//! reconnects to the address on its own.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::Value;

use cube_core::ids::NodeId;
use cube_core::wire::{ErrorBody, JoinNode, NodeView};

use super::{ApiState, error_response, mailbox_error, manager_error};
use crate::error::error_chain;
use crate::manager::{AddWorker, ListNodes};
use crate::remote_worker::{RemoteWorker, RemoteWorkerConfig, normalize_address};

/// Time a joining worker has to respond to the manager's `GET /node`. It is short because the
/// worker is up: it sent the request.
const JOIN_CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// `GET /nodes`.
pub(super) async fn list(state: web::Data<ApiState>) -> HttpResponse {
    match node_views(&state).await {
        Ok(nodes) => HttpResponse::Ok().json(nodes),
        Err(response) => response,
    }
}

/// `GET /nodes/{id}`.
pub(super) async fn get(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let node = match NodeId::new(path.as_str()) {
        Ok(node) => node,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorBody::for_field("id", error.to_string()),
            );
        }
    };
    let nodes = match node_views(&state).await {
        Ok(nodes) => nodes,
        Err(response) => return response,
    };
    match nodes.into_iter().find(|view| view.id == node) {
        Some(view) => HttpResponse::Ok().json(view),
        None => error_response(
            StatusCode::NOT_FOUND,
            ErrorBody::for_field("id", format!("node {node} not found")),
        ),
    }
}

/// `POST /nodes`: adds the worker whose API is at the body's `address`.
pub(super) async fn join(state: web::Data<ApiState>, body: web::Json<Value>) -> HttpResponse {
    let request: JoinNode = match serde_path_to_error::deserialize(body.into_inner()) {
        Ok(request) => request,
        Err(error) => {
            let path = error.path().to_string();
            let field = if path == "." {
                "address".to_owned()
            } else {
                path
            };
            let message = format!("invalid join request: {}", error.inner());
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorBody::for_field(field, message),
            );
        }
    };
    let address = request.address.trim().to_owned();
    let normalized = match normalize_address(&address) {
        Ok(normalized) => normalized,
        Err(error) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorBody::for_field("address", error.to_string()),
            );
        }
    };

    let nodes = match node_views(&state).await {
        Ok(nodes) => nodes,
        Err(response) => return response,
    };
    if let Some(known) = nodes
        .into_iter()
        .find(|view| has_address(view, &normalized))
    {
        log::debug!(
            "join of a registered address changes nothing node_id={} address={address}",
            known.id
        );
        return HttpResponse::Ok().json(known);
    }

    let config = RemoteWorkerConfig {
        connect_deadline: JOIN_CONNECT_DEADLINE,
        ..RemoteWorkerConfig::default()
    };
    let watcher = state.manager.downgrade().recipient();
    let handle = match RemoteWorker::connect_watched(&address, config, watcher).await {
        Ok(handle) => handle,
        Err(error) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                ErrorBody::for_field("address", error_chain(&error)),
            );
        }
    };
    let added = state
        .manager
        .send(AddWorker {
            handle,
            address: Some(address.clone()),
        })
        .timeout(state.request_timeout)
        .await;
    let node = match added {
        Ok(Ok(node)) => node,
        Ok(Err(error)) => return manager_error(&error),
        Err(error) => return mailbox_error(error, state.request_timeout),
    };
    log::info!("node joined by request node_id={node} address={address}");

    match node_views(&state).await {
        Ok(nodes) => match nodes.into_iter().find(|view| view.id == node) {
            Some(view) => HttpResponse::Created().json(view),
            None => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody::new(format!(
                    "node {node} was added but is not in the node table"
                )),
            ),
        },
        Err(response) => response,
    }
}

/// Reads the node table, or returns the error response.
async fn node_views(state: &ApiState) -> Result<Vec<NodeView>, HttpResponse> {
    let sent = state
        .manager
        .send(ListNodes)
        .timeout(state.request_timeout)
        .await;
    match sent {
        Ok(Ok(nodes)) => Ok(nodes),
        Ok(Err(error)) => Err(manager_error(&error)),
        Err(error) => Err(mailbox_error(error, state.request_timeout)),
    }
}

/// Checks whether `view` is registered under the address whose normalized form is
/// `normalized`.
fn has_address(view: &NodeView, normalized: &str) -> bool {
    view.address
        .as_deref()
        .and_then(|address| normalize_address(address).ok())
        .is_some_and(|address| address == normalized)
}
