//! What the hand-written HTTP stores (`swift.rs`, `gcs.rs`) share: errors in object_store's
//! wording, and reading an object's GET or HEAD answer into its `GetResult`.

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetResult, GetResultPayload, ObjectMeta};
use reqwest::{Response, StatusCode};

pub(super) fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// The error for a non-success answer, in object_store's wording ("status code: 404 Not
/// Found: <message>") so `retry::classify` reads the status.
pub(super) fn status_error(
    store: &'static str,
    path: &str,
    status: StatusCode,
    message: &str,
) -> object_store::Error {
    let source: Box<dyn std::error::Error + Send + Sync> =
        format!("Server returned non-2xx status code: {status}: {message}").into();
    let path = path.to_string();
    match status.as_u16() {
        404 => object_store::Error::NotFound { path, source },
        412 => object_store::Error::Precondition { path, source },
        401 => object_store::Error::Unauthenticated { path, source },
        403 => object_store::Error::PermissionDenied { path, source },
        _ => object_store::Error::Generic { store, source },
    }
}

/// `bytes a-b/total` as (first byte, last byte, total).
fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (r, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = r.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}

/// A successful GET (or HEAD, `head`) of `location`: the range from `Content-Range` (else the
/// whole body), the size, `Last-Modified` and `ETag`; the body streamed, its errors mapped by
/// `transport`.
pub(super) fn get_result(
    location: &Path,
    resp: Response,
    head: bool,
    transport: fn(reqwest::Error) -> object_store::Error,
) -> GetResult {
    let len: u64 = header(&resp, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (range, size) = match header(&resp, "content-range").and_then(content_range) {
        Some((a, b, total)) => (a..b + 1, total),
        None => (0..len, len),
    };
    let meta = ObjectMeta {
        location: location.clone(),
        last_modified: header(&resp, "last-modified")
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        size,
        e_tag: header(&resp, "etag").map(unquote),
        version: None,
    };
    let payload = if head {
        GetResultPayload::Stream(futures::stream::empty().boxed())
    } else {
        GetResultPayload::Stream(resp.bytes_stream().map_err(transport).boxed())
    };
    GetResult {
        payload,
        meta,
        range,
        attributes: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ranges_parse_and_bad_ones_are_none() {
        assert_eq!(super::content_range("bytes 1-2/5"), Some((1, 2, 5)));
        assert_eq!(super::content_range("bytes */5"), None);
        assert_eq!(super::content_range("items 1-2/5"), None);
        assert_eq!(super::content_range("bytes 1-x/5"), None);
    }
}
