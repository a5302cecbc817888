//! Room commands, budgets and the merge window end to end: web chat API → daemon → the real Claude Code CLI →
//! the fake model API. Each test asserts the exact messages the room gets; `!stop` is also
//! checked in /proc (no agent process left within 2 s).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::{claude_agent, ClaudeWebchat, Gateway, WebchatGateway};
use crate::support::fake_llm::FakeLlm;
use crate::support::webclient::WebClient;

/// Posts `text` (a command) and returns the bot's answer: the next bot message in the room.
async fn command(client: &WebClient, room: &str, text: &str) -> String {
    answer_starting(client, room, text, "").await
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

/// The room's session id as `list` shows it.
fn session_of(g: &Gateway, room: &str) -> Option<String> {
    let (code, out, err) = g.cli_text(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
        .and_then(|r| r["session_id"].as_str().map(str::to_string))
}

/// Processes whose working directory is `dir`: the agent CLI and whatever it started.
fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
        .collect()
}

/// The pid of the room's warm agent process (kept between turns, idle after a stop), if any.
fn warm_pid_of(g: &Gateway, room: &str) -> Option<u32> {
    let (code, out, err) = g.cli_text(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()?
        .iter()
        .find(|r| r["room"] == room)
        .and_then(|r| r["agent_pid"].as_u64())
        .map(|p| p as u32)
}

/// The ledger's sums for one room (`usage --json --by room`).
fn ledger_of(g: &Gateway, room: &str) -> Value {
    let out = g.cli(&["usage", "--json", "--by", "room"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["groups"][format!("local:{room}")].clone()
}

const OWNER_HELP: &str = "Commands (type them as a message, e.g. `!status`):
`!help` — this list
`!status` — agent, model, session, usage, queue, budget
`!stop` — interrupt the running turn (the session is kept; `!stop all` also drops queued messages)
`!new` — start a fresh session
`!model <name>` — use this model in this room (`!model default` to go back)
`!agent <name>` — switch this room to another agent
`!sessions` — this room's past sessions
`!resume <id>` — continue a past session, or one started in a terminal
`!budget` — budget figures of this room and its users (`!budget override`: guests may go past the budgets until the end of the UTC day; `!budget override off` ends that)";

const GUEST_HELP: &str = "Commands (type them as a message, e.g. `!status`):
`!help` — this list
`!status` — agent, model, session, usage, queue, budget
(the other commands are for owners)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_status_answer_everyone_and_owner_commands_refuse_guests() {
    let script = json!({"scenarios": [], "default_text": "Plain answer."});
    let Some(s) = ClaudeWebchat::start(script, "", "").await else {
        return;
    };
    assert_eq!(command(&s.alice, "st", "!help").await, OWNER_HELP);
    assert_eq!(command(&s.bob, "st", "/help").await, GUEST_HELP);
    for (text, name) in [
        ("!stop", "stop"),
        ("!new", "new"),
        ("!model claude-sonnet-4-5", "model"),
        ("!agent assistant", "agent"),
        ("!sessions", "sessions"),
        ("!resume abc", "resume"),
        ("!budget", "budget"),
        ("!budget override", "budget"),
    ] {
        assert_eq!(
            command(&s.bob, "st", text).await,
            format!("🔒 `!{name}` is for owners. Guests may use `!help` and `!status`.")
        );
    }
    assert_eq!(
        command(&s.bob, "st", "!status").await,
        "📊 Status of this room\nagent: `assistant` (claude)\nmodel: the agent's default\nsession: none yet (the next message starts one)\ncontext: nothing yet\nqueue: 0 messages waiting · idle\nprocess: cold (started for the next turn)"
    );
    // None of that reached the agent.
    assert!(s.llm.message_requests().is_empty());

    let replies = s.bob.ask("st", "a question").await;
    assert_eq!(replies.last().unwrap().text, "Plain answer.");
    let session = session_of(&s.gateway, "st").expect("a session");
    let ledger = ledger_of(&s.gateway, "st");
    let (input, output) = (
        ledger["input_tokens"].as_u64().unwrap(),
        ledger["output_tokens"].as_u64().unwrap(),
    );
    let calls = s.llm.message_requests().len() as u64;
    assert_eq!((input, output), (100 * calls, 20 * calls));
    let status = command(&s.alice, "st", "!status").await;
    let expected_head = format!(
        "📊 Status of this room\nagent: `assistant` (claude)\nmodel: the agent's default\nsession: `{session}` · 1 turn · {} tokens ({input} in, {output} out) · ${:.4}\ncontext: ",
        input + output,
        ledger["cost_usd"].as_f64().unwrap()
    );
    assert!(status.starts_with(&expected_head), "{status}");
    let context = status[expected_head.len()..].lines().next().unwrap();
    let re = regex::Regex::new(
        r"^(\d+% \(\d+ of \d+ tokens\)|\d+ tokens \(the agent did not report its window\))$",
    )
    .unwrap();
    assert!(re.is_match(context), "{context}");
    // After a turn the room's Claude process is kept warm: its pid and memory are shown.
    let process = regex::Regex::new(
        r"\nqueue: 0 messages waiting · idle\nprocess: warm \(pid \d+(, [0-9.]+ [KMG]?B)?\)$",
    )
    .unwrap();
    assert!(process.is_match(&status), "{status}");
}

/// A script whose scenario `marker` answers fast or, with `slow`, holds each event a minute.
/// Every turn after the first says the same: whether the stopped turn left a partial answer
/// in the session (the CLI may print one as it is stopped) does not change the next answer.
fn stop_script(marker: &str, slow: bool) -> Value {
    let delay = if slow { 60_000 } else { 0 };
    json!({"scenarios": [{"match": marker, "delay_ms": delay, "turns": [
        {"text": "First answer."}, {"text": LATER}, {"text": LATER}
    ]}], "default_text": "OK"})
}

const LATER: &str = "A later answer.";

/// The bot's messages in `room`, checked to be the first answer, what the CLI printed as it
/// was stopped (nothing, or the partial answer), the turn's cancel notice and `stopped`.
async fn assert_stopped_room(client: &WebClient, room: &str, stopped: &str) {
    let bot: Vec<String> = client
        .messages(room)
        .await
        .into_iter()
        .filter(|m| m.from == "bot")
        .map(|m| m.text)
        .collect();
    let tail = ["⚠️ The turn was cancelled.", stopped];
    let ok = bot.first().is_some_and(|t| t == "First answer.")
        && bot.ends_with(&tail.map(String::from))
        && (bot.len() == 3 || bot.len() == 4 && bot[1] == LATER);
    assert!(ok, "{bot:?}");
}

/// Starts a slow second turn in `room` and waits until the model has been asked for it, with
/// one more message queued behind it; the script is fast again for what follows (the
/// running call keeps its delay).
async fn slow_turn_with_one_queued(s: &ClaudeWebchat, room: &str, marker: &str) {
    let replies = s.alice.ask(room, &format!("{marker} one")).await;
    assert_eq!(replies.last().unwrap().text, "First answer.");
    s.llm.set_script(stop_script(marker, true));
    let (status, _) = s.alice.post(room, "two").await;
    assert_eq!(status, 202);
    s.llm
        .wait_for("the slow turn", Duration::from_secs(60), |r| {
            r.iter().any(|r| r.last_text().contains("two"))
        })
        .await;
    s.llm.set_script(stop_script(marker, false));
    let (status, _) = s.alice.post(room, "three").await;
    assert_eq!(status, 202);
    assert!(
        !processes_in(&s.gateway.work).is_empty(),
        "the agent is not running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_kills_the_agent_within_two_seconds_and_keeps_the_session() {
    let Some(s) = ClaudeWebchat::start(stop_script("CMD-STOPALL", false), "", "").await else {
        return;
    };
    slow_turn_with_one_queued(&s, "halt", "CMD-STOPALL").await;
    let session = session_of(&s.gateway, "halt");
    let asked = Instant::now();
    assert_eq!(
        answer_starting(&s.alice, "halt", "!stop all", "⏹️").await,
        "⏹️ Stopped the running turn; the session is kept. Dropped 1 queued message."
    );
    // Nothing of the agent is left, the room's warm CLI included (the answer comes once it
    // has exited; the loop allows for its process group being reaped).
    loop {
        let left = processes_in(&s.gateway.work);
        if left.is_empty() {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "agent processes left 2 s after !stop: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "!stop all: no agent process left after {:?}",
        asked.elapsed()
    );
    assert_eq!(warm_pid_of(&s.gateway, "halt"), None);
    assert_stopped_room(
        &s.alice,
        "halt",
        "⏹️ Stopped the running turn; the session is kept. Dropped 1 queued message.",
    )
    .await;
    assert_eq!(session_of(&s.gateway, "halt"), session);
    let status = command(&s.alice, "halt", "!status").await;
    assert!(
        status.ends_with("\nprocess: cold (started for the next turn)"),
        "{status}"
    );
    // The session goes on in a new process (`--resume`): the next message is answered in
    // it; "three" was dropped.
    let replies = s.alice.ask("halt", "four").await;
    assert_eq!(replies.last().unwrap().text, LATER);
    let history = s.llm.conversation("CMD-STOPALL");
    assert!(
        history.contains("CMD-STOPALL one") && history.contains("four"),
        "{history}"
    );
    assert!(!history.contains("three"), "{history}");
    assert_eq!(
        command(&s.alice, "halt", "!stop").await,
        "Nothing is running."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_queued_messages_and_they_are_answered_next() {
    let Some(s) = ClaudeWebchat::start(stop_script("CMD-STOP", false), "", "").await else {
        return;
    };
    slow_turn_with_one_queued(&s, "pause", "CMD-STOP").await;
    let stopped = "⏹️ Stopped the running turn; the session is kept. 1 queued message will be answered next (`!stop all` drops them).";
    assert_eq!(
        answer_starting(&s.alice, "pause", "!stop", "⏹️").await,
        stopped
    );
    // The queued message runs next, in the same session. With a warm agent that turn can
    // be over before an event stream opens, so wait for its answer in the room instead.
    let deadline = Instant::now() + Duration::from_secs(90);
    while s
        .alice
        .messages("pause")
        .await
        .last()
        .map(|m| m.text.as_str())
        != Some(LATER)
    {
        assert!(
            Instant::now() < deadline,
            "the queued message was not answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = s.llm.conversation("CMD-STOP");
    assert!(
        history.contains("CMD-STOP one") && history.contains("three"),
        "{history}"
    );
    let bot = s.alice.messages("pause").await;
    assert_eq!(bot.last().unwrap().text, LATER);
    let before = bot[..bot.len() - 1].iter().rev().find(|m| m.from == "bot");
    assert_eq!(before.unwrap().text, stopped, "{bot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_and_resume_move_between_sessions() {
    let script = json!({"scenarios": [
        {"match": "CMD-OLD", "turns": [{"text": "Old one."}, {"text": "Old two."}]},
        {"match": "CMD-FRESH", "turns": [{"text": "Fresh one."}]}
    ], "default_text": "OK"});
    let Some(s) = ClaudeWebchat::start(script, "", "").await else {
        return;
    };
    assert_eq!(
        command(&s.alice, "hop", "!sessions").await,
        "No current session: the next message starts one.\nNo earlier sessions in this room."
    );
    s.alice.ask("hop", "CMD-OLD start").await;
    let old = session_of(&s.gateway, "hop").unwrap();
    assert_eq!(
        command(&s.alice, "hop", "!new").await,
        "🆕 Session closed: the next message starts a new one."
    );
    assert_eq!(session_of(&s.gateway, "hop"), None);
    let replies = s.alice.ask("hop", "CMD-FRESH hello").await;
    assert_eq!(replies.last().unwrap().text, "Fresh one.");
    assert!(!s.llm.conversation("CMD-FRESH").contains("CMD-OLD"));
    let fresh = session_of(&s.gateway, "hop").unwrap();
    assert_ne!(fresh, old);

    let listed = command(&s.alice, "hop", "!sessions").await;
    let when = regex::Regex::new(r"left \d{4}-\d\d-\d\d \d\d:\d\d:\d\d").unwrap();
    assert_eq!(
        when.replace_all(&listed, "left <time>"),
        format!("Current session: `{fresh}` (assistant, 1 turn).\nEarlier sessions, newest first (`!resume <id>` continues one):\n• `{old}` — assistant, 1 turn, left <time>")
    );
    assert_eq!(
        command(&s.alice, "hop", &format!("!resume {old}")).await,
        format!("▶️ Resuming session `{old}` with `assistant`: the next message continues it.")
    );
    let replies = s.alice.ask("hop", "back again").await;
    assert_eq!(replies.last().unwrap().text, "Old two.");
    let history = s.llm.conversation("CMD-OLD");
    assert!(history.contains("back again"), "{history}");
    assert_eq!(session_of(&s.gateway, "hop").unwrap(), old);
    assert_eq!(
        command(&s.alice, "hop", &format!("!resume {fresh}")).await,
        format!("▶️ Resuming session `{fresh}` with `assistant`: the next message continues it.")
    );
    // The admin `reset` retires the session the same way.
    let (code, _, err) = s.gateway.cli_text(&["reset", "all"]);
    assert_eq!(code, 0, "{err}");
    let listed = command(&s.alice, "hop", "!sessions").await;
    assert!(
        listed.starts_with("No current session") && listed.contains(&format!("`{fresh}`")),
        "{listed}"
    );
    // An id from elsewhere (a terminal) pins the room.
    assert_eq!(
        command(&s.alice, "hop", "!resume 0a1b2c3d-0000-4000-8000-000000000000").await,
        "▶️ This room is now pinned to session `0a1b2c3d-0000-4000-8000-000000000000` of `assistant`: the next message continues it."
    );
    assert_eq!(
        session_of(&s.gateway, "hop").as_deref(),
        Some("0a1b2c3d-0000-4000-8000-000000000000")
    );
}

/// Two Claude agents on one fake model: `assistant` (the watchers') and `helper`, told apart
/// by their system prompts.
async fn two_agents(script: Value) -> Option<(WebchatGateway, FakeLlm, tempfile::TempDir)> {
    let agent = claude_agent(script, "    system_prompt: \"You are ASSISTANT-PROMPT.\"").await?;
    let helper = agent
        .yaml
        .split_once("agents:\n")
        .unwrap()
        .1
        .replacen("  assistant:", "  helper:", 1)
        .replace("ASSISTANT-PROMPT", "HELPER-PROMPT");
    let agents = format!("{}{helper}", agent.yaml);
    let web = WebchatGateway::start(&agents, "");
    Some((web, agent.llm, agent.home))
}

fn system_of(llm: &FakeLlm) -> String {
    llm.message_requests().last().unwrap().body["system"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_agent_are_chosen_per_room_and_survive_a_restart() {
    let Some((mut web, llm, _home)) = two_agents(json!({"default_text": "OK"})).await else {
        return;
    };
    assert_eq!(
        command(&web.alice, "mod", "!model claude-sonnet-4-5").await,
        "🧠 This room now uses the model `claude-sonnet-4-5`."
    );
    web.alice.ask("mod", "which model?").await;
    let last = llm.message_requests().last().unwrap().body.clone();
    assert_eq!(last["model"], "claude-sonnet-4-5", "{last}");
    // Another room keeps the default.
    web.alice.ask("other", "and here?").await;
    let other = llm.message_requests().last().unwrap().body.clone();
    assert_ne!(other["model"], "claude-sonnet-4-5", "{other}");

    assert_eq!(
        command(&web.alice, "mod", "!agent nobody").await,
        "⚠️ There is no agent `nobody` (configured: assistant, helper)."
    );
    assert_eq!(
        command(&web.alice, "mod", "!agent assistant").await,
        "This room already talks to `assistant`."
    );
    assert_eq!(
        command(&web.alice, "mod", "!agent helper").await,
        "🔀 This room now talks to `helper` (claude); the next message starts a new session."
    );
    web.alice.ask("mod", "who are you?").await;
    assert!(system_of(&llm).contains("HELPER-PROMPT"));

    web.gateway.stop();
    web.gateway.start_again();
    let alice = web.alice.fresh();
    let status = command(&alice, "mod", "!status").await;
    assert!(
        status.starts_with("📊 Status of this room\nagent: `helper` (claude)\nmodel: the agent's default\nsession: `"),
        "{status}"
    );
    assert_eq!(
        command(&alice, "mod", "!model claude-sonnet-4-5").await,
        "🧠 This room now uses the model `claude-sonnet-4-5`."
    );
    web.gateway.stop();
    web.gateway.start_again();
    let alice = alice.fresh();
    alice.ask("mod", "still you?").await;
    let last = llm.message_requests().last().unwrap().body.clone();
    assert_eq!(last["model"], "claude-sonnet-4-5", "{last}");
    assert!(system_of(&llm).contains("HELPER-PROMPT"));
    alice.ask("other", "and you?").await;
    assert!(system_of(&llm).contains("ASSISTANT-PROMPT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_the_daily_budget_is_refused_and_owners_still_answered() {
    let budgets = "budgets:\n  user: {daily: {tokens: 1}}\n  room: {monthly: {usd: 1000}}";
    let Some(mut s) =
        ClaudeWebchat::start(json!({"default_text": "Within budget."}), "", budgets).await
    else {
        return;
    };
    let replies = s.bob.ask("cash", "first").await;
    assert_eq!(replies.last().unwrap().text, "Within budget.");
    let calls = s.llm.message_requests().len() as u64;
    let tomorrow = {
        let now = time::OffsetDateTime::now_utc();
        let next = now.date().next_day().unwrap();
        next.midnight()
            .assume_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let refusal = format!(
        "💸 bob has used the daily budget ({} of 1 tokens); it renews at {tomorrow}. Owners' messages are still answered. An owner can let guests past it until the end of the UTC day with `!budget override`.",
        120 * calls
    );
    let mut events = s.bob.events("cash").await;
    let (status, _) = s.bob.post("cash", "second").await;
    assert_eq!(status, 202);
    let seen = events
        .until(Duration::from_secs(30), |e, d| {
            e == "message" && d["from"] == "bot"
        })
        .await;
    assert_eq!(seen.last().unwrap().1["text"], refusal.as_str());
    assert_eq!(
        s.llm.message_requests().len() as u64,
        calls,
        "the agent ran"
    );

    // The owner is not held to it (and the guest's refused message was not kept).
    let replies = s.alice.ask("cash", "owner here").await;
    assert_eq!(replies.last().unwrap().text, "Within budget.");
    assert!(!s.llm.conversation("owner here").contains("second"));

    // The totals come back from the ledger after a restart.
    s.gateway.stop();
    s.gateway.start_again();
    let bob = s.bob.fresh();
    assert_eq!(command(&bob, "cash", "third").await, refusal);
}

/// The next midnight UTC, as budgets and overrides name it.
fn tomorrow() -> String {
    let now = time::OffsetDateTime::now_utc();
    let next = now.date().next_day().unwrap();
    next.midnight()
        .assume_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The room's ledger totals: tokens (in + out, grouped in thousands) and the cost.
fn spent(g: &Gateway, room: &str) -> (u64, String, String) {
    let ledger = ledger_of(g, room);
    let tokens =
        ledger["input_tokens"].as_u64().unwrap() + ledger["output_tokens"].as_u64().unwrap();
    let grouped = tokens
        .to_string()
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(",");
    (
        tokens,
        grouped,
        format!("${:.2}", ledger["cost_usd"].as_f64().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_figures_and_an_owner_override_that_lets_a_guest_past_until_the_day_ends() {
    let budgets = "budgets:\n  user: {daily: {tokens: 1}}\n  room: {monthly: {tokens: 1000000}}";
    let Some(mut s) =
        ClaudeWebchat::start(json!({"default_text": "Within budget."}), "", budgets).await
    else {
        return;
    };
    let tomorrow = tomorrow();
    let replies = s.bob.ask("fund", "first").await;
    assert_eq!(replies.last().unwrap().text, "Within budget.");
    let (tokens, grouped, cost) = spent(&s.gateway, "fund");
    // Bob alone spent in the room: his figures are the room's.
    let status = command(&s.bob, "fund", "!status").await;
    assert!(
        status.ends_with(&format!("\nbudget: room {grouped} / 1,000,000 tokens this month · you {grouped} / 1 tokens today")),
        "{status}"
    );
    let refusal = |tokens: u64| {
        format!("💸 bob has used the daily budget ({tokens} of 1 tokens); it renews at {tomorrow}. Owners' messages are still answered. An owner can let guests past it until the end of the UTC day with `!budget override`.")
    };
    assert_eq!(command(&s.bob, "fund", "second").await, refusal(tokens));
    assert_eq!(
        command(&s.alice, "fund", "!budget").await,
        format!("💸 Budget figures (UTC day and month)\nthis room — today: {grouped} tokens, {cost} · this month: {grouped} / 1,000,000 tokens, {cost}\nbob — today: {grouped} / 1 tokens, {cost} · this month: {grouped} tokens, {cost}\noverride: none (`!budget override` lets guests past the budgets until the end of the UTC day)")
    );

    assert_eq!(
        command(&s.alice, "fund", "!budget override").await,
        format!("💸 Budget override: guests' messages in this room are answered past the room's and their own budgets until {tomorrow} (the end of the UTC day). `!budget override off` ends it sooner.")
    );
    let replies = s.bob.ask("fund", "third").await;
    assert_eq!(replies.last().unwrap().text, "Within budget.");
    let (_, grouped, _) = spent(&s.gateway, "fund");
    let status = command(&s.bob, "fund", "!status").await;
    assert!(
        status.ends_with(&format!("\nbudget: room {grouped} / 1,000,000 tokens this month · you {grouped} / 1 tokens today · override until {tomorrow}")),
        "{status}"
    );
    let report = command(&s.alice, "fund", "!budget").await;
    assert!(
        report.ends_with(&format!("\noverride: guests may go past the budgets until {tomorrow} (`!budget override off` ends it)")),
        "{report}"
    );

    // The override is in the room's state: it survives a restart.
    s.gateway.stop();
    s.gateway.start_again();
    let (bob, alice) = (s.bob.fresh(), s.alice.fresh());
    let replies = bob.ask("fund", "fourth").await;
    assert_eq!(replies.last().unwrap().text, "Within budget.");
    assert_eq!(
        command(&alice, "fund", "!budget override off").await,
        "💸 Budget override ended: guests' messages in this room are held to the budgets again."
    );
    assert_eq!(
        command(&alice, "fund", "!budget override off").await,
        "There is no budget override in this room."
    );
    let (tokens, ..) = spent(&s.gateway, "fund");
    assert_eq!(command(&bob, "fund", "fifth").await, refusal(tokens));
    let texts: String = s
        .llm
        .message_requests()
        .iter()
        .map(|r| r.message_texts().join("\n"))
        .collect();
    assert!(
        !texts.contains("second") && !texts.contains("fifth") && texts.contains("fourth"),
        "{texts}"
    );
}

/// `merge_window_ms`: messages arriving within the window of an idle room's first message
/// are one turn, run with the lowest role among their senders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_the_merge_window_are_one_turn_with_the_lowest_role() {
    let script = json!({"scenarios": [{"match": "CMD-MERGE", "turns": [{"text": "Both read."}]}]});
    let Some(mut s) = ClaudeWebchat::start(script, "", "merge_window_ms: 3000").await else {
        return;
    };
    let mut events = s.alice.events("merge").await;
    let (status, _) = s.alice.post("merge", "CMD-MERGE from the owner").await;
    assert_eq!(status, 202);
    let (status, _) = s.bob.post("merge", "and from the guest").await;
    assert_eq!(status, 202);
    events.turn_end().await;
    let calls: Vec<_> = s
        .llm
        .message_requests()
        .into_iter()
        .filter(|r| r.message_texts().concat().contains("CMD-MERGE"))
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let prompt = calls[0].last_text();
    assert!(
        prompt.contains("from: alice | role: owner")
            && prompt.contains("from: bob | role: guest")
            && prompt.contains("and from the guest"),
        "{prompt}"
    );
    let bot: Vec<String> = s
        .alice
        .messages("merge")
        .await
        .into_iter()
        .filter(|m| m.from == "bot")
        .map(|m| m.text)
        .collect();
    assert_eq!(bot, ["Both read."]);
    s.gateway.stop();
    let log = s.gateway.log();
    let started: Vec<&str> = log.lines().filter(|l| l.contains("turn started")).collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].contains("role=guest") && started[0].contains("messages=2"),
        "{started:?}"
    );
}

/// `rate_limit:` on a connector that has none of its own (the web chat): past the limit a
/// sender's messages are not processed, with one notice per window; commands still work and
/// other senders are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_over_the_rate_limit_gets_one_notice_and_commands_still_work() {
    let extra = "rate_limit: {messages: 2, window_secs: 600}";
    let Some(s) = ClaudeWebchat::start(json!({"default_text": "Taken."}), "", extra).await else {
        return;
    };
    for text in ["one", "two"] {
        let replies = s.bob.ask("fast", text).await;
        assert_eq!(replies.last().unwrap().text, "Taken.");
    }
    let notice = command(&s.bob, "fast", "three").await;
    let re = regex::Regex::new(r"^You are sending messages faster than I can take them\. Please wait about (\d+) s; messages until then are not processed\.$").unwrap();
    let wait: u64 = re.captures(&notice).expect(&notice)[1].parse().unwrap();
    assert!((500..=600).contains(&wait), "{notice}");
    let (status, body) = s.bob.post("fast", "four").await;
    assert_eq!(
        (status, body["ignored"].as_str()),
        (202, Some("rate limited"))
    );
    let status = command(&s.bob, "fast", "!status").await;
    assert!(status.starts_with("📊 Status of this room"), "{status}");
    let replies = s.alice.ask("fast", "the owner's turn").await;
    assert_eq!(replies.last().unwrap().text, "Taken.");
    let bot: Vec<String> = s
        .alice
        .messages("fast")
        .await
        .into_iter()
        .filter(|m| m.from == "bot")
        .map(|m| m.text)
        .collect();
    assert_eq!(bot.iter().filter(|t| **t == notice).count(), 1, "{bot:?}");
    assert_eq!(bot.len(), 5, "{bot:?}");
    let texts: String = s
        .llm
        .message_requests()
        .iter()
        .map(|r| r.message_texts().join("\n"))
        .collect();
    assert!(
        !texts.contains("three") && !texts.contains("four"),
        "{texts}"
    );
}

/// "Continue remotely": a session started with the CLI in a terminal (same working directory
/// and HOME) is pinned to a room with `!resume <id>`, and the room's next turn continues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_a_session_started_in_a_terminal() {
    let script = json!({"scenarios": [{"match": "CMD-TERMINAL", "turns": [
        {"text": "Answered in the terminal."}, {"text": "Answered in the room."}
    ]}]});
    let Some(agent) = claude_agent(script, "").await else {
        return;
    };
    let web = WebchatGateway::start(&agent.yaml, "");
    let id = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
    let claude = crate::support::deps::claude().unwrap();
    let out = tokio::process::Command::new(claude)
        .args(["-p", "--session-id", id, "CMD-TERMINAL from my terminal"])
        .envs(agent.llm.claude_env())
        .env("HOME", agent.home.path())
        .current_dir(&web.gateway.work)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Answered in the terminal."
    );
    assert_eq!(
        command(&web.alice, "remote", &format!("!resume {id}")).await,
        format!("▶️ This room is now pinned to session `{id}` of `assistant`: the next message continues it.")
    );
    let replies = web.alice.ask("remote", "and now from the room").await;
    assert_eq!(replies.last().unwrap().text, "Answered in the room.");
    let history = agent.llm.conversation("CMD-TERMINAL");
    assert!(
        history.contains("CMD-TERMINAL from my terminal")
            && history.contains("Answered in the terminal.")
            && history.contains("and now from the room"),
        "{history}"
    );
    assert_eq!(session_of(&web.gateway, "remote").as_deref(), Some(id));
}
