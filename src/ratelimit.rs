//! Per-user rate limit: a sliding window of accepted messages. A limited user gets one polite
//! notice per window (never silence, never a notice per message). Used by the dispatcher for
//! every connector (`rate_limit:`) and by OneBot for its own section's limit.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::config::RateLimit;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit. `notify` is true for the first refusal of a window.
    Limited {
        notify: bool,
        retry_after: Duration,
    },
}

#[derive(Default)]
struct Window {
    hits: VecDeque<Instant>,
    /// No further notice before this instant (the end of the window that was noticed).
    quiet_until: Option<Instant>,
}

/// Windows by user key `K` (OneBot's numeric user id, the dispatcher's connector and sender id).
pub struct RateLimiter<K> {
    limit: RateLimit,
    users: Mutex<HashMap<K, Window>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a message of `user` at `now` unless it is over the limit.
    pub fn check(&self, user: K, now: Instant) -> Verdict {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        // Forget users whose windows are empty, so the map stays small.
        if users.len() > 4096 {
            let window = self.limit.window;
            users.retain(|_, w| {
                w.hits
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let w = users.entry(user).or_default();
        while w
            .hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limit.window)
        {
            w.hits.pop_front();
        }
        if w.hits.len() < self.limit.messages {
            w.hits.push_back(now);
            return Verdict::Allow;
        }
        let frees_at = w.hits[0] + self.limit.window;
        let notify = w.quiet_until.is_none_or(|t| now >= t);
        if notify {
            w.quiet_until = Some(frees_at);
        }
        Verdict::Limited {
            notify,
            retry_after: frees_at.saturating_duration_since(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_with_one_notice_per_window() {
        let rl = RateLimiter::<i64>::new(RateLimit {
            messages: 2,
            window: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(rl.check(1, at(0)), Verdict::Allow);
        assert_eq!(rl.check(1, at(4)), Verdict::Allow);
        assert_eq!(
            rl.check(1, at(5)),
            Verdict::Limited {
                notify: true,
                retry_after: Duration::from_secs(5)
            }
        );
        assert!(matches!(
            rl.check(1, at(6)),
            Verdict::Limited { notify: false, .. }
        ));
        // Another user is unaffected.
        assert_eq!(rl.check(2, at(6)), Verdict::Allow);
        // The first hit left the window: one slot frees up.
        assert_eq!(rl.check(1, at(10)), Verdict::Allow);
        // Full again, in a new window: a new notice.
        assert!(matches!(
            rl.check(1, at(11)),
            Verdict::Limited { notify: true, .. }
        ));
        assert!(matches!(
            rl.check(1, at(12)),
            Verdict::Limited { notify: false, .. }
        ));
    }
}
