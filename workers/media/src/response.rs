//! How media is served: the safety headers every download and thumbnail carries, the spec's
//! `Content-Disposition` rules, and HTTP range requests.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::backend::{ByteRange, ByteStream};

/// Sandboxes anything a browser renders from our origin (the spec's recommended policy).
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                                           style-src 'unsafe-inline'; object-src 'self';";

/// Content types the spec allows to be served `inline`; everything else is an `attachment`.
/// <https://spec.matrix.org/v1.16/client-server-api/#serving-inline-content>
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Adds the safety headers: CSP sandbox, `nosniff`, and a CORP that lets web clients on other
/// origins embed media.
pub fn add_safety_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin"));
}

/// Middleware body: the safety headers on every response of the download and thumbnail routes,
/// errors included.
pub(crate) async fn safety_headers(mut resp: Response) -> Response {
    add_safety_headers(resp.headers_mut());
    resp
}

/// Whether `content_type` may be served inline.
pub fn is_inline_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `Content-Disposition`: `inline` for the spec's safe types, else `attachment`, with the file
/// name as RFC 6266 `filename*` (UTF-8, percent-encoded) and, when plain ASCII, `filename` too.
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> HeaderValue {
    let kind = if is_inline_type(content_type) { "inline" } else { "attachment" };
    let mut value = kind.to_owned();
    if let Some(name) = filename.filter(|n| !n.is_empty()) {
        let plain = name.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
        if plain {
            value.push_str(&format!("; filename=\"{name}\""));
        }
        value.push_str("; filename*=utf-8''");
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                value.push(b as char);
            } else {
                value.push_str(&format!("%{b:02X}"));
            }
        }
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// What a `Range` header asks of an object of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable range: serve everything (200). Multi-range requests are served whole too.
    Full,
    /// One satisfiable range (206).
    Partial(ByteRange),
    /// A range past the end (416).
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 §14) for an object of `size` bytes.
pub(crate) fn parse_range(header: Option<&HeaderValue>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Full };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // Suffix: the last N bytes.
        let Ok(n) = last.parse::<u64>() else { return RangeRequest::Full };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        ByteRange { start: size.saturating_sub(n), end: size - 1 }
    } else {
        let Ok(start) = first.parse::<u64>() else { return RangeRequest::Full };
        let end = if last.is_empty() {
            u64::MAX
        } else {
            match last.parse::<u64>() {
                Ok(e) if e >= start => e,
                _ => return RangeRequest::Full,
            }
        };
        if start >= size {
            return RangeRequest::Unsatisfiable;
        }
        ByteRange { start, end: end.min(size - 1) }
    };
    RangeRequest::Partial(range)
}

/// A media body response: 200 with the whole object or 206 with a range, or 416.
pub(crate) fn media_response(
    body: Option<ByteStream>,
    content_type: &str,
    disposition: HeaderValue,
    size: u64,
    range: RangeRequest,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Media never changes once uploaded (IDs are never reused).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    let (status, len) = match range {
        RangeRequest::Unsatisfiable => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{size}")));
            headers.remove(header::CONTENT_TYPE);
            return (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response();
        }
        RangeRequest::Full => (StatusCode::OK, size),
        RangeRequest::Partial(r) => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes {}-{}/{size}", r.start, r.end)));
            (StatusCode::PARTIAL_CONTENT, r.end - r.start + 1)
        }
    };
    headers.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    let body = body.map_or_else(Body::empty, Body::from_stream);
    (status, headers, body).into_response()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("digits, spaces, '-', '/' and '*' are valid header characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(h: &str, size: u64) -> RangeRequest {
        parse_range(Some(&HeaderValue::from_str(h).unwrap()), size)
    }

    #[test]
    fn ranges() {
        let p = |start, end| RangeRequest::Partial(ByteRange { start, end });
        assert_eq!(parse_range(None, 10), RangeRequest::Full);
        assert_eq!(range("bytes=0-3", 10), p(0, 3));
        assert_eq!(range("bytes=5-", 10), p(5, 9));
        assert_eq!(range("bytes=5-100", 10), p(5, 9));
        assert_eq!(range("bytes=-3", 10), p(7, 9));
        assert_eq!(range("bytes=-30", 10), p(0, 9));
        assert_eq!(range("bytes=10-", 10), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), RangeRequest::Unsatisfiable);
        assert_eq!(range("bytes=4-2", 10), RangeRequest::Full);
        assert_eq!(range("bytes=0-1,4-5", 10), RangeRequest::Full);
        assert_eq!(range("items=0-1", 10), RangeRequest::Full);
    }

    #[test]
    fn disposition_follows_the_inline_list_and_encodes_names() {
        assert_eq!(
            content_disposition("image/png", Some("cat.png")),
            "inline; filename=\"cat.png\"; filename*=utf-8''cat.png"
        );
        assert_eq!(content_disposition("IMAGE/PNG; x=y", None), "inline");
        assert_eq!(
            content_disposition("text/html", Some("a.html")),
            "attachment; filename=\"a.html\"; filename*=utf-8''a.html"
        );
        assert_eq!(content_disposition("image/svg+xml", None), "attachment");
        assert_eq!(
            content_disposition("application/octet-stream", Some("naïve \"q\".txt")),
            "attachment; filename*=utf-8''na%C3%AFve%20%22q%22.txt"
        );
        assert_eq!(
            content_disposition("text/plain", Some("a b;c")),
            "inline; filename=\"a b;c\"; filename*=utf-8''a%20b%3Bc"
        );
    }
}
