//! The agent's usage limit as rooms see it: a rate-limited turn is not failed; the room is
//! told once when the limit resets, every room on the same agent holds its queue until then,
//! and the held messages are answered after the reset — also across a daemon restart. An
//! admin's `resume` ends a hold early. Runs the real daemon, the web chat and the fake agent
//! (`FAKE:ratelimit_until=<epoch secs>` is rate limited until that time); once with the real
//! Claude Code CLI, logged in with an OAuth token, which reports a usage limit when the fake
//! model API answers 429 with Anthropic's `anthropic-ratelimit-unified-*` headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_chat_gateway::timefmt::rfc3339_utc_secs;
use serde_json::{json, Value};

use crate::support::daemon::{fake_agent_yaml, Gateway, WebchatGateway};
use crate::support::fake_llm::FakeLlm;
use crate::support::webclient::WebClient;
use crate::support::{agent_homes, deps, ports};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The room's notice for a hold until `reset` with `waiting` messages.
fn held_notice(reset: u64, waiting: usize) -> String {
    let kept = match waiting {
        1 => "Your message is kept and will be answered then.".to_string(),
        n => format!(
            "Your message and {} other waiting message{} are kept and will be answered then.",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
    };
    format!(
        "⏸️ The agent has reached its usage limit (five_hour); it resets at {}. {kept}",
        rfc3339_utc_secs(reset)
    )
}

/// Whether `text` is the fake agent's answer to a prompt ending in `message`.
fn answers(text: &str, message: &str) -> bool {
    text.starts_with("fake answer: ") && text.ends_with(message)
}

async fn bot_texts(client: &WebClient, room: &str) -> Vec<String> {
    client
        .messages(room)
        .await
        .into_iter()
        .filter(|m| m.from == "bot")
        .map(|m| m.text)
        .collect()
}

/// Posts `text` and returns the first bot message that starts with `start`.
async fn answer_starting(client: &WebClient, room: &str, text: &str, start: &str) -> String {
    let mut events = client.events(room).await;
    let (status, body) = client.post(room, text).await;
    assert_eq!(status, 202, "{body}");
    let seen = events
        .until(Duration::from_secs(30), |e, d| {
            e == "message"
                && d["from"] == "bot"
                && d["text"].as_str().is_some_and(|t| t.starts_with(start))
        })
        .await;
    seen.last().unwrap().1["text"].as_str().unwrap().to_string()
}

/// The `state` column of every row of `list`.
fn list_states(g: &Gateway) -> Vec<String> {
    let (code, out, err) = g.cli_text(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_holds_every_room_of_the_agent_until_the_reset() {
    let WebchatGateway {
        gateway: g, alice, ..
    } = WebchatGateway::start(&fake_agent_yaml(120), "");
    let reset = now_secs() + 15;
    let first = format!("FAKE:ratelimit_until={reset} first");
    let replies = alice.ask("limit", &first).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, [held_notice(reset, 1)]);

    // A second message in the held room is queued without another notice.
    let mut limit_events = alice.events("limit").await;
    let (status, body) = alice.post("limit", "second").await;
    assert_eq!(status, 202, "{body}");
    // Another room on the same agent holds too, and is told once.
    let mut other_events = alice.events("other").await;
    let notice = answer_starting(&alice, "other", "third", "⏸️").await;
    assert_eq!(notice, held_notice(reset, 1));
    let (status, body) = alice.post("other", "fourth").await;
    assert_eq!(status, 202, "{body}");

    let status = answer_starting(&alice, "limit", "!status", "📊").await;
    let held = format!(
        "held: usage limit (five_hour) until {}",
        rfc3339_utc_secs(reset)
    );
    assert!(
        status.contains(&format!("queue: 2 messages waiting · {held}")),
        "{status}"
    );
    assert_eq!(list_states(&g), [held.clone(), held]);
    assert!(now_secs() < reset, "the test was too slow to see the hold");

    // After the reset each room's queue runs as one turn, with no polling in between.
    limit_events.turn_end().await;
    other_events.turn_end().await;
    assert!(now_secs() >= reset);
    let limit = bot_texts(&alice, "limit").await;
    assert_eq!(limit.len(), 3, "{limit:?}");
    assert_eq!(limit[0], held_notice(reset, 1));
    assert!(limit[1].starts_with("📊"), "{limit:?}");
    assert!(answers(&limit[2], "second"), "{limit:?}");
    let other = bot_texts(&alice, "other").await;
    assert_eq!(other.len(), 2, "{other:?}");
    assert_eq!(other[0], held_notice(reset, 1));
    assert!(answers(&other[1], "fourth"), "{other:?}");
    assert_eq!(list_states(&g), ["active", "active"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_hold_survives_a_restart() {
    let WebchatGateway {
        gateway: mut g,
        alice,
        ..
    } = WebchatGateway::start(&fake_agent_yaml(120), "");
    let reset = now_secs() + 20;
    let replies = alice
        .ask("kept", &format!("FAKE:ratelimit_until={reset} kept"))
        .await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, [held_notice(reset, 1)]);
    g.stop();
    let state = std::fs::read_to_string(g.runtime.join("state.local.json")).unwrap();
    assert!(state.contains("agent_holds"), "{state}");

    g.start_again();
    let alice = alice.fresh();
    let mut events = alice.events("kept").await;
    assert!(now_secs() < reset, "the restart took longer than the hold");
    let held = format!(
        "held: usage limit (five_hour) until {}",
        rfc3339_utc_secs(reset)
    );
    assert_eq!(list_states(&g), [held]);
    events.turn_end().await;
    assert!(now_secs() >= reset);
    // Answered once the limit reset; the restart did not tell the room again.
    let bot = bot_texts(&alice, "kept").await;
    assert_eq!(bot.len(), 2, "{bot:?}");
    assert_eq!(bot[0], held_notice(reset, 1));
    assert!(
        answers(&bot[1], &format!("FAKE:ratelimit_until={reset} kept")),
        "{bot:?}"
    );
    g.stop();
    let state = std::fs::read_to_string(g.runtime.join("state.local.json")).unwrap();
    assert!(!state.contains("agent_holds"), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resume_ends_a_hold_and_stop_all_drops_the_held_queue() {
    let WebchatGateway {
        gateway: g, alice, ..
    } = WebchatGateway::start(&fake_agent_yaml(120), "");
    let reset = now_secs() + 3600;
    let marker = format!("FAKE:ratelimit_until={reset} later");
    let replies = alice.ask("admin", &marker).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, [held_notice(reset, 1)]);

    // The retry after `resume` meets the limit again, and the room is told again.
    let mut events = alice.events("admin").await;
    let (code, out, err) = g.cli_text(&["resume", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("watcher 'all' resumed; agent 'fake' is no longer held for its usage limit"),
        "{out}"
    );
    events.turn_end().await;
    assert_eq!(
        bot_texts(&alice, "admin").await,
        [held_notice(reset, 1), held_notice(reset, 1)]
    );

    let stopped = answer_starting(&alice, "admin", "!stop all", "").await;
    assert_eq!(stopped, "Nothing is running. Dropped 1 queued message.");
    let status = answer_starting(&alice, "admin", "!status", "📊").await;
    assert!(
        status.contains("queue: 0 messages waiting · held: usage limit"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_met_the_limit_after_it_began_to_act_fails_rather_than_running_again() {
    let WebchatGateway {
        gateway: _g, alice, ..
    } = WebchatGateway::start(&fake_agent_yaml(120), "");
    let replies = alice.ask("mid", "FAKE:ratelimit_after_text go on").await;
    let all = replies
        .iter()
        .map(|m| m.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("partial answer"), "{all}");
    assert!(
        all.contains("❌ The agent has reached its usage limit; it resets at "),
        "{all}"
    );
    assert!(!all.contains("⏸️"), "not held for a re-run: {all}");
    // The agent is held all the same; the failed message is not waiting to run again.
    let status = answer_starting(&alice, "mid", "!status", "📊").await;
    assert!(
        status.contains("queue: 0 messages waiting · held: usage limit"),
        "{status}"
    );
}

/// A room switched to another agent (`!agent`) holds for that agent's limit: `list` shows
/// the hold on that room only, and the watcher's `resume` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_another_agent_shows_and_resumes_that_agents_hold() {
    let agents = format!(
        "{}  spare: {{type: claude, command: \"{}\", working_directory: \"{{work}}\", timeout: 120, warm: false}}\ndefault_agent: fake\n",
        fake_agent_yaml(120),
        crate::support::fake_agent::path()
    );
    let WebchatGateway {
        gateway: g, alice, ..
    } = WebchatGateway::start(&agents, "");
    let switched = answer_starting(&alice, "switched", "!agent spare", "🔀").await;
    assert!(switched.contains("`spare`"), "{switched}");
    let plain = alice.ask("plain", "hello").await;
    assert!(answers(&plain[0].text, "hello"), "{plain:?}");
    let reset = now_secs() + 3600;
    let replies = alice
        .ask("switched", &format!("FAKE:ratelimit_until={reset} x"))
        .await;
    assert_eq!(replies[0].text, held_notice(reset, 1));

    let (code, out, err) = g.cli_text(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = |room: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == room)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {room}: {rows}"))
    };
    assert_eq!(row("switched")["agent"], "spare", "{rows}");
    assert_eq!(
        row("switched")["state"],
        format!(
            "held: usage limit (five_hour) until {}",
            rfc3339_utc_secs(reset)
        )
    );
    assert_eq!(row("plain")["agent"], "fake", "{rows}");
    assert_eq!(row("plain")["state"], "active", "{rows}");

    let (code, out, err) = g.cli_text(&["resume", "all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("agent 'spare' is no longer held for its usage limit"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_warning_posts_nothing_and_status_shows_it() {
    let WebchatGateway {
        gateway: _g, alice, ..
    } = WebchatGateway::start(&fake_agent_yaml(120), "");
    let replies = alice.ask("warn", "FAKE:limit_warning hello").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        answers(&replies[0].text, "FAKE:limit_warning hello"),
        "{replies:?}"
    );
    let status = answer_starting(&alice, "warn", "!status", "📊").await;
    let line = status.lines().last().unwrap();
    let re = regex::Regex::new(
        r"^usage limit: allowed_warning \(five_hour\), resets at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
    )
    .unwrap();
    assert!(re.is_match(line), "{status}");
    assert!(
        status.contains("queue: 0 messages waiting · idle"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_claude_cli_at_its_usage_limit_holds_the_room_until_the_reset() {
    let Some(claude) = deps::claude() else {
        return;
    };
    // The real CLI starts in a few seconds on a loaded machine: the hold must outlast that.
    let reset = now_secs() + 25;
    let limited = json!({"scenarios": [{"match": "T-LIMIT", "error": {
    "status": 429, "type": "rate_limit_error", "message": "usage limit reached",
    "headers": {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": reset.to_string(),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
    }}}]});
    let llm = FakeLlm::start(limited).await;
    let home = tempfile::tempdir().unwrap();
    // Only a subscription login reports usage limits. Verified with 2.1.197: with an API
    // key the same answer gives no `rate_limit_event`; the CLI retries the 429 ten times
    // (about three minutes), then ends with a 429 result (a hold of unknown length).
    let mut env: Vec<(String, String)> = llm
        .claude_env()
        .into_iter()
        .filter(|(k, _)| k != "ANTHROPIC_API_KEY")
        .collect();
    env.push(("CLAUDE_CODE_OAUTH_TOKEN".into(), "sk-ant-oat01-test".into()));
    env.push(("HOME".into(), home.path().display().to_string()));
    let agents = format!(
        "default_agent: assistant\nagents:\n  assistant:\n    type: claude\n    command: \"{}\"\n    working_directory: \"{{work}}\"\n    timeout: 120\n    env: {}\n",
        claude.display(),
        agent_homes::env_yaml(&env),
    );
    let WebchatGateway {
        gateway: _g, alice, ..
    } = WebchatGateway::start(&agents, "");
    let replies = alice.ask("real", "T-LIMIT please answer").await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, [held_notice(reset, 1)]);
    assert!(now_secs() < reset, "the turn took longer than the hold");

    llm.set_script(json!({"default_text": "Answered after the reset."}));
    let mut events = alice.events("real").await;
    events.turn_end().await;
    assert!(now_secs() >= reset);
    assert_eq!(
        bot_texts(&alice, "real").await,
        [
            held_notice(reset, 1),
            "Answered after the reset.".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_request_during_a_hold_is_refused_at_once_with_the_reset_time() {
    let (web_port, api_port) = (ports::free_port(), ports::free_port());
    let yaml = format!(
        r#"
connectors:
  - {{name: local, type: webchat, listen: "127.0.0.1:{web_port}", allowed_users: {{owners: [alice]}}}}
  - {{name: api, type: openai, listen: "127.0.0.1:{api_port}", keys: {{alice: sk-alice-0123456789abcdef}}, allowed_users: {{owners: [alice]}}}}
{}
watchers:
  - {{name: all, connector: local, room: "*"}}
  - {{name: api, connector: api, room: fake, agent: fake}}
"#,
        fake_agent_yaml(120)
    );
    let g = Gateway::start(&yaml);
    let alice = WebClient::new(web_port, &g.token_for("alice"));
    let reset = now_secs() + 3600;
    let replies = alice
        .ask("chat", &format!("FAKE:ratelimit_until={reset} chat"))
        .await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, [held_notice(reset, 1)]);

    // The API room is on the same agent: its caller is not kept waiting for an hour.
    let body = json!({"model": "fake", "messages": [{"role": "user", "content": "hello"}]});
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/v1/chat/completions"))
        .bearer_auth("sk-alice-0123456789abcdef")
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["error"]["message"],
        format!(
            "⏸️ The agent has reached its usage limit (five_hour); it resets at {}. Please try again then.",
            rfc3339_utc_secs(reset)
        ),
        "{answer}"
    );
}
