//! `/tasks` routes: start, stop, list and read tasks on this worker.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use cube_core::wire::ErrorBody;
use cube_core::{AttemptId, ListTasks, STOPPED_BY_USER, StartTask, StopTask, TaskId};
use serde::Deserialize;

use super::{ApiError, ApiState, JsonBody, accepted};
use crate::worker::GetTask;

/// Query of `DELETE /tasks/{task_id}`.
#[derive(Debug, Deserialize)]
pub(super) struct StopQuery {
    attempt: Option<String>,
    reason: Option<String>,
}

/// `POST /tasks`: records the attempt and returns 202 before the container starts.
pub(super) async fn start_task(
    state: web::Data<ApiState>,
    body: JsonBody<StartTask>,
) -> Result<HttpResponse, ApiError> {
    let result = state
        .worker
        .send(body.0)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;
    result.map_err(ApiError::from_command)?;
    Ok(accepted())
}

/// `DELETE /tasks/{task_id}`: requests a stop and returns 202, also for an unknown task.
pub(super) async fn stop_task(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<StopQuery>,
) -> Result<HttpResponse, ApiError> {
    let task_id = parse_task_id(&path)?;
    let query = query.into_inner();
    let attempt = match query.attempt.as_deref() {
        Some(text) => Some(text.parse::<AttemptId>().map_err(|error| {
            ApiError::bad_request("attempt", format!("'{text}' is not a UUID: {error}"))
        })?),
        None => None,
    };
    let stop = StopTask {
        task_id,
        attempt,
        reason: query.reason.unwrap_or_else(|| STOPPED_BY_USER.to_string()),
    };

    let result = state
        .worker
        .send(stop)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;
    result.map_err(ApiError::from_command)?;
    Ok(accepted())
}

/// `GET /tasks`: every task record, `[]` when there is none.
pub(super) async fn list_tasks(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let tasks = state
        .worker
        .send(ListTasks)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?
        .map_err(ApiError::from_command)?;
    Ok(HttpResponse::Ok().json(tasks))
}

/// `GET /tasks/{task_id}`: one task record, or 404.
pub(super) async fn get_task(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task_id = parse_task_id(&path)?;
    let task = state
        .worker
        .send(GetTask { task_id })
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;
    match task {
        Some(task) => Ok(HttpResponse::Ok().json(task)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorBody::for_field(
                "task_id",
                format!("task {task_id} not found on this worker"),
            ),
        )),
    }
}

fn parse_task_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse().map_err(|error| {
        ApiError::bad_request("task_id", format!("'{text}' is not a UUID: {error}"))
    })
}
