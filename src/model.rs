//! The neutral vocabulary every other module speaks: rooms, senders, roles, inbound messages,
//! reply targets, turns, agent events and the tool calls agents ask the gateway about.
//!
//! Owns: plain data types and their small helpers.
//! Knows nothing about: serde wire formats, tokio, any chat platform or agent CLI. Connectors
//! convert their wire types into these; agents convert their output into [`AgentEvent`]s.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// One room of one connector, or one thread of it: the unit that owns a queue and an agent
/// session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub connector: Arc<str>,
    /// The platform's stable room id (`GENERAL`, `group:123`, `lobby`, …).
    pub room: Arc<str>,
    /// The thread (its root message id) with a session of its own, in a watcher with
    /// `session_scope: thread`; `None` for the room's own session.
    pub thread: Option<Arc<str>>,
}

/// Between a room id and a thread id in [`RoomKey::id`]: no platform's room ids contain it.
const THREAD_MARK: &str = "#thread:";

impl RoomKey {
    pub fn new(connector: impl Into<Arc<str>>, room: impl Into<Arc<str>>) -> Self {
        RoomKey {
            connector: connector.into(),
            room: room.into(),
            thread: None,
        }
    }

    /// The same room's key for one of its threads.
    pub fn in_thread(mut self, thread: impl Into<Arc<str>>) -> Self {
        self.thread = Some(thread.into());
        self
    }

    /// How the key is written in the state file and shown by `list`: the room id, or
    /// `<room>#thread:<thread>`.
    pub fn id(&self) -> std::borrow::Cow<'_, str> {
        match &self.thread {
            None => std::borrow::Cow::Borrowed(&self.room),
            Some(t) => std::borrow::Cow::Owned(format!("{}{THREAD_MARK}{t}", self.room)),
        }
    }

    /// The key whose [`RoomKey::id`] is `id`.
    pub fn from_id(connector: impl Into<Arc<str>>, id: &str) -> Self {
        match id.split_once(THREAD_MARK) {
            Some((room, thread)) => RoomKey::new(connector, room).in_thread(thread),
            None => RoomKey::new(connector, id),
        }
    }

    /// The key of the platform room itself (its own session, not a thread's).
    pub fn of_room(&self) -> RoomKey {
        RoomKey::new(self.connector.clone(), self.room.clone())
    }

    /// Both keys name the same platform room (any thread of it, or none).
    pub fn same_room(&self, other: &RoomKey) -> bool {
        self.connector == other.connector && self.room == other.room
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.connector, self.id())
    }
}

/// What a sender may do. Ordered so that `min` gives the lowest role of a merged batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Guest,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Owner => "owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "guest" => Ok(Role::Guest),
            other => Err(format!("unknown role '{other}' (expected owner or guest)")),
        }
    }
}

/// The authenticated author of a message, as the platform reports it. Roles are looked up from
/// configuration by `id` or `username`; nothing in the message text can change them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// Platform user id (Rocket.Chat `u._id`, QQ number, web chat user name).
    pub id: String,
    /// Login name (`alice`); equal to `id` where the platform has no separate name.
    pub username: String,
    /// Human-readable name for prompts and logs.
    pub display_name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// One-to-one with the bot: never needs a mention.
    Direct,
    /// Channel, private group or QQ group: may require a mention.
    Group,
}

/// A room as the connector knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRef {
    pub id: String,
    /// Display name (`#general`, `alice`, `group:123`).
    pub name: String,
    pub kind: RoomKind,
}

/// A file the connector downloaded for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub path: PathBuf,
}

/// A message from a platform, normalised. Own messages and system messages never get here.
#[derive(Clone, Debug)]
pub struct InboundMessage {
    /// Name of the connector that received it.
    pub connector: Arc<str>,
    pub room: RoomRef,
    /// Platform message id: the key for dedup, watermarks and quoting.
    pub id: String,
    /// Thread the message belongs to; the reply goes to the same thread.
    pub thread: Option<String>,
    pub sender: Sender,
    /// Text with the leading `@bot` mention removed.
    pub text: String,
    /// The bot was addressed: mentioned, replied to, `@all` when configured, or a DM.
    pub addressed: bool,
    pub attachments: Vec<Attachment>,
    /// Notices for the agent about this message (attachment skipped, too large, …).
    pub notes: Vec<String>,
    pub ts: SystemTime,
    /// Set by platforms that open a room per conversation of an API caller instead of
    /// having chat rooms (see [`Conversation`]); `None` for a chat message.
    pub conversation: Option<Conversation>,
}

/// One earlier message of a thread, shown to the agent as context when it is mentioned in
/// the thread (`Connector::thread_history`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadMessage {
    pub id: String,
    /// The author, as a turn's own sender: the turn runner resolves its role, leaves out
    /// the words of people the connector does not serve and runs the turn with the lowest
    /// role among the authors it shows.
    pub sender: Sender,
    pub text: String,
    pub ts: SystemTime,
    /// The bot's own message. Only a thread's root is ever the bot's (a thread people
    /// started on its answer, a schedule's report): the bot's replies inside a thread are
    /// the session's own words, which it has.
    pub own: bool,
}

/// A message that is one request of an API caller, in a room the platform opened for that
/// caller's conversation. Such a message is answered alone — never merged with others into
/// a catch-up turn — because its caller waits for exactly its own answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// The watched room (a watcher's `room`) the conversation belongs to: watchers are
    /// matched on it, while the room itself keys the queue and the agent session.
    pub watched: String,
    /// The room is forgotten once its turn is over (a stateless request): its state-file
    /// entry is removed and its worker released at once.
    pub ephemeral: bool,
    /// The model the caller chose for the agent's CLI, if any (see `TurnRequest::model`).
    pub model: Option<String>,
    /// The JSON Schema of the answer the caller asked for (see `TurnRequest::output_schema`).
    pub output_schema: Option<String>,
}

impl InboundMessage {
    pub fn room_key(&self) -> RoomKey {
        RoomKey::new(self.connector.clone(), self.room.id.as_str())
    }

    /// Where a reply to this message goes.
    pub fn reply_target(&self) -> ReplyTarget {
        ReplyTarget {
            room: self.room.id.clone(),
            thread: self.thread.clone(),
            reply_to: Some(self.id.clone()),
            mention: match self.room.kind {
                RoomKind::Group => Some(self.sender.clone()),
                RoomKind::Direct => None,
            },
        }
    }
}

/// Where an outbound message goes. Connectors use what their platform supports (a thread on
/// Rocket.Chat, a quote and an @ on QQ) and ignore the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyTarget {
    pub room: String,
    pub thread: Option<String>,
    /// The message being answered (quoted on platforms that quote).
    pub reply_to: Option<String>,
    /// Who to @ in group rooms.
    pub mention: Option<Sender>,
}

impl ReplyTarget {
    pub fn room(room: impl Into<String>) -> Self {
        ReplyTarget {
            room: room.into(),
            ..Default::default()
        }
    }
}

/// A message the bot posted, so it can be edited while a reply streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedMessage {
    pub id: String,
}

/// A turn as handed to an agent backend.
#[derive(Clone, Debug)]
pub struct TurnRequest {
    pub room: RoomKey,
    /// Session to resume; `None` starts a new one.
    pub session: Option<String>,
    pub prompt: String,
    /// Lowest role among the senders of the messages in this turn.
    pub role: Role,
    /// A model the caller chose for this turn (an API request's `model` suffix), for CLIs
    /// that take one; a backend that cannot apply it refuses the turn.
    pub model: Option<String>,
    /// The JSON Schema (as JSON text) a structured answer must follow, for CLIs that can be
    /// held to one; the others are asked in the prompt (the caller checks the answer).
    pub output_schema: Option<String>,
}

/// Token accounting reported by an agent for one turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: Option<f64>,
    pub context_window: Option<u64>,
}

/// What an agent reports while a turn runs, independent of the CLI that produced it.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// The session the agent is using (reported once, early).
    SessionStarted {
        session_id: String,
    },
    /// A block of assistant text (complete block, not a delta).
    Text {
        text: String,
    },
    Thinking {
        text: String,
    },
    ToolStart {
        id: String,
        name: String,
        input: String,
    },
    ToolResult {
        id: String,
        is_error: bool,
    },
    /// The CLI is retrying a failed model call.
    Retrying {
        attempt: u32,
        max: u32,
        delay_ms: u64,
        error: String,
    },
    /// Usage-limit state (subscription auth). `resets_at` is seconds since the epoch.
    RateLimit {
        status: String,
        resets_at: Option<u64>,
        kind: Option<String>,
    },
    Usage(Usage),
}

/// How a turn ended, for platforms that answer a waiting request with it
/// (`Connector::conclude`) instead of posting chat messages.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnEnd {
    Answered {
        text: String,
        usage: Option<Usage>,
    },
    Failed {
        /// The short message a chat room would have been shown (with its log reference).
        message: String,
        /// The agent ran out of its time.
        timed_out: bool,
    },
}

/// The end of a successful turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnOutcome {
    /// Session id to resume next time (the one created on a first turn).
    pub session_id: Option<String>,
    /// The answer to post.
    pub text: String,
    pub usage: Option<Usage>,
    /// Tools that were denied during the turn, by name.
    pub denied_tools: Vec<String>,
}

/// One tool call an agent wants to make, in no agent's wire format: each agent converts its
/// own request (Claude's PreToolUse hook body, ACP's `session/request_permission`) into this
/// before asking a [`ToolGate`](crate::agent::gate::ToolGate).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The tool's name as the agent spells it (`Bash`, `Write`, `mcp__srv__tool`).
    pub tool: String,
    /// The tool's arguments (a JSON value: every agent CLI speaks JSON).
    pub input: serde_json::Value,
    /// Where the agent runs the call; relative paths in `input` are resolved against it.
    pub cwd: PathBuf,
}

/// Decision about one tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow { reason: String },
    Ask { reason: String },
    Deny { reason: String },
}

impl Decision {
    pub fn word(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Ask { .. } => "ask",
            Decision::Deny { .. } => "deny",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow { reason } | Decision::Ask { reason } | Decision::Deny { reason } => {
                reason
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for wire formats and state files.
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_epoch_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_key_has_an_id_of_its_own_that_reads_back() {
        let room = RoomKey::new("rc", "GENERAL");
        let thread = room.clone().in_thread("m1");
        assert_eq!(room.id(), "GENERAL");
        assert_eq!(thread.id(), "GENERAL#thread:m1");
        assert_eq!(thread.to_string(), "rc:GENERAL#thread:m1");
        assert_eq!(RoomKey::from_id("rc", &thread.id()), thread);
        assert_eq!(RoomKey::from_id("rc", "GENERAL"), room);
        // An API conversation's room id has slashes; it is a room, not a thread.
        let api = RoomKey::new("api", "model/user/s1");
        assert_eq!(RoomKey::from_id("api", &api.id()), api);
        assert!(thread.same_room(&room) && thread.of_room() == room);
        assert!(!thread.same_room(&RoomKey::new("rc", "OTHER")));
    }
}
