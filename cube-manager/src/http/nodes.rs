//! The `/nodes` resource: every node with its capacity, allocation, task count and metrics.

use actix_web::{HttpResponse, web};

use super::{ApiState, mailbox_error, manager_error};
use crate::manager::ListNodes;

/// `GET /nodes`.
pub(super) async fn list(state: web::Data<ApiState>) -> HttpResponse {
    let sent = state
        .manager
        .send(ListNodes)
        .timeout(state.request_timeout)
        .await;
    match sent {
        Ok(Ok(nodes)) => HttpResponse::Ok().json(nodes),
        Ok(Err(error)) => manager_error(&error),
        Err(error) => mailbox_error(error, state.request_timeout),
    }
}
