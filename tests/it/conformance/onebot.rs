//! OneBot (QQ) as a [`FakePlatform`]: the fake NapCat (`support/fake_onebot.rs`) connecting
//! to the gateway's reverse WebSocket, the fixtures' group, the fixtures' user (owner) and
//! another member (guest) bound by QQ number; the connection drops when the fake closes its
//! socket, and the next one brings the group history with what was said meanwhile.

use serde_json::{json, Value};

use super::{FakePlatform, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::fake_onebot::{
    at_bot, group_msg, now_secs, text_of, Auth, FakeBot, GROUP, GUEST, SELF, TOKEN, USER,
};
use crate::support::ports::free_port;

/// Small, so a long reply needs several parts; above it a reply goes out as one forward
/// message of `MAX_LEN` nodes.
const MAX_LEN: usize = 300;
/// A group member the connector lists as neither owner nor guest.
const STRANGER: i64 = 5151;
const FORWARD_THRESHOLD: usize = 1000;

pub struct OneBot {
    port: u16,
    /// The connected fake NapCat; `None` while disconnected.
    pub bot: Option<FakeBot>,
    /// Actions the gateway called on earlier sockets.
    earlier: Vec<Value>,
    /// Every group message sent, for the history of the next connection.
    history: Vec<Value>,
    next_id: i64,
    /// The reply chain (its root's id) of each message a user sent here: QQ's threads.
    roots: std::collections::HashMap<String, String>,
}

impl OneBot {
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/onebot/v11/ws", self.port)
    }

    pub fn bot(&self) -> &FakeBot {
        self.bot.as_ref().expect("connected")
    }

    async fn connect(&mut self) {
        let bot = FakeBot::connect_with_history(
            &self.url(),
            SELF,
            Auth::Bearer(TOKEN.into()),
            self.history.clone(),
        )
        .await
        .unwrap();
        bot.lifecycle_connect();
        self.bot = Some(bot);
    }

    /// Texts the bot sent to the group with `action`: a message's text (without the space
    /// after the @ of the asker), or every node of a forward message.
    fn group_texts(action: &Value) -> Vec<String> {
        if action["params"]["group_id"] != json!(GROUP) {
            return Vec::new();
        }
        match action["action"].as_str() {
            Some("send_group_msg") => {
                let text = text_of(action);
                let mentions = action["params"]["message"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["type"] == "at");
                let text = match text.strip_prefix(' ') {
                    Some(rest) if mentions => rest.to_string(),
                    _ => text,
                };
                vec![text]
            }
            Some("send_group_forward_msg") => action["params"]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    n["data"]["content"][0]["data"]["text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl FakePlatform for OneBot {
    async fn start() -> OneBot {
        OneBot {
            port: free_port(),
            bot: None,
            earlier: Vec::new(),
            history: Vec::new(),
            next_id: 1000,
            roots: Default::default(),
        }
    }

    fn connector_yaml(&self) -> String {
        format!(
            "  - {{name: chat, type: onebot, listen: \"127.0.0.1:{}\", access_token: \"{TOKEN}\", require_mention: true, max_message_length: {MAX_LEN}, forward_threshold: {FORWARD_THRESHOLD}, allowed_users: {{owners: [\"id:{USER}\"], guests: [\"id:{GUEST}\"]}}}}",
            self.port
        )
    }

    fn group_room(&self) -> String {
        format!("group:{GROUP}")
    }

    fn username(&self, who: Who) -> String {
        match who {
            Who::Owner => USER.to_string(),
            Who::Guest => GUEST.to_string(),
            Who::Stranger => STRANGER.to_string(),
        }
    }

    fn max_message_len(&self) -> usize {
        MAX_LEN
    }

    async fn attach(&mut self, gateway: &Gateway) {
        assert!(gateway.notes.contains("onebot/v11/ws"), "{}", gateway.notes);
        self.connect().await;
    }

    async fn send(&mut self, who: Who, text: &str, mention: bool) {
        self.next_id += 1;
        let id = self.next_id;
        let user = match who {
            Who::Owner => USER,
            Who::Guest => GUEST,
            Who::Stranger => STRANGER,
        };
        let mut event = if mention {
            at_bot(id, user, text)
        } else {
            group_msg(id, user, json!([{"type": "text", "data": {"text": text}}]))
        };
        event["time"] = json!(now_secs());
        self.history.push(event.clone());
        if let Some(bot) = &self.bot {
            bot.send_event(&event);
        }
    }

    async fn replies_containing(&mut self, needle: &str, count: usize) -> Vec<String> {
        let found = |actions: &[Value]| -> Vec<String> {
            actions
                .iter()
                .flat_map(OneBot::group_texts)
                .filter(|t| t.contains(needle))
                .collect()
        };
        let earlier = found(&self.earlier);
        let what = format!("{count} bot messages containing {needle:?}");
        let bot = self.bot();
        bot.wait_for(&what, TURN, |actions| {
            earlier.len() + found(actions).len() >= count
        })
        .await;
        [earlier, found(&bot.actions())].concat()
    }

    async fn bot_messages(&mut self) -> Vec<String> {
        let mut actions = self.earlier.clone();
        if let Some(bot) = &self.bot {
            actions.extend(bot.actions());
        }
        actions.iter().flat_map(OneBot::group_texts).collect()
    }

    async fn disconnect(&mut self) {
        let bot = self.bot.take().expect("connected");
        bot.close();
        bot.closed().await;
        self.earlier.extend(bot.actions());
    }

    async fn reconnect(&mut self) {
        self.connect().await;
    }
}

impl super::Threads for OneBot {
    /// In a thread: a reply (`reply` segment) to its root, as a QQ user replies.
    async fn post_at(&mut self, who: Who, text: &str, mention: bool, root: Option<&str>) -> String {
        self.next_id += 1;
        let id = self.next_id;
        let user = match who {
            Who::Owner => USER,
            Who::Guest => GUEST,
            Who::Stranger => STRANGER,
        };
        let mut segments = Vec::new();
        if let Some(root) = root {
            segments.push(json!({"type": "reply", "data": {"id": root}}));
        }
        if mention {
            segments.push(json!({"type": "at", "data": {"qq": SELF.to_string()}}));
        }
        segments.push(json!({"type": "text", "data": {"text": format!(" {text}")}}));
        let mut event = group_msg(id, user, Value::Array(segments.clone()));
        event["time"] = json!(now_secs());
        self.history.push(event.clone());
        let bot = self.bot();
        bot.remember_message(id, user, &format!("u{user}"), Value::Array(segments));
        bot.send_event(&event);
        let root = root.map_or(id.to_string(), str::to_string);
        self.roots.insert(id.to_string(), root);
        id.to_string()
    }

    /// None: the bot's notice quotes the message it answers, so it is in that message's chain
    /// (a chain rooted at the bot's own message comes only from a schedule's answer).
    async fn top_level_bot_message(&mut self, _needle: &str) -> Option<String> {
        None
    }

    /// The chain of the bot's reply: that of the message it quotes.
    async fn thread_of_reply(&mut self, needle: &str) -> Option<String> {
        let quoting = |a: &Value| -> Option<String> {
            let texts = OneBot::group_texts(a);
            if !texts.iter().any(|t| t.contains(needle)) {
                return None;
            }
            a["params"]["message"]
                .as_array()?
                .iter()
                .find(|s| s["type"] == "reply")
                .and_then(|s| s["data"]["id"].as_str().map(str::to_string))
        };
        let what = format!("a bot message containing {needle:?}");
        let bot = self.bot();
        bot.wait_for(&what, TURN, |actions| {
            actions
                .iter()
                .any(|a| OneBot::group_texts(a).iter().any(|t| t.contains(needle)))
        })
        .await;
        let quoted = bot.actions().iter().find_map(quoting)?;
        self.roots.get(&quoted).cloned()
    }
}

super::scenarios!(OneBot);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_scope_gives_each_thread_its_session_and_context() {
    super::thread_scope::<OneBot>().await;
}
