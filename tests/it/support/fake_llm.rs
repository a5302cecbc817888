//! A scripted, in-process fake of the Anthropic Messages API, so the real `claude` CLI runs
//! end to end in tests with no network.
//!
//! Owns: `POST /v1/messages` (SSE and JSON), `POST /v1/messages/count_tokens`,
//! `GET /v1/models`, a request log, and stateless turn selection:
//! 1. the first user message's text (all text parts joined) picks the first scenario whose
//!    `match` substring occurs in it (a scenario without `match` matches everything);
//! 2. the turn index is the number of `role: "assistant"` messages in the request (Claude's
//!    mid-conversation `role: "system"` entries do not count), so a resumed session
//!    continues the script and parallel tests never share a counter;
//! 3. out of turns → `default_text`; a request offering no tools gets text only.
//!
//! Script (a `serde_json::Value`, replaceable at runtime with [`FakeLlm::set_script`]):
//! ```json
//! {"scenarios": [
//!    {"match": "T-42 do it",
//!     "delay_ms": 0,
//!     "turns": [
//!       {"text": "I'll create the file.",
//!        "tool_calls": [{"name": "Bash", "input": {"command": "echo hello > out.txt"}}]},
//!       {"text": "Done."},
//!       {"error": {"status": 400, "body": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}}
//!     ]},
//!    {"match": "T-43", "error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
//!  ],
//!  "default_text": "OK", "delay_ms": 0}
//! ```
//! A bare list of turns, or `{"turns": […]}`, is one scenario. `error` (on a scenario or a
//! turn) answers with that HTTP status and `body`, or with an Anthropic error object built
//! from `type`/`message`. `delay_ms` (script or scenario) sleeps before each SSE event.
//! Listens on 127.0.0.1 only; stops when dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Headers kept in the request log (never the whole set: keep logs small and stable).
const LOGGED_HEADERS: &[&str] = &[
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
    "x-api-key",
    "authorization",
    "content-type",
    "x-stainless-package-version",
];

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query as sent (`/v1/messages?beta=true`).
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// The parsed JSON body (`Value::Null` when empty, `{"_raw": …}` when not JSON).
    pub body: Value,
}

impl LoggedRequest {
    /// Text of every message of the request, in order (for "was this in the history?").
    pub fn message_texts(&self) -> Vec<String> {
        self.body["messages"]
            .as_array()
            .map(|m| m.iter().map(|m| text_of(&m["content"])).collect())
            .unwrap_or_default()
    }

    /// The text of the request's last message: what a model call answers.
    pub fn last_text(&self) -> String {
        self.message_texts().pop().unwrap_or_default()
    }

    /// The turn of its scenario this call is answered with (see the module doc).
    pub fn turn(&self) -> usize {
        self.body["messages"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
    }

    /// True for model calls (`POST /v1/messages`, not count_tokens).
    pub fn is_messages_call(&self) -> bool {
        self.method == "POST" && route(&self.path) == "/messages"
    }
}

struct Shared {
    script: Mutex<Value>,
    log: Mutex<Vec<LoggedRequest>>,
    /// Wakes [`FakeLlm::wait_for`] on every logged request.
    logged: tokio::sync::Notify,
}

/// The running fake. Dropping it stops the server and every open connection.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FakeLlm {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start(script: Value) -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake LLM");
        let addr = listener.local_addr().expect("fake LLM address");
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            log: Mutex::new(Vec::new()),
            logged: tokio::sync::Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        FakeLlm { addr, shared, stop }
    }

    /// `http://127.0.0.1:<port>` — the value for `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_script(&self, script: Value) {
        *self.shared.script.lock().unwrap() = script;
    }

    /// Every request so far, with full bodies.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Only the model calls (`POST /v1/messages`).
    pub fn message_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_messages_call())
            .collect()
    }

    /// Waits (event-driven) until `cond` holds for the model calls so far; panics with `what`
    /// after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&[LoggedRequest]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.logged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.message_requests()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for the model to be asked {what}");
            }
        }
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Environment for a `claude` child pointed at this fake: base URL, a dummy key, and the
    /// four switches that make it send exactly one request per model turn.
    pub fn claude_env(&self) -> Vec<(String, String)> {
        [
            ("ANTHROPIC_BASE_URL", self.url()),
            ("ANTHROPIC_API_KEY", "test".to_string()),
            ("DISABLE_TELEMETRY", "1".to_string()),
            ("DISABLE_ERROR_REPORTING", "1".to_string()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
            ("DISABLE_AUTOUPDATER", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("fake_llm: accept failed: {e}");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service_stop = stop.clone();
            let service = service_fn(move |req| handle(req, shared.clone(), service_stop.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let headers = req
        .headers()
        .iter()
        .filter(|(k, _)| LOGGED_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw)
            .unwrap_or_else(|_| json!({"_raw": String::from_utf8_lossy(&raw)}))
    };
    shared.log.lock().unwrap().push(LoggedRequest {
        method: method.to_string(),
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    shared.logged.notify_waiters();
    let script = shared.script.lock().unwrap().clone();
    let response = match (method, route(&path)) {
        (Method::POST, "/messages/count_tokens") => {
            json_response(StatusCode::OK, &json!({"input_tokens": 100}))
        }
        (Method::POST, "/messages") => messages(&body, &script, stop),
        (Method::GET, "/models") => {
            let models: Vec<Value> = ["fake-model", "claude-sonnet-4-5"]
                .iter()
                .map(|m| {
                    json!({"id": m, "object": "model", "type": "model", "display_name": m,
                                "created_at": "2025-01-01T00:00:00Z"})
                })
                .collect();
            json_response(StatusCode::OK, &json!({"object": "list", "data": models}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"type": "error", "error": {"type": "not_found_error", "message": format!("fake_llm: no route for {path}")}}),
        ),
    };
    Ok(response)
}

/// The route without query string and without the optional `/v1` prefix.
fn route(path: &str) -> &str {
    let p = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    p.strip_prefix("/v1")
        .filter(|r| r.starts_with('/'))
        .unwrap_or(p)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("static response parts are valid")
}

/// A scenario of the script: when the conversation starts with `marker`, the model says
/// `text` and runs `command` with Bash, then, given the result, says `after`.
pub fn bash_scenario(marker: &str, text: &str, command: &str, after: &str) -> Value {
    json!({"match": marker, "turns": [bash_turn(text, command), {"text": after}]})
}

/// A turn in which the model says `text` and runs `command` with Bash.
pub fn bash_turn(text: &str, command: &str) -> Value {
    json!({"text": text, "tool_calls": [{"name": "Bash", "input": {"command": command}}]})
}

/// Flattens message content (string or list of parts) to text.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => ["text", "input_text", "content"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_string)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The script in its full form: `{"scenarios": [...], "default_text": ...}`.
fn normalise(script: &Value) -> Value {
    match script {
        Value::Array(turns) => json!({"scenarios": [{"turns": turns}], "default_text": "OK"}),
        Value::Object(o) if !o.contains_key("scenarios") => {
            let mut s = json!({
                "scenarios": [{"turns": o.get("turns").cloned().unwrap_or(json!([]))}],
                "default_text": o.get("default_text").cloned().unwrap_or(json!("OK")),
            });
            if let Some(d) = o.get("delay_ms") {
                s["delay_ms"] = d.clone();
            }
            s
        }
        Value::Object(_) => script.clone(),
        _ => json!({"scenarios": [], "default_text": "OK"}),
    }
}

/// What to answer: a turn (`text`, `tool_calls`) or an error, plus the event delay.
struct Selected {
    turn: Value,
    error: Option<Value>,
    delay: Duration,
}

fn select(script: &Value, first_user: &str, assistant_turns: usize, has_tools: bool) -> Selected {
    let script = normalise(script);
    let scenario = script["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["match"].as_str().is_none_or(|m| first_user.contains(m)));
    let delay_ms = scenario
        .and_then(|s| s["delay_ms"].as_u64())
        .or_else(|| script["delay_ms"].as_u64())
        .unwrap_or(0);
    let default_turn = || json!({"text": script["default_text"].as_str().unwrap_or("OK")});
    let mut turn = scenario
        .and_then(|s| s["turns"].as_array())
        .and_then(|t| t.get(assistant_turns))
        .cloned()
        .unwrap_or_else(default_turn);
    let error = turn
        .get("error")
        .cloned()
        .or_else(|| scenario.and_then(|s| s.get("error")).cloned());
    if !has_tools
        && turn
            .get("tool_calls")
            .is_some_and(|c| c.as_array().is_some_and(|c| !c.is_empty()))
    {
        let text = turn["text"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or("OK")
            .to_string();
        turn = json!({ "text": text });
    }
    Selected {
        turn,
        error,
        delay: Duration::from_millis(delay_ms),
    }
}

fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..24]
    )
}

fn error_response(error: &Value) -> Response<Body> {
    let status = error["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let body = error.get("body").cloned().unwrap_or_else(|| {
        json!({"type": "error", "error": {
            "type": error["type"].as_str().unwrap_or("invalid_request_error"),
            "message": error["message"].as_str().unwrap_or("fake_llm scripted error"),
        }})
    });
    json_response(status, &body)
}

fn messages(body: &Value, script: &Value, stop: CancellationToken) -> Response<Body> {
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let first_user = msgs
        .iter()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let assistant_turns = msgs.iter().filter(|m| m["role"] == "assistant").count();
    let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
    let selected = select(script, &first_user, assistant_turns, has_tools);
    if let Some(error) = &selected.error {
        return error_response(error);
    }
    let turn = &selected.turn;
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let mut blocks = Vec::new();
    if let Some(text) = turn["text"].as_str().filter(|t| !t.is_empty()) {
        blocks.push(json!({"type": "text", "text": text}));
    }
    let calls = turn["tool_calls"].as_array().cloned().unwrap_or_default();
    for call in &calls {
        blocks.push(json!({
            "type": "tool_use", "id": new_id("toolu_"),
            "name": call["name"], "input": call.get("input").cloned().unwrap_or(json!({})),
        }));
    }
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": ""}));
    }
    let stop_reason = if calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let usage = json!({"input_tokens": 100, "output_tokens": 20,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let id = new_id("msg_");
    if body["stream"] != Value::Bool(true) {
        return json_response(
            StatusCode::OK,
            &json!({"id": id, "type": "message", "role": "assistant", "model": model,
                    "content": blocks, "stop_reason": stop_reason, "stop_sequence": null, "usage": usage}),
        );
    }
    let events = sse_events(&id, &model, &blocks, stop_reason, &usage);
    sse_response(events, selected.delay, stop)
}

/// The exact event sequence Claude Code accepts (see the module docs of the reference).
fn sse_events(
    id: &str,
    model: &str,
    blocks: &[Value],
    stop_reason: &str,
    usage: &Value,
) -> Vec<(String, Value)> {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut ev = vec![(
        "message_start".to_string(),
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
               "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
    )];
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] == "text" {
            ev.push((
                "content_block_start".into(),
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}),
            ));
            // Several deltas, so partial-message handling is exercised.
            let chars: Vec<char> = b["text"].as_str().unwrap_or("").chars().collect();
            let chunks: Vec<String> = if chars.is_empty() {
                vec![String::new()]
            } else {
                chars.chunks(16).map(|c| c.iter().collect()).collect()
            };
            for piece in chunks {
                ev.push((
                    "content_block_delta".into(),
                    json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
        } else {
            ev.push((
                "content_block_start".into(),
                json!({"type": "content_block_start", "index": i, "content_block":
                       {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}),
            ));
            ev.push((
                "content_block_delta".into(),
                json!({"type": "content_block_delta", "index": i, "delta":
                       {"type": "input_json_delta", "partial_json": b["input"].to_string()}}),
            ));
        }
        ev.push((
            "content_block_stop".into(),
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    ev.push((
        "message_delta".into(),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": 20}}),
    ));
    ev.push(("message_stop".into(), json!({"type": "message_stop"})));
    ev
}

fn sse_response(
    events: Vec<(String, Value)>,
    delay: Duration,
    stop: CancellationToken,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for (name, data) in events {
            if !delay.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let frame = Frame::data(Bytes::from(format!("event: {name}\ndata: {data}\n\n")));
            // A closed receiver means the client went away: nothing left to do.
            if tx.send(Ok(frame)).await.is_err() {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("connection", "close")
        .body(StreamBody::new(stream).boxed())
        .expect("static response parts are valid")
}
