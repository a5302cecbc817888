//! Budgets: daily (UTC day) and monthly (UTC calendar month) spending limits per user and per
//! room, checked before a turn starts.
//!
//! Owns: the running totals of the current day and month per user and per room
//! ([`Spending`], kept in memory by the ledger: loaded once from `usage.jsonl` at start, then
//! added to as each turn is recorded — never re-read per message), the check, and the room
//! message when a limit is reached. Owners' turns are not checked: that is the owner
//! override (an owner can always ask, e.g. to finish what a guest started).
//! Knows nothing about: platforms, agents, the queue.

use std::collections::HashMap;
use std::time::SystemTime;

use time::{Date, Month, OffsetDateTime};

use crate::config::{Budgets, Limit};
use crate::ledger::Entry;

/// Tokens and cost summed over one period.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Used {
    /// Input + output tokens (cache reads and writes are in the cost, not here).
    pub tokens: u64,
    pub usd: f64,
}

impl Used {
    fn add(&mut self, e: &Entry) {
        self.tokens += e.input_tokens + e.output_tokens;
        self.usd += e.cost_usd.unwrap_or(0.0);
    }
}

/// One spender's totals: the day and the month they belong to, so a new period starts at
/// zero without a timer.
#[derive(Clone, Copy, Debug, Default)]
struct Spent {
    day: Option<Date>,
    daily: Used,
    month: Option<(i32, Month)>,
    monthly: Used,
}

/// The running totals, by spender key ([`user_key`], [`room_key`]). Holds one entry per user
/// and room seen this month.
#[derive(Debug, Default)]
pub struct Spending {
    spent: HashMap<String, Spent>,
}

pub fn user_key(connector: &str, user: &str) -> String {
    format!("user:{connector}/{user}")
}

pub fn room_key(room: &str) -> String {
    format!("room:{room}")
}

fn date_of(epoch: u64) -> Date {
    OffsetDateTime::from_unix_timestamp(epoch.min(253_402_300_799) as i64)
        .map(|t| t.date())
        .unwrap_or(Date::MIN)
}

fn epoch_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Midnight UTC starting this month, in epoch seconds: what the ledger is read back from.
pub fn month_start(now: SystemTime) -> u64 {
    let d = date_of(epoch_of(now));
    Date::from_calendar_date(d.year(), d.month(), 1)
        .map(|m| m.midnight().assume_utc().unix_timestamp().max(0) as u64)
        .unwrap_or(0)
}

impl Spending {
    /// Totals of `entries` (those of this month are enough).
    pub fn of_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Spending {
        let mut s = Spending::default();
        for e in entries {
            s.add(e);
        }
        s
    }

    /// Counts a recorded turn for its user and its room.
    pub fn add(&mut self, e: &Entry) {
        let date = date_of(e.epoch);
        for key in [user_key(&e.connector, &e.user), room_key(&e.room)] {
            let spent = self.spent.entry(key).or_default();
            if spent.day != Some(date) {
                if spent.day.is_some_and(|d| d > date) {
                    continue; // an out-of-order older line: its day is over
                }
                spent.day = Some(date);
                spent.daily = Used::default();
            }
            let month = (date.year(), date.month());
            if spent.month != Some(month) {
                spent.month = Some(month);
                spent.monthly = Used::default();
            }
            spent.daily.add(e);
            spent.monthly.add(e);
        }
        // Spenders idle since an earlier month hold nothing that counts any more.
        let month = Some((date.year(), date.month()));
        self.spent.retain(|_, s| s.month >= month);
    }

    /// What `key` used today and this month, as of `now`.
    pub fn used(&self, key: &str, now: SystemTime) -> (Used, Used) {
        let Some(s) = self.spent.get(key) else {
            return (Used::default(), Used::default());
        };
        let today = date_of(epoch_of(now));
        let daily = if s.day == Some(today) {
            s.daily
        } else {
            Used::default()
        };
        let monthly = if s.month == Some((today.year(), today.month())) {
            s.monthly
        } else {
            Used::default()
        };
        (daily, monthly)
    }
}

/// Who a turn is checked for.
pub struct Spenders<'a> {
    pub connector: &'a str,
    /// Every sender of the turn's messages.
    pub users: Vec<&'a str>,
    /// The room key, as the ledger writes it.
    pub room: &'a str,
}

/// `None` when the turn may run; else the room message saying which budget is used up.
pub fn check(
    budgets: &Budgets,
    spending: &Spending,
    who: &Spenders<'_>,
    now: SystemTime,
) -> Option<String> {
    let today = date_of(epoch_of(now));
    let next_day = today.next_day().unwrap_or(today);
    let next_month = if today.month() == Month::December {
        Date::from_calendar_date(today.year() + 1, Month::January, 1)
    } else {
        Date::from_calendar_date(today.year(), today.month().next(), 1)
    }
    .unwrap_or(today);
    let renews = |d: Date| {
        crate::timefmt::rfc3339_utc_secs(d.midnight().assume_utc().unix_timestamp().max(0) as u64)
    };
    let mut checks: Vec<(String, String, &crate::config::PeriodLimits)> = who
        .users
        .iter()
        .map(|u| (user_key(who.connector, u), (*u).to_string(), &budgets.user))
        .collect();
    checks.push((room_key(who.room), "This room".into(), &budgets.room));
    for (key, name, limits) in checks {
        let (daily, monthly) = spending.used(&key, now);
        for (period, used, limit, next) in [
            ("daily", daily, limits.daily, next_day),
            ("monthly", monthly, limits.monthly, next_month),
        ] {
            if let Some(over) = reached(used, limit) {
                return Some(format!(
                    "💸 {name} has used the {period} budget ({over}); it renews at {}. Owners' messages are still answered.",
                    renews(next)
                ));
            }
        }
    }
    None
}

/// "240 of 200 tokens" or "$1.20 of $1.00" when `used` reached `limit`.
fn reached(used: Used, limit: Limit) -> Option<String> {
    if let Some(max) = limit.tokens.filter(|&max| used.tokens >= max) {
        return Some(format!("{} of {max} tokens", used.tokens));
    }
    if let Some(max) = limit.usd.filter(|&max| used.usd >= max) {
        return Some(format!("${:.2} of ${max:.2}", used.usd));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeriodLimits;
    use std::time::Duration;

    /// 2026-12-07T00:00:00Z
    const DAY: u64 = 1_796_601_600;

    fn entry(user: &str, room: &str, at: u64, tokens: (u64, u64), usd: f64) -> Entry {
        Entry {
            epoch: at,
            connector: "local".into(),
            room: room.into(),
            user: user.into(),
            input_tokens: tokens.0,
            output_tokens: tokens.1,
            cost_usd: Some(usd),
            ..Entry::default()
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn totals_follow_the_day_and_the_month() {
        let s = Spending::of_entries(&[
            entry("bob", "local:r", DAY - 86_400, (100, 20), 0.5),
            entry("bob", "local:r", DAY + 10, (100, 20), 0.25),
            entry("alice", "local:r", DAY + 20, (1, 1), 0.0),
        ]);
        let (daily, monthly) = s.used("user:local/bob", at(DAY + 30));
        assert_eq!(
            daily,
            Used {
                tokens: 120,
                usd: 0.25
            }
        );
        assert_eq!(
            monthly,
            Used {
                tokens: 240,
                usd: 0.75
            }
        );
        let (daily, _) = s.used("room:local:r", at(DAY + 30));
        assert_eq!(daily.tokens, 122);
        // The next day starts at zero; the month goes on.
        let (daily, monthly) = s.used("user:local/bob", at(DAY + 86_400));
        assert_eq!((daily.tokens, monthly.tokens), (0, 240));
        // 2027-01-01: a new month.
        let (_, monthly) = s.used("user:local/bob", at(1_798_761_600));
        assert_eq!(monthly.tokens, 0);
        assert_eq!(month_start(at(DAY + 30)), 1_796_083_200); // 2026-12-01
    }

    #[test]
    fn a_reached_limit_gives_the_room_message() {
        let s = Spending::of_entries(&[entry("bob", "local:r", DAY + 10, (100, 20), 1.2)]);
        let who = Spenders {
            connector: "local",
            users: vec!["bob"],
            room: "local:r",
        };
        let mut budgets = Budgets::default();
        assert_eq!(check(&budgets, &s, &who, at(DAY + 60)), None);
        budgets.user = PeriodLimits {
            daily: Limit {
                tokens: Some(120),
                usd: None,
            },
            monthly: Limit::default(),
        };
        assert_eq!(
            check(&budgets, &s, &who, at(DAY + 60)).unwrap(),
            "💸 bob has used the daily budget (120 of 120 tokens); it renews at 2026-12-08T00:00:00Z. Owners' messages are still answered."
        );
        assert_eq!(check(&budgets, &s, &who, at(DAY + 86_400)), None);
        budgets.user = PeriodLimits::default();
        budgets.room.monthly.usd = Some(1.0);
        assert_eq!(
            check(&budgets, &s, &who, at(DAY + 86_400)).unwrap(),
            "💸 This room has used the monthly budget ($1.20 of $1.00); it renews at 2027-01-01T00:00:00Z. Owners' messages are still answered."
        );
    }
}
