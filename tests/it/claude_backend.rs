//! The Claude Code backend against the real `claude` CLI (driven by the in-process fake
//! model API), against `acg-fake-agent` for faults the real CLI cannot be made to show, and
//! its stream parser against recorded NDJSON fixtures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_chat_gateway::agent::claude::{ClaudeBackend, StreamParser};
use agent_chat_gateway::agent::gate::GateTicket;
use agent_chat_gateway::agent::process::ExitInfo;
use agent_chat_gateway::agent::{AgentBackend, AgentError, TurnContext};
use agent_chat_gateway::config::AgentConfig;
use agent_chat_gateway::model::{AgentEvent, Role, RoomKey, TurnOutcome, TurnRequest};
use agent_chat_gateway::policy::{Rule, RuleSet};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::fake_llm::{self, bash_scenario, FakeLlm};
use crate::support::ports::free_port;
use crate::support::{agent_config, deps, fake_agent};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn fake_agent_bin() -> PathBuf {
    PathBuf::from(fake_agent::path())
}

fn rules(list: &[(&str, Option<&str>)]) -> RuleSet {
    RuleSet::new(
        list.iter()
            .map(|(t, p)| Rule::new(t, *p).unwrap())
            .collect(),
    )
}

/// Temp dirs for one test: the agent's HOME, its working directory and its scratch dir.
struct Dirs {
    home: TempDir,
    work: TempDir,
    scratch: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, command: &Path, env: Vec<(String, String)>) -> AgentConfig {
        let mut config = agent_config(&command.display().to_string(), self.work.path());
        config.env = env;
        config
            .env
            .push(("HOME".into(), self.home.path().display().to_string()));
        config
    }

    fn backend(&self, config: &AgentConfig) -> ClaudeBackend {
        ClaudeBackend::new(config, self.scratch.path().join("claude"))
    }
}

struct Run {
    result: Result<TurnOutcome, AgentError>,
    events: Vec<AgentEvent>,
}

async fn run_turn(
    backend: &ClaudeBackend,
    prompt: &str,
    session: Option<String>,
    role: Role,
    hook: Option<GateTicket>,
) -> Run {
    run_turn_with(
        backend,
        prompt,
        session,
        role,
        hook,
        CancellationToken::new(),
        |_| {},
    )
    .await
}

/// Runs a turn; `on_event` sees each event as it arrives (while the turn still runs).
async fn run_turn_with(
    backend: &ClaudeBackend,
    prompt: &str,
    session: Option<String>,
    role: Role,
    hook: Option<GateTicket>,
    cancel: CancellationToken,
    mut on_event: impl FnMut(&AgentEvent),
) -> Run {
    // Small on purpose: the backend must cope with a receiver that lags.
    let (tx, mut rx) = mpsc::channel(2);
    let turn = TurnRequest {
        room: RoomKey::new("test", "room"),
        session,
        prompt: prompt.to_string(),
        role,
        model: None,
        output_schema: None,
    };
    let ctx = TurnContext {
        events: tx,
        cancel,
        gate: hook,
    };
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            on_event(&e);
            events.push(e);
        }
        events
    };
    let (result, events) = tokio::join!(backend.run_turn(turn, ctx), collect);
    Run { result, events }
}

/// The real CLI on a fake model following `script`, with fresh dirs and the agent's config;
/// `None` when the CLI is missing.
async fn real_cli(script: Value) -> Option<(FakeLlm, Dirs, AgentConfig)> {
    let claude = deps::claude()?;
    let fake = FakeLlm::start(script).await;
    let dirs = Dirs::new();
    let config = dirs.config(&claude, fake.claude_env());
    Some((fake, dirs, config))
}

fn texts(events: &[AgentEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Real CLI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn real_cli_first_turn_creates_a_session_and_the_second_resumes_it() {
    let script = json!({"scenarios": [{"match": "ACG-RESUME", "turns": [
        {"text": "First answer: the sky is teal."},
        {"text": "Second answer: still teal."}]}], "default_text": "OUT OF SCRIPT"});
    let Some((fake, dirs, config)) = real_cli(script).await else {
        return;
    };
    let backend = dirs.backend(&config);

    let first = run_turn(
        &backend,
        "ACG-RESUME what colour is the sky?",
        None,
        Role::Owner,
        None,
    )
    .await;
    let first_out = first.result.expect("first turn");
    let session = first_out.session_id.clone().expect("session id");
    assert_eq!(first_out.text, "First answer: the sky is teal.");
    assert_eq!(
        first.events.first(),
        Some(&AgentEvent::SessionStarted {
            session_id: session.clone()
        })
    );
    assert_eq!(texts(&first.events), vec!["First answer: the sky is teal."]);
    let usage = first_out.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (100, 20));
    assert!(usage.cost_usd.unwrap_or(0.0) > 0.0);
    let requests = fake.message_requests();
    assert_eq!(requests.len(), 1);
    // The CLI talks to the fake with the dummy key from `claude_env`.
    assert_eq!(
        requests[0].headers.get("x-api-key").map(String::as_str),
        Some("test")
    );

    let second = run_turn(
        &backend,
        "and now?",
        Some(session.clone()),
        Role::Owner,
        None,
    )
    .await;
    let second_out = second.result.expect("second turn");
    assert_eq!(second_out.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(second_out.text, "Second answer: still teal.");
    let requests = fake.message_requests();
    assert_eq!(requests.len(), 2);
    let history = requests[1].body["messages"].as_array().unwrap().clone();
    assert!(
        history.iter().any(|m| m["role"] == "assistant"
            && fake_llm::text_of(&m["content"]).contains("the sky is teal")),
        "resumed request carries the first answer: {history:#?}"
    );
    assert!(requests[1]
        .message_texts()
        .iter()
        .any(|t| t.contains("and now?")));
}

#[tokio::test]
async fn real_cli_runs_a_listed_bash_command_and_denies_an_unlisted_one() {
    let script = json!({"scenarios": [
        bash_scenario("ACG-ALLOWED", "Creating it.", "touch allowed.txt", "Created."),
        bash_scenario("ACG-DENIED", "Creating it.", "touch denied.txt", "Could not."),
    ]});
    let Some((fake, dirs, mut config)) = real_cli(script).await else {
        return;
    };
    config.owner_rules = rules(&[("Bash", Some("touch allowed.*"))]);
    let backend = dirs.backend(&config);

    let allowed = run_turn(&backend, "ACG-ALLOWED please", None, Role::Owner, None).await;
    let out = allowed.result.expect("allowed turn");
    assert!(
        dirs.work.path().join("allowed.txt").exists(),
        "listed command ran"
    );
    assert!(out.denied_tools.is_empty(), "{:?}", out.denied_tools);
    assert_eq!(out.text, "Creating it.\nCreated.");
    let tool_id = allowed
        .events
        .iter()
        .find_map(|e| match e {
            AgentEvent::ToolStart { id, name, input } if name == "Bash" => {
                assert!(input.contains("touch allowed.txt"), "{input}");
                Some(id.clone())
            }
            _ => None,
        })
        .expect("tool start event");
    assert!(allowed.events.contains(&AgentEvent::ToolResult {
        id: tool_id,
        is_error: false
    }));

    let denied = run_turn(&backend, "ACG-DENIED please", None, Role::Owner, None).await;
    let out = denied.result.expect("denied turn still completes");
    assert!(
        !dirs.work.path().join("denied.txt").exists(),
        "unlisted command must not run"
    );
    assert_eq!(out.denied_tools, vec!["Bash".to_string()]);
    assert!(denied
        .events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolResult { is_error: true, .. })));

    // The owner's list does not apply to guests: with nothing listed they are offered no
    // tools at all (and the fake model, offered none, answers with text only).
    std::fs::remove_file(dirs.work.path().join("allowed.txt")).unwrap();
    let guest = run_turn(&backend, "ACG-ALLOWED please", None, Role::Guest, None).await;
    assert_eq!(guest.result.expect("guest turn").text, "Creating it.");
    assert!(!guest
        .events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolStart { .. })));
    let offered = fake.message_requests().last().unwrap().body["tools"].clone();
    assert!(offered.as_array().is_none_or(|t| t.is_empty()), "{offered}");
    assert!(
        !dirs.work.path().join("allowed.txt").exists(),
        "guest may not run it"
    );
}

#[tokio::test]
async fn real_cli_read_is_offered_only_to_roles_that_list_it() {
    let Some(claude) = deps::claude() else {
        return;
    };
    let dirs = Dirs::new();
    let secret = dirs.work.path().join("notes.txt");
    std::fs::write(&secret, "TOPSECRET-4711\n").unwrap();
    let fake = FakeLlm::start(json!({"scenarios": [{"match": "ACG-READ", "turns": [
        {"text": "Reading.", "tool_calls": [{"name": "Read", "input": {"file_path": secret}}]},
        {"text": "Read it."}]}]}))
    .await;
    let mut config = dirs.config(&claude, fake.claude_env());
    config.owner_rules = rules(&[("Read", None)]);
    config.guest_rules = rules(&[("Bash", Some("ls.*"))]);
    let backend = dirs.backend(&config);
    let leaked = |fake: &FakeLlm| {
        fake.message_requests()
            .iter()
            .any(|r| r.body.to_string().contains("TOPSECRET-4711"))
    };

    // dontAsk alone would let a guest read a file in the working directory.
    let guest = run_turn(&backend, "ACG-READ please", None, Role::Guest, None).await;
    guest.result.expect("guest turn completes");
    assert!(
        !leaked(&fake),
        "a guest without Read must not read the file"
    );
    let offered: Vec<String> = fake.message_requests()[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, vec!["Bash"]);

    let owner = run_turn(&backend, "ACG-READ please", None, Role::Owner, None).await;
    owner.result.expect("owner turn completes");
    assert!(leaked(&fake), "an owner with Read listed reads the file");
}

#[tokio::test]
async fn real_cli_model_400_is_an_api_error() {
    let script = json!({"scenarios": [{"match": "ACG-400", "error": {"status": 400,
        "body": {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is malformed"}}}}]});
    let Some((_fake, dirs, config)) = real_cli(script).await else {
        return;
    };
    let backend = dirs.backend(&config);
    let run = run_turn(&backend, "ACG-400 hello", None, Role::Owner, None).await;
    match run.result {
        Err(AgentError::Api { status, message }) => {
            assert_eq!(status, Some(400));
            assert!(message.contains("prompt is malformed"), "{message}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(
        texts(&run.events).is_empty(),
        "synthetic error text is not an answer"
    );
}

#[tokio::test]
async fn real_cli_resume_of_an_unknown_session_is_session_not_found() {
    let script = json!({"default_text": "unused"});
    let Some((fake, dirs, config)) = real_cli(script).await else {
        return;
    };
    let backend = dirs.backend(&config);
    let unknown = "6f1c1f55-9d7e-4a53-9a3c-2f6f0e2d1c11".to_string();
    let run = run_turn(&backend, "hello", Some(unknown.clone()), Role::Owner, None).await;
    match run.result {
        Err(AgentError::SessionNotFound(id)) => assert_eq!(id, unknown),
        other => panic!("expected SessionNotFound, got {other:?}"),
    }
    assert!(fake.message_requests().is_empty());
}

/// Each hook call: the secret header it carried and its JSON body.
type HookCalls = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, serde_json::Value)>>>;

/// A minimal PreToolUse hook server: allows Bash commands containing `hook-allowed`, denies
/// everything else, and records each call's secret header and body.
struct HookServer {
    url: String,
    calls: HookCalls,
    stop: CancellationToken,
}

impl HookServer {
    async fn start() -> HookServer {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (calls2, stop2) = (calls.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let calls = calls2.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let calls = calls.clone();
                    async move {
                        let secret = req
                            .headers()
                            .get("x-acg-secret")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let allow = body["tool_input"]["command"]
                            .as_str()
                            .is_some_and(|c| c.contains("hook-allowed"));
                        calls.lock().unwrap().push((secret, body));
                        let decision = if allow { "allow" } else { "deny" };
                        let reply = json!({"hookSpecificOutput": {"hookEventName": "PreToolUse",
                            "permissionDecision": decision, "permissionDecisionReason": format!("test hook says {decision}")}});
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(reply.to_string()),
                        )))
                    }
                });
                let stop = stop2.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        HookServer { url, calls, stop }
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn real_cli_tool_calls_go_through_the_http_hook_with_the_run_secret() {
    let script = json!({"scenarios": [
        bash_scenario("ACG-HOOK-OK", "Trying.", "touch hook-allowed.txt", "Tried."),
        bash_scenario("ACG-HOOK-NO", "Trying.", "touch hook-denied.txt", "Tried."),
    ]});
    let Some((fake, dirs, mut config)) = real_cli(script).await else {
        return;
    };
    let hook_server = HookServer::start().await;
    // The static allow-list must play no part when a hook decides.
    config.owner_rules = rules(&[("Bash", Some("touch hook-denied.*"))]);
    let backend = dirs.backend(&config).with_hook_url(hook_server.url.clone());
    let hook = GateTicket {
        secret: "per-run-secret-1".into(),
        timeout: Duration::from_secs(30),
    };

    let ok = run_turn(
        &backend,
        "ACG-HOOK-OK go",
        None,
        Role::Owner,
        Some(hook.clone()),
    )
    .await;
    assert!(ok.result.expect("turn").denied_tools.is_empty());
    assert!(
        dirs.work.path().join("hook-allowed.txt").exists(),
        "hook allowed it"
    );

    let no = run_turn(&backend, "ACG-HOOK-NO go", None, Role::Owner, Some(hook)).await;
    assert_eq!(
        no.result.expect("turn").denied_tools,
        vec!["Bash".to_string()]
    );
    assert!(
        !dirs.work.path().join("hook-denied.txt").exists(),
        "hook denied it"
    );

    let calls = hook_server.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (secret, body) in &calls {
        assert_eq!(secret.as_deref(), Some("per-run-secret-1"));
        assert_eq!(body["hook_event_name"], "PreToolUse");
        assert_eq!(body["tool_name"], "Bash");
    }
    let denied_reply = fake
        .message_requests()
        .iter()
        .flat_map(|r| r.message_texts())
        .any(|t| t.contains("test hook says deny"));
    assert!(denied_reply, "the model saw the hook's reason");
    let leftovers: Vec<_> = std::fs::read_dir(dirs.scratch.path().join("claude"))
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "settings files are removed: {leftovers:?}"
    );
}

#[tokio::test]
async fn real_cli_unreachable_hook_denies_the_tool() {
    let script = json!({"scenarios": [bash_scenario(
        "ACG-HOOK-DOWN",
        "Trying.",
        "touch hook-allowed.txt",
        "Tried."
    )]});
    let Some((_fake, dirs, mut config)) = real_cli(script).await else {
        return;
    };
    // A free port outside the ephemeral range: nothing listens there, and no other test's
    // server can land on it.
    let port = free_port();
    config.owner_rules = rules(&[("Bash", None)]);
    let backend = dirs
        .backend(&config)
        .with_hook_url(format!("http://127.0.0.1:{port}/hook"));
    let hook = GateTicket {
        secret: "s".into(),
        timeout: Duration::from_secs(5),
    };
    let run = run_turn(&backend, "ACG-HOOK-DOWN go", None, Role::Owner, Some(hook)).await;
    assert_eq!(
        run.result.expect("turn").denied_tools,
        vec!["Bash".to_string()]
    );
    assert!(
        !dirs.work.path().join("hook-allowed.txt").exists(),
        "fail closed"
    );
}

#[tokio::test]
async fn real_cli_timeout_kills_the_cli() {
    // Every SSE event waits 1 s: the model call outlives the turn's 2 s budget.
    let script = json!({"delay_ms": 1000, "turns": [{"text": "too late"}]});
    let Some((_fake, dirs, mut config)) = real_cli(script).await else {
        return;
    };
    config.timeout = Duration::from_secs(2);
    let backend = dirs.backend(&config);
    let run = run_turn(&backend, "slow please", None, Role::Owner, None).await;
    assert!(
        matches!(run.result, Err(AgentError::Timeout(_))),
        "{:?}",
        run.result
    );
    // The CLI was reaped before run_turn returned and its process group was sent SIGKILL;
    // children the kernel is still tearing down may linger for a moment, nothing more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_in(dirs.work.path());
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running in the agent's directory: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches a FIFO from a plain thread (opening it blocks until a writer appears): reports
/// the first line, then end-of-file, i.e. the moment every writer has closed it.
fn watch_fifo(
    path: PathBuf,
) -> (
    tokio::sync::oneshot::Receiver<String>,
    tokio::sync::oneshot::Receiver<()>,
) {
    use std::io::{BufRead, Read};
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let _ = first_tx.send(line);
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let _ = eof_tx.send(());
    });
    (first_rx, eof_rx)
}

#[tokio::test]
async fn real_cli_cancel_during_a_tool_kills_the_tool_and_the_session_resumes() {
    let Some(claude) = deps::claude() else {
        return;
    };
    // The tool writes a line to a FIFO and then sleeps holding it open: end-of-file on the
    // FIFO proves the sleep is dead. The hook allows it (a redirect is refused by dontAsk
    // with a static allow-list).
    let fake = FakeLlm::start(json!({"scenarios": [{"match": "ACG-SLOW-TOOL", "turns": [
        {"text": "Waiting.", "tool_calls": [{"name": "Bash", "input": {
            "command": "(echo started; exec sleep 300) > hook-allowed.fifo", "description": "wait"}}]},
        {"text": "Resumed fine."}]}]}))
    .await;
    let hook_server = HookServer::start().await;
    let hook = GateTicket {
        secret: "s".into(),
        timeout: Duration::from_secs(30),
    };
    let dirs = Dirs::new();
    let fifo = dirs.work.path().join("hook-allowed.fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let (started, gone) = watch_fifo(fifo);
    let backend = dirs
        .backend(&dirs.config(&claude, fake.claude_env()))
        .with_hook_url(hook_server.url.clone());
    let cancel = CancellationToken::new();
    let (first, ()) = tokio::join!(
        run_turn_with(
            &backend,
            "ACG-SLOW-TOOL wait",
            None,
            Role::Owner,
            Some(hook.clone()),
            cancel.clone(),
            |_| {}
        ),
        async {
            let line = tokio::time::timeout(Duration::from_secs(60), started).await;
            assert_eq!(line.expect("the tool started").unwrap().trim(), "started");
            cancel.cancel();
        }
    );
    assert!(
        matches!(first.result, Err(AgentError::Cancelled)),
        "{:?}",
        first.result
    );
    // Claude Code runs Bash tool commands in their own session: a process-group kill alone
    // leaves `sleep 300` running.
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the tool's sleep outlived the turn")
        .unwrap();

    // The session announced before the kill resumes, and the new prompt reaches the model
    // (2.1.197 drops the dangling tool call instead of swallowing the turn).
    let session = first
        .events
        .iter()
        .find_map(|e| match e {
            AgentEvent::SessionStarted { session_id } => Some(session_id.clone()),
            _ => None,
        })
        .expect("session announced");
    let second = run_turn(
        &backend,
        "NEW-PROMPT after cancel",
        Some(session),
        Role::Owner,
        Some(hook),
    )
    .await;
    assert_eq!(second.result.expect("resumed turn").text, "Resumed fine.");
    let last = fake.message_requests().pop().unwrap();
    assert!(
        last.message_texts()
            .last()
            .is_some_and(|t| t.contains("NEW-PROMPT after cancel")),
        "{:?}",
        last.message_texts()
    );
}

/// Pids of live processes whose working directory is `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fake model API itself
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fake_llm_selects_turns_statelessly_and_logs_requests() {
    let fake = FakeLlm::start(json!({"scenarios": [
        {"match": "T-1", "turns": [
            {"text": "a", "tool_calls": [{"name": "Bash", "input": {"command": "ls"}}]},
            {"text": "b"}]},
        {"turns": [{"text": "catch-all"}]}],
        "default_text": "D"}))
    .await;
    let http = reqwest::Client::new();
    let ask = |messages: serde_json::Value, tools: bool| {
        let mut body = json!({"model": "m", "messages": messages, "stream": false});
        if tools {
            body["tools"] = json!([{"name": "Bash"}]);
        }
        http.post(format!("{}/v1/messages?beta=true", fake.url()))
            .json(&body)
            .send()
    };
    let user = |t: &str| json!({"role": "user", "content": [{"type": "text", "text": t}]});
    let assistant = json!({"role": "assistant", "content": "x"});
    let system = json!({"role": "system", "content": "mid-conversation"});

    let r: serde_json::Value = ask(json!([user("x T-1 y")]), true)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["content"][0]["text"], "a");
    assert_eq!(r["content"][1]["type"], "tool_use");
    assert_eq!(r["content"][1]["input"]["command"], "ls");
    assert_eq!(r["stop_reason"], "tool_use");
    // Mid-conversation system entries do not count as turns.
    let r: serde_json::Value = ask(
        json!([user("T-1"), system, assistant.clone(), user("more")]),
        true,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r["content"][0]["text"], "b");
    assert_eq!(r["stop_reason"], "end_turn");
    let r: serde_json::Value = ask(
        json!([
            user("T-1"),
            assistant.clone(),
            user("m"),
            assistant,
            user("n")
        ]),
        true,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r["content"][0]["text"], "D");
    // No tools offered: text only.
    let r: serde_json::Value = ask(json!([user("T-1")]), false)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["content"].as_array().unwrap().len(), 1);
    let r: serde_json::Value = ask(json!([user("other")]), true)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["content"][0]["text"], "catch-all");

    let log = fake.requests();
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|r| r.is_messages_call()));
    assert_eq!(log[0].path, "/v1/messages?beta=true");
    assert_eq!(
        log[1].message_texts(),
        vec!["T-1", "mid-conversation", "x", "more"]
    );

    // Other routes, with and without /v1.
    let n: serde_json::Value = http
        .post(format!("{}/messages/count_tokens", fake.url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(n["input_tokens"], 100);
    let m: serde_json::Value = http
        .get(format!("{}/v1/models", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!m["data"].as_array().unwrap().is_empty());
    let missing = http
        .get(format!("{}/v1/nothing", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn fake_llm_streams_sse_and_scripts_errors_and_can_be_rescripted() {
    let fake = FakeLlm::start(json!([{"text": "0123456789abcdefXYZ",
        "tool_calls": [{"name": "Bash", "input": {"command": "ls"}}]}]))
    .await;
    let http = reqwest::Client::new();
    let body = json!({"model": "m", "stream": true, "tools": [{"name": "Bash"}],
        "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/messages", fake.url());
    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(
        text.contains(r#""partial_json":"{\"command\":\"ls\"}""#),
        "{text}"
    );

    fake.set_script(json!({"scenarios": [
        {"match": "bad", "error": {"status": 400, "body": {"type": "error",
            "error": {"type": "invalid_request_error", "message": "nope"}}}},
        {"match": "busy", "error": {"status": 529, "type": "overloaded_error", "message": "busy"}}]}));
    let mut bad = body.clone();
    bad["messages"][0]["content"] = json!("bad request");
    let r = http.post(&url).json(&bad).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["message"], "nope");
    let mut busy = body.clone();
    busy["messages"][0]["content"] = json!("busy now");
    let r = http.post(&url).json(&busy).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 529);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "overloaded_error");
}

// ---------------------------------------------------------------------------------------------
// Fake agent: faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fake_agent_answers_and_keeps_the_resumed_id() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "context\nthe question", None, Role::Guest, None).await;
    let out = run.result.expect("answer");
    assert_eq!(out.text, "fake answer: the question");
    let id = out.session_id.expect("id");
    let again = run_turn(&backend, "next", Some(id.clone()), Role::Guest, None).await;
    assert_eq!(again.result.expect("answer").session_id, Some(id));
}

#[tokio::test]
async fn fake_agent_slow_answer_arrives_within_the_timeout() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "FAKE:slow=200\nhello", None, Role::Owner, None).await;
    assert_eq!(run.result.expect("answer").text, "fake answer: hello");
}

#[tokio::test]
async fn fake_agent_crash_is_reported_with_stderr() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "FAKE:crash", None, Role::Owner, None).await;
    match run.result {
        Err(AgentError::Crashed {
            status,
            stderr_tail,
        }) => {
            assert!(status.contains('3'), "{status}");
            assert!(stderr_tail.contains("simulated crash"), "{stderr_tail}");
        }
        other => panic!("expected Crashed, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_agent_garbage_is_a_protocol_error() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "FAKE:garbage", None, Role::Owner, None).await;
    assert!(
        matches!(run.result, Err(AgentError::Protocol(_))),
        "{:?}",
        run.result
    );
}

#[tokio::test]
async fn fake_agent_huge_line_is_skipped_and_the_turn_completes() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "FAKE:huge\nsummarise", None, Role::Owner, None).await;
    let out = run.result.expect("turn survives a 20 MiB line");
    assert_eq!(out.text, "fake answer: summarise");
    assert!(texts(&run.events).iter().all(|t| t.len() < 1024));
}

#[tokio::test]
async fn fake_agent_rate_limit_is_rate_limited_not_an_answer() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(&fake_agent_bin(), Vec::new()));
    let run = run_turn(&backend, "FAKE:ratelimit", None, Role::Owner, None).await;
    match run.result {
        Err(AgentError::RateLimited {
            resets_at,
            kind,
            usage,
        }) => {
            assert!(usage, "a rejected rate_limit_event is the usage limit");
            assert!(resets_at.is_some());
            assert_eq!(kind.as_deref(), Some("five_hour"));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(
        texts(&run.events).is_empty(),
        "limit text must not be echoed"
    );
    assert!(run
        .events
        .iter()
        .any(|e| matches!(e, AgentEvent::RateLimit { status, .. } if status == "rejected")));
}

/// A FIFO the hanging fake agent and its child both hold open: end-of-file on it proves
/// that every process of the group is dead.
async fn hang_witness(dir: &Path) -> (PathBuf, tokio::net::unix::pipe::Receiver) {
    let path = dir.join("witness.fifo");
    nix::unistd::mkfifo(
        &path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&path)
        .unwrap();
    (path, rx)
}

async fn assert_group_dead(mut witness: tokio::net::unix::pipe::Receiver) {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), witness.read_to_string(&mut text))
        .await
        .expect("a process of the agent's group is still alive")
        .unwrap();
    // End-of-file: both processes closed the FIFO, which a sleeping process only does
    // while the kernel tears it down.
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "the fake agent and its child both held the witness: {text:?}"
    );
}

#[tokio::test]
async fn fake_agent_hang_times_out_and_the_whole_group_is_killed() {
    let dirs = Dirs::new();
    let (fifo, witness) = hang_witness(dirs.scratch.path()).await;
    let mut config = dirs.config(
        &fake_agent_bin(),
        vec![("ACG_FAKE_WITNESS".into(), fifo.display().to_string())],
    );
    // Long enough for the fake agent to start and open the witness on a loaded machine.
    config.timeout = Duration::from_secs(5);
    let backend = dirs.backend(&config);
    let run = run_turn(&backend, "FAKE:hang", None, Role::Owner, None).await;
    assert!(
        matches!(run.result, Err(AgentError::Timeout(d)) if d == Duration::from_secs(5)),
        "{:?}",
        run.result
    );
    assert_group_dead(witness).await;
}

#[tokio::test]
async fn fake_agent_hang_is_cancelled_and_the_whole_group_is_killed() {
    let dirs = Dirs::new();
    let (fifo, witness) = hang_witness(dirs.scratch.path()).await;
    let config = dirs.config(
        &fake_agent_bin(),
        vec![("ACG_FAKE_WITNESS".into(), fifo.display().to_string())],
    );
    let backend = dirs.backend(&config);
    let cancel = CancellationToken::new();
    // Cancel as soon as the agent announced its session, i.e. while it runs.
    let run = run_turn_with(
        &backend,
        "FAKE:hang",
        None,
        Role::Owner,
        None,
        cancel.clone(),
        |e| {
            if matches!(e, AgentEvent::SessionStarted { .. }) {
                cancel.cancel();
            }
        },
    )
    .await;
    assert!(
        matches!(run.result, Err(AgentError::Cancelled)),
        "{:?}",
        run.result
    );
    assert_group_dead(witness).await;
}

#[tokio::test]
async fn missing_command_is_a_spawn_error() {
    let dirs = Dirs::new();
    let backend = dirs.backend(&dirs.config(Path::new("/nonexistent/claude"), Vec::new()));
    let run = run_turn(&backend, "hi", None, Role::Owner, None).await;
    assert!(
        matches!(run.result, Err(AgentError::Spawn { .. })),
        "{:?}",
        run.result
    );
}

// ---------------------------------------------------------------------------------------------
// Parser fixtures (recorded from the real CLI unless the file says otherwise)
// ---------------------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/claude")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_fixture(
    name: &str,
    exit: ExitInfo,
    session: &str,
) -> (Vec<AgentEvent>, Result<TurnOutcome, AgentError>) {
    let mut parser = StreamParser::new(session);
    let events = fixture(name).lines().flat_map(|l| parser.feed(l)).collect();
    (events, parser.finish(&exit))
}

fn exit(code: i32, stderr: &str) -> ExitInfo {
    ExitInfo {
        success: code == 0,
        status: format!("exit code {code}"),
        stderr_tail: stderr.to_string(),
    }
}

#[test]
fn fixture_normal_turn() {
    let session = "11111111-2222-4333-8444-555555555555";
    let (events, out) = parse_fixture("normal.ndjson", exit(0, ""), session);
    assert_eq!(
        events,
        vec![
            AgentEvent::SessionStarted {
                session_id: session.into()
            },
            AgentEvent::Text {
                text: "Hello! The answer is 42.".into()
            },
            AgentEvent::Usage(out.as_ref().unwrap().usage.clone().unwrap()),
        ]
    );
    let out = out.unwrap();
    assert_eq!(out.session_id.as_deref(), Some(session));
    assert_eq!(out.text, "Hello! The answer is 42.");
    assert!(out.denied_tools.is_empty());
    let usage = out.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (100, 20));
    assert_eq!(usage.cost_usd, Some(0.001));
    assert!(usage.context_window.is_some());
}

#[test]
fn fixture_resumed_turn_keeps_the_resumed_id() {
    let session = "11111111-2222-4333-8444-555555555555";
    let (_, out) = parse_fixture("resumed.ndjson", exit(0, ""), session);
    assert_eq!(out.unwrap().session_id.as_deref(), Some(session));
}

#[test]
fn fixture_tool_turn() {
    let (events, out) = parse_fixture(
        "tool.ndjson",
        exit(0, ""),
        "11111111-2222-4333-8444-888888888888",
    );
    let tool = events
        .iter()
        .find_map(|e| match e {
            AgentEvent::ToolStart { id, name, input } => {
                Some((id.clone(), name.clone(), input.clone()))
            }
            _ => None,
        })
        .expect("tool start");
    assert_eq!(tool.1, "Bash");
    assert!(tool.2.contains("touch out.txt"), "{}", tool.2);
    assert!(events.contains(&AgentEvent::ToolResult {
        id: tool.0,
        is_error: false
    }));
    let out = out.unwrap();
    assert_eq!(out.text, "I'll create the file.\nDone: out.txt exists now.");
    assert!(out.denied_tools.is_empty());
}

#[test]
fn fixture_denied_tool() {
    let (events, out) = parse_fixture(
        "denied.ndjson",
        exit(0, ""),
        "11111111-2222-4333-8444-777777777777",
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, AgentEvent::ToolResult { is_error: true, .. })));
    let out = out.unwrap();
    assert_eq!(out.denied_tools, vec!["Bash".to_string()]);
    assert_eq!(out.text, "Removing it.\nI was not allowed to.");
}

#[test]
fn fixture_api_error() {
    let (events, out) = parse_fixture(
        "api_error.ndjson",
        exit(1, ""),
        "11111111-2222-4333-8444-aaaaaaaaaaaa",
    );
    assert!(texts(&events).is_empty(), "synthetic text is not an answer");
    match out {
        Err(AgentError::Api { status, message }) => {
            assert_eq!(status, Some(400));
            assert_eq!(message, "API Error: 400 prompt is malformed");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fixture_api_retry() {
    let (events, out) = parse_fixture(
        "api_retry.ndjson",
        exit(0, ""),
        "11111111-2222-4333-8444-bbbbbbbbbbbb",
    );
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Retrying {
                attempt,
                max,
                delay_ms,
                error,
            } => Some((*attempt, *max, *delay_ms, error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        vec![
            (1, 10, 531, "overloaded (529)".to_string()),
            (2, 10, 1081, "overloaded (529)".to_string())
        ]
    );
    assert_eq!(out.unwrap().text, "Answer after retries.");
}

#[test]
fn fixture_missing_session() {
    let session = "11111111-2222-4333-8444-999999999999";
    let stderr = fixture("missing_session.stderr");
    let (_, out) = parse_fixture("missing_session.ndjson", exit(1, &stderr), session);
    assert!(
        matches!(out, Err(AgentError::SessionNotFound(ref id)) if id == session),
        "{out:?}"
    );
    // The result line alone is enough, even if stderr was lost.
    let (_, out) = parse_fixture("missing_session.ndjson", exit(1, ""), session);
    assert!(
        matches!(out, Err(AgentError::SessionNotFound(_))),
        "{out:?}"
    );
}

#[test]
fn fixture_rate_limit() {
    let (events, out) = parse_fixture(
        "rate_limit.ndjson",
        exit(1, ""),
        "11111111-2222-4333-8444-cccccccccccc",
    );
    assert!(texts(&events).is_empty(), "limit text is not an answer");
    let limits: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::RateLimit {
                status,
                resets_at,
                kind,
            } => Some((status.as_str(), *resets_at, kind.as_deref())),
            _ => None,
        })
        .collect();
    assert_eq!(
        limits,
        vec![
            ("allowed_warning", Some(1783173600), Some("five_hour")),
            ("rejected", Some(1783173600), Some("five_hour"))
        ]
    );
    assert!(
        matches!(
            out,
            Err(AgentError::RateLimited {
                resets_at: Some(1783173600),
                kind: Some(ref k),
                usage: true,
            }) if k == "five_hour"
        ),
        "{out:?}"
    );
}
