//! End to end through the real pieces: web chat API → daemon (started with `start`, so the
//! double fork is exercised) → the real Claude Code CLI → the project's fake model API → the
//! reply in the room. Admin commands go through the real CLI and control socket.

use serde_json::json;

use crate::support::daemon::ClaudeWebchat;
use crate::support::fake_llm::bash_scenario;

/// A gateway with one web chat connector and one Claude agent; `extra_agent` is YAML added to
/// the agent (allow-lists, permissions).
async fn setup(script: serde_json::Value, extra_agent: &str) -> Option<ClaudeWebchat> {
    ClaudeWebchat::start(script, extra_agent, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_is_answered_and_the_next_turn_resumes_the_session() {
    let script = json!({"scenarios": [{"match": "E2E-RESUME", "turns": [
        {"text": "First answer from the fake model."},
        {"text": "Second answer, same session."}
    ]}], "default_text": "OK"});
    let Some(s) = setup(script, "").await else {
        return;
    };

    let replies = s.alice.ask("lobby", "E2E-RESUME hello").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, "First answer from the fake model.");
    assert!(replies[0].done);

    let replies = s.alice.ask("lobby", "and again").await;
    assert_eq!(replies.last().unwrap().text, "Second answer, same session.");

    // The second model call carried the first exchange: the CLI resumed the session.
    let calls = s.llm.message_requests();
    let last = calls.last().unwrap();
    let texts = last.message_texts().join("\n");
    assert!(texts.contains("E2E-RESUME hello"), "{texts}");
    assert!(
        texts.contains("First answer from the fake model."),
        "{texts}"
    );
    assert!(texts.contains("and again"), "{texts}");
    // The prompt header carries the sender and the role from configuration.
    assert!(texts.contains("from: alice | role: owner"), "{texts}");

    let (code, out, _) = s.gateway.cli_text(&["list", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let session = rows[0]["session_id"].as_str().unwrap().to_string();
    assert_eq!(rows[0]["watcher"], "all");
    assert_eq!(rows[0]["room"], "lobby");
    assert!(!session.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_allow_list_runs_listed_tools_and_denies_others() {
    let script = json!({"scenarios": [
        bash_scenario("E2E-ALLOWED", "Creating it.", "touch allowed.txt", "Done with the allowed one."),
        bash_scenario("E2E-DENIED", "Trying.", "touch denied.txt", "Could not do it."),
    ]});
    let extra = r#"    owner_allowed_tools: [{tool: Bash, params: "touch allowed.*"}]"#;
    let Some(s) = setup(script, extra).await else {
        return;
    };

    let replies = s.alice.ask("tools", "E2E-ALLOWED please").await;
    assert_eq!(
        replies.last().unwrap().text,
        "Creating it.\nDone with the allowed one."
    );
    assert!(
        s.gateway.work.join("allowed.txt").exists(),
        "the allowed tool did not run"
    );

    s.gateway.cli(&["reset", "all"]);
    let replies = s.alice.ask("tools", "E2E-DENIED please").await;
    assert_eq!(replies.last().unwrap().text, "Trying.\nCould not do it.");
    assert!(
        !s.gateway.work.join("denied.txt").exists(),
        "a non-listed tool ran"
    );
    // The model was told the call was denied.
    let last = s.llm.message_requests().last().unwrap().body.to_string();
    assert!(last.contains("is_error"), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_keeps_the_session() {
    let script = json!({"scenarios": [{"match": "E2E-RESTART", "turns": [
        {"text": "Before the restart."}, {"text": "After the restart."}
    ]}]});
    let Some(mut s) = setup(script, "").await else {
        return;
    };
    let replies = s.alice.ask("keep", "E2E-RESTART one").await;
    assert_eq!(replies[0].text, "Before the restart.");

    s.gateway.stop();
    s.gateway.start_again();
    // Tokens are kept in the runtime dir, so the same login works after the restart.
    assert_eq!(s.gateway.token_for("alice"), s.alice.token);

    // A new client: the old one's pooled connection died with the old daemon.
    let alice = s.alice.fresh();
    let replies = alice.ask("keep", "two").await;
    assert_eq!(replies.last().unwrap().text, "After the restart.");
    let texts = s
        .llm
        .message_requests()
        .last()
        .unwrap()
        .message_texts()
        .join("\n");
    assert!(texts.contains("Before the restart."), "{texts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_reset_list_and_send_through_the_cli() {
    let script = json!({"scenarios": [{"match": "E2E-ADMIN", "turns": [
        {"text": "Admin answer one."}, {"text": "Admin answer two."}
    ]}], "default_text": "Fresh session answer."});
    let Some(s) = setup(script, "").await else {
        return;
    };
    let g = &s.gateway;

    let (code, out, _) = g.cli_text(&["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("Gateway is running (pid "), "{out}");

    let replies = s.alice.ask("adm", "E2E-ADMIN first").await;
    assert_eq!(replies[0].text, "Admin answer one.");

    let (code, out, _) = g.cli_text(&["pause", "all"]);
    assert_eq!((code, out.trim()), (0, "watcher 'all' paused"));
    let (code, out, _) = g.cli_text(&["list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("all: (local) adm [assistant] session=") && out.contains("[paused]"),
        "{out}"
    );

    // A message while paused is kept, with a notice, and answered after resume.
    let mut events = s.alice.events("adm").await;
    let (status, body) = s.alice.post("adm", "while paused").await;
    assert_eq!(status, 202);
    let held_id = body["id"].as_str().unwrap().to_string();
    events
        .until(std::time::Duration::from_secs(30), |e, d| {
            e == "message" && d["text"].as_str().is_some_and(|t| t.starts_with("⏸️"))
        })
        .await;
    let (code, out, _) = g.cli_text(&["resume", "all"]);
    assert_eq!((code, out.trim()), (0, "watcher 'all' resumed"));
    events.turn_end().await;
    let after = s.alice.bot_messages_after("adm", &held_id).await;
    assert!(
        after.iter().any(|m| m.text == "Admin answer two."),
        "{after:?}"
    );

    let (code, out, _) = g.cli_text(&["reset", "all"]);
    assert_eq!(code, 0, "{out}");
    let replies = s.alice.ask("adm", "after reset").await;
    assert_eq!(replies.last().unwrap().text, "Fresh session answer.");

    let (code, out, err) = g.cli_text(&["send", "adm", "a note from the box"]);
    assert_eq!((code, out.trim()), (0, "sent to adm"), "{err}");
    let all = s.alice.messages("adm").await;
    assert_eq!(all.last().unwrap().text, "a note from the box");

    let (code, _, err) = g.cli_text(&["pause", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: unknown watcher 'nope' (known: all)");
}

/// The usage ledger holds what the model reported for each turn (the fake model says 100 in,
/// 20 out per call), by room and by user, and outlives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_turns_usage_is_in_the_ledger_and_survives_a_restart() {
    let Some(mut s) = setup(json!({"scenarios": [], "default_text": "OK"}), "").await else {
        return;
    };
    s.alice.ask("r1", "one").await;
    s.alice.ask("r1", "two").await;
    s.bob.ask("r2", "three").await;
    let calls = s.llm.message_requests().len() as u64;
    let usage = |gateway: &crate::support::daemon::Gateway, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["usage", "--json"];
        all.extend_from_slice(args);
        let out = gateway.cli(&all);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let by_room = usage(&s.gateway, &["--by", "room"]);
    let groups = &by_room["groups"];
    assert_eq!(groups["local:r1"]["turns"], 2, "{by_room}");
    assert_eq!(groups["local:r2"]["turns"], 1, "{by_room}");
    let input: u64 = ["local:r1", "local:r2"]
        .iter()
        .map(|r| groups[r]["input_tokens"].as_u64().unwrap())
        .sum();
    let output: u64 = ["local:r1", "local:r2"]
        .iter()
        .map(|r| groups[r]["output_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!((input, output), (100 * calls, 20 * calls), "{by_room}");
    let by_user = usage(&s.gateway, &["--by", "user"]);
    assert_eq!(by_user["groups"]["local/bob"]["turns"], 1, "{by_user}");

    s.gateway.stop();
    s.gateway.start_again();
    s.alice.ask("r1", "four").await;
    let after = usage(&s.gateway, &["--by", "agent", "--since", "1d"]);
    assert_eq!(after["groups"]["assistant"]["turns"], 4, "{after}");
    let table = String::from_utf8(s.gateway.cli(&["usage"]).stdout).unwrap();
    assert!(table.lines().any(|l| l.starts_with("local:r1")), "{table}");
}
