//! Catch-up after a reconnect or a daemon restart: OneBot implementations do not queue
//! events while the gateway is away, so messages sent in that gap would be lost. Each room
//! keeps a watermark (time of the last message the dispatcher settled, plus the ids seen at
//! that time and just before); when a bot connects, the history of its rooms since the
//! watermark is fetched and fed through the normal event path, in order, skipping ids
//! already seen. Bounded in age and count: a gateway that was down for a day does not answer
//! a day of chatter.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::context::{fetch_history, History};
use super::wire::MessageEvent;
use super::{Chat, Inner, Runtime};
use crate::connector::replay::IdWindow;

/// Messages older than this are not replayed.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Messages replayed per room at most.
const MAX_PER_ROOM: usize = 50;
/// Message ids remembered per room to skip what was already delivered.
const ID_WINDOW: usize = 50;
/// Rooms that have a watermark (so replay works for `*` watchers too).
const ROOMS_KEY: &str = "replay_rooms";

fn key(room: &str) -> String {
    format!("replay:{room}")
}

/// A room's replay state as stored: `{"time", "ids"}`, the time of the newest settled message
/// (seconds) and the last [`ID_WINDOW`] settled ids, whatever their time.
#[derive(Debug)]
struct RoomReplay {
    time: i64,
    ids: IdWindow<i64>,
}

impl Default for RoomReplay {
    fn default() -> Self {
        RoomReplay {
            time: 0,
            ids: IdWindow::new(ID_WINDOW),
        }
    }
}

fn load(rt: &Runtime, room: &str) -> Option<RoomReplay> {
    let v = rt.store.get(&key(room))?;
    let mut ids = IdWindow::new(ID_WINDOW);
    for id in v
        .get("ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
    {
        // OneBot windows are by count only; the floor is not used.
        ids.insert(id, 0);
    }
    Some(RoomReplay {
        time: v.get("time")?.as_i64()?,
        ids,
    })
}

/// Records that a message of `room` was settled by the dispatcher.
pub fn record(rt: &Runtime, room: &str, time: i64, message_id: i64) {
    let mut w = load(rt, room).unwrap_or_default();
    w.time = w.time.max(time);
    w.ids.insert(message_id, 0);
    let ids: Vec<i64> = w.ids.ids().copied().collect();
    rt.store
        .put(&key(room), json!({ "time": w.time, "ids": ids }));
    let mut rooms: Vec<String> = rt
        .store
        .get(ROOMS_KEY)
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if !rooms.iter().any(|r| r == room) {
        rooms.push(room.to_string());
        rt.store.put(ROOMS_KEY, json!(rooms));
    }
}

/// Whether a message was already settled (a replayed copy racing the live event).
pub fn already_settled(rt: &Runtime, room: &str, message_id: i64) -> bool {
    load(rt, room).is_some_and(|w| w.ids.contains(&message_id))
}

/// The messages `self_id`'s rooms received while the gateway was not listening, oldest first.
pub async fn missed(inner: &Inner, rt: &Runtime, self_id: i64) -> Vec<MessageEvent> {
    let Some(link) = inner.bots.get(self_id) else {
        return Vec::new();
    };
    let rooms: Vec<String> = rt
        .store
        .get(ROOMS_KEY)
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let oldest_allowed = now - MAX_AGE.as_secs() as i64;
    let mut out = Vec::new();
    for room in rooms {
        // A room served by another connected bot is that bot's to replay.
        let owner = inner.room_bot().get(&room).copied();
        if owner.is_some_and(|o| o != self_id && inner.bots.get(o).is_some()) {
            continue;
        }
        let (Some(chat), Some(w)) = (Chat::parse(&room), load(rt, &room)) else {
            continue;
        };
        let since = w.time.max(oldest_allowed);
        let which = match chat {
            Chat::Group(id) => History::Group(id),
            Chat::Private(id) => History::Friend(id),
        };
        let history = fetch_history(inner, &link, which, None, Some(since), MAX_PER_ROOM).await;
        let mut missed: Vec<MessageEvent> = history
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m.time >= since && !w.ids.contains(&m.message_id))
            .filter(|m| m.user_id != self_id && m.user_id != 0)
            .map(|mut m| {
                // History entries may lack what a pushed event carries.
                m.self_id = self_id;
                match chat {
                    Chat::Group(id) => {
                        m.message_type = "group".into();
                        m.group_id = Some(id);
                    }
                    Chat::Private(id) => {
                        m.message_type = "private".into();
                        if m.user_id != id {
                            m.user_id = 0;
                        }
                    }
                }
                m
            })
            .filter(|m| m.user_id != 0)
            .collect();
        missed.sort_by_key(|m| (m.time, m.message_id));
        if !missed.is_empty() {
            tracing::info!(connector = %inner.name, room, count = missed.len(), "replaying messages missed while disconnected");
        }
        out.extend(missed);
    }
    out.sort_by_key(|m| (m.time, m.message_id));
    out
}
