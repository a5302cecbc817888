//! Timestamp formatting for prompts, wire formats and user messages (RFC 3339, UTC or local).

use std::time::SystemTime;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `2026-11-21T09:30:00Z` for seconds since the epoch (clamped to a valid range).
pub fn rfc3339_utc_secs(secs: u64) -> String {
    let secs = secs.min(253_402_300_799) as i64; // year 9999: beyond it `time` refuses
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Abbreviated weekday (`Sat`) in UTC: agents mis-compute weekdays from bare dates.
pub fn weekday(t: SystemTime) -> &'static str {
    use time::Weekday::*;
    match OffsetDateTime::from(t).weekday() {
        Monday => "Mon",
        Tuesday => "Tue",
        Wednesday => "Wed",
        Thursday => "Thu",
        Friday => "Fri",
        Saturday => "Sat",
        Sunday => "Sun",
    }
}
