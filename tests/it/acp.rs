//! `type: acp` end to end: the real daemon, the web chat, the real Claude ACP adapter
//! (`@agentclientprotocol/claude-agent-acp`, pinned by scripts/install-test-deps.sh) and the
//! project's fake model API. Tool calls reach the gateway as `session/request_permission`;
//! every test checks what really ran on disk.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{claude_env_yaml, Gateway, WebchatGateway};
use crate::support::fake_llm::{bash_scenario, FakeLlm};
use crate::support::ports::free_port;
use crate::support::webclient::{EventStream, WebClient, WebMessage};
use crate::support::{deps, fake_agent};

/// The real ACP adapter on the fake model, in a daemon on the shared web chat config.
struct Setup {
    gateway: Gateway,
    llm: FakeLlm,
    alice: WebClient,
    bob: WebClient,
    _home: tempfile::TempDir,
}

/// Alice is an owner, Bob a guest; `rules` is YAML for the agent's allow-lists.
async fn setup(rules: &str, approval_timeout: u64) -> Option<Setup> {
    let bin = deps::claude_agent_acp()?;
    let llm = FakeLlm::start(json!({"scenarios": [], "default_text": "OK"})).await;
    let home = tempfile::tempdir().unwrap();
    let agents = format!(
        r#"default_agent: assistant
agents:
  assistant:
    type: acp
    command: "{bin}"
    working_directory: "{{work}}"
    timeout: 120
    permissions: {{enabled: true, timeout: {approval_timeout}}}
    env: {env}
{rules}"#,
        bin = bin.display(),
        env = claude_env_yaml(&llm, home.path()),
    );
    let web = WebchatGateway::start(&agents, "shutdown_grace: 300");
    Some(Setup {
        gateway: web.gateway,
        llm,
        alice: web.alice,
        bob: web.bob,
        _home: home,
    })
}

/// The model runs `command` with Bash, then says `after`.
fn bash_script(marker: &str, command: &str) -> Value {
    json!({"scenarios": [bash_scenario(marker, "Running it.", command, "after")], "default_text": "OK"})
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
    // The history the model got first: a turn missing from it is another failure than a
    // replayed one posted as the reply.
    let last = s.llm.message_requests().last().unwrap().message_texts();
    assert!(
        last.iter().any(|t| t.contains("ACP-FIRST hello")),
        "{last:?}"
    );
    assert!(
        last.iter().any(|t| t.contains("and again")),
        "the second turn is not in the loaded session: {last:?}"
    );
    assert_eq!(replies.last().unwrap().text, "third answer", "{replies:?}");
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
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["tool"], "Bash");
    assert_eq!(last["parameters"], json!(["touch listed.txt"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A write outside the working directory, allowed by the owner's rules, is stopped by the
/// agent's confinement.
async fn a_write_outside_the_working_directory_does_not_happen() {
    let Some(s) = setup("    owner_allowed_tools: [{tool: Write}]", 60).await else {
        return;
    };
    let outside = s.gateway.dir.path().join("outside.txt");
    s.llm
        .set_script(json!({"scenarios": [{"match": "ACP-OUTSIDE", "turns": [
        {"text": "Writing.", "tool_calls": [{"name": "Write",
            "input": {"file_path": outside, "content": "escaped"}}]},
        {"text": "after"}]}], "default_text": "OK"}));
    let replies = s.alice.ask("r1", "ACP-OUTSIDE go").await;
    assert_eq!(replies.last().unwrap().text, "after", "{replies:?}");
    // The gate lets it through (the owner's rule allows `Write`), the adapter writes with
    // Claude's own tool (it sends no `fs/write_text_file`), and the confinement refuses it.
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (&last["tool"], &last["decision"]),
        (&json!("Write"), &json!("allow"))
    );
    let seen = s.llm.conversation("ACP-OUTSIDE");
    assert!(seen.contains("EACCES: permission denied"), "{seen}");
    assert!(!outside.exists(), "the write outside ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_api_error_reaches_the_room_in_plain_words() {
    let Some(s) = setup("", 60).await else {
        return;
    };
    // A 400 (Claude Code retries a 401 or 529 with backoff for minutes: a turn timeout).
    s.llm.set_script(json!({"scenarios": [{"match": "ACP-BAD", "error": {"status": 400,
        "type": "invalid_request_error", "message": "refused by the fake"}}], "default_text": "OK"}));
    let bad = s.alice.ask("r1", "ACP-BAD go").await;
    let text = &bad.last().unwrap().text;
    assert!(
        text.starts_with("❌ The model API returned an error (400). Please try again."),
        "{bad:?}"
    );
    // The gateway keeps working (in another room: the fake model picks the answer by the
    // conversation's first message, and r1's session keeps the failed one).
    assert_eq!(s.alice.ask("r2", "hello").await.last().unwrap().text, "OK");
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
    let last = s.gateway.audit().pop().unwrap();
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
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (last["tool"].as_str(), last["decision"].as_str()),
        (Some("Read"), Some("deny"))
    );
}

// ---------------------------------------------------------------------------------------------
// The host side against a scripted ACP agent (`acg-fake-agent acp`)
// ---------------------------------------------------------------------------------------------

/// The scripted ACP agent in a daemon on the shared web chat config (Alice owns, Bob is a
/// guest); `agent_extra` is YAML added to the agent section.
fn fake(agent_extra: &str) -> WebchatGateway {
    let agents = format!(
        r#"default_agent: assistant
agents:
  assistant:
    type: acp
    command: "{bin}"
    args: [acp]
    working_directory: "{{work}}"
    timeout: 20
    permissions: {{enabled: true, timeout: 10}}
{agent_extra}"#,
        bin = fake_agent::path(),
    );
    WebchatGateway::start(&agents, "shutdown_grace: 300")
}

/// `(answer, pid, session)` of the fake's last reply in `replies`.
fn parse_answer(replies: &[WebMessage]) -> (String, String, String) {
    let text = &replies.last().expect("a reply").text;
    let re = regex::Regex::new(r"^(?s)(.*) \[pid (\d+) session (\S+)\]$").unwrap();
    let c = re.captures(text).unwrap_or_else(|| panic!("{text}"));
    (c[1].to_string(), c[2].to_string(), c[3].to_string())
}

const OWNER_WRITES: &str =
    "    owner_allowed_tools: [{tool: Write}, {tool: Read}, {tool: Bash, params: \"echo ok\"}]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_the_room_and_a_crash_is_followed_by_session_load() {
    let f = fake("");
    let (answer, pid, session) = parse_answer(&f.alice.ask("r1", "hello").await);
    assert_eq!(answer, "echo: hello");
    let (_, pid2, session2) = parse_answer(&f.alice.ask("r1", "again").await);
    assert_eq!(
        (&pid2, &session2),
        (&pid, &session),
        "a second turn reuses process and session"
    );
    // Another room has its own process.
    let (_, other_pid, other_session) = parse_answer(&f.alice.ask("r2", "hi").await);
    assert_ne!(other_pid, pid);
    assert_ne!(other_session, session);

    let crashed = f.alice.ask("r1", "ACP:crash").await;
    assert!(
        crashed
            .last()
            .unwrap()
            .text
            .contains("The agent stopped unexpectedly (exit code 3)"),
        "{crashed:?}"
    );
    let (answer, pid3, session3) = parse_answer(&f.alice.ask("r1", "after the crash").await);
    assert_eq!(answer, "echo: after the crash");
    assert_ne!(pid3, pid, "a new process");
    assert_eq!(
        session3, session,
        "the room's session was loaded, not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_agent_cannot_load_is_reported_and_the_next_message_starts_afresh() {
    let f = fake("");
    let (_, pid, session) = parse_answer(&f.alice.ask("r1", "hello").await);
    let crashed = f.alice.ask("r1", "ACP:amnesia").await;
    assert!(
        crashed.last().unwrap().text.contains("exit code 3"),
        "{crashed:?}"
    );
    // The new process cannot load the room's session: the room is told, nothing is lost
    // silently, and the session id is dropped.
    let lost = f.alice.ask("r1", "are you there").await;
    assert!(
        lost.last()
            .unwrap()
            .text
            .contains("The previous agent session could not be resumed"),
        "{lost:?}"
    );
    let (answer, pid2, session2) = parse_answer(&f.alice.ask("r1", "a fresh start").await);
    assert_eq!(answer, "echo: a fresh start");
    assert_ne!(pid2, pid);
    assert_ne!(session2, session, "a new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_callbacks_stay_in_the_working_directory_and_follow_the_rules() {
    let f = fake(OWNER_WRITES);
    let outside = f.gateway.dir.path().join("outside.txt");
    let (answer, ..) = parse_answer(
        &f.alice
            .ask("r1", &format!("ACP:write={}", outside.display()))
            .await,
    );
    assert!(
        answer.starts_with("write refused:") && answer.contains("outside the working directory"),
        "{answer}"
    );
    assert!(!outside.exists());
    let escape = f.gateway.work.join("../escape.txt");
    let (answer, ..) = parse_answer(
        &f.alice
            .ask("r1", &format!("ACP:write={}", escape.display()))
            .await,
    );
    assert!(answer.starts_with("write refused:"), "{answer}");
    assert!(!f.gateway.dir.path().join("escape.txt").exists());

    let inside = f.gateway.work.join("inside.txt");
    let (answer, ..) = parse_answer(
        &f.alice
            .ask("r1", &format!("ACP:write={}", inside.display()))
            .await,
    );
    assert_eq!(answer, "write ok");
    assert_eq!(
        std::fs::read_to_string(&inside).unwrap(),
        "written by the agent"
    );
    let (answer, ..) = parse_answer(
        &f.alice
            .ask("r1", &format!("ACP:read={}", inside.display()))
            .await,
    );
    assert_eq!(answer, "read: written by the agent");
    let (answer, ..) = parse_answer(&f.alice.ask("r1", "ACP:read=/etc/hostname").await);
    assert!(answer.starts_with("read refused:"), "{answer}");

    // A guest has no Write rule: refused without a prompt, nothing written.
    let guest_file = f.gateway.work.join("guest.txt");
    let replies = f
        .bob
        .ask("r2", &format!("ACP:write={}", guest_file.display()))
        .await;
    let (answer, ..) = parse_answer(&replies);
    assert!(
        answer.starts_with("write refused: denied by the gateway"),
        "{answer}"
    );
    assert!(!guest_file.exists());
    assert!(
        replies.iter().all(|m| !m.text.starts_with("🔐")),
        "{replies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_call_is_answered_allow_once_never_allow_always() {
    let f = fake(OWNER_WRITES);
    let (answer, ..) = parse_answer(&f.alice.ask("r1", "ACP:permit=echo+ok").await);
    assert_eq!(answer, "chose once");
    let (answer, ..) = parse_answer(&f.bob.ask("r2", "ACP:permit=echo+ok").await);
    assert_eq!(answer, "chose no", "a guest without the rule is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_turn_and_an_agent_that_ignores_it_is_replaced() {
    let f = fake("");
    let (_, pid, session) = parse_answer(&f.alice.ask("r1", "start").await);
    // Timeout 20 s: the agent honours session/cancel; the process stays.
    let replies = f.alice.ask("r1", "ACP:hang").await;
    assert!(
        replies
            .last()
            .unwrap()
            .text
            .contains("did not finish within 20 s"),
        "{replies:?}"
    );
    let (_, pid2, session2) = parse_answer(&f.alice.ask("r1", "next").await);
    assert_eq!((&pid2, &session2), (&pid, &session));

    let replies = f.alice.ask("r1", "ACP:deaf").await;
    assert!(
        replies
            .last()
            .unwrap()
            .text
            .contains("did not finish within 20 s"),
        "{replies:?}"
    );
    let (_, pid3, session3) = parse_answer(&f.alice.ask("r1", "after").await);
    assert_ne!(pid3, pid, "the deaf agent was killed");
    assert_eq!(session3, session);
}

/// An agent that writes part of the replayed history after its `session/load` answer (Gemini
/// CLI does): the `session/set_mode` sent after the load is answered behind it, so none of it
/// reaches the room, whatever the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_written_after_the_load_answer_is_not_posted() {
    let f = fake("    env: {ACG_FAKE_ACP_MODE: default}");
    let (_, pid, session) = parse_answer(&f.alice.ask("r1", "hello").await);
    f.alice.ask("r1", "ACP:crash").await;
    for text in ["after the crash", "and once more"] {
        let replies = f.alice.ask("r1", text).await;
        assert_eq!(replies.len(), 1, "{replies:?}");
        let (answer, pid2, session2) = parse_answer(&replies);
        assert_eq!(answer, format!("echo: {text} (mode default)"));
        assert_ne!(pid2, pid);
        assert_eq!(session2, session);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_that_skip_asking_are_left_or_refused_and_unknown_requests_get_an_error() {
    let f = fake("    env: {ACG_FAKE_ACP_MODE: bypassPermissions}");
    // The session starts in bypassPermissions; the gateway switches it to default first.
    let (answer, pid, _) = parse_answer(&f.alice.ask("r1", "hello").await);
    assert_eq!(answer, "echo: hello (mode default)");

    let (answer, ..) = parse_answer(&f.alice.ask("r1", "ACP:unknown").await);
    assert_eq!(answer, "unknown answered -32601");

    // Switching to a mode that skips asking mid-turn ends the turn and the process.
    let replies = f.alice.ask("r1", "ACP:mode=bypassPermissions").await;
    assert!(
        replies.last().unwrap().text.starts_with("❌"),
        "{replies:?}"
    );
    let (_, pid2, _) = parse_answer(&f.alice.ask("r1", "again").await);
    assert_ne!(pid2, pid);
}

#[test]
fn doctor_names_the_acp_agent_from_its_handshake() {
    let port = free_port();
    let g = Gateway::prepare(&format!(
        r#"
connectors:
  - {{name: local, type: webchat, listen: "127.0.0.1:{port}", allowed_users: {{owners: [alice]}}}}
agents:
  a: {{type: acp, command: "{bin}", args: [acp], working_directory: "{{work}}", permissions: {{enabled: true}}}}
  b: {{type: acp, command: /bin/true, working_directory: "{{work}}", permissions: {{enabled: true}}}}
watchers:
  - {{name: w, connector: local, room: "*", agent: a}}
"#,
        bin = fake_agent::path()
    ));
    let (code, out, _) = g.cli_text(&["doctor"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ok   agent 'a' (acp): ")
            && out.contains("answers acg-fake-acp 0.0.0 (ACP) (tests pin claude-agent-acp 0.49.0"),
        "{out}"
    );
    assert!(
        out.contains("FAIL agent 'b' (acp): `initialize` failed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_budget_stops_the_least_recently_used_idle_agent_and_keeps_its_session() {
    let f = fake("    max_warm_agents: 1");
    let row = |room: &str| {
        let (_, out, _) = f.gateway.cli_text(&["list", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == room)
            .unwrap_or_else(|| panic!("{out}"))
            .clone()
    };
    let (_, pid1, session1) = parse_answer(&f.alice.ask("w1", "hello").await);
    let r = row("w1");
    assert_eq!(r["process"], "warm", "{r}");
    assert_eq!(r["agent_pid"].to_string(), pid1);
    assert!(r["rss_bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    let (_, pid2, _) = parse_answer(&f.alice.ask("w2", "hello").await);
    assert_eq!(row("w1")["process"], "cold");
    assert_eq!(row("w2")["agent_pid"].to_string(), pid2);
    // Room 1 comes back: a new process, the same session (loaded).
    let (_, pid3, session3) = parse_answer(&f.alice.ask("w1", "again").await);
    assert_ne!(pid3, pid1);
    assert_eq!(session3, session1);
    assert_eq!(row("w2")["process"], "cold");
}
