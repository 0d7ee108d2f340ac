//! The target time of `POST /restart`, read as PostgreSQL reads `recovery_target_time`.
//!
//! dingo sends `{"recovery_target_time": "2016-10-06 16:38:00"}`, built with
//! `date "+%Y-%m-%d %H:%M:%S"`: a wall-clock time without a zone. PostgreSQL reads such a time in
//! its TimeZone setting, so the agent asks the running server, in a session reset to the server's
//! TimeZone, which instant it means (`$1::timestamptz`). DST gaps and overlaps are resolved as
//! PostgreSQL resolves them. Only a well-formed date and time reaches the server (never words
//! like `now` or `epoch`, which PostgreSQL would also accept).

use chrono::{DateTime, NaiveDateTime, Utc};

use super::local::LocalServer;
use crate::backup::pg;
use crate::backup::restore::{check_past, parse_given_time, GivenTime};
use crate::error::{Error, Result};

/// The absolute target, and how it was read when it had no zone (for the job's steps).
pub async fn resolve(local: &LocalServer, given: &str) -> Result<(DateTime<Utc>, Option<String>)> {
    match parse_given_time(given)? {
        GivenTime::Absolute(t) => Ok((check_past(t, given)?, None)),
        GivenTime::Local(naive) => {
            // The server cannot be asked: a 503 (try again), never a 400 for a good request.
            let (t, zone) = in_server_zone(local, naive).await.map_err(|e| {
                Error::Cluster(format!(
                    "cannot read {given:?} in the server's TimeZone: {e}"
                ))
            })?;
            let note = format!(
                "recovery_target_time {given:?} has no zone: read in the server's TimeZone \
                 {zone}, it is {}",
                t.to_rfc3339()
            );
            Ok((check_past(t, given)?, Some(note)))
        }
    }
}

/// Asks the local server which instant `naive` is in its TimeZone.
async fn in_server_zone(
    local: &LocalServer,
    naive: NaiveDateTime,
) -> Result<(DateTime<Utc>, String)> {
    let client = pg::connect(&local.pg_config()?).await?;
    let text = naive.format("%Y-%m-%d %H:%M:%S%.f").to_string();
    let (utc, zone) = pg::instant_in_server_zone(&client, &text).await?;
    let t = DateTime::parse_from_rfc3339(&utc)
        .map_err(|e| Error::Cluster(format!("PostgreSQL answered {utc:?} for {text}: {e}")))?
        .with_timezone(&Utc);
    Ok((t, zone))
}
