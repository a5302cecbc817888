//! `schedules:` end to end: the real daemon posts a schedule's prompt into its watcher's web
//! chat room as the configured user (with that user's role, and a note saying it was
//! scheduled), the real Claude CLI answers in the room, and `list` shows the next and the
//! last run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::daemon::{claude_agent, WebchatGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_posts_its_prompt_as_its_user_and_list_shows_its_runs() {
    let script = json!({"scenarios": [{"match": "SCHEDULED-REPORT", "turns": [
        {"text": "Scheduled answer from the fake model."}
    ]}], "default_text": "OK"});
    let Some(agent) = claude_agent(script, "").await else {
        return;
    };
    // Once a minute, a few seconds from now (a slow start only makes it a minute later).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let second = (now + 8) % 60;
    let extra = format!(
        "schedules:\n  - {{name: report, watcher: lobby, cron: \"{second} * * * * *\", timezone: utc, as: bob, prompt: \"SCHEDULED-REPORT status please\"}}"
    );
    let web = WebchatGateway::start_with_watchers(
        &agent.yaml,
        "watchers:\n  - {name: lobby, connector: local, room: lobby}",
        &extra,
    );
    let list = || {
        let (code, out, err) = web.gateway.cli_text(&["list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        rows[0]["schedules"][0].clone()
    };
    let before = list();
    assert_eq!(before["name"], "report");
    assert_eq!(before["cron"], format!("{second} * * * * *"));
    assert!(before["last"].is_null(), "{before}");
    let next = before["next"].as_str().unwrap().to_string();
    assert!(next.ends_with(&format!(":{second:02}Z")), "{next}");

    let mut events = web.alice.events("lobby").await;
    events.turn_end().await;
    let bot: Vec<String> = web
        .alice
        .messages("lobby")
        .await
        .into_iter()
        .filter(|m| m.from == "bot")
        .map(|m| m.text)
        .collect();
    assert_eq!(bot, ["Scheduled answer from the fake model."]);

    // The turn ran as bob, a guest, and the agent was told the message is scheduled.
    let calls = agent.llm.message_requests();
    let texts = calls.last().unwrap().message_texts().join("\n");
    assert!(texts.contains("SCHEDULED-REPORT status please"), "{texts}");
    assert!(texts.contains("from: bob | role: guest"), "{texts}");
    assert!(
        texts.contains("posted by the gateway's schedule 'report'"),
        "{texts}"
    );

    let after = list();
    assert!(
        after["last"].as_str().unwrap().ends_with(" posted"),
        "{after}"
    );
    let next_after = after["next"].as_str().unwrap();
    assert!(next_after > next.as_str(), "{next_after} after {next}");
    // No second run within the minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.llm.message_requests().len(), calls.len());
}
