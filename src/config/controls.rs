//! The room-control sections: `commands:` (the prefix of the commands people type in a room),
//! `budgets:` (daily and monthly spending limits per user and per room) and `rate_limit:`
//! (messages per user and window, on every connector).

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use super::Validator;

/// `commands:` — how a room message is recognised as a command for the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandsConfig {
    /// The prefix every platform delivers (`!` by default: Rocket.Chat keeps `/…` for its own
    /// slash commands, so `/stop` never reaches a bot there).
    pub prefix: String,
    /// Also accept `/cmd` where the platform lets it through (web chat, OneBot).
    pub slash: bool,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            prefix: "!".into(),
            slash: true,
        }
    }
}

/// `commands:` — how room commands (`!stop`, `!status`, …) are recognised.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommands {
    /// What starts a command (default `!`; 1 to 8 characters without spaces).
    prefix: Option<String>,
    /// Also accept `/cmd` where the platform delivers it (default true).
    slash: Option<bool>,
}

pub(super) fn validate_commands(section: Value, v: &mut Validator) -> CommandsConfig {
    let default = CommandsConfig::default();
    let Some(raw) = v.parse::<RawCommands>("commands", section) else {
        return default;
    };
    let prefix = match raw.prefix {
        Some(p) if p.is_empty() || p.chars().any(char::is_whitespace) || p.len() > 8 => {
            v.error(
                "commands.prefix",
                "must be 1 to 8 characters without spaces (e.g. \"!\")",
            );
            default.prefix
        }
        Some(p) => p,
        None => default.prefix,
    };
    CommandsConfig {
        prefix,
        slash: raw.slash.unwrap_or(default.slash),
    }
}

/// One period's limit: tokens (input + output) and/or cost in USD. Either reached stops new
/// turns until the period ends.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    pub tokens: Option<u64>,
    pub usd: Option<f64>,
}

impl Limit {
    pub fn is_set(&self) -> bool {
        self.tokens.is_some() || self.usd.is_some()
    }
}

/// The daily (UTC day) and monthly (UTC calendar month) limits of one kind of spender.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PeriodLimits {
    pub daily: Limit,
    pub monthly: Limit,
}

impl PeriodLimits {
    pub fn is_set(&self) -> bool {
        self.daily.is_set() || self.monthly.is_set()
    }
}

/// `budgets:` — every user and every room gets these limits, checked from the usage ledger
/// before a turn starts. Owners' turns are never stopped; an owner's `!budget override` lets
/// a room's guests past them until the end of the UTC day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budgets {
    pub user: PeriodLimits,
    pub room: PeriodLimits,
}

impl Budgets {
    pub fn is_set(&self) -> bool {
        self.user.is_set() || self.room.is_set()
    }
}

/// `budgets:` — spending limits checked before a turn starts; owners' turns always run.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudgets {
    /// Limits for every user, each on their own.
    user: Option<RawPeriods>,
    /// Limits for every room, each on its own.
    room: Option<RawPeriods>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPeriods {
    /// Per UTC day.
    daily: Option<RawLimit>,
    /// Per UTC calendar month.
    monthly: Option<RawLimit>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    /// Input + output tokens.
    tokens: Option<u64>,
    /// Cost in US dollars, as the agent reports it.
    usd: Option<f64>,
}

pub(super) fn validate_budgets(section: Value, v: &mut Validator) -> Budgets {
    let Some(raw) = v.parse::<RawBudgets>("budgets", section) else {
        return Budgets::default();
    };
    let periods = |name: &str, raw: Option<RawPeriods>, v: &mut Validator| {
        let Some(raw) = raw else {
            return PeriodLimits::default();
        };
        let mut limit = |period: &str, raw: Option<RawLimit>| {
            let Some(raw) = raw else {
                return Limit::default();
            };
            let path = format!("budgets.{name}.{period}");
            if raw.tokens.is_none() && raw.usd.is_none() {
                v.error(path.clone(), "give `tokens`, `usd` or both");
            }
            if raw.usd.is_some_and(|u| !u.is_finite() || u < 0.0) {
                v.error(format!("{path}.usd"), "must be a positive amount");
            }
            Limit {
                tokens: raw.tokens,
                usd: raw.usd,
            }
        };
        PeriodLimits {
            daily: limit("daily", raw.daily),
            monthly: limit("monthly", raw.monthly),
        }
    };
    Budgets {
        user: periods("user", raw.user, v),
        room: periods("room", raw.room, v),
    }
}

/// How many messages one user may send per window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages one user may send per window; the next one gets a notice instead of a turn.
    pub messages: usize,
    pub window: Duration,
}

/// `rate_limit:` — messages per sender and window on every connector.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// Messages one sender may send per window (0: no limit).
    messages: usize,
    /// The window, in seconds.
    window_secs: u64,
}

/// `rate_limit: {messages, window_secs}`; `messages: 0` (or no section) is no limit.
pub(super) fn validate_rate_limit(section: Value, v: &mut Validator) -> Option<RateLimit> {
    let raw = v.parse::<RawRateLimit>("rate_limit", section)?;
    if raw.messages == 0 {
        return None;
    }
    if raw.window_secs == 0 {
        v.error(
            "rate_limit.window_secs",
            "must be at least 1 (set messages: 0 to disable the limit)",
        );
        return None;
    }
    Some(RateLimit {
        messages: raw.messages,
        window: Duration::from_secs(raw.window_secs),
    })
}
