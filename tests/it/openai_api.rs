//! The OpenAI-compatible API end to end: the real `openai` Python SDK (pinned in
//! `scripts/install-test-deps.sh`, scripts in `tests/it/openai_sdk/`) and `curl` → the real
//! daemon → the real Claude Code CLI → the fake model API. Sessions are checked in the fake
//! model's request log, tool calls on disk and in the audit log, and a hung-up client in
//! `/proc` (no agent process may be left).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{claude_agent, Gateway};
use crate::support::fake_llm::{bash_scenario, FakeLlm};
use crate::support::webclient::WebClient;
use crate::support::{agent_homes, deps, ports};

const ALICE_KEY: &str = "sk-alice-0123456789abcdef";
const BOB_KEY: &str = "sk-bob-0123456789abcdef";

/// A daemon with a web chat `local` (owner alice, guest bob) and an OpenAI API `api` whose
/// model `assistant` (alias `claude-code`) is the Claude agent.
struct Api {
    gateway: Gateway,
    llm: FakeLlm,
    python: std::path::PathBuf,
    base: String,
    alice_web: WebClient,
    _home: tempfile::TempDir,
}

/// `extra_agent`: YAML added to the agent (4-space indented); `extra_api`: keys added to the
/// API connector (4-space indented); `timeout`: the agent's turn timeout in seconds.
async fn setup(script: Value, extra_agent: &str, extra_api: &str, timeout: u32) -> Option<Api> {
    setup_with(script, extra_agent, extra_api, timeout, |_| {
        (String::new(), String::new())
    })
    .await
}

/// [`setup`] with more agents and watchers: `more` gets the fake model and returns YAML for
/// further entries of `agents:` (2-space indented) and `watchers:`.
async fn setup_with(
    script: Value,
    extra_agent: &str,
    extra_api: &str,
    timeout: u32,
    more: impl FnOnce(&FakeLlm) -> (String, String),
) -> Option<Api> {
    let python = deps::openai_python()?;
    let agent = claude_agent(script, extra_agent).await?;
    let (web_port, api_port) = (ports::free_port(), ports::free_port());
    let (more_agents, more_watchers) = more(&agent.llm);
    let agents = agent
        .yaml
        .replace("    timeout: 120\n", &format!("    timeout: {timeout}\n"))
        + &more_agents;
    let yaml = format!(
        r#"
connectors:
  - {{name: local, type: webchat, listen: "127.0.0.1:{web_port}", allowed_users: {{owners: [alice], guests: [bob]}}}}
  - name: api
    type: openai
    listen: "127.0.0.1:{api_port}"
    keys: {{alice: {ALICE_KEY}, bob: {BOB_KEY}}}
    allowed_users: {{owners: [alice], guests: [bob]}}
    aliases: {{claude-code: assistant}}
{extra_api}
{agents}
watchers:
  - {{name: all, connector: local, room: "*"}}
  - {{name: api, connector: api, room: assistant, agent: assistant}}
{more_watchers}
"#
    );
    let gateway = Gateway::start(&yaml);
    let alice_web = WebClient::new(web_port, &gateway.token_for("alice"));
    Some(Api {
        gateway,
        llm: agent.llm,
        python,
        base: format!("http://127.0.0.1:{api_port}/v1"),
        alice_web,
        _home: agent.home,
    })
}

impl Api {
    fn sdk_command(&self, key: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.python);
        c.arg(deps::root().join("tests/it/openai_sdk/sdk.py"))
            .args(args)
            .env("OPENAI_BASE_URL", &self.base)
            .env("OPENAI_API_KEY", key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs one scenario of `sdk.py` as `key`'s user and returns what it printed.
    async fn sdk(&self, key: &str, args: &[&str]) -> Value {
        let out = self.sdk_command(key, args).output().await.unwrap();
        parse_sdk(&out, &self.gateway)
    }

    /// `curl -sN` with `body` to `path`; returns the raw response body.
    async fn curl(&self, key: &str, path: &str, body: &Value) -> String {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                "120",
                "-H",
                "Content-Type: application/json",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {key}"))
            .arg("-d")
            .arg(body.to_string())
            .arg(format!("{}{path}", self.base))
            .output()
            .await
            .expect("curl runs");
        String::from_utf8(out.stdout).unwrap()
    }
}

fn parse_sdk(out: &std::process::Output, gateway: &Gateway) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk.py failed: {}\n{stdout}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.log()
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The fake model's usage for a turn of `calls` model requests (100 in, 20 out each).
fn usage_of(calls: u64) -> Value {
    json!({"prompt_tokens": 100 * calls, "completion_tokens": 20 * calls, "total_tokens": 120 * calls,
           "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": null},
           "completion_tokens_details": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_lists_models_and_gets_answers_with_real_usage_sync_and_async() {
    let script = json!({"scenarios": [
        {"match": "OA-SYNC", "turns": [{"text": "Hello from the agent."}]},
        {"match": "OA-ASYNC", "turns": [{"text": "Async hello."}]},
        {"match": "OA-MODEL", "turns": [{"text": "Other model."}]}
    ], "default_text": "OK"});
    let Some(api) = setup(script, "", "    model_overrides: [claude-test-small]", 120).await else {
        return;
    };
    let models = api.sdk(ALICE_KEY, &["models"]).await;
    assert_eq!(models["models"], json!(["assistant", "claude-code"]));
    assert_eq!(models["retrieved"], "claude-code");
    assert_eq!(models["owned_by"], "agent-chat-gateway");
    assert_eq!(models["missing"]["code"], "model_not_found");
    // Health needs no key.
    let health = reqwest::get(api.base.replace("/v1", "/health"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let r = api
        .sdk(ALICE_KEY, &["chat", "claude-code", "OA-SYNC hi"])
        .await;
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "claude-code");
    assert_eq!(r["content"], "Hello from the agent.");
    assert_eq!(r["finish_reason"], "stop");
    // One model call for a text answer: exactly the fake's numbers, as Claude reported them.
    assert_eq!(api.llm.message_requests().len(), 1);
    assert_eq!(r["usage"], usage_of(1));

    let r = api
        .sdk(BOB_KEY, &["async_chat", "assistant", "OA-ASYNC hi"])
        .await;
    assert_eq!(r["content"], "Async hello.");
    assert_eq!(r["usage"], usage_of(1));
    // A guest's request carries the guest role into the prompt; the prompt names the room.
    let prompt = api.llm.conversation("OA-ASYNC");
    assert!(prompt.contains("from: bob | role: guest"), "{prompt}");
    // `<model>:<override>` runs the CLI with that model (configured overrides only).
    let r = api
        .sdk(
            ALICE_KEY,
            &["chat", "assistant:claude-test-small", "OA-MODEL hi"],
        )
        .await;
    assert_eq!(r["content"], "Other model.");
    let asked = api.llm.message_requests().last().unwrap().body["model"].clone();
    assert_eq!(asked, "claude-test-small");
    let e = api
        .sdk(
            ALICE_KEY,
            &["error", "chat", "assistant:claude-opus-9", "hi"],
        )
        .await;
    assert_eq!(e["exception"], "NotFoundError", "{e}");
    // The cost goes to the log, never to the client.
    assert!(api.gateway.log().contains("turn usage"));
    // Stateless requests leave no room behind in the state file.
    let state =
        std::fs::read_to_string(api.gateway.runtime.join("state.api.json")).unwrap_or_default();
    assert!(!state.contains("assistant/alice/~"), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_with_the_sdk_and_raw_sse_framing_with_curl() {
    let script = json!({"scenarios": [
        {"match": "OA-STREAM", "turns": [{"text": "Streamed answer."}]},
        {"match": "OA-CURL", "turns": [{"text": "Raw answer."}]}
    ], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    let r = api
        .sdk(ALICE_KEY, &["stream", "assistant", "OA-STREAM go"])
        .await;
    assert_eq!(r["text"], "Streamed answer.");
    assert_eq!(r["roles"], json!(["assistant"]));
    assert_eq!(r["finish_reason"], "stop");
    assert_eq!(r["usage"], usage_of(1));

    let raw = api
        .curl(
            ALICE_KEY,
            "/chat/completions",
            &json!({"model": "assistant", "stream": true, "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "OA-CURL go"}]}),
        )
        .await;
    // Every event is `data: <json>` and a blank line; heartbeats are comments; the last is
    // `data: [DONE]`.
    assert!(raw.ends_with("data: [DONE]\n\n"), "{raw}");
    let events: Vec<&str> = raw.split("\n\n").filter(|e| !e.is_empty()).collect();
    let mut content = String::new();
    let mut saw_usage = false;
    for e in &events[..events.len() - 1] {
        if e.starts_with(':') {
            continue;
        }
        let data = e
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{e:?} in {raw}"));
        assert!(!data.contains('\n'), "{e:?}");
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
        if chunk["choices"] == json!([]) {
            assert_eq!(chunk["usage"]["total_tokens"], 120);
            saw_usage = true;
        } else {
            assert_eq!(
                chunk["usage"],
                Value::Null,
                "usage is null until the last chunk"
            );
        }
    }
    assert_eq!(content, "Raw answer.");
    assert!(saw_usage, "{raw}");

    // A wrong key over curl: the OpenAI envelope.
    let raw = api
        .curl(
            "sk-wrong-0123456789abcdef",
            "/chat/completions",
            &json!({"model": "assistant", "messages": []}),
        )
        .await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key", "{raw}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_continue_a_session_with_previous_response_id() {
    let script = json!({"scenarios": [
        {"match": "OA-RESP-1", "turns": [{"text": "I will remember 42."}, {"text": "The number was 42."}]},
        {"match": "OA-RSTREAM", "turns": [{"text": "Streamed response."}]},
        {"match": "OA-UNSTORED", "turns": [{"text": "Not kept."}]}
    ], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    let r = api
        .sdk(
            ALICE_KEY,
            &[
                "responses",
                "assistant",
                "OA-RESP-1 remember 42",
                "OA-RESP-2 which number?",
            ],
        )
        .await;
    assert_eq!(r["first"]["text"], "I will remember 42.");
    assert_eq!(r["first"]["usage"]["input_tokens"], 100);
    assert_eq!(r["first"]["usage"]["output_tokens"], 20);
    assert_eq!(r["second"]["text"], "The number was 42.");
    assert_eq!(r["second"]["previous"], r["first"]["id"]);
    // The second call resumed the agent session: the model saw the first exchange again.
    let seen = api.llm.conversation("OA-RESP-2");
    assert!(seen.contains("OA-RESP-1 remember 42"), "{seen}");
    assert!(seen.contains("I will remember 42."), "{seen}");

    // Another user's response id is not found, as if it never existed.
    let first = r["first"]["id"].as_str().unwrap();
    let e = api
        .sdk(BOB_KEY, &["previous_of_other", "assistant", first])
        .await;
    assert_eq!(e["exception"], "BadRequestError", "{e}");
    assert_eq!(e["body"]["code"], "previous_response_not_found");

    // `store: false`: answered in a session that is forgotten, so it cannot be continued.
    let u = api
        .sdk(
            ALICE_KEY,
            &["responses_unstored", "assistant", "OA-UNSTORED go"],
        )
        .await;
    assert_eq!(u["text"], "Not kept.");
    assert_eq!(
        u["again"]["body"]["code"], "previous_response_not_found",
        "{u}"
    );

    let s = api
        .sdk(
            ALICE_KEY,
            &["responses_stream", "assistant", "OA-RSTREAM go"],
        )
        .await;
    assert_eq!(s["text"], "Streamed response.");
    assert_eq!(s["final"], "Streamed response.");
    assert_eq!(s["usage"]["total_tokens"], 120);
    let events: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"response.created"));
    assert_eq!(events.last(), Some(&"response.completed"));
    assert!(events.contains(&"response.output_text.delta"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_chat_session_resumes_and_sends_only_the_new_messages() {
    let script = json!({"scenarios": [{"match": "OA-SYSTEM", "turns": [{"text": "First."}, {"text": "Second."}]}], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    // Stateless: the whole history is rendered into a fresh session's prompt.
    let r = api
        .sdk(ALICE_KEY, &["chat_history", "assistant", "-"])
        .await;
    assert_eq!(r["content"], "First.");
    let seen = api.llm.conversation("OA-SYSTEM");
    assert!(
        seen.contains("OA-HIST first answer") && seen.contains("OA-HIST second question"),
        "{seen}"
    );
    api.llm.clear_requests();

    // Sticky (`user`): the first request starts the session, the second resumes it with only
    // the messages after the last assistant message.
    let r = api
        .sdk(ALICE_KEY, &["chat_history", "assistant", "team-1"])
        .await;
    assert_eq!(r["content"], "First.");
    let r = api
        .sdk(ALICE_KEY, &["chat_history", "assistant", "team-1"])
        .await;
    assert_eq!(r["content"], "Second.", "the second turn of one session");
    let last = api
        .llm
        .message_requests()
        .last()
        .unwrap()
        .message_texts()
        .join("\n");
    assert_eq!(
        last.matches("OA-HIST first answer").count(),
        1,
        "history sent once: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_session_are_queued_and_answered_one_each() {
    let script = json!({"scenarios": [{"match": "OA-CONC", "delay_ms": 300, "turns": [{"text": "One."}, {"text": "Two."}]}], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    // Each model answer takes seconds (300 ms per event), so the second request arrives
    // while the first turn runs.
    let a = api
        .sdk_command(
            ALICE_KEY,
            &["chat_session", "assistant", "pair", "OA-CONC a"],
        )
        .output();
    let b = api
        .sdk_command(
            ALICE_KEY,
            &["chat_session", "assistant", "pair", "OA-CONC b"],
        )
        .output();
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (
        parse_sdk(&a.unwrap(), &api.gateway),
        parse_sdk(&b.unwrap(), &api.gateway),
    );
    let mut answers = vec![a["content"].clone(), b["content"].clone()];
    answers.sort_by_key(|v| v.to_string());
    // One turn each, in the order they were queued: never merged into one catch-up turn.
    assert_eq!(answers, vec![json!("One."), json!("Two.")]);
    let calls = api.llm.message_requests();
    assert_eq!(calls.len(), 2);
    let second = calls[1].message_texts().join("\n");
    assert!(
        second.contains("OA-CONC a") && second.contains("OA-CONC b") && second.contains("One."),
        "{second}"
    );
    assert!(!second.contains("CATCH-UP"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_answers_are_parsed_by_the_sdk_and_bad_ones_are_a_clear_error() {
    // Claude runs with `--json-schema` and the model answers through `StructuredOutput`, as a
    // real one does; the JSON the CLI collects is the answer.
    let script = json!({"scenarios": [
        {"match": "OA-JSON-OK", "turns": [{"text": "Here it is.", "tool_calls": [
            {"name": "StructuredOutput", "input": {"city": "Paris", "population": 2100000}}]}]},
        {"match": "OA-JSON-BAD", "turns": [
            {"tool_calls": [{"name": "StructuredOutput", "input": {"city": "Paris", "population": "many"}}]},
            {"text": "{\"city\": \"Paris\", \"population\": \"many\"}"}]}
    ], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    let r = api
        .sdk(
            ALICE_KEY,
            &["json_schema", "assistant", "OA-JSON-OK capital of France"],
        )
        .await;
    assert_eq!(
        r["parsed"],
        json!({"city": "Paris", "population": 2100000}),
        "{r}"
    );
    // The CLI held the model to the schema: it offered the StructuredOutput tool, and the
    // prompt carries the schema too (for agents without such a flag).
    let call = api.llm.message_requests()[0].clone();
    assert!(
        call.tool_names().contains(&"StructuredOutput".to_string()),
        "{:?}",
        call.tool_names()
    );
    let seen = api.llm.conversation("OA-JSON-OK");
    assert!(
        seen.contains("JSON Schema") && seen.contains("population"),
        "{seen}"
    );

    // The model keeps giving a population that is not a number: whatever the CLI ends with,
    // the gateway's own check refuses it with a clear error, never as parsed JSON.
    let r = api
        .sdk(
            ALICE_KEY,
            &["json_schema", "assistant", "OA-JSON-BAD capital of France"],
        )
        .await;
    assert_eq!(r["exception"], "UnprocessableEntityError", "{r}");
    assert_eq!(r["body"]["code"], "json_validation_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_an_unknown_model_unsupported_fields_and_the_rate_limit() {
    let Some(api) = setup(
        json!({"scenarios": [], "default_text": "OK"}),
        "",
        "    rate_limit: {requests: 2, per_seconds: 3600}",
        120,
    )
    .await
    else {
        return;
    };
    let e = api
        .sdk(
            "sk-nobody-0123456789abcdef",
            &["error", "chat", "assistant", "hi"],
        )
        .await;
    assert_eq!(e["exception"], "AuthenticationError", "{e}");
    assert_eq!(e["status"], 401);
    assert_eq!(e["body"]["code"], "invalid_api_key");

    let e = api.sdk(ALICE_KEY, &["error", "chat", "gpt-4o", "hi"]).await;
    assert_eq!(e["exception"], "NotFoundError", "{e}");
    assert_eq!(e["body"]["code"], "model_not_found");

    let raw = api
        .curl(
            ALICE_KEY,
            "/chat/completions",
            &json!({"model": "assistant", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (v["error"]["param"].as_str(), v["error"]["code"].as_str()),
        (Some("n"), Some("unsupported_parameter")),
        "{raw}"
    );
    // Two requests so far for alice (a wrong key is nobody's); the third is over the limit.
    let e = api
        .sdk(ALICE_KEY, &["error", "chat", "assistant", "hi"])
        .await;
    assert_eq!(e["exception"], "RateLimitError", "{e}");
    assert_eq!(e["body"]["code"], "rate_limit_exceeded");
    let wait: u64 = e["retry_after"].as_str().unwrap().parse().unwrap();
    // 2 per hour: the next one is free in about half an hour.
    assert!((1700..=1800).contains(&wait), "{wait}");
    // Limits are per key: bob is not affected.
    let ok = api.sdk(BOB_KEY, &["error", "models"]).await;
    assert_eq!(ok["exception"], Value::Null, "{ok}");
    // No model was asked for any of these.
    assert!(api.llm.message_requests().is_empty());
}

const PERMISSIONS: &str = "    permissions: {enabled: true, timeout: 60}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_tool_call_from_the_api_is_denied_when_no_room_can_be_asked() {
    let script = json!({"scenarios": [
        bash_scenario("OA-TOOL", "Running it.", "touch denied.txt", "after"),
        {"match": "OA-JSON-HOOK", "turns": [
            {"tool_calls": [{"shell": "touch json-turn.txt"}]},
            {"tool_calls": [{"name": "StructuredOutput", "input": {"city": "Oslo", "population": 700000}}]}]}
    ], "default_text": "OK"});
    let Some(api) = setup(script, PERMISSIONS, "    show_tools: true", 120).await else {
        return;
    };
    let r = api
        .sdk(ALICE_KEY, &["chat", "assistant", "OA-TOOL go"])
        .await;
    // Tool activity is shown as text in streams only (with `show_tools`), never in a JSON
    // answer and never as OpenAI tool calls.
    assert!(!r["content"].as_str().unwrap().contains("[tool"), "{r}");
    assert_eq!(r["content"], "Running it.\nafter");
    assert!(
        !api.gateway.work.join("denied.txt").exists(),
        "a denied call ran"
    );
    let audit = api.gateway.audit();
    let last = audit.last().unwrap();
    assert_eq!(last["decision"], "deny", "{last}");
    assert_eq!(last["role"], "owner");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("nobody can be asked"),
        "{last}"
    );
    // Nothing was posted to any chat room.
    assert!(api.alice_web.messages("approvals").await.is_empty());

    let raw = api
        .curl(
            ALICE_KEY,
            "/chat/completions",
            &json!({"model": "assistant", "stream": true,
                    "messages": [{"role": "user", "content": "OA-TOOL stream"}]}),
        )
        .await;
    let text: String = raw
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(text.starts_with("Running it.\n[tool Bash: "), "{text}");
    assert!(
        text.contains("touch denied.txt") && text.ends_with("\nafter"),
        "{text}"
    );
    assert!(!raw.contains("tool_calls"), "{raw}");
    assert!(
        !api.gateway.work.join("denied.txt").exists(),
        "a denied call ran"
    );

    // With the hook, a structured answer still comes through: `StructuredOutput` (no effects)
    // is the one tool the hook leaves out; every other call of such a turn is still asked
    // (here Bash: denied, nobody can be asked), and nothing else reaches the audit log.
    let audited = api.gateway.audit().len();
    let r = api
        .sdk(
            ALICE_KEY,
            &["json_schema", "assistant", "OA-JSON-HOOK capital of Norway"],
        )
        .await;
    assert_eq!(
        r["parsed"],
        json!({"city": "Oslo", "population": 700000}),
        "{r}"
    );
    let audit = api.gateway.audit();
    let new: Vec<&Value> = audit[audited..].iter().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        (new[0]["tool"].as_str(), new[0]["decision"].as_str()),
        (Some("Bash"), Some("deny"))
    );
    assert!(!api.gateway.work.join("json-turn.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_approvals_room_an_owner_approves_while_the_request_waits() {
    let script = json!({"scenarios": [bash_scenario("OA-APPROVE", "Running it.", "touch approved.txt", "after")], "default_text": "OK"});
    let Some(api) = setup(
        script,
        PERMISSIONS,
        "    approvals_room: local/approvals",
        120,
    )
    .await
    else {
        return;
    };
    let mut events = api.alice_web.events("approvals").await;
    let request = api
        .sdk_command(ALICE_KEY, &["chat", "assistant", "OA-APPROVE go"])
        .spawn()
        .unwrap();
    let seen = events
        .until(Duration::from_secs(60), |e, d| {
            e == "message" && d["text"].as_str().is_some_and(|t| t.starts_with("🔐"))
        })
        .await;
    let prompt = seen.last().unwrap().1["text"].as_str().unwrap().to_string();
    assert!(
        prompt.contains("**Asked from:** `api:assistant/alice/~"),
        "{prompt}"
    );
    assert!(prompt.contains("touch approved.txt"), "{prompt}");
    let id = regex::Regex::new(r"`\[([a-z0-9]{4})\]`")
        .unwrap()
        .captures(&prompt)
        .unwrap()[1]
        .to_string();
    assert!(!api.gateway.work.join("approved.txt").exists());
    // The owner answers in the web chat room; the HTTP request is still waiting.
    let (status, _) = api
        .alice_web
        .post("approvals", &format!("approve {id}"))
        .await;
    assert_eq!(status, 202);
    let out = tokio::time::timeout(Duration::from_secs(90), request.wait_with_output())
        .await
        .expect("the request finished after the approval")
        .unwrap();
    let r = parse_sdk(&out, &api.gateway);
    assert_eq!(r["content"], "Running it.\nafter");
    assert!(
        api.gateway.work.join("approved.txt").exists(),
        "the approved call did not run"
    );
    let last = api.gateway.audit().last().cloned().unwrap();
    assert_eq!(last["decision"], "allow", "{last}");
    assert_eq!(last["by"], "alice");
}

/// Processes whose working directory is `dir`: the agent CLI and what it started.
fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

/// Starts `curl` on a request the model takes a minute to answer, waits until the agent asked
/// the model, kills `curl`, and waits for every agent process to be gone.
async fn hang_up(api: &Api, marker: &str, stream: bool) {
    let body = json!({"model": "assistant", "stream": stream, "messages": [{"role": "user", "content": format!("OA-HANG {marker}")}]});
    let mut client = tokio::process::Command::new("curl")
        .args(["-sN", "-H", "Content-Type: application/json", "-H"])
        .arg(format!("Authorization: Bearer {ALICE_KEY}"))
        .arg("-d")
        .arg(body.to_string())
        .arg(format!("{}/chat/completions", api.base))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    api.llm
        .wait_for(marker, Duration::from_secs(60), |r| {
            r.iter()
                .any(|r| r.message_texts().join(" ").contains(marker))
        })
        .await;
    assert!(
        !processes_in(&api.gateway.work).is_empty(),
        "the agent runs while the model thinks"
    );
    client.kill().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_in(&api.gateway.work);
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent processes left after the client hung up ({marker}): {left:?}\n{}",
            api.gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_leaves_no_agent_process() {
    let script = json!({"scenarios": [{"match": "OA-HANG", "delay_ms": 60000, "turns": [{"text": "too late"}]}], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 120).await else {
        return;
    };
    hang_up(&api, "mid-stream", true).await;
    hang_up(&api, "waiting-for-json", false).await;
    let log = api.gateway.log();
    assert_eq!(log.matches("the client went away").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_past_the_agent_timeout_is_a_504_or_an_error_event() {
    let script = json!({"scenarios": [{"match": "OA-SLOW", "delay_ms": 60000, "turns": [{"text": "too late"}]}], "default_text": "OK"});
    let Some(api) = setup(script, "", "", 4).await else {
        return;
    };
    let e = api
        .sdk(ALICE_KEY, &["error", "chat", "assistant", "OA-SLOW json"])
        .await;
    assert_eq!(e["status"], 504, "{e}");
    assert_eq!(e["body"]["code"], "timeout");
    let raw = api
        .curl(ALICE_KEY, "/chat/completions", &json!({"model": "assistant", "stream": true, "messages": [{"role": "user", "content": "OA-SLOW sse"}]}))
        .await;
    let last = raw
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .last()
        .unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{raw}");
    assert!(!raw.contains("[DONE]"), "{raw}");
    // Responses: the stream ends with `response.failed`.
    let raw = api
        .curl(
            ALICE_KEY,
            "/responses",
            &json!({"model": "assistant", "stream": true, "input": "OA-SLOW responses"}),
        )
        .await;
    let last = raw
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .last()
        .unwrap();
    let (event, data) = last.split_once('\n').unwrap();
    assert_eq!(event, "event: response.failed", "{raw}");
    let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["response"]["status"], "failed");
    assert_eq!(v["response"]["error"]["code"], "timeout", "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agent_type_answers_through_the_api_and_resumes_its_session() {
    let Some(opencode) = deps::opencode() else {
        return;
    };
    let script = json!({"scenarios": [{"match": "OA-OPENCODE", "turns": [
        {"text": "OpenCode here."}, {"text": "OpenCode again."}
    ]}], "default_text": "OK"});
    let homes = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let home = homes.path().to_path_buf();
    let Some(api) = setup_with(script, "", "    model_overrides: [fake-other]", 120, |llm| {
        let env = agent_homes::env_yaml(&agent_homes::opencode_env(&llm.url(), &home));
        (
            format!(
                "  opencode:\n    type: opencode\n    command: \"{}\"\n    working_directory: \"{{work}}\"\n    timeout: 120\n    env: {env}\n",
                opencode.display()
            ),
            "  - {name: api-opencode, connector: api, room: opencode, agent: opencode}\n".into(),
        )
    })
    .await
    else {
        return;
    };
    let models = api.sdk(ALICE_KEY, &["models"]).await;
    assert_eq!(
        models["models"],
        json!(["assistant", "claude-code", "opencode"])
    );
    let r = api
        .sdk(
            ALICE_KEY,
            &[
                "responses",
                "opencode",
                "OA-OPENCODE first",
                "OA-OPENCODE-2 second",
            ],
        )
        .await;
    assert_eq!(r["first"]["text"], "OpenCode here.", "{r}");
    assert_eq!(r["second"]["text"], "OpenCode again.", "{r}");
    // OpenCode talks Chat Completions to the fake model: its second call carries the first
    // exchange, so the API's session was the CLI's session.
    let seen = api.llm.conversation("OA-OPENCODE-2");
    assert!(
        seen.contains("OA-OPENCODE first") && seen.contains("OpenCode here."),
        "{seen}"
    );
    // A per-request model override is refused by a CLI that cannot take one: the turn
    // fails (502) instead of answering from another model than asked, and the log says why.
    let e = api
        .sdk(ALICE_KEY, &["error", "chat", "opencode:fake-other", "hi"])
        .await;
    assert_eq!(
        (e["status"].as_u64(), e["body"]["code"].as_str()),
        (Some(502), Some("agent_error")),
        "{e}"
    );
    assert!(api
        .gateway
        .log()
        .contains("cannot switch models per request"));
}

/// A guest's request past their daily budget is answered with the budget message as an
/// error, not run; an owner's still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_guests_budget_is_an_error_with_the_budget_message() {
    let budgets = "budgets:\n  user: {daily: {tokens: 1}}\n".to_string();
    let Some(api) = setup_with(
        json!({"default_text": "Within budget."}),
        "",
        "",
        120,
        |_| (String::new(), budgets),
    )
    .await
    else {
        return;
    };
    let ask = |key: &'static str, text: &'static str| {
        let body = json!({"model": "assistant", "messages": [{"role": "user", "content": text}]});
        let api = &api;
        async move {
            let raw = api.curl(key, "/chat/completions", &body).await;
            serde_json::from_str::<Value>(&raw).unwrap_or_else(|_| panic!("{raw}"))
        }
    };
    let first = ask(BOB_KEY, "first").await;
    assert_eq!(
        first["choices"][0]["message"]["content"], "Within budget.",
        "{first}"
    );
    let refused = ask(BOB_KEY, "second").await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("💸 bob has used the daily budget (")
            && message.ends_with("Owners' messages are still answered."),
        "{refused}"
    );
    assert!(
        !api.llm.conversation("second").contains("second"),
        "the refused request reached the model"
    );
    let owner = ask(ALICE_KEY, "from the owner").await;
    assert_eq!(
        owner["choices"][0]["message"]["content"], "Within budget.",
        "{owner}"
    );
}
