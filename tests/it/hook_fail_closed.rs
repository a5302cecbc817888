//! Fail-closed edges of the approval hook: calls the broker cannot bind (no secret, a wrong
//! secret), malformed or oversized bodies and unknown endpoints are denied; and a real Claude
//! Code run whose hook server is gone denies the tool instead of running it.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::agent::claude::{hook, ClaudeBackend};
use agent_chat_gateway::agent::gate::GateTicket;
use agent_chat_gateway::agent::{AgentBackend, TurnContext};
use agent_chat_gateway::approval::{audit::AuditLog, Approvals};
use agent_chat_gateway::config::{AgentConfig, PermissionsConfig};
use agent_chat_gateway::model::{Role, RoomKey, TurnRequest};
use agent_chat_gateway::policy::RuleSet;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn hook_server() -> (String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = hook::bind().unwrap();
    let approvals = Approvals::new(
        dir.path().to_path_buf(),
        &[],
        AuditLog::open(&dir.path().join("audit.jsonl")),
        TaskTracker::new(),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(hook::serve(
        listener,
        approvals,
        TaskTracker::new(),
        cancel.clone(),
    ));
    (format!("http://{addr}"), cancel, dir)
}

async fn post(url: &str, secret: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        req = req.header(hook::SECRET_HEADER, s);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn deny(reason: &str) -> Value {
    json!({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny", "permissionDecisionReason": reason}})
}

const CALL: &str = r#"{"session_id":"s","cwd":"/tmp","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"ls"}}"#;

#[tokio::test]
async fn unbindable_malformed_and_oversized_calls_are_denied() {
    let (base, cancel, dir) = hook_server().await;
    let hook = format!("{base}/hook");
    let unbound = deny("blocked: this tool call cannot be bound to a live gateway turn");
    assert_eq!(post(&hook, None, CALL.into()).await, (200, unbound.clone()));
    assert_eq!(
        post(&hook, Some("not-a-live-secret"), CALL.into()).await,
        (200, unbound)
    );
    assert_eq!(
        post(&hook, Some("x"), b"{not json".to_vec()).await,
        (
            200,
            deny("blocked: malformed hook body — tool denied as a safe default")
        )
    );
    let huge = vec![b' '; hook::MAX_BODY + 1];
    assert_eq!(
        post(&hook, Some("x"), huge).await,
        (413, deny("blocked: hook body too large"))
    );
    assert_eq!(
        post(&format!("{base}/other"), None, CALL.into()).await,
        (404, deny("blocked: unknown hook endpoint"))
    );
    // Unbound calls are audited too, saying why they could not be bound.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{audit}");
    assert_eq!(
        (records[0]["secret"].as_str(), records[1]["secret"].as_str()),
        (Some("missing"), Some("unknown"))
    );
    assert_eq!(records[0]["parameters"], json!([r#"{"command":"ls"}"#]));
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hook_server_means_the_tool_is_denied() {
    let Some(claude) = support::claude_bin() else {
        return;
    };
    let llm = support::fake_llm::FakeLlm::start(json!({"scenarios": [{"match": "HOOK-DOWN", "turns": [
        {"text": "Trying.", "tool_calls": [{"name": "Bash", "input": {"command": "touch ran.txt"}}]},
        {"text": "after"}
    ]}]}))
    .await;
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut env = llm.claude_env();
    env.push(("HOME".into(), home.path().display().to_string()));
    let config = AgentConfig {
        name: "a".into(),
        kind: "claude".into(),
        settings: Default::default(),
        command: claude.display().to_string(),
        args: vec![],
        working_directory: work.path().to_path_buf(),
        timeout: Duration::from_secs(120),
        permissions: PermissionsConfig {
            enabled: true,
            timeout: Duration::from_secs(5),
            skip_owner_approval: false,
        },
        owner_rules: RuleSet::default(),
        guest_rules: RuleSet::default(),
        env,
        system_prompt: None,
        sandbox: Default::default(),
    };
    // A port nobody listens on: the hook server "stopped".
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let backend = Arc::new(
        ClaudeBackend::new(&config, scratch.path().to_path_buf())
            .with_hook_url(format!("http://{dead}/hook")),
    );
    let (events, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let outcome = backend
        .run_turn(
            TurnRequest {
                room: RoomKey::new("t", "r"),
                session: None,
                prompt: "HOOK-DOWN go".into(),
                role: Role::Owner,
            },
            TurnContext {
                events,
                cancel: CancellationToken::new(),
                gate: Some(GateTicket {
                    secret: "s".into(),
                    timeout: Duration::from_secs(15),
                }),
            },
        )
        .await
        .unwrap();
    assert!(
        !work.path().join("ran.txt").exists(),
        "the tool ran without the gateway"
    );
    assert_eq!(outcome.denied_tools, vec!["Bash".to_string()]);
}
