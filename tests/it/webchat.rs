//! The web chat connector in-process, over real HTTP on 127.0.0.1: the JSON API, the event
//! stream, the `done` rule, bounds, tokens and start-up failures. A test task stands in for
//! the dispatcher: it records delivered messages and answers with scripted verdicts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::admission;
use agent_chat_gateway::connector::webchat::server::{self, Limits};
use agent_chat_gateway::connector::webchat::{WebchatConfig, WebchatConnector};
use agent_chat_gateway::connector::{Acceptance, Connector, ConnectorEvent};
use agent_chat_gateway::model::{InboundMessage, PostedMessage, ReplyTarget, RoomKind};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::dispatcher::ConnectorRun;
use crate::support::ports::free_port;
use crate::support::webclient::EventStream;
use crate::support::{tcp, within};

const NAME: &str = "local";
const BOB_TOKEN: &str = "bob-configured-token-0123456789";

fn config(listen: SocketAddr, history_limit: usize, require_mention: bool) -> WebchatConfig {
    WebchatConfig {
        listen,
        tokens: BTreeMap::from([("bob".to_string(), BOB_TOKEN.to_string())]),
        users: vec!["alice".into(), "bob".into()],
        history_limit,
        persist_history: true,
        require_mention,
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Harness {
    run: ConnectorRun<WebchatConnector>,
    connector: Arc<WebchatConnector>,
    base: String,
    alice: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start(config: WebchatConfig, watched: &[&str]) -> Harness {
        Harness::start_in(tempfile::tempdir().unwrap(), config, watched).await
    }

    /// Starts with other server bounds than the defaults.
    async fn start_limited(config: WebchatConfig, limits: Limits) -> Harness {
        Harness::start_in_with(tempfile::tempdir().unwrap(), config, &[], limits).await
    }

    /// Starts on an existing runtime dir (a restart: tokens and history are there).
    async fn start_in(dir: tempfile::TempDir, config: WebchatConfig, watched: &[&str]) -> Harness {
        Harness::start_in_with(dir, config, watched, Limits::default()).await
    }

    async fn start_in_with(
        dir: tempfile::TempDir,
        config: WebchatConfig,
        watched: &[&str],
        limits: Limits,
    ) -> Harness {
        let connector = Arc::new(
            WebchatConnector::new(NAME, &config, dir.path())
                .unwrap()
                .with_limits(limits),
        );
        connector.prepare().await.unwrap();
        let attachments = dir.path().join("attachments");
        let run = ConnectorRun::start(connector.clone(), NAME, watched, dir.path(), attachments);
        let alice = connector
            .tokens()
            .iter()
            .find(|(u, _)| u == "alice")
            .map(|(_, t)| t.clone())
            .unwrap();
        Harness {
            base: format!("http://{}", connector.local_addr()),
            run,
            connector,
            alice,
            http: reqwest::Client::new(),
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_raw(&self, room: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url(&format!("/api/rooms/{room}/messages")))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = within("POST response", req.send()).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn post(&self, room: &str, token: &str, text: &str) -> (u16, Value) {
        let body = serde_json::to_vec(&json!({ "text": text })).unwrap();
        self.post_raw(room, Some(token), body).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = within("GET response", req.send()).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn messages(&self, room: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/rooms/{room}/messages"), Some(&self.alice))
            .await;
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().unwrap().clone()
    }

    /// A GET with the token in the query, as the page's event stream and file links send it.
    async fn get_with_query_token(&self, path: &str, token: &str) -> reqwest::Response {
        let req = self.http.get(self.url(path)).query(&[("token", token)]);
        within("GET response", req.send()).await.unwrap()
    }

    async fn events(&self, room: &str) -> EventStream {
        let resp = self
            .get_with_query_token(&format!("/api/rooms/{room}/events"), &self.alice)
            .await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream; charset=utf-8"
        );
        EventStream::of(resp)
    }

    async fn next_delivered(&mut self) -> InboundMessage {
        self.run.message().await
    }

    fn nothing_delivered(&mut self) {
        self.run.nothing_delivered();
    }

    async fn stop(self) {
        self.stop_keeping_dir().await;
    }

    /// (from, text) of the room's messages, oldest first.
    async fn who_said(&self, room: &str) -> Vec<(String, String)> {
        self.messages(room)
            .await
            .iter()
            .map(|m| {
                (
                    m["from"].as_str().unwrap().to_string(),
                    m["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Stops and hands back the runtime dir for a restart.
    async fn stop_keeping_dir(self) -> tempfile::TempDir {
        self.run.stop().await;
        self.dir
    }
}

/// The next event of `events`; `None` when the stream ended.
async fn next_event(events: &mut EventStream) -> Option<(String, Value)> {
    within("an event", events.next()).await
}

fn lobby() -> ReplyTarget {
    ReplyTarget::room("lobby")
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let h = Harness::start(config(loopback(), 10, false), &[]).await;
    let expected = json!({
        "error": "missing or invalid token: send Authorization: Bearer <token> (or ?token= on GET)"
    });
    let body = br#"{"text":"hi"}"#.to_vec();
    assert_eq!(
        h.post_raw("lobby", None, body.clone()).await,
        (401, expected.clone())
    );
    assert_eq!(
        h.post_raw("lobby", Some("not-a-token"), body.clone()).await,
        (401, expected.clone())
    );
    // A prefix of a real token is not a token.
    assert_eq!(
        h.post_raw("lobby", Some(&BOB_TOKEN[..20]), body).await,
        (401, expected.clone())
    );
    for path in [
        "/api/rooms",
        "/api/me",
        "/api/rooms/lobby/messages",
        "/api/rooms/lobby/events",
    ] {
        assert_eq!(h.get(path, None).await, (401, expected.clone()), "{path}");
    }
    let wrong = h
        .http
        .get(h.url("/api/rooms/lobby/events?token=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    // The token is accepted from the query too (the page's EventSource cannot set headers).
    let me = h.get_with_query_token("/api/me", BOB_TOKEN).await;
    assert_eq!(
        me.json::<Value>().await.unwrap(),
        json!({"user": "bob", "bot": "bot", "require_mention": false})
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_posts_get_400_with_exact_messages() {
    let mut h = Harness::start(config(loopback(), 10, false), &[]).await;
    let token = h.alice.clone();
    let bad_json =
        json!({"error": "invalid JSON body: expected an object like {\"text\": \"...\"}"});
    let long_room = "r".repeat(65);
    let missing = json!({"error": "missing \"text\": expected an object like {\"text\": \"...\"}"});
    let cases: Vec<(&str, Vec<u8>, Value)> = vec![
        ("lobby", b"{not json".to_vec(), bad_json.clone()),
        ("lobby", b"[\"text\"]".to_vec(), bad_json.clone()),
        ("lobby", b"".to_vec(), bad_json.clone()),
        ("lobby", b"{}".to_vec(), missing.clone()),
        ("lobby", br#"{"text": null}"#.to_vec(), missing),
        (
            "lobby",
            br#"{"text": 42}"#.to_vec(),
            json!({"error": "\"text\" must be a string"}),
        ),
        (
            "lobby",
            br#"{"text": "  \n "}"#.to_vec(),
            json!({"error": "\"text\" is empty"}),
        ),
        (
            "lobby",
            br#"{"text": "@bot"}"#.to_vec(),
            json!({"error": "\"text\" is empty"}),
        ),
        (
            "lobby",
            serde_json::to_vec(&json!({"text": "x".repeat(70 * 1024)})).unwrap(),
            json!({"error": "request body too large (limit 65536 bytes)"}),
        ),
        (
            "a%20b",
            br#"{"text": "hi"}"#.to_vec(),
            json!({"error": "invalid room name: use 1 to 64 characters among A-Z a-z 0-9 _ . -"}),
        ),
        (
            &long_room,
            br#"{"text": "hi"}"#.to_vec(),
            json!({"error": "invalid room name: use 1 to 64 characters among A-Z a-z 0-9 _ . -"}),
        ),
    ];
    for (room, body, expected) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        assert_eq!(
            h.post_raw(room, Some(&token), body).await,
            (400, expected),
            "room {room} body {shown}"
        );
    }
    // A body over the limit without a Content-Length (chunked) is cut off while reading.
    let chunks = futures_util::stream::iter(
        (0..80).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024]))),
    );
    let resp = h
        .http
        .post(h.url("/api/rooms/lobby/messages"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "request body too large (limit 65536 bytes)"})
    );
    assert_eq!(
        h.get("/api/rooms/lobby/messages?after=abc", Some(&token))
            .await,
        (
            400,
            json!({"error": "invalid \"after\": expected a message id"})
        )
    );
    h.nothing_delivered();
    assert!(h.messages("lobby").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_post_is_delivered_with_its_sender_and_room() {
    let mut h = Harness::start(config(loopback(), 10, false), &[]).await;
    let (status, body) = h.post("lobby", BOB_TOKEN, "@bot hello there").await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body, json!({ "id": id }));

    let m = h.next_delivered().await;
    assert_eq!(&*m.connector, NAME);
    assert_eq!(m.id, id);
    assert_eq!(m.room.id, "lobby");
    assert_eq!(m.room.name, "lobby");
    assert_eq!(m.room.kind, RoomKind::Group);
    assert_eq!(m.sender.id, "bob");
    assert_eq!(m.sender.username, "bob");
    assert_eq!(m.sender.display_name, "bob");
    assert_eq!(m.text, "hello there");
    assert!(m.addressed);
    assert_eq!(m.thread, None);

    // Without require_mention every message is addressed; the room shows what was typed.
    h.post("lobby", BOB_TOKEN, "no mention").await;
    assert!(h.next_delivered().await.addressed);
    let shown = h.messages("lobby").await;
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["id"], id);
    assert_eq!(shown[0]["from"], "bob");
    assert_eq!(shown[0]["text"], "@bot hello there");
    assert_eq!(shown[0]["done"], true);
    let ts = shown[0]["ts"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
        "{ts}"
    );
    let (_, rooms) = h.get("/api/rooms", Some(BOB_TOKEN)).await;
    assert_eq!(
        rooms,
        json!({"rooms": [{"name": "lobby", "messages": 2, "watched": false}]})
    );
    h.stop().await;
}

#[tokio::test]
async fn with_require_mention_only_messages_to_the_bot_are_addressed() {
    let mut h = Harness::start(config(loopback(), 10, true), &[]).await;
    h.post("lobby", BOB_TOKEN, "just chatting").await;
    let m = h.next_delivered().await;
    assert!(!m.addressed);
    assert_eq!(m.text, "just chatting");
    h.post("lobby", BOB_TOKEN, "@BOT: run the tests").await;
    let m = h.next_delivered().await;
    assert!(m.addressed);
    assert_eq!(m.text, "run the tests");
    h.post("lobby", BOB_TOKEN, "@botany rocks").await;
    assert!(!h.next_delivered().await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn dispatcher_verdicts_become_status_codes() {
    let mut h = Harness::start(config(loopback(), 10, false), &[]).await;
    for verdict in [
        Acceptance::Rejected("the room's queue is full (5 waiting)".into()),
        Acceptance::Ignored("no watcher for this room".into()),
        Acceptance::Handled,
    ] {
        h.run.answer_next(verdict);
    }
    assert_eq!(
        h.post("lobby", BOB_TOKEN, "one").await,
        (
            503,
            json!({"error": "the room's queue is full (5 waiting)"})
        )
    );
    let (status, body) = h.post("lobby", BOB_TOKEN, "two").await;
    assert_eq!(status, 202);
    assert_eq!(body["ignored"], "no watcher for this room");
    assert!(body["id"].is_string());
    let (status, body) = h.post("lobby", BOB_TOKEN, "approve ab12").await;
    assert_eq!((status, body.get("ignored")), (202, None));
    for _ in 0..3 {
        h.next_delivered().await;
    }
    h.stop().await;
}

#[tokio::test]
async fn bot_replies_stream_over_sse_and_are_done_when_typing_stops() {
    let h = Harness::start(config(loopback(), 10, false), &[]).await;
    let mut sse = h.events("lobby").await;
    assert_eq!(sse.expect("typing").await, json!({"typing": false}));

    let c = &h.connector;
    c.typing(&lobby(), true).await.unwrap();
    let posted = c.post(&lobby(), "Hel").await.unwrap();
    assert!(h.messages("lobby").await[0]["done"] == false);
    c.edit(&lobby(), &posted, "Hello, world").await.unwrap();
    let second = c.post(&lobby(), "part two").await.unwrap();

    assert_eq!(sse.expect("typing").await, json!({"typing": true}));
    let m = sse.expect("message").await;
    assert_eq!(
        (m["id"].as_str(), &m["from"], &m["text"], &m["done"]),
        (
            Some(posted.id.as_str()),
            &json!("bot"),
            &json!("Hel"),
            &json!(false)
        )
    );
    let e = sse.expect("edit").await;
    assert_eq!(
        (&e["text"], &e["done"]),
        (&json!("Hello, world"), &json!(false))
    );
    let m2 = sse.expect("message").await;
    assert_eq!(
        (m2["id"].as_str(), &m2["done"]),
        (Some(second.id.as_str()), &json!(false))
    );

    // Mid-turn, the API shows the same state.
    let mid = h.messages("lobby").await;
    assert_eq!(
        mid.iter().map(|m| m["done"].clone()).collect::<Vec<_>>(),
        [json!(false), json!(false)]
    );

    c.typing(&lobby(), false).await.unwrap();
    let done1 = sse.expect("edit").await;
    let done2 = sse.expect("edit").await;
    assert_eq!(
        (done1["id"].as_str(), &done1["done"], &done1["text"]),
        (
            Some(posted.id.as_str()),
            &json!(true),
            &json!("Hello, world")
        )
    );
    assert_eq!(
        (done2["id"].as_str(), &done2["done"]),
        (Some(second.id.as_str()), &json!(true))
    );
    assert_eq!(sse.expect("typing").await, json!({"typing": false}));
    let after = h.messages("lobby").await;
    assert!(after.iter().all(|m| m["done"] == true), "{after:?}");

    // Outside a turn a bot message is final at once.
    let notice = c.post(&lobby(), "⚠️ the agent is paused").await.unwrap();
    let m = sse.expect("message").await;
    assert_eq!(
        (m["id"].as_str(), &m["done"]),
        (Some(notice.id.as_str()), &json!(true))
    );

    // A user's post shows up on the stream as well.
    h.post("lobby", BOB_TOKEN, "thanks").await;
    let m = sse.expect("message").await;
    assert_eq!(
        (&m["from"], &m["text"], &m["done"]),
        (&json!("bob"), &json!("thanks"), &json!(true))
    );

    // Editing something that is not a bot message of that room fails.
    assert!(c
        .edit(&ReplyTarget::room("elsewhere"), &posted, "x")
        .await
        .is_err());
    assert!(c
        .edit(
            &lobby(),
            &PostedMessage {
                id: m["id"].as_str().unwrap().into()
            },
            "forged"
        )
        .await
        .is_err());
    assert!(c.post(&ReplyTarget::room("bad room"), "x").await.is_err());
    h.stop().await;
}

#[tokio::test]
async fn after_pages_and_history_is_bounded() {
    let h = Harness::start(config(loopback(), 5, false), &[]).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let (status, body) = h.post("lobby", &h.alice, &format!("m{i}")).await;
        assert_eq!(status, 202);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let all = h.messages("lobby").await;
    let texts: Vec<&str> = all.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m3", "m4", "m5", "m6", "m7"]);

    let (_, page) = h
        .get(
            &format!("/api/rooms/lobby/messages?after={}", ids[5]),
            Some(&h.alice),
        )
        .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m6", "m7"]);
    let (_, none) = h
        .get(
            &format!("/api/rooms/lobby/messages?after={}", ids[7]),
            Some(&h.alice),
        )
        .await;
    assert_eq!(none, json!({"messages": []}));
    // An id older than the history returns everything still held.
    let (_, old) = h
        .get(
            &format!("/api/rooms/lobby/messages?after={}", ids[0]),
            Some(&h.alice),
        )
        .await;
    assert_eq!(old["messages"].as_array().unwrap().len(), 5);
    let (_, empty) = h
        .get("/api/rooms/nobody-here/messages", Some(&h.alice))
        .await;
    assert_eq!(empty, json!({"messages": []}));
    h.stop().await;
}

#[tokio::test]
async fn the_number_of_rooms_is_bounded() {
    let h = Harness::start(config(loopback(), 5, false), &["keep"]).await;
    let limit = agent_chat_gateway::connector::webchat::MAX_ROOMS;
    // A client of the idlest room: its stream ends when the room is forgotten.
    let mut sse = h.events("room-0").await;
    sse.expect("typing").await;
    for i in 0..limit + 10 {
        h.connector
            .post(&ReplyTarget::room(format!("room-{i}")), "x")
            .await
            .unwrap();
    }
    let (_, rooms) = h.get("/api/rooms", Some(&h.alice)).await;
    let names: Vec<&str> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), limit);
    // The watched room stays; the oldest others went.
    assert!(names.contains(&"keep"));
    assert!(!names.contains(&"room-0"));
    assert!(names.contains(&format!("room-{}", limit + 9).as_str()));
    // The message posted to room-0 before it was forgotten, then the end (a stream that
    // stays open fails on the read timeout).
    assert_eq!(sse.expect("message").await["text"], "x");
    assert!(
        next_event(&mut sse).await.is_none(),
        "stream of an evicted room should end"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_does_not_block_posting_and_is_resynced() {
    let h = Harness::start(config(loopback(), 1000, false), &[]).await;
    let mut sse = h.events("lobby").await;
    sse.expect("typing").await;
    // The default test runtime has one thread: the server cannot send anything while this
    // loop runs, so the subscriber falls behind the event buffer.
    for i in 0..600 {
        h.connector
            .post(&lobby(), &format!("burst {i}"))
            .await
            .unwrap();
    }
    let mut saw_resync = false;
    loop {
        let (event, data) = next_event(&mut sse).await.expect("stream ended");
        if event == "resync" {
            assert!(data["missed"].as_u64().unwrap() > 0);
            saw_resync = true;
        }
        if data["text"] == "burst 599" {
            break;
        }
    }
    assert!(saw_resync);
    assert_eq!(h.messages("lobby").await.len(), 600);
    h.stop().await;
}

#[tokio::test]
async fn cancellation_ends_event_streams_and_the_server() {
    // A port below the ephemeral range, so no other test's server can take it once this
    // one stops and answer the probe below.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let h = Harness::start(config(addr, 5, false), &[]).await;
    let mut sse = h.events("lobby").await;
    sse.expect("typing").await;
    let base = h.base.clone();
    h.stop().await;
    assert!(
        next_event(&mut sse).await.is_none(),
        "stream should end on shutdown"
    );
    let refused = reqwest::get(format!("{base}/healthz")).await;
    assert!(refused.is_err(), "server still answering after stop");
}

#[tokio::test]
async fn watched_rooms_are_resolved_at_start() {
    let mut h = Harness::start(
        config(loopback(), 5, false),
        &["*", "lobby", "#dev", "bad room"],
    )
    .await;
    let mut resolved = Vec::new();
    let mut failed = Vec::new();
    while resolved.len() + failed.len() < 3 {
        match h.run.other().await {
            ConnectorEvent::RoomResolved { spec, room } => {
                assert_eq!(room.kind, RoomKind::Group);
                resolved.push((spec, room.id));
            }
            ConnectorEvent::RoomFailed { spec, error } => failed.push((spec, error)),
            _ => {}
        }
    }
    assert_eq!(
        resolved,
        [
            ("lobby".to_string(), "lobby".to_string()),
            ("#dev".into(), "dev".into())
        ]
    );
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "bad room");
    let (_, rooms) = h.get("/api/rooms", Some(&h.alice)).await;
    assert_eq!(
        rooms,
        json!({"rooms": [
            {"name": "dev", "messages": 0, "watched": true},
            {"name": "lobby", "messages": 0, "watched": true},
        ]})
    );
    h.stop().await;
}

#[tokio::test]
async fn page_health_and_unknown_paths() {
    let h = Harness::start(config(loopback(), 5, false), &[]).await;
    let health = reqwest::get(h.url("/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let page = reqwest::get(h.url("/")).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("<title>agent-chat-gateway · web chat</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "page must not load external assets"
    );
    assert_eq!(
        h.get("/nope", Some(&h.alice)).await,
        (404, json!({"error": "not found"}))
    );
    let wrong = h
        .http
        .delete(h.url("/api/rooms/lobby/messages"))
        .bearer_auth(&h.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 405);
    h.stop().await;
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("webchat-{NAME}.tokens.json"))
}

#[tokio::test]
async fn generated_tokens_are_persisted_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(loopback(), 5, false);
    let first = WebchatConnector::new(NAME, &cfg, dir.path()).unwrap();
    let alice = first
        .tokens()
        .iter()
        .find(|(u, _)| u == "alice")
        .unwrap()
        .1
        .clone();
    assert!(alice.len() >= 32);
    assert!(alice
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

    let path = token_file(dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        stored,
        json!({"tokens": {"alice": alice}}),
        "configured tokens stay in the config"
    );

    let second = WebchatConnector::new(NAME, &cfg, dir.path()).unwrap();
    assert_eq!(second.tokens(), first.tokens());

    // The notes carry the real port once bound.
    second.prepare().await.unwrap();
    let port = second.local_addr().port();
    assert_ne!(port, 0);
    assert_eq!(
        second.startup_notes(),
        [
            format!("web chat for alice: http://127.0.0.1:{port}/?token={alice}"),
            format!("web chat for bob: http://127.0.0.1:{port}/?token={BOB_TOKEN}"),
        ]
    );

    // Another connector name gets its own file and tokens.
    let other = WebchatConnector::new("other", &cfg, dir.path()).unwrap();
    assert_ne!(other.tokens()[0].1, alice);
}

#[tokio::test]
async fn a_port_in_use_fails_prepare_and_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let connector = WebchatConnector::new(NAME, &config(addr, 5, false), dir.path()).unwrap();
    let err = format!("{:#}", connector.prepare().await.unwrap_err());
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("already in use"), "{err}");
}

#[tokio::test]
async fn the_bot_name_cannot_be_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(loopback(), 5, false);
    cfg.users.push("bot".into());
    let err = WebchatConnector::new(NAME, &cfg, dir.path())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[tokio::test]
async fn files_the_bot_sends_are_served_to_signed_in_users() {
    let h = Harness::start(config(loopback(), 10, false), &[]).await;
    let src = tempfile::tempdir().unwrap();
    let report = src.path().join("report.txt");
    std::fs::write(&report, "hello file").unwrap();
    h.connector
        .upload(&lobby(), &report, Some("the report"))
        .await
        .unwrap();
    let picture = src.path().join("pic.png");
    std::fs::write(&picture, b"\x89PNG not really").unwrap();
    h.connector.upload(&lobby(), &picture, None).await.unwrap();

    let shown = h.messages("lobby").await;
    assert_eq!(shown.len(), 2);
    assert_eq!(
        (&shown[0]["from"], &shown[0]["text"]),
        (&json!("bot"), &json!("the report"))
    );
    let file = &shown[0]["file"];
    assert_eq!(
        (&file["name"], &file["size"], &file["inline"]),
        (&json!("report.txt"), &json!(10), &json!(false))
    );
    let url = file["url"].as_str().unwrap();
    assert!(url.starts_with("/api/files/"), "{url}");
    assert_eq!(shown[1]["text"], "📎 pic.png");
    assert_eq!(shown[1]["file"]["inline"], true);

    let resp = h
        .http
        .get(h.url(url))
        .bearer_auth(BOB_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"report.txt\""
    );
    assert_eq!(resp.text().await.unwrap(), "hello file");
    let pic = h
        .get_with_query_token(shown[1]["file"]["url"].as_str().unwrap(), &h.alice)
        .await;
    assert_eq!(pic.headers()["content-type"], "image/png");
    assert_eq!(
        pic.headers()["content-disposition"],
        "inline; filename=\"pic.png\""
    );

    assert_eq!(h.get(url, None).await.0, 401);
    assert_eq!(
        h.get("/api/files/nope", Some(&h.alice)).await,
        (
            404,
            json!({"error": "file not found (the web chat keeps a bounded number of files)"})
        )
    );

    // Too large (a sparse file costs no disk) and missing files are refused with the reason.
    let huge = src.path().join("huge.bin");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(26 * 1024 * 1024)
        .unwrap();
    let err = h.connector.upload(&lobby(), &huge, None).await.unwrap_err();
    assert!(
        err.to_string().contains("takes files up to 26214400 bytes"),
        "{err}"
    );
    let err = h
        .connector
        .upload(&lobby(), &src.path().join("missing.txt"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            agent_chat_gateway::connector::ConnectorError::Attachment { .. }
        ),
        "{err}"
    );
    assert_eq!(h.messages("lobby").await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn the_registry_builds_a_webchat_connector_from_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "connectors:\n  - {name: web, type: webchat, listen: \"127.0.0.1:0\", allowed_users: {owners: [alice]}}\n\
                agents:\n  a: {type: claude, working_directory: /tmp}\n\
                watchers:\n  - {name: w, connector: web, room: lobby}\n";
    let config = agent_chat_gateway::config::parse(
        &dir.path().join("config.yaml"),
        yaml,
        agent_chat_gateway::TYPES,
    )
    .unwrap();
    let connector =
        agent_chat_gateway::connector::build(&config.connectors[0], dir.path()).unwrap();
    assert_eq!(connector.name(), "web");
    assert!(connector.capabilities().edit);
    connector.prepare().await.unwrap();
    let notes = connector.startup_notes();
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].starts_with("web chat for alice: http://127.0.0.1:"),
        "{}",
        notes[0]
    );
    assert!(
        !notes[0].contains(":0/"),
        "the note must carry the bound port: {}",
        notes[0]
    );
    assert!(dir.path().join("webchat-web.tokens.json").exists());
}

#[tokio::test]
async fn files_users_send_reach_the_agent_and_the_room() {
    let mut h = Harness::start(config(loopback(), 10, false), &[]).await;
    let (http, base) = (h.http.clone(), h.base.clone());
    let upload = |query: &str, body: Vec<u8>, token: Option<&str>| {
        let mut req = http
            .post(format!("{base}/api/rooms/lobby/files{query}"))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = upload(
        "?name=..%2Fbuild%20log.txt&text=%40bot%20why%20does%20it%20fail",
        b"error: linker failed".to_vec(),
        Some(BOB_TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    let m = h.next_delivered().await;
    assert_eq!(m.id, id);
    assert_eq!(m.sender.id, "bob");
    assert_eq!(m.text, "why does it fail");
    assert!(m.addressed);
    assert_eq!(m.attachments.len(), 1);
    let a = &m.attachments[0];
    assert_eq!(
        a.name, "build log.txt",
        "only the last path component is kept"
    );
    assert!(
        a.path.starts_with(h.dir.path().join("attachments")),
        "{}",
        a.path.display()
    );
    assert_eq!(std::fs::read(&a.path).unwrap(), b"error: linker failed");
    let mode = std::fs::metadata(&a.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let shown = h.messages("lobby").await;
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (&shown[0]["from"], &shown[0]["text"]),
        (&json!("bob"), &json!("@bot why does it fail"))
    );
    assert_eq!(
        (&shown[0]["file"]["name"], &shown[0]["file"]["size"]),
        (&json!("build log.txt"), &json!(20))
    );
    let url = shown[0]["file"]["url"].as_str().unwrap();
    let download = h
        .http
        .get(h.url(url))
        .bearer_auth(&h.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(download.text().await.unwrap(), "error: linker failed");

    // Without a caption the room shows the file's name and the agent gets no text.
    let (status, _) = upload(
        "?name=notes.md",
        b"# notes".to_vec(),
        Some(&h.alice.clone()),
    )
    .await;
    assert_eq!(status, 202);
    let m = h.next_delivered().await;
    assert_eq!(
        (m.text.as_str(), m.attachments[0].name.as_str()),
        ("", "notes.md")
    );
    assert_eq!(h.messages("lobby").await[1]["text"], "📎 notes.md");

    let token = h.alice.clone();
    assert_eq!(
        upload("", b"x".to_vec(), Some(&token)).await,
        (
            400,
            json!({"error": "missing \"name\": send the file name as ?name="})
        )
    );
    assert_eq!(
        upload("?name=a.txt", Vec::new(), Some(&token)).await,
        (400, json!({"error": "the file is empty"}))
    );
    assert_eq!(
        upload("?name=a.bin", vec![0; 10 * 1024 * 1024 + 1], Some(&token)).await,
        (
            400,
            json!({"error": "file too large (limit 10485760 bytes)"})
        )
    );
    assert_eq!(upload("?name=a.txt", b"x".to_vec(), None).await.0, 401);
    h.nothing_delivered();
    assert_eq!(h.messages("lobby").await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart_and_the_journal_stays_bounded() {
    let h = Harness::start(config(loopback(), 3, false), &[]).await;
    let to = ReplyTarget::room("lobby");
    for i in 0..4 {
        h.post("lobby", &h.alice, &format!("question {i}")).await;
    }
    let src = tempfile::tempdir().unwrap();
    let report = src.path().join("notes.txt");
    std::fs::write(&report, "kept file").unwrap();
    h.connector.upload(&to, &report, None).await.unwrap();
    // A streamed answer is kept as it ended, not as it started.
    h.connector.typing(&to, true).await.unwrap();
    let posted = h.connector.post(&to, "Draft").await.unwrap();
    h.connector
        .edit(&to, &posted, "Final answer")
        .await
        .unwrap();
    h.connector.typing(&to, false).await.unwrap();
    // Still streaming when the gateway stops: not kept (its turn runs again after a restart).
    h.connector.typing(&to, true).await.unwrap();
    h.connector.post(&to, "half a thought").await.unwrap();
    let before = h.who_said("lobby").await;
    let last_id = h.messages("lobby").await.last().unwrap()["id"].clone();
    let dir = h.stop_keeping_dir().await;
    let journal = dir.path().join(format!("webchat-{NAME}.history.jsonl"));
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let h = Harness::start_in(dir, config(loopback(), 3, false), &[]).await;
    let after = h.who_said("lobby").await;
    // history_limit 3: the last three final messages.
    assert_eq!(
        after,
        [
            ("alice".to_string(), "question 3".to_string()),
            ("bot".to_string(), "📎 notes.txt".to_string()),
            ("bot".to_string(), "Final answer".to_string()),
        ],
        "before the restart: {before:?}"
    );
    // The file of a restored message is still served.
    let restored = h.messages("lobby").await;
    let url = restored[1]["file"]["url"].as_str().unwrap().to_string();
    let body = h
        .http
        .get(h.url(&url))
        .bearer_auth(&h.alice)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "kept file");
    // New messages sort after the restored ones.
    let (_, posted) = h.post("lobby", &h.alice, "after the restart").await;
    assert!(
        posted["id"].as_str().unwrap().parse::<u64>().unwrap()
            > last_id.as_str().unwrap().parse::<u64>().unwrap(),
        "{posted} vs {last_id}"
    );
    // Many more messages: the file is rewritten compacted instead of growing without bound.
    for i in 0..600 {
        h.post("lobby", &h.alice, &format!("flood {i}")).await;
    }
    let dir = h.stop_keeping_dir().await;
    let journal = dir.path().join(format!("webchat-{NAME}.history.jsonl"));
    let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert!(lines <= 2 * 3 + 256 + 1, "{lines} lines in the journal");
    // A torn last line (a crash mid-write) is skipped, the rest is read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"room\":\"lobby\",\"id\":").unwrap();
    let h = Harness::start_in(dir, config(loopback(), 3, false), &[]).await;
    let texts: Vec<String> = h
        .messages("lobby")
        .await
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["flood 597", "flood 598", "flood 599"]);
    h.stop().await;
}

#[tokio::test]
async fn an_unusable_history_journal_costs_the_history_not_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the journal should be: it can be neither read nor appended to.
    std::fs::create_dir(dir.path().join(format!("webchat-{NAME}.history.jsonl"))).unwrap();
    let h = Harness::start_in(dir, config(loopback(), 5, false), &[]).await;
    let (status, _) = h.post("lobby", &h.alice, "still works").await;
    assert_eq!(status, 202);
    assert_eq!(h.messages("lobby").await.len(), 1);
    h.stop().await;
}

// ---- Live-surface bounds (issue 9): idle, half-sent and trickled connections ----

/// Short timeouts and small caps, so the bounds are reached quickly.
fn tight(header_ms: u64, body_ms: u64, max_unauthenticated: usize, max_work: usize) -> Limits {
    Limits {
        http: admission::Limits {
            header_timeout: Duration::from_millis(header_ms),
            body_timeout: Duration::from_millis(body_ms),
            max_unauthenticated,
            max_work,
            max_connections: 512,
        },
        streams_per_user: 2,
    }
}

async fn connect(h: &Harness) -> tokio::net::TcpStream {
    tcp::connect(h.connector.local_addr()).await
}

#[tokio::test]
async fn idle_and_half_sent_connections_cannot_starve_a_signed_in_user() {
    // The header timeout is far longer than the test: nothing is freed by a timeout here, so
    // the user is served only because the flood displaces itself.
    let mut h =
        Harness::start_limited(config(loopback(), 10, false), tight(60_000, 60_000, 4, 2)).await;
    let mut flood = Vec::new();
    for i in 0..24 {
        let mut conn = connect(&h).await;
        if i % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            conn.write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthor")
                .await
                .unwrap();
        }
        flood.push(conn);
    }
    // Let the server accept all of them before the user comes.
    for conn in flood.iter_mut().take(16) {
        tcp::until_closed("an old flood connection to be closed", conn).await;
    }
    let (status, me) = h.get("/api/me", Some(&h.alice)).await;
    assert_eq!((status, me["user"].as_str()), (200, Some("alice")));
    let (status, _) = h.post("lobby", &h.alice, "still here").await;
    assert_eq!(status, 202);
    assert_eq!(h.next_delivered().await.text, "still here");
    // The oldest of the flood made room; the newest are still held, within their cap.
    let mut open = 0;
    for conn in flood.iter_mut() {
        if tcp::still_open(conn).await {
            open += 1;
        }
    }
    // The user's own connection took one place before it authenticated.
    assert!(
        (1..=4).contains(&open),
        "{open} unauthenticated connections still open"
    );
    h.stop().await;
}

#[tokio::test]
async fn half_sent_heads_and_idle_connections_are_closed_after_the_header_timeout() {
    let header = Duration::from_millis(300);
    let h = Harness::start_limited(config(loopback(), 10, false), tight(300, 60_000, 32, 8)).await;
    use tokio::io::AsyncWriteExt;
    let started = std::time::Instant::now();
    let mut half = connect(&h).await;
    half.write_all(b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nContent-")
        .await
        .unwrap();
    let mut idle = connect(&h).await;
    // A signed-in keep-alive connection that goes quiet is closed the same way.
    let mut kept = connect(&h).await;
    kept.write_all(
        format!("GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB_TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tcp::until_closed("the half-sent head to be closed", &mut half).await;
    tcp::until_closed("the idle connection to be closed", &mut idle).await;
    let answered =
        tcp::until_closed("the quiet keep-alive connection to be closed", &mut kept).await;
    assert!(answered.starts_with("HTTP/1.1 200 OK"), "{answered}");
    assert!(answered.contains(r#"{"user":"bob""#), "{answered}");
    // Not before the timeout: a timer never fires early.
    assert!(started.elapsed() >= header, "{:?}", started.elapsed());
    // The server still serves everyone else.
    assert_eq!(h.get("/api/me", Some(&h.alice)).await.0, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_trickled_body_holds_one_work_slot_until_the_body_timeout_cuts_it() {
    let body_timeout = Duration::from_millis(400);
    let mut h =
        Harness::start_limited(config(loopback(), 10, false), tight(60_000, 400, 32, 1)).await;
    use tokio::io::AsyncWriteExt;
    // Unauthenticated connections hold no work slot: with one slot and idle strangers the
    // user is still served.
    let _strangers = [connect(&h).await, connect(&h).await, connect(&h).await];
    assert_eq!(h.get("/api/me", Some(&h.alice)).await.0, 200);
    let started = std::time::Instant::now();
    let mut trickle = connect(&h).await;
    trickle
        .write_all(
            format!(
                "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"text\": \"h"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // While it trickles, it holds the only work slot: others are told the server is busy.
    let busy = within("a busy answer", async {
        loop {
            let resp = h
                .http
                .get(h.url("/api/me"))
                .bearer_auth(&h.alice)
                .send()
                .await
                .unwrap();
            if resp.status().as_u16() == 503 {
                return resp;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(
        busy.json::<Value>().await.unwrap(),
        json!({"error": server::ERR_BUSY})
    );
    let answer = tcp::until_closed("the trickled body to be cut", &mut trickle).await;
    assert!(started.elapsed() >= body_timeout);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains(server::ERR_BODY_TIMEOUT), "{answer}");
    // The slot is free again, and nothing of the cut message was delivered.
    let (status, _) = h.post("lobby", &h.alice, "after the trickle").await;
    assert_eq!(status, 202);
    assert_eq!(h.next_delivered().await.text, "after the trickle");
    h.nothing_delivered();
    h.stop().await;
}

#[tokio::test]
async fn a_user_may_hold_only_a_few_event_streams_and_the_newest_is_refused() {
    let h =
        Harness::start_limited(config(loopback(), 10, false), tight(60_000, 60_000, 32, 8)).await;
    let mut first = h.events("lobby").await;
    first.expect("typing").await;
    let mut second = h.events("other").await;
    second.expect("typing").await;
    let refused = h
        .get_with_query_token("/api/rooms/lobby/events", &h.alice)
        .await;
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(
        refused.json::<Value>().await.unwrap(),
        json!({"error": server::err_too_many_streams(2)})
    );
    // The open ones are untouched, and another user has streams of their own.
    h.connector
        .post(&lobby(), "to the open streams")
        .await
        .unwrap();
    assert_eq!(first.expect("message").await["text"], "to the open streams");
    let bob = h
        .get_with_query_token("/api/rooms/lobby/events", BOB_TOKEN)
        .await;
    assert_eq!(bob.status().as_u16(), 200);
    // A closed stream gives its slot back (noticed at the latest when a write to it fails).
    drop(second);
    within("a stream slot to be given back", async {
        loop {
            h.connector
                .post(&ReplyTarget::room("other"), "ping")
                .await
                .unwrap();
            let resp = h
                .get_with_query_token("/api/rooms/lobby/events", &h.alice)
                .await;
            if resp.status().as_u16() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    h.stop().await;
}

/// A thread over the API: a post names its root (refused unless it is a top-level message the
/// room holds), the bot answers and types in the thread, history and events carry `thread`,
/// `thread_history` reads it back (without the bot's replies, with the bot's root), and a
/// restart keeps it.
#[tokio::test]
async fn threads_take_replies_stream_them_and_are_read_back() {
    let mut h = Harness::start(config(loopback(), 20, false), &[]).await;
    let (_, body) = h.post("lobby", &h.alice, "@bot where is the log?").await;
    let root = body["id"].as_str().unwrap().to_string();
    assert_eq!(h.next_delivered().await.thread, None);
    let in_thread = |text: &str, thread: Value| {
        serde_json::to_vec(&json!({ "text": text, "thread": thread })).unwrap()
    };
    let (status, body) = h
        .post_raw(
            "lobby",
            Some(BOB_TOKEN),
            in_thread("it is in target/", json!(root)),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let reply = body["id"].as_str().unwrap().to_string();
    let m = h.next_delivered().await;
    assert_eq!(
        (m.id.as_str(), m.thread.as_deref()),
        (reply.as_str(), Some(root.as_str()))
    );
    assert_eq!(m.sender.id, "bob");

    // Wrong threads are refused before anything is recorded or delivered.
    let bad = json!({"error": "invalid \"thread\": expected the id of the thread's root message (a string of digits)"});
    let cases: Vec<(&str, Value, Value)> = vec![
        ("lobby", json!(42), bad.clone()),
        ("lobby", json!("abc"), bad.clone()),
        (
            "lobby",
            json!("999"),
            json!({"error": "thread 999 is not a message of room lobby (or no longer in its history)"}),
        ),
        (
            "lobby",
            json!(reply),
            json!({"error": format!("message {reply} is a reply in thread {root}: post to thread {root} instead")}),
        ),
        (
            "dev",
            json!(root),
            json!({"error": format!("thread {root} is not a message of room dev (or no longer in its history)")}),
        ),
    ];
    for (room, thread, expected) in cases {
        assert_eq!(
            h.post_raw(room, Some(&h.alice), in_thread("x", thread.clone()))
                .await,
            (400, expected),
            "{room} {thread}"
        );
    }
    let upload = h
        .http
        .post(h.url("/api/rooms/lobby/files?name=a.txt&thread=999"))
        .bearer_auth(&h.alice)
        .body("content")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 400);
    h.nothing_delivered();
    assert_eq!(h.messages("lobby").await.len(), 2);

    // The bot answers in the thread; its typing is the thread's.
    let mut sse = h.events("lobby").await;
    assert_eq!(sse.expect("typing").await, json!({"typing": false}));
    let to = ReplyTarget {
        thread: Some(root.clone()),
        ..lobby()
    };
    let c = h.connector.clone();
    c.typing(&to, true).await.unwrap();
    let posted = c.post(&to, "Found it").await.unwrap();
    assert_eq!(
        sse.expect("typing").await,
        json!({"typing": true, "thread": root})
    );
    let m = sse.expect("message").await;
    assert_eq!(
        (&m["id"], &m["thread"], &m["done"]),
        (&json!(posted.id), &json!(root), &json!(false))
    );
    // A page that connects now learns the thread's typing too.
    let mut late = h.events("lobby").await;
    assert_eq!(late.expect("typing").await, json!({"typing": false}));
    assert_eq!(
        late.expect("typing").await,
        json!({"typing": true, "thread": root})
    );
    c.typing(&to, false).await.unwrap();
    let e = sse.expect("edit").await;
    assert_eq!((&e["thread"], &e["done"]), (&json!(root), &json!(true)));
    assert_eq!(
        sse.expect("typing").await,
        json!({"typing": false, "thread": root})
    );
    let bogus = ReplyTarget {
        thread: Some("not-an-id".into()),
        ..lobby()
    };
    assert!(c.post(&bogus, "lost").await.is_err());

    let listed = h.messages("lobby").await;
    let threads: Vec<&Value> = listed.iter().map(|m| &m["thread"]).collect();
    assert_eq!(threads, [&Value::Null, &json!(root), &json!(root)]);
    assert!(listed[0].get("thread").is_none(), "absent at the top level");

    // Read back for the agent: the root and the people's replies, authors as senders.
    let read = c.thread_history("lobby", &root, 50).await.unwrap();
    let seen: Vec<(&str, &str, &str, bool)> = read
        .iter()
        .map(|m| (m.id.as_str(), m.sender.id.as_str(), m.text.as_str(), m.own))
        .collect();
    assert_eq!(
        seen,
        [
            (root.as_str(), "alice", "where is the log?", false),
            (reply.as_str(), "bob", "it is in target/", false),
        ]
    );
    assert_eq!(read[1].sender.username, "bob");
    // A limit keeps the root first (what the thread is about), then the newest replies.
    let latest = c.thread_history("lobby", &root, 1).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].id, root);
    // A thread people start on the bot's own message has it as its root, marked own.
    let notice = c
        .post(&lobby(), "Nightly report: 3 failures")
        .await
        .unwrap();
    let (status, _) = h
        .post_raw(
            "lobby",
            Some(&h.alice),
            in_thread("which ones?", json!(notice.id)),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        h.next_delivered().await.thread.as_deref(),
        Some(notice.id.as_str())
    );
    let read = c.thread_history("lobby", &notice.id, 50).await.unwrap();
    let seen: Vec<(&str, &str, bool)> = read
        .iter()
        .map(|m| (m.sender.id.as_str(), m.text.as_str(), m.own))
        .collect();
    assert_eq!(
        seen,
        [
            ("bot", "Nightly report: 3 failures", true),
            ("alice", "which ones?", false)
        ]
    );
    assert!(c.thread_history("lobby", "x", 50).await.is_err());

    // The journal keeps threads across a restart.
    let dir = h.stop_keeping_dir().await;
    let h = Harness::start_in(dir, config(loopback(), 20, false), &[]).await;
    let restored = h.messages("lobby").await;
    let threads: Vec<&Value> = restored.iter().map(|m| &m["thread"]).collect();
    assert_eq!(
        threads,
        [
            &Value::Null,
            &json!(root),
            &json!(root),
            &Value::Null,
            &json!(notice.id)
        ]
    );
    assert_eq!(
        h.connector
            .thread_history("lobby", &root, 50)
            .await
            .unwrap()
            .len(),
        2
    );
    h.stop().await;
}
