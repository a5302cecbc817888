//! Roles, tool policy and human approval with the real Claude Code CLI: the fake model asks for
//! a Bash call, Claude's http PreToolUse hook asks the gateway, and the room's owner (or a
//! timeout) decides. Every test checks what really ran on disk.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::ClaudeWebchat;
use crate::support::fake_llm::{bash_scenario, bash_turn};
use crate::support::webclient::EventStream;

/// Alice is an owner, Bob a guest. `rules` is YAML for the agent's allow-lists.
async fn setup(rules: &str, approval_timeout: u64) -> Option<ClaudeWebchat> {
    let extra = format!("    permissions: {{enabled: true, timeout: {approval_timeout}}}\n{rules}");
    let script = json!({"scenarios": [], "default_text": "OK"});
    // Far above any test's run time: a stop that waited for it would be seen at once.
    ClaudeWebchat::start(script, &extra, "shutdown_grace: 300").await
}

/// A scenario: the model runs `command` with Bash, then says `after`.
fn tool_script(marker: &str, command: &str) -> Value {
    json!({"scenarios": [bash_scenario(marker, "Running it.", command, "after")], "default_text": "OK"})
}

/// Waits for the approval prompt and returns its id.
async fn prompt_id(events: &mut EventStream) -> String {
    prompt(events).await.0
}

/// Waits for the approval prompt (one message here: the web chat's limit is far above these
/// commands) and returns its id and the parameters it shows as not matched by any rule.
async fn prompt(events: &mut EventStream) -> (String, Vec<String>, String) {
    let seen = events
        .until(Duration::from_secs(60), |e, d| {
            e == "message" && d["text"].as_str().is_some_and(|t| t.starts_with("🔐"))
        })
        .await;
    let text = seen.last().unwrap().1["text"].as_str().unwrap().to_string();
    let re = regex::Regex::new(
        r"(?s)^🔐 \*\*Permission required\*\* `\[([a-z0-9]{4})\]`\n\*\*Tool:\*\* `Bash`\n\*\*Not matched by any rule \((\d+)\):\*\*\n((?:```\n[^`]*\n```\n)+)(.*)Reply `approve ([a-z0-9]{4})` or `deny ([a-z0-9]{4})`$",
    )
    .unwrap();
    let c = re.captures(&text).unwrap_or_else(|| panic!("{text}"));
    let id = c[1].to_string();
    assert_eq!((&c[5], &c[6]), (id.as_str(), id.as_str()), "{text}");
    let unmatched: Vec<String> = c[3]
        .split("```\n")
        .map(|b| b.trim_end_matches('\n'))
        .filter(|b| !b.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(unmatched.len(), c[2].parse::<usize>().unwrap(), "{text}");
    (id, unmatched, c[4].to_string())
}

const OWNER_TOUCH_LISTED: &str =
    r#"    owner_allowed_tools: [{tool: Bash, params: "touch listed\\.txt"}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_allow_listed_call_runs_without_a_prompt() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(tool_script("AP-LISTED", "touch listed.txt"));
    let replies = s.alice.ask("r1", "AP-LISTED go").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, "Running it.\nafter");
    assert!(s.gateway.work.join("listed.txt").exists());
    let a = s.gateway.audit();
    let last = a.last().unwrap();
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["role"], "owner");
    assert_eq!(last["tool"], "Bash");
    assert_eq!(last["parameters"], json!(["touch listed.txt"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_owner_call_waits_for_approve_and_then_runs() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm.set_script(tool_script(
        "AP-APPROVE",
        "touch listed.txt && touch approved.txt",
    ));
    let mut events = s.alice.events("r2").await;
    s.alice.post("r2", "AP-APPROVE go").await;
    // What the owner is asked about comes first; the listed part is only summarised.
    let (id, unmatched, rest) = prompt(&mut events).await;
    assert_eq!(unmatched, vec!["touch approved.txt".to_string()]);
    assert_eq!(rest, "**Matched by rules (1):** `touch listed.txt`\n");
    assert!(!s.gateway.work.join("approved.txt").exists());
    assert!(!s.gateway.work.join("listed.txt").exists());

    let (status, _) = s
        .alice
        .post("r2", &format!("APPROVE {}", id.to_uppercase()))
        .await;
    assert_eq!(status, 202);
    events
        .until(Duration::from_secs(60), |e, d| {
            e == "typing" && d["typing"] == false
        })
        .await;
    assert!(
        s.gateway.work.join("approved.txt").exists() && s.gateway.work.join("listed.txt").exists(),
        "approved call did not run"
    );
    let texts: Vec<String> = s
        .alice
        .messages("r2")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(
        texts.contains(&format!("✅ Permission `{id}` approved.")),
        "{texts:?}"
    );
    // The answer streamed into the message posted before the prompt.
    assert!(
        texts.contains(&"Running it.\nafter".to_string()),
        "{texts:?}"
    );
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["by"].as_str()),
        (Some("allow"), Some("alice"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_stops_the_call() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm.set_script(tool_script("AP-DENY", "touch denied.txt"));
    let mut events = s.alice.events("r3").await;
    s.alice.post("r3", "AP-DENY go").await;
    let id = prompt_id(&mut events).await;
    s.alice.post("r3", &format!("deny {id}")).await;
    events
        .until(Duration::from_secs(60), |e, d| {
            e == "typing" && d["typing"] == false
        })
        .await;
    assert!(!s.gateway.work.join("denied.txt").exists());
    let texts: Vec<String> = s
        .alice
        .messages("r3")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(
        texts.contains(&format!("❌ Permission `{id}` denied.")),
        "{texts:?}"
    );
    // The model was told why.
    let body = s.llm.message_requests().last().unwrap().body.to_string();
    assert!(body.contains("denied by alice"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_times_out_as_a_deny() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 2).await else {
        return;
    };
    s.llm
        .set_script(tool_script("AP-TIMEOUT", "touch late.txt"));
    let mut events = s.alice.events("r4").await;
    s.alice.post("r4", "AP-TIMEOUT go").await;
    let id = prompt_id(&mut events).await;
    // The notice is posted beside the turn, so it may come before or after the turn's end:
    // wait for both.
    let notice = format!("⏱️ Permission `{id}` timed out — **auto-denied**.");
    let (mut noticed, mut ended) = (false, false);
    events
        .until(Duration::from_secs(60), |e, d| {
            noticed |= e == "message" && d["text"] == notice.as_str();
            ended |= e == "typing" && d["typing"] == false;
            noticed && ended
        })
        .await;
    assert!(!s.gateway.work.join("late.txt").exists());
    // A late approve finds nothing.
    let (_, _) = s.alice.post("r4", &format!("approve {id}")).await;
    let notice = events
        .until(Duration::from_secs(10), |e, d| {
            e == "message" && d["from"] == "bot"
        })
        .await;
    assert_eq!(
        notice.last().unwrap().1["text"],
        format!("⚠️ No pending permission request with ID `{id}`.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_guest_call_is_denied_without_a_prompt() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm.set_script(tool_script("AP-GUEST", "touch guest.txt"));
    let replies = s.bob.ask("r5", "AP-GUEST go").await;
    assert_eq!(replies.len(), 1, "no prompt expected: {replies:?}");
    assert_eq!(replies[0].text, "Running it.\nafter");
    assert!(!s.gateway.work.join("guest.txt").exists());
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["role"].as_str()),
        (Some("deny"), Some("guest"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_message_merged_with_an_owner_message_runs_with_guest_rules() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(tool_script("AP-MERGED", "touch listed.txt"));
    let (code, _, _) = s.gateway.cli_text(&["pause", "all"]);
    assert_eq!(code, 0);
    s.alice.post("r6", "AP-MERGED from the owner").await;
    s.bob.post("r6", "and a guest joins").await;
    let mut events = s.alice.events("r6").await;
    s.gateway.cli(&["resume", "all"]);
    events.turn_end().await;
    // The owner alone could run it; with a guest in the batch the guest rules apply.
    assert!(!s.gateway.work.join("listed.txt").exists());
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["role"].as_str()),
        (Some("deny"), Some("guest"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_from_a_guest_or_another_room_change_nothing() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm.set_script(tool_script("AP-CROSS", "touch cross.txt"));
    let mut events = s.alice.events("r7").await;
    s.alice.post("r7", "AP-CROSS go").await;
    let id = prompt_id(&mut events).await;

    // A guest's approve in the same room is answered, and does nothing.
    s.bob.post("r7", &format!("approve {id}")).await;
    let seen = events
        .until(Duration::from_secs(10), |e, d| {
            e == "message"
                && d["from"] == "bot"
                && d["text"].as_str().is_some_and(|t| t.starts_with("⚠️"))
        })
        .await;
    assert_eq!(
        seen.last().unwrap().1["text"],
        "⚠️ Only an owner of this room can approve or deny tool calls."
    );

    // An owner's approve from another room finds nothing.
    let mut other = s.alice.events("elsewhere").await;
    s.alice.post("elsewhere", &format!("approve {id}")).await;
    let seen = other
        .until(Duration::from_secs(10), |e, d| {
            e == "message" && d["from"] == "bot"
        })
        .await;
    assert_eq!(
        seen.last().unwrap().1["text"],
        format!("⚠️ No pending permission request with ID `{id}`.")
    );
    assert!(!s.gateway.work.join("cross.txt").exists());

    // Still pending: the owner of the room decides.
    s.alice.post("r7", &format!("deny {id}")).await;
    events
        .until(Duration::from_secs(60), |e, d| {
            e == "typing" && d["typing"] == false
        })
        .await;
    assert!(!s.gateway.work.join("cross.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broad_owner_rule_still_cannot_drive_the_gateway() {
    let rules = r#"    owner_allowed_tools: [{tool: Bash, params: ".*"}]"#;
    let Some(s) = setup(rules, 60).await else {
        return;
    };
    // First a pending request the agent would like to approve itself.
    s.llm.set_script(json!({"scenarios": [
        {"match": "AP-SELF", "turns": [
            {"text": "Approving myself.", "tool_calls": [{"name": "Bash", "input": {"command": "agent-chat-gateway approve abcd && agent-chat-gateway pause all"}}]},
            {"text": "after"}]}
    ]}));
    let replies = s.alice.ask("r8", "AP-SELF go").await;
    assert_eq!(replies.last().unwrap().text, "Approving myself.\nafter");
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(last["decision"], "deny");
    assert!(
        last["reason"].as_str().unwrap().contains("control plane"),
        "{last}"
    );
    // The watcher was not paused by the agent.
    let (_, out, _) = s.gateway.cli_text(&["list"]);
    assert!(!out.contains("[paused]"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_always_from_the_box_remembers_the_exact_call() {
    let Some(s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(json!({"scenarios": [{"match": "AP-ALWAYS", "turns": [
            bash_turn("One.", "touch again.txt"),
            bash_turn("Two.", "touch again.txt"),
            {"text": "after"}
        ]}]}));
    let mut events = s.alice.events("r9").await;
    s.alice.post("r9", "AP-ALWAYS go").await;
    let id = prompt_id(&mut events).await;
    let (code, out, err) = s.gateway.cli_text(&["approve", &id, "--always"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("✅ Permission `{id}` approved.").as_str()),
        "{err}"
    );
    events
        .until(Duration::from_secs(60), |e, d| {
            e == "typing" && d["typing"] == false
        })
        .await;
    // The second, identical call ran without a second prompt.
    let prompts = s
        .alice
        .messages("r9")
        .await
        .into_iter()
        .filter(|m| m.text.starts_with("🔐"))
        .count();
    assert_eq!(prompts, 1);
    let decisions: Vec<(String, String)> = s
        .gateway
        .audit()
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["by"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("allow".to_string(), "admin (control socket)".to_string()),
            ("allow".to_string(), "always".to_string())
        ]
    );
    let (code, _, err) = s.gateway.cli_text(&["deny", "zzzz"]);
    assert_eq!(
        (code, err.trim()),
        (1, "error: ⚠️ No pending permission request with ID `zzzz`.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_denies_a_pending_request() {
    let Some(mut s) = setup(OWNER_TOUCH_LISTED, 60).await else {
        return;
    };
    s.llm
        .set_script(tool_script("AP-STOP", "touch stopped.txt"));
    let mut events = s.alice.events("r10").await;
    s.alice.post("r10", "AP-STOP go").await;
    prompt_id(&mut events).await;
    let started = std::time::Instant::now();
    s.gateway.stop();
    // Not the 300 s grace: the pending request was denied and the turn finished.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    assert!(!s.gateway.work.join("stopped.txt").exists());
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(last["decision"], "deny");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("the gateway is stopping"),
        "{last}"
    );
}
