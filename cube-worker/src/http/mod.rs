//! The worker's HTTP API (actix-web), the edge a manager in another process drives.
//!
//! | route | response |
//! | --- | --- |
//! | `POST /tasks` with a `StartTask` body | `202 {}`; 400 for an invalid body, 409 when rejected |
//! | `DELETE /tasks/{task_id}?attempt=UUID&reason=TEXT` | `202 {}`; 400 for a bad id |
//! | `GET /tasks` | JSON array of `WorkerTask` |
//! | `GET /tasks/{task_id}` | one `WorkerTask`, or 404 |
//! | `GET /stats` | `HostMetrics`, or 503 before the first sample |
//! | `GET /node` | `NodeDescription` |
//! | `GET /events?after=SEQ` | NDJSON stream of `WorkerReport`s after `SEQ`, kept open |
//!
//! Every error answer is a `cube_core::wire::ErrorBody` naming the problem and, where one
//! is at fault, the request field. A busy or stopped Worker actor answers 503.

mod events;
mod json;
mod node;
mod tasks;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix::{Addr, MailboxError};
use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use cube_core::CommandError;
use cube_core::wire::ErrorBody;

use crate::worker::Worker;

pub use json::JsonBody;

/// Default limit of a request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default time a request waits for the Worker actor.
pub const DEFAULT_ACTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Server worker threads; 1 suits tests and embedded use.
    pub workers: usize,
    /// Leaves SIGINT and SIGTERM to the embedding program instead of stopping the server.
    pub disable_signals: bool,
    /// Time open connections get to finish when the server stops, rounded down to seconds.
    pub shutdown_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Time a request waits for the Worker actor before it fails with 503.
    pub actor_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            disable_signals: true,
            shutdown_timeout: Duration::from_secs(1),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            actor_timeout: DEFAULT_ACTOR_TIMEOUT,
        }
    }
}

/// State shared by every handler.
#[derive(Debug, Clone)]
struct ApiState {
    worker: Addr<Worker>,
    actor_timeout: Duration,
}

/// Binds the worker's API on `bind` (port 0 picks a free port) and returns the server
/// with the bound address.
///
/// The server serves nothing until it is awaited or spawned, for example with
/// `actix::spawn(server)`; stop it through `server.handle()`.
///
/// # Errors
///
/// Returns the I/O error when the address cannot be bound.
pub async fn serve(
    worker: Addr<Worker>,
    bind: SocketAddr,
    options: HttpOptions,
) -> io::Result<(Server, SocketAddr)> {
    let state = web::Data::new(ApiState {
        worker,
        actor_timeout: options.actor_timeout,
    });
    let max_body_bytes = options.max_body_bytes;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(|config| routes(config, max_body_bytes))
    })
    .workers(options.workers.max(1))
    .shutdown_timeout(options.shutdown_timeout.as_secs());
    if options.disable_signals {
        server = server.disable_signals();
    }

    let server = server.bind(bind)?;
    let addr = server.addrs().first().copied().ok_or_else(|| {
        io::Error::other(format!(
            "binding the worker API on {bind} yielded no address"
        ))
    })?;
    log::info!("worker API listening on {addr}");
    Ok((server.run(), addr))
}

/// Registers every route of the worker's API.
fn routes(config: &mut web::ServiceConfig, max_body_bytes: usize) {
    config
        .app_data(web::PayloadConfig::new(max_body_bytes))
        .app_data(json::query_config())
        .service(
            web::resource("/tasks")
                .route(web::post().to(tasks::start_task))
                .route(web::get().to(tasks::list_tasks))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/tasks/{task_id}")
                .route(web::get().to(tasks::get_task))
                .route(web::delete().to(tasks::stop_task))
                .default_service(web::to(method_not_allowed)),
        )
        .route("/stats", web::get().to(node::stats))
        .route("/node", web::get().to(node::describe))
        .route("/events", web::get().to(events::stream_events))
        .default_service(web::to(not_found));
}

async fn not_found(request: HttpRequest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorBody::new(format!(
            "no route for {} {}",
            request.method(),
            request.path()
        )),
    )
}

async fn method_not_allowed(request: HttpRequest) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorBody::new(format!(
            "method {} is not allowed on {}",
            request.method(),
            request.path()
        )),
    )
}

/// An error response: a status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, body: ErrorBody) -> Self {
        Self { status, body }
    }

    fn bad_request(field: &str, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorBody::for_field(field, error))
    }

    /// Maps a Worker's refusal to 409 and its unavailability to 503; the body carries the
    /// command error itself so that a manager's bridge can rebuild it.
    fn from_command(error: CommandError) -> Self {
        let status = match error {
            CommandError::Rejected { .. } | CommandError::PortInUse { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut body = ErrorBody::new(error.to_string());
        body.command_error = Some(error);
        Self::new(status, body)
    }

    /// Maps a failed call to the Worker actor to 503.
    fn from_mailbox(error: MailboxError, timeout: Duration) -> Self {
        let message = match error {
            MailboxError::Timeout => {
                format!(
                    "worker did not answer within {} ms; retry later",
                    timeout.as_millis()
                )
            }
            MailboxError::Closed => "worker is shut down".to_string(),
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorBody::new(message))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.body.error)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(&self.body)
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

/// Builds a 202 response with a `{}` body.
fn accepted() -> HttpResponse {
    HttpResponse::Accepted().json(serde_json::json!({}))
}
