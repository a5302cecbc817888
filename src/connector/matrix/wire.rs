//! Matrix client-server API types (v3): `/sync`, room events and their `m.room.message`
//! content, and the small responses of login, send, upload, join and directory calls.
//!
//! Only the fields the connector reads; everything else is ignored, and an event whose
//! content does not parse is kept as raw JSON (it is skipped, never a crash).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct SyncResponse {
    pub next_batch: String,
    #[serde(default)]
    pub rooms: SyncRooms,
}

#[derive(Debug, Default, Deserialize)]
pub struct SyncRooms {
    #[serde(default)]
    pub join: HashMap<String, JoinedRoom>,
    #[serde(default)]
    pub invite: HashMap<String, Value>,
    #[serde(default)]
    pub leave: HashMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JoinedRoom {
    #[serde(default)]
    pub timeline: Timeline,
}

#[derive(Debug, Default, Deserialize)]
pub struct Timeline {
    #[serde(default)]
    pub events: Vec<Value>,
    /// Events between the `since` token and these were left out (too many).
    #[serde(default)]
    pub limited: bool,
    /// Where `/messages` continues backwards from the first of `events`.
    #[serde(default)]
    pub prev_batch: Option<String>,
}

/// `/rooms/{id}/messages`.
#[derive(Debug, Deserialize)]
pub struct MessagesResponse {
    #[serde(default)]
    pub chunk: Vec<Value>,
    #[serde(default)]
    pub end: Option<String>,
}

/// A room event as `/sync` and `/messages` deliver it.
#[derive(Clone, Debug, Deserialize)]
pub struct RoomEvent {
    pub event_id: String,
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub origin_server_ts: u64,
    #[serde(default)]
    pub content: Value,
    /// Server-added data; `m.relations.m.replace` is an event's latest edit (spec 1.7).
    #[serde(default)]
    pub unsigned: Value,
}

/// The content of an `m.room.message` (text, notice, emote, file, image, …).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MessageContent {
    #[serde(default)]
    pub msgtype: String,
    #[serde(default)]
    pub body: String,
    /// The file name when `body` is a caption (spec 1.10).
    #[serde(default)]
    pub filename: Option<String>,
    /// `mxc://server/media-id` of a file, image, audio or video.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub info: Option<FileInfo>,
    #[serde(default, rename = "m.relates_to")]
    pub relates_to: Option<RelatesTo>,
    #[serde(default, rename = "m.mentions")]
    pub mentions: Option<Mentions>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct FileInfo {
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RelatesTo {
    #[serde(default)]
    pub rel_type: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default, rename = "m.in_reply_to")]
    pub in_reply_to: Option<InReplyTo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct InReplyTo {
    #[serde(default)]
    pub event_id: Option<String>,
}

/// Intentional mentions (spec 1.7): who the sender meant to address.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Mentions {
    #[serde(default)]
    pub user_ids: Vec<String>,
}

/// The error body every endpoint returns.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub errcode: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
pub struct WhoAmI {
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
pub struct EventIdResponse {
    pub event_id: String,
}

#[derive(Debug, Deserialize)]
pub struct RoomIdResponse {
    pub room_id: String,
}

#[derive(Debug, Deserialize)]
pub struct UploadResponse {
    pub content_uri: String,
}

#[derive(Debug, Deserialize)]
pub struct JoinedMembers {
    #[serde(default)]
    pub joined: HashMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub displayname: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_threaded_message_with_mentions_parses() {
        let c: MessageContent = serde_json::from_value(json!({
            "msgtype": "m.text", "body": "hi",
            "m.mentions": {"user_ids": ["@bot:x"]},
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                             "is_falling_back": true, "m.in_reply_to": {"event_id": "$prev"}}
        }))
        .unwrap();
        let rel = c.relates_to.unwrap();
        assert_eq!(rel.rel_type.as_deref(), Some("m.thread"));
        assert_eq!(rel.in_reply_to.unwrap().event_id.as_deref(), Some("$prev"));
        assert_eq!(c.mentions.unwrap().user_ids, ["@bot:x"]);
    }

    #[test]
    fn a_sync_without_rooms_parses() {
        let s: SyncResponse = serde_json::from_value(json!({"next_batch": "s1"})).unwrap();
        assert!(s.rooms.join.is_empty());
    }
}
