//! When `schedules:` fire. The dispatcher owns one [`Schedules`]: it sleeps until the
//! earliest next run (no polling), takes what is due, posts each prompt into its watcher's
//! room as the schedule's user (`dispatch.rs`), and records the outcome for `list`.
//!
//! Owns: next-run times (cron in local time or UTC, `croner`), catching up after a late
//! wake-up (a missed run fires once, never once per missed slot), and what `list` shows.
//! Runs missed while the daemon was down are not made up: the first run is the next one
//! after start, as with cron.
//! Knows nothing about: rooms, platforms, agents.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local, TimeZone, Utc};
use serde::Serialize;

use crate::config::{ScheduleConfig, ScheduleZone};

/// The longest single sleep. Tokio's clock is monotonic and stands still while the box is
/// suspended, and the wall clock may be stepped (NTP): waking at least this often re-reads
/// the wall clock, so a run is at most this late after either.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// A schedule as `list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    /// RFC 3339, UTC; `None` when the expression never matches again.
    pub next: Option<String>,
    /// The last run: when, and what became of the prompt (`posted`, `skipped: …`).
    pub last: Option<String>,
}

struct Entry {
    config: ScheduleConfig,
    next: Option<SystemTime>,
    last: Option<(SystemTime, String)>,
}

/// Every schedule of the daemon with its next run.
pub struct Schedules {
    entries: Vec<Entry>,
}

impl Schedules {
    pub fn new(configs: &[ScheduleConfig], now: SystemTime) -> Schedules {
        Schedules {
            entries: configs
                .iter()
                .map(|c| Entry {
                    next: next_after(c, now),
                    config: c.clone(),
                    last: None,
                })
                .collect(),
        }
    }

    /// How long to sleep before something may be due; `None` when nothing ever is.
    pub fn wake_in(&self, now: SystemTime) -> Option<Duration> {
        let earliest = self.entries.iter().filter_map(|e| e.next).min()?;
        Some(
            earliest
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP),
        )
    }

    /// The schedules due at `now`, each once however many runs it missed; their next runs
    /// move past `now`.
    pub fn take_due(&mut self, now: SystemTime) -> Vec<ScheduleConfig> {
        let mut due = Vec::new();
        for e in &mut self.entries {
            if e.next.is_some_and(|t| t <= now) {
                due.push(e.config.clone());
                e.next = next_after(&e.config, now);
            }
        }
        due
    }

    /// Records what became of a run (for `list`).
    pub fn record(&mut self, name: &str, at: SystemTime, outcome: String) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.config.name == name) {
            e.last = Some((at, outcome));
        }
    }

    /// The schedules of one watcher.
    pub fn rows_of(&self, watcher: &str) -> Vec<ScheduleRow> {
        self.entries
            .iter()
            .filter(|e| e.config.watcher == watcher)
            .map(|e| ScheduleRow {
                name: e.config.name.clone(),
                cron: e.config.cron_text.clone(),
                next: e.next.map(crate::timefmt::rfc3339),
                last: e
                    .last
                    .as_ref()
                    .map(|(t, outcome)| format!("{} {outcome}", crate::timefmt::rfc3339(*t))),
            })
            .collect()
    }
}

/// The first run strictly after `after`.
fn next_after(config: &ScheduleConfig, after: SystemTime) -> Option<SystemTime> {
    // Whole seconds: cron times are, and `croner` keeps the fraction it is given.
    let secs = after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let utc = DateTime::<Utc>::from_timestamp(secs as i64, 0)?;
    let next = match config.zone {
        ScheduleZone::Utc => occurrence(config, &utc)?,
        ScheduleZone::Local => occurrence(config, &utc.with_timezone(&Local))?,
    };
    Some(next.into())
}

fn occurrence<Tz: TimeZone>(
    config: &ScheduleConfig,
    after: &DateTime<Tz>,
) -> Option<DateTime<Utc>> {
    match config.cron.find_next_occurrence(after, false) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            tracing::warn!(schedule = %config.name, error = %e, "the schedule has no next run");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Sender;
    use std::str::FromStr as _;

    fn schedule(name: &str, cron: &str) -> ScheduleConfig {
        ScheduleConfig {
            name: name.into(),
            watcher: "w".into(),
            cron_text: cron.into(),
            cron: croner::Cron::from_str(cron).unwrap(),
            zone: ScheduleZone::Utc,
            sender: Sender {
                id: "alice".into(),
                username: "alice".into(),
                display_name: "alice".into(),
            },
            prompt: "p".into(),
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    #[test]
    fn weekdays_follow_posix_and_the_next_run_is_strictly_later() {
        // 2026-12-05 is a Saturday: "1-5" (Monday to Friday) next matches Monday the 7th.
        let s = schedule("standup", "0 9 * * 1-5");
        let next = next_after(&s, at("2026-12-05T10:00:00Z")).unwrap();
        assert_eq!(crate::timefmt::rfc3339(next), "2026-12-07T09:00:00Z");
        let after = next_after(&s, next).unwrap();
        assert_eq!(crate::timefmt::rfc3339(after), "2026-12-08T09:00:00Z");
    }

    #[test]
    fn a_late_wake_up_fires_each_schedule_once_and_sleeps_are_bounded() {
        let start = at("2026-12-07T08:59:00Z");
        let mut all = Schedules::new(
            &[
                schedule("minutely", "* * * * *"),
                schedule("daily", "@daily"),
            ],
            start,
        );
        assert_eq!(all.wake_in(start), Some(Duration::from_secs(60)));
        // Woken ten minutes late: the minutely schedule fires once, not ten times.
        let late = at("2026-12-07T09:10:30Z");
        let due: Vec<String> = all.take_due(late).into_iter().map(|s| s.name).collect();
        assert_eq!(due, ["minutely"]);
        assert!(all.take_due(late).is_empty());
        assert_eq!(all.wake_in(late), Some(Duration::from_secs(30)));
        let mut daily = Schedules::new(&[schedule("daily", "@daily")], start);
        assert_eq!(daily.wake_in(start), Some(MAX_SLEEP));
        assert!(daily.take_due(start).is_empty());
        daily.record("daily", start, "posted".into());
        let rows = daily.rows_of("w");
        assert_eq!(rows[0].next.as_deref(), Some("2026-12-08T00:00:00Z"));
        assert_eq!(rows[0].last.as_deref(), Some("2026-12-07T08:59:00Z posted"));
    }

    #[test]
    fn six_fields_take_seconds_first() {
        let s = schedule("fast", "*/5 * * * * *");
        let next = next_after(&s, at("2026-12-07T09:00:01Z")).unwrap();
        assert_eq!(crate::timefmt::rfc3339(next), "2026-12-07T09:00:05Z");
    }
}
