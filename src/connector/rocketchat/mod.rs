//! The Rocket.Chat connector: DDP (WebSocket) for live messages and typing, REST for login,
//! history, posting, editing and files.
//!
//! Owns: the session loop (login → DDP connect → resume login → resolve and subscribe rooms →
//! replay missed messages → live delivery; reconnect with backoff and jitter), dedup and the
//! per-room replay watermark, attachment downloads, and the outbound calls.
//! Must not import: `agent`, `room`, `dispatch` — it speaks only `model` and `connector`.
//!
//! Delivery rules ("nothing lost, nothing twice"):
//! - Every message id seen is remembered in a bounded per-room window; a message already in
//!   the window is never delivered again (duplicate frames, thread-parent updates, reactions,
//!   and edits of messages we already handled all re-send the same `_id`).
//! - Per room, a watermark `(ts, ids at ts)` says "everything before this is settled". It
//!   moves only past messages the dispatcher settled ([`Acceptance::is_settled`]) and is
//!   persisted through the connector store, so a reconnect or a daemon restart replays from
//!   REST history exactly what was not settled. A rejected message lowers the watermark to
//!   itself and freezes it until the next replay.
//! - Edit policy: an edit of a message we already saw (in the window, or older than anything
//!   the window remembers) is ignored. An edited message we never saw (posted and edited
//!   while we were away) is delivered once, with its current text.

pub mod config;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "rocketchat";
mod ddp;
mod normalize;
mod rest;
mod wire;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use self::config::RocketChatConfig;
pub use self::ddp::DdpTimings;
use self::ddp::{DdpClient, DdpError, StreamEvent};
use self::normalize::{BotIdentity, FileRef};
use self::rest::{Rest, RestError};
use self::wire::{
    GetMessageResponse, HistoryResponse, MediaResponse, PostMessageResponse, SettingsResponse,
    SubscriptionsResponse, WireMessage, WireRoom,
};
use crate::connector::files;
use crate::connector::replay::{self, Backoff, SessionEnd};
use crate::connector::{
    Acceptance, Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, RunError,
};

type IdWindow = replay::IdWindow<String>;
type Watermark = replay::Watermark<String>;
use crate::model::{
    Attachment, InboundMessage, PostedMessage, ReplyTarget, RoomKind, RoomRef, ThreadMessage,
};

/// Rocket.Chat's default `Message_MaxAllowedSize`; read from the server when it says.
const DEFAULT_MAX_MESSAGE_LEN: usize = 5000;
/// Message ids remembered per room for dedup.
const DEDUP_WINDOW: usize = 1000;
/// History page size for replay, and the most pages one replay reads.
const HISTORY_PAGE: usize = 100;
const HISTORY_MAX_PAGES: usize = 100;
/// Typing is cosmetic: never hold a reply up for it.
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect and heartbeat timings. The defaults suit production; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct RocketChatTimings {
    pub ddp: DdpTimings,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Default for RocketChatTimings {
    fn default() -> Self {
        RocketChatTimings {
            ddp: DdpTimings::default(),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

pub struct RocketChatConnector {
    name: Arc<str>,
    cfg: RocketChatConfig,
    rest: Rest,
    timings: RocketChatTimings,
    /// The live DDP session, for typing. `None` while disconnected.
    ddp: Mutex<Option<DdpClient>>,
    max_len: AtomicUsize,
    /// Major version from `/api/info`, refreshed on every connect (0 = unknown).
    server_major: AtomicUsize,
    /// Rooms we know the type of (`c`, `p`, `d`), for history and reply decisions.
    known_rooms: Mutex<HashMap<String, KnownRoom>>,
}

#[derive(Clone, Debug)]
struct KnownRoom {
    room: RoomRef,
    /// Rocket.Chat room type letter: picks `channels.*`, `groups.*` or `im.*`.
    t: String,
}

impl RocketChatConnector {
    pub fn new(name: &str, cfg: &RocketChatConfig, runtime_dir: &Path) -> anyhow::Result<Self> {
        // Downloads go to the attachments dir the daemon hands `run`; nothing else is kept.
        let _ = runtime_dir;
        Ok(RocketChatConnector {
            name: name.into(),
            rest: Rest::new(&cfg.server, cfg.auth.clone())?,
            cfg: cfg.clone(),
            timings: RocketChatTimings::default(),
            ddp: Mutex::new(None),
            max_len: AtomicUsize::new(DEFAULT_MAX_MESSAGE_LEN),
            server_major: AtomicUsize::new(0),
            known_rooms: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_timings(mut self, timings: RocketChatTimings) -> Self {
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
        format!("{ws}/websocket")
    }

    fn live_ddp(&self) -> Option<DdpClient> {
        self.ddp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_ddp(&self, client: Option<DdpClient>) {
        *self.ddp.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    fn remember_room(&self, room: &KnownRoom) {
        self.known_rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.room.id.clone(), room.clone());
    }

    fn known_room(&self, rid: &str) -> Option<KnownRoom> {
        self.known_rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rid)
            .cloned()
    }

    /// Reads the server version and the message size limit. Best effort: defaults stay
    /// when the server does not say.
    async fn refresh_server_facts(&self) {
        match self.rest.server_version().await {
            Ok(Some(v)) => {
                let major = v
                    .split('.')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                self.server_major.store(major, Ordering::Relaxed);
            }
            Ok(None) => self.server_major.store(0, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "server version unknown"),
        }
        let q = [("_id", "Message_MaxAllowedSize".to_string())];
        match self
            .rest
            .get::<SettingsResponse>("settings.public", &q)
            .await
        {
            Ok(s) => {
                let limit = s
                    .settings
                    .iter()
                    .find(|s| s.id == "Message_MaxAllowedSize")
                    .and_then(|s| s.value.as_u64());
                if let Some(limit) = limit.filter(|l| *l >= 100) {
                    self.max_len.store(limit as usize, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::debug!(error = %e, "Message_MaxAllowedSize unknown; using 5000"),
        }
    }

    /// Resolves a room spec to a room (`#channel`, group name, `@user`, or a room id).
    async fn resolve(&self, spec: &str) -> Result<KnownRoom, RestError> {
        let bot = self.rest.auth().await?.username;
        let found = if let Some(user) = spec.strip_prefix('@') {
            let v: Value = self
                .rest
                .post("im.create", &json!({"username": user}))
                .await?;
            let room: WireRoom = serde_json::from_value(v.get("room").cloned().unwrap_or_default())
                .map_err(|e| bad("im.create", e))?;
            Some(room)
        } else {
            let name = spec.strip_prefix('#').unwrap_or(spec);
            let mut found = None;
            for (path, key) in [("channels.info", "channel"), ("groups.info", "group")] {
                match self
                    .rest
                    .get::<Value>(path, &[("roomName", name.to_string())])
                    .await
                {
                    Ok(v) => {
                        found = Some(
                            serde_json::from_value(v.get(key).cloned().unwrap_or_default())
                                .map_err(|e| bad(path, e))?,
                        );
                        break;
                    }
                    Err(e) if e.is_not_found() || status_is(&e, 400) => continue,
                    Err(e) => return Err(e),
                }
            }
            if found.is_none() && !spec.starts_with('#') {
                match self
                    .rest
                    .get::<Value>("rooms.info", &[("roomId", spec.to_string())])
                    .await
                {
                    Ok(v) => {
                        found = Some(
                            serde_json::from_value(v.get("room").cloned().unwrap_or_default())
                                .map_err(|e| bad("rooms.info", e))?,
                        )
                    }
                    Err(e) if e.is_not_found() || status_is(&e, 400) => {}
                    Err(e) => return Err(e),
                }
            }
            found
        };
        let room =
            found
                .and_then(|r| known_room_of(&r, &bot))
                .ok_or_else(|| RestError::Status {
                    action: "resolve room".into(),
                    status: 404,
                    detail: format!("no channel, group, user or room id '{spec}'"),
                })?;
        self.remember_room(&room);
        Ok(room)
    }

    /// Posts one message of at most the server's limit.
    async fn post_one(
        &self,
        rid: &str,
        tmid: Option<&str>,
        text: &str,
    ) -> Result<String, ConnectorError> {
        let mut body = json!({"roomId": rid, "text": text});
        if let Some(tmid) = tmid {
            body["tmid"] = json!(tmid);
        }
        let r: PostMessageResponse = self
            .rest
            .post("chat.postMessage", &body)
            .await
            .map_err(|e| connector_error("chat.postMessage", rid, e))?;
        Ok(r.message.id)
    }

    /// The thread a reply goes to: the trigger's thread, or a new thread on the trigger when
    /// `reply_in_thread` is set (group rooms only; a DM thread is noise).
    fn thread_for(&self, to: &ReplyTarget) -> Option<String> {
        if to.thread.is_some() {
            return to.thread.clone();
        }
        let direct = self
            .known_room(&to.room)
            .is_some_and(|r| r.room.kind == RoomKind::Direct);
        (self.cfg.reply_in_thread && !direct)
            .then(|| to.reply_to.clone())
            .flatten()
    }
}

fn bad(action: &str, e: impl std::fmt::Display) -> RestError {
    RestError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    }
}

fn status_is(e: &RestError, code: u16) -> bool {
    matches!(e, RestError::Status { status, .. } if *status == code)
}

fn connector_error(action: &str, room: &str, e: RestError) -> ConnectorError {
    if e.is_not_found() {
        return ConnectorError::RoomNotFound(room.to_string());
    }
    match e {
        RestError::Transport { .. } => ConnectorError::NotConnected(format!("Rocket.Chat ({e})")),
        other => ConnectorError::Rejected {
            platform: "Rocket.Chat",
            action: action.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A room object → the room as the gateway names it. DMs are named after the other user.
fn known_room_of(r: &WireRoom, bot: &str) -> Option<KnownRoom> {
    let id = r.room_id()?.to_string();
    let t = r.t.clone().unwrap_or_else(|| "c".into());
    let kind = if t == "d" {
        RoomKind::Direct
    } else {
        RoomKind::Group
    };
    let name = if kind == RoomKind::Direct {
        let other = r
            .usernames
            .iter()
            .find(|u| u.as_str() != bot)
            .cloned()
            .or_else(|| r.name.clone())
            .or_else(|| r.fname.clone())
            .unwrap_or_else(|| id.clone());
        format!("@{other}")
    } else {
        format!(
            "#{}",
            r.name
                .clone()
                .or_else(|| r.fname.clone())
                .unwrap_or_else(|| id.clone())
        )
    };
    Some(KnownRoom {
        room: RoomRef { id, name, kind },
        t,
    })
}

fn history_path(t: &str) -> &'static str {
    match t {
        "p" => "groups.history",
        "d" => "im.history",
        _ => "channels.history",
    }
}

// ---------------------------------------------------------------------------------------------
// Dedup window and watermark
// ---------------------------------------------------------------------------------------------

/// Persisted as `{"ts", "ids"}` (the state file format of earlier versions).
fn watermark_from_json(v: &Value) -> Option<Watermark> {
    Some(Watermark {
        ts: v.get("ts")?.as_u64()?,
        ids: wire::strings(v.get("ids")),
    })
}

fn watermark_to_json(w: &Watermark) -> Value {
    json!({"ts": w.ts, "ids": w.ids})
}

/// One room being watched, with its delivery state (kept across reconnects).
struct WatchedRoom {
    known: KnownRoom,
    window: IdWindow,
    watermark: Watermark,
    /// A message was rejected: hold the watermark until the next replay.
    frozen: bool,
}

fn watermark_key(rid: &str) -> String {
    format!("watermark:{rid}")
}

// ---------------------------------------------------------------------------------------------
// The session loop
// ---------------------------------------------------------------------------------------------

/// Delivery state that outlives one connection.
struct Runner<'a> {
    conn: &'a RocketChatConnector,
    ctx: &'a ConnectorContext,
    rooms: HashMap<String, WatchedRoom>,
    /// Specs already reported resolved or failed (reported once per run).
    reported: HashSet<String>,
    /// Spec → room id, for specs that resolved.
    resolved: HashMap<String, String>,
    bot: Option<BotIdentity>,
    /// Recent messages the bot posted: a thread reply to one of them addresses the bot.
    own_posts: IdWindow,
}

macro_rules! or_cancel {
    ($ctx:expr, $fut:expr) => {
        tokio::select! {
            r = $fut => r,
            _ = $ctx.cancel.cancelled() => return SessionEnd::Cancelled,
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

    async fn run_session(&mut self) -> SessionEnd {
        let conn = self.conn;
        let ctx = self.ctx;
        let auth = match or_cancel!(ctx, conn.rest.auth()) {
            Ok(a) => a,
            Err(RestError::Unauthorized { detail, .. }) => {
                return SessionEnd::Fatal(RunError::Credentials(format!(
                    "Rocket.Chat at {} rejected the bot's credentials: {detail}",
                    conn.cfg.server
                )))
            }
            Err(e) => return self.lost(false, e),
        };
        self.bot = Some(BotIdentity::new(&auth.user_id, &auth.username));
        or_cancel!(ctx, conn.refresh_server_facts());

        let socket_cancel = ctx.cancel.child_token();
        let url = conn.ws_url();
        let connected = or_cancel!(
            ctx,
            DdpClient::connect(&url, conn.timings.ddp, socket_cancel.clone())
        );
        let (ddp, mut events, task) = match connected {
            Ok(c) => c,
            Err(e) => return self.lost(false, e),
        };
        let end = self.with_socket(&ddp, &mut events, &auth.token).await;
        conn.set_ddp(None);
        drop(ddp);
        socket_cancel.cancel();
        match (task.await, end) {
            // Say why the socket died (no pong, reset by peer) rather than just "lost".
            (Ok(ddp::Closed::Dead(why)), SessionEnd::Lost { was_up, .. }) => SessionEnd::Lost {
                was_up,
                reason: format!("DDP connection lost: {why}"),
            },
            (_, end) => end,
        }
    }

    async fn with_socket(
        &mut self,
        ddp: &DdpClient,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
        token: &str,
    ) -> SessionEnd {
        let conn = self.conn;
        let ctx = self.ctx;
        // Resume with the REST token; if the server forgot it, log in again once.
        let mut login = or_cancel!(ctx, ddp.call("login", json!([{"resume": token}])));
        if let Err(DdpError::Refused(why)) = &login {
            tracing::info!(connector = %conn.name, why, "DDP resume refused; logging in again");
            match or_cancel!(ctx, conn.rest.relogin(Some(token))) {
                Ok(a) => {
                    login = or_cancel!(ctx, ddp.call("login", json!([{"resume": a.token}])));
                }
                Err(RestError::Unauthorized { detail, .. }) => {
                    return SessionEnd::Fatal(RunError::Credentials(format!(
                        "Rocket.Chat rejected the bot's credentials: {detail}"
                    )))
                }
                Err(e) => return self.lost(false, e),
            }
        }
        if let Err(e) = login {
            return self.lost(false, format!("DDP login: {e}"));
        }
        conn.set_ddp(Some(ddp.clone()));

        if let Err(end) = self.resolve_watched().await {
            return end;
        }
        if ctx.watches_all() {
            let bot = self.bot.clone().expect("set before connecting");
            let subs = or_cancel!(
                ctx,
                conn.rest
                    .get::<SubscriptionsResponse>("subscriptions.get", &[])
            );
            match subs {
                Ok(s) => {
                    for r in &s.update {
                        if let Some(k) = known_room_of(r, &bot.username) {
                            conn.remember_room(&k);
                            self.add_room(k);
                        }
                    }
                }
                Err(e) => return self.lost(false, e),
            }
            let key = format!("{}/subscriptions-changed", bot.user_id);
            if let Err(e) = or_cancel!(ctx, ddp.subscribe("stream-notify-user", &key)) {
                return self.lost(false, format!("subscribe {key}: {e}"));
            }
        }
        let rids: Vec<String> = self.rooms.keys().cloned().collect();
        for rid in &rids {
            if let Err(end) = self.baseline(rid).await {
                return end;
            }
            if let Err(end) = self.subscribe_room(ddp, rid).await {
                return end;
            }
        }
        for rid in &rids {
            if let Err(end) = self.replay(rid).await {
                return end;
            }
        }
        // Announced once caught up: from here on, delivery is live.
        ctx.events
            .send(ConnectorEvent::Connection {
                connected: true,
                detail: format!(
                    "connected to {} ({} rooms)",
                    conn.cfg.server,
                    self.rooms.len()
                ),
            })
            .await;
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = ctx.cancel.cancelled() => return SessionEnd::Cancelled,
            };
            let Some(event) = event else {
                return self.lost(true, "DDP connection lost");
            };
            if let Err(end) = self.on_event(ddp, event).await {
                return end;
            }
        }
    }

    /// Resolves every watched spec not resolved yet. Unknown rooms are reported failed
    /// (that watcher stays inactive); transient errors end the session to retry later.
    async fn resolve_watched(&mut self) -> Result<(), SessionEnd> {
        let ctx = self.ctx;
        for spec in ctx.watched.iter().filter(|s| s.as_str() != "*") {
            if let Some(rid) = self.resolved.get(spec) {
                if !self.rooms.contains_key(rid) {
                    if let Some(k) = self.conn.known_room(rid) {
                        self.add_room(k);
                    }
                }
                continue;
            }
            if self.reported.contains(spec) {
                continue;
            }
            let r = tokio::select! {
                r = self.conn.resolve(spec) => r,
                _ = ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
            };
            match r {
                Ok(k) => {
                    self.resolved.insert(spec.clone(), k.room.id.clone());
                    self.reported.insert(spec.clone());
                    ctx.events
                        .send(ConnectorEvent::RoomResolved {
                            spec: spec.clone(),
                            room: k.room.clone(),
                        })
                        .await;
                    self.add_room(k);
                }
                Err(e) if e.is_transient() => return Err(self.lost(false, e)),
                Err(e) => {
                    self.reported.insert(spec.clone());
                    tracing::warn!(connector = %self.conn.name, spec, error = %e, "watched room not found");
                    ctx.events
                        .send(ConnectorEvent::RoomFailed {
                            spec: spec.clone(),
                            error: format!("Rocket.Chat room '{spec}' not found: {e}"),
                        })
                        .await;
                }
            }
        }
        Ok(())
    }

    fn add_room(&mut self, known: KnownRoom) {
        let rid = known.room.id.clone();
        if let Some(r) = self.rooms.get_mut(&rid) {
            r.known = known;
            return;
        }
        let stored = self
            .ctx
            .store
            .get(&watermark_key(&rid))
            .and_then(|v| watermark_from_json(&v));
        let mut window = IdWindow::new(DEDUP_WINDOW);
        let watermark = stored.unwrap_or_default();
        for id in &watermark.ids {
            window.insert(id.clone(), watermark.ts);
        }
        window.floor = watermark.ts;
        self.rooms.insert(
            rid,
            WatchedRoom {
                known,
                window,
                watermark,
                frozen: false,
            },
        );
    }

    async fn subscribe_room(&mut self, ddp: &DdpClient, rid: &str) -> Result<(), SessionEnd> {
        let r = tokio::select! {
            r = ddp.subscribe("stream-room-messages", rid) => r,
            _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
        };
        match r {
            Ok(()) => Ok(()),
            Err(DdpError::Refused(why)) => {
                // The server will not let us read this room: that watcher stays inactive.
                let room = self.rooms.remove(rid);
                let spec = self
                    .resolved
                    .iter()
                    .find(|(_, v)| v.as_str() == rid)
                    .map(|(k, _)| k.clone());
                tracing::warn!(connector = %self.conn.name, rid, why, "subscription refused");
                if let Some(spec) = spec {
                    self.resolved.remove(&spec);
                    self.ctx
                        .events
                        .send(ConnectorEvent::RoomFailed {
                            spec,
                            error: format!(
                                "cannot read {}: {why}",
                                room.map(|r| r.known.room.name)
                                    .unwrap_or_else(|| rid.to_string())
                            ),
                        })
                        .await;
                }
                Ok(())
            }
            Err(e) => Err(self.lost(false, format!("subscribe {rid}: {e}"))),
        }
    }

    /// A room seen for the first time (no stored watermark) starts from its newest message:
    /// the gateway answers what arrives after it starts watching, not the room's past. Runs
    /// before the room is subscribed, so whatever arrives in between is caught by
    /// [`Runner::replay`] from this baseline.
    async fn baseline(&mut self, rid: &str) -> Result<(), SessionEnd> {
        if self.ctx.store.get(&watermark_key(rid)).is_some() {
            return Ok(());
        }
        let Some(room) = self.rooms.get(rid) else {
            return Ok(());
        };
        let path = history_path(&room.known.t);
        let q = [("roomId", rid.to_string()), ("count", "1".to_string())];
        let page = tokio::select! {
            r = self.conn.rest.get::<HistoryResponse>(path, &q) => r,
            _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
        };
        let newest = match page {
            Ok(p) => p.messages.into_iter().next(),
            Err(e) if e.is_transient() => return Err(self.lost(false, e)),
            Err(e) => {
                tracing::warn!(connector = %self.conn.name, rid, error = %e, "history unavailable");
                None
            }
        };
        let Some(room) = self.rooms.get_mut(rid) else {
            return Ok(());
        };
        if let Some(m) = newest.and_then(|v| serde_json::from_value::<WireMessage>(v).ok()) {
            room.window.insert(m.id.clone(), m.ts.0);
            room.window.floor = room.window.floor.max(m.ts.0);
            room.watermark.advance(m.ts.0, &m.id);
        }
        self.ctx
            .store
            .put(&watermark_key(rid), watermark_to_json(&room.watermark));
        Ok(())
    }

    /// Fetches what the room received since its watermark and delivers it oldest first,
    /// through the same path as live messages.
    async fn replay(&mut self, rid: &str) -> Result<(), SessionEnd> {
        let Some(room) = self.rooms.get_mut(rid) else {
            return Ok(());
        };
        room.frozen = false;
        let path = history_path(&room.known.t);
        // Snapshot before any await: live handling may move the watermark meanwhile.
        let since = room.watermark.clone();
        let mut collected: Vec<WireMessage> = Vec::new();
        for page_no in 0..HISTORY_MAX_PAGES {
            let q = [
                ("roomId", rid.to_string()),
                ("oldest", wire::iso_date(since.ts)),
                ("inclusive", "true".to_string()),
                ("count", HISTORY_PAGE.to_string()),
                ("offset", (page_no * HISTORY_PAGE).to_string()),
            ];
            let page = tokio::select! {
                r = self.conn.rest.get::<HistoryResponse>(path, &q) => r,
                _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
            };
            let page = match page {
                Ok(p) => p.messages,
                Err(e) if e.is_transient() => return Err(self.lost(false, e)),
                Err(e) => {
                    tracing::warn!(connector = %self.conn.name, rid, error = %e, "replay skipped");
                    return Ok(());
                }
            };
            let full = page.len() >= HISTORY_PAGE;
            for v in page {
                match serde_json::from_value::<WireMessage>(v) {
                    Ok(m) => collected.push(m),
                    Err(e) => {
                        tracing::warn!(rid, error = %e, "skipping a malformed history message")
                    }
                }
            }
            if !full {
                break;
            }
            if page_no + 1 == HISTORY_MAX_PAGES {
                tracing::warn!(rid, "replay stopped after {} messages", collected.len());
            }
        }
        // History is newest first; paging while messages arrive can repeat some.
        collected.sort_by_key(|m| m.ts);
        let mut seen = HashSet::new();
        collected.retain(|m| seen.insert(m.id.clone()));
        if !collected.is_empty() {
            tracing::info!(connector = %self.conn.name, rid, count = collected.len(), "replaying history");
        }
        for m in collected {
            if m.ts.0 < since.ts || (m.ts.0 == since.ts && since.ids.contains(&m.id)) {
                continue;
            }
            self.handle_message(rid, m).await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, ddp: &DdpClient, event: StreamEvent) -> Result<(), SessionEnd> {
        match event.collection.as_str() {
            "stream-room-messages" => {
                for arg in event.args.into_iter().take(1) {
                    let m: WireMessage = match serde_json::from_value(arg) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping a malformed message event");
                            continue;
                        }
                    };
                    let rid = if self.rooms.contains_key(&event.event_name) {
                        event.event_name.clone()
                    } else {
                        m.rid.clone()
                    };
                    self.handle_message(&rid, m).await?;
                }
            }
            "stream-notify-user" if event.event_name.ends_with("/subscriptions-changed") => {
                let action = event
                    .args
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some(sub) = event
                    .args
                    .get(1)
                    .and_then(|v| serde_json::from_value::<WireRoom>(v.clone()).ok())
                else {
                    return Ok(());
                };
                let bot = self.bot.clone().expect("set before connecting");
                let Some(k) = known_room_of(&sub, &bot.username) else {
                    return Ok(());
                };
                let rid = k.room.id.clone();
                match action {
                    "removed" if self.rooms.remove(&rid).is_some() => {
                        tracing::info!(connector = %self.conn.name, room = %k.room.name, "left room");
                    }
                    "removed" => {}
                    _ if !self.rooms.contains_key(&rid) => {
                        tracing::info!(connector = %self.conn.name, room = %k.room.name, "joined room");
                        self.conn.remember_room(&k);
                        self.add_room(k);
                        self.baseline(&rid).await?;
                        self.subscribe_room(ddp, &rid).await?;
                        self.replay(&rid).await?;
                    }
                    _ => {}
                }
            }
            other => tracing::trace!(collection = other, "ignored stream event"),
        }
        Ok(())
    }

    /// The one path every message takes, live or replayed: dedup, drop own and system
    /// messages, deliver, then move the watermark if the dispatcher settled it.
    async fn handle_message(&mut self, rid: &str, m: WireMessage) -> Result<(), SessionEnd> {
        let bot = self.bot.clone().expect("set before connecting");
        let Some(room) = self.rooms.get_mut(rid) else {
            return Ok(());
        };
        if room.window.contains(&m.id) {
            return Ok(());
        }
        if m.ts.0 < room.window.floor {
            // Older than anything we remember: an edit or update of a message handled long
            // ago (or before this room's watermark). Never processed twice.
            tracing::debug!(rid, id = %m.id, "ignoring an update of an old message");
            return Ok(());
        }
        if m.edited_at.is_some() {
            tracing::debug!(rid, id = %m.id, "an edited message we never saw: delivering it once");
        }
        let settled = match normalize::skip_reason(&m, &bot) {
            Some(reason) => {
                tracing::trace!(rid, id = %m.id, ?reason, "dropped");
                if reason == normalize::Skip::Own {
                    self.own_posts.insert(m.id.clone(), m.ts.0);
                }
                true
            }
            None => {
                let known = room.known.clone();
                let mut msg = normalize::to_inbound(
                    &self.conn.name,
                    &known.room,
                    &m,
                    &bot,
                    self.conn.cfg.mention_all,
                );
                // Answering in the bot's thread is talking to the bot.
                if m.tmid
                    .as_deref()
                    .is_some_and(|t| self.own_posts.contains(t))
                {
                    msg.addressed = true;
                }
                if msg.addressed || !self.conn.cfg.require_mention {
                    let files = normalize::files_of(&m);
                    tokio::select! {
                        _ = self.fetch_attachments(&files, &mut msg) => {}
                        _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
                    }
                }
                // Not raced with `cancel`: a verdict dropped on the way would leave a queued
                // message unsettled here, and a restart would deliver it a second time. The
                // dispatcher always answers (or is gone, which reads as a refusal).
                let verdict = self.ctx.events.deliver(msg).await;
                if let Acceptance::Rejected(why) = &verdict {
                    tracing::warn!(rid, id = %m.id, why, "message rejected; it stays replayable");
                }
                verdict.is_settled()
            }
        };
        let Some(room) = self.rooms.get_mut(rid) else {
            return Ok(());
        };
        if settled {
            room.window.insert(m.id.clone(), m.ts.0);
            if !room.frozen {
                room.watermark.advance(m.ts.0, &m.id);
            }
        } else {
            if m.ts.0 <= room.watermark.ts {
                room.watermark = Watermark {
                    ts: m.ts.0.saturating_sub(1),
                    ids: Vec::new(),
                };
            }
            room.frozen = true;
        }
        self.ctx
            .store
            .put(&watermark_key(rid), watermark_to_json(&room.watermark));
        Ok(())
    }

    /// Downloads a message's files into `<attachments_dir>/<room>/<file id>_<name>`; what
    /// cannot be fetched becomes a note for the agent instead.
    async fn fetch_attachments(&self, files: &[FileRef], msg: &mut InboundMessage) {
        if files.is_empty() {
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
        for f in files {
            if let (Some(size), Some(limit)) = (f.size, limit) {
                if size > limit {
                    msg.notes.push(format!(
                        "Attachment '{}' skipped — {} exceeds {} limit",
                        f.name,
                        files::human_size(size),
                        files::human_size(limit)
                    ));
                    continue;
                }
            }
            let file_name = format!(
                "{}_{}",
                files::sanitize_file_name(&f.id),
                files::sanitize_file_name(&f.name)
            );
            let dest = dir.join(file_name);
            match self
                .conn
                .rest
                .download(&f.link, &dest, limit, self.conn.cfg.download_timeout)
                .await
            {
                Ok(_) => msg.attachments.push(Attachment {
                    name: f.name.clone(),
                    path: dest,
                }),
                Err(rest::DownloadError::TooLarge(size)) => msg.notes.push(format!(
                    "Attachment '{}' skipped — {} exceeds {} limit",
                    f.name,
                    files::human_size(size),
                    files::human_size(limit.unwrap_or(0))
                )),
                Err(rest::DownloadError::TimedOut) => msg.notes.push(format!(
                    "Attachment '{}' failed to download (timed out) — file not available",
                    f.name
                )),
                Err(e) => {
                    tracing::warn!(file = %f.name, error = %e, "attachment download failed");
                    msg.notes.push(format!(
                        "Attachment '{}' failed to download — file not available",
                        f.name
                    ));
                }
            }
        }
    }
}

#[async_trait]
impl Connector for RocketChatConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: true,
            max_message_len: self.max_len.load(Ordering::Relaxed),
            edit: true,
            edit_interval: self.cfg.edit_interval,
        }
    }

    /// Checks the credentials once, so a wrong password fails `start` instead of looping.
    /// A server that cannot be reached is left to `run`'s reconnect loop.
    async fn prepare(&self) -> Result<(), RunError> {
        match self.rest.auth().await {
            Ok(a) => {
                tracing::info!(connector = %self.name, user = %a.username, "logged in to Rocket.Chat");
                // So `capabilities()` reports the server's message limit from the start.
                self.refresh_server_facts().await;
                Ok(())
            }
            Err(RestError::Unauthorized { detail, .. }) => Err(RunError::Credentials(format!(
                "Rocket.Chat at {} rejected the bot's credentials ({detail})",
                self.cfg.server
            ))),
            Err(e) => {
                tracing::warn!(connector = %self.name, error = %e, "Rocket.Chat not reachable yet; will keep trying");
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
            bot: None,
            own_posts: IdWindow::new(DEDUP_WINDOW),
        };
        let backoff = Backoff::new(self.timings.reconnect_initial, self.timings.reconnect_max);
        replay::reconnect("Rocket.Chat", &ctx, backoff, &mut runner).await
    }

    /// Posts `text`; text over the server's limit is split and every part posted (the id
    /// returned is the last part's, the one a streaming edit continues).
    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        let tmid = self.thread_for(to);
        let limit = self.max_len.load(Ordering::Relaxed);
        let mut last = None;
        for part in crate::text::split_message(text, limit) {
            last = Some(self.post_one(&to.room, tmid.as_deref(), &part).await?);
        }
        Ok(PostedMessage {
            id: last.unwrap_or_default(),
        })
    }

    /// `chat.getMessage` (the root) and `chat.getThreadMessages` (the latest replies, asked
    /// newest first), without system messages and without the bot's own but for the root.
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        let auth = self
            .rest
            .auth()
            .await
            .map_err(|e| connector_error("login", room, e))?;
        let bot = BotIdentity::new(&auth.user_id, &auth.username);
        let root = self
            .rest
            .get::<GetMessageResponse>("chat.getMessage", &[("msgId", thread.to_string())])
            .await
            .map_err(|e| connector_error("chat.getMessage", room, e))?;
        let q = [
            ("tmid", thread.to_string()),
            ("count", limit.to_string()),
            ("sort", r#"{"ts":-1}"#.to_string()),
        ];
        let replies = self
            .rest
            .get::<HistoryResponse>("chat.getThreadMessages", &q)
            .await
            .map_err(|e| connector_error("chat.getThreadMessages", room, e))?;
        let messages: Vec<ThreadMessage> = std::iter::once(root.message)
            .chain(replies.messages)
            .filter_map(|v| serde_json::from_value::<WireMessage>(v).ok())
            // A thread is read only in the room it was posted in.
            .filter(|m| m.rid == room)
            .filter_map(|m| {
                let own = match normalize::skip_reason(&m, &bot) {
                    None => false,
                    Some(normalize::Skip::Own) if m.id == thread => true,
                    Some(_) => return None,
                };
                Some(ThreadMessage {
                    sender: normalize::sender_of(&m),
                    text: bot.strip_leading_mention(&m.msg),
                    ts: crate::model::from_epoch_ms(m.ts.0),
                    id: m.id,
                    own,
                })
            })
            .collect();
        let messages = crate::connector::latest(messages, limit, |m| m.ts, |m| m.id == thread);
        Ok(messages)
    }

    /// `chat.update`. An edit cannot grow past the server's limit, so longer text is cut
    /// (the turn runner splits streaming replies using [`Capabilities::max_message_len`]).
    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let limit = self.max_len.load(Ordering::Relaxed);
        let text = if text.chars().count() > limit {
            crate::text::truncate(text, limit.saturating_sub(1))
        } else {
            text.to_string()
        };
        let body = json!({"roomId": to.room, "msgId": message.id, "text": text});
        self.rest
            .post::<Value>("chat.update", &body)
            .await
            .map_err(|e| connector_error("chat.update", &to.room, e))?;
        Ok(())
    }

    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        let Some(ddp) = self.live_ddp() else {
            return Err(ConnectorError::NotConnected("Rocket.Chat".into()));
        };
        let username = self
            .rest
            .auth()
            .await
            .map_err(|e| ConnectorError::NotConnected(format!("Rocket.Chat ({e})")))?
            .username;
        let activity = if on {
            json!(["user-typing"])
        } else {
            json!([])
        };
        let params = json!([format!("{}/user-activity", to.room), username, activity]);
        match tokio::time::timeout(TYPING_TIMEOUT, ddp.call("stream-notify-room", params)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ConnectorError::Other(format!("typing: {e}"))),
            Err(_) => Err(ConnectorError::Other("typing: no answer".into())),
        }
    }

    /// Rocket.Chat 8 uploads in two steps (`rooms.media`, then `rooms.mediaConfirm`); older
    /// servers take one `rooms.upload`, which 8.0 removed. The choice follows the version
    /// from `/api/info`, never a 404 (a real 404 must not look like an old server).
    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let crate::connector::http::Upload { data, name, mime } =
            crate::connector::http::Upload::read(path).await?;
        let tmid = self.thread_for(to);
        let file_part = || {
            reqwest::multipart::Part::bytes(data.clone())
                .file_name(name.clone())
                .mime_str(mime)
                .expect("static mime types parse")
        };
        if self.server_major.load(Ordering::Relaxed) == 0 {
            self.refresh_server_facts().await;
        }
        let rid = &to.room;
        if self.server_major.load(Ordering::Relaxed) >= 8 {
            let media: MediaResponse = self
                .rest
                .post_form(&format!("rooms.media/{rid}"), || {
                    reqwest::multipart::Form::new().part("file", file_part())
                })
                .await
                .map_err(|e| connector_error("rooms.media", rid, e))?;
            let mut body = json!({"msg": caption.unwrap_or("")});
            if let Some(tmid) = &tmid {
                body["tmid"] = json!(tmid);
            }
            self.rest
                .post::<Value>(
                    &format!("rooms.mediaConfirm/{rid}/{}", media.file.id),
                    &body,
                )
                .await
                .map_err(|e| connector_error("rooms.mediaConfirm", rid, e))?;
        } else {
            self.rest
                .post_form::<Value>(&format!("rooms.upload/{rid}"), || {
                    let mut form = reqwest::multipart::Form::new().part("file", file_part());
                    if let Some(c) = caption {
                        form = form.text("msg", c.to_string());
                    }
                    if let Some(tmid) = &tmid {
                        form = form.text("tmid", tmid.clone());
                    }
                    form
                })
                .await
                .map_err(|e| connector_error("rooms.upload", rid, e))?;
        }
        Ok(())
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        match self.resolve(spec).await {
            Ok(k) => Ok(k.room),
            Err(e) if e.is_not_found() => Err(ConnectorError::RoomNotFound(spec.to_string())),
            Err(e) => Err(connector_error("resolve room", spec, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_keeps_its_stored_format() {
        let mut wm = Watermark::default();
        wm.advance(10, &"a".to_string());
        wm.advance(10, &"b".to_string());
        let json = watermark_to_json(&wm);
        assert_eq!(json, json!({"ts": 10, "ids": ["a", "b"]}));
        assert_eq!(watermark_from_json(&json), Some(wm));
    }

    #[test]
    fn websocket_url_follows_the_server_scheme() {
        let mut cfg = RocketChatConfig {
            server: "https://chat.example.com".into(),
            auth: config::RocketChatAuth::Token {
                user_id: "u".into(),
                auth_token: "t".into(),
            },
            mention_all: false,
            reply_in_thread: false,
            require_mention: true,
            max_file_size: None,
            download_timeout: Duration::from_secs(1),
            edit_interval: Duration::from_secs(1),
        };
        let c = RocketChatConnector::new("rc", &cfg, Path::new("/tmp")).unwrap();
        assert_eq!(c.ws_url(), "wss://chat.example.com/websocket");
        cfg.server = "http://127.0.0.1:3000/chat".into();
        let c = RocketChatConnector::new("rc", &cfg, Path::new("/tmp")).unwrap();
        assert_eq!(c.ws_url(), "ws://127.0.0.1:3000/chat/websocket");
    }

    #[test]
    fn dm_rooms_are_named_after_the_other_user() {
        let r: WireRoom =
            serde_json::from_value(json!({"_id":"botuidu1","t":"d","usernames":["bot","alice"]}))
                .unwrap();
        let k = known_room_of(&r, "bot").unwrap();
        assert_eq!(k.room.name, "@alice");
        assert_eq!(k.room.kind, RoomKind::Direct);
        let r: WireRoom =
            serde_json::from_value(json!({"rid":"GENERAL","t":"c","name":"general"})).unwrap();
        assert_eq!(known_room_of(&r, "bot").unwrap().room.name, "#general");
    }
}
