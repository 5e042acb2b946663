//! Errors as values. A handler returns `Result<_, ApiError>`; [`ApiError::into_response`] is
//! the one place that turns an error into the JSON envelope, so every endpoint answers the
//! same way. Internal details (storage faults) are logged here and never shown to clients.

use http::StatusCode;
use serde::Serialize;

use crate::model::Invalid;
use crate::store::StoreError;

/// An error answer: HTTP status, a stable snake_case code, a sentence for people and,
/// where one input is to blame, its name.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
    /// The error's `details`, where one sentence cannot say everything the client needs,
    /// e.g. every failing message of a batch. Absent from the envelope when `None`.
    pub details: Option<Box<serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            details: None,
        }
    }

    /// Adds `details` to the error.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// Names the input at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request cannot be parsed (bad JSON, wrong types, bad query values).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
        .field(field)
    }

    /// 401: no credentials, or credentials that are not valid.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        )
    }

    /// 403: valid credentials that do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404: unknown, or not the caller's (existence is never revealed).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413: the body is larger than `server.max_body_bytes`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415: the body's content type is not one this endpoint reads.
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 503: the store cannot take writes; nothing was acknowledged.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        );
        e.retry_after = Some(5);
        e
    }

    /// The envelope `{"success": false, "data": null, "error": {...}}`.
    pub fn into_response(self) -> warp::reply::Response {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            code: &'a str,
            message: &'a str,
            field: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a serde_json::Value>,
        }
        let body = serde_json::json!({
            "success": false,
            "data": null,
            "error": ErrorBody {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                details: self.details.as_deref(),
            },
        });
        let mut res = crate::api::json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if matches!(e, StoreError::Busy) {
            // Load, not a fault: the client is told when to come back.
            tracing::debug!("store write queue full; answered 503");
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_busy",
                "the store has more writes waiting than it takes at once; nothing was changed, try again",
            );
            e.retry_after = Some(1);
            return e;
        }
        tracing::error!(error = %e, "store error");
        ApiError::unavailable("the store cannot take this request right now; nothing was changed")
    }
}

impl From<crate::store::AcceptError> for ApiError {
    /// A duplicate reference of a single-message intake; batches name the message.
    fn from(e: crate::store::AcceptError) -> Self {
        match e {
            crate::store::AcceptError::Store(e) => e.into(),
            crate::store::AcceptError::Duplicate {
                reference, first, ..
            } => duplicate_reference(&reference, first, "externalReference"),
        }
    }
}

/// 409 `duplicate_reference`: `reference` is taken by message `first` (or repeated inside
/// the same call, when `first` is `None`).
pub fn duplicate_reference(reference: &str, first: Option<uuid::Uuid>, field: &str) -> ApiError {
    let message = match first {
        Some(id) => format!(
            "externalReference {reference} was already used for this doctype by message {id}"
        ),
        None => format!("externalReference {reference} is used twice in this request"),
    };
    ApiError::new(StatusCode::CONFLICT, "duplicate_reference", message)
        .field(field)
        .details(serde_json::json!({"externalReference": reference, "firstMessageId": first}))
}

/// Turns a domain validation failure into a 422 naming `field`.
pub trait InvalidExt<T> {
    fn field(self, field: &str) -> Result<T, ApiError>;
}

impl<T> InvalidExt<T> for Result<T, Invalid> {
    fn field(self, field: &str) -> Result<T, ApiError> {
        self.map_err(|Invalid(m)| ApiError::invalid(field, format!("{field} {m}")))
    }
}
