//! What the platforms' REST clients (Rocket.Chat, Mattermost, Matrix) share about waiting
//! before a retry: the doubling backoff and the wait a server names in a header.
//!
//! Owns: those two rules only. Each client keeps its own retry loop, since what may be
//! retried and how a session is renewed differ per platform.

use std::time::Duration;

/// The wait before retry `attempt` (1-based) when the server named none: `first`, doubling,
/// at most 32 times `first`.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    first * (1 << attempt.saturating_sub(1).min(5))
}

/// A header holding whole seconds (`Retry-After`'s delay form, Mattermost's
/// `X-Ratelimit-Reset`); `None` when absent or not a number (an HTTP date is not honoured:
/// the caller backs off instead).
pub fn seconds_header(resp: &reqwest::Response, name: &str) -> Option<Duration> {
    let v = resp.headers().get(name)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `Retry-After` in seconds.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    seconds_header(resp, reqwest::header::RETRY_AFTER.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|a| backoff(s, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(
            backoff(Duration::from_millis(500), 2),
            Duration::from_secs(1)
        );
    }
}
