//! The Matrix connector: the client-server API over plain HTTP — `/sync` long-polls for
//! messages and invites, `send` posts and edits (`m.replace`), `/typing`, and the media
//! repository for files.
//!
//! Owns: the session loop (check the token → baseline the sync position on a first start →
//! resolve and join the watched rooms → long-poll `/sync`; reconnect with backoff), joins on
//! invite, dedup and the persisted sync position, attachment downloads, and the outbound
//! calls (threads follow the message: a reply to a threaded message goes to its thread).
//! Must not import: `agent`, `room`, `dispatch` — it speaks only `model` and `connector`.
//!
//! Delivery rules ("nothing lost, nothing twice"):
//! - The `since` token of `/sync` is the watermark. It is persisted (`since` in the connector
//!   store) only after every message of the batch it ends was settled
//!   ([`Acceptance::is_settled`]). When the dispatcher refuses a message (queue full), the
//!   stored token stays before it until the next reconnect: a restart or reconnect syncs
//!   again from there and the refused message comes back.
//! - Every message id delivered is remembered in a bounded per-room [`IdWindow`], persisted
//!   with the token (`window:<room id>`), so the messages a re-sync brings again that were
//!   settled already are never delivered twice.
//! - A first start (no stored token) takes the server's current position without
//!   delivering anything: the gateway answers what arrives after it starts watching.
//! - A timeline that `/sync` marks `limited` (a gap) is completed from `/messages` back to
//!   the first message the window knows.

mod client;
pub mod config;
mod normalize;
mod wire;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "matrix";

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use self::client::{Client, DownloadError, MatrixError};
use self::config::MatrixConfig;
use self::normalize::{BotIdentity, FileRef, Skip};
use self::wire::{MessageContent, RoomEvent, SyncResponse};
use crate::connector::files;
use crate::connector::replay::{self, Backoff, IdWindow, SessionEnd};
use crate::connector::{
    Acceptance, Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, RunError,
};
use crate::model::{
    Attachment, InboundMessage, PostedMessage, ReplyTarget, RoomKind, RoomRef, ThreadMessage,
};

/// Event ids remembered per room for dedup (persisted with the sync token).
const DEDUP_WINDOW: usize = 300;
/// Events one sync returns per room before it marks the timeline `limited`.
const TIMELINE_LIMIT: usize = 50;
/// Pages of `/messages` read to fill one gap, and their size.
const BACKFILL_PAGES: usize = 10;
const BACKFILL_PAGE: usize = 100;
/// Typing is cosmetic: never hold a reply up for it.
const TYPING_TIMEOUT: Duration = Duration::from_secs(5);
const SINCE_KEY: &str = "since";

/// Long-poll and reconnect timings. The defaults suit production; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct MatrixTimings {
    /// How long one `/sync` waits for news.
    pub sync_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Default for MatrixTimings {
    fn default() -> Self {
        MatrixTimings {
            sync_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

pub struct MatrixConnector {
    name: Arc<str>,
    cfg: MatrixConfig,
    client: Client,
    timings: MatrixTimings,
    /// Rooms whose kind and name we know, for replies and `resolve_room`.
    known_rooms: Mutex<HashMap<String, RoomRef>>,
}

impl MatrixConnector {
    pub fn new(name: &str, cfg: &MatrixConfig, runtime_dir: &Path) -> anyhow::Result<Self> {
        // Downloads go to the attachments dir the daemon hands `run`; nothing else is kept.
        let _ = runtime_dir;
        Ok(MatrixConnector {
            name: name.into(),
            client: Client::new(&cfg.homeserver, &cfg.user_id, cfg.auth.clone())?,
            cfg: cfg.clone(),
            timings: MatrixTimings::default(),
            known_rooms: Mutex::new(HashMap::new()),
        })
    }

    pub fn with_timings(mut self, timings: MatrixTimings) -> Self {
        self.timings = timings;
        self
    }

    fn remember_room(&self, room: &RoomRef) {
        self.known_rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.id.clone(), room.clone());
    }

    /// The room as the gateway names it: a 2-member room is a DM (no mention needed);
    /// its name is `name` (the watched spec), else its `m.room.name`, else its id.
    async fn describe_room(&self, id: &str, name: Option<&str>) -> Result<RoomRef, MatrixError> {
        let members = self.client.joined_member_count(id).await?;
        let name = match name {
            Some(n) => n.to_string(),
            None => self
                .client
                .room_name(id)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| id.to_string()),
        };
        let room = RoomRef {
            id: id.to_string(),
            name,
            kind: if members == 2 {
                RoomKind::Direct
            } else {
                RoomKind::Group
            },
        };
        self.remember_room(&room);
        Ok(room)
    }

    /// `!id:server` or `#alias:server` → joined (an invite is accepted by joining) room.
    async fn resolve(&self, spec: &str) -> Result<RoomRef, MatrixError> {
        let id = if spec.starts_with('#') {
            self.client.resolve_alias(spec).await?
        } else if spec.starts_with('!') {
            spec.to_string()
        } else {
            return Err(MatrixError::Status {
                action: "resolve room".into(),
                status: 404,
                errcode: "M_NOT_FOUND".into(),
                detail: format!(
                    "'{spec}' is neither a room id (!id:server) nor an alias (#name:server)"
                ),
            });
        };
        let id = self.client.join(&id).await?;
        let name = spec.starts_with('#').then_some(spec);
        self.describe_room(&id, name).await
    }

    /// `m.relates_to` of a reply: in the trigger's thread when it was in one (with the
    /// trigger as the fallback reply, for clients without threads).
    fn relation(to: &ReplyTarget) -> Option<Value> {
        let root = to.thread.as_ref()?;
        let reply = to.reply_to.as_deref().unwrap_or(root);
        Some(json!({
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": {"event_id": reply},
        }))
    }

    async fn send_message(
        &self,
        to: &ReplyTarget,
        mut content: Value,
    ) -> Result<String, ConnectorError> {
        if let Some(rel) = Self::relation(to) {
            content["m.relates_to"] = rel;
        }
        self.client
            .send(&to.room, "m.room.message", &content)
            .await
            .map_err(|e| connector_error("send", &to.room, e))
    }
}

fn connector_error(action: &str, room: &str, e: MatrixError) -> ConnectorError {
    if e.is_not_found() {
        return ConnectorError::RoomNotFound(room.to_string());
    }
    match e {
        MatrixError::Transport { .. } => ConnectorError::NotConnected(format!("Matrix ({e})")),
        MatrixError::Status { status, .. } if status >= 500 || status == 429 => {
            ConnectorError::NotConnected(format!("Matrix ({e})"))
        }
        other => ConnectorError::Rejected {
            platform: "Matrix",
            action: action.to_string(),
            detail: other.to_string(),
        },
    }
}

/// The sync filter: only messages and membership in the timeline (membership tells DMs
/// from groups), no presence or account data; `limit` events per room.
fn sync_filter(limit: usize) -> String {
    json!({
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "timeline": {"limit": limit, "types": ["m.room.message", "m.room.member"]},
            "state": {"lazy_load_members": true},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    })
    .to_string()
}

fn window_key(room: &str) -> String {
    format!("window:{room}")
}

// ---------------------------------------------------------------------------------------------
// The session loop
// ---------------------------------------------------------------------------------------------

/// One watched room with its dedup window.
struct WatchedRoom {
    room: RoomRef,
    window: IdWindow<String>,
}

/// Delivery state that outlives one connection.
struct Runner<'a> {
    conn: &'a MatrixConnector,
    ctx: &'a ConnectorContext,
    rooms: HashMap<String, WatchedRoom>,
    /// Spec → room id, for specs that resolved.
    resolved: HashMap<String, String>,
    /// Specs reported failed (reported once; retried when an invite arrives).
    failed: HashSet<String>,
    bot: Option<BotIdentity>,
    /// Recent events the bot posted: a reply or thread on one of them addresses the bot.
    own_posts: IdWindow<String>,
    /// A message was refused since this session began: the stored `since` stays put.
    frozen: bool,
}

macro_rules! or_cancel {
    ($ctx:expr, $fut:expr) => {
        tokio::select! {
            r = $fut => r,
            _ = $ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
        }
    };
}

fn lost(was_up: bool, reason: impl std::fmt::Display) -> SessionEnd {
    SessionEnd::Lost {
        was_up,
        reason: reason.to_string(),
    }
}

fn fatal_or_lost(was_up: bool, e: MatrixError) -> SessionEnd {
    match e {
        MatrixError::Unauthorized { detail, .. } => SessionEnd::Fatal(RunError::Credentials(
            format!("the Matrix homeserver rejected the bot's credentials: {detail}"),
        )),
        e => lost(was_up, e),
    }
}

impl replay::Sessions for Runner<'_> {
    fn session(&mut self) -> impl std::future::Future<Output = SessionEnd> + Send {
        self.run_session()
    }
}

impl<'a> Runner<'a> {
    fn bot(&self) -> &BotIdentity {
        self.bot.as_ref().expect("set at the start of a session")
    }

    async fn run_session(&mut self) -> SessionEnd {
        match self.connect_and_sync().await {
            Ok(()) => SessionEnd::Cancelled,
            Err(end) => end,
        }
    }

    async fn connect_and_sync(&mut self) -> Result<(), SessionEnd> {
        let conn = self.conn;
        let ctx = self.ctx;
        self.frozen = false;
        let me = or_cancel!(ctx, conn.client.whoami()).map_err(|e| fatal_or_lost(false, e))?;
        if me != conn.cfg.user_id {
            return Err(SessionEnd::Fatal(RunError::Credentials(format!(
                "the access token belongs to {me}, not to the configured user_id {}",
                conn.cfg.user_id
            ))));
        }
        let display = or_cancel!(ctx, conn.client.display_name(&me))
            .ok()
            .flatten();
        self.bot = Some(BotIdentity::new(&me, display.as_deref()));

        let mut since = ctx
            .store
            .get(SINCE_KEY)
            .and_then(|v| v.as_str().map(str::to_string));
        if since.is_none() {
            // First start: the current position, before any room is joined, so every
            // message after a join is delivered.
            let filter = sync_filter(1);
            let baseline = or_cancel!(ctx, conn.client.sync(None, &filter, Duration::ZERO))
                .map_err(|e| fatal_or_lost(false, e))?;
            ctx.store.put(SINCE_KEY, json!(baseline.next_batch));
            // Invites sent before this start come only in this first sync.
            self.accept_invites(baseline.rooms.invite.keys()).await?;
            since = Some(baseline.next_batch);
        }
        self.resolve_watched().await?;
        ctx.events
            .send(ConnectorEvent::Connection {
                connected: true,
                detail: format!(
                    "connected to {} as {me} ({} rooms)",
                    conn.cfg.homeserver,
                    self.rooms.len()
                ),
            })
            .await;
        let filter = sync_filter(TIMELINE_LIMIT);
        let mut was_up = false;
        loop {
            let batch = or_cancel!(
                ctx,
                conn.client
                    .sync(since.as_deref(), &filter, conn.timings.sync_timeout)
            )
            .map_err(|e| {
                // A token the server refuses outright (its database was reset or replaced)
                // would be refused forever: start over from the current position.
                if let MatrixError::Status { status, .. } = &e {
                    if (400..500).contains(status) && *status != 429 {
                        tracing::warn!(connector = %conn.name, error = %e, "the homeserver refused the stored sync position; starting from its current one");
                        ctx.store.put(SINCE_KEY, Value::Null);
                    }
                }
                fatal_or_lost(was_up, e)
            })?;
            was_up = true;
            let next = batch.next_batch.clone();
            self.handle_sync(batch).await?;
            if !self.frozen {
                ctx.store.put(SINCE_KEY, json!(next));
            }
            since = Some(next);
        }
    }

    /// Whether `room` is one the watchers asked for.
    fn wants(&self, room: &str) -> bool {
        self.ctx.watches_all() || self.resolved.values().any(|r| r == room)
    }

    /// Resolves (and joins) every watched spec not resolved yet. Unknown or forbidden rooms
    /// are reported failed (that watcher stays inactive until an invite lets the bot in);
    /// transient errors end the session to retry later.
    async fn resolve_watched(&mut self) -> Result<(), SessionEnd> {
        let ctx = self.ctx;
        for spec in ctx.watched.iter().filter(|s| s.as_str() != "*") {
            if let Some(id) = self.resolved.get(spec).cloned() {
                if !self.rooms.contains_key(&id) {
                    let r = or_cancel!(ctx, self.conn.describe_room(&id, Some(spec)));
                    self.add_room(r.map_err(|e| fatal_or_lost(false, e))?);
                }
                continue;
            }
            if self.failed.contains(spec) {
                continue;
            }
            match or_cancel!(ctx, self.conn.resolve(spec)) {
                Ok(room) => {
                    self.resolved.insert(spec.clone(), room.id.clone());
                    ctx.events
                        .send(ConnectorEvent::RoomResolved {
                            spec: spec.clone(),
                            room: room.clone(),
                        })
                        .await;
                    self.add_room(room);
                }
                Err(e) if e.is_transient() => return Err(lost(false, e)),
                Err(e @ MatrixError::Unauthorized { .. }) => return Err(fatal_or_lost(false, e)),
                Err(e) => {
                    self.failed.insert(spec.clone());
                    tracing::warn!(connector = %self.conn.name, spec, error = %e, "watched room unavailable");
                    ctx.events
                        .send(ConnectorEvent::RoomFailed {
                            spec: spec.clone(),
                            error: format!("Matrix room '{spec}' unavailable: {e}"),
                        })
                        .await;
                }
            }
        }
        Ok(())
    }

    fn add_room(&mut self, room: RoomRef) {
        if let Some(r) = self.rooms.get_mut(&room.id) {
            r.room = room;
            return;
        }
        let mut window = IdWindow::new(DEDUP_WINDOW);
        if let Some(ids) = self.ctx.store.get(&window_key(&room.id)) {
            for id in ids
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                window.insert(id.to_string(), 0);
            }
        }
        self.rooms
            .insert(room.id.clone(), WatchedRoom { room, window });
    }

    /// Invites: with a `*` watcher every room is joined; otherwise an invite may be what a
    /// failed spec was waiting for, so those are resolved (and joined) again.
    async fn accept_invites(
        &mut self,
        invites: impl Iterator<Item = &String>,
    ) -> Result<(), SessionEnd> {
        let ctx = self.ctx;
        let mut any = false;
        for room_id in invites {
            any = true;
            if !ctx.watches_all() {
                continue;
            }
            tracing::info!(connector = %self.conn.name, room = %room_id, "invited; joining");
            match or_cancel!(ctx, self.conn.client.join(room_id)) {
                Ok(_) => {}
                Err(e) if e.is_transient() => return Err(lost(true, e)),
                Err(e) => {
                    tracing::warn!(connector = %self.conn.name, room = %room_id, error = %e, "cannot join")
                }
            }
        }
        if any {
            self.failed.clear();
        }
        Ok(())
    }

    async fn handle_sync(&mut self, batch: SyncResponse) -> Result<(), SessionEnd> {
        let ctx = self.ctx;
        self.accept_invites(batch.rooms.invite.keys()).await?;
        for room_id in batch.rooms.leave.keys() {
            if let Some(r) = self.rooms.remove(room_id) {
                tracing::info!(connector = %self.conn.name, room = %r.room.name, "left the room (kicked or banned?)");
                // Not joined again until an invite says the bot is welcome.
                let specs: Vec<String> = self
                    .resolved
                    .iter()
                    .filter(|(_, id)| *id == room_id)
                    .map(|(s, _)| s.clone())
                    .collect();
                for spec in specs {
                    self.resolved.remove(&spec);
                    self.failed.insert(spec);
                }
            }
        }
        self.resolve_watched().await?;
        let mut joined: Vec<_> = batch.rooms.join.into_iter().collect();
        joined.sort_by(|a, b| a.0.cmp(&b.0));
        for (room_id, jr) in joined {
            if !self.rooms.contains_key(&room_id) {
                if !self.wants(&room_id) {
                    continue;
                }
                let r = or_cancel!(ctx, self.conn.describe_room(&room_id, None));
                self.add_room(r.map_err(|e| lost(true, e))?);
            }
            let mut events = Vec::new();
            if jr.timeline.limited {
                if let Some(prev) = &jr.timeline.prev_batch {
                    events = self.backfill(&room_id, prev).await?;
                }
            }
            events.extend(jr.timeline.events);
            for ev in events {
                self.handle_event(&room_id, ev).await?;
            }
        }
        Ok(())
    }

    /// The events of a gap before a `limited` timeline, oldest first: back from `from`
    /// until an event the window knows (nothing older is missing). A room whose window is
    /// empty has nothing to complete.
    async fn backfill(&mut self, room_id: &str, from: &str) -> Result<Vec<Value>, SessionEnd> {
        let Some(room) = self.rooms.get(room_id) else {
            return Ok(Vec::new());
        };
        if room.window.ids().next().is_none() {
            return Ok(Vec::new());
        }
        let mut older = Vec::new();
        let mut from = from.to_string();
        'pages: for _ in 0..BACKFILL_PAGES {
            let page = or_cancel!(
                self.ctx,
                self.conn
                    .client
                    .messages_before(room_id, &from, BACKFILL_PAGE)
            )
            .map_err(|e| lost(true, e))?;
            let Some(room) = self.rooms.get(room_id) else {
                break;
            };
            for ev in &page.chunk {
                if ev["event_id"]
                    .as_str()
                    .is_some_and(|id| room.window.contains(id))
                {
                    break 'pages;
                }
                older.push(ev.clone());
            }
            match page.end {
                Some(end) if !page.chunk.is_empty() => from = end,
                _ => break,
            }
        }
        older.reverse();
        tracing::info!(connector = %self.conn.name, room = room_id, count = older.len(), "filled a sync gap");
        Ok(older)
    }

    /// The one path every event takes: dedup, drop what is not for the dispatcher, deliver,
    /// then remember it if the dispatcher settled it.
    async fn handle_event(&mut self, room_id: &str, raw: Value) -> Result<(), SessionEnd> {
        let ev: RoomEvent = match serde_json::from_value(raw) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(room = room_id, error = %e, "skipping a malformed event");
                return Ok(());
            }
        };
        let Some(room) = self.rooms.get(room_id) else {
            return Ok(());
        };
        if room.window.contains(&ev.event_id) {
            return Ok(());
        }
        if ev.kind == "m.room.member" {
            // Someone joined or left: a room may have become (or stopped being) a DM.
            let name = room.room.name.clone();
            let named = (name != room_id).then_some(name);
            match or_cancel!(self.ctx, self.conn.describe_room(room_id, named.as_deref())) {
                Ok(r) => self.add_room(r),
                Err(e) => tracing::debug!(room = room_id, error = %e, "member count unknown"),
            }
            return Ok(());
        }
        let content: MessageContent =
            serde_json::from_value(ev.content.clone()).unwrap_or_default();
        let bot = self.bot().clone();
        // Skipped events never reach the dispatcher, so they need no place in the window
        // (the bot's own streaming edits would crowd the messages out of it).
        let settled = match normalize::skip_reason(&ev, &content, &bot) {
            Some(reason) => {
                tracing::trace!(room = room_id, id = %ev.event_id, ?reason, "dropped");
                if reason == Skip::Own {
                    self.own_posts
                        .insert(ev.event_id.clone(), ev.origin_server_ts);
                }
                return Ok(());
            }
            None => {
                let mut msg =
                    normalize::to_inbound(&self.conn.name, &room.room, &ev, &content, &bot);
                // Answering in the bot's thread, or replying to one of its messages, is
                // talking to the bot.
                let to_bot = |id: Option<String>| id.is_some_and(|id| self.own_posts.contains(&id));
                if to_bot(normalize::thread_of(&content)) || to_bot(normalize::reply_to(&content)) {
                    msg.addressed = true;
                }
                if msg.addressed || !self.conn.cfg.require_mention {
                    if let Some(file) = normalize::file_of(&content) {
                        tokio::select! {
                            _ = self.fetch_attachment(&file, &ev.event_id, &mut msg) => {}
                            _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Cancelled),
                        }
                    }
                }
                // Not raced with `cancel`: a verdict dropped on the way would leave a queued
                // message unsettled here, and a restart would deliver it a second time. The
                // dispatcher always answers (or is gone, which reads as a refusal).
                let verdict = self.ctx.events.deliver(msg).await;
                if let Acceptance::Rejected(why) = &verdict {
                    tracing::warn!(room = room_id, id = %ev.event_id, why, "message refused; it stays replayable");
                }
                verdict.is_settled()
            }
        };
        self.settle(room_id, &ev, settled)
    }

    fn settle(&mut self, room_id: &str, ev: &RoomEvent, settled: bool) -> Result<(), SessionEnd> {
        if !settled {
            self.frozen = true;
            return Ok(());
        }
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.window.insert(ev.event_id.clone(), ev.origin_server_ts);
            let ids: Vec<&String> = room.window.ids().collect();
            self.ctx.store.put(&window_key(room_id), json!(ids));
        }
        Ok(())
    }

    /// Downloads a message's file into `<attachments_dir>/<room>/<event id>_<name>`; what
    /// cannot be fetched becomes a note for the agent instead.
    async fn fetch_attachment(&self, f: &FileRef, event_id: &str, msg: &mut InboundMessage) {
        let limit = self.conn.cfg.max_file_size;
        let too_large = |size: u64| {
            format!(
                "Attachment '{}' skipped — {} exceeds {} limit",
                f.name,
                files::human_size(size),
                files::human_size(limit.unwrap_or(0))
            )
        };
        if let (Some(size), Some(l)) = (f.size, limit) {
            if size > l {
                msg.notes.push(too_large(size));
                return;
            }
        }
        let dir: PathBuf = self
            .ctx
            .attachments_dir
            .join(files::sanitize_file_name(&msg.room.id));
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the attachments folder");
        }
        let dest = dir.join(format!(
            "{}_{}",
            files::sanitize_file_name(event_id),
            files::sanitize_file_name(&f.name)
        ));
        match self
            .conn
            .client
            .download(&f.mxc, &dest, limit, self.conn.cfg.download_timeout)
            .await
        {
            Ok(_) => msg.attachments.push(Attachment {
                name: f.name.clone(),
                path: dest,
            }),
            Err(DownloadError::TooLarge(size)) => msg.notes.push(too_large(size)),
            Err(DownloadError::TimedOut) => msg.notes.push(format!(
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

#[async_trait]
impl Connector for MatrixConnector {
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

    /// Checks the credentials once, so a wrong token fails `start` instead of looping. A
    /// homeserver that cannot be reached is left to `run`'s reconnect loop.
    async fn prepare(&self) -> Result<(), RunError> {
        match self.client.whoami().await {
            Ok(me) if me == self.cfg.user_id => {
                tracing::info!(connector = %self.name, user = %me, "logged in to Matrix");
                Ok(())
            }
            Ok(me) => Err(RunError::Credentials(format!(
                "the Matrix access token belongs to {me}, not to the configured user_id {}",
                self.cfg.user_id
            ))),
            Err(MatrixError::Unauthorized { detail, .. }) => Err(RunError::Credentials(format!(
                "the Matrix homeserver at {} rejected the bot's credentials ({detail})",
                self.cfg.homeserver
            ))),
            Err(e) => {
                tracing::warn!(connector = %self.name, error = %e, "Matrix homeserver not reachable yet; will keep trying");
                Ok(())
            }
        }
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let mut runner = Runner {
            conn: &self,
            ctx: &ctx,
            rooms: HashMap::new(),
            resolved: HashMap::new(),
            failed: HashSet::new(),
            bot: None,
            own_posts: IdWindow::new(DEDUP_WINDOW),
            frozen: false,
        };
        let backoff = Backoff::new(self.timings.reconnect_initial, self.timings.reconnect_max);
        replay::reconnect("Matrix", &ctx, backoff, &mut runner).await
    }

    /// The thread's root and latest events (`/relations`), without notices, edits, redacted
    /// events and the bot's own but for the root (with its latest edit, which the server
    /// bundles: the bot's answers stream by editing); senders by their user id, as in a
    /// turn's own header.
    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        let display = self
            .client
            .display_name(&self.cfg.user_id)
            .await
            .ok()
            .flatten();
        let bot = BotIdentity::new(&self.cfg.user_id, display.as_deref());
        let (root, replies) = self
            .client
            .thread(room, thread, limit)
            .await
            .map_err(|e| connector_error("read the thread", room, e))?;
        let messages: Vec<ThreadMessage> = std::iter::once(root)
            .chain(replies)
            .filter_map(|v| serde_json::from_value::<RoomEvent>(v).ok())
            .filter_map(|ev| {
                let mut c = serde_json::from_value::<MessageContent>(ev.content.clone()).ok()?;
                let own = match normalize::skip_reason(&ev, &c, &bot) {
                    None => false,
                    Some(normalize::Skip::Own) if ev.event_id == thread => {
                        if let Some(latest) = normalize::latest_edit(&ev) {
                            c = latest;
                        }
                        true
                    }
                    Some(_) => return None,
                };
                Some(ThreadMessage {
                    own,
                    text: bot.strip_leading_mention(&normalize::text_of(&c)),
                    ts: crate::model::from_epoch_ms(ev.origin_server_ts),
                    sender: crate::model::Sender {
                        id: ev.sender.clone(),
                        username: ev.sender.clone(),
                        display_name: ev.sender,
                    },
                    id: ev.event_id,
                })
            })
            .collect();
        let messages = crate::connector::latest(messages, limit, |m| m.ts, |m| m.id == thread);
        Ok(messages)
    }

    /// Posts `text` (split at the message limit; the id returned is the last part's, the
    /// one a streaming edit continues), in the trigger's thread when it had one.
    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        let mut last = None;
        for part in crate::text::split_message(text, self.cfg.max_message_len) {
            let content = json!({"msgtype": "m.text", "body": part});
            last = Some(self.send_message(to, content).await?);
        }
        Ok(PostedMessage {
            id: last.unwrap_or_default(),
        })
    }

    /// An `m.replace` event: `m.new_content` is what clients show; the top-level body is
    /// the fallback (`* text`) for clients without edits.
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
        let content = json!({
            "msgtype": "m.text",
            "body": format!("* {text}"),
            "m.new_content": {"msgtype": "m.text", "body": text},
            "m.relates_to": {"rel_type": "m.replace", "event_id": message.id},
        });
        self.client
            .send(&to.room, "m.room.message", &content)
            .await
            .map_err(|e| connector_error("edit", &to.room, e))?;
        Ok(())
    }

    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        match tokio::time::timeout(TYPING_TIMEOUT, self.client.typing(&to.room, on)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnectorError::Other(format!("typing: {e}"))),
            Err(_) => Err(ConnectorError::Other("typing: no answer".into())),
        }
    }

    /// Uploads to the media repository, then posts an `m.image` (for images) or `m.file`
    /// event with the caption as its body and the file name in `filename` (spec 1.10).
    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let crate::connector::http::Upload { data, name, mime } =
            crate::connector::http::Upload::read(path).await?;
        let size = data.len();
        let uri = self
            .client
            .upload(&name, mime, data.into())
            .await
            .map_err(|e| connector_error("upload", &to.room, e))?;
        let msgtype = if mime.starts_with("image/") {
            "m.image"
        } else {
            "m.file"
        };
        let content = json!({
            "msgtype": msgtype,
            "body": caption.filter(|c| !c.is_empty()).unwrap_or(&name),
            "filename": name,
            "url": uri,
            "info": {"mimetype": mime, "size": size},
        });
        self.send_message(to, content).await?;
        Ok(())
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        match self.resolve(spec).await {
            Ok(r) => Ok(r),
            Err(e) if e.is_not_found() => Err(ConnectorError::RoomNotFound(spec.to_string())),
            Err(e) => Err(connector_error("resolve room", spec, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threaded_trigger_gets_a_threaded_reply() {
        let to = ReplyTarget {
            room: "!r:x".into(),
            thread: Some("$root".into()),
            reply_to: Some("$msg".into()),
            mention: None,
        };
        assert_eq!(
            MatrixConnector::relation(&to),
            Some(
                json!({"rel_type": "m.thread", "event_id": "$root", "is_falling_back": true,
                "m.in_reply_to": {"event_id": "$msg"}})
            )
        );
        assert_eq!(MatrixConnector::relation(&ReplyTarget::room("!r:x")), None);
    }

    #[test]
    fn the_filter_keeps_messages_and_membership_only() {
        let f: Value = serde_json::from_str(&sync_filter(50)).unwrap();
        assert_eq!(f["room"]["timeline"]["limit"], 50);
        assert_eq!(
            f["room"]["timeline"]["types"],
            json!(["m.room.message", "m.room.member"])
        );
    }
}
