//! A fake Rocket.Chat server for tests: DDP over WebSocket (`/websocket`) and the REST calls a
//! bot makes, on one 127.0.0.1 port, shaped after `@rocket.chat/core-typings`,
//! `@rocket.chat/rest-typings` and `@rocket.chat/ddp-client` 8.8.1 and the recorded frames of
//! the project's Rocket.Chat reference notes.
//!
//! Owns: an in-memory server (users, rooms, messages, files, tokens) that records every REST
//! request, DDP frame, post, edit, typing call and upload, and knobs for tests: post as a
//! user (live over DDP and stored for history), drop or freeze sockets, stop and restart,
//! deliver a frame twice, edit, post system messages, expire tokens, switch the server
//! version (8.x two-step upload vs 7.x `rooms.upload`). Waiting is event-driven
//! ([`FakeRocketChat::wait_for`]), never polling.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub const BOT_ID: &str = "botuid";
pub const BOT_USER: &str = "bot";
pub const BOT_PASSWORD: &str = "bot-secret";

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub username: String,
    pub name: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct Room {
    pub id: String,
    pub name: String,
    /// `c`, `p` or `d`.
    pub t: String,
    pub members: Vec<String>,
}

/// One REST request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub query: HashMap<String, String>,
    /// JSON body; for multipart, `{"fields":{…},"files":[name,…]}`.
    pub body: Value,
}

#[derive(Clone, Debug)]
pub struct Upload {
    /// `rooms.media` (8.x) or `rooms.upload` (7.x).
    pub api: String,
    pub room: String,
    pub name: String,
    pub bytes: Vec<u8>,
    pub msg: Option<String>,
    pub tmid: Option<String>,
}

struct Conn {
    id: u64,
    out: mpsc::UnboundedSender<String>,
    cancel: CancellationToken,
    /// sub id → (stream name, key).
    subs: HashMap<String, (String, String)>,
    user: Option<String>,
    /// Simulates a half-open socket: nothing is read or answered any more.
    frozen: bool,
}

#[derive(Default)]
pub struct State {
    pub version: String,
    pub max_len: usize,
    pub users: Vec<User>,
    pub rooms: Vec<Room>,
    /// Stored in DDP form (EJSON dates).
    pub messages: Vec<Value>,
    tokens: HashMap<String, String>,
    pub requests: Vec<Recorded>,
    /// Every DDP frame a client sent.
    pub ddp_in: Vec<Value>,
    pub typing: Vec<Value>,
    pub uploads: Vec<Upload>,
    files: HashMap<String, (String, Vec<u8>)>,
    /// Media uploaded with `rooms.media` and not confirmed yet.
    pending_media: HashMap<String, (String, String, Vec<u8>)>,
    conns: Vec<Conn>,
    /// Scripted failures: path → (status, Retry-After seconds) answered before routing.
    failures: HashMap<String, VecDeque<(u16, Option<u64>)>>,
    /// File downloads never answer (to test the download timeout).
    pub stall_downloads: bool,
    /// Successful DDP logins so far (a reconnect adds one).
    pub ddp_logins: usize,
    /// 401s answered so far.
    pub unauthorized: usize,
    next: u64,
    last_ts: u64,
}

impl State {
    fn next_id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:05}", self.next)
    }

    /// A strictly increasing clock, so ordering by `ts` is total like on a real server.
    fn now_ms(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        self.last_ts = now.max(self.last_ts + 1);
        self.last_ts
    }

    fn user(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }

    fn user_by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    fn room(&self, id: &str) -> Option<&Room> {
        self.rooms.iter().find(|r| r.id == id)
    }

    /// Requests to a path, in order.
    pub fn requests_to(&self, path: &str) -> Vec<&Recorded> {
        self.requests.iter().filter(|r| r.path == path).collect()
    }

    /// Messages the bot posted (`chat.postMessage` bodies), in order.
    pub fn posts(&self) -> Vec<Value> {
        self.requests_to("/api/v1/chat.postMessage")
            .into_iter()
            .map(|r| r.body.clone())
            .collect()
    }

    pub fn updates(&self) -> Vec<Value> {
        self.requests_to("/api/v1/chat.update")
            .into_iter()
            .map(|r| r.body.clone())
            .collect()
    }

    pub fn message(&self, id: &str) -> Option<&Value> {
        self.messages.iter().find(|m| m["_id"] == id)
    }

    /// The bot's messages in room `rid` as stored now (edits applied), oldest first.
    pub fn bot_messages(&self, rid: &str) -> Vec<&Value> {
        self.messages
            .iter()
            .filter(|m| m["rid"] == rid && m["u"]["username"] == BOT_USER)
            .collect()
    }

    /// Sends a stream event to every connection subscribed to `(stream, key)`.
    fn broadcast(&self, stream: &str, key: &str, args: Value) {
        let frame = json!({"msg": "changed", "collection": stream, "id": "id",
            "fields": {"eventName": key, "args": args}})
        .to_string();
        for c in &self.conns {
            if c.frozen {
                continue;
            }
            if c.subs.values().any(|(s, k)| s == stream && k == key) {
                let _ = c.out.send(frame.clone());
            }
        }
    }

    fn store_and_emit(&mut self, msg: Value) {
        let rid = msg["rid"].as_str().unwrap_or_default().to_string();
        self.messages.push(msg.clone());
        self.broadcast("stream-room-messages", &rid, json!([msg]));
    }

    fn mentions_of(&self, text: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == ':') {
            let Some(name) = word.strip_prefix('@') else {
                continue;
            };
            match name {
                "all" | "here" => out.push(json!({"_id": name, "username": name})),
                _ => {
                    if let Some(u) = self.user(name) {
                        out.push(json!({"_id": u.id, "username": u.username, "name": u.name, "type": "user"}));
                    }
                }
            }
        }
        out
    }

    fn new_message(&mut self, rid: &str, username: &str, text: &str) -> Value {
        let u = self.user(username).cloned().expect("known user");
        let id = self.next_id("m");
        let ts = self.now_ms();
        json!({"_id": id, "rid": rid, "msg": text, "ts": {"$date": ts},
            "u": {"_id": u.id, "username": u.username, "name": u.name},
            "mentions": self.mentions_of(text), "channels": [], "_updatedAt": {"$date": ts}, "md": []})
    }
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change and wakes every waiter.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state());
        self.changed.notify_waiters();
        r
    }
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub struct FakeRocketChat {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl FakeRocketChat {
    /// Starts a server with the bot, users `alice` (owner in tests), `bob` and `carol`, a
    /// public channel `general` (id `GENERAL`), a private group `secret` (`SECRET`) the bot
    /// is in, and a channel `lounge` (`LOUNGE`) it is not in.
    pub async fn start() -> FakeRocketChat {
        let mut state = State {
            version: "8.5.1".into(),
            max_len: 5000,
            ..Default::default()
        };
        for (id, username, name, password) in [
            (BOT_ID, BOT_USER, "Bot", BOT_PASSWORD),
            ("u-alice", "alice", "Alice", "a"),
            ("u-bob", "bob", "Bob", "b"),
            ("u-carol", "carol", "Carol", "c"),
        ] {
            state.users.push(User {
                id: id.into(),
                username: username.into(),
                name: name.into(),
                password: password.into(),
            });
        }
        let everyone = vec![
            "bot".to_string(),
            "alice".into(),
            "bob".into(),
            "carol".into(),
        ];
        state.rooms.push(Room {
            id: "GENERAL".into(),
            name: "general".into(),
            t: "c".into(),
            members: everyone.clone(),
        });
        state.rooms.push(Room {
            id: "SECRET".into(),
            name: "secret".into(),
            t: "p".into(),
            members: everyone,
        });
        state.rooms.push(Room {
            id: "LOUNGE".into(),
            name: "lounge".into(),
            t: "c".into(),
            members: vec!["alice".into()],
        });
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            changed: Notify::new(),
        });
        // Not port 0: `restart` binds the same port again, and an ephemeral port could be
        // taken by another test's bind(0) while this server is down.
        // A probed port can still be taken before the bind (by a process outside this one):
        // another port then, a few times.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", super::ports::free_port())).await {
                Ok(l) => break l,
                Err(e) if attempts < 5 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    attempts += 1
                }
                Err(e) => panic!("bind a free 127.0.0.1 port: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let running = serve(listener, inner.clone());
        FakeRocketChat {
            inner,
            addr,
            running: Mutex::new(Some(running)),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    /// Waits (event-driven) until `cond` holds, panicking with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.inner.state()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// Waits until the bot has a message in `rid` whose (possibly edited) text contains
    /// `needle`, and returns it.
    pub async fn bot_message_containing(&self, rid: &str, needle: &str, limit: Duration) -> Value {
        let find = |s: &State| {
            s.bot_messages(rid)
                .into_iter()
                .find(|m| m["msg"].as_str().is_some_and(|t| t.contains(needle)))
                .cloned()
        };
        self.wait_for(
            &format!("a bot message containing {needle:?}"),
            limit,
            |s| find(s).is_some(),
        )
        .await;
        find(&self.state()).unwrap()
    }

    /// Stops listening and drops every connection (like a server going down). Stored data
    /// stays, as it would in the database.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            r.cancel.cancel();
            let _ = r.task.await;
        }
        self.inner.update(|s| s.conns.clear());
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        // The old listener's sockets may take a moment to be released by the kernel after
        // the server task ended (seen under load as EADDRINUSE): retry briefly.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind the same port: {e}"),
            }
        };
        let running = serve(listener, self.inner.clone());
        *self.running.lock().unwrap() = Some(running);
    }

    /// Drops every WebSocket abruptly (no close frame), as a network fault would.
    pub fn drop_sockets(&self) {
        self.inner.update(|s| {
            for c in s.conns.drain(..) {
                c.cancel.cancel();
            }
        });
    }

    /// Makes every open socket half-open: frames are no longer read or answered.
    pub fn freeze_sockets(&self) {
        self.inner
            .update(|s| s.conns.iter_mut().for_each(|c| c.frozen = true));
    }

    pub fn stall_downloads(&self) {
        self.inner.update(|s| s.stall_downloads = true);
    }

    pub fn set_version(&self, version: &str) {
        self.inner.update(|s| s.version = version.to_string());
    }

    pub fn set_max_len(&self, n: usize) {
        self.inner.update(|s| s.max_len = n);
    }

    /// Issues a token for the bot without a login, like a personal access token.
    pub fn personal_access_token(&self) -> String {
        self.inner.update(|s| {
            let token = s.next_id("pat-");
            s.tokens.insert(token.clone(), BOT_ID.to_string());
            token
        })
    }

    /// Forgets every issued token: the next authenticated REST call gets a 401.
    pub fn expire_tokens(&self) {
        self.inner.update(|s| s.tokens.clear());
    }

    /// The next request to `path` (e.g. `/api/v1/chat.postMessage`) is answered with
    /// `status` (and `Retry-After` when given) instead of being served.
    pub fn fail_next(&self, path: &str, status: u16, retry_after: Option<u64>) {
        self.inner.update(|s| {
            s.failures
                .entry(path.to_string())
                .or_default()
                .push_back((status, retry_after))
        });
    }

    /// A user posts `text` in `rid` (mentions computed from `@names` like the server does).
    pub fn post(&self, rid: &str, username: &str, text: &str) -> String {
        self.post_with(rid, username, text, |_| {})
    }

    pub fn post_in_thread(&self, rid: &str, username: &str, text: &str, tmid: &str) -> String {
        let tmid = tmid.to_string();
        self.post_with(rid, username, text, move |m| m["tmid"] = json!(tmid))
    }

    /// Posts a message after letting `edit` adjust the document.
    pub fn post_with(
        &self,
        rid: &str,
        username: &str,
        text: &str,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        self.inner.update(|s| {
            let mut m = s.new_message(rid, username, text);
            edit(&mut m);
            let id = m["_id"].as_str().unwrap().to_string();
            s.store_and_emit(m);
            id
        })
    }

    /// A user uploads a file with a caption; `declared_size` overrides the size the message
    /// advertises (to test the size check before download).
    pub fn post_file(
        &self,
        rid: &str,
        username: &str,
        caption: &str,
        name: &str,
        bytes: &[u8],
    ) -> String {
        let bytes = bytes.to_vec();
        let name = name.to_string();
        let caption = caption.to_string();
        self.inner.update(|s| {
            let file_id = s.next_id("f");
            let size = bytes.len();
            s.files.insert(file_id.clone(), (name.clone(), bytes));
            let mut m = s.new_message(rid, username, "");
            m["mentions"] = json!(s.mentions_of(&caption));
            m["file"] = json!({"_id": file_id, "name": name, "type": "application/octet-stream"});
            m["files"] = json!([{"_id": file_id, "name": name, "type": "application/octet-stream", "size": size, "format": ""}]);
            m["attachments"] = json!([{"type": "file", "title": name, "title_link": format!("/file-upload/{file_id}/{name}"),
                "title_link_download": true, "description": caption}]);
            let id = m["_id"].as_str().unwrap().to_string();
            s.store_and_emit(m);
            id
        })
    }

    /// A system message (`t` set), e.g. `uj` for a join.
    pub fn post_system(&self, rid: &str, username: &str, t: &str) -> String {
        let t = t.to_string();
        self.post_with(rid, username, username, move |m| m["t"] = json!(t))
    }

    /// Edits a message in place and re-emits it, as Rocket.Chat does (same `_id`, `editedAt`).
    pub fn edit(&self, id: &str, text: &str) {
        self.inner.update(|s| {
            let ts = s.now_ms();
            let m = s
                .messages
                .iter_mut()
                .find(|m| m["_id"] == id)
                .expect("message exists");
            m["msg"] = json!(text);
            m["editedAt"] = json!({"$date": ts});
            m["editedBy"] = json!({"_id": m["u"]["_id"], "username": m["u"]["username"]});
            m["_updatedAt"] = json!({"$date": ts});
            let m = m.clone();
            let rid = m["rid"].as_str().unwrap().to_string();
            s.broadcast("stream-room-messages", &rid, json!([m]));
        });
    }

    /// Sends the stored frame of a message again (duplicate delivery).
    pub fn redeliver(&self, id: &str) {
        self.inner.update(|s| {
            let m = s.message(id).cloned().expect("message exists");
            let rid = m["rid"].as_str().unwrap().to_string();
            s.broadcast("stream-room-messages", &rid, json!([m]));
        });
    }

    /// Removes the bot from a room: its subscriptions to the room end (`nosub`) and it is told
    /// through `<uid>/subscriptions-changed`.
    pub fn remove_bot_from(&self, rid: &str) {
        self.inner.update(|s| {
            let room = s
                .rooms
                .iter_mut()
                .find(|r| r.id == rid)
                .expect("room exists");
            room.members.retain(|m| m != BOT_USER);
            let sub =
                json!({"_id": format!("sub-{rid}"), "rid": rid, "name": room.name, "t": room.t});
            for c in &mut s.conns {
                let ended: Vec<String> = c
                    .subs
                    .iter()
                    .filter(|(_, (stream, key))| stream == "stream-room-messages" && key == rid)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ended {
                    c.subs.remove(&id);
                    let _ = c.out.send(json!({"msg": "nosub", "id": id}).to_string());
                }
            }
            s.broadcast(
                "stream-notify-user",
                &format!("{BOT_ID}/subscriptions-changed"),
                json!(["removed", sub]),
            );
        });
    }

    /// Adds the bot to a room and tells it through `<uid>/subscriptions-changed`.
    pub fn add_bot_to(&self, rid: &str) {
        self.inner.update(|s| {
            let room = s.rooms.iter_mut().find(|r| r.id == rid).expect("room exists");
            room.members.push(BOT_USER.into());
            let sub = json!({"_id": format!("sub-{rid}"), "rid": rid, "name": room.name, "t": room.t, "fname": room.name, "open": true});
            s.broadcast("stream-notify-user", &format!("{BOT_ID}/subscriptions-changed"), json!(["inserted", sub]));
        });
    }
}

impl Drop for FakeRocketChat {
    fn drop(&mut self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.cancel.cancel();
            r.task.abort();
        }
    }
}

fn serve(listener: TcpListener, inner: Arc<Inner>) -> Running {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let inner = inner.clone();
            let conn_cancel = stop.child_token();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let inner = inner.clone();
                    let cancel = conn_cancel.clone();
                    async move { Ok::<_, Infallible>(handle(inner, req, cancel).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
        // Dropping the set aborts every HTTP connection; sockets close with it.
        conns.shutdown().await;
    });
    Running { cancel, task }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok(mut body: Value) -> Resp {
    body["success"] = json!(true);
    reply(StatusCode::OK, body)
}

fn fail(error: &str, error_type: &str) -> Resp {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"success": false, "error": error, "errorType": error_type}),
    )
}

fn unauthorized() -> Resp {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({"status": "error", "message": "You must be logged in to do this."}),
    )
}

fn query_of(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A stored message in REST form: dates as ISO strings.
fn rest_form(m: &Value) -> Value {
    let mut m = m.clone();
    for k in ["ts", "_updatedAt", "editedAt"] {
        if let Some(ms) = m
            .get(k)
            .and_then(|d| d.get("$date"))
            .and_then(Value::as_u64)
        {
            m[k] = json!(iso(ms));
        }
    }
    m
}

fn iso(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap();
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap()
}

fn parse_iso(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as u64)
}

fn ts_of(m: &Value) -> u64 {
    m["ts"]["$date"].as_u64().unwrap_or(0)
}

async fn handle(inner: Arc<Inner>, mut req: Request<Incoming>, cancel: CancellationToken) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/websocket" {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "websocket upgrade expected"}),
            );
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            ddp_session(inner, ws, cancel).await;
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let method = req.method().to_string();
    let query = query_of(&req);
    let headers = req.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let raw = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return fail("bad body", "invalid-body"),
    };
    let multipart = content_type.starts_with("multipart/form-data");
    let (body, parts) = if multipart {
        let parts = parse_multipart(&content_type, &raw);
        let fields: serde_json::Map<String, Value> = parts
            .iter()
            .filter(|p| p.filename.is_none())
            .map(|p| (p.name.clone(), json!(String::from_utf8_lossy(&p.data))))
            .collect();
        let files: Vec<Value> = parts
            .iter()
            .filter_map(|p| p.filename.clone().map(Value::from))
            .collect();
        (json!({"fields": fields, "files": files}), parts)
    } else if raw.is_empty() {
        (Value::Null, Vec::new())
    } else {
        match serde_json::from_slice::<Value>(&raw) {
            Ok(v) => (v, Vec::new()),
            Err(_) => return fail("body is not JSON", "invalid-params"),
        }
    };
    inner.update(|s| {
        s.requests.push(Recorded {
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        })
    });
    record_to_file(&method, &path, &query, &body);
    if path.starts_with("/file-upload/") && inner.state().stall_downloads {
        // Headers never come; the connection ends when the server stops.
        std::future::pending::<()>().await;
    }
    let scripted = inner.update(|s| s.failures.get_mut(&path).and_then(VecDeque::pop_front));
    if let Some((status, retry_after)) = scripted {
        let mut resp = reply(
            StatusCode::from_u16(status).unwrap(),
            json!({"success": false, "error": "scripted failure"}),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return resp;
    }
    // Unauthenticated endpoints.
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/info") => {
            let v = inner.state().version.clone();
            return ok(json!({"version": v}));
        }
        ("POST", "/api/v1/login") => return login(&inner, &body),
        _ => {}
    }
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (uid, token) = (header("x-user-id"), header("x-auth-token"));
    let authed = inner.state().tokens.get(&token).is_some_and(|u| *u == uid);
    if !authed {
        inner.update(|s| s.unauthorized += 1);
        return unauthorized();
    }
    inner.update(|s| route(s, &method, &path, &query, &body, parts))
}

/// With `ACG_RC_RECORD=<file>`, every REST request is appended there as a JSON line, for
/// `scripts/rc-typings/check.mjs` to check against the official validators.
fn record_to_file(method: &str, path: &str, query: &HashMap<String, String>, body: &Value) {
    use std::io::Write;
    let Some(file) = std::env::var_os("ACG_RC_RECORD") else {
        return;
    };
    let line = json!({"method": method, "path": path, "query": query, "body": body});
    // One write call per line with O_APPEND keeps lines whole across parallel tests.
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = f.write_all(&bytes);
    }
}

fn login(inner: &Inner, body: &Value) -> Resp {
    let user = body
        .get("username")
        .or_else(|| body.get("user"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let password = body
        .get("password")
        .and_then(Value::as_str)
        .unwrap_or_default();
    inner.update(|s| {
        let Some(u) = s.user(user).cloned().filter(|u| u.password == password) else {
            s.unauthorized += 1;
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"status": "error", "error": "Unauthorized", "message": "Unauthorized"}),
            );
        };
        let token = s.next_id("tok-");
        s.tokens.insert(token.clone(), u.id.clone());
        reply(
            StatusCode::OK,
            json!({"status": "success", "data": {"authToken": token, "userId": u.id,
                "me": {"_id": u.id, "username": u.username, "name": u.name}}}),
        )
    })
}

fn room_json(r: &Room) -> Value {
    json!({"_id": r.id, "name": r.name, "fname": r.name, "t": r.t, "usernames": r.members, "msgs": 0})
}

fn route(
    s: &mut State,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &Value,
    parts: Vec<Part>,
) -> Resp {
    let p = path.trim_start_matches("/api/v1/");
    let q = |k: &str| query.get(k).cloned().unwrap_or_default();
    let b = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match (method, p) {
        ("GET", "me") => {
            let u = s.user(BOT_USER).unwrap();
            ok(json!({"_id": u.id, "username": u.username, "name": u.name}))
        }
        ("GET", "settings.public") => ok(
            json!({"settings": [{"_id": "Message_MaxAllowedSize", "value": s.max_len}],
            "count": 1, "offset": 0, "total": 1}),
        ),
        ("GET", "subscriptions.get") => {
            let update: Vec<Value> = s
                .rooms
                .iter()
                .filter(|r| r.members.iter().any(|m| m == BOT_USER))
                .map(|r| {
                    let name = if r.t == "d" {
                        r.members.iter().find(|m| *m != BOT_USER).cloned().unwrap_or_default()
                    } else {
                        r.name.clone()
                    };
                    json!({"_id": format!("sub-{}", r.id), "rid": r.id, "name": name, "fname": name, "t": r.t, "open": true})
                })
                .collect();
            ok(json!({"update": update, "remove": []}))
        }
        ("GET", "channels.info") | ("GET", "groups.info") => {
            let t = if p == "channels.info" { "c" } else { "p" };
            let name = q("roomName");
            let id = q("roomId");
            match s.rooms.iter().find(|r| r.t == t && (r.name == name || r.id == id)) {
                Some(r) => {
                    let key = if t == "c" { "channel" } else { "group" };
                    ok(json!({ key: room_json(r) }))
                }
                None => fail(
                    "The required \"roomId\" or \"roomName\" param provided does not match any channel [error-room-not-found]",
                    "error-room-not-found",
                ),
            }
        }
        ("GET", "rooms.info") => match s
            .room(&q("roomId"))
            .or_else(|| s.rooms.iter().find(|r| r.name == q("roomName")))
        {
            Some(r) => ok(json!({"room": room_json(r)})),
            None => fail("not-allowed", "error-not-allowed"),
        },
        ("POST", "im.create") => {
            let username = b("username");
            let Some(other) = s.user(&username).cloned() else {
                return fail(
                    "Failed to create direct message [error-invalid-user]",
                    "error-invalid-user",
                );
            };
            let mut ids = [BOT_ID.to_string(), other.id.clone()];
            ids.sort();
            let rid = ids.concat();
            if s.room(&rid).is_none() {
                s.rooms.push(Room {
                    id: rid.clone(),
                    name: String::new(),
                    t: "d".into(),
                    members: vec![BOT_USER.into(), other.username.clone()],
                });
            }
            let r = s.room(&rid).unwrap();
            ok(json!({"room": {"_id": r.id, "rid": r.id, "t": "d", "usernames": r.members}}))
        }
        ("GET", "channels.history") | ("GET", "groups.history") | ("GET", "im.history") => {
            let t = match p {
                "channels.history" => "c",
                "groups.history" => "p",
                _ => "d",
            };
            let rid = q("roomId");
            if s.room(&rid).map(|r| r.t.as_str()) != Some(t) {
                return fail("The required \"roomId\" param provided does not match any room [error-room-not-found]", "error-room-not-found");
            }
            let count: usize = q("count").parse().unwrap_or(20);
            let offset: usize = q("offset").parse().unwrap_or(0);
            let inclusive = q("inclusive") == "true";
            let oldest = query.get("oldest").and_then(|o| parse_iso(o));
            let latest = query.get("latest").and_then(|o| parse_iso(o));
            let mut list: Vec<&Value> = s
                .messages
                .iter()
                .filter(|m| m["rid"] == rid.as_str())
                .filter(|m| {
                    let ts = ts_of(m);
                    oldest.is_none_or(|o| if inclusive { ts >= o } else { ts > o })
                        && latest.is_none_or(|l| if inclusive { ts <= l } else { ts < l })
                })
                .collect();
            list.sort_by_key(|m| std::cmp::Reverse(ts_of(m)));
            let page: Vec<Value> = list
                .into_iter()
                .skip(offset)
                .take(count)
                .map(rest_form)
                .collect();
            ok(
                json!({"messages": page, "count": page.len(), "offset": offset, "total": page.len()}),
            )
        }
        ("GET", "chat.getMessage") => {
            match s.messages.iter().find(|m| m["_id"] == q("msgId").as_str()) {
                Some(m) => ok(json!({"message": rest_form(m)})),
                None => fail("Not allowed [error-not-allowed]", "error-not-allowed"),
            }
        }
        ("GET", "chat.getThreadMessages") => {
            // Like the server: the replies of thread `tmid` (not its root), oldest first
            // unless `sort` says otherwise.
            let tmid = q("tmid");
            if !s.messages.iter().any(|m| m["_id"] == tmid.as_str()) {
                return fail(
                    "Invalid message [error-invalid-message]",
                    "error-invalid-message",
                );
            }
            let count: usize = q("count").parse().unwrap_or(50);
            let offset: usize = q("offset").parse().unwrap_or(0);
            let newest_first = serde_json::from_str::<Value>(&q("sort"))
                .ok()
                .and_then(|v| v["ts"].as_i64())
                == Some(-1);
            let mut list: Vec<&Value> = s
                .messages
                .iter()
                .filter(|m| m["tmid"] == tmid.as_str())
                .collect();
            list.sort_by_key(|m| ts_of(m));
            if newest_first {
                list.reverse();
            }
            let total = list.len();
            let page: Vec<Value> = list
                .into_iter()
                .skip(offset)
                .take(count)
                .map(rest_form)
                .collect();
            ok(json!({"messages": page, "count": page.len(), "offset": offset, "total": total}))
        }
        ("POST", "chat.postMessage") => {
            let rid = b("roomId");
            let text = b("text");
            if s.room(&rid).is_none() {
                return fail("error-invalid-channel", "error-invalid-channel");
            }
            if text.chars().count() > s.max_len {
                return fail("error-message-size-exceeded", "error-message-size-exceeded");
            }
            let mut m = s.new_message(&rid, BOT_USER, &text);
            if let Some(tmid) = body.get("tmid").and_then(Value::as_str) {
                m["tmid"] = json!(tmid);
            }
            s.store_and_emit(m.clone());
            ok(json!({"ts": ts_of(&m), "channel": rid, "message": rest_form(&m)}))
        }
        ("POST", "chat.update") => {
            let id = b("msgId");
            let text = b("text");
            if text.chars().count() > s.max_len {
                return fail("error-message-size-exceeded", "error-message-size-exceeded");
            }
            let ts = s.now_ms();
            let Some(m) = s.messages.iter_mut().find(|m| m["_id"] == id.as_str()) else {
                return fail(
                    "The room id provided does not match where the message is from.",
                    "error-invalid-message",
                );
            };
            m["msg"] = json!(text);
            m["editedAt"] = json!({"$date": ts});
            let m = m.clone();
            s.broadcast(
                "stream-room-messages",
                m["rid"].as_str().unwrap(),
                json!([m.clone()]),
            );
            ok(json!({"message": rest_form(&m)}))
        }
        _ if method == "POST" && p.starts_with("rooms.media/") => {
            if !s.version.starts_with('8') {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"success": false, "error": "Not found"}),
                );
            }
            let rid = p.trim_start_matches("rooms.media/").to_string();
            let Some(file) = parts
                .into_iter()
                .find(|p| p.name == "file" && p.filename.is_some())
            else {
                return fail("[invalid-field]", "invalid-field");
            };
            let id = s.next_id("f");
            let name = file.filename.clone().unwrap_or_default();
            s.pending_media
                .insert(id.clone(), (rid, name.clone(), file.data));
            ok(json!({"file": {"_id": id, "url": format!("/file-upload/{id}/{name}")}}))
        }
        _ if method == "POST" && p.starts_with("rooms.mediaConfirm/") => {
            let rest = p.trim_start_matches("rooms.mediaConfirm/");
            let Some((rid, file_id)) = rest.split_once('/') else {
                return fail("bad path", "invalid-params");
            };
            let Some((pending_rid, name, data)) = s.pending_media.remove(file_id) else {
                return fail("file not found", "error-file-not-found");
            };
            if pending_rid != rid {
                return fail("room mismatch", "invalid-params");
            }
            let msg = body.get("msg").and_then(Value::as_str).map(str::to_string);
            let tmid = body.get("tmid").and_then(Value::as_str).map(str::to_string);
            confirm_upload(s, "rooms.media", rid, file_id, name, data, msg, tmid)
        }
        _ if method == "POST" && p.starts_with("rooms.upload/") => {
            if s.version.starts_with('8') {
                // Removed in 8.0 (agent-chat-gateway #56).
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"success": false, "error": "Not found"}),
                );
            }
            let rid = p.trim_start_matches("rooms.upload/").to_string();
            let field = |n: &str| {
                parts
                    .iter()
                    .find(|p| p.name == n && p.filename.is_none())
                    .map(|p| String::from_utf8_lossy(&p.data).into_owned())
            };
            let (msg, tmid) = (field("msg"), field("tmid"));
            let Some(file) = parts
                .iter()
                .find(|p| p.name == "file" && p.filename.is_some())
            else {
                return fail("[invalid-field]", "invalid-field");
            };
            let id = s.next_id("f");
            let (name, data) = (file.filename.clone().unwrap_or_default(), file.data.clone());
            confirm_upload(s, "rooms.upload", &rid, &id, name, data, msg, tmid)
        }
        _ if method == "GET" && path.starts_with("/file-upload/") => {
            let id = path
                .trim_start_matches("/file-upload/")
                .split('/')
                .next()
                .unwrap_or_default();
            match s.files.get(id) {
                Some((_, data)) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(Bytes::from(data.clone())))
                    .unwrap(),
                None => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": format!("no route {method} {path}")}),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn confirm_upload(
    s: &mut State,
    api: &str,
    rid: &str,
    file_id: &str,
    name: String,
    data: Vec<u8>,
    msg: Option<String>,
    tmid: Option<String>,
) -> Resp {
    s.uploads.push(Upload {
        api: api.into(),
        room: rid.into(),
        name: name.clone(),
        bytes: data.clone(),
        msg: msg.clone(),
        tmid: tmid.clone(),
    });
    let size = data.len();
    s.files.insert(file_id.to_string(), (name.clone(), data));
    let mut m = s.new_message(rid, BOT_USER, msg.as_deref().unwrap_or(""));
    m["files"] = json!([{"_id": file_id, "name": name, "size": size}]);
    if let Some(tmid) = tmid {
        m["tmid"] = json!(tmid);
    }
    s.store_and_emit(m.clone());
    ok(json!({"message": rest_form(&m)}))
}

pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub data: Vec<u8>,
}

/// Minimal multipart/form-data parser (enough for reqwest's encoder).
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let Some(boundary) = content_type.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let boundary = boundary.trim_matches('"');
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = find(rest, delim.as_bytes()) {
        rest = &rest[start + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let rest_trim = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(end) = find(rest_trim, delim.as_bytes()) else {
            break;
        };
        let part = &rest_trim[..end];
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        if let Some(split) = find(part, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&part[..split]).into_owned();
            let head = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
                .unwrap_or_default()
                .to_string();
            let data = part[split + 4..].to_vec();
            let attr = |key: &str| {
                head.split(';').map(str::trim).find_map(|kv| {
                    kv.strip_prefix(&format!("{key}=\""))
                        .map(|v| v.trim_end_matches('"').to_string())
                })
            };
            // `name=` must not match inside `filename=`; attr() splits on ';' so it does not.
            parts.push(Part {
                name: attr("name").unwrap_or_default(),
                filename: attr("filename"),
                data,
            });
        }
        rest = rest_trim;
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn ddp_session(
    inner: Arc<Inner>,
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    cancel: CancellationToken,
) {
    let (mut sink, mut stream) = ws.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
    let conn_cancel = cancel.child_token();
    let id = inner.update(|s| {
        s.next += 1;
        let id = s.next;
        s.conns.push(Conn {
            id,
            out: out.clone(),
            cancel: conn_cancel.clone(),
            subs: HashMap::new(),
            user: None,
            frozen: false,
        });
        id
    });
    loop {
        tokio::select! {
            _ = conn_cancel.cancelled() => break,
            frame = out_rx.recv() => {
                let Some(frame) = frame else { break };
                if sink.send(Message::text(frame)).await.is_err() { break; }
            }
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let frozen = inner.state().conns.iter().find(|c| c.id == id).is_none_or(|c| c.frozen);
                if frozen {
                    continue;
                }
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                let replies = inner.update(|s| {
                    s.ddp_in.push(frame.clone());
                    ddp_frame(s, id, &frame)
                });
                for r in replies {
                    let _ = out.send(r.to_string());
                }
            }
        }
    }
    inner.update(|s| s.conns.retain(|c| c.id != id));
}

fn ddp_frame(s: &mut State, conn: u64, f: &Value) -> Vec<Value> {
    let id = f.get("id").cloned().unwrap_or(Value::Null);
    match f.get("msg").and_then(Value::as_str) {
        Some("connect") => vec![
            json!({"server_id": "0"}),
            json!({"msg": "connected", "session": format!("sess-{conn}")}),
        ],
        Some("ping") => vec![if id.is_null() {
            json!({"msg": "pong"})
        } else {
            json!({"msg": "pong", "id": id})
        }],
        Some("method") => {
            let method = f["method"].as_str().unwrap_or_default();
            let params = &f["params"];
            let result = match method {
                "login" => {
                    let token = params[0]["resume"].as_str().unwrap_or_default();
                    match s.tokens.get(token).cloned() {
                        Some(uid) => {
                            s.ddp_logins += 1;
                            if let Some(c) = s.conns.iter_mut().find(|c| c.id == conn) {
                                c.user = Some(uid.clone());
                            }
                            Ok(
                                json!({"id": uid, "token": token, "tokenExpires": {"$date": 1_900_000_000_000u64}, "type": "resume"}),
                            )
                        }
                        None => Err(
                            json!({"error": 403, "reason": "You've been logged out by the server. Please log in again.", "message": "You've been logged out by the server. Please log in again. [403]", "errorType": "Meteor.Error"}),
                        ),
                    }
                }
                "stream-notify-room" => {
                    let logged_in = s.conns.iter().any(|c| c.id == conn && c.user.is_some());
                    if logged_in {
                        s.typing.push(params.clone());
                        Ok(Value::Null)
                    } else {
                        Err(
                            json!({"error": "not-allowed", "reason": "Not allowed", "errorType": "Meteor.Error"}),
                        )
                    }
                }
                other => Err(
                    json!({"error": 404, "reason": format!("Method '{other}' not found"), "errorType": "Meteor.Error"}),
                ),
            };
            let r = match result {
                Ok(v) => json!({"msg": "result", "id": id, "result": v}),
                Err(e) => json!({"msg": "result", "id": id, "error": e}),
            };
            vec![r, json!({"msg": "updated", "methods": [id]})]
        }
        Some("sub") => {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            let key = f["params"][0].as_str().unwrap_or_default().to_string();
            let user = s
                .conns
                .iter()
                .find(|c| c.id == conn)
                .and_then(|c| c.user.clone());
            let username = user
                .as_deref()
                .and_then(|u| s.user_by_id(u))
                .map(|u| u.username.clone());
            let allowed = match (name.as_str(), &username) {
                ("stream-room-messages", Some(u)) => {
                    s.room(&key).is_some_and(|r| r.members.contains(u))
                }
                ("stream-notify-user", Some(_)) => {
                    key.starts_with(&format!("{}/", user.clone().unwrap_or_default()))
                }
                _ => false,
            };
            if allowed {
                if let Some(c) = s.conns.iter_mut().find(|c| c.id == conn) {
                    c.subs
                        .insert(id.as_str().unwrap_or_default().to_string(), (name, key));
                }
                vec![json!({"msg": "ready", "subs": [id]})]
            } else {
                vec![
                    json!({"msg": "nosub", "id": id, "error": {"isClientSafe": true, "error": "not-allowed", "reason": "Not allowed", "message": "Not allowed [not-allowed]", "errorType": "Meteor.Error"}}),
                ]
            }
        }
        Some("unsub") => {
            if let Some(c) = s.conns.iter_mut().find(|c| c.id == conn) {
                c.subs.remove(id.as_str().unwrap_or_default());
            }
            vec![json!({"msg": "nosub", "id": id})]
        }
        _ => Vec::new(),
    }
}
