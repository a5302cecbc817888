//! OneBot V11 connector: QQ through NapCat, Lagrange.OneBot, LLOneBot or go-cqhttp.
//!
//! Owns: the reverse WebSocket server (`server.rs`, the implementation connects to us) and the
//! forward client (`client.rs`), one session loop per socket (`session.rs`, heartbeat
//! watchdog), action calls correlated by `echo` (`link.rs`), events → [`InboundMessage`]
//! (`inbound.rs`, with group context from history in `context.rs`, reply chains as threads
//! in `chains.rs` and downloads in `attach.rs`), replies out (`outbound.rs`: quote + @, splitting, forward messages, images
//! and files as `base64://`), catch-up after reconnects and restarts from history
//! (`replay.rs`), the per-user rate limit (`crate::ratelimit`), wire types
//! (`wire.rs`) and CQ codes (`cq.rs`).
//! Must not import: `agent`, `room`, `dispatch` — it speaks `model` and the connector trait.
//!
//! Rooms are `private:<user_id>` and `group:<group_id>`. Several bots (QQ accounts) may be
//! connected at once; each room is served by the bot that first delivered a message from it
//! (while that bot stays connected), and replies go out through that bot. A second bot in the
//! same group therefore never produces a duplicate turn.

pub mod attach;
mod chains;
mod client;
pub mod config;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "onebot";
mod context;
pub mod cq;
mod inbound;
pub mod link;
mod outbound;
mod replay;
mod server;
mod session;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;

use self::config::{Mode, OneBotConfig};
use self::link::Bots;
use crate::connector::{
    Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, EventSink, RunError,
};
use crate::model::{PostedMessage, ReplyTarget, RoomKind, RoomRef, ThreadMessage};
use crate::ratelimit::RateLimiter;
use crate::state::ConnectorStore;

/// How many of the bot's own sent message ids are remembered to recognise replies to the bot
/// without a `get_msg` round trip.
const OWN_MESSAGE_CACHE: usize = 2000;

/// What `run` hands the shared state: the daemon's side of the connector.
struct Runtime {
    events: EventSink,
    store: ConnectorStore,
    attachments_dir: PathBuf,
    watched: HashSet<String>,
    watch_all: bool,
}

/// A room id parsed into what the actions take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chat {
    Private(i64),
    Group(i64),
}

impl Chat {
    pub fn parse(room: &str) -> Option<Chat> {
        let (kind, id) = room.split_once(':')?;
        let id: i64 = id.parse().ok().filter(|n| *n > 0)?;
        match kind {
            "private" => Some(Chat::Private(id)),
            "group" => Some(Chat::Group(id)),
            _ => None,
        }
    }

    pub fn room_id(self) -> String {
        match self {
            Chat::Private(id) => format!("private:{id}"),
            Chat::Group(id) => format!("group:{id}"),
        }
    }
}

/// (self id, message id) of recently sent messages: a set to look up, a queue to evict.
#[derive(Default)]
struct OwnMessages {
    set: HashSet<(i64, i64)>,
    order: VecDeque<(i64, i64)>,
}

/// State shared by the connector handle, the session loops and the event processors.
struct Inner {
    name: Arc<str>,
    cfg: OneBotConfig,
    bots: Bots,
    /// Room id → self id of the bot that serves it.
    room_bot: Mutex<HashMap<String, i64>>,
    /// (self id, message id) of messages the bots sent, newest last.
    own_messages: Mutex<OwnMessages>,
    /// Reply chains, QQ's threads.
    chains: Mutex<chains::Chains>,
    limiter: Option<RateLimiter<i64>>,
    downloader: attach::Downloader,
    runtime: OnceLock<Runtime>,
    /// The connector's owners and guests: group context shows an addressed message only the
    /// words of people with at least its sender's role (`context.rs`).
    users: crate::config::UserRoles,
}

impl Inner {
    fn room_bot(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.room_bot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_own(&self, self_id: i64, message_id: i64) {
        let mut guard = self.own_messages.lock().unwrap_or_else(|p| p.into_inner());
        let own = &mut *guard;
        if own.set.insert((self_id, message_id)) {
            own.order.push_back((self_id, message_id));
            if own.order.len() > OWN_MESSAGE_CACHE {
                if let Some(old) = own.order.pop_front() {
                    own.set.remove(&old);
                }
            }
        }
    }

    fn chains(&self) -> MutexGuard<'_, chains::Chains> {
        self.chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_own(&self, self_id: i64, message_id: i64) -> bool {
        let guard = self.own_messages.lock().unwrap_or_else(|p| p.into_inner());
        guard.set.contains(&(self_id, message_id))
    }

    /// Tells the dispatcher which bots are online. Best effort (it may be shutting down).
    async fn report_connection(&self, detail: String) {
        if let Some(rt) = self.runtime.get() {
            let connected = !self.bots.connected().is_empty();
            rt.events
                .send(ConnectorEvent::Connection { connected, detail })
                .await;
        }
    }
}

/// The OneBot connector.
pub struct OneBotConnector {
    inner: Arc<Inner>,
    /// Bound by `prepare` so a port in use fails the start; taken by `run`.
    listener: Mutex<Option<TcpListener>>,
    local_addr: Mutex<Option<SocketAddr>>,
}

impl OneBotConnector {
    pub fn new(name: &str, cfg: &OneBotConfig, runtime_dir: &Path) -> anyhow::Result<Self> {
        // Downloads go to the daemon-provided attachments dir; nothing else is kept on disk.
        let _ = runtime_dir;
        Ok(OneBotConnector {
            inner: Arc::new(Inner {
                name: name.into(),
                cfg: cfg.clone(),
                bots: Bots::default(),
                room_bot: Mutex::new(HashMap::new()),
                own_messages: Mutex::default(),
                chains: Mutex::default(),
                limiter: cfg.rate_limit.clone().map(RateLimiter::new),
                downloader: attach::Downloader::new()?,
                runtime: OnceLock::new(),
                users: crate::config::UserRoles::default(),
            }),
            listener: Mutex::new(None),
            local_addr: Mutex::new(None),
        })
    }

    /// The connector's owners and guests (its `allowed_users`), for group context. Without
    /// them nobody has a role, and group context shows only the bot's own lines.
    pub fn with_users(mut self, users: crate::config::UserRoles) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.users = users;
        }
        self
    }

    /// The address the reverse-WS server listens on (after `prepare`), e.g. to learn the
    /// port picked for `127.0.0.1:0`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.local_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Self ids of the bots connected now.
    pub fn connected_bots(&self) -> Vec<i64> {
        self.inner.bots.connected()
    }

    async fn bind(&self) -> Result<(), RunError> {
        let Mode::Listen { addr, .. } = &self.inner.cfg.mode else {
            return Ok(());
        };
        if self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| RunError::Listen {
                who: format!("onebot connector '{}'", self.inner.name),
                addr: *addr,
                error,
            })?;
        let bound = listener.local_addr().map_err(|error| RunError::Io {
            what: "reading the bound address".into(),
            error,
        })?;
        *self.local_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(bound);
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Ok(())
    }
}

fn room_ref(chat: Chat) -> RoomRef {
    RoomRef {
        id: chat.room_id(),
        name: chat.room_id(),
        kind: match chat {
            Chat::Private(_) => RoomKind::Direct,
            Chat::Group(_) => RoomKind::Group,
        },
    }
}

#[async_trait]
impl Connector for OneBotConnector {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: true,
            max_message_len: self.inner.cfg.max_message_length,
            edit: false,
            edit_interval: Duration::from_secs(1),
        }
    }

    async fn prepare(&self) -> Result<(), RunError> {
        self.bind().await
    }

    fn startup_notes(&self) -> Vec<String> {
        match &self.inner.cfg.mode {
            Mode::Listen { path, .. } => match self.local_addr() {
                Some(addr) => vec![format!(
                    "onebot '{}': point NapCat's websocket client at ws://{addr}{path}",
                    self.inner.name
                )],
                None => Vec::new(),
            },
            Mode::Connect { url } => {
                vec![format!(
                    "onebot '{}': connecting to {}",
                    self.inner.name,
                    client::redact(url)
                )]
            }
        }
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let watch_all = ctx.watches_all();
        let mut watched = HashSet::new();
        for spec in ctx.watched.iter().filter(|s| s.as_str() != "*") {
            let event = match Chat::parse(spec) {
                Some(chat) => {
                    watched.insert(chat.room_id());
                    ConnectorEvent::RoomResolved {
                        spec: spec.clone(),
                        room: room_ref(chat),
                    }
                }
                None => ConnectorEvent::RoomFailed {
                    spec: spec.clone(),
                    error: "OneBot rooms are 'group:<group number>' or 'private:<QQ number>'"
                        .into(),
                },
            };
            ctx.events.send(event).await;
        }
        let runtime = Runtime {
            events: ctx.events.clone(),
            store: ctx.store.clone(),
            attachments_dir: ctx.attachments_dir.clone(),
            watched,
            watch_all,
        };
        if self.inner.runtime.set(runtime).is_err() {
            return Err(RunError::AlreadyRunning(self.inner.name.to_string()));
        }
        match self.inner.cfg.mode.clone() {
            Mode::Listen { path, .. } => {
                self.bind().await?;
                // `bind` just stored it and `runtime.set` above lets only one `run` get here.
                let Some(listener) = self
                    .listener
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                else {
                    return Err(RunError::AlreadyRunning(self.inner.name.to_string()));
                };
                server::serve(self.inner.clone(), listener, path, ctx.cancel).await;
            }
            Mode::Connect { url } => {
                client::connect_loop(self.inner.clone(), url, ctx.cancel).await;
            }
        }
        Ok(())
    }

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        self.inner.post(to, text).await
    }

    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        self.inner.upload(to, path, caption).await
    }

    async fn send_reply(&self, to: &ReplyTarget, text: &str) -> Result<(), ConnectorError> {
        self.inner.send_reply(to, text).await
    }

    /// What people said in the reply chain, as this connector saw it, and its root: a root it
    /// does not remember (the bot's own message, one from before a restart) is read with
    /// `get_msg` once and remembered with the chain.
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        let root: i64 = thread
            .parse()
            .map_err(|_| ConnectorError::Other(format!("not a QQ message id: {thread}")))?;
        let seen = self.inner.chains().history(room, root, limit);
        if seen.iter().any(|m| m.id == thread) {
            return Ok(seen);
        }
        let Some(self_id) = self.inner.room_bot().get(room).copied() else {
            return Err(ConnectorError::NotConnected(format!("QQ room {room}")));
        };
        let chat = Chat::parse(room).ok_or_else(|| ConnectorError::RoomNotFound(room.into()))?;
        let Some(q) = inbound::fetch_quoted(&self.inner, self_id, chat, root).await else {
            return Ok(seen);
        };
        let first = ThreadMessage {
            own: q.sender_id == self_id,
            id: root.to_string(),
            sender: crate::model::Sender {
                id: q.sender_id.to_string(),
                username: q.sender_id.to_string(),
                display_name: q.sender_name,
            },
            text: q.text,
            ts: crate::model::from_epoch_ms(q.time.max(0) as u64 * 1000),
        };
        let mut chains = self.inner.chains();
        chains.record(room, root, root, Some(first));
        Ok(chains.history(room, root, limit))
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        Chat::parse(spec)
            .map(room_ref)
            .ok_or_else(|| ConnectorError::RoomNotFound(spec.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_round_trip() {
        assert_eq!(Chat::parse("group:123"), Some(Chat::Group(123)));
        assert_eq!(Chat::parse("private:9"), Some(Chat::Private(9)));
        assert_eq!(Chat::parse("group:abc"), None);
        assert_eq!(Chat::parse("group:-1"), None);
        assert_eq!(Chat::parse("channel:1"), None);
        assert_eq!(Chat::Group(5).room_id(), "group:5");
    }
}
