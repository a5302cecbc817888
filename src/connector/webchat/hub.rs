//! The web chat's rooms in memory: bounded message history, the typing flags, the `done` rule
//! for bot messages, threads, and a broadcast channel per room that feeds the Server-Sent
//! Events.
//!
//! Owns: what a room holds and how it changes. A thread is a top-level message of the room
//! (its root) and the messages that name it as their `thread`; replies live in the room's one
//! bounded history like any message, so threads cost no memory of their own. A user may only
//! start or continue a thread on a top-level message the room still holds (threads are one
//! level deep, as on Mattermost); the bot posts where the gateway says, even once the root
//! has left the history. Typing is per thread: with `session_scope: thread` several threads of
//! one room run turns side by side, and the end of one must not finish the other's streaming
//! answer. Every change is published to the room's
//! subscribers while the room lock is held, so subscribers see changes in the order they
//! happened. With a journal ([`Hub::with_history`]), every message that becomes final is
//! handed to it (the journal's writer thread does the I/O and keeps the file compact).
//! Must not import: hyper or the dispatcher; the HTTP server and the connector call into it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::history;

/// Events buffered per subscriber. A streaming reply edits often; a client that falls further
/// behind than this gets a `resync` instead of the missed events.
const EVENT_BUFFER: usize = 256;

/// Whom bot messages are from, on the page and in the API (reserved as a user name).
pub const BOT_NAME: &str = "bot";

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Increasing across the whole connector (and across restarts, see [`Hub::new`]).
    pub id: u64,
    pub from: String,
    pub text: String,
    /// False while the bot's turn that wrote it is still running.
    pub done: bool,
    pub ts: SystemTime,
    /// A file the bot sent with this message.
    pub file: Option<FileRef>,
    /// The root message of the thread this message is in; `None` at the top level.
    pub thread: Option<u64>,
}

/// A file attached to a bot message (stored by [`super::files::FileStore`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FileRef {
    pub id: String,
    pub name: String,
    pub size: u64,
    /// Shown in the page (images) rather than only offered as a download.
    pub inline: bool,
}

/// A change in one room, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    Message(Message),
    Edit(Message),
    /// The bot's typing flag in one thread (`None`: at the top level).
    Typing {
        thread: Option<u64>,
        on: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    #[error(
        "message {id} is not in the history of room {room} (edited too late or not a bot message)"
    )]
    NoSuchMessage { room: String, id: String },
    #[error("thread {id} is not a message of room {room} (or no longer in its history)")]
    NoSuchThread { room: String, id: u64 },
    #[error("message {id} is a reply in thread {root}: post to thread {root} instead")]
    NotARoot { id: u64, root: u64 },
}

struct Room {
    messages: VecDeque<Message>,
    /// The threads (`None`: the top level) where a bot turn is running. Bounded by the turns
    /// the gateway runs at once in the room: each `typing(on)` is followed by an `off`.
    typing: BTreeSet<Option<u64>>,
    events: broadcast::Sender<RoomEvent>,
    /// Logical clock of the last change or subscription, for evicting the idlest room.
    last_active: u64,
    /// A watcher is bound to it: listed even when empty, evicted last.
    watched: bool,
}

impl Room {
    fn new(clock: u64) -> Room {
        Room {
            messages: VecDeque::new(),
            typing: BTreeSet::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            last_active: clock,
            watched: false,
        }
    }

    fn publish(&self, event: RoomEvent) {
        // No subscribers is normal: nobody has the page open.
        let _ = self.events.send(event);
    }

    /// Whether a user may post in thread `root`: a top-level message this room holds.
    fn check_root(&self, room: &str, root: u64) -> Result<(), HubError> {
        match self.messages.binary_search_by_key(&root, |m| m.id) {
            Ok(i) => match self.messages[i].thread {
                None => Ok(()),
                Some(of) => Err(HubError::NotARoot { id: root, root: of }),
            },
            Err(_) => Err(HubError::NoSuchThread {
                room: room.to_string(),
                id: root,
            }),
        }
    }
}

struct Rooms {
    map: HashMap<String, Room>,
    next_id: u64,
    clock: u64,
}

/// Summary of one room for the room list.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomInfo {
    pub name: String,
    pub messages: usize,
    pub watched: bool,
}

pub struct Hub {
    history_limit: usize,
    max_rooms: usize,
    rooms: Mutex<Rooms>,
    journal: Option<history::Journal>,
}

impl Hub {
    /// Ids start at the current time in microseconds-ish (ms × 1000) so that ids of a later
    /// run sort after the ids of an earlier one: message ids are also the dispatcher's dedup
    /// and watermark keys, and must not repeat after a restart.
    pub fn new(history_limit: usize, max_rooms: usize) -> Hub {
        let first_id = crate::model::epoch_ms(SystemTime::now()).saturating_mul(1000);
        Hub {
            history_limit: history_limit.max(1),
            max_rooms: max_rooms.max(1),
            rooms: Mutex::new(Rooms {
                map: HashMap::new(),
                next_id: first_id,
                clock: 0,
            }),
            journal: None,
        }
    }

    /// A hub that keeps its history in the journal at `path`: what it holds is loaded now
    /// (within the limits) and every message that becomes final is appended.
    pub fn with_history(
        history_limit: usize,
        max_rooms: usize,
        path: PathBuf,
    ) -> std::io::Result<Hub> {
        let mut hub = Hub::new(history_limit, max_rooms);
        let loaded = history::load(&path, hub.history_limit, hub.max_rooms)?;
        if loaded.skipped > 0 {
            tracing::warn!(path = %path.display(), lines = loaded.skipped, "web chat history: unreadable lines skipped");
        }
        let bounds = history::Bounds {
            history_limit: hub.history_limit,
            max_rooms: hub.max_rooms,
        };
        hub.journal = Some(history::Journal::start(path, bounds, &loaded)?);
        let rooms = hub.rooms.get_mut().unwrap_or_else(|p| p.into_inner());
        rooms.next_id = rooms.next_id.max(loaded.max_id);
        for (name, messages) in loaded.rooms {
            rooms.clock += 1;
            let mut room = Room::new(rooms.clock);
            room.messages = messages.into();
            rooms.map.insert(name, room);
        }
        Ok(hub)
    }

    /// `(id, name)` of every file of the messages held, oldest first.
    pub fn file_refs(&self) -> Vec<(String, String)> {
        let rooms = self.lock();
        let mut refs: Vec<(u64, String, String)> = rooms
            .map
            .values()
            .flat_map(|r| r.messages.iter())
            .filter_map(|m| {
                m.file
                    .as_ref()
                    .map(|f| (m.id, f.id.clone(), f.name.clone()))
            })
            .collect();
        refs.sort_unstable();
        refs.into_iter().map(|(_, id, name)| (id, name)).collect()
    }

    /// Waits until the journal has written everything handed to it so far.
    pub async fn sync_history(&self) {
        if let Some(journal) = &self.journal {
            journal.sync().await;
        }
    }

    /// Hands a final message to the journal.
    fn record(&self, room: &str, message: &Message) {
        if let Some(journal) = &self.journal {
            journal.append(history::line(room, message));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room, created if needed (evicting the idlest room beyond the bound).
    fn room<'a>(&self, rooms: &'a mut Rooms, name: &str) -> &'a mut Room {
        rooms.clock += 1;
        let clock = rooms.clock;
        if !rooms.map.contains_key(name) && rooms.map.len() >= self.max_rooms {
            // Unwatched rooms go first; among equals, the one idle the longest.
            let victim = rooms
                .map
                .iter()
                .min_by_key(|(_, r)| (r.watched, r.last_active))
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                tracing::debug!(room = %victim, "web chat room evicted (room limit reached)");
                // Dropping the room drops its sender: its subscribers' streams end and the
                // page reconnects, recreating it.
                rooms.map.remove(&victim);
            }
        }
        let room = rooms
            .map
            .entry(name.to_string())
            .or_insert_with(|| Room::new(clock));
        room.last_active = clock;
        room
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        rooms: &mut Rooms,
        room_name: &str,
        from: &str,
        text: &str,
        bot: bool,
        file: Option<FileRef>,
        thread: Option<u64>,
    ) -> Message {
        rooms.next_id += 1;
        let id = rooms.next_id;
        let limit = self.history_limit;
        let room = self.room(rooms, room_name);
        let message = Message {
            id,
            from: from.to_string(),
            text: text.to_string(),
            // A bot message is final unless a turn is running in its thread.
            done: !(bot && room.typing.contains(&thread)),
            ts: SystemTime::now(),
            file,
            thread,
        };
        room.messages.push_back(message.clone());
        while room.messages.len() > limit {
            room.messages.pop_front();
        }
        room.publish(RoomEvent::Message(message.clone()));
        if message.done {
            self.record(room_name, &message);
        }
        message
    }

    /// A user's message, at the top level or in thread `thread`, which must be a top-level
    /// message the room holds (checked under the same lock as the insertion).
    pub fn add_user_message(
        &self,
        room: &str,
        user: &str,
        text: &str,
        file: Option<FileRef>,
        thread: Option<u64>,
    ) -> Result<Message, HubError> {
        let mut rooms = self.lock();
        if let Some(root) = thread {
            self.check_thread_locked(&rooms, room, root)?;
        }
        Ok(self.push(&mut rooms, room, user, text, false, file, thread))
    }

    /// Whether a user may post in thread `root` of `room` now (see [`Hub::add_user_message`],
    /// which checks again): lets a caller refuse before doing costly work.
    pub fn check_thread(&self, room: &str, root: u64) -> Result<(), HubError> {
        let rooms = self.lock();
        self.check_thread_locked(&rooms, room, root)
    }

    fn check_thread_locked(&self, rooms: &Rooms, room: &str, root: u64) -> Result<(), HubError> {
        match rooms.map.get(room) {
            Some(r) => r.check_root(room, root),
            None => Err(HubError::NoSuchThread {
                room: room.to_string(),
                id: root,
            }),
        }
    }

    /// A bot message in `thread` (`None`: the top level). The root need not be held any
    /// more: the reply belongs to the conversation the gateway answers.
    pub fn post_bot(&self, room: &str, text: &str, thread: Option<u64>) -> Message {
        let mut rooms = self.lock();
        self.push(&mut rooms, room, BOT_NAME, text, true, None, thread)
    }

    pub fn post_bot_file(
        &self,
        room: &str,
        text: &str,
        file: FileRef,
        thread: Option<u64>,
    ) -> Message {
        let mut rooms = self.lock();
        self.push(&mut rooms, room, BOT_NAME, text, true, Some(file), thread)
    }

    /// Thread `root` of `room`: its root (if still held) and its replies, oldest first.
    pub fn thread(&self, room: &str, root: u64) -> Vec<Message> {
        self.messages_where(room, |m| m.id == root || m.thread == Some(root))
    }

    /// Replaces the text of a bot message still in the history.
    pub fn edit_bot(&self, room_name: &str, id: &str, text: &str) -> Result<Message, HubError> {
        let missing = || HubError::NoSuchMessage {
            room: room_name.to_string(),
            id: id.to_string(),
        };
        let wanted: u64 = id.parse().map_err(|_| missing())?;
        let mut rooms = self.lock();
        rooms.clock += 1;
        let clock = rooms.clock;
        let room = rooms.map.get_mut(room_name).ok_or_else(missing)?;
        room.last_active = clock;
        let typing = &room.typing;
        let message = room
            .messages
            .iter_mut()
            .find(|m| m.id == wanted && m.from == BOT_NAME)
            .ok_or_else(missing)?;
        message.text = text.to_string();
        message.done = !typing.contains(&message.thread);
        let message = message.clone();
        room.publish(RoomEvent::Edit(message.clone()));
        if message.done {
            self.record(room_name, &message);
        }
        Ok(message)
    }

    /// Turns the typing flag of one thread (`None`: the top level) on or off. Off ends the
    /// turn there: every bot message of that thread still streaming becomes done, each
    /// announced as an edit before the typing event itself.
    pub fn set_typing(&self, room_name: &str, thread: Option<u64>, on: bool) {
        let mut rooms = self.lock();
        let room = self.room(&mut rooms, room_name);
        if !on {
            let finished: Vec<Message> = room
                .messages
                .iter_mut()
                .filter(|m| !m.done && m.thread == thread)
                .map(|m| {
                    m.done = true;
                    m.clone()
                })
                .collect();
            for m in &finished {
                room.publish(RoomEvent::Edit(m.clone()));
            }
            if room.typing.remove(&thread) {
                room.publish(RoomEvent::Typing { thread, on: false });
            }
            for m in &finished {
                self.record(room_name, m);
            }
            return;
        }
        if room.typing.insert(thread) {
            room.publish(RoomEvent::Typing { thread, on: true });
        }
    }

    /// Messages of a room, oldest first; with `after`, only those with a larger id.
    pub fn messages(&self, room: &str, after: Option<u64>) -> Vec<Message> {
        self.messages_where(room, |m| after.is_none_or(|a| m.id > a))
    }

    /// The messages of a room that `keep` says, oldest first.
    fn messages_where(&self, room: &str, keep: impl Fn(&Message) -> bool) -> Vec<Message> {
        let rooms = self.lock();
        rooms
            .map
            .get(room)
            .map(|r| r.messages.iter().filter(|m| keep(m)).cloned().collect())
            .unwrap_or_default()
    }

    /// A receiver of the room's future events and the threads (`None`: the top level) where
    /// the bot is typing at the moment of subscribing (taken under the same lock, so nothing
    /// falls between them).
    pub fn subscribe(&self, room_name: &str) -> (broadcast::Receiver<RoomEvent>, Vec<Option<u64>>) {
        let mut rooms = self.lock();
        let room = self.room(&mut rooms, room_name);
        (
            room.events.subscribe(),
            room.typing.iter().copied().collect(),
        )
    }

    pub fn mark_watched(&self, room_name: &str) {
        let mut rooms = self.lock();
        self.room(&mut rooms, room_name).watched = true;
    }

    /// Rooms with messages or a watcher, by name.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let rooms = self.lock();
        let mut list: Vec<RoomInfo> = rooms
            .map
            .iter()
            .filter(|(_, r)| r.watched || !r.messages.is_empty())
            .map(|(name, r)| RoomInfo {
                name: name.clone(),
                messages: r.messages.len(),
                watched: r.watched,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut broadcast::Receiver<RoomEvent>) -> Vec<RoomEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn bot_messages_stream_while_typing_and_finish_when_typing_stops() {
        let hub = Hub::new(10, 4);
        let (mut rx, typing) = hub.subscribe("lobby");
        assert!(typing.is_empty());
        hub.set_typing("lobby", None, true);
        let first = hub.post_bot("lobby", "Hel", None);
        assert!(!first.done);
        let edited = hub
            .edit_bot("lobby", &first.id.to_string(), "Hello")
            .unwrap();
        assert!(!edited.done);
        hub.set_typing("lobby", None, false);
        let after = hub.messages("lobby", None);
        assert_eq!(after.len(), 1);
        assert!(after[0].done);
        assert_eq!(after[0].text, "Hello");

        let events = drain(&mut rx);
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[0],
            RoomEvent::Typing {
                thread: None,
                on: true
            }
        );
        assert!(matches!(&events[1], RoomEvent::Message(m) if !m.done && m.text == "Hel"));
        assert!(matches!(&events[2], RoomEvent::Edit(m) if !m.done && m.text == "Hello"));
        assert!(matches!(&events[3], RoomEvent::Edit(m) if m.done && m.text == "Hello"));
        assert_eq!(
            events[4],
            RoomEvent::Typing {
                thread: None,
                on: false
            }
        );

        // Outside a turn a bot message is final at once.
        assert!(hub.post_bot("lobby", "notice", None).done);
    }

    #[test]
    fn user_messages_cannot_be_edited_as_bot_messages() {
        let hub = Hub::new(10, 4);
        let m = hub
            .add_user_message("lobby", "alice", "hi", None, None)
            .unwrap();
        assert!(m.done);
        assert!(hub.edit_bot("lobby", &m.id.to_string(), "forged").is_err());
        assert!(hub.edit_bot("lobby", "not-a-number", "x").is_err());
        assert!(hub.edit_bot("nowhere", "1", "x").is_err());
    }

    #[test]
    fn history_and_room_count_are_bounded() {
        let hub = Hub::new(3, 2);
        hub.mark_watched("watched");
        for i in 0..5 {
            hub.add_user_message("a", "alice", &format!("m{i}"), None, None)
                .unwrap();
        }
        let texts: Vec<String> = hub
            .messages("a", None)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
        // A third room evicts the idlest unwatched one ("a"), never the watched one first.
        hub.add_user_message("b", "alice", "x", None, None).unwrap();
        let names: Vec<String> = hub.rooms().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["b", "watched"]);
    }

    #[test]
    fn ids_increase_and_after_filters() {
        let hub = Hub::new(10, 4);
        let a = hub.add_user_message("r", "alice", "1", None, None).unwrap();
        let b = hub.post_bot("r", "2", None);
        assert!(b.id > a.id);
        let later: Vec<u64> = hub
            .messages("r", Some(a.id))
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(later, [b.id]);
    }

    #[test]
    fn threads_take_replies_only_on_held_top_level_messages_and_type_apart() {
        let hub = Hub::new(10, 4);
        let root = hub
            .add_user_message("r", "alice", "root", None, None)
            .unwrap();
        let reply = hub
            .add_user_message("r", "bob", "reply", None, Some(root.id))
            .unwrap();
        assert_eq!(reply.thread, Some(root.id));
        // One level deep: a reply is no root, and a root must be of this room.
        assert_eq!(
            hub.add_user_message("r", "bob", "x", None, Some(reply.id)),
            Err(HubError::NotARoot {
                id: reply.id,
                root: root.id
            })
        );
        assert!(matches!(
            hub.add_user_message("other", "bob", "x", None, Some(root.id)),
            Err(HubError::NoSuchThread { .. })
        ));
        assert!(hub.check_thread("r", reply.id + 100).is_err());
        hub.add_user_message("r", "alice", "elsewhere", None, None)
            .unwrap();

        // A turn in the thread and one at the top level stream side by side: ending the
        // thread's finishes only the thread's answer.
        let (mut rx, _) = hub.subscribe("r");
        hub.set_typing("r", Some(root.id), true);
        hub.set_typing("r", None, true);
        let in_thread = hub.post_bot("r", "in thread", Some(root.id));
        let top = hub.post_bot("r", "top", None);
        assert!(!in_thread.done && !top.done);
        assert_eq!(hub.subscribe("r").1, [None, Some(root.id)]);
        hub.set_typing("r", Some(root.id), false);
        let held = hub.messages("r", None);
        assert!(held.iter().any(|m| m.id == in_thread.id && m.done));
        assert!(held.iter().any(|m| m.id == top.id && !m.done));
        let events = drain(&mut rx);
        assert!(events.contains(&RoomEvent::Typing {
            thread: Some(root.id),
            on: false
        }));
        assert!(!events.contains(&RoomEvent::Typing {
            thread: None,
            on: false
        }));

        let thread: Vec<String> = hub
            .thread("r", root.id)
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(thread, ["root", "reply", "in thread"]);
    }
}
