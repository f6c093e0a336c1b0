//! The `/tasks` resource: submit, list, get and stop tasks.
//!
//! A submission is parsed in two steps so that every error names its field: actix-web's
//! JSON extractor reads the body as a JSON value (syntax errors, size limit), then
//! [`parse_submission`] takes the optional `id` out and deserializes the rest as a
//! [`TaskSpec`] through `serde_path_to_error`. Because the spec is parsed on its own rather
//! than through `SubmitTask`'s `#[serde(flatten)]`, the spec's `deny_unknown_fields` still
//! rejects a misspelt top-level field.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::{Map, Value};

use cube_core::ids::TaskId;
use cube_core::spec::{SpecLimits, TaskSpec};
use cube_core::wire::{ErrorBody, TaskView};

use super::{ApiState, error_response, mailbox_error, manager_error};
use crate::manager::{CreateTask, GetSpecLimits, GetTask, GetTasks, RequestStop};

/// `POST /tasks`.
pub(super) async fn submit(state: web::Data<ApiState>, body: web::Json<Value>) -> HttpResponse {
    let (id, spec) = match parse_submission(body.into_inner()) {
        Ok(parsed) => parsed,
        Err(error) => {
            let error = with_allowed_range(error, &state).await;
            return error_response(StatusCode::BAD_REQUEST, error);
        }
    };
    let sent = state
        .manager
        .send(CreateTask { id, spec })
        .timeout(state.request_timeout)
        .await;
    match sent {
        Ok(Ok(submission)) => {
            let status = if submission.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            HttpResponse::build(status).json(TaskView::from(&submission.task))
        }
        Ok(Err(error)) => manager_error(&error),
        Err(error) => mailbox_error(error, state.request_timeout),
    }
}

/// `GET /tasks`.
pub(super) async fn list(state: web::Data<ApiState>) -> HttpResponse {
    match state
        .manager
        .send(GetTasks)
        .timeout(state.request_timeout)
        .await
    {
        Ok(tasks) => HttpResponse::Ok().json(tasks.iter().map(TaskView::from).collect::<Vec<_>>()),
        Err(error) => mailbox_error(error, state.request_timeout),
    }
}

/// `GET /tasks/{id}`.
pub(super) async fn get(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let task_id = match parse_task_id(&path) {
        Ok(task_id) => task_id,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error),
    };
    let sent = state
        .manager
        .send(GetTask { task_id })
        .timeout(state.request_timeout)
        .await;
    match sent {
        Ok(Ok(task)) => HttpResponse::Ok().json(TaskView::from(&task)),
        Ok(Err(error)) => manager_error(&error),
        Err(error) => mailbox_error(error, state.request_timeout),
    }
}

/// `DELETE /tasks/{id}`: sets the desired state to `stopped`.
pub(super) async fn stop(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let task_id = match parse_task_id(&path) {
        Ok(task_id) => task_id,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error),
    };
    let sent = state
        .manager
        .send(RequestStop { task_id })
        .timeout(state.request_timeout)
        .await;
    match sent {
        Ok(Ok(task)) => HttpResponse::Accepted().json(TaskView::from(&task)),
        Ok(Err(error)) => manager_error(&error),
        Err(error) => mailbox_error(error, state.request_timeout),
    }
}

/// Appends the allowed range to a parse error of a resource field, such as cpu `"two"` or
/// memory `-1`, whose serde message does not state it.
///
/// The range comes from the manager's [`SpecLimits`]; when the manager does not respond, the
/// error is returned unchanged.
async fn with_allowed_range(mut error: ErrorBody, state: &ApiState) -> ErrorBody {
    if !matches!(error.field.as_deref(), Some("cpu" | "memory" | "disk")) {
        return error;
    }
    let limits = state
        .manager
        .send(GetSpecLimits)
        .timeout(state.request_timeout)
        .await;
    if let (Ok(limits), Some(field)) = (limits, error.field.as_deref())
        && let Some(range) = allowed_range(field, &limits)
    {
        error.error = format!("{}; allowed: {range}", error.error);
    }
    error
}

/// The values `field` accepts under `limits`, as the manager's validation states them.
fn allowed_range(field: &str, limits: &SpecLimits) -> Option<String> {
    match field {
        "cpu" => Some(format!(
            "a number of cores more than 0 and at most {}",
            limits.max_cpu
        )),
        "memory" => Some(format!(
            "1 to {} bytes ({}), as a number of bytes or a string such as \"64MiB\"",
            limits.max_memory.0, limits.max_memory
        )),
        "disk" => Some(format!(
            "0 to {} bytes ({}), as a number of bytes or a string such as \"1GiB\"",
            limits.max_disk.0, limits.max_disk
        )),
        _ => None,
    }
}

fn parse_task_id(text: &str) -> Result<TaskId, ErrorBody> {
    text.parse()
        .map_err(|error| ErrorBody::for_field("id", format!("invalid task id '{text}': {error}")))
}

/// Splits a `SubmitTask` body into its optional id and its spec, naming the field of any
/// error.
///
/// # Errors
///
/// Returns an [`ErrorBody`] whose `field` is the path of the bad field, such as `memory`,
/// `ports[0].host_port` or a misspelt top-level name.
pub(crate) fn parse_submission(body: Value) -> Result<(Option<TaskId>, TaskSpec), ErrorBody> {
    let Value::Object(mut fields) = body else {
        return Err(ErrorBody::new(format!(
            "request body must be a JSON object with the task spec, not {}",
            json_kind(&body)
        )));
    };
    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(serde_json::from_value::<TaskId>(value).map_err(|error| {
            ErrorBody::for_field(
                "id",
                format!("invalid field 'id': {error}; expected a UUID"),
            )
        })?),
    };
    let spec = parse_spec(fields)?;
    Ok((id, spec))
}

fn parse_spec(fields: Map<String, Value>) -> Result<TaskSpec, ErrorBody> {
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|error| {
        let message = error.inner().to_string();
        let path = error.path().to_string();
        // serde_path_to_error reports a missing field at its parent's path and names it only
        // in the message, so join the two to give the client the field's own path.
        let field = match named_field(&message) {
            Some(name) if path == "." => name.to_owned(),
            Some(name) if !path.ends_with(&format!(".{name}")) && path != name => {
                format!("{path}.{name}")
            }
            _ => path,
        };
        ErrorBody::for_field(field.clone(), format!("invalid field '{field}': {message}"))
    })
}

/// Extracts the field name from serde's "missing field `x`" and "unknown field `x`, expected …".
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use cube_core::wire::SubmitTask;

    use super::*;

    fn field_of(body: Value) -> String {
        parse_submission(body)
            .expect_err("body should be rejected")
            .field
            .expect("error names a field")
    }

    #[test]
    fn submission_accepts_serialized_submit_task() {
        let submit = SubmitTask {
            id: Some(TaskId::generate()),
            spec: TaskSpec::new("web", "cube-test/busybox:latest"),
        };
        let body = serde_json::to_value(&submit).unwrap();
        let (id, spec) = parse_submission(body).unwrap();
        assert_eq!(id, submit.id);
        assert_eq!(spec, submit.spec);
    }

    #[test]
    fn submission_names_bad_fields() {
        let cases = [
            (json!({"name": "w"}), "image"),
            (json!({"name": "w", "image": "i", "memroy": 1}), "memroy"),
            (json!({"name": "w", "image": "i", "memory": -1}), "memory"),
            (json!({"name": "w", "image": "i", "cpu": "two"}), "cpu"),
            (json!({"id": "nope", "name": "w", "image": "i"}), "id"),
            (
                json!({"name": "w", "image": "i", "ports": [{"container_port": 80, "host_port": -1}]}),
                "ports[0].host_port",
            ),
            (
                json!({"name": "w", "image": "i", "ports": [{"container_port": 80, "hostport": 1}]}),
                "ports[0].hostport",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(body.clone()), field, "{body}");
        }
    }

    #[test]
    fn allowed_range_names_the_configured_maximum() {
        let limits = SpecLimits {
            max_cpu: 8.0,
            max_memory: cube_core::resources::ByteSize::gib(2),
            max_disk: cube_core::resources::ByteSize::gib(3),
        };
        let cpu = allowed_range("cpu", &limits).unwrap();
        assert!(cpu.contains("at most 8"), "{cpu}");
        let memory = allowed_range("memory", &limits).unwrap();
        assert!(memory.contains("1 to 2147483648 bytes"), "{memory}");
        let disk = allowed_range("disk", &limits).unwrap();
        assert!(disk.contains("0 to 3221225472 bytes"), "{disk}");
        assert_eq!(allowed_range("image", &limits), None);
    }

    #[test]
    fn submission_rejects_non_objects() {
        let error = parse_submission(json!([1, 2])).unwrap_err();
        assert!(error.error.contains("an array"), "{}", error.error);
    }
}
