//! `/stats` and `/node` routes: host metrics and the node's description.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use cube_core::DescribeNode;
use cube_core::wire::ErrorBody;

use super::{ApiError, ApiState};
use crate::worker::GetHostMetrics;

/// `GET /stats`: the latest host metrics, or 503 before the first sample.
pub(super) async fn stats(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let metrics = state
        .worker
        .send(GetHostMetrics)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;
    match metrics {
        Some(metrics) => Ok(HttpResponse::Ok().json(metrics)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody::new("no host metrics sampled yet; retry after the metrics interval"),
        )),
    }
}

/// `GET /node`: the node's identity, capacity and latest metrics.
pub(super) async fn describe(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let description = state
        .worker
        .send(DescribeNode)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?
        .map_err(ApiError::from_command)?;
    Ok(HttpResponse::Ok().json(description))
}
