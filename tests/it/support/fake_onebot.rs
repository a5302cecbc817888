//! A fake OneBot V11 implementation (what NapCat is to the gateway), for tests.
//!
//! Reverse mode: [`FakeBot::connect`] opens the WebSocket to the gateway the way NapCat does
//! (`X-Self-ID`, `X-Client-Role: Universal`, a NapCat `User-Agent`, the token as `Bearer`,
//! `Token` or `access_token` query parameter). Forward mode: [`FakeServer`] listens on
//! 127.0.0.1 and hands out a [`FakeBot`] for each connection the gateway opens.
//!
//! A bot pushes events (recorded fixtures from `tests/fixtures/onebot/`, built with
//! [`fixture`], [`group_msg`], [`at_bot`], [`private_msg`]), records every action the gateway
//! calls (taken one by one with [`FakeBot::wait_action`], or all of them with
//! [`FakeBot::actions`] and [`FakeBot::wait_for`]), and answers them like NapCat: `send_*` with fresh message ids (and it
//! remembers those messages for `get_msg`), `get_msg`, `get_login_info`,
//! `get_group_msg_history` / `get_friend_msg_history` (seq ≤ `message_seq`, newest
//! `count`), `get_forward_msg`,
//! `upload_*_file`; unknown actions fail with retcode 1404. Failures are configurable per
//! action: an error answer (NapCat's `message`/`wording`) or no answer at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How a waiting helper gives up, so a broken gateway fails a test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

/// The QQ account of the bot in the recorded fixtures (`tests/fixtures/onebot/`).
pub const SELF: i64 = 2559840652;
/// The user who speaks in the fixtures (小明).
pub const USER: i64 = 361390990;
/// The group of the fixtures.
pub const GROUP: i64 = 627836955;
/// Another member of the group.
pub const GUEST: i64 = 4242;
/// The access token tests configure and the fake presents.
pub const TOKEN: &str = "s3cret-token";

/// A recorded frame from `tests/fixtures/onebot/<name>.json`.
pub fn fixture(name: &str) -> Value {
    let path = super::deps::root().join(format!("tests/fixtures/onebot/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A fixture with some top-level fields replaced.
pub fn event(name: &str, patch: Value) -> Value {
    let mut v = fixture(name);
    for (k, val) in patch.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// A message event in [`GROUP`] from `user` (nickname `u<user>`), with `message` segments.
pub fn group_msg(id: i64, user: i64, message: Value) -> Value {
    event(
        "group_message_array",
        json!({"message_id": id, "message_seq": id, "user_id": user,
               "sender": {"user_id": user, "nickname": format!("u{user}"), "card": ""},
               "message": message}),
    )
}

/// A group message that @-mentions the bot, then says `text`.
pub fn at_bot(id: i64, user: i64, text: &str) -> Value {
    group_msg(
        id,
        user,
        json!([{"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": format!(" {text}")}}]),
    )
}

/// A private message from `user` saying `text`.
pub fn private_msg(id: i64, user: i64, text: &str) -> Value {
    event(
        "private_message_array",
        json!({"message_id": id, "user_id": user,
               "sender": {"user_id": user, "nickname": format!("u{user}")},
               "message": [{"type": "text", "data": {"text": text}}]}),
    )
}

/// The text segments of a `send_*_msg` action, joined.
pub fn text_of(action: &Value) -> String {
    action["params"]["message"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "text")
        .map(|s| s["data"]["text"].as_str().unwrap())
        .collect()
}

/// How the fake presents its access token.
#[derive(Clone, Debug)]
pub enum Auth {
    None,
    /// `Authorization: Bearer <t>` (NapCat).
    Bearer(String),
    /// `Authorization: Token <t>` (older go-cqhttp).
    Token(String),
    /// `?access_token=<t>`.
    Query(String),
}

/// A configured failure for one action.
#[derive(Clone, Debug)]
pub enum Failure {
    /// Answer `status: failed` with this retcode and NapCat-style `message`.
    Error { retcode: i64, message: String },
    /// Never answer (the gateway must time out).
    Silent,
}

/// How a socket ended, seen from the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

struct State {
    self_id: i64,
    next_id: AtomicI64,
    failures: Mutex<HashMap<String, Failure>>,
    /// message id → `get_msg` data.
    messages: Mutex<HashMap<i64, Value>>,
    /// Group history entries (message events), any order.
    history: Mutex<Vec<Value>>,
    /// Imitates builds that ignore `message_seq` and always return the newest window
    /// (NapCat #441, #987).
    history_ignores_seq: std::sync::atomic::AtomicBool,
    forwards: Mutex<HashMap<String, Value>>,
    /// Every action the gateway called on this socket and got its answer to, in order;
    /// `logged` wakes waiters.
    log: Mutex<Vec<Value>>,
    logged: tokio::sync::Notify,
}

/// One connected fake bot.
pub struct FakeBot {
    pub self_id: i64,
    state: Arc<State>,
    out: mpsc::UnboundedSender<Message>,
    actions: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    closed: tokio::sync::Mutex<Option<oneshot::Receiver<Closed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HTTP status a rejected handshake got.
pub fn rejection_status(err: &tokio_tungstenite::tungstenite::Error) -> Option<u16> {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

impl FakeBot {
    /// Connects to a gateway's reverse-WS endpoint (`ws://127.0.0.1:port/onebot/v11/ws`).
    pub async fn connect(
        url: &str,
        self_id: i64,
        auth: Auth,
    ) -> Result<FakeBot, tokio_tungstenite::tungstenite::Error> {
        Self::connect_with(url, Some(self_id), auth, Some("Universal")).await
    }

    /// Like [`FakeBot::connect`] with control over the identifying headers.
    pub async fn connect_with(
        url: &str,
        self_id: Option<i64>,
        auth: Auth,
        role: Option<&str>,
    ) -> Result<FakeBot, tokio_tungstenite::tungstenite::Error> {
        Self::open(url, self_id, auth, role, Vec::new()).await
    }

    async fn open(
        url: &str,
        self_id: Option<i64>,
        auth: Auth,
        role: Option<&str>,
        history: Vec<Value>,
    ) -> Result<FakeBot, tokio_tungstenite::tungstenite::Error> {
        let url = match &auth {
            Auth::Query(t) => format!("{url}?access_token={t}"),
            _ => url.to_string(),
        };
        let mut req = url.into_client_request()?;
        let headers = req.headers_mut();
        if let Some(id) = self_id {
            headers.insert("X-Self-ID", HeaderValue::from_str(&id.to_string()).unwrap());
        }
        if let Some(role) = role {
            headers.insert("X-Client-Role", HeaderValue::from_str(role).unwrap());
        }
        headers.insert(
            "User-Agent",
            HeaderValue::from_static("NapCat/4.18.13 (fake)"),
        );
        match &auth {
            Auth::Bearer(t) => {
                headers.insert(
                    "Authorization",
                    HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
                );
            }
            Auth::Token(t) => {
                headers.insert(
                    "Authorization",
                    HeaderValue::from_str(&format!("Token {t}")).unwrap(),
                );
            }
            Auth::None | Auth::Query(_) => {}
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Self::start(ws, self_id.unwrap_or(0), history))
    }

    /// Connects with history already present (what QQ received while the gateway was away),
    /// so it is there when the gateway asks right after the handshake.
    pub async fn connect_with_history(
        url: &str,
        self_id: i64,
        auth: Auth,
        history: Vec<Value>,
    ) -> Result<FakeBot, tokio_tungstenite::tungstenite::Error> {
        Self::open(url, Some(self_id), auth, Some("Universal"), history).await
    }

    fn start<S>(ws: WebSocketStream<S>, self_id: i64, history: Vec<Value>) -> FakeBot
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(State {
            self_id,
            next_id: AtomicI64::new(1_000_000),
            failures: Mutex::default(),
            messages: Mutex::default(),
            history: Mutex::new(history),
            history_ignores_seq: Default::default(),
            forwards: Mutex::default(),
            log: Mutex::default(),
            logged: tokio::sync::Notify::new(),
        });
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (act_tx, act_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = oneshot::channel();
        let task = tokio::spawn(socket_loop(ws, state.clone(), out_rx, act_tx, closed_tx));
        FakeBot {
            self_id,
            state,
            out: out_tx,
            actions: tokio::sync::Mutex::new(act_rx),
            closed: tokio::sync::Mutex::new(Some(closed_rx)),
            task,
        }
    }

    /// Pushes an event frame.
    pub fn send_event(&self, event: &Value) {
        let _ = self.out.send(Message::text(event.to_string()));
    }

    /// Pushes raw text (for malformed-frame tests).
    pub fn send_raw(&self, text: &str) {
        let _ = self.out.send(Message::text(text.to_string()));
    }

    pub fn heartbeat(&self, interval_ms: u64) {
        self.send_event(&json!({
            "time": now_secs(), "self_id": self.self_id, "post_type": "meta_event",
            "meta_event_type": "heartbeat", "status": {"online": true, "good": true},
            "interval": interval_ms
        }));
    }

    pub fn lifecycle_connect(&self) {
        self.send_event(&json!({
            "time": now_secs(), "self_id": self.self_id, "post_type": "meta_event",
            "meta_event_type": "lifecycle", "sub_type": "connect"
        }));
    }

    pub fn fail(&self, action: &str, failure: Failure) {
        self.state
            .failures
            .lock()
            .unwrap()
            .insert(action.to_string(), failure);
    }

    /// Makes `get_msg(message_id)` answer with this sender and message, said in [`GROUP`].
    pub fn remember_message(
        &self,
        message_id: i64,
        sender_id: i64,
        nickname: &str,
        message: Value,
    ) {
        self.remember_message_in(GROUP, message_id, sender_id, nickname, message);
    }

    /// [`FakeBot::remember_message`] in group `group`, or in a private chat for group 0
    /// (NapCat's answer: `group_id` besides V11's `message_type`).
    pub fn remember_message_in(
        &self,
        group: i64,
        message_id: i64,
        sender_id: i64,
        nickname: &str,
        message: Value,
    ) {
        let mut data = json!({"message_id": message_id, "real_id": message_id, "time": now_secs(),
               "message_type": "private",
               "sender": {"user_id": sender_id, "nickname": nickname}, "message": message});
        if group != 0 {
            data["message_type"] = json!("group");
            data["group_id"] = json!(group);
        }
        self.state.messages.lock().unwrap().insert(message_id, data);
    }

    /// Makes `get_msg(message_id)` answer without `group_id`, as a strict V11 implementation.
    pub fn forget_group_of(&self, message_id: i64) {
        if let Some(m) = self.state.messages.lock().unwrap().get_mut(&message_id) {
            if let Some(o) = m.as_object_mut() {
                o.remove("group_id");
            }
        }
    }

    /// Adds group history entries (message events) for `get_group_msg_history`.
    pub fn add_history(&self, entries: Vec<Value>) {
        self.state.history.lock().unwrap().extend(entries);
    }

    /// Makes `get_group_msg_history` ignore `message_seq` (a known bug of some builds).
    pub fn history_ignores_seq(&self) {
        self.state
            .history_ignores_seq
            .store(true, Ordering::Relaxed);
    }

    pub fn add_forward(&self, id: &str, nodes: Value) {
        self.state
            .forwards
            .lock()
            .unwrap()
            .insert(id.to_string(), nodes);
    }

    /// The next action the gateway called with this name (others are skipped). Panics after
    /// [`WAIT`].
    pub async fn wait_action(&self, name: &str) -> Value {
        self.wait_action_where(name, WAIT, |_| true).await
    }

    /// The next action with this name for which `pred` holds, within `timeout` (others are
    /// skipped).
    pub async fn wait_action_where(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut rx = self.actions.lock().await;
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            while let Some(a) = rx.recv().await {
                if a["action"] == name && pred(&a) {
                    return Some(a);
                }
                skipped.push(a);
            }
            None
        })
        .await;
        match found {
            Ok(Some(a)) => a,
            Ok(None) => panic!("socket closed while waiting for action {name}; saw {skipped:?}"),
            Err(_) => panic!("no matching {name} action within {timeout:?}; saw {skipped:?}"),
        }
    }

    /// Waits (event-driven) until `cond` holds for every action called so far, whether or
    /// not another helper took it; panics with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.logged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.state.log.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    /// Every action called on this socket so far.
    pub fn actions(&self) -> Vec<Value> {
        self.state.log.lock().unwrap().clone()
    }

    /// Every action received so far that nobody has waited for.
    pub async fn drain_actions(&self) -> Vec<Value> {
        let mut rx = self.actions.lock().await;
        let mut out = Vec::new();
        while let Ok(a) = rx.try_recv() {
            out.push(a);
        }
        out
    }

    /// Closes the socket from the fake's side (NapCat restarting).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }

    /// Waits until the socket is closed (by either side) and reports how.
    pub async fn closed(&self) -> Closed {
        let rx = self
            .closed
            .lock()
            .await
            .take()
            .expect("closed() called twice");
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("socket not closed in time")
            .unwrap_or(Closed {
                code: None,
                reason: "fake task ended".into(),
            })
    }
}

async fn socket_loop<S>(
    ws: WebSocketStream<S>,
    state: Arc<State>,
    mut out: mpsc::UnboundedReceiver<Message>,
    actions: mpsc::UnboundedSender<Value>,
    closed: oneshot::Sender<Closed>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let by_fake = || Closed {
        code: None,
        reason: "closed by fake".into(),
    };
    // After sending its Close the fake reads on, answering nothing, until the gateway answers
    // or goes (the closing handshake): the gateway has then read everything sent before.
    let mut closing = false;
    let outcome = loop {
        tokio::select! {
            msg = out.recv(), if !closing => {
                let Some(msg) = msg else { break Closed { code: None, reason: "fake dropped".into() } };
                closing = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() {
                    break by_fake();
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(m)) if closing && !m.is_close() => {}
                _ if closing => break by_fake(),
                Some(Ok(Message::Text(t))) => {
                    let Ok(action) = serde_json::from_str::<Value>(&t) else { continue };
                    let _ = actions.send(action.clone());
                    if let Some(resp) = answer(&state, &action) {
                        if sink.send(Message::text(resp.to_string())).await.is_err() {
                            break Closed { code: None, reason: "send failed".into() };
                        }
                    }
                    // Logged once its answer is on the wire: a test that closes the socket
                    // after seeing an action knows the gateway will read the answer first.
                    state.log.lock().unwrap().push(action);
                    state.logged.notify_waiters();
                }
                Some(Ok(Message::Close(f))) => {
                    break match f {
                        Some(f) => Closed { code: Some(u16::from(f.code)), reason: f.reason.to_string() },
                        None => Closed { code: None, reason: String::new() },
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Closed { code: None, reason: e.to_string() },
                None => break Closed { code: None, reason: "eof".into() },
            }
        }
    };
    let _ = closed.send(outcome);
}

fn answer(state: &State, action: &Value) -> Option<Value> {
    let name = action["action"].as_str().unwrap_or("");
    let echo = action["echo"].clone();
    let params = &action["params"];
    let ok = |data: Value| json!({"status": "ok", "retcode": 0, "data": data, "message": "", "wording": "", "echo": echo});
    let failed = |retcode: i64, message: &str| json!({"status": "failed", "retcode": retcode, "data": null, "message": message, "wording": message, "echo": echo});
    if let Some(f) = state.failures.lock().unwrap().get(name).cloned() {
        return match f {
            Failure::Silent => None,
            Failure::Error { retcode, message } => Some(failed(retcode, &message)),
        };
    }
    Some(match name {
        "send_private_msg"
        | "send_group_msg"
        | "send_msg"
        | "send_group_forward_msg"
        | "send_private_forward_msg"
        | "send_forward_msg" => {
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let message = params
                .get("message")
                .or_else(|| params.get("messages"))
                .cloned()
                .unwrap_or(Value::Null);
            let mut data = json!({"message_id": id, "time": now_secs(), "message_type": "private",
                   "sender": {"user_id": state.self_id, "nickname": "bot"}, "message": message});
            if let Some(group) = params.get("group_id").filter(|g| !g.is_null()) {
                data["message_type"] = json!("group");
                data["group_id"] = group.clone();
            }
            state.messages.lock().unwrap().insert(id, data);
            ok(json!({"message_id": id}))
        }
        "get_msg" => {
            let id = params["message_id"].as_i64().unwrap_or(0);
            match state.messages.lock().unwrap().get(&id) {
                Some(m) => ok(m.clone()),
                None => failed(200, "消息不存在"),
            }
        }
        "get_login_info" => ok(json!({"user_id": state.self_id, "nickname": "fakebot"})),
        "get_group_msg_history" => {
            let group = params["group_id"].as_i64().unwrap_or(0);
            let honour_seq = !state.history_ignores_seq.load(Ordering::Relaxed);
            ok(history_page(state, params, honour_seq, |m| {
                m["group_id"].as_i64() == Some(group)
            }))
        }
        "get_friend_msg_history" => {
            let user = params["user_id"].as_i64().unwrap_or(0);
            ok(history_page(state, params, true, |m| {
                m["message_type"] == "private"
                    && (m["user_id"].as_i64() == Some(user)
                        || m["target_id"].as_i64() == Some(user))
            }))
        }
        "get_forward_msg" => {
            let id = params["id"].as_str().unwrap_or("");
            match state.forwards.lock().unwrap().get(id) {
                Some(nodes) => ok(json!({"messages": nodes})),
                None => failed(200, "转发消息不存在"),
            }
        }
        "upload_group_file" | "upload_private_file" => ok(json!({})),
        _ => failed(1404, "不支持的Api"),
    })
}

/// A `get_*_msg_history` answer: the newest `count` entries of the conversation (`belongs`)
/// up to `message_seq` (unless the build ignores it), oldest first.
fn history_page(
    state: &State,
    params: &Value,
    honour_seq: bool,
    belongs: impl Fn(&Value) -> bool,
) -> Value {
    let count = params["count"].as_u64().unwrap_or(20) as usize;
    let seq = params["message_seq"].as_i64().filter(|_| honour_seq);
    let mut entries: Vec<Value> = state
        .history
        .lock()
        .unwrap()
        .iter()
        .filter(|m| belongs(m))
        .filter(|m| seq.is_none_or(|s| m["message_seq"].as_i64().unwrap_or(0) <= s))
        .cloned()
        .collect();
    entries.sort_by_key(|m| m["message_seq"].as_i64().unwrap_or(0));
    let start = entries.len().saturating_sub(count);
    json!({"messages": entries[start..].to_vec()})
}

/// Forward mode: a NapCat-like WebSocket server the gateway connects to.
pub struct FakeServer {
    pub addr: SocketAddr,
    self_id: i64,
    token: Option<String>,
    listener: TcpListener,
}

impl FakeServer {
    pub async fn bind(self_id: i64, token: Option<&str>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeServer {
            addr: listener.local_addr().unwrap(),
            self_id,
            token: token.map(str::to_string),
            listener,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Accepts the gateway's next connection (rejecting a wrong token with 401 and waiting
    /// on), and returns the bot serving it.
    pub async fn accept(&self) -> FakeBot {
        tokio::time::timeout(WAIT, async {
            loop {
                let (stream, _) = self.listener.accept().await.unwrap();
                if let Some(ws) = self.handshake(stream).await {
                    return FakeBot::start(ws, self.self_id, Vec::new());
                }
            }
        })
        .await
        .expect("the gateway did not connect in time")
    }

    // The callback's `Result<Response, ErrorResponse>` is tungstenite's `Callback` signature.
    #[allow(clippy::result_large_err)]
    async fn handshake(&self, stream: TcpStream) -> Option<WebSocketStream<TcpStream>> {
        let expected = self.token.clone().map(|t| format!("Bearer {t}"));
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let got = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if expected.is_some() && got != expected.as_deref() {
                let mut r = ErrorResponse::new(Some("unauthorized".into()));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                return Err(r);
            }
            Ok(resp)
        };
        tokio_tungstenite::accept_hdr_async(stream, check)
            .await
            .ok()
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
