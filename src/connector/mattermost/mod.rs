//! The Mattermost connector: the WebSocket (`/api/v4/websocket`) for live posts, REST API v4
//! for everything else (who the bot is, rooms, replay, posting, edits, typing, files).
//!
//! Owns: the session loop (`/users/me` → resolve watched rooms → baseline new rooms →
//! WebSocket + `authentication_challenge` → replay missed posts → live delivery; reconnect
//! with backoff and jitter), dedup and the per-channel replay watermark, attachment
//! downloads, and the outbound calls.
//! Must not import: `agent`, `room`, `dispatch` — it speaks only `model` and `connector`.
//!
//! Delivery rules ("nothing lost, nothing twice"), as for Rocket.Chat:
//! - Every post id seen is remembered in a bounded per-channel window; a post already in the
//!   window is never delivered again (a `posted` frame after its replay, `post_edited`).
//! - Per channel, a watermark `(create_at, ids at it)` says "everything before this is
//!   settled". It moves only past posts the dispatcher settled ([`Acceptance::is_settled`])
//!   and is persisted through the connector store, so a reconnect or a restart replays from
//!   `GET /channels/{id}/posts?since=` exactly what was not settled. A rejected post lowers
//!   the watermark to itself and freezes it until the next replay.
//! - Edits: an edit of a post we saw (in the window, or older than anything the window
//!   remembers) is ignored; a post edited before we ever saw it is delivered once.
//! - Roles bind to the immutable `user_id` (26 characters); usernames can be changed.
//! - A group post addresses the bot when the server's `mentions` list names the bot's id or
//!   the text holds `@botname` (a replayed post has only its text); a DM (`D`) always does,
//!   and so does a reply in a thread the bot started.

pub mod config;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "mattermost";
mod rest;
mod wire;
mod ws;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use regex::Regex;
use reqwest::Method;
use serde_json::{json, Value};

use self::config::MattermostConfig;
use self::rest::{Rest, RestError};
use self::wire::{Channel, FileUploadResponse, Post, PostList, Team, User, WsEvent};
pub use self::ws::WsTimings;
use crate::connector::files;
use crate::connector::replay::{self, Backoff, SessionEnd};
use crate::connector::{
    Acceptance, Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, RunError,
};
use crate::model::{
    self, Attachment, InboundMessage, PostedMessage, ReplyTarget, RoomKind, RoomRef, Sender,
    ThreadMessage,
};

type IdWindow = replay::IdWindow<String>;
type Watermark = replay::Watermark<String>;

/// Post ids remembered per channel for dedup.
const DEDUP_WINDOW: usize = 1000;
/// Users remembered (id → name); the cache starts over when it is full.
const USER_CACHE: usize = 5000;
/// Channels of a `*` watcher remembered for replay across restarts.
const MAX_REMEMBERED_ROOMS: usize = 500;
/// `?since=` answers at most this many posts (the server's own cap).
const SINCE_LIMIT: usize = 1000;
/// Page size (the server's maximum) and most pages read when a replay outgrows `since`.
const HISTORY_PAGE: usize = 200;
const HISTORY_MAX_PAGES: usize = 50;
/// Typing is cosmetic: never hold a reply up for it.
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect and heartbeat timings. The defaults suit production; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct MattermostTimings {
    pub ws: WsTimings,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Default for MattermostTimings {
    fn default() -> Self {
        MattermostTimings {
            ws: WsTimings::default(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// Who the bot is on this server (from `/users/me`).
#[derive(Clone, Debug)]
struct BotIdentity {
    user_id: String,
    username: String,
    /// A leading `@bot` mention (stripped from the text).
    leading: Regex,
    /// `@bot` anywhere, as a whole name (`@botty` and `@bot.x` are other users).
    anywhere: Regex,
}

impl BotIdentity {
    fn new(user: &User) -> BotIdentity {
        let name = regex::escape(&user.username);
        BotIdentity {
            user_id: user.id.clone(),
            username: user.username.clone(),
            leading: Regex::new(&format!(r"(?i)^\s*@{name}(?:\s+|[:,\-]\s*|$)"))
                .expect("escaped username makes a valid regex"),
            anywhere: Regex::new(&format!(r"(?i)(?:^|[^\w.\-@])@{name}(?:$|[^\w.\-])"))
                .expect("escaped username makes a valid regex"),
        }
    }

    fn strip_leading_mention(&self, text: &str) -> String {
        match self.leading.find(text) {
            Some(m) => text[m.end()..].to_string(),
            None => text.to_string(),
        }
    }

    fn mentioned_in(&self, text: &str) -> bool {
        self.anywhere.is_match(text)
    }
}

pub struct MattermostConnector {
    name: Arc<str>,
    cfg: MattermostConfig,
    rest: Rest,
    timings: MattermostTimings,
    bot: Mutex<Option<BotIdentity>>,
    /// Channels we know (id → room), for reply decisions (no thread in a DM).
    rooms: Mutex<HashMap<String, RoomRef>>,
    users: Mutex<HashMap<String, User>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MattermostConnector {
    pub fn new(name: &str, cfg: &MattermostConfig, runtime_dir: &Path) -> anyhow::Result<Self> {
        // Downloads go to the attachments dir the daemon hands `run`; nothing else is kept.
        let _ = runtime_dir;
        Ok(MattermostConnector {
            name: name.into(),
            rest: Rest::new(&cfg.server, cfg.token.clone())?,
            cfg: cfg.clone(),
            timings: MattermostTimings::default(),
            bot: Mutex::new(None),
            rooms: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_timings(mut self, timings: MattermostTimings) -> Self {
        self.timings = timings;
        self
    }

    fn ws_url(&self) -> String {
        let base = &self.cfg.server;
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", base.trim_start_matches("http://"))
        };
        format!("{ws}/api/v4/websocket")
    }

    /// The bot's identity, asking `/users/me` the first time.
    async fn bot(&self) -> Result<BotIdentity, RestError> {
        if let Some(b) = lock(&self.bot).clone() {
            return Ok(b);
        }
        let me: User = self.rest.get("users/me", &[]).await?;
        let bot = BotIdentity::new(&me);
        *lock(&self.bot) = Some(bot.clone());
        Ok(bot)
    }

    async fn user(&self, id: &str) -> Result<User, RestError> {
        if let Some(u) = lock(&self.users).get(id).cloned() {
            return Ok(u);
        }
        let u: User = self.rest.get(&format!("users/{id}"), &[]).await?;
        let mut cache = lock(&self.users);
        if cache.len() >= USER_CACHE {
            cache.clear();
        }
        cache.insert(id.to_string(), u.clone());
        Ok(u)
    }

    fn remember_room(&self, room: &RoomRef) {
        lock(&self.rooms).insert(room.id.clone(), room.clone());
    }

    fn known_room(&self, id: &str) -> Option<RoomRef> {
        lock(&self.rooms).get(id).cloned()
    }

    /// A channel → the room as the gateway names it: `#name`, or `@user` for a DM (whose
    /// channel name is `<user id>__<user id>`).
    async fn room_of(&self, ch: &Channel) -> Result<RoomRef, RestError> {
        let room = if ch.kind == "D" {
            let bot = self.bot().await?;
            let other = ch
                .name
                .split("__")
                .find(|id| *id != bot.user_id)
                .unwrap_or(bot.user_id.as_str())
                .to_string();
            let name = match self.user(&other).await {
                Ok(u) => u.username,
                Err(e) if e.is_not_found() => other,
                Err(e) => return Err(e),
            };
            RoomRef {
                id: ch.id.clone(),
                name: format!("@{name}"),
                kind: RoomKind::Direct,
            }
        } else {
            let name = if ch.name.is_empty() { &ch.id } else { &ch.name };
            RoomRef {
                id: ch.id.clone(),
                name: format!("#{name}"),
                kind: RoomKind::Group,
            }
        };
        self.remember_room(&room);
        Ok(room)
    }

    /// The team `#name` specs refer to: the configured one, else the bot's only team.
    async fn team_id(&self) -> Result<String, RestError> {
        if let Some(team) = &self.cfg.team {
            let t: Team = self.rest.get(&format!("teams/name/{team}"), &[]).await?;
            return Ok(t.id);
        }
        let teams: Vec<Team> = self.rest.get("users/me/teams", &[]).await?;
        match teams.as_slice() {
            [one] => Ok(one.id.clone()),
            _ => Err(RestError::Status {
                action: "resolve room".into(),
                status: 404,
                detail: format!(
                    "the bot is in {} teams: set `team` in the connector section",
                    teams.len()
                ),
            }),
        }
    }

    /// Resolves `#channel` (in the team), `@user` (opening the DM) or a raw channel id.
    async fn resolve(&self, spec: &str) -> Result<RoomRef, RestError> {
        let channel: Channel = if let Some(user) = spec.strip_prefix('@') {
            let bot = self.bot().await?;
            let u: User = self
                .rest
                .get(&format!("users/username/{user}"), &[])
                .await?;
            self.rest
                .send_json(Method::POST, "channels/direct", &json!([bot.user_id, u.id]))
                .await?
        } else if let Some(name) = spec.strip_prefix('#') {
            let team = self.team_id().await?;
            self.rest
                .get(&format!("teams/{team}/channels/name/{name}"), &[])
                .await?
        } else {
            self.rest.get(&format!("channels/{spec}"), &[]).await?
        };
        self.room_of(&channel).await
    }

    /// The thread a reply goes to: the trigger's thread, or a new thread on the trigger when
    /// `reply_in_thread` is set (not in DMs).
    fn thread_for(&self, to: &ReplyTarget) -> Option<String> {
        if to.thread.is_some() {
            return to.thread.clone();
        }
        let direct = self
            .known_room(&to.room)
            .is_some_and(|r| r.kind == RoomKind::Direct);
        (self.cfg.reply_in_thread && !direct)
            .then(|| to.reply_to.clone())
            .flatten()
    }

    async fn create_post(
        &self,
        channel: &str,
        root: Option<&str>,
        text: &str,
        file_ids: &[String],
    ) -> Result<String, ConnectorError> {
        let mut body = json!({"channel_id": channel, "message": text});
        if let Some(root) = root {
            body["root_id"] = json!(root);
        }
        if !file_ids.is_empty() {
            body["file_ids"] = json!(file_ids);
        }
        let post: Post = self
            .rest
            .send_json(Method::POST, "posts", &body)
            .await
            .map_err(|e| connector_error("create post", channel, e))?;
        Ok(post.id)
    }
}

fn connector_error(action: &str, room: &str, e: RestError) -> ConnectorError {
    if e.is_not_found() {
        return ConnectorError::RoomNotFound(room.to_string());
    }
    match e {
        RestError::Transport { .. } => ConnectorError::NotConnected(format!("Mattermost ({e})")),
        other => ConnectorError::Rejected {
            platform: "Mattermost",
            action: action.to_string(),
            detail: other.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Dedup window and watermark
// ---------------------------------------------------------------------------------------------

fn watermark_from_json(v: &Value) -> Option<Watermark> {
    Some(Watermark {
        ts: v.get("ts")?.as_u64()?,
        ids: v
            .get("ids")?
            .as_array()?
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
    })
}

fn watermark_to_json(w: &Watermark) -> Value {
    json!({"ts": w.ts, "ids": w.ids})
}

fn watermark_key(channel: &str) -> String {
    format!("watermark:{channel}")
}

/// Adds the posts of a `PostList` to `into` (malformed ones logged and skipped); the oldest
/// `create_at` among them (`u64::MAX` when there are none).
fn collect_posts(channel: &str, list: PostList, into: &mut HashMap<String, Post>) -> u64 {
    let mut oldest = u64::MAX;
    for v in list.posts.into_values() {
        match serde_json::from_value::<Post>(v) {
            Ok(p) => {
                oldest = oldest.min(p.create_at);
                into.insert(p.id.clone(), p);
            }
            Err(e) => tracing::warn!(channel, error = %e, "skipping a malformed post"),
        }
    }
    oldest
}

/// The store key listing the channels a `*` watcher has seen (replayed after a restart).
const ROOMS_KEY: &str = "rooms";

/// One channel being watched, with its delivery state (kept across reconnects).
struct WatchedRoom {
    room: RoomRef,
    window: IdWindow,
    watermark: Watermark,
    /// A post was rejected: hold the watermark until the next replay.
    frozen: bool,
}

// ---------------------------------------------------------------------------------------------
// The session loop
// ---------------------------------------------------------------------------------------------

/// What the `posted` event adds to its post (a replayed post has neither).
#[derive(Default)]
struct LiveFacts {
    mentions: Vec<String>,
}

/// Delivery state that outlives one connection.
struct Runner<'a> {
    conn: &'a MattermostConnector,
    ctx: &'a ConnectorContext,
    rooms: HashMap<String, WatchedRoom>,
    /// Specs already reported resolved or failed (reported once per run).
    reported: HashSet<String>,
    /// Spec → channel id, for specs that resolved.
    resolved: HashMap<String, String>,
    /// Recent posts of the bot: a reply in a thread one of them started addresses the bot.
    own_posts: IdWindow,
}

macro_rules! or_cancel {
    ($ctx:expr, $fut:expr) => {
        tokio::select! {
            r = $fut => r,
            _ = $ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
        }
    };
}

impl replay::Sessions for Runner<'_> {
    fn session(&mut self) -> impl std::future::Future<Output = SessionEnd> + Send {
        self.run_session()
    }
}

impl<'a> Runner<'a> {
    fn lost(&self, was_up: bool, reason: impl std::fmt::Display) -> SessionEnd {
        SessionEnd::Lost {
            was_up,
            reason: reason.to_string(),
        }
    }

    fn credentials(&self, detail: &str) -> SessionEnd {
        SessionEnd::Fatal(RunError::Credentials(format!(
            "Mattermost at {} rejected the bot's token: {detail}",
            self.conn.cfg.server
        )))
    }

    async fn run_session(&mut self) -> SessionEnd {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn session_inner(&mut self) -> Result<std::convert::Infallible, SessionEnd> {
        let conn = self.conn;
        let ctx = self.ctx;
        match or_cancel!(ctx, conn.bot()) {
            Ok(_) => {}
            Err(RestError::Unauthorized { detail, .. }) => return Err(self.credentials(&detail)),
            Err(e) => return Err(self.lost(false, e)),
        }
        self.resolve_watched().await?;
        if ctx.watches_all() {
            self.restore_remembered_rooms().await?;
        }
        let ids: Vec<String> = self.rooms.keys().cloned().collect();
        for id in &ids {
            self.baseline(id).await?;
        }

        let socket_cancel = ctx.cancel.child_token();
        let url = conn.ws_url();
        let connected = or_cancel!(
            ctx,
            ws::connect(
                &url,
                conn.rest.token(),
                conn.timings.ws,
                socket_cancel.clone()
            )
        );
        let (mut events, task) = match connected {
            Ok(c) => c,
            Err(ws::WsError::Refused(why)) => return Err(self.credentials(&why)),
            Err(e) => return Err(self.lost(false, e)),
        };
        let end = self.with_socket(&mut events).await;
        socket_cancel.cancel();
        match (task.await, end) {
            // Say why the socket died (no pong, reset by peer) rather than just "lost".
            (Ok(ws::Closed::Dead(why)), SessionEnd::Lost { was_up, .. }) => Err(SessionEnd::Lost {
                was_up,
                reason: format!("WebSocket lost: {why}"),
            }),
            (_, end) => Err(end),
        }
    }

    async fn with_socket(
        &mut self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<WsEvent>,
    ) -> SessionEnd {
        let ids: Vec<String> = self.rooms.keys().cloned().collect();
        for id in &ids {
            if let Err(end) = self.replay(id).await {
                return end;
            }
        }
        // Announced once caught up: from here on, delivery is live.
        self.ctx
            .events
            .send(ConnectorEvent::Connection {
                connected: true,
                detail: format!(
                    "connected to {} ({} rooms)",
                    self.conn.cfg.server,
                    self.rooms.len()
                ),
            })
            .await;
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = self.ctx.cancel.cancelled() => return SessionEnd::Cancelled,
            };
            let Some(event) = event else {
                return self.lost(true, "WebSocket lost");
            };
            if let Err(end) = self.on_event(event).await {
                return end;
            }
        }
    }

    /// Resolves every watched spec not resolved yet. Unknown rooms are reported failed
    /// (that watcher stays inactive); transient errors end the session to retry later.
    async fn resolve_watched(&mut self) -> Result<(), SessionEnd> {
        let ctx = self.ctx;
        for spec in ctx.watched.iter().filter(|s| s.as_str() != "*") {
            if self.resolved.contains_key(spec) || self.reported.contains(spec) {
                continue;
            }
            match or_cancel!(ctx, self.conn.resolve(spec)) {
                Ok(room) => {
                    self.resolved.insert(spec.clone(), room.id.clone());
                    self.reported.insert(spec.clone());
                    ctx.events
                        .send(ConnectorEvent::RoomResolved {
                            spec: spec.clone(),
                            room: room.clone(),
                        })
                        .await;
                    self.add_room(room);
                }
                Err(RestError::Unauthorized { detail, .. }) => {
                    return Err(self.credentials(&detail))
                }
                Err(e) if e.is_transient() => return Err(self.lost(false, e)),
                Err(e) => {
                    self.reported.insert(spec.clone());
                    tracing::warn!(connector = %self.conn.name, spec, error = %e, "watched room not found");
                    ctx.events
                        .send(ConnectorEvent::RoomFailed {
                            spec: spec.clone(),
                            error: format!("Mattermost room '{spec}' not found: {e}"),
                        })
                        .await;
                }
            }
        }
        Ok(())
    }

    /// A `*` watcher replays the channels it saw before a restart.
    async fn restore_remembered_rooms(&mut self) -> Result<(), SessionEnd> {
        let ids: Vec<String> = self
            .ctx
            .store
            .get(ROOMS_KEY)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for id in ids {
            if self.rooms.contains_key(&id) {
                continue;
            }
            let room = or_cancel!(self.ctx, async {
                let ch: Channel = self.conn.rest.get(&format!("channels/{id}"), &[]).await?;
                self.conn.room_of(&ch).await
            });
            match room {
                Ok(room) => self.add_room(room),
                Err(e) if e.is_transient() => return Err(self.lost(false, e)),
                Err(e) => tracing::info!(channel = %id, error = %e, "a remembered channel is gone"),
            }
        }
        Ok(())
    }

    fn add_room(&mut self, room: RoomRef) {
        let id = room.id.clone();
        if let Some(r) = self.rooms.get_mut(&id) {
            r.room = room;
            return;
        }
        let watermark = self
            .ctx
            .store
            .get(&watermark_key(&id))
            .and_then(|v| watermark_from_json(&v))
            .unwrap_or_default();
        let mut window = IdWindow::new(DEDUP_WINDOW);
        for seen in &watermark.ids {
            window.insert(seen.clone(), watermark.ts);
        }
        window.floor = watermark.ts;
        self.rooms.insert(
            id.clone(),
            WatchedRoom {
                room,
                window,
                watermark,
                frozen: false,
            },
        );
        if self.ctx.watches_all() {
            let mut ids: Vec<String> = self
                .ctx
                .store
                .get(ROOMS_KEY)
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            if !ids.contains(&id) {
                ids.push(id);
                let skip = ids.len().saturating_sub(MAX_REMEMBERED_ROOMS);
                self.ctx.store.put(ROOMS_KEY, json!(ids[skip..]));
            }
        }
    }

    /// A channel seen for the first time (no stored watermark) starts from its newest post:
    /// the gateway answers what arrives after it starts watching, not the channel's past.
    /// Runs before the socket opens, so whatever arrives in between is caught by
    /// [`Runner::replay`] from this baseline.
    async fn baseline(&mut self, id: &str) -> Result<(), SessionEnd> {
        if self.ctx.store.get(&watermark_key(id)).is_some() {
            return Ok(());
        }
        let q = [("page", "0".to_string()), ("per_page", "1".to_string())];
        let path = format!("channels/{id}/posts");
        let newest = match or_cancel!(self.ctx, self.conn.rest.get::<PostList>(&path, &q)) {
            Ok(list) => list
                .order
                .first()
                .and_then(|pid| list.posts.get(pid))
                .and_then(|v| serde_json::from_value::<Post>(v.clone()).ok()),
            Err(e) if e.is_transient() => return Err(self.lost(false, e)),
            Err(e) => {
                tracing::warn!(connector = %self.conn.name, channel = id, error = %e, "history unavailable");
                None
            }
        };
        let Some(room) = self.rooms.get_mut(id) else {
            return Ok(());
        };
        if let Some(p) = newest {
            room.window.insert(p.id.clone(), p.create_at);
            room.window.floor = room.window.floor.max(p.create_at);
            room.watermark.advance(p.create_at, &p.id);
        }
        self.ctx
            .store
            .put(&watermark_key(id), watermark_to_json(&room.watermark));
        Ok(())
    }

    /// Fetches what the channel received since its watermark and delivers it oldest first,
    /// through the same path as live posts.
    async fn replay(&mut self, id: &str) -> Result<(), SessionEnd> {
        let Some(room) = self.rooms.get_mut(id) else {
            return Ok(());
        };
        room.frozen = false;
        // Snapshot before any await: live handling may move the watermark meanwhile.
        let since = room.watermark.clone();
        // `since` selects posts *updated* after it (strictly); a post created at the
        // watermark itself has `update_at >= create_at`, so ask from one millisecond before.
        // The server ignores `since=0` (and answers its default page of 60), so never send it.
        let q = [("since", since.ts.saturating_sub(1).max(1).to_string())];
        let path = format!("channels/{id}/posts");
        let list = match or_cancel!(self.ctx, self.conn.rest.get::<PostList>(&path, &q)) {
            Ok(l) => l,
            Err(e) if e.is_transient() => return Err(self.lost(false, e)),
            Err(e) => {
                tracing::warn!(connector = %self.conn.name, channel = id, error = %e, "replay skipped");
                return Ok(());
            }
        };
        let capped = list.order.len() >= SINCE_LIMIT;
        let mut posts: HashMap<String, Post> = HashMap::new();
        collect_posts(id, list, &mut posts);
        if capped {
            // More was missed than one `since` answer holds: walk the channel newest first
            // until a page reaches the watermark (posts arriving meanwhile only repeat some,
            // which the map absorbs).
            for page in 0..HISTORY_MAX_PAGES {
                let q = [
                    ("page", page.to_string()),
                    ("per_page", HISTORY_PAGE.to_string()),
                ];
                let list = match or_cancel!(self.ctx, self.conn.rest.get::<PostList>(&path, &q)) {
                    Ok(l) => l,
                    Err(e) if e.is_transient() => return Err(self.lost(false, e)),
                    Err(e) => {
                        tracing::warn!(channel = id, error = %e, "replay paging stopped");
                        break;
                    }
                };
                let full = list.order.len() >= HISTORY_PAGE;
                let reached = collect_posts(id, list, &mut posts) < since.ts;
                if reached || !full {
                    break;
                }
                if page + 1 == HISTORY_MAX_PAGES {
                    tracing::warn!(channel = id, "replay stopped after {} posts", posts.len());
                }
            }
        }
        let mut posts: Vec<Post> = posts.into_values().collect();
        posts.sort_by(|a, b| (a.create_at, &a.id).cmp(&(b.create_at, &b.id)));
        if !posts.is_empty() {
            tracing::info!(connector = %self.conn.name, channel = id, count = posts.len(), "replaying posts");
        }
        for p in posts {
            if p.create_at < since.ts || (p.create_at == since.ts && since.ids.contains(&p.id)) {
                continue;
            }
            self.handle_post(id, p, LiveFacts::default()).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, event: WsEvent) -> Result<(), SessionEnd> {
        if !matches!(event.event.as_str(), "posted" | "post_edited") {
            tracing::trace!(event = %event.event, "ignored event");
            return Ok(());
        }
        let post = match event.post() {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "skipping a malformed post event");
                return Ok(());
            }
            None => return Ok(()),
        };
        let id = post.channel_id.clone();
        if !self.rooms.contains_key(&id) {
            if !self.ctx.watches_all() {
                return Ok(());
            }
            let room = match event.channel_type() {
                // The event names a group channel; a DM needs the other user's name.
                Some(t) if t != "D" => {
                    let room = RoomRef {
                        id: id.clone(),
                        name: format!("#{}", event.channel_name().unwrap_or(&id)),
                        kind: RoomKind::Group,
                    };
                    self.conn.remember_room(&room);
                    Ok(room)
                }
                _ => {
                    or_cancel!(self.ctx, async {
                        let ch: Channel =
                            self.conn.rest.get(&format!("channels/{id}"), &[]).await?;
                        self.conn.room_of(&ch).await
                    })
                }
            };
            match room {
                Ok(room) => {
                    tracing::info!(connector = %self.conn.name, room = %room.name, "new room");
                    self.add_room(room);
                }
                Err(e) if e.is_transient() => return Err(self.lost(true, e)),
                Err(e) => {
                    tracing::warn!(channel = %id, error = %e, "cannot read the channel of a post");
                    return Ok(());
                }
            }
        }
        let facts = LiveFacts {
            mentions: event.mentions(),
        };
        self.handle_post(&id, post, facts).await
    }

    /// The one path every post takes, live or replayed: dedup, drop own and system posts,
    /// deliver, then move the watermark if the dispatcher settled it.
    async fn handle_post(
        &mut self,
        channel: &str,
        p: Post,
        facts: LiveFacts,
    ) -> Result<(), SessionEnd> {
        let bot = match self.conn.bot().await {
            Ok(b) => b,
            Err(e) => return Err(self.lost(true, e)),
        };
        let Some(room) = self.rooms.get(channel) else {
            return Ok(());
        };
        if room.window.contains(&p.id) {
            return Ok(());
        }
        if p.create_at < room.window.floor {
            // Older than anything we remember: an edit of a post handled long ago.
            tracing::debug!(channel, id = %p.id, "ignoring an update of an old post");
            return Ok(());
        }
        if p.edit_at > 0 {
            tracing::debug!(channel, id = %p.id, "an edited post we never saw: delivering it once");
        }
        let room_ref = room.room.clone();
        let settled = if p.user_id == bot.user_id {
            self.own_posts.insert(p.id.clone(), p.create_at);
            true
        } else if !p.kind.is_empty() || p.delete_at > 0 {
            tracing::trace!(channel, id = %p.id, kind = %p.kind, "system or deleted post dropped");
            true
        } else {
            let sender = match or_cancel!(self.ctx, self.conn.user(&p.user_id)) {
                Ok(u) => Sender {
                    id: u.id.clone(),
                    display_name: u.display_name(),
                    username: u.username,
                },
                Err(RestError::Unauthorized { detail, .. }) => {
                    return Err(self.credentials(&detail))
                }
                Err(e) if e.is_transient() => return Err(self.lost(true, e)),
                Err(e) => {
                    tracing::warn!(user = %p.user_id, error = %e, "sender unknown; using the id");
                    Sender {
                        id: p.user_id.clone(),
                        username: p.user_id.clone(),
                        display_name: p.user_id.clone(),
                    }
                }
            };
            let in_own_thread = p.thread().is_some_and(|t| self.own_posts.contains(t));
            let addressed = room_ref.kind == RoomKind::Direct
                || facts.mentions.contains(&bot.user_id)
                || bot.mentioned_in(&p.message)
                || in_own_thread;
            let mut msg = InboundMessage {
                connector: self.conn.name.clone(),
                room: room_ref,
                id: p.id.clone(),
                thread: p.thread().map(str::to_string),
                sender,
                text: bot.strip_leading_mention(&p.message),
                addressed,
                attachments: Vec::new(),
                notes: Vec::new(),
                ts: model::from_epoch_ms(p.create_at),
                conversation: None,
            };
            if msg.addressed || !self.conn.cfg.require_mention {
                or_cancel!(self.ctx, self.fetch_attachments(&p, &mut msg));
            }
            // Not raced with `cancel`: a verdict dropped on the way would leave a queued
            // message unsettled here, and a restart would deliver it a second time. The
            // dispatcher always answers (or is gone, which reads as a refusal).
            let verdict = self.ctx.events.deliver(msg).await;
            if let Acceptance::Rejected(why) = &verdict {
                tracing::warn!(channel, id = %p.id, why, "post rejected; it stays replayable");
            }
            verdict.is_settled()
        };
        let Some(room) = self.rooms.get_mut(channel) else {
            return Ok(());
        };
        if settled {
            room.window.insert(p.id.clone(), p.create_at);
            if !room.frozen {
                room.watermark.advance(p.create_at, &p.id);
            }
        } else {
            if p.create_at <= room.watermark.ts {
                room.watermark = Watermark {
                    ts: p.create_at.saturating_sub(1),
                    ids: Vec::new(),
                };
            }
            room.frozen = true;
        }
        self.ctx
            .store
            .put(&watermark_key(channel), watermark_to_json(&room.watermark));
        Ok(())
    }

    /// Downloads a post's files into `<attachments_dir>/<channel>/<file id>_<name>`; what
    /// cannot be fetched becomes a note for the agent instead.
    async fn fetch_attachments(&self, p: &Post, msg: &mut InboundMessage) {
        let infos: Vec<(String, String, Option<u64>)> = match &p.metadata {
            Some(m) if !m.files.is_empty() => m
                .files
                .iter()
                .map(|f| (f.id.clone(), f.name.clone(), f.size))
                .collect(),
            // A post without metadata (older servers over REST) still lists its file ids.
            _ => p
                .file_ids
                .iter()
                .map(|id| (id.clone(), id.clone(), None))
                .collect(),
        };
        if infos.is_empty() {
            return;
        }
        let limit = self.conn.cfg.max_file_size;
        let dir: PathBuf = self
            .ctx
            .attachments_dir
            .join(files::sanitize_file_name(&msg.room.id));
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the attachments folder");
        }
        let too_large = |name: &str, size: u64| {
            format!(
                "Attachment '{name}' skipped — {} exceeds {} limit",
                files::human_size(size),
                files::human_size(limit.unwrap_or(0))
            )
        };
        for (id, name, size) in infos {
            if let (Some(size), Some(l)) = (size, limit) {
                if size > l {
                    msg.notes.push(too_large(&name, size));
                    continue;
                }
            }
            let dest = dir.join(format!(
                "{}_{}",
                files::sanitize_file_name(&id),
                files::sanitize_file_name(&name)
            ));
            match self
                .conn
                .rest
                .download(&id, &dest, limit, self.conn.cfg.download_timeout)
                .await
            {
                Ok(_) => msg.attachments.push(Attachment { name, path: dest }),
                Err(rest::DownloadError::TooLarge(size)) => msg.notes.push(too_large(&name, size)),
                Err(rest::DownloadError::TimedOut) => msg.notes.push(format!(
                    "Attachment '{name}' failed to download (timed out) — file not available"
                )),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "attachment download failed");
                    msg.notes.push(format!(
                        "Attachment '{name}' failed to download — file not available"
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl Connector for MattermostConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: true,
            max_message_len: self.cfg.max_message_len,
            edit: true,
            edit_interval: self.cfg.edit_interval,
        }
    }

    /// Checks the token once, so a wrong one fails `start` instead of looping. A server that
    /// cannot be reached is left to `run`'s reconnect loop.
    async fn prepare(&self) -> Result<(), RunError> {
        match self.bot().await {
            Ok(b) => {
                tracing::info!(connector = %self.name, user = %b.username, "signed in to Mattermost");
                Ok(())
            }
            Err(RestError::Unauthorized { detail, .. }) => Err(RunError::Credentials(format!(
                "Mattermost at {} rejected the bot's token ({detail})",
                self.cfg.server
            ))),
            Err(e) => {
                tracing::warn!(connector = %self.name, error = %e, "Mattermost not reachable yet; will keep trying");
                Ok(())
            }
        }
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let mut runner = Runner {
            conn: &self,
            ctx: &ctx,
            rooms: HashMap::new(),
            reported: HashSet::new(),
            resolved: HashMap::new(),
            own_posts: IdWindow::new(DEDUP_WINDOW),
        };
        let backoff = Backoff::new(self.timings.reconnect_initial, self.timings.reconnect_max);
        replay::reconnect("Mattermost", &ctx, backoff, &mut runner).await
    }

    /// `GET /posts/{root}/thread` (the root and its replies), without system and deleted
    /// posts and without the bot's own but for the root; each author's username from the
    /// user cache.
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        let bot = self
            .bot()
            .await
            .map_err(|e| connector_error("read the bot's user", room, e))?;
        let list: PostList = self
            .rest
            .get(&format!("posts/{thread}/thread"), &[])
            .await
            .map_err(|e| connector_error("read the thread", room, e))?;
        let mut posts = HashMap::new();
        collect_posts(room, list, &mut posts);
        let posts: Vec<Post> = posts
            .into_values()
            // A thread is read only in the channel it was posted in.
            .filter(|p| p.channel_id == room && (p.user_id != bot.user_id || p.id == thread))
            .filter(|p| p.kind.is_empty() && p.delete_at == 0)
            .collect();
        let posts = crate::connector::latest(posts, limit, |p| p.create_at, |p| p.id == thread);
        let mut out = Vec::with_capacity(posts.len());
        for p in posts {
            // An author who cannot be looked up keeps the id as name: a username never
            // matches an `id:` entry, so an unknown author gains no role by it.
            let sender = match self.user(&p.user_id).await {
                Ok(u) => Sender {
                    id: u.id.clone(),
                    display_name: u.display_name(),
                    username: u.username,
                },
                Err(_) => Sender {
                    id: p.user_id.clone(),
                    username: p.user_id.clone(),
                    display_name: p.user_id.clone(),
                },
            };
            out.push(ThreadMessage {
                own: p.user_id == bot.user_id,
                sender,
                text: bot.strip_leading_mention(&p.message),
                ts: model::from_epoch_ms(p.create_at),
                id: p.id,
            });
        }
        Ok(out)
    }

    /// Posts `text`; text over the server's limit is split and every part posted (the id
    /// returned is the last part's, the one a streaming edit continues).
    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        let root = self.thread_for(to);
        let mut last = None;
        for part in crate::text::split_message(text, self.cfg.max_message_len) {
            last = Some(
                self.create_post(&to.room, root.as_deref(), &part, &[])
                    .await?,
            );
        }
        Ok(PostedMessage {
            id: last.unwrap_or_default(),
        })
    }

    /// `PUT /posts/{id}/patch`. An edit cannot grow past the limit, so longer text is cut
    /// (the turn runner splits streaming replies using [`Capabilities::max_message_len`]).
    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let limit = self.cfg.max_message_len;
        let text = if text.chars().count() > limit {
            crate::text::truncate(text, limit.saturating_sub(1))
        } else {
            text.to_string()
        };
        self.rest
            .send_json::<Value>(
                Method::PUT,
                &format!("posts/{}/patch", message.id),
                &json!({"message": text}),
            )
            .await
            .map_err(|e| connector_error("patch post", &to.room, e))?;
        Ok(())
    }

    /// `POST /users/{bot}/typing`. Mattermost has no "stopped typing": clients clear the
    /// indicator after a few seconds, so `on = false` sends nothing.
    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        if !on {
            return Ok(());
        }
        let bot = self
            .bot()
            .await
            .map_err(|e| ConnectorError::NotConnected(format!("Mattermost ({e})")))?;
        let body =
            json!({"channel_id": to.room, "parent_id": self.thread_for(to).unwrap_or_default()});
        let path = format!("users/{}/typing", bot.user_id);
        let call = self.rest.send_json::<Value>(Method::POST, &path, &body);
        match tokio::time::timeout(TYPING_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ConnectorError::Other(format!("typing: {e}"))),
            Err(_) => Err(ConnectorError::Other("typing: no answer".into())),
        }
    }

    /// `POST /files` (multipart, with the channel id), then a post carrying the file id.
    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let crate::connector::http::Upload { data, name, mime } =
            crate::connector::http::Upload::read(path).await?;
        let channel = &to.room;
        let uploaded: FileUploadResponse = self
            .rest
            .post_form("files", || {
                let part = reqwest::multipart::Part::bytes(data.clone())
                    .file_name(name.clone())
                    .mime_str(mime)
                    .expect("static mime types parse");
                // `channel_id` before the files: the server reads the form as a stream and
                // needs to know the channel when the first file arrives.
                reqwest::multipart::Form::new()
                    .text("channel_id", channel.clone())
                    .part("files", part)
            })
            .await
            .map_err(|e| connector_error("upload file", channel, e))?;
        let ids: Vec<String> = uploaded.file_infos.into_iter().map(|f| f.id).collect();
        if ids.is_empty() {
            return Err(ConnectorError::Rejected {
                platform: "Mattermost",
                action: "upload file".into(),
                detail: "the server returned no file".into(),
            });
        }
        let root = self.thread_for(to);
        self.create_post(channel, root.as_deref(), caption.unwrap_or(""), &ids)
            .await?;
        Ok(())
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        match self.resolve(spec).await {
            Ok(room) => Ok(room),
            Err(e) if e.is_not_found() => Err(ConnectorError::RoomNotFound(spec.to_string())),
            Err(e) => Err(connector_error("resolve room", spec, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> BotIdentity {
        BotIdentity::new(&User {
            id: "botid".into(),
            username: "bot".into(),
            first_name: String::new(),
            last_name: String::new(),
            nickname: String::new(),
        })
    }

    #[test]
    fn mentions_by_name_are_whole_names() {
        for (text, mentioned) in [
            ("@bot hi", true),
            ("hey @bot, look", true),
            ("ping @BOT", true),
            ("@botty hi", false),
            ("@bot.x hi", false),
            ("mail bot@bot.example", false),
            ("no mention", false),
        ] {
            assert_eq!(bot().mentioned_in(text), mentioned, "{text}");
        }
        assert_eq!(bot().strip_leading_mention("@bot: do it"), "do it");
        assert_eq!(bot().strip_leading_mention("do it @bot"), "do it @bot");
    }

    #[test]
    fn watermark_round_trips_through_the_store_format() {
        let mut wm = Watermark::default();
        wm.advance(10, &"a".to_string());
        wm.advance(10, &"b".to_string());
        let v = watermark_to_json(&wm);
        assert_eq!(v, json!({"ts": 10, "ids": ["a", "b"]}));
        assert_eq!(watermark_from_json(&v), Some(wm));
    }
}
