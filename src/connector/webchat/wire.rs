//! Wire types of the web chat: the JSON API answers (a posted body is read as a JSON object
//! field by field, so each mistake gets its own message; `thread` names a thread's root), the Server-Sent Event payloads and the
//! tokens file. The only serde types of the connector; `hub` and `server` convert to and from
//! them explicitly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One message as the page and API clients see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireMessage {
    pub id: String,
    pub from: String,
    pub text: String,
    pub done: bool,
    /// RFC 3339, UTC.
    pub ts: String,
    /// Only on messages that carry a file the bot sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<WireFile>,
    /// The id of the thread's root message; absent at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WireFile {
    pub name: String,
    pub size: u64,
    /// `/api/files/<id>` (needs the token like every API path).
    pub url: String,
    /// An image the page shows in place.
    pub inline: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MessageList {
    pub messages: Vec<WireMessage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RoomSummary {
    pub name: String,
    /// Messages currently held for the room.
    pub messages: usize,
    /// A watcher of the gateway is bound to this room.
    pub watched: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RoomList {
    pub rooms: Vec<RoomSummary>,
}

/// `GET /api/me`: who the token belongs to, so the page can tell own messages apart.
#[derive(Debug, Serialize, Deserialize)]
pub struct Me {
    pub user: String,
    pub bot: String,
    pub require_mention: bool,
}

/// 202 answer to a post.
#[derive(Debug, Serialize, Deserialize)]
pub struct Posted {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Data of the `typing` event: the bot's typing flag in one thread (absent: the top level).
#[derive(Debug, Serialize, Deserialize)]
pub struct Typing {
    pub typing: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

/// `<runtime_dir>/webchat-<name>.tokens.json`: generated tokens by user.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}
