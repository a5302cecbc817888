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
        // Removed and inserted again, so the map's order (insertion order is kept) is the
        // order of last use.
        book.shift_remove(key);
        book.insert(
            key.to_string(),
            json!({"user": entry.user, "model": entry.model, "room": room}),
        );
        let mut evicted = Vec::new();
        while book.len() > MAX_SESSIONS {
            let oldest = book.keys().next().cloned().expect("not empty");
            if let Some(room) = book
                .shift_remove(&oldest)
                .and_then(|e| e.get("room")?.as_str().map(str::to_string))
            {
                evicted.push(room);
            }
        }
        self.store.put(KEY, Value::Object(book));
        evicted
    }
}
