//! `GET /events?after=SEQ`: the worker's reports as a resumable NDJSON stream.
//!
//! The response first carries every kept report with a sequence number greater than `after`
//! (0 when absent), then each new report as it is published, one JSON object per line. The
//! stream stays open; heartbeats keep it from going idle. A client that reconnects with the
//! last sequence number it read loses nothing the outbox still keeps. When the client
//! disconnects, actix-web drops the body, which closes the outbox's channel.
//!
//! The response carries the outbox's instance id in the
//! [`cube_core::wire::WORKER_INSTANCE_HEADER`] header, so that a client that reconnects can
//! tell whether it reached a new worker process, whose sequence numbers started again.

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use cube_core::WorkerReport;
use cube_core::wire::WORKER_INSTANCE_HEADER;
use futures_util::{StreamExt, stream};
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::worker::{GetOutboxStats, OpenReportStream, ReportStream};

/// Query of `GET /events`.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    after: Option<String>,
}

/// Opens the stream of reports after `after`.
pub(super) async fn stream_events(
    state: web::Data<ApiState>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let after = match query.after.as_deref() {
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request("after", format!("'{text}' is not a sequence number"))
        })?,
        None => 0,
    };
    let stats = state
        .worker
        .send(GetOutboxStats)
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;
    let ReportStream { replay, live } = state
        .worker
        .send(OpenReportStream { after })
        .timeout(state.actor_timeout)
        .await
        .map_err(|error| ApiError::from_mailbox(error, state.actor_timeout))?;

    let live = stream::unfold(live, |mut receiver| async move {
        receiver.recv().await.map(|report| (report, receiver))
    });
    let lines = stream::iter(replay)
        .chain(live)
        .map(|report| encode_line(&report));
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("cache-control", "no-cache"))
        .insert_header((WORKER_INSTANCE_HEADER, stats.instance.to_string()))
        .streaming(lines))
}

fn encode_line(report: &WorkerReport) -> Result<Bytes, serde_json::Error> {
    let mut line = serde_json::to_vec(report)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}
