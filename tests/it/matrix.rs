//! The Matrix connector against a real Synapse (`support/synapse.rs`): in process with a
//! stand-in dispatcher (`support/dispatcher.rs`) for delivery — a refused message comes
//! back after a reconnect and nothing settled does, across a restart too; files both ways;
//! DMs without a mention — and end to end through the daemon and the real Claude Code CLI
//! for threads, streamed edits and a daemon restart. What every platform does alike
//! (mention gate, roles, approvals, long replies, reconnect) is in `conformance/matrix.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::connector::matrix::config::{MatrixAuth, MatrixConfig};
use agent_chat_gateway::connector::matrix::{MatrixConnector, MatrixTimings};
use agent_chat_gateway::connector::{Acceptance, Connector};
use agent_chat_gateway::model::{ReplyTarget, RoomKind};
use serde_json::{json, Value};

use crate::conformance::TURN;
use crate::support::daemon::{claude_agent, Gateway};
use crate::support::dispatcher::ConnectorRun;
use crate::support::fake_llm::{bash_turn, LoggedRequest};
use crate::support::synapse::{Account, Cut, MatrixUser, Synapse};

const NAME: &str = "mx";

fn config(homeserver: &str, bot: &Account) -> MatrixConfig {
    MatrixConfig {
        homeserver: homeserver.to_string(),
        user_id: bot.user_id.clone(),
        auth: MatrixAuth::Token(bot.token.clone()),
        require_mention: true,
        max_file_size: Some(1024),
        download_timeout: Duration::from_secs(10),
        edit_interval: Duration::from_millis(200),
        max_message_len: 300,
    }
}

/// Short long-polls and reconnects, so a cut connection is noticed and healed at once.
fn fast() -> MatrixTimings {
    MatrixTimings {
        sync_timeout: Duration::from_secs(5),
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
    }
}

type Harness = ConnectorRun<MatrixConnector>;

async fn run(cfg: &MatrixConfig, watched: &[&str], state: &Path) -> Harness {
    let conn = Arc::new(
        MatrixConnector::new(NAME, cfg, state)
            .unwrap()
            .with_timings(fast()),
    );
    conn.prepare().await.unwrap();
    let mut h = ConnectorRun::start(conn, NAME, watched, state, state.join("attachments"));
    h.connected().await;
    h
}

/// Synapse with `@owner` and `@guest` in the public room `#team:localhost` (a group of
/// three once the bot is in) and the bot registered.
struct Team {
    owner: MatrixUser,
    guest: MatrixUser,
    bot: Account,
    room: String,
    synapse: Synapse,
}

impl Team {
    async fn start() -> Option<Team> {
        let synapse = Synapse::start().await?;
        let owner = MatrixUser::new(&synapse, synapse.register("owner").await);
        let guest = MatrixUser::new(&synapse, synapse.register("guest").await);
        let bot = synapse.register("bot").await;
        let room = owner.create_room("team").await;
        guest.join(&room).await;
        Some(Team {
            owner,
            guest,
            bot,
            room,
            synapse,
        })
    }

    async fn wait_for_bot_in(&mut self, room: &str) {
        let bot = self.bot.user_id.clone();
        self.owner
            .wait_for("the bot to join", TURN, |u| u.saw_join(room, &bot))
            .await;
    }

    fn bot_messages(&self, room: &str) -> Vec<(String, Value)> {
        self.owner.messages_of(room, &self.bot.user_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_comes_back_after_a_reconnect_and_a_restart_and_nothing_settled_does() {
    let Some(team) = Team::start().await else {
        return;
    };
    let cut = Cut::start(team.synapse.port).await;
    let cfg = config(&cut.url(), &team.bot);
    let dir = tempfile::tempdir().unwrap();
    let mut h = run(&cfg, &["#team:localhost"], dir.path()).await;
    let bot = team.bot.user_id.as_str();
    let say = |text: &'static str| team.owner.say(&team.room, text, Some(bot));

    let m1 = say("first").await;
    let got = h.expect_next(&m1).await;
    assert_eq!(got.text, "first");
    assert!(got.addressed);
    assert_eq!(got.sender.id, "@owner:localhost");
    assert_eq!(got.room.kind, RoomKind::Group);
    assert_eq!(got.room.name, "#team:localhost");

    h.answer_next(Acceptance::Rejected("queue full".into()));
    let m2 = say("refused").await;
    h.expect_next(&m2).await;
    let m3 = say("third").await;
    h.expect_next(&m3).await;

    // A reconnect syncs again from the last position before the refusal: only the refused
    // message comes back.
    cut.cut();
    h.disconnected().await;
    cut.restore();
    h.connected().await;
    assert_eq!(h.expect_next(&m2).await.text, "refused");
    let m4 = say("fourth").await;
    h.expect_next(&m4).await;
    h.nothing_delivered();

    // A restart (new run on the same state file) delivers what came meanwhile, once.
    h.stop().await;
    let m5 = say("while stopped").await;
    let mut h = run(&cfg, &["#team:localhost"], dir.path()).await;
    h.expect_next(&m5).await;
    let m6 = say("after the restart").await;
    h.expect_next(&m6).await;
    h.nothing_delivered();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_one_sync_is_filled_from_history_in_order() {
    let Some(team) = Team::start().await else {
        return;
    };
    let cut = Cut::start(team.synapse.port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = run(
        &config(&cut.url(), &team.bot),
        &["#team:localhost"],
        dir.path(),
    )
    .await;
    let bot = team.bot.user_id.as_str();
    let first = team
        .owner
        .say(&team.room, "before the gap", Some(bot))
        .await;
    h.expect_next(&first).await;
    cut.cut();
    h.disconnected().await;
    // More than the 50 events one sync returns per room: `/sync` marks the timeline
    // `limited`, and the rest must come from `/messages`.
    let mut sent = Vec::new();
    for n in 0..70 {
        let text = format!("missed {n}");
        sent.push((team.owner.say(&team.room, &text, Some(bot)).await, text));
    }
    cut.restore();
    h.connected().await;
    for (id, text) in &sent {
        assert_eq!(&h.expect_next(id).await.text, text);
    }
    h.nothing_delivered();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_position_the_server_refuses_is_dropped_and_delivery_goes_on() {
    let Some(team) = Team::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // As after the homeserver's database was replaced: a token it never issued.
    std::fs::write(
        dir.path().join(format!("state.{NAME}.json")),
        json!({"version": 1, "connector": {"since": "s999999_bogus"}}).to_string(),
    )
    .unwrap();
    let mut h = run(
        &config(&team.synapse.url(), &team.bot),
        &["#team:localhost"],
        dir.path(),
    )
    .await;
    h.disconnected().await;
    h.connected().await;
    let bot = team.bot.user_id.as_str();
    let id = team.owner.say(&team.room, "still there?", Some(bot)).await;
    assert_eq!(h.expect_next(&id).await.text, "still there?");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_and_a_dm_needs_no_mention() {
    let Some(mut team) = Team::start().await else {
        return;
    };
    let cfg = config(&team.synapse.url(), &team.bot);
    let dir = tempfile::tempdir().unwrap();
    // Every room: the bot joins what it is invited to.
    let mut h = run(&cfg, &["*"], dir.path()).await;
    let bot = team.bot.user_id.clone();
    team.owner.invite(&team.room, &bot).await;
    let room = team.room.clone();
    team.wait_for_bot_in(&room).await;

    // A file with a caption that mentions the bot is downloaded for the agent; one over
    // the size limit becomes a note.
    let uri = team
        .owner
        .upload("notes.txt", "text/plain", b"hello file".to_vec())
        .await;
    let content = json!({"msgtype": "m.file", "body": format!("{bot} read this"),
        "filename": "notes.txt", "url": uri, "info": {"size": 10, "mimetype": "text/plain"},
        "m.mentions": {"user_ids": [bot]}});
    let id = team.owner.send(&room, content).await;
    let got = h.expect_next(&id).await;
    assert_eq!(got.text, "read this");
    assert_eq!(got.attachments.len(), 1, "{got:?}");
    assert_eq!(
        std::fs::read(&got.attachments[0].path).unwrap(),
        b"hello file"
    );
    let big = team
        .owner
        .upload("big.bin", "application/octet-stream", vec![0; 4096])
        .await;
    let content = json!({"msgtype": "m.file", "body": "big.bin", "url": big,
        "info": {"size": 4096}, "m.mentions": {"user_ids": [bot]}});
    let id = team.owner.send(&room, content).await;
    let got = h.expect_next(&id).await;
    assert!(got.attachments.is_empty());
    assert!(
        got.notes[0].contains("exceeds 1 KB limit"),
        "{:?}",
        got.notes
    );

    // A guest's message without a mention is delivered unaddressed (the dispatcher
    // ignores it); in a DM nothing needs a mention.
    let id = team.guest.say(&room, "just chatting", None).await;
    assert!(!h.expect_next(&id).await.addressed);
    let dm = team.owner.create_dm(&bot).await;
    team.wait_for_bot_in(&dm).await;
    let id = team.owner.say(&dm, "hello in private", None).await;
    let got = h.expect_next(&id).await;
    assert!(got.addressed);
    assert_eq!(got.room.kind, RoomKind::Direct);

    // Outbound: an upload is an m.file (m.image for images) whose body is the caption.
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "the report").unwrap();
    h.connector
        .upload(&ReplyTarget::room(dm.as_str()), &file, Some("here it is"))
        .await
        .unwrap();
    team.owner
        .wait_for("the uploaded file", TURN, |u| {
            u.messages_of(&dm, &bot)
                .iter()
                .any(|(_, e)| e["content"]["msgtype"] == "m.file")
        })
        .await;
    let (body, event) = team.bot_messages(&dm).pop().unwrap();
    assert_eq!(body, "here it is");
    assert_eq!(event["content"]["filename"], "report.txt");
    assert_eq!(event["content"]["info"]["mimetype"], "text/plain");
    let mxc = event["content"]["url"].as_str().unwrap();
    assert_eq!(team.owner.download(mxc).await, b"the report");

    // Resolving: an alias joins and names the room; junk is not a room.
    let r = h.connector.resolve_room("#team:localhost").await.unwrap();
    assert_eq!((r.id.as_str(), r.kind), (room.as_str(), RoomKind::Group));
    assert!(h
        .connector
        .resolve_room("#nowhere:localhost")
        .await
        .is_err());
    assert!(h.connector.resolve_room("team").await.is_err());
    h.nothing_delivered();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wait_out_the_servers_rate_limit_and_all_arrive_in_order() {
    // Two messages at once, then one a second: most of these posts are refused first.
    let Some(synapse) = Synapse::start_with_message_rate(1.0, 2).await else {
        return;
    };
    let mut owner = MatrixUser::new(&synapse, synapse.register("owner").await);
    let bot = synapse.register("bot").await;
    let room = owner.create_room("busy").await;
    owner.invite(&room, &bot.user_id).await;
    let dir = tempfile::tempdir().unwrap();
    let h = run(&config(&synapse.url(), &bot), &["*"], dir.path()).await;
    owner
        .wait_for("the bot to join", TURN, |u| u.saw_join(&room, &bot.user_id))
        .await;
    let to = ReplyTarget::room(room.as_str());
    let texts: Vec<String> = (1..=5).map(|n| format!("reply {n}")).collect();
    for text in &texts {
        h.connector.post(&to, text).await.unwrap();
    }
    owner
        .wait_for("the five replies", TURN, |u| {
            u.messages_of(&room, &bot.user_id).len() >= texts.len()
        })
        .await;
    let shown: Vec<String> = owner
        .messages_of(&room, &bot.user_id)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(shown, texts);
    let limited = synapse
        .log()
        .lines()
        .filter(|l| l.contains("/send/m.room.message/") && l.contains(" 429 "))
        .count();
    assert!(
        limited > 0,
        "the server never limited the bot: the test proves nothing"
    );
    h.stop().await;
}

/// The daemon with a Claude agent on the fake model, watching `#team:localhost`.
struct Daemon {
    team: Team,
    gateway: Gateway,
    llm: crate::support::fake_llm::FakeLlm,
    _home: tempfile::TempDir,
}

impl Daemon {
    /// `extra_agent` as for [`claude_agent`].
    async fn start(script: Value, extra_agent: &str) -> Option<Daemon> {
        let mut team = Team::start().await?;
        let agent = claude_agent(script, extra_agent).await?;
        let config = format!(
            "connectors:\n  - {{name: mx, type: matrix, homeserver: \"{}\", user_id: \"{}\", access_token: \"{}\", edit_interval_ms: 200, allowed_users: {{owners: [\"@owner:localhost\"], guests: [\"@guest:localhost\"]}}}}\n{}\nwatchers:\n  - {{name: team, connector: mx, room: \"#team:localhost\"}}\n",
            team.synapse.url(),
            team.bot.user_id,
            team.bot.token,
            agent.yaml,
        );
        let gateway = Gateway::start(&config);
        let room = team.room.clone();
        team.wait_for_bot_in(&room).await;
        Some(Daemon {
            team,
            gateway,
            llm: agent.llm,
            _home: agent.home,
        })
    }

    async fn ask(&self, text: &str) -> String {
        let bot = self.team.bot.user_id.as_str();
        self.team.owner.say(&self.team.room, text, Some(bot)).await
    }

    /// Waits until a bot message in the room shows `needle`; that message's event.
    async fn reply(&mut self, needle: &str) -> Value {
        let (room, bot) = (self.team.room.clone(), self.team.bot.user_id.clone());
        let find = |u: &MatrixUser| {
            u.messages_of(&room, &bot)
                .into_iter()
                .find(|(t, _)| t.contains(needle))
                .map(|(_, e)| e)
        };
        self.team
            .owner
            .wait_for(&format!("a reply showing {needle:?}"), TURN, |u| {
                find(u).is_some()
            })
            .await;
        find(&self.team.owner).unwrap()
    }

    fn call_answering(&self, text: &str) -> LoggedRequest {
        let calls: Vec<LoggedRequest> = self
            .llm
            .message_requests()
            .into_iter()
            .filter(|r| r.last_text().contains(text))
            .collect();
        assert_eq!(calls.len(), 1, "model calls answering {text:?}: {calls:?}");
        calls.into_iter().next().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_streams_by_edits_and_a_threaded_question_is_answered_in_its_thread() {
    // One scenario: the fake model follows a conversation (the room's session) from its
    // first message.
    let script = json!({"scenarios": [
        {"match": "MX-STREAM", "turns": [
            bash_turn("Looking around first.", "ls"),
            {"text": "Here is what I found."},
            {"text": "Answered in the thread."}
        ]}
    ]});
    // The tool must be one the agent has: without permissions, a rule that maps onto
    // `--allowedTools` (`ls.*` → `Bash(ls*)`), else the CLI is offered no tools at all, and a
    // call of a tool it was not offered ends its turn at once (Claude Code 2.1.197): the
    // answer after it would never come.
    let extra = "    owner_allowed_tools:\n      - {tool: Bash, params: \"ls.*\"}";
    let Some(mut d) = Daemon::start(script, extra).await else {
        return;
    };
    d.ask("MX-STREAM what is here?").await;
    let event = d.reply("Here is what I found.").await;
    // One message, first posted with the text before the tool call, then edited.
    let (room, bot) = (d.team.room.clone(), d.team.bot.user_id.clone());
    let first = event["content"]["body"].as_str().unwrap().to_string();
    assert!(first.contains("Looking around first."), "{first}");
    let id = event["event_id"].clone();
    let edits = d.team.owner.events[&room]
        .iter()
        .filter(|e| e["sender"] == bot.as_str() && e["content"]["m.relates_to"]["event_id"] == id)
        .filter(|e| e["content"]["m.relates_to"]["rel_type"] == "m.replace")
        .count();
    assert!(edits >= 1, "no m.replace edit of {id}");
    assert_eq!(d.team.bot_messages(&room).len(), 1);

    // A question in a thread is answered in that thread.
    let root = d.team.owner.say(&room, "a topic of its own", None).await;
    let content = json!({"msgtype": "m.text", "body": format!("{bot} MX-THREAD and this?"),
        "m.mentions": {"user_ids": [bot]},
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                         "m.in_reply_to": {"event_id": root}}});
    let asked = d.team.owner.send(&room, content).await;
    let event = d.reply("Answered in the thread.").await;
    let rel = &event["content"]["m.relates_to"];
    assert_eq!(rel["rel_type"], "m.thread", "{event}");
    assert_eq!(rel["event_id"], root.as_str());
    assert_eq!(rel["m.in_reply_to"]["event_id"], asked.as_str());
    let prompt = d.call_answering("MX-THREAD and this?").last_text();
    assert!(prompt.contains(&format!("thread: {root}")), "{prompt}");
    assert!(
        prompt.contains("from: @owner:localhost | role: owner"),
        "{prompt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_sent_while_the_daemon_is_stopped_is_answered_once_after_it_starts() {
    let answers: Vec<String> = (1..=4).map(|n| format!("Answer {n}.")).collect();
    let turns: Vec<Value> = answers.iter().map(|a| json!({"text": a})).collect();
    let script = json!({"scenarios": [{"match": "MX-RESTART", "turns": turns}]});
    let Some(mut d) = Daemon::start(script, "").await else {
        return;
    };
    d.ask("MX-RESTART first").await;
    d.reply(&answers[0]).await;
    d.gateway.stop();
    let away = ["asked while stopped", "asked while still stopped"];
    for text in away {
        d.ask(text).await;
    }
    d.gateway.start_again();
    let asked =
        |calls: &[LoggedRequest], text: &str| calls.iter().any(|c| c.last_text().contains(text));
    d.llm
        .wait_for("the messages sent while stopped", TURN, |calls| {
            away.iter().all(|t| asked(calls, t))
        })
        .await;
    let last = d.call_answering(away[1]).turn();
    d.reply(&answers[last]).await;
    d.ask("and after").await;
    d.llm
        .wait_for("the message sent after", TURN, |calls| {
            asked(calls, "and after")
        })
        .await;
    let after = d.call_answering("and after").turn();
    assert_eq!(after, last + 1, "a turn came between the last two");
    d.reply(&answers[after]).await;
    for text in ["MX-RESTART first", away[0], away[1]] {
        d.call_answering(text);
    }
    d.team.owner.sync_once(0).await;
    let shown: Vec<String> = d
        .team
        .bot_messages(&d.team.room.clone())
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(shown, answers[..=after]);
}
