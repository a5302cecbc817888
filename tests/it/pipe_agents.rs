//! The pipe agents (`type: codex`, `gemini`, `opencode`) end to end: one real daemon whose
//! rooms are bound to different agents, the real CLIs (pinned by
//! scripts/install-test-deps.sh) and the project's fake model API (OpenAI Responses for
//! Codex, Gemini's API for Gemini CLI, OpenAI Chat Completions for OpenCode).
//!
//! Each room shows: a reply; an owner's allow-listed shell call really runs; the next
//! message resumes the CLI's session (the first exchange is in the model request); the
//! session survives a daemon restart; a guest, whose rules grant nothing, gets no shell.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::agent_homes;
use crate::support::daemon::WebchatGateway;
use crate::support::deps;
use crate::support::fake_llm::{bash_turn, FakeLlm};

/// One pipe CLI under test.
struct Cli {
    kind: &'static str,
    bin: fn() -> Option<PathBuf>,
    env: fn(&str, &Path) -> Vec<(String, String)>,
    /// The agent's `args` (Gemini: a fixed model, so there is no routing call).
    args: &'static str,
}

const CLIS: [Cli; 3] = [
    Cli {
        kind: "codex",
        bin: deps::codex,
        env: agent_homes::codex_env,
        args: "[]",
    },
    Cli {
        kind: "gemini",
        bin: deps::gemini,
        env: agent_homes::gemini_env,
        args: "[-m, gemini-2.5-flash]",
    },
    Cli {
        kind: "opencode",
        bin: deps::opencode,
        env: agent_homes::opencode_env,
        args: "[]",
    },
];

/// The conversation of one room: a shell call, then one answer per later message.
fn scenario(kind: &str) -> Value {
    json!({"match": format!("PIPE-{kind} please"), "turns": [
        bash_turn("Creating it.", &format!("touch owner-{kind}.txt")),
        {"text": format!("Created by {kind}.")},
        {"text": format!("Second answer from {kind}.")},
        {"text": format!("Third answer from {kind}.")},
    ]})
}

/// A guest asks for the same kind of call.
fn guest_scenario(kind: &str) -> Value {
    json!({"match": format!("PIPE-{kind} guest"), "turns": [
        bash_turn("Trying.", &format!("touch guest-{kind}.txt")),
        {"text": "Could not."},
    ]})
}

/// A daemon whose rooms `room-<kind>` and `room-<kind>-guest` are bound to each CLI, on
/// `llm`; `None` (outside CI) when a CLI is missing. The CLIs' homes live in `homes`.
fn gateway(llm: &FakeLlm, homes: &Path) -> Option<WebchatGateway> {
    let mut bins = Vec::new();
    for cli in &CLIS {
        bins.push((cli.bin)()?);
    }
    let mut agents = String::from("default_agent: codex\nagents:\n");
    let mut watchers = String::from("watchers:\n");
    for (cli, bin) in CLIS.iter().zip(&bins) {
        let home = homes.join(cli.kind);
        std::fs::create_dir_all(&home).unwrap();
        let env = agent_homes::env_yaml(&(cli.env)(&llm.url(), &home));
        agents.push_str(&format!(
            r#"  {kind}:
    type: {kind}
    command: "{bin}"
    args: {args}
    working_directory: "{{work}}"
    timeout: 120
    env: {env}
    owner_allowed_tools: [{{tool: Bash}}, {{tool: Write}}]
"#,
            kind = cli.kind,
            bin = bin.display(),
            args = cli.args,
        ));
        watchers.push_str(&format!(
            "  - {{name: {kind}, connector: local, room: room-{kind}, agent: {kind}}}\n  \
             - {{name: {kind}-guest, connector: local, room: room-{kind}-guest, agent: {kind}}}\n",
            kind = cli.kind
        ));
    }
    Some(WebchatGateway::start_with_watchers(&agents, &watchers, ""))
}

/// Homes for the CLIs outside the system tmp: Codex refuses to set up its sandbox helpers
/// under a temporary dir (0.169.0: "Refusing to create helper binaries under temporary dir").
fn homes() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_bound_to_codex_gemini_and_opencode_answer_resume_and_survive_a_restart() {
    let mut scenarios: Vec<Value> = CLIS.iter().map(|c| scenario(c.kind)).collect();
    scenarios.extend(CLIS.iter().map(|c| guest_scenario(c.kind)));
    let llm = FakeLlm::start(json!({"scenarios": scenarios, "default_text": "OK"})).await;
    let homes = homes();
    let Some(mut web) = gateway(&llm, homes.path()) else {
        return;
    };
    let (alice, bob) = (&web.alice, &web.bob);

    let first = CLIS.iter().map(|c| async move {
        let room = format!("room-{}", c.kind);
        let replies = alice.ask(&room, &format!("PIPE-{} please", c.kind)).await;
        (c.kind, replies)
    });
    for (kind, replies) in futures_util::future::join_all(first).await {
        let last = replies.last().map(|m| m.text.clone()).unwrap_or_default();
        assert_eq!(last, format!("Created by {kind}."), "{kind}: {replies:?}");
        assert!(
            web.gateway.work.join(format!("owner-{kind}.txt")).exists(),
            "{kind}: the owner's allowed shell call did not run; the model saw: {}",
            llm.requests()
                .iter()
                .flat_map(|r| {
                    let mut items = r.body["input"].as_array().cloned().unwrap_or_default();
                    items.extend(r.body["messages"].as_array().cloned().unwrap_or_default());
                    items.extend(r.body["contents"].as_array().cloned().unwrap_or_default());
                    items
                })
                .filter(|i| i["type"] == "function_call_output"
                    || i["role"] == "tool"
                    || i.to_string().contains("functionResponse"))
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    let second = CLIS.iter().map(|c| async move {
        let room = format!("room-{}", c.kind);
        (c.kind, alice.ask(&room, "and again").await)
    });
    for (kind, replies) in futures_util::future::join_all(second).await {
        let last = replies.last().map(|m| m.text.clone()).unwrap_or_default();
        assert_eq!(
            last,
            format!("Second answer from {kind}."),
            "{kind}: {replies:?}"
        );
        let seen = llm.conversation(&format!("PIPE-{kind} please"));
        assert!(
            seen.contains(&format!("Created by {kind}.")) && seen.contains("and again"),
            "{kind}: the second call did not carry the first exchange: {seen}"
        );
    }

    web.gateway.stop();
    web.gateway.start_again();
    let third = CLIS.iter().map(|c| async move {
        let room = format!("room-{}", c.kind);
        (c.kind, alice.ask(&room, "after the restart").await)
    });
    for (kind, replies) in futures_util::future::join_all(third).await {
        let last = replies.last().map(|m| m.text.clone()).unwrap_or_default();
        assert_eq!(
            last,
            format!("Third answer from {kind}."),
            "{kind}: {replies:?}"
        );
        let seen = llm.conversation(&format!("PIPE-{kind} please"));
        assert!(
            seen.contains("after the restart") && seen.contains("and again"),
            "{kind}: {seen}"
        );
    }

    // The guest's rules grant nothing: whatever the CLI does, no file appears.
    let guest = CLIS.iter().map(|c| async move {
        let room = format!("room-{}-guest", c.kind);
        (
            c.kind,
            bob.ask(&room, &format!("PIPE-{} guest", c.kind)).await,
        )
    });
    let guest_rooms: Vec<_> = futures_util::future::join_all(guest).await;
    for (kind, replies) in guest_rooms {
        assert!(!replies.is_empty(), "{kind}: the guest got no reply");
        assert!(
            !web.gateway.work.join(format!("guest-{kind}.txt")).exists(),
            "{kind}: a guest's shell call ran: {replies:?}"
        );
    }
}

/// The model API's refusals reach the room in plain words, the same for every CLI: a
/// rejected key (401) is "not logged in", any other error names its status where the CLI
/// reports one. (A 429 is not
/// here: each CLI retries it with its own backoff, for minutes; its mapping is tested on the
/// CLIs' recorded lines in each `stream.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_api_errors_reach_the_room_in_plain_words_for_every_pipe_cli() {
    let error = |marker: &str, status: u16, kind: &str| json!({"match": marker, "error": {"status": status, "type": kind, "message": "refused by the fake"}});
    let mut scenarios = Vec::new();
    for c in &CLIS {
        scenarios.push(error(
            &format!("PIPE-{} auth", c.kind),
            401,
            "authentication_error",
        ));
        scenarios.push(error(
            &format!("PIPE-{} bad", c.kind),
            400,
            "invalid_request_error",
        ));
    }
    let llm = FakeLlm::start(json!({"scenarios": scenarios, "default_text": "OK"})).await;
    let homes = homes();
    let Some(web) = gateway(&llm, homes.path()) else {
        return;
    };
    let alice = &web.alice;
    let asks = CLIS.iter().map(|c| async move {
        let room = format!("room-{}", c.kind);
        let auth = alice.ask(&room, &format!("PIPE-{} auth", c.kind)).await;
        // Another room: the first one's session starts with the other marker.
        let other = format!("room-{}-guest", c.kind);
        let bad = alice.ask(&other, &format!("PIPE-{} bad", c.kind)).await;
        (c.kind, auth, bad)
    });
    let results = futures_util::future::join_all(asks).await;
    for (kind, auth, bad) in results {
        let last = |r: &[crate::support::webclient::WebMessage]| {
            r.last().map(|m| m.text.clone()).unwrap_or_default()
        };
        assert!(
            last(&auth).contains("not logged in to its model API"),
            "{kind}: {auth:?}"
        );
        // Codex reports a 400 by its body alone, so its message names no status.
        let expected = match kind {
            "codex" => "The model API returned an error. Please try again.",
            _ => "The model API returned an error (400).",
        };
        assert!(last(&bad).contains(expected), "{kind}: {bad:?}");
    }
}
