//! The one retry policy for every storage call.
//!
//! object_store's own retries are off (`max_retries: 0`), so this is the only layer:
//! - transient errors (connection refused/reset, a cut response, a stall, HTTP 5xx, 408, 429)
//!   are retried with exponential backoff (100 ms doubling to 5 s) until the retry deadline;
//! - permanent errors (any other 4xx, a missing bucket, refused credentials, an object that
//!   already exists) fail at once;
//! - a small call (head, one-request get/put, delete, a small object) ends by
//!   `start + WALKEEPER_RETRY_TIMEOUT`: every attempt is cut off at that deadline;
//! - a large transfer (a multipart upload, a listing, a streamed download) is bounded by lack of
//!   progress: each request and each received chunk must arrive within the retry timeout, and
//!   retries stop once the timeout has passed since the last progress.

use std::time::{Duration, Instant};

/// The first pause between attempts; doubled after each failure up to [`MAX_DELAY`].
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(5);
/// The least time one attempt is given, even when the retry timeout is set lower.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// What to do about a failed storage request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Worth another attempt.
    Transient,
    /// Will fail the same way again.
    Permanent,
    /// The object does not exist.
    NotFound,
    /// The bucket or container itself does not exist.
    NoBucket,
}

/// Every message in an error's source chain, joined.
pub(crate) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The HTTP status a failed request got, from object_store's message
/// ("Server returned non-2xx status code: 400 Bad Request: ...").
pub(crate) fn http_status(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

fn names_missing_bucket(text: &str) -> bool {
    ["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]
        .iter()
        .any(|m| text.contains(m))
}

pub(crate) fn classify(e: &object_store::Error) -> Class {
    use object_store::Error as E;
    let text = chain_text(e);
    match e {
        E::NotFound { .. } if names_missing_bucket(&text) => Class::NoBucket,
        E::NotFound { .. } => Class::NotFound,
        E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotSupported { .. }
        | E::NotImplemented
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => Class::Permanent,
        _ => match http_status(&text) {
            Some(404) if names_missing_bucket(&text) => Class::NoBucket,
            Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => Class::Permanent,
            _ => Class::Transient,
        },
    }
}

/// The text between `<tag>` and `</tag>` in an S3 error body.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(&text[start..start + len])
}

/// A one-line cause for a failed request: the HTTP status and the store's error code and
/// message when there are any, else the error's own text.
pub(crate) fn cause(e: &object_store::Error) -> String {
    let text = chain_text(e);
    let line = match http_status(&text) {
        Some(status) => {
            let mut s = format!("HTTP {status}");
            if let Some(code) = xml_field(&text, "Code") {
                s.push(' ');
                s.push_str(code);
            }
            if let Some(msg) = xml_field(&text, "Message") {
                s.push_str(": ");
                s.push_str(msg);
            }
            s
        }
        None => strip_generic(&text).to_string(),
    };
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// object_store's "Generic S3 error: " prefix says nothing the message around it does not.
fn strip_generic(text: &str) -> &str {
    text.strip_prefix("Generic ")
        .and_then(|rest| rest.split_once(" error: "))
        .filter(|(store, _)| !store.contains(' '))
        .map_or(text, |(_, rest)| rest)
}

/// Backoff between attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    pub attempts: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff {
            next: FIRST_DELAY,
            attempts: 1,
        }
    }

    /// The pause before the next attempt, or None when that attempt could not start before
    /// `deadline`.
    pub fn next_delay(&mut self, now: Instant, deadline: Instant) -> Option<Duration> {
        let d = self.next;
        if now + d >= deadline {
            return None;
        }
        self.next = (d * 2).min(MAX_DELAY);
        self.attempts += 1;
        Some(d)
    }
}

/// When an attempt started at `now` must give up: at the call's deadline, but never sooner than
/// [`MIN_ATTEMPT`] from now.
pub(crate) fn attempt_limit(now: Instant, deadline: Instant) -> Instant {
    deadline.max(now + MIN_ATTEMPT)
}

/// The error of a request that got no answer in time.
pub(crate) fn stalled(what: &str, after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "walkeeper",
        source: format!("{what}: no answer from the store within {after:?}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Msg(String);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Msg(text.to_string())),
        }
    }

    fn status(code: &str, body: &str) -> object_store::Error {
        generic(&format!(
            "Error performing PUT http://127.0.0.1:1/b/k in 2ms - Server returned non-2xx status code: {code}: {body}"
        ))
    }

    #[test]
    fn client_errors_other_than_timeout_and_throttling_are_permanent() {
        let bad = status(
            "400 Bad Request",
            "<Error><Code>InvalidBucketName</Code><Message>The specified bucket is not valid.</Message></Error>",
        );
        assert_eq!(classify(&bad), Class::Permanent);
        assert_eq!(
            cause(&bad),
            "HTTP 400 InvalidBucketName: The specified bucket is not valid."
        );
        assert_eq!(classify(&status("403 Forbidden", "")), Class::Permanent);
        assert_eq!(
            classify(&status("408 Request Timeout", "")),
            Class::Transient
        );
        assert_eq!(
            classify(&status("429 Too Many Requests", "")),
            Class::Transient
        );
    }

    #[test]
    fn server_errors_and_transport_failures_are_transient() {
        assert_eq!(
            classify(&status("503 Service Unavailable", "")),
            Class::Transient
        );
        assert_eq!(
            classify(&generic("error sending request: connection reset by peer")),
            Class::Transient
        );
        assert_eq!(
            classify(&stalled("put k", Duration::from_secs(3))),
            Class::Transient
        );
    }

    #[test]
    fn a_missing_bucket_is_told_apart_from_a_missing_object() {
        let no_bucket = object_store::Error::NotFound {
            path: "k".into(),
            source: Box::new(Msg(
                "status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>".into(),
            )),
        };
        assert_eq!(classify(&no_bucket), Class::NoBucket);
        let no_key = object_store::Error::NotFound {
            path: "k".into(),
            source: Box::new(Msg(
                "status code: 404 Not Found: <Error><Code>NoSuchKey</Code></Error>".into(),
            )),
        };
        assert_eq!(classify(&no_key), Class::NotFound);
        assert_eq!(
            classify(&status("404 Not Found", "<Code>NoSuchBucket</Code>")),
            Class::NoBucket
        );
    }

    #[test]
    fn existing_objects_and_refused_credentials_are_permanent() {
        let exists = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: Box::new(Msg("412".into())),
        };
        assert_eq!(classify(&exists), Class::Permanent);
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: Box::new(Msg("403".into())),
        };
        assert_eq!(classify(&denied), Class::Permanent);
    }

    #[test]
    fn causes_are_one_line() {
        let e = generic("first line\nsecond   line");
        assert_eq!(cause(&e), "first line second line");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_stops_before_the_deadline() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(20);
        let mut b = Backoff::new();
        let mut delays = Vec::new();
        let mut now = t0;
        while let Some(d) = b.next_delay(now, deadline) {
            delays.push(d);
            now += d;
        }
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays.contains(&MAX_DELAY));
        // The last attempt starts before the deadline; the pause after it would cross it.
        assert!(now < deadline);
        assert!(now + MAX_DELAY >= deadline);
        assert_eq!(b.next_delay(now, deadline), None);
        assert_eq!(b.attempts as usize, delays.len() + 1);
    }

    #[test]
    fn an_attempt_ends_at_the_deadline_but_gets_a_minimum_time() {
        let now = Instant::now();
        let far = now + Duration::from_secs(10);
        assert_eq!(attempt_limit(now, far), far);
        assert_eq!(attempt_limit(now, now), now + MIN_ATTEMPT);
        assert_eq!(
            attempt_limit(now, now - Duration::from_secs(1)),
            now + MIN_ATTEMPT
        );
    }
}
