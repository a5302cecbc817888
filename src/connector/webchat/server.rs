//! The web chat's HTTP server (hyper 1, HTTP/1.1): the page, the JSON API and the
//! Server-Sent Events stream of a room.
//!
//! Owns: routing, bearer-token authentication, request limits, conversion between
//! [`hub`](super::hub) values and the [`wire`](super::wire) types, and connection shutdown on
//! cancellation. A message may be posted into a thread (`"thread"` in the JSON body, or
//! `?thread=` with a file); the root must be a top-level message the room holds, else 400 —
//! refused before the message is recorded or delivered, so nothing lands in a thread that
//! the page cannot show.
//!
//! Limits ([`Limits`]), so idle, half-sent or trickled connections cannot starve the users:
//! the token is checked from the request head, before anything scarce is taken; a connection
//! that has not sent an authenticated request is one of a small capped set where the oldest
//! makes room for a newcomer ([`crate::admission`]); the head must arrive within the header
//! timeout and a body within the body timeout (408, connection closed), bodies are bounded;
//! authenticated requests share a fixed number of work slots (503 when all are taken), and
//! each user may hold a few event streams at once — a further one is refused with 429 (the
//! newest is refused, not the oldest evicted: `EventSource` reconnects a closed stream by
//! itself, so evicting would make two tabs take turns knocking each other off, while a
//! refused 429 makes it stop and the page say so).
//! Must not import: the dispatcher or any agent; user messages leave through the
//! [`EventSink`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::files::FileStore;
use super::hub::{self, Hub, RoomEvent};
use super::tokens::Tokens;
use super::wire;
use crate::admission::{self, Admission, Ticket};
use crate::connector::{Acceptance, EventSink};
use crate::model::{Attachment, InboundMessage, RoomKind, RoomRef, Sender};

/// Largest accepted request body. A chat message is far smaller; this bounds memory per
/// request.
pub const MAX_BODY: usize = 64 * 1024;
/// The bounds of the server; [`Limits::default`] in production, short timeouts in tests.
#[derive(Clone, Debug)]
pub struct Limits {
    pub http: admission::Limits,
    /// Event streams one user may hold open at once (browser tabs).
    pub streams_per_user: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            http: admission::Limits {
                // A browser sends its head at once; this is the slow-loris guard and the
                // longest a keep-alive connection idles.
                header_timeout: Duration::from_secs(10),
                // Room for the largest upload on a slow link (10 MiB at ~200 KiB/s).
                body_timeout: Duration::from_secs(60),
                // A browser opens about six connections per origin before it authenticates.
                max_unauthenticated: 32,
                max_work: 64,
                max_connections: 512,
            },
            streams_per_user: 8,
        }
    }
}

/// A comment line on idle event streams: keeps proxies from closing them and lets a dead
/// client be noticed when the write fails.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// How long open connections get to finish after cancellation before they are cut.
const DRAIN: Duration = Duration::from_secs(5);

const PAGE: &str = include_str!("page.html");

pub const ERR_UNAUTHORIZED: &str =
    "missing or invalid token: send Authorization: Bearer <token> (or ?token= on GET)";
pub const ERR_BAD_JSON: &str = "invalid JSON body: expected an object like {\"text\": \"...\"}";
pub const ERR_MISSING_TEXT: &str = "missing \"text\": expected an object like {\"text\": \"...\"}";
pub const ERR_TEXT_NOT_STRING: &str = "\"text\" must be a string";
pub const ERR_EMPTY_TEXT: &str = "\"text\" is empty";
pub const ERR_ROOM_NAME: &str = "invalid room name: use 1 to 64 characters among A-Z a-z 0-9 _ . -";
pub const ERR_FILE_GONE: &str = "file not found (the web chat keeps a bounded number of files)";
pub const ERR_AFTER: &str = "invalid \"after\": expected a message id";
pub const ERR_BUSY: &str = "the web chat is busy: too many requests at once; retry shortly";
pub const ERR_BODY_TIMEOUT: &str = "the request body did not arrive in time";
pub const ERR_THREAD: &str =
    "invalid \"thread\": expected the id of the thread's root message (a string of digits)";

pub fn err_too_many_streams(limit: usize) -> String {
    format!(
        "too many open event streams for this user (limit {limit}): close another tab of the web chat"
    )
}

/// Largest file a user may send with `POST /api/rooms/{room}/files`.
pub const MAX_UPLOAD: usize = 10 * 1024 * 1024;

pub const ERR_UPLOAD_NAME: &str = "missing \"name\": send the file name as ?name=";
pub const ERR_UPLOAD_EMPTY: &str = "the file is empty";

pub fn err_too_large() -> String {
    format!("request body too large (limit {MAX_BODY} bytes)")
}

pub fn err_upload_too_large() -> String {
    format!("file too large (limit {MAX_UPLOAD} bytes)")
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request handler needs.
pub struct Shared {
    pub connector: Arc<str>,
    pub hub: Arc<Hub>,
    pub files: Arc<FileStore>,
    pub tokens: Tokens,
    pub require_mention: bool,
    pub events: EventSink,
    pub cancel: CancellationToken,
    /// Where files users send are saved for the agent.
    pub attachments_dir: std::path::PathBuf,
    pub limits: Limits,
    /// Open event streams by user.
    pub streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// Accepts and serves connections until `shared.cancel` fires, then lets open connections
/// finish (event streams end at once) for up to [`DRAIN`] and cuts the rest.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let admission = Admission::new(shared.limits.http.clone());
    let how = admission::Listener {
        name: "web chat",
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

/// An answer other than success, always sent as `{"error": "..."}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = json(
            self.status,
            &wire::ErrorBody {
                error: self.message,
            },
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Authenticates from the head, then takes a work slot for an authenticated request; the
/// slot is held until the response head is ready (an event stream holds a stream slot
/// instead).
async fn handle(
    shared: &Shared,
    admission: &Admission,
    ticket: &Ticket,
    req: Request<Incoming>,
) -> Response<Body> {
    let user = authenticate(shared, &req).ok().map(str::to_string);
    let _work = match &user {
        None => None,
        Some(_) => {
            ticket.authenticated();
            match admission.try_work() {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!("web chat: all work slots taken; answering busy");
                    let mut resp =
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ERR_BUSY).into_response();
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
            }
        }
    };
    route(shared, user.as_deref(), req)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn route(
    shared: &Shared,
    user: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let signed_in =
        || user.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, ERR_UNAUTHORIZED));
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        [""] | ["index.html"] => {
            allow(&method, &[Method::GET])?;
            Ok(page())
        }
        ["healthz"] => {
            allow(&method, &[Method::GET])?;
            Ok(text(StatusCode::OK, "ok\n"))
        }
        ["api", "me"] => {
            allow(&method, &[Method::GET])?;
            let user = signed_in()?;
            Ok(json(
                StatusCode::OK,
                &wire::Me {
                    user: user.to_string(),
                    bot: hub::BOT_NAME.to_string(),
                    require_mention: shared.require_mention,
                },
            ))
        }
        ["api", "rooms"] => {
            allow(&method, &[Method::GET])?;
            signed_in()?;
            let rooms = shared
                .hub
                .rooms()
                .into_iter()
                .map(|r| wire::RoomSummary {
                    name: r.name,
                    messages: r.messages,
                    watched: r.watched,
                })
                .collect();
            Ok(json(StatusCode::OK, &wire::RoomList { rooms }))
        }
        ["api", "rooms", room, "messages"] => {
            allow(&method, &[Method::GET, Method::POST])?;
            let user = signed_in()?;
            let room = checked_room(room)?;
            if method == Method::POST {
                post_message(shared, user, &room, req).await
            } else {
                list_messages(shared, &room, &req)
            }
        }
        ["api", "rooms", room, "files"] => {
            allow(&method, &[Method::POST])?;
            let user = signed_in()?;
            let room = checked_room(room)?;
            post_file(shared, user, &room, req).await
        }
        ["api", "files", id] => {
            allow(&method, &[Method::GET])?;
            signed_in()?;
            serve_file(shared, id).await
        }
        ["api", "rooms", room, "events"] => {
            allow(&method, &[Method::GET])?;
            let user = signed_in()?;
            let room = checked_room(room)?;
            let slot = StreamSlot::take(shared, user)?;
            Ok(event_stream(shared, &room, slot))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not found")),
    }
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed here"),
        ))
    }
}

fn checked_room(room: &str) -> Result<String, ApiError> {
    if super::valid_room_name(room) {
        Ok(room.to_string())
    } else {
        Err(ApiError::bad_request(ERR_ROOM_NAME))
    }
}

/// The user of the bearer token in the `Authorization` header, or of `?token=` (which the
/// page needs for `EventSource`, as browsers cannot set headers on it).
fn authenticate<'a>(shared: &'a Shared, req: &Request<Incoming>) -> Result<&'a str, ApiError> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let token = from_header.or_else(|| query_param(req.uri().query(), "token"));
    token
        .and_then(|t| shared.tokens.user_for(&t))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, ERR_UNAUTHORIZED))
}

async fn post_message(
    shared: &Shared,
    user: &str,
    room: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(shared, req, MAX_BODY, err_too_large).await?;
    // A map, not a struct: serde would accept `["hi"]` for a one-field struct.
    let mut parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|_| ApiError::bad_request(ERR_BAD_JSON))?;
    let typed = match parsed.remove("text") {
        None | Some(serde_json::Value::Null) => {
            return Err(ApiError::bad_request(ERR_MISSING_TEXT))
        }
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(ApiError::bad_request(ERR_TEXT_NOT_STRING)),
    };
    let thread = match parsed.remove("thread") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(parse_thread(&s)?),
        Some(_) => return Err(ApiError::bad_request(ERR_THREAD)),
    };
    let (mentioned, stripped) = strip_mention(&typed);
    if stripped.trim().is_empty() {
        return Err(ApiError::bad_request(ERR_EMPTY_TEXT));
    }
    let stripped = stripped.to_string();
    // Recorded before delivery: the room worker may answer before the dispatcher's verdict
    // comes back, and the question must come first in the room.
    let recorded = shared
        .hub
        .add_user_message(room, user, &typed, None, thread)
        .map_err(thread_refused)?;
    deliver(
        shared,
        room,
        user,
        &recorded,
        stripped,
        mentioned,
        Vec::new(),
    )
    .await
}

/// A file from a user, as one message: saved into the attachments folder for the agent, kept
/// in the file store for the room, and delivered with `?text=` (optional) as its text.
async fn post_file(
    shared: &Shared,
    user: &str,
    room: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let query = req.uri().query().map(str::to_string);
    let name = query_param(query.as_deref(), "name")
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(ERR_UPLOAD_NAME))?;
    let caption = query_param(query.as_deref(), "text").unwrap_or_default();
    let thread = match query_param(query.as_deref(), "thread") {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(parse_thread(&s)?),
    };
    // Before the upload is read and stored: a wrong thread costs nothing.
    if let Some(root) = thread {
        shared
            .hub
            .check_thread(room, root)
            .map_err(thread_refused)?;
    }
    let body = read_body(shared, req, MAX_UPLOAD, err_upload_too_large).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(ERR_UPLOAD_EMPTY));
    }
    // Only the last path component, reduced to safe characters: the name comes from chat.
    let name = super::files::display_name(std::path::Path::new(&name));
    let server_error = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "web chat: {what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not store the file: {what}"),
        )
    };
    let saved = save_attachment(&shared.attachments_dir, &name, &body)
        .await
        .map_err(|e| server_error("saving it for the agent failed", &e))?;
    let stored = shared
        .files
        .store(&saved)
        .await
        .map_err(|e| server_error("keeping it for the room failed", &e))?;
    let (mentioned, stripped) = strip_mention(&caption);
    let shown = if caption.trim().is_empty() {
        format!("📎 {name}")
    } else {
        caption.clone()
    };
    let file = hub::FileRef {
        inline: stored.inline(),
        id: stored.id,
        name: name.clone(),
        size: stored.size,
    };
    let recorded = shared
        .hub
        .add_user_message(room, user, &shown, Some(file), thread)
        .map_err(thread_refused)?;
    let attachment = Attachment { name, path: saved };
    deliver(
        shared,
        room,
        user,
        &recorded,
        stripped.trim().to_string(),
        mentioned,
        vec![attachment],
    )
    .await
}

fn parse_thread(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(ERR_THREAD))
}

/// A thread the hub will not take a message in, as the 400 that says why.
fn thread_refused(e: hub::HubError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// `<attachments dir>/<random>-<name>`, folder 0700 and file 0600.
async fn save_attachment(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await?;
    let mut nonce = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let prefix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{prefix}-{name}"));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    file.sync_all().await?;
    Ok(path)
}

/// Hands a recorded message to the dispatcher and turns its verdict into the answer.
async fn deliver(
    shared: &Shared,
    room: &str,
    user: &str,
    recorded: &hub::Message,
    text: String,
    mentioned: bool,
    attachments: Vec<Attachment>,
) -> Result<Response<Body>, ApiError> {
    let id = recorded.id.to_string();
    let message = InboundMessage {
        connector: shared.connector.clone(),
        room: RoomRef {
            id: room.to_string(),
            name: room.to_string(),
            kind: RoomKind::Group,
        },
        id: id.clone(),
        thread: recorded.thread.map(|t| t.to_string()),
        sender: Sender {
            id: user.to_string(),
            username: user.to_string(),
            display_name: user.to_string(),
        },
        text,
        addressed: mentioned || !shared.require_mention,
        attachments,
        notes: Vec::new(),
        conversation: None,
        ts: recorded.ts,
    };
    tracing::debug!(room, user, id = %id, "web chat message received");
    match shared.events.deliver(message).await {
        Acceptance::Queued | Acceptance::Handled => Ok(json(
            StatusCode::ACCEPTED,
            &wire::Posted { id, ignored: None },
        )),
        Acceptance::Ignored(reason) => Ok(json(
            StatusCode::ACCEPTED,
            &wire::Posted {
                id,
                ignored: Some(reason),
            },
        )),
        Acceptance::Rejected(reason) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)),
    }
}

/// The whole body, refusing more than `limit` bytes (by `Content-Length` up front, or while
/// reading a chunked body) and a body that does not arrive within the body timeout (408; the
/// connection is closed, as the rest of the body would be read as the next request).
async fn read_body(
    shared: &Shared,
    req: Request<Incoming>,
    limit: usize,
    too_large: fn() -> String,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::bad_request(too_large()));
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    let Ok(collected) = tokio::time::timeout(shared.limits.http.body_timeout, collect).await else {
        tracing::debug!("web chat: a request body did not arrive in time");
        return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, ERR_BODY_TIMEOUT));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::bad_request(too_large()))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn list_messages(
    shared: &Shared,
    room: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let after = match query_param(req.uri().query(), "after") {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(ERR_AFTER))?,
        ),
    };
    let messages = shared
        .hub
        .messages(room, after)
        .iter()
        .map(to_wire)
        .collect();
    Ok(json(StatusCode::OK, &wire::MessageList { messages }))
}

/// A file the bot sent. Images are shown inline; anything else is a download, and a strict
/// sandboxing policy keeps a file from ever running as a page of this origin.
async fn serve_file(shared: &Shared, id: &str) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, ERR_FILE_GONE);
    let file = shared.files.get(id).ok_or_else(not_found)?;
    let bytes = shared.files.read(&file).await.map_err(|e| {
        tracing::warn!(error = %e, "web chat: reading a stored file failed");
        not_found()
    })?;
    let mut resp = full(StatusCode::OK, file.content_type, bytes);
    let disposition = format!(
        "{}; filename=\"{}\"",
        if file.inline() {
            "inline"
        } else {
            "attachment"
        },
        file.name
    );
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(|_| not_found())?,
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(resp)
}

/// `@bot` at the start (any case), followed by the end, a space, `:` or `,`. Returns whether
/// it was there and the text without it.
pub fn strip_mention(text: &str) -> (bool, &str) {
    let t = text.trim_start();
    let tag = hub::BOT_NAME.len() + 1;
    let Some(head) = t.get(..tag) else {
        return (false, text);
    };
    if !head.eq_ignore_ascii_case(&format!("@{}", hub::BOT_NAME)) {
        return (false, text);
    }
    let rest = &t[tag..];
    match rest.chars().next() {
        None => (true, ""),
        Some(c) if c.is_whitespace() || c == ':' || c == ',' => {
            (true, rest.trim_start_matches([':', ',']).trim_start())
        }
        Some(_) => (false, text),
    }
}

fn to_wire(m: &hub::Message) -> wire::WireMessage {
    wire::WireMessage {
        id: m.id.to_string(),
        from: m.from.clone(),
        text: m.text.clone(),
        done: m.done,
        ts: crate::timefmt::rfc3339(m.ts),
        file: m.file.as_ref().map(|f| wire::WireFile {
            name: f.name.clone(),
            size: f.size,
            url: format!("/api/files/{}", f.id),
            inline: f.inline,
        }),
        thread: m.thread.map(|t| t.to_string()),
    }
}

fn typing_frame(thread: Option<u64>, on: bool) -> Bytes {
    sse_frame(
        "typing",
        &wire::Typing {
            typing: on,
            thread: thread.map(|t| t.to_string()),
        },
    )
}

fn sse_frame(event: &str, data: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(data).expect("event data serializes");
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn room_event_frame(event: &RoomEvent) -> Bytes {
    match event {
        RoomEvent::Message(m) => sse_frame("message", &to_wire(m)),
        RoomEvent::Edit(m) => sse_frame("edit", &to_wire(m)),
        RoomEvent::Typing { thread, on } => typing_frame(*thread, *on),
    }
}

/// One of a user's [`Limits::streams_per_user`] event streams; given back when the stream's
/// body is dropped (the client went away, the room was evicted or the gateway stops).
struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl StreamSlot {
    fn take(shared: &Shared, user: &str) -> Result<StreamSlot, ApiError> {
        let limit = shared.limits.streams_per_user;
        let mut streams = shared.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(user.to_string()).or_default();
        if *open >= limit {
            tracing::info!(
                user,
                limit,
                "web chat: event stream refused, the user has too many open"
            );
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                err_too_many_streams(limit),
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            streams: shared.streams.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.user);
            }
        }
    }
}

/// `message`, `edit` and `typing` events of one room. Starts with the current typing state:
/// the top level's, then one `typing` event per thread where the bot is typing. A
/// client that falls behind the broadcast buffer gets `resync` (it should refetch the room)
/// and continues from the newest events; the stream ends when the gateway stops or the room
/// is evicted.
fn event_stream(shared: &Shared, room: &str, slot: StreamSlot) -> Response<Body> {
    let (rx, typing) = shared.hub.subscribe(room);
    let mut first = typing_frame(None, typing.contains(&None)).to_vec();
    for thread in typing.into_iter().flatten() {
        first.extend_from_slice(&typing_frame(Some(thread), true));
    }
    let first = Bytes::from(first);
    struct State {
        rx: broadcast::Receiver<RoomEvent>,
        cancel: CancellationToken,
        heartbeat: tokio::time::Interval,
        first: Option<Bytes>,
        _slot: StreamSlot,
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        rx,
        cancel: shared.cancel.clone(),
        heartbeat,
        first: Some(first),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            // The interval's first tick is immediate; consume it so the first heartbeat
            // comes a full period later.
            st.heartbeat.tick().await;
            return Some((first, st));
        }
        let frame = tokio::select! {
            _ = st.cancel.cancelled() => return None,
            _ = st.heartbeat.tick() => Bytes::from_static(b": keep-alive\n\n"),
            event = st.rx.recv() => match event {
                Ok(event) => room_event_frame(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "web chat event stream lagged; asking for a resync");
                    sse_frame("resync", &serde_json::json!({ "missed": missed }))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((frame, st))
    });
    let body = StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut resp = Response::new(body.boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Reverse proxies (nginx) would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("response serializes");
    full(status, "application/json", body)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body)
}

fn page() -> Response<Body> {
    let mut resp = full(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let headers = resp.headers_mut();
    // The page is self-contained: nothing may load from elsewhere, and the token in the
    // address must not leak through a Referer header.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mention_is_stripped_only_when_it_is_the_bot() {
        assert_eq!(strip_mention("@bot hello"), (true, "hello"));
        assert_eq!(strip_mention("  @Bot: hello"), (true, "hello"));
        assert_eq!(strip_mention("@bot, hi there"), (true, "hi there"));
        assert_eq!(strip_mention("@bot"), (true, ""));
        assert_eq!(strip_mention("@botany is fun"), (false, "@botany is fun"));
        assert_eq!(strip_mention("hello @bot"), (false, "hello @bot"));
        assert_eq!(strip_mention("@b"), (false, "@b"));
        assert_eq!(strip_mention("é"), (false, "é"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By+z"), "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(query_param(Some("after="), "after").as_deref(), Some(""));
        assert_eq!(query_param(Some("after"), "after").as_deref(), Some(""));
        assert_eq!(query_param(Some("x=%zz%4"), "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("x=%é"), "x").as_deref(), Some("%é"));
        assert_eq!(query_param(None, "token"), None);
    }
}
