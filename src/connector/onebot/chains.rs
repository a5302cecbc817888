//! Reply chains as threads. QQ has no threads, but a reply quotes the message it answers, so
//! a chain of replies is one conversation: its root is the first message, the one that quotes
//! nothing. With `session_scope: thread` each chain has its own session.
//!
//! Owns: message id → its room and chain root for recent messages (the bot's own included,
//! so a reply to the bot's answer continues the chain; private chats' too, where a message is
//! only placed in its room: a quote is shown only in the room it was said in), and each
//! recent chain's messages from people (and its root once read, even when it is the bot's
//! own), for `thread_history`. Both bounded; what was evicted (or lost with a restart) is found again by
//! walking the chain up with `get_msg` (`inbound.rs`).

use std::collections::{HashMap, VecDeque};

use crate::model::ThreadMessage;

/// Message ids whose root is remembered.
const MAX_MESSAGES: usize = 4000;
/// Chains whose messages are remembered, and messages per chain.
const MAX_CHAINS: usize = 500;
const MAX_PER_CHAIN: usize = 50;

#[derive(Default)]
pub struct Chains {
    /// Message id → (room, chain root).
    roots: HashMap<i64, (String, i64)>,
    order: VecDeque<i64>,
    /// By (room, root): a reply forged to quote a message of another room never shows
    /// that room's words.
    members: HashMap<(String, i64), VecDeque<ThreadMessage>>,
    chain_order: VecDeque<(String, i64)>,
}

impl Chains {
    /// The root of the chain message `id` belongs to, when remembered.
    pub fn root_of(&self, id: i64) -> Option<i64> {
        self.roots.get(&id).map(|(_, root)| *root)
    }

    /// The room message `id` was said in, when remembered.
    pub fn room_of(&self, id: i64) -> Option<&str> {
        self.roots.get(&id).map(|(room, _)| room.as_str())
    }

    /// Message `id` belongs to the chain rooted at `root` (itself, for a message that quotes
    /// nothing); `said` is what a person said in it (none for the bot's own messages).
    pub fn record(&mut self, room: &str, id: i64, root: i64, said: Option<ThreadMessage>) {
        if self.roots.insert(id, (room.to_string(), root)).is_none() {
            self.order.push_back(id);
            if self.order.len() > MAX_MESSAGES {
                if let Some(old) = self.order.pop_front() {
                    self.roots.remove(&old);
                }
            }
        }
        let Some(said) = said else {
            return;
        };
        let key = (room.to_string(), root);
        if !self.members.contains_key(&key) {
            self.chain_order.push_back(key.clone());
            if self.chain_order.len() > MAX_CHAINS {
                if let Some(old) = self.chain_order.pop_front() {
                    self.members.remove(&old);
                }
            }
        }
        let list = self.members.entry(key).or_default();
        if list.iter().any(|m| m.id == said.id) {
            return;
        }
        list.push_back(said);
        if list.len() > MAX_PER_CHAIN {
            list.pop_front();
        }
    }

    /// What people said in `room` in the chain rooted at `root`, as `connector::latest` keeps
    /// it (the root first, then the latest others).
    pub fn history(&self, room: &str, root: i64, limit: usize) -> Vec<ThreadMessage> {
        let Some(list) = self.members.get(&(room.to_string(), root)) else {
            return Vec::new();
        };
        let root = root.to_string();
        crate::connector::latest(
            list.iter().cloned().collect(),
            limit,
            |m| m.ts,
            |m| m.id == root,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn said(id: i64, text: &str) -> Option<ThreadMessage> {
        Some(ThreadMessage {
            id: id.to_string(),
            sender: crate::model::Sender {
                id: "10001".into(),
                username: "10001".into(),
                display_name: "alice".into(),
            },
            text: text.into(),
            ts: UNIX_EPOCH + Duration::from_secs(id as u64),
            own: false,
        })
    }

    #[test]
    fn a_chain_keeps_its_root_through_the_bots_answers() {
        let mut c = Chains::default();
        c.record("group:1", 1, 1, said(1, "question"));
        c.record("group:1", 2, 1, None); // the bot's answer
        assert_eq!(c.root_of(2), Some(1));
        assert_eq!(c.room_of(2), Some("group:1"));
        assert_eq!(c.room_of(99), None);
        c.record("group:1", 3, c.root_of(2).unwrap(), said(3, "follow-up"));
        c.record("group:1", 3, 1, said(3, "follow-up")); // delivered twice
        c.record("group:2", 4, 1, said(4, "from another room"));
        let texts: Vec<String> = c
            .history("group:1", 1, 10)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["question", "follow-up"]);
        // A short limit keeps the root and the newest others.
        c.record("group:1", 5, 1, said(5, "and another"));
        let texts: Vec<String> = c
            .history("group:1", 1, 2)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["question", "and another"]);
        assert!(c.history("group:1", 2, 10).is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let mut c = Chains::default();
        for id in 0..(MAX_MESSAGES as i64 + 10) {
            c.record("group:1", id, id % (MAX_CHAINS as i64 + 7), said(id, "x"));
        }
        assert_eq!(c.roots.len(), MAX_MESSAGES);
        assert_eq!(c.root_of(0), None);
        assert!(c.members.len() <= MAX_CHAINS);
        assert!(c.members.values().all(|l| l.len() <= MAX_PER_CHAIN));
    }
}
