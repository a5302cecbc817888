//! The book of resumable API sessions, kept in the connector's part of the state file so it
//! survives restarts: which chains of Responses exist (token → user and model, so a
//! `previous_response_id` is only honoured for the user that made it) and which sticky chat
//! sessions have had a turn (so their next request sends only the new messages).
//!
//! Bounded: at most [`MAX_SESSIONS`] entries, the least recently used dropped first (its
//! `previous_response_id` then answers 404, and a sticky chat session starts over with the
//! whole history the caller sends), and its room's state with it
//! ([`ConnectorEvent::Forget`](crate::connector::ConnectorEvent::Forget)).

use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::state::ConnectorStore;

pub const MAX_SESSIONS: usize = 1024;

const KEY: &str = "sessions";

pub struct Sessions {
    store: ConnectorStore,
    /// Serialises read-modify-write of the one store entry.
    lock: Mutex<()>,
}

/// What the book knows of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub user: String,
    pub model: String,
}

impl Sessions {
    pub fn new(store: ConnectorStore) -> Sessions {
        Sessions {
            store,
            lock: Mutex::new(()),
        }
    }

    fn book(&self) -> Map<String, Value> {
        match self.store.get(KEY) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let book = self.book();
        let e = book.get(key)?;
        Some(Entry {
            user: e.get("user")?.as_str()?.to_string(),
            model: e.get("model")?.as_str()?.to_string(),
        })
    }

    /// Records (or refreshes) a session held in `room`; the oldest entries go beyond
    /// [`MAX_SESSIONS`], and their rooms are returned so their state can go too.
    pub fn remember(&self, key: &str, entry: &Entry, room: &str) -> Vec<String> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut book = self.book();
        // Each entry carries when it was last used, as a counter: the map's own order would
        // not do, since the store compares maps regardless of order and would keep a
        // reordered one unchanged.
        let used = |e: &Value| e.get("used").and_then(Value::as_u64).unwrap_or(0);
        let next = book.values().map(used).max().map_or(0, |m| m + 1);
        book.insert(
            key.to_string(),
            json!({"user": entry.user, "model": entry.model, "room": room, "used": next}),
        );
        let mut evicted = Vec::new();
        while book.len() > MAX_SESSIONS {
            let oldest = book
                .iter()
                .min_by_key(|(_, e)| used(e))
                .map(|(k, _)| k.clone())
                .expect("not empty");
            if let Some(room) = book
                .remove(&oldest)
                .and_then(|e| e.get("room")?.as_str().map(str::to_string))
            {
                evicted.push(room);
            }
        }
        self.store.put(KEY, Value::Object(book));
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;
    use std::sync::Arc;

    fn entry(user: &str) -> Entry {
        Entry {
            user: user.into(),
            model: "assistant".into(),
        }
    }

    #[test]
    fn the_book_keeps_the_most_recently_used_and_names_the_rooms_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let name: Arc<str> = "api".into();
        let (store, _) = StateStore::open(dir.path(), std::slice::from_ref(&name));
        let book = Sessions::new(store.connector_store(name));
        for i in 0..MAX_SESSIONS {
            assert!(book
                .remember(&format!("resp:{i}"), &entry("alice"), &format!("room-{i}"))
                .is_empty());
        }
        // Used again: now the most recent, so `resp:1` is the oldest.
        book.remember("resp:0", &entry("alice"), "room-0");
        let dropped = book.remember("resp:new", &entry("bob"), "room-new");
        assert_eq!(dropped, vec!["room-1".to_string()]);
        assert_eq!(book.get("resp:0"), Some(entry("alice")));
        assert_eq!(book.get("resp:1"), None);
        assert_eq!(book.get("resp:new"), Some(entry("bob")));
    }
}
