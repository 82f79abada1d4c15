//! Extractors whose rejections are problem+json (axum's own answer in plain text): JSON
//! bodies, PEM bodies, path and query parameters.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, ProblemKind};

/// Largest JSON request body, in bytes: every JSON body of the API is a few fields.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// Largest PEM request body (a trust bundle or CRLs), in bytes. The store accepts root
/// bundles up to 1 MiB; a CRL listing 20,000 serials is about 700 KiB of PEM.
pub const PEM_BODY_LIMIT: usize = 1024 * 1024;

/// The media type of PEM request bodies.
pub const PEM_MEDIA_TYPE: &str = "application/x-pem-file";

fn kind_of(status: u16) -> ProblemKind {
    match status {
        413 => ProblemKind::PayloadTooLarge,
        415 => ProblemKind::UnsupportedMediaType,
        422 => ProblemKind::Invalid,
        500..=599 => ProblemKind::Internal,
        _ => ProblemKind::BadRequest,
    }
}

/// A JSON body (`Content-Type: application/json`), at most [`JSON_BODY_LIMIT`] bytes.
/// Malformed JSON is 400, a wrong media type 415, a well-formed body with wrong or
/// unknown fields 422, a body too large 413.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Every body of the API is an object; serde would also read a struct from an
        // array of its fields' values (`[null, null]`), which the document does not allow.
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(&rejection)),
        };
        if !value.is_object() {
            return Err(ApiError::new(
                ProblemKind::Invalid,
                "the body must be a JSON object",
            ));
        }
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::new(ProblemKind::Invalid, format!("invalid body: {e}")))
    }
}

/// An optional JSON body: none at all (no bytes) or JSON `null` (what the document's
/// optional body allows) is `T::default()`; anything else is read as [`ApiJson`] reads
/// it (and refused as it refuses).
pub(crate) struct OptionalJson<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|r| ApiError::new(kind_of(r.status().as_u16()), r.body_text()))?;
        if bytes.is_empty() || bytes.trim_ascii() == b"null" {
            return Ok(Self(T::default()));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        ApiJson::from_request(req, state)
            .await
            .map(|ApiJson(t)| Self(t))
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    ApiError::new(kind_of(rejection.status().as_u16()), rejection.body_text())
}

/// An optional whole number in a JSON body, also when written with a fraction of zero
/// (`300.0`): JSON Schema's `integer` is any number without a fractional part, so a client
/// generated from the document may send one. Other fractions, negatives and values out of
/// `T`'s range are refused (422).
pub(crate) fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // 2^53: beyond it a float no longer holds every whole number.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=EXACT).contains(f))
            .map(|f| f as u64)
    });
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

/// A PEM body (`Content-Type: application/x-pem-file`), UTF-8, at most
/// [`PEM_BODY_LIMIT`] bytes (the route sets that limit). Not `text/plain`: a browser sends
/// that cross-site without asking (a "simple" request), so a page could make an operator's
/// browser, holding an admin client certificate, add a trust domain (issue 18).
pub(crate) struct PemBody(pub(crate) String);

impl<S: Send + Sync> FromRequest<S> for PemBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media_type.as_deref() != Some(PEM_MEDIA_TYPE) {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                format!("expected `Content-Type: {PEM_MEDIA_TYPE}`"),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(kind_of(r.status().as_u16()), r.body_text()))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::new(ProblemKind::Invalid, "the PEM text is not UTF-8"))?;
        Ok(Self(text))
    }
}

/// Path parameters; a parameter that does not parse is 400.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(&rejection)),
        }
    }
}

fn path_rejection(rejection: &PathRejection) -> ApiError {
    ApiError::new(kind_of(rejection.status().as_u16()), rejection.body_text())
}

/// Query parameters; a query that does not parse (or names an unknown parameter) is 400.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::new(ProblemKind::BadRequest, rejection.body_text())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::whole_number")]
        n: Option<u64>,
    }

    /// Whole numbers with a zero fraction are read exactly from the request's text up to
    /// 2^53, where the default float parser can be half a unit off (schemathesis sent
    /// `2251799813685245.0` and was refused before serde_json's `float_roundtrip`).
    #[test]
    fn a_zero_fraction_is_read_exactly_from_text_up_to_2_pow_53() {
        for (text, want) in [
            ("2.0", Some(2)),
            ("2251799813685245.0", Some(2_251_799_813_685_245)),
            ("4503599627370495.0", Some(4_503_599_627_370_495)),
            ("9007199254740992.0", Some(9_007_199_254_740_992)),
            ("18446744073709551615", Some(u64::MAX)),
        ] {
            let body: Body = serde_json::from_str(&format!(r#"{{"n": {text}}}"#))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(body.n, want, "{text}");
        }
        for text in ["2.5", "-1.0", "9007199254740994.0", "1e300"] {
            let refused = serde_json::from_str::<Body>(&format!(r#"{{"n": {text}}}"#));
            assert!(refused.is_err(), "{text}: {refused:?}");
        }
    }
}
