//! Rocket.Chat as a [`FakePlatform`]: the fake server (`support/fake_rocketchat.rs`), the
//! channel `#general`, Alice (owner) and Bob (guest) bound by their user ids; the connection
//! drops by stopping the server.

use std::time::Duration;

use serde_json::{json, Value};

use super::{FakePlatform, Threads, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::fake_rocketchat::{FakeRocketChat, BOT_PASSWORD, BOT_USER};

pub const RID: &str = "GENERAL";
/// Small, so a long reply needs several messages (the connector reads it from the server).
const MAX_LEN: usize = 300;

pub struct RocketChat {
    pub fake: FakeRocketChat,
}

impl FakePlatform for RocketChat {
    async fn start() -> RocketChat {
        let fake = FakeRocketChat::start().await;
        fake.set_max_len(MAX_LEN);
        RocketChat { fake }
    }

    fn connector_yaml(&self) -> String {
        format!(
            "  - {{name: chat, type: rocketchat, server: \"{}\", username: {BOT_USER}, password: \"{BOT_PASSWORD}\", require_mention: true, allowed_users: {{owners: [\"id:u-alice\"], guests: [\"id:u-bob\"]}}}}",
            self.fake.url()
        )
    }

    fn group_room(&self) -> String {
        "#general".into()
    }

    fn username(&self, who: Who) -> String {
        match who {
            Who::Owner => "alice".into(),
            Who::Guest => "bob".into(),
            Who::Stranger => "carol".into(),
        }
    }

    fn max_message_len(&self) -> usize {
        MAX_LEN
    }

    async fn attach(&mut self, _gateway: &Gateway) {
        // Subscribed: from here a post is delivered live or by the replay that follows.
        self.fake
            .wait_for("the daemon to subscribe to #general", TURN, |s| {
                s.ddp_in
                    .iter()
                    .any(|f| f["msg"] == "sub" && f["params"][0] == RID)
            })
            .await;
    }

    async fn send(&mut self, who: Who, text: &str, mention: bool) {
        let text = if mention {
            format!("@{BOT_USER} {text}")
        } else {
            text.to_string()
        };
        self.fake.post(RID, &self.username(who), &text);
    }

    async fn replies_containing(&mut self, needle: &str, count: usize) -> Vec<String> {
        let found = |s: &crate::support::fake_rocketchat::State| -> Vec<String> {
            s.bot_messages(RID)
                .into_iter()
                .filter_map(|m| m["msg"].as_str())
                .filter(|t| t.contains(needle))
                .map(str::to_string)
                .collect()
        };
        let what = format!("{count} bot messages containing {needle:?}");
        self.fake
            .wait_for(&what, TURN, |s| found(s).len() >= count)
            .await;
        found(&self.fake.state())
    }

    async fn bot_messages(&mut self) -> Vec<String> {
        self.fake
            .state()
            .bot_messages(RID)
            .into_iter()
            .map(|m| m["msg"].as_str().unwrap().to_string())
            .collect()
    }

    async fn disconnect(&mut self) {
        // Only once the bot stopped typing, which it does after the turn's answer was
        // delivered: a post cut off before its response would be retried after the outage,
        // as a second copy of the answer.
        self.fake
            .wait_for("the bot to stop typing", TURN, |s| {
                s.typing.last().is_some_and(|t| t[2] == json!([]))
            })
            .await;
        self.fake.stop().await;
    }

    async fn reconnect(&mut self) {
        self.fake.restart().await;
    }
}

impl super::Threads for RocketChat {
    async fn post_at(&mut self, who: Who, text: &str, mention: bool, root: Option<&str>) -> String {
        let text = if mention {
            format!("@{BOT_USER} {text}")
        } else {
            text.to_string()
        };
        match root {
            Some(root) => self
                .fake
                .post_in_thread(RID, &self.username(who), &text, root),
            None => self.fake.post(RID, &self.username(who), &text),
        }
    }

    async fn thread_of_reply(&mut self, needle: &str) -> Option<String> {
        let m = self.fake.bot_message_containing(RID, needle, TURN).await;
        m["tmid"].as_str().map(str::to_string)
    }

    async fn top_level_bot_message(&mut self, needle: &str) -> Option<String> {
        let m = self.fake.bot_message_containing(RID, needle, TURN).await;
        assert!(m.get("tmid").is_none_or(Value::is_null), "{m}");
        m["_id"].as_str().map(str::to_string)
    }
}

super::scenarios!(RocketChat);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_scope_gives_each_thread_its_session_and_context() {
    super::thread_scope::<RocketChat>().await;
}

/// A schedule's prompt was never posted, so in thread scope it starts no thread: it is
/// answered at the top level, in the room's own session. A thread people start on that
/// answer has it as context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_thread_scope_a_schedule_is_answered_at_the_top_level() {
    let script = json!({"scenarios": [
        {"match": "TS-SCHEDULED", "turns": [{"text": "Scheduled answer, top level."}]},
        {"match": "TS-FOLLOW", "turns": [{"text": "Follow-up answer."}]}
    ], "default_text": "OK"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Once a minute, a few seconds from now (a slow start only makes it a minute later).
    let second = (now + 8) % 60;
    let schedules = format!(
        "schedules:\n  - {{name: report, watcher: group, cron: \"{second} * * * * *\", timezone: utc, as: \"id:u-bob\", prompt: \"TS-SCHEDULED report\"}}\n"
    );
    let Some(mut chat) =
        super::Chat::<RocketChat>::start_with(script, "", ", session_scope: thread", &schedules)
            .await
    else {
        return;
    };
    let m = chat
        .platform
        .fake
        .bot_message_containing(
            RID,
            "Scheduled answer, top level.",
            Duration::from_secs(150),
        )
        .await;
    assert!(m.get("tmid").is_none_or(Value::is_null), "{m}");
    let failed: Vec<String> = chat
        .platform
        .bot_messages()
        .await
        .into_iter()
        .filter(|t| t.contains('❌') || t.contains("⚠️"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    // The room's own session, which the schedule used, answers top-level commands (once the
    // turn is over: the bot stops typing after it recorded the session).
    chat.platform
        .fake
        .wait_for("the bot to stop typing", TURN, |s| {
            s.typing.last().is_some_and(|t| t[2] == json!([]))
        })
        .await;
    chat.platform
        .post_at(Who::Owner, "!status", false, None)
        .await;
    let status = chat.platform.reply_containing("📊").await;
    assert!(status.contains("· 1 turn ·"), "{status}");
    assert!(
        !chat
            .platform
            .bot_messages()
            .await
            .iter()
            .any(|t| t.contains("🧵")),
        "no thread hint"
    );

    let root = m["_id"].as_str().unwrap().to_string();
    chat.platform
        .post_at(Who::Owner, "TS-FOLLOW why?", true, Some(&root))
        .await;
    let thread = chat.platform.thread_of_reply("Follow-up answer.").await;
    assert_eq!(thread.as_deref(), Some(root.as_str()));
    let prompt = chat.call_answering("TS-FOLLOW why?").last_text();
    let context = super::thread_context_of(&prompt);
    assert!(
        context.contains("| from: bot (you) | ts: ")
            && context.contains("] Scheduled answer, top level.\n"),
        "{prompt}"
    );
}
