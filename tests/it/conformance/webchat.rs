//! The web chat as a [`FakePlatform`]: the gateway serves it, so there is no fake; users
//! talk over its JSON API and the room's event stream is the connection that drops.

use super::{FakePlatform, Who, TURN};
use crate::support::daemon::Gateway;
use crate::support::ports::free_port;
use crate::support::webclient::{EventStream, WebClient};

const ROOM: &str = "lobby";

pub struct WebChat {
    port: u16,
    /// Alice (owner) and Bob (guest), once the daemon printed their login tokens.
    users: Option<(WebClient, WebClient)>,
    /// Alice's event stream on the room; `None` while disconnected.
    events: Option<EventStream>,
}

impl WebChat {
    fn user(&self, who: Who) -> &WebClient {
        let (alice, bob) = self.users.as_ref().expect("attached");
        match who {
            Who::Owner => alice,
            Who::Guest => bob,
            Who::Stranger => unreachable!("the web chat serves only its listed users"),
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
            "  - {{name: chat, type: webchat, listen: \"127.0.0.1:{}\", require_mention: true, allowed_users: {{owners: [alice], guests: [bob]}}}}",
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
        self.events = Some(alice.events(ROOM).await);
        self.users = Some((alice, bob));
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

super::scenarios!(WebChat);
