//! The usage ledger: one JSON line per turn that reported usage (`<runtime dir>/usage.jsonl`,
//! append-only, 0600): when, which room and user, which agent and session, tokens in, out and
//! cached, cost, duration. It survives restarts as a file does; `agent-chat-gateway usage`
//! reads it back and sums it by room, user, agent or day.
//! Knows nothing about: platforms, agents' wire formats (it gets a `model::Usage`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::Usage;

/// The ledger file's name in the runtime dir.
pub const FILE: &str = "usage.jsonl";

/// One turn's line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub ts: String,
    /// Seconds since the epoch (for `--since` without parsing dates).
    pub epoch: u64,
    pub connector: String,
    /// The platform room's key (`<connector>:<room>`): a thread's turns count for its room.
    pub room: String,
    /// Who asked (the sender of the turn's last message).
    pub user: String,
    pub agent: String,
    pub session: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: Option<f64>,
    pub duration_ms: u64,
}

impl Entry {
    pub fn new(usage: &Usage, at: SystemTime) -> Entry {
        Entry {
            ts: crate::timefmt::rfc3339(at),
            epoch: at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            cost_usd: usage.cost_usd,
            ..Entry::default()
        }
    }
}

/// The open ledger. Writes are one short `write` each under a lock, like the audit log's.
pub struct Ledger {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    /// This month's running totals for the budgets, read from the file once, here.
    spending: Mutex<crate::budget::Spending>,
}

impl Ledger {
    /// Opens `<dir>/usage.jsonl` for appending; on failure entries are logged, not lost
    /// silently.
    pub fn open(dir: &Path) -> Ledger {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path);
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the usage ledger");
                None
            }
        };
        let since = crate::budget::month_start(SystemTime::now());
        let spending = match read(dir, since) {
            Ok((entries, _)) => crate::budget::Spending::of_entries(&entries),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the usage ledger; budgets count from zero");
                crate::budget::Spending::default()
            }
        };
        Ledger {
            path,
            file: Mutex::new(file),
            spending: Mutex::new(spending),
        }
    }

    /// Runs `f` on this month's running totals (see [`crate::budget`]).
    pub fn spending<T>(&self, f: impl FnOnce(&crate::budget::Spending) -> T) -> T {
        f(&self.spending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn record(&self, entry: &Entry) {
        self.spending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(entry);
        let mut line = match serde_json::to_string(entry) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a usage entry");
                return;
            }
        };
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = match file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()).map_err(|e| e.to_string()),
            None => Err("the ledger is not open".to_string()),
        };
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, entry = %line.trim_end(), "usage not recorded");
        }
    }
}

/// Every entry of the ledger in `dir` since `since` (epoch seconds); a line that does not
/// parse is skipped and counted.
pub fn read(dir: &Path, since: u64) -> std::io::Result<(Vec<Entry>, usize)> {
    let file = match std::fs::File::open(dir.join(FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    let mut bad = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        match serde_json::from_str::<Entry>(&line) {
            Ok(e) if e.epoch >= since => entries.push(e),
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    Ok((entries, bad))
}

/// How `usage` groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Room,
    User,
    Agent,
    Day,
}

/// The sums of one group.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub turns: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Summed over the turns that reported a cost.
    pub cost_usd: f64,
}

pub fn totals(entries: &[Entry], by: By) -> BTreeMap<String, Totals> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for e in entries {
        let key = match by {
            By::Room => e.room.clone(),
            By::User => format!("{}/{}", e.connector, e.user),
            By::Agent => e.agent.clone(),
            By::Day => e.ts.get(..10).unwrap_or(&e.ts).to_string(),
        };
        let t = groups.entry(key).or_default();
        t.turns += 1;
        t.input_tokens += e.input_tokens;
        t.output_tokens += e.output_tokens;
        t.cache_read_tokens += e.cache_read_tokens;
        t.cache_write_tokens += e.cache_write_tokens;
        t.cost_usd += e.cost_usd.unwrap_or(0.0);
    }
    groups
}

/// `--since`: `7d`, `12h`, `30m`, or a date `2026-12-01` (UTC midnight); epoch seconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<u64, String> {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let unit = |s: &str, per: u64| -> Result<u64, String> {
        let n: u64 = s
            .parse()
            .map_err(|_| format!("'{text}' is not a duration"))?;
        Ok(now_secs.saturating_sub(n * per))
    };
    if let Some(n) = text.strip_suffix('d') {
        return unit(n, 86_400);
    }
    if let Some(n) = text.strip_suffix('h') {
        return unit(n, 3_600);
    }
    if let Some(n) = text.strip_suffix('m') {
        return unit(n, 60);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format).map_err(|_| {
        format!("'{text}' is neither a duration (7d, 12h, 30m) nor a date (2026-12-01)")
    })?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    Ok(u64::try_from(midnight).unwrap_or(0))
}

/// The table `usage` prints.
pub fn render(groups: &BTreeMap<String, Totals>, by: By) -> String {
    let head = match by {
        By::Room => "room",
        By::User => "user",
        By::Agent => "agent",
        By::Day => "day",
    };
    let width = groups
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(head.len());
    let mut out = format!(
        "{head:<width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}\n",
        "turns", "input", "output", "cache read", "cost USD"
    );
    let mut all = Totals::default();
    for (key, t) in groups {
        out.push_str(&format!(
            "{key:<width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10.4}\n",
            t.turns, t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cost_usd
        ));
        all.turns += t.turns;
        all.input_tokens += t.input_tokens;
        all.output_tokens += t.output_tokens;
        all.cache_read_tokens += t.cache_read_tokens;
        all.cost_usd += t.cost_usd;
    }
    out.push_str(&format!(
        "{:<width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10.4}\n",
        "total",
        all.turns,
        all.input_tokens,
        all.output_tokens,
        all.cache_read_tokens,
        all.cost_usd
    ));
    out
}

/// How long ago `since` is, for the report's header.
pub fn describe_since(since: u64, now: SystemTime) -> String {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if since == 0 {
        return "all time".into();
    }
    crate::timefmt::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(since.min(now_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cost: f64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cost_usd: Some(cost),
            ..Usage::default()
        }
    }

    #[test]
    fn entries_are_appended_read_back_and_summed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path());
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_601_600); // 2026-12-07
        for (room, user, u, at) in [
            ("local:r1", "alice", usage(100, 20, 0.5), day),
            (
                "local:r1",
                "bob",
                usage(10, 2, 0.25),
                day + Duration::from_secs(60),
            ),
            (
                "local:r2",
                "alice",
                usage(1, 1, 0.0),
                day - Duration::from_secs(86_400),
            ),
        ] {
            let mut e = Entry::new(&u, at);
            e.connector = "local".into();
            e.room = room.into();
            e.user = user.into();
            e.agent = "assistant".into();
            ledger.record(&e);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        let (all, bad) = read(dir.path(), 0).unwrap();
        assert_eq!((all.len(), bad), (3, 1));
        let by_room = totals(&all, By::Room);
        assert_eq!(by_room["local:r1"].turns, 2);
        assert_eq!(by_room["local:r1"].input_tokens, 110);
        assert_eq!(by_room["local:r1"].cost_usd, 0.75);
        assert_eq!(totals(&all, By::User)["local/alice"].turns, 2);
        assert_eq!(totals(&all, By::Day).len(), 2);
        let (recent, _) = read(dir.path(), parse_since("2026-12-07", day).unwrap()).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(parse_since("1d", day).unwrap(), 1_796_601_600 - 86_400);
        assert!(parse_since("soon", day).is_err());
        let table = render(&by_room, By::Room);
        assert!(
            table.lines().last().unwrap().starts_with("total"),
            "{table}"
        );
    }
}
