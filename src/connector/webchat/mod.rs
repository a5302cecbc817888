//! The local web chat: the gateway's own chat platform, served on 127.0.0.1 by default. A
//! single page (embedded, no external assets) plus a small JSON API and Server-Sent Events.
//!
//! Owns: the [`Connector`] implementation for `type: webchat` — login tokens ([`tokens`]),
//! rooms and their bounded history ([`hub`], kept on disk by [`history`]), files sent either way ([`files`]), the HTTP
//! server ([`server`]), the page (`page.html`) and the API's wire types ([`wire`]).
//! Users are the holders of the tokens; rooms are free-form names, all of kind `Group`; the
//! bot is called [`BOT_NAME`] and a leading `@bot` addresses it. Threads are a top-level
//! message and the replies that name it (see [`hub`]); a reply's `ReplyTarget::thread` puts
//! the bot's message in that thread, and [`Connector::thread_history`] reads a thread from
//! the room's history.
//! Must not import: `agent`, `room`, `dispatch` — messages go out through the event sink and
//! replies come back through `post`/`edit`/`typing`/`upload`.

pub mod config;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "webchat";
pub mod files;
pub mod history;
pub mod hub;
pub mod server;
pub mod tokens;
pub mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::net::TcpListener;

use crate::connector::{
    Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, RunError,
};
use crate::model::{PostedMessage, ReplyTarget, RoomKind, RoomRef, Sender, ThreadMessage};

pub use config::WebchatConfig;
pub use hub::BOT_NAME;

/// Rooms held in memory at once; beyond it the idlest room is forgotten.
pub const MAX_ROOMS: usize = 64;

/// Files users sent are kept this long for the agent (and queued messages) before start-up
/// removes them.
const ATTACHMENT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest text of one bot message; longer replies are split by `send_reply`.
const MAX_MESSAGE_LEN: usize = 16_000;

/// `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub struct WebchatConnector {
    name: Arc<str>,
    listen: SocketAddr,
    require_mention: bool,
    hub: Arc<hub::Hub>,
    files: Arc<files::FileStore>,
    tokens: tokens::Tokens,
    /// Bound by `prepare`, taken by `run`.
    listener: Mutex<Option<TcpListener>>,
    bound: OnceLock<SocketAddr>,
    limits: server::Limits,
}

impl WebchatConnector {
    /// Loads (or generates and stores) the users' tokens. Binding happens in `prepare`.
    pub fn new(
        name: &str,
        config: &WebchatConfig,
        runtime_dir: &Path,
    ) -> anyhow::Result<WebchatConnector> {
        // The name becomes part of file names in the runtime dir (the config only allows
        // such names too).
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            anyhow::bail!(
                "web chat connector name '{name}' must use only letters, digits, '-' and '_'"
            );
        }
        if let Some(user) = config.users.iter().find(|u| *u == BOT_NAME) {
            anyhow::bail!("web chat {name}: the user name '{user}' is reserved for the gateway");
        }
        let tokens =
            tokens::Tokens::load_or_generate(name, &config.tokens, &config.users, runtime_dir)
                .with_context(|| format!("web chat {name}: login tokens"))?;
        let hub = if config.persist_history {
            let path = runtime_dir.join(format!("webchat-{name}.history.jsonl"));
            // The history is a convenience: a journal that cannot be used costs the page
            // its past, never the gateway its start.
            hub::Hub::with_history(config.history_limit, MAX_ROOMS, path.clone()).unwrap_or_else(
                |e| {
                    tracing::warn!(
                        connector = %name,
                        path = %path.display(),
                        error = %e,
                        "web chat history cannot be used; keeping it in memory only"
                    );
                    hub::Hub::new(config.history_limit, MAX_ROOMS)
                },
            )
        } else {
            hub::Hub::new(config.history_limit, MAX_ROOMS)
        };
        let files = files::FileStore::open(
            runtime_dir.join(format!("webchat-{name}.files")),
            files::Limits::default(),
            &hub.file_refs(),
        )
        .with_context(|| format!("web chat {name}: file store"))?;
        Ok(WebchatConnector {
            name: name.into(),
            listen: config.listen,
            require_mention: config.require_mention,
            hub: Arc::new(hub),
            files: Arc::new(files),
            tokens,
            listener: Mutex::new(None),
            bound: OnceLock::new(),
            limits: server::Limits::default(),
        })
    }

    /// Other server bounds than the defaults (tests use short timeouts and small caps).
    pub fn with_limits(mut self, limits: server::Limits) -> WebchatConnector {
        self.limits = limits;
        self
    }

    /// The address the server listens on: the real port once bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.get().copied().unwrap_or(self.listen)
    }

    /// (user, token) pairs, sorted by user.
    pub fn tokens(&self) -> &[(String, String)] {
        self.tokens.entries()
    }

    async fn bind(&self) -> Result<TcpListener, RunError> {
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|error| RunError::Listen {
                who: format!("web chat {}", self.name),
                addr: self.listen,
                error,
            })?;
        let addr = listener.local_addr().map_err(|error| RunError::Io {
            what: "reading the bound address".into(),
            error,
        })?;
        let _ = self.bound.set(addr);
        Ok(listener)
    }

    fn lock_listener(&self) -> std::sync::MutexGuard<'_, Option<TcpListener>> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends an event unless the gateway stops first; false when it is stopping.
async fn send_or_cancelled(ctx: &ConnectorContext, event: ConnectorEvent) -> bool {
    tokio::select! {
        sent = ctx.events.send(event) => sent,
        _ = ctx.cancel.cancelled() => false,
    }
}

fn room_of(to: &ReplyTarget) -> Result<&str, ConnectorError> {
    if valid_room_name(&to.room) {
        Ok(&to.room)
    } else {
        Err(ConnectorError::RoomNotFound(to.room.clone()))
    }
}

/// The thread of a reply target: `None` at the top level. A thread that is not a web chat
/// message id is refused rather than posted at the top level, where it would be out of place.
fn thread_of(to: &ReplyTarget, action: &str) -> Result<Option<u64>, ConnectorError> {
    to.thread
        .as_deref()
        .map(|t| {
            t.parse::<u64>().map_err(|_| ConnectorError::Rejected {
                platform: "webchat",
                action: action.into(),
                detail: format!("thread {t:?} is not a web chat message id"),
            })
        })
        .transpose()
}

/// `http://127.0.0.1:8790/?token=…`, with an unspecified listen address shown as loopback so
/// the link works on the box itself.
fn login_url(addr: SocketAddr, token: &str) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let token: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("http://{host}:{}/?token={token}", addr.port())
}

#[async_trait]
impl Connector for WebchatConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: true,
            max_message_len: MAX_MESSAGE_LEN,
            edit: true,
            // Local and cheap; this only keeps the event streams from flooding the page.
            edit_interval: Duration::from_millis(200),
        }
    }

    async fn prepare(&self) -> Result<(), RunError> {
        if self.lock_listener().is_some() {
            return Ok(());
        }
        let listener = self.bind().await?;
        *self.lock_listener() = Some(listener);
        tracing::info!(connector = %self.name, addr = %self.local_addr(), "web chat listening");
        Ok(())
    }

    fn startup_notes(&self) -> Vec<String> {
        let addr = self.local_addr();
        self.tokens
            .entries()
            .iter()
            .map(|(user, token)| format!("web chat for {user}: {}", login_url(addr, token)))
            .collect()
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let attachments = ctx.attachments_dir.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            files::prune_attachments(&attachments, ATTACHMENT_MAX_AGE)
        })
        .await
        .unwrap_or(0);
        if pruned > 0 {
            tracing::info!(connector = %self.name, pruned, "web chat: removed old attachments");
        }
        let prepared = self.lock_listener().take();
        let listener = match prepared {
            Some(l) => l,
            None => self.bind().await?,
        };
        for spec in ctx.watched.iter().filter(|s| *s != "*") {
            let event = match self.resolve_room(spec).await {
                Ok(room) => {
                    self.hub.mark_watched(&room.id);
                    ConnectorEvent::RoomResolved {
                        spec: spec.clone(),
                        room,
                    }
                }
                Err(e) => ConnectorEvent::RoomFailed {
                    spec: spec.clone(),
                    error: e.to_string(),
                },
            };
            if !send_or_cancelled(&ctx, event).await {
                return Ok(());
            }
        }
        let addr = self.local_addr();
        let up = ConnectorEvent::Connection {
            connected: true,
            detail: format!("serving http://{addr}/"),
        };
        if !send_or_cancelled(&ctx, up).await {
            return Ok(());
        }
        let shared = Arc::new(server::Shared {
            connector: self.name.clone(),
            hub: self.hub.clone(),
            files: self.files.clone(),
            tokens: self.tokens.clone(),
            require_mention: self.require_mention,
            events: ctx.events.clone(),
            cancel: ctx.cancel.clone(),
            attachments_dir: ctx.attachments_dir.clone(),
            limits: self.limits.clone(),
            streams: Arc::default(),
        });
        server::serve(listener, shared).await;
        // The last answers of a stopping gateway are on the page: keep them on disk too.
        self.hub.sync_history().await;
        Ok(())
    }

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        let room = room_of(to)?;
        let thread = thread_of(to, "post")?;
        let message = self.hub.post_bot(room, text, thread);
        Ok(PostedMessage {
            id: message.id.to_string(),
        })
    }

    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let room = room_of(to)?;
        self.hub
            .edit_bot(room, &message.id, text)
            .map(|_| ())
            .map_err(|e| ConnectorError::Rejected {
                platform: "webchat",
                action: "edit".into(),
                detail: e.to_string(),
            })
    }

    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        self.hub
            .set_typing(room_of(to)?, thread_of(to, "typing")?, on);
        Ok(())
    }

    /// Copies the file into the connector's file store and posts a message carrying it
    /// (text: the caption, or the file's name).
    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let room = room_of(to)?;
        let thread = thread_of(to, "upload")?;
        let stored = self.files.store(path).await.map_err(|e| match e {
            files::FileError::Io { path, source } => ConnectorError::Attachment { path, source },
            other => ConnectorError::Rejected {
                platform: "webchat",
                action: "upload".into(),
                detail: other.to_string(),
            },
        })?;
        let text = match caption {
            Some(c) if !c.trim().is_empty() => c.to_string(),
            _ => format!("📎 {}", stored.name),
        };
        let file = hub::FileRef {
            inline: stored.inline(),
            id: stored.id,
            name: stored.name,
            size: stored.size,
        };
        self.hub.post_bot_file(room, &text, file, thread);
        Ok(())
    }

    /// The root and the latest replies of thread `thread` from the room's history, without
    /// the bot's replies (the session has its own words) but with a root that is the bot's
    /// (`own`). A user's author is the login name, as their messages' sender is; the leading
    /// `@bot` is taken off as it is for a message delivered.
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        if !valid_room_name(room) {
            return Err(ConnectorError::RoomNotFound(room.to_string()));
        }
        let root: u64 = thread.parse().map_err(|_| ConnectorError::Rejected {
            platform: "webchat",
            action: "reading the thread".into(),
            detail: format!("thread {thread:?} is not a web chat message id"),
        })?;
        let messages: Vec<hub::Message> = self
            .hub
            .thread(room, root)
            .into_iter()
            .filter(|m| m.from != BOT_NAME || m.id == root)
            .collect();
        let messages = crate::connector::latest(messages, limit, |m| m.id, |m| m.id == root);
        Ok(messages
            .into_iter()
            .map(|m| {
                let own = m.from == BOT_NAME;
                let text = if own {
                    m.text
                } else {
                    server::strip_mention(&m.text).1.to_string()
                };
                ThreadMessage {
                    id: m.id.to_string(),
                    sender: Sender {
                        id: m.from.clone(),
                        username: m.from.clone(),
                        display_name: m.from,
                    },
                    text,
                    ts: m.ts,
                    own,
                }
            })
            .collect())
    }

    /// Rooms exist by name: `lobby` or `#lobby`.
    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        let name = spec.strip_prefix('#').unwrap_or(spec);
        if !valid_room_name(name) {
            return Err(ConnectorError::RoomNotFound(format!(
                "{spec} (web chat rooms are names of 1 to 64 characters among A-Z a-z 0-9 _ . -)"
            )));
        }
        Ok(RoomRef {
            id: name.to_string(),
            name: name.to_string(),
            kind: RoomKind::Group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_documented_pattern() {
        assert!(valid_room_name("lobby"));
        assert!(valid_room_name("team-1.dev_x"));
        assert!(valid_room_name(&"a".repeat(64)));
        assert!(!valid_room_name(&"a".repeat(65)));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("a b"));
        assert!(!valid_room_name("a/b"));
        assert!(!valid_room_name("é"));
    }

    #[test]
    fn login_urls_are_clickable() {
        let addr: SocketAddr = "0.0.0.0:8790".parse().unwrap();
        assert_eq!(
            login_url(addr, "abc-_"),
            "http://127.0.0.1:8790/?token=abc-_"
        );
        let addr: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(login_url(addr, "a+b/c"), "http://[::1]:1/?token=a%2Bb%2Fc");
    }
}
