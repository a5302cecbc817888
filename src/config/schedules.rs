//! `schedules:` — prompts the gateway posts into a watcher's room on a cron schedule, as a
//! user named in that connector's `allowed_users`.
//!
//! Owns: the section's raw form, its validation (the watcher exists and names one room, the
//! cron expression parses, the user holds a role on the watcher's connector — a schedule
//! can never act with more rights than the user it speaks for) and [`ScheduleConfig`].
//! Knows nothing about: when schedules fire (`crate::schedule`), rooms, agents.

use std::str::FromStr as _;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use super::{ConnectorConfig, Validator, WatcherConfig};
use crate::model::Sender;

/// The time zone a schedule's fields are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleZone {
    /// The box's local time (`TZ`, `/etc/localtime`).
    Local,
    Utc,
}

/// One validated schedule.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub name: String,
    /// The watcher whose room receives the prompt.
    pub watcher: String,
    /// The expression as written (for `list` and the prompt's note).
    pub cron_text: String,
    pub cron: croner::Cron,
    pub zone: ScheduleZone,
    /// Who the prompt is from: its role is that user's on the watcher's connector.
    pub sender: Sender,
    pub prompt: String,
}

/// A schedule as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    /// Names the schedule in `list`, logs and the prompt's note.
    name: String,
    /// A watcher's `name`; its `room` must be one room (not `*`).
    watcher: String,
    /// A cron expression: five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first; names (`mon-fri`), `L`, `#` and `@daily`-style aliases accepted.
    cron: String,
    /// `local` (default) or `utc`.
    #[serde(default)]
    timezone: Option<String>,
    /// The user the prompt is posted as: an entry of the connector's `allowed_users`
    /// (`alice` or `id:<user id>`); the turn runs with that user's role.
    #[serde(rename = "as")]
    sender: String,
    /// The prompt.
    prompt: String,
}

pub(super) fn validate(
    section: Value,
    watchers: &[WatcherConfig],
    connectors: &[ConnectorConfig],
    v: &mut Validator,
) -> Vec<ScheduleConfig> {
    let mut out: Vec<ScheduleConfig> = Vec::new();
    let Value::Sequence(items) = section else {
        v.error("schedules", "must be a list");
        return out;
    };
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("schedules[{i}]");
        let Some(raw) = v.parse::<RawSchedule>(&path, item) else {
            continue;
        };
        let mut ok = true;
        if out.iter().any(|s| s.name == raw.name) {
            v.error(
                format!("{path}.name"),
                format!("duplicate schedule name '{}'", raw.name),
            );
            ok = false;
        }
        let watcher = watchers.iter().find(|w| w.name == raw.watcher);
        match watcher {
            None => {
                v.error(
                    format!("{path}.watcher"),
                    format!("no watcher named '{}'", raw.watcher),
                );
                ok = false;
            }
            Some(w) if w.room.trim() == "*" => {
                v.error(
                    format!("{path}.watcher"),
                    format!(
                        "watcher '{}' watches every room (\"*\"): a schedule needs a watcher of one room",
                        w.name
                    ),
                );
                ok = false;
            }
            Some(_) => {}
        }
        let cron = match croner::Cron::from_str(&raw.cron) {
            Ok(c) => Some(c),
            Err(e) => {
                v.error(
                    format!("{path}.cron"),
                    format!("'{}' is not a cron expression: {e}", raw.cron),
                );
                None
            }
        };
        let zone = match raw.timezone.as_deref() {
            None | Some("local") => ScheduleZone::Local,
            Some("utc") | Some("UTC") => ScheduleZone::Utc,
            Some(other) => {
                v.error(
                    format!("{path}.timezone"),
                    format!("'{other}' is not valid: use 'local' or 'utc'"),
                );
                ok = false;
                ScheduleZone::Local
            }
        };
        let sender = sender_of(&raw.sender);
        if let Some(c) = watcher.and_then(|w| connectors.iter().find(|c| c.name == w.connector)) {
            let listed =
                c.users.owners.contains(&raw.sender) || c.users.guests.contains(&raw.sender);
            if !listed || c.users.role_of(&sender).is_none() {
                v.error(
                    format!("{path}.as"),
                    format!(
                        "'{}' is not an owner or guest of connector '{}' (list it in its allowed_users)",
                        raw.sender, c.name
                    ),
                );
                ok = false;
            }
        }
        if raw.prompt.trim().is_empty() {
            v.error(format!("{path}.prompt"), "must not be empty");
            ok = false;
        }
        if let (true, Some(cron)) = (ok, cron) {
            out.push(ScheduleConfig {
                name: raw.name,
                watcher: raw.watcher,
                cron_text: raw.cron,
                cron,
                zone,
                sender,
                prompt: raw.prompt,
            });
        }
    }
    out
}

/// The sender an `allowed_users` entry stands for (`id:<id>` binds the id, else the name).
fn sender_of(entry: &str) -> Sender {
    let id = entry.strip_prefix("id:").unwrap_or(entry);
    Sender {
        id: id.to_string(),
        username: entry.to_string(),
        display_name: entry.to_string(),
    }
}
