//! The OpenAI API's HTTP server (hyper 1, HTTP/1.1): `POST /v1/chat/completions`,
//! `POST /v1/responses` (JSON and Server-Sent Events), `GET /v1/models[/{id}]` and
//! `GET /health`.
//!
//! Owns: routing, bearer-key authentication (constant-time, from the request head, before a
//! request may hold anything scarce — [`crate::admission`]), the per-key rate limit (429 with
//! `Retry-After`), request validation (what cannot be honoured is a 400 in the OpenAI error
//! envelope), turning a request into an [`InboundMessage`] of its conversation's room, and the
//! answer: one JSON body, or an SSE stream fed by the room's [`Reply`]s. A request whose
//! client goes away (the response future or the stream is dropped) tells the dispatcher
//! through [`ConnectorEvent::Cancel`], which stops the turn and kills its agent.
//! Must not import: the dispatcher or any agent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{OpenaiConfig, RateLimit};
use super::render::{self, Format};
use super::sessions::{Entry, Sessions};
use super::wire;
use super::{Reply, Waiters};
use crate::admission::{self, Admission, Ticket};
use crate::connector::{Acceptance, ConnectorEvent, EventSink};
use crate::model::{
    self, AgentEvent, Conversation, InboundMessage, RoomKind, RoomRef, Sender, TurnEnd, Usage,
};

/// Largest request body: a long chat history fits; this bounds memory per request.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// A comment line on quiet streams: keeps proxies from closing them, and a write to a client
/// that went away fails, which is how a hung-up stream is noticed while the agent thinks.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long open connections get to finish after cancellation before they are cut.
const DRAIN: Duration = Duration::from_secs(5);
/// Replies buffered between the room and a slow client before the turn waits for it.
const REPLY_BUFFER: usize = 64;

/// The bounds of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub http: admission::Limits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            http: admission::Limits {
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(60),
                max_unauthenticated: 32,
                // Each waiting request holds one while its agent works.
                max_work: 64,
                max_connections: 256,
            },
        }
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The model names a client may use: every watched room (a watcher's `room` on this
/// connector) and the aliases pointing at one.
pub struct Models {
    /// name → watched room.
    names: BTreeMap<String, String>,
    /// A `*` watcher: any name goes to it.
    wildcard: bool,
    /// CLI models a request may choose with `<model>:<override>`.
    overrides: Vec<String>,
}

impl Models {
    pub fn new(
        watched: &[String],
        aliases: &BTreeMap<String, String>,
        overrides: &[String],
    ) -> Models {
        let mut names: BTreeMap<String, String> = watched
            .iter()
            .filter(|w| *w != "*")
            .map(|w| (w.clone(), w.clone()))
            .collect();
        let wildcard = watched.iter().any(|w| w == "*");
        for (alias, target) in aliases {
            if names.contains_key(target) || wildcard {
                names.insert(alias.clone(), target.clone());
            } else {
                tracing::warn!(alias = %alias, model = %target, "OpenAI API: an alias names a model no watcher serves; left out");
            }
        }
        Models {
            names,
            wildcard,
            overrides: overrides.to_vec(),
        }
    }

    /// The watched room a requested model stands for, and the CLI model it asks for: a
    /// name as listed, or `<name>:<override>` with a configured override.
    fn resolve(&self, name: &str) -> Option<(String, Option<String>)> {
        if let Some(w) = self.watched(name) {
            return Some((w, None));
        }
        let (base, model) = name.split_once(':')?;
        let watched = self.watched(base)?;
        self.overrides
            .iter()
            .any(|o| o == model)
            .then(|| (watched, Some(model.to_string())))
    }

    fn watched(&self, name: &str) -> Option<String> {
        match self.names.get(name) {
            Some(w) => Some(w.clone()),
            None if self.wildcard && valid_name(name) && !name.contains(':') => {
                Some(name.to_string())
            }
            None => None,
        }
    }
}

/// Session names and model names in room ids: `[A-Za-z0-9_.:-]{1,64}`.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// Per-key token buckets: `requests` per `per`, refilled evenly.
struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one request of `user`'s budget, or says how long until one is free.
    fn take(&self, user: &str) -> Result<(), Duration> {
        let capacity = f64::from(self.limit.requests);
        let per_request = self.limit.per.as_secs_f64() / capacity;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // One entry per configured key at most: the user is authenticated first.
        let (tokens, at) = buckets.entry(user.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / per_request).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) * per_request))
        }
    }
}

/// What every request handler needs.
pub struct Shared {
    connector: Arc<str>,
    keys: Vec<(String, String)>,
    models: Models,
    events: EventSink,
    cancel: CancellationToken,
    waiters: Arc<Waiters>,
    sessions: Sessions,
    limiter: RateLimiter,
    show_tools: bool,
    limits: Limits,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        connector: Arc<str>,
        config: &OpenaiConfig,
        models: Models,
        events: EventSink,
        cancel: CancellationToken,
        waiters: Arc<Waiters>,
        sessions: Sessions,
        limits: Limits,
    ) -> Shared {
        Shared {
            connector,
            keys: config.keys.clone(),
            models,
            events,
            cancel,
            waiters,
            sessions,
            limiter: RateLimiter {
                limit: config.rate_limit.clone(),
                buckets: Mutex::default(),
            },
            show_tools: config.show_tools,
            limits,
        }
    }
}

/// Accepts and serves connections until `shared.cancel` fires, then lets open connections
/// finish for up to [`DRAIN`] and cuts the rest.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let admission = Admission::new(shared.limits.http.clone());
    let how = admission::Listener {
        name: "OpenAI API",
        admission: admission.clone(),
        drain: DRAIN,
        cancel: shared.cancel.clone(),
    };
    admission::serve(listener, how, move |ticket, req| {
        let (shared, admission) = (shared.clone(), admission.clone());
        async move { handle(&shared, &admission, &ticket, req).await }
    })
    .await
}

/// An answer other than success, in the OpenAI error envelope.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn unsupported(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            code: Some("unsupported_parameter"),
            ..ApiError::invalid(message)
        }
    }

    fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn body(&self) -> wire::ErrorEnvelope {
        wire::ErrorEnvelope {
            error: wire::ErrorBody {
                message: self.message.clone(),
                kind: self.kind,
                code: self.code,
                param: self.param,
            },
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = json_response(self.status, &self.body());
        let headers = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "Incorrect or missing API key: send Authorization: Bearer <key>",
    )
    .code("invalid_api_key")
}

/// Authenticates from the head, then takes a work slot, held until the answer is complete
/// (a stream holds it until it ends).
async fn handle(
    shared: &Arc<Shared>,
    admission: &Admission,
    ticket: &Ticket,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() == "/health" && req.method() == Method::GET {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let Some(user) = authenticate(&shared.keys, &req) else {
        return unauthorized().into_response();
    };
    ticket.authenticated();
    let Some(slot) = admission.try_work() else {
        tracing::warn!("OpenAI API: all work slots taken; answering busy");
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the gateway is busy: too many requests at once; retry shortly",
        );
        e.retry_after = Some(Duration::from_secs(1));
        return e.into_response();
    };
    if let Err(wait) = shared.limiter.take(&user) {
        tracing::info!(user = %user, "OpenAI API: rate limit reached");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            format!(
                "Rate limit reached for this key ({} requests per {} s); retry after the time in Retry-After",
                shared.limiter.limit.requests,
                shared.limiter.limit.per.as_secs()
            ),
        )
        .code("rate_limit_exceeded");
        e.retry_after = Some(wait);
        return e.into_response();
    }
    route(shared, &user, req, slot)
        .await
        .unwrap_or_else(ApiError::into_response)
}

/// The user whose key the `Authorization` header carries. Every key is compared, in time
/// independent of where the first difference is, so neither a key nor its position in the
/// list can be learnt from timing (only its length).
fn authenticate(keys: &[(String, String)], req: &Request<Incoming>) -> Option<String> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })?;
    let mut found = None;
    for (user, key) in keys {
        if constant_time_eq(key.as_bytes(), given.as_bytes()) {
            found = Some(user.clone());
        }
    }
    found
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    // Keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

async fn route(
    shared: &Arc<Shared>,
    user: &str,
    req: Request<Incoming>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "models"] => {
            allow(&method, Method::GET)?;
            Ok(json_response(StatusCode::OK, &model_list(shared)))
        }
        ["v1", "models", id] => {
            allow(&method, Method::GET)?;
            let entry = model_list(shared)
                .data
                .into_iter()
                .find(|m| m.id == *id)
                .ok_or_else(|| model_not_found(id))?;
            Ok(json_response(StatusCode::OK, &entry))
        }
        ["v1", "chat", "completions"] => {
            allow(&method, Method::POST)?;
            let session_header = req
                .headers()
                .get("x-session-id")
                .map(|v| v.to_str().map(str::to_string))
                .transpose()
                .map_err(|_| ApiError::invalid("X-Session-Id must be text"))?;
            let body = read_body(shared, req).await?;
            chat(shared, user, session_header, &body, slot).await
        }
        ["v1", "responses"] => {
            allow(&method, Method::POST)?;
            let body = read_body(shared, req).await?;
            responses(shared, user, &body, slot).await
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {method} {path}"),
        )
        .code("unknown_url")),
    }
}

fn allow(method: &Method, allowed: Method) -> Result<(), ApiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("method {method} not allowed here"),
        ))
    }
}

fn model_list(shared: &Shared) -> wire::ModelList {
    wire::ModelList {
        object: "list",
        data: shared
            .models
            .names
            .keys()
            .map(|id| wire::ModelEntry {
                id: id.clone(),
                object: "model",
                created: 0,
                owned_by: "agent-chat-gateway",
            })
            .collect(),
    }
}

fn model_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "The model '{}' does not exist: GET /v1/models lists the agents served here",
            crate::text::truncate(name, 100)
        ),
    )
    .code("model_not_found")
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::invalid(format!("request body too large (limit {MAX_BODY} bytes)"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(shared.limits.http.body_timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "the request body did not arrive in time",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })
}

/// One request, ready to be handed to the room of its conversation.
struct Call {
    user: String,
    /// The watched room (the model's) the conversation belongs to.
    watched: String,
    /// `~<random>`, `c-<name>` or `r-<token>`.
    session: String,
    ephemeral: bool,
    text: String,
    /// The CLI model the caller chose (`<model>:<override>`).
    cli_model: Option<String>,
    /// The schema of a `json_schema` answer, for agents that can be held to it.
    output_schema: Option<String>,
}

/// A session to record in the book once its turn answered.
#[derive(Clone)]
struct Remember {
    key: String,
    entry: Entry,
    room: String,
}

/// The room of one conversation: `<model>/<user>/<session>`.
fn room_id(watched: &str, user: &str, session: &str) -> String {
    format!("{watched}/{user}/{session}")
}

impl Shared {
    /// Records a session that answered; rooms of sessions the bounded book drops are
    /// forgotten.
    fn remember(&self, r: &Remember) {
        for room in self.sessions.remember(&r.key, &r.entry, &r.room) {
            if !self
                .events
                .try_send(ConnectorEvent::Forget { room: room.clone() })
            {
                tracing::warn!(room = %room, "OpenAI API: could not ask to forget a dropped session's room");
            }
        }
    }
}

/// A request handed to its room: replies arrive on `rx`. Dropped before the turn ended (the
/// client went away), it tells the dispatcher to stop the turn.
struct Waiting {
    rx: mpsc::Receiver<Reply>,
    id: String,
    room: String,
    shared: Arc<Shared>,
    finished: bool,
    /// The request's work slot, held as long as it waits.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.shared.waiters.remove(&self.id);
        if !self.finished {
            tracing::info!(room = %self.room, message = %self.id, "OpenAI API: the client went away; stopping its turn");
            let event = ConnectorEvent::Cancel {
                room: self.room.clone(),
                id: self.id.clone(),
            };
            if !self.shared.events.try_send(event) {
                tracing::warn!(room = %self.room, "OpenAI API: could not ask to stop a turn whose client went away (dispatcher busy or stopping)");
            }
        }
    }
}

/// Hands the request to the dispatcher and maps its verdict.
async fn start(
    shared: &Arc<Shared>,
    call: Call,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<(Waiting, bool), ApiError> {
    let id = format!("req-{}", random_hex(8));
    let room = room_id(&call.watched, &call.user, &call.session);
    let (tx, rx) = mpsc::channel(REPLY_BUFFER);
    shared.waiters.insert(id.clone(), tx);
    let mut waiting = Waiting {
        rx,
        id: id.clone(),
        room: room.clone(),
        shared: shared.clone(),
        finished: false,
        _slot: slot,
    };
    let message = InboundMessage {
        connector: shared.connector.clone(),
        room: RoomRef {
            id: room.clone(),
            name: room.clone(),
            kind: RoomKind::Direct,
        },
        id,
        thread: None,
        sender: Sender {
            id: call.user.clone(),
            username: call.user.clone(),
            display_name: call.user.clone(),
        },
        text: call.text,
        addressed: true,
        attachments: Vec::new(),
        notes: Vec::new(),
        ts: SystemTime::now(),
        conversation: Some(Conversation {
            watched: call.watched.clone(),
            ephemeral: call.ephemeral,
            model: call.cli_model,
            output_schema: call.output_schema,
        }),
    };
    tracing::debug!(room = %room, "OpenAI API request received");
    let verdict = shared.events.deliver(message).await;
    match verdict {
        Acceptance::Queued => Ok((waiting, false)),
        Acceptance::Handled => Ok((waiting, true)),
        Acceptance::Ignored(why) => {
            waiting.finished = true;
            Err(if why.contains("not watched") {
                model_not_found(&call.watched)
            } else if why.contains("owner or guest") {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    "this key's user is neither an owner nor a guest of the gateway",
                )
            } else {
                ApiError::invalid(why)
            })
        }
        Acceptance::Rejected(why) => {
            waiting.finished = true;
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", why);
            e.retry_after = Some(Duration::from_secs(5));
            Err(e)
        }
    }
}

/// How a turn ended, as one request sees it.
enum Outcome {
    Answer { text: String, usage: Option<Usage> },
    Failed(ApiError),
}

fn failure(message: String, timed_out: bool) -> ApiError {
    if timed_out {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message).code("timeout")
    } else {
        ApiError::new(StatusCode::BAD_GATEWAY, "server_error", message).code("agent_error")
    }
}

impl Waiting {
    /// Waits for the end of the turn (or the notice that answered a handled message).
    async fn outcome(&mut self, handled: bool) -> Outcome {
        loop {
            match self.rx.recv().await {
                Some(Reply::End(end)) => {
                    self.finished = true;
                    return end_outcome(end);
                }
                Some(Reply::Notice(text)) if handled => {
                    self.finished = true;
                    return Outcome::Answer { text, usage: None };
                }
                Some(Reply::Notice(text)) => {
                    tracing::debug!(notice = %text, "OpenAI API: a room notice for a waiting request")
                }
                Some(Reply::Event(_)) => {}
                None => {
                    self.finished = true;
                    return Outcome::Failed(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "the gateway is stopping",
                    ));
                }
            }
        }
    }
}

fn end_outcome(end: TurnEnd) -> Outcome {
    match end {
        TurnEnd::Answered { text, usage } => Outcome::Answer { text, usage },
        TurnEnd::Failed { message, timed_out } => Outcome::Failed(failure(message, timed_out)),
    }
}

fn chat_usage(u: &Usage) -> wire::ChatUsage {
    // OpenAI counts cached input inside the prompt tokens.
    let prompt = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
    wire::ChatUsage {
        prompt_tokens: prompt,
        completion_tokens: u.output_tokens,
        total_tokens: prompt + u.output_tokens,
        prompt_tokens_details: wire::PromptTokensDetails {
            cached_tokens: u.cache_read_tokens,
        },
    }
}

fn responses_usage(u: &Usage) -> wire::ResponsesUsage {
    let c = chat_usage(u);
    wire::ResponsesUsage {
        input_tokens: c.prompt_tokens,
        input_tokens_details: c.prompt_tokens_details,
        output_tokens: c.completion_tokens,
        output_tokens_details: wire::OutputTokensDetails {
            reasoning_tokens: 0,
        },
        total_tokens: c.total_tokens,
    }
}

fn now_secs() -> u64 {
    model::epoch_ms(SystemTime::now()) / 1000
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ----- Chat Completions ------------------------------------------------------------------

async fn chat(
    shared: &Arc<Shared>,
    user: &str,
    session_header: Option<String>,
    body: &[u8],
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response<Body>, ApiError> {
    let req: wire::ChatRequest = parse(body)?;
    if req.n.is_some_and(|n| n > 1) {
        return Err(ApiError::unsupported(
            "n",
            "n > 1 is not supported: an agent gives one answer",
        ));
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(ApiError::unsupported(
            "logprobs",
            "logprobs are not supported: the agent's CLI does not report them",
        ));
    }
    refuse_caller_tools(
        req.tools.as_deref(),
        req.functions.as_deref(),
        req.tool_choice.as_ref(),
    )?;
    let format = render::chat_format(req.response_format.as_ref())
        .map_err(|e| ApiError::invalid(e).code("invalid_response_format"))?;
    let (watched, cli_model) = shared
        .models
        .resolve(&req.model)
        .ok_or_else(|| model_not_found(&req.model))?;
    // A sticky session: `X-Session-Id`, else the `user` field.
    let sticky = session_header
        .or(req.user.clone())
        .filter(|s| !s.is_empty());
    if let Some(s) = &sticky {
        if !valid_name(s) {
            return Err(ApiError::invalid(
                "a session name (X-Session-Id or user) must be 1 to 64 of A-Z a-z 0-9 _ . : -",
            ));
        }
    }
    let session = match &sticky {
        Some(s) => format!("c-{s}"),
        None => format!("~{}", random_hex(8)),
    };
    let book_key = format!("chat:{watched}/{user}/{session}");
    let resume = sticky.is_some() && shared.sessions.get(&book_key).is_some();
    let mut text = render::chat(&req.messages, resume).map_err(ApiError::invalid)?;
    text.extend(render::format_instruction(&format));
    let remember = sticky.is_some().then(|| Remember {
        key: book_key,
        entry: Entry {
            user: user.to_string(),
            model: watched.clone(),
        },
        room: room_id(&watched, user, &session),
    });
    let call = Call {
        user: user.to_string(),
        watched: watched.clone(),
        ephemeral: sticky.is_none(),
        session,
        text,
        cli_model,
        output_schema: format.schema_text(),
    };
    let (mut waiting, handled) = start(shared, call, slot).await?;
    let id = format!("chatcmpl-{}", random_hex(12));
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if req.stream == Some(true) {
        let enc = ChatStream {
            id,
            model: req.model,
            created: now_secs(),
            include_usage,
            format,
            remember,
            show_tools: shared.show_tools,
            streamed: String::new(),
        };
        return Ok(sse(waiting, handled, enc));
    }
    match waiting.outcome(handled).await {
        Outcome::Failed(e) => Err(e),
        Outcome::Answer { text, usage } => {
            let content = render::conform(&text, &format).map_err(schema_failure)?;
            if let Some(r) = &remember {
                shared.remember(r);
            }
            Ok(json_response(
                StatusCode::OK,
                &wire::ChatCompletion {
                    id,
                    object: "chat.completion",
                    created: now_secs(),
                    model: req.model,
                    choices: vec![wire::ChatChoice {
                        index: 0,
                        message: wire::AssistantMessage {
                            role: "assistant",
                            content,
                            refusal: None,
                        },
                        finish_reason: "stop",
                        logprobs: None,
                    }],
                    usage: usage.as_ref().map(chat_usage),
                    system_fingerprint: None,
                },
            ))
        }
    }
}

/// An answer that does not fit the requested format: 422, so clients do not retry it as a
/// server fault, and the broken JSON never reaches them as if it were valid.
fn schema_failure(why: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_response", why)
        .code("json_validation_failed")
}

/// Tools the caller defines cannot be offered: the agent runs its own tools, under the
/// gateway's policy, and never returns OpenAI tool calls.
fn refuse_caller_tools(
    tools: Option<&[Value]>,
    functions: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<(), ApiError> {
    if tools.is_some_and(|t| !t.is_empty()) || functions.is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::unsupported(
            "tools",
            "tools defined by the caller are not supported: the agent runs its own tools under the gateway's policy",
        ));
    }
    match choice {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "none" || s == "auto" => Ok(()),
        Some(_) => Err(ApiError::unsupported(
            "tool_choice",
            "tool_choice is not supported",
        )),
    }
}

// ----- Responses -------------------------------------------------------------------------

async fn responses(
    shared: &Arc<Shared>,
    user: &str,
    body: &[u8],
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response<Body>, ApiError> {
    let req: wire::ResponsesRequest = parse(body)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::unsupported(
            "tools",
            "tools defined by the caller are not supported: the agent runs its own tools under the gateway's policy",
        ));
    }
    refuse_caller_tools(None, None, req.tool_choice.as_ref())?;
    if req.background == Some(true) {
        return Err(ApiError::unsupported(
            "background",
            "background responses are not supported",
        ));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::unsupported(
            "conversation",
            "conversations are not supported: use previous_response_id",
        ));
    }
    let format = render::responses_format(req.text.as_ref().and_then(|t| t.format.as_ref()))
        .map_err(|e| ApiError::invalid(e).code("invalid_response_format"))?;
    let (watched, cli_model) = shared
        .models
        .resolve(&req.model)
        .ok_or_else(|| model_not_found(&req.model))?;
    let store = req.store != Some(false);
    let (token, ephemeral) = match &req.previous_response_id {
        Some(prev) => {
            let not_found = || {
                ApiError::invalid(format!(
                    "Previous response with id '{}' not found.",
                    crate::text::truncate(prev, 100)
                ))
                .code("previous_response_not_found")
            };
            let token = chain_token(prev).ok_or_else(not_found)?;
            let entry = shared
                .sessions
                .get(&format!("resp:{token}"))
                .ok_or_else(not_found)?;
            // Another user's chain is not found, exactly like one that never existed.
            if entry.user != user {
                return Err(not_found());
            }
            if entry.model != watched {
                return Err(ApiError::invalid(format!(
                    "previous_response_id belongs to model '{}': a session cannot change agents",
                    entry.model
                )));
            }
            (token.to_string(), false)
        }
        None => (random_hex(12), !store),
    };
    let mut text =
        render::responses(req.instructions.as_deref(), &req.input).map_err(ApiError::invalid)?;
    text.extend(render::format_instruction(&format));
    let session = format!("r-{token}");
    let remember = (!ephemeral).then(|| Remember {
        key: format!("resp:{token}"),
        entry: Entry {
            user: user.to_string(),
            model: watched.clone(),
        },
        room: room_id(&watched, user, &session),
    });
    let call = Call {
        user: user.to_string(),
        watched,
        session,
        ephemeral,
        text,
        cli_model,
        output_schema: format.schema_text(),
    };
    let (mut waiting, handled) = start(shared, call, slot).await?;
    let id = format!("resp_{token}_{}", random_hex(4));
    let shell = ResponseShell {
        id,
        model: req.model,
        created: now_secs(),
        previous: req.previous_response_id,
        instructions: req.instructions,
        store: !ephemeral,
    };
    if req.stream == Some(true) {
        let enc = ResponsesStream {
            shell,
            format,
            remember,
            show_tools: shared.show_tools,
            streamed: String::new(),
            sequence: 0,
        };
        return Ok(sse(waiting, handled, enc));
    }
    match waiting.outcome(handled).await {
        Outcome::Failed(e) => Err(e),
        Outcome::Answer { text, usage } => {
            let text = render::conform(&text, &format).map_err(schema_failure)?;
            if let Some(r) = &remember {
                shared.remember(r);
            }
            Ok(json_response(
                StatusCode::OK,
                &shell.object("completed", Some(text), usage.as_ref(), None),
            ))
        }
    }
}

/// The chain token in a response id `resp_<token>_<n>` (24 hex digits).
fn chain_token(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("resp_")?;
    let (token, _) = rest.split_once('_')?;
    (token.len() == 24 && token.bytes().all(|b| b.is_ascii_hexdigit())).then_some(token)
}

/// What every Response object of one request shares.
struct ResponseShell {
    id: String,
    model: String,
    created: u64,
    previous: Option<String>,
    instructions: Option<String>,
    store: bool,
}

impl ResponseShell {
    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn object(
        &self,
        status: &'static str,
        text: Option<String>,
        usage: Option<&Usage>,
        error: Option<wire::ResponseError>,
    ) -> wire::ResponseObject {
        wire::ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created,
            status,
            model: self.model.clone(),
            output: text
                .map(|t| wire::OutputMessage {
                    kind: "message",
                    id: self.message_id(),
                    status: "completed",
                    role: "assistant",
                    content: vec![wire::OutputText::new(t)],
                })
                .into_iter()
                .collect(),
            usage: usage.map(responses_usage),
            previous_response_id: self.previous.clone(),
            error,
            incomplete_details: None,
            instructions: self.instructions.clone(),
            metadata: serde_json::Map::new(),
            parallel_tool_calls: false,
            tool_choice: "none",
            tools: Vec::new(),
            temperature: None,
            top_p: None,
            store: self.store,
        }
    }
}

// ----- streaming -------------------------------------------------------------------------

/// Turns a request's replies into SSE frames (one API's event vocabulary).
trait Encoder: Send + 'static {
    /// Frames sent before anything of the turn arrived.
    fn opening(&mut self) -> Vec<Bytes>;
    /// Frames for one event of the turn (text, tool activity when shown).
    fn event(&mut self, event: &AgentEvent) -> Vec<Bytes>;
    /// Frames that end the stream; the book is told of a session that answered.
    fn end(&mut self, outcome: Outcome, shared: &Shared) -> Vec<Bytes>;
}

fn data_frame(value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).expect("event serializes");
    Bytes::from(format!("data: {json}\n\n"))
}

fn event_frame(name: &str, value: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(value).expect("event serializes");
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// The text a streamed event adds, with a newline between blocks as the final answer has.
fn text_delta(streamed: &mut String, event: &AgentEvent, show_tools: bool) -> Option<String> {
    let piece = match event {
        AgentEvent::Text { text } => text.clone(),
        AgentEvent::ToolStart { name, input, .. } if show_tools => {
            format!("[tool {name}: {}]", crate::text::truncate(input, 200))
        }
        _ => return None,
    };
    let delta = if streamed.is_empty() {
        piece
    } else {
        format!("\n{piece}")
    };
    streamed.push_str(&delta);
    Some(delta)
}

/// What the final answer adds to what was streamed (the agent's answer usually is the
/// streamed blocks; when it is not, the stream keeps what it already showed).
fn remainder(streamed: &str, answer: &str) -> Option<String> {
    if streamed.is_empty() {
        return Some(answer.to_string());
    }
    answer
        .strip_prefix(streamed)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

struct ChatStream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    format: Format,
    remember: Option<Remember>,
    show_tools: bool,
    streamed: String,
}

impl ChatStream {
    fn chunk(&self, delta: wire::Delta, finish: Option<&'static str>) -> Bytes {
        data_frame(&wire::ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![wire::ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: self.include_usage.then_some(None),
        })
    }

    fn content(&self, text: String) -> Bytes {
        self.chunk(
            wire::Delta {
                role: None,
                content: Some(text),
            },
            None,
        )
    }
}

impl Encoder for ChatStream {
    fn opening(&mut self) -> Vec<Bytes> {
        vec![self.chunk(
            wire::Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            None,
        )]
    }

    fn event(&mut self, event: &AgentEvent) -> Vec<Bytes> {
        // A JSON answer is sent whole once it is checked: partial JSON helps nobody.
        if self.format != Format::Text {
            return Vec::new();
        }
        text_delta(&mut self.streamed, event, self.show_tools)
            .map(|d| self.content(d))
            .into_iter()
            .collect()
    }

    fn end(&mut self, outcome: Outcome, shared: &Shared) -> Vec<Bytes> {
        let (text, usage) = match outcome {
            Outcome::Failed(e) => return vec![data_frame(&e.body())],
            Outcome::Answer { text, usage } => (text, usage),
        };
        let mut frames = Vec::new();
        match render::conform(&text, &self.format) {
            Err(why) => return vec![data_frame(&schema_failure(why).body())],
            Ok(answer) => {
                if let Some(rest) = remainder(&self.streamed, &answer) {
                    frames.push(self.content(rest));
                }
            }
        }
        if let Some(r) = &self.remember {
            shared.remember(r);
        }
        frames.push(self.chunk(wire::Delta::default(), Some("stop")));
        if self.include_usage {
            frames.push(data_frame(&wire::ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(usage.as_ref().map(chat_usage)),
            }));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        frames
    }
}

struct ResponsesStream {
    shell: ResponseShell,
    format: Format,
    remember: Option<Remember>,
    show_tools: bool,
    streamed: String,
    sequence: u64,
}

impl ResponsesStream {
    fn frame(&mut self, name: &'static str, mut data: Value) -> Bytes {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        event_frame(name, &data)
    }

    fn delta(&mut self, delta: String) -> Bytes {
        let item_id = self.shell.message_id();
        self.frame(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
        )
    }
}

impl Encoder for ResponsesStream {
    fn opening(&mut self) -> Vec<Bytes> {
        let shell = self.shell.object("in_progress", None, None, None);
        let item = json!({"type": "message", "id": self.shell.message_id(), "status": "in_progress", "role": "assistant", "content": []});
        let part = json!({"type": "output_text", "text": "", "annotations": []});
        let item_id = self.shell.message_id();
        vec![
            self.frame("response.created", json!({"response": shell})),
            self.frame("response.in_progress", json!({"response": shell})),
            self.frame(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ),
            self.frame(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
            ),
        ]
    }

    fn event(&mut self, event: &AgentEvent) -> Vec<Bytes> {
        if self.format != Format::Text {
            return Vec::new();
        }
        match text_delta(&mut self.streamed, event, self.show_tools) {
            Some(d) => vec![self.delta(d)],
            None => Vec::new(),
        }
    }

    fn end(&mut self, outcome: Outcome, shared: &Shared) -> Vec<Bytes> {
        let (answer, usage) = match outcome {
            Outcome::Answer { text, usage } => match render::conform(&text, &self.format) {
                Ok(a) => (a, usage),
                Err(why) => {
                    let e = schema_failure(why);
                    return vec![self.failed(e)];
                }
            },
            Outcome::Failed(e) => return vec![self.failed(e)],
        };
        let mut frames = Vec::new();
        if let Some(rest) = remainder(&self.streamed, &answer) {
            frames.push(self.delta(rest));
        }
        if let Some(r) = &self.remember {
            shared.remember(r);
        }
        let item_id = self.shell.message_id();
        let part = wire::OutputText::new(answer.clone());
        let done = self
            .shell
            .object("completed", Some(answer.clone()), usage.as_ref(), None);
        let item = &done.output[0];
        let item = json!(item);
        frames.push(self.frame(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": answer, "logprobs": []}),
        ));
        frames.push(self.frame(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        ));
        frames.push(self.frame(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ));
        frames.push(self.frame("response.completed", json!({"response": done})));
        frames
    }
}

impl ResponsesStream {
    fn failed(&mut self, e: ApiError) -> Bytes {
        let code = if e.status == StatusCode::GATEWAY_TIMEOUT {
            "timeout"
        } else {
            "server_error"
        };
        let failed = self.shell.object(
            "failed",
            None,
            None,
            Some(wire::ResponseError {
                code,
                message: e.message,
            }),
        );
        self.frame("response.failed", json!({"response": failed}))
    }
}

/// An SSE response fed by the turn's replies. Dropping it (the client went away) drops the
/// [`Waiting`], which stops the turn.
fn sse<E: Encoder>(waiting: Waiting, handled: bool, mut encoder: E) -> Response<Body> {
    struct State<E> {
        waiting: Waiting,
        handled: bool,
        encoder: E,
        queued: VecDeque<Bytes>,
        heartbeat: tokio::time::Interval,
        done: bool,
    }
    // The first heartbeat a full period after the opening frames, not at once.
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queued: VecDeque<Bytes> = encoder.opening().into();
    let state = State {
        waiting,
        handled,
        encoder,
        queued,
        heartbeat,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.queued.pop_front() {
                return Some((frame, st));
            }
            if st.done {
                return None;
            }
            let cancel = st.waiting.shared.cancel.clone();
            tokio::select! {
                _ = st.heartbeat.tick() => return Some((Bytes::from_static(b": keep-alive\n\n"), st)),
                _ = cancel.cancelled() => {
                    st.done = true;
                    let e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the gateway is stopping");
                    let shared = st.waiting.shared.clone();
                    st.queued.extend(st.encoder.end(Outcome::Failed(e), &shared));
                }
                reply = st.waiting.rx.recv() => {
                    let outcome = match reply {
                        Some(Reply::Event(event)) => {
                            st.queued.extend(st.encoder.event(&event));
                            continue;
                        }
                        Some(Reply::Notice(text)) if st.handled => Outcome::Answer { text, usage: None },
                        Some(Reply::Notice(_)) => continue,
                        Some(Reply::End(end)) => end_outcome(end),
                        None => Outcome::Failed(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the gateway is stopping")),
                    };
                    st.waiting.finished = true;
                    st.done = true;
                    let shared = st.waiting.shared.clone();
                    st.queued.extend(st.encoder.end(outcome, &shared));
                }
            }
        }
    });
    let body = StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut resp = Response::new(body.boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("response serializes");
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole_and_tokens_refill() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
        let limiter = RateLimiter {
            limit: RateLimit {
                requests: 2,
                per: Duration::from_secs(60),
            },
            buckets: Mutex::default(),
        };
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_ok());
        let wait = limiter.take("a").unwrap_err();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(limiter.take("b").is_ok(), "buckets are per key");
    }

    #[test]
    fn models_are_watched_rooms_and_aliases_of_them() {
        let aliases = BTreeMap::from([
            ("claude-code".to_string(), "assistant".to_string()),
            ("ghost".to_string(), "nobody".to_string()),
        ]);
        let m = Models::new(&["assistant".into()], &aliases, &["sonnet".into()]);
        let to = |w: &str, o: Option<&str>| Some((w.to_string(), o.map(str::to_string)));
        assert_eq!(m.resolve("assistant"), to("assistant", None));
        assert_eq!(m.resolve("claude-code"), to("assistant", None));
        assert_eq!(
            m.resolve("claude-code:sonnet"),
            to("assistant", Some("sonnet"))
        );
        assert_eq!(
            m.resolve("assistant:opus"),
            None,
            "not a configured override"
        );
        assert_eq!(m.resolve("ghost"), None);
        assert_eq!(m.resolve("gpt-4o"), None);
    }

    #[test]
    fn response_ids_carry_their_chain() {
        let token = "0123456789abcdef01234567";
        assert_eq!(chain_token(&format!("resp_{token}_beef")), Some(token));
        assert_eq!(chain_token("resp_short_beef"), None);
        assert_eq!(chain_token("chatcmpl-x"), None);
        assert_eq!(remainder("", "abc").as_deref(), Some("abc"));
        assert_eq!(remainder("a\nb", "a\nb").as_deref(), None);
        assert_eq!(remainder("a", "a\nb").as_deref(), Some("\nb"));
        assert_eq!(remainder("x", "y"), None);
    }
}
