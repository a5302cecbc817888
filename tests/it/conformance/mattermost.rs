//! Mattermost as a [`FakePlatform`]: the fake server (`support/fake_mattermost.rs`), the
//! channel `#town-square`, Alice (owner) and Bob (guest) bound by their 26-character user ids;
//! the connection drops by refusing the WebSocket (REST stays up), so what is posted
//! meanwhile reaches the gateway only by `?since=` replay.

use serde_json::Value;

use super::{FakePlatform, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::fake_mattermost::{
    FakeMattermost, State, ALICE_ID, BOB_ID, BOT_TOKEN, BOT_USER, TOWN_SQUARE,
};

/// Small, so a long reply needs several posts (the connector's `max_message_len`).
const MAX_LEN: usize = 300;

pub struct Mattermost {
    pub fake: FakeMattermost,
}

impl FakePlatform for Mattermost {
    async fn start() -> Mattermost {
        Mattermost {
            fake: FakeMattermost::start().await,
        }
    }

    fn connector_yaml(&self) -> String {
        format!(
            "  - {{name: chat, type: mattermost, server: \"{}\", token: \"{BOT_TOKEN}\", require_mention: true, max_message_len: {MAX_LEN}, allowed_users: {{owners: [\"id:{ALICE_ID}\"], guests: [\"id:{BOB_ID}\"]}}}}",
            self.fake.url()
        )
    }

    fn group_room(&self) -> String {
        "#town-square".into()
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
        // Authenticated on the socket: the channel's baseline is taken, so from here a post
        // is delivered live or by the replay that follows.
        self.fake
            .wait_for("the daemon's WebSocket", TURN, |s| s.ws_logins >= 1)
            .await;
    }

    async fn send(&mut self, who: Who, text: &str, mention: bool) {
        let text = if mention {
            format!("@{BOT_USER} {text}")
        } else {
            text.to_string()
        };
        self.fake.post(TOWN_SQUARE, &self.username(who), &text);
    }

    async fn replies_containing(&mut self, needle: &str, count: usize) -> Vec<String> {
        let found = |s: &State| -> Vec<String> {
            s.bot_posts(TOWN_SQUARE)
                .into_iter()
                .filter_map(|p| p["message"].as_str())
                .filter(|t| t.contains(needle))
                .map(str::to_string)
                .collect()
        };
        let what = format!("{count} bot posts containing {needle:?}");
        self.fake
            .wait_for(&what, TURN, |s| found(s).len() >= count)
            .await;
        found(&self.fake.state())
    }

    async fn bot_messages(&mut self) -> Vec<String> {
        self.fake
            .state()
            .bot_posts(TOWN_SQUARE)
            .into_iter()
            .map(|p| p["message"].as_str().unwrap().to_string())
            .collect()
    }

    async fn disconnect(&mut self) {
        self.fake.refuse_sockets(true);
    }

    async fn reconnect(&mut self) {
        let logins = self.fake.state().ws_logins;
        self.fake.refuse_sockets(false);
        self.fake
            .wait_for("the daemon to reconnect", TURN, |s| s.ws_logins > logins)
            .await;
    }
}

impl super::Threads for Mattermost {
    async fn post_at(&mut self, who: Who, text: &str, mention: bool, root: Option<&str>) -> String {
        let text = if mention {
            format!("@{BOT_USER} {text}")
        } else {
            text.to_string()
        };
        match root {
            Some(root) => self
                .fake
                .post_in_thread(TOWN_SQUARE, &self.username(who), &text, root),
            None => self.fake.post(TOWN_SQUARE, &self.username(who), &text),
        }
    }

    async fn thread_of_reply(&mut self, needle: &str) -> Option<String> {
        let post = self.bot_post(needle).await;
        post["root_id"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(str::to_string)
    }

    async fn top_level_bot_message(&mut self, needle: &str) -> Option<String> {
        let post = self.bot_post(needle).await;
        assert!(post["root_id"].as_str().is_none_or(str::is_empty), "{post}");
        post["id"].as_str().map(str::to_string)
    }
}

impl Mattermost {
    /// Waits for the bot's post containing `needle`.
    async fn bot_post(&self, needle: &str) -> Value {
        let what = format!("a bot post containing {needle:?}");
        let find = |s: &State| -> Option<Value> {
            s.bot_posts(TOWN_SQUARE)
                .into_iter()
                .find(|p| p["message"].as_str().is_some_and(|t| t.contains(needle)))
                .cloned()
        };
        self.fake.wait_for(&what, TURN, |s| find(s).is_some()).await;
        find(&self.fake.state()).unwrap()
    }
}

super::scenarios!(Mattermost);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_scope_gives_each_thread_its_session_and_context() {
    super::thread_scope::<Mattermost>().await;
}
