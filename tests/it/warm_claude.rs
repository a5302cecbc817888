//! Warm Claude processes with the real CLI against the fake model: a room's turns reuse one
//! `claude --input-format stream-json` process (same pid, the history in the model's
//! requests), approvals work inside a warm turn, a timeout interrupts the turn and keeps the
//! process, a process killed from outside is replaced and resumes the session, the budget
//! evicts without losing sessions, and a `kill -9` of the daemon leaves no agent behind while
//! the restarted daemon answers the message that was running.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{claude_agent, ClaudeWebchat, Gateway, WebchatGateway};
use crate::support::fake_llm::{bash_turn, FakeLlm};

/// `list --json`'s row for `room`.
fn row(g: &Gateway, room: &str) -> Value {
    let (code, out, err) = g.cli_text(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
        .unwrap_or_else(|| panic!("no row for {room}: {out}"))
        .clone()
}

/// The pid of the room's warm process, asserting that it is warm and has a resident size.
fn warm_pid(g: &Gateway, room: &str) -> u32 {
    let r = row(g, room);
    assert_eq!(r["process"], "warm", "{r}");
    assert!(r["rss_bytes"].as_u64().unwrap_or(0) > 1024 * 1024, "{r}");
    r["agent_pid"].as_u64().unwrap() as u32
}

/// The texts of all model calls of the conversation that `marker` started, last call last.
fn last_call_texts(llm: &FakeLlm) -> String {
    llm.message_requests()
        .last()
        .map(|r| r.message_texts().join("\n"))
        .unwrap_or_default()
}

/// Every live process whose environment carries the gateway's agent marker for `g`.
fn marked_processes(g: &Gateway) -> Vec<i32> {
    let marker = agent_chat_gateway::agent::process::agent_marker(&g.runtime);
    let needle = format!(
        "{}={marker}",
        agent_chat_gateway::agent::process::AGENT_MARKER_ENV
    );
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Zombies hold no memory and run nothing.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_message_reuses_the_process_and_sees_the_history() {
    let script = json!({"scenarios": [{"match": "WARM-REUSE", "turns": [
        {"text": "First, warm."}, {"text": "Second, same process."}
    ]}], "default_text": "OK"});
    let Some(s) = ClaudeWebchat::start(script, "", "").await else {
        return;
    };
    let replies = s.alice.ask("reuse", "WARM-REUSE one").await;
    assert_eq!(replies.last().unwrap().text, "First, warm.");
    let pid = warm_pid(&s.gateway, "reuse");
    let replies = s.alice.ask("reuse", "and two").await;
    assert_eq!(replies.last().unwrap().text, "Second, same process.");
    assert_eq!(
        warm_pid(&s.gateway, "reuse"),
        pid,
        "a new process served the turn"
    );
    let texts = last_call_texts(&s.llm);
    assert!(
        texts.contains("WARM-REUSE one") && texts.contains("First, warm."),
        "{texts}"
    );
    // The session the room stores is the one the process runs.
    let session = row(&s.gateway, "reuse")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(argv.contains(&"stream-json".to_string()), "{argv:?}");
    assert!(argv.contains(&session), "{argv:?} does not run {session}");
    // The plain `list` shows it too.
    let (_, out, _) = s.gateway.cli_text(&["list"]);
    assert!(out.contains(&format!("warm pid={pid}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_inside_a_warm_turn_works() {
    let script = json!({"scenarios": [{"match": "WARM-APPROVE", "turns": [
        {"text": "Hi."},
        bash_turn("Running it.", "touch approved.txt"),
        {"text": "after"},
    ]}]});
    let extra = "    permissions: {enabled: true, timeout: 60}";
    let Some(s) = ClaudeWebchat::start(script, extra, "").await else {
        return;
    };
    // A first turn without tools makes the process warm; the approval comes in the second.
    let replies = s.alice.ask("appr", "WARM-APPROVE hello").await;
    assert_eq!(replies.last().unwrap().text, "Hi.");
    let pid = warm_pid(&s.gateway, "appr");

    let mut events = s.alice.events("appr").await;
    s.alice.post("appr", "now go").await;
    let seen = events
        .until(Duration::from_secs(60), |e, d| {
            e == "message" && d["text"].as_str().is_some_and(|t| t.starts_with("🔐"))
        })
        .await;
    let prompt = seen.last().unwrap().1["text"].as_str().unwrap().to_string();
    let id = regex::Regex::new(r"`\[([a-z0-9]{4})\]`")
        .unwrap()
        .captures(&prompt)
        .unwrap_or_else(|| panic!("{prompt}"))[1]
        .to_string();
    assert!(!s.gateway.work.join("approved.txt").exists());
    s.alice.post("appr", &format!("approve {id}")).await;
    events
        .until(Duration::from_secs(60), |e, d| {
            e == "typing" && d["typing"] == false
        })
        .await;
    assert!(
        s.gateway.work.join("approved.txt").exists(),
        "approved call did not run"
    );
    assert_eq!(warm_pid(&s.gateway, "appr"), pid);
    let last = s.gateway.audit().pop().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["by"].as_str()),
        (Some("allow"), Some("alice"))
    );

    // The process's settings file (its secret) went at its first output line. Between
    // turns its secret names no turn (the relay's unit test: such a call is denied).
    let scratch = s.gateway.runtime.join("agents").join("assistant");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("hook-settings-")
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "settings files left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_interrupts_the_warm_turn_and_the_process_takes_the_next() {
    let turns =
        json!([{"text": "Hi."}, {"text": "a b c d e f g h i j k l m n o p q r s t u v w x y z"}]);
    let script =
        json!({"scenarios": [{"match": "WARM-SLOW", "turns": turns}], "default_text": "Back."});
    let Some(agent) = claude_agent(script.clone(), "").await else {
        return;
    };
    let web = WebchatGateway::start(&agent.yaml.replace("timeout: 120", "timeout: 12"), "");
    let (g, alice, llm) = (web.gateway, web.alice, agent.llm);
    let replies = alice.ask("slow", "WARM-SLOW hello").await;
    assert_eq!(replies.last().unwrap().text, "Hi.");
    let pid = warm_pid(&g, "slow");

    // The second turn streams one word every 1.5 s: far past the 12 s timeout.
    let mut slow = script.clone();
    slow["scenarios"][0]["delay_ms"] = json!(1500);
    llm.set_script(slow);
    let replies = alice.ask("slow", "please").await;
    let text = &replies.last().unwrap().text;
    assert!(text.contains("did not finish within 12 s"), "{text}");
    // Interrupted, not killed: the same process answers the next message.
    assert!(alive(pid), "the interrupted process was killed");
    llm.set_script(script);
    let replies = alice.ask("slow", "still there?").await;
    assert_eq!(replies.last().unwrap().text, "Back.");
    assert_eq!(warm_pid(&g, "slow"), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_process_killed_from_outside_is_replaced_and_the_session_resumes() {
    let script = json!({"scenarios": [{"match": "WARM-KILLED", "turns": [
        {"text": "Before the kill."}, {"text": "After the kill."}
    ]}]});
    let Some(s) = ClaudeWebchat::start(script, "", "").await else {
        return;
    };
    let replies = s.alice.ask("killed", "WARM-KILLED one").await;
    assert_eq!(replies.last().unwrap().text, "Before the kill.");
    let pid = warm_pid(&s.gateway, "killed");
    // Let the CLI write the turn to its transcript (it does so just after `result`).
    tokio::time::sleep(Duration::from_secs(1)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let replies = s.alice.ask("killed", "two").await;
    assert_eq!(replies.last().unwrap().text, "After the kill.");
    let texts = last_call_texts(&s.llm);
    assert!(texts.contains("Before the kill."), "{texts}");
    let new_pid = warm_pid(&s.gateway, "killed");
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_at_max_warm_agents_keeps_sessions() {
    let script = json!({"scenarios": [
        {"match": "WARM-A", "turns": [{"text": "A one."}, {"text": "A two."}]},
        {"match": "WARM-B", "turns": [{"text": "B one."}]},
    ]});
    let Some(s) = ClaudeWebchat::start(script, "    max_warm_agents: 1", "").await else {
        return;
    };
    let replies = s.alice.ask("ra", "WARM-A start").await;
    assert_eq!(replies.last().unwrap().text, "A one.");
    let a_pid = warm_pid(&s.gateway, "ra");
    let replies = s.alice.ask("rb", "WARM-B start").await;
    assert_eq!(replies.last().unwrap().text, "B one.");
    let b_pid = warm_pid(&s.gateway, "rb");
    // Room A's idle process made room for B's.
    assert_eq!(row(&s.gateway, "ra")["process"], "cold");
    tokio::time::timeout(Duration::from_secs(10), async {
        while alive(a_pid) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the evicted process is still running");

    let replies = s.alice.ask("ra", "again").await;
    assert_eq!(replies.last().unwrap().text, "A two.");
    let texts = last_call_texts(&s.llm);
    assert!(
        texts.contains("WARM-A start") && texts.contains("A one."),
        "{texts}"
    );
    warm_pid(&s.gateway, "ra");
    assert_eq!(row(&s.gateway, "rb")["process"], "cold");
    tokio::time::timeout(Duration::from_secs(10), async {
        while alive(b_pid) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the evicted process is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_warm_process_is_retired_and_the_room_resumes_its_session() {
    let script = json!({"scenarios": [{"match": "WARM-IDLE", "turns": [
        {"text": "Before idling."}, {"text": "After idling."}
    ]}]});
    let Some(s) = ClaudeWebchat::start(script, "    warm_idle_timeout: 2", "").await else {
        return;
    };
    let replies = s.alice.ask("idle", "WARM-IDLE one").await;
    assert_eq!(replies.last().unwrap().text, "Before idling.");
    let pid = warm_pid(&s.gateway, "idle");
    tokio::time::timeout(Duration::from_secs(20), async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the idle process was not retired");
    assert_eq!(row(&s.gateway, "idle")["process"], "cold");
    let replies = s.alice.ask("idle", "two").await;
    assert_eq!(replies.last().unwrap().text, "After idling.");
    let texts = last_call_texts(&s.llm);
    assert!(texts.contains("Before idling."), "{texts}");
    assert_ne!(warm_pid(&s.gateway, "idle"), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill_9_leaves_no_claude_behind_and_the_restart_answers_the_pending_message() {
    let script = json!({"scenarios": [{"match": "WARM-CRASH", "turns": [
        {"text": "Before the crash."}, {"text": "After the crash."}
    ]}]});
    let Some(mut s) = ClaudeWebchat::start(script.clone(), "", "").await else {
        return;
    };
    let replies = s.alice.ask("crash", "WARM-CRASH one").await;
    assert_eq!(replies.last().unwrap().text, "Before the crash.");
    warm_pid(&s.gateway, "crash");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The second turn hangs in the model: the daemon dies while the warm process runs it.
    let mut slow = script.clone();
    slow["scenarios"][0]["delay_ms"] = json!(60_000);
    s.llm.set_script(slow);
    let (status, body) = s.alice.post("crash", "two PENDING-AT-CRASH").await;
    assert_eq!(status, 202, "{body}");
    let two = body["id"].as_str().unwrap().to_string();
    // The warm process runs the turn (the model was asked with it)...
    s.llm
        .wait_for("the second turn", Duration::from_secs(60), |r| {
            r.iter()
                .any(|r| r.message_texts().join(" ").contains("PENDING-AT-CRASH"))
        })
        .await;
    // ...and the state file has the accepted message (writes are coalesced for 25 ms, so a
    // crash right at acceptance could precede it: not what this test is about).
    let state = s.gateway.runtime.join("state.local.json");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !std::fs::read_to_string(&state)
            .unwrap_or_default()
            .contains("PENDING-AT-CRASH")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the accepted message was never written to the state file");
    assert!(!marked_processes(&s.gateway).is_empty());
    let pid: i32 = std::fs::read_to_string(s.gateway.runtime.join("gateway.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while !marked_processes(&s.gateway).is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "agent processes outlived the daemon: {:?}",
        marked_processes(&s.gateway)
    );

    // Its agents die as soon as the daemon's threads do; its pid file lock goes with its
    // last thread.
    tokio::time::timeout(Duration::from_secs(10), async {
        while alive(pid as u32) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed daemon did not exit");
    s.llm.set_script(script);
    s.gateway.start_again();
    let alice = s.alice.fresh();
    // Subscribed before looking, so an answer is either there already or still to come.
    let mut events = alice.events("crash").await;
    if !alice
        .bot_messages_after("crash", &two)
        .await
        .iter()
        .any(|m| m.done)
    {
        let _ = tokio::time::timeout(Duration::from_secs(80), events.turn_end()).await;
    }
    let bot = alice.bot_messages_after("crash", &two).await;
    assert!(
        bot.iter().any(|m| m.text == "After the crash."),
        "the pending message was not answered: {bot:?}\n{}",
        s.gateway.log()
    );
    let texts = last_call_texts(&s.llm);
    assert!(texts.contains("Before the crash."), "{texts}");
}

/// One turn on `agent` in `room`; the outcome's text or the error.
async fn backend_turn(
    agent: &dyn agent_chat_gateway::agent::AgentBackend,
    room: &agent_chat_gateway::model::RoomKey,
    session: Option<String>,
    prompt: &str,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<agent_chat_gateway::model::TurnOutcome, agent_chat_gateway::agent::AgentError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let ctx = agent_chat_gateway::agent::TurnContext {
        events: tx,
        cancel,
        gate: None,
    };
    let request = agent_chat_gateway::model::TurnRequest {
        room: room.clone(),
        session,
        prompt: prompt.to_string(),
        role: agent_chat_gateway::model::Role::Owner,
        model: None,
        output_schema: None,
    };
    agent.run_turn(request, ctx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_interrupts_the_warm_turn_and_keeps_the_process() {
    use agent_chat_gateway::agent::claude::warm::{Pool, Relay, INTERRUPT_GRACE};
    use agent_chat_gateway::agent::claude::ClaudeBackend;
    use agent_chat_gateway::agent::{warm::Budget, AgentError};
    use tokio_util::sync::CancellationToken;

    let Some(claude) = crate::support::deps::claude() else {
        return;
    };
    let turns =
        json!([{"text": "Hi."}, {"text": "a b c d e f g h i j k l m n o p q r s t u v w x y z"}]);
    let script =
        json!({"scenarios": [{"match": "WARM-STOP", "turns": turns}], "default_text": "Back."});
    let llm = FakeLlm::start(script.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (home, work) = (dir.path().join("home"), dir.path().join("work"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut cfg = crate::support::agent_config(claude.to_str().unwrap(), &work);
    cfg.env = llm.claude_env();
    cfg.env.push(("HOME".into(), home.display().to_string()));
    let (tracker, shutdown) = (
        tokio_util::task::TaskTracker::new(),
        CancellationToken::new(),
    );
    let budget = Budget {
        max: 2,
        idle_timeout: Duration::from_secs(60),
    };
    let pool = Pool::new(
        budget,
        std::sync::Arc::new(Relay::default()),
        tracker.clone(),
        shutdown.clone(),
    );
    let agent = ClaudeBackend::new(&cfg, dir.path().join("scratch")).with_warm(pool.clone());
    let room = agent_chat_gateway::model::RoomKey::new("t", "stop");

    let first = backend_turn(
        &agent,
        &room,
        None,
        "WARM-STOP hi",
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(first.text, "Hi.");
    let pid = pool.process_info(&room).unwrap().pid;

    let mut slow = script.clone();
    slow["scenarios"][0]["delay_ms"] = json!(1500);
    llm.set_script(slow);
    let stop = CancellationToken::new();
    let calls = llm.message_requests().len();
    let running = {
        let (agent, room, session, stop) = (&agent, &room, first.session_id.clone(), stop.clone());
        async move { backend_turn(agent, room, session, "please", stop).await }
    };
    tokio::pin!(running);
    tokio::select! {
        r = &mut running => panic!("the turn ended before the stop: {r:?}"),
        _ = llm.wait_for("the second turn", Duration::from_secs(60), |r| r.len() > calls) => {}
    }
    let stopped_at = std::time::Instant::now();
    stop.cancel();
    let result = running.await;
    assert!(matches!(result, Err(AgentError::Cancelled)), "{result:?}");
    assert!(
        stopped_at.elapsed() < INTERRUPT_GRACE,
        "the interrupt took {:?}",
        stopped_at.elapsed()
    );
    // Interrupted in place: the same process takes the next turn.
    assert_eq!(pool.process_info(&room).map(|p| p.pid), Some(pid));
    // (Whether the cut turn is in the history depends on how far it got: not the point here.)
    llm.set_script(json!({"scenarios": [], "default_text": "Back."}));
    let third = backend_turn(
        &agent,
        &room,
        first.session_id.clone(),
        "still there?",
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(third.text, "Back.");
    assert_eq!(pool.process_info(&room).map(|p| p.pid), Some(pid));
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    assert!(!alive(pid), "the pool left its process running at shutdown");
}
