//! `type: acp` end to end: the real daemon, the web chat, the real Claude ACP adapter
//! (`@agentclientprotocol/claude-agent-acp`, pinned by scripts/install-test-deps.sh) and the
//! project's fake model API. Tool calls reach the gateway as `session/request_permission`;
//! every test checks what really ran on disk.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{free_port, EventStream, Gateway, WebClient};

/// The ACP adapter; under `CI=true` a missing one fails the test.
fn acp_bin() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".deps/node/node_modules/.bin/claude-agent-acp");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "claude-agent-acp is missing at {} (run scripts/install-test-deps.sh)",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: claude-agent-acp not found at {}; run scripts/install-test-deps.sh ***\n",
        path.display()
    );
    None
}

struct Setup {
    gateway: Gateway,
    llm: FakeLlm,
    alice: WebClient,
    bob: WebClient,
    _home: tempfile::TempDir,
}

/// Alice is an owner, Bob a guest; `rules` is YAML for the agent's allow-lists.
async fn setup(rules: &str, approval_timeout: u64) -> Option<Setup> {
    let bin = acp_bin()?;
    let llm = FakeLlm::start(json!({"scenarios": [], "default_text": "OK"})).await;
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        r#"
connectors:
  - name: local
    type: webchat
    listen: "127.0.0.1:{port}"
    allowed_users: {{owners: [alice], guests: [bob]}}
default_agent: assistant
agents:
  assistant:
    type: acp
    command: "{bin}"
    working_directory: "{{work}}"
    timeout: 120
    permissions: {{enabled: true, timeout: {approval_timeout}}}
    env: {env}
{rules}
watchers:
  - {{name: all, connector: local, room: "*", agent: assistant}}
shutdown_grace: 300
"#,
        bin = bin.display(),
        env = support::claude_env_yaml(&llm, home.path()),
    );
    let gateway = Gateway::start(&config);
    let alice = WebClient::new(port, &gateway.token_for("alice"));
    let bob = WebClient::new(port, &gateway.token_for("bob"));
    Some(Setup {
        gateway,
        llm,
        alice,
        bob,
        _home: home,
    })
}

/// The model runs `command` with Bash, then says `after`.
fn bash_script(marker: &str, command: &str) -> Value {
    json!({"scenarios": [{"match": marker, "turns": [
        {"text": "Running it.", "tool_calls": [{"name": "Bash", "input": {"command": command}}]},
        {"text": "after"}
    ]}], "default_text": "OK"})
}

/// Waits for the approval prompt and returns its id.
async fn prompt_id(events: &mut EventStream) -> String {
    let seen = events
        .until(Duration::from_secs(90), |e, d| {
            e == "message" && d["text"].as_str().is_some_and(|t| t.starts_with("🔐"))
        })
        .await;
    let text = seen.last().unwrap().1["text"].as_str().unwrap().to_string();
    assert!(text.contains("**Tool:** `Bash`"), "{text}");
    let re = regex::Regex::new(r"Reply `approve ([a-z0-9]{4})`").unwrap();
    re.captures(&text).unwrap_or_else(|| panic!("{text}"))[1].to_string()
}

/// The bot's reply `text`, finished (posted whole, or the last edit of a streamed one).
fn answered(text: &'static str) -> impl FnMut(&str, &Value) -> bool {
    move |e, d| (e == "message" || e == "edit") && d["text"] == text && d["done"] == true
}

fn audit(g: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(g.runtime.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const OWNER_TOUCH_LISTED: &str =
    r#"    owner_allowed_tools: [{tool: Bash, params: "touch listed\\.txt"}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_then_a_resumed_session_then_a_restart_that_keeps_it() {
    let Some(mut s) = setup("", 60).await else {
        return;
    };
    s.llm
        .set_script(json!({"scenarios": [{"match": "ACP-FIRST", "turns": [
        {"text": "first answer"}, {"text": "second answer"}, {"text": "third answer"}
    ]}], "default_text": "OK"}));
    let replies = s.alice.ask("r1", "ACP-FIRST hello").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, "first answer");

    let replies = s.alice.ask("r1", "and again").await;
    assert_eq!(replies.last().unwrap().text, "second answer");
    let last = s.llm.message_requests().last().unwrap().message_texts();
    assert!(
        last.iter().any(|t| t.contains("ACP-FIRST hello")),
        "{last:?}"
    );
    assert!(last.iter().any(|t| t.contains("first answer")), "{last:?}");

    // A new process after the restart loads the stored session.
    s.gateway.stop();
    s.gateway.start_again();
    let replies = s.alice.ask("r1", "after the restart").await;
    assert_eq!(replies.last().unwrap().text, "third answer", "{replies:?}");
    let last = s.llm.message_requests().last().unwrap().message_texts();
    assert!(
        last.iter().any(|t| t.contains("ACP-FIRST hello")),
        "{last:?}"
    );
    assert!(last.iter().any(|t| t.contains("and again")), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_allow_listed_call_runs_without_a_prompt() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(bash_script("ACP-LISTED", "touch listed.txt"));
    let replies = s.alice.ask("r1", "ACP-LISTED go").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, "after");
    assert!(s.gateway.work.join("listed.txt").exists());
    let last = audit(&s.gateway).pop().unwrap();
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["tool"], "Bash");
    assert_eq!(last["parameters"], json!(["touch listed.txt"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_call_waits_for_approve_and_a_denied_one_does_not_run() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(bash_script("ACP-APPROVE", "touch approved.txt"));
    let mut events = s.alice.events("r1").await;
    s.alice.post("r1", "ACP-APPROVE go").await;
    let id = prompt_id(&mut events).await;
    assert!(!s.gateway.work.join("approved.txt").exists());
    s.alice.post("r1", &format!("approve {id}")).await;
    events
        .until(Duration::from_secs(90), answered("after"))
        .await;
    assert!(s.gateway.work.join("approved.txt").exists());

    s.llm
        .set_script(bash_script("ACP-DENY", "touch denied.txt"));
    let mut events = s.alice.events("r2").await;
    s.alice.post("r2", "ACP-DENY go").await;
    let id = prompt_id(&mut events).await;
    s.alice.post("r2", &format!("deny {id}")).await;
    events
        .until(Duration::from_secs(90), answered("after"))
        .await;
    assert!(!s.gateway.work.join("denied.txt").exists());
    let last = audit(&s.gateway).pop().unwrap();
    assert_eq!(last["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_prompt_times_out_and_the_call_does_not_run() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 2).await else {
        return;
    };
    s.llm
        .set_script(bash_script("ACP-TIMEOUT", "touch late.txt"));
    let mut events = s.alice.events("r1").await;
    s.alice.post("r1", "ACP-TIMEOUT go").await;
    let _ = prompt_id(&mut events).await;
    events
        .until(Duration::from_secs(90), answered("after"))
        .await;
    assert!(!s.gateway.work.join("late.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_call_is_denied_without_a_prompt_even_a_read_in_the_working_directory() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(bash_script("ACP-GUEST", "touch listed.txt"));
    let replies = s.bob.ask("r1", "ACP-GUEST go").await;
    assert_eq!(replies.last().unwrap().text, "after", "{replies:?}");
    assert!(!s.gateway.work.join("listed.txt").exists());
    assert!(
        replies.iter().all(|m| !m.text.starts_with("🔐")),
        "{replies:?}"
    );

    // Claude Code lets Read run unasked inside the working directory; the gateway's ask rules
    // make the adapter ask, and a guest without a Read rule is refused.
    std::fs::write(s.gateway.work.join("secret.txt"), "ACP-SECRET-CONTENT").unwrap();
    let file = s.gateway.work.join("secret.txt").display().to_string();
    s.llm
        .set_script(json!({"scenarios": [{"match": "ACP-READ", "turns": [
        {"text": "Reading.", "tool_calls": [{"name": "Read", "input": {"file_path": file}}]},
        {"text": "read done"}
    ]}], "default_text": "OK"}));
    let replies = s.bob.ask("r2", "ACP-READ go").await;
    assert_eq!(replies.last().unwrap().text, "read done", "{replies:?}");
    let results: String = s.llm.message_requests().last().unwrap().body.to_string();
    assert!(
        !results.contains("ACP-SECRET-CONTENT"),
        "the guest's Read ran"
    );
    let last = audit(&s.gateway).pop().unwrap();
    assert_eq!(
        (last["tool"].as_str(), last["decision"].as_str()),
        (Some("Read"), Some("deny"))
    );
}
