//! The manager's HTTP API, an actix-web edge in front of the [`Manager`] actor.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /tasks` with a [`cube_core::wire::SubmitTask`] body | 201 with the stored `TaskView` |
//! | `GET /tasks` | `[TaskView]`, oldest first |
//! | `GET /tasks/{id}` | `TaskView`, or 404 |
//! | `DELETE /tasks/{id}` | 202 with the `TaskView`: sets the desired state to `stopped` |
//! | `GET /nodes` | `[NodeView]`: capacity, allocated, free, task count, status, metrics |
//! | `GET /nodes/{id}` | `NodeView`, or 404 |
//! | `POST /nodes` with a [`cube_core::wire::JoinNode`] body | 201 with the new `NodeView`, 200 when that address is registered already, 502 when the worker cannot be reached |
//!
//! A repeated `POST /tasks` with a client-supplied id answers 200 with the stored
//! [`cube_core::wire::TaskView`] when the spec is identical, and 409 when it differs.
//!
//! Every error is an [`ErrorBody`] naming the field or id at fault. Bodies are validated in
//! full before the manager sees them, so a rejected request stores nothing. Each call to the
//! manager has a timeout; a manager that is gone or overloaded gives 503.

mod nodes;
mod tasks;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_web::dev::Server;
use actix_web::error::{InternalError, JsonPayloadError};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use log::info;

use cube_core::wire::ErrorBody;

use crate::error::error_chain;
use crate::{Error, Manager};

/// Settings of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// Number of actix-web worker threads.
    pub workers: usize,
    /// Time the manager has to answer one request before the API gives 503.
    pub request_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Seconds the server waits for open connections when it stops.
    pub shutdown_timeout_secs: u64,
    /// Whether the server stops itself on SIGINT and SIGTERM; embedders leave it off and
    /// stop it through its handle.
    pub handle_signals: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            request_timeout: Duration::from_secs(10),
            body_limit: 1024 * 1024,
            shutdown_timeout_secs: 1,
            handle_signals: false,
        }
    }
}

/// What every handler needs.
#[derive(Clone)]
struct ApiState {
    manager: Addr<Manager>,
    request_timeout: Duration,
}

/// Binds the API to `bind` and returns the server with the bound address.
///
/// Port 0 picks a free port; the returned address holds the real one, and "listening on
/// ADDR" is logged at info level. The server runs once it is awaited or spawned; stop it
/// through [`Server::handle`].
///
/// # Errors
///
/// Returns the I/O error when the address cannot be bound.
pub async fn serve(
    manager: Addr<Manager>,
    bind: SocketAddr,
    config: HttpConfig,
) -> io::Result<(Server, SocketAddr)> {
    let state = ApiState {
        manager,
        request_timeout: config.request_timeout,
    };
    let json_config = web::JsonConfig::default()
        .limit(config.body_limit)
        .content_type_required(false)
        .error_handler(json_error);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(json_config.clone())
            .configure(routes)
    })
    .workers(config.workers)
    .shutdown_timeout(config.shutdown_timeout_secs);
    if !config.handle_signals {
        server = server.disable_signals();
    }
    let server = server.bind(bind)?;
    let address = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| io::Error::other(format!("binding {bind} yielded no address")))?;
    info!("manager listening on {address}");
    Ok((server.run(), address))
}

/// Registers the API's routes.
fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/tasks")
                .route(web::post().to(tasks::submit))
                .route(web::get().to(tasks::list)),
        )
        .service(
            web::resource("/tasks/{id}")
                .route(web::get().to(tasks::get))
                .route(web::delete().to(tasks::stop)),
        )
        .service(
            web::resource("/nodes")
                .route(web::get().to(nodes::list))
                .route(web::post().to(nodes::join)),
        )
        .service(web::resource("/nodes/{id}").route(web::get().to(nodes::get)))
        .default_service(web::to(not_found));
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        ErrorBody::new(format!(
            "no route for {} {}",
            request.method(),
            request.path()
        )),
    )
}

/// Answers a body that is not JSON, too large, or of the wrong content type.
fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let (status, message) = match &error {
        JsonPayloadError::OverflowKnownLength { length, limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {length} bytes is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        ),
        JsonPayloadError::ContentType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request body must have content type application/json".to_owned(),
        ),
        JsonPayloadError::Deserialize(cause) => {
            (StatusCode::BAD_REQUEST, format!("malformed JSON: {cause}"))
        }
        other => (
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {other}"),
        ),
    };
    let response = error_response(status, ErrorBody::new(message));
    InternalError::from_response(error, response).into()
}

fn error_response(status: StatusCode, body: ErrorBody) -> HttpResponse {
    HttpResponse::build(status).json(body)
}

/// Maps a manager error to its status and body.
fn manager_error(error: &Error) -> HttpResponse {
    match error {
        Error::InvalidSpec { source } => error_response(
            StatusCode::BAD_REQUEST,
            ErrorBody::for_field(source.field.clone(), source.to_string()),
        ),
        Error::TaskNotFound { .. } => {
            error_response(StatusCode::NOT_FOUND, ErrorBody::new(error.to_string()))
        }
        Error::Conflict { .. } => error_response(
            StatusCode::CONFLICT,
            ErrorBody::for_field("id", error.to_string()),
        ),
        Error::ActorUnavailable { .. } => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody::new(error_chain(error)),
        ),
        _ => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody::new(error_chain(error)),
        ),
    }
}

/// Maps a failed `send` to the manager to 503.
fn mailbox_error(error: MailboxError, timeout: Duration) -> HttpResponse {
    let message = match error {
        MailboxError::Timeout => format!(
            "manager did not answer within {} ms; retry later",
            timeout.as_millis()
        ),
        MailboxError::Closed => "manager is shut down".to_owned(),
    };
    error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorBody::new(message))
}
