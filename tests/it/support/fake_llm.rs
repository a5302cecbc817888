//! A scripted, in-process fake of the model APIs the agent CLIs call, so the real CLIs run
//! end to end in tests with no network: Claude Code (Anthropic Messages), OpenCode (OpenAI
//! Chat Completions), Codex (OpenAI Responses) and Gemini CLI (Gemini `generateContent`).
//!
//! Owns these routes (`/v1` is optional on the first three):
//! - `POST /v1/messages` (SSE and JSON), `POST /v1/messages/count_tokens`, `GET /v1/models`;
//! - `POST /v1/chat/completions` (SSE when `stream: true`, else JSON);
//! - `POST /v1/responses` (SSE when `stream: true`, else JSON);
//! - `POST /v1beta/models/<M>:streamGenerateContent` (SSE), `:generateContent` (JSON) and
//!   `:countTokens`;
//!
//! and a request log (with per-API readers on [`LoggedRequest`]), and one stateless turn
//! selection for every API:
//! 1. the first user message's text (all text parts joined; for Responses every user
//!    message's, since Codex puts its `<environment_context>` message before the prompt) picks
//!    the first scenario whose `match` substring occurs in it (a scenario without `match`
//!    matches everything);
//! 2. the turn index is the number of assistant turns in the request: `role: "assistant"`
//!    messages (Claude's mid-conversation `role: "system"` entries do not count), Gemini
//!    `role: "model"` contents, and for Responses each run of assistant `message`,
//!    `function_call` and `reasoning` items; so a resumed session continues the script, and
//!    neither parallel tests nor OpenCode's title call or a resume share a counter;
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
//!       {"text": "Now with whatever shell tool the CLI offers.",
//!        "tool_calls": [{"shell": "echo again >> out.txt"}]},
//!       {"text": "Done."},
//!       {"error": {"status": 400, "body": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}}
//!     ]},
//!    {"match": "T-43", "error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
//!  ],
//!  "default_text": "OK", "delay_ms": 0}
//! ```
//! A bare list of turns, or `{"turns": […]}`, is one scenario. A tool call is
//! `{"name", "input"}` as the CLI's tool expects it, or `{"shell": "<command>"}`, which
//! becomes the shell tool the request offers ([`SHELL_TOOLS`]: Claude `Bash`, OpenCode
//! `bash`, Codex `exec_command`, Gemini `run_shell_command`). `error` (on a scenario or a
//! turn) answers with that HTTP status and `body`, or with the API's own error object built
//! from `type`/`message`, plus its `headers` (an object of name → value; e.g. Anthropic's
//! `anthropic-ratelimit-unified-*`, which turn a 429 into a usage limit for OAuth logins). `delay_ms` (script or scenario) sleeps before each SSE event.
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
    // Codex names itself here; Gemini CLI sends its key here.
    "originator",
    "x-goog-api-key",
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
    /// Which model API the request was for (`None` for count_tokens, models and the rest).
    pub fn api(&self) -> Option<Api> {
        if self.method != "POST" {
            return None;
        }
        Api::of(&self.path)
    }

    /// True for model calls of any API (`/v1/messages`, `/v1/chat/completions`,
    /// `/v1/responses`, Gemini `:generateContent`/`:streamGenerateContent`).
    pub fn is_model_call(&self) -> bool {
        self.api().is_some()
    }

    /// True for Anthropic model calls (`POST /v1/messages`, not count_tokens).
    pub fn is_messages_call(&self) -> bool {
        self.api() == Some(Api::Messages)
    }

    /// Text of every message of the request, in order (for "was this in the history?"):
    /// Messages and Chat Completions `messages[]`, Responses `input[]` items (a function
    /// call's arguments, a call output's text), Gemini `contents[]` (a `functionResponse`'s
    /// response as JSON).
    pub fn message_texts(&self) -> Vec<String> {
        let Some(api) = self.api() else {
            return Vec::new();
        };
        api.history(&self.body)
            .iter()
            .map(|m| m.text.clone())
            .collect()
    }

    /// The text of the request's last message: what a model call answers.
    pub fn last_text(&self) -> String {
        self.message_texts().pop().unwrap_or_default()
    }

    /// The turn of its scenario this call is answered with (see the module doc).
    pub fn turn(&self) -> usize {
        self.api()
            .map_or(0, |api| Conversation::of(api, &self.body).turns)
    }

    /// Names of the tools the request offers the model.
    pub fn tool_names(&self) -> Vec<String> {
        self.api()
            .map_or_else(Vec::new, |api| Conversation::of(api, &self.body).tools)
    }
}

/// The model APIs the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Anthropic `POST /v1/messages` (Claude Code).
    Messages,
    /// OpenAI `POST /v1/chat/completions` (OpenCode through `@ai-sdk/openai-compatible`).
    ChatCompletions,
    /// OpenAI `POST /v1/responses` (Codex).
    Responses,
    /// Gemini `POST /v1beta/models/<M>:generateContent` or `:streamGenerateContent`.
    Gemini { stream: bool },
}

/// One entry of a request's conversation, flattened.
struct Entry {
    /// `user`, `assistant`, `system`, `tool`, … as the API names it (Gemini `model` is
    /// `assistant`; a Responses `function_call` is `assistant`, its output `tool`).
    role: String,
    text: String,
    /// True when the entry is a tool result given back to the model (Anthropic's tool
    /// results arrive inside `user` messages; they are no user's words).
    tool_result: bool,
}

impl Api {
    fn of(path: &str) -> Option<Api> {
        let r = route(path);
        if r.ends_with(":streamGenerateContent") {
            return Some(Api::Gemini { stream: true });
        }
        if r.ends_with(":generateContent") {
            return Some(Api::Gemini { stream: false });
        }
        match r {
            "/messages" => Some(Api::Messages),
            "/chat/completions" => Some(Api::ChatCompletions),
            "/responses" => Some(Api::Responses),
            _ => None,
        }
    }

    /// The request's conversation, in order.
    fn history(self, body: &Value) -> Vec<Entry> {
        let entry = |role: &str, text: String, tool_result: bool| Entry {
            role: role.to_string(),
            text,
            tool_result,
        };
        match self {
            Api::Messages | Api::ChatCompletions => body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let role = m["role"].as_str().unwrap_or("");
                    let tool_result = role == "tool"
                        || m["content"].as_array().is_some_and(|parts| {
                            !parts.is_empty() && parts.iter().all(|p| p["type"] == "tool_result")
                        });
                    entry(role, text_of(&m["content"]), tool_result)
                })
                .collect(),
            Api::Responses => match &body["input"] {
                Value::String(s) => vec![entry("user", s.clone(), false)],
                input => input
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| match i["type"].as_str().unwrap_or("message") {
                        "message" => entry(
                            i["role"].as_str().unwrap_or(""),
                            text_of(&i["content"]),
                            false,
                        ),
                        "function_call" | "custom_tool_call" | "local_shell_call" => {
                            let args = i.get("arguments").or_else(|| i.get("input"));
                            entry("assistant", args.map(value_text).unwrap_or_default(), false)
                        }
                        "reasoning" => entry("assistant", text_of(&i["summary"]), false),
                        kind if kind.ends_with("_output") => {
                            entry("tool", value_text(&i["output"]), true)
                        }
                        kind => entry(kind, String::new(), false),
                    })
                    .collect(),
            },
            Api::Gemini { .. } => body["contents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let parts = c["parts"].as_array().cloned().unwrap_or_default();
                    let tool_result = !parts.is_empty()
                        && parts.iter().all(|p| p.get("functionResponse").is_some());
                    let text = parts
                        .iter()
                        .filter_map(|p| {
                            p["text"]
                                .as_str()
                                .map(str::to_string)
                                .or_else(|| {
                                    p.get("functionResponse").map(|r| r["response"].to_string())
                                })
                                .or_else(|| p.get("functionCall").map(|c| c["args"].to_string()))
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    let role = match c["role"].as_str().unwrap_or("user") {
                        "model" => "assistant",
                        r => r,
                    };
                    entry(role, text, tool_result)
                })
                .collect(),
        }
    }
}

/// What turn selection reads from a request.
struct Conversation {
    /// The text that picks the scenario (module doc, rule 1).
    first_user: String,
    /// Assistant turns so far (module doc, rule 2).
    turns: usize,
    /// Names of the offered tools.
    tools: Vec<String>,
}

impl Conversation {
    fn of(api: Api, body: &Value) -> Conversation {
        let history = api.history(body);
        let mut users = history
            .iter()
            .filter(|e| e.role == "user" && !e.tool_result)
            .map(|e| e.text.clone());
        let first_user = match api {
            Api::Responses => users.collect::<Vec<_>>().join("\n"),
            _ => users.next().unwrap_or_default(),
        };
        // A turn is a run of assistant entries: one per assistant message everywhere but in
        // Responses, where a turn's text, reasoning and function calls are separate items.
        let mut turns = 0;
        let mut in_turn = false;
        for e in &history {
            let assistant = e.role == "assistant";
            if assistant && (!in_turn || api != Api::Responses) {
                turns += 1;
            }
            in_turn = assistant;
        }
        let tools = match api {
            Api::Gemini { .. } => body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["functionDeclarations"].as_array())
                .flatten()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect(),
            _ => body["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    t["name"]
                        .as_str()
                        .or_else(|| t["function"]["name"].as_str())
                        .or_else(|| t["type"].as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect(),
        };
        Conversation {
            first_user,
            turns,
            tools,
        }
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

    /// The messages' text of the last model call, of any API, whose conversation holds
    /// `marker` (a scenario's match): "was the earlier exchange sent again?".
    pub fn conversation(&self, marker: &str) -> String {
        self.requests()
            .iter()
            .filter(|r| r.is_model_call())
            .map(|r| r.message_texts().join("\n"))
            .rfind(|t| t.contains(marker))
            .unwrap_or_default()
    }

    /// Only the model calls, of every API ([`LoggedRequest::is_model_call`]).
    pub fn message_requests(&self) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_model_call())
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
    // The script is taken before the request is logged: a test that changes the script
    // once it sees a request knows that request is answered by the old one.
    let script = shared.script.lock().unwrap().clone();
    shared.log.lock().unwrap().push(LoggedRequest {
        method: method.to_string(),
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    shared.logged.notify_waiters();
    let response = match (method, route(&path)) {
        (Method::POST, "/messages/count_tokens") => {
            json_response(StatusCode::OK, &json!({"input_tokens": 100}))
        }
        (Method::POST, r) if r.ends_with(":countTokens") => {
            json_response(StatusCode::OK, &json!({"totalTokens": 100}))
        }
        (Method::POST, _) if Api::of(&path).is_some() => {
            let api = Api::of(&path).expect("checked by the guard");
            answer(api, &path, &body, &script, stop)
        }
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
/// `text` and runs `command` with the CLI's shell tool, then, given the result, says `after`.
pub fn bash_scenario(marker: &str, text: &str, command: &str, after: &str) -> Value {
    json!({"match": marker, "turns": [bash_turn(text, command), {"text": after}]})
}

/// A turn in which the model says `text` and runs `command` with the shell tool the request
/// offers (`Bash` for Claude; see [`SHELL_TOOLS`]).
pub fn bash_turn(text: &str, command: &str) -> Value {
    json!({"text": text, "tool_calls": [{"shell": command}]})
}

/// The shell tools of the CLIs, in the order a `{"shell": …}` call looks for them in the
/// request's tools, each with how it takes the command. The first is also the fallback when
/// the request offers none of them.
pub const SHELL_TOOLS: &[(&str, ShellArgs)] = &[
    ("Bash", ShellArgs::Command),
    ("bash", ShellArgs::CommandDescription),
    ("exec_command", ShellArgs::Cmd),
    ("run_shell_command", ShellArgs::CommandDescription),
];

/// How a shell tool takes its command.
#[derive(Clone, Copy, Debug)]
pub enum ShellArgs {
    /// `{"command": …}` (Claude `Bash`).
    Command,
    /// `{"command": …, "description": …}`: OpenCode's `bash` and Gemini's
    /// `run_shell_command` both require the description.
    CommandDescription,
    /// `{"cmd": …}` (Codex `exec_command`).
    Cmd,
}

/// The `{name, input}` a `{"shell": command}` call becomes for a request offering `tools`.
fn shell_call(command: &str, tools: &[String]) -> Value {
    let (name, args) = SHELL_TOOLS
        .iter()
        .find(|(name, _)| tools.iter().any(|t| t == name))
        .unwrap_or(&SHELL_TOOLS[0]);
    let input = match args {
        ShellArgs::Command => json!({"command": command}),
        ShellArgs::CommandDescription => {
            json!({"command": command, "description": "Run a shell command"})
        }
        ShellArgs::Cmd => json!({"cmd": command}),
    };
    json!({"name": name, "input": input})
}

/// Flattens message content (string or list of parts) to text.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => ["text", "input_text", "content"].iter().find_map(|k| {
                    match o.get(*k) {
                        Some(Value::String(s)) => Some(s.clone()),
                        // A tool result whose content is itself a list of parts.
                        Some(v @ Value::Array(_)) => Some(text_of(v)),
                        _ => None,
                    }
                }),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A string as itself, a list of parts as [`text_of`], anything else as JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(_) => text_of(v),
        Value::Null => String::new(),
        v => v.to_string(),
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

/// What to answer: text and tool calls (`{name, input}`, shell calls resolved) or an error,
/// plus the event delay.
struct Selected {
    text: String,
    calls: Vec<Value>,
    error: Option<Value>,
    delay: Duration,
}

fn select(script: &Value, conversation: &Conversation) -> Selected {
    let script = normalise(script);
    let scenario = script["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            s["match"]
                .as_str()
                .is_none_or(|m| conversation.first_user.contains(m))
        });
    let delay_ms = scenario
        .and_then(|s| s["delay_ms"].as_u64())
        .or_else(|| script["delay_ms"].as_u64())
        .unwrap_or(0);
    let default_turn = || json!({"text": script["default_text"].as_str().unwrap_or("OK")});
    let turn = scenario
        .and_then(|s| s["turns"].as_array())
        .and_then(|t| t.get(conversation.turns))
        .cloned()
        .unwrap_or_else(default_turn);
    let error = turn
        .get("error")
        .cloned()
        .or_else(|| scenario.and_then(|s| s.get("error")).cloned());
    let mut text = turn["text"].as_str().unwrap_or("").to_string();
    let mut calls: Vec<Value> = turn["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| match c["shell"].as_str() {
            Some(command) => shell_call(command, &conversation.tools),
            None => c.clone(),
        })
        .collect();
    if conversation.tools.is_empty() && !calls.is_empty() {
        calls.clear();
        if text.is_empty() {
            text = "OK".into();
        }
    }
    Selected {
        text,
        calls,
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

/// The scripted error: its `body` as given, else the API's own error object.
fn error_response(api: Api, error: &Value) -> Response<Body> {
    let status = error["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let kind = error["type"].as_str().unwrap_or("invalid_request_error");
    let message = error["message"]
        .as_str()
        .unwrap_or("fake_llm scripted error");
    let body = error.get("body").cloned().unwrap_or_else(|| match api {
        Api::Messages => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Api::ChatCompletions | Api::Responses => {
            json!({"error": {"type": kind, "message": message, "code": kind, "param": null}})
        }
        Api::Gemini { .. } => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
        }
    });
    let mut response = json_response(status, &body);
    for (name, value) in error["headers"].as_object().into_iter().flatten() {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes());
        let value = value.as_str().map(hyper::header::HeaderValue::from_str);
        if let (Ok(name), Some(Ok(value))) = (name, value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Answers a model call of `api` by the script.
fn answer(
    api: Api,
    path: &str,
    body: &Value,
    script: &Value,
    stop: CancellationToken,
) -> Response<Body> {
    let selected = select(script, &Conversation::of(api, body));
    if let Some(error) = &selected.error {
        return error_response(api, error);
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let stream = body["stream"] == Value::Bool(true);
    let events = match api {
        Api::Messages => messages(&selected, &model, stream),
        Api::ChatCompletions => chat_completions(&selected, &model, stream),
        Api::Responses => responses(&selected, &model, stream),
        Api::Gemini { stream } => {
            let model = route(path)
                .rsplit('/')
                .next()
                .and_then(|m| m.split(':').next())
                .unwrap_or("fake-model");
            gemini(&selected, model, stream)
        }
    };
    match events {
        Answer::Json(v) => json_response(StatusCode::OK, &v),
        Answer::Sse(events) => sse_response(events, selected.delay, stop),
    }
}

/// A model call's answer: one JSON body, or SSE events (`event:` name if any, `data:`).
enum Answer {
    Json(Value),
    Sse(Vec<(Option<&'static str>, String)>),
}

/// `data` events named after their `type` (the Anthropic and Responses streams).
fn typed_events(events: Vec<Value>, names: impl Fn(&Value) -> &'static str) -> Answer {
    Answer::Sse(
        events
            .into_iter()
            .map(|e| (Some(names(&e)), e.to_string()))
            .collect(),
    )
}

/// Pieces of `text` of at most 16 characters (at least one, maybe empty), so clients'
/// partial-message handling is exercised.
fn chunks(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(16).map(|c| c.iter().collect()).collect()
}

fn messages(selected: &Selected, model: &str, stream: bool) -> Answer {
    let mut blocks = Vec::new();
    if !selected.text.is_empty() {
        blocks.push(json!({"type": "text", "text": selected.text}));
    }
    for call in &selected.calls {
        blocks.push(json!({
            "type": "tool_use", "id": new_id("toolu_"),
            "name": call["name"], "input": call.get("input").cloned().unwrap_or(json!({})),
        }));
    }
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": ""}));
    }
    let stop_reason = if selected.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    let usage = json!({"input_tokens": 100, "output_tokens": 20,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let id = new_id("msg_");
    if !stream {
        return Answer::Json(
            json!({"id": id, "type": "message", "role": "assistant", "model": model,
                    "content": blocks, "stop_reason": stop_reason, "stop_sequence": null, "usage": usage}),
        );
    }
    let events = messages_events(&id, model, &blocks, stop_reason, &usage);
    typed_events(events, |e| match e["type"].as_str() {
        Some("message_start") => "message_start",
        Some("content_block_start") => "content_block_start",
        Some("content_block_delta") => "content_block_delta",
        Some("content_block_stop") => "content_block_stop",
        Some("message_delta") => "message_delta",
        _ => "message_stop",
    })
}

/// The exact event sequence Claude Code accepts (see the module docs of the reference).
fn messages_events(
    id: &str,
    model: &str,
    blocks: &[Value],
    stop_reason: &str,
    usage: &Value,
) -> Vec<Value> {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut ev = vec![
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
               "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
    ];
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] == "text" {
            ev.push(json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}));
            for piece in chunks(b["text"].as_str().unwrap_or("")) {
                ev.push(json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}}));
            }
        } else {
            ev.push(
                json!({"type": "content_block_start", "index": i, "content_block":
                       {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}}),
            );
            ev.push(json!({"type": "content_block_delta", "index": i, "delta":
                       {"type": "input_json_delta", "partial_json": b["input"].to_string()}}));
        }
        ev.push(json!({"type": "content_block_stop", "index": i}));
    }
    ev.push(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": 20}}));
    ev.push(json!({"type": "message_stop"}));
    ev
}

/// OpenAI Chat Completions: a `chat.completion`, or `chat.completion.chunk` data events (the
/// role, the text in pieces, each tool call's name then its arguments, the finish reason, a
/// usage-only chunk) and `[DONE]`.
fn chat_completions(selected: &Selected, model: &str, stream: bool) -> Answer {
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let calls: Vec<Value> = selected
        .calls
        .iter()
        .map(|c| {
            json!({"id": new_id("call_"), "type": "function", "function":
                   {"name": c["name"], "arguments": c.get("input").cloned().unwrap_or(json!({})).to_string()}})
        })
        .collect();
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
    if !stream {
        let mut message = json!({"role": "assistant",
            "content": if selected.text.is_empty() { Value::Null } else { json!(selected.text) }});
        if !calls.is_empty() {
            message["tool_calls"] = json!(calls);
        }
        return Answer::Json(
            json!({"id": id, "object": "chat.completion", "created": created,
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut ev = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if !selected.text.is_empty() {
        for piece in chunks(&selected.text) {
            ev.push(chunk(json!({ "content": piece }), Value::Null));
        }
    }
    for (i, c) in calls.iter().enumerate() {
        ev.push(chunk(
            json!({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                   "function": {"name": c["function"]["name"], "arguments": ""}}]}),
            Value::Null,
        ));
        ev.push(chunk(
            json!({"tool_calls": [{"index": i, "function": {"arguments": c["function"]["arguments"]}}]}),
            Value::Null,
        ));
    }
    ev.push(chunk(json!({}), json!(finish)));
    ev.push(
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [], "usage": usage})
        .to_string(),
    );
    ev.push("[DONE]".into());
    Answer::Sse(ev.into_iter().map(|e| (None, e)).collect())
}

/// OpenAI Responses: a `response`, or `response.created`, each output item added (a message's
/// text as `output_text` deltas) and done, and `response.completed`; events named by type.
fn responses(selected: &Selected, model: &str, stream: bool) -> Answer {
    let mut output = Vec::new();
    if !selected.text.is_empty() {
        output.push(
            json!({"type": "message", "id": new_id("msg_"), "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": selected.text, "annotations": []}]}),
        );
    }
    for c in &selected.calls {
        let arguments = match c.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "{}".into(),
        };
        output.push(
            json!({"type": "function_call", "id": new_id("fc_"), "call_id": new_id("call_"),
            "name": c["name"], "status": "completed", "arguments": arguments}),
        );
    }
    let usage = json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 120});
    let response = json!({"id": new_id("resp_"), "object": "response", "created_at": unix_now(),
        "status": "completed", "model": model, "output": output, "usage": usage});
    if !stream {
        return Answer::Json(response);
    }
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    let mut ev = vec![json!({"type": "response.created", "response": created})];
    for (i, item) in output.iter().enumerate() {
        if item["type"] == "message" {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["content"] = json!([]);
            ev.push(
                json!({"type": "response.output_item.added", "output_index": i, "item": added}),
            );
            for piece in chunks(&selected.text) {
                ev.push(
                    json!({"type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": i, "content_index": 0, "delta": piece}),
                );
            }
        } else {
            ev.push(json!({"type": "response.output_item.added", "output_index": i, "item": item}));
        }
        ev.push(json!({"type": "response.output_item.done", "output_index": i, "item": item}));
    }
    ev.push(json!({"type": "response.completed", "response": response}));
    typed_events(ev, |e| match e["type"].as_str() {
        Some("response.created") => "response.created",
        Some("response.output_item.added") => "response.output_item.added",
        Some("response.output_text.delta") => "response.output_text.delta",
        Some("response.output_item.done") => "response.output_item.done",
        _ => "response.completed",
    })
}

/// Gemini `generateContent`: one candidate with text and `functionCall` parts; the stream is
/// that same response as its only `data` event, which gemini-cli accepts.
fn gemini(selected: &Selected, model: &str, stream: bool) -> Answer {
    let mut parts = Vec::new();
    if !selected.text.is_empty() {
        parts.push(json!({"text": selected.text}));
    }
    for c in &selected.calls {
        parts.push(json!({"functionCall": {"name": c["name"],
            "args": c.get("input").cloned().unwrap_or(json!({}))}}));
    }
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    let response = json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 120},
        "modelVersion": model,
    });
    if stream {
        Answer::Sse(vec![(None, response.to_string())])
    } else {
        Answer::Json(response)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sse_response(
    events: Vec<(Option<&'static str>, String)>,
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
            let event = name.map(|n| format!("event: {n}\n")).unwrap_or_default();
            let frame = Frame::data(Bytes::from(format!("{event}data: {data}\n\n")));
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
