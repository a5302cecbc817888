//! Connectors: one folder per chat platform. Each turns its platform's wire traffic into
//! [`ConnectorEvent`]s for the dispatcher and carries replies back out (post, edit, typing,
//! upload).
//!
//! Owns: the [`Connector`] trait, the event sink connectors deliver into, and the platform
//! list (`registry.rs`) that parses, builds and labels connectors.
//! Must not import: `agent`, `room`, `approval` — connectors and agents meet only in `model`.

pub mod files;
pub mod http;
pub mod matrix;
pub mod mattermost;
pub mod onebot;
pub mod openai;
pub mod registry;
pub mod replay;
pub mod rocketchat;
pub mod webchat;

pub use registry::build;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{
    AgentEvent, InboundMessage, PostedMessage, ReplyTarget, RoomRef, ThreadMessage, TurnEnd,
};
use crate::state::ConnectorStore;
use crate::text;

/// What a platform can do, so the turn runner streams and splits replies appropriately.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Longest text one message may carry (characters). Longer replies are split.
    pub max_message_len: usize,
    /// Posted messages can be edited, so a reply can stream into one message as it grows.
    pub edit: bool,
    /// Shortest interval between two edits of one message (platform rate limits).
    pub edit_interval: Duration,
    /// Messages can be threads of their own (`InboundMessage::thread`), and the platform can
    /// list a thread's messages ([`Connector::thread_history`]): `session_scope: thread`
    /// gives each thread its own session.
    pub threads: bool,
}

/// Where the approval prompts of a connector's rooms are asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalPlace {
    /// In the room of the turn (chat platforms: its owners are there).
    InRoom,
    /// Nowhere: nobody in these rooms can answer (an API caller), so a call that needs an
    /// owner is denied.
    Nowhere,
    /// In a room of another connector, whose owners answer there.
    Room { connector: String, room: String },
}

/// Errors talking to a platform. Carries enough to tell the user what failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("room not found: {0}")]
    RoomNotFound(String),
    #[error("not connected to {0}")]
    NotConnected(String),
    #[error("{platform} rejected {action}: {detail}")]
    Rejected {
        platform: &'static str,
        action: String,
        detail: String,
    },
    #[error("{0} is not supported by this connector")]
    Unsupported(&'static str),
    #[error("attachment {path}: {source}")]
    Attachment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Why a connector could not start, or had to stop: faults that retrying cannot fix. The
/// daemon reports them and stops (at start-up, before it says it started).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listening address could not be bound (`who` names the connector for the user).
    #[error("{who}: cannot listen on {addr}: {}", listen_reason(.error))]
    Listen {
        who: String,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    /// The platform refused the bot's credentials (the message never holds a secret).
    #[error("{0}")]
    Credentials(String),
    /// `run` was called twice on one connector.
    #[error("connector '{0}' is already running")]
    AlreadyRunning(String),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

fn listen_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "the address is already in use (another program is listening there; change `listen` in \
         its config section)"
            .into()
    } else {
        e.to_string()
    }
}

/// What a connector tells the dispatcher. Messages are by far the most frequent variant, so
/// boxing them would only add an allocation per message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ConnectorEvent {
    /// A message addressed to a watched room. `accepted` reports whether it was queued, so a
    /// connector advances its replay watermark only past messages that were taken.
    Message {
        message: InboundMessage,
        accepted: Option<oneshot::Sender<Acceptance>>,
    },
    /// A watcher's room spec (`#general`, `@alice`, an id) resolved to a room id.
    RoomResolved { spec: String, room: RoomRef },
    /// A watcher's room spec could not be resolved; that watcher stays inactive.
    RoomFailed { spec: String, error: String },
    /// Connection state changed (for `status` and `list`).
    Connection { connected: bool, detail: String },
    /// Nobody waits for the answer to message `id` in `room` any more (an API caller hung
    /// up): its turn is stopped, or it leaves the queue.
    Cancel { room: String, id: String },
    /// The platform will never route to `room` again (a session it no longer keeps): its
    /// state may go.
    Forget { room: String },
}

/// The dispatcher's verdict on one inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// Taken into a room's queue (persisted); it will be answered or reported failed.
    Queued,
    /// Consumed without a turn (an approval command, a paused-room notice, …).
    Handled,
    /// Deliberately not processed (no watcher, not addressed, unknown sender).
    Ignored(String),
    /// Could not be taken (queue full, shutting down); the sender was told.
    Rejected(String),
}

impl Acceptance {
    /// Whether a replay watermark may move past this message.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Acceptance::Rejected(_))
    }
}

/// Delivers one connector's events to the dispatcher, tagged with the connector's name.
#[derive(Clone)]
pub struct EventSink {
    connector: Arc<str>,
    tx: mpsc::Sender<(Arc<str>, ConnectorEvent)>,
}

impl EventSink {
    pub fn new(connector: Arc<str>, tx: mpsc::Sender<(Arc<str>, ConnectorEvent)>) -> Self {
        EventSink { connector, tx }
    }

    pub fn connector(&self) -> &Arc<str> {
        &self.connector
    }

    /// Sends an event; false when the dispatcher is gone (shutting down).
    pub async fn send(&self, event: ConnectorEvent) -> bool {
        self.tx.send((self.connector.clone(), event)).await.is_ok()
    }

    /// Sends an event without waiting (from a `Drop`); false when the dispatcher's channel is
    /// full or gone.
    pub fn try_send(&self, event: ConnectorEvent) -> bool {
        self.tx.try_send((self.connector.clone(), event)).is_ok()
    }

    /// Delivers a message and waits for the dispatcher's verdict. A dispatcher that went away
    /// counts as `Rejected`, so the connector keeps the message replayable.
    pub async fn deliver(&self, message: InboundMessage) -> Acceptance {
        let (tx, rx) = oneshot::channel();
        let event = ConnectorEvent::Message {
            message,
            accepted: Some(tx),
        };
        if !self.send(event).await {
            return Acceptance::Rejected("gateway is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| Acceptance::Rejected("gateway is shutting down".into()))
    }
}

/// Everything a connector's `run` loop gets from the daemon.
pub struct ConnectorContext {
    pub events: EventSink,
    pub cancel: CancellationToken,
    /// Room specs of the watchers bound to this connector; `*` means every room.
    pub watched: Vec<String>,
    /// Where downloaded attachments go (`<runtime>/attachments/<connector>/`).
    pub attachments_dir: PathBuf,
    /// Persisted key/values of this connector (replay watermarks, …).
    pub store: ConnectorStore,
}

impl ConnectorContext {
    pub fn watches_all(&self) -> bool {
        self.watched.iter().any(|w| w == "*")
    }
}

/// A chat platform.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Work that must succeed before the daemon reports a successful start (bind a listening
    /// port, check credentials that cannot change). Transient faults (a server that is down)
    /// belong in `run`'s reconnect loop instead.
    async fn prepare(&self) -> Result<(), RunError> {
        Ok(())
    }

    /// Lines `agent-chat-gateway start` prints after a successful start (e.g. a login URL).
    fn startup_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Connects and delivers events until `ctx.cancel` fires. Reconnects by itself; returns
    /// an error only for faults that retrying cannot fix (bad credentials, port in use).
    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError>;

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError>;

    /// Replaces the text of a message posted earlier by [`Connector::post`].
    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let _ = (to, message, text);
        Err(ConnectorError::Unsupported("editing messages"))
    }

    /// Shows or clears "bot is typing" in the room. Best effort.
    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        let _ = (to, on);
        Ok(())
    }

    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let _ = (to, path, caption);
        Err(ConnectorError::Unsupported("uploading files"))
    }

    /// Sends a complete reply, splitting it at the platform's limit on line and code-fence
    /// boundaries. Platforms with a better way for long text (QQ forward messages) override it.
    async fn send_reply(&self, to: &ReplyTarget, text: &str) -> Result<(), ConnectorError> {
        for part in text::split_message(text, self.capabilities().max_message_len) {
            self.post(to, &part).await?;
        }
        Ok(())
    }

    /// Whether this platform answers each message as a request that waits for it (an HTTP
    /// API): the turn's events then go to [`Connector::progress`] and its end to
    /// [`Connector::conclude`], instead of being posted and edited as chat messages.
    fn answers_requests(&self) -> bool {
        false
    }

    /// One event of the turn answering `to` (only when [`Connector::answers_requests`]).
    async fn progress(&self, to: &ReplyTarget, event: &AgentEvent) {
        let _ = (to, event);
    }

    /// The end of the turn answering `to` (only when [`Connector::answers_requests`]).
    async fn conclude(&self, to: &ReplyTarget, end: TurnEnd) {
        let _ = (to, end);
    }

    /// The messages of thread `thread` (its root message id) in `room`, oldest first, at
    /// most the latest `limit`, without the bot's own. Only for [`Capabilities::threads`].
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        let _ = (room, thread, limit);
        Err(ConnectorError::Unsupported("reading threads"))
    }

    /// Where the approval prompts of this connector's rooms are asked.
    fn approvals(&self) -> ApprovalPlace {
        ApprovalPlace::InRoom
    }

    /// Resolves `#channel`, a group name, `@user` (opening a DM) or a raw room id.
    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError>;
}

/// At most `limit` of a thread's `items`, oldest first by `time` (what `thread_history`
/// returns): its root (`is_root`) whenever there is one, since it says what the thread is
/// about, then the latest others.
pub fn latest<T, K: Ord>(
    mut items: Vec<T>,
    limit: usize,
    time: impl Fn(&T) -> K,
    is_root: impl Fn(&T) -> bool,
) -> Vec<T> {
    // The root first whatever its time says (a clock may be off), then by time.
    items.sort_by_key(|m| (!is_root(m), time(m)));
    if items.len() <= limit {
        return items;
    }
    let keep_root = limit > 0 && items.first().is_some_and(&is_root);
    let skip = items.len() - limit;
    let mut rest = items.into_iter();
    let root = if keep_root { rest.next() } else { None };
    root.into_iter().chain(rest.skip(skip)).collect()
}

/// All connectors of the running daemon, by name.
pub type Connectors = std::collections::HashMap<Arc<str>, Arc<dyn Connector>>;

#[cfg(test)]
mod tests {
    #[test]
    fn latest_keeps_the_root_and_the_newest_others() {
        // (id, time); "r" is the root, stamped late by a skewed clock.
        let items = vec![("b", 2), ("r", 9), ("a", 1), ("c", 3), ("d", 4)];
        let ids = |limit| -> Vec<&str> {
            super::latest(items.clone(), limit, |m| m.1, |m| m.0 == "r")
                .into_iter()
                .map(|m| m.0)
                .collect()
        };
        assert_eq!(ids(10), ["r", "a", "b", "c", "d"]);
        assert_eq!(ids(3), ["r", "c", "d"]);
        assert_eq!(ids(1), ["r"]);
        assert!(ids(0).is_empty());
        let no_root = super::latest(vec![3, 1, 2], 2, |n| *n, |_| false);
        assert_eq!(no_root, [2, 3]);
    }
}
