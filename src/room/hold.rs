//! Usage-limit holds: when an agent's account reaches its usage limit, no room starts a turn
//! on that agent until the limit resets. The limit is the account's, not the room's, so the
//! hold is kept here per agent name, shared by every room of the daemon, and persisted in the
//! state files so a restart keeps it.
//!
//! Owns: how long a hold lasts (the reported reset, clamped; a default when none is known),
//! the registry rooms consult before a turn, the wake-up every room gets when a hold is set or
//! cleared, the last usage-limit state an agent reported (for `!status`), and the texts the
//! room is shown about a hold.
//! Must not import: platform or agent wire formats.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::info;

use crate::state::{AgentHold, StateStore};

/// A reset further ahead than this is not believed: the room tries again then.
pub const MAX_HOLD_SECS: u64 = 7 * 24 * 3600;
/// How long to wait when the agent did not say when its usage limit resets.
pub const UNKNOWN_RESET_RETRY_SECS: u64 = 10 * 60;
/// How long to wait after a bare "too many requests": the API's request rate, which passes
/// within a minute (the CLI has already retried with backoff).
pub const REQUEST_RATE_RETRY_SECS: u64 = 60;
/// How long to wait when the reported reset is already past (a clock off, or a limit that
/// outlived its own reset): long enough not to ask the agent in a tight loop.
pub const PAST_RESET_RETRY_SECS: u64 = 60;

/// The end of a hold for a limit that resets at `resets_at` (epoch seconds), and whether that
/// end is the reported reset (otherwise it is only a time to try again). `usage`: the limit
/// is the account's usage limit, not the API's request rate.
pub fn hold_end(resets_at: Option<u64>, usage: bool, now: u64) -> (u64, bool) {
    match resets_at {
        Some(t) if t > now + MAX_HOLD_SECS => (now + MAX_HOLD_SECS, false),
        Some(t) if t > now => (t, true),
        Some(_) => (now + PAST_RESET_RETRY_SECS, false),
        None if usage => (now + UNKNOWN_RESET_RETRY_SECS, false),
        None => (now + REQUEST_RATE_RETRY_SECS, false),
    }
}

/// The last usage-limit state an agent reported (`allowed`, `allowed_warning`, `rejected`).
#[derive(Clone, Debug, PartialEq)]
pub struct LimitState {
    pub status: String,
    pub kind: Option<String>,
    pub resets_at: Option<u64>,
}

struct Registry {
    holds: BTreeMap<String, AgentHold>,
    /// Keyed by configured agent names only, so it stays as small as the config.
    seen: HashMap<String, LimitState>,
}

/// The daemon's holds, by agent name.
pub struct Holds {
    store: StateStore,
    registry: Mutex<Registry>,
    /// Bumped whenever a hold is set or cleared: every room looks again (no polling).
    changed: watch::Sender<()>,
}

impl Holds {
    /// The holds persisted in `store`'s state files.
    pub fn load(store: StateStore) -> Holds {
        let holds = store.agent_holds();
        Holds {
            store,
            registry: Mutex::new(Registry {
                holds,
                seen: HashMap::new(),
            }),
            changed: watch::Sender::new(()),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that wakes when any hold is set or cleared.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// `agent`'s hold, if it has not ended by `now`. An ended one is forgotten, so the state
    /// files do not keep it.
    pub fn active(&self, agent: &str, now: SystemTime) -> Option<AgentHold> {
        let mut registry = self.registry();
        let hold = registry.holds.get(agent)?;
        if now < at(hold.until) {
            return Some(hold.clone());
        }
        registry.holds.remove(agent);
        self.store.set_agent_holds(&registry.holds);
        None
    }

    /// Holds `agent` for a limit that resets at `resets_at`; a hold already set that ends
    /// later stays. Returns the hold now in force.
    pub fn hold(
        &self,
        agent: &str,
        resets_at: Option<u64>,
        kind: Option<String>,
        usage: bool,
        now: SystemTime,
    ) -> AgentHold {
        let (until, reset_known) = hold_end(resets_at, usage, epoch_secs(now));
        let hold = {
            let mut registry = self.registry();
            registry.holds.retain(|_, h| now < at(h.until));
            let hold = match registry.holds.get(agent) {
                Some(h) if h.until >= until => h.clone(),
                _ => AgentHold {
                    until,
                    kind,
                    reset_known,
                    request_rate: !usage,
                },
            };
            registry.holds.insert(agent.to_string(), hold.clone());
            self.store.set_agent_holds(&registry.holds);
            hold
        };
        info!(agent, until = %crate::timefmt::rfc3339_utc_secs(hold.until), request_rate = hold.request_rate, "agent held for its usage limit");
        self.changed.send_replace(());
        hold
    }

    /// Ends `agent`'s hold now (an admin's `resume`); whether there was one.
    pub fn clear(&self, agent: &str, now: SystemTime) -> bool {
        let had = {
            let mut registry = self.registry();
            let had = registry
                .holds
                .remove(agent)
                .is_some_and(|h| now < at(h.until));
            registry.holds.retain(|_, h| now < at(h.until));
            self.store.set_agent_holds(&registry.holds);
            had
        };
        if had {
            info!(agent, "usage-limit hold cleared");
            self.changed.send_replace(());
        }
        had
    }

    /// Notes the usage-limit state `agent` just reported.
    pub fn observe(&self, agent: &str, state: LimitState) {
        self.registry().seen.insert(agent.to_string(), state);
    }

    /// The usage-limit state `agent` reported last, if it ever did.
    pub fn last_seen(&self, agent: &str) -> Option<LimitState> {
        self.registry().seen.get(agent).cloned()
    }
}

/// The instant `secs` after the epoch.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The tokio instant of the end of `hold` (now, if it is past).
pub fn end_instant(hold: &AgentHold) -> tokio::time::Instant {
    let left = at(hold.until)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// "⏸️ The agent has reached its usage limit (five_hour); it resets at …" — why, and until
/// when.
fn reason(hold: &AgentHold) -> String {
    let time = crate::timefmt::rfc3339_utc_secs(hold.until);
    if hold.request_rate {
        return format!(
            "⏸️ The model API is refusing requests for now (too many requests); the agent will try again at {time}."
        );
    }
    let limit = match &hold.kind {
        Some(k) => format!("its usage limit ({k})"),
        None => "its usage limit".to_string(),
    };
    if hold.reset_known {
        format!("⏸️ The agent has reached {limit}; it resets at {time}.")
    } else {
        format!("⏸️ The agent has reached {limit} and did not say when it resets; it will try again at {time}.")
    }
}

/// What a room is told, once per hold, about its `waiting` messages.
pub fn notice(hold: &AgentHold, waiting: usize) -> String {
    let kept = match waiting {
        0 | 1 => "Your message is kept and will be answered then.".to_string(),
        2 => "Your message and 1 other waiting message are kept and will be answered then."
            .to_string(),
        n => format!(
            "Your message and {} other waiting messages are kept and will be answered then.",
            n - 1
        ),
    };
    format!("{} {kept}", reason(hold))
}

/// What an API caller is answered during a hold: it waits for its own answer, so it is not
/// kept waiting for hours.
pub fn refusal(hold: &AgentHold) -> String {
    format!("{} Please try again then.", reason(hold))
}

/// The `!status` and `list` wording of a hold.
pub fn status(hold: &AgentHold) -> String {
    let time = crate::timefmt::rfc3339_utc_secs(hold.until);
    if hold.request_rate {
        return format!("held: too many requests until {time}");
    }
    match &hold.kind {
        Some(k) => format!("held: usage limit ({k}) until {time}"),
        None => format!("held: usage limit until {time}"),
    }
}

/// The `!status` line of the last reported limit state.
pub fn limit_line(state: &LimitState) -> String {
    let kind = state
        .kind
        .as_deref()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default();
    let resets = state
        .resets_at
        .map(|t| format!(", resets at {}", crate::timefmt::rfc3339_utc_secs(t)))
        .unwrap_or_default();
    format!("usage limit: {}{kind}{resets}", state.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_673_600; // 2026-12-07T20:00:00Z

    #[test]
    fn hold_ends_are_clamped() {
        assert_eq!(hold_end(Some(NOW + 3600), true, NOW), (NOW + 3600, true));
        assert_eq!(
            hold_end(Some(NOW + 30 * 24 * 3600), true, NOW),
            (NOW + MAX_HOLD_SECS, false)
        );
        assert_eq!(
            hold_end(Some(NOW + MAX_HOLD_SECS), true, NOW),
            (NOW + MAX_HOLD_SECS, true)
        );
        assert_eq!(hold_end(Some(NOW), true, NOW), (NOW + 60, false));
        assert_eq!(hold_end(Some(NOW - 5), true, NOW), (NOW + 60, false));
        assert_eq!(hold_end(None, true, NOW), (NOW + 600, false));
        assert_eq!(hold_end(None, false, NOW), (NOW + 60, false));
    }

    #[test]
    fn the_room_is_told_why_and_until_when() {
        let hold = AgentHold {
            until: NOW + 3600,
            kind: Some("five_hour".into()),
            reset_known: true,
            request_rate: false,
        };
        assert_eq!(
            notice(&hold, 1),
            "⏸️ The agent has reached its usage limit (five_hour); it resets at 2026-12-07T21:00:00Z. Your message is kept and will be answered then."
        );
        assert_eq!(
            notice(&hold, 3),
            "⏸️ The agent has reached its usage limit (five_hour); it resets at 2026-12-07T21:00:00Z. Your message and 2 other waiting messages are kept and will be answered then."
        );
        let unknown = AgentHold {
            until: NOW + 600,
            kind: None,
            reset_known: false,
            request_rate: false,
        };
        let rate = AgentHold {
            until: NOW + 60,
            kind: None,
            reset_known: false,
            request_rate: true,
        };
        assert_eq!(
            notice(&rate, 1),
            "⏸️ The model API is refusing requests for now (too many requests); the agent will try again at 2026-12-07T20:01:00Z. Your message is kept and will be answered then."
        );
        assert_eq!(
            status(&rate),
            "held: too many requests until 2026-12-07T20:01:00Z"
        );
        assert_eq!(
            notice(&unknown, 2),
            "⏸️ The agent has reached its usage limit and did not say when it resets; it will try again at 2026-12-07T20:10:00Z. Your message and 1 other waiting message are kept and will be answered then."
        );
        assert_eq!(
            refusal(&unknown),
            "⏸️ The agent has reached its usage limit and did not say when it resets; it will try again at 2026-12-07T20:10:00Z. Please try again then."
        );
        assert_eq!(
            status(&hold),
            "held: usage limit (five_hour) until 2026-12-07T21:00:00Z"
        );
        let warning = LimitState {
            status: "allowed_warning".into(),
            kind: Some("seven_day".into()),
            resets_at: Some(NOW + 3600),
        };
        assert_eq!(
            limit_line(&warning),
            "usage limit: allowed_warning (seven_day), resets at 2026-12-07T21:00:00Z"
        );
    }

    fn store(dir: &std::path::Path) -> StateStore {
        StateStore::open(dir, &["local".into(), "rc".into()]).0
    }

    #[test]
    fn holds_are_per_agent_keep_the_later_end_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = at(NOW);
        let holds = Holds::load(store(dir.path()));
        let mut woken = holds.subscribe();
        let h = holds.hold(
            "claude",
            Some(NOW + 3600),
            Some("five_hour".into()),
            true,
            now,
        );
        assert_eq!((h.until, h.reset_known), (NOW + 3600, true));
        assert!(woken.has_changed().unwrap());
        woken.borrow_and_update();
        assert_eq!(holds.active("claude", now), Some(h.clone()));
        assert_eq!(holds.active("codex", now), None);
        // An earlier end (no reset known: ten minutes) does not shorten the hold.
        assert_eq!(holds.hold("claude", None, None, true, now), h);
        assert!(holds.active("claude", at(NOW + 3599)).is_some());

        holds.store.flush().unwrap();
        let again = Holds::load(self::store(dir.path()));
        assert_eq!(again.active("claude", now), Some(h));
        // Both connectors' files carry it; a clear removes it from both.
        assert!(again.clear("claude", now));
        assert!(!again.clear("claude", now));
        again.store.flush().unwrap();
        assert!(self::store(dir.path()).agent_holds().is_empty());
    }

    #[test]
    fn a_hold_ends_at_its_time_and_leaves_the_state_files() {
        let dir = tempfile::tempdir().unwrap();
        let holds = Holds::load(store(dir.path()));
        holds.hold("claude", Some(NOW + 3600), None, true, at(NOW));
        assert!(holds.active("claude", at(NOW + 3599)).is_some());
        assert_eq!(holds.active("claude", at(NOW + 3600)), None);
        holds.store.flush().unwrap();
        assert!(store(dir.path()).agent_holds().is_empty());
    }

    #[test]
    fn clearing_wakes_the_rooms_and_the_last_state_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = at(NOW);
        let holds = Holds::load(store(dir.path()));
        holds.hold("claude", None, None, true, now);
        let woken = holds.subscribe();
        assert!(!woken.has_changed().unwrap());
        assert!(holds.clear("claude", now));
        assert!(woken.has_changed().unwrap());
        assert_eq!(holds.last_seen("claude"), None);
        let state = LimitState {
            status: "allowed_warning".into(),
            kind: None,
            resets_at: None,
        };
        holds.observe("claude", state.clone());
        assert_eq!(holds.last_seen("claude"), Some(state));
    }
}
