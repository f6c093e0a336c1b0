//! Request decoding whose errors name the field at fault.
//!
//! actix-web's `Json` extractor reports serde's message without the path of the bad field,
//! so [`JsonBody`] reads the raw body (within the `PayloadConfig` limit) and decodes it with
//! `serde_path_to_error`. Every failure becomes a JSON [`ErrorBody`].

use actix_web::dev::Payload;
use actix_web::error::{InternalError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, ResponseError, web};
use bytes::Bytes;
use cube_core::wire::ErrorBody;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON request body decoded into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = Bytes::from_request(request, payload);
        Box::pin(async move {
            let body = body.await.map_err(|error| {
                let status = error.as_response_error().status_code();
                let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "request body is larger than the limit".to_string()
                } else {
                    format!("failed to read the request body: {error}")
                };
                actix_web::Error::from(ApiError::new(status, ErrorBody::new(message)))
            })?;
            decode(&body).map(JsonBody).map_err(actix_web::Error::from)
        })
    }
}

/// Decodes `body` as JSON; the error names the path of the field at fault.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            format!("invalid request body: {inner}")
        };
        // The root path prints as "."; it names no field.
        let field = (path != ".").then_some(path);
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: message,
                field,
                command_error: None,
            },
        )
    })?;
    deserializer.end().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(format!("malformed JSON: {error}")),
        )
    })?;
    Ok(value)
}

/// Query-string decoding whose errors are JSON bodies.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _| {
        let api_error = ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(format!("invalid query string: {error}")),
        );
        InternalError::from_response(error, api_error.error_response()).into()
    })
}

#[cfg(test)]
mod tests {
    use cube_core::StartTask;

    use super::*;

    #[test]
    fn decode_names_bad_field() {
        let body = br#"{"task_id":"6f1c1a8e-2b47-4d3e-9a51-0c2f8e9d7b10",
            "attempt":"a1b2c3d4-0000-4000-8000-000000000000",
            "spec":{"name":"w","image":"i","memory":-1},"ports":[]}"#;
        let error = decode::<StartTask>(body).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.body.field.as_deref(), Some("spec.memory"));
        assert!(
            error.body.error.contains("negative"),
            "{}",
            error.body.error
        );
    }

    #[test]
    fn decode_reports_malformed_json() {
        let error = decode::<StartTask>(b"nope").unwrap_err();
        assert!(
            error.body.error.starts_with("malformed JSON"),
            "{}",
            error.body.error
        );
        assert_eq!(error.body.field, None);
        let truncated = decode::<StartTask>(b"{\"task_id\":").unwrap_err();
        assert!(
            truncated.body.error.starts_with("malformed JSON"),
            "{}",
            truncated.body.error
        );
        assert_eq!(truncated.body.field.as_deref(), Some("task_id"));
    }

    #[test]
    fn decode_rejects_trailing_data() {
        let error = decode::<serde_json::Value>(b"{} {}").unwrap_err();
        assert!(
            error.body.error.starts_with("malformed JSON"),
            "{}",
            error.body.error
        );
    }
}
