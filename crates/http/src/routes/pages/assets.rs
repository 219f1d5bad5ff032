//! The pages' stylesheet and script, compiled into the binary and served under names that
//! carry a hash of their content (`app.3f9c0a1b2d.js`): a new build gets new names, so the old
//! ones can be cached for a year (`immutable`) by any CDN or browser without ever going stale.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// `app.<first 10 hex digits of SHA-256>.<ext>`, computed once.
fn hashed(content: &str, ext: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!("app.{}.{ext}", &hex::encode(digest)[..10])
}

/// The stylesheet's current file name under `/assets/`.
pub fn css_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| hashed(CSS, "css"))
}

/// The script's current file name under `/assets/`.
pub fn js_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| hashed(JS, "js"))
}

/// `GET /assets/{file}`: the current stylesheet or script; any other name (an old hash
/// included) is 404, so a stale name is never cached with new content.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = if file == css_name() {
        (CSS, "text/css; charset=utf-8")
    } else if file == js_name() {
        (JS, "text/javascript; charset=utf-8")
    } else {
        return crate::problem::ApiError::no_route().into_response();
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        assert!(css_name().starts_with("app.") && css_name().ends_with(".css"));
        assert!(js_name().ends_with(".js"));
        assert_eq!(css_name().len(), "app.".len() + 10 + ".css".len());
        assert_ne!(hashed("a", "js"), hashed("b", "js"));
    }
}
