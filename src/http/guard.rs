//! What every request passes before a handler sees it, in this order: only GET and HEAD (the server is read-only),
//! no request body and a bounded URI, the rate limit (a token bucket shared by all clients), and the bearer token
//! when one is configured (compared in constant time). Every response, refusals included, carries a strict
//! Content-Security-Policy (scripts and styles only from this server, no inline code) and the usual hardening
//! headers.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, HttpError};

/// Longest request target accepted (bytes).
pub const MAX_URI_BYTES: usize = 2048;

/// The policy on every response: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The request checks' shared state.
pub struct Guard {
    /// SHA-256 of the bearer token, when one is required.
    token_digest: Option<[u8; 32]>,
    bucket: Mutex<Bucket>,
    rate: f64,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Guard {
    pub fn new(token: Option<String>, requests_per_s: u32) -> Self {
        let rate = f64::from(requests_per_s.max(1));
        Self {
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            bucket: Mutex::new(Bucket {
                tokens: 2.0 * rate,
                last: Instant::now(),
            }),
            rate,
        }
    }

    /// Takes one request from the bucket (capacity twice the rate); false when it is empty.
    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(2.0 * self.rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the request's `Authorization` header carries the token (always, when none is configured). Both
    /// sides are hashed first, so the comparison takes the same time whatever the length of the guess.
    fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(digest.ct_eq(expected)) && !presented.is_empty()
    }
}

/// Reads the bearer token (surrounding whitespace trimmed); warns when others can read the file.
pub fn read_token(path: &Path) -> Result<String, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(HttpError::EmptyToken(path.to_path_buf()));
    }
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                "the bearer token file {} is readable by every user; chmod 600 it",
                path.display()
            );
        }
    }
    Ok(token.to_owned())
}

/// The middleware: refuses what a read-only server must not take, then adds the security headers.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = match refusal(&state, &request) {
        Some(refused) => refused.into_response(&state),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A refusal: status, one header, and a line of text for the client.
struct Refusal {
    reason: &'static str,
    status: StatusCode,
    header: (header::HeaderName, &'static str),
    text: &'static str,
}

impl Refusal {
    fn plain(reason: &'static str, status: StatusCode, text: &'static str) -> Self {
        Self {
            reason,
            status,
            header: (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            text,
        }
    }

    fn into_response(self, state: &AppState) -> Response {
        state.metrics.refused(self.reason);
        (self.status, [self.header], self.text).into_response()
    }
}

/// Why a request is refused, if it is.
fn refusal(state: &AppState, request: &Request) -> Option<Refusal> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Some(Refusal {
            header: (header::ALLOW, "GET, HEAD"),
            ..Refusal::plain(
                "method",
                StatusCode::METHOD_NOT_ALLOWED,
                "read-only: only GET and HEAD\n",
            )
        });
    }
    if request.uri().to_string().len() > MAX_URI_BYTES {
        return Some(Refusal::plain(
            "uri_too_long",
            StatusCode::URI_TOO_LONG,
            "request target too long\n",
        ));
    }
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Some(Refusal::plain(
            "body",
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests carry no body here\n",
        ));
    }
    if !state.guard.admit() {
        return Some(Refusal {
            header: (header::RETRY_AFTER, "1"),
            ..Refusal::plain("rate", StatusCode::TOO_MANY_REQUESTS, "too many requests\n")
        });
    }
    if !state
        .guard
        .authorized(request.headers().get(header::AUTHORIZATION))
    {
        return Some(Refusal {
            header: (header::WWW_AUTHENTICATE, "Bearer realm=\"robustd\""),
            ..Refusal::plain(
                "token",
                StatusCode::UNAUTHORIZED,
                "a bearer token is required\n",
            )
        });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let g = Guard::new(Some("s3cret".into()), 10);
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(g.authorized(Some(&ok)));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "s3cret",
            "Basic s3cret",
        ] {
            assert!(!g.authorized(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!g.authorized(None));
        assert!(Guard::new(None, 10).authorized(None));
    }

    #[test]
    fn the_bucket_admits_a_burst_of_twice_the_rate_then_refuses() {
        let g = Guard::new(None, 5);
        let admitted = (0..50).filter(|_| g.admit()).count();
        // Ten from the full bucket, plus whatever refilled while the loop ran (microseconds: none or one).
        assert!((10..=11).contains(&admitted), "{admitted}");
    }
}
