//! Optional bearer-token authentication (`--auth-token` / `ONNX_CLE_AUTH_TOKEN`).
//!
//! When a token is configured, every request but the health checks ([`HEALTH_PATH`],
//! [`READY_PATH`]) must carry `Authorization: Bearer <token>`; anything else is a 401
//! `unauthorized` problem with `WWW-Authenticate: Bearer`. The comparison is constant-time: both
//! sides are hashed (sha256) and the digests compared without an early exit, so neither the
//! token's content nor its length leaks through timing. Without a token the layer lets
//! everything through.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::config::{HEALTH_PATH, READY_PATH};
use super::problem::ApiError;

/// The expected token, kept as its sha256 digest.
#[derive(Clone)]
pub struct Auth {
    digest: Option<Arc<[u8; 32]>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("required", &self.digest.is_some())
            .finish()
    }
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

impl Auth {
    /// Requires `token` when given; lets everything through otherwise.
    pub fn new(token: Option<&str>) -> Self {
        Auth {
            digest: token.map(|t| Arc::new(digest(t.as_bytes()))),
        }
    }

    /// Whether a token is required.
    pub fn required(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether an `Authorization` header value carries the token (constant-time).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(expected) = &self.digest else {
            return true;
        };
        let Some(value) = authorization else {
            return false;
        };
        let (scheme, token) = match value.iter().position(|&b| b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => return false,
        };
        let given = digest(token);
        let same = given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        same & scheme.eq_ignore_ascii_case(b"bearer")
    }
}

fn exempt(path: &str) -> bool {
    path == HEALTH_PATH || path == READY_PATH
}

/// Middleware: 401 `unauthorized` unless the request carries the token (or needs none).
pub async fn require(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if !auth.required() || exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if auth.accepts(header) {
        return next.run(req).await;
    }
    let detail = if header.is_some() {
        "the bearer token is not valid"
    } else {
        "this server requires `Authorization: Bearer <token>`"
    };
    let mut res = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"onnx-cle\""),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_exactly() {
        let a = Auth::new(Some("s3cret"));
        assert!(a.accepts(Some(b"Bearer s3cret")));
        assert!(a.accepts(Some(b"bearer s3cret")));
        assert!(!a.accepts(Some(b"Bearer s3cre")));
        assert!(!a.accepts(Some(b"Bearer s3cret2")));
        assert!(!a.accepts(Some(b"Basic s3cret")));
        assert!(!a.accepts(Some(b"s3cret")));
        assert!(!a.accepts(None));
        let open = Auth::new(None);
        assert!(open.accepts(None));
        assert!(!open.required());
    }
}
