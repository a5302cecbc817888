//! On-disk state: one `state.<connector>.json` per connector holding, per room, the agent
//! session id, the last processed message and the messages still waiting for a turn; per
//! watcher the paused flag; the agents held for a usage limit (the same map in every file);
//! and a small key/value area the connector owns (replay watermarks).
//!
//! Owns: the file format (versioned), atomic writes (temp file, fsync, rename, fsync dir),
//! moving a corrupt file aside, and coalescing many updates into one write.
//! Must not import: anything but `model`. Room workers are the only writers of their room's
//! entry; they go through [`StateStore::update_room`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{self, Attachment, InboundMessage, RoomKey, RoomKind, RoomRef, Sender};

const FORMAT_VERSION: u32 = 1;

/// Many updates within this window become one write.
const COALESCE: Duration = Duration::from_millis(25);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StateFile {
    pub version: u32,
    pub watchers: BTreeMap<String, WatcherState>,
    pub rooms: BTreeMap<String, RoomState>,
    /// Owned by the connector (see [`ConnectorStore`]).
    pub connector: BTreeMap<String, serde_json::Value>,
    /// Agents on hold for a usage limit, by agent name (`room::hold`). A hold is the
    /// daemon's, not one connector's: every file carries the same map.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_holds: BTreeMap<String, AgentHold>,
}

/// An agent's usage limit: no turn starts on it before `until`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentHold {
    /// Seconds since the epoch.
    pub until: u64,
    /// The limit's name as the agent gave it (`five_hour`, `seven_day`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `until` is the reset time the agent reported; otherwise a time to try again.
    pub reset_known: bool,
    /// The API's request rate ("too many requests"), not the account's usage limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_rate: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WatcherState {
    pub paused: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RoomState {
    pub watcher: String,
    pub room_name: String,
    pub session_id: Option<String>,
    pub last_processed: Option<String>,
    /// Accepted messages whose turn has not finished; re-queued after a restart.
    pub pending: Vec<PendingMessage>,
    /// The model an owner chose for this room (`!model`); none: the agent's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The agent an owner switched this room to (`!agent`); none: the watcher's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What the current session has used (`!status`).
    #[serde(skip_serializing_if = "SessionUsage::is_empty")]
    pub session_usage: SessionUsage,
    /// Earlier sessions of this room, newest last, at most [`MAX_PAST_SESSIONS`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub past_sessions: Vec<PastSession>,
    /// In a thread with a session of its own: how far the session has seen the thread's
    /// messages, so a turn shows only the newer ones as context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_seen: Option<ThreadSeen>,
    /// An owner's `!budget override`: until then (epoch seconds, the end of that UTC day)
    /// guests' turns are not held to the budgets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_override_until: Option<u64>,
    /// When a turn last ended or a session was last left here (ms since the epoch, this
    /// box's clock): how long a thread has been idle, for forgetting it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_ms: Option<u64>,
}

/// How far a session has seen its thread: every message before `ms` (since the epoch), and
/// of those at exactly `ms` the ones in `ids` (QQ's times are whole seconds: several
/// messages share one).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ThreadSeen {
    pub ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

impl ThreadSeen {
    /// Up to the newest of `messages` (id, time): what a turn that showed them has seen.
    pub fn of<'a>(messages: impl Iterator<Item = (&'a str, std::time::SystemTime)>) -> Self {
        let all: Vec<(&str, u64)> = messages.map(|(id, t)| (id, model::epoch_ms(t))).collect();
        let ms = all.iter().map(|(_, ms)| *ms).max().unwrap_or(0);
        let ids = all
            .iter()
            .filter(|(_, m)| *m == ms)
            .map(|(id, _)| id.to_string())
            .collect();
        ThreadSeen { ms, ids }
    }

    /// The further of two positions (a turn that read the thread before another turn's
    /// position was stored must not move it back).
    pub fn max(self, other: ThreadSeen) -> ThreadSeen {
        match self.ms.cmp(&other.ms) {
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Equal => {
                let mut ids = self.ids;
                for id in other.ids {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ThreadSeen { ms: self.ms, ids }
            }
        }
    }

    pub fn covers(&self, id: &str, t: std::time::SystemTime) -> bool {
        let ms = model::epoch_ms(t);
        ms < self.ms || (ms == self.ms && self.ids.iter().any(|i| i == id))
    }
}

/// How many earlier sessions a room remembers for `!sessions` / `!resume`.
pub const MAX_PAST_SESSIONS: usize = 20;

/// The running usage of one session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SessionUsage {
    pub turns: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// Tokens the last turn's prompt held (input and cache), and the model's window.
    pub context_tokens: u64,
    pub context_window: Option<u64>,
}

impl SessionUsage {
    pub fn is_empty(&self) -> bool {
        *self == SessionUsage::default()
    }

    pub fn add(&mut self, u: &model::Usage) {
        self.turns += 1;
        self.input_tokens += u.input_tokens;
        self.output_tokens += u.output_tokens;
        self.cost_usd += u.cost_usd.unwrap_or(0.0);
        self.context_tokens = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        self.context_window = u.context_window.or(self.context_window);
    }
}

/// A session the room left (`!new`, `!agent`, `!resume`, an admin `reset`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PastSession {
    pub id: String,
    pub agent: String,
    pub turns: u64,
    /// When the room left it, RFC 3339.
    pub left: String,
}

impl RoomState {
    /// Moves the current session (if any) to the past ones and starts counting afresh;
    /// `agent` is the agent it belonged to.
    pub fn retire_session(&mut self, agent: &str, now: std::time::SystemTime) {
        let usage = std::mem::take(&mut self.session_usage);
        // A fresh session has seen nothing of its thread.
        self.thread_seen = None;
        self.active_ms = Some(model::epoch_ms(now));
        let Some(id) = self.session_id.take() else {
            return;
        };
        self.past_sessions.retain(|p| p.id != id);
        self.past_sessions.push(PastSession {
            id,
            agent: agent.to_string(),
            turns: usage.turns,
            left: crate::timefmt::rfc3339(now),
        });
        let excess = self.past_sessions.len().saturating_sub(MAX_PAST_SESSIONS);
        self.past_sessions.drain(..excess);
    }
}

/// An accepted message as stored on disk.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingMessage {
    pub id: String,
    pub room_id: String,
    pub room_name: String,
    pub direct: bool,
    pub thread: Option<String>,
    pub sender_id: String,
    pub sender_username: String,
    pub sender_name: String,
    pub text: String,
    #[serde(default)]
    pub attachments: Vec<(String, PathBuf)>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub ts_ms: u64,
    /// The request of an API caller (`InboundMessage::conversation`): its caller's
    /// connection did not survive the restart, so it is not run again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_request: bool,
}

impl PendingMessage {
    pub fn from_message(m: &InboundMessage) -> Self {
        PendingMessage {
            id: m.id.clone(),
            room_id: m.room.id.clone(),
            room_name: m.room.name.clone(),
            direct: m.room.kind == RoomKind::Direct,
            thread: m.thread.clone(),
            sender_id: m.sender.id.clone(),
            sender_username: m.sender.username.clone(),
            sender_name: m.sender.display_name.clone(),
            text: m.text.clone(),
            attachments: m
                .attachments
                .iter()
                .map(|a| (a.name.clone(), a.path.clone()))
                .collect(),
            notes: m.notes.clone(),
            ts_ms: model::epoch_ms(m.ts),
            api_request: m.conversation.is_some(),
        }
    }

    pub fn to_message(&self, connector: &Arc<str>) -> InboundMessage {
        InboundMessage {
            connector: connector.clone(),
            room: RoomRef {
                id: self.room_id.clone(),
                name: self.room_name.clone(),
                kind: if self.direct {
                    RoomKind::Direct
                } else {
                    RoomKind::Group
                },
            },
            id: self.id.clone(),
            thread: self.thread.clone(),
            sender: Sender {
                id: self.sender_id.clone(),
                username: self.sender_username.clone(),
                display_name: self.sender_name.clone(),
            },
            text: self.text.clone(),
            addressed: true,
            attachments: self
                .attachments
                .iter()
                .map(|(name, path)| Attachment {
                    name: name.clone(),
                    path: path.clone(),
                })
                .collect(),
            notes: self.notes.clone(),
            ts: model::from_epoch_ms(self.ts_ms),
            // Not restored: an API caller's request is not re-run after a restart (see
            // `api_request`), so nothing routes it by its conversation.
            conversation: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Inner {
    dir: PathBuf,
    /// Per-turn usage, kept beside the state files (`ledger.rs`).
    ledger: crate::ledger::Ledger,
    files: Mutex<HashMap<Arc<str>, StateFile>>,
    dirty: Mutex<HashSet<Arc<str>>>,
    wake: Notify,
}

/// Shared handle to all state files of the daemon.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

impl StateStore {
    /// Loads the state of each connector. A file that cannot be parsed is moved aside (and
    /// reported in the returned warnings); that connector starts fresh.
    pub fn open(dir: &Path, connectors: &[Arc<str>]) -> (StateStore, Vec<String>) {
        let mut files = HashMap::new();
        let mut warnings = Vec::new();
        for name in connectors {
            let path = state_path(dir, name);
            let file = match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        let aside = path.with_extension(format!(
                            "json.corrupt-{}",
                            model::epoch_ms(std::time::SystemTime::now())
                        ));
                        let moved = std::fs::rename(&path, &aside);
                        warnings.push(format!(
                            "state file {} is corrupt ({e}); {} and starting fresh",
                            path.display(),
                            match moved {
                                Ok(()) => format!("moved it to {}", aside.display()),
                                Err(err) => format!("could not move it aside ({err})"),
                            }
                        ));
                        StateFile::default()
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
                Err(e) => {
                    warnings.push(format!(
                        "cannot read {}: {e}; starting fresh",
                        path.display()
                    ));
                    StateFile::default()
                }
            };
            files.insert(name.clone(), file);
        }
        let store = StateStore {
            inner: Arc::new(Inner {
                ledger: crate::ledger::Ledger::open(dir),
                dir: dir.to_path_buf(),
                files: Mutex::new(files),
                dirty: Mutex::new(HashSet::new()),
                wake: Notify::new(),
            }),
        };
        (store, warnings)
    }

    /// The usage ledger of this runtime dir.
    pub fn ledger(&self) -> &crate::ledger::Ledger {
        &self.inner.ledger
    }

    fn files(&self) -> MutexGuard<'_, HashMap<Arc<str>, StateFile>> {
        self.inner.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_dirty(&self, connector: &Arc<str>) {
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connector.clone());
        self.inner.wake.notify_one();
    }

    pub fn room(&self, key: &RoomKey) -> Option<RoomState> {
        self.files()
            .get(&key.connector)
            .and_then(|f| f.rooms.get(&*key.id()))
            .cloned()
    }

    /// Every room with state of one connector.
    pub fn rooms(&self, connector: &Arc<str>) -> Vec<(String, RoomState)> {
        self.files()
            .get(connector)
            .map(|f| {
                f.rooms
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a room (a stateless API request's, once answered).
    pub fn remove_room(&self, key: &RoomKey) {
        let removed = self
            .files()
            .get_mut(&key.connector)
            .is_some_and(|f| f.rooms.remove(&*key.id()).is_some());
        if removed {
            self.mark_dirty(&key.connector);
        }
    }

    pub fn update_room(&self, key: &RoomKey, update: impl FnOnce(&mut RoomState)) {
        {
            let mut files = self.files();
            let file = files.entry(key.connector.clone()).or_default();
            update(file.rooms.entry(key.id().into_owned()).or_default());
        }
        self.mark_dirty(&key.connector);
    }

    pub fn watcher_paused(&self, connector: &Arc<str>, watcher: &str) -> bool {
        self.files()
            .get(connector)
            .and_then(|f| f.watchers.get(watcher))
            .is_some_and(|w| w.paused)
    }

    pub fn set_watcher_paused(&self, connector: &Arc<str>, watcher: &str, paused: bool) {
        {
            let mut files = self.files();
            let file = files.entry(connector.clone()).or_default();
            file.watchers.entry(watcher.to_string()).or_default().paused = paused;
        }
        self.mark_dirty(connector);
    }

    /// Every agent hold of the state files (the later one when two files disagree).
    pub fn agent_holds(&self) -> BTreeMap<String, AgentHold> {
        let mut holds: BTreeMap<String, AgentHold> = BTreeMap::new();
        for file in self.files().values() {
            for (agent, hold) in &file.agent_holds {
                if holds.get(agent).is_none_or(|h| h.until < hold.until) {
                    holds.insert(agent.clone(), hold.clone());
                }
            }
        }
        holds
    }

    /// Replaces the agent holds of every state file.
    pub fn set_agent_holds(&self, holds: &BTreeMap<String, AgentHold>) {
        let changed: Vec<Arc<str>> = {
            let mut files = self.files();
            files
                .iter_mut()
                .filter(|(_, f)| f.agent_holds != *holds)
                .map(|(name, f)| {
                    f.agent_holds = holds.clone();
                    name.clone()
                })
                .collect()
        };
        for name in changed {
            self.mark_dirty(&name);
        }
    }

    /// The key/value area of one connector.
    pub fn connector_store(&self, connector: Arc<str>) -> ConnectorStore {
        ConnectorStore {
            store: self.clone(),
            connector,
        }
    }

    /// Writes dirty files until cancelled, coalescing bursts; flushes once more at the end.
    pub async fn run_writer(self, cancel: CancellationToken) {
        // After a failed write (disk full, folder removed) the next attempt waits longer each
        // time, up to a minute, instead of retrying at the coalescing pace.
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = cancel.cancelled() => break,
            }
            let pause = if failures == 0 {
                COALESCE
            } else {
                retry_pause(failures)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => break,
            }
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => failures = 0,
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::error!(error = %e, retry_in = ?retry_pause(failures), "state write failed; retrying");
                }
                Err(e) => tracing::error!(error = %e, "state writer task failed"),
            }
        }
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "final state write failed");
        }
    }

    /// Writes every dirty file now (blocking I/O).
    pub fn flush(&self) -> Result<(), StateError> {
        let dirty: Vec<Arc<str>> = self
            .inner
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        // Every dirty file gets its chance; a failed one is marked dirty again (retried on
        // the next change and at the final flush) and the first error is returned.
        let mut first_error = None;
        for name in dirty {
            let bytes = {
                let mut files = self.files();
                let Some(file) = files.get_mut(&name) else {
                    continue;
                };
                file.version = FORMAT_VERSION;
                serde_json::to_vec_pretty(&*file).expect("state serializes")
            };
            let path = state_path(&self.inner.dir, &name);
            if let Err(source) = write_atomic(&path, &bytes) {
                self.mark_dirty(&name);
                first_error.get_or_insert(StateError::Write { path, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Persisted key/values of one connector, e.g. `watermark:<room>`.
#[derive(Clone)]
pub struct ConnectorStore {
    store: StateStore,
    connector: Arc<str>,
}

impl ConnectorStore {
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.store
            .files()
            .get(&self.connector)
            .and_then(|f| f.connector.get(key))
            .cloned()
    }

    pub fn put(&self, key: &str, value: serde_json::Value) {
        {
            let mut files = self.store.files();
            let file = files.entry(self.connector.clone()).or_default();
            if file.connector.get(key) == Some(&value) {
                return;
            }
            file.connector.insert(key.to_string(), value);
        }
        self.store.mark_dirty(&self.connector);
    }
}

/// 2 s, 4 s, … up to a minute between attempts after consecutive failed writes.
fn retry_pause(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60))
}

pub fn state_path(dir: &Path, connector: &str) -> PathBuf {
    dir.join(format!("state.{connector}.json"))
}

/// Temp file in the same folder, fsync, rename over the target, fsync the folder: a reader
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RoomKey {
        RoomKey::new("local", "lobby")
    }

    #[test]
    fn round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<Arc<str>> = vec!["local".into()];
        let (store, warnings) = StateStore::open(dir.path(), &names);
        assert!(warnings.is_empty());
        store.update_room(&key(), |r| {
            r.session_id = Some("s-1".into());
            r.watcher = "w".into();
        });
        store.set_watcher_paused(&names[0], "w", true);
        store
            .connector_store(names[0].clone())
            .put("watermark:lobby", serde_json::json!(42));
        store.flush().unwrap();

        let (again, _) = StateStore::open(dir.path(), &names);
        assert_eq!(
            again.room(&key()).unwrap().session_id.as_deref(),
            Some("s-1")
        );
        assert!(again.watcher_paused(&names[0], "w"));
        assert_eq!(
            again
                .connector_store(names[0].clone())
                .get("watermark:lobby"),
            Some(serde_json::json!(42))
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_state_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(state_path(dir.path(), "local"), b"{not json").unwrap();
        let (store, warnings) = StateStore::open(dir.path(), &["local".into()]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("is corrupt"), "{}", warnings[0]);
        assert!(store.room(&key()).is_none());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
