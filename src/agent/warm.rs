//! The budget for warm agent processes: processes kept alive for their room between turns,
//! so a turn skips the CLI's start-up (seconds for Claude Code) and costs a line on stdin.
//!
//! Owns: [`Budget`] (how many warm processes one agent may keep, and how long an idle one
//! lives), its defaults (from the memory the machine has), the config keys that set it, and
//! [`ProcessInfo`], what `list` shows of a room's process.
//! Knows nothing about: any agent's wire format; the pool of one agent lives with it
//! (`claude/warm.rs`).
//!
//! An idle warm Claude Code process holds about 170–270 MB and burns ~15 ms CPU/s, hence a
//! budget: the least recently used idle process is retired when a room needs one and the
//! budget is full, and every idle process is retired after [`Budget::idle_timeout`]. Neither
//! loses anything: the room's next turn starts a process with `--resume` of its session.

use std::time::Duration;

use serde::Deserialize;

/// Memory set aside per warm process when the default budget is computed.
const MEMORY_PER_PROCESS: u64 = 300 * 1024 * 1024;
/// Bounds of the default budget: at least one, at most a few dozen.
const DEFAULT_MAX_BOUNDS: (usize, usize) = (1, 32);
/// Default `warm_idle_timeout` in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 900;

/// How many warm processes an agent keeps, and for how long an idle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max: usize,
    pub idle_timeout: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max: default_max(available_memory()),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// The agent keys that choose warm processes (`warm`, `max_warm_agents`,
/// `warm_idle_timeout` in seconds); all optional.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WarmSection {
    /// Keep one process per room between turns (default true); false: one per turn.
    pub warm: Option<bool>,
    /// How many rooms may keep a warm process at once (default: from available memory).
    #[schemars(range(min = 1))]
    pub max_warm_agents: Option<usize>,
    /// Seconds an idle warm process is kept (default 900).
    #[schemars(range(min = 1))]
    pub warm_idle_timeout: Option<u64>,
}

/// The names of [`WarmSection`]'s keys, for an agent type's `keys`.
pub const KEYS: &[&str] = &["warm", "max_warm_agents", "warm_idle_timeout"];

impl WarmSection {
    /// The budget these keys choose; `None` when `warm: false` (one process per turn).
    /// `Err` names the key that is out of range.
    pub fn budget(&self) -> Result<Option<Budget>, (&'static str, &'static str)> {
        if self.max_warm_agents == Some(0) {
            return Err((
                "max_warm_agents",
                "must be at least 1 (set `warm: false` for one process per turn)",
            ));
        }
        if self.warm_idle_timeout == Some(0) {
            return Err(("warm_idle_timeout", "must be at least 1 second"));
        }
        if self.warm == Some(false) {
            return Ok(None);
        }
        let default = Budget::default();
        Ok(Some(Budget {
            max: self.max_warm_agents.unwrap_or(default.max),
            idle_timeout: self
                .warm_idle_timeout
                .map_or(default.idle_timeout, Duration::from_secs),
        }))
    }
}

/// What `list` shows of a room's agent process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Resident memory of the process and its descendants.
    pub rss_bytes: Option<u64>,
}

/// The default `max_warm_agents` for `available` bytes of memory (`None`: unknown).
fn default_max(available: Option<u64>) -> usize {
    let (lo, hi) = DEFAULT_MAX_BOUNDS;
    match available {
        // Half the memory, at most: the agents' tools and the system need the rest.
        Some(bytes) => usize::try_from(bytes / 2 / MEMORY_PER_PROCESS)
            .unwrap_or(hi)
            .clamp(lo, hi),
        None => 8,
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_follows_memory() {
        const GIB: u64 = 1024 * 1024 * 1024;
        assert_eq!(default_max(Some(GIB / 4)), 1);
        assert_eq!(default_max(Some(6 * GIB)), 10);
        assert_eq!(default_max(Some(512 * GIB)), 32);
        assert_eq!(default_max(None), 8);
    }

    #[test]
    fn keys_choose_the_budget_or_one_process_per_turn() {
        let s = WarmSection {
            warm: None,
            max_warm_agents: Some(3),
            warm_idle_timeout: Some(60),
        };
        assert_eq!(
            s.budget(),
            Ok(Some(Budget {
                max: 3,
                idle_timeout: Duration::from_secs(60)
            }))
        );
        let off = WarmSection {
            warm: Some(false),
            ..WarmSection::default()
        };
        assert_eq!(off.budget(), Ok(None));
        let zero = WarmSection {
            max_warm_agents: Some(0),
            ..WarmSection::default()
        };
        assert!(zero.budget().is_err());
    }
}
