//! The OneBot connector against the fake OneBot implementation, in process: the real
//! connector (reverse-WS server or forward client), a fake NapCat on 127.0.0.1, and a
//! test-side dispatcher that receives `ConnectorEvent`s and answers `Acceptance`s.

use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::config::UserRoles;
use agent_chat_gateway::connector::onebot::config::{GroupContext, Mode, OneBotConfig, RateLimit};
use agent_chat_gateway::connector::onebot::OneBotConnector;
use agent_chat_gateway::connector::{Acceptance, Connector, ConnectorError, ConnectorEvent};
use agent_chat_gateway::model::{InboundMessage, ReplyTarget, Role, RoomKind, RoomRef};
use base64::Engine;
use serde_json::{json, Value};

use crate::conformance::{Chat, OneBot, TURN};
use crate::support::deps;
use crate::support::dispatcher::ConnectorRun;
use crate::support::fake_onebot::{
    self, at_bot, event, fixture, group_msg, private_msg, rejection_status, text_of, Auth, Failure,
    FakeBot, FakeServer, GROUP, SELF, TOKEN, USER,
};
use crate::support::ports::free_port;

/// Compares an outbound frame with its recorded fixture (`check.py` validates the same
/// fixtures with NoneBot's models). `ACG_UPDATE_FIXTURES=1` rewrites the fixture instead.
fn assert_matches_fixture(name: &str, actual: &Value) {
    let path = format!(
        "{}/tests/fixtures/onebot/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var("ACG_UPDATE_FIXTURES").as_deref() == Ok("1") {
        std::fs::write(&path, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        return;
    }
    assert_eq!(actual, &fixture(name), "outbound frame differs from {path}");
}

/// The connector under test, run in process (`support/dispatcher.rs`).
struct Harness {
    run: ConnectorRun<OneBotConnector>,
    conn: Arc<OneBotConnector>,
    /// Where a fake bot connects (reverse mode) or the connector connects to (forward).
    url: String,
    dir: tempfile::TempDir,
}

fn base_config() -> OneBotConfig {
    let mut cfg = OneBotConfig::listening("127.0.0.1:0".parse().unwrap(), Some(TOKEN.into()));
    // Generous: these tests share the machine with end-to-end runs of real CLIs, and an
    // action must never time out unless a test means it to.
    cfg.action_timeout = Duration::from_secs(10);
    cfg
}

/// Everyone an owner: the connector's own tests are not about roles (the dispatcher's are),
/// except where group context filters by them ([`gateway_with_users`]).
async fn gateway_with(cfg: OneBotConfig, watched: &[&str]) -> Harness {
    let everyone = UserRoles {
        unknown: Some(Role::Owner),
        ..UserRoles::default()
    };
    gateway_with_users(cfg, watched, everyone).await
}

async fn gateway_with_users(cfg: OneBotConfig, watched: &[&str], users: UserRoles) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let conn = Arc::new(
        OneBotConnector::new("qq", &cfg, dir.path())
            .unwrap()
            .with_users(users),
    );
    conn.prepare().await.unwrap();
    let url = match &cfg.mode {
        Mode::Listen { path, .. } => format!("ws://{}{path}", conn.local_addr().unwrap()),
        Mode::Connect { url } => url.clone(),
    };
    let attachments = dir.path().join("attachments").join("qq");
    let run = ConnectorRun::start(conn.clone(), "qq", watched, dir.path(), attachments);
    Harness {
        run,
        conn,
        url,
        dir,
    }
}

async fn gateway(tweak: impl FnOnce(&mut OneBotConfig)) -> Harness {
    let mut cfg = base_config();
    tweak(&mut cfg);
    gateway_with(cfg, &["*"]).await
}

impl Harness {
    /// The next delivered message (accepted as queued unless scripted otherwise).
    async fn message(&mut self) -> InboundMessage {
        self.run.message().await
    }

    /// Waits for a connection report mentioning `needle`.
    async fn connection(&mut self, connected: bool, needle: &str) -> String {
        self.run.connection(connected, needle).await
    }

    /// A fake bot connected with the token and registered by the connector.
    async fn bot(&mut self, self_id: i64) -> FakeBot {
        let bot = FakeBot::connect(&self.url, self_id, Auth::Bearer(TOKEN.into()))
            .await
            .unwrap();
        self.connection(true, &self_id.to_string()).await;
        bot
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

#[tokio::test]
async fn handshake_accepts_every_token_form_and_rejects_others_before_upgrade() {
    let mut gw = gateway(|_| {}).await;
    for auth in [
        Auth::Bearer(TOKEN.into()),
        Auth::Token(TOKEN.into()),
        Auth::Query(TOKEN.into()),
    ] {
        let bot = FakeBot::connect(&gw.url, SELF, auth.clone())
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        gw.connection(true, "2559840652").await;
        bot.close();
        gw.connection(false, "2559840652").await;
    }
    let status = |r: Result<FakeBot, _>| rejection_status(&r.err().expect("must be rejected"));
    assert_eq!(
        status(FakeBot::connect(&gw.url, SELF, Auth::None).await),
        Some(401)
    );
    assert_eq!(
        status(FakeBot::connect(&gw.url, SELF, Auth::Bearer("wrong".into())).await),
        Some(403)
    );
    assert_eq!(
        status(FakeBot::connect(&gw.url, SELF, Auth::Query("s3cret-tokeN".into())).await),
        Some(403)
    );
    let no_id =
        FakeBot::connect_with(&gw.url, None, Auth::Bearer(TOKEN.into()), Some("Universal")).await;
    assert_eq!(status(no_id), Some(400));
    let bad_role = FakeBot::connect_with(
        &gw.url,
        Some(SELF),
        Auth::Bearer(TOKEN.into()),
        Some("Admin"),
    )
    .await;
    assert_eq!(status(bad_role), Some(400));
    let wrong_path = FakeBot::connect(
        &gw.url.replace("/onebot/v11/ws", "/ws"),
        SELF,
        Auth::Bearer(TOKEN.into()),
    )
    .await;
    assert_eq!(status(wrong_path), Some(404));
    assert!(gw.conn.connected_bots().is_empty());
    gw.stop().await;
}

#[test]
fn cq_strings_parse_like_nonebot() {
    // Expected segments were produced by NoneBot's `Message(str)` (scripts/onebot-conformance).
    for case in fixture("cq_cases").as_array().unwrap() {
        let cq = case["cq"].as_str().unwrap();
        let ours =
            serde_json::to_value(agent_chat_gateway::connector::onebot::cq::parse(cq)).unwrap();
        assert_eq!(ours, case["segments"], "CQ string {cq:?}");
    }
}

#[test]
fn fixtures_conform_to_nonebot_adapter() {
    let Some(python) = deps::nonebot_python() else {
        return;
    };
    let out = std::process::Command::new(python)
        .arg(deps::root().join("scripts/onebot-conformance/check.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn prepare_fails_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = OneBotConfig::listening(taken.local_addr().unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    let conn = OneBotConnector::new("qq", &cfg, dir.path()).unwrap();
    let err = conn.prepare().await.unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err:#}");
}

#[tokio::test]
async fn private_message_is_addressed_and_the_reply_quotes_it() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    bot.lifecycle_connect();
    bot.send_event(&fixture("heartbeat"));
    bot.send_event(&fixture("notice_group_recall"));
    bot.send_event(&fixture("request_friend"));
    bot.send_raw("{not json");
    bot.send_event(&fixture("private_message_array"));
    let msg = gw.message().await;
    assert!(msg.addressed);
    assert_eq!(
        msg.room,
        RoomRef {
            id: format!("private:{USER}"),
            name: format!("小明 ({USER})"),
            kind: RoomKind::Direct
        }
    );
    assert_eq!(msg.text, "hello bot");
    assert_eq!(msg.id, "1478353001");
    assert_eq!(
        (msg.sender.id.as_str(), msg.sender.display_name.as_str()),
        ("361390990", "小明")
    );

    gw.conn
        .send_reply(&msg.reply_target(), "hi there")
        .await
        .unwrap();
    let sent = bot.wait_action("send_private_msg").await;
    let mut frame = sent.clone();
    frame["echo"] = json!("<echo>");
    assert_matches_fixture("outbound_private_reply", &frame);
    gw.stop().await;
}

#[tokio::test]
async fn group_message_without_mention_is_delivered_unaddressed() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    gw.run
        .answer_next(Acceptance::Ignored("not addressed".into()));
    bot.send_event(&fixture("group_message_array"));
    let msg = gw.message().await;
    assert!(!msg.addressed);
    assert_eq!(msg.room.id, format!("group:{GROUP}"));
    assert_eq!(msg.room.kind, RoomKind::Group);
    assert_eq!(msg.text, "7");
    gw.stop().await;
}

#[tokio::test]
async fn group_mention_is_stripped_and_the_reply_quotes_and_mentions_the_sender() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    // The bot's own messages (also as message_sent) never reach the dispatcher.
    bot.send_event(&fixture("message_sent_self"));
    bot.send_event(&event(
        "group_message_array",
        json!({"user_id": SELF, "message_id": 5}),
    ));
    bot.send_event(&group_msg(
        100,
        USER,
        json!([{"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": " what is 2+2?"}}]),
    ));
    let msg = gw.message().await;
    assert_eq!(msg.id, "100", "own messages must be dropped");
    assert!(msg.addressed);
    assert_eq!(msg.text, "what is 2+2?");

    gw.conn.send_reply(&msg.reply_target(), "4").await.unwrap();
    let sent = bot.wait_action("send_group_msg").await;
    let mut frame = sent.clone();
    frame["echo"] = json!("<echo>");
    assert_matches_fixture("outbound_group_reply", &frame);
    gw.stop().await;
}

#[tokio::test]
async fn a_reply_chain_is_one_thread_rooted_at_its_first_message() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    // Messages from before this connection, known only through get_msg: a question (700)
    // and the bot's answer quoting it (701).
    bot.remember_message(
        700,
        4242,
        "bob",
        json!([{"type": "text", "data": {"text": "is CI red?"}}]),
    );
    bot.remember_message(
        701,
        SELF,
        "bot",
        json!([{"type": "reply", "data": {"id": "700"}}, {"type": "text", "data": {"text": "yes"}}]),
    );
    bot.send_event(&group_msg(702, USER, json!([{"type": "reply", "data": {"id": "701"}}, {"type": "text", "data": {"text": "why?"}}])));
    let msg = gw.message().await;
    assert_eq!(msg.thread.as_deref(), Some("700"), "walked up to the root");
    let history = gw
        .conn
        .thread_history(&format!("group:{GROUP}"), "700", 10)
        .await
        .unwrap();
    let said: Vec<(&str, &str)> = history
        .iter()
        .map(|m| (m.sender.username.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        said,
        [("4242", "is CI red?"), (USER.to_string().as_str(), "why?")],
        "the root (read once with get_msg), then what this connector saw of the chain"
    );
    let reads = |bot: &FakeBot| {
        bot.actions()
            .iter()
            .filter(|a| a["action"] == "get_msg" && a["params"]["message_id"] == 700)
            .count()
    };
    let before = reads(&bot);
    let again = gw
        .conn
        .thread_history(&format!("group:{GROUP}"), "700", 10)
        .await
        .unwrap();
    assert_eq!(again, history, "the same, from memory");
    assert_eq!(reads(&bot), before, "the root is read once");

    // The bot's answer to 702 continues the chain; a reply to it is in the chain too, known
    // without another get_msg.
    let to = ReplyTarget {
        thread: Some("700".into()),
        reply_to: Some("702".into()),
        ..ReplyTarget::room(format!("group:{GROUP}"))
    };
    let posted = gw.conn.post(&to, "because of the cache").await.unwrap();
    let walks = bot
        .actions()
        .iter()
        .filter(|a| a["action"] == "get_msg")
        .count();
    bot.send_event(&group_msg(703, USER, json!([{"type": "reply", "data": {"id": posted.id}}, {"type": "text", "data": {"text": "thanks"}}])));
    let msg = gw.message().await;
    assert_eq!(msg.thread.as_deref(), Some("700"));
    let after = bot
        .actions()
        .iter()
        .filter(|a| a["action"] == "get_msg")
        .count();
    assert_eq!(after, walks + 1, "only the quote itself is read");

    // A top-level message roots its own chain; it has no thread.
    bot.send_event(&at_bot(704, USER, "new question"));
    let msg = gw.message().await;
    assert_eq!(msg.thread, None);

    // A chain rooted at the bot's own message (a schedule's report) has it as its root.
    bot.remember_message(
        710,
        SELF,
        "bot",
        json!([{"type": "text", "data": {"text": "daily report: all green"}}]),
    );
    bot.send_event(&group_msg(711, USER, json!([{"type": "reply", "data": {"id": "710"}}, {"type": "text", "data": {"text": "really?"}}])));
    let msg = gw.message().await;
    assert_eq!(msg.thread.as_deref(), Some("710"));
    let history = gw
        .conn
        .thread_history(&format!("group:{GROUP}"), "710", 10)
        .await
        .unwrap();
    let said: Vec<(&str, bool)> = history.iter().map(|m| (m.text.as_str(), m.own)).collect();
    assert_eq!(
        said,
        [("daily report: all green", true), ("really?", false)]
    );

    // A reply segment naming another group's message brings none of its words here: not
    // as a quote, not as the thread's history.
    bot.remember_message_in(
        GROUP + 1,
        800,
        4242,
        "bob",
        json!([{"type": "text", "data": {"text": "OTHER-GROUP secret"}}]),
    );
    bot.send_event(&group_msg(705, USER, json!([{"type": "reply", "data": {"id": "800"}}, {"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": " what about it?"}}])));
    let msg = gw.message().await;
    assert!(!msg.text.contains("OTHER-GROUP"), "{}", msg.text);
    let thread = msg.thread.clone().expect("a reply is in a chain");
    let history = gw
        .conn
        .thread_history(&format!("group:{GROUP}"), &thread, 10)
        .await
        .unwrap();
    assert!(
        history.iter().all(|m| !m.text.contains("OTHER-GROUP")),
        "{history:?}"
    );

    // A private chat is one conversation: a reply there opens no thread.
    bot.remember_message_in(
        0,
        801,
        USER,
        "alice",
        json!([{"type": "text", "data": {"text": "earlier"}}]),
    );
    let mut reply = private_msg(706, USER, "and then?");
    reply["message"] = json!([{"type": "reply", "data": {"id": "801"}}, {"type": "text", "data": {"text": "and then?"}}]);
    bot.send_event(&reply);
    let msg = gw.message().await;
    assert_eq!(msg.thread, None, "{msg:?}");
    assert!(
        msg.text.contains("earlier"),
        "the peer's own words are quoted: {}",
        msg.text
    );
    // Someone else's private message (another DM of the bot) is not quoted into this one.
    bot.remember_message_in(
        0,
        802,
        4242,
        "bob",
        json!([{"type": "text", "data": {"text": "BOBS-DM secret"}}]),
    );
    let mut reply = private_msg(707, USER, "and this?");
    reply["message"] = json!([{"type": "reply", "data": {"id": "802"}}, {"type": "text", "data": {"text": "and this?"}}]);
    bot.send_event(&reply);
    let msg = gw.message().await;
    assert!(!msg.text.contains("BOBS-DM"), "{}", msg.text);
    // A group message whose group `get_msg` does not say (strict V11), never seen here, is
    // not quoted either.
    bot.remember_message_in(
        GROUP,
        803,
        4242,
        "bob",
        json!([{"type": "text", "data": {"text": "UNPLACED words"}}]),
    );
    bot.forget_group_of(803);
    bot.send_event(&group_msg(708, USER, json!([{"type": "reply", "data": {"id": "803"}}, {"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": " hm?"}}])));
    let msg = gw.message().await;
    assert!(!msg.text.contains("UNPLACED"), "{}", msg.text);
    gw.stop().await;
}

#[tokio::test]
async fn replying_to_a_bot_message_addresses_the_bot() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    // A message the bot sent before this connection: known only through get_msg.
    bot.remember_message(
        900,
        SELF,
        "bot",
        json!([{"type": "text", "data": {"text": "earlier answer"}}]),
    );
    // A message by someone else: replying to it is not addressing the bot.
    bot.remember_message(
        901,
        4242,
        "bob",
        json!([{"type": "text", "data": {"text": "bob said"}}]),
    );
    bot.send_event(&group_msg(101, USER, json!([{"type": "reply", "data": {"id": "900"}}, {"type": "text", "data": {"text": "why?"}}])));
    let msg = gw.message().await;
    assert!(msg.addressed);
    assert_eq!(
        msg.text,
        "[Quoted message from bot]\nearlier answer\n[End of quote]\nwhy?"
    );
    let get_msg = bot.wait_action("get_msg").await;
    assert_eq!(get_msg["params"]["message_id"], 900);

    gw.run
        .answer_next(Acceptance::Ignored("not addressed".into()));
    bot.send_event(&group_msg(102, USER, json!([{"type": "reply", "data": {"id": "901"}}, {"type": "text", "data": {"text": "agreed"}}])));
    let msg = gw.message().await;
    assert!(!msg.addressed);

    // A reply to a message the bot sent in this session is recognised from the cache.
    let posted = gw
        .conn
        .post(&ReplyTarget::room(format!("group:{GROUP}")), "fresh")
        .await
        .unwrap();
    bot.send_event(&group_msg(103, USER, json!([{"type": "reply", "data": {"id": posted.id}}, {"type": "text", "data": {"text": "more"}}])));
    let msg = gw.message().await;
    assert!(msg.addressed);
    assert!(msg.text.ends_with("more"), "{}", msg.text);
    gw.stop().await;
}

#[tokio::test]
async fn cq_string_messages_are_parsed_and_unescaped() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    bot.send_event(&fixture("group_message_cq_string"));
    let msg = gw.message().await;
    assert!(msg.addressed);
    assert_eq!(msg.text, "fix [bug] a&b");
    assert_eq!(msg.sender.display_name, "阿明");
    gw.stop().await;
}

fn long_text(lines: usize) -> String {
    (0..lines)
        .map(|i| format!("line {i:03} of a long answer"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn long_reply_goes_out_as_a_forward_message() {
    let mut gw = gateway(|c| {
        c.max_message_length = 200;
        c.forward_threshold = 600;
    })
    .await;
    let bot = gw.bot(SELF).await;
    let to = ReplyTarget {
        room: format!("group:{GROUP}"),
        reply_to: Some("55".into()),
        ..Default::default()
    };
    let text = long_text(40);
    gw.conn.send_reply(&to, &text).await.unwrap();
    let fwd = bot.wait_action("send_group_forward_msg").await;
    let nodes = fwd["params"]["messages"].as_array().unwrap();
    assert!(nodes.len() > 3);
    assert_matches_fixture("outbound_forward_node", &nodes[0]);
    let mut joined = Vec::new();
    for node in nodes {
        assert_eq!(node["type"], "node");
        assert_eq!(node["data"]["uin"], SELF.to_string());
        let t = node["data"]["content"][0]["data"]["text"].as_str().unwrap();
        assert!(t.chars().count() <= 200);
        joined.push(t.to_string());
    }
    assert_eq!(joined.join("\n"), text);
    assert!(bot
        .drain_actions()
        .await
        .iter()
        .all(|a| a["action"] != "send_group_msg"));

    // Between max_message_length and forward_threshold: plain parts, the first one quoted.
    gw.conn.send_reply(&to, &long_text(15)).await.unwrap();
    let first = bot.wait_action("send_group_msg").await;
    assert_eq!(first["params"]["message"][0]["type"], "reply");
    let second = bot.wait_action("send_group_msg").await;
    assert_eq!(second["params"]["message"][0]["type"], "text");
    gw.stop().await;
}

#[tokio::test]
async fn failed_forward_falls_back_to_plain_parts() {
    let mut gw = gateway(|c| {
        c.max_message_length = 200;
        c.forward_threshold = 600;
    })
    .await;
    let bot = gw.bot(SELF).await;
    bot.fail(
        "send_private_forward_msg",
        Failure::Error {
            retcode: 200,
            message: "发送伪造合并转发消息失败: timed out after 20000 ms".into(),
        },
    );
    let to = ReplyTarget {
        room: format!("private:{USER}"),
        reply_to: Some("77".into()),
        ..Default::default()
    };
    let text = long_text(40);
    gw.conn.send_reply(&to, &text).await.unwrap();
    bot.wait_action("send_private_forward_msg").await;
    let mut parts = Vec::new();
    let first = bot.wait_action("send_private_msg").await;
    assert_eq!(
        first["params"]["message"][0],
        json!({"type": "reply", "data": {"id": "77"}})
    );
    parts.push(text_of(&first));
    while parts.join("\n").len() < text.len() {
        parts.push(text_of(&bot.wait_action("send_private_msg").await));
    }
    assert_eq!(parts.join("\n"), text);
    gw.stop().await;
}

#[tokio::test]
async fn images_and_files_go_out_as_base64() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    let png = gw.dir.path().join("chart.png");
    let bytes = b"\x89PNG\r\n\x1a\nfake image bytes".to_vec();
    std::fs::write(&png, &bytes).unwrap();
    let to = ReplyTarget {
        room: format!("group:{GROUP}"),
        ..Default::default()
    };
    gw.conn.upload(&to, &png, Some("the chart")).await.unwrap();
    let sent = bot.wait_action("send_group_msg").await;
    let segs = sent["params"]["message"].as_array().unwrap();
    let image = segs
        .iter()
        .find(|s| s["type"] == "image")
        .expect("image segment");
    let b64 = image["data"]["file"]
        .as_str()
        .unwrap()
        .strip_prefix("base64://")
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        bytes
    );
    assert!(text_of(&sent).contains("the chart"));

    let report = gw.dir.path().join("report.txt");
    std::fs::write(&report, "numbers").unwrap();
    gw.conn.upload(&to, &report, None).await.unwrap();
    let up = bot.wait_action("upload_group_file").await;
    assert_eq!(up["params"]["name"], "report.txt");
    assert_eq!(
        up["params"]["file"],
        format!(
            "base64://{}",
            base64::engine::general_purpose::STANDARD.encode("numbers")
        )
    );

    let missing = gw
        .conn
        .upload(&to, &gw.dir.path().join("nope.png"), None)
        .await;
    assert!(
        matches!(missing, Err(ConnectorError::Attachment { .. })),
        "{missing:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn action_failures_are_returned_not_swallowed() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    let to = ReplyTarget::room(format!("private:{USER}"));
    bot.fail(
        "send_private_msg",
        Failure::Error {
            retcode: 1400,
            message: "请求参数错误".into(),
        },
    );
    let err = gw.conn.send_reply(&to, "hello").await.unwrap_err();
    match &err {
        ConnectorError::Rejected { action, detail, .. } => {
            assert_eq!(action, "send_private_msg");
            assert!(
                detail.contains("retcode 1400") && detail.contains("请求参数错误"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    let err = gw
        .conn
        .post(&ReplyTarget::room("channel:x"), "hello")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RoomNotFound(_)), "{err}");
    gw.stop().await;

    // An action never answered fails at the action timeout (short here, on purpose).
    let mut short = gateway(|c| c.action_timeout = Duration::from_millis(300)).await;
    let bot = short.bot(SELF).await;
    bot.fail("send_private_msg", Failure::Silent);
    let err = short.conn.post(&to, "hello").await.unwrap_err();
    assert!(err.to_string().contains("did not confirm"), "{err}");
    short.stop().await;
}

#[tokio::test]
async fn reply_finished_during_a_reconnect_goes_out_on_the_new_socket() {
    let mut gw = gateway(|c| c.action_timeout = Duration::from_secs(5)).await;
    let bot = gw.bot(SELF).await;
    bot.send_event(&private_msg(300, USER, "long job"));
    let msg = gw.message().await;
    // NapCat restarts while the turn runs.
    bot.close();
    gw.connection(false, "2559840652").await;
    let conn = gw.conn.clone();
    let target = msg.reply_target();
    let reply = tokio::spawn(async move { conn.send_reply(&target, "done").await });
    let again = gw.bot(SELF).await;
    reply.await.unwrap().unwrap();
    let sent = again.wait_action("send_private_msg").await;
    assert_eq!(text_of(&sent), "done");
    drop(bot);

    // Without a reconnect within the action timeout, the reply is reported failed.
    again.close();
    gw.connection(false, "2559840652").await;
    let short = gateway(|c| c.action_timeout = Duration::from_millis(300)).await;
    let err = short
        .conn
        .post(&ReplyTarget::room(format!("private:{USER}")), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::NotConnected(_)), "{err}");
    short.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn messages_missed_while_disconnected_are_replayed_once() {
    let mut gw = gateway(|_| {}).await;
    let now = fake_onebot::now_secs();
    let at = |id: i64, user: i64, text: &str, time: i64| {
        let mut m = private_msg(id, user, text);
        m["time"] = json!(time);
        m["message_seq"] = json!(id);
        m["target_id"] = json!(SELF);
        m
    };
    let bot = gw.bot(SELF).await;
    bot.send_event(&at(1, USER, "first", now - 100));
    assert_eq!(gw.message().await.text, "first");
    bot.close();
    gw.connection(false, "2559840652").await;

    // While away, QQ got a message; the history also holds the delivered one, the bot's own
    // answer and a message from before the watermark.
    let mut own = at(3, SELF, "answer", now - 60);
    own["target_id"] = json!(USER);
    let history = vec![
        at(0, USER, "ancient", now - 200),
        at(1, USER, "first", now - 100),
        own,
        at(4, USER, "missed", now - 50),
    ];
    let again = FakeBot::connect_with_history(&gw.url, SELF, Auth::Bearer(TOKEN.into()), history)
        .await
        .unwrap();
    let replayed = gw.message().await;
    assert_eq!(
        (replayed.id.as_str(), replayed.text.as_str()),
        ("4", "missed")
    );
    let asked = again.wait_action("get_friend_msg_history").await;
    assert_eq!(asked["params"]["user_id"], USER);
    // The live copy of a replayed message is not delivered twice.
    again.send_event(&at(4, USER, "missed", now - 50));
    again.send_event(&at(5, USER, "live", now));
    assert_eq!(gw.message().await.text, "live");
    gw.stop().await;
}

#[tokio::test]
async fn a_reconnecting_bot_replaces_its_old_socket() {
    let mut gw = gateway(|_| {}).await;
    let old = gw.bot(SELF).await;
    let new = gw.bot(SELF).await;
    let closed = old.closed().await;
    assert_eq!(closed.code, Some(1000));
    assert!(closed.reason.contains("replaced"), "{closed:?}");
    assert_eq!(gw.conn.connected_bots(), vec![SELF]);
    gw.conn
        .post(&ReplyTarget::room(format!("private:{USER}")), "via new")
        .await
        .unwrap();
    assert_eq!(
        text_of(&new.wait_action("send_private_msg").await),
        "via new"
    );
    gw.stop().await;
}

#[tokio::test]
async fn separate_event_and_api_sockets_split_the_traffic() {
    let mut gw = gateway(|_| {}).await;
    let auth = Auth::Bearer(TOKEN.into());
    let events = FakeBot::connect_with(&gw.url, Some(SELF), auth.clone(), Some("Event"))
        .await
        .unwrap();
    gw.connection(false, "event socket").await;
    let api = FakeBot::connect_with(&gw.url, Some(SELF), auth, Some("API"))
        .await
        .unwrap();
    gw.connection(true, "(Api)").await;
    events.send_event(&private_msg(20, USER, "via the event socket"));
    let msg = gw.message().await;
    gw.conn
        .send_reply(&msg.reply_target(), "via the api socket")
        .await
        .unwrap();
    assert_eq!(
        text_of(&api.wait_action("send_private_msg").await),
        "via the api socket"
    );
    assert!(events.drain_actions().await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn heartbeat_loss_closes_the_socket() {
    let mut gw = gateway(|c| c.heartbeat_timeout = Some(Duration::from_millis(400))).await;
    let bot = gw.bot(SELF).await;
    bot.heartbeat(100);
    // Then silence: NapCat hung.
    let closed = bot.closed().await;
    assert_eq!(closed.code, Some(1001));
    assert!(closed.reason.contains("heartbeat"), "{closed:?}");
    let detail = gw.connection(false, "2559840652").await;
    assert!(detail.contains("HeartbeatLost"), "{detail}");
    assert!(gw.conn.connected_bots().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn qq_logout_reported_by_heartbeats_is_surfaced() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    bot.heartbeat(30_000);
    let mut offline = fixture("heartbeat");
    offline["status"]["online"] = json!(false);
    bot.send_event(&offline);
    bot.send_event(&offline);
    let detail = gw.connection(true, "QQ").await;
    assert_eq!(detail, "bot 2559840652 reports QQ offline (logged out?)");
    // The second offline heartbeat is not reported again: the next report is the recovery.
    bot.heartbeat(30_000);
    let detail = gw.connection(true, "QQ").await;
    assert_eq!(detail, "bot 2559840652 reports QQ back online");
    gw.stop().await;
}

#[tokio::test]
async fn two_bots_serve_their_own_rooms_and_do_not_duplicate_shared_groups() {
    let mut gw = gateway(|_| {}).await;
    const OTHER: i64 = 10_000_002;
    let a = gw.bot(SELF).await;
    let b = gw.bot(OTHER).await;
    assert_eq!(gw.conn.connected_bots(), vec![OTHER, SELF]);
    b.send_event(&event(
        "group_message_array",
        json!({"self_id": OTHER, "group_id": 555, "message_id": 1}),
    ));
    let from_b = gw.message().await;
    assert_eq!(from_b.room.id, "group:555");
    a.send_event(&event("group_message_array", json!({"message_id": 2})));
    let from_a = gw.message().await;
    assert_eq!(from_a.room.id, format!("group:{GROUP}"));

    // Both bots are in group 555: only the bot serving it delivers.
    a.send_event(&event(
        "group_message_array",
        json!({"group_id": 555, "message_id": 3}),
    ));
    b.send_event(&event(
        "group_message_array",
        json!({"self_id": OTHER, "group_id": 555, "message_id": 4}),
    ));
    assert_eq!(gw.message().await.id, "4");

    gw.conn
        .send_reply(&from_b.reply_target(), "from b")
        .await
        .unwrap();
    gw.conn
        .send_reply(&from_a.reply_target(), "from a")
        .await
        .unwrap();
    assert_eq!(text_of(&b.wait_action("send_group_msg").await), " from b");
    assert_eq!(text_of(&a.wait_action("send_group_msg").await), " from a");
    assert!(a
        .drain_actions()
        .await
        .iter()
        .all(|x| x["params"]["group_id"] != 555));
    gw.stop().await;
}

#[tokio::test]
async fn rate_limited_user_gets_one_notice_per_window() {
    let mut gw = gateway(|c| {
        c.rate_limit = Some(RateLimit {
            messages: 2,
            window: Duration::from_secs(60),
        })
    })
    .await;
    let bot = gw.bot(SELF).await;
    for id in 1..=5 {
        bot.send_event(&private_msg(id, USER, &format!("msg {id}")));
    }
    // An approval answer is never limited (a turn may be waiting on it).
    bot.send_event(&private_msg(6, USER, "approve a3k9"));
    bot.send_event(&private_msg(7, 777, "another user"));
    // Rooms are handled concurrently: order holds within each sender's private room.
    let mut by_user = std::collections::BTreeMap::<String, Vec<String>>::new();
    for _ in 0..4 {
        let m = gw.message().await;
        by_user.entry(m.sender.id).or_default().push(m.text);
    }
    // Messages 3-5 precede the approval in its room, so they were refused by now.
    assert_eq!(
        by_user[&USER.to_string()],
        ["msg 1", "msg 2", "approve a3k9"]
    );
    assert_eq!(by_user["777"], ["another user"]);
    let notices: Vec<Value> = bot
        .drain_actions()
        .await
        .into_iter()
        .filter(|a| a["action"] == "send_private_msg")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0]["params"]["user_id"], USER);
    assert!(text_of(&notices[0]).contains("faster than I can take them"));
    gw.stop().await;
}

#[tokio::test]
async fn group_context_since_the_last_address_is_prepended() {
    let mut gw = gateway(|c| {
        c.group_context = Some(GroupContext {
            max_messages: 3,
            max_chars: 2000,
            scan_limit: 200,
        })
    })
    .await;
    let bot = gw.bot(SELF).await;
    let t0 = 1_747_792_000;
    let entry = |seq: i64, user: i64, text: &str| {
        json!({"message_id": seq, "message_seq": seq, "time": t0 + seq, "group_id": GROUP, "user_id": user,
               "message_type": "group", "sender": {"user_id": user, "nickname": format!("u{user}")},
               "message": [{"type": "text", "data": {"text": text}}]})
    };
    bot.add_history(
        (1..=120)
            .map(|s| entry(s, 5, &format!("chatter {s}")))
            .collect(),
    );
    let at_bot = |id: i64, text: &str| {
        let mut m = group_msg(
            id,
            USER,
            json!([{"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": text}}]),
        );
        m["time"] = json!(t0 + id);
        m
    };
    bot.add_history(vec![entry(121, USER, "@bot first")]);
    bot.send_event(&at_bot(121, " first"));
    let first = gw.message().await;
    let lines: Vec<&str> = first.text.lines().collect();
    assert_eq!(
        lines[0],
        "[Group chat context: messages since the bot was last addressed]"
    );
    assert!(lines[1].ends_with("u5(5): chatter 118"), "{}", first.text);
    assert!(lines[3].ends_with("chatter 120"));
    assert_eq!(lines[4], "[End of context]");
    assert_eq!(lines.last().unwrap(), &"first");
    // Pages were requested backwards with reverseOrder and stopped.
    let pages: Vec<Value> = bot
        .drain_actions()
        .await
        .into_iter()
        .filter(|a| a["action"] == "get_group_msg_history")
        .collect();
    assert!(
        !pages.is_empty() && pages.len() <= 5,
        "{} pages",
        pages.len()
    );
    assert!(pages.iter().all(|p| p["params"]["reverseOrder"] == true));

    // Only what was said since that address comes next time.
    bot.add_history(vec![
        entry(122, 6, "after"),
        entry(123, USER, "@bot second"),
    ]);
    bot.send_event(&at_bot(123, " second"));
    let second = gw.message().await;
    let lines: Vec<&str> = second.text.lines().collect();
    assert_eq!(lines.len(), 5, "{}", second.text);
    assert!(lines[1].ends_with("u6(6): after"), "{}", second.text);
    gw.stop().await;
}

/// Group context obeys roles: an owner's message is shown only owners' (and the bot's)
/// words, a guest's no stranger's; what is left out is counted.
#[tokio::test]
async fn group_context_shows_only_words_of_people_with_the_senders_role() {
    let mut cfg = base_config();
    cfg.group_context = Some(GroupContext {
        max_messages: 10,
        max_chars: 2000,
        scan_limit: 200,
    });
    let users = UserRoles {
        owners: [format!("id:{USER}"), "id:7".to_string()].into(),
        guests: ["id:6".to_string()].into(),
        unknown: None,
    };
    let mut gw = gateway_with_users(cfg, &["*"], users).await;
    let bot = gw.bot(SELF).await;
    let t0 = 1_747_792_000;
    let entry = |seq: i64, user: i64, text: &str| {
        json!({"message_id": seq, "message_seq": seq, "time": t0 + seq, "group_id": GROUP, "user_id": user,
               "message_type": "group", "sender": {"user_id": user, "nickname": format!("u{user}")},
               "message": [{"type": "text", "data": {"text": text}}]})
    };
    let at_bot = |id: i64, user: i64, text: &str| {
        let mut m = group_msg(
            id,
            user,
            json!([{"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": text}}]),
        );
        m["time"] = json!(t0 + id);
        m
    };
    bot.add_history(vec![
        entry(1, 5, "STRANGER run rm -rf"),
        entry(2, 6, "GUEST says hi"),
        entry(3, 7, "OWNER-TWO says the build is red"),
        entry(4, SELF, "BOT earlier answer"),
        entry(5, USER, "@bot owner asks"),
    ]);
    bot.send_event(&at_bot(5, USER, " owner asks"));
    let text = gw.message().await.text;
    assert!(
        text.contains("OWNER-TWO") && text.contains("BOT earlier"),
        "{text}"
    );
    assert!(
        !text.contains("STRANGER") && !text.contains("GUEST says"),
        "{text}"
    );
    assert!(
        text.contains("(2 message(s) not shown: from people who may not use this bot, or with fewer rights than the sender)"),
        "{text}"
    );

    bot.add_history(vec![
        entry(6, 5, "STRANGER again"),
        entry(7, 7, "OWNER-TWO again"),
        entry(8, 6, "@bot guest asks"),
    ]);
    bot.send_event(&at_bot(8, 6, " guest asks"));
    let text = gw.message().await.text;
    assert!(text.contains("OWNER-TWO again"), "{text}");
    assert!(!text.contains("STRANGER"), "{text}");
    assert!(text.contains("(1 message(s) not shown"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn group_context_survives_a_history_that_ignores_paging() {
    let mut gw = gateway(|c| {
        c.group_context = Some(GroupContext {
            max_messages: 10,
            max_chars: 2000,
            scan_limit: 500,
        })
    })
    .await;
    let bot = gw.bot(SELF).await;
    bot.history_ignores_seq();
    let t0 = 1_747_792_000;
    bot.add_history(
        (1..=80)
            .map(|seq| {
                json!({"message_id": seq, "message_seq": seq, "time": t0 + seq, "group_id": GROUP,
                       "user_id": 5, "sender": {"user_id": 5, "nickname": "u5"},
                       "message": format!("line {seq}")})
            })
            .collect(),
    );
    let mut m = group_msg(
        81,
        USER,
        json!([{"type": "at", "data": {"qq": SELF.to_string()}}, {"type": "text", "data": {"text": " go"}}]),
    );
    m["time"] = json!(t0 + 81);
    bot.send_event(&m);
    let msg = gw.message().await;
    let lines: Vec<&str> = msg.text.lines().collect();
    // The newest 10 (CQ-string history entries are parsed too), then the message.
    assert_eq!(lines.len(), 14, "{}", msg.text);
    assert!(lines[1].ends_with("u5(5): line 71"), "{}", msg.text);
    assert!(lines[10].ends_with("u5(5): line 80"), "{}", msg.text);
    let pages = bot
        .drain_actions()
        .await
        .into_iter()
        .filter(|a| a["action"] == "get_group_msg_history")
        .count();
    assert_eq!(pages, 2, "the repeated window must stop the paging");
    gw.stop().await;
}

#[tokio::test]
async fn forward_segments_are_expanded() {
    let mut gw = gateway(|_| {}).await;
    let bot = gw.bot(SELF).await;
    bot.add_forward(
        "fwd-1",
        json!([
            {"sender": {"user_id": 11, "nickname": "Ann"}, "message": [{"type": "text", "data": {"text": "step one"}}]},
            {"sender": {"user_id": 12, "nickname": "Ben"}, "content": "step [CQ:face,id=2] two"}
        ]),
    );
    let mut m = private_msg(70, USER, "");
    m["message"] = json!([
        {"type": "text", "data": {"text": "summarise: "}},
        {"type": "forward", "data": {"id": "fwd-1"}}
    ]);
    bot.send_event(&m);
    let msg = gw.message().await;
    assert_eq!(
        msg.text,
        "summarise: [Forwarded messages (2)]\nAnn: step one\nBen: step [face:2] two\n[End of forwarded messages]"
    );
    // An unknown forward id keeps its placeholder.
    m["message_id"] = json!(71);
    m["message"][1]["data"]["id"] = json!("gone");
    bot.send_event(&m);
    assert_eq!(
        gw.message().await.text,
        "summarise: [forwarded messages gone]"
    );
    gw.stop().await;
}

/// Serves one HTTP response per connection on 127.0.0.1 (the implementation's file server).
async fn file_server(body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn incoming_files_are_downloaded_under_safe_names_within_limits() {
    let mut gw = gateway(|c| {
        if let Some(a) = c.attachments.as_mut() {
            a.max_bytes = 1024;
        }
    })
    .await;
    let bot = gw.bot(SELF).await;
    let (base, server) = file_server(b"image bytes".to_vec()).await;
    let (big_base, big_server) = file_server(vec![b'x'; 4096]).await;
    let mut m = private_msg(400, USER, "see");
    m["message"] = json!([
        {"type": "text", "data": {"text": "see "}},
        {"type": "image", "data": {"file": "../../.ssh/authorized_keys", "url": format!("{base}/i.png")}},
        {"type": "file", "data": {"name": "huge.bin", "url": format!("{big_base}/big"), "file_size": "4096"}}
    ]);
    bot.send_event(&m);
    let msg = gw.message().await;
    assert_eq!(msg.text, "see [image: authorized_keys][file: huge.bin]");
    assert_eq!(msg.attachments.len(), 1);
    let a = &msg.attachments[0];
    assert_eq!(a.name, "authorized_keys");
    assert_eq!(
        a.path.parent().unwrap(),
        gw.dir.path().join("attachments").join("qq")
    );
    assert_eq!(std::fs::read(&a.path).unwrap(), b"image bytes");
    assert_eq!(msg.notes.len(), 1);
    assert!(
        msg.notes[0].contains("huge.bin") && msg.notes[0].contains("limit"),
        "{:?}",
        msg.notes
    );
    server.abort();
    big_server.abort();
    gw.stop().await;
}

#[tokio::test]
async fn whitelists_and_watched_rooms_filter_messages() {
    let mut cfg = base_config();
    cfg.group_whitelist = [GROUP, 555].into_iter().collect();
    cfg.user_whitelist = [USER].into_iter().collect();
    let mut gw = gateway_with(
        cfg,
        &[
            &format!("group:{GROUP}"),
            &format!("private:{USER}"),
            "#general",
        ],
    )
    .await;
    let mut resolved = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..3 {
        match gw.run.other().await {
            ConnectorEvent::RoomResolved { spec, room } => resolved.push((spec, room.id)),
            ConnectorEvent::RoomFailed { spec, .. } => failed.push(spec),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(resolved.len(), 2);
    assert_eq!(failed, vec!["#general".to_string()]);
    let bot = gw.bot(SELF).await;
    bot.send_event(&event(
        "group_message_array",
        json!({"group_id": 999, "message_id": 1}),
    )); // not whitelisted
    bot.send_event(&event(
        "group_message_array",
        json!({"group_id": 555, "message_id": 2}),
    )); // not watched
    bot.send_event(&private_msg(3, 4242, "stranger")); // user not whitelisted
    bot.send_event(&private_msg(4, USER, "friend"));
    // In a whitelisted, watched group: the stranger is dropped, the friend comes through (one
    // room, so a stranger let through would arrive before message 6).
    bot.send_event(&event(
        "group_message_array",
        json!({"user_id": 4242, "message_id": 5}),
    ));
    bot.send_event(&event("group_message_array", json!({"message_id": 6})));
    let mut ids = vec![gw.message().await.id, gw.message().await.id];
    ids.sort();
    assert_eq!(ids, ["4", "6"]);
    gw.stop().await;
}

#[tokio::test]
async fn forward_mode_connects_learns_the_bot_and_reconnects_after_heartbeat_loss() {
    let server = FakeServer::bind(SELF, Some(TOKEN)).await;
    let mut cfg = base_config();
    cfg.mode = Mode::Connect { url: server.url() };
    cfg.heartbeat_timeout = Some(Duration::from_millis(400));
    let mut gw = gateway_with(cfg, &["*"]).await;
    let bot = server.accept().await;
    bot.wait_action("get_login_info").await;
    gw.connection(true, "2559840652").await;
    bot.send_event(&private_msg(10, USER, "over forward ws"));
    let msg = gw.message().await;
    assert_eq!(msg.text, "over forward ws");
    gw.conn
        .send_reply(&msg.reply_target(), "ack")
        .await
        .unwrap();
    assert_eq!(text_of(&bot.wait_action("send_private_msg").await), "ack");

    bot.heartbeat(100);
    assert_eq!(bot.closed().await.code, Some(1001));
    gw.connection(false, "2559840652").await;
    let again = server.accept().await;
    again.wait_action("get_login_info").await;
    gw.connection(true, "2559840652").await;
    gw.stop().await;
    assert_eq!(
        again.closed().await.code,
        Some(1001),
        "shutdown closes with 1001"
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: fake NapCat → the real daemon → the real Claude Code CLI → the fake model; what
// only OneBot has (quoted replies that @ the asker, history fetched after a daemon restart).
// What every platform does alike is in `conformance/`.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_group_mention_is_answered_with_a_reply_that_quotes_and_mentions_the_asker() {
    let script = json!({"scenarios": [{"match": "QQ-E2E", "turns": [
        {"text": "Hello from the fake model via QQ."}
    ]}], "default_text": "OK"});
    let Some(chat) = Chat::<OneBot>::start(script, "").await else {
        return;
    };
    let bot = chat.platform.bot();
    bot.send_event(&at_bot(501, USER, "QQ-E2E hello"));
    let sent = bot
        .wait_action_where("send_group_msg", TURN, |a| {
            text_of(a).contains("fake model")
        })
        .await;
    let segs = sent["params"]["message"].as_array().unwrap();
    assert_eq!(
        segs[0],
        json!({"type": "reply", "data": {"id": "501"}}),
        "{sent}"
    );
    assert_eq!(
        segs[1],
        json!({"type": "at", "data": {"qq": USER.to_string()}})
    );
    assert_eq!(text_of(&sent), " Hello from the fake model via QQ.");
}

/// The fake OneBot implementation against an independent V11 server: NoneBot 2 with its
/// OneBot adapter (`scripts/onebot-conformance/nonebot_app.py`). NoneBot must accept the
/// fake's handshake, parse its events, and accept its answers to NoneBot's own action calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_onebot_speaks_v11_to_nonebot() {
    use tokio::io::AsyncBufReadExt;
    let Some(python) = deps::nonebot_python() else {
        return;
    };
    let port = free_port();
    let mut app = tokio::process::Command::new(&python)
        .arg(deps::root().join("scripts/onebot-conformance/nonebot_app.py"))
        .arg(port.to_string())
        .arg(TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // NoneBot logs to stdout; the server accepts connections once uvicorn says it runs.
    let mut log = tokio::io::BufReader::new(app.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            let done = line.contains("Uvicorn running on");
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)), "NoneBot did not start: {seen:?}");
    // Keep draining NoneBot's log so it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });

    let url = format!("ws://127.0.0.1:{port}/onebot/v11/ws");
    let wrong = FakeBot::connect(&url, SELF, Auth::Bearer("wrong".into())).await;
    assert!(wrong.is_err(), "NoneBot accepted a wrong token");
    let bot = FakeBot::connect(&url, SELF, Auth::Token(TOKEN.into()))
        .await
        .unwrap();
    bot.lifecycle_connect();
    bot.send_event(&fixture("heartbeat"));
    for (name, class, text, target) in [
        (
            "group_message_array",
            "GroupMessageEvent",
            "7",
            ("group_id", json!(GROUP)),
        ),
        (
            "private_message_array",
            "PrivateMessageEvent",
            "hello bot",
            ("user_id", json!(USER)),
        ),
        (
            "group_message_cq_string",
            "GroupMessageEvent",
            "fix [bug] a&b",
            ("group_id", json!(GROUP)),
        ),
    ] {
        let ev = fixture(name);
        bot.remember_message(
            ev["message_id"].as_i64().unwrap(),
            USER,
            "小明",
            ev["message"].clone(),
        );
        bot.send_event(&ev);
        let sent = bot.wait_action("send_msg").await;
        assert_eq!(sent["params"][target.0], target.1, "{sent}");
        let expected = format!(
            "nonebot saw {class} text='{text}' login={SELF} get_msg_sender={USER} unknown_action=1404"
        );
        let message = &sent["params"]["message"];
        let said = match message {
            Value::String(s) => s.clone(),
            _ => text_of(&sent),
        };
        assert_eq!(said, expected, "{name}: {sent}");
    }
    drop(bot);
    drop(app);
    drain.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_message_sent_while_the_daemon_was_down_is_answered_after_restart() {
    // The fake model picks the scenario by the session's first message: the second turn is
    // the answer to the replayed message, in the resumed session.
    let script = json!({"scenarios": [{"match": "QQ-FIRST", "turns": [
        {"text": "First answer."}, {"text": "Answer to the missed one."}
    ]}]});
    let Some(mut chat) = Chat::<OneBot>::start(script, "").await else {
        return;
    };
    let now = fake_onebot::now_secs();
    let timed = |id: i64, text: &str, time: i64| {
        let mut m = at_bot(id, USER, text);
        m["time"] = json!(time);
        m
    };
    let first = timed(800, "QQ-FIRST hi", now - 30);
    let bot = chat.platform.bot();
    bot.send_event(&first);
    bot.wait_action_where("send_group_msg", TURN, |a| {
        text_of(a).contains("First answer.")
    })
    .await;

    chat.gateway.stop();
    assert_eq!(bot.closed().await.code, Some(1001), "stop closes with 1001");
    // QQ got a message while the gateway was down; NapCat reconnects after the restart.
    let missed = timed(801, "QQ-MISSED are you there?", now - 10);
    chat.gateway.start_again();
    let again = FakeBot::connect_with_history(
        &chat.platform.url(),
        SELF,
        Auth::Bearer(TOKEN.into()),
        vec![first, missed],
    )
    .await
    .unwrap();
    let answer = again
        .wait_action_where("send_group_msg", TURN, |a| {
            text_of(a).contains("Answer to the missed one.")
        })
        .await;
    assert_eq!(
        answer["params"]["message"][0],
        json!({"type": "reply", "data": {"id": "801"}})
    );
    // Had message 800 been replayed, it would have taken that second turn (quoting 800).
    let resent = again.drain_actions().await;
    assert!(
        resent
            .iter()
            .all(|a| a["params"]["message"][0]["data"]["id"] != "800"),
        "the message answered before the restart was answered again: {resent:?}"
    );
}
