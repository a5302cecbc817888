//! Budgets: daily (UTC day) and monthly (UTC calendar month) spending limits per user and per
//! room, checked before a turn starts.
//!
//! Owns: the running totals of the current day and month per user and per room
//! ([`Spending`], kept in memory by the ledger: loaded once from `usage.jsonl` at start, then
//! added to as each turn is recorded — never re-read per message), the check, and the room
//! message when a limit is reached, and the figures `!status` and `!budget` show. Owners'
//! turns are not checked (an owner can always ask, e.g. to finish what a guest started); an
//! owner's `!budget override` lets a room's guests past the budgets until the end of the UTC
//! day (kept in the room's state by the room worker; [`override_end`] is when it ends).
//! Knows nothing about: platforms, agents, the queue.

use std::collections::{BTreeSet, HashMap};
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
/// and room seen this month, and which users spent in each room this month (for `!budget`).
#[derive(Debug, Default)]
pub struct Spending {
    spent: HashMap<String, Spent>,
    /// Room key → the month and the users (names) who spent in it then.
    room_users: HashMap<String, ((i32, Month), BTreeSet<String>)>,
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
        let this_month = (date.year(), date.month());
        let users = self
            .room_users
            .entry(room_key(&e.room))
            .or_insert_with(|| (this_month, BTreeSet::new()));
        if users.0 < this_month {
            *users = (this_month, BTreeSet::new());
        }
        if users.0 == this_month {
            users.1.insert(e.user.clone());
        }
        // Spenders idle since an earlier month hold nothing that counts any more.
        let month = Some(this_month);
        self.spent.retain(|_, s| s.month >= month);
        self.room_users.retain(|_, (m, _)| *m >= this_month);
    }

    /// The users who spent in `room` (its [`room_key`]) this month, by name.
    pub fn users_of(&self, room: &str, now: SystemTime) -> Vec<String> {
        let today = date_of(epoch_of(now));
        match self.room_users.get(room) {
            Some((month, users)) if *month == (today.year(), today.month()) => {
                users.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
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

/// When an override given at `now` ends: the next midnight UTC, in epoch seconds.
pub fn override_end(now: SystemTime) -> u64 {
    let today = date_of(epoch_of(now));
    let next = today.next_day().unwrap_or(today);
    next.midnight().assume_utc().unix_timestamp().max(0) as u64
}

/// `!status`'s budget figures: what the room and `user` used of each configured limit, e.g.
/// "room 1,234 / 50,000 tokens today · you $0.12 / $5.00 this month"; `None` when no
/// budget is configured.
pub fn status_figures(
    budgets: &Budgets,
    spending: &Spending,
    who: &Spenders<'_>,
    now: SystemTime,
) -> Option<String> {
    if !budgets.is_set() {
        return None;
    }
    let mut spenders = vec![("room", room_key(who.room), &budgets.room)];
    spenders.extend(
        who.users
            .iter()
            .map(|u| ("you", user_key(who.connector, u), &budgets.user)),
    );
    let mut items = Vec::new();
    for (name, key, limits) in spenders {
        let (daily, monthly) = spending.used(&key, now);
        for (period, used, limit) in [
            ("today", daily, limits.daily),
            ("this month", monthly, limits.monthly),
        ] {
            if limit.is_set() {
                items.push(format!("{name} {} {period}", amounts(used, limit, false)));
            }
        }
    }
    Some(items.join(" · "))
}

/// `!budget`: every figure of the room and of each user who spent in it this month, with
/// the configured limits beside them.
pub fn report(
    budgets: &Budgets,
    spending: &Spending,
    who: &Spenders<'_>,
    now: SystemTime,
) -> String {
    let line = |name: &str, key: String, limits: &crate::config::PeriodLimits| {
        let (daily, monthly) = spending.used(&key, now);
        format!(
            "{name} — today: {} · this month: {}",
            amounts(daily, limits.daily, true),
            amounts(monthly, limits.monthly, true)
        )
    };
    let mut out = vec![
        "💸 Budget figures (UTC day and month)".to_string(),
        line("this room", room_key(who.room), &budgets.room),
    ];
    if who.users.is_empty() {
        out.push("no user has spent in this room this month".into());
    }
    for u in &who.users {
        out.push(line(u, user_key(who.connector, u), &budgets.user));
    }
    out.join("\n")
}

/// "1,234 / 50,000 tokens, $0.12" — each unit with a limit, and with `all` the others too.
fn amounts(used: Used, limit: Limit, all: bool) -> String {
    let mut parts = Vec::new();
    match limit.tokens {
        Some(max) => parts.push(format!(
            "{} / {} tokens",
            grouped(used.tokens),
            grouped(max)
        )),
        None if all => parts.push(format!("{} tokens", grouped(used.tokens))),
        None => {}
    }
    match limit.usd {
        Some(max) => parts.push(format!("${:.2} / ${max:.2}", used.usd)),
        None if all => parts.push(format!("${:.2}", used.usd)),
        None => {}
    }
    parts.join(", ")
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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
    fn figures_show_what_is_configured() {
        let s = Spending::of_entries(&[
            entry("bob", "local:r", DAY + 10, (1_000, 234), 0.125),
            entry("eve", "local:other", DAY + 20, (5, 5), 0.0),
        ]);
        let mut budgets = Budgets::default();
        let who = Spenders {
            connector: "local",
            users: vec!["bob"],
            room: "local:r",
        };
        assert_eq!(status_figures(&budgets, &s, &who, at(DAY + 60)), None);
        budgets.room.daily.tokens = Some(50_000);
        budgets.user.monthly.usd = Some(5.0);
        assert_eq!(
            status_figures(&budgets, &s, &who, at(DAY + 60)).unwrap(),
            "room 1,234 / 50,000 tokens today · you $0.12 / $5.00 this month"
        );
        assert_eq!(s.users_of("room:local:r", at(DAY + 60)), ["bob"]);
        assert!(s.users_of("room:local:r", at(1_798_761_600)).is_empty());
        let users = s.users_of("room:local:r", at(DAY + 60));
        let who = Spenders {
            connector: "local",
            users: users.iter().map(String::as_str).collect(),
            room: "local:r",
        };
        assert_eq!(
            report(&budgets, &s, &who, at(DAY + 60)),
            "💸 Budget figures (UTC day and month)\nthis room — today: 1,234 / 50,000 tokens, $0.12 · this month: 1,234 tokens, $0.12\nbob — today: 1,234 tokens, $0.12 · this month: 1,234 tokens, $0.12 / $5.00"
        );
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(override_end(at(DAY + 60)), DAY + 86_400);
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
