//! The Rocket.Chat connector in-process against the fake Rocket.Chat server (DDP over a real
//! WebSocket + REST on 127.0.0.1), with a stand-in dispatcher (`support/dispatcher.rs`); and,
//! end to end through the daemon and the real Claude Code CLI, what only Rocket.Chat has
//! (threads). What every platform does alike is in `conformance/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::connector::rocketchat::config::{RocketChatAuth, RocketChatConfig};
use agent_chat_gateway::connector::rocketchat::{
    DdpTimings, RocketChatConnector, RocketChatTimings,
};
use agent_chat_gateway::connector::{Acceptance, Connector, ConnectorError, ConnectorEvent};
use agent_chat_gateway::model::{PostedMessage, ReplyTarget, RoomKind, RoomRef};
use serde_json::{json, Value};

use crate::support::dispatcher::ConnectorRun;
use crate::support::fake_rocketchat::{FakeRocketChat, BOT_ID, BOT_PASSWORD, BOT_USER};

const NAME: &str = "rc";
const LIMIT: Duration = Duration::from_secs(15);

fn config(fake: &FakeRocketChat) -> RocketChatConfig {
    RocketChatConfig {
        server: fake.url(),
        auth: RocketChatAuth::Password {
            username: BOT_USER.into(),
            password: BOT_PASSWORD.into(),
        },
        mention_all: false,
        reply_in_thread: false,
        require_mention: true,
        max_file_size: Some(10 * 1024 * 1024),
        download_timeout: Duration::from_secs(10),
        edit_interval: Duration::from_secs(1),
    }
}

fn fast() -> RocketChatTimings {
    RocketChatTimings {
        ddp: DdpTimings {
            ping_interval: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
        },
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
    }
}

type Harness = ConnectorRun<RocketChatConnector>;

/// Where the connector saves downloads.
fn attachments(state_dir: &Path) -> PathBuf {
    state_dir.join("attachments").join(NAME)
}

async fn start(
    cfg: RocketChatConfig,
    timings: RocketChatTimings,
    watched: &[&str],
    state_dir: &Path,
) -> Harness {
    let conn = Arc::new(
        RocketChatConnector::new(NAME, &cfg, state_dir)
            .unwrap()
            .with_timings(timings),
    );
    conn.prepare().await.expect("credentials accepted");
    ConnectorRun::start(conn, NAME, watched, state_dir, attachments(state_dir))
}

/// A fresh fake server and the connector connected to it, watching `#general`.
async fn connected_to_general() -> (FakeRocketChat, tempfile::TempDir, Harness) {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    (fake, dir, h)
}

fn target(room: &str) -> ReplyTarget {
    ReplyTarget::room(room)
}

#[tokio::test]
async fn mention_gate_flags_and_room_resolution() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    match h.other().await {
        ConnectorEvent::RoomResolved { spec, room } => {
            assert_eq!(spec, "#general");
            assert_eq!(
                room,
                RoomRef {
                    id: "GENERAL".into(),
                    name: "#general".into(),
                    kind: RoomKind::Group
                }
            );
        }
        other => panic!("{other:?}"),
    }
    h.connected().await;

    let id = fake.post("GENERAL", "alice", "@bot: please check the build");
    let m = h.expect_next(&id).await;
    assert!(m.addressed);
    assert_eq!(m.text, "please check the build");
    assert_eq!(m.sender.id, "u-alice");
    assert_eq!(m.sender.username, "alice");
    assert_eq!(m.sender.display_name, "Alice");
    assert_eq!(m.room.kind, RoomKind::Group);
    assert_eq!(m.thread, None);

    let id = fake.post("GENERAL", "bob", "just chatting, no mention");
    let m = h.expect_next(&id).await;
    assert!(!m.addressed, "not addressed without a mention");

    let id = fake.post("GENERAL", "bob", "@all standup in 5");
    assert!(
        !h.expect_next(&id).await.addressed,
        "@all needs mention_all: true"
    );

    let id = fake.post("GENERAL", "bob", "ask @botty instead");
    assert!(!h.expect_next(&id).await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn mention_all_when_configured() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.mention_all = true;
    let mut h = start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "bob", "@here who is around?");
    assert!(h.expect_next(&id).await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn direct_message_is_addressed_without_mention() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["@alice"], dir.path()).await;
    let room = match h.other().await {
        ConnectorEvent::RoomResolved { spec, room } => {
            assert_eq!(spec, "@alice");
            room
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(room.kind, RoomKind::Direct);
    assert_eq!(room.name, "@alice");
    h.connected().await;
    let id = fake.post(&room.id, "alice", "hi there");
    let m = h.expect_next(&id).await;
    assert!(m.addressed);
    assert_eq!(m.room.kind, RoomKind::Direct);
    assert_eq!(m.text, "hi there");
    // Replies in DMs carry no mention and go to the DM.
    let posted = h
        .connector
        .post(&m.reply_target(), "hello alice")
        .await
        .unwrap();
    assert!(!posted.id.is_empty());
    let posts = fake.state().posts();
    assert_eq!(
        posts.last().unwrap(),
        &json!({"roomId": room.id, "text": "hello alice"})
    );
    h.stop().await;
}

#[tokio::test]
async fn thread_reply_goes_to_the_same_thread() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let parent = fake.post("GENERAL", "alice", "a topic");
    h.expect_next(&parent).await;
    let id = fake.post_in_thread("GENERAL", "alice", "@bot what about this?", &parent);
    let m = h.expect_next(&id).await;
    assert_eq!(m.thread.as_deref(), Some(parent.as_str()));
    h.connector
        .post(&m.reply_target(), "in the thread")
        .await
        .unwrap();
    let post = fake.state().posts().last().cloned().unwrap();
    assert_eq!(
        post,
        json!({"roomId": "GENERAL", "text": "in the thread", "tmid": parent})
    );
    // The bot's own post comes back over DDP and is not delivered: the next delivery is
    // the marker.
    let marker = fake.post("GENERAL", "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn thread_reply_to_a_bot_message_addresses_the_bot() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let ours = h
        .connector
        .post(&target("GENERAL"), "an answer")
        .await
        .unwrap();
    let id = fake.post_in_thread("GENERAL", "alice", "follow-up without a mention", &ours.id);
    let m = h.expect_next(&id).await;
    assert!(m.addressed);
    assert_eq!(m.thread.as_deref(), Some(ours.id.as_str()));
    // A thread on someone else's message still needs a mention.
    let other = fake.post("GENERAL", "bob", "a topic");
    h.expect_next(&other).await;
    let id = fake.post_in_thread("GENERAL", "alice", "chatting in bob's thread", &other);
    assert!(!h.expect_next(&id).await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn reply_in_thread_opens_a_thread_on_the_trigger() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.reply_in_thread = true;
    let mut h = start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot top level");
    let m = h.expect_next(&id).await;
    h.connector.post(&m.reply_target(), "answer").await.unwrap();
    assert_eq!(fake.state().posts().last().unwrap()["tmid"], json!(id));
    h.stop().await;
}

#[tokio::test]
async fn streaming_reply_edits_in_place() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let caps = h.connector.capabilities();
    assert!(caps.edit);
    assert_eq!(caps.edit_interval, Duration::from_secs(1));
    let to = target("GENERAL");
    let posted: PostedMessage = h.connector.post(&to, "Working…").await.unwrap();
    h.connector
        .edit(&to, &posted, "Working… step 1")
        .await
        .unwrap();
    h.connector
        .edit(&to, &posted, "Done: all good")
        .await
        .unwrap();
    {
        let st = fake.state();
        let updates = st.updates();
        assert_eq!(updates.len(), 2);
        assert_eq!(
            updates[1],
            json!({"roomId": "GENERAL", "msgId": posted.id, "text": "Done: all good"})
        );
        assert_eq!(
            st.message(&posted.id).unwrap()["msg"],
            json!("Done: all good")
        );
    }
    // Edits of our own message come back over DDP; nothing is delivered for them.
    let marker = fake.post("GENERAL", "bob", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn long_reply_is_split_at_the_servers_limit() {
    let fake = FakeRocketChat::start().await;
    fake.set_max_len(300);
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    assert_eq!(
        h.connector.capabilities().max_message_len,
        300,
        "read from settings.public"
    );
    let text: String = (0..60)
        .map(|i| format!("line {i} of a long answer\n"))
        .collect();
    h.connector
        .send_reply(&target("GENERAL"), &text)
        .await
        .unwrap();
    let posts = fake.state().posts();
    assert!(posts.len() >= 5, "{} parts", posts.len());
    let mut joined = String::new();
    for p in &posts {
        let t = p["text"].as_str().unwrap();
        assert!(t.chars().count() <= 300);
        joined.push_str(t);
        joined.push('\n');
    }
    assert_eq!(joined.trim_end(), text.trim_end());
    // An over-long edit is cut to the limit instead of being refused by the server.
    let posted = h.connector.post(&target("GENERAL"), "short").await.unwrap();
    h.connector
        .edit(&target("GENERAL"), &posted, &"x".repeat(1000))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn socket_dropped_mid_conversation_delivers_missed_messages_once() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let first = fake.post("GENERAL", "alice", "@bot one");
    h.expect_next(&first).await;

    fake.drop_sockets();
    let during: Vec<String> = (0..3)
        .map(|i| fake.post("GENERAL", "alice", &format!("@bot while down {i}")))
        .collect();
    h.disconnected().await;
    h.connected().await;
    for id in &during {
        h.expect_next(id).await;
    }
    let after = fake.post("GENERAL", "alice", "@bot after");
    h.expect_next(&after).await;
    assert!(
        fake.state().ddp_logins >= 2,
        "logged in again on the new socket"
    );
    h.stop().await;
}

#[tokio::test]
async fn server_restart_replays_from_history() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let first = fake.post("GENERAL", "alice", "@bot before");
    h.expect_next(&first).await;

    fake.stop().await;
    h.disconnected().await;
    let missed = fake.post("GENERAL", "bob", "@bot posted while the server was down");
    let sys = fake.post_system("GENERAL", "carol", "uj");
    fake.restart().await;
    h.connected().await;
    h.expect_next(&missed).await;
    let _ = sys;
    // The replay asked for what came after the last message it had seen.
    assert!(fake
        .state()
        .requests_to("/api/v1/channels.history")
        .iter()
        .any(|r| r.query.contains_key("oldest")));
    let after = fake.post("GENERAL", "alice", "@bot after restart");
    h.expect_next(&after).await;
    h.stop().await;
}

#[tokio::test]
async fn duplicate_frames_are_delivered_once() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let id = fake.post("GENERAL", "alice", "@bot once please");
    fake.redeliver(&id);
    fake.redeliver(&id);
    h.expect_next(&id).await;
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn edit_of_an_old_message_is_ignored() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let id = fake.post("GENERAL", "alice", "@bot original");
    assert_eq!(h.expect_next(&id).await.text, "original");
    fake.edit(&id, "@bot edited text");
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn system_messages_never_reach_the_dispatcher() {
    let (fake, _dir, mut h) = connected_to_general().await;
    fake.post_system("GENERAL", "carol", "uj");
    fake.post_system("GENERAL", "carol", "room_changed_topic");
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn expired_token_logs_in_again_once() {
    let (fake, _dir, mut h) = connected_to_general().await;
    let logins_before = fake.state().requests_to("/api/v1/login").len();
    fake.expire_tokens();
    h.connector
        .post(&target("GENERAL"), "still works")
        .await
        .unwrap();
    {
        let st = fake.state();
        assert_eq!(st.unauthorized, 1);
        assert_eq!(st.requests_to("/api/v1/login").len(), logins_before + 1);
        assert_eq!(st.posts().last().unwrap()["text"], json!("still works"));
    }
    // The DDP session survives; a new socket resumes with the renewed token. And when the
    // server forgets that one too, the connector logs in again before resuming.
    fake.expire_tokens();
    fake.drop_sockets();
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot after re-login");
    h.expect_next(&id).await;
    assert!(fake.state().requests_to("/api/v1/login").len() >= logins_before + 2);
    h.stop().await;
}

#[tokio::test]
async fn upload_uses_media_on_8x_and_rooms_upload_on_7x() {
    for (version, api) in [("8.5.1", "rooms.media"), ("7.6.0", "rooms.upload")] {
        let fake = FakeRocketChat::start().await;
        fake.set_version(version);
        let dir = tempfile::tempdir().unwrap();
        let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
        h.connected().await;
        let file = dir.path().join("report.txt");
        std::fs::write(&file, b"hello file").unwrap();
        let to = ReplyTarget {
            room: "GENERAL".into(),
            thread: Some("PARENT".into()),
            ..Default::default()
        };
        h.connector
            .upload(&to, &file, Some("the report"))
            .await
            .unwrap();
        {
            let st = fake.state();
            assert_eq!(st.uploads.len(), 1, "{version}");
            let up = &st.uploads[0];
            assert_eq!(up.api, api, "{version}");
            assert_eq!(up.room, "GENERAL");
            assert_eq!(up.name, "report.txt");
            assert_eq!(up.bytes, b"hello file");
            assert_eq!(up.msg.as_deref(), Some("the report"));
            assert_eq!(up.tmid.as_deref(), Some("PARENT"));
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn attachments_are_downloaded_or_noted_when_too_big() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.max_file_size = Some(1024);
    let mut h = start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;

    let small = fake.post_file(
        "GENERAL",
        "alice",
        "@bot see ../../evil name.txt",
        "../../evil name.txt",
        b"tiny",
    );
    let m = h.expect_next(&small).await;
    assert_eq!(m.text, "see ../../evil name.txt");
    assert_eq!(m.attachments.len(), 1, "{:?}", m.notes);
    let a = &m.attachments[0];
    assert_eq!(a.name, "../../evil name.txt");
    assert!(
        a.path.starts_with(attachments(dir.path())),
        "{} escapes the folder",
        a.path.display()
    );
    assert_eq!(std::fs::read(&a.path).unwrap(), b"tiny");

    let big = fake.post_file(
        "GENERAL",
        "alice",
        "@bot and this",
        "big.bin",
        &vec![7u8; 5000],
    );
    let m = h.expect_next(&big).await;
    assert!(m.attachments.is_empty());
    assert_eq!(
        m.notes,
        vec!["Attachment 'big.bin' skipped — 4.9 KB exceeds 1 KB limit".to_string()]
    );

    // Not addressed (mention required): nothing is fetched for a message the dispatcher
    // will ignore.
    let chatter = fake.post_file("GENERAL", "bob", "look", "cat.png", b"png");
    let m = h.expect_next(&chatter).await;
    assert!(!m.addressed && m.attachments.is_empty() && m.notes.is_empty());
    assert_eq!(
        fake.state()
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/file-upload/"))
            .count(),
        1
    );
    h.stop().await;
}

#[tokio::test]
async fn unknown_room_fails_its_watcher_only() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["#nope", "#general"], dir.path()).await;
    let mut failed = None;
    let mut resolved = None;
    while failed.is_none() || resolved.is_none() {
        match h.other().await {
            ConnectorEvent::RoomFailed { spec, error } => failed = Some((spec, error)),
            ConnectorEvent::RoomResolved { spec, room } => resolved = Some((spec, room)),
            _ => {}
        }
    }
    let (spec, error) = failed.unwrap();
    assert_eq!(spec, "#nope");
    assert!(error.contains("not found"), "{error}");
    assert_eq!(resolved.unwrap().1.id, "GENERAL");
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot still here");
    h.expect_next(&id).await;

    match h.connector.resolve_room("#nope").await {
        Err(ConnectorError::RoomNotFound(s)) => assert_eq!(s, "#nope"),
        other => panic!("{other:?}"),
    }
    match h.connector.resolve_room("@nobody").await {
        Err(ConnectorError::RoomNotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.connector.resolve_room("secret").await.unwrap().id,
        "SECRET"
    );
    assert_eq!(
        h.connector.resolve_room("GENERAL").await.unwrap().name,
        "#general"
    );
    h.stop().await;
}

#[tokio::test]
async fn room_the_bot_cannot_read_fails_its_watcher() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["#lounge"], dir.path()).await;
    assert!(matches!(
        h.other().await,
        ConnectorEvent::RoomResolved { .. }
    ));
    match h.other().await {
        ConnectorEvent::RoomFailed { spec, error } => {
            assert_eq!(spec, "#lounge");
            assert!(error.contains("Not allowed"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn half_open_socket_is_detected_by_missing_pongs() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut timings = fast();
    timings.ddp.ping_interval = Duration::from_millis(200);
    let mut h = start(config(&fake), timings, &["#general"], dir.path()).await;
    h.connected().await;
    fake.freeze_sockets();
    let detail = h.disconnected().await;
    assert!(detail.contains("no pong"), "{detail}");
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot back?");
    h.expect_next(&id).await;
    h.stop().await;
}

#[tokio::test]
async fn rejected_message_is_replayed_after_reconnect() {
    let (fake, _dir, mut h) = connected_to_general().await;
    h.answer_next(Acceptance::Rejected("queue full".into()));
    let id = fake.post("GENERAL", "alice", "@bot try me");
    h.expect_next(&id).await;
    let next = fake.post("GENERAL", "alice", "@bot next");
    h.expect_next(&next).await;
    fake.drop_sockets();
    h.connected().await;
    // Only the rejected message comes back; `next` was settled and is remembered.
    h.expect_next(&id).await;
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn daemon_restart_replays_what_arrived_while_down_exactly_once() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let old = fake.post("GENERAL", "alice", "@bot from before the first start");
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let first = fake.post("GENERAL", "alice", "@bot first");
    h.expect_next(&first).await;
    h.stop().await;

    let missed: Vec<String> = (0..3)
        .map(|i| fake.post("GENERAL", "bob", &format!("@bot missed {i}")))
        .collect();
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    for id in &missed {
        h.expect_next(id).await;
    }
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    let _ = old; // never delivered: the first start begins at the room's newest message
    h.stop().await;
}

#[tokio::test]
async fn watch_all_follows_rooms_the_bot_joins() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(config(&fake), fast(), &["*"], dir.path()).await;
    h.connected().await;
    let g = fake.post("SECRET", "alice", "@bot in the private group");
    let m = h.expect_next(&g).await;
    assert_eq!(m.room.name, "#secret");
    fake.add_bot_to("LOUNGE");
    // The join is handled before the next event: post after the bot's subscription exists.
    fake.wait_for("the bot to subscribe to LOUNGE", LIMIT, |s| {
        s.ddp_in
            .iter()
            .any(|f| f["msg"] == "sub" && f["params"][0] == "LOUNGE")
    })
    .await;
    let id = fake.post("LOUNGE", "alice", "@bot welcome");
    let m = h.expect_next(&id).await;
    assert_eq!(m.room.id, "LOUNGE");

    // Removed from the room: nothing more from it, the other rooms keep working, and a
    // reconnect does not try to resubscribe it.
    fake.remove_bot_from("LOUNGE");
    fake.post("LOUNGE", "alice", "@bot are you still here?");
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    fake.drop_sockets();
    h.connected().await;
    let subs_after: Vec<Value> = fake
        .state()
        .ddp_in
        .iter()
        .filter(|f| f["msg"] == "sub" && f["params"][0] == "LOUNGE")
        .cloned()
        .collect();
    assert_eq!(subs_after.len(), 1, "LOUNGE resubscribed: {subs_after:?}");
    h.stop().await;
}

#[tokio::test]
async fn typing_goes_over_ddp() {
    let (fake, _dir, h) = connected_to_general().await;
    h.connector.typing(&target("GENERAL"), true).await.unwrap();
    h.connector.typing(&target("GENERAL"), false).await.unwrap();
    let typing: Vec<Value> = fake.state().typing.clone();
    assert_eq!(
        typing,
        vec![
            json!(["GENERAL/user-activity", BOT_USER, ["user-typing"]]),
            json!(["GENERAL/user-activity", BOT_USER, []]),
        ]
    );
    let _ = BOT_ID;
    h.stop().await;
}

#[tokio::test]
async fn wrong_password_fails_prepare() {
    let fake = FakeRocketChat::start().await;
    let mut cfg = config(&fake);
    cfg.auth = RocketChatAuth::Password {
        username: BOT_USER.into(),
        password: "wrong".into(),
    };
    let conn = RocketChatConnector::new(NAME, &cfg, std::path::Path::new("/tmp")).unwrap();
    let err = conn.prepare().await.unwrap_err().to_string();
    assert!(err.contains("rejected the bot's credentials"), "{err}");
    assert!(
        !err.contains("wrong"),
        "the password must not be echoed: {err}"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let (fake, _dir, h) = connected_to_general().await;
    fake.fail_next("/api/v1/chat.postMessage", 429, Some(0));
    fake.fail_next("/api/v1/chat.postMessage", 502, None);
    h.connector
        .post(&target("GENERAL"), "eventually")
        .await
        .unwrap();
    assert_eq!(
        fake.state().requests_to("/api/v1/chat.postMessage").len(),
        3
    );
    assert_eq!(fake.state().posts().len(), 3, "every attempt is recorded");
    // A client error is not retried and names the action.
    fake.fail_next("/api/v1/chat.postMessage", 400, None);
    let err = h
        .connector
        .post(&target("GENERAL"), "refused")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chat.postMessage"), "{err}");
    assert_eq!(
        fake.state().requests_to("/api/v1/chat.postMessage").len(),
        4
    );
    h.stop().await;
}

#[tokio::test]
async fn attachment_download_timeout_becomes_a_note() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.download_timeout = Duration::from_millis(300);
    let mut h = start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    fake.stall_downloads();
    let id = fake.post_file("GENERAL", "alice", "@bot read this", "notes.txt", b"hello");
    let m = h.expect_next(&id).await;
    assert!(m.attachments.is_empty());
    assert_eq!(
        m.notes,
        vec![
            "Attachment 'notes.txt' failed to download (timed out) — file not available"
                .to_string()
        ]
    );
    let leftovers: Vec<_> = std::fs::read_dir(attachments(dir.path()).join("GENERAL"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    h.stop().await;
}

#[tokio::test]
async fn long_backlog_is_replayed_across_history_pages_in_order() {
    let (fake, dir, h) = connected_to_general().await;
    h.stop().await;
    // More than two pages of history (100 per page) arrive while the gateway is down.
    let missed: Vec<String> = (0..250)
        .map(|i| {
            fake.post(
                "GENERAL",
                if i % 2 == 0 { "alice" } else { "bob" },
                &format!("@bot backlog {i}"),
            )
        })
        .collect();
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    for id in &missed {
        h.expect_next(id).await;
    }
    h.connected().await;
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    let pages = fake.state().requests_to("/api/v1/channels.history").len();
    assert!(pages >= 4, "{pages} history requests (baseline + 3 pages)");
    h.stop().await;
}

#[tokio::test]
async fn personal_access_token_works_and_is_never_renewed_by_login() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake);
    cfg.auth = RocketChatAuth::Token {
        user_id: BOT_ID.into(),
        auth_token: fake.personal_access_token(),
    };
    let mut h = start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot via token");
    assert!(h.expect_next(&id).await.addressed);
    fake.expire_tokens();
    let err = h
        .connector
        .post(&target("GENERAL"), "no token")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not authorised"), "{err}");
    assert!(fake.state().requests_to("/api/v1/login").is_empty());
    h.stop().await;
}

#[tokio::test]
async fn server_down_at_start_is_retried_until_it_comes_up() {
    let fake = FakeRocketChat::start().await;
    fake.stop().await;
    let dir = tempfile::tempdir().unwrap();
    // `prepare` does not fail for a server that is merely unreachable.
    let mut h = start(config(&fake), fast(), &["#general"], dir.path()).await;
    let detail = h.disconnected().await;
    assert!(detail.contains("retrying"), "{detail}");
    fake.restart().await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot finally");
    h.expect_next(&id).await;
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// End to end: fake Rocket.Chat → the real daemon → the real Claude Code CLI → the fake model.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_question_in_a_thread_is_answered_in_that_thread() {
    use crate::conformance::{rocketchat::RID, Chat, RocketChat, TURN};
    // One session per room: the thread question is the second turn of the same scenario.
    let script = json!({"scenarios": [{"match": "RC-E2E", "turns": [
        {"text": "Top-level answer from the fake model."},
        {"text": "Thread answer from the fake model."}
    ]}], "default_text": "OK"});
    let Some(chat) = Chat::<RocketChat>::start(script, "").await else {
        return;
    };
    let fake = &chat.platform.fake;
    let asked = fake.post(RID, "alice", "@bot RC-E2E hello");
    let reply = fake
        .bot_message_containing(RID, "Top-level answer from the fake model.", TURN)
        .await;
    assert!(
        reply.get("tmid").is_none(),
        "top-level question, top-level answer: {reply}"
    );
    fake.post_in_thread(RID, "alice", "@bot RC-E2E-THREAD more please", &asked);
    let reply = fake
        .bot_message_containing(RID, "Thread answer from the fake model.", TURN)
        .await;
    assert_eq!(reply["tmid"], json!(asked), "{reply}");
    let prompt = chat.llm.message_requests().last().unwrap().last_text();
    assert!(prompt.contains(&format!("| thread: {asked}]")), "{prompt}");
}
