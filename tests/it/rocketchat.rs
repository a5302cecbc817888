//! The Rocket.Chat connector in-process against the fake Rocket.Chat server (DDP over a real
//! WebSocket + REST on 127.0.0.1). A test task stands in for the dispatcher: it records what
//! the connector delivers and answers with scripted verdicts.
//!
//! "Nothing was delivered" is never asserted by waiting: the test posts a marker message
//! afterwards and checks that the marker is the next delivery.

use crate::support::fake_rocketchat;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_chat_gateway::connector::rocketchat::config::{RocketChatAuth, RocketChatConfig};
use agent_chat_gateway::connector::rocketchat::{
    DdpTimings, RocketChatConnector, RocketChatTimings,
};
use agent_chat_gateway::connector::{
    Acceptance, Connector, ConnectorContext, ConnectorError, ConnectorEvent, EventSink,
};
use agent_chat_gateway::model::{InboundMessage, PostedMessage, ReplyTarget, RoomKind, RoomRef};
use agent_chat_gateway::state::StateStore;
use fake_rocketchat::{FakeRocketChat, BOT_ID, BOT_PASSWORD, BOT_USER};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NAME: &str = "rc";
const LIMIT: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

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

#[derive(Debug)]
enum Other {
    Resolved(String, RoomRef),
    Failed(String, String),
    Connection(bool, String),
}

struct Harness {
    conn: Arc<RocketChatConnector>,
    cancel: CancellationToken,
    run: Option<JoinHandle<Result<(), agent_chat_gateway::connector::RunError>>>,
    dispatcher: JoinHandle<()>,
    inbox: mpsc::UnboundedReceiver<InboundMessage>,
    others: mpsc::UnboundedReceiver<Other>,
    verdicts: Arc<Mutex<VecDeque<Acceptance>>>,
    store: StateStore,
    attachments: PathBuf,
}

impl Harness {
    async fn start(
        cfg: RocketChatConfig,
        timings: RocketChatTimings,
        watched: &[&str],
        state_dir: &std::path::Path,
    ) -> Harness {
        let conn = Arc::new(
            RocketChatConnector::new(NAME, &cfg, state_dir)
                .unwrap()
                .with_timings(timings),
        );
        conn.prepare().await.expect("credentials accepted");
        let (tx, mut rx) = mpsc::channel::<(Arc<str>, ConnectorEvent)>(16);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (others_tx, others) = mpsc::unbounded_channel();
        let verdicts: Arc<Mutex<VecDeque<Acceptance>>> = Arc::default();
        let script = verdicts.clone();
        let dispatcher = tokio::spawn(async move {
            while let Some((from, event)) = rx.recv().await {
                assert_eq!(&*from, NAME);
                match event {
                    ConnectorEvent::Message { message, accepted } => {
                        let verdict = script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Acceptance::Queued);
                        let _ = inbox_tx.send(message);
                        if let Some(a) = accepted {
                            let _ = a.send(verdict);
                        }
                    }
                    ConnectorEvent::RoomResolved { spec, room } => {
                        let _ = others_tx.send(Other::Resolved(spec, room));
                    }
                    ConnectorEvent::RoomFailed { spec, error } => {
                        let _ = others_tx.send(Other::Failed(spec, error));
                    }
                    ConnectorEvent::Connection { connected, detail } => {
                        let _ = others_tx.send(Other::Connection(connected, detail));
                    }
                }
            }
        });
        let names: Vec<Arc<str>> = vec![NAME.into()];
        let (store, warnings) = StateStore::open(state_dir, &names);
        assert!(warnings.is_empty(), "{warnings:?}");
        let cancel = CancellationToken::new();
        let attachments = state_dir.join("attachments").join(NAME);
        let ctx = ConnectorContext {
            events: EventSink::new(NAME.into(), tx),
            cancel: cancel.clone(),
            watched: watched.iter().map(|s| s.to_string()).collect(),
            attachments_dir: attachments.clone(),
            store: store.connector_store(NAME.into()),
        };
        let run = tokio::spawn(conn.clone().run(ctx));
        Harness {
            conn,
            cancel,
            run: Some(run),
            dispatcher,
            inbox,
            others,
            verdicts,
            store,
            attachments,
        }
    }

    async fn message(&mut self) -> InboundMessage {
        within("a delivered message", self.inbox.recv())
            .await
            .expect("dispatcher alive")
    }

    /// The next message must be `id` (nothing else was delivered before it).
    async fn expect_next(&mut self, id: &str) -> InboundMessage {
        let m = self.message().await;
        assert_eq!(
            m.id, id,
            "unexpected delivery {:?} (text {:?})",
            m.id, m.text
        );
        m
    }

    async fn other(&mut self) -> Other {
        within("a connector event", self.others.recv())
            .await
            .expect("dispatcher alive")
    }

    /// Waits until the connector reports it is connected (skipping other events).
    async fn connected(&mut self) {
        loop {
            if let Other::Connection(true, _) = self.other().await {
                return;
            }
        }
    }

    async fn disconnected(&mut self) -> String {
        loop {
            if let Other::Connection(false, detail) = self.other().await {
                return detail;
            }
        }
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let run = self.run.take().unwrap();
        within("the connector to stop", run).await.unwrap().unwrap();
        self.store.flush().unwrap();
        self.dispatcher.abort();
    }
}

fn target(room: &str) -> ReplyTarget {
    ReplyTarget::room(room)
}

#[tokio::test]
async fn mention_gate_flags_and_room_resolution() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    match h.other().await {
        Other::Resolved(spec, room) => {
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
    let mut h = Harness::start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "bob", "@here who is around?");
    assert!(h.expect_next(&id).await.addressed);
    h.stop().await;
}

#[tokio::test]
async fn direct_message_is_addressed_without_mention() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["@alice"], dir.path()).await;
    let room = match h.other().await {
        Other::Resolved(spec, room) => {
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
    let posted = h.conn.post(&m.reply_target(), "hello alice").await.unwrap();
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let parent = fake.post("GENERAL", "alice", "a topic");
    h.expect_next(&parent).await;
    let id = fake.post_in_thread("GENERAL", "alice", "@bot what about this?", &parent);
    let m = h.expect_next(&id).await;
    assert_eq!(m.thread.as_deref(), Some(parent.as_str()));
    h.conn
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let ours = h.conn.post(&target("GENERAL"), "an answer").await.unwrap();
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
    let mut h = Harness::start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot top level");
    let m = h.expect_next(&id).await;
    h.conn.post(&m.reply_target(), "answer").await.unwrap();
    assert_eq!(fake.state().posts().last().unwrap()["tmid"], json!(id));
    h.stop().await;
}

#[tokio::test]
async fn streaming_reply_edits_in_place() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let caps = h.conn.capabilities();
    assert!(caps.edit);
    assert_eq!(caps.edit_interval, Duration::from_secs(1));
    let to = target("GENERAL");
    let posted: PostedMessage = h.conn.post(&to, "Working…").await.unwrap();
    h.conn.edit(&to, &posted, "Working… step 1").await.unwrap();
    h.conn.edit(&to, &posted, "Done: all good").await.unwrap();
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
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    assert_eq!(
        h.conn.capabilities().max_message_len,
        300,
        "read from settings.public"
    );
    let text: String = (0..60)
        .map(|i| format!("line {i} of a long answer\n"))
        .collect();
    h.conn.send_reply(&target("GENERAL"), &text).await.unwrap();
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
    let posted = h.conn.post(&target("GENERAL"), "short").await.unwrap();
    h.conn
        .edit(&target("GENERAL"), &posted, &"x".repeat(1000))
        .await
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn socket_dropped_mid_conversation_delivers_missed_messages_once() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
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
    let after = fake.post("GENERAL", "alice", "@bot after restart");
    h.expect_next(&after).await;
    h.stop().await;
}

#[tokio::test]
async fn duplicate_frames_are_delivered_once() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot original");
    assert_eq!(h.expect_next(&id).await.text, "original");
    fake.edit(&id, "@bot edited text");
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn system_messages_never_reach_the_dispatcher() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    fake.post_system("GENERAL", "carol", "uj");
    fake.post_system("GENERAL", "carol", "room_changed_topic");
    let marker = fake.post("GENERAL", "alice", "marker");
    h.expect_next(&marker).await;
    h.stop().await;
}

#[tokio::test]
async fn expired_token_logs_in_again_once() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let logins_before = fake.state().requests_to("/api/v1/login").len();
    fake.expire_tokens();
    h.conn
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
        let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
        h.connected().await;
        let file = dir.path().join("report.txt");
        std::fs::write(&file, b"hello file").unwrap();
        let to = ReplyTarget {
            room: "GENERAL".into(),
            thread: Some("PARENT".into()),
            ..Default::default()
        };
        h.conn.upload(&to, &file, Some("the report")).await.unwrap();
        {
            let st = fake.state();
            assert_eq!(st.uploads.len(), 1, "{version}");
            let up = &st.uploads[0];
            assert_eq!(up.api, api, "{version}");
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
    let mut h = Harness::start(cfg, fast(), &["#general"], dir.path()).await;
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
        a.path.starts_with(&h.attachments),
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
    let mut h = Harness::start(config(&fake), fast(), &["#nope", "#general"], dir.path()).await;
    let mut failed = None;
    let mut resolved = None;
    while failed.is_none() || resolved.is_none() {
        match h.other().await {
            Other::Failed(spec, error) => failed = Some((spec, error)),
            Other::Resolved(spec, room) => resolved = Some((spec, room)),
            Other::Connection(..) => {}
        }
    }
    let (spec, error) = failed.unwrap();
    assert_eq!(spec, "#nope");
    assert!(error.contains("not found"), "{error}");
    assert_eq!(resolved.unwrap().1.id, "GENERAL");
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot still here");
    h.expect_next(&id).await;

    match h.conn.resolve_room("#nope").await {
        Err(ConnectorError::RoomNotFound(s)) => assert_eq!(s, "#nope"),
        other => panic!("{other:?}"),
    }
    match h.conn.resolve_room("@nobody").await {
        Err(ConnectorError::RoomNotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(h.conn.resolve_room("secret").await.unwrap().id, "SECRET");
    assert_eq!(
        h.conn.resolve_room("GENERAL").await.unwrap().name,
        "#general"
    );
    h.stop().await;
}

#[tokio::test]
async fn room_the_bot_cannot_read_fails_its_watcher() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#lounge"], dir.path()).await;
    assert!(matches!(h.other().await, Other::Resolved(..)));
    match h.other().await {
        Other::Failed(spec, error) => {
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
    let mut h = Harness::start(config(&fake), timings, &["#general"], dir.path()).await;
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    h.verdicts
        .lock()
        .unwrap()
        .push_back(Acceptance::Rejected("queue full".into()));
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
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let first = fake.post("GENERAL", "alice", "@bot first");
    h.expect_next(&first).await;
    h.stop().await;

    let missed: Vec<String> = (0..3)
        .map(|i| fake.post("GENERAL", "bob", &format!("@bot missed {i}")))
        .collect();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
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
    let mut h = Harness::start(config(&fake), fast(), &["*"], dir.path()).await;
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    h.conn.typing(&target("GENERAL"), true).await.unwrap();
    h.conn.typing(&target("GENERAL"), false).await.unwrap();
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
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
    fake.fail_next("/api/v1/chat.postMessage", 429, Some(0));
    fake.fail_next("/api/v1/chat.postMessage", 502, None);
    h.conn.post(&target("GENERAL"), "eventually").await.unwrap();
    assert_eq!(
        fake.state().requests_to("/api/v1/chat.postMessage").len(),
        3
    );
    assert_eq!(fake.state().posts().len(), 3, "every attempt is recorded");
    // A client error is not retried and names the action.
    fake.fail_next("/api/v1/chat.postMessage", 400, None);
    let err = h
        .conn
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
    let mut h = Harness::start(cfg, fast(), &["#general"], dir.path()).await;
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
    let leftovers: Vec<_> = std::fs::read_dir(h.attachments.join("GENERAL"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    h.stop().await;
}

#[tokio::test]
async fn long_backlog_is_replayed_across_history_pages_in_order() {
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    h.connected().await;
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
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
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
    let mut h = Harness::start(cfg, fast(), &["#general"], dir.path()).await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot via token");
    assert!(h.expect_next(&id).await.addressed);
    fake.expire_tokens();
    let err = h
        .conn
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
    let mut h = Harness::start(config(&fake), fast(), &["#general"], dir.path()).await;
    let detail = h.disconnected().await;
    assert!(detail.contains("retrying"), "{detail}");
    fake.restart().await;
    h.connected().await;
    let id = fake.post("GENERAL", "alice", "@bot finally");
    h.expect_next(&id).await;
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// End to end: fake Rocket.Chat → the real daemon (started with `start`) → the real Claude Code
// CLI → the project's fake model API → the reply in the room; and an owner's `approve <id>`
// without a mention.
// ---------------------------------------------------------------------------------------------

use crate::support;

use crate::support::fake_llm::FakeLlm;

/// Claude turns take seconds (CLI start-up); this bounds one of them.
const TURN: Duration = Duration::from_secs(90);

struct E2e {
    gateway: support::Gateway,
    llm: FakeLlm,
    fake: FakeRocketChat,
    _home: tempfile::TempDir,
}

async fn e2e(script: Value, agent_extra: &str) -> Option<E2e> {
    let (llm, agents, home) = support::claude_agent(script, agent_extra).await?;
    let fake = FakeRocketChat::start().await;
    let config = format!(
        r##"
connectors:
  - name: rc
    type: rocketchat
    server: "{url}"
    username: {BOT_USER}
    password: "{BOT_PASSWORD}"
    allowed_users: {{owners: [alice], guests: [bob]}}
{agents}
watchers:
  - {{name: rc-general, connector: rc, room: "#general", agent: assistant}}
"##,
        url = fake.url(),
    );
    let gateway = support::Gateway::start(&config);
    // Subscribed: from here a post is delivered live or by the replay that follows.
    fake.wait_for("the daemon to subscribe to #general", TURN, |s| {
        s.ddp_in
            .iter()
            .any(|f| f["msg"] == "sub" && f["params"][0] == "GENERAL")
    })
    .await;
    Some(E2e {
        gateway,
        llm,
        fake,
        _home: home,
    })
}

/// The bot's message in `rid` whose (possibly edited) text contains `needle`.
async fn bot_message_containing(fake: &FakeRocketChat, rid: &str, needle: &str) -> Value {
    let find = |s: &fake_rocketchat::State| {
        s.messages
            .iter()
            .find(|m| {
                m["rid"] == rid
                    && m["u"]["username"] == BOT_USER
                    && m["msg"].as_str().is_some_and(|t| t.contains(needle))
            })
            .cloned()
    };
    fake.wait_for(&format!("a bot message containing {needle:?}"), TURN, |s| {
        find(s).is_some()
    })
    .await;
    let s = fake.state();
    find(&s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_mention_is_answered_by_claude_in_the_room_and_in_threads() {
    // One session per room: the thread question is the second turn of the same scenario.
    let script = json!({"scenarios": [{"match": "RC-E2E", "turns": [
        {"text": "Hello from the fake model via Rocket.Chat."},
        {"text": "Thread answer from the fake model."}
    ]}], "default_text": "OK"});
    let Some(s) = e2e(script, "").await else {
        return;
    };
    // Not addressed: no turn.
    s.fake
        .post("GENERAL", "alice", "just chatting RC-E2E-IGNORED");
    let asked = s.fake.post("GENERAL", "alice", "@bot RC-E2E hello");
    let reply = bot_message_containing(
        &s.fake,
        "GENERAL",
        "Hello from the fake model via Rocket.Chat.",
    )
    .await;
    assert!(
        reply.get("tmid").is_none(),
        "top-level question, top-level answer: {reply}"
    );
    let texts = s
        .llm
        .message_requests()
        .last()
        .unwrap()
        .message_texts()
        .join("\n");
    assert!(texts.contains("RC-E2E hello"), "{texts}");
    assert!(
        !texts.contains("@bot RC-E2E"),
        "the leading mention is stripped: {texts}"
    );
    assert!(texts.contains("from: alice | role: owner"), "{texts}");
    assert!(!texts.contains("RC-E2E-IGNORED"), "{texts}");

    s.fake
        .post_in_thread("GENERAL", "alice", "@bot RC-E2E-THREAD more please", &asked);
    let reply =
        bot_message_containing(&s.fake, "GENERAL", "Thread answer from the fake model.").await;
    assert_eq!(reply["tmid"], json!(asked), "{reply}");
    drop(s.gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_owner_approves_a_tool_call_without_a_mention() {
    let script = json!({"scenarios": [{"match": "RC-APPROVE", "turns": [
        {"text": "Creating the file.", "tool_calls": [{"name": "Bash", "input": {"command": "touch approved.txt"}}]},
        {"text": "File created after approval."}
    ]}]});
    let extra = "    permissions: {enabled: true, timeout: 60}";
    let Some(s) = e2e(script, extra).await else {
        return;
    };
    s.fake
        .post("GENERAL", "alice", "@bot RC-APPROVE make a file");
    let prompt = bot_message_containing(&s.fake, "GENERAL", "Permission required").await;
    let text = prompt["msg"].as_str().unwrap().to_string();
    let id = text
        .split("approve ")
        .nth(1)
        .and_then(|rest| rest.get(..4))
        .unwrap_or_else(|| panic!("no approval id in {text}"))
        .to_string();
    assert!(!s.gateway.work.join("approved.txt").exists());
    s.fake.post("GENERAL", "alice", &format!("approve {id}"));
    bot_message_containing(&s.fake, "GENERAL", "File created after approval.").await;
    assert!(
        s.gateway.work.join("approved.txt").exists(),
        "the approved tool did not run"
    );
    drop(s.gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_question_asked_while_the_server_was_down_is_answered_once() {
    let script = json!({"scenarios": [{"match": "RC-DOWN", "turns": [
        {"text": "Answer to the question asked during the outage."}
    ]}], "default_text": "OK"});
    let Some(s) = e2e(script, "").await else {
        return;
    };
    // Live first (the start-up replay has run), so the question can only arrive through a
    // new session after the outage.
    s.fake
        .wait_for("the daemon's start-up replay", TURN, |st| {
            st.requests_to("/api/v1/channels.history")
                .iter()
                .any(|r| r.query.contains_key("oldest"))
        })
        .await;
    s.fake.stop().await;
    let asked = s
        .fake
        .post("GENERAL", "alice", "@bot RC-DOWN are you there?");
    let logins = s.fake.state().ddp_logins;
    s.fake.restart().await;
    let reply = bot_message_containing(
        &s.fake,
        "GENERAL",
        "Answer to the question asked during the outage.",
    )
    .await;
    let now = s.fake.state().ddp_logins;
    assert!(now > logins, "the daemon reconnected: {logins} -> {now}");
    // A later question flushes anything still in flight: a duplicate delivery of the first
    // one would have produced a turn (and an answer) before this one.
    s.fake.post("GENERAL", "alice", "@bot RC-MARKER next");
    bot_message_containing(&s.fake, "GENERAL", "OK").await;
    let bot_texts: Vec<Value> = s
        .fake
        .state()
        .messages
        .iter()
        .filter(|m| m["u"]["username"] == BOT_USER)
        .map(|m| m["msg"].clone())
        .collect();
    assert_eq!(bot_texts, vec![reply["msg"].clone(), json!("OK")]);
    let turns_for_question = s
        .llm
        .message_requests()
        .iter()
        .filter(|r| {
            r.message_texts()
                .last()
                .is_some_and(|t| t.contains("RC-DOWN are you there?"))
        })
        .count();
    assert_eq!(turns_for_question, 1);
    let _ = asked;
    drop(s.gateway);
}
