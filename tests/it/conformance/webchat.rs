//! The web chat as a [`FakePlatform`]: the gateway serves it, so there is no fake; users
//! talk over its JSON API and the room's event stream is the connection that drops. The
//! stranger of the thread scenario is carol, who has a login token but is neither owner nor
//! guest: the web chat lets her post, the gateway serves her nothing.

use super::{FakePlatform, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::ports::free_port;
use crate::support::webclient::{EventStream, WebClient, WebMessage};

const ROOM: &str = "lobby";
/// Carol's configured token (at least 16 characters).
const CAROL_TOKEN: &str = "carol-has-no-role-0123456789";

pub struct WebChat {
    port: u16,
    /// Alice (owner), Bob (guest) and Carol (no role), once the daemon printed their login
    /// tokens.
    users: Option<(WebClient, WebClient, WebClient)>,
    /// Alice's event stream on the room; `None` while disconnected.
    events: Option<EventStream>,
}

impl WebChat {
    fn user(&self, who: Who) -> &WebClient {
        let (alice, bob, carol) = self.users.as_ref().expect("attached");
        match who {
            Who::Owner => alice,
            Who::Guest => bob,
            Who::Stranger => carol,
        }
    }
}

impl FakePlatform for WebChat {
    async fn start() -> WebChat {
        WebChat {
            port: free_port(),
            users: None,
            events: None,
        }
    }

    fn connector_yaml(&self) -> String {
        // A web chat user's login name is its sender id.
        format!(
            "  - {{name: chat, type: webchat, listen: \"127.0.0.1:{}\", require_mention: true, allowed_users: {{owners: [alice], guests: [bob]}}, tokens: {{carol: {CAROL_TOKEN}}}}}",
            self.port
        )
    }

    fn group_room(&self) -> String {
        ROOM.into()
    }

    fn username(&self, who: Who) -> String {
        match who {
            Who::Owner => "alice".into(),
            Who::Guest => "bob".into(),
            Who::Stranger => "carol".into(),
        }
    }

    fn max_message_len(&self) -> usize {
        // `MAX_MESSAGE_LEN` in src/connector/webchat/mod.rs.
        16_000
    }

    async fn attach(&mut self, gateway: &Gateway) {
        let alice = WebClient::new(self.port, &gateway.token_for("alice"));
        let bob = WebClient::new(self.port, &gateway.token_for("bob"));
        assert_eq!(gateway.token_for("carol"), CAROL_TOKEN);
        let carol = WebClient::new(self.port, CAROL_TOKEN);
        self.events = Some(alice.events(ROOM).await);
        self.users = Some((alice, bob, carol));
    }

    async fn send(&mut self, who: Who, text: &str, mention: bool) {
        let text = if mention {
            format!("@bot {text}")
        } else {
            text.to_string()
        };
        let (status, body) = self.user(who).post(ROOM, &text).await;
        assert_eq!(status, 202, "{body}");
    }

    async fn replies_containing(&mut self, needle: &str, count: usize) -> Vec<String> {
        loop {
            let found: Vec<String> = self
                .bot_messages()
                .await
                .into_iter()
                .filter(|t| t.contains(needle))
                .collect();
            if found.len() >= count {
                return found;
            }
            // Anything that changes the room comes over the stream: look again after it.
            let events = self.events.as_mut().expect("connected");
            tokio::time::timeout(TURN, events.next())
                .await
                .unwrap_or_else(|_| panic!("no bot message containing {needle:?}"))
                .expect("the event stream ended");
        }
    }

    async fn bot_messages(&mut self) -> Vec<String> {
        self.user(Who::Owner)
            .messages(ROOM)
            .await
            .into_iter()
            .filter(|m| m.from == "bot")
            .map(|m| m.text)
            .collect()
    }

    async fn disconnect(&mut self) {
        self.events = None;
    }

    async fn reconnect(&mut self) {
        self.events = Some(self.user(Who::Owner).events(ROOM).await);
    }
}

impl super::Threads for WebChat {
    async fn post_at(&mut self, who: Who, text: &str, mention: bool, root: Option<&str>) -> String {
        let text = if mention {
            format!("@bot {text}")
        } else {
            text.to_string()
        };
        let (status, body) = self.user(who).post_in(ROOM, &text, root).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("the posted id").to_string()
    }

    async fn thread_of_reply(&mut self, needle: &str) -> Option<String> {
        self.bot_message(needle).await.thread
    }

    async fn top_level_bot_message(&mut self, needle: &str) -> Option<String> {
        let m = self.bot_message(needle).await;
        assert_eq!(m.thread, None, "{needle:?} is posted at the top level");
        Some(m.id)
    }
}

impl WebChat {
    /// Waits for the bot's message containing `needle`.
    async fn bot_message(&mut self, needle: &str) -> WebMessage {
        self.reply_containing(needle).await;
        self.user(Who::Owner)
            .messages(ROOM)
            .await
            .into_iter()
            .find(|m| m.from == "bot" && m.text.contains(needle))
            .expect("the bot's message")
    }
}

super::scenarios!(WebChat);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_scope_gives_each_thread_its_session_and_context() {
    super::thread_scope::<WebChat>().await;
}
