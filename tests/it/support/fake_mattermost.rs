//! A fake Mattermost server for tests: the WebSocket (`/api/v4/websocket`) and the REST API v4
//! calls a bot makes, on one 127.0.0.1 port, shaped after Mattermost's published types
//! (`server/public/model/{post,websocket_message,user,channel,file_info}.go`) and its OpenAPI
//! spec (`api/v4/source/{posts,users,channels,files,teams}.yaml`). No Mattermost server can be
//! installed from the registries this project uses, so this fake is what the connector is
//! tested against.
//!
//! Faithful where the connector depends on it: a WebSocket is silent until its
//! `authentication_challenge` (answered `{"status":"OK","seq_reply":1}` then a `hello` event,
//! or `FAIL` with an `AppError`); `posted` / `post_edited` carry the post as a JSON *string*
//! and `posted` the mentioned user ids as another JSON string (absent when none); `ping`
//! actions are answered; `GET /channels/{id}/posts?since=` returns every post *updated*
//! strictly after `since` as a `PostList` (`order` newest first); errors are `AppError`
//! bodies; the rate limit is a 429 with `X-Ratelimit-*` headers; ids are 26 characters.
//!
//! Owns: an in-memory server (users, team, channels, posts, files) that records every REST
//! request, WebSocket frame, typing call and upload, and knobs for tests: post as a user
//! (live and stored for replay), edit, redeliver, drop sockets, stop and restart, scripted
//! failures. Waiting is event-driven ([`FakeMattermost::wait_for`]), never polling.

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

use super::fake_rocketchat::parse_multipart;

pub const BOT_ID: &str = "b0tb0tb0tb0tb0tb0tb0tb0tb0";
pub const BOT_USER: &str = "bot";
pub const BOT_TOKEN: &str = "xoxmmtokenbotbotbotbotbot1";
pub const ALICE_ID: &str = "a11cea11cea11cea11cea11ce1";
pub const BOB_ID: &str = "b0bb0bb0bb0bb0bb0bb0bb0bb1";
pub const TEAM_ID: &str = "teamteamteamteamteamteam01";
pub const TOWN_SQUARE: &str = "town5quaretown5quaretown51";

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub username: String,
    pub first_name: String,
}

#[derive(Clone, Debug)]
pub struct Channel {
    pub id: String,
    pub name: String,
    /// `O`, `P` or `D`.
    pub kind: String,
    pub members: Vec<String>,
}

/// One REST request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// JSON body; for multipart, `{"fields":{…},"files":[name,…]}`.
    pub body: Value,
}

#[derive(Clone, Debug)]
pub struct Upload {
    pub channel: String,
    pub name: String,
    pub bytes: Vec<u8>,
}

struct Conn {
    id: u64,
    out: mpsc::UnboundedSender<String>,
    cancel: CancellationToken,
    /// Set by a successful `authentication_challenge`.
    user: Option<String>,
    seq: u64,
    /// Simulates a half-open socket: nothing is read, answered or sent any more.
    frozen: bool,
}

#[derive(Default)]
pub struct State {
    pub users: Vec<User>,
    pub channels: Vec<Channel>,
    /// `model.Post` JSON objects, in creation order.
    pub posts: Vec<Value>,
    pub requests: Vec<Recorded>,
    /// Every WebSocket frame a client sent.
    pub ws_in: Vec<Value>,
    /// `POST /users/{id}/typing` bodies.
    pub typing: Vec<Value>,
    pub uploads: Vec<Upload>,
    files: HashMap<String, (String, Vec<u8>)>,
    conns: Vec<Conn>,
    /// Scripted failures: path → (status, X-Ratelimit-Reset seconds) answered before routing.
    failures: HashMap<String, VecDeque<(u16, Option<u64>)>>,
    /// Successful WebSocket authentications so far (a reconnect adds one).
    pub ws_logins: usize,
    /// New WebSockets are refused (503) while REST keeps working.
    refuse_sockets: bool,
    /// Extra words that mention a user (`notify_props.mention_keys`), word → user id.
    mention_keys: HashMap<String, String>,
    next: u64,
    last_ts: u64,
}

impl State {
    /// A 26-character id, like Mattermost's `model.NewId()`.
    fn new_id(&mut self, prefix: &str) -> String {
        self.next += 1;
        let tail = format!("{:08}", self.next);
        let pad = 26 - prefix.len() - tail.len();
        format!("{prefix}{}{tail}", "x".repeat(pad))
    }

    /// A strictly increasing clock, so ordering by `create_at` is total.
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

    fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == id)
    }

    pub fn requests_to(&self, method: &str, path: &str) -> Vec<&Recorded> {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    pub fn post(&self, id: &str) -> Option<&Value> {
        self.posts.iter().find(|p| p["id"] == id)
    }

    /// The bot's posts in `channel` as stored now (edits applied), oldest first.
    pub fn bot_posts(&self, channel: &str) -> Vec<&Value> {
        self.posts
            .iter()
            .filter(|p| p["channel_id"] == channel && p["user_id"] == BOT_ID)
            .collect()
    }

    /// Sends an event to every authenticated connection of a member of `channel`.
    fn broadcast(&mut self, channel: &str, event: &str, data: Value) {
        let members = self
            .channel(channel)
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for c in &mut self.conns {
            let Some(user) = &c.user else { continue };
            if c.frozen {
                continue;
            }
            if !members.contains(user) {
                continue;
            }
            // Events are numbered per connection from 0 (the `hello`), without gaps: the
            // official client reconnects when one is missing.
            let seq = c.seq;
            c.seq += 1;
            let frame = json!({"event": event, "data": data,
                "broadcast": {"omit_users": null, "user_id": "", "channel_id": channel,
                    "team_id": "", "connection_id": "", "omit_connection_id": ""},
                "seq": seq});
            let _ = c.out.send(frame.to_string());
        }
    }

    /// User ids the server would find mentioned: `@username` words of members.
    fn mentions_of(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == ':') {
            let Some(name) = word.strip_prefix('@') else {
                continue;
            };
            if let Some(u) = self.user(name) {
                if !out.contains(&u.id) {
                    out.push(u.id.clone());
                }
            }
        }
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            if let Some(id) = self.mention_keys.get(&word.to_lowercase()) {
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
        }
        out
    }

    fn emit_posted(&mut self, post: &Value) {
        let channel = post["channel_id"].as_str().unwrap_or_default().to_string();
        let (kind, name) = self
            .channel(&channel)
            .map(|c| (c.kind.clone(), c.name.clone()))
            .unwrap_or_default();
        let sender = self
            .user_by_id(post["user_id"].as_str().unwrap_or_default())
            .map(|u| format!("@{}", u.username))
            .unwrap_or_default();
        let mut data = json!({"channel_display_name": name, "channel_name": name,
            "channel_type": kind, "post": post.to_string(), "sender_name": sender,
            "set_online": true, "team_id": TEAM_ID});
        let mentions = self.mentions_of(post["message"].as_str().unwrap_or_default());
        if !mentions.is_empty() {
            data["mentions"] = json!(serde_json::to_string(&mentions).unwrap());
        }
        self.broadcast(&channel, "posted", data);
    }

    fn new_post(&mut self, channel: &str, user_id: &str, text: &str) -> Value {
        let id = self.new_id("p");
        let ts = self.now_ms();
        json!({"id": id, "create_at": ts, "update_at": ts, "edit_at": 0, "delete_at": 0,
            "is_pinned": false, "user_id": user_id, "channel_id": channel, "root_id": "",
            "original_id": "", "message": text, "type": "", "props": {}, "hashtags": "",
            "pending_post_id": "", "reply_count": 0, "metadata": {}})
    }

    fn store_and_emit(&mut self, post: Value) {
        self.posts.push(post.clone());
        self.emit_posted(&post);
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

pub struct FakeMattermost {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl FakeMattermost {
    /// Starts a server with the bot, users `alice`, `bob` and `carol`, the team `acme`, its
    /// open channel `town-square` (everyone in it) and private channel `secret` the bot is
    /// not in.
    pub async fn start() -> FakeMattermost {
        let mut state = State::default();
        for (id, username, first) in [
            (BOT_ID, BOT_USER, "Bot"),
            (ALICE_ID, "alice", "Alice"),
            (BOB_ID, "bob", "Bob"),
            ("ca401ca401ca401ca401ca4011", "carol", "Carol"),
        ] {
            state.users.push(User {
                id: id.into(),
                username: username.into(),
                first_name: first.into(),
            });
        }
        let everyone: Vec<String> = state.users.iter().map(|u| u.id.clone()).collect();
        state.channels.push(Channel {
            id: TOWN_SQUARE.into(),
            name: "town-square".into(),
            kind: "O".into(),
            members: everyone,
        });
        state.channels.push(Channel {
            id: "5ecret5ecret5ecret5ecret51".into(),
            name: "secret".into(),
            kind: "P".into(),
            members: vec![ALICE_ID.into()],
        });
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            changed: Notify::new(),
        });
        // Not port 0: `restart` binds the same port again, and an ephemeral port could be
        // taken by another test's bind(0) while this server is down.
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
        FakeMattermost {
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

    /// Stops listening and drops every connection (a server going down). Data stays.
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

    /// Drops every WebSocket abruptly (no close frame), as a network fault would; REST
    /// keeps working.
    pub fn drop_sockets(&self) {
        self.inner.update(|s| {
            for c in s.conns.drain(..) {
                c.cancel.cancel();
            }
        });
    }

    /// `word` (case-insensitive) mentions `username` from now on, as a mention key set in the
    /// user's notification settings does.
    pub fn add_mention_key(&self, username: &str, word: &str) {
        self.inner.update(|s| {
            let id = s.user(username).expect("known user").id.clone();
            s.mention_keys.insert(word.to_lowercase(), id);
        });
    }

    /// Makes every open socket half-open: frames are no longer read, answered or sent.
    pub fn freeze_sockets(&self) {
        self.inner
            .update(|s| s.conns.iter_mut().for_each(|c| c.frozen = true));
    }

    /// Drops every WebSocket and refuses new ones (`false` lets them in again); REST keeps
    /// working, so the gateway's posts in flight still land.
    pub fn refuse_sockets(&self, refuse: bool) {
        self.inner.update(|s| {
            s.refuse_sockets = refuse;
            if refuse {
                for c in s.conns.drain(..) {
                    c.cancel.cancel();
                }
            }
        });
    }

    /// The next request to `path` (e.g. `/api/v4/posts`) is answered with `status` (and
    /// `X-Ratelimit-Reset` when given) instead of being served.
    pub fn fail_next(&self, path: &str, status: u16, reset_secs: Option<u64>) {
        self.inner.update(|s| {
            s.failures
                .entry(path.to_string())
                .or_default()
                .push_back((status, reset_secs))
        });
    }

    /// A user posts `text` in `channel` (live to sockets, stored for replay).
    pub fn post(&self, channel: &str, username: &str, text: &str) -> String {
        self.post_with(channel, username, text, |_| {})
    }

    pub fn post_in_thread(&self, channel: &str, username: &str, text: &str, root: &str) -> String {
        let root = root.to_string();
        self.post_with(channel, username, text, move |p| p["root_id"] = json!(root))
    }

    /// Posts after letting `edit` adjust the post.
    pub fn post_with(
        &self,
        channel: &str,
        username: &str,
        text: &str,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        self.inner.update(|s| {
            let uid = s.user(username).expect("known user").id.clone();
            let mut p = s.new_post(channel, &uid, text);
            edit(&mut p);
            let id = p["id"].as_str().unwrap().to_string();
            s.store_and_emit(p);
            id
        })
    }

    /// A user uploads a file with a message (`file_ids` and `metadata.files` as the server
    /// fills them in).
    pub fn post_file(
        &self,
        channel: &str,
        username: &str,
        text: &str,
        name: &str,
        bytes: &[u8],
    ) -> String {
        let (name, bytes) = (name.to_string(), bytes.to_vec());
        self.inner.update(|s| {
            let uid = s.user(username).expect("known user").id.clone();
            let file_id = s.new_id("f");
            let size = bytes.len();
            s.files.insert(file_id.clone(), (name.clone(), bytes));
            let mut p = s.new_post(channel, &uid, text);
            p["file_ids"] = json!([file_id]);
            p["metadata"] = json!({"files": [{"id": file_id, "user_id": uid, "post_id": p["id"],
                "name": name, "extension": name.rsplit('.').next().unwrap_or(""), "size": size,
                "mime_type": "application/octet-stream"}]});
            let id = p["id"].as_str().unwrap().to_string();
            s.store_and_emit(p);
            id
        })
    }

    /// A system post (`type` set), e.g. `system_join_channel`.
    pub fn post_system(&self, channel: &str, username: &str, kind: &str) -> String {
        let kind = kind.to_string();
        self.post_with(channel, username, "joined", move |p| {
            p["type"] = json!(kind)
        })
    }

    /// Edits a post and emits `post_edited`, as Mattermost does (same id, `edit_at` set).
    pub fn edit(&self, id: &str, text: &str) {
        self.inner.update(|s| edit_post(s, id, text));
    }

    /// Sends the `posted` event of a stored post again (duplicate delivery).
    pub fn redeliver(&self, id: &str) {
        self.inner.update(|s| {
            let p = s.post(id).cloned().expect("post exists");
            s.emit_posted(&p);
        });
    }
}

impl Drop for FakeMattermost {
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

fn edit_post(s: &mut State, id: &str, text: &str) -> Option<Value> {
    let ts = s.now_ms();
    let p = s.posts.iter_mut().find(|p| p["id"] == id)?;
    p["message"] = json!(text);
    p["edit_at"] = json!(ts);
    p["update_at"] = json!(ts);
    let p = p.clone();
    let channel = p["channel_id"].as_str().unwrap_or_default().to_string();
    s.broadcast(&channel, "post_edited", json!({"post": p.to_string()}));
    Some(p)
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

/// A `model.AppError` body.
fn app_error(status: StatusCode, id: &str, message: &str) -> Resp {
    reply(
        status,
        json!({"id": id, "message": message, "detailed_error": "", "request_id": "r1",
            "status_code": status.as_u16()}),
    )
}

fn not_found(what: &str) -> Resp {
    app_error(
        StatusCode::NOT_FOUND,
        "app.channel.get.existing.app_error",
        &format!("Unable to find the existing {what}."),
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
            (k.to_string(), v.to_string())
        })
        .collect()
}

async fn handle(inner: Arc<Inner>, mut req: Request<Incoming>, cancel: CancellationToken) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/api/v4/websocket" {
        if inner.state().refuse_sockets {
            return app_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api.web_socket.connect.unavailable.app_error",
                "scripted outage",
            );
        }
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return app_error(
                StatusCode::BAD_REQUEST,
                "api.web_socket.connect.upgrade.app_error",
                "websocket upgrade expected",
            );
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            ws_session(inner, ws, cancel).await;
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
        Err(_) => {
            return app_error(
                StatusCode::BAD_REQUEST,
                "api.context.invalid_body_param.app_error",
                "bad body",
            )
        }
    };
    let multipart = content_type.starts_with("multipart/form-data");
    let parts = if multipart {
        parse_multipart(&content_type, &raw)
    } else {
        Vec::new()
    };
    let body = if multipart {
        let fields: serde_json::Map<String, Value> = parts
            .iter()
            .filter(|p| p.filename.is_none())
            .map(|p| (p.name.clone(), json!(String::from_utf8_lossy(&p.data))))
            .collect();
        let files: Vec<Value> = parts
            .iter()
            .filter_map(|p| p.filename.clone().map(Value::from))
            .collect();
        json!({"fields": fields, "files": files})
    } else if raw.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&raw) {
            Ok(v) => v,
            Err(_) => {
                return app_error(
                    StatusCode::BAD_REQUEST,
                    "api.context.invalid_body_param.app_error",
                    "body is not JSON",
                )
            }
        }
    };
    inner.update(|s| {
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        })
    });
    let scripted = inner.update(|s| s.failures.get_mut(&path).and_then(VecDeque::pop_front));
    if let Some((status, reset)) = scripted {
        let mut resp = app_error(
            StatusCode::from_u16(status).unwrap(),
            "api.context.scripted.app_error",
            "scripted failure",
        );
        if let Some(secs) = reset {
            // What Mattermost's throttled rate limiter sends with a 429.
            let h = resp.headers_mut();
            h.insert("x-ratelimit-limit", "10".parse().unwrap());
            h.insert("x-ratelimit-remaining", "0".parse().unwrap());
            h.insert("x-ratelimit-reset", secs.to_string().parse().unwrap());
        }
        return resp;
    }
    // The server takes `BEARER <token>` (what the official client sends) or `TOKEN <token>`,
    // the scheme in any case (`app.ParseAuthTokenFromRequest`).
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            ["bearer", "token"]
                .contains(&scheme.to_ascii_lowercase().as_str())
                .then_some(token.trim())
        })
        .unwrap_or_default();
    if token != BOT_TOKEN {
        return app_error(
            StatusCode::UNAUTHORIZED,
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
        );
    }
    inner.update(|s| route(s, &method, &path, &query, &body, parts))
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "username": u.username, "first_name": u.first_name, "last_name": "",
        "nickname": "", "email": format!("{}@example.com", u.username), "roles": "system_user",
        "create_at": 1, "update_at": 1, "delete_at": 0, "locale": "en"})
}

fn channel_json(c: &Channel) -> Value {
    let team = if c.kind == "D" { "" } else { TEAM_ID };
    json!({"id": c.id, "create_at": 1, "update_at": 1, "delete_at": 0, "team_id": team,
        "type": c.kind, "display_name": c.name, "name": c.name, "header": "", "purpose": "",
        "last_post_at": 0, "total_msg_count": 0, "creator_id": ""})
}

fn route(
    s: &mut State,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: &Value,
    parts: Vec<super::fake_rocketchat::Part>,
) -> Resp {
    let p: Vec<&str> = path.trim_start_matches("/api/v4/").split('/').collect();
    match (method, p.as_slice()) {
        ("GET", ["users", "me"]) => reply(StatusCode::OK, user_json(s.user_by_id(BOT_ID).unwrap())),
        ("GET", ["users", "me", "teams"]) => reply(
            StatusCode::OK,
            json!([{"id": TEAM_ID, "name": "acme", "display_name": "Acme", "type": "O"}]),
        ),
        ("GET", ["users", "username", name]) => match s.user(name) {
            Some(u) => reply(StatusCode::OK, user_json(u)),
            None => not_found("user"),
        },
        ("GET", ["users", id]) => match s.user_by_id(id) {
            Some(u) => reply(StatusCode::OK, user_json(u)),
            None => not_found("user"),
        },
        ("POST", ["users", id, "typing"]) => {
            if *id != BOT_ID {
                return app_error(
                    StatusCode::FORBIDDEN,
                    "api.context.permissions.app_error",
                    "You do not have the appropriate permissions.",
                );
            }
            s.typing.push(body.clone());
            reply(StatusCode::OK, json!({"status": "OK"}))
        }
        ("GET", ["teams", "name", "acme"]) => {
            reply(StatusCode::OK, json!({"id": TEAM_ID, "name": "acme"}))
        }
        ("GET", ["teams", "name", team, "channels", "name", name]) => {
            let team = if *team == "acme" { TEAM_ID } else { "" };
            route(
                s,
                method,
                &format!("/api/v4/teams/{team}/channels/name/{name}"),
                query,
                body,
                parts,
            )
        }
        ("GET", ["teams", "name", _]) => not_found("team"),
        ("GET", ["teams", team, "channels", "name", name]) => {
            let found = s.channels.iter().find(|c| {
                *team == TEAM_ID
                    && c.name == *name
                    && c.kind != "D"
                    && c.members.iter().any(|m| m == BOT_ID)
            });
            match found {
                Some(c) => reply(StatusCode::OK, channel_json(c)),
                None => not_found("channel"),
            }
        }
        ("POST", ["channels", "direct"]) => {
            let ids: Vec<String> = serde_json::from_value(body.clone()).unwrap_or_default();
            if ids.len() != 2 || ids.iter().any(|i| s.user_by_id(i).is_none()) {
                return app_error(
                    StatusCode::BAD_REQUEST,
                    "api.context.invalid_body_param.app_error",
                    "Invalid or missing user_ids in request body.",
                );
            }
            let mut sorted = ids.clone();
            sorted.sort();
            let name = format!("{}__{}", sorted[0], sorted[1]);
            if let Some(c) = s.channels.iter().find(|c| c.name == name) {
                return reply(StatusCode::CREATED, channel_json(c));
            }
            let c = Channel {
                id: s.new_id("d"),
                name,
                kind: "D".into(),
                members: sorted,
            };
            s.channels.push(c.clone());
            reply(StatusCode::CREATED, channel_json(&c))
        }
        ("GET", ["channels", id]) => match s
            .channel(id)
            .filter(|c| c.members.iter().any(|m| m == BOT_ID))
        {
            Some(c) => reply(StatusCode::OK, channel_json(c)),
            None => not_found("channel"),
        },
        ("GET", ["channels", id, "posts"]) => {
            if s.channel(id)
                .is_none_or(|c| !c.members.iter().any(|m| m == BOT_ID))
            {
                return app_error(
                    StatusCode::FORBIDDEN,
                    "api.context.permissions.app_error",
                    "You do not have the appropriate permissions.",
                );
            }
            let mut posts: Vec<&Value> = s
                .posts
                .iter()
                .filter(|p| p["channel_id"] == *id && p["delete_at"] == 0)
                .collect();
            posts.sort_by_key(|p| std::cmp::Reverse(p["create_at"].as_u64().unwrap_or(0)));
            // `since` counts only when positive (`api4/post.go` getPostsForChannel); else the
            // page/per_page branch answers.
            let since = query
                .get("since")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|s| *s > 0);
            let selected: Vec<&Value> = if let Some(since) = since {
                // Every post updated after `since` (strictly), at most 1000.
                posts
                    .into_iter()
                    .filter(|p| p["update_at"].as_u64().unwrap_or(0) > since)
                    .take(1000)
                    .collect()
            } else {
                let page: usize = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(0);
                let per: usize = query
                    .get("per_page")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(60);
                posts.into_iter().skip(page * per).take(per).collect()
            };
            let order: Vec<&Value> = selected.iter().map(|p| &p["id"]).collect();
            let map: serde_json::Map<String, Value> = selected
                .iter()
                .map(|p| (p["id"].as_str().unwrap().to_string(), (*p).clone()))
                .collect();
            reply(
                StatusCode::OK,
                json!({"order": order, "posts": map, "next_post_id": "", "prev_post_id": "",
                    "has_next": false}),
            )
        }
        ("GET", ["posts", id, "thread"]) => {
            // Like `api4/post.go` getPostThread: the root and every reply, newest first,
            // whichever post of the thread is named.
            let Some(post) = s
                .posts
                .iter()
                .find(|p| p["id"] == *id && p["delete_at"] == 0)
            else {
                return app_error(
                    StatusCode::NOT_FOUND,
                    "app.post.get.app_error",
                    "Unable to get the post.",
                );
            };
            let root = match post["root_id"].as_str().unwrap_or_default() {
                "" => id.to_string(),
                r => r.to_string(),
            };
            let channel = post["channel_id"].as_str().unwrap_or_default().to_string();
            if s.channel(&channel)
                .is_none_or(|c| !c.members.iter().any(|m| m == BOT_ID))
            {
                return app_error(
                    StatusCode::FORBIDDEN,
                    "api.context.permissions.app_error",
                    "You do not have the appropriate permissions.",
                );
            }
            let mut posts: Vec<&Value> = s
                .posts
                .iter()
                .filter(|p| {
                    p["delete_at"] == 0
                        && (p["id"] == root.as_str() || p["root_id"] == root.as_str())
                })
                .collect();
            posts.sort_by_key(|p| std::cmp::Reverse(p["create_at"].as_u64().unwrap_or(0)));
            let order: Vec<&Value> = posts.iter().map(|p| &p["id"]).collect();
            let map: serde_json::Map<String, Value> = posts
                .iter()
                .map(|p| (p["id"].as_str().unwrap().to_string(), (*p).clone()))
                .collect();
            reply(
                StatusCode::OK,
                json!({"order": order, "posts": map, "next_post_id": "", "prev_post_id": "",
                    "has_next": false}),
            )
        }
        ("POST", ["posts"]) => {
            let channel = body["channel_id"].as_str().unwrap_or_default().to_string();
            if s.channel(&channel)
                .is_none_or(|c| !c.members.iter().any(|m| m == BOT_ID))
            {
                return app_error(
                    StatusCode::FORBIDDEN,
                    "api.context.permissions.app_error",
                    "You do not have the appropriate permissions.",
                );
            }
            let message = body["message"].as_str().unwrap_or_default().to_string();
            // Mattermost's `MaxPostSize`: longer posts are refused, not cut.
            if message.chars().count() > 16383 {
                return app_error(
                    StatusCode::BAD_REQUEST,
                    "model.post.is_valid.message_length.app_error",
                    "Message property is longer than the maximum permitted length.",
                );
            }
            let mut post = s.new_post(&channel, BOT_ID, &message);
            if let Some(root) = body["root_id"].as_str().filter(|r| !r.is_empty()) {
                if s.post(root).is_none() {
                    return app_error(
                        StatusCode::BAD_REQUEST,
                        "api.post.create_post.root_id.app_error",
                        "Invalid RootId parameter.",
                    );
                }
                post["root_id"] = json!(root);
            }
            if let Some(ids) = body["file_ids"].as_array() {
                let infos: Vec<Value> = ids
                    .iter()
                    .filter_map(|id| {
                        let id = id.as_str()?;
                        let (name, bytes) = s.files.get(id)?;
                        Some(json!({"id": id, "name": name, "size": bytes.len()}))
                    })
                    .collect();
                post["file_ids"] = json!(ids);
                post["metadata"] = json!({"files": infos});
            }
            s.store_and_emit(post.clone());
            reply(StatusCode::CREATED, post)
        }
        ("PUT", ["posts", id, "patch"]) => {
            if s.post(id).is_none_or(|p| p["user_id"] != BOT_ID) {
                return app_error(
                    StatusCode::FORBIDDEN,
                    "api.context.permissions.app_error",
                    "You do not have the appropriate permissions.",
                );
            }
            let Some(message) = body["message"].as_str() else {
                return reply(StatusCode::OK, s.post(id).cloned().unwrap());
            };
            if message.chars().count() > 16383 {
                return app_error(
                    StatusCode::BAD_REQUEST,
                    "model.post.is_valid.message_length.app_error",
                    "Message property is longer than the maximum permitted length.",
                );
            }
            let post = edit_post(s, id, message).unwrap();
            reply(StatusCode::OK, post)
        }
        ("POST", ["files"]) => {
            let fields: HashMap<String, String> = parts
                .iter()
                .filter(|p| p.filename.is_none())
                .map(|p| {
                    (
                        p.name.clone(),
                        String::from_utf8_lossy(&p.data).into_owned(),
                    )
                })
                .collect();
            let Some(channel) = fields.get("channel_id").cloned() else {
                return app_error(
                    StatusCode::BAD_REQUEST,
                    "api.file.upload_file.missing_channel_id.app_error",
                    "Unable to upload file(s). Missing channel_id.",
                );
            };
            let mut infos = Vec::new();
            for part in parts.into_iter().filter(|p| p.name == "files") {
                let name = part.filename.clone().unwrap_or_default();
                let id = s.new_id("f");
                infos.push(
                    json!({"id": id, "user_id": BOT_ID, "post_id": "", "name": name,
                    "size": part.data.len(), "mime_type": "application/octet-stream"}),
                );
                s.uploads.push(Upload {
                    channel: channel.clone(),
                    name: name.clone(),
                    bytes: part.data.clone(),
                });
                s.files.insert(id, (name, part.data));
            }
            reply(
                StatusCode::CREATED,
                json!({"file_infos": infos, "client_ids": []}),
            )
        }
        ("GET", ["files", id]) => match s.files.get(*id) {
            Some((_, bytes)) => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(bytes.clone())))
                .unwrap(),
            None => not_found("file"),
        },
        _ => app_error(
            StatusCode::NOT_FOUND,
            "api.context.404.app_error",
            "Sorry, we could not find the page.",
        ),
    }
}

async fn ws_session(
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
            user: None,
            seq: 0,
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
                let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                let frozen = inner.state().conns.iter().find(|c| c.id == id).is_none_or(|c| c.frozen);
                if frozen {
                    continue;
                }
                let replies = inner.update(|s| {
                    s.ws_in.push(frame.clone());
                    ws_action(s, id, &frame)
                });
                for r in replies {
                    let _ = out.send(r.to_string());
                }
            }
        }
    }
    inner.update(|s| s.conns.retain(|c| c.id != id));
}

/// Answers one client action (`model.WebSocketRequest`: `seq`, `action`, `data`).
fn ws_action(s: &mut State, conn: u64, f: &Value) -> Vec<Value> {
    let seq = f["seq"].clone();
    let authed = s.conns.iter().any(|c| c.id == conn && c.user.is_some());
    match f["action"].as_str() {
        Some("authentication_challenge") => {
            if f["data"]["token"] != BOT_TOKEN {
                return vec![json!({"status": "FAIL", "seq_reply": seq, "error": {
                    "id": "api.web_socket_router.not_authenticated.app_error",
                    "message": "", "detailed_error": "", "status_code": 401}})];
            }
            s.ws_logins += 1;
            let mut hello_seq = 0;
            if let Some(c) = s.conns.iter_mut().find(|c| c.id == conn) {
                c.user = Some(BOT_ID.into());
                hello_seq = c.seq;
                c.seq += 1;
            }
            vec![
                json!({"status": "OK", "seq_reply": seq}),
                json!({"event": "hello", "data": {"connection_id": format!("conn{conn}"),
                    "server_hostname": "fake", "server_version": "10.11.0"},
                    "broadcast": {"omit_users": null, "user_id": BOT_ID, "channel_id": "",
                        "team_id": "", "connection_id": "", "omit_connection_id": ""},
                    "seq": hello_seq}),
            ]
        }
        _ if !authed => vec![json!({"status": "FAIL", "seq_reply": seq, "error": {
            "id": "api.web_socket_router.not_authenticated.app_error",
            "message": "", "detailed_error": "", "status_code": 401}})],
        Some("ping") => vec![json!({"status": "OK", "seq_reply": seq,
            "data": {"text": "pong", "version": "10.11.0", "server_time": s.now_ms()}})],
        Some("user_typing") => vec![json!({"status": "OK", "seq_reply": seq})],
        _ => vec![json!({"status": "FAIL", "seq_reply": seq, "error": {
            "id": "api.web_socket_router.bad_action.app_error", "message": "", "status_code": 400}})],
    }
}
