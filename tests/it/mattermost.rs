//! The Mattermost connector in-process against the fake Mattermost server (a real WebSocket +
//! REST API v4 on 127.0.0.1), with a stand-in dispatcher (`support/dispatcher.rs`). What every
//! platform does alike, end to end with the real Claude Code CLI, is in
//! `conformance/mattermost.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_chat_gateway::connector::mattermost::config::{MattermostConfig, Token};
use agent_chat_gateway::connector::mattermost::{
    MattermostConnector, MattermostTimings, WsTimings,
};
use agent_chat_gateway::connector::{Acceptance, Connector, ConnectorEvent, RunError};
use agent_chat_gateway::model::{ReplyTarget, RoomKind, RoomRef};
use serde_json::json;

use crate::support::dispatcher::ConnectorRun;
use crate::support::fake_mattermost::{FakeMattermost, ALICE_ID, BOB_ID, BOT_TOKEN, TOWN_SQUARE};

const NAME: &str = "mm";

fn config(fake: &FakeMattermost) -> MattermostConfig {
    MattermostConfig {
        server: fake.url(),
        token: Token(BOT_TOKEN.into()),
        team: None,
        reply_in_thread: false,
        require_mention: true,
        max_file_size: Some(1024 * 1024),
        download_timeout: Duration::from_secs(10),
        edit_interval: Duration::from_secs(1),
        max_message_len: 16383,
    }
}

fn fast() -> MattermostTimings {
    MattermostTimings {
        ws: WsTimings {
            ping_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
        },
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
    }
}

type Harness = ConnectorRun<MattermostConnector>;

fn attachments(state_dir: &Path) -> PathBuf {
    state_dir.join("attachments").join(NAME)
}

async fn start(cfg: MattermostConfig, watched: &[&str], state_dir: &Path) -> Harness {
    start_with(cfg, fast(), watched, state_dir).await
}

async fn start_with(
    cfg: MattermostConfig,
    timings: MattermostTimings,
    watched: &[&str],
    state_dir: &Path,
) -> Harness {
    let conn = Arc::new(
        MattermostConnector::new(NAME, &cfg, state_dir)
            .unwrap()
            .with_timings(timings),
    );
    conn.prepare().await.expect("token accepted");
    ConnectorRun::start(conn, NAME, watched, state_dir, attachments(state_dir))
}

async fn connected_to_town_square() -> (FakeMattermost, tempfile::TempDir, Harness) {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), &["#town-square"], dir.path()).await;
    h.connected().await;
    (fake, dir, h)
}

#[tokio::test]
async fn mention_gate_and_roles_by_user_id() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), &["#town-square", "#secret"], dir.path()).await;
    let mut resolved = Vec::new();
    for _ in 0..2 {
        match h.other().await {
            ConnectorEvent::RoomResolved { spec, room } => resolved.push((spec, Some(room))),
            ConnectorEvent::RoomFailed { spec, .. } => resolved.push((spec, None)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        resolved,
        [
            (
                "#town-square".to_string(),
                Some(RoomRef {
                    id: TOWN_SQUARE.into(),
                    name: "#town-square".into(),
                    kind: RoomKind::Group
                })
            ),
            // The bot is not a member of `secret`: that watcher stays inactive.
            ("#secret".to_string(), None),
        ]
    );
    h.connected().await;
    assert_eq!(fake.state().ws_logins, 1);
    assert_eq!(
        fake.state().ws_in[0],
        json!({"seq": 1, "action": "authentication_challenge", "data": {"token": BOT_TOKEN}})
    );

    let id = fake.post(TOWN_SQUARE, "alice", "@bot: please check the build");
    let m = h.expect_next(&id).await;
    assert!(m.addressed);
    assert_eq!(m.text, "please check the build");
    // Roles bind to the immutable 26-character user id, not the changeable username.
    assert_eq!(m.sender.id, ALICE_ID);
    assert_eq!(m.sender.id.len(), 26);
    assert_eq!(m.sender.username, "alice");
    assert_eq!(m.sender.display_name, "Alice");
    assert_eq!((m.room.kind, m.thread.clone()), (RoomKind::Group, None));

    // Addressed by the server's `mentions` list as well as by the text.
    let id = fake.post(TOWN_SQUARE, "bob", "could @bot have a look");
    let m = h.expect_next(&id).await;
    assert!(m.addressed);
    assert_eq!(m.sender.id, BOB_ID);
    assert_eq!(
        m.text, "could @bot have a look",
        "only a leading mention is cut"
    );
    // A mention key of the bot (no `@bot` in the text): only the event's `mentions` says so.
    fake.add_mention_key("bot", "assistant");
    let id = fake.post(TOWN_SQUARE, "bob", "assistant, are you there?");
    assert!(
        h.expect_next(&id).await.addressed,
        "addressed by `mentions`"
    );
    for text in [
        "just chatting",
        "ask @botty instead",
        "mail bot@bot.example",
    ] {
        let id = fake.post(TOWN_SQUARE, "bob", text);
        assert!(!h.expect_next(&id).await.addressed, "{text}");
    }
    // System posts and the bot's own posts never reach the dispatcher.
    fake.post_system(TOWN_SQUARE, "carol", "system_join_channel");
    h.connector
        .post(&ReplyTarget::room(TOWN_SQUARE), "my own post")
        .await
        .unwrap();
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn a_dm_needs_no_mention_and_threads_follow_root_id() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), &["@alice", "#town-square"], dir.path()).await;
    let dm = match h.other().await {
        ConnectorEvent::RoomResolved { spec, room } if spec == "@alice" => room,
        other => panic!("{other:?}"),
    };
    assert_eq!((dm.name.as_str(), dm.kind), ("@alice", RoomKind::Direct));
    h.connected().await;
    let id = fake.post(&dm.id, "alice", "hi there");
    let m = h.expect_next(&id).await;
    assert!(m.addressed, "a DM needs no mention");
    assert_eq!(m.room, dm);

    // A reply to a thread goes into it (root_id).
    let root = fake.post(TOWN_SQUARE, "alice", "a topic");
    h.expect_next(&root).await;
    let id = fake.post_in_thread(TOWN_SQUARE, "alice", "@bot what about this?", &root);
    let m = h.expect_next(&id).await;
    assert_eq!(m.thread.as_deref(), Some(root.as_str()));
    let posted = h
        .connector
        .post(&m.reply_target(), "in the thread")
        .await
        .unwrap();
    let body = fake
        .state()
        .requests_to("POST", "/api/v4/posts")
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(
        body,
        json!({"channel_id": TOWN_SQUARE, "message": "in the thread", "root_id": root})
    );
    // Answering in a thread the bot's post started addresses the bot without a mention.
    let id = fake.post_in_thread(TOWN_SQUARE, "bob", "thanks, and also…", &posted.id);
    assert!(h.expect_next(&id).await.addressed);
    let id = fake.post_in_thread(TOWN_SQUARE, "bob", "chatting in alice's thread", &root);
    assert!(!h.expect_next(&id).await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn replay_after_a_reconnect_delivers_every_post_exactly_once() {
    let (fake, dir, mut h) = connected_to_town_square().await;
    let first = fake.post(TOWN_SQUARE, "alice", "@bot one");
    h.expect_next(&first).await;

    // While the server is down, posts reach the gateway only by `?since=` replay.
    fake.stop().await;
    h.disconnected().await;
    let away: Vec<String> = (0..3)
        .map(|i| fake.post(TOWN_SQUARE, "alice", &format!("@bot while away {i}")))
        .collect();
    fake.restart().await;
    h.connected().await;
    for id in &away {
        h.expect_next(id).await;
    }
    let replays = fake
        .state()
        .requests_to("GET", &format!("/api/v4/channels/{TOWN_SQUARE}/posts"))
        .into_iter()
        .filter(|r| r.query.contains_key("since"))
        .count();
    assert!(replays >= 2, "replayed with ?since= on each connect");

    // A duplicate `posted` frame and an edit of a handled post deliver nothing.
    fake.redeliver(&away[2]);
    fake.edit(&away[1], "@bot while away 1 (edited)");

    // A rejected post stays replayable: it comes again after the next reconnect, and the
    // posts after it too, each once more only because the watermark froze before them.
    h.answer_next(Acceptance::Rejected("queue full".into()));
    let rejected = fake.post(TOWN_SQUARE, "alice", "@bot rejected once");
    h.expect_next(&rejected).await;
    fake.drop_sockets();
    h.disconnected().await;
    h.connected().await;
    h.expect_next(&rejected).await;
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;

    // A restart of the gateway on the same state file replays nothing already settled.
    let mut h = start(config(&fake), &["#town-square"], dir.path()).await;
    h.connected().await;
    let marker = fake.post(TOWN_SQUARE, "bob", "after the restart");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn a_half_open_socket_is_found_by_its_unanswered_ping_and_replaced() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut timings = fast();
    timings.ws.ping_interval = Duration::from_millis(300);
    let mut h = start_with(config(&fake), timings, &["#town-square"], dir.path()).await;
    h.connected().await;
    fake.freeze_sockets();
    let missed = fake.post(TOWN_SQUARE, "alice", "@bot sent into a dead socket");
    let why = h.disconnected().await;
    assert!(why.contains("unanswered"), "{why}");
    h.connected().await;
    h.expect_next(&missed).await;
    assert_eq!(fake.state().ws_logins, 2);
    h.stop().await;
}

#[tokio::test]
async fn watching_every_room_follows_new_channels_and_dms_across_a_restart() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), &["*"], dir.path()).await;
    h.connected().await;
    let id = fake.post(TOWN_SQUARE, "alice", "@bot in a channel nobody named");
    let m = h.expect_next(&id).await;
    assert_eq!(m.room.name, "#town-square");
    // A DM the bot never opened: named after the other user, no mention needed.
    let dm = h.connector.resolve_room("@bob").await.unwrap();
    let id = fake.post(&dm.id, "bob", "hello in private");
    let m = h.expect_next(&id).await;
    assert_eq!(
        (m.room.name.as_str(), m.room.kind),
        ("@bob", RoomKind::Direct)
    );
    assert!(m.addressed);
    h.stop().await;

    // Both channels are remembered: what they got while the gateway was down is replayed.
    let in_channel = fake.post(TOWN_SQUARE, "alice", "@bot while stopped");
    let in_dm = fake.post(&dm.id, "bob", "also while stopped");
    let mut h = start(config(&fake), &["*"], dir.path()).await;
    h.connected().await;
    let mut got = vec![h.message().await.id, h.message().await.id];
    got.sort();
    let mut want = vec![in_channel, in_dm];
    want.sort();
    assert_eq!(got, want);
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn more_posts_missed_than_one_since_answer_holds_are_all_replayed_in_order() {
    let (fake, _dir, mut h) = connected_to_town_square().await;
    let first = fake.post(TOWN_SQUARE, "alice", "@bot before the outage");
    h.expect_next(&first).await;
    fake.stop().await;
    h.disconnected().await;
    // The server answers `?since=` with at most 1000 posts.
    let missed: Vec<String> = (0..1150)
        .map(|i| fake.post(TOWN_SQUARE, "bob", &format!("missed {i}")))
        .collect();
    fake.restart().await;
    h.connected().await;
    for id in &missed {
        h.expect_next(id).await;
    }
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    let paged = fake
        .state()
        .requests_to("GET", &format!("/api/v4/channels/{TOWN_SQUARE}/posts"))
        .iter()
        .any(|r| r.query.get("per_page").is_some_and(|p| p == "200"));
    assert!(paged, "the capped answer was completed by paging");
    h.stop().await;
}

#[tokio::test]
async fn an_empty_channel_watched_from_the_start_replays_everything_missed() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No post yet: the baseline watermark is 0, which `?since=` cannot express.
    let mut h = start(config(&fake), &["#town-square"], dir.path()).await;
    h.connected().await;
    fake.stop().await;
    h.disconnected().await;
    let missed: Vec<String> = (0..70)
        .map(|i| fake.post(TOWN_SQUARE, "bob", &format!("missed {i}")))
        .collect();
    fake.restart().await;
    h.connected().await;
    for id in &missed {
        h.expect_next(id).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn a_post_edited_while_away_is_delivered_once_with_its_text() {
    let (fake, _dir, mut h) = connected_to_town_square().await;
    fake.stop().await;
    h.disconnected().await;
    let id = fake.post(TOWN_SQUARE, "alice", "@bot draft");
    fake.edit(&id, "@bot final wording");
    fake.restart().await;
    h.connected().await;
    assert_eq!(h.expect_next(&id).await.text, "final wording");
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn streaming_edits_typing_uploads_and_long_replies() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.max_message_len = 300;
    let mut h = start(cfg, &["#town-square"], dir.path()).await;
    h.connected().await;
    let to = ReplyTarget::room(TOWN_SQUARE);
    let caps = h.connector.capabilities();
    assert!(caps.edit);
    assert_eq!(caps.max_message_len, 300);

    let posted = h.connector.post(&to, "Working…").await.unwrap();
    assert_eq!(posted.id.len(), 26);
    h.connector
        .edit(&to, &posted, "Done: all good")
        .await
        .unwrap();
    {
        let st = fake.state();
        let patches = st.requests_to("PUT", &format!("/api/v4/posts/{}/patch", posted.id));
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].body, json!({"message": "Done: all good"}));
        assert_eq!(st.post(&posted.id).unwrap()["message"], "Done: all good");
    }

    h.connector.typing(&to, true).await.unwrap();
    h.connector.typing(&to, false).await.unwrap();
    assert_eq!(
        fake.state().typing,
        [json!({"channel_id": TOWN_SQUARE, "parent_id": ""})],
        "Mattermost has no 'stopped typing'"
    );

    let file = dir.path().join("report.txt");
    std::fs::write(&file, b"the report").unwrap();
    h.connector
        .upload(&to, &file, Some("here it is"))
        .await
        .unwrap();
    {
        let st = fake.state();
        assert_eq!(st.uploads.len(), 1);
        assert_eq!(st.uploads[0].channel, TOWN_SQUARE);
        assert_eq!(st.uploads[0].name, "report.txt");
        assert_eq!(st.uploads[0].bytes, b"the report");
        let post = st.bot_posts(TOWN_SQUARE).last().cloned().unwrap().clone();
        assert_eq!(post["message"], "here it is");
        assert_eq!(post["metadata"]["files"][0]["name"], "report.txt");
    }

    let text: String = (0..40)
        .map(|i| format!("line {i} of a long answer\n"))
        .collect();
    let before = fake.state().bot_posts(TOWN_SQUARE).len();
    h.connector.send_reply(&to, &text).await.unwrap();
    let parts: Vec<String> = fake.state().bot_posts(TOWN_SQUARE)[before..]
        .iter()
        .map(|p| p["message"].as_str().unwrap().to_string())
        .collect();
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.chars().count() <= 300));
    assert_eq!(parts.join("\n").trim_end(), text.trim_end());

    // Our own posts and edits come back over the socket; none is delivered.
    let marker = fake.post(TOWN_SQUARE, "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn a_rate_limited_post_waits_for_the_reset_and_succeeds() {
    let (fake, _dir, h) = connected_to_town_square().await;
    fake.fail_next("/api/v4/posts", 429, Some(1));
    let started = Instant::now();
    h.connector
        .post(&ReplyTarget::room(TOWN_SQUARE), "after the limit")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "X-Ratelimit-Reset honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(fake.state().requests_to("POST", "/api/v4/posts").len(), 2);
    assert_eq!(fake.state().bot_posts(TOWN_SQUARE).len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn attachments_of_an_addressed_post_are_downloaded() {
    let (fake, dir, mut h) = connected_to_town_square().await;
    let id = fake.post_file(TOWN_SQUARE, "alice", "@bot read this", "notes.txt", b"abc");
    let m = h.expect_next(&id).await;
    assert_eq!(m.attachments.len(), 1, "{:?}", m.notes);
    assert_eq!(m.attachments[0].name, "notes.txt");
    assert_eq!(std::fs::read(&m.attachments[0].path).unwrap(), b"abc");
    assert!(m.attachments[0].path.starts_with(attachments(dir.path())));
    let big = vec![b'x'; 2 * 1024 * 1024];
    let id = fake.post_file(TOWN_SQUARE, "alice", "@bot and this", "big.bin", &big);
    let m = h.expect_next(&id).await;
    assert!(m.attachments.is_empty());
    assert!(m.notes[0].contains("exceeds 1 MB limit"), "{:?}", m.notes);
    h.stop().await;
}

/// The official client (`@mattermost/client` 11.9.0) against the fake: every call it makes
/// for what the connector does (who am I, channels by name, DMs, posts in threads, patches,
/// `?since=`, uploads, downloads, the socket's challenge, events and ping) is answered the way
/// it expects, so the fake is not only consistent with our own client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_mattermost_client_agrees_with_the_fake() {
    let Some(modules) = crate::support::deps::mattermost_client() else {
        return;
    };
    let fake = FakeMattermost::start().await;
    let script = crate::support::deps::root().join("tests/it/mattermost_client/client.cjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .env("MM_MODULES", modules)
        .env("MM_URL", fake.url())
        .env("MM_TOKEN", BOT_TOKEN)
        .kill_on_drop(true)
        .output();
    let out = crate::support::within("the official client", out)
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Vec<String> = fake
        .state()
        .requests
        .iter()
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.query))
        .collect();
    assert!(
        out.status.success(),
        "{stdout}\n{}\nrequests: {seen:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["me"], "bot");
    assert_eq!(report["channel"], TOWN_SQUARE);
    let st = fake.state();
    assert_eq!(st.bot_posts(TOWN_SQUARE).len(), 3);
    assert_eq!(st.ws_logins, 1);
    assert_eq!(st.uploads[0].bytes, b"file body");
}

#[tokio::test]
async fn a_wrong_token_fails_prepare_and_run() {
    let fake = FakeMattermost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.token = Token("not-the-token".into());
    let conn = Arc::new(MattermostConnector::new(NAME, &cfg, dir.path()).unwrap());
    let err = conn.prepare().await.unwrap_err();
    assert!(matches!(err, RunError::Credentials(_)), "{err}");
    assert!(!err.to_string().contains("not-the-token"), "{err}");
}
